"""A fake vLLM OpenAI-compatible server (``backend-apis.md`` §4, §6, §8.1 items 19-22, §8.2).

Example::

    from tests.fakes.vllm import FakeVLLM

    with FakeVLLM(models=["meta-llama/Llama-3.2-1B"], ready=False) as fake:
        ...  # connections to fake.url are refused: vLLM is "still loading"
        fake.make_ready()  # now it listens; GET /health answers an empty 200
        fake.allow_runtime_lora = True  # VLLM_ALLOW_RUNTIME_LORA_UPDATING=True

What it does as vLLM does:

* **startup**: the port is bound but not listening until ready (``ready=False`` then
  :meth:`FakeVLLM.make_ready`, or ``ready_after=seconds``): clients get *connection refused*;
* ``GET /health`` (empty 200, or 503 when :attr:`FakeVLLM.engine_dead`), ``GET /version``,
  ``GET /load``, ``GET /metrics`` (Prometheus text, ``vllm:`` names), ``POST /tokenize`` and
  ``POST /detokenize`` (a made-up word tokenizer, consistent with the usage counts);
* ``GET /v1/models`` with ``owned_by:"vllm"``, ``root``, ``parent``, ``max_model_len`` and
  ``permission``; loaded LoRA adapters as extra cards;
* chat and completions (``stop_reason``, role chunk with ``content:""``, the finish reason on
  the last token's chunk, ``include_usage`` and ``continuous_usage_stats``, a usage chunk with
  ``choices: []``, ``[DONE]``; the ``error_in_stream`` fault writes vLLM's error event with
  ``json.dumps`` spacing and still sends ``[DONE]``);
* errors: 404 ``The model `x` does not exist.``; validation errors as 400 (not 422), including
  ``stream_options`` without ``stream: true`` and a non-JSON ``Content-Type``; the context
  length check; FastAPI's ``{"detail":"Not Found"}`` for unknown routes; the envelope nested
  (``{"error":{message,type,param,code}}``, v0.10.1+) or flat (``{"object":"error",...}``),
  chosen by :attr:`FakeVLLM.envelope` (default from ``version``);
* auth (``api_key``) only on ``/v1``, ``/v2``, ``/inference`` and ``/cohere`` paths, Bearer
  only, failing with the flat 401 ``{"error":"Unauthorized"}``;
* LoRA hot-loading (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``) only while
  :attr:`FakeVLLM.allow_runtime_lora` is set (else FastAPI's 404), with plain-text replies.

Known differences: the reference records no full vLLM exchange, so bodies follow vLLM's
pydantic models (field order included) rather than a recording; the LoRA success text comes
with aiohttp's ``application/octet-stream`` Content-Type where vLLM sends none; validation
messages list the errors without pydantic's ``ctx`` entry.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
import uuid
import zlib
from collections.abc import Iterable
from typing import Any, ClassVar

from aiohttp import web

from tests.fakes._server import Fault, Frame, RecordedRequest, StreamRecord
from tests.fakes.openai_server import DEFAULT_TOKENS, UTF8_TOKENS, FakeOpenAIServer, compact

__all__ = ["DEFAULT_TOKENS", "FakeVLLM", "Fault", "RecordedRequest", "StreamRecord", "UTF8_TOKENS"]

SSE_UTF8 = "text/event-stream; charset=utf-8"
JSON = "application/json"
BOS = 1
_ROLE_IDS = {"system": 2, "user": 3, "assistant": 4}
_PIECES = re.compile(r"\s*[\w']+|\s*[^\w\s]")
_TYPES = {400: "BadRequestError", 404: "NotFoundError", 422: "UnprocessableEntityError",
          500: "InternalServerError", 501: "NotImplementedError", 503: "ServiceUnavailableError"}
_PROTECTED = ("/v1", "/v2", "/inference", "/cohere")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


class FakeVLLM(FakeOpenAIServer):
    """Fake ``vllm serve`` on 127.0.0.1 and a free port."""

    label = "fake vLLM"
    owner: ClassVar[str] = "vllm"
    done_after_error: ClassVar[bool] = True

    def __init__(
        self,
        models: Iterable[str] = ("meta-llama/Llama-3.2-1B-Instruct",),
        *,
        tokens: Iterable[str] | None = None,
        version: str = "0.33.0",
        api_key: str | None = None,
        max_model_len: int = 8192,
        ready: bool = True,
        ready_after: float | None = None,
        allow_runtime_lora: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(models, tokens=tokens, api_key=api_key, ssl_context=ssl_context)
        self.version = version
        #: ``"nested"`` (v0.10.1+) or ``"flat"`` (before): the shape of error bodies.
        self.envelope = "flat" if _version_tuple(version) < (0, 10, 1) else "nested"
        self.max_model_len = max_model_len
        #: Served model name -> ``root`` (the model path); defaults to the name.
        self.roots: dict[str, str] = {}
        #: ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``: the LoRA routes answer only when set.
        self.allow_runtime_lora = allow_runtime_lora
        #: Adapter paths that exist (``None``: every path does).
        self.adapter_paths: set[str] | None = None
        #: Loaded LoRA adapters: name -> (path, base model).
        self.adapters: dict[str, tuple[str, str]] = {}
        #: ``--enable-force-include-usage``: usage chunks even when not asked for.
        self.force_include_usage = False
        #: ``GET /health`` answers 503 (the engine died).
        self.engine_dead = False
        self.in_flight = 0
        self.counters: dict[str, float] = {"prompt": 0, "generation": 0, "success": 0}
        self._ready_now = ready and ready_after is None
        self._ready_after = ready_after
        self._sock: socket.socket | None = None
        self.listening = False
        self._vocab: dict[int, str] = {}

    # -- startup: refuse connections until ready ---------------------------------------------
    async def open_site(self, runner: web.AppRunner) -> int:
        """Bind the port now; listen only once ready (vLLM binds before loading the model)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        if self._ready_now:
            await self._listen()
        elif self._ready_after is not None:
            import asyncio

            delay = self._ready_after

            async def later() -> None:
                await self.sleep(delay)
                if not self._is_stopping():
                    await self._listen()

            asyncio.get_running_loop().create_task(later())
        return int(sock.getsockname()[1])

    async def _listen(self) -> None:
        if self.listening or self._runner is None or self._sock is None:
            return
        await web.SockSite(self._runner, self._sock, ssl_context=self._ssl).start()
        self.listening = True

    def make_ready(self) -> None:
        """Start listening (the model has "loaded"); call from the test's thread."""
        import asyncio

        assert self._loop is not None, "start the fake first"
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5.0)

    def stop(self) -> None:
        super().stop()
        if self._sock is not None and not self.listening:
            self._sock.close()  # never handed to a server, so nobody else closes it

    # -- envelopes and auth -------------------------------------------------------------------
    def error_envelope(self, status: int, message: str, error_type: str | None = None) -> Any:
        return self.envelope_of(status, message, error_type)

    def envelope_of(
        self, status: int, message: str, error_type: str | None = None, param: str | None = None
    ) -> dict[str, Any]:
        """vLLM's error body: nested (v0.10.1+) or flat (older)."""
        kind = error_type or _TYPES.get(status, "BadRequestError")
        if self.envelope == "flat":
            return {"object": "error", "message": message, "type": kind, "param": param,
                    "code": status}
        return {"error": {"message": message, "type": kind, "param": param, "code": status}}

    def api_error(
        self, status: int, message: str, error_type: str | None = None, param: str | None = None
    ) -> web.Response:
        """A JSON error answer in the current envelope."""
        body = compact(self.envelope_of(status, message, error_type, param))
        return web.Response(status=status, body=body, content_type=JSON)

    def stream_error_object(self, message: str) -> Any:
        """``error`` of a mid-stream error event (vLLM reports an exception as a 500)."""
        if self.envelope == "flat":  # old servers: create_streaming_error_response(str(e))
            return {"object": "error", "message": message, "type": "BadRequestError",
                    "param": None, "code": 400}
        return {"message": message, "type": "InternalServerError", "param": None, "code": 500}

    def fault_body(self, kind: str, fault: Fault) -> bytes:
        if kind == "error":  # vLLM writes error events with json.dumps' default spacing
            error = fault.get("error")
            if error is None:
                message = fault.get("message", "an error was encountered while running the model")
                error = self.stream_error_object(message)
            return self.sse_frame(json.dumps({"error": error}))
        return super().fault_body(kind, fault)

    def model_not_found(self, name: str) -> web.StreamResponse:
        param = None if self.envelope == "flat" else "model"
        return self.api_error(404, f"The model `{name}` does not exist.", "NotFoundError", param)

    def is_protected(self, request: web.Request) -> bool:
        return request.method != "OPTIONS" and request.path.startswith(_PROTECTED)

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=401, body=b'{"error":"Unauthorized"}', content_type=JSON)

    def not_found(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, body=b'{"detail":"Not Found"}', content_type=JSON)

    def method_not_allowed(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=405, body=b'{"detail":"Method Not Allowed"}', content_type=JSON)

    def validation_error(self, errors: list[Any], param: str | None = None) -> web.Response:
        """FastAPI's request validation error, turned into a 400 as vLLM does."""
        if self.envelope == "flat":  # ErrorResponse(message=str(exc), type="BadRequestError")
            return self.api_error(400, str(errors), "BadRequestError")
        label = "error" if len(errors) == 1 else "errors"
        message = f"{len(errors)} validation {label}:\n" + "".join(f"  {e}\n" for e in errors)
        if param is None and errors and isinstance(errors[0], dict):
            param = ".".join(str(p) for p in errors[0]["loc"])
        return self.api_error(400, message.rstrip(), "Bad Request", param)

    # -- models -------------------------------------------------------------------------------
    def model_entry(self, name: str) -> dict[str, Any]:
        return self._card(name, self.roots.get(name, name), None, self.max_model_len)

    def _card(self, name: str, root: str, parent: str | None, ctx: int | None) -> dict[str, Any]:
        created = int(time.time())
        return {
            "id": name, "object": "model", "created": created, "owned_by": "vllm", "root": root,
            "parent": parent, "max_model_len": ctx,
            "permission": [{
                "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission",
                "created": created, "allow_create_engine": False, "allow_sampling": True,
                "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                "allow_fine_tuning": False, "organization": "*", "group": None,
                "is_blocking": False,
            }],
        }

    def models_body(self) -> dict[str, Any]:
        cards = [self.model_entry(m) for m in list(self.models)]
        cards += [self._card(n, p, b, None) for n, (p, b) in list(self.adapters.items())]
        return {"object": "list", "data": cards}

    def resolve_model(self, body: dict[str, Any]) -> str | web.StreamResponse:
        name = body.get("model")
        if not name:
            return self.models[0]
        if name in self.models or name in self.adapters:
            return str(name)
        return self.model_not_found(str(name))

    # -- tokenizer (made up, but consistent with the usage numbers) ----------------------------
    def token_ids(self, text: str) -> list[int]:
        """Word-piece ids of ``text`` (no special tokens)."""
        ids: list[int] = []
        for piece in _PIECES.findall(text):
            token = 1000 + zlib.crc32(piece.encode()) % 30000
            self._vocab[token] = piece
            ids.append(token)
        return ids

    def chat_ids(self, messages: list[Any], *, generation_prompt: bool = True) -> list[int]:
        """A made-up chat template: role id, content, end id per message."""
        ids: list[int] = []
        for m in messages:
            if isinstance(m, dict):
                ids += [_ROLE_IDS.get(str(m.get("role")), 5), *self.token_ids(str(m.get("content", ""))), 6]
        return ids + ([_ROLE_IDS["assistant"]] if generation_prompt else [])

    def prompt_tokens(self, body: dict[str, Any], *, chat: bool) -> int:  # type: ignore[override]
        if chat:
            return len(self.chat_ids(body.get("messages") or []))
        return 1 + len(self.token_ids(str(body.get("prompt") or "")))

    # -- routes -------------------------------------------------------------------------------
    def add_extra_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/health", self._health, allow_head=False)
        r.add_get("/version", self._version)
        r.add_get("/load", self._load)
        r.add_get("/metrics", self._metrics)
        r.add_post("/tokenize", self._tokenize)
        r.add_post("/detokenize", self._detokenize)
        r.add_post("/v1/load_lora_adapter", self._load_lora)
        r.add_post("/v1/unload_lora_adapter", self._unload_lora)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=503 if self.engine_dead else 200)

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=compact({"version": self.version}), content_type=JSON)

    async def _load(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=compact({"server_load": self.in_flight}), content_type=JSON)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        lines: list[str] = []
        for name in list(self.models):
            labels = f'engine="0",model_name="{name}"'
            for metric, kind, value in (
                ("vllm:num_requests_running", "gauge", float(self.in_flight)),
                ("vllm:num_requests_waiting", "gauge", 0.0),
                ("vllm:kv_cache_usage_perc", "gauge", 0.0),
                ("vllm:prompt_tokens_total", "counter", self.counters["prompt"]),
                ("vllm:generation_tokens_total", "counter", self.counters["generation"]),
                ("vllm:num_preemptions_total", "counter", 0.0),
            ):
                lines += [f"# HELP {metric} {metric[5:]}.", f"# TYPE {metric} {kind}",
                          f"{metric}{{{labels}}} {value}"]
            lines += ["# HELP vllm:request_success_total Count of successfully processed requests.",
                      "# TYPE vllm:request_success_total counter",
                      f'vllm:request_success_total{{{labels},finished_reason="stop"}} '
                      f'{self.counters["success"]}']
            for hist in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                         "vllm:e2e_request_latency_seconds"):
                count = self.counters["success"]
                lines += [f"# HELP {hist} Histogram of {hist[5:]}.", f"# TYPE {hist} histogram",
                          f'{hist}_bucket{{{labels},le="+Inf"}} {count}',
                          f"{hist}_count{{{labels}}} {count}", f"{hist}_sum{{{labels}}} 0.0"]
        response = web.Response(text="\n".join(lines) + "\n")
        response.content_type = "text/plain"
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def read_json(self, request: web.Request) -> dict[str, Any] | web.StreamResponse:
        """The JSON body, after vLLM's Content-Type check (both as 400 validation errors)."""
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            return self.validation_error(["Unsupported Media Type: Only 'application/json' is allowed"])
        raw = await request.read()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            return self.validation_error([{"type": "json_invalid", "loc": ("body", getattr(exc, "pos", 0)),
                                           "msg": "JSON decode error", "input": {}}])
        if not isinstance(data, dict):
            return self.validation_error([{"type": "model_attributes_type", "loc": ("body",),
                                           "msg": "Input should be a valid dictionary or object to "
                                           "extract fields from", "input": data}])
        return data

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self.read_json(request)
        if isinstance(body, web.StreamResponse):
            return body
        if isinstance(body.get("messages"), list):
            ids = self.chat_ids(body["messages"], generation_prompt=body.get("add_generation_prompt", True))
            if body.get("add_special_tokens", False):
                ids = [BOS, *ids]
        elif isinstance(body.get("prompt"), str):
            ids = self.token_ids(body["prompt"])
            if body.get("add_special_tokens", True):
                ids = [BOS, *ids]
        else:
            return self.validation_error([{"type": "missing", "loc": ("body", "prompt"),
                                           "msg": "Field required", "input": body}])
        name = self.resolve_model(body)
        if isinstance(name, web.StreamResponse):
            return name
        strs = [self._vocab.get(i, "<s>") for i in ids] if body.get("return_token_strs") else None
        answer = {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids,
                  "token_strs": strs}
        return await self.respond_body(request, compact(answer), content_type=JSON)

    async def _detokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self.read_json(request)
        if isinstance(body, web.StreamResponse):
            return body
        tokens = body.get("tokens")
        if not isinstance(tokens, list):
            return self.validation_error([{"type": "missing", "loc": ("body", "tokens"),
                                           "msg": "Field required", "input": body}])
        text = "".join(self._vocab.get(t, "") for t in tokens if isinstance(t, int))
        return web.Response(body=compact({"prompt": text}), content_type=JSON)

    # -- LoRA -----------------------------------------------------------------------------------
    async def _lora_body(
        self, request: web.Request, fields: tuple[str, ...]
    ) -> dict[str, Any] | web.StreamResponse:
        if not self.allow_runtime_lora:  # the routes are not registered at all
            return self.not_found(request)
        body = await self.read_json(request)
        if isinstance(body, web.StreamResponse):
            return body
        missing = [{"type": "missing", "loc": ("body", f), "msg": "Field required", "input": body}
                   for f in fields if f not in body]
        return self.validation_error(missing) if missing else body

    async def _load_lora(self, request: web.Request) -> web.StreamResponse:
        body = await self._lora_body(request, ("lora_name", "lora_path"))
        if isinstance(body, web.StreamResponse):
            return body
        name, path = str(body["lora_name"]), str(body["lora_path"])
        if not name or not path:
            return self.api_error(400, "Both 'lora_name' and 'lora_path' must be provided.",
                                  "InvalidUserInput")
        if name in self.models:
            return self.api_error(400, f"The lora adapter '{name}' conflicts with a served base model.",
                                  "InvalidUserInput")
        if name in self.adapters and not body.get("load_inplace", False):
            return self.api_error(
                400, f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.", "InvalidUserInput")
        if self.adapter_paths is not None and path not in self.adapter_paths:
            return self.api_error(404, f"Loading lora {name} failed: No adapter found for {path}",
                                  "NotFoundError")
        self.adapters[name] = (path, self.models[0])
        return web.Response(body=f"Success: LoRA adapter '{name}' added successfully.".encode())

    async def _unload_lora(self, request: web.Request) -> web.StreamResponse:
        body = await self._lora_body(request, ("lora_name",))
        if isinstance(body, web.StreamResponse):
            return body
        name = str(body["lora_name"])
        if not name:
            return self.api_error(400, "'lora_name' needs to be provided to unload a LoRA adapter.",
                                  "InvalidUserInput")
        if name not in self.adapters:
            return self.api_error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del self.adapters[name]
        return web.Response(body=f"Success: LoRA adapter '{name}' removed successfully.".encode())

    # -- generation -----------------------------------------------------------------------------
    def check_request(self, body: dict[str, Any], *, chat: bool) -> web.StreamResponse | None:
        """Pydantic's field checks, then vLLM's model validators (all 400)."""
        errors: list[dict[str, Any]] = []
        if chat and "messages" not in body:
            errors.append({"type": "missing", "loc": ("body", "messages"), "msg": "Field required",
                           "input": body})
        elif chat and not isinstance(body["messages"], list):
            errors.append({"type": "list_type", "loc": ("body", "messages"),
                           "msg": "Input should be a valid list", "input": body["messages"]})
        for key in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = body.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                errors.append({"type": "float_parsing", "loc": ("body", key),
                               "msg": "Input should be a valid number, unable to parse string as a "
                               "number", "input": value})
        for key in ("max_tokens", "max_completion_tokens", "top_k", "seed"):
            value = body.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                errors.append({"type": "int_parsing", "loc": ("body", key),
                               "msg": "Input should be a valid integer, unable to parse string as an "
                               "integer", "input": value})
        if errors:
            return self.validation_error(errors)
        if body.get("stream_options") and not body.get("stream"):
            text = "Stream options can only be defined when `stream=True`."
            return self.validation_error([{"type": "value_error", "loc": ("body",),
                                           "msg": f"Value error, {text}", "input": body}],
                                         param="stream_options")
        if not chat and body.get("prompt") in (None, ""):
            text = "Either prompt or prompt_embeds must be provided and non-empty."
            return self.validation_error([{"type": "value_error", "loc": ("body",),
                                           "msg": f"Value error, {text}", "input": body}])
        return None

    def pick_tokens(self, body: dict[str, Any], fault: Fault | None) -> tuple[list[str], str, str | None]:
        """Tokens to send, finish reason and ``stop_reason`` (the stop string that matched)."""
        tokens = list(self.tokens)
        if fault is not None and fault.kind == "split_utf8":
            tokens = list(fault.get("tokens", UTF8_TOKENS))
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        reason, stop_reason = "stop", None
        for i, token in enumerate(tokens):
            matched = next((s for s in stops if s and s in token), None)
            if matched is not None:
                tokens, stop_reason = tokens[:i], matched
                break
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            tokens, reason, stop_reason = tokens[:limit], "length", None
        return tokens, reason, stop_reason

    async def generation(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body = await self.read_json(request)
        if isinstance(body, web.StreamResponse):
            return body
        invalid = self.check_request(body, chat=chat)
        if invalid is not None:
            return invalid
        name = self.resolve_model(body)
        if isinstance(name, web.StreamResponse):
            return name
        fault = self.fault_of(request)
        tokens, reason, stop_reason = self.pick_tokens(body, fault)
        prompt = self.prompt_tokens(body, chat=chat)
        wanted = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        if prompt + wanted > self.max_model_len:
            return self.api_error(
                400, f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt + wanted} tokens ({prompt} in the messages, {wanted} in the "
                "completion). Please reduce the length of the messages or completion.")
        self.counters["prompt"] += prompt
        self.counters["generation"] += len(tokens)
        self.counters["success"] += 1
        if not body.get("stream"):
            answer = self.vllm_answer(name, tokens, reason, stop_reason, prompt, chat=chat)
            return await self.respond_body(request, compact(answer), content_type=JSON)
        frames = self.vllm_frames(body, name, tokens, reason, stop_reason, prompt, chat, fault)
        self.in_flight += 1
        try:
            return await self.respond_stream(request, frames, content_type=SSE_UTF8,
                                             delay=self.token_delay)
        finally:
            self.in_flight -= 1

    @staticmethod
    def _usage(prompt: int, completion: int) -> dict[str, int]:
        return {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                "completion_tokens": completion}

    def vllm_answer(self, name: str, tokens: list[str], reason: str, stop_reason: str | None,
                    prompt: int, *, chat: bool) -> dict[str, Any]:
        """A non-streamed answer, with vLLM's extra fields."""
        text = "".join(tokens)
        usage = {**self._usage(prompt, len(tokens)), "prompt_tokens_details": None}
        if chat:
            message: dict[str, Any] = {
                "role": "assistant", "content": text, "refusal": None, "annotations": None,
                "audio": None, "function_call": None, "tool_calls": [], "reasoning": None}
            return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                    "created": int(time.time()), "model": name,
                    "choices": [{"index": 0, "message": message, "logprobs": None,
                                 "finish_reason": reason, "stop_reason": stop_reason,
                                 "token_ids": None}],
                    "service_tier": None, "system_fingerprint": None, "usage": usage,
                    "prompt_logprobs": None, "prompt_token_ids": None, "kv_transfer_params": None}
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason,
                             "stop_reason": stop_reason, "token_ids": None, "prompt_logprobs": None,
                             "prompt_token_ids": None}],
                "service_tier": None, "system_fingerprint": None, "usage": usage,
                "kv_transfer_params": None}

    def vllm_frames(self, body: dict[str, Any], name: str, tokens: list[str], reason: str,
                    stop_reason: str | None, prompt: int, chat: bool,
                    fault: Fault | None) -> list[Frame]:
        """SSE frames as vLLM streams them (chunks serialized with ``exclude_unset``)."""
        raw = body.get("stream_options")
        options: dict[str, Any] = raw if isinstance(raw, dict) else {}
        usage = bool(options.get("include_usage")) or self.force_include_usage
        continuous = usage and (bool(options.get("continuous_usage_stats")) or self.force_include_usage)
        finish = fault is None or fault.kind != "no_done" or fault.get("finish", True)
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"
        events: list[dict[str, Any]] = []

        def chunk(choices: list[dict[str, Any]], done: int) -> None:
            event = {"id": cid, "object": kind, "created": created, "model": name, "choices": choices}
            if continuous:
                event["usage"] = self._usage(prompt, done)
            events.append(event)

        if chat:
            chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None}], 0)
        for i, token in enumerate(tokens or [""]):
            last = i == max(len(tokens), 1) - 1 and finish
            choice: dict[str, Any] = ({"index": 0, "delta": {"content": token}, "logprobs": None}
                                      if chat else {"index": 0, "text": token, "logprobs": None})
            choice["finish_reason"] = reason if last else None
            if last or not chat:
                choice["stop_reason"] = stop_reason if last else None
            chunk([choice], min(i + 1, len(tokens)))
        if usage and finish:
            events.append({"id": cid, "object": kind, "created": created, "model": name,
                           "choices": [], "usage": self._usage(prompt, len(tokens))})
        frames: list[Frame] = []
        for index, event in enumerate(events):
            frames.append(self.sse_frame(compact(event).decode()))
            if self.keepalive_every and (index + 1) % self.keepalive_every == 0:
                frames.append(self.sse_frame("keep-alive", comment=True))
        frames.append(self.sse_frame("[DONE]"))
        return frames
