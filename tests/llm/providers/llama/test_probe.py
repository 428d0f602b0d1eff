"""The crash probe: a native crash of llama.cpp happens in a child process, never in the caller.

The crashes here are real: the probe child dies by SIGSEGV (``PAPIN_TEST_PROBE_CRASH`` makes it
read address 0) or by llama.cpp's own SIGABRT on a GGUF that trips an assertion while loading.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from papin.llm import GenerationOptions, InvalidModelFileError, LLMConfig, LLMManager, NativeCrashError
from papin.llm.errors import ProviderTimeoutError
from papin.llm.providers._llama import probe as _llama_probe
from papin.llm.providers._llama.probe import PROBE_FILE, ProbeVerdict, VerdictStore
from papin.llm.providers.llamacpp import DEFAULT_MODEL_ID, LlamaCppConfig, LlamaCppProvider
from tests.contract.backends import shared_models_dir
from tests.llama_helpers import crashing_gguf, require_default_model

pytestmark = [pytest.mark.timeout(120)]
GREEDY = GenerationOptions(max_tokens=8, temperature=0.0)
PROMPT = "Once upon a time, there was a"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory of this test's own: no verdict is known yet."""
    folder = tmp_path / "data"
    monkeypatch.setenv("PAPIN_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, ProbeVerdict]]:
    """Every probe child run, as (extra_buffers, verdict)."""
    runs: list[tuple[bool, ProbeVerdict]] = []
    real = _llama_probe.run_probe

    def spy(path: str, settings: Any, timeout: float) -> ProbeVerdict:
        verdict = real(path, settings, timeout)
        runs.append((settings.extra_buffers, verdict))
        return verdict

    monkeypatch.setattr(_llama_probe, "run_probe", spy)
    return runs


@pytest.fixture
def extra_buffers_chosen_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """papin's rule picks extra buffers *on*, as on any CPU without AMX (so the fallback is
    exercised on AMX machines too)."""
    from papin.llm.hardware import tuning as tuning

    monkeypatch.setattr(tuning, "choose_extra_buffers", lambda cpu, features: (True, "injected: no AMX"))


def embedded(**settings: Any) -> LlamaCppProvider:
    require_default_model()
    settings.setdefault("models_dir", shared_models_dir())
    return LlamaCppProvider(LlamaCppConfig(keep_alive_seconds=-1, **settings))


@pytest.fixture
async def closing() -> AsyncIterator[Callable[[LlamaCppProvider], LlamaCppProvider]]:
    opened: list[LlamaCppProvider] = []
    yield lambda p: opened.append(p) or p  # type: ignore[func-returns-value]
    for p in opened:
        await p.aclose()


def stored_verdicts(data_dir: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((data_dir / PROBE_FILE).read_text())
    assert isinstance(data, dict)
    return data


async def test_probe_runs_once_per_combination(
    data_dir: Path, probes: list[tuple[bool, ProbeVerdict]], closing: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # extra buffers off: safe on every CPU, AMX included, so the probe really succeeds here
    first = closing(embedded(extra_buffers="off"))
    result = await first.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    assert result.text.strip()
    assert [(on, v.ok, v.stage) for on, v in probes] == [(False, True, "ok")]
    [(key, record)] = stored_verdicts(data_dir).items()
    assert record["ok"] is True and "Q4_K_M" in key and "extra_buffers=off" in key and record["seconds"] > 0
    # unloaded and loaded again, or in another provider (another process reads the same file):
    # no second probe
    await first.unload_model(DEFAULT_MODEL_ID)
    await first.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    await closing(embedded(extra_buffers="off", context_size=1024)).generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    assert len(probes) == 1
    # another CPU is another combination
    from papin.llm import hardware as hw_platform

    cpu = hw_platform.detect_cpu()
    other = dataclasses.replace(cpu, features=cpu.features | {"sse4a"})
    monkeypatch.setattr(hw_platform, "detect_cpu", lambda: other)
    await closing(embedded(extra_buffers="off")).generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    assert len(probes) == 2 and len(stored_verdicts(data_dir)) == 2
    # no probe at all when it is turned off
    await closing(embedded(crash_probe=False, context_size=768)).generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    assert len(probes) == 2


async def test_a_crash_with_extra_buffers_falls_back_and_is_remembered(
    data_dir: Path,
    probes: list[tuple[bool, ProbeVerdict]],
    closing: Any,
    monkeypatch: pytest.MonkeyPatch,
    extra_buffers_chosen_on: None,
) -> None:
    monkeypatch.setenv("PAPIN_TEST_PROBE_CRASH", "decode:extra_buffers")
    provider = closing(embedded())
    result = await provider.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    assert result.text.strip()  # this process survived and generated, with the safe settings
    [(on, crashed), (off, worked)] = probes
    assert on and crashed.signal == "SIGSEGV" and crashed.stage == "decode"
    assert not off and worked.ok
    entry = provider.pool.get(DEFAULT_MODEL_ID)
    assert entry is not None and entry.settings.extra_buffers is False
    reason = provider._tuned[DEFAULT_MODEL_ID][2].reasons["extra_buffers"]
    assert "crashed" in reason and "SIGSEGV" in reason
    verdicts = stored_verdicts(data_dir)
    assert {(r["ok"], r["signal"]) for r in verdicts.values()} == {(False, "SIGSEGV"), (True, None)}
    # remembered: a new provider goes straight to the settings that work
    again = closing(embedded())
    await again.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    assert len(probes) == 2
    entry = again.pool.get(DEFAULT_MODEL_ID)
    assert entry is not None and entry.settings.extra_buffers is False


async def test_a_crash_with_every_setting_is_a_typed_error(
    data_dir: Path, probes: list[tuple[bool, ProbeVerdict]], closing: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAPIN_TEST_PROBE_CRASH", "decode")
    provider = closing(embedded())
    with pytest.raises(NativeCrashError) as caught:
        await provider.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    error = caught.value
    assert error.signal == "SIGSEGV" and error.stage == "decode" and error.model == DEFAULT_MODEL_ID
    assert "llamacpp_server" in str(error) and "isolation" in str(error) and "unaffected" in str(error)
    assert all(v.signal == "SIGSEGV" for _, v in probes)
    assert not await provider.is_model_loaded(DEFAULT_MODEL_ID)  # nothing was loaded here
    # the same through the manager, as an application calls it
    manager = LLMManager.with_config(
        LLMConfig(provider_type="llamacpp", provider_config={"models_dir": shared_models_dir()})
    )
    try:
        with pytest.raises(NativeCrashError):
            await manager.generate_text(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    finally:
        await manager.aclose()


async def test_forcing_an_unsafe_setting_gives_the_error_not_a_crash(
    data_dir: Path, probes: list[tuple[bool, ProbeVerdict]], closing: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAPIN_TEST_PROBE_CRASH", "decode:extra_buffers")
    manager = LLMManager.with_config(
        LLMConfig(
            provider_type="llamacpp",
            provider_config={"extra_buffers": "on", "models_dir": shared_models_dir()},
        )
    )
    try:
        with pytest.raises(
            NativeCrashError, match=r"extra_buffers is set to 'on': set it to 'auto' or 'off'"
        ):
            await manager.generate_text(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    finally:
        await manager.aclose()
    assert [on for on, _ in probes] == [True]  # the user's choice is not overridden


async def test_a_gguf_that_crashes_llama_cpp_while_loading(
    tmp_path: Path, data_dir: Path, closing: Any
) -> None:
    provider = closing(embedded(models_dir=str(tmp_path / "models")))
    async for _ in provider.pull_model(str(crashing_gguf(tmp_path / "broken-experts.gguf"))):
        pass
    with pytest.raises(InvalidModelFileError, match=r"crashed \(SIGABRT\) while loading .*broken-experts"):
        await provider.generate("broken-experts", PROMPT, GREEDY)
    assert not (data_dir / PROBE_FILE).exists()  # a broken file is not a verdict on the combination


async def test_probe_time_limit(data_dir: Path, closing: Any) -> None:
    provider = closing(embedded(probe_timeout_seconds=0.01))
    with pytest.raises(ProviderTimeoutError, match="did not finish within 0.01 s") as caught:
        await provider.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    assert caught.value.phase == "probe"


def test_verdict_store_survives_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / PROBE_FILE
    path.write_text("{not json")
    store = VerdictStore(path)
    assert store.get("k") is None
    store.put("k", ProbeVerdict(False, 1.5, stage="decode", signal="SIGILL"))
    verdict = VerdictStore(path).get("k")
    assert verdict is not None and verdict.cached and verdict.signal == "SIGILL"
    assert verdict.describe() == "SIGILL while decoding"


async def test_the_advice_fits_the_mode_in_use(
    data_dir: Path, closing: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAPIN_TEST_PROBE_CRASH", "decode")
    provider = closing(embedded(isolation="process"))
    with pytest.raises(NativeCrashError) as caught:
        await provider.generate(DEFAULT_MODEL_ID, PROMPT, GREEDY)
    assert "llamacpp_server" in str(caught.value) and "isolation" not in str(caught.value)
