"""Contract entry ``lmstudio-fake``: the LM Studio provider against the fake LM Studio server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from papin.llm.provider import Provider
from tests.contract.backends import BackendFactory, ContractBackend, closed_port_url

__all__ = ["ENTRIES"]

_LIMITS = {"timeout_seconds": 5.0, "connect_timeout_seconds": 2.0,
           "first_byte_timeout_seconds": 5.0, "idle_timeout_seconds": 2.0}


@contextlib.asynccontextmanager
async def lmstudio_fake() -> AsyncIterator[ContractBackend]:
    """The LM Studio provider against the fake LM Studio (REST API v1, JIT loading on)."""
    from papin.llm.providers.lmstudio import LMStudioConfig, LMStudioProvider
    from tests.fakes.lmstudio import FakeLMStudio

    def unavailable() -> Provider:
        return LMStudioProvider(LMStudioConfig(endpoint=closed_port_url(), **_LIMITS))

    with FakeLMStudio(models=["qwen/qwen3-4b"]) as fake:
        fake.tokens = [f" {n}\n" for n in range(1, 21)]
        config = LMStudioConfig(endpoint=fake.url, download_poll_interval_seconds=0.01, **_LIMITS)
        async with LMStudioProvider(config) as provider:
            yield ContractBackend(
                name="lmstudio-fake",
                provider=provider,
                model="qwen/qwen3-4b",
                capabilities=LMStudioProvider.capabilities,
                unavailable=unavailable,
            )


ENTRIES: dict[str, BackendFactory] = {"lmstudio-fake": lmstudio_fake}
