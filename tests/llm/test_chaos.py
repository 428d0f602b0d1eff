"""Chaos: replicas as real processes on 127.0.0.2 and 127.0.0.3, frozen with SIGSTOP, resumed
with SIGCONT and killed with SIGKILL while requests run. No request fails when the failure
happens before its first chunk; a frozen replica is taken out within its first-byte limit and
comes back through half-open after SIGCONT."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from papin.llm import GenerationOptions, LLMConfig, LLMManager
from papin.llm.config.recovery import BreakerConfig, RetryConfig
from papin.llm.router import RecoveryEvent, ReplicaSet
from tests import REPO

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]
SERVER = REPO / "bench" / "cheap_server.py"
MODEL = "bench-frames"
TEXT = " hello" * 16


class Replica:
    """``bench/cheap_server.py`` in its own process on one loopback address."""

    def __init__(self, host: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--host", host, "--max-seconds", "120"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith(b"PORT "), line
        self.url = f"http://{host}:{int(line.split()[1])}"

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for host in ("127.0.0.2", "127.0.0.3"):
            started.append(Replica(host))
        yield started
    finally:
        for replica in started:
            replica.stop()


def _manager(urls: list[str]) -> tuple[LLMManager, list[RecoveryEvent]]:
    cfg = LLMConfig(
        provider_type="ollama",
        provider_config={"endpoints": urls, "connect_timeout_seconds": 0.5, "timeout_seconds": 1.0,
                         "first_byte_timeout_seconds": 0.5, "idle_timeout_seconds": 0.5},
        auto_discover=False, auto_pull=False,
        retry=RetryConfig(max_attempts=1),
        circuit_breaker=BreakerConfig(failure_threshold=1, cooldown_seconds=1.0),
    )  # fmt: skip
    manager = LLMManager.with_config(cfg)
    manager.monitor_on_initialize = False
    events: list[RecoveryEvent] = []
    manager.recovery.listeners.append(events.append)
    return manager, events


OPTIONS = GenerationOptions(max_tokens=16)


async def test_a_frozen_replica_is_taken_out_then_comes_back(replicas: list[Replica]) -> None:
    manager, events = _manager([r.url for r in replicas])
    await manager.initialize()
    replica_set = manager.current_provider
    assert isinstance(replica_set, ReplicaSet)
    assert await manager.generate_text(MODEL, "hi", OPTIONS) == TEXT
    replicas[0].signal(signal.SIGSTOP)
    started = time.monotonic()
    results = await asyncio.gather(*(manager.generate_text(MODEL, "hi", OPTIONS) for _ in range(6)))
    elapsed = time.monotonic() - started
    assert results == [TEXT] * 6  # nothing failed: the frozen one was left before any output
    assert elapsed < 0.5 + 1.0  # its first-byte limit, plus a margin for this machine
    assert replica_set.breakers[0].state == "open"
    replicas[0].signal(signal.SIGCONT)
    await asyncio.sleep(1.1)  # the cooldown
    for _ in range(3):
        assert await manager.generate_text(MODEL, "hi", OPTIONS) == TEXT
    assert replica_set.breakers[0].state == "closed"
    kinds = [e.kind for e in events]
    assert "failed_over" in kinds and "breaker_half_open" in kinds and kinds[-1] != "breaker_opened"
    await manager.aclose()


async def test_a_replica_killed_mid_run_fails_no_request(replicas: list[Replica]) -> None:
    manager, _ = _manager([r.url for r in replicas])
    await manager.initialize()

    async def one() -> str:
        return "".join([c.text async for c in manager.stream(MODEL, "hi", OPTIONS)])

    first = await asyncio.gather(*(one() for _ in range(4)))
    replicas[1].signal(signal.SIGKILL)
    second = await asyncio.gather(*(one() for _ in range(8)))
    await manager.aclose()
    assert first + second == [TEXT] * 12


# -- a userspace TCP proxy in front of one replica: latency, stalls, resets -------------------


@pytest.mark.parametrize("mode", ["stall", "reset", "latency"])
async def test_proxy_faults_before_output_fail_over(replicas: list[Replica], mode: str) -> None:
    from tests.fakes.proxy import ChaosProxy

    host, port = replicas[0].url.removeprefix("http://").split(":")
    with ChaosProxy(host, int(port), mode="pass", delay=0.05) as proxy:
        manager, events = _manager([proxy.url, replicas[1].url])
        await manager.initialize()
        replica_set = manager.current_provider
        assert isinstance(replica_set, ReplicaSet)
        proxy.mode = mode  # type: ignore[assignment]
        started = time.monotonic()
        results = [await manager.generate_text(MODEL, "hi", OPTIONS) for _ in range(4)]
        elapsed = time.monotonic() - started
        await manager.aclose()
    assert results == [TEXT] * 4
    if mode == "latency":  # slow but healthy: nothing fails over
        assert not [e for e in events if e.kind == "failed_over"]
    else:
        assert replica_set.breakers[0].state == "open"
        assert [e.kind for e in events].count("failed_over") == 1  # then it rests
        assert elapsed < 0.5 + 1.0  # the stall costs one first-byte limit, once
