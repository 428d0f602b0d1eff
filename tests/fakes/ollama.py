"""A fake Ollama server that follows the wire reference (``backend-apis.md`` §1, §8.2).

Example::

    from tests.fakes.ollama import FakeOllama

    with FakeOllama(models=["llama3.2:latest"]) as fake:
        fake.tokens = ["Hello", " world", "!"]
        fake.fault("/api/generate", "error_in_stream", after=2)
        ...  # talk to fake.url
        assert fake.requests[-1].json["model"] == "llama3.2"

Everything a test may want to change is a plain attribute: ``models``, ``loaded``, ``pullable``,
``tokens``, ``token_delay``, ``pull_delay``, ``pull_updates``, ``not_found_text``, ``api_key``.

From :class:`tests.fakes._server.FakeServer` come the faults (``fault(path, kind, **params)``,
one-shot unless ``times=N``) and the evidence: ``requests`` (``.method .path .json .headers``),
``streams`` / ``last_stream`` (frames ``planned`` and ``sent``, ``completed``,
``disconnected``), ``disconnects``, ``await wait_for_disconnects(n)``, ``open_connections``
and ``connections_opened``.
"""

from __future__ import annotations

import hashlib
import json
import math
import ssl
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from tests.fakes._server import (
    FakeServer,
    Fault,
    Frame,
    RecordedRequest,
    StreamRecord,
)
from tests.fakes.ollama_models import (
    FakeLoadedModel,
    FakeModel,
    KeepAliveError,
    compact,
    layer_digest,
    now_rfc3339,
    parse_keep_alive,
    short_name,
)

__all__ = [
    "DEFAULT_TOKENS",
    "EVAL_NS_PER_TOKEN",
    "NDJSON",
    "UTF8_TOKENS",
    "FakeLoadedModel",
    "FakeModel",
    "FakeOllama",
    "Fault",
    "RecordedRequest",
    "StreamRecord",
]

NDJSON = "application/x-ndjson"
JSON_UTF8 = "application/json; charset=utf-8"
DEFAULT_TOKENS = ["The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", "."]
#: Tokens streamed by the ``split_utf8`` fault (every kind of multi-byte UTF-8 sequence).
UTF8_TOKENS = ["Grüße", " aus", " Köln", " —", " 日本語", "の", "テキスト", " 🎉", " ok"]
#: Reported generation speed: 20 ms per token, so 50 tokens/s.
EVAL_NS_PER_TOKEN = 20_000_000
LOAD_NS = 6_338_219
PROMPT_NS_PER_TOKEN = 5_000_000
PULL_NOT_FOUND = "pull model manifest: file does not exist"

_FLOAT_OPTIONS = ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty",
                  "presence_penalty", "frequency_penalty")
_INT_OPTIONS = ("num_predict", "top_k", "num_ctx", "seed", "num_gpu", "num_thread", "num_batch",
                "num_keep", "repeat_last_n")


def _go_json_error(body: bytes, exc: json.JSONDecodeError) -> str:
    """Roughly what Go's encoding/json says about a malformed document."""
    text = body.decode("utf-8", "replace")
    if exc.pos >= len(text.rstrip()):
        return "unexpected EOF"
    return f"invalid character '{text[exc.pos]}' looking for beginning of value"


class FakeOllama(FakeServer):
    """Fake Ollama (``ollama serve``) on 127.0.0.1 and a free port."""

    label = "fake Ollama"

    def __init__(
        self,
        models: Iterable[str] = (),
        *,
        tokens: Iterable[str] | None = None,
        version: str = "0.12.6",
        api_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.version = version
        self.models: dict[str, FakeModel] = {}
        self.loaded: dict[str, FakeLoadedModel] = {}
        self.pullable: dict[str, list[int]] = {}
        self.tokens: list[str] = list(tokens if tokens is not None else DEFAULT_TOKENS)
        self.token_delay = 0.0
        self.pull_delay = 0.0
        self.pull_updates = 4
        self.default_keep_alive: float | str = "5m"
        #: Text of generate/chat 404s; ``{name}`` is the model as sent (older servers differ).
        self.not_found_text = "model '{name}' not found"
        #: When set, every ``/api`` request needs ``Authorization: Bearer <api_key>``.
        self.api_key = api_key
        for name in models:
            self.add_model(name)

    # -- state ----------------------------------------------------------------------------
    def add_model(self, name: str, **fields: Any) -> FakeModel:
        """Install a model (``size``, ``family``, ``parameter_size``, ``quantization``,
        ``context_length``, ``capabilities``...); replaces one with the same name."""
        model = FakeModel(short_name(name), **fields)
        self.models[model.name] = model
        return model

    def find_model(self, name: str) -> FakeModel | None:
        """The installed model ``name`` means (``x`` = ``x:latest``, any case)."""
        wanted = short_name(name).lower()
        return next((m for key, m in list(self.models.items()) if key.lower() == wanted), None)

    def _pullable_layers(self, name: str) -> list[int] | None:
        wanted = short_name(name).lower()
        for key, layers in list(self.pullable.items()):
            if short_name(key).lower() == wanted:
                return list(layers)
        return None

    def _load(self, model: FakeModel, keep: float | None) -> None:
        expires = None if keep is None else time.time() + keep
        self.loaded[model.name] = FakeLoadedModel(
            name=model.name,
            size=model.size + 512 * 1024 * 1024,
            size_vram=0,
            context_length=min(model.context_length, 4096),
            expires=expires,
        )

    # -- plumbing -------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self._root)
        r.add_get("/api/version", self._version)
        r.add_get("/api/tags", self._tags)
        r.add_post("/api/show", self._show)
        r.add_get("/api/ps", self._ps, allow_head=False)
        r.add_post("/api/generate", self._generate)
        r.add_post("/api/chat", self._chat)
        r.add_post("/api/pull", self._pull)
        r.add_delete("/api/delete", self._delete)
        r.add_post("/api/copy", self._copy)
        r.add_post("/api/embed", self._embed)
        r.add_post("/api/embeddings", self._embeddings)

    def check_auth(self, request: web.Request) -> web.StreamResponse | None:
        if self.api_key is None or not request.path.startswith("/api/"):
            return None
        if request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        return self.error(401, "unauthorized")

    @staticmethod
    def error(status: int, text: str) -> web.Response:
        """Ollama's error answer: ``{"error": text}``."""
        return web.Response(
            status=status, body=compact({"error": text}), content_type="application/json",
            charset="utf-8",
        )

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        if not raw.strip():
            return self.error(400, "missing request body")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            return self.error(400, _go_json_error(raw, exc))
        if not isinstance(data, dict):
            kind = "array" if isinstance(data, list) else type(data).__name__
            return self.error(400, f"json: cannot unmarshal {kind} into Go value of type api.Request")
        return data

    async def _json(self, request: web.Request, obj: Any) -> web.StreamResponse:
        return await self.respond_body(request, compact(obj), content_type=JSON_UTF8)

    # -- simple endpoints -----------------------------------------------------------------
    async def _root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return await self._json(request, {"version": self.version})

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        return await self._json(request, {"models": [m.tags_entry() for m in list(self.models.values())]})

    async def _ps(self, request: web.Request) -> web.StreamResponse:
        now = time.time()
        for name, entry in list(self.loaded.items()):
            if entry.expires is not None and entry.expires <= now:
                self.loaded.pop(name, None)
        entries = sorted(self.loaded.values(), key=lambda e: -(e.expires or math.inf))
        body = [e.ps_entry(self.models.get(e.name)) for e in entries]
        return await self._json(request, {"models": body})

    async def _show(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return self.error(400, "model is required")
        model = self.find_model(name)
        if model is None:
            return self.error(404, f"model '{short_name(name)}' not found")
        return await self._json(request, model.show_body())

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("model") or body.get("name") or ""
        if not isinstance(name, str) or not name:
            return self.error(400, f'name "{name}" is invalid')
        model = self.find_model(name)
        if model is None:
            return self.error(404, f"model '{name}' not found")
        self.models.pop(model.name, None)
        self.loaded.pop(model.name, None)
        return web.Response(status=200)

    async def _copy(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        source, dest = body.get("source") or "", body.get("destination") or ""
        model = self.find_model(str(source)) if source else None
        if model is None:
            return self.error(404, f'model "{source}" not found')
        if not isinstance(dest, str) or not dest:
            return self.error(400, f'destination "{dest}" is invalid')
        copied = FakeModel(**{f: getattr(model, f) for f in FakeModel.__dataclass_fields__})
        copied.name = short_name(dest)
        self.models[copied.name] = copied
        return web.Response(status=200)

    # -- embeddings -----------------------------------------------------------------------
    @staticmethod
    def _vector(text: str, dims: int) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()
        return [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dims)]

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        name = str(body.get("model") or "")
        if not name:
            return self.error(400, "model is required")
        if self.find_model(name) is None:
            return self.error(404, f'model "{name}" not found, try pulling it first')
        inputs = body.get("input") or []
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return self.error(400, "invalid input type")
        dims = int(body.get("dimensions") or 8)
        vectors = []
        for text in inputs:
            vec = self._vector(text, dims)
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            vectors.append([v / norm for v in vec])
        if not vectors:
            return await self._json(request, {"model": name, "embeddings": []})
        return await self._json(
            request,
            {"model": name, "embeddings": vectors, "total_duration": 14_143_917,
             "load_duration": 1_019_500, "prompt_eval_count": sum(len(t.split()) for t in inputs)},
        )

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        name = str(body.get("model") or "")
        if not name:
            return self.error(400, "model is required")
        if self.find_model(name) is None:
            return self.error(404, f'model "{name}" not found, try pulling it first')
        prompt = str(body.get("prompt") or "")
        return await self._json(request, {"embedding": self._vector(prompt, 8) if prompt else []})

    # -- generation -----------------------------------------------------------------------
    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, chat=True)

    @staticmethod
    def _check_options(options: Any) -> str | None:
        if options is None:
            return None
        if not isinstance(options, dict):
            return "json: cannot unmarshal options"
        for key in _FLOAT_OPTIONS:
            value = options.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                return f'option "{key}" must be of type float32'
        for key in _INT_OPTIONS:
            value = options.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value != int(value)
            ):
                return f'option "{key}" must be of type integer'
        return None

    def _select_tokens(self, fault: Fault | None, options: dict[str, Any]) -> tuple[list[str], str]:
        tokens = list(self.tokens)
        if fault is not None and fault.kind == "split_utf8":
            tokens = list(fault.get("tokens", UTF8_TOKENS))
        reason = "stop"
        stops = options.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        for i, token in enumerate(tokens):
            if any(s and s in token for s in stops):
                tokens = tokens[:i]
                break
        limit = options.get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            tokens, reason = tokens[:limit], "length"
        return tokens, reason

    def _message(self, name: str, chat: bool, text: str) -> dict[str, Any]:
        obj: dict[str, Any] = {"model": name, "created_at": now_rfc3339()}
        if chat:
            obj["message"] = {"role": "assistant", "content": text}
        else:
            obj["response"] = text
        return obj

    def _final(
        self, name: str, chat: bool, text: str, count: int, reason: str, prompt_tokens: int,
        raw: bool,
    ) -> dict[str, Any]:
        obj = self._message(name, chat, text)
        obj["done"] = True
        obj["done_reason"] = reason
        if not chat and not raw:
            obj["context"] = [128006, 882, 128007, 271]
        eval_ns = count * EVAL_NS_PER_TOKEN
        prompt_ns = prompt_tokens * PROMPT_NS_PER_TOKEN
        obj["total_duration"] = LOAD_NS + prompt_ns + eval_ns + 1_000_000
        obj["load_duration"] = LOAD_NS
        metrics = {"prompt_eval_count": prompt_tokens, "prompt_eval_duration": prompt_ns,
                   "eval_count": count, "eval_duration": eval_ns}
        obj.update({k: v for k, v in metrics.items() if v})  # omitempty
        return obj

    async def _generation(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return self.error(400, "model is required")
        model = self.find_model(name)
        if model is None:
            return self.error(404, self.not_found_text.format(name=name))
        try:
            keep = parse_keep_alive(body.get("keep_alive", self.default_keep_alive))
        except KeepAliveError as exc:
            return self.error(400, str(exc))
        problem = self._check_options(body.get("options"))
        if problem is not None:
            return self.error(500, problem)
        options: dict[str, Any] = body.get("options") or {}
        stream = body.get("stream") is not False
        if chat:
            messages = body.get("messages") or []
            empty = not messages
            prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in messages
                                if isinstance(m, dict))
        else:
            empty = not body.get("prompt") and not body.get("images")
            prompt_tokens = len(str(body.get("prompt") or "").split()) + 1
        if empty:  # load or unload only
            if keep == 0:
                self.loaded.pop(model.name, None)
                reason = "unload"
            else:
                self._load(model, keep)
                reason = "load"
            obj = self._message(name, chat, "")
            obj.update(done=True, done_reason=reason)
            return await self._json(request, obj)
        self._load(model, keep)
        tokens, reason = self._select_tokens(self.fault_of(request), options)
        raw = bool(body.get("raw"))
        try:
            if not stream:
                text = "".join(tokens)
                final = self._final(name, chat, text, len(tokens), reason, prompt_tokens, raw)
                return await self._json(request, final)
            frames: list[Frame] = [
                compact({**self._message(name, chat, t), "done": False}) + b"\n" for t in tokens
            ]
            final = compact(self._final(name, chat, "", len(tokens), reason, prompt_tokens, raw)) + b"\n"

            def last_frame() -> bytes:  # keep_alive 0 unloads before the client sees "done"
                if keep == 0:
                    self.loaded.pop(model.name, None)
                return final

            frames.append(last_frame)
            return await self.respond_stream(
                request, frames, content_type=NDJSON, delay=self.token_delay
            )
        finally:
            if keep == 0:
                self.loaded.pop(model.name, None)

    # -- pull -----------------------------------------------------------------------------
    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return self.error(400, "model is required")
        stream = body.get("stream") is not False
        layers = self._pullable_layers(name)
        installed = self.find_model(name)
        if layers is None and installed is None:
            if not stream:
                return self.error(500, PULL_NOT_FOUND)
            frames: list[Frame] = [
                compact({"status": "pulling manifest"}) + b"\n",
                compact({"error": PULL_NOT_FOUND}) + b"\n",
            ]
            return await self.respond_stream(
                request, frames, content_type=NDJSON, delay=self.pull_delay, end_frames=0
            )
        layers = layers or []
        target = short_name(name)

        def install() -> bytes:
            if self.find_model(target) is None:
                self.add_model(target, size=sum(layers) or 1)
            return compact({"status": "success"}) + b"\n"

        if not stream:
            return await self._json(request, json.loads(install()))
        frames = [compact({"status": "pulling manifest"}) + b"\n"]
        updates = max(1, self.pull_updates)
        for index, size in enumerate(layers):
            digest = layer_digest(target, index)
            line: dict[str, Any] = {"status": f"pulling {digest[7:19]}", "digest": digest,
                                    "total": size}
            if installed is not None:  # already on disk: one line, completed == total
                frames.append(compact({**line, "completed": size}) + b"\n")
                continue
            frames.append(compact(line) + b"\n")  # completed omitted while 0
            frames.extend(
                compact({**line, "completed": size * k // updates}) + b"\n"
                for k in range(1, updates + 1)
            )
        frames.append(compact({"status": "verifying sha256 digest"}) + b"\n")
        frames.append(compact({"status": "writing manifest"}) + b"\n")
        frames.append(install)
        return await self.respond_stream(
            request, frames, content_type=NDJSON, delay=self.pull_delay
        )
