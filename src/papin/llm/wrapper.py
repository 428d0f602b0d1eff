"""Providers that wrap a provider: the shape of cross-cutting behaviour.

:class:`WrapperProvider` delegates every method and property of
:class:`~papin.llm.provider.Provider` to the provider it wraps (a test checks, by introspection,
that none is forgotten). The router (fallbacks, retries, breakers) and metrics subclass it and
override only what they change, so they work on every backend without knowing any.

Example::

    class Counting(WrapperProvider):
        calls = 0

        def stream_generate(self, model, prompt, options=None):
            Counting.calls += 1
            return super().stream_generate(model, prompt, options)

    async with Counting(OllamaProvider()) as llm:
        await llm.generate("llama3.2", "Hi")      # stream_generate was counted
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import ClassVar

from papin.llm.datatypes import (
    Capability,
    DownloadStatus,
    GenerationChunk,
    GenerationResult,
    LoadedModel,
    ModelInfo,
    ProviderStatus,
)
from papin.llm.options import GenerationOptions
from papin.llm.provider import ChunkCallback, Messages, ProgressCallback, Provider

__all__ = ["WrapperProvider"]


class WrapperProvider(Provider):
    """Delegates everything to :attr:`wrapped`; subclasses override what they change.

    Its name, display name, description, capabilities and configuration are the wrapped
    provider's (a subclass may rename it: ``wrapper.name = "ollama@gpu-box"``).
    """

    kind: ClassVar[str] = "wrapper"

    def __init__(self, wrapped: Provider) -> None:
        super().__init__(wrapped.config)
        self.wrapped = wrapped
        self.display_name = wrapped.display_name
        self.description = wrapped.description
        self.capabilities = wrapped.capabilities

    # -- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The wrapped provider's name, unless this wrapper was given its own."""
        return self._name or self.wrapped.name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    def supports(self, capability: Capability) -> bool:
        """Whether the wrapped provider offers ``capability``."""
        return self.wrapped.supports(capability)

    def default_model_id(self) -> str | None:
        """The wrapped provider's default model."""
        return self.wrapped.default_model_id()

    def can_pull(self, model: str) -> bool:
        """Whether the wrapped provider can pull ``model``."""
        return self.wrapped.can_pull(model)

    # -- status ---------------------------------------------------------------------------
    async def status(self) -> ProviderStatus:
        """The wrapped provider's status."""
        return await self.wrapped.status()

    async def is_available(self) -> bool:
        """Whether the wrapped backend answers."""
        return await self.wrapped.is_available()

    async def get_version(self) -> str:
        """The wrapped backend's version."""
        return await self.wrapped.get_version()

    async def get_system_info(self) -> dict[str, str]:
        """The wrapped backend's facts."""
        return await self.wrapped.get_system_info()

    # -- models ---------------------------------------------------------------------------
    async def list_downloaded_models(self) -> list[ModelInfo]:
        """The wrapped provider's installed models."""
        return await self.wrapped.list_downloaded_models()

    async def list_available_models(self) -> list[ModelInfo]:
        """The wrapped provider's available models."""
        return await self.wrapped.list_available_models()

    async def get_model_info(self, model: str) -> ModelInfo:
        """Details of ``model`` from the wrapped provider."""
        return await self.wrapped.get_model_info(model)

    async def delete_model(self, model: str) -> None:
        """Delete ``model`` through the wrapped provider."""
        await self.wrapped.delete_model(model)

    # -- downloads ------------------------------------------------------------------------
    def pull_model(self, model: str) -> AsyncGenerator[DownloadStatus, None]:
        """The wrapped provider's download stream."""
        return self.wrapped.pull_model(model)

    async def download_model(self, model: str, on_progress: ProgressCallback | None = None) -> DownloadStatus:
        """Download ``model`` through the wrapped provider."""
        return await self.wrapped.download_model(model, on_progress)

    async def start_download(self, model: str) -> None:
        """Start a background download in the wrapped provider."""
        await self.wrapped.start_download(model)

    async def cancel_download(self, model: str) -> None:
        """Cancel a background download of the wrapped provider."""
        await self.wrapped.cancel_download(model)

    def get_download_status(self, model: str) -> DownloadStatus | None:
        """The wrapped provider's download progress."""
        return self.wrapped.get_download_status(model)

    # -- loading --------------------------------------------------------------------------
    async def list_loaded_models(self) -> list[LoadedModel]:
        """The wrapped provider's loaded models."""
        return await self.wrapped.list_loaded_models()

    async def is_model_loaded(self, model: str) -> bool:
        """Whether ``model`` is loaded in the wrapped provider."""
        return await self.wrapped.is_model_loaded(model)

    async def load_model(self, model: str) -> None:
        """Load ``model`` in the wrapped provider."""
        await self.wrapped.load_model(model)

    async def unload_model(self, model: str) -> None:
        """Unload ``model`` in the wrapped provider."""
        await self.wrapped.unload_model(model)

    # -- generation -----------------------------------------------------------------------
    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """The wrapped provider's completion stream."""
        return self.wrapped.stream_generate(model, prompt, options)

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """The wrapped provider's chat stream."""
        return self.wrapped.stream_chat(model, messages, options)

    async def generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> GenerationResult:
        """Complete ``prompt`` (through this wrapper's :meth:`stream_generate`)."""
        return await super().generate(model, prompt, options)

    async def chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> GenerationResult:
        """Answer ``messages`` (through this wrapper's :meth:`stream_chat`)."""
        return await super().chat(model, messages, options)

    async def generate_text(self, model: str, prompt: str, options: GenerationOptions | None = None) -> str:
        """The completion as a string (through this wrapper's :meth:`stream_generate`)."""
        return await super().generate_text(model, prompt, options)

    async def generate_text_streaming(
        self, model: str, prompt: str, options: GenerationOptions | None, callback: ChunkCallback
    ) -> GenerationResult:
        """The streaming call with a callback (through this wrapper's :meth:`stream_generate`)."""
        return await super().generate_text_streaming(model, prompt, options, callback)

    async def collect(
        self,
        model: str,
        chunks: AsyncGenerator[GenerationChunk, None],
        *,
        callback: ChunkCallback | None = None,
    ) -> GenerationResult:
        """Consume a chunk stream into a result, named after this provider."""
        return await super().collect(model, chunks, callback=callback)

    # -- lifecycle ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the wrapped provider."""
        await super().aclose()
        await self.wrapped.aclose()
