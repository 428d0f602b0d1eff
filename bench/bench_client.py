"""papin's client overhead, measured the way users call papin, against raw httpx and aiohttp.

Run from the repository root::

    .venv/bin/python bench/bench_client.py             # full run (about 4 minutes)
    .venv/bin/python bench/bench_client.py --quick     # short run (about 1.5 minutes)
    .venv/bin/python bench/bench_client.py --only sequential --protocol openai
    .venv/bin/python bench/bench_client.py --profile   # where one sync call spends its time

Every papin call is a public-API call with options, as in the README::

    llm = create_sync_llm_manager(provider="ollama", endpoint=url)
    llm.generate_text(model, prompt, GenerationOptions(max_tokens=n))
    for chunk in llm.stream(model, prompt, GenerationOptions(max_tokens=n)): ...

(and the same through ``LLMManager`` on the async side). The raw clients send the same
requests, written the way a user of httpx or aiohttp would write them. The server is
``cheap_server.py`` in its own process: it answers from cached bytes in a few tens of
microseconds, so its cost does not hide papin's. Variants run interleaved round by round, after
a warm-up, so that drift in machine load hits them alike; all ratios come from this one run.
It reports; it does not assert. Figures go to ``bench/results/client.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "client.json"
PROMPT = "Why is the sky blue?"
SEQ_TOKENS = 16  # a short answer: the per-request cost dominates
STREAM_SIZES = (5_000, 10_000)
WRITE_MODELS = {"batched": "bench-batched", "frames": "bench-frames"}  # the server's write pattern
INFLIGHT = 32
PROTOCOLS = ("ollama", "openai")
SECTIONS = ("imports", "sequential", "ttfc", "stream", "concurrent")
TOKEN = " hello"

Timings = list[float]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pct(values: Timings, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


# -- the server -----------------------------------------------------------------------------
class CheapServer:
    """``cheap_server.py`` in its own process; always stopped on exit."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.host = host

    def __enter__(self) -> CheapServer:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "cheap_server.py"), "--max-seconds", "1800", "--host", self.host],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        try:
            assert self.proc.stdout is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], 30)
            line = self.proc.stdout.readline() if ready else b""
            if not line.startswith(b"PORT "):
                raise RuntimeError("the benchmark server did not start")
            self.url = f"http://{self.host}:{int(line.split()[1])}"
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.terminate()
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# -- the clients ----------------------------------------------------------------------------
class Clients:
    """The contenders for one protocol, each created once and reused, as an application would."""

    def __init__(self, url: str, protocol: str) -> None:
        import aiohttp
        import httpx

        from papin.llm import GenerationOptions, create_llm_manager
        from papin.llm.sync import create_sync_llm_manager

        self.protocol = protocol
        self.options = GenerationOptions
        provider, endpoint = ("ollama", url) if protocol == "ollama" else ("openai_compatible", f"{url}/v1")
        self.sync_llm = create_sync_llm_manager(provider=provider, endpoint=endpoint)
        self.llm = create_llm_manager(provider=provider, endpoint=endpoint)
        self.route = f"{url}/api/generate" if protocol == "ollama" else f"{url}/v1/completions"
        self.httpx_sync = httpx.Client(timeout=30)
        self.httpx_async = httpx.AsyncClient(timeout=30)
        self._aiohttp = aiohttp
        self.session: aiohttp.ClientSession | None = None

    async def astart(self) -> None:
        self.session = self._aiohttp.ClientSession(timeout=self._aiohttp.ClientTimeout(total=30))
        await self.llm.initialize()

    async def aclose(self) -> None:
        await self.llm.aclose()
        await self.httpx_async.aclose()
        if self.session is not None:
            await self.session.close()

    def close(self) -> None:
        self.sync_llm.close()
        self.httpx_sync.close()

    # request bodies and answers, as a user of the raw client writes them
    def body(self, model: str, n: int, stream: bool) -> dict[str, Any]:
        if self.protocol == "ollama":
            return {"model": model, "prompt": PROMPT, "stream": stream, "options": {"num_predict": n}}
        return {"model": model, "prompt": PROMPT, "stream": stream, "max_tokens": n}

    def answer(self, data: Any) -> str:
        return str(data["response"] if self.protocol == "ollama" else data["choices"][0]["text"])

    def frame(self, line: str) -> str | None:
        """The text of one streamed line; ``None`` at the end of the stream."""
        if self.protocol == "ollama":
            if not line:
                return ""
            obj = json.loads(line)
            return None if obj.get("done") else str(obj["response"])
        if not line.startswith("data: "):
            return ""
        if line == "data: [DONE]":
            return None
        obj = json.loads(line[6:])
        return str(obj["choices"][0]["text"]) if obj["choices"] else ""

    # one non-streamed generation
    def papin_sync(self, n: int = SEQ_TOKENS) -> str:
        return self.sync_llm.generate_text("bench-batched", PROMPT, self.options(max_tokens=n))

    async def papin_async(self, n: int = SEQ_TOKENS) -> str:
        return await self.llm.generate_text("bench-batched", PROMPT, self.options(max_tokens=n))

    def httpx_sync_call(self, n: int = SEQ_TOKENS) -> str:
        r = self.httpx_sync.post(self.route, json=self.body("bench-batched", n, False))
        r.raise_for_status()
        return self.answer(r.json())

    async def httpx_async_call(self, n: int = SEQ_TOKENS) -> str:
        r = await self.httpx_async.post(self.route, json=self.body("bench-batched", n, False))
        r.raise_for_status()
        return self.answer(r.json())

    async def aiohttp_call(self, n: int = SEQ_TOKENS) -> str:
        assert self.session is not None
        async with self.session.post(self.route, json=self.body("bench-batched", n, False)) as r:
            r.raise_for_status()
            return self.answer(await r.json())

    # streams: iterators of text, so a caller can time the first chunk and drain the rest
    def papin_sync_stream(self, model: str, n: int) -> Iterator[str]:
        for chunk in self.sync_llm.stream(model, PROMPT, self.options(max_tokens=n)):
            yield chunk.text

    def httpx_sync_stream(self, model: str, n: int) -> Iterator[str]:
        with self.httpx_sync.stream("POST", self.route, json=self.body(model, n, True)) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                text = self.frame(line)
                if text is None:
                    return
                if text:
                    yield text

    async def papin_async_stream(self, model: str, n: int) -> int:
        size = 0
        async for chunk in self.llm.stream(model, PROMPT, self.options(max_tokens=n)):
            size += len(chunk.text)
        return size

    async def httpx_async_stream(self, model: str, n: int) -> int:
        size = 0
        async with self.httpx_async.stream("POST", self.route, json=self.body(model, n, True)) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                text = self.frame(line)
                if text is None:
                    break
                size += len(text)
        return size

    async def aiohttp_stream(self, model: str, n: int) -> int:
        assert self.session is not None
        size = 0
        async with self.session.post(self.route, json=self.body(model, n, True)) as r:
            r.raise_for_status()
            async for raw in r.content:
                text = self.frame(raw.decode().rstrip("\r\n"))
                if text is None:
                    break
                size += len(text)
        return size


# -- measurements ---------------------------------------------------------------------------
def interleaved(variants: dict[str, Callable[[], float]], rounds: int, budget: float) -> dict[str, Timings]:
    """Run each variant once per round, rotating the order; returns the samples."""
    names = list(variants)
    for name in names:
        variants[name]()  # warm-up
    out: dict[str, Timings] = {name: [] for name in names}
    deadline = time.monotonic() + budget
    for i in range(rounds):
        if time.monotonic() > deadline:
            log(f"  time budget reached after {i} rounds")
            break
        for name in names[i % len(names):] + names[: i % len(names)]:
            out[name].append(variants[name]())
    return out


def _sync_batch(call: Callable[[], Any], k: int) -> Callable[[], Timings]:
    def run() -> Timings:
        clock, times = time.perf_counter, []
        for _ in range(k):
            t0 = clock()
            call()
            times.append(clock() - t0)
        return times
    return run


def _async_batch(runner: asyncio.Runner, call: Callable[[], Awaitable[Any]], k: int) -> Callable[[], Timings]:
    async def many() -> Timings:
        clock, times = time.perf_counter, []
        for _ in range(k):
            t0 = clock()
            await call()
            times.append(clock() - t0)
        return times
    return lambda: runner.run(many())


def sequential(c: Clients, runner: asyncio.Runner, total: int, budget: float) -> dict[str, Any]:
    expected = TOKEN * SEQ_TOKENS
    for check in (c.papin_sync(), c.httpx_sync_call(), runner.run(c.papin_async())):
        if check != expected:
            raise RuntimeError(f"wrong answer: {check!r}")
    per_round = 20
    batches = {
        "papin_sync": _sync_batch(c.papin_sync, per_round),
        "httpx_sync": _sync_batch(c.httpx_sync_call, per_round),
        "papin_async": _async_batch(runner, c.papin_async, per_round),
        "httpx_async": _async_batch(runner, c.httpx_async_call, per_round),
        "aiohttp": _async_batch(runner, c.aiohttp_call, per_round),
    }
    samples: dict[str, Timings] = {name: [] for name in batches}
    variants: dict[str, Callable[[], float]] = {}
    for name, batch in batches.items():
        def one(name: str = name, batch: Callable[[], Timings] = batch) -> float:
            samples[name].extend(batch())
            return 0.0
        variants[name] = one
    interleaved(variants, -(-total // per_round), budget)
    return {name: {"n": len(v), "p50_s": pct(v, 0.5), "p99_s": pct(v, 0.99)} for name, v in samples.items()}


def first_chunk(c: Clients, rounds: int, budget: float) -> dict[str, Any]:
    """Time to the first text chunk of a 16-chunk stream (then drained), sync facade vs httpx."""
    def timed(stream: Callable[[str, int], Iterator[str]]) -> float:
        t0 = time.perf_counter()
        it = stream("bench-frames", SEQ_TOKENS)
        next(it)
        elapsed = time.perf_counter() - t0
        for _ in it:
            pass
        return elapsed

    samples = interleaved(
        {"papin_sync": lambda: timed(c.papin_sync_stream), "httpx_sync": lambda: timed(c.httpx_sync_stream)},
        rounds, budget,
    )
    return {name: {"n": len(v), "p50_s": pct(v, 0.5)} for name, v in samples.items()}


def streams(
    c: Clients, runner: asyncio.Runner, n: int, write: str, reps: int, budget: float
) -> dict[str, Any]:
    model = WRITE_MODELS[write]
    expected = len(TOKEN) * n

    def sync(stream: Callable[[str, int], Iterator[str]]) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            size = sum(len(t) for t in stream(model, n))
            elapsed = time.perf_counter() - t0
            if size != expected:
                raise RuntimeError(f"got {size} characters, expected {expected}")
            return elapsed
        return run

    def asyn(stream: Callable[[str, int], Awaitable[int]]) -> Callable[[], float]:
        async def timed() -> float:
            t0 = time.perf_counter()
            size = await stream(model, n)
            elapsed = time.perf_counter() - t0
            if size != expected:
                raise RuntimeError(f"got {size} characters, expected {expected}")
            return elapsed
        return lambda: runner.run(timed())

    samples = interleaved({
        "papin_sync": sync(c.papin_sync_stream),
        "httpx_sync": sync(c.httpx_sync_stream),
        "papin_async": asyn(c.papin_async_stream),
        "httpx_async": asyn(c.httpx_async_stream),
        "aiohttp": asyn(c.aiohttp_stream),
    }, reps, budget)
    return {name: {"n": len(v), "median_s": statistics.median(v)} for name, v in samples.items()}


async def throughput(call: Callable[[], Awaitable[Any]], total: int, inflight: int = INFLIGHT) -> float:
    """Requests per second of ``total`` calls, ``inflight`` at a time."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    t0 = time.perf_counter()
    async with asyncio.timeout(300):
        await asyncio.gather(*(worker() for _ in range(inflight)))
    return total / (time.perf_counter() - t0)


def concurrent(c: Clients, runner: asyncio.Runner, total: int, rounds: int, budget: float) -> dict[str, Any]:

    calls = {"papin_async": c.papin_async, "httpx_async": c.httpx_async_call, "aiohttp": c.aiohttp_call}
    samples = interleaved(
        {name: (lambda call=call: runner.run(throughput(call, total))) for name, call in calls.items()},
        rounds,
        budget,
    )
    return {name: {"rounds": len(v), "rps": statistics.median(v)} for name, v in samples.items()}


# -- imports, construction and the first call, in fresh interpreters -------------------------
FIRST_CALL = {
    "bare": "pass",
    "import papin.llm": "import papin.llm",
    "papin: import, construct, first call": (
        "from papin.llm import GenerationOptions\n"
        "from papin.llm.sync import create_sync_llm_manager\n"
        "llm = create_sync_llm_manager(provider='ollama', endpoint=URL)\n"
        "assert llm.generate_text('bench-batched', 'hi', GenerationOptions(max_tokens=16))\n"
        "llm.close()"
    ),
    "httpx: import, construct, first call": (
        "import httpx\n"
        "with httpx.Client() as client:\n"
        "    r = client.post(URL + '/api/generate', json={'model': 'bench-batched', 'prompt': 'hi',\n"
        "                    'stream': False, 'options': {'num_predict': 16}})\n"
        "    assert r.json()['response']"
    ),
}


def first_calls(url: str, reps: int, env: dict[str, str], pycache: Path) -> dict[str, Any]:
    """Wall-clock medians of fresh interpreters (bytecode cached, as for an installed package)."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    wall: dict[str, Timings] = {k: [] for k in FIRST_CALL}
    names = list(FIRST_CALL)
    for i in range(reps + 1):  # the first round writes the .pyc files and warms the disk cache
        for name in names[i % len(names):] + names[: i % len(names)]:
            code = f"URL = {url!r}\n" + FIRST_CALL[name]
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
            if i:
                wall[name].append(time.perf_counter() - t0)
    bare = statistics.median(wall["bare"])
    return {name: {"n": len(v), "wall_s": statistics.median(v), "over_bare_s": statistics.median(v) - bare}
            for name, v in wall.items()}


def profile_one_call(c: Clients, calls: int) -> str:
    """cProfile of ``calls`` sync facade calls: where the time of one call goes."""
    for _ in range(200):
        c.papin_sync()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        c.papin_sync()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
    return out.getvalue()


# -- report ---------------------------------------------------------------------------------
def targets(r: dict[str, Any]) -> list[tuple[str, str, float, str, bool]]:
    rows: list[tuple[str, str, float, str, bool]] = []
    for proto in PROTOCOLS:
        p = r.get(proto, {})
        if "sequential" in p:
            s = p["sequential"]
            for side, raw in (("sync", "httpx_sync"), ("async", "httpx_async")):
                ratio = s[f"papin_{side}"]["p50_s"] / s[raw]["p50_s"]
                rows.append((proto, f"{side} p50 / {raw}", ratio, "<= 1.03x", ratio <= 1.03))
        if "ttfc" in p:
            ratio = p["ttfc"]["papin_sync"]["p50_s"] / p["ttfc"]["httpx_sync"]["p50_s"]
            rows.append((proto, "time to first chunk, sync / httpx_sync", ratio, "(shown)", True))
        for key, v in p.get("stream", {}).items():
            for side in ("sync", "async"):
                ratio = v[f"papin_{side}"]["median_s"] / v[f"httpx_{side}"]["median_s"]
                rows.append((proto, f"{key} {side} / httpx_{side}", ratio, "<= 1.05x", ratio <= 1.05))
        if "concurrent" in p:
            cc = p["concurrent"]
            ratio = cc["papin_async"]["rps"] / cc["httpx_async"]["rps"]
            rows.append((proto, f"{INFLIGHT}-way req/s / httpx_async", ratio, ">= 5x", ratio >= 5))
            half = cc["papin_async"]["rps"] / cc["aiohttp"]["rps"]
            rows.append((proto, f"{INFLIGHT}-way req/s / aiohttp (stretch)", half, ">= 0.5x", half >= 0.5))
    if "imports" in r:
        over = r["imports"]["papin: import, construct, first call"]["over_bare_s"]
        rows.append(("-", "import+construct+first call over bare (ms)", over * 1e3, "<= 150", over <= 0.150))
    return rows


def report(r: dict[str, Any]) -> str:
    env = r["environment"]
    out: list[str] = [f"\npapin client overhead - {env['python']}, {env['cpus']} CPUs, "
                      f"load {r['environment']['load_start']} -> {r['environment']['load_end']}, "
                      f"{r['elapsed_s']:.0f} s{' (--quick)' if r['quick'] else ''}"]
    add = out.append
    for proto in PROTOCOLS:
        p = r.get(proto)
        if not p:
            continue
        add(f"\n== {proto} protocol ==")
        if "sequential" in p:
            add(f"non-streamed generate_text(max_tokens={SEQ_TOKENS}), one at a time")
            for name, v in p["sequential"].items():
                add(f"  {name:<14}{v['n']:>6}  p50 {fmt_s(v['p50_s']):>9}  p99 {fmt_s(v['p99_s']):>9}")
        if "ttfc" in p:
            add("time to first chunk (16-chunk stream, one frame per write)")
            for name, v in p["ttfc"].items():
                add(f"  {name:<14}{v['n']:>6}  p50 {fmt_s(v['p50_s']):>9}")
        for key, v in p.get("stream", {}).items():
            add(f"stream {key}: median of {min(x['n'] for x in v.values())}")
            for name, x in v.items():
                add(f"  {name:<14}{fmt_s(x['median_s']):>10}")
        if "concurrent" in p:
            add(f"{INFLIGHT} in flight, requests/s")
            for name, v in p["concurrent"].items():
                add(f"  {name:<14}{v['rps']:>10,.0f}")
    if "imports" in r:
        add("\nfresh interpreter, wall-clock median (over bare)")
        for name, v in r["imports"].items():
            add(f"  {name:<40}{fmt_s(v['wall_s']):>10}{fmt_s(v['over_bare_s']):>10}")
    add("\ntargets (ratios from this run)")
    for proto, what, value, limit, ok in r["targets"]:
        add(f"  {proto:<7}{what:<46}{value:>9.3f}  {limit:<9}{'PASS' if ok else 'FAIL'}")
    return "\n".join(out)


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def main() -> int:
    parser = argparse.ArgumentParser(description="papin client overhead, as users call papin")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"some of {','.join(SECTIONS)}")
    parser.add_argument("--protocol", default=",".join(PROTOCOLS), help="ollama, openai or both")
    parser.add_argument("--profile", action="store_true", help="profile sync calls and exit")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    only = {x for x in args.only.split(",") if x}
    protocols = [x for x in args.protocol.split(",") if x]
    if only - set(SECTIONS) or set(protocols) - set(PROTOCOLS):
        parser.error("unknown section or protocol")
    q = args.quick
    with tempfile.TemporaryDirectory(prefix="papin-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PAPIN_", "OLLAMA_", "OPENAI_"))}
        env["PAPIN_CONFIG_DIR"] = str(Path(tmp) / "config")
        env["PAPIN_DATA_DIR"] = str(Path(tmp) / "data")
        os.environ.clear()
        os.environ.update(env)
        started, load_start = time.perf_counter(), load_average()
        if load_start and load_start[0] > 0.5:
            log(f"note: load average {load_start}: figures will be noisy")
        result: dict[str, Any] = {"quick": q}
        with CheapServer() as server, asyncio.Runner() as runner:
            if args.profile:
                c = Clients(server.url, protocols[0])
                try:
                    print(profile_one_call(c, 2000))
                finally:
                    c.close()
                return 0
            if "imports" in only:
                log("fresh interpreters ...")
                result["imports"] = first_calls(server.url, 5 if q else 11, env, Path(tmp) / "pyc")
            for proto in protocols:
                c = Clients(server.url, proto)
                p: dict[str, Any] = result.setdefault(proto, {})
                try:
                    runner.run(c.astart())
                    if "sequential" in only:
                        log(f"{proto}: sequential ...")
                        p["sequential"] = sequential(c, runner, 1000 if q else 3000, 120)
                    if "ttfc" in only:
                        log(f"{proto}: time to first chunk ...")
                        p["ttfc"] = first_chunk(c, 300 if q else 1000, 60)
                    if "stream" in only:
                        p["stream"] = {}
                        for n in STREAM_SIZES:
                            for write in WRITE_MODELS:
                                log(f"{proto}: stream {n} {write} ...")
                                p["stream"][f"{n // 1000}k {write}"] = streams(
                                    c, runner, n, write, 5 if q else 11, 60
                                )
                    if "concurrent" in only:
                        log(f"{proto}: {INFLIGHT}-way ...")
                        p["concurrent"] = concurrent(c, runner, 2000 if q else 4000, 3 if q else 5, 120)
                finally:
                    try:
                        runner.run(c.aclose())
                    finally:
                        c.close()
        import aiohttp
        import httpx
        result["environment"] = {
            "python": platform.python_version(), "cpus": os.cpu_count(), "load_start": load_start,
            "load_end": load_average(), "httpx": httpx.__version__, "aiohttp": aiohttp.__version__,
            "git": subprocess.run(["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"],
                                  capture_output=True, text=True).stdout.strip(),
        }
        result["elapsed_s"] = time.perf_counter() - started
        result["targets"] = targets(result)
        print(report(result), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        log(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
