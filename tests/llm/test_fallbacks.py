"""Fallback chains (``LLMConfig.fallbacks``): the next provider when the primary fails before
its output, never after; the offline embedded default as the last resort."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from papin.llm import GenerationOptions, LLMConfig, LLMManager
from papin.llm.config.recovery import FallbackSpec, RetryConfig
from papin.llm.errors import ProviderAPIError, ProviderError
from papin.llm.router import RecoveryEvent
from tests.fakes.ollama import DEFAULT_TOKENS, FakeOllama
from tests.fakes.openai_server import FakeOpenAIServer
from tests.ollama_helpers import MODEL, closed_port_url

pytestmark = pytest.mark.timeout(60)
GEN = "/api/generate"
TEXT = "".join(DEFAULT_TOKENS)


@pytest.fixture
def backup() -> Iterator[FakeOllama]:
    fake = FakeOllama(models=[MODEL])
    fake.host = "127.0.0.2"  # another host
    with fake:
        yield fake


def _manager(primary_url: str, fallbacks: list[FallbackSpec]) -> tuple[LLMManager, list[RecoveryEvent]]:
    cfg = LLMConfig(
        provider_type="ollama",
        provider_config={"endpoint": primary_url, "connect_timeout_seconds": 0.5, "timeout_seconds": 1.0},
        auto_discover=False,
        auto_pull=False,
        retry=RetryConfig(max_attempts=2, initial_backoff_seconds=0.01, max_backoff_seconds=0.02),
        fallbacks=fallbacks,
    )
    manager = LLMManager.with_config(cfg)
    events: list[RecoveryEvent] = []
    manager.recovery.listeners.append(events.append)
    return manager, events


async def test_the_backup_answers_when_the_primary_fails_after_its_retries(backup: FakeOllama) -> None:
    with FakeOllama(models=[MODEL]) as primary:
        manager, events = _manager(primary.url, [FallbackSpec(provider_type="ollama",
                                                             provider_config={"endpoint": backup.url})])
        await manager.initialize()
        primary.fault(GEN, "status", status=503, times=10)
        assert await manager.generate_text(MODEL, "hi") == TEXT
        chunks = [c.text async for c in manager.stream(MODEL, "hi")]
        await manager.aclose()
    assert "".join(chunks) == TEXT
    assert len(primary.requests_to(GEN)) == 4  # two attempts for each call
    assert len(backup.requests_to(GEN)) == 2
    kinds = [e.kind for e in events]
    assert kinds.count("fell_back") == 2 and "retried" in kinds


async def test_fallbacks_are_tried_in_order_and_can_name_their_model(backup: FakeOllama) -> None:
    with FakeOpenAIServer(models=["other-model"]) as openai_backup, FakeOllama(models=[MODEL]) as primary:
        primary.fault(GEN, "status", status=500, times=10)
        manager, events = _manager(primary.url, [
            FallbackSpec(provider_type="ollama", provider_config={"endpoint": closed_port_url()}),
            FallbackSpec(provider_type="openai_compatible", model="other-model",
                         provider_config={"endpoint": f"{openai_backup.url}/v1"}),
        ])  # fmt: skip
        await manager.initialize()
        text = await manager.generate_text(MODEL, "hi")
        await manager.aclose()
    assert text
    assert [r.json["model"] for r in openai_backup.requests_to("/v1/completions")] == ["other-model"]
    assert [e.reason.split(";")[1].strip() for e in events if e.kind == "fell_back"] == [
        "next: ollama", "next: openai_compatible"]


async def test_a_bad_request_or_output_already_sent_never_falls_back(backup: FakeOllama) -> None:
    with FakeOllama(models=[MODEL]) as primary:
        manager, events = _manager(primary.url, [FallbackSpec(provider_type="ollama",
                                                             provider_config={"endpoint": backup.url})])
        await manager.initialize()
        primary.fault(GEN, "status", status=400, times=1)
        with pytest.raises(ProviderAPIError):
            await manager.generate_text(MODEL, "hi")
        primary.fault(GEN, "disconnect_mid_stream", after=3)
        got: list[str] = []
        with pytest.raises(ProviderError) as info:
            async for chunk in manager.stream(MODEL, "hi"):
                got.append(chunk.text)
        await manager.aclose()
    assert got and info.value.partial_text == "".join(got)
    assert backup.requests_to(GEN) == [] and not [e for e in events if e.kind == "fell_back"]


async def test_the_embedded_default_as_the_last_resort() -> None:
    """The offline default (llama-cpp-python and Gemma 3 270M, as installed) answers once the
    configured server has gone away; it serves its own default model."""
    pytest.importorskip("llama_cpp")
    with FakeOllama(models=[MODEL]) as primary:
        manager, events = _manager(primary.url, [FallbackSpec(provider_type="llamacpp")])
        await manager.initialize()
    # the primary is stopped: nothing listens there any more
    text = await manager.generate_text(MODEL, "The capital of France is", GenerationOptions(max_tokens=4))
    await manager.aclose()
    assert text.strip()
    assert [e.kind for e in events if e.kind == "fell_back"] == ["fell_back"]


def test_fallback_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="provider_type"):
        LLMConfig.model_validate({"fallbacks": [{"provider": "ollama"}]})
    cfg = LLMConfig(fallbacks=[{"provider_type": "OLLAMA"}])  # type: ignore[list-item]
    assert cfg.fallbacks[0].provider_type == "ollama"


def _hosts(other_model: str) -> tuple[FakeOllama, FakeOllama]:
    """A primary Ollama on 127.0.0.2 (serving MODEL) and another on 127.0.0.3 (not started)."""
    primary, other = FakeOllama(models=[MODEL]), FakeOllama(models=[other_model])
    primary.host, other.host = "127.0.0.2", "127.0.0.3"
    return primary, other


def _moving(
    primary: FakeOllama, other: FakeOllama, **extra: object
) -> tuple[LLMManager, list[RecoveryEvent]]:
    """A manager on ``primary`` whose discovery also finds ``other`` (auto_discover is on)."""
    cfg = LLMConfig(
        provider_type="ollama", auto_pull=False, retry=RetryConfig(max_attempts=1),
        provider_config={"endpoint": primary.url, "connect_timeout_seconds": 0.5, "timeout_seconds": 1.0},
        discovery={"extra_endpoints": [f"ollama={other.url}"]},  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )  # fmt: skip
    manager = LLMManager.with_config(cfg)
    events: list[RecoveryEvent] = []
    manager.recovery.listeners.append(events.append)
    return manager, events


async def test_a_down_primary_moves_to_a_discovered_backend_and_comes_back() -> None:
    """auto_discover: the primary is down (connections reset), discovery finds another running
    Ollama that serves the model; requests go there until the primary's breaker closes."""
    primary, other = _hosts(MODEL)
    with primary, other:
        breaker = {"failure_threshold": 1, "cooldown_seconds": 0.3}
        manager, events = _moving(primary, other, circuit_breaker=breaker)
        await manager.initialize()
        primary.fault(GEN, "reset", times=100)
        assert await manager.generate_text(MODEL, "hi") == TEXT
        assert await manager.generate_text(MODEL, "hi") == TEXT  # the primary rests: not asked
        assert len(primary.requests_to(GEN)) == 1 and len(other.requests_to(GEN)) == 2
        moved = [e for e in events if e.kind == "moved"]
        assert len(moved) == 1 and other.url in moved[0].reason
        primary.clear_faults()
        await asyncio.sleep(0.35)  # the cooldown: the next request probes the primary
        assert await manager.generate_text(MODEL, "hi") == TEXT
        assert len(primary.requests_to(GEN)) == 2 and len(other.requests_to(GEN)) == 2
        await manager.aclose()


async def test_no_move_to_a_backend_that_lacks_the_model() -> None:
    primary, other = _hosts("something-else")
    with primary, other:
        manager, _ = _moving(primary, other)
        await manager.initialize()
        primary.fault(GEN, "reset", times=100)
        with pytest.raises(ProviderError):
            await manager.generate_text(MODEL, "hi")
        await manager.aclose()
    assert other.requests_to(GEN) == []


async def test_a_request_without_a_model_moves_to_a_backend_serving_its_own() -> None:
    """The caller named no model: the backend moved to serves its own (here its only one)."""
    primary, other = _hosts("something-else")
    with primary, other:
        manager, events = _moving(primary, other)
        await manager.initialize()
        primary.fault(GEN, "reset", times=100)
        assert await manager.generate_text(None, "hi") == TEXT  # no model named
        with pytest.raises(ProviderError):  # a named model the other lacks: no move
            await manager.generate_text(MODEL, "hi")
        await manager.aclose()
    assert [r.json["model"] for r in other.requests_to(GEN)] == ["something-else:latest"]
    assert [e.kind for e in events].count("moved") == 1


async def test_a_primary_down_at_start_starts_on_the_first_fallback_that_answers(backup: FakeOllama) -> None:
    manager, _ = _manager(closed_port_url(), [
        FallbackSpec(provider_type="ollama", provider_config={"endpoint": closed_port_url()}),
        FallbackSpec(provider_type="ollama", provider_config={"endpoint": backup.url}),
    ])  # fmt: skip
    await manager.initialize()
    choice = manager.provider_choice
    assert choice is not None and "fallback 2" in choice.reason and len(choice.tried) == 2
    assert await manager.generate_text(MODEL, "hi") == TEXT
    await manager.aclose()
    assert len(backup.requests_to(GEN)) == 1


async def test_no_model_named_and_the_primary_entirely_down() -> None:
    """Nothing answers at the primary any more (not even its model list): a request that
    named no model still moves to another running backend, which serves its own model."""
    primary, other = _hosts("something-else")
    with other:
        primary.start()
        manager, _ = _moving(primary, other)
        await manager.initialize()
        primary.stop()  # gone: connections refused from now on
        assert await manager.generate_text(None, "hi") == TEXT
        assert "".join([c.text async for c in manager.stream(None, "hi")]) == TEXT
        with pytest.raises(ProviderError):  # a named model nobody running serves: typed failure
            await manager.generate_text(MODEL, "hi")
        await manager.aclose()
    assert [r.json["model"] for r in other.requests_to(GEN)] == ["something-else:latest"] * 2
