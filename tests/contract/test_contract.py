"""The provider contract: what every papin provider must do, whatever its backend.

Runs once per entry of :data:`tests.contract.backends.BACKENDS` (the ``backend`` fixture).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from papin.llm.datatypes import Capability, GenerationChunk
from papin.llm.errors import (
    ModelNotFoundError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    UnsupportedOperationError,
)
from papin.llm.options import GenerationOptions
from papin.llm.provider import Provider
from tests.contract.backends import ContractBackend

pytestmark = pytest.mark.timeout(90)

#: Capabilities whose operation has a generic fallback in ``Provider`` (model info comes
#: from the model list), so a provider without them may answer instead of raising.
HAS_FALLBACK = frozenset({Capability.MODEL_INFO})
GREEDY = GenerationOptions(temperature=0.0, seed=42, max_tokens=12)
MESSAGES = [{"role": "user", "content": "Say hello."}]


async def _drain(chunks: AsyncIterator[GenerationChunk]) -> list[GenerationChunk]:
    return [chunk async for chunk in chunks]


def operation(capability: Capability, provider: Provider, model: str) -> Callable[[], Awaitable[Any]]:
    """A call that exercises ``capability`` (``download``/``delete`` change the backend)."""
    opts = GenerationOptions(max_tokens=4)
    calls: dict[Capability, Callable[[], Awaitable[Any]]] = {
        Capability.GENERATE: lambda: provider.generate(model, "hi", opts),
        Capability.CHAT: lambda: provider.chat(model, MESSAGES, opts),
        Capability.STREAMING: lambda: _drain(provider.stream_generate(model, "hi", opts)),
        Capability.LIST_MODELS: provider.list_downloaded_models,
        Capability.DOWNLOAD: lambda: provider.download_model(model),
        Capability.DELETE: lambda: provider.delete_model(model),
        Capability.LOAD: lambda: provider.load_model(model),
        Capability.UNLOAD: lambda: provider.unload_model(model),
        Capability.LIST_LOADED: provider.list_loaded_models,
        Capability.MODEL_INFO: lambda: provider.get_model_info(model),
    }
    return calls[capability]


# -- identity and status -----------------------------------------------------------------------


def test_declares_the_expected_capabilities(backend: ContractBackend) -> None:
    assert backend.provider.capabilities == backend.capabilities
    assert {Capability.GENERATE, Capability.STREAMING} <= backend.capabilities
    for capability in Capability:
        assert backend.provider.supports(capability) is (capability in backend.capabilities)


async def test_status_available(backend: ContractBackend) -> None:
    status = await backend.provider.status()
    assert status.available, status.error
    assert status.error is None
    assert status.provider == backend.provider.name
    assert await backend.provider.is_available()


async def test_list_models_contains_the_model(backend: ContractBackend) -> None:
    models = await backend.provider.list_downloaded_models()
    assert backend.model in {m.id for m in models}
    assert all(m.provider == backend.provider.name for m in models)


# -- generation --------------------------------------------------------------------------------


async def test_generate_returns_text_with_stats(backend: ContractBackend) -> None:
    result = await backend.provider.generate(backend.model, backend.prompt, GREEDY)
    assert result.text.strip()
    assert result.model == backend.model and result.provider == backend.provider.name
    stats = result.stats
    assert stats.finish_reason in ("stop", "length")
    if stats.output_tokens is not None:
        assert 0 < stats.output_tokens <= 12
    if stats.tokens_per_second is not None:
        assert stats.tokens_per_second > 0
    assert stats.time_to_first_token is not None and stats.time_to_first_token >= 0


async def test_streaming_matches_non_streaming(backend: ContractBackend) -> None:
    chunks = await _drain(backend.provider.stream_generate(backend.model, backend.prompt, GREEDY))
    assert chunks, "no chunks"
    done = [i for i, c in enumerate(chunks) if c.done]
    assert done == [len(chunks) - 1], "exactly one done chunk, and it is the last"
    assert chunks[-1].stats is not None
    assert sum(1 for c in chunks if c.text) >= 2, "a stream should come in several pieces"
    streamed = "".join(c.text for c in chunks)
    assert streamed.strip()
    if not backend.deterministic:
        pytest.skip(f"{backend.name} is not deterministic")
    whole = await backend.provider.generate(backend.model, backend.prompt, GREEDY)
    assert streamed == whole.text


async def test_chat(backend: ContractBackend) -> None:
    if Capability.CHAT not in backend.capabilities:
        pytest.skip(f"{backend.name} has no chat")
    result = await backend.provider.chat(backend.model, MESSAGES, GREEDY)
    assert result.text.strip()
    assert result.stats.finish_reason in ("stop", "length")


async def test_callback_false_cancels(backend: ContractBackend) -> None:
    seen: list[str] = []

    def callback(text: str) -> bool:
        seen.append(text)
        return False

    result = await backend.provider.generate_text_streaming(
        backend.model, backend.prompt, GREEDY, callback
    )
    assert result.finish_reason == "cancelled"
    assert len(seen) == 1 and result.text == seen[0]
    again = await backend.provider.generate(backend.model, backend.prompt, GREEDY)
    assert again.text.startswith(seen[0]) or not backend.deterministic


async def test_max_tokens_is_respected(backend: ContractBackend) -> None:
    options = GenerationOptions(temperature=0.0, seed=42, max_tokens=3)
    result = await backend.provider.generate(backend.model, backend.prompt, options)
    if result.stats.output_tokens is not None:
        assert result.stats.output_tokens <= 3
    if backend.reports_length:
        assert result.finish_reason == "length"
    longer = await backend.provider.generate(backend.model, backend.prompt, GREEDY)
    assert len(result.text) <= len(longer.text)


# -- errors ------------------------------------------------------------------------------------


async def test_unknown_model_is_model_not_found(backend: ContractBackend) -> None:
    if not backend.validates_model:
        pytest.skip(f"{backend.name} ignores the model name")
    name = "papin-no-such-model:404"
    with pytest.raises(ModelNotFoundError) as info:
        await backend.provider.generate(name, "hi", GREEDY)
    assert info.value.provider == backend.provider.name
    assert "papin-no-such-model" in str(info.value)


async def test_unavailable_endpoint(backend: ContractBackend) -> None:
    if backend.unavailable is None:
        pytest.skip(f"{backend.name} has no endpoint")
    provider = backend.unavailable()
    async with provider:
        status = await provider.status()
        assert not status.available and status.error
        for call in (
            lambda: provider.generate(backend.model, "hi", GREEDY),
            provider.list_downloaded_models,
        ):
            with pytest.raises(ProviderUnavailableError) as info:
                await call()
            assert not isinstance(info.value, ProviderTimeoutError)
            assert info.value.provider == provider.name
            assert info.value.retryable


async def test_unsupported_capabilities_raise(backend: ContractBackend) -> None:
    missing = [c for c in Capability if c not in backend.capabilities]
    if not missing:
        pytest.skip(f"{backend.name} supports every capability")
    for capability in missing:
        call = operation(capability, backend.provider, backend.model)
        if capability in HAS_FALLBACK:
            try:
                info = await call()
            except UnsupportedOperationError:
                continue
            assert info.id == backend.model
            continue
        with pytest.raises(UnsupportedOperationError) as error:
            await call()
        assert backend.provider.display_name in str(error.value)


async def test_declared_capabilities_are_implemented(backend: ContractBackend) -> None:
    # download and delete change the backend, so they are covered by provider tests
    cheap = [Capability.LIST_MODELS, Capability.MODEL_INFO, Capability.LIST_LOADED,
             Capability.LOAD, Capability.UNLOAD, Capability.CHAT]
    for capability in cheap:
        if capability in backend.capabilities:
            await operation(capability, backend.provider, backend.model)()
