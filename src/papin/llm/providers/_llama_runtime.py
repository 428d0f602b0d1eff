"""In-process llama.cpp runtime: loaded-model pool and token generation off the event loop.

* Models stay loaded between calls; an idle model is unloaded after ``keep_alive`` seconds
  (a daemon timer, so it also works between calls of the synchronous facade), and at most
  ``max_loaded`` models stay loaded (least recently used evicted).
* One llama.cpp context is not thread-safe: each loaded model has a lock, and requests to
  the same model run one after another (queued, never interleaved).
* Generation runs in a worker thread and hands chunks to the event loop; setting the
  request's stop flag ends generation at the next token (checked inside llama.cpp's
  sampling loop through a logits processor, and between chunks).

This module imports ``llama_cpp`` lazily (only when a model is loaded).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("papin.llamacpp")

__all__ = ["GenerationJob", "LlamaPool", "LoadSettings", "LoadedLlama", "import_llama_cpp"]

_log_callback: Any = None  # keeps the ctypes callback alive


def import_llama_cpp() -> Any:
    """Import ``llama_cpp`` and route llama.cpp's C logging to Python logging (never stderr)."""
    global _log_callback
    import llama_cpp

    if _log_callback is None:

        def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            logger.debug("%s", text.decode("utf-8", "replace").rstrip())

        _log_callback = llama_cpp.llama_log_callback(forward)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return llama_cpp


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


class LlamaPool:
    """Loaded models by id, with LRU eviction and keep-alive unloading."""

    def __init__(self, *, max_loaded: int = 1, keep_alive: float | None = 300.0) -> None:
        self.max_loaded = max_loaded
        self.keep_alive = keep_alive
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
            return list(self._models.values())

    def get(self, model_id: str) -> LoadedLlama | None:
        """The loaded model ``model_id``, if any."""
        with self._lock:
            return self._models.get(model_id)

    def acquire(self, model_id: str, path: str, settings: LoadSettings) -> tuple[LoadedLlama, float | None]:
        """Return the loaded model (loading it, or reloading it with new settings, if needed),
        marked busy. Returns the load time when this call loaded it. Blocking: run in a thread.
        """
        with self._lock:
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
            llama = self._load(path, settings)
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
    @staticmethod
    def _load(path: str, s: LoadSettings) -> Any:
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
        return llama_cpp.Llama(**kwargs)

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
        if wait:
            with entry.lock:  # let a running generation finish first
                entry.llama.close()
        else:
            entry.llama.close()
        entry.llama = None
        gc.collect()
        logger.info("unloaded %s", model_id)
        return True

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


@dataclass
class GenerationJob:
    """One generation request run in a worker thread.

    ``produce`` is called in the worker with :meth:`stopping_criteria` and returns the
    llama-cpp-python stream. The worker stops between chunks once ``stop`` is set (chunks
    come one per token), and completions also stop inside llama.cpp's loop.
    """

    produce: Callable[[Any], Iterator[dict[str, Any]]]
    entry: LoadedLlama
    stop: threading.Event = field(default_factory=threading.Event)
    tokens_sampled: int = 0
    prompt_tokens: int | None = None
    #: Stream chunks produced (one per token; the count for chats, which take no criteria).
    chunks: int = 0
    #: The request's token limit (the criteria also see the sample that hits the limit).
    max_tokens: int | None = None

    def stopping_criteria(self, input_ids: Any, logits: Any) -> bool:
        """Called by llama-cpp-python after each sampled token (completions): counts tokens
        and ends generation as soon as the job is stopped. It touches no logits, so it costs
        nothing measurable (a logits processor copies the whole vocabulary every token)."""
        if self.prompt_tokens is None:
            self.prompt_tokens = len(input_ids)
        if self.stop.is_set():
            return True  # this sample is discarded: generation ends here
        self.tokens_sampled += 1
        self.entry.tokens_generated += 1
        return False


async def run_in_worker(
    executor: ThreadPoolExecutor, entry: LoadedLlama, job: GenerationJob
) -> AsyncIterator[dict[str, Any]]:
    """Run ``job`` on ``entry`` in the pool's worker thread, yielding its chunks on the loop.

    Closing the iterator (or cancelling the task) sets the stop flag and waits until the
    worker has really stopped, so the model is free for the next request.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    done = threading.Event()

    def put(kind: str, payload: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))
        except RuntimeError:  # loop closed: nobody is listening any more
            job.stop.set()

    def work() -> None:
        try:
            with entry.lock:
                if job.stop.is_set():
                    return
                stream = job.produce(job.stopping_criteria)
                try:
                    for chunk in stream:
                        job.chunks += 1
                        if job.stop.is_set():
                            break
                        put("chunk", chunk)
                finally:
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
        except BaseException as exc:  # reported to the caller, never lost
            put("error", exc)
        finally:
            done.set()
            put("end", None)

    executor.submit(work)
    try:
        while True:
            kind, payload = await queue.get()
            if kind == "chunk":
                yield payload
            elif kind == "error":
                raise payload
            elif kind == "end":
                return
    finally:
        job.stop.set()
        if not done.is_set():
            await asyncio.shield(loop.run_in_executor(None, done.wait))
