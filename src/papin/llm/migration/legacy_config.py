"""The legacy Papin ``LLMConfig`` and how to read it from JSON, TOML or YAML (PyYAML, imported
only when a YAML file is read); part of :mod:`papin.llm.migration`.

The legacy layout: ``model_id``, ``model_path``, ``context_size``, ``max_output_length``,
``parameters`` (``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``, ``use_mirostat``,
``mirostat_tau``, ``mirostat_eta``), ``enabled`` and ``memory_usage_mb``. A setting missing
from the file stays ``None``: nothing is assumed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from papin.llm.errors import ConfigurationError

__all__ = [
    "FORMATS",
    "LegacyConfig",
    "LegacyParameters",
    "config_format",
    "config_to_dict",
    "decode_document",
    "parse_legacy_config",
    "read_legacy_config_file",
]

#: Legacy configuration formats, by file extension.
FORMATS = {
    ".json": "json",
    ".toml": "toml",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".db": "sqlite",
    ".sqlite": "sqlite",
}
_MAX_CONFIG_BYTES = 1 << 20
_LEGACY_KEYS = frozenset(
    {
        "model_id",
        "model_path",
        "context_size",
        "max_output_length",
        "parameters",
        "enabled",
        "memory_usage_mb",
    }
)
_PARAMETER_KEYS = frozenset(
    {"temperature", "top_p", "top_k", "repetition_penalty", "use_mirostat", "mirostat_tau", "mirostat_eta"}
)


@dataclass(frozen=True, slots=True)
class LegacyParameters:
    """The legacy sampling parameters (``None``: not in the file)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    use_mirostat: bool | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None


@dataclass(frozen=True, slots=True)
class LegacyConfig:
    """The legacy ``LLMConfig`` as found (``None``: not in the file).

    Attributes:
        unknown: Settings the legacy layout does not have, as found.
        invalid: Settings with a value of the wrong type: name -> problem.
    """

    model_id: str | None = None
    model_path: str | None = None
    context_size: int | None = None
    max_output_length: int | None = None
    parameters: LegacyParameters = field(default_factory=LegacyParameters)
    enabled: bool | None = None
    memory_usage_mb: int | None = None
    unknown: dict[str, Any] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)

    @property
    def recognised(self) -> bool:
        """Whether the document has any legacy setting at all (an unrelated file that happens
        to sit at a legacy path, such as another program's ``./config/llm.json``, has none)."""
        plain = (self.model_id, self.model_path, self.context_size, self.max_output_length)
        return (
            any(v is not None for v in plain)
            or self.parameters != LegacyParameters()
            or self.enabled is not None
            or self.memory_usage_mb is not None
            or bool(self.invalid)
        )


def config_to_dict(cfg: LegacyConfig) -> dict[str, Any]:
    """The settings found, JSON-ready."""
    p = cfg.parameters
    params = {k: getattr(p, k) for k in sorted(_PARAMETER_KEYS) if getattr(p, k) is not None}
    out: dict[str, Any] = {
        k: getattr(cfg, k) for k in sorted(_LEGACY_KEYS - {"parameters"}) if getattr(cfg, k) is not None
    }
    if params:
        out["parameters"] = params
    if cfg.unknown:
        out["unknown"] = cfg.unknown
    if cfg.invalid:
        out["invalid"] = cfg.invalid
    return out


# -- parsing --------------------------------------------------------------------------------
def _number(value: Any, kind: type, name: str, invalid: dict[str, str], *, positive: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        invalid[name] = f"expected a number, found {value!r}"
        return None
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            invalid[name] = f"expected a whole number, found {value!r}"
            return None
        value = int(value)
    else:
        value = float(value)
    if positive and value <= 0:
        invalid[name] = f"must be positive, found {value!r}"
        return None
    return value


def _typed(data: Mapping[str, Any], name: str, kind: type, invalid: dict[str, str], **kw: Any) -> Any:
    if name not in data or data[name] is None:
        return None
    value = data[name]
    if kind is str:
        if isinstance(value, str) and value.strip():
            return value.strip()
        invalid[name] = f"expected a non-empty string, found {value!r}"
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        invalid[name] = f"expected true or false, found {value!r}"
        return None
    return _number(value, kind, name, invalid, **kw)


def parse_legacy_config(data: Any, where: str) -> LegacyConfig:
    """Read the legacy ``LLMConfig`` from a decoded document (a mapping).

    Missing settings stay ``None`` (nothing is assumed); values of the wrong type are kept
    in ``invalid`` and settings the legacy layout does not have in ``unknown``. A document
    holding the legacy config under ``llm_config`` (the legacy offline settings) is accepted.

    Raises:
        ConfigurationError: the document is not a mapping.
    """
    if not isinstance(data, dict):
        raise ConfigurationError(f"The legacy configuration {where} must hold an object of settings.")
    if not _LEGACY_KEYS & set(data) and isinstance(data.get("llm_config"), dict):
        data = data["llm_config"]
    invalid: dict[str, str] = {}
    params_raw = data.get("parameters")
    params = LegacyParameters()
    unknown = {k: v for k, v in data.items() if k not in _LEGACY_KEYS}
    if isinstance(params_raw, dict):
        pinv: dict[str, str] = {}
        params = LegacyParameters(
            temperature=_typed(params_raw, "temperature", float, pinv),
            top_p=_typed(params_raw, "top_p", float, pinv),
            top_k=_typed(params_raw, "top_k", int, pinv),
            repetition_penalty=_typed(params_raw, "repetition_penalty", float, pinv),
            use_mirostat=_typed(params_raw, "use_mirostat", bool, pinv),
            mirostat_tau=_typed(params_raw, "mirostat_tau", float, pinv),
            mirostat_eta=_typed(params_raw, "mirostat_eta", float, pinv),
        )
        invalid.update({f"parameters.{k}": v for k, v in pinv.items()})
        unknown.update({f"parameters.{k}": v for k, v in params_raw.items() if k not in _PARAMETER_KEYS})
    elif params_raw is not None:
        invalid["parameters"] = f"expected a table of parameters, found {params_raw!r}"
    return LegacyConfig(
        model_id=_typed(data, "model_id", str, invalid),
        model_path=_typed(data, "model_path", str, invalid),
        context_size=_typed(data, "context_size", int, invalid, positive=True),
        max_output_length=_typed(data, "max_output_length", int, invalid, positive=True),
        parameters=params,
        enabled=_typed(data, "enabled", bool, invalid),
        memory_usage_mb=_typed(data, "memory_usage_mb", int, invalid),
        unknown=unknown,
        invalid=invalid,
    )


def config_format(path: Path) -> str:
    """``json``, ``toml``, ``yaml`` or ``sqlite``, by extension.

    Raises:
        ConfigurationError: any other extension.
    """
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigurationError(
            f"Cannot tell the format of the legacy configuration {path}: use a .json, .toml, "
            ".yaml or .yml file."
        )
    return fmt


def decode_document(text: str, fmt: str, where: str) -> Any:
    """Decode ``text`` as ``fmt`` (``json``, ``toml``; anything else is read as YAML).

    Raises:
        ConfigurationError: empty or not valid; the message names ``where``.
    """
    if not text.strip():
        raise ConfigurationError(f"The legacy configuration {where} is empty.")
    if fmt == "json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(f"The legacy configuration {where} is not valid JSON: {exc}.") from None
    if fmt == "toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"The legacy configuration {where} is not valid TOML: {exc}.") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise ConfigurationError(f"The legacy configuration {where} is not valid YAML: {problem}.") from None


def read_legacy_config_file(path: Path) -> tuple[str, LegacyConfig]:
    """Read and parse a legacy configuration file: (format, configuration).

    Raises:
        ConfigurationError: unknown extension, a SQLite store (not supported), unreadable,
            too large, not UTF-8, or not valid JSON/TOML/YAML; the message names the file.
    """
    fmt = config_format(path)
    if fmt == "sqlite":
        raise ConfigurationError(
            f"The legacy configuration {path} is a SQLite database, which papin cannot migrate "
            "(the original never read it either). Write its settings to a .json file and run "
            "'papin config migrate --from FILE'."
        )
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot read the legacy configuration {path}: {exc.strerror or exc}."
        ) from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigurationError(f"The legacy configuration {path} is too large (over 1 MiB) to be one.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"The legacy configuration {path} is not UTF-8 text ({exc.reason})."
        ) from None
    return fmt, parse_legacy_config(decode_document(text, fmt, str(path)), str(path))
