"""Contract entry of the custom OpenAI-compatible provider, against the fake OpenAI server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from papin.llm.datatypes import Capability
from papin.llm.provider import Provider
from tests.contract.backends import BackendFactory, ContractBackend, closed_port_url

__all__ = ["ENTRIES"]

_LIMITS = {"timeout_seconds": 5.0, "connect_timeout_seconds": 2.0,
           "first_byte_timeout_seconds": 5.0, "idle_timeout_seconds": 2.0}


@contextlib.asynccontextmanager
async def openai_compatible_fake() -> AsyncIterator[ContractBackend]:
    """``OpenAICompatibleProvider`` (the "custom" provider) against ``FakeOpenAIServer``."""
    from papin.llm.providers.openai_compatible import OpenAICompatibleConfig, OpenAICompatibleProvider
    from tests.fakes.openai_server import FakeOpenAIServer

    def unavailable() -> Provider:
        return OpenAICompatibleProvider(OpenAICompatibleConfig(endpoint=closed_port_url(), **_LIMITS))

    with FakeOpenAIServer(models=["tiny-chat"]) as fake:
        fake.tokens = [f" {n}\n" for n in range(1, 21)]
        config = OpenAICompatibleConfig(endpoint=fake.url + "/v1", **_LIMITS)
        provider = OpenAICompatibleProvider(config)
        async with provider:
            yield ContractBackend(
                name="openai-compatible-fake",
                provider=provider,
                model="tiny-chat",
                capabilities=frozenset({Capability.GENERATE, Capability.CHAT, Capability.STREAMING,
                                        Capability.LIST_MODELS, Capability.MODEL_INFO}),
                unavailable=unavailable,
            )


ENTRIES: dict[str, BackendFactory] = {"openai-compatible-fake": openai_compatible_fake}
