"""Migration from the legacy Papin configuration and model files to papin's ``LLMConfig`` and
model store, done safely: planned first, backed up, verified, rolled back on any failure.

Example::

    from papin.llm.migration import detect_legacy, plan_migration, run_migration

    detection = detect_legacy()               # where the original looked; never raises
    plan = plan_migration(detection)          # what would change; reads only
    report = run_migration(plan)              # backup, apply, verify; rollback on failure
    print(report.status, report.backup_path)

A real run

1. writes a backup of papin's config file next to it (``config.json.bak-YYYYmmddTHHMMSS``,
   local time) before anything else;
2. saves the new configuration (atomically) and registers the legacy GGUF files in the
   model store *in place* (nothing is copied; only a small record is written);
3. verifies the result: the file read back equals the plan's configuration, and the store
   lists every registered model at its legacy path;
4. on any failure, removes the records it wrote and restores the config file from the
   backup (or removes it if there was none), so everything is as it was before.

Legacy files are only read, never changed or deleted. A second run finds nothing to do.
The outcome (``completed``, ``failed``, or ``opted_out`` after :func:`opt_out`) is kept in
``migration.json`` next to the config file, so :func:`maybe_auto_migrate`, meant to be called
at start, migrates at most once and never after an opt-out.

What is mapped, and what is skipped and why: see :mod:`papin.llm.migration.plan`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from papin.llm.config import LLMConfig
from papin.llm.errors import ConfigurationError
from papin.llm.migration.legacy_config import LegacyConfig
from papin.llm.migration.legacy_sources import LegacyDetection, LegacyModelFile, detect_legacy
from papin.llm.migration.plan import ConfigChange, MigrationPlan, ModelAction, SkippedItem, plan_migration
from papin.llm.migration.state import (
    MigrationState,
    migration_status,
    now_iso,
    opt_out,
    save_state,
    state_path,
)

if TYPE_CHECKING:
    from papin.llm.store import ModelStore

__all__ = [
    "ConfigChange",
    "LegacyConfig",
    "LegacyDetection",
    "LegacyModelFile",
    "MigrationPlan",
    "MigrationReport",
    "MigrationState",
    "ModelAction",
    "SkippedItem",
    "arun_migration",
    "detect_legacy",
    "maybe_auto_migrate",
    "migration_status",
    "opt_out",
    "plan_migration",
    "run_migration",
    "state_path",
]

log = logging.getLogger(__name__)

ReportStatus = Literal["dry_run", "completed", "nothing_to_do", "failed"]


# -- report ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What a migration run did.

    Attributes:
        status: ``dry_run`` (nothing written), ``completed``, ``nothing_to_do`` (already
            migrated, or nothing maps), or ``failed`` (see ``error``; ``rolled_back`` says
            whether everything was restored).
        applied: Settings changed.
        registered: Model ids registered in the store.
        backup_path: Backup of papin's config file (``None`` when there was no file or no
            change).
    """

    status: ReportStatus
    plan: MigrationPlan | None
    applied: tuple[ConfigChange, ...] = ()
    registered: tuple[str, ...] = ()
    backup_path: Path | None = None
    error: str | None = None
    rolled_back: bool = False
    timestamp: str = ""
    duration_seconds: float = 0.0
    previous: MigrationState | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the run succeeded (or was a dry run)."""
        return self.status != "failed"

    def summary(self) -> str:
        """One line saying what happened."""
        if self.status == "failed":
            restored = " Everything was restored as it was." if self.rolled_back else ""
            return f"Migration failed: {self.error}.{restored}"
        if self.status == "nothing_to_do":
            when = (
                f" (migrated {self.previous.timestamp})" if self.previous and self.previous.timestamp else ""
            )
            return f"Nothing to migrate: papin already has everything that can be migrated{when}."
        if self.status == "dry_run" and self.plan is not None:
            if self.plan.nothing_to_do:
                return "Nothing to migrate: papin already has everything that can be migrated."
            return (
                f"Would change {len(self.plan.changes)} setting(s) and register "
                f"{len(self.plan.to_register)} model(s)."
            )
        backup = f" Backup: {self.backup_path}." if self.backup_path else ""
        return (
            f"Changed {len(self.applied)} setting(s) and registered {len(self.registered)} model(s).{backup}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (``papin config migrate --json``)."""
        return {
            "status": self.status,
            "summary": self.summary(),
            "applied": [{"key": c.key, "old": c.old, "new": c.new, "source": c.source} for c in self.applied],
            "registered": list(self.registered),
            "backup_path": str(self.backup_path) if self.backup_path else None,
            "error": self.error,
            "rolled_back": self.rolled_back,
            "timestamp": self.timestamp,
            "duration_seconds": round(self.duration_seconds, 3),
            "plan": self.plan.to_dict() if self.plan else None,
        }


# -- backup and rollback --------------------------------------------------------------------
def _backup(path: Path) -> Path:
    """Copy papin's config file to ``<name>.bak-YYYYmmddTHHMMSS`` (never overwriting one)."""
    data = path.read_bytes()
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    for n in range(1, 100):
        target = path.with_name(f"{path.name}.bak-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        if target.read_bytes() != data:
            raise OSError(f"the backup {target} does not match the original")
        return target
    raise OSError(f"too many backups of {path} this second")


def _restore(path: Path, backup: Path | None) -> None:
    if backup is None:
        path.unlink(missing_ok=True)
        return
    data = backup.read_bytes()
    tmp = path.with_name(f".{path.name}.restore.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    if path.read_bytes() != data:
        raise OSError(f"{path} does not match its backup {backup} after restoring")


def _rollback(
    plan: MigrationPlan, backup: Path | None, store: ModelStore, registered: list[str]
) -> list[str]:
    """Undo a run; returns the problems met (empty when everything was restored)."""
    problems: list[str] = []
    for model_id in reversed(registered):
        try:
            store.delete(model_id)
        except Exception as exc:
            problems.append(f"cannot unregister {model_id}: {exc}")
    try:
        _restore(plan.config_path, backup)
    except OSError as exc:
        problems.append(f"cannot restore {plan.config_path} from {backup}: {exc}")
    return problems


# -- run ------------------------------------------------------------------------------------
def _run_coroutine(coro: Any) -> Any:
    """Run ``coro`` to completion from synchronous code, also when called inside a loop."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="papin-migrate") as pool:
        return pool.submit(asyncio.run, coro).result()


async def _register_all(store: ModelStore, actions: Iterable[ModelAction], registered: list[str]) -> None:
    for action in actions:
        steps = cast(
            "AsyncGenerator[Any, None]", store.add(str(action.path), model_id=action.model_id, copy=False)
        )
        async with contextlib.aclosing(steps):
            async for _ in steps:
                pass
        registered.append(action.model_id)


def _verify(plan: MigrationPlan, store: ModelStore) -> None:
    """Read everything back; raise if anything differs from the plan."""
    if plan.changes:
        saved = LLMConfig.from_file(plan.config_path)
        if saved != plan.target:
            raise ConfigurationError(f"the config file {plan.config_path} read back differs from the plan")
    listed = {m.id: m for m in store.list()}
    for action in plan.to_register:
        model = listed.get(action.model_id)
        if model is None or not model.in_place or model.path.resolve() != action.path.resolve():
            raise ConfigurationError(f"the model store does not list {action.model_id} at {action.path}")


def run_migration(
    plan: MigrationPlan, *, dry_run: bool = False, record_state: bool = True
) -> MigrationReport:
    """Carry out ``plan`` (see the module docstring for the steps and guarantees).

    ``dry_run`` returns what would be done and writes nothing. A failure while applying
    is rolled back and reported (``status == "failed"``), not raised. ``record_state``
    persists the outcome for :func:`migration_status`. Call it from synchronous code (from
    async code use :func:`arun_migration`).

    Raises:
        ConfigurationError: papin's config file changed or became invalid since the plan
            was made (nothing was written; plan again), or the backup cannot be written.
    """
    started = time.monotonic()
    timestamp = now_iso()
    previous = migration_status(plan.config_path)
    if dry_run:
        return MigrationReport("dry_run", plan, timestamp=timestamp, previous=previous)
    if plan.config_path.is_file() != plan.file_existed or LLMConfig.from_file(plan.config_path) != plan.base:
        raise ConfigurationError(
            f"papin's config file {plan.config_path} changed since the migration was planned; "
            "nothing was changed. Plan it again."
        )
    detection = plan.detection
    if plan.nothing_to_do:
        if record_state and detection.found and (previous is None or previous.status != "completed"):
            save_state(
                MigrationState("completed", timestamp, detection.config_source, detection.fingerprint),
                plan.config_path,
            )
        return MigrationReport(
            "nothing_to_do", plan, timestamp=timestamp, previous=previous,
            duration_seconds=time.monotonic() - started,
        )  # fmt: skip

    from papin.llm.store import ModelStore

    backup: Path | None = None
    if plan.file_existed and plan.changes:
        try:
            backup = _backup(plan.config_path)
        except OSError as exc:
            raise ConfigurationError(
                f"Cannot back up {plan.config_path} ({exc}); nothing was changed."
            ) from exc
    store = ModelStore(plan.store_root)
    store_existed = store.root.exists()
    registered: list[str] = []
    try:
        if plan.changes:
            plan.target.save(plan.config_path)
        if plan.to_register:
            _run_coroutine(_register_all(store, plan.to_register, registered))
        _verify(plan, store)
    except BaseException as exc:
        problems = _rollback(plan, backup, store, registered)
        if not store_existed:  # remove the (empty) store directories this run created
            with contextlib.suppress(OSError):
                store.partial_dir.rmdir()
                store.root.rmdir()
        if not isinstance(exc, Exception):
            raise
        reason = str(exc).rstrip(".") or type(exc).__name__
        if problems:
            reason += "; the rollback was incomplete: " + "; ".join(problems)
        if record_state:
            with contextlib.suppress(ConfigurationError):
                save_state(
                    MigrationState(
                        "failed", timestamp, detection.config_source, detection.fingerprint,
                        backup_path=str(backup) if backup else None, reason=reason,
                    ),
                    plan.config_path,
                )  # fmt: skip
        log.warning("Migration failed and was rolled back: %s", reason)
        return MigrationReport(
            "failed", plan, backup_path=backup, error=reason, rolled_back=not problems,
            timestamp=timestamp, duration_seconds=time.monotonic() - started, previous=previous,
        )  # fmt: skip
    if record_state:
        save_state(
            MigrationState(
                "completed", timestamp, detection.config_source, detection.fingerprint,
                config_changes=tuple(c.key for c in plan.changes), models=tuple(registered),
                backup_path=str(backup) if backup else None,
            ),
            plan.config_path,
        )  # fmt: skip
    return MigrationReport(
        "completed", plan, applied=plan.changes, registered=tuple(registered), backup_path=backup,
        timestamp=timestamp, duration_seconds=time.monotonic() - started, previous=previous,
    )  # fmt: skip


async def arun_migration(plan: MigrationPlan, *, dry_run: bool = False) -> MigrationReport:
    """:func:`run_migration` from async code (in a worker thread)."""
    import asyncio

    return await asyncio.to_thread(run_migration, plan, dry_run=dry_run)


def maybe_auto_migrate(*, config_file: Path | None = None, **detect_options: Any) -> MigrationReport | None:
    """Migrate once, automatically: meant to be called at start. Never raises.

    Does nothing (returns ``None``) after an opt-out or a completed migration (one small
    file read), when there is nothing legacy, or when the last attempt failed and the legacy
    files have not changed since. Otherwise plans and runs the migration, never overwriting
    a setting papin already has, and returns the report (``status == "failed"`` with the
    reason when it could not be done; everything is then as it was).

    ``detect_options`` go to :func:`detect_legacy` (for tests).
    """
    try:
        state = migration_status(config_file)
        if state is not None and state.status in ("completed", "opted_out"):
            return None
        detection = detect_legacy(**detect_options)
        if not detection.found:
            return None
        if state is not None and state.status == "failed" and state.fingerprint == detection.fingerprint:
            return None
        if detection.config_error:
            with contextlib.suppress(ConfigurationError):
                save_state(
                    MigrationState(
                        "failed", now_iso(), detection.config_source, detection.fingerprint,
                        reason=detection.config_error,
                    ),
                    config_file,
                )  # fmt: skip
            log.warning("Legacy configuration not migrated: %s", detection.config_error)
            return MigrationReport("failed", None, error=detection.config_error, timestamp=now_iso())
        from papin.llm.store import ModelStore

        root = detect_options.get("store_root")
        store = ModelStore(root) if root is not None else None
        plan = plan_migration(detection, config_file=config_file, store=store, cwd=detect_options.get("cwd"))
        report = run_migration(plan)
        return None if report.status == "nothing_to_do" else report  # nothing to tell anyone
    except Exception as exc:
        log.warning("Automatic migration skipped: %s", exc)
        return MigrationReport("failed", None, error=str(exc), timestamp=now_iso())
