"""GPU probes of :mod:`papin.llm.hardware`: NVIDIA (NVML), AMD (amdsmi, sysfs, rocm-smi /
amd-smi), Apple Silicon (Metal, unified memory) and other GPUs seen in sysfs. Never raise.

Each probe takes its sources as arguments where that helps tests (a module, a sysfs root, a
command runner), so the vendor paths run on any machine with injected data.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from papin.llm.hardware.cpu import darwin_sysctl, read_text_file
from papin.llm.hardware.info import CpuInfo, GpuInfo, MemoryInfo, ProbeNote

__all__ = [
    "amd_from_amdsmi",
    "amd_from_rocm_smi_json",
    "apple_gpu",
    "nvidia_from_nvml",
    "probe_gpus",
    "sysfs_gpus",
]

MIB = 1024 * 1024
GIB = 1024 * MIB
#: How long an AMD command-line tool may take.
TOOL_TIMEOUT = 3.0
_PCI_VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel", "0x106b": "apple"}

Runner = Callable[[Sequence[str]], str | None]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# -- NVIDIA ---------------------------------------------------------------------------------------


def _nvml_reason(exc: Exception, nvml: Any) -> str:
    """A readable reason for an NVML error."""
    names = {
        "NVMLError_LibraryNotFound": "NVIDIA driver library (NVML) not found",
        "NVMLError_DriverNotLoaded": "NVIDIA driver not loaded",
        "NVMLError_NoPermission": "no permission to query the NVIDIA driver",
        "NVMLError_Uninitialized": "NVML not initialised",
    }
    for cls_name, reason in names.items():
        cls = getattr(nvml, cls_name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return reason
    return f"NVML error: {exc}"


def _visible_devices(env: str | None, count: int, uuids: Sequence[str]) -> list[int]:
    """Device indices that ``CUDA_VISIBLE_DEVICES`` leaves visible (all when unset).

    >>> _visible_devices(None, 3, []), _visible_devices("1", 3, []), _visible_devices("-1", 2, [])
    ([0, 1, 2], [1], [])
    >>> _visible_devices("GPU-b", 2, ["GPU-a", "GPU-b"])
    [1]
    """
    if env is None:
        return list(range(count))
    out: list[int] = []
    for item in (x.strip() for x in env.split(",")):
        if not item:
            continue
        if item.lstrip("-").isdigit():
            index = int(item)
            if index < 0 or index >= count:
                break  # CUDA stops at the first invalid entry
            out.append(index)
        else:
            match = [i for i, u in enumerate(uuids) if u.startswith(item)]
            if len(match) != 1:
                break
            out.append(match[0])
    return out


def nvidia_from_nvml(nvml: Any, cuda_visible: str | None = None) -> tuple[list[GpuInfo], str | None]:
    """NVIDIA GPUs through an NVML module (``pynvml``); (GPUs, reason when none)."""
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return [], _nvml_reason(exc, nvml)
    try:
        driver: str | None = None
        with contextlib.suppress(Exception):
            driver = _text(nvml.nvmlSystemGetDriverVersion())
        count = int(nvml.nvmlDeviceGetCount())
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        uuids: list[str] = []
        if cuda_visible is not None:
            for h in handles:
                try:
                    uuids.append(_text(nvml.nvmlDeviceGetUUID(h)))
                except Exception:
                    uuids.append("")
        gpus: list[GpuInfo] = []
        for position, i in enumerate(_visible_devices(cuda_visible, count, uuids)):
            handle = handles[i]
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            capability: str | None = None
            with contextlib.suppress(Exception):
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                capability = f"{major}.{minor}"
            gpus.append(
                GpuInfo(
                    index=position,
                    vendor="nvidia",
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_total=int(mem.total),
                    memory_free=int(mem.free),
                    compute_capability=capability,
                    driver=driver,
                )
            )
        if not gpus:
            hidden = count and cuda_visible is not None
            why = f"hidden by CUDA_VISIBLE_DEVICES={cuda_visible!r}" if hidden else "no NVIDIA GPU found"
            return [], f"{why} (driver {driver or 'unknown'})"
        return gpus, None
    except Exception as exc:
        return [], _nvml_reason(exc, nvml)
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _probe_nvidia() -> tuple[list[GpuInfo], str | None]:
    try:
        nvml = importlib.import_module("pynvml")
    except Exception:
        return [], "nvidia-ml-py (pynvml) is not installed"
    return nvidia_from_nvml(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"))


# -- AMD ------------------------------------------------------------------------------------------


def amd_from_amdsmi(amdsmi: Any) -> list[GpuInfo]:
    """AMD GPUs through the ``amdsmi`` Python library (VRAM figures are in MiB)."""
    amdsmi.amdsmi_init()
    try:
        gpus: list[GpuInfo] = []
        for index, handle in enumerate(amdsmi.amdsmi_get_processor_handles()):
            asic: dict[str, Any] = {}
            with contextlib.suppress(Exception):
                asic = dict(amdsmi.amdsmi_get_gpu_asic_info(handle))
            vram = dict(amdsmi.amdsmi_get_gpu_vram_usage(handle))
            total = int(vram["vram_total"]) * MIB
            driver: str | None = None
            with contextlib.suppress(Exception):
                driver = str(dict(amdsmi.amdsmi_get_gpu_driver_info(handle)).get("driver_version")) or None
            gpus.append(
                GpuInfo(
                    index=index,
                    vendor="amd",
                    name=str(asic.get("market_name") or "AMD GPU"),
                    memory_total=total,
                    memory_free=max(0, total - int(vram.get("vram_used", 0)) * MIB),
                    compute_capability=str(asic.get("target_graphics_version") or "") or None,
                    driver=driver,
                )
            )
        return gpus
    finally:
        with contextlib.suppress(Exception):
            amdsmi.amdsmi_shut_down()


def _lookup(entry: dict[str, Any], *names: str) -> Any:
    lowered = {k.lower(): v for k, v in entry.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def amd_from_rocm_smi_json(text: str) -> list[GpuInfo]:
    """AMD GPUs from ``rocm-smi --showproductname --showmeminfo vram --json`` output."""
    data = json.loads(text)
    gpus: list[GpuInfo] = []
    for key in sorted(k for k in data if k.lower().startswith("card")):
        entry = data[key]
        if not isinstance(entry, dict):
            continue
        total = _lookup(entry, "VRAM Total Memory (B)")
        used = _lookup(entry, "VRAM Total Used Memory (B)")
        if total is None:
            continue
        name = _lookup(entry, "Card Series", "Card series", "Card Model", "Card model", "Device Name")
        gpus.append(
            GpuInfo(
                index=len(gpus),
                vendor="amd",
                name=str(name or "AMD GPU"),
                memory_total=int(total),
                memory_free=max(0, int(total) - int(used or 0)),
                compute_capability=_lookup(entry, "GFX Version"),
                driver=None,
            )
        )
    return gpus


def _size(value: Any) -> int | None:
    """Bytes from amd-smi's ``{"value": 1, "unit": "MB"}`` or ``"1 MB"`` forms."""
    units = {"b": 1, "kb": 1024, "mb": MIB, "gb": GIB, "kib": 1024, "mib": MIB, "gib": GIB}
    if isinstance(value, dict):
        number, unit = value.get("value"), str(value.get("unit", "b"))
    elif isinstance(value, str) and " " in value:
        number, unit = value.split(" ", 1)
    else:
        number, unit = value, "b"
    try:
        return int(float(number) * units.get(unit.strip().lower(), 1))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def amd_from_amd_smi_json(text: str) -> list[GpuInfo]:
    """AMD GPUs from ``amd-smi metric --mem-usage --json`` output (several layouts)."""
    data = json.loads(text)
    entries = (
        data if isinstance(data, list) else data.get("gpu_data", [data]) if isinstance(data, dict) else []
    )
    gpus: list[GpuInfo] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        usage = entry.get("mem_usage") or entry
        total = _size(usage.get("total_vram"))
        if not total:
            continue
        free = _size(usage.get("free_vram"))
        used = _size(usage.get("used_vram"))
        if free is None and used is not None:
            free = max(0, total - used)
        gpus.append(GpuInfo(len(gpus), "amd", "AMD GPU", total, free, None, None))
    return gpus


def _run(args: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _probe_amd(sysfs_found: list[GpuInfo], run: Runner = _run) -> tuple[list[GpuInfo], str | None]:
    """AMD GPUs: amdsmi, else the amdgpu sysfs figures, else rocm-smi / amd-smi."""
    why = "the amdsmi library is not installed"
    try:
        amdsmi: Any = importlib.import_module("amdsmi")
    except Exception:
        amdsmi = None
    if amdsmi is not None:
        try:
            found = amd_from_amdsmi(amdsmi)
            if found:
                return found, None
            why = "amdsmi found no AMD GPU"
        except Exception as exc:
            why = f"amdsmi failed ({type(exc).__name__}: {exc})"
    if sysfs_found:
        return sysfs_found, None
    tools = 0
    for tool, args, parse in (
        ("rocm-smi", ["--showproductname", "--showmeminfo", "vram", "--json"], amd_from_rocm_smi_json),
        ("amd-smi", ["metric", "--mem-usage", "--json"], amd_from_amd_smi_json),
    ):
        path = shutil.which(tool)
        if path is None:
            continue
        tools += 1
        text = run([path, *args])
        if text is None:
            why += f"; {tool} failed or took over {TOOL_TIMEOUT:g}s"
            continue
        try:
            found = parse(text)
        except (ValueError, TypeError, AttributeError, KeyError):
            why += f"; {tool} printed unexpected output"
            continue
        if found:
            return found, None
        why += f"; {tool} found no AMD GPU"
    if not tools:
        why += ", no AMD GPU in sysfs, and neither rocm-smi nor amd-smi is on PATH"
    return [], why


# -- sysfs (Linux) --------------------------------------------------------------------------------


def sysfs_gpus(root: Path = Path("/sys/class/drm")) -> list[GpuInfo]:
    """Display/compute devices under ``/sys/class/drm``; AMD ones with the amdgpu driver's
    VRAM figures, others without memory (not usable for offload from here)."""
    gpus: list[GpuInfo] = []
    try:
        cards = sorted(p for p in root.iterdir() if p.name.startswith("card") and p.name[4:].isdigit())
    except OSError:
        return gpus
    for card in cards:
        device = card / "device"
        vendor_id = read_text_file(device / "vendor")
        if not vendor_id:
            continue
        vendor = _PCI_VENDORS.get(vendor_id.lower(), "other")
        total = _read_int(device / "mem_info_vram_total") if vendor == "amd" else None
        used = _read_int(device / "mem_info_vram_used") if total else None
        device_id = read_text_file(device / "device") or None
        name = read_text_file(device / "product_name") or f"{vendor.upper()} GPU ({device_id})"
        gpus.append(
            GpuInfo(
                index=len(gpus),
                vendor=vendor,
                name=name,
                memory_total=total,
                memory_free=max(0, total - (used or 0)) if total else None,
                compute_capability=None,
                driver=_driver_name(device),
            )
        )
    return gpus


def _driver_name(device: Path) -> str | None:
    with contextlib.suppress(OSError):
        return os.path.basename(os.readlink(device / "driver"))
    return None


def _read_int(path: Path) -> int | None:
    text = read_text_file(path)
    return int(text) if text and text.isdigit() else None


# -- Apple Silicon --------------------------------------------------------------------------------


def apple_gpu(
    cpu: CpuInfo, memory: MemoryInfo, wired_limit_mb: int | None, os_version: str | None
) -> GpuInfo:
    """The Apple Silicon GPU: Metal, unified memory.

    The GPU may use Metal's recommended working set of the RAM: ``iogpu.wired_limit_mb``
    when set, else about 2/3 of RAM up to 36 GiB and 3/4 above (what macOS reports).
    """
    total_ram = memory.total
    if wired_limit_mb:
        limit = wired_limit_mb * MIB
    else:
        limit = total_ram * 3 // 4 if total_ram > 36 * GIB else total_ram * 2 // 3
    limit = min(limit, total_ram)
    name = f"{cpu.model} GPU" if cpu.model else "Apple GPU"
    return GpuInfo(
        index=0,
        vendor="apple",
        name=name,
        memory_total=limit,
        memory_free=min(limit, memory.available),
        compute_capability=None,
        driver=f"Metal (macOS {os_version})" if os_version else "Metal",
        unified_memory=True,
    )


# -- all of them ----------------------------------------------------------------------------------


def probe_gpus(
    os_name: str, os_version: str | None, arch: str, cpu: CpuInfo, memory: MemoryInfo
) -> tuple[list[GpuInfo], list[ProbeNote]]:
    """Every GPU found, one note per vendor probe."""
    notes: list[ProbeNote] = []
    gpus: list[GpuInfo] = []

    started = time.perf_counter()
    nvidia, why = _probe_nvidia()
    notes.append(ProbeNote("nvidia", bool(nvidia), why, time.perf_counter() - started))
    gpus += nvidia

    sysfs: list[GpuInfo] = []
    if os_name == "Linux":
        started = time.perf_counter()
        sysfs = sysfs_gpus()
        notes.append(
            ProbeNote(
                "sysfs",
                bool(sysfs),
                None if sysfs else "no GPU in /sys/class/drm",
                time.perf_counter() - started,
            )
        )

    started = time.perf_counter()
    sysfs_amd = [g for g in sysfs if g.vendor == "amd" and g.memory_total]
    amd, why = _probe_amd(sysfs_amd)
    notes.append(ProbeNote("amd", bool(amd), why, time.perf_counter() - started))
    gpus += amd

    if os_name == "macOS" and arch == "arm64":
        started = time.perf_counter()
        wired: int | None = None
        with contextlib.suppress(Exception):
            value = darwin_sysctl("iogpu.wired_limit_mb")
            wired = value if isinstance(value, int) and value > 0 else None
        gpus.append(apple_gpu(cpu, memory, wired, os_version))
        notes.append(
            ProbeNote("apple", True, "Apple Silicon: Metal, unified memory", time.perf_counter() - started)
        )
    else:
        notes.append(ProbeNote("apple", False, "not an Apple Silicon Mac", 0.0))

    # GPUs seen only in sysfs (Intel, NVIDIA without its driver...): listed, not usable.
    seen = {g.vendor for g in gpus}
    for g in sysfs:
        if g.vendor not in seen:  # an AMD one with VRAM figures is already among the AMD GPUs
            gpus.append(GpuInfo(len(gpus), g.vendor, g.name, None, None, None, g.driver))
    renumbered = []
    counters: dict[str, int] = {}
    for g in gpus:
        counters[g.vendor] = counters.get(g.vendor, -1) + 1
        renumbered.append(g if g.index == counters[g.vendor] else replace(g, index=counters[g.vendor]))
    return renumbered, notes
