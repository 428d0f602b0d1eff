"""Helpers shared by the command modules: global state, the manager, output formatting.

Only click and the standard library are imported here at module level; rich and the
``papin.llm`` core (pydantic, httpx) are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from papin.llm.formatting import human_bytes

if TYPE_CHECKING:
    from rich.console import Console

    from papin.llm.sync import SyncLLMManager

__all__ = [
    "CliState",
    "INTERRUPTED_EXIT_CODE",
    "echo_json",
    "get_console",
    "human_bytes",
    "human_duration",
    "mask_secrets",
    "one_line",
    "open_manager",
    "pass_state",
    "short_time",
]

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT_CODE = 130

_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization)", re.IGNORECASE)


@dataclass(slots=True)
class CliState:
    """Global options given before the command name (``papin --endpoint URL models list``)."""

    provider: str | None = None
    endpoint: str | None = None
    model: str | None = None
    debug: bool = False


pass_state = click.make_pass_decorator(CliState, ensure=True)


@contextmanager
def open_manager(state: CliState, *, model: str | None = None) -> Iterator[SyncLLMManager]:
    """A :class:`SyncLLMManager` configured from flags > environment > file > defaults.

    ``model`` (a command's own ``--model``) takes precedence over the global one. The manager
    is closed on exit, also after Ctrl-C, so no backend connection outlives the command.
    """
    from papin.llm.sync import create_sync_llm_manager

    llm = create_sync_llm_manager(
        provider=state.provider, endpoint=state.endpoint, model=model or state.model
    )
    llm.manager.monitor_on_initialize = False  # a one-shot command has nothing to watch for
    report = llm.manager.migration_report
    if report is not None:
        click.echo(
            f"papin: legacy configuration: {one_line(report.summary())} ('papin config migrate --status')",
            err=True,
        )
    try:
        yield llm
    finally:
        llm.close()


def one_line(message: str) -> str:
    """Collapse whitespace and newlines so an error prints as a single line."""
    return " ".join(message.split())


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (stable keys, UTF-8 kept readable)."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def get_console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) that never interprets data as markup colours."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def mask_secrets(data: Any) -> Any:
    """A copy of ``data`` with the values of secret-looking keys (``api_key``, tokens,
    ``Authorization`` headers) masked.

    >>> mask_secrets({"api_key": "sk-1234567890", "headers": {"Authorization": "Bearer x"}})
    {'api_key': '****7890', 'headers': {'Authorization': '****'}}
    """
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(key, str) and _SECRET_KEY.search(key) and value not in (None, ""):
                out[key] = _mask(value)
            else:
                out[key] = mask_secrets(value)
        return out
    if isinstance(data, list):
        return [mask_secrets(v) for v in data]
    return data


def _mask(value: Any) -> str:
    text = str(value)
    return "****" + text[-4:] if len(text) >= 12 else "****"


def human_duration(seconds: float | None) -> str:
    """A short duration.

    >>> human_duration(5.26), human_duration(83), human_duration(7325), human_duration(None)
    ('5s', '1m23s', '2h02m', '-')
    """
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def short_time(value: str | None) -> str:
    """An ISO-8601 timestamp as local date and minute (as given when it has no zone).

    >>> short_time("2024-05-01T12:34:56.123456789"), short_time(None), short_time("soon")
    ('2024-05-01 12:34', '-', 'soon')
    """
    if not value:
        return "-"
    match = re.match(
        r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d)(:\d\d)?(?:\.\d+)?(Z|[+-]\d\d:?\d\d)?$",
        value.strip(),
    )
    if not match:
        return value
    day, minute, seconds, zone = match.groups()
    if zone:
        from datetime import datetime

        offset = "+00:00" if zone == "Z" else zone
        try:
            when = datetime.fromisoformat(f"{day}T{minute}{seconds or ':00'}{offset}")
        except ValueError:
            return f"{day} {minute}"
        return when.astimezone().strftime("%Y-%m-%d %H:%M")
    return f"{day} {minute}"
