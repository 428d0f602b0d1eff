"""Legacy migration: the mapping (plan), a real run with backup and verification, rollback on
failure, idempotence, the persisted state, the opt-out and the automatic run at start."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import papin.llm.migration as migration
from papin.llm.config import LLMConfig, config_path
from papin.llm.errors import ConfigurationError
from papin.llm.migration import (
    MigrationPlan,
    maybe_auto_migrate,
    migration_status,
    opt_out,
    plan_migration,
    run_migration,
    state_path,
)
from papin.llm.options import GenerationOptions
from papin.llm.store import ModelStore
from tests.migration_helpers import LegacyTree, make_tree


@pytest.fixture
def tree(tmp_path: Path) -> LegacyTree:
    tree = make_tree(tmp_path / "t")
    tree.gguf("work/models/medium.gguf")
    tree.put("home/.papin/llm_config.json", "llm_config.json")  # model_path models/medium.gguf
    return tree


def plan(tree: LegacyTree, **kwargs: Any) -> MigrationPlan:
    return plan_migration(tree.detect(), store=ModelStore(tree.store), cwd=tree.cwd, **kwargs)


def changes(p: MigrationPlan) -> dict[str, Any]:
    return {c.key: c.new for c in p.changes}


def skipped(p: MigrationPlan) -> dict[str, str]:
    return {s.item: s.reason for s in p.skipped}


# -- the mapping ----------------------------------------------------------------------------
def test_plan_maps_the_legacy_settings_onto_papin(tree: LegacyTree) -> None:
    tree.write("work/models/old.bin", "lmgg" + "\0" * 60)
    p = plan(tree)
    assert changes(p) == {
        "provider_type": "llamacpp",
        "default_model": "medium",
        "provider_config.context_size": 4096,
        "provider_config.default_max_tokens": 2048,
        "default_options.temperature": 0.7,
        "default_options.top_p": 0.9,
        "default_options.top_k": 40,
        "default_options.repeat_penalty": 1.1,
    }
    assert [(m.model_id, m.action, m.path) for m in p.models] == [
        ("medium", "register", tree.cwd / "models" / "medium.gguf")
    ]
    why = skipped(p)
    assert "GGUF" in why[f"model file {tree.cwd / 'models' / 'old.bin'}"]  # found, not claimed
    assert set(why) == {
        f"model file {tree.cwd / 'models' / 'old.bin'}",
        "parameters.use_mirostat", "parameters.mirostat_tau", "parameters.mirostat_eta",
        "enabled", "memory_usage_mb",
    }  # fmt: skip
    assert not any(m.model_id == "old" for m in p.models)
    # planning wrote nothing
    assert not config_path().exists() and not tree.store.exists() and not state_path().exists()
    target = p.target
    assert target.settings_for("llamacpp") == {"context_size": 4096, "default_max_tokens": 2048}
    assert target.default_options == GenerationOptions(
        temperature=0.7, top_p=0.9, top_k=40, repeat_penalty=1.1
    )


def test_no_usable_model_leaves_the_provider_choice_alone(tree: LegacyTree) -> None:
    (tree.cwd / "models" / "medium.gguf").unlink()
    p = plan(tree)
    assert "provider_type" not in changes(p) and "default_model" not in changes(p)
    assert "no usable GGUF file" in skipped(p)["model_id"]
    assert "does not exist" in skipped(p)["model_path"]
    assert changes(p)["providers.llamacpp.context_size"] == 4096  # harmless: the embedded provider's own


def test_settings_papin_already_has_are_kept_unless_overwrite(tree: LegacyTree) -> None:
    current = (
        LLMConfig()
        .set_value("provider_type", "ollama")
        .set_value("default_model", "llama3.2")
        .set_value("providers.llamacpp.context_size", 8192)
        .set_value("default_options.temperature", 0.1)
    )
    current.save()
    p = plan(tree)
    assert set(changes(p)) == {"providers.llamacpp.default_max_tokens"}
    why = skipped(p)
    assert "papin --provider llamacpp --model medium" in why["engine, model_id"]
    assert "context_size = 8192" in why["context_size"] and "--overwrite" in why["context_size"]
    assert "configured for 'ollama'" in why["parameters.temperature"]
    assert [m.action for m in p.models] == ["register"]  # the model is still made available

    forced = plan(tree, overwrite=True)
    assert changes(forced)["provider_type"] == "llamacpp"
    assert changes(forced)["default_model"] == "medium"
    assert changes(forced)["provider_config.context_size"] == 4096
    assert changes(forced)["default_options.temperature"] == 0.7


def test_model_path_into_ollama_maps_to_ollama(tree: LegacyTree) -> None:
    tree.put("home/.papin/llm_config.json", "llm.yaml")
    detection = tree.detect(legacy_file=tree.root / "home/.papin/llm_config.json")
    assert detection.config_error is not None  # YAML in a .json file: reported, not guessed
    tree.put("home/.papin/llm_config.yaml", "llm.yaml")
    (tree.root / "home/.papin/llm_config.json").unlink()
    p = plan(tree)
    assert changes(p) == {
        "provider_type": "ollama",
        "default_model": "large",
        "default_options.context_size": 8192,
        "default_options.max_tokens": 4096,
        "default_options.temperature": 0.6,
        "default_options.top_k": 30,
    }
    assert "providers.llamacpp" not in json.dumps(changes(p))
    assert "papin has no equivalent" in skipped(p)["theme"]
    assert "localai" not in json.dumps(p.to_dict()).lower()  # nothing speculative


def test_values_papin_cannot_take_are_skipped_with_the_reason(tree: LegacyTree) -> None:
    tree.write(
        "home/.papin/llm_config.json",
        json.dumps({"model_id": "medium", "model_path": "models/medium.gguf", "context_size": 16,
                    "parameters": {"temperature": 9, "top_p": "high"}}),
    )  # fmt: skip
    p = plan(tree)
    why = skipped(p)
    assert "context_size" in why and "greater than or equal to 64" in why["context_size"]
    assert "not a valid default_options.temperature" in why["parameters.temperature"]
    assert "expected a number" in why["parameters.top_p"]
    assert "provider_config.context_size" not in changes(p)


async def test_model_ids_never_collide_with_the_store(tree: LegacyTree) -> None:
    other = tree.gguf("elsewhere/medium.gguf")
    store = ModelStore(tree.store)
    async for _ in store.add(str(other), copy=False):
        pass
    tree.write("store/stale.json", "{}")  # a record whose id must not be reused either
    tree.gguf("work/models/stale.gguf")
    p = plan(tree)
    ids = {m.path.name: m.model_id for m in p.models}
    assert ids == {"medium.gguf": "medium-legacy", "stale.gguf": "stale-legacy"}
    assert changes(p)["default_model"] == "medium-legacy"


# -- a real run -----------------------------------------------------------------------------
def test_run_applies_backs_up_verifies_and_records(tree: LegacyTree) -> None:
    LLMConfig(auto_pull=False).save()
    original = config_path().read_bytes()
    legacy_before = tree.snapshot()
    report = run_migration(plan(tree))
    assert report.status == "completed" and report.ok, report.error
    assert report.registered == ("medium",)
    # backup first, byte for byte, next to the config
    assert report.backup_path is not None and report.backup_path.parent == config_path().parent
    assert report.backup_path.name.startswith("config.json.bak-") and len(report.backup_path.name) == 31
    assert report.backup_path.read_bytes() == original
    # the config as planned, keeping what papin had
    saved = LLMConfig.from_file()
    assert saved.provider_type == "llamacpp" and saved.default_model == "medium"
    assert saved.auto_pull is False and saved.settings_for("llamacpp")["context_size"] == 4096
    # the model in place, not copied
    model = ModelStore(tree.store).get("medium")
    assert model.in_place and model.path == tree.cwd / "models" / "medium.gguf"
    assert not list(tree.store.glob("*.gguf"))
    # legacy files untouched
    assert tree.snapshot() == legacy_before
    state = migration_status()
    assert state is not None and state.status == "completed"
    assert state.models == ("medium",) and "default_model" in state.config_changes
    assert state.backup_path == str(report.backup_path)
    assert state.legacy_source == str(tree.root / "home/.papin/llm_config.json")


def test_second_run_changes_nothing(tree: LegacyTree) -> None:
    assert run_migration(plan(tree)).status == "completed"
    files = sorted(p.name for p in config_path().parent.iterdir())
    content = config_path().read_bytes()
    records = sorted(p.name for p in tree.store.iterdir())
    again = plan(tree)
    assert again.nothing_to_do and not again.changes
    assert [m.action for m in again.models] == ["already_registered"]
    report = run_migration(again)
    assert report.status == "nothing_to_do" and "Nothing to migrate" in report.summary()
    assert sorted(p.name for p in config_path().parent.iterdir()) == files  # no new backup
    assert config_path().read_bytes() == content
    assert sorted(p.name for p in tree.store.iterdir()) == records


def test_run_without_a_config_file_creates_one_and_no_backup(tree: LegacyTree) -> None:
    report = run_migration(plan(tree))
    assert report.status == "completed" and report.backup_path is None
    assert LLMConfig.from_file().default_model == "medium"


def test_dry_run_writes_nothing(tree: LegacyTree) -> None:
    LLMConfig().save()
    before = sorted(p.name for p in config_path().parent.iterdir())
    report = run_migration(plan(tree), dry_run=True)
    assert (
        report.status == "dry_run" and "Would change 8 setting(s) and register 1 model(s)" in report.summary()
    )
    assert sorted(p.name for p in config_path().parent.iterdir()) == before
    assert not tree.store.exists()
    data = report.to_dict()
    assert data["plan"]["changes"][0]["key"] == "provider_type" and data["status"] == "dry_run"
    json.dumps(data)  # JSON-ready


def test_changed_config_since_the_plan_is_refused(tree: LegacyTree) -> None:
    p = plan(tree)
    LLMConfig(default_model="sneaky").save()
    content = config_path().read_bytes()
    with pytest.raises(ConfigurationError, match="changed since"):
        run_migration(p)
    assert config_path().read_bytes() == content and not tree.store.exists()


# -- rollback -------------------------------------------------------------------------------
def _assert_restored(tree: LegacyTree, original: bytes | None, legacy_before: dict[str, Any]) -> None:
    if original is None:
        assert not config_path().exists()
    else:
        assert config_path().read_bytes() == original
    assert ModelStore(tree.store).list() == []
    assert not tree.store.exists() or not [p for p in tree.store.iterdir() if p.name != ".partial"]
    assert tree.snapshot() == legacy_before


@pytest.mark.parametrize("existing", [True, False])
def test_failure_while_registering_rolls_everything_back(
    tree: LegacyTree, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    tree.gguf("work/models/second.gguf")
    if existing:
        LLMConfig(default_model=None, auto_pull=False).save()
    original = config_path().read_bytes() if existing else None
    legacy_before = tree.snapshot()
    real_add = ModelStore.add
    calls = []

    def add(self: ModelStore, source: str, **kw: Any) -> Any:
        calls.append(source)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_add(self, source, **kw)

    monkeypatch.setattr(ModelStore, "add", add)
    report = run_migration(plan(tree))
    assert report.status == "failed" and not report.ok and report.rolled_back
    assert "disk full" in (report.error or "") and "restored" in report.summary()
    assert len(calls) == 2  # the first model was registered, then undone
    _assert_restored(tree, original, legacy_before)
    assert (report.backup_path is not None) == existing
    state = migration_status()
    assert state is not None and state.status == "failed" and "disk full" in (state.reason or "")


def test_failed_verification_rolls_back(tree: LegacyTree, monkeypatch: pytest.MonkeyPatch) -> None:
    LLMConfig(default_model="mine").save()
    original = config_path().read_bytes()
    legacy_before = tree.snapshot()

    def wrong(*args: Any) -> None:
        raise ConfigurationError("the config file read back differs from the plan")

    monkeypatch.setattr(migration, "_verify", wrong)
    report = run_migration(plan(tree, overwrite=True))
    assert report.status == "failed" and report.rolled_back and "differs" in (report.error or "")
    _assert_restored(tree, original, legacy_before)


def test_verification_really_reads_back(tree: LegacyTree, monkeypatch: pytest.MonkeyPatch) -> None:
    LLMConfig().save()
    original = config_path().read_bytes()
    real_save = LLMConfig.save

    def lossy_save(self: LLMConfig, path: Path | None = None) -> Path:
        return real_save(self.model_copy(update={"default_model": "lost"}), path)

    monkeypatch.setattr(LLMConfig, "save", lossy_save)
    report = run_migration(plan(tree))
    assert report.status == "failed" and "differs from the plan" in (report.error or "")
    assert config_path().read_bytes() == original
    assert ModelStore(tree.store).list() == []


def test_interrupt_rolls_back_and_propagates(tree: LegacyTree, monkeypatch: pytest.MonkeyPatch) -> None:
    LLMConfig().save()
    original = config_path().read_bytes()

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(migration, "_verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_migration(plan(tree))
    assert config_path().read_bytes() == original
    assert ModelStore(tree.store).list() == []


async def test_runs_from_async_code(tree: LegacyTree) -> None:
    p = plan(tree)
    report = run_migration(p)  # inside a running loop: registers in a helper thread
    assert report.status == "completed"
    assert (await migration.arun_migration(plan(tree))).status == "nothing_to_do"
    assert not asyncio.get_running_loop().is_closed()


# -- state, opt-out, automatic run ----------------------------------------------------------
def auto(tree: LegacyTree) -> Any:
    return maybe_auto_migrate(
        home=tree.home,
        data_dir=tree.data_dir,
        cwd=tree.cwd,
        platform="linux",
        environ={},
        store_root=tree.store,
    )


def test_auto_migrates_once(tree: LegacyTree) -> None:
    report = auto(tree)
    assert report is not None and report.status == "completed"
    assert report.plan is not None and report.plan.store_root == tree.store
    assert ModelStore(tree.store).get("medium").in_place
    assert LLMConfig.from_file().default_model == "medium"
    content = config_path().read_bytes()
    assert auto(tree) is None  # completed: one small file read, nothing else
    assert config_path().read_bytes() == content


def test_opt_out_is_persisted_and_respected(tree: LegacyTree) -> None:
    state = opt_out()
    assert state.status == "opted_out"
    assert json.loads(state_path().read_text())["status"] == "opted_out"
    assert auto(tree) is None
    assert not config_path().exists() and not tree.store.exists()
    assert migration_status() is not None and migration_status().status == "opted_out"  # type: ignore[union-attr]


def test_auto_with_a_broken_legacy_file_fails_once(tree: LegacyTree) -> None:
    legacy = tree.put("home/.papin/llm_config.json", "broken.json")
    report = auto(tree)
    assert report is not None and report.status == "failed" and str(legacy) in (report.error or "")
    assert not config_path().exists()
    assert auto(tree) is None  # same files: not tried again at every start
    tree.put("home/.papin/llm_config.json", "llm_config.json")  # fixed
    report = auto(tree)
    assert report is not None and report.status == "completed"


def test_auto_never_raises(tree: LegacyTree) -> None:
    config_path().parent.mkdir(parents=True)
    config_path().write_text("{not json")
    report = auto(tree)
    assert report is not None and report.status == "failed" and "not valid JSON" in (report.error or "")
    assert config_path().read_text() == "{not json"


def test_auto_with_nothing_legacy_does_nothing(tmp_path: Path) -> None:
    empty = make_tree(tmp_path / "empty")
    assert auto(empty) is None
    assert not state_path().exists()


def test_unreadable_state_counts_as_none() -> None:
    state_path().parent.mkdir(parents=True)
    state_path().write_text('{"status": "weird"}')
    assert migration_status() is None
    state_path().write_text("garbage")
    assert migration_status() is None


def test_legacy_model_already_in_papins_store_becomes_the_default(tree: LegacyTree) -> None:
    # On Linux the legacy <data dir>/papin/models is papin's default store directory.
    inside = tree.gguf("store/tiny.gguf")
    tree.write("home/.papin/llm_config.json", json.dumps({"model_id": "tiny", "model_path": str(inside)}))
    p = plan(tree)
    assert p.models == () and not p.to_register
    assert changes(p) == {"provider_type": "llamacpp", "default_model": "tiny"}
