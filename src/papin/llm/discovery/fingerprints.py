"""Telling LLM servers apart by what they answer (sans-I/O).

:func:`next_paths` says which ``GET`` requests a probe still needs given the answers so far,
and :func:`identify` names the backend from those answers, never by its port alone (LocalAI
and llama-server both default to 8080, vLLM and ``python -m llama_cpp.server`` to 8000). The
fingerprints follow each server's documented routes and answers:

* Ollama: ``GET /`` answers ``Ollama is running`` (LocalAI can imitate that root, so its
  ``/readyz`` is checked too); version from ``/api/version``, models from ``/api/tags``,
  GPU use from ``/api/ps`` (``size_vram``).
* llama-server: ``GET /props`` with ``build_info`` (or ``role: router``); ``/health`` says
  ready or ``503 Loading model`` (every route answers that 503 while loading).
* LM Studio: ``GET /api/v0/models`` (entries with ``state``) or ``/api/v1/models``.
* LocalAI: ``GET /readyz`` (200, or 503 ``starting`` while preloading) and ``/version``.
* vLLM: ``owned_by: "vllm"`` in ``/v1/models``, or ``/version`` plus an empty ``/health``.
* anything else with ``/v1/models``: a generic OpenAI-compatible server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Identification", "Reply", "identify", "next_paths"]

_OPENAI_FAMILY = frozenset({"localai", "llamacpp_server", "vllm", "lmstudio", "openai_compatible"})

ROOT = "/"
#: Paths asked of a server whose root says it is Ollama.
OLLAMA_PATHS = ("/api/version", "/api/tags", "/api/ps", "/readyz")
#: Paths asked of LocalAI imitating Ollama's root (``LOCALAI_OLLAMA_API_ROOT_ENDPOINT``).
LOCALAI_PATHS = ("/readyz", "/version", "/v1/models")
#: Paths asked of any other server.
OTHER_PATHS = ("/props", "/health", "/version", "/readyz", "/api/v0/models", "/api/v1/models", "/v1/models")


# -- fingerprints (sans-I/O) --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reply:
    """One ``GET``'s answer: ``status`` is ``None`` when nothing answered (``error`` says why)."""

    status: int | None
    body: bytes = b""
    error: str | None = None

    def json(self) -> Any:
        """The body as JSON, or ``None`` when it is not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def text(self) -> str:
        """The body as text (at most 500 characters)."""
        return self.body[:500].decode("utf-8", "replace").strip()

    @property
    def ok(self) -> bool:
        """Answered 2xx."""
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Identification:
    """What a probe found at one address."""

    provider: str
    version: str | None = None
    health: str = "ready"  # "ready" | "loading" | "error"
    reason: str | None = None
    models: tuple[str, ...] = ()
    loaded_models: tuple[str, ...] = ()
    accelerated: bool | None = None
    details: dict[str, str] = field(default_factory=dict)


def _is_ollama_root(reply: Reply | None) -> bool:
    return reply is not None and reply.ok and "ollama is running" in reply.text().lower()


def _localai_ready(reply: Reply | None) -> bool | None:
    """``/readyz``: True (ready), False (starting), ``None`` (not LocalAI's)."""
    if reply is None or reply.status is None:
        return None
    body = reply.json()
    if reply.status == 503 and isinstance(body, dict) and body.get("status") == "starting":
        return False
    if reply.ok and (not reply.body.strip() or reply.text().upper() == "OK"):
        return True
    return None


def next_paths(replies: Mapping[str, Reply]) -> tuple[str, ...]:
    """The ``GET`` paths a probe still needs, given the answers so far (``()``: done)."""
    root = replies.get(ROOT)
    if root is None:
        return (ROOT,)
    if root.status is None:
        return ()
    wanted: tuple[str, ...]
    if _is_ollama_root(root):
        wanted = OLLAMA_PATHS
        if _localai_ready(replies.get("/readyz")) is not None:
            wanted = LOCALAI_PATHS
    else:
        wanted = OTHER_PATHS
    return tuple(p for p in wanted if p not in replies)


def _entries(body: Any, key: str) -> list[dict[str, Any]]:
    items = body.get(key) if isinstance(body, dict) else None
    return [e for e in items if isinstance(e, dict)] if isinstance(items, list) else []


def _ids(entries: Iterable[dict[str, Any]], *keys: str) -> tuple[str, ...]:
    out: list[str] = []
    for entry in entries:
        for key in keys:
            value = entry.get(key)
            if isinstance(value, str) and value:
                out.append(value)
                break
    return tuple(out)


def _error_message(reply: Reply) -> str:
    body = reply.json()
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(body.get("status"), str):
            return str(body["status"])
    return reply.text() or f"HTTP {reply.status}"


def _is_loading(reply: Reply | None) -> bool:
    return reply is not None and reply.status == 503 and "loading" in _error_message(reply).lower()


def _version(reply: Reply | None) -> str | None:
    body = reply.json() if reply is not None and reply.ok else None
    value = body.get("version") if isinstance(body, dict) else None
    return str(value) if isinstance(value, (str, int, float)) and str(value) else None


def _openai_models(reply: Reply | None) -> tuple[str, ...] | None:
    """Model ids of a ``/v1/models`` answer; ``None`` when it is not one."""
    if reply is None or not reply.ok:
        return None
    body = reply.json()
    if not isinstance(body, dict) or not ("data" in body or body.get("object") == "list"):
        return None
    return _ids(_entries(body, "data"), "id")


def _needs_key(reply: Reply | None) -> bool:
    return reply is not None and reply.status in (401, 403)


def _identify_ollama(r: Mapping[str, Reply]) -> Identification:
    tags, ps = r.get("/api/tags"), r.get("/api/ps")
    version = _version(r.get("/api/version"))
    details: dict[str, str] = {}
    if _needs_key(tags):
        return Identification(
            "ollama",
            version,
            "ready",
            "the model list needs an API key (OLLAMA_API_KEY)",
            details={"auth": "required"},
        )
    models = _ids(_entries(tags.json() if tags and tags.ok else None, "models"), "name", "model")
    running = _entries(ps.json() if ps and ps.ok else None, "models")
    vram = [int(e["size_vram"]) for e in running if isinstance(e.get("size_vram"), int)]
    accelerated: bool | None = None
    if vram:
        accelerated = any(v > 0 for v in vram)
        details["vram_bytes"] = str(sum(vram))
    health, reason = "ready", None
    if tags is not None and tags.status is not None and not tags.ok:
        health, reason = "error", f"/api/tags answered {tags.status}: {_error_message(tags)}"
    return Identification(
        "ollama",
        version,
        health,
        reason,
        models,
        _ids(running, "name", "model"),
        accelerated,
        details,
    )


def _identify_llama_server(r: Mapping[str, Reply]) -> Identification | None:
    props, health = r.get("/props"), r.get("/health")
    body = props.json() if props is not None and props.ok else None
    v1 = r.get("/v1/models")
    owned = _entries(v1.json() if v1 and v1.ok else None, "data")
    is_props = isinstance(body, dict) and (
        "build_info" in body or body.get("role") == "router" or "default_generation_settings" in body
    )
    loading = _is_loading(health) and (_is_loading(props) or props is None or props.status == 404)
    health_body = health.json() if health is not None and health.ok else None
    keyed = isinstance(health_body, dict) and health_body.get("status") == "ok" and _needs_key(props)
    by_owner = any(e.get("owned_by") == "llamacpp" for e in owned)
    if not (is_props or loading or keyed or by_owner):
        return None
    details: dict[str, str] = {}
    version = None
    if isinstance(body, dict):
        version = str(body["build_info"]) if body.get("build_info") else None
        if body.get("role") == "router":
            details["mode"] = "router"
        elif isinstance(body.get("model_path"), str):
            details["model_path"] = body["model_path"]
    models = _ids(owned, "id")
    loaded: tuple[str, ...] = models
    if details.get("mode") == "router":
        loaded = tuple(
            str(e["id"])
            for e in owned
            if isinstance(e.get("status"), dict)
            and e["status"].get("value") == "loaded"
            and isinstance(e.get("id"), str)
        )
    if loading:
        return Identification(
            "llamacpp_server", version, "loading", _error_message(health) if health else None, details=details
        )
    state, reason = "ready", None
    if health is not None and health.status is not None and not health.ok:
        state, reason = "error", f"/health answered {health.status}: {_error_message(health)}"
    if keyed or _needs_key(v1):
        reason = "the model list needs an API key (LLAMA_API_KEY)"
        details["auth"] = "required"
    return Identification("llamacpp_server", version, state, reason, models, loaded, None, details)


def _identify_lmstudio(r: Mapping[str, Reply]) -> Identification | None:
    v0, v1 = r.get("/api/v0/models"), r.get("/api/v1/models")
    v1_body = v1.json() if v1 is not None and v1.ok else None
    if isinstance(v1_body, dict) and isinstance(v1_body.get("models"), list):
        entries = _entries(v1_body, "models")
        if all("key" in e for e in entries):
            loaded = tuple(str(e["key"]) for e in entries if e.get("loaded_instances"))
            return Identification(
                "lmstudio", None, "ready", None, _ids(entries, "key"), loaded, details={"rest_api": "v1"}
            )
    v0_body = v0.json() if v0 is not None and v0.ok else None
    if isinstance(v0_body, dict) and isinstance(v0_body.get("data"), list):
        entries = _entries(v0_body, "data")
        if all("state" in e for e in entries):
            loaded = tuple(str(e["id"]) for e in entries if e.get("state") == "loaded" and "id" in e)
            return Identification(
                "lmstudio", None, "ready", None, _ids(entries, "id"), loaded, details={"rest_api": "v0"}
            )
    if _needs_key(v0) or _needs_key(v1):
        return Identification(
            "lmstudio",
            None,
            "ready",
            "the model list needs an API token (LM_API_TOKEN)",
            details={"auth": "required"},
        )
    return None


def _identify_localai(r: Mapping[str, Reply]) -> Identification | None:
    ready = _localai_ready(r.get("/readyz"))
    if ready is None:
        return None
    version = _version(r.get("/version"))
    if not ready:
        return Identification("localai", version, "loading", _readyz_reason(r["/readyz"]))
    v1 = r.get("/v1/models")
    models = _openai_models(v1) or ()
    if _needs_key(v1):
        return Identification(
            "localai",
            version,
            "ready",
            "the model list needs an API key (LOCALAI_API_KEY)",
            details={"auth": "required"},
        )
    return Identification("localai", version, "ready", None, models)


def _readyz_reason(reply: Reply) -> str:
    body = reply.json()
    reason = body.get("reason") if isinstance(body, dict) else None
    return f"starting: {reason}" if isinstance(reason, str) and reason else "starting"


def _identify_vllm(r: Mapping[str, Reply]) -> Identification | None:
    v1, health, version = r.get("/v1/models"), r.get("/health"), r.get("/version")
    entries = _entries(v1.json() if v1 and v1.ok else None, "data")
    by_owner = bool(entries) and any(e.get("owned_by") == "vllm" for e in entries)
    empty_health = health is not None and health.status in (200, 503) and not health.body.strip()
    if not (by_owner or (_version(version) is not None and empty_health)):
        return None
    state, reason = "ready", None
    if health is not None and health.status == 503:
        state, reason = "error", "/health answered 503: the engine has stopped (restart vLLM)"
    details: dict[str, str] = {}
    lengths = [int(e["max_model_len"]) for e in entries if isinstance(e.get("max_model_len"), int)]
    if lengths:
        details["max_model_len"] = str(max(lengths))
    if _needs_key(v1):
        reason = "the model list needs an API key (VLLM_API_KEY)"
        details["auth"] = "required"
    ids = _ids(entries, "id")
    return Identification("vllm", _version(version), state, reason, ids, ids, True, details)


def identify(replies: Mapping[str, Reply], hint: str | None = None) -> Identification | None:
    """Name the backend behind ``replies`` (path -> answer); ``None`` if it is no LLM server.

    ``hint`` (the provider a variable or setting named) only refines a generic
    OpenAI-compatible answer: the probe's own evidence always wins.
    """
    root = replies.get(ROOT)
    if root is None or root.status is None:
        return None
    if _is_ollama_root(root) and _localai_ready(replies.get("/readyz")) is None:
        return _identify_ollama(replies)
    for rule in (_identify_llama_server, _identify_lmstudio, _identify_localai, _identify_vllm):
        found = rule(replies)
        if found is not None:
            return found
    v1 = replies.get("/v1/models")
    models = _openai_models(v1)
    provider = hint if hint in _OPENAI_FAMILY else "openai_compatible"
    if models is not None:
        return Identification(provider, None, "ready", None, models)
    if _needs_key(v1):
        return Identification(
            provider, None, "ready", "the model list needs an API key", details={"auth": "required"}
        )
    return None
