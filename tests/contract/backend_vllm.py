"""Contract entry ``vllm-fake``: the vLLM provider against the fake vLLM server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from papin.llm.datatypes import Capability
from papin.llm.provider import Provider
from tests.contract.backends import BackendFactory, ContractBackend, closed_port_url

__all__ = ["ENTRIES", "vllm_fake"]

_LIMITS: dict[str, Any] = {"timeout_seconds": 5.0, "connect_timeout_seconds": 2.0,
                           "first_byte_timeout_seconds": 5.0, "idle_timeout_seconds": 2.0}
MODEL = "meta-llama/Llama-3.2-1B-Instruct"


@contextlib.asynccontextmanager
async def vllm_fake() -> AsyncIterator[ContractBackend]:
    """The vLLM provider (with an API key, ``/v1`` in the endpoint) against the fake vLLM."""
    from papin.llm.providers.vllm import VLLMConfig, VLLMProvider
    from tests.fakes.vllm import FakeVLLM

    def unavailable() -> Provider:
        return VLLMProvider(VLLMConfig(endpoint=closed_port_url(), **_LIMITS))

    with FakeVLLM(models=[MODEL], api_key="sk-contract") as fake:
        fake.tokens = [f" {n}\n" for n in range(1, 21)]
        config = VLLMConfig(endpoint=f"{fake.url}/v1", api_key="sk-contract", **_LIMITS)
        async with VLLMProvider(config) as provider:
            yield ContractBackend(
                name="vllm-fake",
                provider=provider,
                model=MODEL,
                # vLLM loads its model at startup: no download, delete, load or unload of
                # models (LoRA adapters load at runtime, but only when the server allows it).
                capabilities=frozenset({
                    Capability.GENERATE, Capability.CHAT, Capability.STREAMING,
                    Capability.LIST_MODELS, Capability.MODEL_INFO, Capability.LIST_LOADED,
                }),
                unavailable=unavailable,
            )


ENTRIES: dict[str, BackendFactory] = {"vllm-fake": vllm_fake}
