"""Benchmark of papin's overhead against raw httpx and aiohttp, on a fake Ollama server.

Run from the repository root::

    .venv/bin/python bench/bench_ollama.py            # full run (about 1.5 minutes)
    .venv/bin/python bench/bench_ollama.py --quick    # short run (about 30 seconds)

It starts ``bench/fake_server.py`` in a separate process (127.0.0.1, a free port), measures
the same work done through papin and through raw clients written the way a user would,
interleaving the variants round by round (after a warm-up) so that drift in machine load
hits them all alike, prints a table with the targets, and writes the figures to
``bench/results/ollama.json``. It is a benchmark, not a test: it only reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "ollama.json"
MODEL = "bench-model"
PROMPT = "Why is the sky blue?"
STREAM_CHUNKS = 10_000
BATCH_LINES = 256  # lines per server write in the "batched" stream

Timings = list[float]  # seconds


# -- the fake server ------------------------------------------------------------------------
class FakeServer:
    """``bench/fake_server.py`` in its own process; always terminated on exit."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> FakeServer:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fake_server.py"), "--port", "0", "--max-seconds", "900"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert self.proc.stdout is not None
            deadline = time.monotonic() + 30
            line = b""
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError("the fake server did not start")
                ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
                if ready:
                    data = os.read(self.proc.stdout.fileno(), 256)
                    if not data:
                        raise RuntimeError("the fake server exited before listening")
                    line += data
            self.url = f"http://127.0.0.1:{int(line.split()[1])}"
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
                proc.stdin.close()  # the server exits when its stdin closes
            proc.terminate()
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# -- helpers --------------------------------------------------------------------------------
def pct(values: Timings, q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# -- clients --------------------------------------------------------------------------------
class Clients:
    """Every client under test, created once and reused (as a user would)."""

    def __init__(self, url: str) -> None:
        import aiohttp
        import httpx

        from papin.llm.manager import create_llm_manager
        from papin.llm.sync import create_sync_llm_manager

        self.url = url
        self.gen_url = f"{url}/api/generate"
        self.body = {"model": MODEL, "prompt": PROMPT, "stream": False}
        self.sync_llm = create_sync_llm_manager(provider="ollama", endpoint=url)
        self.llm = create_llm_manager(provider="ollama", endpoint=url)
        self.httpx_sync = httpx.Client(timeout=30)
        self.httpx_async = httpx.AsyncClient(timeout=30)
        self._aiohttp = aiohttp
        self.session: aiohttp.ClientSession | None = None  # made inside the event loop

    async def astart(self) -> None:
        self.session = self._aiohttp.ClientSession(
            timeout=self._aiohttp.ClientTimeout(total=30)
        )
        await self.llm.initialize()

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
        return str(r.json()["response"])

    async def httpx_async_call(self) -> str:
        r = await self.httpx_async.post(self.gen_url, json=self.body)
        r.raise_for_status()
        return str(r.json()["response"])

    async def aiohttp_call(self) -> str:
        assert self.session is not None
        async with self.session.post(self.gen_url, json=self.body) as r:
            r.raise_for_status()
            return str((await r.json())["response"])

    # one long streamed generation
    async def papin_stream(self, n: int, per_write: int) -> int:
        from papin.llm.options import GenerationOptions

        opts = GenerationOptions(max_tokens=n, additional_params={"bench_lines_per_write": per_write})
        parts: list[str] = []
        async for chunk in self.llm.stream(MODEL, PROMPT, opts):
            parts.append(chunk.text)
        return len("".join(parts))

    def _stream_body(self, n: int, per_write: int) -> dict[str, Any]:
        return {
            "model": MODEL,
            "prompt": PROMPT,
            "stream": True,
            "options": {"num_predict": n, "bench_lines_per_write": per_write},
        }

    async def httpx_stream(self, n: int, per_write: int) -> int:
        parts: list[str] = []
        body = self._stream_body(n, per_write)
        async with self.httpx_async.stream("POST", self.gen_url, json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line:
                    continue
                obj = json.loads(line)
                parts.append(obj["response"])
                if obj.get("done"):
                    break
        return len("".join(parts))

    async def aiohttp_stream(self, n: int, per_write: int) -> int:
        assert self.session is not None
        parts: list[str] = []
        body = self._stream_body(n, per_write)
        async with self.session.post(self.gen_url, json=body) as r:
            r.raise_for_status()
            async for line in r.content:
                if not line.strip():
                    continue
                obj = json.loads(line)
                parts.append(obj["response"])
                if obj.get("done"):
                    break
        return len("".join(parts))


# -- measurements ---------------------------------------------------------------------------
async def _timed_async(call: Callable[[], Awaitable[Any]], count: int) -> Timings:
    clock = time.perf_counter
    out: Timings = []
    for _ in range(count):
        t0 = clock()
        await call()
        out.append(clock() - t0)
    return out


def _timed_sync(call: Callable[[], Any], count: int) -> Timings:
    clock = time.perf_counter
    out: Timings = []
    for _ in range(count):
        t0 = clock()
        call()
        out.append(clock() - t0)
    return out


def sequential(c: Clients, runner: asyncio.Runner, total: int, budget: float) -> dict[str, Any]:
    variants: dict[str, Callable[[int], Timings]] = {
        "papin_sync": lambda k: _timed_sync(c.papin_sync, k),
        "papin_async": lambda k: runner.run(_timed_async(c.papin_async, k)),
        "httpx_sync": lambda k: _timed_sync(c.httpx_sync_call, k),
        "httpx_async": lambda k: runner.run(_timed_async(c.httpx_async_call, k)),
        "aiohttp": lambda k: runner.run(_timed_async(c.aiohttp_call, k)),
    }
    for fn in variants.values():  # warm-up
        fn(max(50, total // 10))
    per_round = 20  # small rounds: drift in machine state hits every variant alike
    samples: dict[str, Timings] = {name: [] for name in variants}
    deadline = time.monotonic() + budget
    names = list(variants)
    rounds = -(-total // per_round)
    for i in range(rounds):
        if time.monotonic() > deadline:
            log(f"  sequential: time budget reached after {i} rounds")
            break
        for name in names[i % len(names) :] + names[: i % len(names)]:
            samples[name] += variants[name](per_round)
    return {
        name: {
            "n": len(v),
            "p50_s": pct(v, 0.50),
            "p99_s": pct(v, 0.99),
            "mean_s": statistics.fmean(v),
        }
        for name, v in samples.items()
    }


def streaming(
    c: Clients, runner: asyncio.Runner, reps: int, per_write: int, budget: float
) -> dict[str, Any]:
    variants: dict[str, Callable[[int, int], Awaitable[int]]] = {
        "papin": c.papin_stream,
        "httpx_async": c.httpx_stream,
        "aiohttp": c.aiohttp_stream,
    }
    expected = len(" hello") * STREAM_CHUNKS

    async def once(name: str) -> float:
        t0 = time.perf_counter()
        got = await variants[name](STREAM_CHUNKS, per_write)
        elapsed = time.perf_counter() - t0
        if got != expected:
            raise RuntimeError(f"{name} received {got} characters, expected {expected}")
        return elapsed

    names = list(variants)
    for name in names:  # warm-up
        runner.run(once(name))
    samples: dict[str, Timings] = {name: [] for name in names}
    deadline = time.monotonic() + budget
    for i in range(reps):
        if time.monotonic() > deadline:
            log(f"  stream: time budget reached after {i} rounds")
            break
        for name in names[i % len(names) :] + names[: i % len(names)]:
            samples[name].append(runner.run(once(name)))
    return {
        name: {"n": len(v), "median_s": statistics.median(v), "min_s": min(v)}
        for name, v in samples.items()
    }


async def _throughput(call: Callable[[], Awaitable[Any]], total: int, inflight: int) -> float:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    t0 = time.perf_counter()
    async with asyncio.timeout(120):
        await asyncio.gather(*(worker() for _ in range(inflight)))
    return total / (time.perf_counter() - t0)


def concurrent(
    c: Clients, runner: asyncio.Runner, total: int, inflight: int, rounds: int, budget: float
) -> dict[str, Any]:
    variants: dict[str, Callable[[], Awaitable[Any]]] = {
        "papin_async": c.papin_async,
        "httpx_async": c.httpx_async_call,
        "aiohttp": c.aiohttp_call,
    }
    names = list(variants)
    for name in names:  # warm-up: opens the connections
        runner.run(_throughput(variants[name], 4 * inflight, inflight))
    samples: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.monotonic() + budget
    for i in range(rounds):
        if time.monotonic() > deadline:
            log(f"  concurrent: time budget reached after {i} rounds")
            break
        for name in names[i % len(names) :] + names[: i % len(names)]:
            samples[name].append(runner.run(_throughput(variants[name], total, inflight)))
    return {
        name: {"rounds": len(v), "requests": total * len(v), "rps": statistics.median(v)}
        for name, v in samples.items()
    }


IMPORT_CASES: dict[str, str] = {
    "bare": "",
    "papin.llm": "import papin.llm",
    "seed_names": (
        "from papin.llm import create_llm_manager, GenerationOptions, LLMConfig, LLMManager, "
        "ProviderType\nfrom papin.llm.providers.ollama import OllamaConfig"
    ),
    "httpx": "import httpx",
}
_IMPORT_PROBE = """\
import time, sys
t0 = time.perf_counter()
{stmt}
t1 = time.perf_counter()
import json
print(json.dumps({{"in_process_s": t1 - t0, "modules": len(sys.modules),
  "loaded": [m for m in ("httpx", "aiohttp", "pydantic", "papin.llm.transport.client")
             if m in sys.modules]}}))
"""


def import_times(reps: int, env: dict[str, str], pycache: Path) -> dict[str, Any]:
    """Median import times in fresh interpreters.

    Bytecode is cached (in a private ``PYTHONPYCACHEPREFIX``, written by the first, discarded
    round) even where ``PYTHONDONTWRITEBYTECODE`` is set: an installed package has its
    ``.pyc`` files, and compiling papin's sources on every run would not measure papin.
    """
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    wall: dict[str, Timings] = {k: [] for k in IMPORT_CASES}
    inproc: dict[str, Timings] = {k: [] for k in IMPORT_CASES}
    info: dict[str, Any] = {}
    names = list(IMPORT_CASES)
    for i in range(reps + 1):  # the first round warms the disk cache and .pyc files
        for name in names[i % len(names) :] + names[: i % len(names)]:
            code = _IMPORT_PROBE.format(stmt=IMPORT_CASES[name] or "pass")
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, timeout=60, check=True
            )
            elapsed = time.perf_counter() - t0
            data = json.loads(out.stdout)
            if i:
                wall[name].append(elapsed)
                inproc[name].append(data["in_process_s"])
            info[name] = {"modules": data["modules"], "loaded": data["loaded"]}
    bare = statistics.median(wall["bare"])
    return {
        name: {
            "n": len(wall[name]),
            "wall_median_s": statistics.median(wall[name]),
            "over_bare_s": statistics.median(wall[name]) - bare,
            "in_process_median_s": statistics.median(inproc[name]),
            **info[name],
        }
        for name in names
    }


def rss() -> dict[str, float]:
    """RSS of this process now (psutil, else /proc/self/status) and its peak (getrusage)."""
    try:
        import psutil

        now_mib = psutil.Process().memory_info().rss / 2**20
    except ImportError:
        now_mib = 0.0
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    now_mib = int(line.split()[1]) / 1024
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"rss_mib": round(now_mib, 1), "peak_rss_mib": round(peak_mib, 1)}


# -- report ---------------------------------------------------------------------------------
def verdicts(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, for the sections that were measured."""
    rows: list[dict[str, Any]] = []

    def ratio_row(name: str, ours: float, base: float, limit: float) -> None:
        ratio = ours / base
        rows.append({
            "target": name, "papin": ours, "baseline": base, "value": ratio,
            "limit": f"<= {limit:.2f}x", "unit": "s", "pass": ratio <= limit,
        })

    if "sequential" in r:
        seq = r["sequential"]
        ratio_row("seq p50: sync facade / httpx.Client", seq["papin_sync"]["p50_s"],
                  seq["httpx_sync"]["p50_s"], 1.03)
        ratio_row("seq p50: papin async / httpx.AsyncClient", seq["papin_async"]["p50_s"],
                  seq["httpx_async"]["p50_s"], 1.03)
    for key, label in (("stream", "batched"), ("stream_per_line", "per line")):
        if key in r:
            ratio_row(f"10k-chunk stream: papin / httpx ({label})", r[key]["papin"]["median_s"],
                      r[key]["httpx_async"]["median_s"], 1.05)
    if "concurrent" in r:
        cc = r["concurrent"]
        speedup = cc["papin_async"]["rps"] / cc["httpx_async"]["rps"]
        rows.append({
            "target": "64-way req/s: papin / httpx.AsyncClient", "papin": cc["papin_async"]["rps"],
            "baseline": cc["httpx_async"]["rps"], "value": speedup, "limit": ">= 5.00x",
            "unit": "rps", "pass": speedup >= 5.0,
        })
    if "imports" in r:
        imp = r["imports"]
        for key, label, limit in (("papin.llm", "import papin.llm", 0.050),
                                  ("seed_names", "import seed names", 0.150)):
            over = imp[key]["over_bare_s"]
            rows.append({
                "target": f"{label} (over bare)", "papin": imp[key]["wall_median_s"],
                "baseline": imp["bare"]["wall_median_s"], "value": over,
                "limit": f"< {limit * 1e3:.0f} ms", "unit": "ms", "pass": over < limit,
            })
    return rows


def print_report(r: dict[str, Any]) -> None:
    out: list[str] = []
    add = out.append
    env = r["environment"]
    add(f"\npapin overhead benchmark - Python {env['python']}, {env['cpus']} CPUs, "
        f"load {env['load_start']} -> {env['load_end']}, {r['elapsed_s']:.0f} s"
        + (" (--quick)" if r["quick"] else ""))
    if "sequential" in r:
        add("\nSequential non-streaming generate (one request at a time)")
        add(f"  {'client':<14}{'n':>6}{'p50':>11}{'p99':>11}{'mean':>11}")
        for name, v in r["sequential"].items():
            add(f"  {name:<14}{v['n']:>6}{fmt_s(v['p50_s']):>11}{fmt_s(v['p99_s']):>11}"
                f"{fmt_s(v['mean_s']):>11}")
    for key, title in (("stream", f"server writes {BATCH_LINES} lines at a time"),
                       ("stream_per_line", "server flushes every line, like Ollama")):
        if key not in r:
            continue
        add(f"\nOne {STREAM_CHUNKS:,}-chunk stream ({title})")
        add(f"  {'client':<14}{'n':>6}{'median':>11}{'min':>11}{'chunks/s':>12}")
        for name, v in r[key].items():
            add(f"  {name:<14}{v['n']:>6}{fmt_s(v['median_s']):>11}{fmt_s(v['min_s']):>11}"
                f"{STREAM_CHUNKS / v['median_s']:>12,.0f}")
    if "concurrent" in r:
        add(f"\nConcurrent non-streaming generate ({r['config']['inflight']} in flight, "
            f"{r['config']['concurrent_total']} per round)")
        add(f"  {'client':<14}{'rounds':>7}{'req/s':>10}")
        for name, v in r["concurrent"].items():
            add(f"  {name:<14}{v['rounds']:>7}{v['rps']:>10,.0f}")
    if "imports" in r:
        add("\nImport time (fresh interpreter, bytecode cached, median)")
        add(f"  {'case':<12}{'n':>4}{'wall':>11}{'over bare':>11}{'in-proc':>11}{'modules':>9}"
            "  loaded")
        for name, v in r["imports"].items():
            add(f"  {name:<12}{v['n']:>4}{fmt_s(v['wall_median_s']):>11}"
                f"{fmt_s(v['over_bare_s']):>11}{fmt_s(v['in_process_median_s']):>11}"
                f"{v['modules']:>9}  {', '.join(v['loaded']) or '-'}")
    mem = r["memory"]
    add(f"\nMemory of the benchmark process: RSS {mem['rss_mib']} MiB, peak {mem['peak_rss_mib']} MiB")
    add("\nTargets")
    add(f"  {'target':<44}{'papin':>11}{'baseline':>11}{'value':>10}{'limit':>11}  result")
    for row in r["targets"]:
        if row["unit"] == "rps":
            p, b = f"{row['papin']:,.0f}/s", f"{row['baseline']:,.0f}/s"
        else:
            p, b = fmt_s(row["papin"]), fmt_s(row["baseline"])
        value = fmt_s(row["value"]) if row["unit"] == "ms" else f"{row['value']:.3f}x"
        add(f"  {row['target']:<44}{p:>11}{b:>11}{value:>10}{row['limit']:>11}  "
            f"{'PASS' if row['pass'] else 'FAIL'}")
    print("\n".join(out), flush=True)


def environment(load_start: Any) -> dict[str, Any]:
    """Where and with what the benchmark ran (versions, machine, load)."""
    import aiohttp
    import httpx

    import papin

    return {
        "papin_source": str(Path(papin.__file__).parent),
        "git": git_describe(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": load_average(),
        "httpx": httpx.__version__,
        "aiohttp": aiohttp.__version__,
    }


def git_describe() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


# -- main -----------------------------------------------------------------------------------
def clean_env(config_dir: Path) -> dict[str, str]:
    """This process's environment without PAPIN_*/OLLAMA_* and with a private config dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAPIN_", "OLLAMA_"))}
    env["PAPIN_CONFIG_DIR"] = str(config_dir)
    return env


SECTIONS = ("imports", "sequential", "stream", "concurrent")


def main() -> int:
    parser = argparse.ArgumentParser(description="papin overhead benchmark (fake Ollama server)")
    parser.add_argument("--quick", action="store_true", help="a short run (fewer samples)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})",
    )
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
        "import_reps": 7 if q else 11,
    }
    env = clean_env(tmp / "config")
    os.environ.clear()
    os.environ.update(env)
    started = time.perf_counter()
    load_start = load_average()
    if load_start and load_start[0] > 0.5:
        log(f"note: load average {load_start}: if the machine is busy, figures will be noisy")
    result: dict[str, Any] = {"quick": q, "config": cfg, "sections": sorted(only)}

    if "imports" in only:
        log("import times ...")
        result["imports"] = import_times(cfg["import_reps"], env, tmp / "pycache")
    if only - {"imports"}:
        with FakeServer() as server, asyncio.Runner() as runner:
            log(f"fake Ollama server at {server.url}")
            clients = Clients(server.url)
            try:
                runner.run(clients.astart())
                if "sequential" in only:
                    log("sequential ...")
                    result["sequential"] = sequential(
                        clients, runner, cfg["sequential_requests"], 90
                    )
                if "stream" in only:
                    log("stream ...")
                    result["stream"] = streaming(
                        clients, runner, cfg["stream_reps"], BATCH_LINES, 30
                    )
                    result["stream_per_line"] = streaming(clients, runner, cfg["stream_reps"], 1, 30)
                if "concurrent" in only:
                    log("concurrent ...")
                    result["concurrent"] = concurrent(
                        clients, runner, cfg["concurrent_total"], cfg["inflight"],
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
