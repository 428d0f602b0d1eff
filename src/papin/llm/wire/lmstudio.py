"""LM Studio's own wire shapes (sans I/O): its REST API model listings and download jobs.

The OpenAI-compatible ``/v1`` routes are :mod:`papin.llm.wire.openai`; this module reads
``GET /api/v1/models`` and ``GET /api/v0/models`` entries, download-job status answers and the
``ttl`` LM Studio takes instead of Ollama's ``keep_alive``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from papin.llm.datatypes import ModelInfo

__all__ = [
    "LIST_KEYS",
    "LIST_PATHS",
    "RestApi",
    "find_job",
    "int_field",
    "model_kinds",
    "ttl_seconds",
    "v0_model",
    "v1_model",
    "valid_entry",
]

RestApi = Literal["v1", "v0", "none"]
LIST_PATHS: dict[str, str] = {"v1": "/api/v1/models", "v0": "/api/v0/models"}
LIST_KEYS: dict[str, str] = {"v1": "models", "v0": "data"}
_EMBEDDING_TYPES = frozenset({"embedding", "embeddings"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def int_field(value: Any) -> int | None:
    """An integer field, or ``None`` (JSON numbers may come as floats)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def ttl_seconds(value: float | str | None) -> int | None:
    """``keep_alive`` as whole seconds for LM Studio's ``ttl`` (``None`` when unset, not
    positive, or unreadable).

    >>> ttl_seconds(300), ttl_seconds("5m"), ttl_seconds("90s"), ttl_seconds(-1), ttl_seconds("forever")
    (300, 300, 90, None, None)
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            return None
        seconds = float(match[1]) * _UNITS[match[2] or "s"]
    return max(1, round(seconds)) if seconds > 0 else None


def valid_entry(entry: Any, api: str) -> bool:
    """Whether a listing entry has the id field of its API (``key`` in v1, ``id`` in v0)."""
    key = "key" if api == "v1" else "id"
    return isinstance(entry, Mapping) and isinstance(entry.get(key), str) and bool(entry[key])


def model_kinds(model_type: Any) -> tuple[str, ...]:
    """The capabilities a model ``type`` implies."""
    if model_type in _EMBEDDING_TYPES:
        return ("embedding",)
    if model_type == "vlm":
        return ("completion", "vision")
    return ("completion",)


def v1_model(entry: Mapping[str, Any], provider: str) -> ModelInfo:
    """One entry of ``GET /api/v1/models``."""
    caps = list(model_kinds(entry.get("type")))
    flags = entry.get("capabilities")
    if isinstance(flags, Mapping):
        if flags.get("vision") and "vision" not in caps:
            caps.append("vision")
        if flags.get("trained_for_tool_use"):
            caps.append("tools")
        if flags.get("reasoning"):
            caps.append("thinking")
    quant = entry.get("quantization")
    quant_name = quant.get("name") if isinstance(quant, Mapping) else None
    instances = [i for i in entry.get("loaded_instances") or () if isinstance(i, Mapping)]
    metadata = {
        "type": str(entry.get("type") or "llm"),
        "state": "loaded" if instances else "not-loaded",
        "loaded_instances": str(len(instances)),
    }
    for field in ("publisher", "display_name", "selected_variant"):
        if entry.get(field):
            metadata[field] = str(entry[field])
    if isinstance(quant, Mapping) and quant.get("bits_per_weight") is not None:
        metadata["bits_per_weight"] = str(quant["bits_per_weight"])
    config = instances[0].get("config") if instances else None
    if isinstance(config, Mapping) and config.get("context_length") is not None:
        metadata["loaded_context_length"] = str(config["context_length"])
    key = str(entry["key"])
    return ModelInfo(
        id=key,
        name=key,
        provider=provider,
        installed=True,
        size_bytes=int_field(entry.get("size_bytes")),
        context_size=int_field(entry.get("max_context_length")),
        description=str(entry.get("description") or entry.get("display_name") or ""),
        family=entry.get("architecture") or None,
        parameter_size=entry.get("params_string") or None,
        quantization=quant_name or None,
        format=entry.get("format") or None,
        capabilities=tuple(caps),
        metadata=metadata,
    )


def v0_model(entry: Mapping[str, Any], provider: str) -> ModelInfo:
    """One entry of ``GET /api/v0/models``."""
    caps = list(model_kinds(entry.get("type")))
    for cap in entry.get("capabilities") or ():
        caps.append("tools" if cap == "tool_use" else str(cap))
    metadata = {
        "type": str(entry.get("type") or "llm"),
        "state": str(entry.get("state") or "not-loaded"),
    }
    for field in ("publisher", "loaded_context_length"):
        if entry.get(field) is not None:
            metadata[field] = str(entry[field])
    model_id = str(entry["id"])
    return ModelInfo(
        id=model_id,
        name=model_id,
        provider=provider,
        installed=True,
        context_size=int_field(entry.get("max_context_length")),
        family=entry.get("arch") or None,
        quantization=entry.get("quantization") or None,
        format=entry.get("compatibility_type") or None,
        capabilities=tuple(caps),
        metadata=metadata,
    )


def find_job(data: Any, job_id: str) -> Any:
    """The job object of a status answer: ``/status/:job_id`` gives it directly; the older
    ``/status`` listing groups jobs by state (``downloading``, ``completed``...)."""
    if isinstance(data, Mapping) and "status" not in data:
        for group in ("downloading", "paused", "completed", "failed"):
            for job in data.get(group) or ():
                if isinstance(job, Mapping) and job.get("job_id") == job_id:
                    return {"status": group, **job}
    return data
