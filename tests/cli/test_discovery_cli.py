"""``papin providers``: what discovery found, and the choice with its reason."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from click.testing import CliRunner, Result

from papin.cli.main import cli
from papin.llm.discovery import reset_discovery
from tests.contract.backends import closed_port_url
from tests.fakes.ollama import FakeOllama
from tests.fakes.vllm import FakeVLLM
from tests.llm.discovery.test_model_files import ollama_model


def papin(*args: str, env: dict[str, str]) -> Result:
    reset_discovery()
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "250", **env}, catch_exceptions=False)


def test_providers_json_lists_servers_files_and_the_choice() -> None:
    blob = ollama_model(Path(os.environ["HOME"]) / ".ollama" / "models", "llama3.2", "1b")
    with FakeOllama(models=["llama3.2:1b"]) as ollama, FakeVLLM() as vllm:
        env = {"PAPIN_DISCOVERY_CANDIDATES": f"{ollama.url},{vllm.url}"}
        result = papin("providers", "--json", env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["configured"] is None and data["chosen"] == "vllm" and data["endpoint"] == vllm.url
    assert "GPU-backed" in data["reason"]
    backends = {b["address"]: b for b in data["discovery"]["backends"]}
    assert backends[ollama.url]["provider"] == "ollama" and backends[ollama.url]["models"] == ["llama3.2:1b"]
    assert backends[vllm.url]["provider"] == "vllm" and backends[vllm.url]["version"] == "0.33.0"
    (file,) = data["discovery"]["model_files"]
    assert file["name"] == "llama3.2:1b" and file["path"] == str(blob) and file["usable"] is True
    assert file["info"]["architecture"] == "llama"
    assert data["discovery"]["scanned"] == {"servers": True, "files": True, "installed": True}
    assert isinstance(data["discovery"]["executables"], list) and isinstance(
        data["discovery"]["packages"], list
    )


def test_providers_text_shows_each_part() -> None:
    ollama_model(Path(os.environ["HOME"]) / ".ollama" / "models", "llama3.2", "1b")
    with FakeOllama(models=["llama3.2:1b", "qwen2.5:7b"]) as ollama:
        env = {"PAPIN_DISCOVERY_CANDIDATES": f"{ollama.url},{closed_port_url()}"}
        result = papin("--model", "llama3.2:1b", "providers", env=env)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Running LLM servers (probed 2 addresses in" in out
    chosen_row = rf"\*\s+ollama\s+available\s+0\.12\.6\s+{re.escape(ollama.url)}"  # where it is used
    assert re.search(chosen_row, out)
    assert ollama.url in out and "0.12.6" in out and "2 (llama3.2:1b, qwen2.5:7b)" in out
    assert "Installed backends:" in out
    assert "Model files on disk: 1 usable" in out and "llama3.2:1b" in out
    assert "Run one in place by name: papin --provider llamacpp --model llama3.2:1b" in out
    assert f"Using ollama: no provider configured; using 'ollama' at {ollama.url}" in out


def test_providers_with_nothing_running() -> None:
    env = {"PAPIN_DISCOVERY_CANDIDATES": closed_port_url(), "PAPIN_PROVIDER": "ollama",
           "OLLAMA_HOST": closed_port_url(), "PAPIN_AUTO_DISCOVER": "0"}  # fmt: skip
    result = papin("providers", env=env)
    assert result.exit_code == 0, result.output
    # OLLAMA_HOST names an address, so it is listed with why it did not answer.
    assert "Running LLM servers (probed 2 addresses in" in result.stdout
    assert "error: connection refused" in result.stdout
    assert "Model files on disk: 0 usable" in result.stdout
    assert "No provider is usable" in result.stdout


def test_providers_table_comes_from_the_one_probing_pass(tmp_path: Path) -> None:
    """A listener that accepts and never answers where llama-server and LocalAI would be:
    their rows come from discovery's probe (bounded by its short timeouts), not from a second
    status check that would wait out each provider's own 5 s timeout."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])  # and never answer
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    silent = f"http://127.0.0.1:{listener.getsockname()[1]}"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"providers": {"llamacpp_server": {"endpoint": silent},
                                                "localai": {"endpoint": silent}}}))  # fmt: skip
    try:
        with FakeOllama(models=["llama3.2:1b"]) as ollama:
            env = {"PAPIN_DISCOVERY_CANDIDATES": f"{ollama.url},{silent}", "PAPIN_CONFIG": str(config)}
            result = papin("providers", "--json", env=env)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in accepted:
            conn.close()
    assert result.exit_code == 0, result.output
    rows = {p["provider"]: p for p in json.loads(result.stdout)["providers"]}
    assert rows["ollama"]["available"] and rows["ollama"]["endpoint"] == ollama.url
    for name in ("llamacpp_server", "localai"):
        row = rows[name]
        assert not row["available"] and row["endpoint"] == silent
        assert f"answering at {silent}" in row["error"], row  # discovery's verdict, no own timeout
    assert rows["llamacpp"]["available"]  # asked directly: in-process
