"""Child processes papin starts for llama.cpp (``llama-server``, the isolated embedded worker,
the crash probe): started so that none outlives papin, and stopped in order.

* On Linux every child is started with ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel
  kills it when papin dies, even from SIGKILL. The signal fires when the *thread* that forked
  the child ends, so children are forked from one long-lived daemon thread (:func:`spawn`).
* Children run in their own session (``start_new_session``): a Ctrl-C in the terminal goes to
  papin only, and papin stops them in order (:func:`terminate`: SIGTERM to the whole process
  group, then SIGKILL after a grace period).
* Owners register an exit hook (``atexit``) and a ``weakref.finalize`` of their own.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "child_environment",
    "death_signal_hook",
    "follow_output",
    "signal_description",
    "signal_group",
    "spawn",
    "terminate",
]

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1


def death_signal_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with its parent (Linux), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


class _Spawner:
    """One daemon thread that forks every child (so PDEATHSIG is tied to a thread that lives
    as long as the interpreter, not to whichever thread asked for the child)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="papin-spawner", daemon=True)
                self._thread.start()
        self._jobs.put((fn, future))
        return future

    def _run(self) -> None:
        while True:
            fn, future = self._jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to the caller
                    future.set_exception(exc)


_SPAWNER = _Spawner()


def spawn(command: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(command, **popen)`` in its own session, with the parent-death signal,
    forked from the long-lived spawner thread. Blocking."""
    return _SPAWNER.submit(
        lambda: subprocess.Popen(
            command,
            start_new_session=True,
            preexec_fn=death_signal_hook(),  # deliberate: see the module docstring
            **popen,
        )
    ).result()


def child_environment() -> dict[str, str]:
    """The environment of a Python child that runs papin's code (the isolated worker, the crash
    probe): papin's, with papin's own folder first on ``PYTHONPATH`` (so the child imports this
    papin even when it was not installed) and ``GGML_NO_BACKTRACE`` set (on a failed assertion
    llama.cpp would otherwise attach gdb to itself, which takes seconds)."""
    root = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ)
    parts = [root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("GGML_NO_BACKTRACE", "1")
    return env


def follow_output(proc: subprocess.Popen[bytes], lines: collections.deque[str], name: str) -> None:
    """Append the child's output (its ``stdout`` pipe), line by line, to ``lines`` from a
    daemon thread called ``name``, until the child closes it."""

    def read() -> None:
        stream = proc.stdout
        assert stream is not None
        with contextlib.suppress(OSError, ValueError):
            try:
                for raw in stream:
                    lines.append(raw.decode("utf-8", "replace").rstrip())
            finally:
                stream.close()

    threading.Thread(target=read, name=name, daemon=True).start()


def signal_group(proc: subprocess.Popen[bytes], kill: bool) -> None:
    """SIGTERM (or SIGKILL) the child's process group (its own session: its children too)."""
    if os.name != "posix":  # pragma: no cover - Windows has no process groups to signal
        with contextlib.suppress(OSError):
            proc.kill() if kill else proc.terminate()
        return
    sig = signal.SIGKILL if kill else signal.SIGTERM
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL the child and its process group."""
    if proc.poll() is None:
        signal_group(proc, kill=False)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            signal_group(proc, kill=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)


def signal_description(returncode: int | None) -> tuple[str | None, str]:
    """(signal name, description) of a child's exit status.

    >>> signal_description(-11)
    ('SIGSEGV', 'killed by signal SIGSEGV (segmentation fault)')
    >>> signal_description(-9)[1]
    'killed by signal SIGKILL (killed: out of memory, or by another process)'
    >>> signal_description(3)
    (None, 'exited with status 3')
    """
    if returncode is None:
        return None, "still running"
    if returncode >= 0:
        return None, f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}", f"killed by signal {-returncode}"
    why = _SIGNAL_MEANINGS.get(name)
    return name, f"killed by signal {name}" + (f" ({why})" if why else "")


_SIGNAL_MEANINGS = {
    "SIGSEGV": "segmentation fault",
    "SIGILL": "illegal instruction",
    "SIGBUS": "bus error",
    "SIGABRT": "aborted: a failed assertion in llama.cpp",
    "SIGFPE": "arithmetic error",
    "SIGKILL": "killed: out of memory, or by another process",
}
