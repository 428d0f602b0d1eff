"""A fake OpenAI-compatible server (``backend-apis.md`` §2.5, §3.6, §4.5, §5, §7.2, §8.2).

The base of the LocalAI, llama-server, vLLM and LM Studio fakes: each subclass changes the
hooks below (error envelope, not-found answer, ``[DONE]`` after an error, auth, extra routes,
model-list entries) and keeps everything else.

Example::

    from tests.fakes.openai_server import FakeOpenAIServer

    with FakeOpenAIServer(models=["tiny"]) as fake:
        fake.tokens = ["Hello", " world"]
        fake.fault("/v1/chat/completions", "error_in_stream", after=2, done=False)
        ...  # talk to fake.url + "/v1"
        assert fake.requests[-1].json["stream"] is True

Knobs (plain attributes): ``models``, ``tokens``, ``token_delay``, ``keepalive_every``,
``api_key``, ``event_name`` (an ``event:`` line on every data event), ``event_ids`` (``id:``
lines), ``retry_ms`` (a ``retry:`` line first), ``line_ending`` (``"\\n"``, ``"\\r\\n"``,
``"\\r"``), ``include_role_chunk``.

Faults: every kind of :meth:`FakeServer.fault`, with SSE frames: ``malformed_frame`` writes
``data: <line>``; ``error_in_stream`` writes ``data: {"error": ...}`` (params ``message``,
``error`` = the raw error value, e.g. a string or an object without message, and ``done`` =
whether ``data: [DONE]`` follows, default :attr:`FakeOpenAIServer.done_after_error`);
``no_done`` drops ``[DONE]`` only (``finish=False`` also drops the finish and usage
chunks); ``split_utf8`` streams :data:`UTF8_TOKENS` split inside characters.
"""

from __future__ import annotations

import itertools
import json
import ssl
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from aiohttp import web

from tests.fakes._server import FakeServer, Fault, Frame, RecordedRequest, StreamRecord

__all__ = [
    "DEFAULT_TOKENS",
    "SSE",
    "UTF8_TOKENS",
    "FakeOpenAIServer",
    "Fault",
    "Frame",
    "RecordedRequest",
    "StreamRecord",
]

SSE = "text/event-stream"
JSON_UTF8 = "application/json; charset=utf-8"
DEFAULT_TOKENS = ["The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", "."]
#: Tokens streamed by the ``split_utf8`` fault (every kind of multi-byte UTF-8 sequence).
UTF8_TOKENS = ["Grüße", " aus", " Köln", " —", " 日本語", "の", "テキスト", " 🎉", " известни"]
DONE = "[DONE]"


def compact(obj: Any) -> bytes:
    """JSON without spaces, UTF-8 kept as is (as Go and C++ servers write it)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class FakeOpenAIServer(FakeServer):
    """A generic OpenAI-compatible server: ``/v1/models``, chat and completions (SSE)."""

    label = "fake OpenAI-compatible server"
    #: ``owned_by`` of model entries.
    owner: ClassVar[str] = "papin-fake"
    #: Path prefixes under which the OpenAI routes are served (LocalAI also serves ``""``).
    route_prefixes: ClassVar[tuple[str, ...]] = ("/v1",)
    #: Whether ``data: [DONE]`` follows an error event (vLLM, LocalAI: yes; llama-server: no).
    done_after_error: ClassVar[bool] = True
    #: Headers that may carry the key: ``authorization`` (Bearer) and/or ``x-api-key``...
    auth_headers: ClassVar[tuple[str, ...]] = ("authorization",)
    #: Paths that need no key even when ``api_key`` is set.
    public_paths: ClassVar[frozenset[str]] = frozenset()
    #: HTTP status and message of an unknown model (``{name}`` is the model as sent).
    not_found_status: int = 404
    not_found_text: str = "The model `{name}` does not exist."
    #: ``delta.content`` of the first (role) chat chunk: ``None`` (llama-server) or ``""`` (vLLM).
    first_chunk_content: ClassVar[str | None] = ""

    def __init__(
        self,
        models: Iterable[str] = ("fake-model",),
        *,
        tokens: Iterable[str] | None = None,
        api_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.models: list[str] = list(models)
        self.tokens: list[str] = list(tokens if tokens is not None else DEFAULT_TOKENS)
        self.token_delay = 0.0
        #: Write ``: keep-alive`` after every N data events (0: never).
        self.keepalive_every = 0
        self.api_key = api_key
        self.event_name: str | None = None
        self.event_ids = False
        self.retry_ms: int | None = None
        self.line_ending = "\n"
        self.include_role_chunk = True
        #: Check ``model`` against :attr:`models` (single-model llama-server ignores it).
        self.validate_model = True
        self._ids = itertools.count(1)

    # -- hooks: envelopes -----------------------------------------------------------------
    def error_envelope(self, status: int, message: str, error_type: str | None = None) -> Any:
        """The JSON body of an HTTP error (OpenAI's nested envelope by default)."""
        types = {400: "invalid_request_error", 401: "authentication_error",
                 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
                 503: "unavailable_error"}
        kind = error_type or types.get(status, "server_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": status}}

    def error(
        self,
        status: int,
        message: str,
        error_type: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """An HTTP error answer built from :meth:`error_envelope`."""
        body = self.error_envelope(status, message, error_type)
        data = body if isinstance(body, bytes) else (
            body.encode() if isinstance(body, str) else compact(body)
        )
        response = web.Response(status=status, body=data, headers=headers)
        response.content_type = "application/json" if not isinstance(body, str) else "text/plain"
        return response

    def status_fault_body(self, status: int, message: str) -> Any:
        return self.error_envelope(status, message)

    def stream_error_object(self, message: str) -> Any:
        """The value of ``error`` in an error event inside a 200 stream."""
        return {"message": message, "type": "server_error", "param": None, "code": 500}

    def model_not_found(self, name: str) -> web.StreamResponse:
        """The answer for an unknown model."""
        return self.error(self.not_found_status, self.not_found_text.format(name=name))

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        """The answer for a missing or wrong key."""
        return self.error(401, "Invalid API Key", "authentication_error",
                          headers={"WWW-Authenticate": "Bearer"})

    def model_entry(self, name: str) -> dict[str, Any]:
        """One entry of ``GET /v1/models``."""
        return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": self.owner}

    def models_body(self) -> dict[str, Any]:
        """The body of ``GET /v1/models``."""
        return {"object": "list", "data": [self.model_entry(m) for m in list(self.models)]}

    # -- hooks: auth and routes -----------------------------------------------------------
    def is_protected(self, request: web.Request) -> bool:
        """Whether ``request`` needs the key (when :attr:`api_key` is set)."""
        return request.method != "OPTIONS" and request.path not in self.public_paths

    def key_of(self, request: web.Request) -> str | None:
        """The key the request carries in one of :attr:`auth_headers`."""
        for header in self.auth_headers:
            value = request.headers.get(header)
            if value is None:
                continue
            if header.lower() == "authorization":
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer" and token:
                    return token.strip()
                continue
            return value.strip()
        return None

    def check_auth(self, request: web.Request) -> web.StreamResponse | None:
        if self.api_key is None or not self.is_protected(request):
            return None
        if self.key_of(request) == self.api_key:
            return None
        return self.unauthorized(request)

    def add_routes(self, app: web.Application) -> None:
        for prefix in self.route_prefixes:
            app.router.add_get(f"{prefix}/models", self.handle_models)
            app.router.add_post(f"{prefix}/chat/completions", self.handle_chat)
            app.router.add_post(f"{prefix}/completions", self.handle_completions)
        self.add_extra_routes(app)

    def add_extra_routes(self, app: web.Application) -> None:
        """Register a backend's own routes (health, version, management...)."""

    def not_found(self, request: web.Request) -> web.StreamResponse:
        return self.error(404, "Not Found")

    # -- SSE framing ----------------------------------------------------------------------
    def sse_frame(self, data: str, *, comment: bool = False) -> bytes:
        """One SSE event (or comment) with the configured fields and line ending."""
        end = self.line_ending
        if comment:
            return f": {data}{end}{end}".encode()
        lines: list[str] = []
        if self.event_name is not None:
            lines.append(f"event: {self.event_name}")
        if self.event_ids:
            lines.append(f"id: {next(self._ids)}")
        lines.extend(f"data: {part}" for part in data.split("\n"))
        return (end.join(lines) + end + end).encode()

    def fault_body(self, kind: str, fault: Fault) -> bytes:
        if kind == "keepalive":
            return self.sse_frame("keep-alive", comment=True)
        if kind == "error":
            error = fault.get("error")
            if error is None:
                message = fault.get("message", "an error was encountered while running the model")
                error = self.stream_error_object(message)
            return self.sse_frame(compact({"error": error}).decode())
        line = fault.get("line", "this is not json")
        text = line.decode() if isinstance(line, bytes) else str(line)
        return self.sse_frame(text)

    def error_trailer(self, fault: Fault) -> bytes:
        return self.sse_frame(DONE) if fault.get("done", self.done_after_error) else b""

    # -- routes ---------------------------------------------------------------------------
    async def handle_models(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models``."""
        return await self.respond_body(request, compact(self.models_body()), content_type=JSON_UTF8)

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        return await self.generation(request, chat=True)

    async def handle_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``."""
        return await self.generation(request, chat=False)

    async def parse_body(self, request: web.Request) -> dict[str, Any] | web.StreamResponse:
        """The JSON request body, or an error answer."""
        raw = await request.read()
        try:
            data = json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            return self.error(400, f"failed parsing request body: {exc}")
        if not isinstance(data, dict):
            return self.error(400, "The request body must be a JSON object.")
        return data

    def resolve_model(self, body: dict[str, Any]) -> str | web.StreamResponse:
        """The model a request means (the first one when ``model`` is missing)."""
        name = body.get("model")
        if not name:
            if not self.models:
                return self.error(400, "No model given and none is loaded.")
            return self.models[0]
        name = str(name)
        if self.validate_model and name not in self.models:
            return self.model_not_found(name)
        return name

    def validate(self, body: dict[str, Any], *, chat: bool) -> web.StreamResponse | None:
        """A 400 answer for an invalid request, else ``None``."""
        if chat and not isinstance(body.get("messages"), list):
            return self.error(400, "'messages' is a required property")
        if not chat and not isinstance(body.get("prompt"), str | list):
            return self.error(400, "'prompt' is a required property")
        return None

    def select_tokens(self, body: dict[str, Any], fault: Fault | None) -> tuple[list[str], str]:
        """The tokens to send and the finish reason (``max_tokens`` and ``stop`` applied)."""
        tokens = list(self.tokens)
        if fault is not None and fault.kind == "split_utf8":
            tokens = list(fault.get("tokens", UTF8_TOKENS))
        reason = "stop"
        stops = body.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        for i, token in enumerate(tokens):
            if any(s and s in token for s in stops):
                tokens = tokens[:i]
                break
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            tokens, reason = tokens[:limit], "length"
        return tokens, reason

    @staticmethod
    def prompt_tokens(body: dict[str, Any], *, chat: bool) -> int:
        """A made-up prompt token count."""
        if chat:
            return sum(len(str(m.get("content", "")).split()) + 4
                       for m in body.get("messages") or [] if isinstance(m, dict))
        return len(str(body.get("prompt") or "").split()) + 1

    def chunk(self, chat: bool, name: str, cid: str, choice: dict[str, Any] | None) -> dict[str, Any]:
        """One stream chunk around ``choice`` (``None``: the usage-only chunk)."""
        return {
            "id": cid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": name,
            "choices": [] if choice is None else [choice],
        }

    def stream_frames(
        self, body: dict[str, Any], name: str, tokens: list[str], reason: str, *, chat: bool,
        fault: Fault | None,
    ) -> list[Frame]:
        """The frames of a streamed answer, ``[DONE]`` last."""
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{next(self._ids)}"
        frames: list[Frame] = []
        if self.retry_ms is not None:
            frames.append(f"retry: {self.retry_ms}{self.line_ending}".encode())
        events: list[dict[str, Any]] = []
        if chat and self.include_role_chunk:
            delta = {"role": "assistant", "content": self.first_chunk_content}
            events.append(self.chunk(chat, name, cid,
                                     {"index": 0, "delta": delta, "finish_reason": None}))
        for token in tokens:
            choice = ({"index": 0, "delta": {"content": token}, "finish_reason": None} if chat
                      else {"index": 0, "text": token, "finish_reason": None})
            events.append(self.chunk(chat, name, cid, choice))
        if fault is None or fault.kind != "no_done" or fault.get("finish", True):
            final = ({"index": 0, "delta": {}, "finish_reason": reason} if chat
                     else {"index": 0, "text": "", "finish_reason": reason})
            events.append(self.chunk(chat, name, cid, final))
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage"):
                usage_chunk = self.chunk(chat, name, cid, None)
                usage_chunk["usage"] = self.usage(body, tokens, chat=chat)
                events.append(usage_chunk)
        for index, event in enumerate(events):
            frames.append(self.sse_frame(compact(event).decode()))
            if self.keepalive_every and (index + 1) % self.keepalive_every == 0:
                frames.append(self.sse_frame("keep-alive", comment=True))
        frames.append(self.sse_frame(DONE))
        return frames

    def usage(self, body: dict[str, Any], tokens: list[str], *, chat: bool) -> dict[str, int]:
        """The ``usage`` object."""
        prompt = self.prompt_tokens(body, chat=chat)
        return {"prompt_tokens": prompt, "completion_tokens": len(tokens),
                "total_tokens": prompt + len(tokens)}

    def whole_answer(
        self, body: dict[str, Any], name: str, tokens: list[str], reason: str, *, chat: bool
    ) -> dict[str, Any]:
        """The body of a non-streamed answer."""
        text = "".join(tokens)
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text},
             "finish_reason": reason, "logprobs": None}
            if chat else {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
        )
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{next(self._ids)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": name,
            "choices": [choice],
            "usage": self.usage(body, tokens, chat=chat),
        }

    async def generation(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        """Chat or completion, streamed (SSE) or not."""
        body = await self.parse_body(request)
        if isinstance(body, web.StreamResponse):
            return body
        name = self.resolve_model(body)
        if isinstance(name, web.StreamResponse):
            return name
        invalid = self.validate(body, chat=chat)
        if invalid is not None:
            return invalid
        fault = self.fault_of(request)
        tokens, reason = self.select_tokens(body, fault)
        if not body.get("stream"):
            answer = self.whole_answer(body, name, tokens, reason, chat=chat)
            return await self.respond_body(request, compact(answer), content_type=JSON_UTF8)
        frames = self.stream_frames(body, name, tokens, reason, chat=chat, fault=fault)
        return await self.respond_stream(
            request, frames, content_type=SSE, delay=self.token_delay,
            headers={"Cache-Control": "no-cache"},
        )
