"""Contract entry ``localai-fake``: the LocalAI provider against the fake LocalAI server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from papin.llm.datatypes import Capability
from papin.llm.provider import Provider
from tests.contract.backends import BackendFactory, ContractBackend, closed_port_url

__all__ = ["ENTRIES", "localai_fake"]

_LIMITS = {"timeout_seconds": 5.0, "connect_timeout_seconds": 2.0,
           "first_byte_timeout_seconds": 5.0, "idle_timeout_seconds": 2.0,
           "gallery_poll_interval_seconds": 0.01}


@contextlib.asynccontextmanager
async def localai_fake() -> AsyncIterator[ContractBackend]:
    """The LocalAI provider (with an API key) against the fake LocalAI server."""
    from papin.llm.providers.localai import LocalAIConfig, LocalAIProvider
    from tests.fakes.localai import FakeLocalAI

    def unavailable() -> Provider:
        return LocalAIProvider(LocalAIConfig(endpoint=closed_port_url(), **_LIMITS))

    with FakeLocalAI(models=["phi-2"], api_key="sk-contract") as fake:
        fake.tokens = [f" {n}\n" for n in range(1, 21)]
        fake.keepalive_every = 3
        config = LocalAIConfig(endpoint=f"{fake.url}/v1", api_key="sk-contract", **_LIMITS)
        async with LocalAIProvider(config) as provider:
            yield ContractBackend(
                name="localai-fake",
                provider=provider,
                model="phi-2",
                capabilities=frozenset(Capability) - {Capability.LIST_LOADED},
                unavailable=unavailable,
            )


ENTRIES: dict[str, BackendFactory] = {"localai-fake": localai_fake}
