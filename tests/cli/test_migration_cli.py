"""``papin config migrate``: dry run, real run, status, opt-out, errors (in-process CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from papin.cli.main import cli
from papin.llm.config import LLMConfig, config_path
from papin.llm.store import ModelStore
from tests.migration_helpers import LEGACY_DATA, LegacyTree, make_tree


def papin(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LegacyTree:
    """A legacy install in the (isolated) home directory; papin's store under the tree."""
    tree = make_tree(tmp_path / "t")
    monkeypatch.setenv("HOME", str(tree.home))
    monkeypatch.setenv("PAPIN_MODELS_DIR", str(tree.store))
    monkeypatch.chdir(tree.cwd)
    tree.gguf("home/.local/share/mcp-client/models/medium.gguf")
    tree.write(
        "home/.mcp-client/llm_config.json",
        json.dumps({"model_id": "medium", "context_size": 4096, "parameters": {"temperature": 0.7},
                    "model_path": str(tree.data_dir / "mcp-client/models/medium.gguf")}),
    )  # fmt: skip
    return tree


def test_nothing_legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = papin("config", "migrate")
    assert result.exit_code == 0 and "No legacy Papin configuration" in result.stdout
    data = json.loads(papin("config", "migrate", "--json").stdout)
    assert data["status"] == "nothing_to_do" and len(data["legacy"]["searched"]) >= 50
    assert not config_path().exists()


def test_dry_run_shows_the_plan_and_writes_nothing(tree: LegacyTree) -> None:
    result = papin("config", "migrate", "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Legacy configuration: " + str(tree.home / ".mcp-client/llm_config.json") in out
    assert 'provider_type: null -> "llamacpp"' in out and 'default_model: null -> "medium"' in out
    assert "default_options.temperature: null -> 0.7" in out
    assert "Would register in the model store" in out and "medium: " in out
    assert "Nothing was written (dry run)" in out
    assert not config_path().exists() and not tree.store.exists()
    data = json.loads(papin("config", "migrate", "--dry-run", "--json").stdout)
    assert data["status"] == "dry_run"
    assert {c["key"] for c in data["plan"]["changes"]} >= {"provider_type", "default_model"}
    assert data["plan"]["models"][0]["action"] == "register"


def test_real_run_then_nothing_to_do(tree: LegacyTree) -> None:
    papin("config", "set", "auto_pull", "false")
    result = papin("config", "migrate")
    assert result.exit_code == 0, result.output
    assert "Changed:" in result.stdout and "Backup: " in result.stdout
    backup = Path(result.stdout.split("Backup: ")[1].split()[0].rstrip("."))
    assert backup.is_file() and json.loads(backup.read_text())["auto_pull"] is False
    cfg = LLMConfig.from_file()
    assert cfg.provider_type == "llamacpp" and cfg.default_model == "medium" and cfg.auto_pull is False
    assert ModelStore(tree.store).get("medium").in_place

    again = papin("config", "migrate")
    assert again.exit_code == 0 and "Nothing to migrate" in again.stdout
    status = papin("config", "migrate", "--status")
    assert "Migration completed" in status.stdout and "Models registered: medium" in status.stdout
    data = json.loads(papin("config", "migrate", "--status", "--json").stdout)
    assert data["state"]["status"] == "completed" and data["state"]["backup_path"] == str(backup)


def test_json_run_result(tree: LegacyTree) -> None:
    data = json.loads(papin("config", "migrate", "--json").stdout)
    assert data["status"] == "completed" and data["registered"] == ["medium"]
    assert data["backup_path"] is None  # there was no config file to back up


def test_from_a_file_and_its_errors(tree: LegacyTree) -> None:
    broken = tree.put("elsewhere/llm.toml", "broken.toml")
    result = papin("config", "migrate", "--from", str(broken))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(broken) in lines[0] and "not valid TOML" in lines[0]
    missing = papin("config", "migrate", "--from", str(tree.root / "nope.json"))
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    good = papin("config", "migrate", "--from", str(LEGACY_DATA / "llm_config.toml"), "--dry-run")
    assert good.exit_code == 0 and "providers.llamacpp.context_size: null -> 2048" in good.stdout
    assert "parameters.use_mirostat: papin has no mirostat setting" in good.stdout


def test_overwrite(tree: LegacyTree) -> None:
    papin("config", "set", "default_model", "mine")
    kept = papin("config", "migrate", "--dry-run")
    assert "default_model = 'mine'; kept" in kept.stdout
    forced = papin("config", "migrate", "--dry-run", "--overwrite")
    assert 'default_model: "mine" -> "medium"' in forced.stdout


def test_opt_out_and_status(tree: LegacyTree) -> None:
    assert "No migration has run yet" in papin("config", "migrate", "--status").stdout
    result = papin("config", "migrate", "--opt-out")
    assert result.exit_code == 0 and "Automatic migration turned off" in result.stdout
    assert "Migration opted_out" in papin("config", "migrate", "--status").stdout
    # asked explicitly, it still migrates
    assert papin("config", "migrate").exit_code == 0
    assert LLMConfig.from_file().default_model == "medium"


def test_failed_run_exits_1_and_restores(tree: LegacyTree, monkeypatch: pytest.MonkeyPatch) -> None:
    import papin.llm.migration as migration

    papin("config", "set", "auto_pull", "false")
    before = config_path().read_bytes()

    def boom(*args: object) -> None:
        raise OSError("read-only file system")

    monkeypatch.setattr(migration, "_verify", boom)
    result = papin("config", "migrate")
    assert result.exit_code == 1
    assert "read-only file system" in result.stderr and "restored" in result.stderr
    assert config_path().read_bytes() == before
    assert ModelStore(tree.store).list() == []
