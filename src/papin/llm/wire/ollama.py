"""Ollama's native REST protocol, sans I/O: request bodies, response parsing, pull progress.

Reference: Ollama's API docs (https://github.com/ollama/ollama/blob/main/docs/api.md). Every
function here is pure and tested alone; the provider (:mod:`papin.llm.providers.ollama`) only
moves bytes.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from papin.llm.datatypes import (
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationStats,
    LoadedModel,
    ModelInfo,
)
from papin.llm.errors import ConfigurationError
from papin.llm.options import GenerationOptions
from papin.llm.wire.hosts import connectable_host

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "PullAggregator",
    "build_chat",
    "build_generate",
    "build_load",
    "error_text",
    "map_options",
    "parse_chunk",
    "parse_host",
    "parse_loaded_models",
    "parse_models",
    "parse_show",
]

DEFAULT_PORT = 11434
DEFAULT_HOST = f"http://127.0.0.1:{DEFAULT_PORT}"

#: GenerationOptions field -> Ollama ``options`` key.
_OPTION_NAMES: dict[str, str] = {
    "max_tokens": "num_predict",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "stop": "stop",
    "seed": "seed",
    "context_size": "num_ctx",
    "gpu_layers": "num_gpu",
    "threads": "num_thread",
    "batch_size": "num_batch",
}
#: Request fields that live at the top level of a generate/chat body, not in ``options``.
_TOP_LEVEL_KEYS = frozenset(
    {"format", "raw", "template", "context", "suffix", "images", "think", "tools", "truncate",
     "shift", "logprobs", "top_logprobs", "system", "keep_alive"}
)


def parse_host(value: str | None) -> str:
    """Turn an ``OLLAMA_HOST``-style value into a base URL to connect to, as Ollama does.

    No scheme means ``http`` and port 11434; an explicit ``http://`` or ``https://`` without a
    port means 80 or 443; a path is kept; ``0.0.0.0`` and ``::`` (bind-all addresses) become
    loopback, since they cannot be connected to.

    >>> parse_host(None)
    'http://127.0.0.1:11434'
    >>> parse_host('1.2.3.4')
    'http://1.2.3.4:11434'
    >>> parse_host(':56789')
    'http://127.0.0.1:56789'
    >>> parse_host('http://1.2.3.4')
    'http://1.2.3.4:80'
    >>> parse_host('https://example.com')
    'https://example.com:443'
    >>> parse_host('example.com/path/')
    'http://example.com:11434/path'
    >>> parse_host('0.0.0.0')
    'http://127.0.0.1:11434'
    >>> parse_host('[::1]:4000')
    'http://[::1]:4000'
    >>> parse_host('[0001:002:003:0004::1]')
    'http://[0001:002:003:0004::1]:11434'
    """
    value = (value or "").strip()
    if not value:
        return DEFAULT_HOST
    if value == "ollama.com":
        return "https://ollama.com:443"
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "http", value
        default_port = DEFAULT_PORT
    else:
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ConfigurationError(
                f"Unsupported scheme {scheme!r} in Ollama host {value!r}: use http:// or https://."
            )
        default_port = 443 if scheme == "https" else 80
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        host = parts.hostname or "127.0.0.1"
    except ValueError as exc:  # "http://[::1" and the like
        raise ConfigurationError(f"Invalid Ollama host {value!r}: {exc}.") from None
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port  # Ollama logs a warning and falls back to the default port
    path = parts.path.rstrip("/")
    return f"{scheme}://{connectable_host(host)}:{port}{path}"



def map_options(options: GenerationOptions | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split options into Ollama's ``options`` object and top-level request fields.

    ``additional_params`` pass through: known top-level request fields (``format``, ``raw``,
    ``think``...) go to the top level, anything else into ``options``.
    """
    if options is None:
        return {}, {}
    opts: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for field, value in options:
        if value is None or field in GenerationOptions.PAPIN_ONLY:
            continue
        if field in ("system", "keep_alive"):
            top[field] = value
        else:
            opts[_OPTION_NAMES[field]] = value
    for key, value in options.additional_params.items():
        (top if key in _TOP_LEVEL_KEYS else opts)[key] = value
    return opts, top


def build_generate(
    model: str, prompt: str, options: GenerationOptions | None = None, *, stream: bool = True
) -> dict[str, Any]:
    """Body of ``POST /api/generate``."""
    opts, top = map_options(options)
    body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": stream}
    body.update(top)
    if opts:
        body["options"] = opts
    return body


def build_chat(
    model: str,
    messages: Iterable[ChatMessage],
    options: GenerationOptions | None = None,
    *,
    stream: bool = True,
) -> dict[str, Any]:
    """Body of ``POST /api/chat``. ``options.system`` becomes a leading system message."""
    opts, top = map_options(options)
    msgs = [m.to_dict() for m in messages]
    system = top.pop("system", None)
    if system is not None and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": system})
    body: dict[str, Any] = {"model": model, "messages": msgs, "stream": stream}
    body.update(top)
    if opts:
        body["options"] = opts
    return body


def build_load(
    model: str, *, keep_alive: float | str | None, options: GenerationOptions | None = None
) -> dict[str, Any]:
    """Body of a generate request that only loads (or, with ``keep_alive=0``, unloads) a model.

    ``options`` carries the load-time options (``num_thread``...) so that the model is loaded
    as the following requests will want it (Ollama reloads a model whose options change).
    """
    body: dict[str, Any] = {"model": model, "stream": False}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    opts, _ = map_options(options)
    if opts:
        body["options"] = opts
    return body


def _finish_reason(value: Any) -> FinishReason:
    return "length" if value == "length" else "stop"


def parse_chunk(obj: Mapping[str, Any], *, time_to_first_token: float | None) -> GenerationChunk:
    """Turn one generate/chat message (streamed or not) into a :class:`GenerationChunk`.

    An ``error`` key is not handled here: the caller raises it (it is a stream error).
    """
    text = obj.get("response")
    if text is None:
        message = obj.get("message")
        text = message.get("content", "") if isinstance(message, Mapping) else ""
    if not obj.get("done"):
        return GenerationChunk(text=text or "")
    eval_count = obj.get("eval_count")
    eval_ns = obj.get("eval_duration")
    tps = eval_count / eval_ns * 1e9 if eval_count and eval_ns else None
    total_ns = obj.get("total_duration")
    load_ns = obj.get("load_duration")
    stats = GenerationStats(
        finish_reason=_finish_reason(obj.get("done_reason")),
        prompt_tokens=obj.get("prompt_eval_count"),
        output_tokens=eval_count,
        time_to_first_token=time_to_first_token,
        tokens_per_second=tps,
        total_time=total_ns / 1e9 if total_ns else None,
        load_time=load_ns / 1e9 if load_ns else None,
    )
    return GenerationChunk(text=text or "", done=True, stats=stats)


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HIDDEN = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


def _html_text(text: str) -> str:
    """A one-line summary of an HTML error page: its title, else its visible text."""
    match = _TITLE.search(text)
    summary = match.group(1) if match else _TAG.sub(" ", _HIDDEN.sub(" ", text))
    summary = html.unescape(" ".join(summary.split()))[:200]
    return f"{summary} (an HTML page)" if summary else "an HTML page"


def error_text(body: bytes, content_type: str | None = None) -> str:
    """Extract the message of an Ollama error body.

    ``{"error": "..."}`` gives its text; an HTML page (a proxy's error page) its title;
    anything else the text itself (trimmed to 500 characters).
    """
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return ""
    looks_html = text[:100].lower().startswith(("<!doctype html", "<html"))
    if looks_html or (content_type is not None and "html" in content_type.lower()):
        return _html_text(text)
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, str):
            return err
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return text[:500]


def _model_info(entry: Mapping[str, Any], provider: str) -> ModelInfo:
    details = entry.get("details") or {}
    name = str(entry.get("name") or entry.get("model") or "")
    return ModelInfo(
        id=name,
        name=name,
        provider=provider,
        installed=True,
        size_bytes=entry.get("size"),
        description=f"Ollama model {name}",
        family=details.get("family") or None,
        parameter_size=details.get("parameter_size") or None,
        quantization=details.get("quantization_level") or None,
        format=details.get("format") or None,
        capabilities=tuple(entry.get("capabilities") or ()),
        modified_at=entry.get("modified_at"),
        digest=entry.get("digest"),
    )


def parse_models(data: Any, provider: str = "ollama") -> list[ModelInfo]:
    """Parse ``GET /api/tags``."""
    models = data.get("models") if isinstance(data, Mapping) else None
    return [_model_info(m, provider) for m in models or () if isinstance(m, Mapping)]


def parse_show(data: Mapping[str, Any], model: str, provider: str = "ollama") -> ModelInfo:
    """Parse ``POST /api/show`` into a :class:`ModelInfo` (context size from ``model_info``)."""
    info = data.get("model_info") or data.get("modelinfo") or {}
    arch = info.get("general.architecture")
    ctx = info.get(f"{arch}.context_length") if arch else None
    base = _model_info({**data, "name": model}, provider)
    metadata = {
        k: str(v) for k, v in info.items() if v is not None and not isinstance(v, (list, dict))
    }
    if data.get("parameters"):
        metadata["parameters"] = str(data["parameters"])
    if data.get("template"):
        metadata["template"] = str(data["template"])
    return ModelInfo(
        **{
            **{f: getattr(base, f) for f in base.__dataclass_fields__},
            "context_size": ctx if isinstance(ctx, int) else None,
            "metadata": metadata,
        }
    )


def parse_loaded_models(data: Any, provider: str = "ollama") -> list[LoadedModel]:
    """Parse ``GET /api/ps``."""
    models = data.get("models") if isinstance(data, Mapping) else None
    return [
        LoadedModel(
            id=str(m.get("name") or m.get("model")),
            provider=provider,
            size_bytes=m.get("size"),
            size_vram_bytes=m.get("size_vram"),
            context_size=m.get("context_length"),
            expires_at=m.get("expires_at"),
        )
        for m in models or ()
        if isinstance(m, Mapping)
    ]


def same_model(a: str, b: str) -> bool:
    """Whether two Ollama model names mean the same model (``x`` == ``x:latest``, any case)."""

    def norm(name: str) -> str:
        name = name.lower()
        for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/"):
            if name.startswith(prefix):
                name = name[len(prefix):]
        return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"

    return norm(a) == norm(b)


class PullAggregator:
    """Aggregates ``/api/pull`` progress lines over layers into one (done, total, status).

    Bytes are grouped by layer ``digest``: completed bytes summed over layers, totals taken
    per layer. Status-only lines (``verifying sha256 digest``...) keep the byte counts.
    """

    def __init__(self) -> None:
        self._totals: dict[str, int] = {}
        self._done: dict[str, int] = {}
        self.status = "starting"
        self.success = False

    def feed(self, obj: Mapping[str, Any]) -> tuple[int, int | None, str]:
        """Account for one progress line; return (bytes done, total bytes, status text).

        The caller checks ``obj.get("error")`` first: an error line means the pull failed.
        """
        status = str(obj.get("status") or self.status)
        digest = obj.get("digest")
        if digest and "total" in obj:
            self._totals[digest] = int(obj["total"])
            self._done[digest] = int(obj.get("completed", 0))
        self.status = status
        if status == "success":
            self.success = True
        done = sum(self._done.values())
        total = sum(self._totals.values()) or None
        return done, total, status
