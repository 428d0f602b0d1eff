"""LLMConfig: validation, precedence, atomic save and error messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from papin.llm import ConfigurationError, LLMConfig, ProviderType, config_path
from papin.llm.manager import create_llm_manager
from papin.llm.providers.ollama import OllamaConfig


def test_defaults_match_the_seed() -> None:
    cfg = LLMConfig()
    assert cfg.provider_type is None  # chosen automatically
    assert cfg.provider_config == {}
    assert cfg.default_model is None
    assert cfg.auto_discover and cfg.monitor_for_models and cfg.enable_optimizations
    assert cfg.auto_pull


def test_seed_example_constructs() -> None:
    ollama = OllamaConfig(endpoint="http://localhost:11434", timeout_seconds=60, verify_ssl=True, headers={})
    cfg = LLMConfig(
        provider_type=ProviderType.OLLAMA,
        provider_config=ollama.model_dump(),
        default_model="llama2:7b",
        auto_discover=True,
        monitor_for_models=True,
        enable_optimizations=True,
    )
    assert cfg.provider_type == "ollama"
    assert cfg.settings_for("ollama")["endpoint"] == "http://localhost:11434"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"provider_type": "nonsense"}, "unknown provider 'nonsense'"),
        ({"auto_pull": "maybe"}, "auto_pull"),
        ({"colour": "blue"}, "colour: unknown setting"),
        ({"schema_version": 99}, "newer papin"),
    ],
)
def test_invalid_values_name_the_setting(data: dict[str, object], fragment: str) -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigurationError) as info:
        LLMConfig.from_file()
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_broken_json_file_is_a_clear_error() -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        LLMConfig.load()


def test_missing_file_gives_defaults() -> None:
    assert not config_path().exists()
    assert LLMConfig.load() == LLMConfig()


def test_config_path_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPIN_CONFIG", str(tmp_path / "x" / "my.json"))
    assert config_path() == tmp_path / "x" / "my.json"
    monkeypatch.delenv("PAPIN_CONFIG")
    monkeypatch.setenv("PAPIN_CONFIG_DIR", str(tmp_path / "d"))
    assert config_path() == tmp_path / "d" / "config.json"


def test_save_round_trip_and_permissions() -> None:
    cfg = LLMConfig(provider_type="ollama", default_model="m", provider_config={"api_key": "k"})
    path = cfg.save()
    assert path == config_path()
    assert LLMConfig.from_file() == cfg
    assert (os.stat(path).st_mode & 0o777) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp files left


def test_crash_mid_save_keeps_old_file(monkeypatch: pytest.MonkeyPatch) -> None:
    LLMConfig(default_model="old").save()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", boom)
        with pytest.raises(ConfigurationError, match="disk full"):
            LLMConfig(default_model="new").save()
    assert LLMConfig.from_file().default_model == "old"
    assert [p.name for p in config_path().parent.iterdir()] == ["config.json"]


def test_precedence_explicit_over_env_over_file_over_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # default
    assert create_llm_manager().config.settings_for("ollama") == {}
    # file
    LLMConfig(
        provider_type="ollama",
        default_model="file-model",
        provider_config={"endpoint": "http://file:1"},
    ).save()
    cfg = create_llm_manager().config
    assert cfg.default_model == "file-model"
    assert cfg.settings_for("ollama")["endpoint"] == "http://file:1"
    # environment beats file
    monkeypatch.setenv("PAPIN_MODEL", "env-model")
    monkeypatch.setenv("OLLAMA_HOST", "envhost:2")
    cfg = create_llm_manager().config
    assert cfg.default_model == "env-model"
    assert cfg.settings_for("ollama")["endpoint"] == "envhost:2"
    # explicit beats environment
    cfg = create_llm_manager(model="arg-model", endpoint="http://arg:3").config
    assert cfg.default_model == "arg-model"
    assert cfg.settings_for("ollama")["endpoint"] == "http://arg:3"


def test_env_boolean_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPIN_AUTO_PULL", "0")
    assert LLMConfig.load().auto_pull is False
    monkeypatch.setenv("PAPIN_AUTO_PULL", "perhaps")
    with pytest.raises(ConfigurationError, match="PAPIN_AUTO_PULL"):
        LLMConfig.load()


def test_env_provider_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPIN_PROVIDER", "nope")
    with pytest.raises(ConfigurationError, match="environment settings.*unknown provider"):
        LLMConfig.load()


def test_set_value_dotted_keys() -> None:
    cfg = LLMConfig().set_value("providers.ollama.endpoint", "http://x:1")
    assert cfg.settings_for("ollama") == {"endpoint": "http://x:1"}
    cfg = cfg.set_value("default_model", "llama3.2")
    assert cfg.default_model == "llama3.2"
    with pytest.raises(ConfigurationError, match="Unknown setting 'nope'"):
        cfg.set_value("nope", 1)
    with pytest.raises(ConfigurationError, match="auto_pull"):
        cfg.set_value("auto_pull", "sometimes")


def test_ollama_config_endpoint_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OllamaConfig().endpoint == "http://127.0.0.1:11434"
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:12345")
    assert OllamaConfig().endpoint == "http://127.0.0.1:12345"
    assert OllamaConfig(endpoint="https://example.com/ollama/").endpoint == ("https://example.com:443/ollama")
    monkeypatch.setenv("OLLAMA_API_KEY", "secret")
    assert OllamaConfig().api_key == "secret"
    assert OllamaConfig(api_key="mine").api_key == "mine"


def test_ollama_config_rejects_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="http:// or https://"):
        OllamaConfig(endpoint="ftp://host")
    with pytest.raises(ValidationError, match="greater than 0"):
        OllamaConfig(timeout_seconds=0)


def test_schema_2_and_3_sections_have_defaults_and_are_saved() -> None:
    cfg = LLMConfig()
    assert cfg.schema_version == 3
    assert cfg.discovery.extra_endpoints == [] and cfg.discovery.model_dirs == []
    assert cfg.discovery.cache_seconds == 10.0 and cfg.discovery.probe_timeout_seconds == 0.3
    assert cfg.default_options is None
    saved = json.loads(cfg.save().read_text())
    assert saved["schema_version"] == 3 and saved["default_options"] is None
    assert saved["discovery"]["cache_seconds"] == 10.0
    assert saved["retry"]["max_attempts"] == 3 and cfg.retry.max_retry_after_seconds == 30.0
    assert LLMConfig.from_file() == cfg
