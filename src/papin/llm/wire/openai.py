"""OpenAI's ``/v1`` protocol as local servers speak it (llama-server, LocalAI, vLLM, LM Studio).

Sans I/O: request bodies for ``/v1/chat/completions`` and ``/v1/completions``, parsing of
responses, stream events and model lists, and the error envelopes of every backend.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from papin.llm.datatypes import ChatMessage, FinishReason, ModelInfo
from papin.llm.errors import ConfigurationError
from papin.llm.options import GenerationOptions

__all__ = [
    "StreamDelta",
    "build_chat",
    "build_completion",
    "error_text",
    "finish_reason",
    "parse_delta",
    "parse_models",
    "split_base_url",
    "stream_error",
]

#: GenerationOptions field -> request key. ``top_k``, ``min_p`` and ``repeat_penalty`` are
#: extensions that llama-server, vLLM and LocalAI accept (OpenAI itself ignores them).
_FIELDS: dict[str, str] = {
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "stop": "stop",
    "seed": "seed",
}
_ECHO = re.compile(r"code=\d{3}, message=(.+)", re.DOTALL)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def split_base_url(endpoint: str) -> str:
    """The server root of an endpoint given with or without ``/v1``.

    >>> split_base_url("http://127.0.0.1:8080/v1/")
    'http://127.0.0.1:8080'
    >>> split_base_url("https://gpu.example.com/openai/v1")
    'https://gpu.example.com/openai'
    >>> split_base_url("localhost:8000")
    'http://localhost:8000'
    """
    value = endpoint.strip()
    if not value:
        raise ConfigurationError("No endpoint given: set the server URL, e.g. http://127.0.0.1:8000/v1.")
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"Invalid endpoint {endpoint!r}: use http(s)://HOST[:PORT][/v1].")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")).rstrip("/")


def _sampling(options: GenerationOptions | None) -> dict[str, Any]:
    if options is None:
        return {}
    body: dict[str, Any] = {}
    for field, key in _FIELDS.items():
        value = getattr(options, field)
        if value is not None:
            body[key] = value
    body.update(options.additional_params)
    return body


def build_chat(
    model: str,
    messages: Iterable[ChatMessage],
    options: GenerationOptions | None = None,
    *,
    stream: bool = True,
) -> dict[str, Any]:
    """Body of ``POST /v1/chat/completions`` (usage requested at the end of a stream)."""
    msgs = [{"role": m.role, "content": m.content} for m in messages]
    if options is not None and options.system and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": options.system})
    body: dict[str, Any] = {"model": model, "messages": msgs, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    body.update(_sampling(options))
    return body


def build_completion(
    model: str, prompt: str, options: GenerationOptions | None = None, *, stream: bool = True
) -> dict[str, Any]:
    """Body of ``POST /v1/completions``; ``options.system`` is put before the prompt."""
    if options is not None and options.system:
        prompt = f"{options.system}\n\n{prompt}"
    body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    body.update(_sampling(options))
    return body


def finish_reason(value: Any) -> FinishReason | None:
    """Map a backend's ``finish_reason`` (``stop``, ``length``, ``eos``, ``tool_calls``...).

    vLLM's ``abort`` (the engine dropped the request) is ``error``: the answer is incomplete.
    """
    if value is None or value == "":
        return None
    if value == "length":
        return "length"
    return "error" if value == "abort" else "stop"


class StreamDelta(NamedTuple):
    """What one chunk (or a whole non-streamed answer) carries (a cheap named tuple)."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def parse_delta(obj: Mapping[str, Any]) -> StreamDelta:
    """Read text, finish reason and usage from a chat or completion chunk or response.

    Chunks with ``"choices": []`` (the usage trailer) are fine.
    """
    choices = obj.get("choices")
    text = ""
    reason: FinishReason | None = None
    if choices and isinstance(choices, list) and isinstance(choices[0], dict):
        choice = choices[0]
        value = choice.get("text")
        if isinstance(value, str):
            text = value
        else:
            part = choice.get("delta") or choice.get("message")
            content = part.get("content") if isinstance(part, dict) else None
            if isinstance(content, str):
                text = content
        raw_reason = choice.get("finish_reason")
        if raw_reason is not None:
            reason = finish_reason(raw_reason)
    usage = obj.get("usage")
    if usage is None:
        return StreamDelta(text, reason)
    prompt_tokens = completion_tokens = None
    if isinstance(usage, dict):
        prompt_tokens = _count(usage.get("prompt_tokens"))
        completion_tokens = _count(usage.get("completion_tokens"))
    return StreamDelta(text, reason, prompt_tokens, completion_tokens)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def stream_error(obj: Any) -> str | None:
    """The message of an error event inside a stream (``{"error": {...}}``), else ``None``."""
    if not isinstance(obj, Mapping) or not obj.get("error"):
        return None
    err = obj["error"]
    if isinstance(err, Mapping):
        message = err.get("message")
        return str(message) if isinstance(message, str) else "An error occurred during streaming"
    return str(err)


def error_text(body: bytes, content_type: str | None = None) -> str:
    """The message of an error body, for every backend's envelope.

    >>> error_text(b'{"error":{"message":"Invalid API Key","type":"authentication_error","code":401}}')
    'Invalid API Key'
    >>> error_text(b'{"error":"Unauthorized"}')
    'Unauthorized'
    >>> error_text(b'{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError"}')
    'The model `x` does not exist.'
    >>> error_text(b'{"detail":"Not Found"}')
    'Not Found'
    >>> error_text(b'{"error":{"code":400,"message":"code=400, message=failed parsing request body"}}')
    'failed parsing request body'
    >>> error_text(b'<html><head><title>502 Bad Gateway</title></head></html>', 'text/html')
    '502 Bad Gateway (an HTML page)'
    >>> error_text(b'upstream connect error')
    'upstream connect error'
    """
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return ""
    if is_html(text, content_type):
        match = _HTML_TITLE.search(text)
        title = " ".join(match[1].split()) if match else "an HTML page"
        return f"{title} (an HTML page)" if match else title
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(data, Mapping):
        err = data.get("error")
        if isinstance(err, str) and err:
            return _echo_message(err)
        for holder in (err, data):
            if not isinstance(holder, Mapping):
                continue
            for key in ("message", "detail", "msg"):
                value = holder.get(key)
                if isinstance(value, str) and value:
                    return _echo_message(value)
    elif isinstance(data, str) and data:
        return data[:500]
    return text[:500]


def is_html(text: str, content_type: str | None) -> bool:
    """Whether an error body is an HTML page (a proxy's, or a login page) rather than JSON."""
    return (content_type or "").startswith("text/html") or text.lower().startswith(("<!doctype", "<html"))


def _echo_message(message: str) -> str:
    """Drop the ``code=400, message=`` prefix of LocalAI's echo errors."""
    match = _ECHO.match(message)
    return match[1] if match else message


def parse_models(data: Any, provider: str) -> list[ModelInfo]:
    """Parse ``GET /v1/models`` (entries may have only ``id``; ``data`` may be null)."""
    entries = data.get("data") if isinstance(data, Mapping) else None
    models: list[ModelInfo] = []
    for entry in entries or ():
        if not isinstance(entry, Mapping) or not entry.get("id"):
            continue
        model_id = str(entry["id"])
        meta = entry.get("meta")
        ctx = entry.get("max_model_len") or (meta.get("n_ctx_train") if isinstance(meta, Mapping) else None)
        metadata = {
            key: str(entry[key])
            for key in ("owned_by", "root", "parent", "created")
            if entry.get(key) is not None
        }
        models.append(
            ModelInfo(
                id=model_id,
                name=model_id,
                provider=provider,
                installed=True,
                context_size=ctx if isinstance(ctx, int) else None,
                metadata=metadata,
            )
        )
    return models
