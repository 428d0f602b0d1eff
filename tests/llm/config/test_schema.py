"""papin's own config file layout: numbered migrations, stored example files of every
released version, the ``discovery`` and ``default_options`` sections (schema 2)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from papin.cli.main import cli
from papin.llm.config import (
    CONFIG_SCHEMA_VERSION,
    DiscoveryConfig,
    LLMConfig,
    config_path,
    parse_endpoint_entry,
)
from papin.llm.config.schema import MIGRATIONS, SchemaTooNewError, migrate_config_data
from papin.llm.errors import ConfigurationError
from papin.llm.options import GenerationOptions
from tests import TESTS

DATA = TESTS / "data" / "config"


def install(name: str) -> Path:
    """Copy a stored example file to papin's config path (the tests own that copy)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / name, path)
    return path


# -- the stored files ------------------------------------------------------------------------
def test_there_is_a_stored_file_for_every_schema_version() -> None:
    versions = {json.loads(p.read_text()).get("schema_version", 1) for p in DATA.glob("*.json")}
    assert versions == set(range(1, CONFIG_SCHEMA_VERSION + 1))
    assert set(MIGRATIONS) == set(range(1, CONFIG_SCHEMA_VERSION))


def test_v1_file_loads_with_its_settings_and_the_new_section() -> None:
    cfg = LLMConfig.from_file(DATA / "v1.json")
    assert cfg.schema_version == CONFIG_SCHEMA_VERSION
    assert cfg.provider_type == "ollama" and cfg.default_model == "llama3.2"
    assert cfg.auto_pull is False
    assert cfg.settings_for("ollama") == {"endpoint": "http://127.0.0.1:11434", "timeout_seconds": 90}
    assert cfg.settings_for("llamacpp") == {"context_size": 4096}
    assert cfg.discovery == DiscoveryConfig()
    assert cfg.default_options is None


def test_v1_file_without_schema_version_is_read_as_version_1() -> None:
    raw = json.loads((DATA / "v1-no-version.json").read_text())
    assert "schema_version" not in raw
    cfg = LLMConfig.from_file(DATA / "v1-no-version.json")
    assert cfg.schema_version == CONFIG_SCHEMA_VERSION
    assert cfg.provider_type == "ollama"  # "Ollama" normalised
    assert cfg.discovery.cache_seconds == 10.0


def test_loading_never_rewrites_the_users_file() -> None:
    path = install("v1.json")
    before = path.read_bytes()
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    LLMConfig.from_file()
    LLMConfig.load()
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == 1_000_000_000
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]


def test_migrated_v1_file_saves_back_as_the_current_version() -> None:
    path = install("v1.json")
    LLMConfig.from_file().set_value("default_model", "qwen3").save()
    saved = json.loads(path.read_text())
    assert saved["schema_version"] == CONFIG_SCHEMA_VERSION
    assert saved["discovery"] == {
        "extra_endpoints": [],
        "model_dirs": [],
        "cache_seconds": 10.0,
        "probe_timeout_seconds": 0.3,
    }
    old = json.loads((DATA / "v1.json").read_text())
    for key in ("auto_pull", "provider_config", "providers", "provider_type"):
        assert saved[key] == old[key]
    assert saved["default_model"] == "qwen3"


def test_v2_file_is_read_and_saved_as_the_current_layout(tmp_path: Path) -> None:
    cfg = LLMConfig.from_file(DATA / "v2.json")
    assert cfg.discovery.extra_endpoints == ["vllm=http://gpu-box:8000", "http://127.0.0.1:8081"]
    assert cfg.discovery.model_dirs == ["~/models"] and cfg.discovery.cache_seconds == 5.0
    assert cfg.default_options == GenerationOptions(temperature=0.2)
    assert cfg.retry.max_attempts == 3  # version 3's section, at its defaults
    saved = json.loads(cfg.save(tmp_path / "again.json").read_text())
    v2 = json.loads((DATA / "v2.json").read_text())
    assert saved["schema_version"] == CONFIG_SCHEMA_VERSION == 3
    new_sections = ("retry", "circuit_breaker", "fallbacks", "schema_version")
    assert {k: v for k, v in saved.items() if k not in new_sections} == {
        k: v for k, v in v2.items() if k != "schema_version"
    }


def test_current_file_round_trips_byte_for_byte(tmp_path: Path) -> None:
    cfg = LLMConfig.from_file(DATA / "v3.json")
    assert cfg.discovery.model_dirs == ["~/models"] and cfg.retry.max_attempts == 5
    out = cfg.save(tmp_path / "again.json")
    assert out.read_bytes() == (DATA / "v3.json").read_bytes()


def test_save_writes_the_current_version_even_for_an_old_object(tmp_path: Path) -> None:
    path = LLMConfig(schema_version=1).save(tmp_path / "c.json")
    assert json.loads(path.read_text())["schema_version"] == CONFIG_SCHEMA_VERSION


def test_newer_file_asks_to_upgrade_papin_and_is_left_alone() -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema_version": CONFIG_SCHEMA_VERSION + 1, "future_setting": 1}))
    before = path.read_bytes()
    with pytest.raises(ConfigurationError) as info:
        LLMConfig.load()
    message = str(info.value)
    assert "newer papin" in message and "Upgrade papin" in message and str(path) in message
    assert "future_setting" not in message  # the version is the problem, not the settings
    assert path.read_bytes() == before


@pytest.mark.parametrize(("version", "fragment"), [(0, "at least 1"), ("two", "schema_version")])
def test_nonsense_schema_version_is_a_clear_error(version: object, fragment: str) -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema_version": version}))
    with pytest.raises(ConfigurationError, match=fragment):
        LLMConfig.from_file()


def test_migrations_are_pure_and_step_by_one() -> None:
    data = json.loads((DATA / "v1.json").read_text())
    snapshot = json.loads(json.dumps(data))
    out = migrate_config_data(data)
    assert data == snapshot  # the input is not changed
    assert out["schema_version"] == CONFIG_SCHEMA_VERSION
    for version, step in MIGRATIONS.items():
        assert step({"schema_version": version})["schema_version"] == version + 1
    current = {"schema_version": CONFIG_SCHEMA_VERSION, "discovery": {}}
    assert migrate_config_data(current) is current
    with pytest.raises(SchemaTooNewError):
        migrate_config_data({"schema_version": CONFIG_SCHEMA_VERSION + 1})


def test_v1_to_v2_keeps_a_discovery_section_already_there() -> None:
    out = MIGRATIONS[1]({"schema_version": 1, "discovery": {"cache_seconds": 3}})
    assert out["discovery"] == {"cache_seconds": 3}


# -- discovery section ------------------------------------------------------------------------
def test_discovery_settings_are_validated() -> None:
    cfg = LLMConfig().set_value("discovery.cache_seconds", 5)
    assert cfg.discovery.cache_seconds == 5.0
    cfg = cfg.set_value("discovery.probe_timeout_seconds", 1.5)
    assert cfg.discovery.probe_timeout_seconds == 1.5
    for key, value, fragment in (
        ("discovery.cache_seconds", -1, "greater than or equal to 0"),
        ("discovery.probe_timeout_seconds", 0, "greater than 0"),
        ("discovery.probe_timeout_seconds", 31, "less than or equal to 30"),
        ("discovery.extra_endpoints", ["gopher=http://x:1"], "unknown server type 'gopher'"),
        ("discovery.extra_endpoints", ["ftp://x"], "http:// or https://"),
        ("discovery.extra_endpoints", ["http://x:99999"], "not a valid URL"),
        ("discovery.model_dirs", [" "], "empty directory"),
        ("discovery.colour", "blue", "discovery.colour: unknown setting"),
    ):
        with pytest.raises(ConfigurationError, match=fragment):
            cfg.set_value(key, value)


def test_extra_endpoints_are_normalised() -> None:
    d = DiscoveryConfig(
        extra_endpoints=["vllm=http://gpu-box:8000/", "LM-Studio=http://127.0.0.1:1234", "http://h:1"]
    )
    assert d.extra_endpoints == ["vllm=http://gpu-box:8000", "lmstudio=http://127.0.0.1:1234", "http://h:1"]
    assert d.endpoints() == [
        ("vllm", "http://gpu-box:8000"),
        ("lmstudio", "http://127.0.0.1:1234"),
        (None, "http://h:1"),
    ]
    assert DiscoveryConfig(extra_endpoints="http://one:2").extra_endpoints == ["http://one:2"]
    assert parse_endpoint_entry("openai=https://h/v1") == ("openai_compatible", "https://h/v1")
    with pytest.raises(ValueError, match="query"):
        parse_endpoint_entry("http://h:1/?a=b")
    with pytest.raises(ValueError, match="unknown server type 'llamacpp'"):
        parse_endpoint_entry("llamacpp=http://h:1")  # the embedded provider has no URL


def test_model_dirs_expand_the_home_directory() -> None:
    d = DiscoveryConfig(model_dirs=["~/models", "/srv/gguf", "~/models"])
    assert d.model_dirs == ["~/models", "/srv/gguf"]
    assert d.model_paths() == [Path.home() / "models", Path("/srv/gguf")]


def test_cli_config_set_reaches_nested_sections(isolated_env: Path) -> None:
    runner = CliRunner()
    for args in (
        ("config", "set", "discovery.cache_seconds", "5"),
        ("config", "set", "discovery.extra_endpoints", '["vllm=http://gpu-box:8000"]'),
        ("config", "set", "default_options.temperature", "0.3"),
    ):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
    saved = json.loads((isolated_env / "config.json").read_text())
    assert saved["discovery"]["cache_seconds"] == 5.0
    assert saved["discovery"]["extra_endpoints"] == ["vllm=http://gpu-box:8000"]
    assert saved["default_options"] == {"temperature": 0.3}
    bad = runner.invoke(cli, ["config", "set", "discovery.probe_timeout_seconds", "0"])
    assert bad.exit_code == 1 and "probe_timeout_seconds" in bad.stderr


# -- default options ------------------------------------------------------------------------
def test_default_options_fill_what_a_call_leaves_unset() -> None:
    assert LLMConfig().options_with_defaults(None) is None
    mine = GenerationOptions(max_tokens=5)
    assert LLMConfig().options_with_defaults(mine) is mine
    cfg = LLMConfig().set_value("default_options", {"temperature": 0.2, "top_k": 10})
    merged = cfg.options_with_defaults(GenerationOptions(temperature=0.9, max_tokens=5))
    assert merged == GenerationOptions(temperature=0.9, top_k=10, max_tokens=5)
    assert cfg.options_with_defaults(None) == GenerationOptions(temperature=0.2, top_k=10)
    with pytest.raises(ConfigurationError, match="default_options.top_p"):
        cfg.set_value("default_options.top_p", 2)
