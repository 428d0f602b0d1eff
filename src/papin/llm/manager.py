"""``LLMManager``: the high-level interface applications use.

Example::

    from papin.llm import create_llm_manager

    manager = create_llm_manager()
    await manager.initialize()
    text = await manager.generate_text("llama2:7b", "Tell me a story about a robot.", None)

The manager chooses a provider (see :meth:`LLMManager.initialize`), resolves which model to
use, pulls a missing model when ``auto_pull`` is on, and exposes model management.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

from papin.llm.choice import ProviderChoice, choose_provider
from papin.llm.chunk_stream import ChunkStream, batches_of, with_deadline
from papin.llm.config import LLMConfig
from papin.llm.datatypes import (
    Capability,
    DownloadStatus,
    GenerationChunk,
    GenerationResult,
    LoadedModel,
    ModelInfo,
    ProviderStatus,
)
from papin.llm.errors import (
    ConfigurationError,
    ModelNotFoundError,
    ProviderError,
    ProviderUnavailableError,
)
from papin.llm.factory import ProviderFactory, get_provider_factory
from papin.llm.options import GenerationOptions
from papin.llm.provider import ChunkCallback, Messages, ProgressCallback, Provider

if TYPE_CHECKING:
    import asyncio

    from papin.llm.discovery import Discovery, DiscoveryResult
    from papin.llm.hardware import HardwareInfo
    from papin.llm.migration import MigrationReport
    from papin.llm.monitor import ChangeCallback, ModelChange, ModelMonitor, Snapshot
    from papin.llm.router import RecoveryHub

Opener = Callable[[Provider, str], AsyncGenerator[GenerationChunk, None]]  # opens a stream for a model

__all__ = ["FALLBACK_PROVIDERS", "NO_DISCOVERY_ORDER", "LLMManager", "ProviderChoice", "create_llm_manager"]

#: In-process providers tried after the running servers that discovery finds (the order of
#: everything is :func:`papin.llm.discovery.rank_providers`, papin's one preference rule).
FALLBACK_PROVIDERS: tuple[str, ...] = ("llamacpp",)
#: Providers tried, in order, when ``auto_discover`` is off and no provider is configured
#: (each at its configured or default address; nothing else is probed).
NO_DISCOVERY_ORDER: tuple[str, ...] = ("ollama", "llamacpp")
#: The provider ``--endpoint``/``endpoint=`` applies to when none is named.
DEFAULT_ENDPOINT_PROVIDER = "ollama"


class LLMManager:
    """High-level, provider-independent access to local LLMs.

    Create it with :func:`create_llm_manager` (configuration from file and environment) or
    :meth:`with_config` (exactly the configuration given), then ``await initialize()``.
    All methods are coroutines; :class:`papin.llm.sync.SyncLLMManager` wraps them for
    synchronous code.
    """

    def __init__(
        self,
        config: LLMConfig | None = None,
        *,
        factory: ProviderFactory | None = None,
        provider: Provider | None = None,
        discovery: Discovery | None = None,
        hardware: HardwareInfo | None = None,
    ) -> None:
        """``discovery`` replaces the process-wide :class:`~papin.llm.discovery.Discovery`
        (tests point one at fake servers); ``hardware`` is a hardware report
        (:func:`papin.llm.hardware.detect_hardware`'s) used instead of detecting one."""
        self.config = config if config is not None else LLMConfig()
        self._factory = factory
        self._provider = provider
        self._discovery = discovery
        self._hardware = hardware
        self._choice: ProviderChoice | None = None
        self._current_model: str | None = None
        self._init_lock: asyncio.Lock | None = None
        self._monitor: ModelMonitor | None = None
        self._discovered: DiscoveryResult | None = None
        self._model_view: Snapshot | None = None
        #: Default download-progress callback for automatic pulls (the CLI sets one).
        self.on_download: ProgressCallback | None = None
        #: Start the model monitor in :meth:`initialize` when ``monitor_for_models`` is on
        #: (one-shot programs such as the CLI turn this off).
        self.monitor_on_initialize = True
        #: What the automatic legacy migration did when this manager was created (or ``None``).
        self.migration_report: MigrationReport | None = None
        self._recovery: RecoveryHub | None = None

    @classmethod
    def with_config(cls, config: LLMConfig) -> LLMManager:
        """A manager using exactly ``config`` (no file or environment lookups)."""
        return cls(config)

    @property
    def factory(self) -> ProviderFactory:
        """The provider factory in use (the process-wide one by default)."""
        return self._factory or get_provider_factory()

    @property
    def discovery(self) -> Discovery:
        """The discovery in use: the one given, else the process-wide one with the settings of
        the configuration's ``discovery`` section."""
        if self._discovery is None:
            from papin.llm.discovery import configured_discovery

            self._discovery = configured_discovery(self.config.discovery)
        return self._discovery

    # -- provider selection ---------------------------------------------------------------
    async def initialize(self) -> LLMManager:
        """Choose the provider, and start the model monitor if ``monitor_for_models``.

        1. The configured ``provider_type`` if its backend is available (at its configured
           address).
        2. Otherwise, with ``auto_discover``: what discovery finds, in the order of
           :func:`papin.llm.discovery.rank_providers` (a server of the configured kind found
           elsewhere, then GPU-backed servers, other running servers, and the embedded
           provider, with the hardware deciding between the embedded provider and servers
           seen on the CPU); a server at a non-default address is used at that address.
        3. With ``auto_discover`` off and nothing configured: Ollama at its configured or
           default address, then the embedded provider (:data:`NO_DISCOVERY_ORDER`).

        :attr:`provider_choice` records the choice, why, what was unavailable and what
        discovery found.

        Raises:
            ProviderError: no provider is available. With a configured provider, its own typed
                error (``AuthenticationError`` for a 401, ``RateLimitedError`` with
                ``retry_after``, ``ProviderTimeoutError`` with its phase...), chained to the
                original, with the other candidates tried in the message; otherwise
                ``ProviderUnavailableError``, the message listing why per provider.
            ConfigurationError: the configuration is invalid.
        """
        if self._init_lock is None:
            import asyncio  # lazily: importing papin.llm stays light

            self._init_lock = asyncio.Lock()
        async with self._init_lock:
            if self._provider is not None and self._choice is not None:
                return self
            if self._provider is not None:  # injected
                status = await self._provider.status()
                self._choice = ProviderChoice(self._provider.name, "given explicitly", status)
            else:
                self._choice, self._provider = await self._choose_provider()
                self.factory.set_default_provider(self._choice.provider)
                if self._choice.discovery is not None:
                    self._discovered = self._choice.discovery
            if self.config.monitor_for_models and self.monitor_on_initialize and self._monitor is None:
                self.start_model_monitor()
        return self

    async def _ensure(self) -> Provider:
        if self._provider is None or self._choice is None:
            await self.initialize()
        assert self._provider is not None
        return self._provider

    async def _hardware_report(self) -> HardwareInfo:
        if self._hardware is None:
            import asyncio

            from papin.llm.hardware import detect_hardware

            self._hardware = await asyncio.to_thread(detect_hardware)
        return self._hardware

    async def _choose_provider(self, config: LLMConfig | None = None) -> tuple[ProviderChoice, Provider]:
        return await choose_provider(
            config or self.config,
            self.factory,
            discovery=lambda: self.discovery,
            hardware=self._hardware_report,
            fallbacks=FALLBACK_PROVIDERS,  # module globals, read at each call
            no_discovery_order=NO_DISCOVERY_ORDER,
            on_event=self.recovery.emit,
        )

    # -- discovery and model monitoring -----------------------------------------------------
    async def discover(
        self, *, refresh: bool = False, files: bool = True, installed: bool = True
    ) -> DiscoveryResult:
        """What :attr:`discovery` finds on this machine (running servers; with ``files`` the
        model files on disk; with ``installed`` executables and packages). Never raises."""
        result = await self.discovery.discover(refresh=refresh, files=files, installed=installed)
        self._discovered = result
        return result

    @property
    def discovery_result(self) -> DiscoveryResult | None:
        """The latest discovery result (from the choice, :meth:`discover` or the monitor)."""
        return self._discovered

    @property
    def model_monitor(self) -> ModelMonitor | None:
        """The model monitor, when started."""
        return self._monitor

    @property
    def model_view(self) -> Snapshot | None:
        """The models each source has, as the model monitor last saw them."""
        return self._model_view

    def start_model_monitor(self, **settings: Any) -> ModelMonitor:
        """Start watching for models added and removed (the active provider, the discovered
        servers, papin's model store, the model files on disk); needs a running event loop.

        ``settings`` go to :class:`~papin.llm.monitor.ModelMonitor` (``min_interval``,
        ``max_interval``, ``backoff``). Started by :meth:`initialize` when
        ``monitor_for_models`` is on; a running monitor is returned as it is.
        """
        if self._monitor is not None and self._monitor.running:
            return self._monitor
        from pathlib import Path

        from papin.llm.monitor import ModelMonitor, discovery_snapshot
        from papin.llm.store import ModelStore

        models_dir = self.config.settings_for("llamacpp").get("models_dir")
        store = ModelStore(Path(models_dir) if isinstance(models_dir, str) and models_dir else None)

        def seen(snapshot: Snapshot, changes: list[ModelChange]) -> None:
            self._model_view = snapshot

        def found(result: DiscoveryResult) -> None:
            self._discovered = result

        snapshot = discovery_snapshot(
            self.discovery, store=store, provider=lambda: self._provider, on_result=found
        )
        monitor = ModelMonitor(snapshot, on_snapshot=seen, **settings)
        self._monitor = monitor.start()
        return monitor

    async def stop_model_monitor(self) -> None:
        """Stop the model monitor (its ``events()`` iterators end)."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            await monitor.stop()

    def subscribe_model_changes(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(change)`` (plain or coroutine function) for each model added or
        removed; returns a function that unsubscribes. Needs the monitor (started here)."""
        return self._require_monitor().subscribe(callback)

    def model_changes(self) -> AsyncGenerator[ModelChange, None]:
        """Model changes as an async iterator (``async for``); ends when monitoring stops."""
        return self._require_monitor().events()

    def _require_monitor(self) -> ModelMonitor:
        if self._monitor is None:
            return self.start_model_monitor()
        return self._monitor

    @property
    def provider_choice(self) -> ProviderChoice | None:
        """The provider chosen by :meth:`initialize`, with the reason."""
        return self._choice

    @property
    def current_provider(self) -> Provider:
        """The active provider (after :meth:`initialize`)."""
        if self._provider is None:
            raise ConfigurationError("No active provider: call 'await manager.initialize()' first.")
        return self._provider

    @property
    def current_model(self) -> str | None:
        """The model selected with :meth:`select_model` or configured as default."""
        return self._current_model or self.config.default_model

    async def set_provider(self, name: str, settings: dict[str, Any] | None = None) -> None:
        """Switch to provider ``name`` (it must be available)."""
        provider = self.factory.create_provider(name, settings or self.config.settings_for(name))
        status = await provider.status()
        if not status.available:
            await provider.aclose()
            if status.exception is not None:
                raise status.exception
            raise ProviderUnavailableError(status.error or f"{name} is not available", provider=name)
        old, self._provider = self._provider, provider
        self._choice = ProviderChoice(name, "selected explicitly", status)
        if old is not None:
            await old.aclose()

    async def get_available_providers(self) -> dict[str, ProviderStatus]:
        """Status of every registered provider (probed concurrently)."""
        settings = {n: self.config.settings_for(n) for n in self.factory.registered_providers()}
        return await self.factory.check_providers(settings)

    async def provider_statuses(self, found: DiscoveryResult | None = None) -> dict[str, ProviderStatus]:
        """Status of every registered provider from a discovery result (by default the latest,
        or a new discovery): one probing pass instead of a status check per provider."""
        from papin.llm.choice import provider_statuses

        if found is None:
            found = self._discovered or await self.discover()
        return await provider_statuses(self.config, self.factory, found)

    # -- models ---------------------------------------------------------------------------
    async def resolve_model(self, model: str | None) -> str:
        """Which model to use: ``model``; else the selected/default model; else a loaded one;
        else the first installed one."""
        if model and model.strip():
            return model.strip()
        if self.current_model:
            return self.current_model
        provider = await self._ensure()
        if provider.supports(Capability.LIST_LOADED):
            loaded = await provider.list_loaded_models()
            if loaded:
                return loaded[0].id
        installed = await provider.list_downloaded_models()
        if installed:
            return installed[0].id
        default = provider.default_model_id()
        if default:
            return default
        raise ModelNotFoundError(
            f"No model given and {provider.display_name} has none installed. Pull one with "
            "'papin models pull NAME', or set a default with 'papin config set default_model NAME'.",
            provider=provider.name,
        )

    def select_model(self, model: str) -> None:
        """Use ``model`` when a call gives none (for this manager; see ``config set`` to persist)."""
        if not model or not model.strip():
            raise ConfigurationError("Model name must not be empty.")
        self._current_model = model.strip()

    async def list_available_models(self) -> list[ModelInfo]:
        """Models the provider can use or download."""
        return await (await self._ensure()).list_available_models()

    async def list_downloaded_models(self) -> list[ModelInfo]:
        """Installed models."""
        return await (await self._ensure()).list_downloaded_models()

    async def get_model_info(self, model: str) -> ModelInfo:
        """Details of one model."""
        return await (await self._ensure()).get_model_info(model)

    async def download_model(self, model: str, on_progress: ProgressCallback | None = None) -> DownloadStatus:
        """Download ``model`` and wait for it, reporting progress."""
        return await (await self._ensure()).download_model(model, on_progress)

    async def start_download(self, model: str) -> None:
        """Start a background download (see :meth:`get_download_status`)."""
        await (await self._ensure()).start_download(model)

    async def cancel_download(self, model: str) -> None:
        """Cancel a background download."""
        await (await self._ensure()).cancel_download(model)

    async def get_download_status(self, model: str) -> DownloadStatus | None:
        """Progress of a background download."""
        return (await self._ensure()).get_download_status(model)

    async def delete_model(self, model: str) -> None:
        """Delete an installed model."""
        await (await self._ensure()).delete_model(model)

    async def load_model(self, model: str) -> None:
        """Load a model into memory."""
        await (await self._ensure()).load_model(model)

    async def unload_model(self, model: str) -> None:
        """Unload a model from memory."""
        await (await self._ensure()).unload_model(model)

    async def is_model_loaded(self, model: str) -> bool:
        """Whether a model is loaded."""
        return await (await self._ensure()).is_model_loaded(model)

    async def list_loaded_models(self) -> list[LoadedModel]:
        """Models currently in memory."""
        return await (await self._ensure()).list_loaded_models()

    async def get_system_info(self) -> dict[str, str]:
        """Facts about the active provider's backend."""
        return await (await self._ensure()).get_system_info()

    # -- generation -----------------------------------------------------------------------
    async def _request_model(self, model: str | None) -> str:
        """:meth:`resolve_model`, or, with no model named and the provider down, a placeholder."""
        try:
            return await self.resolve_model(model)
        except ProviderUnavailableError:
            if model or not (self.config.auto_discover or self.config.fallbacks):
                raise
            return (await self._ensure()).default_model_id() or "default"

    @property
    def recovery(self) -> RecoveryHub:
        """Retries, fallbacks and their events: ``manager.recovery.listeners.append(callback)``."""
        if self._recovery is None:
            from papin.llm.router import RecoveryHub
            self._recovery = RecoveryHub(lambda: self.config, lambda: self.factory, self._choose_provider)
        return self._recovery

    async def _pulling(  # a stream's batches, after a download when the model is missing
        self, model_or_none: str | None, open_stream: Opener, on_download: ProgressCallback | None
    ) -> AsyncGenerator[list[GenerationChunk], None]:
        model = await self._request_model(model_or_none)
        provider = await self._ensure()
        given = model_or_none is not None
        batches = batches_of(self.recovery.open(provider, lambda p: open_stream(p, model), given))
        try:
            try:
                first = await batches.__anext__()
            except StopAsyncIteration:
                return
            except ModelNotFoundError as exc:
                await batches.aclose()
                if not self.config.auto_pull or not provider.can_pull(model):
                    if not self.config.auto_pull and provider.can_pull(model):
                        exc.message += (
                            " (Automatic download is off: 'papin config set auto_pull true' turns it on.)"
                        )
                        exc.args = (exc.message,)
                    raise
                await provider.download_model(model, on_download or self.on_download)
                batches = batches_of(open_stream(self.recovery.wrap(provider), model))
                try:
                    first = await batches.__anext__()
                except StopAsyncIteration:
                    return
            yield first
            async for batch in batches:
                yield batch
        finally:
            await batches.aclose()

    def stream(
        self,
        model: str | None,
        prompt: str,
        options: GenerationOptions | None = None,
        *,
        on_download: ProgressCallback | None = None,
    ) -> ChunkStream:
        """Stream a completion as :class:`GenerationChunk` objects (``async for``).

        Breaking out of the loop or cancelling the task closes the backend stream.
        """
        options = self.config.options_with_defaults(options)
        batches = self._pulling(model, lambda p, m: p.stream_generate(m, prompt, options), on_download)
        stream = ChunkStream(batches)
        return with_deadline(stream, options, lambda: self._provider.name if self._provider else None, model)

    def stream_chat(
        self,
        model: str | None,
        messages: Messages,
        options: GenerationOptions | None = None,
        *,
        on_download: ProgressCallback | None = None,
    ) -> ChunkStream:
        """Stream a chat reply as :class:`GenerationChunk` objects."""
        options = self.config.options_with_defaults(options)
        batches = self._pulling(model, lambda p, m: p.stream_chat(m, messages, options), on_download)
        stream = ChunkStream(batches)
        return with_deadline(stream, options, lambda: self._provider.name if self._provider else None, model)

    async def generate(
        self,
        model: str | None,
        prompt: str,
        options: GenerationOptions | None = None,
        *,
        on_download: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Complete ``prompt``; returns text and statistics."""
        name = await self._request_model(model)
        provider = await self._ensure()
        return await provider.collect(name, self.stream(model, prompt, options, on_download=on_download))

    async def generate_text(
        self,
        model: str | None,
        prompt: str,
        options: GenerationOptions | None = None,
        *,
        on_download: ProgressCallback | None = None,
    ) -> str:
        """The completion of ``prompt`` as a string."""
        return (await self.generate(model, prompt, options, on_download=on_download)).text

    async def generate_text_streaming(
        self,
        model: str | None,
        prompt: str,
        options: GenerationOptions | None,
        callback: ChunkCallback,
        *,
        on_download: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Streaming with a callback: ``callback(chunk)`` gets each piece of text.

        ``callback`` returning ``False`` stops generation: the backend stream is closed and
        the result has ``finish_reason == "cancelled"``. It may be a coroutine function.
        """
        name = await self._request_model(model)
        provider = await self._ensure()
        return await provider.collect(
            name, self.stream(model, prompt, options, on_download=on_download), callback=callback
        )

    async def chat(
        self,
        model: str | None,
        messages: Messages,
        options: GenerationOptions | None = None,
        *,
        callback: ChunkCallback | None = None,
        on_download: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Answer a conversation; ``callback`` (optional) streams the reply as it comes."""
        name = await self._request_model(model)
        provider = await self._ensure()
        return await provider.collect(
            name,
            self.stream_chat(model, messages, options, on_download=on_download),
            callback=callback,
        )

    # -- lifecycle ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop the monitor, close every provider's connections, cancel background downloads."""
        await self.stop_model_monitor()
        if self._recovery is not None:
            await self._recovery.aclose()
        provider, self._provider, self._choice = self._provider, None, None
        if provider is not None:
            await provider.aclose()

    async def __aenter__(self) -> LLMManager:
        return await self.initialize()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def create_llm_manager(
    *,
    provider: str | None = None,
    model: str | None = None,
    endpoint: str | None = None,
    config: LLMConfig | None = None,
) -> LLMManager:
    """Create a manager from the config file and environment, with explicit overrides.

    Precedence: these arguments > environment variables > config file > defaults.
    Nothing is contacted until :meth:`LLMManager.initialize`.

    Without ``config``, a legacy Papin configuration is migrated first, once
    (:func:`papin.llm.migration.maybe_auto_migrate`: skipped after a completed migration or
    an opt-out; never raises); the report is kept in :attr:`LLMManager.migration_report`.
    """
    report = None
    if config is None:
        from papin.llm.migration import maybe_auto_migrate

        report = maybe_auto_migrate()
    cfg = config if config is not None else LLMConfig.load()
    if provider:
        try:
            cfg = cfg.set_value("provider_type", provider)
        except ProviderError:
            raise
    if model:
        cfg = cfg.model_copy(update={"default_model": model})
    if endpoint:
        target = cfg.provider_type or DEFAULT_ENDPOINT_PROVIDER
        if cfg.provider_type is None:
            cfg = cfg.set_value("provider_type", target)
        cfg = cfg.with_provider_settings(target, endpoint=endpoint)
    manager = LLMManager(cfg)
    manager.migration_report = report
    return manager
