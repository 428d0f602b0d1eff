"""Self-test of the contract suite: its tests pass for a minimal provider, and the checks for
missing capabilities (which no real entry exercises yet: Ollama has them all) really work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import pytest

from papin.llm.datatypes import (
    Capability,
    FinishReason,
    GenerationChunk,
    GenerationStats,
    ModelInfo,
    ProviderStatus,
    ProviderType,
)
from papin.llm.errors import ModelNotFoundError, ProviderUnavailableError
from papin.llm.options import GenerationOptions
from papin.llm.provider import Provider
from tests.contract import test_contract as contract
from tests.contract.backends import ContractBackend


class EchoProvider(Provider):
    """Echoes the prompt's words back; only generation, streaming and listing."""

    provider_type: ClassVar[ProviderType] = ProviderType.OPENAI_COMPATIBLE
    display_name: str = "Echo"
    capabilities: frozenset[Capability] = frozenset(
        {Capability.GENERATE, Capability.STREAMING, Capability.LIST_MODELS}
    )
    down = False

    def _check(self) -> None:
        if self.down:
            raise ProviderUnavailableError("Echo is not running.", provider=self.name)

    async def status(self) -> ProviderStatus:
        if self.down:
            return ProviderStatus(self.name, False, error="Echo is not running.")
        return ProviderStatus(self.name, True, version="1")

    async def list_downloaded_models(self) -> list[ModelInfo]:
        self._check()
        return [ModelInfo("echo", "echo", self.name)]

    async def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncIterator[GenerationChunk]:
        self._check()
        if model != "echo":
            raise ModelNotFoundError(f"Model '{model}' not found.", provider=self.name, model=model)
        words = prompt.split()
        limit = options.max_tokens if options and options.max_tokens else len(words)
        for word in words[:limit]:
            yield GenerationChunk(word + " ")
        reason: FinishReason = "length" if limit < len(words) else "stop"
        yield GenerationChunk("", done=True, stats=GenerationStats(
            finish_reason=reason, output_tokens=min(limit, len(words)), time_to_first_token=0.0))


def _backend() -> ContractBackend:
    def unavailable() -> Provider:
        provider = EchoProvider()
        provider.down = True
        return provider

    return ContractBackend(
        name="echo",
        provider=EchoProvider(),
        model="echo",
        capabilities=EchoProvider.capabilities,
        unavailable=unavailable,
        prompt=" ".join(str(n) for n in range(1, 21)),
    )


@pytest.mark.parametrize(
    "check",
    [
        contract.test_status_available,
        contract.test_list_models_contains_the_model,
        contract.test_generate_returns_text_with_stats,
        contract.test_streaming_matches_non_streaming,
        contract.test_callback_false_cancels,
        contract.test_max_tokens_is_respected,
        contract.test_unknown_model_is_model_not_found,
        contract.test_unavailable_endpoint,
        contract.test_unsupported_capabilities_raise,
        contract.test_declared_capabilities_are_implemented,
    ],
)
async def test_contract_holds_for_a_minimal_provider(check: object) -> None:
    assert callable(check)
    await check(_backend())


async def test_every_missing_capability_is_checked() -> None:
    backend = _backend()
    missing = [c for c in Capability if c not in backend.capabilities]
    assert len(missing) == 7
    await contract.test_unsupported_capabilities_raise(backend)


async def test_a_provider_lying_about_a_capability_fails_the_contract() -> None:
    backend = _backend()
    liar = ContractBackend(
        name="liar", provider=backend.provider, model="echo",
        capabilities=backend.capabilities | {Capability.LOAD}, unavailable=backend.unavailable,
    )
    with pytest.raises(AssertionError):
        contract.test_declares_the_expected_capabilities(liar)
    with pytest.raises(Exception, match="does not support loading"):
        await contract.test_declared_capabilities_are_implemented(liar)
