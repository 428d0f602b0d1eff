"""Benchmark of discovery, hardware detection and ``papin providers`` (run by hand, not in CI).

    .venv/bin/python bench/discovery/bench_discovery.py            # about 30 seconds
    .venv/bin/python bench/discovery/bench_discovery.py --rounds 5 # quicker
    .venv/bin/python bench/discovery/bench_discovery.py --json     # machine-readable

Scenarios (each a fresh probe, ``refresh=True``, median of ``--rounds``):

* **nothing running**: the default candidates (environment + the well-known loopback ports) on
  this machine; the script says so if something does answer there. Also six ports known to be
  closed, so that the figure does not depend on the machine.
* **three fake backends**: a fake Ollama, LocalAI and vLLM (``tests/fakes``) served by a child
  process (so that their work does not share this process's GIL), plus three closed ports.
* **one silent address**: a socket that listens (the kernel accepts connections) and never
  answers, plus the three fakes: discovery costs about one read timeout.
* **full discovery**: servers, model files on disk and installed executables/packages.
* **cold discovery**: a fresh interpreter importing papin and probing the default candidates.
* **hardware detection**: ``papin.llm.hardware.detect_hardware`` (warm, and cold in a fresh
  interpreter, with and without the llama.cpp build probe).
* **``papin providers``**: wall time of the command in a fresh process (text and ``--json``).

Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from papin.llm.discovery import Discovery  # noqa: E402

FAKES = """
import sys, time
sys.path.insert(0, {root!r})
from tests.fakes.ollama import FakeOllama
from tests.fakes.localai import FakeLocalAI
from tests.fakes.vllm import FakeVLLM
with FakeOllama(models=["llama3.2:latest", "qwen2.5:7b"]) as o, FakeLocalAI() as l, FakeVLLM() as v:
    print(o.url, l.url, v.url, flush=True)
    sys.stdin.read()  # until the benchmark closes the pipe
"""


def closed_ports(n: int) -> list[str]:
    urls = []
    for _ in range(n):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            urls.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
    return urls


@contextmanager
def fake_backends() -> Iterator[list[str]]:
    proc = subprocess.Popen([sys.executable, "-c", FAKES.format(root=str(ROOT))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        assert proc.stdout is not None
        urls = proc.stdout.readline().split()
        if len(urls) != 3:
            raise RuntimeError("the fake backends did not start")
        yield urls
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def silent_address() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections complete in the kernel; nobody ever reads or answers
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "min_ms": ordered[0] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


async def timed(make: Callable[[], Awaitable[Any]], rounds: int) -> tuple[list[float], Any]:
    await make()  # warm-up: imports, first connections
    samples, last = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        last = await make()
        samples.append(time.perf_counter() - started)
    return samples, last


def fresh(code: str, rounds: int, env: dict[str, str] | None = None) -> list[float]:
    """Wall times of ``python -c code`` (the code prints its own inner time on the last line)."""
    out = []
    for _ in range(rounds):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **(env or {})}, cwd=ROOT)  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(run.stderr)
        out.append(float(run.stdout.strip().splitlines()[-1]))
    return out


def wall(args: list[str], rounds: int, env: dict[str, str] | None = None) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        run = subprocess.run(
            args, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
        )
        out.append(time.perf_counter() - started)
        if run.returncode != 0:
            raise RuntimeError(run.stderr)
    return out


async def discovery_rows(rounds: int) -> list[tuple[str, dict[str, float], str]]:
    rows = []

    def servers(d: Discovery) -> Callable[[], Awaitable[Any]]:
        return lambda: d.discover(refresh=True, files=False, installed=False)

    default = Discovery()
    samples, result = await timed(servers(default), rounds)
    note = f"{len(result.probed)} addresses; found: {[b.provider for b in result.backends] or 'nothing'}"
    rows.append(("discovery, nothing running (default candidates)", summary(samples), note))

    closed = Discovery(candidates=closed_ports(6), default_dirs=False)
    samples, _ = await timed(servers(closed), rounds)
    rows.append(("discovery, nothing running (6 closed ports)", summary(samples), "servers only"))

    with fake_backends() as urls:
        three = Discovery(candidates=[*urls, *closed_ports(3)], default_dirs=False)
        samples, result = await timed(servers(three), rounds)
        found = ", ".join(f"{b.provider} {b.version}" for b in result.backends)
        rows.append(("discovery, 3 fake backends + 3 closed ports", summary(samples), found))
        with silent_address() as silent:
            hung = Discovery(candidates=[silent, *urls], default_dirs=False)
            samples, result = await timed(servers(hung), max(3, rounds // 3))
            rows.append((
                "discovery, 1 silent address + 3 fakes",
                summary(samples),
                f"read timeout {hung.read_timeout:g} s; found {len(result.backends)} backends",
            ))  # fmt: skip

    full = Discovery()
    samples, result = await timed(lambda: full.discover(refresh=True), max(3, rounds // 3))
    rows.append((
        "discovery, full (servers + files + installed)",
        summary(samples),
        f"{len(result.model_files)} model files, {len(result.executables)} executables, "
        f"{len(result.packages)} packages; parts: "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.seconds.items()),
    ))  # fmt: skip
    return rows


COLD_DISCOVERY = """
import time; t = time.perf_counter()
import asyncio
from papin.llm.discovery import Discovery
asyncio.run(Discovery().discover(files=False, installed=False))
print(time.perf_counter() - t)
"""

HARDWARE = """
import time; t = time.perf_counter()
from papin.llm.hardware import detect_hardware
detect_hardware(include_llama={llama})
print(time.perf_counter() - t)
"""


def hardware_rows(rounds: int) -> list[tuple[str, dict[str, float], str]]:
    try:
        from papin.llm.hardware import detect_hardware
    except ImportError:  # HOOK: papin.llm.hardware not available in this checkout
        nan = {"median_ms": float("nan"), "min_ms": float("nan"), "max_ms": float("nan")}
        return [("hardware detection", nan, "papin.llm.hardware is missing: not measured")]
    rows = []
    detect_hardware(refresh=True, include_llama=False)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        hw = detect_hardware(refresh=True, include_llama=False)
        samples.append(time.perf_counter() - started)
    gpus = ", ".join(g.name for g in hw.gpus) or "no GPU"
    rows.append(("hardware detection, warm (include_llama=False)", summary(samples), gpus))
    for llama in (False, True):
        cold = fresh(HARDWARE.format(llama=llama), max(3, rounds // 3))
        rows.append(
            (f"hardware detection, fresh process (include_llama={llama})", summary(cold), "import included")
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="samples per scenario (default 15)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rounds = max(1, args.rounds)

    rows = asyncio.run(discovery_rows(rounds))
    cold = fresh(COLD_DISCOVERY, max(3, rounds // 3))
    rows.append(
        ("discovery, fresh process (imports included)", summary(cold), "default candidates, servers only")
    )
    rows += hardware_rows(rounds)
    papin = [sys.executable, "-m", "papin", "providers"]
    for label, extra in (("papin providers", []), ("papin providers --json", ["--json"])):
        rows.append((f"{label} (wall, subprocess)", summary(wall(papin + extra, max(3, rounds // 3))),
                     "default config and candidates"))  # fmt: skip

    if args.json:
        print(json.dumps([{"what": w, **s, "note": n} for w, s, n in rows], indent=2))
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load:.2f}, rounds {rounds}\n"
    )
    width = max(len(w) for w, _, _ in rows)
    print(f"{'measurement':<{width}}  {'median':>9}  {'min':>9}  {'max':>9}  note")
    for what, s, note in rows:
        print(
            f"{what:<{width}}  {s['median_ms']:>7.1f}ms  {s['min_ms']:>7.1f}ms  {s['max_ms']:>7.1f}ms  {note}"
        )


if __name__ == "__main__":
    main()
