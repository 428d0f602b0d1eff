"""Stopping streams closes the connection on the server side; no connection leaks.

The fake records, per answer, how many frames it planned and sent and whether the client went
away; a stopped stream must show up there as a disconnect, after which the fake stops sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from papin.llm.config import LLMConfig
from papin.llm.datatypes import DownloadStatus
from papin.llm.errors import ModelNotFoundError, ProviderError
from papin.llm.manager import LLMManager
from papin.llm.providers.ollama import OllamaProvider
from papin.llm.sync import SyncLLMManager
from tests.fakes._server import StreamRecord
from tests.fakes.ollama import DEFAULT_TOKENS, FakeOllama
from tests.ollama_helpers import MODEL, make_config

pytestmark = pytest.mark.timeout(20)
TEXT = "".join(DEFAULT_TOKENS)
GEN = "/api/generate"
LONG = [f" w{i}" for i in range(300)]


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


def _manager(fake: FakeOllama, *, auto_pull: bool = True, idle: float = 2.0) -> LLMManager:
    provider_config = {"endpoint": fake.url, "idle_timeout_seconds": idle,
                       "first_byte_timeout_seconds": 5.0}
    cfg = LLMConfig(provider_type="ollama", provider_config=provider_config, auto_pull=auto_pull)
    return LLMManager.with_config(cfg)


@pytest.fixture
def slow_fake(fake: FakeOllama) -> FakeOllama:
    """The fake streaming 300 tokens, 10 ms apart (3 s in all)."""
    fake.tokens = list(LONG)
    fake.token_delay = 0.01
    return fake


async def _assert_server_saw_stop(fake: FakeOllama) -> StreamRecord:
    assert await fake.wait_for_disconnects(1, 5.0), "the fake never saw the client go away"
    record = fake.streams[-1]
    assert not record.completed
    sent = record.sent
    assert sent < record.planned
    await asyncio.sleep(0.1)
    assert record.sent == sent, "the fake kept sending after the disconnect"
    return record


# -- stopping ----------------------------------------------------------------------------------


async def test_callback_false_via_manager_closes_connection(slow_fake: FakeOllama) -> None:
    seen: list[str] = []

    def callback(text: str) -> bool:
        seen.append(text)
        return len(seen) < 3

    async with _manager(slow_fake) as manager:
        result = await manager.generate_text_streaming(MODEL, "hi", None, callback)
    assert result.finish_reason == "cancelled"
    assert result.text == "".join(LONG[:3]) == "".join(seen)
    record = await _assert_server_saw_stop(slow_fake)
    assert record.sent < 50


async def test_async_callback_false_closes_connection(ollama: OllamaProvider,
                                                      slow_fake: FakeOllama) -> None:
    async def callback(text: str) -> bool:
        await asyncio.sleep(0)
        return False

    result = await ollama.generate_text_streaming(MODEL, "hi", None, callback)
    assert result.finish_reason == "cancelled" and result.text == LONG[0]
    await _assert_server_saw_stop(slow_fake)


async def test_cancelling_the_task_closes_connection(ollama: OllamaProvider,
                                                     slow_fake: FakeOllama) -> None:
    task = asyncio.create_task(ollama.generate(MODEL, "hi"))
    assert await slow_fake.async_wait_for(
        lambda: bool(slow_fake.streams) and slow_fake.streams[-1].sent >= 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _assert_server_saw_stop(slow_fake)
    slow_fake.token_delay = 0
    assert (await ollama.generate(MODEL, "again")).text == "".join(LONG)


async def test_timeout_around_a_stream_closes_connection(ollama: OllamaProvider,
                                                         slow_fake: FakeOllama) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await ollama.generate(MODEL, "hi")
    await _assert_server_saw_stop(slow_fake)


async def test_breaking_out_of_manager_stream_closes_connection(slow_fake: FakeOllama) -> None:
    async with _manager(slow_fake) as manager:
        got = []
        stream = manager.stream(MODEL, "hi")
        async for chunk in stream:
            got.append(chunk.text)
            if len(got) == 4:
                break
        await stream.aclose()  # type: ignore[attr-defined]
    assert got == LONG[:4]
    await _assert_server_saw_stop(slow_fake)


async def test_closing_provider_stream_closes_connection(ollama: OllamaProvider,
                                                         slow_fake: FakeOllama) -> None:
    stream = ollama.stream_chat(MODEL, [{"role": "user", "content": "hi"}])
    first = await stream.__anext__()
    assert first.text == LONG[0]
    await stream.aclose()  # type: ignore[attr-defined]
    await _assert_server_saw_stop(slow_fake)


def test_sync_facade_stop_closes_connection(slow_fake: FakeOllama) -> None:
    with SyncLLMManager(_manager(slow_fake)) as llm:
        result = llm.generate_text_streaming(MODEL, "hi", None, lambda text: False)
        assert result.finish_reason == "cancelled"
        assert slow_fake.wait_for(lambda: slow_fake.disconnects >= 1, 5.0)
        chunks = []
        for chunk in llm.stream(MODEL, "hi"):
            chunks.append(chunk.text)
            if len(chunks) == 2:
                break
        assert chunks == LONG[:2]
        assert slow_fake.wait_for(lambda: slow_fake.disconnects >= 2, 5.0)


def test_sync_caller_time_between_chunks_is_not_server_idle(fake: FakeOllama) -> None:
    """Time the caller spends between chunks (sync iteration) never counts as server idle."""
    fake.tokens = ["a", "b", "c"]
    fake.token_delay = 0.02  # one read per token: a read is in flight while the caller sleeps
    with SyncLLMManager(_manager(fake, idle=0.1)) as llm:
        provider = llm.initialize().current_provider
        assert isinstance(provider, OllamaProvider)
        assert provider.transport.timeouts.idle == 0.1
        out = []
        for chunk in llm.stream(MODEL, "hi"):
            out.append(chunk.text)
            time.sleep(0.15)  # longer than the idle limit
        assert "".join(out) == "abc"


async def test_async_caller_time_between_chunks_is_not_server_idle(fake: FakeOllama) -> None:
    fake.tokens = ["a", "b", "c"]
    async with OllamaProvider(make_config(fake.url, idle_timeout_seconds=0.1)) as provider:
        out = []
        async for chunk in provider.stream_generate(MODEL, "hi"):
            out.append(chunk.text)
            await asyncio.sleep(0.15)
    assert "".join(out) == "abc"


# -- connection hygiene ------------------------------------------------------------------------


async def test_connections_are_reused(ollama: OllamaProvider, fake: FakeOllama) -> None:
    for _ in range(10):
        assert (await ollama.generate(MODEL, "hi")).text == TEXT
        await ollama.list_downloaded_models()
    assert fake.connections_opened == 1


async def test_no_leaked_connections_after_failures(fake: FakeOllama) -> None:
    config = make_config(fake.url, idle_timeout_seconds=0.3, first_byte_timeout_seconds=0.6,
                         timeout_seconds=0.6)
    faults = ["reset", "disconnect_mid_stream", "stall_mid_stream", "never_answer",
              "malformed_frame", "truncated_frame", "error_in_stream", "no_done",
              "wrong_content_type", "empty_body"]
    async with OllamaProvider(config) as provider:
        for kind in faults:
            fake.fault(GEN, kind)
            with pytest.raises(ProviderError):
                await provider.generate(MODEL, "hi")
            assert (await provider.generate(MODEL, "ok")).text == TEXT
            assert await fake.async_wait_for(lambda: fake.open_connections <= 1, 2.0), kind
        fake.fault(GEN, "huge_response", mb=10)
        with pytest.raises(ProviderError):
            await provider.generate(MODEL, "hi")
        assert (await provider.generate(MODEL, "ok")).text == TEXT
    assert await fake.async_wait_for(lambda: fake.open_connections == 0, 3.0)


async def test_concurrent_streams(ollama: OllamaProvider, fake: FakeOllama) -> None:
    fake.token_delay = 0.005
    results = await asyncio.gather(*(ollama.generate(MODEL, f"q{i}") for i in range(8)))
    assert all(r.text == TEXT for r in results)
    assert 1 <= fake.connections_opened <= 8


async def test_closing_the_provider_closes_its_connections(fake: FakeOllama) -> None:
    provider = OllamaProvider(make_config(fake.url))
    await provider.generate(MODEL, "hi")
    assert fake.open_connections == 1
    await provider.aclose()
    await provider.aclose()  # idempotent
    assert await fake.async_wait_for(lambda: fake.open_connections == 0, 3.0)


async def test_closing_provider_cancels_background_download(fake: FakeOllama) -> None:
    fake.pullable["huge"] = [10**10]
    fake.pull_updates, fake.pull_delay = 1000, 0.01
    provider = OllamaProvider(make_config(fake.url))
    await provider.start_download("huge")
    assert await fake.async_wait_for(lambda: bool(fake.streams) and fake.streams[-1].sent > 2)
    await provider.aclose()
    assert await fake.wait_for_disconnects(1)
    assert await fake.async_wait_for(lambda: fake.open_connections == 0, 3.0)


# -- manager integration -----------------------------------------------------------------------


async def test_manager_pulls_a_missing_model_then_generates(fake: FakeOllama) -> None:
    fake.pullable["phi3:mini"] = [5000, 100]
    progress: list[DownloadStatus] = []
    async with _manager(fake) as manager:
        text = await manager.generate_text("phi3:mini", "hi", on_download=progress.append)
    assert text == TEXT
    assert progress and progress[-1].complete
    paths = [r.path for r in fake.requests if r.path != "/api/version"]
    assert paths == [GEN, "/api/pull", GEN]


async def test_manager_without_auto_pull_says_how_to_enable_it(fake: FakeOllama) -> None:
    async with _manager(fake, auto_pull=False) as manager:
        with pytest.raises(ModelNotFoundError) as info:
            await manager.generate_text("phi3:mini", "hi")
    assert "auto_pull" in str(info.value)
    assert not fake.requests_to("/api/pull")


@contextlib.asynccontextmanager
async def _open(url: str) -> AsyncIterator[OllamaProvider]:
    provider = OllamaProvider(make_config(url))
    async with provider:
        yield provider


async def test_fake_stop_releases_a_held_request(fake: FakeOllama) -> None:
    """Stopping the fake while a request hangs ends quickly for both sides."""
    fake.fault(GEN, "never_answer")
    async with _open(fake.url) as provider:
        task = asyncio.create_task(provider.generate(MODEL, "hi"))
        assert await fake.async_wait_for(lambda: bool(fake.requests_to(GEN)))
        await asyncio.to_thread(fake.stop)
        assert not fake.running
        with pytest.raises(ProviderError):
            await asyncio.wait_for(task, 5.0)
