"""``papin doctor``: hardware, tuned settings, fit, discovery and the provider choice in one report."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner, Result

from papin.cli.main import cli
from papin.llm.discovery import reset_discovery
from tests.fakes.ollama import FakeOllama
from tests.ggufs import write_gguf


def papin(*args: str, env: dict[str, str] | None = None) -> Result:
    reset_discovery()
    return CliRunner().invoke(
        cli,
        list(args),
        env={"COLUMNS": "200", "PAPIN_DISCOVERY_CANDIDATES": "", **(env or {})},
        catch_exceptions=False,
    )


def test_json_report_has_every_part() -> None:
    result = papin("doctor", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    hw = data["hardware"]
    assert hw["cpu"]["physical_cores"] == (psutil.cpu_count(logical=False) or hw["cpu"]["logical_cores"])
    assert hw["cpu"]["logical_cores"] == psutil.cpu_count()
    assert hw["memory"]["total"] == psutil.virtual_memory().total
    opt = data["optimizations"]
    assert opt["threads"]["value"] >= 1 and opt["threads"]["reason"]
    assert opt["context_size"]["value"] >= 512
    assert data["model"]["name"] == "gemma-3-270m-q4_k_m"
    assert data["model"]["info"]["architecture"] == "gemma3"
    assert data["fit"]["verdict"] in ("gpu", "partial", "cpu")
    assert data["provider"]["chosen"] == "llamacpp" and "no running LLM server" in data["provider"]["reason"]
    assert data["discovery"]["scanned"]["servers"] is True
    assert data["config"]["schema_version"] == 3 and data["config"]["retry"]["max_attempts"] == 3
    assert data["legacy_migration"] is None and data["problems"] == []


def test_text_report_names_each_section() -> None:
    result = papin("doctor")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for heading in ("Hardware", "Settings for gemma-3-270m-q4_k_m", "Discovery", "Provider", "Configuration"):
        assert heading in out
    assert f"{psutil.cpu_count()} logical" in out
    assert "Using llamacpp" in out
    assert "threads" in out and "Fit: fits" in out


def test_user_settings_and_a_given_model(tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "tiny.gguf")
    assert papin("config", "set", "providers.llamacpp.threads", "7").exit_code == 0
    result = papin("doctor", "--json", "--model", str(model))
    data = json.loads(result.stdout)
    assert data["model"]["source"] == str(model) and data["model"]["info"]["architecture"] == "llama"
    assert data["optimizations"]["threads"] == {"value": 7, "reason": "set by the user"}
    assert data["fit"]["verdict"] in ("gpu", "partial", "cpu")


def test_optimizations_off_are_reported() -> None:
    assert papin("config", "set", "enable_optimizations", "false").exit_code == 0
    data = json.loads(papin("doctor", "--json").stdout)
    assert data["config"]["enable_optimizations"] is False
    assert "optimisations are off" in data["optimizations"]["threads"]["reason"]


def test_problems_are_reported_not_raised(isolated_env: Path) -> None:
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.json").write_text("{not json")
    result = papin("doctor", "--json", "--model", "no-such-model")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    problems = " | ".join(data["problems"])
    assert "configuration:" in problems and "not valid JSON" in problems
    assert "model 'no-such-model'" in problems
    assert data["fit"] is None and data["optimizations"]["threads"]["value"] >= 1


@pytest.mark.timeout(60)
def test_a_running_server_is_chosen() -> None:
    with FakeOllama(models=["llama3.2:1b"]) as ollama:
        result = papin("doctor", "--json", env={"PAPIN_DISCOVERY_CANDIDATES": ollama.url})
    data = json.loads(result.stdout)
    assert data["provider"]["chosen"] == "ollama" and data["provider"]["endpoint"] == ollama.url
    (backend,) = data["discovery"]["backends"]
    assert backend["models"] == ["llama3.2:1b"]
