"""Model records of the fake Ollama server, and Ollama's name and wire conventions.

Kept apart from the server so tests can build records and expected bodies directly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FakeLoadedModel",
    "FakeModel",
    "KeepAliveError",
    "compact",
    "layer_digest",
    "now_rfc3339",
    "parse_keep_alive",
    "short_name",
]

_DEFAULT_PREFIXES = ("registry.ollama.ai/library/", "registry.ollama.ai/")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def short_name(name: str) -> str:
    """Ollama's short display form: default host/namespace dropped, tag always present.

    >>> short_name("llama3.2")
    'llama3.2:latest'
    >>> short_name("registry.ollama.ai/library/qwen2:0.5b")
    'qwen2:0.5b'
    >>> short_name("me/model")
    'me/model:latest'
    """
    for prefix in _DEFAULT_PREFIXES:
        if name.lower().startswith(prefix):
            name = name[len(prefix):]
            break
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def compact(obj: Any) -> bytes:
    """Compact JSON as Go's encoder writes it (UTF-8, not ASCII-escaped)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def now_rfc3339(offset_seconds: float = 0.0) -> str:
    """RFC 3339 UTC time with fractional seconds (``2023-08-04T19:22:45.499127Z``)."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def layer_digest(model: str, index: int) -> str:
    """A stable ``sha256:<64 hex>`` digest for layer ``index`` of ``model``."""
    return "sha256:" + hashlib.sha256(f"{model}/{index}".encode()).hexdigest()


class KeepAliveError(ValueError):
    """A ``keep_alive`` value Ollama rejects with 400."""


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to keep a model loaded; ``None`` means forever (a negative value).

    >>> parse_keep_alive("5m"), parse_keep_alive(0.0), parse_keep_alive("-1"), parse_keep_alive(30)
    (300.0, 0.0, None, 30.0)
    >>> parse_keep_alive("1h30m")
    5400.0
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise KeepAliveError(f"Unsupported type: '{type(value).__name__}'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)  # a bare number string counts as seconds
        except ValueError:
            seconds = _go_duration(text)
    return None if seconds < 0 else seconds


def _go_duration(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    rest = text.lstrip("+-")
    total, number = 0.0, ""
    i = 0
    while i < len(rest):
        ch = rest[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = next((u for u in ("ns", "us", "µs", "ms", "s", "m", "h") if rest.startswith(u, i)), None)
        if unit is None or not number:
            raise KeepAliveError(f'time: invalid duration "{text}"')
        total += float(number) * _GO_UNITS[unit]
        number = ""
        i += len(unit)
    if number:
        raise KeepAliveError(f'time: missing unit in duration "{text}"')
    return sign * total


@dataclass(slots=True)
class FakeModel:
    """An installed model of the fake."""

    name: str
    size: int = 2_019_393_189
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization: str = "Q4_K_M"
    context_length: int = 131072
    format: str = "gguf"
    capabilities: list[str] = field(default_factory=lambda: ["completion", "tools"])
    modified_at: str = field(default_factory=now_rfc3339)
    template: str = "{{ .Prompt }}"
    parameters: str = 'stop                           "<|eot_id|>"'

    @property
    def digest(self) -> str:
        """Bare hex digest of the manifest (no ``sha256:`` prefix), as in ``/api/tags``."""
        return hashlib.sha256(f"manifest:{self.name}".encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        """The ``details`` object shared by tags, show and ps."""
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        }

    def tags_entry(self) -> dict[str, Any]:
        """This model as an ``/api/tags`` entry."""
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": self.modified_at,
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
            "capabilities": list(self.capabilities),
        }

    def show_body(self) -> dict[str, Any]:
        """The ``/api/show`` answer."""
        arch = self.family
        return {
            "modelfile": f"# Modelfile generated by \"ollama show\"\nFROM {self.name}\n",
            "parameters": self.parameters,
            "template": self.template,
            "details": self.details(),
            "model_info": {
                "general.architecture": arch,
                "general.parameter_count": 3_212_749_888,
                "general.file_type": 15,
                f"{arch}.context_length": self.context_length,
                f"{arch}.embedding_length": 3072,
                f"{arch}.block_count": 28,
                "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.tokens": [],
            },
            "tensors": [],
            "capabilities": list(self.capabilities),
            "modified_at": self.modified_at,
        }


@dataclass(slots=True)
class FakeLoadedModel:
    """A model in the fake's memory (an ``/api/ps`` entry)."""

    name: str
    size: int
    size_vram: int
    context_length: int
    expires: float | None  # epoch seconds; None = kept forever

    @property
    def expires_at(self) -> str:
        """RFC 3339 expiry; a negative keep-alive gives a date about 292 years ahead."""
        if self.expires is None:
            return "2318-04-11T23:47:16.854775807Z"
        when = dt.datetime.fromtimestamp(self.expires, dt.UTC)
        return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def ps_entry(self, model: FakeModel | None) -> dict[str, Any]:
        """This model as an ``/api/ps`` entry."""
        return {
            "name": self.name,
            "model": self.name,
            "size": self.size,
            "digest": model.digest if model else "",
            "details": model.details() if model else {},
            "expires_at": self.expires_at,
            "size_vram": self.size_vram,
            "context_length": self.context_length,
        }
