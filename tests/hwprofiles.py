"""Injected hardware profiles and hand-made models for the tuning and fit tests.

Every figure is a round number of MiB so that the expected results can be worked out by hand
in the tests.
"""

from __future__ import annotations

from typing import Any

from papin.llm.hardware import (
    MLOCK_UNLIMITED,
    CpuInfo,
    GpuInfo,
    HardwareInfo,
    LlamaBuildInfo,
    MemoryInfo,
)
from papin.llm.store.gguf import GGUFInfo

MIB = 1024 * 1024
GIB = 1024 * MIB

__all__ = [
    "AMX_BUILD_INFO",
    "AMX_CPU_FEATURES",
    "AVX2_BUILD_INFO",
    "GIB",
    "MIB",
    "apple_m2_16gb",
    "big_model",
    "container_4gb",
    "epyc_avx512",
    "gemma_like",
    "hardware",
    "llama8b_q4",
    "nvidia_gpu",
    "sapphire_rapids",
    "use_hardware",
    "small_cpu_4gb",
    "workstation_8gb_gpu",
]


def hardware(
    *,
    physical: int = 8,
    logical: int | None = None,
    available_cores: int | None = None,
    performance_cores: int | None = None,
    total: int = 16 * GIB,
    available: int | None = None,
    cgroup_limit: int | None = None,
    cgroup_usage: int | None = None,
    mlock_limit: int | None = MLOCK_UNLIMITED,
    gpus: tuple[GpuInfo, ...] = (),
    gpu_offload: bool | None = None,
    supports_mlock: bool | None = True,
    os_name: str = "Linux",
    arch: str = "x86_64",
    cpu_model: str = "Test CPU",
    cpu_features: frozenset[str] = frozenset({"avx", "avx2", "fma", "f16c"}),
    llama_system_info: str | None = None,
) -> HardwareInfo:
    """A :class:`HardwareInfo` as stated; the llama.cpp build offloads when there is a GPU.
    ``llama_system_info`` is what the build's ``llama_print_system_info()`` says (``None``:
    the build was not probed)."""
    from papin.llm.hardware.llama import parse_system_info

    features = parse_system_info(llama_system_info) if llama_system_info is not None else frozenset()
    return HardwareInfo(
        os=os_name,
        os_version=None,
        architecture=arch,
        cpu=CpuInfo(
            model=cpu_model,
            architecture=arch,
            physical_cores=physical,
            logical_cores=logical or physical * 2,
            features=cpu_features,
            available_cores=available_cores,
            performance_cores=performance_cores,
        ),
        memory=MemoryInfo(
            total=total,
            available=total * 3 // 4 if available is None else available,
            cgroup_limit=cgroup_limit,
            cgroup_usage=cgroup_usage,
            mlock_limit=mlock_limit,
        ),
        gpus=gpus,
        llama=LlamaBuildInfo(
            package_version="0.3.36",
            gpu_offload=bool(gpus) if gpu_offload is None else gpu_offload,
            system_info=llama_system_info,
            features=features,
            server_binary=None,
            supports_mlock=supports_mlock,
        ),
    )


#: ``/proc/cpuinfo`` features of an Intel Xeon with AMX (Sapphire Rapids and later), as papin keeps them.
AMX_CPU_FEATURES = frozenset(
    {"sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw",
     "avx512vl", "avx512vnni", "avx512bf16", "avxvnni", "amx", "amx_int8", "amx_bf16"}
)  # fmt: skip
#: A natively built llama.cpp on that CPU.
AMX_BUILD_INFO = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    "AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
#: A generic (AVX2) llama.cpp build: no AMX kernels.
AVX2_BUILD_INFO = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | OPENMP = 1 | REPACK = 1 | "
)


def sapphire_rapids(build_info: str | None = AMX_BUILD_INFO) -> HardwareInfo:
    """A 2-core cloud Xeon with AMX, 8 GiB, running a llama.cpp build that says ``build_info``."""
    return hardware(
        physical=2,
        logical=4,
        total=8 * GIB,
        cpu_model="Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
        cpu_features=AMX_CPU_FEATURES,
        llama_system_info=build_info,
    )


def epyc_avx512() -> HardwareInfo:
    """A 2-core AMD EPYC with AVX-512 but no AMX, natively built llama.cpp."""
    return hardware(
        physical=2,
        logical=4,
        total=8 * GIB,
        cpu_model="AMD EPYC 9R14",
        cpu_features=AMX_CPU_FEATURES - {"amx", "amx_int8", "amx_bf16"},
        llama_system_info=AMX_BUILD_INFO.replace("AMX_INT8 = 1 | ", ""),
    )


def nvidia_gpu(total: int = 8 * GIB, free: int | None = None, index: int = 0) -> GpuInfo:
    """An NVIDIA GPU with ``total`` bytes, ``free`` free (default: total - 512 MiB)."""
    return GpuInfo(
        index=index,
        vendor="nvidia",
        name="NVIDIA Test GPU",
        memory_total=total,
        memory_free=total - 512 * MIB if free is None else free,
        compute_capability="8.6",
        driver="550.00",
    )


def workstation_8gb_gpu() -> HardwareInfo:
    """8 physical cores, 16 GiB RAM (12 GiB available), one 8 GiB GPU with 7.5 GiB free."""
    return hardware(physical=8, total=16 * GIB, available=12 * GIB, gpus=(nvidia_gpu(),))


def apple_m2_16gb() -> HardwareInfo:
    """Apple M2, 16 GiB unified memory with 10 GiB available: Metal may use 2/3 of the RAM."""
    gpu = GpuInfo(0, "apple", "Apple M2 GPU", 16 * GIB * 2 // 3, 10 * GIB, None, "Metal", unified_memory=True)
    return hardware(
        physical=8,
        logical=8,
        performance_cores=4,
        total=16 * GIB,
        available=10 * GIB,
        gpus=(gpu,),
        os_name="macOS",
        arch="arm64",
    )


def small_cpu_4gb() -> HardwareInfo:
    """2 cores, 4 GiB RAM (3 GiB available), no GPU, ``ulimit -l`` 8 MiB."""
    return hardware(physical=2, logical=2, total=4 * GIB, available=3 * GIB, mlock_limit=8 * MIB)


def container_4gb() -> HardwareInfo:
    """A container on a 32-core, 64 GiB host: 2 CPUs allowed, a 4 GiB cgroup limit with 1 GiB
    used (so 3 GiB usable), no GPU."""
    return hardware(
        physical=32,
        available_cores=2,
        total=64 * GIB,
        available=60 * GIB,
        cgroup_limit=4 * GIB,
        cgroup_usage=1 * GIB,
    )


def llama8b_q4() -> GGUFInfo:
    """An 8B-like model: 32 layers of 128 MiB, 512 MiB outside them (256 MiB output head),
    8 KV heads of 128 + 128 values (128 KiB of f16 KV cache per token), vocabulary 131072,
    width 4096 (compute buffer at batch 512: 256 + 64 MiB)."""
    return GGUFInfo(
        architecture="llama",
        name="Test Llama 8B",
        parameter_count=8_000_000_000,
        quantization="Q4_K_M",
        context_length=131072,
        block_count=32,
        embedding_length=4096,
        head_count=32,
        head_count_kv=8,
        key_length=128,
        value_length=128,
        file_size=4608 * MIB + 8 * MIB,
        vocab_size=131072,
        layer_bytes=(128 * MIB,) * 32,
        output_bytes=256 * MIB,
        other_bytes=512 * MIB,
    )


def big_model() -> GGUFInfo:
    """48 layers of 256 MiB, 1 GiB outside them (512 MiB output head), 8 KV heads x (128 + 128):
    192 KiB of KV cache per token, 4 KiB per layer per token."""
    return GGUFInfo(
        architecture="llama",
        name="Big",
        block_count=48,
        head_count=32,
        head_count_kv=8,
        key_length=128,
        value_length=128,
        embedding_length=4096,
        context_length=32768,
        vocab_size=131072,
        layer_bytes=(256 * MIB,) * 48,
        output_bytes=512 * MIB,
        other_bytes=1024 * MIB,
        file_size=13312 * MIB,
    )


def gemma_like() -> GGUFInfo:
    """A Gemma-3-270M-like model: 18 layers of 4 MiB, 170 MiB of tied embeddings, one KV head
    of 256 + 256 (18432 bytes per token), vocabulary 262144, width 640."""
    return GGUFInfo(
        architecture="gemma3",
        name="Test Gemma",
        parameter_count=268_000_000,
        quantization="Q4_K_M",
        context_length=32768,
        block_count=18,
        embedding_length=640,
        head_count=4,
        head_count_kv=1,
        key_length=256,
        value_length=256,
        file_size=242 * MIB + 100,
        vocab_size=262144,
        layer_bytes=(4 * MIB,) * 18,
        output_bytes=170 * MIB,
        other_bytes=170 * MIB,
        output_tied=True,
    )


def use_hardware(monkeypatch: Any, hw: HardwareInfo) -> None:
    """Make ``detect_hardware()`` and ``detect_cpu()`` answer ``hw`` (the providers import them
    when they need them)."""
    from papin.llm import hardware as hw_platform

    monkeypatch.setattr(hw_platform, "detect_hardware", lambda **kwargs: hw)
    monkeypatch.setattr(hw_platform, "detect_cpu", lambda: hw.cpu)
