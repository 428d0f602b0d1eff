"""Every failure mode of the Ollama provider, against the fake's faults.

Each failure must give the right typed ``ProviderError`` with a message a person can act on,
promptly (never a hang), and never a partial answer returned as success. Timeouts are tiny.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator

import pytest

from papin.llm.errors import (
    AuthenticationError,
    GenerationError,
    ModelNotFoundError,
    ProtocolError,
    ProviderAPIError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from papin.llm.options import GenerationOptions
from papin.llm.providers.ollama import OllamaProvider
from papin.llm.wire.ndjson import NdjsonDecoder
from tests.fakes.ollama import DEFAULT_TOKENS, UTF8_TOKENS, FakeOllama
from tests.ollama_helpers import MODEL, closed_port_url, make_config

pytestmark = pytest.mark.timeout(20)
TEXT = "".join(DEFAULT_TOKENS)
GEN = "/api/generate"


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    """A fake Ollama with :data:`MODEL` installed."""
    with FakeOllama(models=[MODEL]) as server:
        yield server


@pytest.fixture
async def ollama(fake: FakeOllama) -> AsyncIterator[OllamaProvider]:
    """A provider with tiny phase timeouts."""
    config = make_config(fake.url, timeout_seconds=1.0, first_byte_timeout_seconds=1.2,
                         idle_timeout_seconds=0.3)
    provider = OllamaProvider(config)
    async with provider:
        yield provider


async def _still_works(provider: OllamaProvider) -> None:
    """After a failure the same provider (and its connection pool) must still work."""
    assert (await provider.generate(MODEL, "again")).text == TEXT


# -- connection level --------------------------------------------------------------------------


async def test_connection_refused() -> None:
    url = closed_port_url()
    async with OllamaProvider(make_config(url)) as provider:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError) as info:
            await provider.generate(MODEL, "hi")
        assert time.monotonic() - started < 3
        with pytest.raises(ProviderUnavailableError):
            await provider.list_downloaded_models()
    err = info.value
    assert not isinstance(err, ProviderTimeoutError)
    assert f"not running at {url}" in str(err)
    assert "ollama serve" in str(err) and "OLLAMA_HOST" in str(err)
    assert err.retryable


async def test_reset_before_answer(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "reset")
    with pytest.raises(ProviderUnavailableError) as info:
        await ollama.generate(MODEL, "hi")
    assert "Lost the connection" in str(info.value) or "reset" in str(info.value)
    await _still_works(ollama)


async def test_reset_on_idempotent_request(ollama: OllamaProvider, fake: FakeOllama) -> None:
    # aiohttp retries an idempotent request once on a fresh connection; two resets defeat it.
    fake.fault("/api/tags", "reset", times=2)
    with pytest.raises(ProviderUnavailableError):
        await ollama.list_downloaded_models()
    assert [m.id for m in await ollama.list_downloaded_models()] == ["llama3.2:latest"]


async def test_never_answers_first_byte_timeout(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "never_answer")
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError) as info:
        await ollama.generate(MODEL, "hi")
    elapsed = time.monotonic() - started
    assert 1.1 < elapsed < 4
    err = info.value
    assert err.phase == "first_byte" and err.timeout == 1.2
    assert "first_byte_timeout_seconds" in str(err)
    assert await fake.wait_for_disconnects(1), "the client did not close the connection"
    await _still_works(ollama)


async def test_never_answers_management_request_timeout(
    ollama: OllamaProvider, fake: FakeOllama
) -> None:
    fake.fault("/api/tags", "never_answer")
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError) as info:
        await ollama.list_downloaded_models()
    assert time.monotonic() - started < 4
    assert info.value.phase == "request"
    assert "timeout_seconds" in str(info.value)
    assert await fake.wait_for_disconnects(1)


async def test_status_reports_a_hung_server(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault("/api/version", "never_answer")
    status = await ollama.status()
    assert not status.available and status.error and "within" in status.error


async def test_stall_mid_stream_idle_timeout(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "stall_mid_stream", after=3)
    got: list[str] = []
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError) as info:
        await ollama.generate_text_streaming(MODEL, "hi", None, got.append)
    # the idle limit (0.3 s) applies, not the longer first-byte limit (1.2 s)
    assert time.monotonic() - started < 1.1
    assert info.value.phase == "idle"
    assert "stalled" in str(info.value) and "idle_timeout_seconds" in str(info.value)
    assert got == DEFAULT_TOKENS[:3]  # partial text reached the callback, but no result
    assert await fake.wait_for_disconnects(1)
    await _still_works(ollama)


async def test_idle_limit_is_not_stretched_by_a_long_first_byte_limit(fake: FakeOllama) -> None:
    """Regression: the lazy phase timer was armed for the first-byte deadline only, so a stall
    after the first chunks was noticed only when the (long) first-byte limit ran out."""
    fake.fault(GEN, "stall_mid_stream", after=2)
    config = make_config(fake.url, first_byte_timeout_seconds=10.0, idle_timeout_seconds=0.3)
    async with OllamaProvider(config) as provider:
        started = time.monotonic()
        with pytest.raises(ProviderTimeoutError) as info:
            await provider.generate(MODEL, "hi")
    assert info.value.phase == "idle"
    assert time.monotonic() - started < 3.0


async def test_disconnect_mid_stream(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "disconnect_mid_stream", after=4)
    with pytest.raises(ProviderUnavailableError) as info:
        await ollama.generate(MODEL, "hi")
    assert not isinstance(info.value, ProviderTimeoutError)
    assert "incomplete" in str(info.value)
    await _still_works(ollama)


async def test_disconnect_mid_stream_with_rst(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "disconnect_mid_stream", after=2, rst=True)
    with pytest.raises(ProviderUnavailableError):
        await ollama.generate(MODEL, "hi")
    await _still_works(ollama)


# -- framing -----------------------------------------------------------------------------------


async def test_malformed_frame(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "malformed_frame", after=2, line=b"<<garbage>>\n")
    with pytest.raises(ProtocolError) as info:
        await ollama.generate(MODEL, "hi")
    assert "malformed" in str(info.value) and "<<garbage>>" in str(info.value)
    await _still_works(ollama)


async def test_truncated_frame(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "truncated_frame", after=3)
    with pytest.raises(ProtocolError, match="cut off"):
        await ollama.generate(MODEL, "hi")
    await _still_works(ollama)


async def test_truncated_frame_then_abort(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "truncated_frame", after=3, abort=True)
    with pytest.raises((ProviderUnavailableError, ProtocolError)) as info:
        await ollama.generate(MODEL, "hi")
    assert "incomplete" in str(info.value) or "cut off" in str(info.value)
    await _still_works(ollama)


async def test_split_utf8_is_reassembled(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "split_utf8")
    result = await ollama.generate(MODEL, "hi")
    assert result.text == "".join(UTF8_TOKENS)
    assert "\ufffd" not in result.text
    assert result.finish_reason == "stop"


async def test_split_utf8_reaches_the_client_split(ollama: OllamaProvider, fake: FakeOllama) -> None:
    """The raw chunks the transport yields really cut characters (so the test above is real)."""
    fake.fault(GEN, "split_utf8")
    body = {"model": MODEL, "prompt": "x"}
    chunks = [c async for c in ollama.transport.stream("POST", GEN, json=body)]
    undecodable = 0
    for chunk in chunks:
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            undecodable += 1
    assert len(chunks) > len(UTF8_TOKENS)
    assert undecodable > 0
    decoder = NdjsonDecoder()
    objs = [obj for chunk in chunks for obj in decoder.feed(chunk)]
    assert "".join(o["response"] for o in objs) == "".join(UTF8_TOKENS)


async def test_split_utf8_chat(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault("/api/chat", "split_utf8")
    result = await ollama.chat(MODEL, [{"role": "user", "content": "hi"}])
    assert result.text == "".join(UTF8_TOKENS)


async def test_error_inside_200_stream(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "error_in_stream", after=2)
    got: list[str] = []
    with pytest.raises(GenerationError) as info:
        await ollama.generate_text_streaming(MODEL, "hi", None, got.append)
    err = info.value
    assert "an error was encountered while running the model" in str(err)
    assert err.status_code == 200
    assert "after" in str(err)  # says that part of the answer had been received
    assert got == DEFAULT_TOKENS[:2]
    await _still_works(ollama)


async def test_error_as_first_line_of_stream(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "error_in_stream", after=0, message="model runner has unexpectedly stopped")
    with pytest.raises(GenerationError, match="unexpectedly stopped"):
        await ollama.generate(MODEL, "hi")


async def test_stream_without_done_marker(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "no_done")
    with pytest.raises(ProtocolError) as info:
        await ollama.generate(MODEL, "hi")
    assert "without its final message" in str(info.value)
    assert "incomplete" in str(info.value)


async def test_empty_body_on_stream(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "empty_body")
    with pytest.raises(ProtocolError) as info:
        await ollama.generate(MODEL, "hi")
    assert "empty body instead of a stream" in str(info.value)


async def test_empty_body_on_json_request(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault("/api/tags", "empty_body")
    with pytest.raises(ProtocolError, match="empty body"):
        await ollama.list_downloaded_models()


async def test_wrong_content_type_on_stream(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "wrong_content_type")
    with pytest.raises(ProtocolError) as info:
        await ollama.generate(MODEL, "hi")
    assert "HTML" in str(info.value) and "proxy" in str(info.value)


async def test_wrong_content_type_on_json_request(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault("/api/tags", "wrong_content_type")
    with pytest.raises(ProtocolError) as info:
        await ollama.list_downloaded_models()
    assert "text/html" in str(info.value) and "not JSON" in str(info.value)
    await _still_works(ollama)


async def test_huge_json_response_is_refused_with_bounded_memory(
    ollama: OllamaProvider, fake: FakeOllama
) -> None:
    ollama.transport.max_response_bytes = 1024 * 1024
    fake.fault("/api/tags", "huge_response", mb=50)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="larger than 1 MiB"):
            await ollama.list_downloaded_models()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024
    assert not fake.streams[-1].completed  # the client stopped reading long before 50 MB
    assert [m.id for m in await ollama.list_downloaded_models()] == ["llama3.2:latest"]


async def test_huge_stream_line_is_refused(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "huge_response", mb=20)
    with pytest.raises(ProtocolError, match="refusing to buffer more"):
        await ollama.generate(MODEL, "hi")
    assert not fake.streams[-1].completed
    await _still_works(ollama)


# -- slow but healthy --------------------------------------------------------------------------


async def test_slow_drip_succeeds(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "slow_drip", seconds=0.06)  # every chunk slow, within the 0.3 s idle limit
    started = time.monotonic()
    result = await ollama.generate(MODEL, "hi")
    assert result.text == TEXT
    assert time.monotonic() - started >= 0.06 * (len(DEFAULT_TOKENS) + 1) * 0.9


async def test_cold_load_longer_than_idle_within_first_byte(
    ollama: OllamaProvider, fake: FakeOllama
) -> None:
    fake.fault(GEN, "cold_load", seconds=0.7)  # > idle (0.3 s), < first byte (1.2 s)
    result = await ollama.generate(MODEL, "hi")
    assert result.text == TEXT


async def test_cold_load_longer_than_first_byte(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "cold_load", seconds=5)
    with pytest.raises(ProviderTimeoutError) as info:
        await ollama.generate(MODEL, "hi")
    assert info.value.phase == "first_byte"
    assert "cold" in str(info.value)


# -- HTTP statuses -----------------------------------------------------------------------------


async def test_429_with_retry_after(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "status", status=429, headers={"Retry-After": "7"})
    with pytest.raises(RateLimitedError) as info:
        await ollama.generate(MODEL, "hi")
    err = info.value
    assert err.retry_after == 7.0 and err.status_code == 429 and err.retryable
    assert "Retry in 7 s" in str(err) and "rate limiting" in str(err)


async def test_503_busy_with_http_date_retry_after(ollama: OllamaProvider, fake: FakeOllama) -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    fake.fault(GEN, "status", status=503, headers={"Retry-After": when})
    with pytest.raises(RateLimitedError) as info:
        await ollama.generate(MODEL, "hi")
    err = info.value
    assert err.retry_after is not None and 20 < err.retry_after <= 31
    assert "maximum pending requests exceeded" in str(err)  # Ollama's own text comes through


async def test_503_without_retry_after(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault("/api/tags", "status", status=503)
    with pytest.raises(RateLimitedError) as info:
        await ollama.list_downloaded_models()
    assert info.value.retry_after is None and "Retry later" in str(info.value)


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures(ollama: OllamaProvider, fake: FakeOllama, status: int) -> None:
    fake.fault(GEN, "status", status=status)
    with pytest.raises(AuthenticationError) as info:
        await ollama.generate(MODEL, "hi")
    assert info.value.status_code == status
    assert "api_key" in str(info.value)


async def test_500_server_error(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "status", status=500, body={"error": "llama runner process has terminated"})
    with pytest.raises(ProviderAPIError) as info:
        await ollama.generate(MODEL, "hi")
    err = info.value
    assert type(err) is ProviderAPIError and err.retryable and err.status_code == 500
    assert "llama runner process has terminated" in str(err)


async def test_proxy_html_error_page(ollama: OllamaProvider, fake: FakeOllama) -> None:
    page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    fake.fault(GEN, "status", status=502, body=page, content_type="text/html")
    with pytest.raises(ProviderAPIError) as info:
        await ollama.generate(MODEL, "hi")
    assert "502 Bad Gateway (an HTML page)" in str(info.value)
    assert "<html>" not in str(info.value)


async def test_wrong_option_type_is_a_500(ollama: OllamaProvider) -> None:
    options = GenerationOptions(additional_params={"top_k": "many"})
    with pytest.raises(ProviderAPIError, match='option "top_k" must be of type integer'):
        await ollama.generate(MODEL, "hi", options)


async def test_unknown_model(ollama: OllamaProvider) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await ollama.generate("ghost", "hi")
    err = info.value
    assert err.status_code == 404 and err.model == "ghost"
    assert "model 'ghost' not found" in str(err) and "papin models pull ghost" in str(err)


async def test_unknown_model_old_server_text(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.not_found_text = 'model "{name}" not found, try pulling it first'
    with pytest.raises(ModelNotFoundError):
        await ollama.chat("ghost", [{"role": "user", "content": "hi"}])


async def test_gin_404_is_not_model_not_found(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.fault(GEN, "status", status=404, body="404 page not found")
    with pytest.raises(ProviderAPIError) as info:
        await ollama.generate(MODEL, "hi")
    assert not isinstance(info.value, ModelNotFoundError)
    assert "has no endpoint /api/generate" in str(info.value)


async def test_every_failure_is_a_provider_error(ollama: OllamaProvider, fake: FakeOllama) -> None:
    """A single ``except ProviderError`` is enough whatever goes wrong."""
    kinds = ["reset", "disconnect_mid_stream", "malformed_frame", "truncated_frame",
             "error_in_stream", "no_done", "empty_body", "wrong_content_type"]
    for kind in kinds:
        fake.fault(GEN, kind)
        with pytest.raises(ProviderError):
            await ollama.generate(MODEL, "hi")
    await _still_works(ollama)
