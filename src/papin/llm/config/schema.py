"""Numbered migrations of papin's own config file layout (``schema_version``).

Every released layout stays loadable: :func:`migrate_config_data` brings the raw JSON object
of any earlier version up to :data:`CURRENT_SCHEMA_VERSION`, in memory, one step at a time,
before the file is validated. Nothing is written back to disk here: the file changes only
when the configuration is saved (``LLMConfig.save`` writes the current version).

A file without ``schema_version`` is read as version 1 (the first released layout).

Adding a layout change:

1. bump ``CURRENT_SCHEMA_VERSION``;
2. add ``MIGRATIONS[old] = function`` that turns a version ``old`` dict into a version
   ``old + 1`` dict (a pure function: it copies, never mutates its argument, and leaves
   settings it does not know alone);
3. store an example file written by the previous release in ``tests/data/config/``.

History:

* **1**: the first layout (provider_type, provider_config, providers, default_model,
  auto_discover, monitor_for_models, enable_optimizations, auto_pull).
* **2**: adds the ``discovery`` section (extra endpoints and model directories to look at,
  result cache time, probe timeout) and ``default_options`` (generation options used when a
  call leaves them unset, e.g. migrated from the legacy configuration).
* **3**: adds the ``retry`` section (how a generation that failed before its first chunk is
  tried again: attempts, backoff, the longest ``Retry-After`` honoured), the
  ``circuit_breaker`` section (failure threshold and cooldown of each endpoint) and the
  ``fallbacks`` list (other providers tried in order).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

__all__ = [
    "CURRENT_SCHEMA_VERSION",
    "FIRST_SCHEMA_VERSION",
    "MIGRATIONS",
    "SchemaTooNewError",
    "migrate_config_data",
    "schema_version_of",
]

#: The layout this papin writes.
CURRENT_SCHEMA_VERSION = 3
#: The first released layout; a file without ``schema_version`` is read as this one.
FIRST_SCHEMA_VERSION = 1


class SchemaTooNewError(ValueError):
    """The file was written by a newer papin than this one (its layout is unknown here)."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(
            f"written by a newer papin (schema {version}, this one reads up to "
            f"{CURRENT_SCHEMA_VERSION}); upgrade papin (pip install -U papin)"
        )


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 adds the ``discovery`` section (its settings take their defaults) and the
    optional ``default_options`` (absent means no override)."""
    out = copy.deepcopy(data)
    if out.get("discovery") is None:
        out["discovery"] = {}
    out["schema_version"] = 2
    return out


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 adds the ``retry`` and ``circuit_breaker`` sections (at their defaults) and
    an empty ``fallbacks`` list."""
    out = copy.deepcopy(data)
    for section in ("retry", "circuit_breaker"):
        if out.get(section) is None:
            out[section] = {}
    if out.get("fallbacks") is None:
        out["fallbacks"] = []
    out["schema_version"] = 3
    return out


#: ``MIGRATIONS[n]`` turns a version ``n`` dict into a version ``n + 1`` dict.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
}


def schema_version_of(data: dict[str, Any]) -> Any:
    """The file's ``schema_version`` (``FIRST_SCHEMA_VERSION`` when absent or null)."""
    version = data.get("schema_version")
    return FIRST_SCHEMA_VERSION if version is None else version


def migrate_config_data(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a raw config dict up to :data:`CURRENT_SCHEMA_VERSION` (a copy; ``data`` is
    not changed). A current dict is returned as it is.

    A ``schema_version`` that is not a whole number, or is below 1, is left for validation
    to report.

    Raises:
        SchemaTooNewError: the dict comes from a newer papin.
    """
    version = schema_version_of(data)
    if isinstance(version, bool) or not isinstance(version, int) or version < FIRST_SCHEMA_VERSION:
        return data
    if version > CURRENT_SCHEMA_VERSION:
        raise SchemaTooNewError(version)
    for step in range(version, CURRENT_SCHEMA_VERSION):  # each step is checked by the tests
        data = MIGRATIONS[step](data)
    return data
