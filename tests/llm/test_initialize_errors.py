"""Typed failures: ``initialize()`` fails with the configured provider's own typed error,
at start-up as later.

The status check of a configured server that answers 401, 429/503 with ``Retry-After``, or
never answers must not collapse into "No LLM provider is available": the caller gets the
``AuthenticationError``, ``RateLimitedError`` (with ``retry_after``) or
``ProviderTimeoutError`` the same request would give mid-generation, chained to the original,
with the other candidates in the message. No session outlives the failure. And a request's
``deadline_seconds`` bounds the whole generation.
"""

from __future__ import annotations

import asyncio
import gc
import json
import warnings
from collections.abc import Iterator

import pytest

from papin.llm import GenerationOptions, LLMConfig, LLMManager
from papin.llm.errors import (
    AuthenticationError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from papin.llm.sync import SyncLLMManager
from tests.fakes.ollama import DEFAULT_TOKENS, FakeOllama
from tests.ollama_helpers import MODEL, closed_port_url

pytestmark = pytest.mark.timeout(30)
VERSION = "/api/version"
TEXT = "".join(DEFAULT_TOKENS)


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL]) as server:
        yield server


def _manager(url: str, *, auto_discover: bool = False, **provider_config: object) -> LLMManager:
    settings = {"endpoint": url, "timeout_seconds": 0.5, "connect_timeout_seconds": 0.5, **provider_config}
    cfg = LLMConfig(provider_type="ollama", provider_config=settings, auto_discover=auto_discover)
    return LLMManager.with_config(cfg)


async def _initialize_error(manager: LLMManager) -> BaseException:
    with pytest.raises(Exception) as info:
        await manager.initialize()
    await manager.aclose()
    return info.value


async def test_401_at_start_is_an_authentication_error(fake: FakeOllama) -> None:
    fake.fault(VERSION, "status", status=401, times=5)
    error = await _initialize_error(_manager(fake.url))
    assert isinstance(error, AuthenticationError)
    assert error.status_code == 401 and error.provider == "ollama"
    assert isinstance(error.__cause__, AuthenticationError)  # chained to the original
    assert "auto_discover is off" in str(error)


@pytest.mark.parametrize("status", [429, 503])
async def test_busy_at_start_is_rate_limited_with_retry_after(fake: FakeOllama, status: int) -> None:
    fake.fault(VERSION, "status", status=status, headers={"Retry-After": "7"}, times=5)
    error = await _initialize_error(_manager(fake.url))
    assert isinstance(error, RateLimitedError)
    assert error.status_code == status and error.retry_after == 7


async def test_a_server_that_never_answers_at_start_is_a_timeout(fake: FakeOllama) -> None:
    fake.fault(VERSION, "never_answer", seconds=5, times=5)
    error = await _initialize_error(_manager(fake.url))
    assert isinstance(error, ProviderTimeoutError)
    assert error.phase == "request"


async def test_the_typed_error_names_the_other_candidates(fake: FakeOllama, tmp_path: object) -> None:
    """With auto_discover on and no other candidate usable, the configured server's 401 still
    decides the type; the message also says what else was tried."""
    fake.fault(VERSION, "status", status=401, times=50)
    cfg = LLMConfig(
        provider_type="ollama",
        provider_config={"endpoint": fake.url, "timeout_seconds": 0.5},
        auto_discover=True,
    ).with_provider_settings("llamacpp", model_path="/nonexistent/papin-test-model.gguf")
    error = await _initialize_error(LLMManager.with_config(cfg))
    assert isinstance(error, AuthenticationError), error
    assert "Also tried: " in str(error) and "llamacpp" in str(error)


async def test_nothing_listening_stays_provider_unavailable() -> None:
    error = await _initialize_error(_manager(closed_port_url()))
    assert isinstance(error, ProviderUnavailableError) and not isinstance(error, ProviderTimeoutError)
    assert "not running" in str(error)


async def test_a_failed_start_leaves_no_session_open(fake: FakeOllama) -> None:
    fake.fault(VERSION, "status", status=401, times=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager = _manager(fake.url)
        await _initialize_error(manager)
        del manager
        gc.collect()
    leaks = [w for w in caught if "Unclosed" in str(w.message)]
    assert not leaks, [str(w.message) for w in leaks]


# -- deadline_seconds: a bound on the whole generation ------------------------------------------


def _streaming_manager(fake: FakeOllama) -> LLMManager:
    settings = {"endpoint": fake.url, "idle_timeout_seconds": 5.0, "first_byte_timeout_seconds": 5.0}
    return LLMManager.with_config(LLMConfig(provider_type="ollama", provider_config=settings))


async def test_deadline_bounds_a_stream_that_keeps_going(fake: FakeOllama) -> None:
    """Each token comes well within the idle limit, but the whole answer is too slow: the
    deadline ends it, typed, and the backend sees the client leave."""
    fake.tokens = ["x"] * 200
    fake.token_delay = 0.02  # 4 s in all; the idle limit (5 s) never trips
    manager = _streaming_manager(fake)
    got: list[str] = []
    started = asyncio.get_running_loop().time()
    with pytest.raises(ProviderTimeoutError) as info:
        async for chunk in manager.stream(MODEL, "hi", GenerationOptions(deadline_seconds=0.3)):
            got.append(chunk.text)
    elapsed = asyncio.get_running_loop().time() - started
    await manager.aclose()
    assert info.value.phase == "deadline" and info.value.timeout == 0.3
    assert 0.25 < elapsed < 2.0
    assert 0 < len(got) < 200 and f"{len(got)} characters had arrived" in str(info.value)
    assert await fake.wait_for_disconnects(1)


async def test_deadline_bounds_a_non_streamed_call_and_a_fast_answer_passes(fake: FakeOllama) -> None:
    fake.fault("/api/generate", "never_answer", seconds=5)
    manager = _streaming_manager(fake)
    with pytest.raises(ProviderTimeoutError) as info:
        await manager.generate_text(MODEL, "hi", GenerationOptions(deadline_seconds=0.2))
    assert info.value.phase == "deadline"
    assert await manager.generate_text(MODEL, "hi", GenerationOptions(deadline_seconds=5.0)) == TEXT
    await manager.aclose()


def test_deadline_is_papins_own_and_never_sent(fake: FakeOllama) -> None:
    with SyncLLMManager(_streaming_manager(fake)) as llm:
        assert llm.generate_text(MODEL, "hi", GenerationOptions(deadline_seconds=5.0)) == TEXT
    body = fake.requests_to("/api/generate")[-1].json
    assert "deadline" not in json.dumps(body)
    with pytest.raises(ValueError):
        GenerationOptions(deadline_seconds=0)
