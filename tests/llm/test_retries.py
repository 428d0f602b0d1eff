"""Retries by error class, through the manager as users call it: before the first chunk only,
never duplicating output, each decision reported as a RecoveryEvent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from papin.llm import GenerationOptions, LLMConfig, LLMManager
from papin.llm.config.recovery import RetryConfig
from papin.llm.errors import (
    AuthenticationError,
    ModelNotFoundError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
)
from papin.llm.router import RecoveryEvent
from papin.llm.sync import SyncLLMManager
from tests.fakes.ollama import DEFAULT_TOKENS, FakeOllama
from tests.ollama_helpers import MODEL

pytestmark = pytest.mark.timeout(30)
GEN = "/api/generate"
TEXT = "".join(DEFAULT_TOKENS)
FAST_RETRY = RetryConfig(max_attempts=3, initial_backoff_seconds=0.01, max_backoff_seconds=0.05,
                         max_retry_after_seconds=1.0)  # fmt: skip


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL]) as server:
        yield server


def _manager(
    fake: FakeOllama, retry: RetryConfig = FAST_RETRY, **settings: object
) -> tuple[LLMManager, list[RecoveryEvent]]:
    provider_config = {"endpoint": fake.url, "first_byte_timeout_seconds": 5.0, "idle_timeout_seconds": 5.0,
                       **settings}  # fmt: skip
    cfg = LLMConfig(provider_type="ollama", provider_config=provider_config, auto_pull=False, retry=retry,
                    auto_discover=False)  # retries alone: no moving to another backend
    manager = LLMManager.with_config(cfg)
    events: list[RecoveryEvent] = []
    manager.recovery.listeners.append(events.append)
    return manager, events


def _kinds(events: list[RecoveryEvent]) -> list[str]:
    return [e.kind for e in events]


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("status", {"status": 503, "headers": {"Retry-After": "0.1"}}),
        ("status", {"status": 429}),
        ("reset", {}),
    ],
)
async def test_a_retryable_failure_before_output_is_retried(
    fake: FakeOllama, kind: str, params: dict[str, object]
) -> None:
    fake.fault(GEN, kind, times=2, **params)
    manager, events = _manager(fake)
    assert await manager.generate_text(MODEL, "hi") == TEXT
    await manager.aclose()
    assert len(fake.requests_to(GEN)) == 3
    assert _kinds(events) == ["attempt", "retried", "attempt", "retried", "attempt"]
    if params.get("headers"):
        assert events[1].delay == pytest.approx(0.1)  # the server's Retry-After


async def test_a_first_byte_timeout_is_retried_and_the_stream_is_whole(fake: FakeOllama) -> None:
    fake.fault(GEN, "never_answer", seconds=3)
    manager, events = _manager(fake, first_byte_timeout_seconds=0.3)
    chunks = [c.text async for c in manager.stream(MODEL, "hi")]
    await manager.aclose()
    assert "".join(chunks) == TEXT  # once: nothing duplicated
    assert events[1].kind == "retried" and events[1].reason == "timeout"


@pytest.mark.parametrize(
    ("params", "error"),
    [({"status": 401}, AuthenticationError), ({"status": 400}, ProviderError)],
)
async def test_a_non_retryable_failure_fails_at_once(
    fake: FakeOllama, params: dict[str, object], error: type[ProviderError]
) -> None:
    fake.fault(GEN, "status", times=3, **params)
    manager, events = _manager(fake)
    with pytest.raises(error):
        await manager.generate_text(MODEL, "hi")
    await manager.aclose()
    assert len(fake.requests_to(GEN)) == 1
    assert _kinds(events) == ["attempt", "gave_up"]


async def test_a_missing_model_is_not_retried(fake: FakeOllama) -> None:
    manager, events = _manager(fake)
    with pytest.raises(ModelNotFoundError):
        await manager.generate_text("no-such-model", "hi")
    await manager.aclose()
    assert _kinds(events) == ["attempt", "gave_up"]


async def test_a_retry_after_beyond_the_cap_fails_typed_at_once(fake: FakeOllama) -> None:
    fake.fault(GEN, "status", status=429, headers={"Retry-After": "120"}, times=3)
    manager, events = _manager(fake)
    with pytest.raises(RateLimitedError) as info:
        await manager.generate_text(MODEL, "hi")
    await manager.aclose()
    assert info.value.retry_after == 120
    assert len(fake.requests_to(GEN)) == 1


async def test_attempts_run_out_with_the_last_typed_error(fake: FakeOllama) -> None:
    fake.fault(GEN, "reset", times=5)
    manager, events = _manager(fake)
    with pytest.raises(ProviderUnavailableError):
        await manager.generate_text(MODEL, "hi")
    await manager.aclose()
    assert len(fake.requests_to(GEN)) == 3
    assert _kinds(events)[-1] == "gave_up" and events[-1].attempt == 3


async def test_a_failure_after_output_is_never_retried_and_keeps_the_text(fake: FakeOllama) -> None:
    fake.fault(GEN, "disconnect_mid_stream", after=3)
    manager, events = _manager(fake)
    got: list[str] = []
    with pytest.raises(ProviderError) as info:
        async for chunk in manager.stream(MODEL, "hi"):
            got.append(chunk.text)
    await manager.aclose()
    assert len(fake.requests_to(GEN)) == 1
    assert got and info.value.partial_text == "".join(got)
    assert _kinds(events) == ["attempt", "failed_after_output"]


def test_retries_off_and_the_sync_facade(fake: FakeOllama) -> None:
    fake.fault(GEN, "reset")
    manager, events = _manager(fake, RetryConfig(max_attempts=1))
    with SyncLLMManager(manager) as llm, pytest.raises(ProviderUnavailableError):
        llm.generate_text(MODEL, "hi")
    assert events == []
    fake.fault(GEN, "reset")
    manager, events = _manager(fake)
    with SyncLLMManager(manager) as llm:
        assert "".join(c.text for c in llm.stream(MODEL, "hi", GenerationOptions())) == TEXT
        assert llm.recovery is manager.recovery
    assert _kinds(events) == ["attempt", "retried", "attempt"]


def test_retry_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        RetryConfig(max_attempts=0)
    with pytest.raises(ValueError):
        RetryConfig(initial_backoff_seconds=5, max_backoff_seconds=1)
    assert LLMConfig().retry.max_attempts == 3


async def test_events_as_an_async_iterator(fake: FakeOllama) -> None:
    fake.fault(GEN, "reset")
    manager, _ = _manager(fake)
    seen: list[str] = []

    async def watch() -> None:
        async for event in manager.recovery.events():
            seen.append(event.kind)
            if event.kind == "attempt" and len(seen) > 1:
                return

    watcher = asyncio.ensure_future(watch())
    await asyncio.sleep(0)
    assert await manager.generate_text(MODEL, "hi") == TEXT
    await asyncio.wait_for(watcher, 5)
    await manager.aclose()
    assert seen == ["attempt", "retried", "attempt"]
    assert manager.recovery._queues == []  # unsubscribed on leaving the loop
