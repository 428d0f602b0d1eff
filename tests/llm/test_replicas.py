"""Replicas and circuit breakers: one Ollama backend on three hosts (127.0.0.1, .2, .3)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from papin.llm import LLMConfig, LLMManager
from papin.llm.config.recovery import BreakerConfig, RetryConfig
from papin.llm.errors import AuthenticationError, ProviderError, ProviderUnavailableError
from papin.llm.router import RecoveryEvent, ReplicaSet
from tests.fakes.ollama import DEFAULT_TOKENS, FakeOllama
from tests.ollama_helpers import MODEL, closed_port_url

pytestmark = pytest.mark.timeout(60)
GEN = "/api/generate"
TEXT = "".join(DEFAULT_TOKENS)


@pytest.fixture
def fakes() -> Iterator[list[FakeOllama]]:
    servers = []
    try:
        for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            fake = FakeOllama(models=[MODEL])
            fake.host = host
            servers.append(fake.start())
        yield servers
    finally:
        for fake in servers:
            fake.stop()


def _manager(
    endpoints: list[str], *, threshold: int = 2, cooldown: float = 0.5, attempts: int = 1
) -> tuple[LLMManager, list[RecoveryEvent]]:
    cfg = LLMConfig(
        provider_type="ollama",
        provider_config={"endpoints": endpoints, "connect_timeout_seconds": 0.5, "timeout_seconds": 2.0,
                         "first_byte_timeout_seconds": 2.0, "idle_timeout_seconds": 2.0},
        auto_discover=False,
        auto_pull=False,
        retry=RetryConfig(max_attempts=attempts, initial_backoff_seconds=0.01, max_backoff_seconds=0.02),
        circuit_breaker=BreakerConfig(failure_threshold=threshold, cooldown_seconds=cooldown),
    )  # fmt: skip
    manager = LLMManager.with_config(cfg)
    events: list[RecoveryEvent] = []
    manager.recovery.listeners.append(events.append)
    return manager, events


def _served(fakes: list[FakeOllama]) -> list[int]:
    return [len(f.requests_to(GEN)) for f in fakes]


async def test_requests_spread_over_the_replicas(fakes: list[FakeOllama]) -> None:
    manager, _ = _manager([f.url for f in fakes])
    await manager.initialize()
    assert isinstance(manager.current_provider, ReplicaSet)
    results = await asyncio.gather(*(manager.generate_text(MODEL, "hi") for _ in range(9)))
    await manager.aclose()
    assert results == [TEXT] * 9
    assert all(n >= 1 for n in _served(fakes)), _served(fakes)  # fewest in flight: all get work


async def test_a_dead_replica_is_skipped_at_once_and_no_request_fails(fakes: list[FakeOllama]) -> None:
    dead = closed_port_url()
    manager, events = _manager([dead, fakes[1].url, fakes[2].url])
    await manager.initialize()  # available: two of three answer
    for _ in range(6):
        assert await manager.generate_text(MODEL, "hi") == TEXT
    set_ = manager.current_provider
    assert isinstance(set_, ReplicaSet)
    assert set_.breakers[0].state == "open"  # two failures in a row opened it
    kinds = [e.kind for e in events]
    assert kinds.count("failed_over") == 2 and "breaker_opened" in kinds
    await manager.aclose()


async def test_a_replica_killed_mid_run_loses_no_request(fakes: list[FakeOllama]) -> None:
    manager, _ = _manager([f.url for f in fakes])
    await manager.initialize()
    assert await manager.generate_text(MODEL, "hi") == TEXT
    fakes[0].stop()  # killed: connections refused from now on
    results = await asyncio.gather(*(manager.generate_text(MODEL, "hi") for _ in range(8)))
    chunks = [c.text async for c in manager.stream(MODEL, "hi")]
    await manager.aclose()
    assert results == [TEXT] * 8 and "".join(chunks) == TEXT


async def test_the_breaker_half_opens_and_closes_after_the_cooldown(fakes: list[FakeOllama]) -> None:
    manager, events = _manager([f.url for f in fakes], threshold=1, cooldown=0.3)
    await manager.initialize()
    set_ = manager.current_provider
    assert isinstance(set_, ReplicaSet)
    fakes[0].fault(GEN, "reset", times=1)
    fakes[1].fault(GEN, "reset", times=1)
    assert await manager.generate_text(MODEL, "hi") == TEXT  # .1 and .2 failed, .3 answered
    assert [b.state for b in set_.breakers][:2] == ["open", "open"]
    await asyncio.sleep(0.35)
    assert set_.breakers[0].state == "half_open"
    for _ in range(4):
        assert await manager.generate_text(MODEL, "hi") == TEXT
    assert [b.state for b in set_.breakers] == ["closed", "closed", "closed"]
    kinds = [e.kind for e in events]
    assert kinds.count("breaker_half_open") >= 2 and kinds.count("breaker_closed") >= 2
    await manager.aclose()


async def test_when_every_replica_is_open_the_request_waits_then_fails_typed(fakes: list[FakeOllama]) -> None:
    manager, _ = _manager([fakes[0].url, fakes[1].url], threshold=1, cooldown=0.3)
    await manager.initialize()
    for fake in fakes[:2]:
        fake.fault(GEN, "reset", times=10)
    with pytest.raises(ProviderUnavailableError):
        await manager.generate_text(MODEL, "hi")  # both fail: both open
    for fake in fakes[:2]:
        fake.clear_faults()
    started = asyncio.get_running_loop().time()
    assert await manager.generate_text(MODEL, "hi") == TEXT  # waits out the cooldown, then probes
    assert asyncio.get_running_loop().time() - started >= 0.2
    await manager.aclose()


async def test_a_401_opens_that_endpoint_at_once_and_moves_on(fakes: list[FakeOllama]) -> None:
    manager, events = _manager([fakes[0].url, fakes[1].url], threshold=5)
    await manager.initialize()
    fakes[0].fault(GEN, "status", status=401, times=10)
    fakes[1].fault(GEN, "status", status=401, times=10)
    with pytest.raises(AuthenticationError):
        await manager.generate_text(MODEL, "hi")
    set_ = manager.current_provider
    assert isinstance(set_, ReplicaSet)
    assert [b.state for b in set_.breakers] == ["open", "open"]
    await manager.aclose()


async def test_management_goes_to_every_replica_and_says_which_failed(fakes: list[FakeOllama]) -> None:
    manager, _ = _manager([f.url for f in fakes])
    await manager.initialize()
    for fake in fakes:
        fake.add_model("extra:latest")
    fakes[2].fault("/api/delete", "status", status=500)
    with pytest.raises(ProviderError) as info:
        await manager.delete_model("extra:latest")
    assert fakes[2].url in str(info.value) and "done on" in str(info.value)
    assert all("extra:latest" not in f.models for f in fakes[:2])
    models = await manager.list_downloaded_models()
    ids = {m.id for m in models}
    assert "extra:latest" in ids and any(i.startswith(MODEL) for i in ids)
    set_ = manager.current_provider
    assert isinstance(set_, ReplicaSet)
    assert set_.replica(fakes[1].url).name == "ollama"
    status = await set_.status()
    assert status.available and len([k for k in status.details if k.startswith("replica")]) == 3
    await manager.aclose()
