"""The provider interface every backend implements.

A provider implements a handful of primitives; everything else is derived here:

* ``stream_generate`` / ``stream_chat`` (async iterators of :class:`GenerationChunk`, the last
  one carrying :class:`GenerationStats`) are the generation primitives. ``generate``,
  ``chat``, ``generate_text`` and ``generate_text_streaming`` are built on them.
* ``pull_model`` (an async iterator of :class:`DownloadStatus`) is the download primitive;
  ``download_model``, ``start_download``, ``cancel_download`` and ``get_download_status``
  are built on it.

Optional operations are listed in ``capabilities``; the default implementations raise
:class:`UnsupportedOperationError` with a clear message.
"""

from __future__ import annotations

import contextlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field

from papin.llm.chunk_stream import batches_of
from papin.llm.datatypes import (
    Capability,
    ChatMessage,
    DownloadStatus,
    GenerationChunk,
    GenerationResult,
    GenerationStats,
    LoadedModel,
    ModelInfo,
    ProviderStatus,
    ProviderType,
)
from papin.llm.errors import (
    CancelledError,
    DownloadError,
    ModelNotFoundError,
    ProviderError,
    UnsupportedOperationError,
)
from papin.llm.options import GenerationOptions

if TYPE_CHECKING:
    import asyncio

__all__ = ["ChunkCallback", "Messages", "ProgressCallback", "Provider", "ProviderConfig"]

#: Streaming callback: gets each text chunk, returns False to stop generation.
ChunkCallback = Callable[[str], "bool | None | Awaitable[bool | None]"]
#: Download progress callback.
ProgressCallback = Callable[[DownloadStatus], "None | Awaitable[None]"]
#: Chat messages, as :class:`ChatMessage` or ``{"role": ..., "content": ...}`` dicts.
Messages = Sequence["ChatMessage | dict[str, Any]"]


class ProviderConfig(BaseModel):
    """Base class of every provider's typed configuration.

    ``optimize`` (on by default; ``LLMConfig.enable_optimizations=False`` turns it off) lets a
    provider fit the load settings the user left unset (threads, context, batch, GPU layers,
    mmap/mlock) to this machine, see :mod:`papin.llm.hardware.tuning`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)

    optimize: bool = Field(True, description="Fit unset load settings (threads, context...) to this machine.")


def _is_cancellation(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def as_messages(messages: Messages) -> list[ChatMessage]:
    """Normalise chat messages given as dicts or :class:`ChatMessage`."""
    out: list[ChatMessage] = []
    for m in messages:
        if isinstance(m, ChatMessage):
            out.append(m)
        elif isinstance(m, dict) and "role" in m and "content" in m:
            out.append(
                ChatMessage(
                    role=str(m["role"]),
                    content=str(m["content"]),
                    images=tuple(m.get("images") or ()),
                )
            )
        else:
            from papin.llm.errors import ConfigurationError

            raise ConfigurationError(
                f"Invalid chat message {m!r}: expected {{'role': ..., 'content': ...}}."
            )
    return out


class Provider(ABC):
    """Abstract base class of LLM providers (Ollama, llama.cpp, OpenAI-compatible servers...).

    All I/O methods are coroutines or async iterators; use :mod:`papin.llm.sync` from
    synchronous code. A provider is an async context manager: ``async with provider: ...``
    closes its connections on exit.
    """

    #: The provider's identity: its registry name (``"ollama"``). A built-in takes the value of
    #: its :attr:`provider_type`; a third-party provider sets its own string (no enum member).
    kind: ClassVar[str] = ""
    #: The built-in kind, for the built-ins only (``None`` for any other provider).
    provider_type: ClassVar[ProviderType | None] = None
    display_name: str = ""
    description: str = ""
    capabilities: frozenset[Capability] = frozenset(
        {Capability.GENERATE, Capability.STREAMING, Capability.LIST_MODELS}
    )
    config_class: ClassVar[type[ProviderConfig]] = ProviderConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__ and "provider_type" in cls.__dict__ and cls.provider_type is not None:
            cls.kind = cls.provider_type.value

    def __init__(self, config: ProviderConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        self._download_tasks: dict[str, asyncio.Task[DownloadStatus]] = {}
        self._download_status: dict[str, DownloadStatus] = {}
        self._name: str | None = None

    # -- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """This provider's name: its :attr:`kind` (``"ollama"``), unless given another one
        (replicas and metrics labels use ``kind@endpoint``-style names)."""
        return self._name or self.kind

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    def supports(self, capability: Capability) -> bool:
        """Whether this provider offers ``capability``."""
        return capability in self.capabilities

    def default_model_id(self) -> str | None:
        """A model this provider can use when none is configured or installed (or None)."""
        return None

    def can_pull(self, model: str) -> bool:
        """Whether :meth:`pull_model` could fetch ``model`` (used for automatic downloads)."""
        return self.supports(Capability.DOWNLOAD)

    def _unsupported(self, operation: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(
            f"The {self.display_name} provider does not support {operation}.",
            provider=self.name,
        )

    # -- status ---------------------------------------------------------------------------
    @abstractmethod
    async def status(self) -> ProviderStatus:
        """Probe the backend. Never raises for "not running": returns ``available=False``."""

    async def is_available(self) -> bool:
        """Whether the backend answers (a network failure is ``False``, not an error)."""
        return (await self.status()).available

    async def get_version(self) -> str:
        """The backend's version string."""
        st = await self.status()
        if not st.available:
            from papin.llm.errors import ProviderUnavailableError

            raise ProviderUnavailableError(st.error or "unavailable", provider=self.name)
        return st.version or "unknown"

    async def get_system_info(self) -> dict[str, str]:
        """Facts about the backend as strings (provider, endpoint, version...)."""
        st = await self.status()
        info = {"provider": self.display_name, "available": str(st.available).lower()}
        if st.endpoint:
            info["endpoint"] = st.endpoint
        if st.version:
            info["version"] = st.version
        if st.error:
            info["error"] = st.error
        info.update(st.details)
        return info

    # -- models ---------------------------------------------------------------------------
    @abstractmethod
    async def list_downloaded_models(self) -> list[ModelInfo]:
        """Models installed and ready to use."""

    async def list_available_models(self) -> list[ModelInfo]:
        """Models that can be used or downloaded (installed ones at least)."""
        return await self.list_downloaded_models()

    async def get_model_info(self, model: str) -> ModelInfo:
        """Details of one model; raises :class:`ModelNotFoundError` if unknown."""
        for info in await self.list_available_models():
            if info.id == model or info.name == model:
                return info
        raise ModelNotFoundError(
            f"Model '{model}' is not known to {self.display_name}.", provider=self.name, model=model
        )

    async def delete_model(self, model: str) -> None:
        """Remove an installed model."""
        raise self._unsupported("deleting models")

    # -- downloads ------------------------------------------------------------------------
    def pull_model(self, model: str) -> AsyncGenerator[DownloadStatus, None]:
        """Download ``model``, yielding progress; the last status has ``complete=True``.

        Closing the iterator cancels the download.
        """
        raise self._unsupported("downloading models")

    async def download_model(
        self, model: str, on_progress: ProgressCallback | None = None
    ) -> DownloadStatus:
        """Download ``model`` to completion, reporting progress to ``on_progress``.

        Raises:
            DownloadError: the backend reported a failure.
            UnsupportedOperationError: the provider cannot download models.
        """
        last = DownloadStatus(model_id=model)
        stream = self.pull_model(model)
        try:
            async for status in stream:
                last = status
                self._download_status[model] = status
                if on_progress is not None:
                    await _maybe_await(on_progress(status))
        except ProviderError as exc:
            self._download_status[model] = DownloadStatus(
                model_id=model,
                status="error",
                bytes_downloaded=last.bytes_downloaded,
                total_bytes=last.total_bytes,
                error=str(exc),
            )
            raise
        except BaseException as exc:
            if not _is_cancellation(exc):
                raise
            self._download_status[model] = DownloadStatus(
                model_id=model,
                status="cancelled",
                bytes_downloaded=last.bytes_downloaded,
                total_bytes=last.total_bytes,
                cancelled=True,
                error="Download cancelled",
            )
            raise
        finally:
            await stream.aclose()
        if not last.complete:
            raise DownloadError(
                f"The download of '{model}' from {self.display_name} ended before it completed.",
                provider=self.name,
                model=model,
            )
        return last

    async def start_download(self, model: str) -> None:
        """Start downloading ``model`` in the background and return at once.

        Follow it with :meth:`get_download_status`; stop it with :meth:`cancel_download`.
        """
        task = self._download_tasks.get(model)
        if task is not None and not task.done():
            return
        if not self.supports(Capability.DOWNLOAD):
            raise self._unsupported("downloading models")
        self._download_status[model] = DownloadStatus(model_id=model)
        import asyncio

        task = asyncio.get_running_loop().create_task(self.download_model(model))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._download_tasks[model] = task

    async def cancel_download(self, model: str) -> None:
        """Cancel a background download; the backend connection is closed."""
        task = self._download_tasks.pop(model, None)
        if task is None or task.done():
            return
        import asyncio

        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ProviderError):
            await task

    def get_download_status(self, model: str) -> DownloadStatus | None:
        """Last known progress of a download started here (``None`` if none)."""
        return self._download_status.get(model)

    # -- loading --------------------------------------------------------------------------
    async def list_loaded_models(self) -> list[LoadedModel]:
        """Models currently loaded in memory."""
        raise self._unsupported("listing loaded models")

    async def is_model_loaded(self, model: str) -> bool:
        """Whether ``model`` is loaded in memory now."""
        return any(m.id == model for m in await self.list_loaded_models())

    async def load_model(self, model: str) -> None:
        """Load ``model`` into memory so the next request starts fast."""
        raise self._unsupported("loading models")

    async def unload_model(self, model: str) -> None:
        """Free the memory ``model`` uses."""
        raise self._unsupported("unloading models")

    # -- generation -----------------------------------------------------------------------
    @abstractmethod
    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a completion of ``prompt``; the last chunk has ``done=True`` and stats.

        Closing the iterator, or cancelling the task, stops generation on the backend.
        """

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the assistant's reply to ``messages``; the last chunk carries stats."""
        raise self._unsupported("chat")

    async def generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> GenerationResult:
        """Complete ``prompt`` and return the whole text with statistics."""
        return await self.collect(model, self.stream_generate(model, prompt, options))

    async def chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> GenerationResult:
        """Answer ``messages`` and return the whole reply with statistics."""
        return await self.collect(model, self.stream_chat(model, messages, options))

    async def generate_text(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> str:
        """The completion as a string."""
        return (await self.generate(model, prompt, options)).text

    async def generate_text_streaming(
        self,
        model: str,
        prompt: str,
        options: GenerationOptions | None,
        callback: ChunkCallback,
    ) -> GenerationResult:
        """Stream to ``callback(chunk)``, one call per piece; returning False stops generation."""
        return await self.collect(
            model, self.stream_generate(model, prompt, options), callback=callback
        )

    async def collect(
        self,
        model: str,
        chunks: AsyncGenerator[GenerationChunk, None],
        *,
        callback: ChunkCallback | None = None,
    ) -> GenerationResult:
        """Consume a chunk stream into a :class:`GenerationResult`.

        If ``callback`` returns False the stream is closed (the backend stops) and the
        result has ``finish_reason="cancelled"`` with the text received so far.
        """
        parts: list[str] = []
        stats: GenerationStats | None = None
        batches = batches_of(chunks)  # one await per network read where the stream allows it
        stopped = False
        try:
            async for batch in batches:
                for chunk in batch:
                    if chunk.text:
                        parts.append(chunk.text)
                        if callback is not None:
                            keep_going = callback(chunk.text)
                            if keep_going is not None and not isinstance(keep_going, bool):
                                keep_going = await _maybe_await(keep_going)
                            if keep_going is False:
                                stats = GenerationStats(finish_reason="cancelled")
                                stopped = True
                                break
                    if chunk.done:
                        stats = chunk.stats or GenerationStats()
                if stopped:
                    break
        finally:
            await batches.aclose()  # closes ``chunks`` too
        if stats is None:  # a well-behaved stream always ends with done=True
            raise CancelledError("Generation stopped before it finished.", provider=self.name)
        return GenerationResult(text="".join(parts), model=model, provider=self.name, stats=stats)

    # -- lifecycle ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Cancel background downloads and close connections."""
        for model in list(self._download_tasks):
            await self.cancel_download(model)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
