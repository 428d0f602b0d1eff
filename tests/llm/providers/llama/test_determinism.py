"""Greedy generation gives the same text in one process whatever ran before it: papin's cache
reuse keeps the logits those of a fresh evaluation (``reusable_prefix``), on every CPU.

With extra buffers off (what AMX CPUs get), raw llama-cpp-python 0.3.36 gives " girl named
Mary..." for the first call after a load and " little girl named Mary..." for the next ones on
this prompt: the second call re-evaluates only the prompt's last token, in a batch of one,
whose kernels round differently from the whole-prompt batch. These tests fail without the fix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from papin.llm import GenerationOptions
from papin.llm.providers._llama.runtime import LoadSettings, load_llama, reusable_prefix
from papin.llm.providers.llamacpp import DEFAULT_MODEL_ID, LlamaCppConfig, LlamaCppProvider
from tests.contract.backends import shared_models_dir
from tests.llama_helpers import require_default_model

pytestmark = [pytest.mark.timeout(180)]
GREEDY = GenerationOptions(max_tokens=24, temperature=0.0)
PROMPTS = ("Once upon a time, there was a", "The capital of France is", "Count slowly from one to ten:")


@pytest.fixture(params=[("thread", "auto"), ("thread", "off"), ("process", "off")], ids=lambda p: "-".join(p))
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[LlamaCppProvider]:
    require_default_model()
    isolation, extra_buffers = request.param
    config = LlamaCppConfig(
        models_dir=shared_models_dir(),
        keep_alive_seconds=-1,
        isolation=isolation,
        extra_buffers=extra_buffers,
    )
    async with LlamaCppProvider(config) as p:
        yield p


async def test_same_prompt_same_text_whatever_ran_before(provider: LlamaCppProvider) -> None:
    for prompt in PROMPTS:
        await provider.unload_model(DEFAULT_MODEL_ID)
        first = (await provider.generate(DEFAULT_MODEL_ID, prompt, GREEDY)).text  # fresh after a load
        assert (await provider.generate(DEFAULT_MODEL_ID, prompt, GREEDY)).text == first
        # a stream cancelled after two pieces, another prompt sharing the start, then again
        seen: list[str] = []

        def two_pieces(text: str, seen: list[str] = seen) -> bool:
            seen.append(text)
            return len(seen) < 2

        await provider.generate_text_streaming(DEFAULT_MODEL_ID, prompt, GREEDY, two_pieces)
        await provider.generate(DEFAULT_MODEL_ID, prompt + " little", GREEDY)
        assert (await provider.generate(DEFAULT_MODEL_ID, prompt, GREEDY)).text == first
        chat = [{"role": "user", "content": prompt}]
        reply = (await provider.chat(DEFAULT_MODEL_ID, chat, GREEDY)).text
        assert (await provider.chat(DEFAULT_MODEL_ID, chat, GREEDY)).text == reply


async def test_batch_aligned_reuse_gives_the_fresh_logits_bit_for_bit() -> None:
    """After any cache state, the prompt's last logits equal a fresh evaluation's exactly, with a
    small batch so that reuse really happens (several whole batches of the prompt are kept)."""
    require_default_model()
    import numpy as np

    async with LlamaCppProvider(LlamaCppConfig(models_dir=shared_models_dir())) as installer:
        path = str((await installer._resolve(DEFAULT_MODEL_ID)).path)  # installed on first use
    settings = LoadSettings(n_ctx=512, n_threads=2, n_batch=8, n_gpu_layers=0, extra_buffers=False)
    llama = load_llama(path, settings)
    try:
        tokens = llama.tokenize(b"It was a bright cold day in April, and the clocks were striking thirteen.")
        assert len(tokens) > 16

        def last_logits() -> np.ndarray:
            generator = llama.generate(tokens, temp=0.0)
            next(generator)  # evaluates the prompt (reusing what it may), samples one token
            generator.close()
            return np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(llama.n_vocab(),)).copy()

        llama.reset()
        fresh = last_logits()
        again = last_logits()  # the cache holds the prompt and one token
        assert llama._papin_prompt_end == len(tokens)
        llama.generate(tokens[:-3] + [tokens[0]], temp=0.0).__next__()  # another prompt, same start
        after_other = last_logits()
        assert np.array_equal(fresh, again) and np.array_equal(fresh, after_other)
        assert reusable_prefix(tokens, tokens, 8, len(tokens)) == (len(tokens) - 1) // 8 * 8 > 0
    finally:
        llama.close()


@pytest.mark.parametrize(("prompt_cache", "second_call_evaluates"), [("exact", "all"), ("longest", "one")])
async def test_prompt_cache_setting(prompt_cache: str, second_call_evaluates: str) -> None:
    """``exact`` re-evaluates a short prompt whole (it lies in one partial batch); ``longest``
    (llama-cpp-python's own reuse) re-evaluates only its last token."""
    require_default_model()
    config = LlamaCppConfig(models_dir=shared_models_dir(), keep_alive_seconds=-1, prompt_cache=prompt_cache)
    async with LlamaCppProvider(config) as provider:
        await provider.generate(DEFAULT_MODEL_ID, PROMPTS[0], GREEDY)
        entry = provider.pool.get(DEFAULT_MODEL_ID)
        assert entry is not None
        evaluated: list[int] = []
        real_eval = entry.llama.eval

        def counting_eval(tokens: list[int]) -> None:
            evaluated.append(len(tokens))
            real_eval(tokens)

        entry.llama.eval = counting_eval
        await provider.generate(
            DEFAULT_MODEL_ID, PROMPTS[0], GenerationOptions(max_tokens=1, temperature=0.0)
        )
        prompt_tokens = len(entry.llama.tokenize(PROMPTS[0].encode(), add_bos=True, special=True))
        assert evaluated[0] == (prompt_tokens if second_call_evaluates == "all" else 1)
