"""Legacy detection: the places the original looked, the formats, the registry, model files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from papin.llm.errors import ConfigurationError
from papin.llm.migration import LegacyConfig, detect_legacy, plan_migration
from papin.llm.migration.legacy_config import parse_legacy_config
from papin.llm.migration.legacy_sources import config_candidates, legacy_data_dir
from tests.migration_helpers import LEGACY_DATA, LegacyTree, make_tree


@pytest.fixture
def tree(tmp_path: Path) -> LegacyTree:
    return make_tree(tmp_path / "t")


# -- where ----------------------------------------------------------------------------------
def test_data_dir_rules_per_platform(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert legacy_data_dir("linux", {}, home) == home / ".local" / "share"
    assert legacy_data_dir("linux", {"XDG_DATA_HOME": "/x/data"}, home) == Path("/x/data")
    assert legacy_data_dir("linux", {"XDG_DATA_HOME": "relative"}, home) == home / ".local" / "share"
    assert (
        legacy_data_dir("darwin", {"XDG_DATA_HOME": "/x"}, home) == home / "Library" / "Application Support"
    )
    assert legacy_data_dir("win32", {"APPDATA": r"C:\Users\me\AppData\Roaming"}, home) == Path(
        r"C:\Users\me\AppData\Roaming"
    )
    assert legacy_data_dir("win32", {}, home) == home / "AppData" / "Roaming"


def test_candidates_are_the_originals_in_order(tree: LegacyTree) -> None:
    d, h, c = tree.data_dir, tree.home, tree.cwd
    found = config_candidates(d, h, c)
    bases = [
        d / "papin/llm_config.json", d / "papin/config/llm.json",
        d / "mcp-client/llm_config.json", d / "mcp-client/config/llm.json",
        h / ".papin/llm_config.json", h / ".mcp-client/llm_config.json",
        h / ".config/papin/llm.json", h / ".config/mcp-client/llm.json",
        c / "llm_config.json", c / "config/llm.json",
    ]  # fmt: skip
    assert found[::5] == bases
    assert [p.suffix for p in found[:5]] == [".json", ".toml", ".yaml", ".yml", ".db"]
    assert len(found) == 50
    detection = tree.detect()
    assert not detection.found and detection.config_source is None
    assert list(detection.searched[:50]) == [str(p) for p in found]


@pytest.mark.parametrize("index", range(10))
def test_each_place_is_found(tree: LegacyTree, index: int) -> None:
    candidate = config_candidates(tree.data_dir, tree.home, tree.cwd)[index * 5]
    candidate.parent.mkdir(parents=True, exist_ok=True)
    candidate.write_text((LEGACY_DATA / "llm_config.json").read_text())
    detection = tree.detect()
    assert detection.config_source == str(candidate) and detection.config_format == "json"
    assert detection.config is not None and detection.config.model_id == "medium"


def test_first_hit_wins_and_variants_are_tried(tree: LegacyTree) -> None:
    later = tree.put("work/llm_config.json", "llm_config.json")
    toml = tree.put("home/.mcp-client/llm_config.toml", "llm_config.toml")
    detection = tree.detect()
    assert detection.config_source == str(toml) and detection.config_format == "toml"
    assert detection.config is not None and detection.config.model_id == "small"
    yml = tree.put("home/.papin/llm_config.yml", "llm.yaml")
    assert tree.detect().config_source == str(yml)
    assert tree.detect(legacy_file=later).config_source == str(later)  # --from replaces the search


def test_default_places_follow_home_and_working_directory(
    tree: LegacyTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    if sys.platform.startswith("win"):
        pytest.skip("POSIX home layout")
    monkeypatch.setenv("HOME", str(tree.home))
    monkeypatch.chdir(tree.cwd)
    assert not detect_legacy().found
    target = tree.put("work/config/llm.json", "llm_config.json")
    assert detect_legacy().config_source == str(target)


# -- formats --------------------------------------------------------------------------------
def test_json_toml_and_yaml_parse_to_the_legacy_config(tree: LegacyTree) -> None:
    cfg = tree.detect(legacy_file=LEGACY_DATA / "llm_config.json").config
    assert cfg is not None
    assert (cfg.model_id, cfg.model_path, cfg.context_size, cfg.max_output_length) == (
        "medium", "models/medium.gguf", 4096, 2048,
    )  # fmt: skip
    assert (cfg.enabled, cfg.memory_usage_mb) == (True, 1536)
    p = cfg.parameters
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty) == (0.7, 0.9, 40, 1.1)
    assert (p.use_mirostat, p.mirostat_tau, p.mirostat_eta) == (False, 5.0, 0.1)
    assert cfg.unknown == {} and cfg.invalid == {}

    toml = tree.detect(legacy_file=LEGACY_DATA / "llm_config.toml")
    assert toml.config_format == "toml" and toml.config is not None
    assert toml.config.parameters.use_mirostat is True and toml.config.parameters.top_k == 50

    yaml = tree.detect(legacy_file=LEGACY_DATA / "llm.yaml")
    assert yaml.config_format == "yaml" and yaml.config is not None
    assert yaml.config.model_path == "/var/lib/ollama/models/large"
    assert yaml.config.parameters.top_p is None  # missing stays missing: nothing assumed
    assert yaml.config.enabled is False and yaml.config.unknown == {"theme": "dark"}


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("broken.json", "not valid JSON"), ("broken.toml", "not valid TOML"), ("broken.yaml", "not valid YAML")],
)
def test_broken_files_are_reported_with_the_file_and_the_problem(
    tree: LegacyTree, name: str, fragment: str
) -> None:
    path = tree.put(f"home/.papin/llm_config{Path(name).suffix}", name)
    detection = tree.detect()  # never raises
    assert detection.found and detection.config is None
    assert detection.config_error is not None
    assert fragment in detection.config_error and str(path) in detection.config_error
    with pytest.raises(ConfigurationError, match=fragment):
        plan_migration(detection)


def test_sqlite_store_is_reported_as_unsupported(tree: LegacyTree) -> None:
    db = tree.root / "home/.papin/llm_config.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"SQLite format 3\x00" + bytes(100))
    detection = tree.detect()
    assert detection.config_source == str(db) and detection.config_format == "sqlite"
    assert detection.config_error is not None and "SQLite" in detection.config_error
    assert "--from" in detection.config_error


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("", "is empty"), ("[1, 2]", "must hold an object"), (None, "not UTF-8")],
)
def test_other_unusable_files(tree: LegacyTree, content: str | None, fragment: str) -> None:
    path = tree.root / "home/.papin/llm_config.json"
    path.parent.mkdir(parents=True)
    if content is None:
        path.write_bytes(b'{"model_id": "\xff\xfe"}')
    else:
        path.write_text(content)
    error = tree.detect().config_error
    assert error is not None and fragment in error and str(path) in error


def test_explicit_file_errors(tree: LegacyTree) -> None:
    missing = tree.detect(legacy_file=tree.root / "nope.json").config_error
    assert missing is not None and "does not exist" in missing
    odd = tree.write("legacy.ini", "[x]")
    error = tree.detect(legacy_file=odd).config_error
    assert error is not None and ".json, .toml, .yaml" in error


def test_wrong_types_are_kept_as_invalid_not_guessed() -> None:
    cfg = parse_legacy_config(
        {"model_id": 7, "context_size": "big", "max_output_length": 0, "enabled": "yes",
         "parameters": {"temperature": True, "top_k": 2.5, "seed": 3}},
        "x.json",
    )  # fmt: skip
    assert cfg.model_id is None and cfg.context_size is None and cfg.enabled is None
    assert set(cfg.invalid) == {
        "model_id", "context_size", "max_output_length", "enabled",
        "parameters.temperature", "parameters.top_k",
    }  # fmt: skip
    assert cfg.unknown == {"parameters.seed": 3}
    wrapped = parse_legacy_config({"llm_config": {"model_id": "m", "context_size": 4096.0}}, "o.json")
    assert wrapped == LegacyConfig(model_id="m", context_size=4096)


# -- the Windows registry -------------------------------------------------------------------
class FakeRegistry:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.reads: list[str] = []

    def __call__(self, hive: str, key: str, name: str) -> str | None:
        self.reads.append(f"{hive}\\{key}\\{name}")
        return self.values.get(hive)


def test_registry_value_is_loaded_hklm_first(tree: LegacyTree) -> None:
    text = (LEGACY_DATA / "registry-value.json").read_text()
    tree.put("home/.papin/llm_config.json", "llm_config.json")  # the registry comes first
    registry = FakeRegistry({"HKEY_CURRENT_USER": text})
    detection = tree.detect(platform="win32", registry_reader=registry)
    assert registry.reads == [
        r"HKEY_LOCAL_MACHINE\SOFTWARE\Papin\LLMConfig",
        r"HKEY_CURRENT_USER\SOFTWARE\Papin\LLMConfig",
    ]
    assert detection.config_source == r"registry:HKEY_CURRENT_USER\SOFTWARE\Papin\LLMConfig"
    assert detection.config_format == "registry"
    assert detection.config is not None  # the original found it but never loaded it
    assert detection.config.model_id == "reg-model" and detection.config.context_size == 3072
    assert detection.config.parameters.temperature == 0.4

    both = FakeRegistry({"HKEY_LOCAL_MACHINE": '{"model_id": "machine"}', "HKEY_CURRENT_USER": text})
    detection = tree.detect(platform="win32", registry_reader=both)
    assert detection.config is not None and detection.config.model_id == "machine"
    assert len(both.reads) == 1


def test_registry_problems_and_other_platforms(tree: LegacyTree) -> None:
    broken = tree.detect(platform="win32", registry_reader=FakeRegistry({"HKEY_CURRENT_USER": "{oops"}))
    assert broken.config_error is not None and "registry:HKEY_CURRENT_USER" in broken.config_error

    def failing(hive: str, key: str, name: str) -> str | None:
        raise PermissionError("access denied")

    legacy = tree.put("home/.papin/llm_config.json", "llm_config.json")
    detection = tree.detect(platform="win32", registry_reader=failing)
    assert detection.config_source == str(legacy)  # falls back to the files
    assert any("access denied" in note for note in detection.notes)
    linux = tree.detect(platform="linux", registry_reader=FakeRegistry({"HKEY_CURRENT_USER": "{}"}))
    assert linux.config_source == str(legacy)  # the registry is read on Windows only


# -- model files ----------------------------------------------------------------------------
def test_model_scan_is_flat_and_by_extension(tree: LegacyTree) -> None:
    models = tree.data_dir / "papin" / "models"
    tree.gguf("home/.local/share/papin/models/Tiny.GGUF")
    tree.gguf("home/.local/share/mcp-client/models/other.gguf")
    tree.gguf("home/.local/share/papin/models/sub/deep.gguf")  # sub-directories are not scanned
    (models / "ggml-model-q4_0.bin").write_bytes(b"lmgg" + bytes(60))
    (models / "weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + bytes(40))
    (models / "model.onnx").write_bytes(b"\x08\x07onnx" + bytes(40))
    (models / "half.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")  # truncated
    (models / "README.md").write_text("not a model")
    detection = tree.detect()
    assert detection.found and detection.config_source is None
    by_name = {m.path.name: m for m in detection.model_files}
    assert set(by_name) == {
        "Tiny.GGUF", "ggml-model-q4_0.bin", "weights.safetensors", "model.onnx", "half.gguf", "other.gguf",
    }  # fmt: skip
    assert by_name["Tiny.GGUF"].usable and by_name["Tiny.GGUF"].legacy_id == "Tiny"
    assert by_name["other.gguf"].usable
    for name, fragment in (
        ("ggml-model-q4_0.bin", "GGML"),
        ("weights.safetensors", "convert"),
        ("model.onnx", "ONNX"),
        ("half.gguf", "truncated"),
    ):
        reason = by_name[name].reason
        assert not by_name[name].usable and reason is not None, name
        assert fragment in reason and "GGUF" in reason, reason


def test_model_path_directory_and_file_are_scanned(tree: LegacyTree) -> None:
    tree.gguf("work/models/medium.gguf")
    tree.gguf("work/models/neighbour.gguf")
    named = tree.gguf("elsewhere/default")  # no extension: found because the config names it
    tree.write("work/llm_config.json", json.dumps({"model_id": "medium", "model_path": "models/medium.gguf"}))
    found = {m.path.name for m in tree.detect().model_files}
    assert found == {"medium.gguf", "neighbour.gguf"}
    tree.write("work/llm_config.json", json.dumps({"model_id": "x", "model_path": str(named)}))
    detection = tree.detect()
    assert [(m.path, m.usable) for m in detection.model_files] == [(named, True)]
    tree.write("work/llm_config.json", json.dumps({"model_id": "x", "model_path": "models"}))
    assert {m.path.name for m in tree.detect().model_files} == {"medium.gguf", "neighbour.gguf"}


def test_papin_own_store_is_not_legacy(tree: LegacyTree) -> None:
    tree.gguf("store/mine.gguf")
    assert not tree.detect(extra_model_dirs=[tree.store]).found
    # On Linux the legacy <data dir>/papin/models is papin's default store directory.
    tree.gguf("home/.local/share/papin/models/x.gguf")
    assert tree.detect().found
    detection = detect_legacy(
        home=tree.home, data_dir=tree.data_dir, cwd=tree.cwd, platform="linux", environ={},
        store_root=tree.data_dir / "papin" / "models",
    )  # fmt: skip
    assert not detection.found
    assert any("papin's own model store" in note for note in detection.notes)


def test_fingerprint_changes_with_the_legacy_files(tree: LegacyTree) -> None:
    legacy = tree.put("home/.papin/llm_config.json", "llm_config.json")
    first = tree.detect().fingerprint
    assert first and tree.detect().fingerprint == first
    legacy.write_text(legacy.read_text().replace("4096", "2048"))
    assert tree.detect().fingerprint != first


def test_importing_migration_loads_no_yaml_and_papin_llm_no_migration() -> None:
    code = (
        "import sys, papin.llm; assert 'papin.llm.migration' not in sys.modules; "
        "import papin.llm.migration; assert 'yaml' not in sys.modules, 'yaml'; "
        "assert 'tomllib' not in sys.modules, 'tomllib'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_nothing_legacy_costs_no_config_read_and_no_store_import(tmp_path: Path) -> None:
    """The automatic run at every start: with no legacy directory, papin's own store is never
    worked out (no config file read, no ``papin.llm.store`` import)."""
    code = (
        "import sys; from papin.llm.migration import maybe_auto_migrate; "
        "assert maybe_auto_migrate() is None; "
        "assert 'papin.llm.store' not in sys.modules, 'store'; assert 'asyncio' not in sys.modules, 'asyncio'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=tmp_path)


def test_an_unrelated_file_at_a_legacy_path_is_skipped(tree: LegacyTree) -> None:
    tree.write("work/config/llm.json", json.dumps({"theme": "dark", "endpoint": "x"}))  # another program's
    found = tree.detect()
    assert not found.found and found.config_source is None and found.config_error is None
    assert any("not a legacy Papin configuration" in note for note in found.notes)
    # An unrelated file earlier in the search order does not hide a real one after it.
    tree.write("home/.papin/llm_config.json", json.dumps({"colour": "blue"}))
    real = tree.put("work/llm_config.json", "llm_config.json")
    found = tree.detect()
    assert found.config_source == str(real) and found.config is not None and found.config.model_id == "medium"


def test_papins_default_store_is_not_legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux the legacy ``<data dir>/papin/models`` is papin's default store: with
    ``PAPIN_MODELS_DIR`` pointing elsewhere, the files left there are still papin's."""
    import os

    from papin.llm.migration import maybe_auto_migrate
    from tests.ggufs import write_gguf

    default_store = Path(os.environ["HOME"]) / ".local" / "share" / "papin" / "models"
    write_gguf(default_store / "gemma.gguf")
    monkeypatch.setenv("PAPIN_MODELS_DIR", str(tmp_path / "elsewhere"))
    found = detect_legacy(cwd=tmp_path, platform="linux")
    assert not found.found and found.model_files == ()
    assert maybe_auto_migrate(cwd=tmp_path, platform="linux") is None
    assert not (tmp_path / "elsewhere").exists()
