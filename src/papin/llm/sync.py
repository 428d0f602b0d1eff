"""A thin synchronous facade over :class:`~papin.llm.manager.LLMManager`, for scripts and the CLI.

It runs the async core on a private event loop (one ``asyncio.Runner`` per facade), so the
same code and the same sans-I/O wire layer serve both worlds. In the main thread, Ctrl-C
cancels the running call: the backend connection is closed and ``KeyboardInterrupt`` is
raised. A facade is not for use inside a running event loop (use ``LLMManager`` there).

Example::

    from papin.llm.sync import create_sync_llm_manager

    with create_sync_llm_manager() as llm:
        print(llm.generate_text(None, "Tell me a story about a robot."))
        for chunk in llm.stream(None, "Count to five."):
            print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

import asyncio
import contextvars
import signal
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from papin.llm.config import LLMConfig
from papin.llm.datatypes import (
    DownloadStatus,
    GenerationChunk,
    GenerationResult,
    LoadedModel,
    ModelInfo,
    ProviderStatus,
)
from papin.llm.errors import ConfigurationError
from papin.llm.manager import LLMManager, ProviderChoice, create_llm_manager
from papin.llm.options import GenerationOptions
from papin.llm.provider import ChunkCallback, Messages, ProgressCallback, Provider
from papin.llm.sync_streams import ChunkPump
from papin.llm.transport.pauses import add_pause

if TYPE_CHECKING:
    from papin.llm.discovery import Discovery, DiscoveryResult
    from papin.llm.factory import ProviderFactory
    from papin.llm.monitor import ChangeCallback, ModelMonitor, Snapshot
    from papin.llm.router import RecoveryHub

__all__ = ["SyncLLMManager", "create_sync_llm_manager", "discover_sync"]

T = TypeVar("T")

try:  # the C functions behind the signal module, without its enum conversions (~12 us a call)
    import _signal as _sig  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - an interpreter without it
    _sig = signal


class SyncLLMManager:
    """Blocking version of :class:`LLMManager`; every method has the same meaning.

    Async-only (a test keeps this list honest): ``model_changes`` (an async iterator that waits
    between changes: use :meth:`subscribe_model_changes`), ``start_download`` (a background
    download needs a loop that keeps running between calls: use :meth:`download_model` with
    ``on_progress``), and ``aclose`` (:meth:`close` here).
    """

    def __init__(self, manager: LLMManager | None = None) -> None:
        self.manager = manager if manager is not None else LLMManager()
        self._runner = asyncio.Runner()
        self._context: contextvars.Context | None = None
        self._lock = threading.RLock()
        self._closed = False
        self._stopped_at = 0.0
        # A facade left open (no ``with``, no close()) is closed when it is collected or at
        # interpreter exit, so a script does not leak its connections or print aiohttp's
        # "Unclosed client session" warnings.
        self._finalizer = weakref.finalize(self, _close_left_open, self._runner, self.manager)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the private loop, as ``asyncio.Runner.run`` does, Ctrl-C included.

        ``Runner.run`` is not used per call: in the main thread it spends ~50 microseconds
        per call on signal bookkeeping (enum conversions and the repr of its SIGINT
        handler), a measurable share of a local request, and the sync facade calls this
        once per streamed chunk. This does the same (first Ctrl-C cancels the call, which
        then raises ``KeyboardInterrupt``; a second one raises at once) for ~1 microsecond.
        """
        if self._closed:
            coro.close()
            raise ConfigurationError("This SyncLLMManager is closed.")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError("SyncLLMManager cannot be used inside a running event loop; use LLMManager.")
        with self._lock:
            loop = self._runner.get_loop()
            task = loop.create_task(coro, context=self._task_context())
            return self._wait(loop, task, task)

    def _task_context(self) -> contextvars.Context:
        if self._context is None:
            self._context = contextvars.copy_context()
        return self._context

    def _wait(
        self, loop: asyncio.AbstractEventLoop, awaited: asyncio.Future[T], target: asyncio.Task[Any]
    ) -> T:
        """Run the loop until ``awaited`` is done; the first Ctrl-C cancels ``target``."""
        if self._stopped_at:
            add_pause(loop, time.monotonic() - self._stopped_at)  # the caller's time, not the server's
        interrupts = 0

        def on_sigint(signum: int, frame: object) -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1 and not target.done():
                target.cancel()
                loop.call_soon_threadsafe(lambda: None)  # wake select()
                return
            raise KeyboardInterrupt()

        installed = (
            threading.current_thread() is threading.main_thread()
            and _sig.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        if installed:
            try:
                _sig.signal(signal.SIGINT, on_sigint)
            except ValueError:
                installed = False
        try:
            result = loop.run_until_complete(awaited)
        except asyncio.CancelledError:
            if interrupts and target.uncancel() == 0:
                raise KeyboardInterrupt() from None
            raise
        finally:
            self._stopped_at = time.monotonic()
            if installed:
                previous = _sig.signal(signal.SIGINT, signal.default_int_handler)
                if previous is not on_sigint:  # someone replaced ours meanwhile: keep theirs
                    _sig.signal(signal.SIGINT, previous)
        if interrupts and target is not awaited:
            raise KeyboardInterrupt()
        return result

    @classmethod
    def with_config(cls, config: LLMConfig) -> SyncLLMManager:
        """A facade over a manager using exactly ``config`` (see :meth:`LLMManager.with_config`)."""
        return cls(LLMManager.with_config(config))

    @property
    def config(self) -> LLMConfig:
        """The configuration in use."""
        return self.manager.config

    @property
    def factory(self) -> ProviderFactory:
        """The provider factory in use."""
        return self.manager.factory

    @property
    def discovery(self) -> Discovery:
        """The discovery in use."""
        return self.manager.discovery

    @property
    def discovery_result(self) -> DiscoveryResult | None:
        """The latest discovery result."""
        return self.manager.discovery_result

    @property
    def model_monitor(self) -> ModelMonitor | None:
        """The model monitor, when started (it advances only while a call of this facade runs)."""
        return self.manager.model_monitor

    @property
    def model_view(self) -> Snapshot | None:
        """The models each source has, as the model monitor last saw them."""
        return self.manager.model_view

    def start_model_monitor(self, **settings: Any) -> ModelMonitor:
        """Start watching for models added and removed (on this facade's loop: it advances while
        a call runs, see the module docstring)."""
        return self._run(_call(lambda: self.manager.start_model_monitor(**settings)))

    def stop_model_monitor(self) -> None:
        """Stop the model monitor."""
        self._run(self.manager.stop_model_monitor())

    def subscribe_model_changes(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(change)`` for each model added or removed; returns the unsubscriber."""
        return self._run(_call(lambda: self.manager.subscribe_model_changes(callback)))

    # -- provider -------------------------------------------------------------------------
    def initialize(self) -> SyncLLMManager:
        """Choose the provider (see :meth:`LLMManager.initialize`)."""
        self._run(self.manager.initialize())
        return self

    @property
    def recovery(self) -> RecoveryHub:
        """Retries and their events (listeners run on this facade's loop, in this thread)."""
        return self.manager.recovery

    @property
    def provider_choice(self) -> ProviderChoice | None:
        """The provider chosen, with the reason."""
        return self.manager.provider_choice

    @property
    def current_provider(self) -> Provider:
        """The active provider."""
        return self.manager.current_provider

    @property
    def current_model(self) -> str | None:
        """The model selected with :meth:`select_model` or configured as default."""
        return self.manager.current_model

    def set_provider(self, name: str, settings: dict[str, Any] | None = None) -> None:
        """Switch to provider ``name`` (it must be available)."""
        self._run(self.manager.set_provider(name, settings))

    def select_model(self, model: str) -> None:
        """Use ``model`` when a call names none."""
        self.manager.select_model(model)

    def get_available_providers(self) -> dict[str, ProviderStatus]:
        """Status of every registered provider."""
        return self._run(self.manager.get_available_providers())

    def provider_statuses(self, found: DiscoveryResult | None = None) -> dict[str, ProviderStatus]:
        """Status of every registered provider from a discovery result (one probing pass)."""
        return self._run(self.manager.provider_statuses(found))

    def get_system_info(self) -> dict[str, str]:
        """Facts about the active backend."""
        return self._run(self.manager.get_system_info())

    def discover(
        self, *, refresh: bool = False, files: bool = True, installed: bool = True
    ) -> DiscoveryResult:
        """What discovery finds on this machine (see :meth:`LLMManager.discover`)."""
        return self._run(self.manager.discover(refresh=refresh, files=files, installed=installed))

    # -- models ---------------------------------------------------------------------------
    def resolve_model(self, model: str | None) -> str:
        """Which model a call with ``model`` would use."""
        return self._run(self.manager.resolve_model(model))

    def list_available_models(self) -> list[ModelInfo]:
        """Models the provider can use or download."""
        return self._run(self.manager.list_available_models())

    def list_downloaded_models(self) -> list[ModelInfo]:
        """Installed models."""
        return self._run(self.manager.list_downloaded_models())

    def get_model_info(self, model: str) -> ModelInfo:
        """Details of one model."""
        return self._run(self.manager.get_model_info(model))

    def download_model(self, model: str, on_progress: ProgressCallback | None = None) -> DownloadStatus:
        """Download a model, reporting progress; Ctrl-C cancels it."""
        return self._run(self.manager.download_model(model, on_progress))

    def cancel_download(self, model: str) -> None:
        """Cancel a background download started with the async manager."""
        self._run(self.manager.cancel_download(model))

    def get_download_status(self, model: str) -> DownloadStatus | None:
        """Last known progress of a download."""
        return self._run(self.manager.get_download_status(model))

    def delete_model(self, model: str) -> None:
        """Delete an installed model."""
        self._run(self.manager.delete_model(model))

    def load_model(self, model: str) -> None:
        """Load a model into memory."""
        self._run(self.manager.load_model(model))

    def unload_model(self, model: str) -> None:
        """Unload a model from memory."""
        self._run(self.manager.unload_model(model))

    def is_model_loaded(self, model: str) -> bool:
        """Whether a model is loaded."""
        return self._run(self.manager.is_model_loaded(model))

    def list_loaded_models(self) -> list[LoadedModel]:
        """Models in memory."""
        return self._run(self.manager.list_loaded_models())

    # -- generation -----------------------------------------------------------------------
    def generate(
        self,
        model: str | None,
        prompt: str,
        options: GenerationOptions | None = None,
        *,
        on_download: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Complete ``prompt``; returns text and statistics."""
        return self._run(self.manager.generate(model, prompt, options, on_download=on_download))

    def generate_text(
        self,
        model: str | None,
        prompt: str,
        options: GenerationOptions | None = None,
        *,
        on_download: ProgressCallback | None = None,
    ) -> str:
        """The completion of ``prompt`` as a string."""
        return self._run(self.manager.generate_text(model, prompt, options, on_download=on_download))

    def generate_text_streaming(
        self,
        model: str | None,
        prompt: str,
        options: GenerationOptions | None,
        callback: ChunkCallback,
        *,
        on_download: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Stream to ``callback``; returning False from it stops generation."""
        return self._run(
            self.manager.generate_text_streaming(model, prompt, options, callback, on_download=on_download)
        )

    def chat(
        self,
        model: str | None,
        messages: Messages,
        options: GenerationOptions | None = None,
        *,
        callback: ChunkCallback | None = None,
        on_download: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Answer a conversation; ``callback`` (optional) streams the reply as it comes."""
        return self._run(
            self.manager.chat(model, messages, options, callback=callback, on_download=on_download)
        )

    def stream(
        self,
        model: str | None,
        prompt: str,
        options: GenerationOptions | None = None,
        *,
        on_download: ProgressCallback | None = None,
    ) -> Iterator[GenerationChunk]:
        """Iterate over the chunks of a completion; leaving the loop stops generation."""
        return self._iterate(self.manager.stream(model, prompt, options, on_download=on_download))

    def stream_chat(
        self,
        model: str | None,
        messages: Messages,
        options: GenerationOptions | None = None,
        *,
        on_download: ProgressCallback | None = None,
    ) -> Iterator[GenerationChunk]:
        """Iterate over the chunks of a chat reply."""
        return self._iterate(self.manager.stream_chat(model, messages, options, on_download=on_download))

    def _iterate(self, agen: AsyncGenerator[GenerationChunk, None]) -> Iterator[GenerationChunk]:
        """The chunks of ``agen``, taken in batches (see :mod:`papin.llm.sync_streams`)."""
        pump = ChunkPump(agen)
        ready = pump.ready
        try:
            while True:
                while ready:
                    yield ready.popleft()
                if pump.finished:
                    if pump.error is not None:
                        raise pump.error
                    return
                self._fill(pump)
        finally:
            if not self._closed:
                self._run(_stop_pump(pump))

    def _fill(self, pump: ChunkPump[GenerationChunk]) -> None:
        if self._closed:
            raise ConfigurationError("This SyncLLMManager is closed.")
        with self._lock:
            loop = self._runner.get_loop()
            if pump.task is None:
                pump.task = loop.create_task(pump.run(), context=self._task_context())
            self._wait(loop, pump.wanted(loop), pump.task)

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Close connections and the private event loop."""
        if self._closed:
            return
        self._finalizer.detach()
        try:
            self._run(self.manager.aclose())
        finally:
            self._closed = True
            self._runner.close()

    def __enter__(self) -> SyncLLMManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _close_left_open(runner: asyncio.Runner, manager: LLMManager) -> None:
    """Close a facade nobody closed (from its finalizer): best effort, never raises."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # collected inside some event loop: this thread cannot run the facade's loop now
        return
    try:
        runner.run(manager.aclose())
    except BaseException:  # noqa: BLE001 - a finalizer must not raise
        pass
    finally:
        try:
            runner.close()
        except BaseException:  # noqa: BLE001
            pass


async def _stop_pump(pump: ChunkPump[GenerationChunk]) -> None:
    """Stop a stream the caller left: cancel the pump's task, then close the generator (and,
    with it, the backend stream)."""
    task = pump.task
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task])
    await pump.agen.aclose()  # a no-op for a generator the cancellation already ended


async def _call(fn: Callable[[], T]) -> T:
    """``fn()`` on the facade's loop (for manager methods that need a running loop)."""
    return fn()


def create_sync_llm_manager(
    *,
    provider: str | None = None,
    model: str | None = None,
    endpoint: str | None = None,
    config: LLMConfig | None = None,
) -> SyncLLMManager:
    """Blocking counterpart of :func:`papin.llm.create_llm_manager` (same precedence rules)."""
    return SyncLLMManager(
        create_llm_manager(provider=provider, model=model, endpoint=endpoint, config=config)
    )


def discover_sync(*, refresh: bool = False, files: bool = True, installed: bool = True) -> DiscoveryResult:
    """Blocking :meth:`papin.llm.discovery.Discovery.discover` of the process-wide discovery
    (not for use inside a running event loop)."""
    from papin.llm.discovery import get_discovery

    return asyncio.run(get_discovery().discover(refresh=refresh, files=files, installed=installed))
