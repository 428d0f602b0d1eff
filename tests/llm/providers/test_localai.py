"""The LocalAI provider against the fake LocalAI server (``backend-apis.md`` §2, §7.4, §8).

Readiness, authentication across versions, error mapping, generation, the model gallery
(download progress, failure, cancel), delete, load and unload; and the fake's wire details.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from papin.llm.datatypes import DownloadStatus
from papin.llm.errors import (
    AuthenticationError,
    DownloadError,
    GenerationError,
    ModelNotFoundError,
    ProviderAPIError,
    RateLimitedError,
)
from papin.llm.factory import get_provider_factory
from papin.llm.options import GenerationOptions
from papin.llm.providers.localai import LocalAIConfig, LocalAIProvider, parse_size
from tests.contract.backends import closed_port_url
from tests.fakes.localai import MIB, FakeLocalAI, format_bytes

pytestmark = pytest.mark.timeout(20)
TOKENS = ["Hello", " from", " Local", "AI", "!"]


def make_config(url: str, **overrides: Any) -> LocalAIConfig:
    """Short limits and a fast gallery poll, for tests."""
    settings: dict[str, Any] = {
        "endpoint": url, "timeout_seconds": 5.0, "connect_timeout_seconds": 2.0,
        "first_byte_timeout_seconds": 5.0, "idle_timeout_seconds": 2.0,
        "gallery_poll_interval_seconds": 0.005,
    }
    settings.update(overrides)
    return LocalAIConfig(**settings)


@pytest.fixture(autouse=True)
def _no_localai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCALAI_API_KEY", raising=False)


@pytest.fixture
def fake() -> Iterator[FakeLocalAI]:
    """A fake LocalAI v4.9 with ``phi-2`` installed and ``tinyllama`` in the gallery."""
    with FakeLocalAI(models=["phi-2"], tokens=TOKENS) as server:
        server.add_gallery_model("tinyllama", files=[("tinyllama.Q4.gguf", 8 * MIB)])
        yield server


@pytest.fixture
async def localai(fake: FakeLocalAI) -> AsyncIterator[LocalAIProvider]:
    """A LocalAI provider talking to :func:`fake`."""
    provider = LocalAIProvider(make_config(fake.url))
    async with provider:
        yield provider


async def _pull(provider: LocalAIProvider, model: str) -> list[DownloadStatus]:
    return [status async for status in provider.pull_model(model)]


# -- configuration -----------------------------------------------------------------------------


def test_config_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = LocalAIProvider()
    assert provider.endpoint == "http://127.0.0.1:8080"
    assert provider.config.api_key is None
    monkeypatch.setenv("LOCALAI_API_KEY", "k1, k2")
    assert LocalAIConfig().api_key == "k1"
    assert LocalAIConfig(api_key="mine").api_key == "mine"
    assert LocalAIProvider(LocalAIConfig(endpoint="http://h:9/v1/")).endpoint == "http://h:9"
    created = get_provider_factory().create_provider("localai", {"endpoint": "http://h:1"})
    assert isinstance(created, LocalAIProvider) and created.name == "localai"
    with pytest.raises(ValueError):
        LocalAIConfig(gallery_poll_interval_seconds=0)


def test_parse_size_and_format_bytes_agree() -> None:
    for size in (0, 512, 1536, 8 * MIB, 3 * 1024**3 + 5):
        parsed = parse_size(format_bytes(size))
        assert parsed is not None and abs(parsed - size) <= max(1, size) * 0.05
    assert parse_size("1.2 GB") == 1_200_000_000 and parse_size("n/a") is None


# -- status and readiness ----------------------------------------------------------------------


async def test_status_ready_with_version(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    status = await localai.status()
    assert status.available and status.error is None
    assert status.version == "v4.9.0" and status.details["state"] == "ready"
    assert [r.path for r in fake.requests] == ["/readyz", "/version"]
    assert await localai.get_version() == "v4.9.0"


async def test_status_starting_is_loading(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    fake.starting = True
    status = await localai.status()
    assert not status.available
    assert status.details == {"state": "loading", "reason": "startup preload in progress"}
    assert status.error is not None and "still starting up" in status.error
    fake.starting = False
    assert (await localai.status()).available


async def test_readyz_before_v4_8_is_always_ready() -> None:
    with FakeLocalAI(version="4.7.0") as old:
        old.starting = True
        async with LocalAIProvider(make_config(old.url)) as provider:
            assert (await provider.status()).available


async def test_status_without_readyz_or_version_probes_the_model_list(
    localai: LocalAIProvider, fake: FakeLocalAI
) -> None:
    not_found = {"error": {"code": 404, "message": "Resource not found"}}
    fake.fault("/readyz", "status", status=404, body=not_found)
    fake.fault("/version", "status", status=404, body=not_found)
    status = await localai.status()
    assert status.available and status.version is None
    assert [r.path for r in fake.requests].count("/v1/models") == 2


async def test_status_not_running_never_raises() -> None:
    async with LocalAIProvider(make_config(closed_port_url())) as provider:
        status = await provider.status()
    assert not status.available and status.error is not None
    assert "not running" in status.error and "local-ai run" in status.error


async def test_status_checks_the_key(fake: FakeLocalAI) -> None:
    fake.api_key = "sk-right"
    async with LocalAIProvider(make_config(fake.url, api_key="sk-wrong")) as provider:
        status = await provider.status()
    assert not status.available and status.error is not None
    assert "An authentication key is required" in status.error and "LOCALAI_API_KEY" in status.error
    assert fake.requests_to("/readyz")  # public: answered without a key


# -- authentication across versions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "key", "expected"),
    [
        ("4.9.0", None, "An authentication key is required"),
        ("4.0.0", "sk-wrong", "An authentication key is required"),  # JSON request: JSON
        ("3.5.0", "sk-wrong", "HTML login page"),
        ("2.20.0", None, "Authorization header missing"),
        ("2.20.0", "sk-wrong", "Invalid API key"),
    ],
)
async def test_401_shapes_become_authentication_errors(
    version: str, key: str | None, expected: str
) -> None:
    with FakeLocalAI(version=version, api_key="k1,sk-right") as server:
        async with LocalAIProvider(make_config(server.url, api_key=key)) as provider:
            with pytest.raises(AuthenticationError) as info:
                await provider.generate("phi-2", "hi")
            err = info.value
            assert err.status_code == 401 and expected in str(err)
            assert "api_key (or LOCALAI_API_KEY)" in str(err)
            with pytest.raises(AuthenticationError, match="401"):
                await provider.list_downloaded_models()  # a GET: the login page in 3.8-4.0 too
        sent = server.requests[0].headers.get("Authorization")
        assert sent == (f"Bearer {key}" if key else None)


async def test_html_login_page_for_get_requests_in_v4_0() -> None:
    with FakeLocalAI(version="4.0.0", api_key="sk-right") as server:
        async with LocalAIProvider(make_config(server.url)) as provider:
            with pytest.raises(AuthenticationError, match="HTML login page"):
                await provider.list_downloaded_models()
            status = await provider.status()
            assert not status.available and "login page" in (status.error or "")


async def test_right_key_any_of_several(fake: FakeLocalAI) -> None:
    fake.api_key = "k1,sk-right"
    async with LocalAIProvider(make_config(fake.url, api_key="sk-right")) as provider:
        assert (await provider.status()).available
        assert await provider.generate_text("phi-2", "hi") == "".join(TOKENS)


# -- models ------------------------------------------------------------------------------------


async def test_list_models(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    fake.models.append("bert-embeddings")
    models = await localai.list_downloaded_models()
    assert [m.id for m in models] == ["phi-2", "bert-embeddings"]
    assert all(m.installed and m.provider == "localai" for m in models)


async def test_list_available_models_merges_gallery_and_installed(
    localai: LocalAIProvider, fake: FakeLocalAI
) -> None:
    fake.add_gallery_model("phi-2", files=[("phi-2.gguf", MIB)], license="mit")
    available = {m.id: m for m in await localai.list_available_models()}
    assert set(available) == {"localai@tinyllama", "localai@phi-2"}
    assert available["localai@phi-2"].installed and not available["localai@tinyllama"].installed
    tiny = available["localai@tinyllama"]
    assert tiny.name == "tinyllama" and tiny.metadata["gallery"] == "localai"
    assert tiny.metadata["backend"] == "llama-cpp" and tiny.description
    fake.models.append("custom-yaml-model")  # installed, from no gallery
    ids = {m.id for m in await localai.list_available_models()}
    assert "custom-yaml-model" in ids


async def test_gallery_disabled_lists_installed_only(
    localai: LocalAIProvider, fake: FakeLocalAI
) -> None:
    fake.fault("/models/available", "status", status=404,
               body={"error": {"code": 404, "message": "Resource not found"}})
    assert [m.id for m in await localai.list_available_models()] == ["phi-2"]


async def test_model_info(localai: LocalAIProvider) -> None:
    assert (await localai.get_model_info("phi-2")).installed
    info = await localai.get_model_info("tinyllama")
    assert info.id == "localai@tinyllama" and not info.installed
    with pytest.raises(ModelNotFoundError):
        await localai.get_model_info("nope")


# -- generation --------------------------------------------------------------------------------


async def test_generate_and_chat_with_usage(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    fake.keepalive_every = 1
    result = await localai.generate("phi-2", "Say hello", GenerationOptions(temperature=0.1))
    assert result.text == "".join(TOKENS) and result.finish_reason == "stop"
    assert result.stats.output_tokens == len(TOKENS) and result.stats.prompt_tokens == 3
    sent = fake.requests_to("/v1/completions")[-1].json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    reply = await localai.chat("phi-2", [{"role": "user", "content": "hi"}],
                               GenerationOptions(max_tokens=2))
    assert reply.text == "Hello from" and reply.finish_reason == "length"


async def test_error_in_stream_after_text(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    fake.fault("/v1/chat/completions", "error_in_stream", after=3, message="backend crashed")
    with pytest.raises(GenerationError, match="backend crashed") as info:
        await localai.chat("phi-2", [{"role": "user", "content": "hi"}])
    assert info.value.status_code == 200


@pytest.mark.parametrize(
    ("version", "model", "status"),
    [("4.9.0", "nope", 404), ("4.0.0", "nope", 500), ("4.9.0", "org/nope", 500)],
)
async def test_unknown_model_is_model_not_found(version: str, model: str, status: int) -> None:
    with FakeLocalAI(version=version) as server:
        async with LocalAIProvider(make_config(server.url)) as provider:
            with pytest.raises(ModelNotFoundError) as info:
                await provider.generate(model, "hi")
    err = info.value
    assert err.status_code == status and err.model == model and err.provider == "localai"
    assert "papin models pull" in str(err)


async def test_other_errors_are_mapped(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    fake.fault("/v1/completions", "status", status=400, body={"error": {
        "code": 400, "message": "code=400, message=failed parsing request body: bad", "type": ""}})
    with pytest.raises(ProviderAPIError) as info:
        await localai.generate("phi-2", "hi")
    assert "rejected the request (400): failed parsing request body: bad" in str(info.value)
    fake.fault("/v1/completions", "status", status=503, headers={"Retry-After": "10"}, body={
        "error": {"code": "model_loading", "message": "model is loading", "type": ""}})
    with pytest.raises(RateLimitedError) as busy:
        await localai.generate("phi-2", "hi")
    assert busy.value.retry_after == 10.0
    fake.opaque_errors = True  # LOCALAI_OPAQUE_ERRORS: nothing tells what is missing
    with pytest.raises(ProviderAPIError, match="empty body") as info2:
        await localai.generate("nope", "hi")
    assert info2.value.status_code == 404


# -- the gallery: downloads --------------------------------------------------------------------


async def test_pull_reports_progress_until_installed(
    localai: LocalAIProvider, fake: FakeLocalAI
) -> None:
    statuses = await _pull(localai, "localai@tinyllama")
    assert fake.requests_to("/models/apply")[0].json == {"id": "localai@tinyllama"}
    assert statuses[0].status == "processing model: tinyllama" and statuses[0].total_bytes is None
    progress = [s for s in statuses if s.status == "downloading tinyllama.Q4.gguf"]
    assert len(progress) == fake.job_updates
    done = [s.bytes_downloaded for s in progress]
    assert done == sorted(done) and done[-1] == 8 * MIB
    assert {s.total_bytes for s in progress} == {8 * MIB}
    assert any(s.speed_bps for s in progress) and any(s.eta_seconds is not None for s in progress)
    last = statuses[-1]
    assert last.complete and last.status == "completed" and last.progress == 1.0
    assert sum(1 for s in statuses if s.complete) == 1
    assert "tinyllama" in {m.id for m in await localai.list_downloaded_models()}
    assert not fake.requests_to("/api/operations/" + next(iter(fake.jobs)) + "/cancel")


async def test_pull_several_files_with_queue_and_late_job(
    localai: LocalAIProvider, fake: FakeLocalAI
) -> None:
    fake.add_gallery_model("whisper", gallery="other",
                           files=[("a.bin", 2 * MIB), ("b.bin", 6 * MIB)])
    fake.queued_polls, fake.hidden_polls = 2, 2
    statuses = await _pull(localai, "whisper")
    assert [s.status for s in statuses[:4]] == ["queued"] * 4  # 2 unknown + 2 queued
    totals = [s.total_bytes for s in statuses if s.total_bytes]
    assert totals[0] == 2 * MIB and totals[-1] == 8 * MIB  # grows as files appear
    done = [s.bytes_downloaded for s in statuses]
    assert done == sorted(done) and statuses[-1].complete


async def test_pull_with_exact_byte_counts(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    fake.report_bytes = True
    fake.add_gallery_model("two", files=[("a", 1000), ("b", 3000)])
    statuses = await _pull(localai, "two")
    moving = [s for s in statuses if s.status == "downloading"]
    assert {s.total_bytes for s in moving} == {4000}
    assert [s.bytes_downloaded for s in moving][-1] == 4000


async def test_pull_by_url(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    url = "github:mudler/LocalAI/gallery/tinyllama.yaml@master"
    assert (await _pull(localai, url))[-1].complete
    assert fake.requests_to("/models/apply")[0].json == {"url": url}


@pytest.mark.parametrize("version", ["4.3.0", "4.9.0"])
async def test_pull_failure_uses_the_message(version: str) -> None:
    with FakeLocalAI(version=version) as server:
        server.add_gallery_model("broken", fail="sha256 mismatch for broken.gguf")
        async with LocalAIProvider(make_config(server.url)) as provider:
            seen: list[DownloadStatus] = []
            with pytest.raises(DownloadError, match="sha256 mismatch for broken.gguf") as info:
                await provider.download_model("broken", seen.append)
            assert seen and not seen[-1].complete
            final = provider.get_download_status("broken")
            assert final is not None and final.error == str(info.value)
            job = next(iter(server.jobs.values())).current
            assert job is not None
            assert job["error"] == ({} if version == "4.3.0" else "sha256 mismatch for broken.gguf")


async def test_pull_unknown_gallery_model(localai: LocalAIProvider) -> None:
    with pytest.raises(ModelNotFoundError, match='no model found with name "localai@nope"'):
        await _pull(localai, "localai@nope")


async def test_cancel_download_cancels_the_job(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    fake.job_updates = 10_000
    await localai.start_download("tinyllama")
    assert await fake.async_wait_for(
        lambda: (s := localai.get_download_status("tinyllama")) is not None
        and s.bytes_downloaded > 0
    )
    await localai.cancel_download("tinyllama")
    job = next(iter(fake.jobs.values()))
    assert fake.requests_to(f"/api/operations/{job.uuid}/cancel", "POST")
    assert job.current is not None and job.current["cancelled"] and job.current["processed"]
    status = localai.get_download_status("tinyllama")
    assert status is not None and status.cancelled and not status.complete


async def test_closing_the_stream_without_a_cancel_api(
    localai: LocalAIProvider, fake: FakeLocalAI
) -> None:
    fake.cancel_supported = False
    fake.job_updates = 10_000
    stream = localai.pull_model("tinyllama")
    async for status in stream:
        if status.bytes_downloaded:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    job = next(iter(fake.jobs.values()))
    assert fake.requests_to(f"/api/operations/{job.uuid}/cancel")  # asked, answered 404
    assert not job.finished  # the server goes on with the job


async def test_job_cancelled_on_the_server(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    fake.job_updates = 10_000
    with pytest.raises(DownloadError, match="cancelled on the server"):
        async for status in localai.pull_model("tinyllama"):
            if status.bytes_downloaded:
                job = next(iter(fake.jobs.values()))
                async with httpx.AsyncClient(base_url=fake.url) as client:
                    answer = await client.post(f"/api/operations/{job.uuid}/cancel")
                assert answer.json() == {"success": True, "message": "Operation cancelled"}


async def test_lost_job(localai: LocalAIProvider, fake: FakeLocalAI,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("papin.llm.providers.localai._JOB_GRACE_SECONDS", 0.0)
    fake.hidden_polls = 1
    with pytest.raises(DownloadError, match="lost track of job"):
        await _pull(localai, "tinyllama")


# -- delete, load, unload ----------------------------------------------------------------------


async def test_delete_model(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    await localai.delete_model("phi-2")
    assert "phi-2" not in fake.models
    assert fake.requests_to("/models/delete/phi-2", "POST")
    with pytest.raises(ModelNotFoundError, match="not installed"):
        await localai.delete_model("phi-2")


async def test_delete_failure(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    fake.models.append("ghost")
    original = fake.op_status

    def failing(name: str, **values: Any) -> dict[str, Any]:
        if values.get("deletion"):
            values.update(message="error: permission denied", error="permission denied")
        return original(name, **values)

    fake.op_status = failing  # type: ignore[method-assign]
    with pytest.raises(ProviderAPIError, match="could not delete 'ghost': permission denied"):
        await localai.delete_model("ghost")


async def test_load_and_unload(localai: LocalAIProvider, fake: FakeLocalAI) -> None:
    await localai.load_model("phi-2")
    assert fake.loaded == {"phi-2"}
    await localai.unload_model("phi-2")
    assert fake.loaded == set()
    assert fake.requests_to("/backend/shutdown")[-1].json == {"model": "phi-2"}
    with pytest.raises(ModelNotFoundError, match="failed to load model"):
        await localai.load_model("nope")


async def test_load_before_v4_6_uses_a_tiny_completion() -> None:
    with FakeLocalAI(version="4.5.0") as server:
        async with LocalAIProvider(make_config(server.url)) as provider:
            await provider.load_model("phi-2")
            with pytest.raises(ModelNotFoundError):
                await provider.load_model("nope")
        sent = server.requests_to("/v1/completions")[0].json
        assert sent["max_tokens"] == 1 and sent["stream"] is False


# -- the fake's wire details -------------------------------------------------------------------


async def test_fake_sse_framing(fake: FakeLocalAI) -> None:
    fake.keepalive_every = 2
    body = {"model": "phi-2", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(base_url=fake.url) as client:
        answer = await client.post("/chat/completions", json=body)  # no /v1 prefix
        assert answer.headers["content-type"].startswith("text/event-stream")
        raw = answer.text
        assert raw.endswith("data: [DONE]\n\n") and ": keep-alive\n\n" in raw
        events = [json.loads(line[6:]) for line in raw.split("\n")
                  if line.startswith("data: {")]
        assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 5
        fake.fault("/v1/completions", "error_in_stream", after=1, message="boom")
        broken = await client.post("/v1/completions",
                                   json={"model": "phi-2", "prompt": "x", "stream": True})
        assert broken.status_code == 200
        assert broken.text.endswith(
            'data: {"error":{"code":"server_error","message":"boom","type":"server_error"}}\n\n'
            "data: [DONE]\n\n"
        )
        missing = await client.get("/no/such/route")
        assert missing.status_code == 404
        assert missing.json() == {"error": {"code": 404, "message": "Resource not found"}}


async def test_fake_auth_and_public_routes(fake: FakeLocalAI) -> None:
    fake.api_key = "sk"
    async with httpx.AsyncClient(base_url=fake.url) as client:
        denied = await client.get("/v1/models")
        assert denied.status_code == 401 and denied.headers["WWW-Authenticate"] == "Bearer"
        assert denied.json() == {"error": {"code": 401, "message": "An authentication key is required",
                                           "type": "invalid_request_error"}}
        for headers in ({"x-api-key": "sk"}, {"xi-api-key": "sk"}, {"Cookie": "token=sk"}):
            assert (await client.get("/v1/models", headers=headers)).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).content == b""


async def test_fake_jobs_and_bearer_model_quirk(fake: FakeLocalAI) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        applied = (await client.post("/models/apply", json={"id": "tinyllama"})).json()
        assert applied["status"] == f"{fake.url}/models/jobs/{applied['uuid']}"
        first = (await client.get(f"/models/jobs/{applied['uuid']}")).json()
        assert first["message"] == "processing model: tinyllama" and "error" not in first
        unknown = await client.get("/models/jobs/00000000-0000-0000-0000-000000000000")
        assert unknown.status_code == 500
        assert unknown.json()["error"]["message"] == "could not find any status for ID"
        fake.models.append("tok-model")
        answer = await client.post("/v1/completions", json={"prompt": "x"},
                                   headers={"Authorization": "Bearer tok-model"})
        assert answer.json()["model"] == "tok-model"
