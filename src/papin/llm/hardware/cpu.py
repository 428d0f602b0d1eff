"""CPU and memory probes of :mod:`papin.llm.hardware` (never raise; see its docstring).

Each reader takes its sources as arguments (a root directory, a ``sysctl`` function...), so
tests run the Linux, macOS and Windows paths on any machine with injected data.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from papin.llm.hardware.info import MLOCK_UNLIMITED, CpuInfo, MemoryInfo, ProbeNote

__all__ = [
    "cgroup_cpu_quota",
    "cgroup_memory",
    "cpu_from_proc_cpuinfo",
    "cpu_from_sysctl",
    "darwin_sysctl",
    "normalise_arch",
    "os_facts",
    "probe_cpu",
    "probe_memory",
    "read_text_file",
]

#: x86 ``/proc/cpuinfo`` flags kept (llama.cpp cares about these), renamed where needed.
_X86_FLAGS = {
    "pni": "sse3", "ssse3": "ssse3", "sse4_1": "sse4_1", "sse4_2": "sse4_2", "avx": "avx",
    "avx2": "avx2", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vl": "avx512vl",
    "avx512_vnni": "avx512vnni", "avx512_bf16": "avx512bf16", "avx_vnni": "avxvnni",
    "f16c": "f16c", "fma": "fma", "bmi2": "bmi2", "amx_tile": "amx", "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
}  # fmt: skip
#: ARM ``Features`` kept, renamed.
_ARM_FLAGS = {
    "asimd": "neon", "neon": "neon", "asimdhp": "fp16", "fphp": "fp16", "asimddp": "dotprod",
    "i8mm": "i8mm", "sve": "sve", "sve2": "sve2",
}  # fmt: skip
_ARCH_NAMES = {"amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64", "aarch64": "arm64", "armv8": "arm64"}
_UNLIMITED = 2**60  # cgroup "no limit" values are near 2**63


def normalise_arch(machine: str) -> str:
    """``x86_64`` or ``arm64`` for the usual spellings, else the lower-cased name.

    >>> normalise_arch("AMD64"), normalise_arch("aarch64"), normalise_arch("riscv64")
    ('x86_64', 'arm64', 'riscv64')
    """
    name = machine.strip().lower() or "unknown"
    return _ARCH_NAMES.get(name, name)


def os_facts(stdlib_platform: ModuleType) -> tuple[str, str | None, str]:
    """(OS name, version, architecture) from the :mod:`platform` module."""
    system = stdlib_platform.system() or sys.platform
    os_name = {"Darwin": "macOS"}.get(system, system)
    version: str | None = None
    with contextlib.suppress(Exception):
        if system == "Darwin":
            version = stdlib_platform.mac_ver()[0] or None
        elif system == "Linux":
            version = _linux_pretty_name() or stdlib_platform.release() or None
        else:
            version = stdlib_platform.version() or stdlib_platform.release() or None
    return os_name, version, normalise_arch(stdlib_platform.machine())


def _linux_pretty_name() -> str | None:
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"') or None
    return None


# -- CPU ------------------------------------------------------------------------------------------


def cpu_from_proc_cpuinfo(text: str) -> tuple[str | None, frozenset[str]]:
    """Model name and SIMD features from the text of ``/proc/cpuinfo`` (x86 or ARM).

    >>> model, features = cpu_from_proc_cpuinfo("model name : AMD EPYC\\nflags : pni avx avx2 fma f16c\\n")
    >>> model, sorted(features)
    ('AMD EPYC', ['avx', 'avx2', 'f16c', 'fma', 'sse3'])
    >>> sorted(cpu_from_proc_cpuinfo("Features : fp asimd asimddp\\nCPU part : 0xd0c\\n")[1])
    ['dotprod', 'neon']
    """
    model: str | None = None
    features: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if model is not None and features:
                break  # the first processor's block is enough
            continue
        key = key.strip().lower()
        value = value.strip()
        if key in ("model name", "hardware", "cpu model", "model") and value and model is None:
            if key != "model" or not value.isdigit():  # x86 "model : 1" is a number
                model = value
        elif key == "flags" and not features:
            features = {_X86_FLAGS[f] for f in value.lower().split() if f in _X86_FLAGS}
        elif key == "features" and not features:
            features = {_ARM_FLAGS[f] for f in value.lower().split() if f in _ARM_FLAGS}
    return model, frozenset(features)


def cpu_from_sysctl(sysctl: Callable[[str], Any]) -> tuple[str | None, frozenset[str], int | None]:
    """Model, features and performance-core count from macOS ``sysctl`` names."""
    model = sysctl("machdep.cpu.brand_string")
    features: set[str] = set()
    checks = {
        "hw.optional.neon": "neon", "hw.optional.arm.FEAT_FP16": "fp16",
        "hw.optional.arm.FEAT_DotProd": "dotprod", "hw.optional.arm.FEAT_I8MM": "i8mm",
        "hw.optional.avx1_0": "avx", "hw.optional.avx2_0": "avx2", "hw.optional.avx512f": "avx512f",
        "hw.optional.fma": "fma",
    }  # fmt: skip
    for name, feature in checks.items():
        if sysctl(name) == 1:
            features.add(feature)
    leaf = sysctl("machdep.cpu.leaf7_features") or ""
    extra = f"{sysctl('machdep.cpu.features') or ''} {leaf}".lower().split()
    features.update(_X86_FLAGS[f] for f in extra if f in _X86_FLAGS)
    perf = sysctl("hw.perflevel0.physicalcpu")
    return (
        (model if isinstance(model, str) and model else None),
        frozenset(features),
        (perf if isinstance(perf, int) and perf > 0 else None),
    )


_SYSCTL_STRINGS = frozenset(
    {"machdep.cpu.brand_string", "machdep.cpu.features", "machdep.cpu.leaf7_features"}
)


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.dylib", use_errno=True)


def darwin_sysctl(name: str) -> Any:
    """A macOS ``sysctl`` value through libc (text for the names that hold text, else an
    integer), ``None`` when absent."""
    import ctypes

    libc = _libc()
    size = ctypes.c_size_t(0)
    key = name.encode()
    if libc.sysctlbyname(key, None, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0 or not size.value:
        return None
    buf = ctypes.create_string_buffer(size.value)
    if libc.sysctlbyname(key, buf, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
        return None
    raw = buf.raw[: size.value]
    if name in _SYSCTL_STRINGS:
        return raw.rstrip(b"\0").decode("utf-8", "replace")
    return int.from_bytes(raw, sys.byteorder)


def _windows_cpu() -> tuple[str | None, frozenset[str]]:  # pragma: no cover - Windows only
    import ctypes

    winreg: Any = importlib.import_module("winreg")
    model: str | None = None
    with contextlib.suppress(OSError):
        key = winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"HARDWARE\DESCRIPTION\System\CentralProcessor\0")
        model = str(winreg.QueryValueEx(key, "ProcessorNameString")[0]).strip() or None
    present = ctypes.windll.kernel32.IsProcessorFeaturePresent  # type: ignore[attr-defined,unused-ignore]
    flags = {
        13: "sse3",
        36: "ssse3",
        37: "sse4_1",
        38: "sse4_2",
        39: "avx",
        40: "avx2",
        41: "avx512f",
        19: "neon",
    }
    return model, frozenset(name for bit, name in flags.items() if present(bit))


def _py_cpuinfo(timeout: float = 3.0) -> tuple[str | None, frozenset[str]] | None:
    """py-cpuinfo's answer, given ``timeout`` seconds (it runs CPUID in a subprocess)."""
    import threading

    cpuinfo = importlib.import_module("cpuinfo")
    box: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: box.append(cpuinfo.get_cpu_info()), daemon=True)
    worker.start()
    worker.join(timeout)
    if not box:
        return None
    info = box[0]
    flags = [str(f).lower() for f in info.get("flags") or ()]
    features = {_X86_FLAGS[f] for f in flags if f in _X86_FLAGS} | {
        _ARM_FLAGS[f] for f in flags if f in _ARM_FLAGS
    }
    features.update(f for f in flags if f in ("sse3", "f16c", "fma", "avx", "avx2", "avx512f"))
    model = info.get("brand_raw")
    return (str(model) if model else None), frozenset(features)


def _core_counts() -> tuple[int, int]:
    logical = os.cpu_count() or 1
    physical = logical
    with contextlib.suppress(Exception):
        import psutil

        logical = psutil.cpu_count(logical=True) or logical
        physical = psutil.cpu_count(logical=False) or logical
    return physical, logical


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """CPUs allowed by this process's cgroup CPU quota (v2 ``cpu.max``, v1 ``cfs_quota_us``)."""
    for controller, path in _cgroup_dirs(root, "cpu"):
        if controller == "v2":
            text = read_text_file(path / "cpu.max")
            if text and not text.startswith("max"):
                quota_v2, _, period_v2 = text.partition(" ")
                with contextlib.suppress(ValueError):
                    return int(quota_v2) / int(period_v2 or "100000")
        else:
            quota_text = read_text_file(path / "cpu.cfs_quota_us")
            period_text = read_text_file(path / "cpu.cfs_period_us")
            with contextlib.suppress(TypeError, ValueError):
                quota, period = int(quota_text or ""), int(period_text or "")
                if quota > 0 and period > 0:
                    return quota / period
    return None


def _available_cores(logical: int, root: Path = Path("/")) -> int | None:
    limits: list[int] = []
    if hasattr(os, "sched_getaffinity"):
        with contextlib.suppress(OSError):
            limits.append(len(os.sched_getaffinity(0)))
    with contextlib.suppress(Exception):
        quota = cgroup_cpu_quota(root)
        if quota:
            limits.append(max(1, math.ceil(quota)))
    usable = min(limits) if limits else None
    return usable if usable is not None and usable < logical else None


def probe_cpu(arch: str) -> tuple[CpuInfo, list[ProbeNote]]:
    """The CPU of this machine (architecture ``arch``), by the fastest source its OS offers."""
    started = time.perf_counter()
    physical, logical = _core_counts()
    model: str | None = None
    features: frozenset[str] = frozenset()
    performance: int | None = None
    source = "none"
    if sys.platform.startswith("linux"):
        text = read_text_file(Path("/proc/cpuinfo"), limit=1 << 20)
        if text:
            model, features = cpu_from_proc_cpuinfo(text)
            source = "/proc/cpuinfo"
    elif sys.platform == "darwin":
        model, features, performance = cpu_from_sysctl(_safe(darwin_sysctl))
        source = "sysctl"
    elif sys.platform == "win32":  # pragma: no cover - Windows only
        model, features = _windows_cpu()
        source = "Windows registry"
    if not features:
        with contextlib.suppress(Exception):
            found = _py_cpuinfo()
            if found is not None:
                model, features = model or found[0], found[1]
                source = "py-cpuinfo"
    cpu = CpuInfo(
        model=model,
        architecture=arch,
        physical_cores=physical,
        logical_cores=logical,
        features=features,
        available_cores=_available_cores(logical),
        performance_cores=performance,
    )
    detected = bool(model or features)
    reason = f"from {source}" if detected else "no CPU details found (no /proc/cpuinfo, sysctl or py-cpuinfo)"
    return cpu, [ProbeNote("cpu", detected, reason, time.perf_counter() - started)]


def _safe(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    def call(name: str) -> Any:
        try:
            return fn(name)
        except Exception:
            return None

    return call


# -- memory ---------------------------------------------------------------------------------------


def read_text_file(path: Path, limit: int = 65536) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit).strip()
    except OSError:
        return None


def _mounts(root: Path) -> list[tuple[str, str, str, str]]:
    """(mount root, mount point, fs type, super options) of cgroup mounts."""
    text = read_text_file(root / "proc/self/mountinfo", limit=1 << 20) or ""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        parts, tail = left.split(), right.split()
        if sep and len(parts) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            out.append((parts[3], parts[4], tail[0], tail[2]))
    return out


def _cgroup_dirs(root: Path, controller: str) -> Iterable[tuple[str, Path]]:
    """This process's cgroup directory for ``controller`` and its ancestors, leaf first."""
    text = read_text_file(root / "proc/self/cgroup") or ""
    mounts = _mounts(root)
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, cg_path = parts
        if controllers == "" and parts[0] == "0":
            version = "v2"
            mount = next(((r, m) for r, m, t, _ in mounts if t == "cgroup2"), ("/", "/sys/fs/cgroup"))
        elif controller in controllers.split(","):
            version = "v1"
            default = ("/", f"/sys/fs/cgroup/{controller}")
            mount = next(
                ((r, m) for r, m, t, o in mounts if t == "cgroup" and controller in o.split(",")), default
            )
        else:
            continue
        mount_root, mount_point = mount
        relative = cg_path
        if mount_root != "/" and relative.startswith(mount_root):
            relative = relative[len(mount_root) :]
        base = root / mount_point.lstrip("/")
        leaf = base / relative.strip("/")
        if not leaf.is_dir():
            leaf = base  # a cgroup namespace: our cgroup is the mount's root
        node = leaf
        while True:
            yield version, node
            if node == base or base not in node.parents:
                break
            node = node.parent
        if version == "v1":
            return


def _stat_value(text: str | None, key: str) -> int | None:
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def cgroup_memory(root: Path = Path("/")) -> tuple[int | None, int | None]:
    """(limit, usage) of this process's memory cgroup in bytes; ``None`` where unlimited.

    The limit is the smallest along the cgroup's ancestors; the usage leaves out inactive
    page cache (the kernel reclaims it before hitting the limit).
    """
    limit: int | None = None
    usage: int | None = None
    first = True
    for version, node in _cgroup_dirs(root, "memory"):
        if version == "v2":
            raw = read_text_file(node / "memory.max")
            value = int(raw) if raw and raw.isdigit() else None
            if first:
                current = read_text_file(node / "memory.current")
                if current and current.isdigit():
                    cache = _stat_value(read_text_file(node / "memory.stat"), "inactive_file") or 0
                    usage = max(0, int(current) - cache)
        else:
            stat = read_text_file(node / "memory.stat")
            value = _stat_value(stat, "hierarchical_memory_limit")
            raw = read_text_file(node / "memory.limit_in_bytes")
            if raw and raw.isdigit():
                value = min(value or int(raw), int(raw))
            if first:
                current = read_text_file(node / "memory.usage_in_bytes")
                if current and current.isdigit():
                    cache = _stat_value(stat, "total_inactive_file") or 0
                    usage = max(0, int(current) - cache)
        first = False
        if value is not None and value < _UNLIMITED:
            limit = value if limit is None else min(limit, value)
    return limit, usage if limit is not None else None


def _meminfo() -> tuple[int, int] | None:
    text = read_text_file(Path("/proc/meminfo")) or ""
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        with contextlib.suppress(ValueError, IndexError):
            values[name] = int(rest.split()[0]) * 1024
    if "MemTotal" in values:
        return values["MemTotal"], values.get("MemAvailable", values.get("MemFree", 0))
    return None


def _mlock_limit(root: Path = Path("/")) -> int | None:
    if sys.platform == "win32":  # pragma: no cover - VirtualLock has no simple limit
        return None
    status = read_text_file(root / "proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            with contextlib.suppress(ValueError):
                if int(line.split()[1], 16) & (1 << 14):  # CAP_IPC_LOCK
                    return MLOCK_UNLIMITED
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    except (ImportError, OSError, ValueError, AttributeError):
        return None
    return MLOCK_UNLIMITED if soft == resource.RLIM_INFINITY or soft < 0 else int(soft)


def probe_memory() -> tuple[MemoryInfo, list[ProbeNote]]:
    """Total and available RAM, the cgroup limit, and the mlock allowance."""
    started = time.perf_counter()
    total = available = 0
    source = "none"
    try:
        import psutil

        vm = psutil.virtual_memory()
        total, available, source = int(vm.total), int(vm.available), "psutil"
    except Exception as exc:
        found = _meminfo()
        if found is not None:
            (total, available), source = found, "/proc/meminfo"
        else:
            source = f"psutil unavailable ({type(exc).__name__}: {exc})"
    limit, usage = (None, None)
    if sys.platform.startswith("linux"):
        limit, usage = cgroup_memory()
    memory = MemoryInfo(total, available, limit, usage, _mlock_limit())
    seconds = time.perf_counter() - started
    notes = [ProbeNote("memory", total > 0, f"from {source}" if total else source, seconds)]
    if limit is not None:
        notes.append(ProbeNote("cgroup", True, f"memory limit {limit} bytes", 0.0))
    return memory, notes
