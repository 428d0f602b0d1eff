"""The embedded provider's isolated mode (``isolation: "process"``): the model runs in a worker
process that papin supervises, behind the same Provider API. Real llama.cpp, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from papin.llm import GenerationOptions, NativeCrashError
from papin.llm.providers.llamacpp import (
    DEFAULT_MODEL_ID,
    LlamaCppConfig,
    LlamaCppProvider,
    PromptTruncatedWarning,
)
from tests.contract.backends import shared_models_dir
from tests.llama_helpers import crashing_gguf, require_default_model

pytestmark = [pytest.mark.timeout(120)]
GREEDY = GenerationOptions(max_tokens=16, temperature=0.0)
PROMPT = "Once upon a time, there was a"
LONG = GenerationOptions(max_tokens=300, temperature=0.0)


def isolated(**settings: Any) -> LlamaCppProvider:
    require_default_model()
    settings.setdefault("models_dir", shared_models_dir())
    settings.setdefault("keep_alive_seconds", -1)
    return LlamaCppProvider(LlamaCppConfig(isolation="process", **settings))


@pytest.fixture
async def provider() -> AsyncIterator[LlamaCppProvider]:
    p = isolated()
    yield p
    await p.aclose()


def worker_pid(provider: LlamaCppProvider) -> int:
    assert provider.worker is not None and provider.worker.pid is not None
    return provider.worker.pid


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


async def test_the_model_runs_in_the_worker(provider: LlamaCppProvider) -> None:
    result = await provider.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    pid = worker_pid(provider)
    assert pid != os.getpid() and result.text.strip()
    assert result.stats.load_time and result.stats.prompt_tokens and result.stats.output_tokens == 16
    status = await provider.status()
    assert status.endpoint == "isolated worker process" and status.details["worker_pid"] == str(pid)
    [loaded] = await provider.list_loaded_models()
    assert loaded.id == DEFAULT_MODEL_ID and loaded.context_size
    # llama.cpp's memory is in the worker, not here
    assert psutil.Process(pid).memory_info().rss > 200 * 2**20


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
async def test_a_worker_killed_mid_stream_is_a_typed_error_then_restarts(
    provider: LlamaCppProvider, sig: signal.Signals
) -> None:
    expected = await provider.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    pid = worker_pid(provider)
    chunks = 0
    with pytest.raises(NativeCrashError) as caught:
        async for _chunk in provider.stream_generate(DEFAULT_MODEL_ID, "Count to one hundred:", LONG):
            chunks += 1
            if chunks == 3:
                os.kill(pid, sig)
    error = caught.value
    assert error.signal == sig.name and error.stage == "generate" and error.model == DEFAULT_MODEL_ID
    assert "unaffected" in str(error) and ("out of memory" in str(error)) == (sig == signal.SIGKILL)
    assert 3 <= chunks < 300
    assert not await provider.is_model_loaded(DEFAULT_MODEL_ID)
    # the next call starts a new worker and loads the model again
    again = await provider.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    assert again.text == expected.text and again.stats.load_time is not None
    assert worker_pid(provider) != pid and provider.worker is not None and provider.worker.restarts == 1


async def test_every_call_in_flight_fails_when_the_worker_dies(provider: LlamaCppProvider) -> None:
    await provider.load_model(DEFAULT_MODEL_ID)
    pid = worker_pid(provider)
    started = asyncio.Event()

    async def consume(prompt: str) -> str:
        text = ""
        async for chunk in provider.stream_generate(DEFAULT_MODEL_ID, prompt, LONG):
            text += chunk.text
            started.set()
        return text

    tasks = [asyncio.create_task(consume(p)) for p in ("Red", "Blue", "Green")]  # two wait in line
    await asyncio.wait_for(started.wait(), 30)
    os.kill(pid, signal.SIGSEGV)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, NativeCrashError) for r in results), results


async def test_stop_within_one_token(provider: LlamaCppProvider) -> None:
    seen: list[str] = []

    def callback(text: str) -> bool:
        seen.append(text)
        return len(seen) < 3

    result = await provider.generate_text_streaming(DEFAULT_MODEL_ID, PROMPT, LONG, callback)
    assert result.finish_reason == "cancelled" and len(seen) == 3
    entry = provider.pool.get(DEFAULT_MODEL_ID)
    assert entry is not None and entry.tokens_after_stop is not None and entry.tokens_after_stop <= 1
    assert entry.busy == 0 and provider.worker is not None and provider.worker.alive()


async def test_cancelling_the_task_stops_the_worker(provider: LlamaCppProvider) -> None:
    await provider.load_model(DEFAULT_MODEL_ID)
    seen = asyncio.Event()

    async def consume() -> None:
        async for chunk in provider.stream_generate(DEFAULT_MODEL_ID, PROMPT, LONG):
            if chunk.text:
                seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(seen.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    entry = provider.pool.get(DEFAULT_MODEL_ID)
    assert entry is not None and entry.busy == 0
    assert entry.tokens_after_stop is not None and entry.tokens_after_stop <= 1
    started = time.perf_counter()
    assert (await provider.generate(DEFAULT_MODEL_ID, PROMPT, GenerationOptions(max_tokens=2))).text
    assert time.perf_counter() - started < 5  # the worker was free, not finishing 300 tokens


async def test_queued_not_interleaved_and_deterministic(provider: LlamaCppProvider) -> None:
    opts = GenerationOptions(max_tokens=10, temperature=0.0)
    expected = {p: (await provider.generate(DEFAULT_MODEL_ID, p, opts)).text for p in ("Red", "Blue")}
    prompts = ["Red", "Blue", "Red", "Blue"]
    results = await asyncio.gather(*(provider.generate(DEFAULT_MODEL_ID, p, opts) for p in prompts))
    assert [r.text for r in results] == [expected[p] for p in prompts]


async def test_keep_alive_unloads_in_the_worker() -> None:
    p = isolated(keep_alive_seconds=0.5)
    try:
        await p.load_model(DEFAULT_MODEL_ID)
        pid = worker_pid(p)
        loaded_rss = psutil.Process(pid).memory_info().rss
        for _ in range(50):
            if not await p.is_model_loaded(DEFAULT_MODEL_ID):
                break
            await asyncio.sleep(0.1)
        assert not await p.is_model_loaded(DEFAULT_MODEL_ID)
        assert psutil.Process(pid).memory_info().rss < loaded_rss - 100 * 2**20  # freed there
        await p.unload_model(DEFAULT_MODEL_ID)  # nothing loaded: no error
    finally:
        await p.aclose()


async def test_context_errors_and_warnings_cross_the_process() -> None:
    from papin.llm import GenerationError

    p = isolated(context_size=64)
    try:
        with pytest.raises(GenerationError, match=r"prompt is \d+ tokens but the context window .* is 64"):
            await p.generate(DEFAULT_MODEL_ID, "word " * 200, GREEDY)
    finally:
        await p.aclose()
    p = isolated(context_size=64, truncate_prompt=True)
    try:
        with pytest.warns(PromptTruncatedWarning, match=r"has \d+ tokens but the context is 64"):
            result = await p.generate(DEFAULT_MODEL_ID, "word " * 200, GenerationOptions(max_tokens=4))
        assert result.stats.output_tokens
    finally:
        await p.aclose()


async def test_a_crash_while_loading_fails_the_load_only(tmp_path: Path) -> None:
    p = isolated(models_dir=str(tmp_path / "models"), crash_probe=False)
    try:
        async for _ in p.pull_model(str(crashing_gguf(tmp_path / "broken.gguf"))):
            pass
        with pytest.raises(NativeCrashError) as caught:
            await p.generate("broken", PROMPT, GREEDY)
        assert caught.value.signal == "SIGABRT" and caught.value.stage == "load"
        assert "while loading a model" in str(caught.value)
    finally:
        await p.aclose()


CHILD = """
import asyncio, os, sys
from papin.llm.providers.llamacpp import LlamaCppConfig, LlamaCppProvider
async def main():
    p = LlamaCppProvider(LlamaCppConfig(isolation="process", models_dir=sys.argv[1], keep_alive_seconds=-1))
    await p.load_model("gemma-3-270m-q4_k_m")
    print(p.worker.pid, flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), 9)
asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["kill", "exit"])
def test_the_worker_never_outlives_papin(how: str, tmp_path: Path) -> None:
    """papin killed by SIGKILL (no cleanup runs: the parent-death signal), or exiting without
    closing the provider (the exit hook)."""
    require_default_model()
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    run = subprocess.run(
        [sys.executable, str(script), shared_models_dir(), how], capture_output=True, text=True, timeout=90
    )
    assert run.returncode == (-9 if how == "kill" else 0), run.stderr
    pid = int(run.stdout.split()[0])
    assert gone(pid), f"worker {pid} outlived papin"


def test_through_the_synchronous_facade() -> None:
    from papin.llm import LLMConfig
    from papin.llm.sync import create_sync_llm_manager

    require_default_model()
    settings = {"isolation": "process", "models_dir": shared_models_dir()}
    config = LLMConfig(provider_type="llamacpp", provider_config=settings)
    with create_sync_llm_manager(config=config) as llm:
        text = llm.generate_text(DEFAULT_MODEL_ID, PROMPT, GREEDY)
        streamed = "".join(chunk.text for chunk in llm.stream(DEFAULT_MODEL_ID, PROMPT, GREEDY))
        provider = llm.current_provider
        assert isinstance(provider, LlamaCppProvider) and provider.worker is not None
        pid = worker_pid(provider)
    assert text.strip() and streamed == text
    assert gone(pid)  # closing the facade stopped the worker
