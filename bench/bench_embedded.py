"""Benchmark: papin's embedded llama.cpp provider, in-process and isolated, against raw
llama-cpp-python; and the cost of the crash probe.

Same model (the packaged Gemma 3 270M), prompt, parameters and load settings; the three run
interleaved, round by round, in one run, each in a process of its own as users run them: papin
in-process in the benchmark's process, papin isolated in its worker, raw llama-cpp-python in
``raw_llama_worker.py`` (llama.cpp's OpenMP thread team belongs to the calling thread, and two
teams in one process slow each other down). Measures
tokens per second and time to first token as users call papin (``LLMManager.stream``), load
time, whether a second call reloads, RSS after load and after unload, and the crash probe's
cost: one probe child alone, and the first load of a new combination with and without it.

Run:  .venv/bin/python bench/bench_embedded.py [--runs 11] [--tokens 128] [--prompt-cache longest]
Targets: in-process tokens/s >= 0.97x raw; isolated tokens/s >= 0.97x in-process and time to
first token at most 20 ms more; no reload on the second call.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from raw_llama_worker import PROMPT  # the same prompt for every contender


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


async def papin_run(manager: Any, model: str, tokens: int) -> tuple[float, float, int, float | None]:
    from papin.llm import GenerationOptions

    opts = GenerationOptions(max_tokens=tokens, temperature=0.0, seed=1)
    started = time.perf_counter()
    first = None
    count = 0
    load_time = None
    async for chunk in manager.stream(model, PROMPT, opts):
        if chunk.text:
            count += 1
            if first is None:
                first = time.perf_counter()
        if chunk.done and chunk.stats:
            load_time = chunk.stats.load_time
    end = time.perf_counter()
    assert first is not None
    return first - started, (count - 1) / (end - first), count, load_time


async def manager_for(store_dir: Path, **settings: Any) -> Any:
    from papin.llm import LLMConfig, LLMManager

    config = {"models_dir": str(store_dir), "keep_alive_seconds": -1, **settings}
    manager = LLMManager.with_config(LLMConfig(provider_type="llamacpp", provider_config=config))
    await manager.initialize()
    return manager


async def probe_cost(store_dir: Path, model_path: str, settings: Any) -> dict[str, float]:
    """One probe child alone, then the first load of a new combination with and without it."""
    from papin.llm.providers._llama.probe import run_probe

    alone = [run_probe(model_path, settings, 120).seconds for _ in range(3)]
    firsts: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(3):
        for variant in ("with", "without"):
            with tempfile.TemporaryDirectory() as data:  # an empty verdict file: a new combination
                os.environ["PAPIN_DATA_DIR"] = data
                manager = await manager_for(store_dir, crash_probe=variant == "with")
                t = time.perf_counter()
                await manager.load_model(DEFAULT_MODEL)
                firsts[variant].append(time.perf_counter() - t)
                await manager.aclose()
    os.environ.pop("PAPIN_DATA_DIR", None)
    med = statistics.median
    return {
        "probe_child_s": round(med(alone), 3),
        "first_load_with_probe_s": round(med(firsts["with"]), 3),
        "first_load_without_probe_s": round(med(firsts["without"]), 3),
    }


class RawLlama:
    """raw llama-cpp-python in its own process (``raw_llama_worker.py``)."""

    def __init__(self, path: str, settings: Any) -> None:
        import subprocess
        import sys

        worker = Path(__file__).with_name("raw_llama_worker.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(worker)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.load_s = self._ask({"path": path, "settings": settings.to_dict()})["load_s"]

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def run(self, tokens: int) -> tuple[float, float]:
        answer = self._ask({"tokens": tokens})
        return answer["ttft"], answer["tps"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


async def interleave(runs: int, tokens: int, contenders: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Median (ttft, tokens/s) of each contender (a :class:`RawLlama` or a manager), run
    round by round."""
    samples: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in contenders}
    for _ in range(runs):
        for name, runner in contenders.items():
            if isinstance(runner, RawLlama):
                ttft, tps = await asyncio.to_thread(runner.run, tokens)
            else:
                ttft, tps, _m, _l = await papin_run(runner, DEFAULT_MODEL, tokens)
            samples[name][0].append(ttft)
            samples[name][1].append(tps)
    med = statistics.median
    return {k: (med(v[0]), med(v[1])) for k, v in samples.items()}


DEFAULT_MODEL = "gemma-3-270m-q4_k_m"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt-cache", choices=["exact", "longest"], default="exact")
    args = parser.parse_args()
    cache = {"prompt_cache": args.prompt_cache}

    store_dir = Path(tempfile.mkdtemp(prefix="papin-bench-"))
    os.environ["PAPIN_DATA_DIR"] = tempfile.mkdtemp(prefix="papin-bench-data-")
    manager = await manager_for(store_dir, **cache)
    provider = manager.current_provider

    rss_start = rss_mb()
    t = time.perf_counter()
    await manager.load_model(DEFAULT_MODEL)  # first use: assembles the model, probes, loads
    install_probe_and_load = time.perf_counter() - t
    await manager.unload_model(DEFAULT_MODEL)
    gc.collect()
    rss_before_load = rss_mb()
    first_call = await papin_run(manager, DEFAULT_MODEL, 8)
    rss_loaded = rss_mb()
    second_call = await papin_run(manager, DEFAULT_MODEL, 8)
    settings = provider.pool.get(DEFAULT_MODEL).settings
    model_path = str(provider.store.get(DEFAULT_MODEL).path)

    isolated = await manager_for(store_dir, isolation="process", **cache)
    await papin_run(isolated, DEFAULT_MODEL, 8)  # starts the worker, loads
    raw = RawLlama(model_path, settings)
    await asyncio.to_thread(raw.run, 8)  # warm-up
    await papin_run(manager, DEFAULT_MODEL, 8)
    await papin_run(isolated, DEFAULT_MODEL, 8)
    result = await interleave(args.runs, args.tokens, {"raw": raw, "papin": manager, "isolated": isolated})
    raw.close()
    await isolated.aclose()

    await manager.unload_model(DEFAULT_MODEL)
    gc.collect()
    rss_unloaded = rss_mb()
    await manager.aclose()
    probe = await probe_cost(store_dir, model_path, settings)

    ms = 1000
    ttft = {k: v[0] for k, v in result.items()}
    tps = {k: v[1] for k, v in result.items()}
    results = {
        "tokens": args.tokens,
        "runs": args.runs,
        "prompt_cache": args.prompt_cache,
        "n_ctx": settings.n_ctx,
        "n_threads": settings.n_threads,
        "extra_buffers": settings.extra_buffers,
        "install_probe_and_first_load_s": round(install_probe_and_load, 3),
        "papin_load_s": first_call[3],
        "raw_load_s": round(raw.load_s, 3),
        "second_call_load_s": second_call[3],
        "raw_tokens_per_s": round(tps["raw"], 2),
        "papin_tokens_per_s": round(tps["papin"], 2),
        "isolated_tokens_per_s": round(tps["isolated"], 2),
        "papin_vs_raw_tps": round(tps["papin"] / tps["raw"], 3),
        "isolated_vs_papin_tps": round(tps["isolated"] / tps["papin"], 3),
        "raw_ttft_ms": round(ttft["raw"] * ms, 2),
        "papin_ttft_ms": round(ttft["papin"] * ms, 2),
        "isolated_ttft_ms": round(ttft["isolated"] * ms, 2),
        "isolated_minus_papin_ttft_ms": round((ttft["isolated"] - ttft["papin"]) * ms, 2),
        **probe,
        "rss_start_mb": round(rss_start, 1),
        "rss_before_load_mb": round(rss_before_load, 1),
        "rss_loaded_mb": round(rss_loaded, 1),
        "rss_after_unload_mb": round(rss_unloaded, 1),
        "load_average": round(os.getloadavg()[0], 2),
    }
    checks = {
        "in-process tokens/s >= 0.97x raw": results["papin_vs_raw_tps"] >= 0.97,
        "isolated tokens/s >= 0.97x in-process": results["isolated_vs_papin_tps"] >= 0.97,
        "isolated ttft <= in-process + 20 ms": results["isolated_minus_papin_ttft_ms"] <= 20,
        "second call does not reload": second_call[3] is None,
        "unload frees memory": rss_unloaded < rss_loaded - 50,
    }
    for key, value in results.items():
        print(f"{key:32} {value}")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    name = "embedded.json" if args.prompt_cache == "exact" else f"embedded-{args.prompt_cache}.json"
    (out / name).write_text(json.dumps({"results": results, "checks": checks}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
