"""The ``papin`` command line, against the fake Ollama server.

Most commands run in-process through click's ``CliRunner``; Ctrl-C is tested with real
subprocesses and SIGINT. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner, Result

from papin.cli.main import cli
from tests._signals import default_sigint
from tests.fakes.ollama import FakeOllama

MODEL = "llama3.2:latest"
SUBPROCESS_TIMEOUT = 60


# -- helpers --------------------------------------------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    """A fake Ollama with one installed model."""
    with FakeOllama(models=[MODEL]) as server:
        server.tokens = ["Hello", " world"]
        yield server


def papin(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> Result:
    """Run ``papin ARGS`` in-process."""
    return CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)


def at(fake: FakeOllama, *args: str, **kw: Any) -> Result:
    """Run ``papin --endpoint <fake> ARGS``."""
    return papin("--endpoint", fake.url, *args, **kw)


def dead_url() -> str:
    """The URL of a local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def assert_one_line_error(result: Result, exit_code: int = 1) -> str:
    """The command failed with exactly one ``Error: ...`` line on stderr, and no traceback."""
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    return lines[0]


class Proc:
    """``python -m papin ARGS`` in a subprocess, with stdout/stderr collected as they come."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "papin", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **env},
            preexec_fn=default_sigint,
        )
        self._out = bytearray()
        self._err = bytearray()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self._err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream: IO[bytes] | None, sink: bytearray) -> None:
        assert stream is not None
        while chunk := os.read(stream.fileno(), 4096):
            sink.extend(chunk)

    @property
    def stdout(self) -> str:
        return bytes(self._out).decode()

    @property
    def stderr(self) -> str:
        return bytes(self._err).decode()

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text.encode())
        self.popen.stdin.flush()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline or self.popen.poll() is not None:
                raise AssertionError(f"gave up waiting: {self.stdout!r} {self.stderr!r}")
            time.sleep(0.01)

    def interrupt(self) -> None:
        self.popen.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 20.0) -> int:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            self.popen.stdin.close()
        try:
            code = self.popen.wait(timeout)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait(5)
            for thread in self._threads:
                thread.join(5)
            for stream in (self.popen.stdout, self.popen.stderr):
                if stream is not None:
                    stream.close()
        return code


# -- basics ---------------------------------------------------------------------------------
def test_help_lists_commands_and_version() -> None:
    result = papin("--help")
    assert result.exit_code == 0
    for command in ("providers", "models", "generate", "chat", "config"):
        assert command in result.stdout
    assert papin("--version").stdout.strip().endswith("0.1.0")
    models_help = papin("models", "--help").stdout
    for command in ("list", "pull", "rm", "info", "load", "unload", "ps"):
        assert command in models_help


@pytest.mark.timeout(SUBPROCESS_TIMEOUT)
def test_python_dash_m_and_light_import() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "papin", "--version"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert "0.1.0" in version.stdout
    code = (
        "import sys, papin.cli.main\n"
        "print([m for m in ('httpx', 'aiohttp', 'rich', 'pydantic') if m in sys.modules])"
    )
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert imported.stdout.strip() == "[]"


def test_usage_errors_are_one_line_with_exit_2() -> None:
    assert "No such option" in assert_one_line_error(papin("--bogus"), 2)
    assert "unknown provider" in assert_one_line_error(papin("--provider", "nope", "providers"), 2)
    assert "Missing argument" in assert_one_line_error(papin("models", "info"), 2)


# -- providers ------------------------------------------------------------------------------
def test_providers_shows_status_and_reason(fake: FakeOllama) -> None:
    result = at(fake, "providers")
    assert result.exit_code == 0, result.output
    assert "ollama" in result.stdout and "available" in result.stdout
    assert "0.12.6" in result.stdout
    assert "Using ollama:" in result.stdout

    data = json.loads(at(fake, "providers", "--json").stdout)
    assert data["chosen"] == "ollama"
    assert data["error"] is None
    assert fake.url.split("//")[1] in data["reason"]
    ollama = next(p for p in data["providers"] if p["provider"] == "ollama")
    assert ollama["available"] is True and ollama["chosen"] is True
    assert ollama["version"] == "0.12.6"


def test_providers_when_server_is_down_says_why() -> None:
    env = {"PAPIN_AUTO_DISCOVER": "0"}
    result = papin("--endpoint", dead_url(), "providers", "--json", env=env)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["chosen"] is None and data["error"]
    ollama = next(p for p in data["providers"] if p["provider"] == "ollama")
    assert ollama["available"] is False and ollama["error"]
    text = papin("--endpoint", dead_url(), "providers", env=env)
    assert "unavailable" in text.stdout and "No provider is usable" in text.stdout


# -- models ---------------------------------------------------------------------------------
def test_models_list_table_and_json(fake: FakeOllama) -> None:
    fake.add_model("qwen2.5:7b", size=4_683_087_332)
    result = at(fake, "models", "list")
    assert result.exit_code == 0
    assert "NAME" in result.stdout and MODEL in result.stdout
    assert "4.7 GB" in result.stdout and "Q4_K_M" in result.stdout

    data = json.loads(at(fake, "models", "list", "--json").stdout)
    assert {m["name"] for m in data} == {MODEL, "qwen2.5:7b"}
    for key in ("id", "size_bytes", "family", "parameter_size", "quantization", "modified_at"):
        assert key in data[0]


def test_models_list_empty(fake: FakeOllama) -> None:
    fake.models.clear()
    result = at(fake, "models", "list")
    assert result.exit_code == 0 and result.stdout == ""
    assert "No models installed" in result.stderr
    assert json.loads(at(fake, "models", "list", "--json").stdout) == []


def test_models_info(fake: FakeOllama) -> None:
    result = at(fake, "models", "info", "llama3.2")
    assert result.exit_code == 0
    assert "context" in result.stdout and "llama" in result.stdout
    data = json.loads(at(fake, "models", "info", "llama3.2", "--json").stdout)
    assert data["family"] == "llama" and data["context_size"]


def test_models_info_unknown_model_is_one_line(fake: FakeOllama) -> None:
    line = assert_one_line_error(at(fake, "models", "info", "nosuch"))
    assert "nosuch" in line


def test_models_load_ps_unload(fake: FakeOllama) -> None:
    assert json.loads(at(fake, "models", "ps", "--json").stdout) == []
    assert "No models are loaded" in at(fake, "models", "ps").stderr

    result = at(fake, "models", "load", "llama3.2")
    assert result.exit_code == 0 and "Loaded llama3.2" in result.stdout
    ps = json.loads(at(fake, "models", "ps", "--json").stdout)
    assert [m["id"] for m in ps] == [MODEL]
    assert {"size_bytes", "size_vram_bytes", "context_size", "expires_at"} <= set(ps[0])
    assert MODEL in at(fake, "models", "ps").stdout

    result = at(fake, "models", "unload", "llama3.2")
    assert result.exit_code == 0 and "Unloaded" in result.stdout
    assert fake.loaded == {}


def test_models_rm(fake: FakeOllama) -> None:
    result = at(fake, "models", "rm", "llama3.2")
    assert result.exit_code == 0 and "Deleted llama3.2" in result.stdout
    assert fake.models == {}
    assert_one_line_error(at(fake, "models", "rm", "llama3.2"))


def test_models_pull_shows_progress(fake: FakeOllama) -> None:
    fake.pullable = {"tiny:latest": [300_000_000, 2_000_000]}
    result = at(fake, "models", "pull", "tiny")
    assert result.exit_code == 0, result.output
    assert "Pulled tiny (302.0 MB)." in result.stdout
    # stderr is not a terminal here, so the bar's last frame is printed once, at the end.
    assert "100%" in result.stderr and "302.0/302.0 MB" in result.stderr
    assert "ETA" in result.stderr and "/s" in result.stderr
    assert "tiny:latest" in fake.models


def test_models_pull_unknown_model_is_one_line(fake: FakeOllama) -> None:
    line = assert_one_line_error(at(fake, "models", "pull", "nosuch"))
    assert "could not pull 'nosuch'" in line


def test_progress_bar_draws_bytes_speed_and_eta() -> None:
    from rich.console import Console

    from papin.cli._progress import DownloadProgress
    from papin.llm.datatypes import DownloadStatus

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    with DownloadProgress("tiny", console=console) as bar:
        bar(DownloadStatus("tiny", "pulling manifest"))
        bar(
            DownloadStatus(
                "tiny", "pulling 7d47299bd932", bytes_downloaded=150_000_000,
                total_bytes=300_000_000, speed_bps=25_000_000.0, eta_seconds=6.0,
            )
        )
    output = buffer.getvalue()  # stopping draws the last frame
    assert "pulling 7d47299bd932" in output
    assert "50%" in output and "150.0/300.0 MB" in output
    assert "25.0 MB/s" in output and "ETA 6s" in output


# -- errors ---------------------------------------------------------------------------------
def test_server_down_is_one_line_exit_1() -> None:
    env = {"PAPIN_AUTO_DISCOVER": "0"}
    line = assert_one_line_error(papin("--endpoint", dead_url(), "models", "list", env=env))
    assert "Ollama is not running" in line
    line = assert_one_line_error(
        papin("--endpoint", dead_url(), "generate", "-m", "x", "hi", env=env)
    )
    assert "Ollama is not running" in line


def test_debug_lets_the_exception_through() -> None:
    from papin.llm.errors import ProviderUnavailableError

    result = CliRunner().invoke(
        cli, ["--debug", "--endpoint", dead_url(), "models", "list"],
        env={"PAPIN_AUTO_DISCOVER": "0"},
    )
    assert isinstance(result.exception, ProviderUnavailableError)


# -- generate -------------------------------------------------------------------------------
def test_generate_streams_text_and_sends_options(fake: FakeOllama) -> None:
    result = at(
        fake, "generate", "-m", "llama3.2", "Say hello",
        "--max-tokens", "10", "--temperature", "0.5", "--top-p", "0.9", "--top-k", "40",
        "--seed", "7", "--stop", "END", "--stop", "STOP", "--system", "Be terse.",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello world\n"
    body = fake.requests_to("/api/generate")[-1].json
    assert body["prompt"] == "Say hello" and body["system"] == "Be terse."
    options = body["options"]
    assert options["num_predict"] == 10 and options["temperature"] == 0.5
    assert options["top_p"] == 0.9 and options["top_k"] == 40 and options["seed"] == 7
    assert options["stop"] == ["END", "STOP"]


def test_generate_uses_global_model_and_stdin(fake: FakeOllama) -> None:
    result = papin("--endpoint", fake.url, "--model", "llama3.2", "generate", "-", input="From stdin")
    assert result.exit_code == 0 and result.stdout == "Hello world\n"
    assert fake.requests_to("/api/generate")[-1].json["prompt"] == "From stdin"


def test_generate_stats_and_json(fake: FakeOllama) -> None:
    result = at(fake, "generate", "-m", "llama3.2", "hi", "--stats")
    assert result.stdout == "Hello world\n"
    assert "Stats:" in result.stderr and "output 2 tokens" in result.stderr

    data = json.loads(at(fake, "generate", "-m", "llama3.2", "hi", "--json").stdout)
    assert data["text"] == "Hello world" and data["model"] == "llama3.2"
    assert data["provider"] == "ollama"
    assert data["stats"]["finish_reason"] == "stop" and data["stats"]["output_tokens"] == 2


def test_generate_bad_options_are_usage_errors(fake: FakeOllama) -> None:
    line = assert_one_line_error(at(fake, "generate", "hi", "--temperature", "9"), 2)
    assert "--temperature" in line
    assert "empty" in assert_one_line_error(at(fake, "generate", "  "), 2)
    assert fake.requests_to("/api/generate") == []


def test_generate_pulls_a_missing_model_first(fake: FakeOllama) -> None:
    fake.pullable = {"tiny:latest": [1_000_000]}
    result = at(fake, "generate", "-m", "tiny", "hi")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello world\n"
    assert "not installed; pulling it first" in result.stderr
    assert "100%" in result.stderr
    assert "tiny:latest" in fake.models


def test_generate_unknown_model_without_auto_pull(fake: FakeOllama) -> None:
    line = assert_one_line_error(
        at(fake, "generate", "-m", "nosuch", "hi", env={"PAPIN_AUTO_PULL": "0"})
    )
    assert "auto_pull" in line
    assert fake.requests_to("/api/pull") == []


def test_generate_unknown_model_that_cannot_be_pulled(fake: FakeOllama) -> None:
    result = at(fake, "generate", "-m", "nosuch", "hi")
    assert "could not pull 'nosuch'" in assert_one_line_error(result)


# -- chat -----------------------------------------------------------------------------------
def test_chat_keeps_history(fake: FakeOllama) -> None:
    result = at(
        fake, "chat", "-m", "llama3.2", "--system", "You are brief.",
        input="Hi\n\nHow are you?\n/exit\nnever sent\n",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello world\nHello world\n"
    requests = fake.requests_to("/api/chat")
    assert len(requests) == 2
    assert requests[1].json["messages"] == [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello world"},
        {"role": "user", "content": "How are you?"},
    ]


def test_chat_clear_and_eof(fake: FakeOllama) -> None:
    result = at(fake, "chat", "-m", "llama3.2", input="One\n/clear\n/nope\nTwo\n")
    assert result.exit_code == 0
    assert "Conversation cleared" in result.stderr and "Unknown command /nope" in result.stderr
    last = fake.requests_to("/api/chat")[-1].json["messages"]
    assert last == [{"role": "user", "content": "Two"}]


def test_chat_error_ends_a_non_interactive_session(fake: FakeOllama) -> None:
    fake.fault("/api/chat", "status", status=500)
    result = at(fake, "chat", "-m", "llama3.2", input="Hi\nAgain\n")
    assert_one_line_error(result)
    assert len(fake.requests_to("/api/chat")) == 1


# -- config ---------------------------------------------------------------------------------
def test_config_path_set_show_round_trip(isolated_env: Path) -> None:
    path = Path(papin("config", "path").stdout.strip())
    assert path == isolated_env / "config.json"
    assert not path.exists()

    for key, value in (
        ("default_model", "llama3.2"),
        ("auto_pull", "false"),
        ("providers.ollama.timeout_seconds", "60"),
        ("providers.ollama.api_key", "sk-secret-0123456789"),
        ("providers.ollama.headers", '{"Authorization": "Bearer tok-secret-987654321"}'),
    ):
        result = papin("config", "set", key, value)
        assert result.exit_code == 0, result.output
        assert str(path) in result.stdout
        assert "secret-" not in result.stdout  # secrets are masked in the confirmation too

    saved = json.loads(path.read_text())
    assert saved["default_model"] == "llama3.2" and saved["auto_pull"] is False
    assert saved["providers"]["ollama"]["timeout_seconds"] == 60
    assert saved["providers"]["ollama"]["api_key"] == "sk-secret-0123456789"

    for args in (("config", "show"), ("config", "show", "--file")):
        shown = papin(*args)
        assert shown.exit_code == 0
        data = json.loads(shown.stdout)
        assert data["default_model"] == "llama3.2" and data["auto_pull"] is False
        assert "sk-secret" not in shown.stdout and "tok-secret" not in shown.stdout
        assert data["providers"]["ollama"]["api_key"].startswith("****")
        assert data["providers"]["ollama"]["headers"]["Authorization"].startswith("****")


def test_config_set_does_not_write_environment_overrides(isolated_env: Path) -> None:
    env = {"PAPIN_MODEL": "from-env", "OLLAMA_HOST": "http://127.0.0.1:1"}
    result = papin("config", "set", "auto_discover", "false", env=env)
    assert result.exit_code == 0
    saved = json.loads((isolated_env / "config.json").read_text())
    assert saved["default_model"] is None and saved["providers"] == {}

    result = papin("config", "set", "default_model", "from-file", env=env)
    assert "PAPIN_MODEL" in result.stderr  # a note that the environment wins here
    assert json.loads(papin("config", "show", env=env).stdout)["default_model"] == "from-env"
    assert json.loads(papin("config", "show").stdout)["default_model"] == "from-file"
    assert json.loads(papin("--model", "flag", "config", "show", env=env).stdout)[
        "default_model"
    ] == "flag"


def test_config_set_rejects_bad_values(isolated_env: Path) -> None:
    papin("config", "set", "default_model", "keep-me")
    before = (isolated_env / "config.json").read_text()
    assert "auto_pull" in assert_one_line_error(papin("config", "set", "auto_pull", "maybe"))
    assert "Unknown setting" in assert_one_line_error(papin("config", "set", "nosuch", "1"))
    line = assert_one_line_error(papin("config", "set", "providers.ollama.timeout_seconds", "-5"))
    assert "timeout_seconds" in line
    line = assert_one_line_error(papin("config", "set", "providers.ollama.endpoint", "ftp://x"))
    assert "endpoint" in line
    assert (isolated_env / "config.json").read_text() == before


def test_broken_config_file_is_one_line(isolated_env: Path, fake: FakeOllama) -> None:
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.json").write_text("{not json")
    assert "not valid JSON" in assert_one_line_error(papin("config", "show"))
    assert "not valid JSON" in assert_one_line_error(at(fake, "models", "list"))


def test_precedence_flag_over_env_over_file(isolated_env: Path, fake: FakeOllama) -> None:
    papin("config", "set", "provider_type", "ollama")
    papin("config", "set", "providers.ollama.endpoint", dead_url())
    papin("config", "set", "auto_discover", "false")
    assert_one_line_error(papin("models", "list"))
    assert papin("models", "list", env={"OLLAMA_HOST": fake.url}).exit_code == 0
    result = papin("--endpoint", fake.url, "models", "list", env={"OLLAMA_HOST": dead_url()})
    assert result.exit_code == 0 and MODEL in result.stdout


# -- Ctrl-C (real processes, real SIGINT) ----------------------------------------------------
@pytest.mark.timeout(SUBPROCESS_TIMEOUT)
def test_ctrl_c_stops_generate_and_closes_the_stream(fake: FakeOllama) -> None:
    fake.tokens = [f" t{i}" for i in range(200)]
    fake.token_delay = 0.05
    proc = Proc("generate", "-m", "llama3.2", "Count", env={"OLLAMA_HOST": fake.url})
    proc.wait_until(lambda: " t2" in proc.stdout)
    proc.interrupt()
    assert proc.finish() == 130, proc.stderr
    assert proc.stdout.startswith(" t0 t1 t2") and " t199" not in proc.stdout
    assert proc.stdout.endswith("\n")
    assert "Generation interrupted" in proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    assert fake.wait_for(lambda: fake.disconnects >= 1, timeout=5)


@pytest.mark.timeout(SUBPROCESS_TIMEOUT)
def test_ctrl_c_stops_generate_json_with_partial_result(fake: FakeOllama) -> None:
    fake.tokens = [f" t{i}" for i in range(200)]
    fake.token_delay = 0.05
    proc = Proc("generate", "--json", "-m", "llama3.2", "Count", env={"OLLAMA_HOST": fake.url})
    proc.wait_until(lambda: len(fake.requests_to("/api/generate")) == 1)
    time.sleep(0.5)
    proc.interrupt()
    assert proc.finish() == 130, proc.stderr
    data = json.loads(proc.stdout)
    assert data["stats"]["finish_reason"] == "cancelled"
    assert data["text"].startswith(" t0") and " t199" not in data["text"]
    assert fake.wait_for(lambda: fake.disconnects >= 1, timeout=5)


@pytest.mark.timeout(SUBPROCESS_TIMEOUT)
def test_ctrl_c_interrupts_a_pull(fake: FakeOllama) -> None:
    fake.pullable = {"big:latest": [4_000_000_000]}
    fake.pull_updates = 100
    fake.pull_delay = 0.05
    proc = Proc("models", "pull", "big", env={"OLLAMA_HOST": fake.url})
    proc.wait_until(lambda: len(fake.requests_to("/api/pull")) == 1)
    time.sleep(0.5)
    proc.interrupt()
    assert proc.finish() == 130, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Pull of 'big' interrupted at "), lines
    assert proc.stdout == ""
    assert fake.wait_for(lambda: fake.disconnects >= 1, timeout=5)
    assert "big:latest" not in fake.models


@pytest.mark.timeout(SUBPROCESS_TIMEOUT)
def test_ctrl_c_in_chat_stops_only_the_reply(fake: FakeOllama) -> None:
    fake.tokens = [f" t{i}" for i in range(200)]
    fake.token_delay = 0.05
    proc = Proc("chat", "-m", "llama3.2", env={"OLLAMA_HOST": fake.url})
    proc.send("Count\n")
    proc.wait_until(lambda: " t2" in proc.stdout)
    proc.interrupt()
    proc.wait_until(lambda: "reply interrupted" in proc.stderr)
    assert fake.wait_for(lambda: fake.disconnects >= 1, timeout=5)
    fake.tokens, fake.token_delay = ["Done"], 0.0
    proc.send("Again\n")
    proc.wait_until(lambda: "Done" in proc.stdout)
    proc.send("/exit\n")
    assert proc.finish() == 0, proc.stderr
    messages = fake.requests_to("/api/chat")[-1].json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"].startswith(" t0 t1 t2")


@pytest.mark.timeout(SUBPROCESS_TIMEOUT)
def test_ctrl_c_at_the_chat_prompt_quits(fake: FakeOllama) -> None:
    proc = Proc("chat", "-m", "llama3.2", env={"OLLAMA_HOST": fake.url})
    proc.send("Hi\n")
    proc.wait_until(lambda: "Hello world" in proc.stdout)
    time.sleep(0.2)  # back at the prompt, waiting for input
    proc.interrupt()
    assert proc.finish() == 130, proc.stderr
    assert "Traceback" not in proc.stderr


def test_providers_shows_each_replica_and_its_breaker(fake: FakeOllama, isolated_env: Path) -> None:
    dead = dead_url()
    endpoints = json.dumps([fake.url, dead])
    assert papin("config", "set", "providers.ollama.endpoints", endpoints).exit_code == 0
    result = papin("providers", env={"PAPIN_AUTO_DISCOVER": "0", "PAPIN_PROVIDER": "ollama"})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("ollama replica")]
    assert len(lines) == 2, result.stdout
    assert f"{fake.url} up, breaker closed" in lines[0]
    assert f"{dead} down, breaker closed" in lines[1]
    assert "Using ollama:" in result.stdout
