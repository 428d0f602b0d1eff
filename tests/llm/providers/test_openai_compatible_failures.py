"""Every failure mode of the OpenAI-compatible provider, against the fake's faults.

Each failure must give a typed ``ProviderError`` with a message a person can act on, promptly
(never a hang), never a partial answer returned as success, and never a leaked connection.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from papin.llm.errors import (
    GenerationError,
    ModelNotFoundError,
    ProtocolError,
    ProviderAPIError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from papin.llm.providers.openai_compatible import OpenAICompatibleProvider
from papin.llm.wire.sse import SSEDecoder
from tests.fakes.openai_server import DEFAULT_TOKENS, UTF8_TOKENS, FakeOpenAIServer, Frame
from tests.openai_helpers import (
    CHAT,
    COMPLETIONS,
    MESSAGES,
    MODEL,
    TEXT,
    closed_port_url,
    make_config,
    still_works,
)

pytestmark = pytest.mark.timeout(20)


Custom = OpenAICompatibleProvider
Fake = FakeOpenAIServer


# -- connection failures ------------------------------------------------------------------------------


async def test_connection_refused() -> None:
    url = closed_port_url()
    async with OpenAICompatibleProvider(make_config(url + "/v1")) as provider:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError) as info:
            await provider.generate(MODEL, "hi")
        with pytest.raises(ProviderUnavailableError):
            await provider.list_downloaded_models()
        status = await provider.status()
    assert time.monotonic() - started < 3
    err = info.value
    assert not isinstance(err, ProviderTimeoutError) and err.retryable
    assert f"not running at {url}" in str(err) and "Start the server" in str(err)
    assert not status.available and status.error


async def test_reset(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "reset")
    with pytest.raises(ProviderUnavailableError) as info:
        await custom.chat(MODEL, MESSAGES)
    assert not isinstance(info.value, ProviderTimeoutError)
    assert str(fake.url) in str(info.value)
    await still_works(custom)


@pytest.mark.parametrize("rst", [False, True])
async def test_disconnect_mid_stream(custom: Custom, fake: Fake, rst: bool) -> None:
    fake.fault(CHAT, "disconnect_mid_stream", after=3, rst=rst)
    with pytest.raises(ProviderUnavailableError) as info:
        await custom.chat(MODEL, MESSAGES)
    assert "incomplete" in str(info.value) or "closed" in str(info.value)
    await still_works(custom)


# -- malformed answers -------------------------------------------------------------------------------


async def test_malformed_frame(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "malformed_frame", after=2, line="{not json")
    with pytest.raises(ProtocolError, match="malformed stream event") as info:
        await custom.chat(MODEL, MESSAGES)
    assert "{not json" in str(info.value)
    await still_works(custom)


@pytest.mark.parametrize("abort", [False, True])
async def test_truncated_frame(custom: Custom, fake: Fake, abort: bool) -> None:
    fake.fault(CHAT, "truncated_frame", after=3, abort=abort)
    with pytest.raises((ProtocolError, ProviderUnavailableError)) as info:
        await custom.chat(MODEL, MESSAGES)
    assert isinstance(info.value, ProviderError)
    await still_works(custom)


async def test_split_utf8_is_reassembled(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "split_utf8")
    assert (await custom.chat(MODEL, MESSAGES)).text == "".join(UTF8_TOKENS)
    fake.fault(COMPLETIONS, "split_utf8")
    assert (await custom.generate(MODEL, "hi")).text == "".join(UTF8_TOKENS)


async def test_split_utf8_reaches_the_client_split(
    custom: Custom, fake: Fake
) -> None:
    """The raw chunks really cut characters (so the test above is real)."""
    fake.fault(COMPLETIONS, "split_utf8")
    body = {"model": MODEL, "prompt": "x", "stream": True}
    chunks = [c async for c in custom.transport.stream("POST", COMPLETIONS, json=body)]
    undecodable = 0
    for chunk in chunks:
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            undecodable += 1
    assert undecodable > 0
    decoder = SSEDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)]
    assert events[-1].data == "[DONE]"
    text = "".join(json.loads(e.data)["choices"][0]["text"] for e in events[:-1])
    assert text == "".join(UTF8_TOKENS)


async def test_huge_stream_line_is_refused(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "huge_response", mb=9, content_type="text/event-stream")
    with pytest.raises(ProtocolError, match="exceeded"):
        await custom.chat(MODEL, MESSAGES)
    record = fake.last_stream
    assert record is not None
    assert await fake.async_wait_for(lambda: record.ended_at is not None)
    await still_works(custom)


async def test_huge_model_list_is_refused(custom: Custom, fake: Fake) -> None:
    fake.fault("/v1/models", "huge_response", mb=65)
    with pytest.raises(ProtocolError, match="larger than 64 MiB"):
        await custom.list_downloaded_models()


async def test_wrong_content_type_html(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "wrong_content_type")
    with pytest.raises(ProtocolError, match="HTML page") as info:
        await custom.chat(MODEL, MESSAGES)
    assert "proxy" in str(info.value)
    fake.fault("/v1/models", "wrong_content_type")
    with pytest.raises(ProtocolError, match="not JSON"):
        await custom.list_downloaded_models()
    await still_works(custom)


async def test_wrong_content_type_not_an_event_stream(
    custom: Custom, fake: Fake
) -> None:
    fake.fault(CHAT, "status", status=200, body="OK", content_type="text/plain")
    with pytest.raises(ProtocolError) as info:
        await custom.chat(MODEL, MESSAGES)
    assert "'text/plain" in str(info.value) and "OpenAI-compatible" in str(info.value)


async def test_empty_body(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "empty_body")
    with pytest.raises(ProtocolError, match="without a finish reason"):
        await custom.chat(MODEL, MESSAGES)
    fake.fault("/v1/models", "empty_body")
    with pytest.raises(ProtocolError, match="empty body"):
        await custom.list_downloaded_models()


# -- errors inside a 200 stream, and the end of the stream -----------------------------------------------


@pytest.mark.parametrize("done", [True, False], ids=["then-DONE", "no-DONE"])
async def test_error_inside_200_stream(custom: Custom, fake: Fake, done: bool) -> None:
    fake.fault(CHAT, "error_in_stream", after=3, message="CUDA out of memory", done=done)
    seen: list[str] = []
    with pytest.raises(GenerationError) as info:
        async for chunk in custom.stream_chat(MODEL, MESSAGES):
            seen.append(chunk.text)
    assert "".join(seen) == "".join(DEFAULT_TOKENS[:2])
    err = info.value
    assert "CUDA out of memory" in str(err) and "during generation" in str(err)
    assert err.status_code == 200 and isinstance(err.body, dict)
    await still_works(custom)


@pytest.mark.parametrize(
    ("error", "text"),
    [("an error was encountered while running the model", "an error was encountered"),
     ({"code": 500, "type": "server_error"}, "An error occurred during streaming")],
)
async def test_error_event_shapes(custom: Custom, fake: Fake, error: Any, text: str) -> None:
    fake.fault(COMPLETIONS, "error_in_stream", after=0, error=error)
    with pytest.raises(GenerationError, match=text):
        await custom.generate(MODEL, "hi")


async def test_no_done_after_a_finish_reason_is_fine(
    custom: Custom, fake: Fake
) -> None:
    fake.fault(CHAT, "no_done")
    result = await custom.chat(MODEL, MESSAGES)
    assert result.text == TEXT and result.stats.finish_reason == "stop"


async def test_no_done_and_no_finish_reason_is_a_protocol_error(
    custom: Custom, fake: Fake
) -> None:
    fake.fault(CHAT, "no_done", finish=False)
    with pytest.raises(ProtocolError, match=f"after {len(TEXT)} characters; the answer is incomplete"):
        await custom.chat(MODEL, MESSAGES)


# -- HTTP error statuses --------------------------------------------------------------------------------


async def test_429_with_retry_after(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "status", status=429, headers={"Retry-After": "7"})
    with pytest.raises(RateLimitedError) as info:
        await custom.chat(MODEL, MESSAGES)
    assert info.value.retry_after == 7.0 and info.value.retryable
    assert "Retry in 7 s" in str(info.value) and "rate limiting" in str(info.value)


async def test_503_loading_with_http_date(custom: Custom, fake: Fake) -> None:
    from email.utils import formatdate

    fake.fault(CHAT, "status", status=503, message="Loading model",
               headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)})
    with pytest.raises(RateLimitedError) as info:
        await custom.chat(MODEL, MESSAGES)
    assert info.value.retry_after is not None and 25 <= info.value.retry_after <= 31
    assert "Loading model" in str(info.value) and "still loading" in str(info.value)


async def test_500_and_proxy_html(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "status", status=500, message="llama_decode failed")
    with pytest.raises(ProviderAPIError) as info:
        await custom.chat(MODEL, MESSAGES)
    assert info.value.retryable and "server error (500): llama_decode failed" in str(info.value)
    page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    fake.fault(CHAT, "status", status=502, body=page, content_type="text/html")
    with pytest.raises(ProviderAPIError, match=r"502 Bad Gateway \(an HTML page\)"):
        await custom.chat(MODEL, MESSAGES)


async def test_unknown_route_is_not_model_not_found(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "status", status=404, body={"detail": "Not Found"})
    with pytest.raises(ProviderAPIError) as info:
        await custom.chat(MODEL, MESSAGES)
    assert not isinstance(info.value, ModelNotFoundError)
    assert "has no endpoint /v1/chat/completions" in str(info.value)




class _HoldsAfterDone(FakeOpenAIServer):
    """Sends ``[DONE]`` and then one more frame, so that a stall can come right after ``[DONE]``."""

    def stream_frames(self, *args: Any, **kwargs: Any) -> list[Frame]:
        return [*super().stream_frames(*args, **kwargs), b": trailing\n\n"]


async def test_done_then_the_server_holds_the_body_open() -> None:
    with _HoldsAfterDone(models=[MODEL]) as fake:
        provider = OpenAICompatibleProvider(make_config(fake.url, idle_timeout_seconds=5.0))
        async with provider:
            fake.fault(CHAT, "stall_mid_stream", after=100, seconds=10)  # before the last frame
            started = time.monotonic()
            assert (await provider.chat(MODEL, MESSAGES)).text == TEXT
            assert time.monotonic() - started < 1.5  # finish_stream gives up quickly
            assert await fake.wait_for_disconnects(1)
            await still_works(provider)
