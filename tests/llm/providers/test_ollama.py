"""The Ollama provider against the fake Ollama server: every operation, happy paths.

Failure modes are in ``test_ollama_failures.py``; stopping and connection hygiene in
``test_ollama_streams.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from papin.llm.config import LLMConfig
from papin.llm.datatypes import ChatMessage, DownloadStatus
from papin.llm.errors import (
    AuthenticationError,
    DownloadError,
    ModelNotFoundError,
)
from papin.llm.manager import create_llm_manager
from papin.llm.options import GenerationOptions
from papin.llm.providers.ollama import OllamaConfig, OllamaProvider
from tests.fakes.ollama import DEFAULT_TOKENS, FakeOllama
from tests.ollama_helpers import MODEL, closed_port_url, make_config

pytestmark = pytest.mark.timeout(30)
TEXT = "".join(DEFAULT_TOKENS)


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    """A fake Ollama with :data:`MODEL` installed."""
    with FakeOllama(models=[MODEL]) as server:
        yield server


@pytest.fixture
async def ollama(fake: FakeOllama) -> AsyncIterator[OllamaProvider]:
    """An Ollama provider talking to :func:`fake`."""
    provider = OllamaProvider(make_config(fake.url))
    async with provider:
        yield provider


# -- status ------------------------------------------------------------------------------------


async def test_status_available(ollama: OllamaProvider, fake: FakeOllama) -> None:
    status = await ollama.status()
    assert status.available
    assert status.version == "0.12.6"
    assert status.endpoint == fake.url
    assert await ollama.is_available()
    assert await ollama.get_version() == "0.12.6"
    info = await ollama.get_system_info()
    assert info["version"] == "0.12.6" and info["available"] == "true"


async def test_status_not_running_never_raises() -> None:
    async with OllamaProvider(make_config(closed_port_url())) as provider:
        status = await provider.status()
    assert not status.available
    assert status.error is not None
    assert "not running" in status.error and "ollama serve" in status.error


async def test_status_of_a_server_that_is_not_ollama(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault("/api/version", "status", status=200, body={"hello": "world"})
    status = await ollama.status()
    assert not status.available
    assert status.error is not None and "not like Ollama" in status.error


# -- models ------------------------------------------------------------------------------------


async def test_list_models(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.add_model("qwen2:0.5b", size=352_000_000, family="qwen2", parameter_size="494M",
                   quantization="Q4_0", context_length=32768)
    models = {m.id: m for m in await ollama.list_downloaded_models()}
    assert set(models) == {"llama3.2:latest", "qwen2:0.5b"}
    qwen = models["qwen2:0.5b"]
    assert qwen.size_bytes == 352_000_000
    assert (qwen.family, qwen.parameter_size, qwen.quantization) == ("qwen2", "494M", "Q4_0")
    assert qwen.provider == "ollama" and qwen.installed
    assert qwen.digest is not None and len(qwen.digest) == 64
    assert [m.id for m in await ollama.list_available_models()] == list(models)


async def test_list_models_empty() -> None:
    with FakeOllama() as empty:
        async with OllamaProvider(make_config(empty.url)) as provider:
            assert await provider.list_downloaded_models() == []


async def test_show_model_with_context_size(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.add_model("mistral", family="llama", context_length=32768)
    info = await ollama.get_model_info("mistral")
    assert info.id == "mistral"
    assert info.context_size == 32768
    assert info.family == "llama"
    assert info.metadata["general.architecture"] == "llama"
    assert fake.requests_to("/api/show")[-1].json == {"model": "mistral"}


async def test_show_unknown_model(ollama: OllamaProvider) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await ollama.get_model_info("nope")
    err = info.value
    assert err.status_code == 404 and err.model == "nope"
    assert "model 'nope:latest' not found" in str(err)
    assert "papin models pull nope" in str(err)


# -- loading -----------------------------------------------------------------------------------


async def test_load_list_loaded_and_unload(ollama: OllamaProvider, fake: FakeOllama) -> None:
    assert await ollama.list_loaded_models() == []
    await ollama.load_model(MODEL)
    assert fake.requests_to("/api/generate")[-1].json == {"model": MODEL, "stream": False}
    (loaded,) = await ollama.list_loaded_models()
    assert loaded.id == "llama3.2:latest"
    assert loaded.context_size == 4096
    assert loaded.size_bytes is not None and loaded.expires_at
    assert await ollama.is_model_loaded(MODEL)
    assert await ollama.is_model_loaded("llama3.2:latest")
    await ollama.unload_model(MODEL)
    assert fake.requests_to("/api/generate")[-1].json == {"model": MODEL, "stream": False,
                                                           "keep_alive": 0}
    assert not await ollama.is_model_loaded(MODEL)
    assert fake.loaded == {}


async def test_load_uses_configured_keep_alive(fake: FakeOllama) -> None:
    async with OllamaProvider(make_config(fake.url, keep_alive=-1)) as provider:
        await provider.load_model(MODEL)
        (loaded,) = await provider.list_loaded_models()
    assert fake.requests_to("/api/generate")[-1].json["keep_alive"] == -1
    assert loaded.expires_at is not None and loaded.expires_at.startswith("2318")


async def test_load_unknown_model(ollama: OllamaProvider) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        await ollama.load_model("ghost")


# -- delete ------------------------------------------------------------------------------------


async def test_delete_model(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.add_model("old:7b")
    await ollama.delete_model("old:7b")
    request = fake.requests_to("/api/delete")[-1]
    assert request.method == "DELETE" and request.json == {"model": "old:7b"}
    assert "old:7b" not in {m.id for m in await ollama.list_downloaded_models()}


async def test_delete_unknown_model(ollama: OllamaProvider) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await ollama.delete_model("ghost:1b")
    assert info.value.status_code == 404
    assert "model 'ghost:1b' not found" in str(info.value)


# -- pull --------------------------------------------------------------------------------------


async def test_pull_progress_is_aggregated(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.pullable["tinyllama"] = [600_000, 300_000, 1_000]
    fake.pull_delay = 0.005
    seen: list[DownloadStatus] = []
    final = await ollama.download_model("tinyllama", seen.append)
    assert final.complete and final.progress == 1.0
    assert final.bytes_downloaded == final.total_bytes == 901_000
    assert final.eta_seconds == 0.0
    body = fake.requests_to("/api/pull")[-1].json
    assert body == {"model": "tinyllama", "stream": True}
    # progress never goes backwards and is reported across layers
    done = [s.bytes_downloaded for s in seen]
    assert done == sorted(done)
    assert {s.status for s in seen} >= {"pulling manifest", "verifying sha256 digest",
                                        "writing manifest", "success"}
    assert any(s.status.startswith("pulling ") and len(s.status) == 20 for s in seen)
    assert any(s.speed_bps and s.speed_bps > 0 for s in seen)
    assert any(s.eta_seconds is not None and s.eta_seconds > 0 for s in seen)
    assert [s.complete for s in seen].count(True) == 1 and seen[-1].complete
    assert ollama.get_download_status("tinyllama") == final
    assert "tinyllama:latest" in {m.id for m in await ollama.list_downloaded_models()}


async def test_pull_of_installed_model_completes(ollama: OllamaProvider) -> None:
    final = await ollama.download_model(MODEL)
    assert final.complete


async def test_pull_unknown_model_is_model_not_found(ollama: OllamaProvider) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await ollama.download_model("no-such-model")
    assert "file does not exist" in str(info.value)
    assert "ollama.com/library" in str(info.value)
    status = ollama.get_download_status("no-such-model")
    assert status is not None and status.status == "error" and status.error


async def test_pull_error_line_is_download_error(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.pullable["big"] = [1000]
    fake.fault("/api/pull", "error_in_stream", after=3, message="max retries exceeded: EOF")
    with pytest.raises(DownloadError, match="max retries exceeded"):
        await ollama.download_model("big")
    assert "big:latest" not in fake.models


async def test_pull_without_success_is_download_error(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.pullable["big"] = [1000]
    fake.fault("/api/pull", "no_done")
    with pytest.raises(DownloadError, match="without reporting success"):
        await ollama.download_model("big")


async def test_start_and_cancel_download_closes_the_pull(
    ollama: OllamaProvider, fake: FakeOllama
) -> None:
    fake.pullable["huge"] = [10_000_000_000]
    fake.pull_updates = 2000
    fake.pull_delay = 0.01
    await ollama.start_download("huge")
    await ollama.start_download("huge")  # a second start while running is a no-op

    def progressed() -> bool:
        status = ollama.get_download_status("huge")
        return status is not None and status.bytes_downloaded > 0

    assert await fake.async_wait_for(progressed, 5.0)
    await ollama.cancel_download("huge")
    status = ollama.get_download_status("huge")
    assert status is not None and status.cancelled and status.status == "cancelled"
    assert await fake.wait_for_disconnects(1, 5.0), "the fake never saw the pull connection close"
    record = fake.streams[-1]
    assert record.path == "/api/pull" and not record.completed
    sent = record.sent
    await asyncio.sleep(0.1)
    assert record.sent == sent  # the fake stopped sending
    assert "huge:latest" not in fake.models
    assert len(fake.requests_to("/api/pull")) == 1


# -- generation --------------------------------------------------------------------------------


async def test_generate(ollama: OllamaProvider, fake: FakeOllama) -> None:
    result = await ollama.generate(MODEL, "Why is the sky blue?")
    assert result.text == TEXT
    assert result.model == MODEL and result.provider == "ollama"
    stats = result.stats
    assert stats.finish_reason == "stop"
    assert stats.output_tokens == len(DEFAULT_TOKENS)
    assert stats.tokens_per_second == pytest.approx(50.0)
    assert stats.prompt_tokens == 6
    assert stats.total_time is not None and stats.total_time > 0
    assert stats.load_time is not None
    assert stats.time_to_first_token is not None and stats.time_to_first_token >= 0
    assert fake.requests_to("/api/generate")[-1].json == {
        "model": MODEL, "prompt": "Why is the sky blue?", "stream": True}
    assert await ollama.generate_text(MODEL, "hi") == TEXT


async def test_stream_generate_chunks(ollama: OllamaProvider) -> None:
    chunks = [c async for c in ollama.stream_generate(MODEL, "hi")]
    assert [c.text for c in chunks[:-1]] == DEFAULT_TOKENS
    last = chunks[-1]
    assert last.done and last.text == "" and last.stats is not None
    assert not any(c.done for c in chunks[:-1])


async def test_generate_text_streaming_callback(ollama: OllamaProvider) -> None:
    got: list[str] = []
    result = await ollama.generate_text_streaming(MODEL, "hi", None, got.append)
    assert got == DEFAULT_TOKENS
    assert result.text == TEXT and result.finish_reason == "stop"


async def test_async_callback_is_awaited(ollama: OllamaProvider) -> None:
    got: list[str] = []

    async def callback(text: str) -> bool:
        await asyncio.sleep(0)
        got.append(text)
        return True

    result = await ollama.generate_text_streaming(MODEL, "hi", None, callback)
    assert "".join(got) == result.text == TEXT


async def test_chat(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.tokens = ["Hello", " there", "!"]
    messages = [{"role": "user", "content": "Say hello"}]
    result = await ollama.chat(MODEL, messages, GenerationOptions(system="Be kind."))
    assert result.text == "Hello there!"
    assert result.stats.output_tokens == 3
    body = fake.requests_to("/api/chat")[-1].json
    assert body["messages"] == [{"role": "system", "content": "Be kind."},
                                {"role": "user", "content": "Say hello"}]
    assert body["stream"] is True


async def test_stream_chat(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.tokens = ["A", "B"]
    chunks = [c async for c in ollama.stream_chat(MODEL, [ChatMessage("user", "x")])]
    assert [c.text for c in chunks] == ["A", "B", ""]
    assert chunks[-1].done


async def test_max_tokens_gives_finish_reason_length(ollama: OllamaProvider) -> None:
    result = await ollama.generate(MODEL, "hi", GenerationOptions(max_tokens=3))
    assert result.text == "".join(DEFAULT_TOKENS[:3])
    assert result.finish_reason == "length"
    assert result.stats.output_tokens == 3


async def test_options_mapping_in_request_body(fake: FakeOllama) -> None:
    options = GenerationOptions(
        max_tokens=16, temperature=0.0, seed=42, top_k=10, stop=["\n\n"], context_size=2048,
        system="You are terse.", additional_params={"format": "json", "mirostat": 0},
    )
    async with OllamaProvider(make_config(fake.url, keep_alive="10m")) as provider:
        await provider.generate(MODEL, "hi", options)
    body = fake.requests_to("/api/generate")[-1].json
    assert body == {
        "model": MODEL, "prompt": "hi", "stream": True, "system": "You are terse.",
        "keep_alive": "10m", "format": "json",
        "options": {"num_predict": 16, "temperature": 0.0, "seed": 42, "top_k": 10,
                    "stop": ["\n\n"], "num_ctx": 2048, "mirostat": 0},
    }


async def test_per_call_keep_alive_wins_over_config(fake: FakeOllama) -> None:
    async with OllamaProvider(make_config(fake.url, keep_alive="10m")) as provider:
        await provider.generate(MODEL, "hi", GenerationOptions(keep_alive=0))
    assert fake.requests_to("/api/generate")[-1].json["keep_alive"] == 0
    assert fake.loaded == {}  # keep_alive 0 unloads right after the request


# -- headers, API key, endpoint ----------------------------------------------------------------


async def test_headers_and_bearer_api_key(fake: FakeOllama) -> None:
    config = make_config(fake.url, api_key="sekrit", headers={"X-Trace": "abc"})
    async with OllamaProvider(config) as provider:
        await provider.list_downloaded_models()
        await provider.generate(MODEL, "hi")
    for request in fake.requests:
        assert request.headers["Authorization"] == "Bearer sekrit"
        assert request.headers["X-Trace"] == "abc"
        assert request.headers["User-Agent"] == "papin"
    generate = fake.requests_to("/api/generate")[-1]
    assert generate.headers["Content-Type"] == "application/json"


async def test_explicit_authorization_header_wins(fake: FakeOllama) -> None:
    config = make_config(fake.url, api_key="sekrit", headers={"Authorization": "Bearer other"})
    async with OllamaProvider(config) as provider:
        await provider.list_downloaded_models()
    assert fake.requests[-1].headers["Authorization"] == "Bearer other"


async def test_api_key_from_environment(fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.api_key = "env-token"
    monkeypatch.setenv("OLLAMA_API_KEY", "env-token")
    async with OllamaProvider(make_config(fake.url)) as provider:
        assert [m.id for m in await provider.list_downloaded_models()] == ["llama3.2:latest"]
    assert fake.requests[-1].headers["Authorization"] == "Bearer env-token"


async def test_wrong_api_key_is_authentication_error(fake: FakeOllama) -> None:
    fake.api_key = "right"
    async with OllamaProvider(make_config(fake.url, api_key="wrong")) as provider:
        with pytest.raises(AuthenticationError) as info:
            await provider.generate(MODEL, "hi")
    assert info.value.status_code == 401
    assert "OLLAMA_API_KEY" in str(info.value)


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", ":{port}", "http://127.0.0.1:{port}/"])
async def test_ollama_host_is_honoured(
    fake: FakeOllama, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", form.format(port=fake.port))
    config = OllamaConfig()
    assert config.endpoint == f"http://127.0.0.1:{fake.port}"
    async with OllamaProvider(config) as provider:
        assert (await provider.status()).available


async def test_ollama_host_reaches_the_manager(
    fake: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{fake.port}")
    manager = create_llm_manager(config=LLMConfig.load())
    async with manager:
        choice = manager.provider_choice
        assert choice is not None and choice.provider == "ollama"
        assert choice.status.endpoint == f"http://127.0.0.1:{fake.port}"
        assert await manager.generate_text(MODEL, "hi") == TEXT


async def test_explicit_endpoint_wins_over_ollama_host(
    fake: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", closed_port_url())
    async with OllamaProvider(make_config(fake.url)) as provider:
        assert (await provider.status()).available
