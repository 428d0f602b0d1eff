"""The isolated embedded mode (``isolation: "process"``): models live in a worker process.

:class:`LlamaWorker` starts and supervises :mod:`papin.llm.providers._llama.worker`. The
embedded provider keeps its pool, keep-alive and queueing; only the models move: the pool's
loader (:meth:`LlamaWorker.loader`) returns :class:`RemoteLlama` handles, and
:func:`stream_remote` runs a generation in the worker, with the same events and the same
stop-within-one-token as in this process.

When the worker dies (a native crash, an out-of-memory kill), every call in flight fails with a
:class:`~papin.llm.errors.NativeCrashError` that names the signal, and every handle is dead;
the next call starts a new worker and loads the model again. The worker never outlives papin:
it is started as :mod:`papin.llm.providers._llama.processes` says (parent-death signal, its own
session), it exits when its request pipe closes, and an exit hook and a finalizer stop it.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Callable
from multiprocessing.connection import Connection
from typing import Any

from papin.llm.errors import GenerationError, NativeCrashError, ProviderError, ProviderUnavailableError
from papin.llm.providers._llama.generation import Event, EventBridge, GenerationRequest
from papin.llm.providers._llama.processes import (
    child_environment,
    follow_output,
    signal_description,
    spawn,
    terminate,
)
from papin.llm.providers._llama.runtime import LoadedLlama, LoadSettings

__all__ = ["LlamaWorker", "RemoteLlama", "stream_remote"]

logger = logging.getLogger("papin.llamacpp")
Handler = Callable[[str, Any], None]
_LOG_LINES = 100
_LIVE: weakref.WeakSet[LlamaWorker] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for worker in list(_LIVE):
        worker.stop(grace=1.0)


class LlamaWorker:
    """One supervised worker process (started on first use, restarted after a death).

    Thread-safe; not tied to an event loop. ``provider`` names the provider in errors.
    """

    def __init__(self, *, provider: str = "llamacpp", stop_grace: float = 2.0) -> None:
        self.provider = provider
        self.stop_grace = stop_grace
        #: Incremented at each start: handles of an earlier worker are dead.
        self.incarnation = 0
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: Connection | None = None
        self._handlers: dict[int, tuple[str, Handler]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._log: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._last_exit: str | None = None

    # -- facts ----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def alive(self) -> bool:
        """Whether the worker process runs."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 12) -> str:
        """The worker's last output lines."""
        return "\n".join(list(self._log)[-lines:])

    # -- start and stop -------------------------------------------------------------------
    def ensure_started(self) -> int:
        """Start the worker if it is not running; returns its incarnation. Blocking."""
        with self._lock:
            if self.alive():
                return self.incarnation
            if self.incarnation:
                self.restarts += 1
            to_child_r, to_child_w = os.pipe()
            from_child_r, from_child_w = os.pipe()
            command = [sys.executable, "-m", "papin.llm.providers._llama.worker"]
            try:
                proc = spawn(
                    [*command, str(to_child_r), str(from_child_w)],
                    pass_fds=(to_child_r, from_child_w),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=child_environment(),
                )
            except OSError as exc:
                for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                    os.close(fd)
                raise ProviderUnavailableError(
                    f"Could not start the isolated llama.cpp worker: {exc}", provider=self.provider
                ) from exc
            finally:
                with contextlib.suppress(OSError):
                    os.close(to_child_r)
                    os.close(from_child_w)
            self.incarnation += 1
            self._proc = proc
            self._out = Connection(to_child_w, readable=False)
            source = Connection(from_child_r, writable=False)
            incarnation = self.incarnation
            reader = threading.Thread(
                target=self._read, args=(source, proc, incarnation), name="papin-worker-reader", daemon=True
            )
            reader.start()
            follow_output(proc, self._log, "papin-worker-log")
            if self._finalizer is not None:
                self._finalizer.detach()
            self._finalizer = weakref.finalize(self, terminate, proc, 1.0)
            _LIVE.add(self)
            logger.info("started the isolated llama.cpp worker (pid %d)", proc.pid)
            return incarnation

    def stop(self, grace: float | None = None) -> None:
        """Stop the worker: close its request pipe (it exits at once), then SIGTERM and SIGKILL
        after ``grace`` seconds if it has not. Calls in flight fail. Blocking; idempotent."""
        with self._lock:
            proc, out = self._proc, self._out
            self._proc, self._out = None, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            _LIVE.discard(self)
        if out is not None:
            with contextlib.suppress(OSError):
                out.close()
        if proc is not None:
            wait = self.stop_grace if grace is None else grace
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                terminate(proc, wait)

    # -- requests -------------------------------------------------------------------------
    def submit(self, op: str, args: tuple[Any, ...], handler: Handler) -> int:
        """Send a request; ``handler(kind, payload)`` receives every reply to it on the reader
        thread, and ``("dead", NativeCrashError)`` if the worker dies first."""
        rid = next(self._ids)
        with self._lock:
            out = self._out if self.alive() else None
            if out is not None:
                self._handlers[rid] = (op, handler)
        if out is None:
            handler("dead", self._stopped_error())
            return rid
        try:
            with self._send_lock:
                out.send((op, rid, *args))
        except (OSError, ValueError):  # the worker is going away: the reader reports it
            pass
        return rid

    def stop_request(self, rid: int) -> None:
        """Ask generation ``rid`` to end at its next token."""
        out = self._out
        if out is not None:
            with contextlib.suppress(OSError, ValueError), self._send_lock:
                out.send(("stop", rid))

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        """Send a request and wait for its ``ok`` (blocking). Raises the failure as a
        :class:`ProviderError`."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def handler(kind: str, payload: Any) -> None:
            if kind == "ok":
                future.set_result(payload)
            elif kind == "dead":
                future.set_exception(payload)
            else:
                future.set_exception(_WorkerFailure(payload[1]))

        self.submit(op, args, handler)
        return future.result(timeout)

    # -- reader threads -------------------------------------------------------------------
    def _read(self, source: Connection, proc: subprocess.Popen[bytes], incarnation: int) -> None:
        try:
            while True:
                try:
                    kind, rid, payload = source.recv()
                except (EOFError, OSError):
                    break
                entry = self._handlers.get(rid)
                if entry is None:
                    continue
                if kind in ("ok", "fail", "end", "error"):
                    with self._lock:
                        self._handlers.pop(rid, None)
                try:
                    entry[1](kind, payload)
                except Exception:  # a handler must never kill the reader
                    logger.exception("isolated worker reply handler failed")
        finally:
            source.close()
            self._died(proc, incarnation)

    def _died(self, proc: subprocess.Popen[bytes], incarnation: int) -> None:
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            terminate(proc, 0.5)
        name, how = signal_description(proc.returncode)
        with self._lock:
            if incarnation != self.incarnation:
                return
            handlers, self._handlers = self._handlers, {}
            stopped = self._proc is not proc  # stop() let it go
            if not stopped:
                self._out = None
                self._last_exit = how
        if not stopped:
            logger.info("the isolated llama.cpp worker (pid %d) %s", proc.pid, how)
        for op, handler in handlers.values():
            error = self._stopped_error() if stopped else self._death_error(op, proc, name, how)
            with contextlib.suppress(Exception):
                handler("dead", error)

    def _stopped_error(self) -> ProviderError:
        return ProviderUnavailableError(
            "The isolated llama.cpp worker was stopped (the provider was closed)"
            + (f"; before that it {self._last_exit}" if self._last_exit else "")
            + ". The next call starts it again.",
            provider=self.provider,
        )

    def _death_error(
        self, op: str, proc: subprocess.Popen[bytes], name: str | None, how: str
    ) -> ProviderError:
        doing = {"load": "loading a model", "generate": "generating"}.get(op, f"handling '{op}'")
        tail = self.log_tail()
        output = f" Its last output:\n{tail}" if tail else ""
        if name is None:  # it exited by itself: papin's side of the worker failed
            return ProviderUnavailableError(
                f"The isolated llama.cpp worker (pid {proc.pid}) {how} while {doing}; the next call "
                f"starts a new one.{output}",
                provider=self.provider,
            )
        return NativeCrashError(
            f"The isolated llama.cpp worker (pid {proc.pid}) was {how} while {doing}; this process "
            "is unaffected and the next call starts a new worker. "
            + (_OOM_HINT if name == "SIGKILL" else _CRASH_HINT)
            + output,
            provider=self.provider,
            signal=name,
            stage="load" if op == "load" else "generate",
        )

    # -- the pool's loader ----------------------------------------------------------------
    def loader(self, model_id: str, path: str, settings: LoadSettings) -> RemoteLlama:
        """Load ``path`` in the worker (starting it if needed); blocking. Failures raise
        ``ValueError`` as an in-process load does, or the worker's death error."""
        incarnation = self.ensure_started()
        key = f"{model_id}#{next(self._ids)}"
        try:
            self.call("load", key, path, settings.to_dict())
        except _WorkerFailure as exc:
            raise ValueError(str(exc)) from None
        return RemoteLlama(self, key, incarnation)


_CRASH_HINT = (
    "If it happens again with this model, try extra_buffers 'off', fewer gpu_layers, or the "
    "llamacpp_server provider."
)
_OOM_HINT = "SIGKILL usually means the system ran out of memory: try a smaller model or context_size."


class _WorkerFailure(Exception):
    """A request the worker answered with ``fail`` (its message is what llama.cpp said)."""


class RemoteLlama:
    """A model loaded in an isolated worker: what the pool holds instead of a ``Llama``."""

    def __init__(self, worker: LlamaWorker, key: str, incarnation: int) -> None:
        self.worker = worker
        self.key = key
        self.incarnation = incarnation

    @property
    def alive(self) -> bool:
        """Whether the worker that holds the model still runs."""
        return self.worker.incarnation == self.incarnation and self.worker.alive()

    def close(self) -> None:
        """Unload the model in the worker (nothing to do if the worker died)."""
        if self.alive:
            with contextlib.suppress(Exception):
                self.worker.call("close", self.key, timeout=120)


async def stream_remote(entry: LoadedLlama, request: GenerationRequest) -> AsyncGenerator[Event, None]:
    """Run ``request`` on ``entry`` (a model in the worker), yielding the events of
    :func:`papin.llm.providers._llama.generation.execute` (``entry.tokens_after_stop`` is set from
    the ``end`` event, even after the caller stopped reading). Closing the iterator stops the
    generation at its next token and waits until the worker has stopped it. A death of the
    worker raises its :class:`NativeCrashError`."""
    handle = entry.llama
    if not isinstance(handle, RemoteLlama):
        raise GenerationError(f"the model {entry.model_id} is not loaded", model=entry.model_id)
    bridge = EventBridge()

    def handler(kind: str, payload: Any) -> None:
        if kind == "end":  # also when the caller stopped reading: the counters still count
            entry.tokens_after_stop = payload.get("tokens_after_stop")
        bridge.post(kind, payload)

    rid = handle.worker.submit("generate", (handle.key, entry.settings.n_ctx, request), handler)
    events = bridge.events(lambda: handle.worker.stop_request(rid), wait=120.0)
    try:
        async for kind, payload in events:
            if kind == "dead":
                payload.model = entry.model_id
                raise payload
            if kind == "fail":
                raise GenerationError(
                    f"llama.cpp failed: {payload[1]}", provider=handle.worker.provider, model=entry.model_id
                )
            yield kind, payload
    finally:
        await events.aclose()
