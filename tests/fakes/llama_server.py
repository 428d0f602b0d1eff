"""A small fake ``llama-server`` (single-model mode) for discovery tests (``backend-apis.md`` §3).

``GET /health`` (``{"status":"ok"}``), ``GET /props`` (``build_info``...), ``GET /v1/models``
with both the Ollama-style ``models`` array and the OpenAI ``data`` array (``owned_by:
"llamacpp"``), the OpenAI chat/completions routes of :class:`FakeOpenAIServer`, and a loading
phase (``loading = True``) in which every route answers ``503 Loading model``, before the key
check, as the real server does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from aiohttp import web

from tests.fakes.openai_server import FakeOpenAIServer

__all__ = ["FakeLlamaServer"]

LOADING_BODY = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}


class FakeLlamaServer(FakeOpenAIServer):
    """Fake ``llama-server -m MODEL`` on 127.0.0.1 and a free port."""

    label = "fake llama-server"
    owner: ClassVar[str] = "llamacpp"
    done_after_error: ClassVar[bool] = False
    auth_headers: ClassVar[tuple[str, ...]] = ("authorization", "x-api-key")
    public_paths: ClassVar[frozenset[str]] = frozenset({"/health", "/v1/health"})

    def __init__(
        self,
        models: Iterable[str] = ("/models/tiny.gguf",),
        *,
        build_info: str = "b6000-abcdef12",
        api_key: str | None = None,
    ) -> None:
        super().__init__(models, api_key=api_key)
        self.build_info = build_info
        #: Answer every request with ``503 Loading model`` (the model is loading).
        self.loading = False
        self.validate_model = False  # single-model mode ignores ``model``

    def check_auth(self, request: web.Request) -> web.StreamResponse | None:
        if self.loading:
            return web.json_response(LOADING_BODY, status=503)
        return super().check_auth(request)

    def model_entry(self, name: str) -> dict[str, Any]:
        return {"id": name, "aliases": [name], "object": "model", "created": 1_700_000_000,
                "owned_by": "llamacpp", "meta": {"n_ctx_train": 4096}}  # fmt: skip

    def models_body(self) -> dict[str, Any]:
        body = super().models_body()
        body["models"] = [{"name": m, "model": m, "type": "model"} for m in self.models]
        return body

    def add_extra_routes(self, app: web.Application) -> None:
        app.router.add_get("/health", self._health)
        app.router.add_get("/props", self._props)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def _props(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({
            "build_info": self.build_info,
            "model_path": self.models[0] if self.models else "",
            "default_generation_settings": {"n_ctx": 4096},
            "total_slots": 1,
        })  # fmt: skip
