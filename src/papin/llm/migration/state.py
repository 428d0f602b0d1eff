"""The persisted state of the legacy migration (``migration.json`` beside papin's config
file), so that it runs once and an opt-out is remembered; part of :mod:`papin.llm.migration`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from papin.llm.config import config_path
from papin.llm.errors import ConfigurationError

__all__ = [
    "STATE_FILE",
    "MigrationState",
    "migration_status",
    "now_iso",
    "opt_out",
    "save_state",
    "state_path",
]

log = logging.getLogger(__name__)

#: Name of the state file, next to papin's config file.
STATE_FILE = "migration.json"
_STATE_FORMAT = 1

StateStatus = Literal["completed", "failed", "opted_out"]


@dataclass(frozen=True, slots=True)
class MigrationState:
    """The persisted outcome of the last migration (``migration.json``).

    Attributes:
        status: ``completed``, ``failed`` or ``opted_out``.
        timestamp: When, ISO 8601 UTC.
        legacy_source: The legacy configuration migrated from, if any.
        fingerprint: Identifies the legacy files as they were (a failed migration is tried
            again automatically only when they change).
        config_changes: Settings changed (dotted keys).
        models: Model ids registered.
        backup_path: The backup of papin's config file written before the change.
        reason: Why it failed.
    """

    status: StateStatus
    timestamp: str
    legacy_source: str | None = None
    fingerprint: str = ""
    config_changes: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    backup_path: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (as stored)."""
        return {
            "format": _STATE_FORMAT,
            "status": self.status,
            "timestamp": self.timestamp,
            "legacy_source": self.legacy_source,
            "fingerprint": self.fingerprint,
            "config_changes": list(self.config_changes),
            "models": list(self.models),
            "backup_path": self.backup_path,
            "reason": self.reason,
        }


def state_path(config_file: Path | None = None) -> Path:
    """Where the migration state is kept: ``migration.json`` beside papin's config file."""
    return (config_file or config_path()).parent / STATE_FILE


def migration_status(config_file: Path | None = None) -> MigrationState | None:
    """The persisted migration state, or ``None`` if no migration ran yet (an unreadable
    state file counts as none)."""
    path = state_path(config_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        status = data["status"]
        if status not in ("completed", "failed", "opted_out"):
            raise ValueError(status)
        return MigrationState(
            status=status,
            timestamp=str(data.get("timestamp", "")),
            legacy_source=data.get("legacy_source"),
            fingerprint=str(data.get("fingerprint") or ""),
            config_changes=tuple(data.get("config_changes") or ()),
            models=tuple(data.get("models") or ()),
            backup_path=data.get("backup_path"),
            reason=data.get("reason"),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("Ignoring the unreadable migration state %s: %s", path, exc)
        return None


def save_state(state: MigrationState, config_file: Path | None) -> None:
    from papin.llm.store.records import write_json_atomic

    path = state_path(config_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, state.to_dict())
    except OSError as exc:
        raise ConfigurationError(f"Cannot write the migration state {path}: {exc.strerror or exc}") from exc


def now_iso() -> str:
    """The current UTC time, ISO 8601, to the second."""
    from papin.llm.store.records import now_iso as store_now

    return store_now()


def opt_out(config_file: Path | None = None) -> MigrationState:
    """Never migrate automatically (:func:`maybe_auto_migrate` then does nothing); an
    explicit ``papin config migrate`` still works."""
    state = MigrationState(status="opted_out", timestamp=now_iso())
    save_state(state, config_file)
    return state
