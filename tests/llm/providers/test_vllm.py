"""The vLLM provider against the fake vLLM server: every operation, errors in both envelopes.

The fake itself is checked against the wire reference in ``test_fake_vllm.py``.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from papin.llm.datatypes import Capability
from papin.llm.errors import (
    AuthenticationError,
    GenerationError,
    ModelNotFoundError,
    ProviderAPIError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    UnsupportedOperationError,
)
from papin.llm.factory import ProviderFactory
from papin.llm.options import GenerationOptions
from papin.llm.providers.vllm import VLLMConfig, VLLMProvider
from tests.fakes.vllm import DEFAULT_TOKENS, FakeVLLM

pytestmark = pytest.mark.timeout(20)
MODEL = "meta-llama/Llama-3.2-1B-Instruct"
TEXT = "".join(DEFAULT_TOKENS)
FAST: dict[str, Any] = {"timeout_seconds": 5.0, "connect_timeout_seconds": 2.0,
                        "first_byte_timeout_seconds": 5.0, "idle_timeout_seconds": 2.0}
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(autouse=True)
def _no_vllm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)


def make(url: str, **overrides: Any) -> VLLMProvider:
    """A provider for ``url`` with short limits."""
    return VLLMProvider(VLLMConfig(**{"endpoint": url, **FAST, **overrides}))


@pytest.fixture
def fake() -> Iterator[FakeVLLM]:
    """A ready fake vLLM serving :data:`MODEL`, runtime LoRA updates allowed."""
    with FakeVLLM(models=[MODEL], allow_runtime_lora=True) as server:
        yield server


@pytest.fixture
async def vllm(fake: FakeVLLM) -> AsyncIterator[VLLMProvider]:
    """A provider talking to :func:`fake` (endpoint given with ``/v1``)."""
    async with make(f"{fake.url}/v1") as provider:
        yield provider


def _free_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- configuration ------------------------------------------------------------------------------


def test_config_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = VLLMProvider()
    assert provider.endpoint == "http://127.0.0.1:8000"
    assert provider.config.api_key is None
    assert provider.name == "vllm" and provider.display_name == "vLLM"
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    assert VLLMConfig().api_key == "from-env"
    assert VLLMConfig(api_key="explicit").api_key == "explicit"
    assert VLLMProvider(VLLMConfig(endpoint="gpu:9000/v1/")).endpoint == "http://gpu:9000"
    made = ProviderFactory(load_entry_points=False).create_provider(
        "vllm", {"lora_adapters": {"sql": "/adapters/sql"}}
    )
    assert isinstance(made, VLLMProvider) and made.config.lora_adapters == {"sql": "/adapters/sql"}


def test_capabilities() -> None:
    caps = VLLMProvider.capabilities
    assert Capability.LIST_LOADED in caps and Capability.CHAT in caps
    assert not caps & {Capability.DOWNLOAD, Capability.DELETE, Capability.LOAD, Capability.UNLOAD}


# -- status and startup -------------------------------------------------------------------------


async def test_status_available_with_version(vllm: VLLMProvider, fake: FakeVLLM) -> None:
    status = await vllm.status()
    assert status.available and status.error is None
    assert status.version == "0.33.0" and status.endpoint == fake.url
    assert await vllm.get_version() == "0.33.0"
    assert [r.path for r in fake.requests] == ["/health", "/version"] * 2


async def test_refused_while_starting_then_available() -> None:
    with FakeVLLM(models=[MODEL], ready=False) as fake:
        async with make(fake.url) as provider:
            status = await provider.status()
            assert not status.available and status.error is not None
            assert "not running" in status.error and "still starting" in status.error
            assert "vllm serve" in status.error
            with pytest.raises(ProviderUnavailableError) as info:
                await provider.generate(MODEL, "hi")
            assert not isinstance(info.value, ProviderTimeoutError) and info.value.retryable
            assert fake.requests == []  # nothing got through: connections were refused
            fake.make_ready()
            assert (await provider.status()).available
            assert (await provider.generate(MODEL, "hi")).text == TEXT


async def test_ready_after_a_delay() -> None:
    with FakeVLLM(models=[MODEL], ready_after=0.8) as fake:
        async with make(fake.url) as provider:
            assert not await provider.is_available()
            assert await fake.async_wait_for(lambda: fake.listening, 5.0)
            assert await provider.is_available()


async def test_dead_engine_and_not_running() -> None:
    with FakeVLLM(models=[MODEL]) as fake:
        fake.engine_dead = True
        async with make(fake.url) as provider:
            status = await provider.status()
        assert not status.available and status.error is not None
        assert "engine has stopped" in status.error and "503" in status.error
    async with make(_free_port_url()) as provider:
        status = await provider.status()
    assert not status.available and status.error is not None and "not running" in status.error


async def test_status_is_open_without_the_key_but_v1_is_not() -> None:
    with FakeVLLM(models=[MODEL], api_key="sk-right") as fake:
        async with make(fake.url) as provider:
            assert (await provider.status()).available  # /health and /version are open
            assert await provider.count_tokens(MODEL, "open route") == 3  # /tokenize too
            with pytest.raises(AuthenticationError) as info:
                await provider.list_downloaded_models()
            assert info.value.status_code == 401
            assert "Unauthorized" in str(info.value) and "VLLM_API_KEY" in str(info.value)
            with pytest.raises(AuthenticationError):
                await provider.generate(MODEL, "hi")


async def test_api_key_from_env_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sk-env")
    with FakeVLLM(models=[MODEL], api_key="sk-env") as fake:
        async with make(fake.url) as provider:
            assert (await provider.generate(MODEL, "hi")).text == TEXT
        assert fake.requests_to("/v1/completions")[-1].headers["Authorization"] == "Bearer sk-env"


# -- models -------------------------------------------------------------------------------------


async def test_models_with_context_size_and_adapters(vllm: VLLMProvider, fake: FakeVLLM) -> None:
    fake.roots[MODEL] = "/models/llama-3.2-1b"
    fake.adapters["sql"] = ("/adapters/sql", MODEL)
    base, adapter = await vllm.list_downloaded_models()
    assert (base.id, base.context_size, base.provider) == (MODEL, 8192, "vllm")
    assert base.metadata["root"] == "/models/llama-3.2-1b" and base.metadata["owned_by"] == "vllm"
    assert "parent" not in base.metadata
    assert adapter.id == "sql" and adapter.metadata["parent"] == MODEL
    assert adapter.metadata["root"] == "/adapters/sql" and adapter.context_size == 8192
    assert adapter.description == f"LoRA adapter on {MODEL}"
    assert (await vllm.get_model_info("sql")).metadata["parent"] == MODEL
    loaded = await vllm.list_loaded_models()
    assert [(m.id, m.context_size) for m in loaded] == [(MODEL, 8192), ("sql", 8192)]
    assert await vllm.is_model_loaded("sql")
    with pytest.raises(ModelNotFoundError):
        await vllm.get_model_info("nope")


async def test_pull_and_delete_are_unsupported(vllm: VLLMProvider) -> None:
    with pytest.raises(UnsupportedOperationError, match="loads .* its model when it starts"):
        await vllm.download_model("Qwen/Qwen2.5-0.5B")
    with pytest.raises(UnsupportedOperationError, match="no API to remove"):
        await vllm.delete_model(MODEL)
    assert not vllm.can_pull(MODEL)


# -- tokens -------------------------------------------------------------------------------------


async def test_count_tokens_and_tokenize(vllm: VLLMProvider, fake: FakeVLLM) -> None:
    assert await vllm.count_tokens(MODEL, "Hello there, world!") == 6  # BOS + 5 pieces
    assert fake.requests_to("/tokenize")[-1].json == {"model": MODEL, "prompt": "Hello there, world!"}
    ids = await vllm.tokenize(None, "Hello there", add_special_tokens=False)
    assert len(ids) == 2 and "model" not in fake.requests_to("/tokenize")[-1].json
    chat = await vllm.count_tokens(MODEL, MESSAGES)
    assert chat == fake.prompt_tokens({"messages": MESSAGES}, chat=True)
    assert fake.requests_to("/tokenize")[-1].json["messages"] == MESSAGES
    with pytest.raises(ModelNotFoundError) as info:
        await vllm.count_tokens("nope", "hi")
    assert info.value.model == "nope" and "does not exist" in str(info.value)


async def test_tokenize_on_a_server_without_the_route(vllm: VLLMProvider, fake: FakeVLLM) -> None:
    fake.fault("/tokenize", "status", status=404, body={"detail": "Not Found"})
    with pytest.raises(UnsupportedOperationError, match="no /tokenize endpoint"):
        await vllm.count_tokens(MODEL, "hi")


# -- generation ---------------------------------------------------------------------------------


async def test_generate_with_stats_and_vllm_names(vllm: VLLMProvider, fake: FakeVLLM) -> None:
    options = GenerationOptions(temperature=0.0, seed=1, repeat_penalty=1.1, top_k=20, max_tokens=50)
    result = await vllm.generate(MODEL, "Why is the sky blue?", options)
    assert result.text == TEXT and result.provider == "vllm"
    stats = result.stats
    assert stats.finish_reason == "stop" and stats.output_tokens == len(DEFAULT_TOKENS)
    assert stats.prompt_tokens == fake.prompt_tokens({"prompt": "Why is the sky blue?"}, chat=False)
    body = fake.requests_to("/v1/completions")[-1].json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["repetition_penalty"] == 1.1 and "repeat_penalty" not in body
    assert body["top_k"] == 20 and body["seed"] == 1


async def test_chat_length_and_stop(vllm: VLLMProvider, fake: FakeVLLM) -> None:
    result = await vllm.chat(MODEL, MESSAGES, GenerationOptions(max_tokens=3))
    assert result.text == "".join(DEFAULT_TOKENS[:3]) and result.finish_reason == "length"
    assert result.stats.output_tokens == 3
    stopped = await vllm.chat(MODEL, MESSAGES, GenerationOptions(stop=[" blue"]))
    assert stopped.text == "The sky is" and stopped.finish_reason == "stop"
    assert fake.requests_to("/v1/chat/completions")[-1].json["messages"] == MESSAGES


async def test_default_model_and_streaming(vllm: VLLMProvider) -> None:
    chunks = [c async for c in vllm.stream_generate(MODEL, "hi")]
    assert [c.text for c in chunks if c.text] == DEFAULT_TOKENS
    assert chunks[-1].done and chunks[-1].stats is not None


@pytest.mark.parametrize("version", ["0.33.0", "0.9.2"])
async def test_unknown_model_in_both_envelopes(version: str) -> None:
    with FakeVLLM(models=[MODEL], version=version) as fake:
        assert fake.envelope == ("flat" if version == "0.9.2" else "nested")
        async with make(fake.url) as provider:
            assert (await provider.status()).version == version
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: provider.generate("nope", "hi"), lambda: provider.chat("nope", MESSAGES)]
            for call in calls:
                with pytest.raises(ModelNotFoundError) as info:
                    await call()
                err = info.value
                assert err.status_code == 404 and err.model == "nope"
                assert "The model `nope` does not exist." in str(err)
                assert "vllm serve" in str(err)


@pytest.mark.parametrize("version", ["0.33.0", "0.9.2"])
async def test_error_event_mid_stream_in_both_envelopes(version: str) -> None:
    with FakeVLLM(models=[MODEL], version=version) as fake:
        fake.fault("/v1/completions", "error_in_stream", after=3, message="CUDA out of memory")
        async with make(fake.url) as provider:
            seen: list[str] = []
            with pytest.raises(GenerationError) as info:
                async for chunk in provider.stream_generate(MODEL, "hi"):
                    seen.append(chunk.text)
            assert "CUDA out of memory" in str(info.value) and info.value.status_code == 200
            assert "".join(seen) == "".join(DEFAULT_TOKENS[:3])
            assert (await provider.generate(MODEL, "again")).text == TEXT  # still usable


@pytest.mark.parametrize("version", ["0.33.0", "0.9.2"])
async def test_validation_and_context_errors_in_both_envelopes(version: str) -> None:
    with FakeVLLM(models=[MODEL], version=version, max_model_len=64) as fake:
        async with make(fake.url) as provider:
            bad = GenerationOptions(additional_params={"top_k": "many"})
            with pytest.raises(ProviderAPIError) as info:
                await provider.generate(MODEL, "hi", bad)
            assert info.value.status_code == 400 and not isinstance(info.value, ModelNotFoundError)
            assert "top_k" in str(info.value) and "valid integer" in str(info.value)
            with pytest.raises(ProviderAPIError) as info:
                await provider.chat(MODEL, MESSAGES, GenerationOptions(max_tokens=100))
            assert info.value.status_code == 400
            assert "maximum context length is 64 tokens" in str(info.value)


# -- LoRA adapters ------------------------------------------------------------------------------


async def test_lora_load_use_and_unload(vllm: VLLMProvider, fake: FakeVLLM) -> None:
    await vllm.load_model("sql", lora_path="/adapters/sql")
    assert fake.requests_to("/v1/load_lora_adapter")[-1].json == {
        "lora_name": "sql", "lora_path": "/adapters/sql", "load_inplace": False}
    assert fake.adapters == {"sql": ("/adapters/sql", MODEL)}
    assert {m.id for m in await vllm.list_loaded_models()} == {MODEL, "sql"}
    assert (await vllm.generate("sql", "SELECT")).text == TEXT
    await vllm.load_model("sql", lora_path="/adapters/sql")  # loaded already: a no-op
    await vllm.load_model("sql", lora_path="/adapters/sql-v2", load_inplace=True)
    assert fake.adapters["sql"][0] == "/adapters/sql-v2"
    await vllm.unload_model("sql")
    assert fake.adapters == {} and not await vllm.is_model_loaded("sql")
    with pytest.raises(ModelNotFoundError, match="no LoRA adapter 'sql' loaded"):
        await vllm.unload_model("sql")


async def test_lora_path_from_settings(fake: FakeVLLM) -> None:
    async with make(fake.url, lora_adapters={"chat-style": "org/chat-style-lora"}) as provider:
        await provider.load_model("chat-style")
    assert fake.adapters["chat-style"][0] == "org/chat-style-lora"


async def test_lora_errors(vllm: VLLMProvider, fake: FakeVLLM) -> None:
    with pytest.raises(UnsupportedOperationError) as info:
        await vllm.load_model("sql")  # no path anywhere
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in str(info.value) and "lora_path" in str(info.value)
    assert fake.requests_to("/v1/load_lora_adapter") == []
    fake.adapter_paths = {"/adapters/sql"}
    with pytest.raises(ModelNotFoundError, match="found no LoRA adapter 'x' at '/nowhere'"):
        await vllm.load_model("x", lora_path="/nowhere")
    with pytest.raises(ProviderAPIError, match="conflicts with a served base model"):
        await vllm.load_model(MODEL, lora_path="/adapters/sql")
    with pytest.raises(UnsupportedOperationError, match="started with"):
        await vllm.unload_model(MODEL)


@pytest.mark.parametrize("version", ["0.33.0", "0.9.2"])
async def test_lora_needs_runtime_updating(version: str) -> None:
    with FakeVLLM(models=[MODEL], version=version) as fake:
        async with make(fake.url) as provider:
            calls: list[Callable[[], Awaitable[None]]] = [
                lambda: provider.load_model("sql", lora_path="/adapters/sql"),
                lambda: provider.unload_model("sql")]
            for call in calls:
                with pytest.raises(UnsupportedOperationError) as info:
                    await call()
                text = str(info.value)
                assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in text and "--enable-lora" in text
                assert "vLLM" in text
            fake.allow_runtime_lora = True
            fake.adapter_paths = set()
            with pytest.raises(ModelNotFoundError):  # same call, the server's own 404 now
                await provider.load_model("sql", lora_path="/adapters/sql")


async def test_lora_routes_need_the_key() -> None:
    with FakeVLLM(models=[MODEL], api_key="sk-k", allow_runtime_lora=True) as fake:
        async with make(fake.url) as provider:
            with pytest.raises(AuthenticationError):
                await provider.load_model("sql", lora_path="/adapters/sql")
        async with make(fake.url, api_key="sk-k") as provider:
            await provider.load_model("sql", lora_path="/adapters/sql")
        assert "sql" in fake.adapters
