"""llama.cpp ``llama-server``'s native protocol, sans I/O
(https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md).

Request bodies of ``POST /completion``, and parsing of its answers and stream events,
``GET /props``, ``GET /v1/models`` (single model) and ``GET /models`` (router mode). The
provider (:mod:`papin.llm.providers.llamacpp_server`) only moves bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from papin.llm.datatypes import GenerationStats, ModelInfo
from papin.llm.errors import RateLimitedError
from papin.llm.options import GenerationOptions
from papin.llm.wire.openai import stream_error
from papin.llm.wire.sse import SSEDecoder

__all__ = [
    "ARCHITECTURE_TEMPLATES",
    "NativeCompletion",
    "NativeStream",
    "StreamErrorEvent",
    "is_loading",
    "model_names",
    "native_body",
    "parse_router_model",
    "parse_router_models",
    "parse_single_model",
    "parse_tokens",
    "props_details",
]

#: Gemma's chat format (its official template without images); a system message is put
#: before the first user turn, as Gemma has no system role.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '')"
    " + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
#: ChatML (Qwen 2 and many fine-tunes).
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
#: Jinja chat templates for GGUFs that carry none, by architecture. (A template *name* such
#: as ``gemma`` would be taken as template text by builds that use Jinja by default.)
ARCHITECTURE_TEMPLATES = {
    "gemma": GEMMA_TEMPLATE, "gemma2": GEMMA_TEMPLATE, "gemma3": GEMMA_TEMPLATE,
    "qwen2": CHATML_TEMPLATE,
}  # fmt: skip
#: GenerationOptions field -> native ``/completion`` field.
_NATIVE_FIELDS = {
    "max_tokens": "n_predict", "temperature": "temperature", "top_p": "top_p",
    "top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "stop": "stop", "seed": "seed",
}  # fmt: skip


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def native_body(
    model: str, prompt: str, options: GenerationOptions | None, *, stream: bool
) -> dict[str, Any]:
    """Body of ``POST /completion`` (``model`` routes it in router mode; otherwise ignored).

    >>> native_body("m", "Hi", GenerationOptions(max_tokens=3, stop="."), stream=True)
    {'model': 'm', 'prompt': 'Hi', 'stream': True, 'n_predict': 3, 'stop': ['.']}
    """
    if options is not None and options.system:
        prompt = f"{options.system}\n\n{prompt}"
    body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": stream}
    if options is not None:
        for name, key in _NATIVE_FIELDS.items():
            value = getattr(options, name)
            if value is not None:
                body[key] = value
        body.update(options.additional_params)
    return body


@dataclass(frozen=True, slots=True)
class NativeCompletion:
    """The answer of native ``POST /completion``: text plus what only that route reports.

    ``stop_type`` is ``eos``, ``word`` (``stopping_word`` holds it), ``limit`` (``n_predict``
    reached) or ``none``; ``tokens_cached`` prompt tokens were reused from the slot's cache;
    ``truncated`` means the prompt did not fit the context; ``timings`` are the server's own
    (``prompt_ms``, ``predicted_per_second``...).
    """

    text: str
    model: str
    stop_type: str
    stopping_word: str
    tokens_predicted: int
    tokens_evaluated: int
    tokens_cached: int
    truncated: bool
    timings: dict[str, float]

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> NativeCompletion:
        """Read a final ``/completion`` object (the last stream event, or the whole answer).

        >>> c = NativeCompletion.from_json({"content": "", "stop": True, "stop_type": "word",
        ...     "stopping_word": "6", "tokens_predicted": 4, "timings": {"predicted_n": 4}})
        >>> (c.stop_type, c.stopping_word, c.tokens_predicted, c.stats(0.1, 1.0).finish_reason)
        ('word', '6', 4, 'stop')
        """
        timings = _dict(obj.get("timings"))
        return cls(
            text=str(obj.get("content") or ""),
            model=str(obj.get("model") or ""),
            stop_type=str(obj.get("stop_type") or "none"),
            stopping_word=str(obj.get("stopping_word") or ""),
            tokens_predicted=int(obj.get("tokens_predicted") or 0),
            tokens_evaluated=int(obj.get("tokens_evaluated") or 0),
            tokens_cached=int(obj.get("tokens_cached") or 0),
            truncated=bool(obj.get("truncated")),
            timings={k: float(v) for k, v in timings.items() if isinstance(v, int | float)},
        )

    def stats(
        self,
        first_token: float | None,
        total: float,
        *,
        counted: int = 0,
        load_time: float | None = None,
    ) -> GenerationStats:
        """Generation statistics: server-side token counts and tokens per second, the
        client's time to first token and total time (``counted``: tokens seen in events)."""
        tps = self.timings.get("predicted_per_second")
        return GenerationStats(
            finish_reason="length" if self.stop_type == "limit" else "stop",
            prompt_tokens=self.tokens_evaluated or None,
            output_tokens=self.tokens_predicted or counted or None,
            time_to_first_token=first_token,
            tokens_per_second=tps if tps and tps > 0 and self.tokens_predicted > 0 else None,
            total_time=total,
            load_time=load_time,
        )


def is_loading(exc: BaseException) -> bool:
    """Whether an error is the 503 of a server loading its model: ``Loading model`` (current
    builds, ``unavailable_error``) or ``{"status":"loading model"}`` (early 2024 builds)."""
    return (
        isinstance(exc, RateLimitedError)
        and exc.status_code == 503
        and "loading" in str(exc.body or "").lower()
    )


def props_details(props: Mapping[str, Any]) -> dict[str, str]:
    """The facts of ``GET /props`` worth reporting, as strings.

    >>> props_details({"role": "router", "max_instances": 4, "models_autoload": True,
    ...                "build_info": "b7000-abc"})
    {'role': 'router', 'build_info': 'b7000-abc', 'max_instances': '4', 'models_autoload': 'true'}
    """
    out: dict[str, str] = {}
    for key in ("role", "model_alias", "model_path", "model_ftype", "total_slots", "build_info",
                "is_sleeping", "max_instances", "models_autoload"):  # fmt: skip
        value = props.get(key)
        if value is not None:
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    n_ctx = _dict(props.get("default_generation_settings")).get("n_ctx")
    if n_ctx:
        out["n_ctx"] = str(n_ctx)
    if props.get("role") != "router":
        out["has_chat_template"] = str(bool(props.get("chat_template"))).lower()
    return out


def model_names(info: ModelInfo, props: Mapping[str, Any] | None = None) -> set[str]:
    """The names a served model answers to: id, aliases, and its file's stem."""
    names = {info.id, *filter(None, info.metadata.get("aliases", "").split(","))}
    path = (props or {}).get("model_path")
    if isinstance(path, str) and path:
        names.add(PurePath(path).stem)
    return names


def parse_single_model(data: Any, provider: str) -> ModelInfo | None:
    """The served model of a single-model server from ``GET /v1/models`` (its ``data[0]``;
    ``meta`` gives size, trained context, per-slot context...), or ``None``.

    >>> m = parse_single_model({"object": "list", "data": [{"id": "g", "aliases": ["g"],
    ...     "meta": {"n_ctx": 1024, "n_ctx_train": 32768, "size": 5, "ftype": "Q4_K - Medium"}}]}, "x")
    >>> (m.id, m.context_size, m.size_bytes, m.metadata["meta.n_ctx"])
    ('g', 32768, 5, '1024')
    """
    entries = _dict(data).get("data")
    if not isinstance(entries, list) or not entries or not _dict(entries[0]).get("id"):
        return None
    entry = _dict(entries[0])
    meta = _dict(entry.get("meta"))
    metadata = {f"meta.{k}": str(v) for k, v in meta.items()}
    if entry.get("aliases"):
        metadata["aliases"] = ",".join(str(a) for a in entry["aliases"])
    size, ctx, ftype = meta.get("size"), meta.get("n_ctx_train"), meta.get("ftype")
    return ModelInfo(
        id=str(entry["id"]),
        name=str(entry["id"]),
        provider=provider,
        size_bytes=size if isinstance(size, int) else None,
        context_size=ctx if isinstance(ctx, int) else None,
        quantization=str(ftype) if ftype else None,
        format="gguf",
        metadata=metadata,
    )


def parse_router_model(entry: Mapping[str, Any], provider: str) -> ModelInfo:
    """One model of a router's ``GET /models``; ``metadata["state"]`` is its status
    (``unloaded``, ``loading``, ``loaded``, ``sleeping``, ``downloading``).

    >>> parse_router_model({"id": "m", "status": {"value": "loaded"}, "source": "models_dir"},
    ...                    "x").metadata
    {'state': 'loaded', 'source': 'models_dir'}
    """
    status = _dict(entry.get("status"))
    metadata = {"state": str(status.get("value") or "unknown")}
    if status.get("failed"):
        metadata["failed"] = "true"
        metadata["exit_code"] = str(status.get("exit_code"))
    for key in ("source", "owned_by"):
        if entry.get(key) is not None:
            metadata[key] = str(entry[key])
    if entry.get("aliases"):
        metadata["aliases"] = ",".join(str(a) for a in entry["aliases"])
    model_id = str(entry.get("id"))
    return ModelInfo(id=model_id, name=model_id, provider=provider, metadata=metadata)


def parse_router_models(data: Any, provider: str) -> list[ModelInfo]:
    """Every model of a router's ``GET /models`` (entries without an id are skipped)."""
    entries = _dict(data).get("data")
    return [
        parse_router_model(e, provider)
        for e in (entries if isinstance(entries, list) else ())
        if isinstance(e, Mapping) and e.get("id")
    ]


def parse_tokens(data: Any) -> list[int] | None:
    """Token ids from ``POST /tokenize`` (plain ids, or ``{"id","piece"}`` with pieces).

    >>> parse_tokens({"tokens": [9259, {"id": 1902, "piece": " world"}]})
    [9259, 1902]
    """
    tokens = _dict(data).get("tokens")
    if not isinstance(tokens, list):
        return None
    return [int(t["id"]) if isinstance(t, Mapping) else int(t) for t in tokens]


class StreamErrorEvent(Exception):
    """An error event (``data: {"error": {...}}``) inside a native stream; ``body`` is the
    error object."""

    def __init__(self, message: str, body: Any) -> None:
        super().__init__(message)
        self.body = body


@dataclass(slots=True)
class NativeStream:
    """Incremental reader of a native ``/completion`` SSE stream.

    Partial events carry ``content`` and ``tokens``; the last one has ``"stop": true`` (and
    no ``[DONE]`` follows it). :meth:`feed` returns the texts that bytes complete; ``final``
    is set once the last event arrived, ``error`` (a :class:`StreamErrorEvent`) once an error
    event arrived: nothing is read after either. Raises :class:`ValueError` for an event that
    is not a JSON object.

    >>> s = NativeStream()
    >>> s.feed(b'data: {"content":"Hi","tokens":[1],"stop":false}\\n\\n: ping\\n\\ndata: {"con')
    ['Hi']
    >>> s.feed(b'tent":"","stop":true,"stop_type":"eos","tokens_predicted":1}\\n\\n'), s.tokens
    ([], 1)
    >>> s.final["stop_type"]
    'eos'
    """

    decoder: SSEDecoder = field(default_factory=SSEDecoder)
    tokens: int = 0
    final: dict[str, Any] | None = None
    error: StreamErrorEvent | None = None

    def feed(self, data: bytes) -> list[str]:
        """Texts of the events completed by ``data`` (nothing after the final event)."""
        return self._events(self.decoder.feed(data))

    def close(self) -> list[str]:
        """End of stream: an event not ended by a blank line still counts."""
        return self._events(self.decoder.close())

    def _events(self, events: Any) -> list[str]:
        texts: list[str] = []
        for event in events:
            if self.final is not None or self.error is not None or not event.data.strip():
                continue
            obj = json.loads(event.data)
            message = stream_error(obj)
            if message is not None:
                self.error = StreamErrorEvent(message, obj.get("error"))
                continue
            if not isinstance(obj, dict):
                raise ValueError(f"not a JSON object: {event.data[:120]!r}")
            self.tokens += len(obj.get("tokens") or ())
            text = obj.get("content")
            if isinstance(text, str) and text:
                texts.append(text)
            if obj.get("stop"):
                self.final = obj
        return texts
