"""``LLMConfig``: what provider and model papin uses, loaded and saved safely.

Precedence, highest first: explicit arguments (code, CLI flags) > environment variables >
the config file > built-in defaults.

The file is JSON in the user's config directory (``platformdirs``), or where ``PAPIN_CONFIG``
(a file path) or ``PAPIN_CONFIG_DIR`` (a directory) points. It is written atomically (a
temporary file, fsync, then rename), so a crash mid-save never leaves a broken file.

Environment variables: ``PAPIN_PROVIDER``, ``PAPIN_MODEL``, ``PAPIN_ENDPOINT`` (endpoint of the
chosen provider), ``PAPIN_AUTO_PULL``, ``PAPIN_AUTO_DISCOVER``, and the backends' own
variables (``OLLAMA_HOST``, ``OLLAMA_API_KEY``).

The file carries a ``schema_version``; a file written by an earlier papin is brought up to
date in memory when it is read (:mod:`papin.llm.config.schema`) and is rewritten in the
current layout only when the configuration is saved.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from papin.llm.config.recovery import BreakerConfig, FallbackSpec, RetryConfig
from papin.llm.config.schema import (
    CURRENT_SCHEMA_VERSION,
    FIRST_SCHEMA_VERSION,
    SchemaTooNewError,
    migrate_config_data,
)
from papin.llm.datatypes import ProviderType
from papin.llm.errors import ConfigurationError, format_validation_error
from papin.llm.options import GenerationOptions

__all__ = [
    "CONFIG_SCHEMA_VERSION",
    "ENDPOINT_TYPES",
    "DiscoveryConfig",
    "LLMConfig",
    "config_path",
    "format_validation_error",
    "parse_endpoint_entry",
]

#: The layout of the config file this papin writes (see :mod:`papin.llm.config.schema`).
CONFIG_SCHEMA_VERSION = CURRENT_SCHEMA_VERSION
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def config_path() -> Path:
    """Where the config file lives (``PAPIN_CONFIG`` > ``PAPIN_CONFIG_DIR`` > platform dir)."""
    if os.environ.get("PAPIN_CONFIG"):
        return Path(os.environ["PAPIN_CONFIG"]).expanduser()
    if os.environ.get("PAPIN_CONFIG_DIR"):
        return Path(os.environ["PAPIN_CONFIG_DIR"]).expanduser() / "config.json"
    import platformdirs

    return Path(platformdirs.user_config_dir("papin", appauthor=False)) / "config.json"


def _env_bool(name: str) -> bool | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean: use 1/0, true/false or yes/no.")


#: Server types an ``extra_endpoints`` entry may name (``TYPE=URL``).
ENDPOINT_TYPES: tuple[str, ...] = (
    ProviderType.OLLAMA.value,
    ProviderType.LOCALAI.value,
    ProviderType.LLAMACPP_SERVER.value,
    ProviderType.VLLM.value,
    ProviderType.LMSTUDIO.value,
    ProviderType.OPENAI_COMPATIBLE.value,
)
_TYPE_ALIASES = {
    "llama_server": "llamacpp_server",
    "llama.cpp": "llamacpp_server",
    "local_ai": "localai",
    "lm_studio": "lmstudio",
    "openai": "openai_compatible",
}
_TYPED_ENTRY = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_.-]*)\s*=(.*)$")


def parse_endpoint_entry(entry: str) -> tuple[str | None, str]:
    """Split a ``discovery.extra_endpoints`` entry into (server type or ``None``, URL).

    The URL must be http(s) with a host; a trailing ``/`` is dropped. The type names one of
    :data:`ENDPOINT_TYPES` (``-`` and ``_`` are alike; ``llama-server`` and ``openai`` are
    accepted too); without it, discovery identifies the server by what it answers.

    >>> parse_endpoint_entry("vllm=http://gpu-box:8000")
    ('vllm', 'http://gpu-box:8000')
    >>> parse_endpoint_entry(" http://127.0.0.1:8080/ ")
    (None, 'http://127.0.0.1:8080')
    >>> parse_endpoint_entry("llama-server=https://h/v1")
    ('llamacpp_server', 'https://h/v1')

    Raises:
        ValueError: the type is unknown or the URL is not a usable http(s) URL.
    """
    kind: str | None = None
    url = entry.strip()
    match = _TYPED_ENTRY.match(entry)
    if match:
        name = match.group(1).lower().replace("-", "_")
        kind = _TYPE_ALIASES.get(name, name)
        if kind not in ENDPOINT_TYPES:
            raise ValueError(
                f"unknown server type {match.group(1)!r} in {entry!r}; use one of "
                f"{', '.join(ENDPOINT_TYPES)} (or give the URL alone)"
            )
        url = match.group(2).strip()
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host (e.g. http://gpu-box:8000)")
    if port == 0 or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: give scheme, host, port and path only (no port 0, query or fragment)")
    return kind, url.rstrip("/")


class DiscoveryConfig(BaseModel):
    """Where discovery looks besides the well-known places, and how long it waits.

    Example::

        DiscoveryConfig(extra_endpoints=["vllm=http://gpu-box:8000"], model_dirs=["~/models"])
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)

    extra_endpoints: list[str] = Field(
        default_factory=list,
        description="Servers to probe besides the well-known ports: 'URL' or 'TYPE=URL'.",
    )
    model_dirs: list[str] = Field(
        default_factory=list, description="Extra directories to scan for GGUF files."
    )
    cache_seconds: float = Field(10.0, ge=0, description="How long discovery results are reused.")
    probe_timeout_seconds: float = Field(
        0.3, gt=0, le=30, description="Connect and read timeout of each probe."
    )

    @field_validator("extra_endpoints", "model_dirs", mode="before")
    @classmethod
    def _one_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("extra_endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for entry in value:
            kind, url = parse_endpoint_entry(entry)
            text = f"{kind}={url}" if kind else url
            if text not in out:
                out.append(text)
        return out

    @field_validator("model_dirs")
    @classmethod
    def _dirs(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for entry in value:
            text = entry.strip()
            if not text:
                raise ValueError("empty directory name")
            if text not in out:
                out.append(text)
        return out

    def endpoints(self) -> list[tuple[str | None, str]]:
        """``extra_endpoints`` parsed: (server type or ``None``, URL) each."""
        return [parse_endpoint_entry(e) for e in self.extra_endpoints]

    def model_paths(self) -> list[Path]:
        """``model_dirs`` as paths, with ``~`` expanded."""
        return [Path(d).expanduser() for d in self.model_dirs]


class LLMConfig(BaseModel):
    """Configuration of the LLM manager.

    Example::

        LLMConfig(provider_type="ollama",
                  provider_config={"endpoint": "http://localhost:11434"},
                  default_model="llama2:7b")
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)

    schema_version: int = Field(CONFIG_SCHEMA_VERSION, description="Version of this file's layout.")
    provider_type: str | None = Field(
        None, description="Provider to use ('ollama', ...); empty = choose automatically."
    )
    provider_config: dict[str, Any] = Field(
        default_factory=dict, description="Settings of provider_type (endpoint, api_key, ...)."
    )
    providers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Settings of other providers, by name."
    )
    default_model: str | None = Field(None, description="Model used when none is given.")
    auto_discover: bool = Field(True, description="Fall back to another provider if unavailable.")
    monitor_for_models: bool = Field(True, description="Watch backends for added/removed models.")
    enable_optimizations: bool = Field(True, description="Tune options to this machine.")
    auto_pull: bool = Field(True, description="Download a missing model before generating.")
    discovery: DiscoveryConfig = Field(
        default_factory=DiscoveryConfig, description="Where and how discovery looks for backends."
    )
    default_options: GenerationOptions | None = Field(
        None, description="Generation options used when a call leaves them unset."
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="How a generation that failed before its first chunk is tried again.",
    )
    circuit_breaker: BreakerConfig = Field(
        default_factory=BreakerConfig,
        description="When an endpoint of a provider with several is left alone, and for how long.",
    )
    fallbacks: list[FallbackSpec] = Field(
        default_factory=list,
        description="Providers tried in order when the primary fails before its output.",
    )

    @field_validator("provider_type", mode="before")
    @classmethod
    def _provider_name(cls, value: Any) -> Any:
        if isinstance(value, ProviderType):
            return value.value
        if isinstance(value, str):
            value = value.strip().lower()
            return value or None
        return value

    @field_validator("provider_type")
    @classmethod
    def _known_provider(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from papin.llm.factory import get_provider_factory

        names = get_provider_factory().registered_providers()
        if value not in names:
            raise ValueError(f"unknown provider {value!r}; known: {', '.join(names)}")
        return value

    @field_validator("default_model")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value.strip() if value else value

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, value: int) -> int:
        if value > CONFIG_SCHEMA_VERSION:
            raise SchemaTooNewError(value)
        if value < FIRST_SCHEMA_VERSION:
            raise ValueError(f"must be at least {FIRST_SCHEMA_VERSION}")
        return value

    @field_serializer("default_options")
    def _only_set_options(self, value: GenerationOptions | None) -> dict[str, Any] | None:
        # Only the options actually set: the file stays short and readable.
        if value is None:
            return None
        data = value.model_dump(mode="json", exclude_none=True)
        if not data.get("additional_params"):
            data.pop("additional_params", None)
        return data

    def options_with_defaults(self, options: GenerationOptions | None) -> GenerationOptions | None:
        """``options`` with unset fields taken from ``default_options`` (``options`` itself
        when there are no defaults)."""
        if self.default_options is None:
            return options
        return (options or GenerationOptions()).merged(self.default_options)

    # -- provider settings ----------------------------------------------------------------
    def settings_for(self, provider: str) -> dict[str, Any]:
        """The raw settings of ``provider``: its ``providers`` entry, plus ``provider_config``
        when it is the configured provider. With ``enable_optimizations`` off they carry
        ``optimize: False`` (unless the provider's own settings say otherwise), so the provider
        uses only the user's values and its backend's defaults."""
        settings = dict(self.providers.get(provider, {}))
        if provider == self.provider_type:
            settings.update(self.provider_config)
        if not self.enable_optimizations:
            settings.setdefault("optimize", False)
        return settings

    def with_provider_settings(self, provider: str, **values: Any) -> LLMConfig:
        """A copy with ``values`` set in ``provider``'s settings."""
        if provider == self.provider_type:
            return self.model_copy(update={"provider_config": {**self.provider_config, **values}})
        section = {**self.providers.get(provider, {}), **values}
        return self.model_copy(update={"providers": {**self.providers, provider: section}})

    # -- loading and saving ---------------------------------------------------------------
    @classmethod
    def from_file(cls, path: Path | None = None) -> LLMConfig:
        """Read the config file; a missing file gives the defaults."""
        path = path or config_path()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise ConfigurationError(f"Cannot read the config file {path}: {exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(
                f"The config file {path} is not valid JSON ({exc}). Fix it, or delete it to "
                "start from the defaults."
            ) from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"The config file {path} must hold a JSON object.")
        try:  # an earlier layout is brought up to date in memory; nothing is written
            data = migrate_config_data(data)
        except SchemaTooNewError as exc:
            raise ConfigurationError(
                f"The config file {path} was written by a newer papin (schema {exc.version}; this "
                f"papin reads up to {CONFIG_SCHEMA_VERSION}). Upgrade papin (pip install -U papin), "
                "or move the file away to start from the defaults."
            ) from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigurationError(
                format_validation_error(exc, f"config file {path}")
                + ". Fix it with 'papin config set' or edit the file."
            ) from None

    @classmethod
    def load(cls, path: Path | None = None) -> LLMConfig:
        """The effective configuration: the file, with environment variables on top."""
        return cls.from_file(path).with_env_overrides()

    def with_env_overrides(self) -> LLMConfig:
        """A copy with ``PAPIN_*`` and backend variables (``OLLAMA_HOST``) applied."""
        env = os.environ
        cfg = self
        try:
            updates: dict[str, Any] = {}
            if env.get("PAPIN_PROVIDER"):
                updates["provider_type"] = env["PAPIN_PROVIDER"]
            if env.get("PAPIN_MODEL"):
                updates["default_model"] = env["PAPIN_MODEL"]
            for var, key in (
                ("PAPIN_AUTO_PULL", "auto_pull"),
                ("PAPIN_AUTO_DISCOVER", "auto_discover"),
            ):
                flag = _env_bool(var)
                if flag is not None:
                    updates[key] = flag
            if updates:
                cfg = cfg.model_validate({**cfg.model_dump(), **updates})
        except ValidationError as exc:
            raise ConfigurationError(format_validation_error(exc, "environment settings")) from None
        if env.get("OLLAMA_HOST"):
            cfg = cfg.with_provider_settings("ollama", endpoint=env["OLLAMA_HOST"])
        if env.get("PAPIN_ENDPOINT") and cfg.provider_type:
            cfg = cfg.with_provider_settings(cfg.provider_type, endpoint=env["PAPIN_ENDPOINT"])
        return cfg

    def save(self, path: Path | None = None) -> Path:
        """Write the file atomically (readable by the user only: it may hold API keys)."""
        path = path or config_path()
        data = self.model_dump(mode="json")
        data["schema_version"] = CONFIG_SCHEMA_VERSION
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        import tempfile  # only here: it imports shutil, bz2, lzma, random... (import time)

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            raise ConfigurationError(f"Cannot write the config file {path}: {exc}") from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise ConfigurationError(f"Cannot write the config file {path}: {exc}") from exc
            raise
        return path

    def set_value(self, key: str, value: Any) -> LLMConfig:
        """A copy with a dotted ``key`` set (``default_model``, ``provider_config.endpoint``,
        ``providers.ollama.api_key``, ``discovery.cache_seconds``, ``default_options.temperature``);
        validated, so a bad value raises a clear error."""
        parts = [p for p in key.split(".") if p]
        if not parts:
            raise ConfigurationError("Empty setting name.")
        data = self.model_dump()
        if parts[0] not in data:
            raise ConfigurationError(f"Unknown setting {parts[0]!r}; settings: {', '.join(sorted(data))}.")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigurationError(f"{key!r}: {part!r} is not a section.")
            node = child
        node[parts[-1]] = value
        try:
            return LLMConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigurationError(format_validation_error(exc, "setting")) from None
