"""The one stream driver (``HttpProvider.stream_pieces``) and the parsers it runs, on real
sockets: keep-alive frames are not progress, in-stream errors and missing end markers are typed."""

from __future__ import annotations

import pytest

from papin.llm.errors import GenerationError, ProtocolError, ProviderTimeoutError
from papin.llm.providers.ollama import OllamaProvider
from papin.llm.providers.openai_compatible import OpenAICompatibleProvider
from papin.llm.wire.stream import LlamaNativeEvents, OllamaGeneration, OpenAIEvents
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_server import FakeOpenAIServer
from tests.ollama_helpers import MODEL, make_config
from tests.openai_helpers import MODEL as OPENAI_MODEL
from tests.openai_helpers import make_config as openai_config

pytestmark = pytest.mark.timeout(30)


async def test_ollama_keepalives_forever_after_one_frame_is_an_idle_timeout() -> None:
    with FakeOllama(models=[MODEL]) as fake:
        fake.fault("/api/generate", "keepalive_forever", after=1, every=0.05, seconds=20)
        async with OllamaProvider(make_config(fake.url, idle_timeout_seconds=0.5)) as provider:
            seen: list[str] = []
            with pytest.raises(ProviderTimeoutError, match="only keep-alive frames for 0.5 s") as caught:
                async for chunk in provider.stream_generate(MODEL, "Hi"):
                    seen.append(chunk.text)
            assert caught.value.phase == "idle" and seen  # the first frame came through


async def test_openai_keepalive_comments_forever_are_an_idle_timeout() -> None:
    with FakeOpenAIServer(models=[OPENAI_MODEL]) as fake:
        fake.fault("/v1/chat/completions", "keepalive_forever", after=2, every=0.05, seconds=20)
        config = openai_config(fake.url, idle_timeout_seconds=0.5)
        async with OpenAICompatibleProvider(config) as provider:
            with pytest.raises(ProviderTimeoutError) as caught:
                await provider.chat(OPENAI_MODEL, [{"role": "user", "content": "Hi"}])
            assert caught.value.phase == "idle"


async def test_keepalives_before_the_first_token_count_against_the_first_byte_limit() -> None:
    with FakeOpenAIServer(models=[OPENAI_MODEL]) as fake:
        fake.fault("/v1/completions", "keepalive_forever", after=0, every=0.05, seconds=20)
        config = openai_config(fake.url, idle_timeout_seconds=0.2, first_byte_timeout_seconds=0.6)
        async with OpenAICompatibleProvider(config) as provider:
            with pytest.raises(ProviderTimeoutError, match="first_byte_timeout_seconds") as caught:
                await provider.generate(OPENAI_MODEL, "Hi")
            assert caught.value.phase == "first_byte"


def test_parsers_ignore_keepalives_and_join_split_utf8() -> None:
    ollama = OllamaGeneration("ollama", "Ollama", "m")
    text = '{"response":"Grüße","done":false}\n'.encode()
    pieces = ollama.feed(b"\n\n" + text[:12]) + ollama.feed(text[12:]) + ollama.feed(b'{"done":true}\n')
    assert [p.text for p in pieces] == ["Grüße", ""] and pieces[-1].final == {"done": True}
    assert ollama.feed(b'{"response":"late"}\n') == []  # nothing after the final message

    openai = OpenAIEvents("openai_compatible", "Server", "m")
    frame = 'data: {"choices":[{"delta":{"content":"日本"}}]}\n\n'.encode()
    pieces = openai.feed(b": keep-alive\n\n" + frame[:40]) + openai.feed(frame[40:] + b"data: [DONE]\n\n")
    assert [p.text for p in pieces] == ["日本", ""] and pieces[-1].final is True


def test_parsers_report_in_stream_errors_and_missing_ends_typed() -> None:
    ollama = OllamaGeneration("ollama", "Ollama", "m")
    [piece] = ollama.feed(b'{"error":"out of memory"}\n')
    error = ollama.failure(piece, received=12)
    assert isinstance(error, GenerationError) and "after 12 characters: out of memory" in str(error)
    assert error.status_code == 200
    with pytest.raises(ProtocolError, match="Unexpected stream message"):
        OllamaGeneration("ollama", "Ollama", "m").feed(b"[1, 2]\n")

    openai = OpenAIEvents("vllm", "vLLM", "m")
    openai.feed(b'data: {"choices":[{"text":"a"}]}\n\n')
    assert openai.close() == []  # no finish reason, no [DONE]
    assert "ended without a finish reason or [DONE] after 1 characters" in str(openai.incomplete(1, ""))
    finished = OpenAIEvents("vllm", "vLLM", "m")
    finished.feed(b'data: {"choices":[{"text":"a","finish_reason":"length"}]}\n\n')
    assert [p.final for p in finished.close()] == [True]  # a finish reason without [DONE] is whole

    native = LlamaNativeEvents("llamacpp_server", "llama-server", "m")
    pieces = native.feed(b'data: {"content":"x","stop":false}\n\ndata: {"error":{"message":"boom"}}\n\n')
    assert pieces[0].text == "x" and pieces[1].error is not None
    assert "llama-server reported an error during generation after 1 characters: boom" in str(
        native.failure(pieces[1], 1)
    )
