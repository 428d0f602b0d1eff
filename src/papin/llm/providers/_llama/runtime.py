"""In-process llama.cpp runtime: loading models, and the pool of loaded models.

* Models stay loaded between calls; an idle model is unloaded after ``keep_alive`` seconds
  (a daemon timer, so it also works between calls of the synchronous facade), and at most
  ``max_loaded`` models stay loaded (least recently used evicted).
* One llama.cpp context is not thread-safe: each loaded model has a lock, and requests to
  the same model run one after another (queued, never interleaved).
* The pool does not care where a model lives: :func:`load_llama` loads it into this process,
  and the isolated mode (:mod:`papin.llm.providers._llama.isolated`) gives the pool a loader
  whose handles stand for models in a worker process. A handle whose ``alive`` is false (its
  worker died) counts as not loaded.
* :func:`load_llama` applies papin's load settings, ``extra_buffers`` included (llama.cpp's
  ``use_extra_bufts``, which llama-cpp-python does not expose), and loads a
  :class:`~llama_cpp.Llama` whose prompt-cache reuse keeps greedy output deterministic (see
  :func:`reusable_prefix`).

This module imports ``llama_cpp`` lazily (only when a model is loaded).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from papin.llm.hardware.llama import import_llama_cpp

logger = logging.getLogger("papin.llamacpp")

__all__ = [
    "LlamaPool",
    "LoadSettings",
    "LoadedLlama",
    "import_llama_cpp",
    "load_llama",
    "reusable_prefix",
]

_hook_lock = threading.Lock()
_load_state = threading.local()
_aligned_class: Any = None


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """Load-time parameters of a model; a model is reloaded when they change."""

    n_ctx: int
    n_threads: int
    n_batch: int
    n_gpu_layers: int
    use_mmap: bool = True
    use_mlock: bool = False
    seed: int | None = None
    chat_format: str | None = None
    #: llama.cpp's extra buffer types (repacked weights, AMX); off where they crash.
    extra_buffers: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (sent to the isolated worker and the crash probe)."""
        return asdict(self)


def reusable_prefix(cached: Sequence[int], tokens: Sequence[int], n_batch: int, prompt_end: int) -> int:
    """How many cached tokens a new prompt ``tokens`` may reuse, so that its logits are exactly
    those of a fresh evaluation.

    llama.cpp's numerics depend on the batch a token is evaluated in (a batch of one and a
    batch of the whole prompt take different kernels), so a prompt evaluated after reusing the
    cache up to its last token can give other text than the same prompt right after a load
    (on AMX CPUs, and on any CPU with extra buffers off). papin therefore reuses the cache
    only in whole batches of ``n_batch`` from the start, and only over tokens that were
    evaluated as a prompt (``prompt_end``; generated tokens were evaluated one by one): the
    rest is evaluated in the same batches a fresh evaluation uses.

    >>> reusable_prefix([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], n_batch=4, prompt_end=6)
    4
    >>> reusable_prefix([1, 2, 3, 4, 9], [1, 2, 3, 4, 5, 6, 7, 8, 10], n_batch=2, prompt_end=5)
    4
    >>> reusable_prefix([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9], n_batch=2, prompt_end=3)
    2
    >>> reusable_prefix([1, 2, 3], [1, 2, 3], n_batch=512, prompt_end=3)
    0
    """
    common = 0
    for a, b in zip(cached, tokens, strict=False):
        if a != b:
            break
        common += 1
    limit = min(common, len(tokens) - 1, prompt_end)
    return max(0, limit) // max(1, n_batch) * n_batch


def _llama_class(llama_cpp: Any) -> Any:
    """``llama_cpp.Llama`` with batch-aligned prompt-cache reuse (:func:`reusable_prefix`)."""
    global _aligned_class
    if _aligned_class is None:

        base: Any = llama_cpp.Llama

        class BatchAlignedLlama(base):  # type: ignore[misc]
            """Reuses its KV cache only where the logits stay those of a fresh evaluation
            (``exact_cache``; otherwise llama-cpp-python's longest-prefix reuse)."""

            _papin_prompt_end = 0
            exact_cache = True

            def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Any:
                tokens = list(tokens)
                me: Any = self
                if me.exact_cache:
                    keep = reusable_prefix(me._input_ids, tokens, me.n_batch, me._papin_prompt_end)
                    me.n_tokens = min(me.n_tokens, keep)
                me._papin_prompt_end = len(tokens)
                return super().generate(tokens, *args, **kwargs)

        _aligned_class = BatchAlignedLlama
    return _aligned_class


def _install_param_hook(llama_cpp: Any) -> None:
    """Let :func:`load_llama` set ``llama_model_params`` fields llama-cpp-python does not expose.

    ``Llama.__init__`` builds its model parameters with ``llama_model_default_params()``; the
    wrapper installed here (once) applies the fields set for the *current thread* only, so
    other users of llama-cpp-python in this process are not affected.
    """
    with _hook_lock:
        low = llama_cpp.llama_cpp
        if getattr(low.llama_model_default_params, "_papin_hook", False):
            return
        original = low.llama_model_default_params

        def default_params() -> Any:
            params = original()
            for name, value in getattr(_load_state, "model_params", {}).items():
                setattr(params, name, value)
            return params

        default_params._papin_hook = True  # type: ignore[attr-defined]
        low.llama_model_default_params = default_params


def load_llama(path: str, s: LoadSettings) -> Any:
    """Load ``path`` with ``s`` into this process (blocking; llama.cpp's C errors arrive as
    ``ValueError``). Raises ``ValueError`` too when ``extra_buffers`` must be off and this
    llama-cpp-python cannot turn them off."""
    llama_cpp = import_llama_cpp()
    kwargs: dict[str, Any] = {
        "model_path": path,
        "n_ctx": s.n_ctx,
        "n_threads": s.n_threads,
        "n_batch": s.n_batch,
        "n_gpu_layers": s.n_gpu_layers,
        "use_mmap": s.use_mmap,
        "use_mlock": s.use_mlock,
        "verbose": False,
    }
    if s.seed is not None:
        kwargs["seed"] = s.seed
    if s.chat_format is not None:
        kwargs["chat_format"] = s.chat_format
    overrides: dict[str, Any] = {}
    if not s.extra_buffers:
        fields = {name for name, *_ in llama_cpp.llama_model_params._fields_}
        if "use_extra_bufts" not in fields:
            raise ValueError(
                "extra buffers must be off on this CPU, but this llama-cpp-python has no "
                "use_extra_bufts model parameter; upgrade llama-cpp-python"
            )
        overrides["use_extra_bufts"] = False
        _install_param_hook(llama_cpp)
    _load_state.model_params = overrides
    try:
        return _llama_class(llama_cpp)(**kwargs)
    finally:
        _load_state.model_params = {}


Loader = Callable[[str, str, LoadSettings], Any]


def _load_in_process(model_id: str, path: str, settings: LoadSettings) -> Any:
    return load_llama(path, settings)


@dataclass(eq=False)
class LoadedLlama:
    """A model in memory, with the lock that serialises requests to it."""

    model_id: str
    path: str
    settings: LoadSettings
    llama: Any
    load_time: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0
    #: Size of the model file in bytes.
    size_bytes: int = 0
    #: Tokens sampled on this model so far (diagnostics; tests count tokens after a stop).
    tokens_generated: int = 0
    #: Tokens sampled after the stop request of the last stopped generation (0 or 1).
    tokens_after_stop: int | None = None

    @property
    def alive(self) -> bool:
        """Whether the model is still usable (false once its isolated worker died)."""
        return self.llama is not None and bool(getattr(self.llama, "alive", True))


class LlamaPool:
    """Loaded models by id, with LRU eviction and keep-alive unloading."""

    def __init__(
        self, *, max_loaded: int = 1, keep_alive: float | None = 300.0, loader: Loader | None = None
    ) -> None:
        self.max_loaded = max_loaded
        self.keep_alive = keep_alive
        self.loader: Loader = loader or _load_in_process
        self._models: OrderedDict[str, LoadedLlama] = OrderedDict()
        self._lock = threading.RLock()
        self._timers: dict[str, threading.Timer] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="papin-llama")

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The one thread that loads models and runs every generation.

        llama.cpp's OpenMP thread team belongs to the thread that calls it: running every
        call on one long-lived thread keeps one team (new threads per request cost ~35% of
        the tokens per second on 2 cores), and also queues requests in arrival order.
        """
        return self._executor

    def loaded(self) -> list[LoadedLlama]:
        """Models in memory, most recently used last."""
        with self._lock:
            return [e for e in self._models.values() if e.alive]

    def get(self, model_id: str) -> LoadedLlama | None:
        """The loaded model ``model_id``, if any."""
        with self._lock:
            entry = self._models.get(model_id)
            return entry if entry is not None and entry.alive else None

    def acquire(self, model_id: str, path: str, settings: LoadSettings) -> tuple[LoadedLlama, float | None]:
        """Return the loaded model (loading it, or reloading it with new settings, if needed),
        marked busy. Returns the load time when this call loaded it. Blocking: run in a thread.
        """
        with self._lock:
            self._drop_dead()
            entry = self._models.get(model_id)
            if entry is not None and entry.settings == settings and entry.path == path:
                entry.busy += 1
                entry.last_used = time.monotonic()
                self._models.move_to_end(model_id)
                self._cancel_timer(model_id)
                return entry, None
            if entry is not None:
                self._unload_locked(model_id, wait=True)
            self._evict_for_one_more()
            started = time.perf_counter()
            llama = self.loader(model_id, path, settings)
            entry = LoadedLlama(model_id, path, settings, llama, time.perf_counter() - started)
            entry.size_bytes = os.path.getsize(path)
            entry.busy = 1
            self._models[model_id] = entry
            return entry, entry.load_time

    def release(self, entry: LoadedLlama) -> None:
        """Mark a request finished; starts the keep-alive countdown when idle."""
        with self._lock:
            entry.busy -= 1
            entry.last_used = time.monotonic()
            if entry.busy == 0 and self._models.get(entry.model_id) is entry:
                self._arm_timer(entry.model_id)

    def unload(self, model_id: str) -> bool:
        """Unload ``model_id`` now (waits for a running request). False if it was not loaded."""
        with self._lock:
            return self._unload_locked(model_id, wait=True)

    def unload_all(self) -> None:
        """Unload every model."""
        with self._lock:
            for model_id in list(self._models):
                self._unload_locked(model_id, wait=True)

    # -- internals ------------------------------------------------------------------------
    def _drop_dead(self) -> None:
        """Forget models whose worker died (nothing to close: their memory went with it)."""
        for model_id in [m for m, e in self._models.items() if not e.alive]:
            self._cancel_timer(model_id)
            self._models.pop(model_id).llama = None

    def _evict_for_one_more(self) -> None:
        while len(self._models) >= max(1, self.max_loaded):
            victim = next((m for m, e in self._models.items() if e.busy == 0), None)
            if victim is None:
                break  # everything is busy; load anyway rather than wait
            self._unload_locked(victim, wait=False)

    def _unload_locked(self, model_id: str, *, wait: bool) -> bool:
        entry = self._models.pop(model_id, None)
        self._cancel_timer(model_id)
        if entry is None:
            return False
        was_alive = entry.alive
        if wait:
            with entry.lock:  # let a running generation finish first
                entry.llama.close()
        else:
            entry.llama.close()
        entry.llama = None
        gc.collect()
        logger.info("unloaded %s", model_id)
        return was_alive

    def _arm_timer(self, model_id: str) -> None:
        self._cancel_timer(model_id)
        if self.keep_alive is None or self.keep_alive < 0:
            return
        timer = threading.Timer(self.keep_alive, self._expire, args=(model_id,))
        timer.daemon = True
        self._timers[model_id] = timer
        timer.start()

    def _cancel_timer(self, model_id: str) -> None:
        timer = self._timers.pop(model_id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, model_id: str) -> None:
        with self._lock:
            entry = self._models.get(model_id)
            if entry is None or entry.busy:
                return
            idle = time.monotonic() - entry.last_used
            if self.keep_alive is not None and idle + 0.05 < self.keep_alive:
                self._arm_timer(model_id)
                return
            self._unload_locked(model_id, wait=True)
