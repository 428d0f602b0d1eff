"""The LM Studio provider against the fake LM Studio server (``backend-apis.md`` §5, §6, §8).

Covers configuration, status and REST API detection (v1, v0, none), model lists with loaded
state (JIT listing vs loaded), load and unload, downloads with status polling, generation
bodies (``ttl``), errors and authentication.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from papin.llm.datatypes import Capability, DownloadStatus
from papin.llm.errors import (
    AuthenticationError,
    DownloadError,
    GenerationError,
    ModelNotFoundError,
    ProviderAPIError,
    ProviderUnavailableError,
    UnsupportedOperationError,
)
from papin.llm.factory import get_provider_factory
from papin.llm.options import GenerationOptions
from papin.llm.providers.lmstudio import LMStudioConfig, LMStudioProvider
from papin.llm.providers.openai_compatible import OpenAICompatibleConfig
from tests.fakes.lmstudio import NO_MODELS_LOADED, FakeLMStudio
from tests.fakes.openai_server import DEFAULT_TOKENS

pytestmark = pytest.mark.timeout(30)

MODEL = "qwen/qwen3-4b"
EMBED = "text-embedding-nomic-embed-text-v1.5"
TEXT = "".join(DEFAULT_TOKENS)
FAST: dict[str, Any] = {
    "timeout_seconds": 5.0,
    "connect_timeout_seconds": 2.0,
    "first_byte_timeout_seconds": 5.0,
    "idle_timeout_seconds": 2.0,
    "download_poll_interval_seconds": 0.01,
}


def make_config(url: str, **overrides: Any) -> LMStudioConfig:
    """An LM Studio config for ``url`` with short test limits."""
    return LMStudioConfig(**{"endpoint": url, **FAST, **overrides})


@pytest.fixture
def fake() -> Iterator[FakeLMStudio]:
    """A fake LM Studio 0.4 (REST API v1) with an LLM and an embedding model downloaded."""
    with FakeLMStudio(models=[MODEL]) as server:
        server.add_model(EMBED, type="embedding", publisher="gaianet", params_string=None,
                         quantization="F16", bits_per_weight=16, max_context_length=2048)
        yield server


@pytest.fixture
async def lms(fake: FakeLMStudio) -> AsyncIterator[LMStudioProvider]:
    """An LM Studio provider talking to :func:`fake`."""
    provider = LMStudioProvider(make_config(fake.url))
    async with provider:
        yield provider


async def _pull(provider: LMStudioProvider, model: str) -> list[DownloadStatus]:
    return [status async for status in provider.pull_model(model)]


# -- configuration -----------------------------------------------------------------------------


def test_config_defaults_and_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LM_API_TOKEN", raising=False)
    provider = LMStudioProvider()
    assert provider.endpoint == "http://127.0.0.1:1234"
    assert provider.config.api_key is None
    monkeypatch.setenv("LM_API_TOKEN", "sk-lm-env")
    assert LMStudioConfig().api_key == "sk-lm-env"
    assert LMStudioConfig(api_key="sk-lm-explicit").api_key == "sk-lm-explicit"
    assert LMStudioProvider(LMStudioConfig(endpoint="http://box:1234/v1/")).endpoint == "http://box:1234"


def test_factory_and_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LM_API_TOKEN", raising=False)
    provider = get_provider_factory().create_provider("lmstudio", {"endpoint": "localhost:4321"})
    assert isinstance(provider, LMStudioProvider)
    assert provider.endpoint == "http://localhost:4321"
    assert provider.capabilities == frozenset(Capability) - {Capability.DELETE}
    # a generic OpenAI-compatible config is turned into an LM Studio one
    other = LMStudioProvider(OpenAICompatibleConfig(endpoint="http://h:1", api_key="k"))
    assert isinstance(other.config, LMStudioConfig) and other.config.api_key == "k"


# -- status and detection ----------------------------------------------------------------------


@pytest.mark.parametrize("rest_api", ["v1", "v0", "none"])
async def test_status_reports_the_rest_api(rest_api: str) -> None:
    with FakeLMStudio(rest_api=rest_api) as server:
        async with LMStudioProvider(make_config(server.url)) as provider:
            status = await provider.status()
            assert status.available and status.error is None
            assert status.details["rest_api"] == rest_api
            assert status.endpoint == server.url
            assert server.requests[0].path == "/v1/models"  # the liveness probe


async def test_status_not_running_never_raises() -> None:
    from tests.ollama_helpers import closed_port_url

    async with LMStudioProvider(make_config(closed_port_url())) as provider:
        status = await provider.status()
    assert not status.available
    assert status.error is not None and "lms server start" in status.error


async def test_detection_is_done_once(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    await lms.list_downloaded_models()
    await lms.list_loaded_models()
    assert [r.path for r in fake.requests] == ["/api/v1/models", "/api/v1/models"]


async def test_old_server_answers_unknown_paths_with_200() -> None:
    with FakeLMStudio(rest_api="v0") as server:
        provider = LMStudioProvider(make_config(server.url))
        async with provider:
            answer = await provider.transport.request_json("GET", "/api/v1/models")
            assert answer == {"error": "Unexpected endpoint or method. (GET /api/v1/models)"}
            assert [m.id for m in await provider.list_downloaded_models()] == [MODEL]
            assert (await provider.status()).details["rest_api"] == "v0"


# -- models: lists, JIT and loaded state --------------------------------------------------------


async def test_list_models_v1(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    fake.add_model("google/gemma-3-4b", type="vlm", architecture="gemma3", tool_use=True,
                   params_string="4B", size_bytes=3_000_000_000, max_context_length=131072)
    fake.load("google/gemma-3-4b", context_length=8192)
    models = await lms.list_downloaded_models()
    assert [m.id for m in models] == [MODEL, "google/gemma-3-4b", EMBED]  # embeddings last
    gemma = models[1]
    assert (gemma.size_bytes, gemma.context_size, gemma.family) == (3_000_000_000, 131072, "gemma3")
    assert (gemma.parameter_size, gemma.quantization, gemma.format) == ("4B", "Q4_K_M", "gguf")
    assert gemma.capabilities == ("completion", "vision", "tools")
    assert gemma.metadata["state"] == "loaded" and gemma.metadata["loaded_context_length"] == "8192"
    assert gemma.metadata["bits_per_weight"] == "4" and gemma.provider == "lmstudio"
    assert models[0].metadata["state"] == "not-loaded"
    assert models[2].capabilities == ("embedding",) and models[2].family is None
    assert models[2].metadata["type"] == "embedding"


async def test_list_models_v0() -> None:
    with FakeLMStudio(models=[MODEL], rest_api="v0") as server:
        server.add_model(EMBED, type="embedding", architecture="nomic-bert")
        server.add_model("mlx/qwen2-vl", type="vlm", format="mlx", quantization="4bit", tool_use=True)
        server.load(MODEL)
        async with LMStudioProvider(make_config(server.url)) as provider:
            models = {m.id: m for m in await provider.list_downloaded_models()}
            loaded = await provider.list_loaded_models()
        assert list(models) == [MODEL, "mlx/qwen2-vl", EMBED]
        assert models[MODEL].metadata["state"] == "loaded"
        assert models["mlx/qwen2-vl"].format == "mlx"
        assert models["mlx/qwen2-vl"].capabilities == ("completion", "vision", "tools")
        assert models[EMBED].capabilities == ("embedding",) and models[EMBED].family == "nomic-bert"
        assert [m.id for m in loaded] == [MODEL]


async def test_without_rest_api_the_openai_list_is_used() -> None:
    with FakeLMStudio(models=[MODEL], rest_api="none") as server:
        async with LMStudioProvider(make_config(server.url)) as provider:
            assert [m.id for m in await provider.list_downloaded_models()] == [MODEL]
            with pytest.raises(UnsupportedOperationError) as info:
                await provider.list_loaded_models()
        assert "JIT" in str(info.value) and "LM Studio" in str(info.value)
        assert server.requests_to("/v1/models")


async def test_jit_listing_is_not_loaded_state(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    # /v1/models lists every downloaded model with JIT on, though none is loaded
    listed = await lms.transport.request_json("GET", "/v1/models")
    assert {e["id"] for e in listed["data"]} == {MODEL, EMBED}
    assert await lms.list_loaded_models() == []
    assert not await lms.is_model_loaded(MODEL)
    # a request loads the model just in time
    assert (await lms.generate(MODEL, "hi")).text == TEXT
    assert [m.id for m in await lms.list_loaded_models()] == [MODEL]
    assert await lms.is_model_loaded(MODEL)


async def test_jit_off_lists_loaded_only_on_v1_models(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    fake.jit = False
    listed = await lms.transport.request_json("GET", "/v1/models")
    assert listed["data"] == []
    assert {m.id for m in await lms.list_downloaded_models()} == {MODEL, EMBED}
    with pytest.raises(ProviderAPIError) as info:
        await lms.generate(MODEL, "hi")
    assert not isinstance(info.value, ModelNotFoundError)
    assert info.value.status_code == 400 and NO_MODELS_LOADED in str(info.value)
    await lms.load_model(MODEL)
    assert (await lms.generate(MODEL, "hi")).text == TEXT


async def test_auto_evict_shows_in_loaded_state(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    fake.add_model("google/gemma-3-1b")
    await lms.generate(MODEL, "hi")
    await lms.generate("google/gemma-3-1b", "hi")
    assert [m.id for m in await lms.list_loaded_models()] == ["google/gemma-3-1b"]


async def test_get_model_info(lms: LMStudioProvider) -> None:
    info = await lms.get_model_info(MODEL)
    assert info.id == MODEL and info.context_size == 32768
    with pytest.raises(ModelNotFoundError) as error:
        await lms.get_model_info("nope/nope")
    assert error.value.model == "nope/nope" and "papin models pull" in str(error.value)


async def test_delete_needs_the_app(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    with pytest.raises(UnsupportedOperationError) as info:
        await lms.delete_model(MODEL)
    assert "LM Studio app" in str(info.value) and "REST API" in str(info.value)
    assert fake.requests == []


# -- load and unload ---------------------------------------------------------------------------


async def test_load_and_unload(fake: FakeLMStudio) -> None:
    async with LMStudioProvider(make_config(fake.url, context_length=8192)) as lms:
        await lms.load_model(MODEL)
        assert fake.requests_to("/api/v1/models/load")[-1].json == {"model": MODEL, "context_length": 8192}
        loaded = await lms.list_loaded_models()
        assert [(m.id, m.context_size) for m in loaded] == [(MODEL, 8192)]
        await lms.load_model(MODEL)  # already loaded: LM Studio would add a second instance
        assert len(fake.requests_to("/api/v1/models/load")) == 1
        assert fake.loaded_ids() == [MODEL]
        await lms.unload_model(MODEL)
        assert fake.requests_to("/api/v1/models/unload")[-1].json == {"instance_id": MODEL}
        assert await lms.list_loaded_models() == []
        await lms.unload_model(MODEL)  # not loaded: nothing to do
        assert len(fake.requests_to("/api/v1/models/unload")) == 1


async def test_unload_every_instance_or_one(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    fake.load(MODEL)
    fake.load(MODEL, context_length=2048)
    fake.load(MODEL)
    assert fake.loaded_ids() == [MODEL, f"{MODEL}:2", f"{MODEL}:3"]
    assert await lms.is_model_loaded(f"{MODEL}:2")
    await lms.unload_model(f"{MODEL}:2")
    assert fake.loaded_ids() == [MODEL, f"{MODEL}:3"]
    await lms.unload_model(MODEL)
    assert fake.loaded_ids() == []
    assert [r.json["instance_id"] for r in fake.requests_to("/api/v1/models/unload")] == [
        f"{MODEL}:2", MODEL, f"{MODEL}:3"]


async def test_load_and_unload_unknown_model(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await lms.load_model("nope/nope")
    assert info.value.status_code == 404 and 'Invalid model identifier "nope/nope"' in str(info.value)
    with pytest.raises(ModelNotFoundError):
        await lms.unload_model("nope/nope")
    assert fake.requests_to("/api/v1/models/unload") == []


async def test_old_server_cannot_load_unload_or_download() -> None:
    with FakeLMStudio(models=[MODEL], rest_api="v0") as server:
        provider = LMStudioProvider(make_config(server.url))
        async with provider:
            for call in (provider.load_model(MODEL), provider.unload_model(MODEL),
                         _pull(provider, "google/gemma-3-1b")):
                with pytest.raises(UnsupportedOperationError) as info:
                    await call
                text = str(info.value)
                assert "LM Studio 0.4.0" in text and "LM Studio" in text
            with pytest.raises(UnsupportedOperationError) as loading:
                await provider.load_model(MODEL)
            assert "lmstudio-python" in str(loading.value) and "lms load" in str(loading.value)
        assert not [r for r in server.requests if r.method == "POST"]


# -- downloads ---------------------------------------------------------------------------------


async def test_pull_polls_the_job_to_completion(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    fake.catalog["google/gemma-3-1b"] = 3_000_000
    statuses = await _pull(lms, "google/gemma-3-1b")
    assert fake.requests_to("/api/v1/models/download")[-1].json == {"model": "google/gemma-3-1b"}
    job_id = next(iter(fake.jobs))
    assert len(fake.requests_to(f"/api/v1/models/download/status/{job_id}")) == 3
    assert [s.status for s in statuses] == ["downloading"] * 3 + ["completed"]
    assert [s.bytes_downloaded for s in statuses] == [0, 1_000_000, 2_000_000, 3_000_000]
    assert all(s.total_bytes == 3_000_000 for s in statuses)
    assert statuses[1].speed_bps == 1_048_576.0 and statuses[1].eta_seconds is not None
    assert [s.complete for s in statuses] == [False, False, False, True]
    assert statuses[-1].progress == 1.0 and statuses[-1].speed_bps == 1_048_576.0
    assert "google/gemma-3-1b" in {m.id for m in await lms.list_downloaded_models()}


async def test_pull_polls_the_job_listing_where_needed(
    lms: LMStudioProvider, fake: FakeLMStudio
) -> None:
    fake.catalog["google/gemma-3-1b"] = 2000
    fake.status_by_id = False  # unknown path: 200 {"error": "Unexpected endpoint..."}
    fake.download_steps = 2
    statuses = await _pull(lms, "google/gemma-3-1b")
    assert [s.bytes_downloaded for s in statuses] == [0, 1000, 2000] and statuses[-1].complete
    assert len(fake.requests_to("/api/v1/models/download/status")) == 2


async def test_unload_of_an_instance_that_just_went_away(
    lms: LMStudioProvider, fake: FakeLMStudio
) -> None:
    fake.load(MODEL)
    fake.fault("/api/v1/models/unload", "status", status=404,
               body={"error": {"message": "No such instance", "type": "invalid_request_error"}})
    await lms.unload_model(MODEL)  # already gone: not an error
    fake.fault("/api/v1/models/unload", "status", status=500)
    with pytest.raises(ProviderAPIError) as info:
        await lms.unload_model(MODEL)
    assert info.value.status_code == 500


async def test_pull_of_a_downloaded_model(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    statuses = await _pull(lms, MODEL)
    assert len(statuses) == 1 and statuses[0].complete
    assert statuses[0].status == "already downloaded"
    assert not [r for r in fake.requests if "status" in r.path]


async def test_pull_paused_then_resumed(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    fake.catalog["big/model"] = 1000
    fake.pause_polls = 2
    fake.download_steps = 1
    statuses = await _pull(lms, "big/model")
    assert [s.status for s in statuses] == ["downloading", "paused", "paused", "completed"]
    assert statuses[-1].complete and statuses[-1].bytes_downloaded == 1000


async def test_pull_failure(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    fake.catalog["broken/model"] = 1000
    fake.failing.add("broken/model")
    fake.download_steps = 4
    seen: list[DownloadStatus] = []
    with pytest.raises(DownloadError) as info:
        await lms.download_model("broken/model", seen.append)
    assert "could not download 'broken/model'" in str(info.value) and "500 of 1000" in str(info.value)
    assert [s.bytes_downloaded for s in seen] == [0, 250]
    last = lms.get_download_status("broken/model")
    assert last is not None and last.status == "error" and last.bytes_downloaded == 250


async def test_pull_unknown_model(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await _pull(lms, "nope/nope")
    assert info.value.status_code == 404 and "catalog" in str(info.value)
    assert fake.jobs == {}


async def test_pull_endpoint_missing_in_a_200_answer(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    fake.fault("/api/v1/models/download", "status", status=200,
               body={"error": "Unexpected endpoint or method. (POST /api/v1/models/download)"})
    with pytest.raises(UnsupportedOperationError) as info:
        await _pull(lms, "google/gemma-3-1b")
    assert "Unexpected endpoint" in str(info.value)


async def test_closing_the_pull_stops_polling(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    fake.catalog["big/model"] = 10_000
    fake.download_steps = 1000
    stream = lms.pull_model("big/model")
    seen = [await anext(stream) for _ in range(3)]
    await stream.aclose()  # type: ignore[attr-defined]
    polls = len([r for r in fake.requests if "/download/status/" in r.path])
    await asyncio.sleep(0.1)
    assert polls == 2 and len([r for r in fake.requests if "/download/status/" in r.path]) == 2
    assert not seen[-1].complete


async def test_background_download(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    fake.catalog["google/gemma-3-1b"] = 2000
    await lms.start_download("google/gemma-3-1b")
    assert await fake.async_wait_for(
        lambda: (s := lms.get_download_status("google/gemma-3-1b")) is not None and s.complete
    )


# -- generation --------------------------------------------------------------------------------


async def test_generate_and_chat_bodies(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    result = await lms.generate(MODEL, "Why?", GenerationOptions(max_tokens=4, top_k=20))
    assert result.text == "".join(DEFAULT_TOKENS[:4]) and result.finish_reason == "length"
    assert result.stats.output_tokens == 4
    body = fake.requests_to("/v1/completions")[-1].json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["top_k"] == 20 and "ttl" not in body
    reply = await lms.chat(MODEL, [{"role": "user", "content": "Hi"}])
    assert reply.text == TEXT
    assert fake.requests_to("/v1/chat/completions")[-1].json["messages"] == [
        {"role": "user", "content": "Hi"}]


async def test_ttl_is_sent(fake: FakeLMStudio) -> None:
    async with LMStudioProvider(make_config(fake.url, ttl_seconds=600)) as lms:
        await lms.generate(MODEL, "hi")
        assert fake.requests_to("/v1/completions")[-1].json["ttl"] == 600
        assert fake.library[MODEL].instances[0].ttl == 600  # the JIT load got it
        await lms.chat(MODEL, [{"role": "user", "content": "hi"}], GenerationOptions(keep_alive="5m"))
        assert fake.requests_to("/v1/chat/completions")[-1].json["ttl"] == 300
        await lms.generate(MODEL, "hi", GenerationOptions(additional_params={"ttl": 7}))
        assert fake.requests_to("/v1/completions")[-1].json["ttl"] == 7


async def test_unknown_model_and_embedding_model(lms: LMStudioProvider) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await lms.generate("o4-mini", "hi")
    assert info.value.status_code == 400 and 'Invalid model identifier "o4-mini"' in str(info.value)
    with pytest.raises(ProviderAPIError) as embed:
        await lms.generate(EMBED, "hi")
    assert not isinstance(embed.value, ModelNotFoundError) and "embedding" in str(embed.value)


async def test_older_not_found_text_is_model_not_found(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    body = {"error": {"message": 'Model "local model" not found. Please specify a valid model.',
                      "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
    fake.fault("/v1/chat/completions", "status", status=404, body=body)
    with pytest.raises(ModelNotFoundError):
        await lms.chat("local model", [{"role": "user", "content": "hi"}])


async def test_error_in_stream(lms: LMStudioProvider, fake: FakeLMStudio) -> None:
    fake.fault("/v1/completions", "error_in_stream", after=2, message="Model crashed")
    with pytest.raises(GenerationError) as info:
        await lms.generate(MODEL, "hi")
    assert "Model crashed" in str(info.value) and "LM Studio" in str(info.value)


async def test_unavailable_is_retryable() -> None:
    from tests.ollama_helpers import closed_port_url

    async with LMStudioProvider(make_config(closed_port_url())) as provider:
        with pytest.raises(ProviderUnavailableError) as info:
            await provider.list_loaded_models()
    assert info.value.retryable and "LM Studio is not running" in str(info.value)


# -- authentication ----------------------------------------------------------------------------


async def test_token_is_sent_everywhere() -> None:
    with FakeLMStudio(models=[MODEL], api_key="sk-lm-secret") as server:
        server.catalog["a/b"] = 10
        async with LMStudioProvider(make_config(server.url, api_key="sk-lm-secret")) as provider:
            assert (await provider.status()).available
            await provider.load_model(MODEL)
            await provider.generate(MODEL, "hi")
            await provider.unload_model(MODEL)
            await provider.download_model("a/b")
        assert server.requests and all(
            r.headers.get("Authorization") == "Bearer sk-lm-secret" for r in server.requests
        )


async def test_missing_or_wrong_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LM_API_TOKEN", raising=False)
    with FakeLMStudio(models=[MODEL], api_key="sk-lm-secret") as server:
        async with LMStudioProvider(make_config(server.url)) as provider:
            status = await provider.status()
            assert not status.available and status.error is not None
            assert "LM_API_TOKEN" in status.error and "token is required" in status.error
            for call in (provider.list_downloaded_models(), provider.load_model(MODEL)):
                with pytest.raises(AuthenticationError) as info:
                    await call
                assert info.value.status_code == 401
        async with LMStudioProvider(make_config(server.url, api_key="wrong")) as provider:
            with pytest.raises(AuthenticationError) as wrong:
                await provider.generate(MODEL, "hi")
            assert "Invalid LM Studio API token" in str(wrong.value)
        monkeypatch.setenv("LM_API_TOKEN", "sk-lm-secret")
        async with LMStudioProvider(make_config(server.url)) as provider:
            assert [m.id for m in await provider.list_downloaded_models()] == [MODEL]
