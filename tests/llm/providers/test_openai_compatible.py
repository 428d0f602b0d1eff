"""The custom OpenAI-compatible provider against the fake OpenAI server: endpoints, keys,
custom headers, TLS, per-phase timeouts, and stopping a stream (the server sees the client go).

Failure modes are in ``test_openai_compatible_failures.py``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from papin.llm.config import LLMConfig
from papin.llm.errors import (
    AuthenticationError,
    ConfigurationError,
    ModelNotFoundError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from papin.llm.manager import LLMManager
from papin.llm.options import GenerationOptions
from papin.llm.providers.openai_compatible import OpenAICompatibleConfig, OpenAICompatibleProvider
from tests.fakes.openai_server import DEFAULT_TOKENS, FakeOpenAIServer
from tests.openai_helpers import (
    CHAT,
    COMPLETIONS,
    FAST,
    MESSAGES,
    MODEL,
    TEXT,
    make_config,
    still_works,
)

pytestmark = pytest.mark.timeout(20)


Custom = OpenAICompatibleProvider
Fake = FakeOpenAIServer


# -- endpoint, requests, answers -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_endpoint_with_or_without_v1(fake: Fake, suffix: str) -> None:
    provider = OpenAICompatibleProvider(make_config(fake.url + suffix))
    async with provider:
        assert provider.endpoint == fake.url
        assert [m.id for m in await provider.list_downloaded_models()] == [MODEL, "other"]
        assert (await provider.generate(MODEL, "hi")).text == TEXT
        assert (await provider.chat(MODEL, MESSAGES)).text == TEXT
    assert [r.path for r in fake.requests] == ["/v1/models", COMPLETIONS, CHAT]


def test_an_endpoint_is_required() -> None:
    with pytest.raises(ConfigurationError, match="No endpoint"):
        OpenAICompatibleProvider(OpenAICompatibleConfig())


async def test_generate_request_and_stats(custom: Custom, fake: Fake) -> None:
    options = GenerationOptions(temperature=0.0, seed=7, stop=["\n\n"], additional_params={"top_k": 5})
    result = await custom.generate(MODEL, "Why is the sky blue?", options)
    assert result.text == TEXT and result.model == MODEL and result.provider == "openai_compatible"
    stats = result.stats
    assert stats.finish_reason == "stop"
    assert stats.output_tokens == len(DEFAULT_TOKENS) and stats.prompt_tokens == 6
    assert stats.time_to_first_token is not None and stats.total_time is not None
    body = fake.requests_to(COMPLETIONS)[0].json
    assert body == {"model": MODEL, "prompt": "Why is the sky blue?", "stream": True,
                    "stream_options": {"include_usage": True}, "temperature": 0.0, "seed": 7,
                    "stop": ["\n\n"], "top_k": 5}
    record = fake.last_stream
    assert record is not None
    assert await fake.async_wait_for(lambda: record.completed)  # the server wrote it all


async def test_chat_and_max_tokens(custom: Custom, fake: Fake) -> None:
    result = await custom.chat(MODEL, MESSAGES, GenerationOptions(max_tokens=3, system="Be brief."))
    assert result.text == "".join(DEFAULT_TOKENS[:3])
    assert result.stats.finish_reason == "length" and result.stats.output_tokens == 3
    body = fake.requests_to(CHAT)[0].json
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, *MESSAGES]
    assert body["max_tokens"] == 3


async def test_stream_chunks_then_one_done(custom: Custom) -> None:
    chunks = [c async for c in custom.stream_chat(MODEL, MESSAGES)]
    assert [c.text for c in chunks[:-1]] == DEFAULT_TOKENS
    assert chunks[-1].done and chunks[-1].stats is not None and not chunks[-1].text


async def test_without_usage_chunk(custom: Custom, fake: Fake) -> None:
    fake.include_role_chunk = False
    result = await custom.chat(MODEL, MESSAGES, GenerationOptions(additional_params={
        "stream_options": {"include_usage": False}}))
    assert result.text == TEXT and result.stats.output_tokens is None


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
async def test_keepalives_event_fields_and_line_endings(
    custom: Custom, fake: Fake, ending: str
) -> None:
    fake.line_ending = ending
    fake.keepalive_every = 1
    fake.event_name = "completion"
    fake.event_ids = True
    fake.retry_ms = 3000
    assert (await custom.chat(MODEL, MESSAGES)).text == TEXT
    assert (await custom.generate(MODEL, "hi")).text == TEXT


async def test_models_with_only_ids_and_status(custom: Custom, fake: Fake) -> None:
    status = await custom.status()
    assert status.available and status.endpoint == fake.url and status.error is None
    fake.models = []
    assert await custom.list_downloaded_models() == []


async def test_unknown_model(custom: Custom) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await custom.generate("nope", "hi")
    message = str(info.value)
    assert "'nope'" in message and "does not exist" in message and "papin models list" in message
    assert info.value.status_code == 404


# -- keys, headers, TLS ------------------------------------------------------------------------------


async def test_api_key_is_sent_as_bearer(fake: Fake) -> None:
    fake.api_key = "sk-local"
    async with OpenAICompatibleProvider(make_config(fake.url, api_key="sk-local")) as provider:
        assert (await provider.generate(MODEL, "hi")).text == TEXT
        assert await provider.list_downloaded_models()
    assert {r.headers["Authorization"] for r in fake.requests} == {"Bearer sk-local"}


@pytest.mark.parametrize("key", [None, "wrong"])
async def test_missing_or_wrong_key_is_401(fake: Fake, key: str | None) -> None:
    fake.api_key = "sk-local"
    async with OpenAICompatibleProvider(make_config(fake.url, api_key=key)) as provider:
        with pytest.raises(AuthenticationError) as info:
            await provider.generate(MODEL, "hi")
        with pytest.raises(AuthenticationError):
            await provider.list_downloaded_models()
        status = await provider.status()
    message = str(info.value)
    assert "(401)" in message and "Invalid API Key" in message and "api_key" in message
    assert not status.available and status.error and "401" in status.error


async def test_custom_headers_are_sent(fake: Fake) -> None:
    headers = {"X-Team": "research", "Authorization": "Bearer from-headers"}
    async with OpenAICompatibleProvider(make_config(fake.url, headers=headers, api_key="ignored")) as p:
        await p.generate(MODEL, "hi")
        await p.list_downloaded_models()
    for request in fake.requests:
        assert request.headers["X-Team"] == "research"
        assert request.headers.getall("Authorization") == ["Bearer from-headers"]


async def test_x_api_key_server(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeOpenAIServer, "auth_headers", ("x-api-key",))
    fake.api_key = "k"
    async with OpenAICompatibleProvider(make_config(fake.url, headers={"X-Api-Key": "k"})) as p:
        assert (await p.chat(MODEL, MESSAGES)).text == TEXT


@pytest.fixture
def tls_fake(certificate: tuple[Path, Path]) -> Iterator[FakeOpenAIServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    with FakeOpenAIServer(models=[MODEL], ssl_context=context) as server:
        yield server


async def test_tls_self_signed_is_refused_with_a_hint(tls_fake: Fake) -> None:
    assert tls_fake.url.startswith("https://")
    async with OpenAICompatibleProvider(make_config(tls_fake.url + "/v1")) as provider:
        with pytest.raises(ProviderUnavailableError) as info:
            await provider.generate(MODEL, "hi")
        assert not (await provider.status()).available
    message = str(info.value)
    assert "TLS error" in message and "verify_ssl" in message and "ca_bundle" in message


async def test_tls_verify_off_and_ca_bundle(tls_fake: Fake, certificate: tuple[Path, Path]) -> None:
    async with OpenAICompatibleProvider(make_config(tls_fake.url, verify_ssl=False)) as provider:
        assert (await provider.generate(MODEL, "hi")).text == TEXT
    async with OpenAICompatibleProvider(make_config(tls_fake.url, ca_bundle=str(certificate[0]))) as p:
        assert (await p.status()).available
        assert (await p.chat(MODEL, MESSAGES)).text == TEXT


async def test_https_to_plain_http_says_use_http(fake: Fake) -> None:
    async with OpenAICompatibleProvider(make_config(fake.url.replace("http:", "https:"))) as p:
        with pytest.raises(ProviderUnavailableError, match="http://"):
            await p.generate(MODEL, "hi")


# -- phase timeouts ------------------------------------------------------------------------------------


@pytest.fixture
def unaccepting_port() -> Iterator[str]:
    """A port whose accept queue is full: connecting hangs (a connect timeout)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    for sock in [*fillers, server]:
        sock.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a full accept queue drops SYNs on Linux")
async def test_connect_timeout(unaccepting_port: str) -> None:
    config = make_config(unaccepting_port, connect_timeout_seconds=0.2, timeout_seconds=5.0,
                         first_byte_timeout_seconds=5.0)
    async with OpenAICompatibleProvider(config) as provider:
        for call in (lambda: provider.generate(MODEL, "hi"), provider.list_downloaded_models):
            started = time.monotonic()
            with pytest.raises(ProviderTimeoutError) as info:
                await call()
            assert time.monotonic() - started < 2.5
            assert info.value.phase == "connect", str(info.value)
            assert "connecting" in str(info.value)


async def test_first_byte_timeout(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "never_answer", seconds=10)
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError) as info:
        await custom.chat(MODEL, MESSAGES)
    elapsed = time.monotonic() - started
    assert 0.7 < elapsed < 2.5
    assert info.value.phase == "first_byte" and info.value.timeout == 0.8
    assert "first_byte_timeout_seconds" in str(info.value)
    assert await fake.async_wait_for(lambda: fake.last_stream is not None and fake.last_stream.disconnected)
    await still_works(custom)


async def test_request_timeout(custom: Custom, fake: Fake) -> None:
    fake.fault("/v1/models", "never_answer", seconds=10)
    with pytest.raises(ProviderTimeoutError) as info:
        await custom.list_downloaded_models()
    assert info.value.phase == "request" and "timeout_seconds" in str(info.value)


async def test_stall_mid_stream_idle_timeout(custom: Custom, fake: Fake) -> None:
    fake.fault(COMPLETIONS, "stall_mid_stream", after=3, seconds=10)
    seen: list[str] = []
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError) as info:
        async for chunk in custom.stream_generate(MODEL, "hi"):
            seen.append(chunk.text)
    assert time.monotonic() - started < 2.0
    assert info.value.phase == "idle" and "stalled" in str(info.value)
    assert "".join(seen) == "".join(DEFAULT_TOKENS[:3])  # completions: no role chunk
    assert await fake.wait_for_disconnects(1)
    await still_works(custom)


async def test_slow_drip_succeeds(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "slow_drip", seconds=0.07)  # whole answer (~0.9 s) over the 0.3 s idle limit
    started = time.monotonic()
    assert (await custom.chat(MODEL, MESSAGES)).text == TEXT
    assert time.monotonic() - started > 0.6


async def test_time_the_caller_spends_is_not_counted(custom: Custom) -> None:
    parts = []
    async for chunk in custom.stream_chat(MODEL, MESSAGES):
        parts.append(chunk.text)
        if len(parts) in (2, 5):
            await asyncio.sleep(0.45)  # longer than the idle limit, on the caller's side
    assert "".join(parts) == TEXT


async def test_cold_load_within_first_byte(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "cold_load", seconds=0.45)  # longer than idle, shorter than first byte
    assert (await custom.chat(MODEL, MESSAGES)).text == TEXT


async def test_cold_load_longer_than_first_byte(custom: Custom, fake: Fake) -> None:
    fake.fault(CHAT, "cold_load", seconds=2)
    with pytest.raises(ProviderTimeoutError) as info:
        await custom.chat(MODEL, MESSAGES)
    assert info.value.phase == "first_byte" and "cold model load" in str(info.value)


# -- stopping a stream closes the connection ------------------------------------------------------------


async def test_callback_false_via_manager_closes_the_connection(fake: Fake) -> None:
    fake.token_delay = 0.05
    config = LLMConfig(provider_type="openai_compatible", auto_discover=False, auto_pull=False,
                       provider_config={"endpoint": fake.url + "/v1", **FAST})
    seen: list[str] = []

    def stop(text: str) -> bool:
        seen.append(text)
        return False

    async with LLMManager.with_config(config) as manager:
        result = await manager.generate_text_streaming(MODEL, "hi", None, stop)
        assert result.finish_reason == "cancelled" and result.text == seen[0] == DEFAULT_TOKENS[0]
        assert await fake.wait_for_disconnects(1)
        record = fake.last_stream
        assert record is not None and record.disconnected and record.sent < record.planned
        again = await manager.generate(MODEL, "hi")
        assert again.text == TEXT


async def test_task_cancellation_closes_the_connection(
    custom: Custom, fake: Fake
) -> None:
    fake.token_delay = 0.05
    first = asyncio.Event()

    async def consume() -> None:
        async for _chunk in custom.stream_chat(MODEL, MESSAGES):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake.wait_for_disconnects(1)
    await still_works(custom)


async def test_breaking_out_closes_the_connection(custom: Custom, fake: Fake) -> None:
    fake.token_delay = 0.05
    stream = custom.stream_generate(MODEL, "hi")
    async for _chunk in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    assert await fake.wait_for_disconnects(1)


async def test_no_connection_leaks_after_every_failure(fake: Fake) -> None:
    faults: list[tuple[str, dict[str, Any]]] = [
        ("reset", {}), ("never_answer", {"seconds": 5}), ("stall_mid_stream", {"seconds": 5}),
        ("disconnect_mid_stream", {}), ("malformed_frame", {}), ("truncated_frame", {}),
        ("error_in_stream", {}), ("error_in_stream", {"done": False}), ("no_done", {"finish": False}),
        ("wrong_content_type", {}), ("empty_body", {}), ("status", {"status": 503}),
        ("status", {"status": 401}),
    ]
    config = make_config(fake.url, first_byte_timeout_seconds=0.5, idle_timeout_seconds=0.2)
    async with OpenAICompatibleProvider(config) as provider:
        for kind, params in faults:
            fake.fault(CHAT, kind, **params)
            with pytest.raises(ProviderError):
                await provider.chat(MODEL, MESSAGES)
            for _ in range(2):
                assert (await provider.chat(MODEL, MESSAGES)).text == TEXT
        # only the pool's idle keep-alive connections stay open
        assert fake.open_connections <= 2
    assert await fake.async_wait_for(lambda: fake.open_connections == 0)
    assert await fake.async_wait_for(lambda: all(s.ended_at is not None for s in fake.streams))
