"""Benchmark of papin's overhead on the OpenAI protocol (SSE), against raw httpx and aiohttp.

Run from the repository root::

    .venv/bin/python bench/bench_openai.py            # full run (about 1.5 minutes)
    .venv/bin/python bench/bench_openai.py --quick    # short run (about 25 seconds)

The same method as ``bench_ollama.py`` (whose measuring code it reuses): ``fake_server.py``
in its own process, variants interleaved round by round after a warm-up. Here papin is the
custom OpenAI-compatible provider (``OpenAICompatibleProvider`` through ``LLMManager``, and
the sync facade) talking to ``/v1/completions``; the raw clients send the same requests.
Figures go to ``bench/results/openai.json``. It reports; it does not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_ollama import (
    BATCH_LINES,
    MODEL,
    PROMPT,
    FakeServer,
    clean_env,
    concurrent,
    environment,
    load_average,
    log,
    print_report,
    rss,
    sequential,
    streaming,
    verdicts,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "openai.json"
SECTIONS = ("sequential", "stream", "concurrent")


class OpenAIClients:
    """Every client under test, created once and reused; same methods as ``bench_ollama.Clients``."""

    def __init__(self, url: str) -> None:
        import aiohttp
        import httpx

        from papin.llm.manager import create_llm_manager
        from papin.llm.sync import create_sync_llm_manager

        self.url = url
        self.gen_url = f"{url}/v1/completions"
        self.body = {"model": MODEL, "prompt": PROMPT, "stream": False}
        endpoint = f"{url}/v1"
        self.sync_llm = create_sync_llm_manager(provider="openai_compatible", endpoint=endpoint)
        self.llm = create_llm_manager(provider="openai_compatible", endpoint=endpoint)
        self.httpx_sync = httpx.Client(timeout=30)
        self.httpx_async = httpx.AsyncClient(timeout=30)
        self._aiohttp = aiohttp
        self.session: aiohttp.ClientSession | None = None  # made inside the event loop

    async def astart(self) -> None:
        self.session = self._aiohttp.ClientSession(timeout=self._aiohttp.ClientTimeout(total=30))
        await self.llm.initialize()
        provider = self.llm.current_provider
        if provider.name != "openai_compatible":
            raise RuntimeError(f"papin chose {provider!r}, not the OpenAI-compatible provider")

    async def aclose(self) -> None:
        await self.llm.aclose()
        await self.httpx_async.aclose()
        if self.session is not None:
            await self.session.close()

    def close(self) -> None:
        self.sync_llm.close()
        self.httpx_sync.close()

    # one non-streamed generation, each the way a user would write it
    def papin_sync(self) -> str:
        return self.sync_llm.generate_text(MODEL, PROMPT)

    async def papin_async(self) -> str:
        return await self.llm.generate_text(MODEL, PROMPT)

    def httpx_sync_call(self) -> str:
        r = self.httpx_sync.post(self.gen_url, json=self.body)
        r.raise_for_status()
        return str(r.json()["choices"][0]["text"])

    async def httpx_async_call(self) -> str:
        r = await self.httpx_async.post(self.gen_url, json=self.body)
        r.raise_for_status()
        return str(r.json()["choices"][0]["text"])

    async def aiohttp_call(self) -> str:
        assert self.session is not None
        async with self.session.post(self.gen_url, json=self.body) as r:
            r.raise_for_status()
            return str((await r.json())["choices"][0]["text"])

    # one long streamed generation
    async def papin_stream(self, n: int, per_write: int) -> int:
        from papin.llm.options import GenerationOptions

        opts = GenerationOptions(max_tokens=n, additional_params={"bench_lines_per_write": per_write})
        parts: list[str] = []
        async for chunk in self.llm.stream(MODEL, PROMPT, opts):
            parts.append(chunk.text)
        return len("".join(parts))

    def _stream_body(self, n: int, per_write: int) -> dict[str, Any]:
        return {"model": MODEL, "prompt": PROMPT, "stream": True, "max_tokens": n,
                "stream_options": {"include_usage": True}, "bench_lines_per_write": per_write}

    async def httpx_stream(self, n: int, per_write: int) -> int:
        parts: list[str] = []
        body = self._stream_body(n, per_write)
        async with self.httpx_async.stream("POST", self.gen_url, json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                choices = json.loads(data)["choices"]
                if choices:
                    parts.append(choices[0]["text"])
        return len("".join(parts))

    async def aiohttp_stream(self, n: int, per_write: int) -> int:
        assert self.session is not None
        parts: list[str] = []
        body = self._stream_body(n, per_write)
        async with self.session.post(self.gen_url, json=body) as r:
            r.raise_for_status()
            async for raw in r.content:
                if not raw.startswith(b"data:"):
                    continue
                data = raw[5:].strip()
                if data == b"[DONE]":
                    break
                choices = json.loads(data)["choices"]
                if choices:
                    parts.append(choices[0]["text"])
        return len("".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser(description="papin overhead benchmark (OpenAI protocol, SSE)")
    parser.add_argument("--quick", action="store_true", help="a short run (fewer samples)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    args = parser.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only or only - set(SECTIONS):
        parser.error(f"--only takes some of {', '.join(SECTIONS)}")
    with tempfile.TemporaryDirectory(prefix="papin-bench-") as tmp:
        return run(args.quick, only, args.json, Path(tmp))


def run(q: bool, only: set[str], json_path: Path, tmp: Path) -> int:
    cfg = {
        "sequential_requests": 500 if q else 3000,
        "stream_reps": 5 if q else 21,
        "concurrent_total": 2000 if q else 5000,
        "concurrent_rounds": 1 if q else 2,
        "inflight": 64,
    }
    env = clean_env(tmp / "config")
    os.environ.clear()
    os.environ.update(env)
    started = time.perf_counter()
    load_start = load_average()
    if load_start and load_start[0] > 0.5:
        log(f"note: load average {load_start}: if the machine is busy, figures will be noisy")
    result: dict[str, Any] = {"protocol": "openai", "quick": q, "config": cfg,
                              "sections": sorted(only)}
    with FakeServer() as server, asyncio.Runner() as runner:
        log(f"fake OpenAI-compatible server at {server.url}/v1")
        clients = OpenAIClients(server.url)
        c: Any = clients  # duck-typed like bench_ollama.Clients
        try:
            runner.run(clients.astart())
            if "sequential" in only:
                log("sequential ...")
                result["sequential"] = sequential(c, runner, cfg["sequential_requests"], 90)
            if "stream" in only:
                log("stream ...")
                result["stream"] = streaming(c, runner, cfg["stream_reps"], BATCH_LINES, 30)
                result["stream_per_line"] = streaming(c, runner, cfg["stream_reps"], 1, 30)
            if "concurrent" in only:
                log("concurrent ...")
                result["concurrent"] = concurrent(
                    c, runner, cfg["concurrent_total"], cfg["inflight"],
                    cfg["concurrent_rounds"], 75,
                )
        finally:
            try:
                runner.run(clients.aclose())
            finally:
                clients.close()
    result["memory"] = rss()
    result["environment"] = environment(load_start)
    result["elapsed_s"] = time.perf_counter() - started
    result["targets"] = verdicts(result)
    print("\nOpenAI protocol: papin's OpenAICompatibleProvider (SSE from /v1/completions) vs raw "
          "clients; in the stream tables 'lines' are SSE events.", flush=True)
    print_report(result)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log(f"\nresults written to {json_path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
