"""The cost of recovery, measured as users call papin: the retry wrapper's overhead, failover
latency after a replica dies, and throughput with one of three replicas down.

Run from the repository root::

    .venv/bin/python bench/bench_recovery.py           # about 1 minute
    .venv/bin/python bench/bench_recovery.py --quick

Servers: ``cheap_server.py`` processes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (replicas are
killed with SIGKILL). papin: ``LLMManager`` on the Ollama protocol, ``generate_text(model,
prompt, GenerationOptions(max_tokens=16))``. It reports; it does not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

from bench_client import CheapServer, log, pct, throughput

MODEL = "bench-batched"
INFLIGHT = 32


def manager(urls: list[str], *, attempts: int, connect: float = 0.5) -> Any:
    from papin.llm import LLMConfig, LLMManager
    from papin.llm.config.recovery import BreakerConfig, RetryConfig

    settings: dict[str, Any] = {"connect_timeout_seconds": connect, "first_byte_timeout_seconds": 5.0}
    settings["endpoints" if len(urls) > 1 else "endpoint"] = urls if len(urls) > 1 else urls[0]
    cfg = LLMConfig(provider_type="ollama", provider_config=settings, auto_discover=False, auto_pull=False,
                    retry=RetryConfig(max_attempts=attempts),
                    circuit_breaker=BreakerConfig(failure_threshold=1, cooldown_seconds=60))  # fmt: skip
    m = LLMManager.with_config(cfg)
    m.monitor_on_initialize = False
    return m


async def p50(call: Callable[[], Awaitable[Any]], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t0)
    return pct(times, 0.5)


async def run(quick: bool) -> dict[str, Any]:
    from papin.llm import GenerationOptions

    opts = GenerationOptions(max_tokens=16)
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        servers = [stack.enter_context(CheapServer(h)) for h in ("127.0.0.1", "127.0.0.2", "127.0.0.3")]
        # 1. the retry wrapper's overhead over the provider alone, interleaved rounds
        direct, wrapped = manager([servers[0].url], attempts=1), manager([servers[0].url], attempts=3)
        for m in (direct, wrapped):
            await m.initialize()
            await p50(lambda m=m: m.generate_text(MODEL, "hi", opts), 200)
        rounds: dict[str, list[float]] = {"direct": [], "wrapped": []}
        for _ in range(10 if quick else 30):
            for name, m in (("direct", direct), ("wrapped", wrapped)):
                rounds[name].append(await p50(lambda m=m: m.generate_text(MODEL, "hi", opts), 50))
        out["wrapper_p50_s"] = {k: statistics.median(v) for k, v in rounds.items()}
        for m in (direct, wrapped):
            await m.aclose()
        # 2. throughput, all three replicas up, then one killed; and the failover latency
        total = 2000 if quick else 6000
        m = manager([s.url for s in servers], attempts=3)
        await m.initialize()
        call = lambda: m.generate_text(MODEL, "hi", opts)  # noqa: E731
        await throughput(call, 500)
        out["rps_all_up"] = await throughput(call, total)
        steady = await p50(call, 100)
        victim = servers[0].proc
        assert victim is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(5)
        t0 = time.perf_counter()
        await call()  # the first request after the death: it may meet the dead one first
        out["failover_first_request_s"] = time.perf_counter() - t0
        out["steady_p50_s"] = steady
        out["connect_timeout_s"] = 0.5
        out["rps_one_down"] = await throughput(call, total)
        await m.aclose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    log("recovery benchmark ...")
    r = asyncio.run(run(args.quick))
    w = r["wrapper_p50_s"]
    ratio = w["wrapped"] / w["direct"]
    keep = r["rps_one_down"] / r["rps_all_up"]
    extra = r["failover_first_request_s"] - r["steady_p50_s"]
    limit = r["connect_timeout_s"] + 0.050
    print(f"retry wrapper p50: {w['wrapped'] * 1e6:.0f} us vs direct {w['direct'] * 1e6:.0f} us = "
          f"{ratio:.3f}x (target <= 1.03)  {'PASS' if ratio <= 1.03 else 'FAIL'}")
    print(f"first request after a replica died: {r['failover_first_request_s'] * 1e3:.1f} ms "
          f"(steady p50 {r['steady_p50_s'] * 1e3:.2f} ms; failover cost {extra * 1e3:.1f} ms; "
          f"target <= connect timeout + 50 ms = {limit * 1e3:.0f} ms)  "
          f"{'PASS' if extra <= limit else 'FAIL'}")
    print(f"{INFLIGHT}-way throughput: all three up {r['rps_all_up']:,.0f} req/s, one down "
          f"{r['rps_one_down']:,.0f} req/s = {keep:.2f}x (target >= 0.6)  "
          f"{'PASS' if keep >= 0.6 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
