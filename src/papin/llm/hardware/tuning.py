"""Load settings fitted to this machine and model (papin's "platform optimisations").

:func:`tune` turns a :class:`~papin.llm.hardware.HardwareInfo` and a model's GGUF metadata
(:class:`~papin.llm.store.gguf.GGUFInfo`) into :class:`TunedSettings`: each value with the
reason it was chosen (``papin doctor`` shows them, see :func:`describe_optimizations`).
Providers use them, with ``optimize`` on, for every setting the user left unset; a value
the user set (provider config or per-call :class:`~papin.llm.options.GenerationOptions`)
always wins. With ``optimize`` off they use :func:`plain_settings`, which depend on nothing
but the model.

The rules:

* **threads**: the physical cores this process may use (CPU affinity, cgroup CPU quota and,
  on Apple Silicon, performance cores only; logical SMT siblings do not speed up llama.cpp),
  leaving room for the rest of the machine on bigger ones: all of them up to 4, one fewer from
  5 to 16, two fewer above 16.
* **batch size** (prompt tokens per step, llama.cpp's ``n_batch``/``n_ubatch``): 512, halved
  (down to 64) while llama.cpp's compute buffer for it (about 4 bytes x batch x vocabulary,
  see :func:`compute_buffer_bytes`) would take more than a tenth of the memory the model
  runs in. Large-vocabulary models on small machines get the smaller batches.
* **context size**: the smallest of :data:`DEFAULT_CONTEXT_CAP`, the trained context, and what
  half of the memory left after the weights and compute buffer can hold as KV cache (KV bytes
  per token = layers x KV heads x (key + value length) x cache-type bytes, see
  :func:`kv_bytes_per_token`), in steps of 256 and at least 512. The memory counted is the
  usable available RAM (inside a cgroup limit) plus the GPU budget when the backend can
  offload.
* **GPU layers** (only when the backend can offload and a GPU is usable): the GPU budget is
  each usable GPU's free memory minus a reserve (:func:`vram_reserve`: 512 MiB or 5 % of its
  memory, for the driver context and scratch buffers). If every layer, the output layer, their
  KV cache at the chosen context and the compute buffer fit, all are offloaded (``block_count
  + 1``); else as many of the last layers as fit with their KV cache (llama.cpp offloads from
  the last layer), using the real per-layer tensor sizes from the GGUF
  (:attr:`GGUFInfo.layer_bytes`), or an even split for a model described without them.
* **mmap**: always on. Mapping lets the OS share and page the file; llama.cpp copies
  offloaded layers to the GPU either way, and a model larger than RAM still runs (slowly)
  instead of failing. Turning it off only helps on systems that page mapped files out
  aggressively, which mlock handles better.
* **extra buffers** (llama.cpp's extra buffer types: weights repacked for the CPU's SIMD
  kernels, and AMX tiles): a safety decision, made whether optimisations are on or off. Off on
  a CPU with AMX (Intel Sapphire Rapids and later) whose llama.cpp build uses AMX, where these
  buffers crash the process in the first decode (ggml-org/llama.cpp#20824, ollama#17205); on
  everywhere else, where they are safe and faster (see :func:`choose_extra_buffers`).
* **mlock**: on only when the weights that stay in RAM fit comfortably (at most a quarter of
  the usable RAM, and with their KV cache at most half of the available RAM), the process may
  lock that much (``RLIMIT_MEMLOCK`` or ``CAP_IPC_LOCK``) and the build supports it; then the
  model is never paged out between requests. Off when the weights live in VRAM.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import BeforeValidator

from papin.llm.hardware.info import CpuInfo

if TYPE_CHECKING:  # the store package is imported only where a model file is read
    from papin.llm.hardware.info import GpuInfo, HardwareInfo
    from papin.llm.store.gguf import GGUFInfo

__all__ = [
    "DEFAULT_CONTEXT_CAP",
    "KV_CACHE_TYPES",
    "KV_MEMORY_SHARE",
    "PLAIN_CONTEXT",
    "SETTINGS",
    "OptimizationLine",
    "TunedSettings",
    "EXTRA_BUFFERS_MODES",
    "ExtraBuffers",
    "extra_buffers_setting",
    "choose_batch",
    "choose_extra_buffers",
    "choose_threads",
    "compute_buffer_bytes",
    "describe_optimizations",
    "gpu_budget",
    "kv_bytes_per_token",
    "layer_sizes",
    "merge_user",
    "offload_layers",
    "plain_settings",
    "tune",
    "vram_reserve",
    "with_layer_sizes",
]

MIB = 1024 * 1024
#: Largest context chosen automatically (users may ask for more explicitly).
DEFAULT_CONTEXT_CAP = 8192
#: Context used with optimisations off (bounded by the trained context), as Ollama's default.
PLAIN_CONTEXT = 4096
#: Share of the memory left after the weights that the KV cache may take.
KV_MEMORY_SHARE = 0.5
MIN_CONTEXT = 512
CONTEXT_STEP = 256
DEFAULT_BATCH = 512
MIN_BATCH = 64
#: Share of the model's memory the compute buffer may take before the batch is halved.
COMPUTE_SHARE = 0.10
#: Bytes per cached value of llama.cpp's KV cache types.
KV_CACHE_TYPES: dict[str, float] = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
    "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32,
}  # fmt: skip
#: The settings papin tunes, in display order.
SETTINGS = ("threads", "context_size", "batch_size", "gpu_layers", "use_mmap", "use_mlock", "extra_buffers")
#: Values of the ``extra_buffers`` setting: ``auto`` lets :func:`choose_extra_buffers` decide.
EXTRA_BUFFERS_MODES = ("auto", "on", "off")


def _extra_buffers_mode(value: Any) -> Any:
    """``true``/``false`` (YAML's ``on``/``off`` arrive as booleans) as ``"on"``/``"off"``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value.strip().lower() if isinstance(value, str) else value


#: The ``extra_buffers`` setting of the embedded provider and the managed llama-server:
#: ``auto`` (papin decides for this CPU and build), ``on`` or ``off``.
ExtraBuffers = Annotated[Literal["auto", "on", "off"], BeforeValidator(_extra_buffers_mode)]


def extra_buffers_setting(mode: str) -> bool | None:
    """The user's ``extra_buffers`` as a load setting: ``None`` for ``auto``.

    >>> extra_buffers_setting("auto"), extra_buffers_setting("on"), extra_buffers_setting("off")
    (None, True, False)
    """
    return None if mode == "auto" else mode == "on"


#: ``llama_print_system_info()`` features that mean the build runs AMX kernels.
_AMX_BUILD_FEATURES = frozenset({"amx_int8", "amx_bf16", "amx"})


class OptimizationLine(NamedTuple):
    """One tuned setting for display: name, value and why."""

    setting: str
    value: int | bool | None
    reason: str


@dataclass(frozen=True, slots=True)
class TunedSettings:
    """Chosen load settings, each with its reason in :attr:`reasons`.

    ``gpu_layers`` counts llama.cpp layers (``block_count + 1`` means everything, the output
    layer included); ``total_layers`` is that full count when the model is known.
    ``extra_buffers`` is llama.cpp's ``use_extra_bufts`` (``--no-repack`` when off).
    """

    threads: int
    context_size: int
    batch_size: int
    gpu_layers: int
    use_mmap: bool
    use_mlock: bool
    reasons: dict[str, str] = field(default_factory=dict)
    total_layers: int | None = None
    extra_buffers: bool = True

    def describe(self) -> list[OptimizationLine]:
        """(setting, value, reason) for every setting, in :data:`SETTINGS` order."""
        return [OptimizationLine(name, getattr(self, name), self.reasons.get(name, "")) for name in SETTINGS]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: each setting as ``{"value": ..., "reason": ...}``."""
        out: dict[str, Any] = {
            line.setting: {"value": line.value, "reason": line.reason} for line in self.describe()
        }
        out["total_layers"] = self.total_layers
        return out


# -- model arithmetic -----------------------------------------------------------------------------


def kv_bytes_per_token(info: GGUFInfo, cache_type: str = "f16") -> int | None:
    """KV-cache bytes of one token of context for the whole model.

    layers x KV heads x (key length + value length) x bytes per value of ``cache_type``; key
    and value lengths default to ``embedding_length / head_count`` as in llama.cpp.

    >>> from papin.llm.store.gguf import GGUFInfo
    >>> kv_bytes_per_token(GGUFInfo(block_count=18, head_count_kv=1, key_length=256, value_length=256))
    18432
    >>> llama3_8b = GGUFInfo(block_count=32, head_count=32, head_count_kv=8, embedding_length=4096)
    >>> kv_bytes_per_token(llama3_8b), kv_bytes_per_token(llama3_8b, "q8_0")
    (131072, 69632)
    """
    per_value = KV_CACHE_TYPES.get(cache_type.lower())
    if per_value is None:
        raise ValueError(f"unknown KV cache type {cache_type!r}; known: {', '.join(KV_CACHE_TYPES)}")
    head = info.embedding_length // info.head_count if info.embedding_length and info.head_count else None
    key, value = info.key_length or head, info.value_length or head
    kv_heads = info.head_count_kv or info.head_count
    if not (info.block_count and kv_heads and key and value):
        return None
    return math.ceil(info.block_count * kv_heads * (key + value) * per_value)


def compute_buffer_bytes(info: GGUFInfo | None, batch: int) -> tuple[int, int]:
    """Estimated llama.cpp compute buffer for ``batch`` tokens: (output part, body part).

    The output part (logits: 4 bytes x batch x vocabulary) sits with the output layer; the
    body part (activations, about 32 bytes x batch x embedding width) with the layers. Checked
    against llama.cpp's reports: Gemma 3 270M (262k vocabulary) needs 514.5 MiB at batch 512
    and 257 MiB at 256; this gives 512 + 10 MiB and 256 + 5 MiB.
    """
    vocab = info.vocab_size if info and info.vocab_size else 32000
    width = info.embedding_length if info and info.embedding_length else 4096
    return 4 * batch * vocab, 32 * batch * width


def with_layer_sizes(info: GGUFInfo, path: Path | str | None) -> GGUFInfo:
    """``info`` with per-layer tensor sizes: read again from ``path`` for records written
    before papin stored them (cached by path, size and mtime); ``info`` itself otherwise."""
    if info.layer_bytes is not None or path is None:
        return info
    try:
        st = os.stat(path)
        return _reread(str(path), st.st_size, st.st_mtime_ns) or info
    except OSError:
        return info


@lru_cache(maxsize=32)
def _reread(path: str, size: int, mtime_ns: int) -> GGUFInfo | None:
    from papin.llm.errors import InvalidModelFileError
    from papin.llm.store.gguf import read_gguf_info

    try:
        return read_gguf_info(path)
    except InvalidModelFileError:
        return None


def layer_sizes(info: GGUFInfo) -> tuple[tuple[int, ...], int, int]:
    """(per-layer bytes, output-layer bytes, bytes outside the layers) of ``info``.

    Without tensor sizes (a model described by its metadata, an old record), the weights
    (:attr:`GGUFInfo.weights_bytes`) are split evenly over the layers plus one for the output
    layer, and one more share for the embeddings.
    """
    if info.layer_bytes is not None and info.other_bytes is not None and info.layer_bytes:
        return info.layer_bytes, info.output_bytes or 0, info.other_bytes
    n = info.block_count or 1
    share = info.weights_bytes // (n + 2)
    return (share,) * n, share, info.weights_bytes - share * n


# -- hardware arithmetic --------------------------------------------------------------------------


def vram_reserve(gpu: GpuInfo) -> int:
    """VRAM kept free on ``gpu`` for the driver context and scratch: 512 MiB or 5 %."""
    return max(512 * MIB, (gpu.memory_total or 0) // 20)


def gpu_budget(hardware: HardwareInfo) -> int:
    """Bytes of GPU memory a model may use: every usable GPU's free memory minus its
    :func:`vram_reserve` (llama.cpp splits layers over several GPUs)."""
    total = 0
    for gpu in hardware.usable_gpus:
        free = gpu.memory_free if gpu.memory_free is not None else gpu.memory_total or 0
        total += max(0, free - vram_reserve(gpu))
    return total


def choose_threads(hardware: HardwareInfo | CpuInfo) -> tuple[int, str]:
    """Generation threads and why (see the module docstring for the rule)."""
    cpu = hardware if isinstance(hardware, CpuInfo) else hardware.cpu
    cores = cpu.usable_cores
    if cores <= 4:
        threads, rule = cores, "all of them (4 or fewer usable)"
    elif cores <= 16:
        threads, rule = cores - 1, "one left for the rest of the machine"
    else:
        threads, rule = cores - 2, "two left for the rest of the machine"
    limits = []
    if cpu.performance_cores and cpu.performance_cores < cpu.physical_cores:
        limits.append(f"{cpu.performance_cores} performance cores")
    if cpu.available_cores and cpu.available_cores < cpu.physical_cores:
        limits.append(f"{cpu.available_cores} CPUs allowed to this process")
    basis = f"{cpu.physical_cores} physical cores" + (f" ({', '.join(limits)})" if limits else "")
    return threads, f"{basis}: {rule}"


def offload_layers(
    info: GGUFInfo, budget: int, context: int, *, batch: int = DEFAULT_BATCH, cache_type: str = "f16"
) -> tuple[int, int]:
    """(layers to offload, GPU bytes they take) for ``budget`` bytes of GPU memory.

    Everything (``block_count + 1``: the layers and the output layer) when it fits with the KV
    cache at ``context`` and the compute buffer; else the largest number of the *last* layers
    that fit with their KV cache and the body part of the compute buffer; 0 when none does.
    """
    layers, output, _ = layer_sizes(info)
    n = len(layers)
    kv_layer = (kv_bytes_per_token(info, cache_type) or 0) * context // max(1, n)
    head, body = compute_buffer_bytes(info, batch)
    full = sum(layers) + n * kv_layer + output + head + body
    if full <= budget:
        return n + 1, full
    room = budget - body
    used = 0
    count = 0
    for size in reversed(layers):
        if used + size + kv_layer > room:
            break
        used += size + kv_layer
        count += 1
    return count, (used + body if count else 0)


def _round_context(tokens: float) -> int:
    return int(tokens // CONTEXT_STEP) * CONTEXT_STEP


# -- the rules ------------------------------------------------------------------------------------


def choose_batch(info: GGUFInfo | None, memory: int) -> tuple[int, str]:
    """Prompt batch size for ``info`` running in ``memory`` bytes, and why (see the rule above)."""
    batch = DEFAULT_BATCH
    while batch > MIN_BATCH and sum(compute_buffer_bytes(info, batch)) > memory * COMPUTE_SHARE:
        batch //= 2
    if batch == DEFAULT_BATCH:
        return batch, "llama.cpp's default prompt batch; its compute buffer fits easily"
    need = sum(compute_buffer_bytes(info, DEFAULT_BATCH)) // MIB
    return batch, (
        f"smaller than 512: the compute buffer at 512 ({need} MiB) would take over "
        f"{COMPUTE_SHARE:.0%} of the {memory // MIB} MiB the model runs in"
    )


def choose_extra_buffers(cpu: CpuInfo, build_features: frozenset[str] | None) -> tuple[bool, str]:
    """Whether llama.cpp may use its extra buffer types on ``cpu`` with a build reporting
    ``build_features`` (``None``: unknown, as for a ``llama-server`` binary), and why.

    Off only where they crash: a CPU with AMX whose build runs AMX kernels (or may: unknown
    features). Everywhere else they stay on, so nothing gets slower.

    >>> amx = CpuInfo("Xeon", "x86_64", 2, 4, frozenset({"avx512f", "amx", "amx_int8"}))
    >>> choose_extra_buffers(amx, frozenset({"avx512", "amx_int8"}))[0]
    False
    >>> choose_extra_buffers(amx, frozenset({"avx512"}))[0], choose_extra_buffers(amx, None)[0]
    (True, False)
    >>> choose_extra_buffers(CpuInfo("EPYC", "x86_64", 2, 4, frozenset({"avx2"})), None)[0]
    True
    """
    cpu_amx = sorted(f for f in cpu.features if f.startswith("amx"))
    if not cpu_amx:
        return True, "no AMX on this CPU: repacked weights are safe and faster"
    crash = (
        "llama.cpp's extra buffers (AMX and repacked weights) crash the first decode on AMX CPUs "
        "(ggml-org/llama.cpp#20824)"
    )
    if build_features is None:
        return False, f"this CPU has AMX ({', '.join(cpu_amx)}) and the build's features are unknown: {crash}"
    used = sorted(_AMX_BUILD_FEATURES & build_features)
    if used:
        return False, f"this CPU has AMX and this llama.cpp build uses it ({', '.join(used)}): {crash}"
    return True, "this CPU has AMX but this llama.cpp build does not use it: extra buffers are safe"


def _build_features(hardware: HardwareInfo) -> frozenset[str] | None:
    """The embedded build's features, ``None`` when it was not probed."""
    return hardware.llama.features if hardware.llama.system_info is not None else None


def tune(
    hardware: HardwareInfo | None = None,
    model: GGUFInfo | None = None,
    *,
    context_size: int | None = None,
    gpu_offload: bool | None = None,
    cache_type: str = "f16",
) -> TunedSettings:
    """Settings fitted to ``hardware`` (default: :func:`~papin.llm.hardware.detect_hardware`)
    for ``model`` (``None``: the model-independent ones, with placeholders for the rest).

    Args:
        context_size: A context the user chose: GPU layers are fitted to it.
        gpu_offload: Whether the backend can offload to a GPU; default: the hardware has a
            usable GPU and the embedded llama.cpp build supports offload.
        cache_type: The KV cache type (``f16``, ``q8_0``...).
    """
    if hardware is None:
        from papin.llm.hardware import detect_hardware

        hardware = detect_hardware()
    reasons: dict[str, str] = {}
    threads, reasons["threads"] = choose_threads(hardware)
    offload = hardware.has_gpu and (hardware.llama.gpu_offload if gpu_offload is None else gpu_offload)
    budget = gpu_budget(hardware) if offload else 0
    ram = hardware.memory.usable_available
    unified = offload and hardware.unified_memory
    runs_in = max(budget, ram) if offload else ram
    batch, reasons["batch_size"] = choose_batch(model, runs_in)
    reasons["use_mmap"] = "memory-map the file (fast load, shared page cache; see papin.llm.hardware.tuning)"
    extra, reasons["extra_buffers"] = choose_extra_buffers(hardware.cpu, _build_features(hardware))
    if model is None:
        reasons["context_size"] = "depends on the model (see 'papin models fit MODEL')"
        reasons["gpu_layers"] = (
            "depends on the model" if offload else _no_offload_reason(hardware, gpu_offload)
        )
        reasons["use_mlock"] = "depends on the model"
        ctx = context_size or DEFAULT_CONTEXT_CAP
        return TunedSettings(threads, ctx, min(batch, ctx), 0, True, False, reasons, extra_buffers=extra)

    ctx, reasons["context_size"] = _context(model, hardware, budget, unified, batch, cache_type, context_size)
    total_layers = len(layer_sizes(model)[0]) + 1
    if offload:
        layers, gpu_bytes = offload_layers(model, budget, ctx, batch=batch, cache_type=cache_type)
        where = "GPU-usable unified memory" if unified else "free VRAM"
        reasons["gpu_layers"] = _offload_reason(layers, total_layers, gpu_bytes, budget, ctx, where)
    else:
        layers, gpu_bytes = 0, 0
        reasons["gpu_layers"] = _no_offload_reason(hardware, gpu_offload)
    mlock, reasons["use_mlock"] = _mlock(model, hardware, layers, total_layers, ctx, cache_type)
    return TunedSettings(threads, ctx, min(batch, ctx), layers, True, mlock, reasons, total_layers, extra)


def _no_offload_reason(hardware: HardwareInfo, gpu_offload: bool | None) -> str:
    if not hardware.has_gpu:
        return "no GPU usable for offload was found"
    if gpu_offload is None and not hardware.llama.gpu_offload or gpu_offload is False:
        return "this llama.cpp build cannot offload to the GPU (CPU-only build)"
    return "no offload"


def _context(
    model: GGUFInfo,
    hardware: HardwareInfo,
    budget: int,
    unified: bool,
    batch: int,
    cache_type: str,
    wanted: int | None,
) -> tuple[int, str]:
    if wanted:
        return wanted, "set by the user"
    limits = [(DEFAULT_CONTEXT_CAP, f"papin's automatic cap ({DEFAULT_CONTEXT_CAP})")]
    if model.context_length:
        limits.append((model.context_length, f"the trained context ({model.context_length})"))
    per_token = kv_bytes_per_token(model, cache_type)
    if per_token:
        memory = hardware.memory.usable_available + (0 if unified else budget)
        left = memory - model.weights_bytes - sum(compute_buffer_bytes(model, batch))
        fit = _round_context(max(0, left) * KV_MEMORY_SHARE / per_token)
        floor = min(MIN_CONTEXT, model.context_length or MIN_CONTEXT)
        where = "RAM + GPU memory" if budget and not unified else "available memory"
        limits.append(
            (
                max(floor, fit),
                f"{where}: {max(0, left) // MIB} MiB left after the weights, half of it for a KV cache of "
                f"{per_token} bytes/token",
            )
        )
    ctx, why = min(limits, key=lambda item: item[0])
    return ctx, f"limited by {why}"


def _offload_reason(layers: int, total: int, gpu_bytes: int, budget: int, ctx: int, where: str) -> str:
    if layers >= total:
        return (
            f"all {total} layers fit in {budget // MIB} MiB of {where} "
            f"({gpu_bytes // MIB} MiB with the KV cache at {ctx} and compute buffer)"
        )
    if layers == 0:
        return f"not even one layer fits in {budget // MIB} MiB of {where} (after the reserve)"
    return (
        f"{layers} of {total} layers fit in {budget // MIB} MiB of {where} "
        f"({gpu_bytes // MIB} MiB with their KV cache at {ctx}); the rest run on the CPU"
    )


def _mlock(
    model: GGUFInfo, hardware: HardwareInfo, layers: int, total: int, ctx: int, cache_type: str
) -> tuple[bool, str]:
    if layers >= total:
        return False, "the weights live in VRAM"
    sizes, _, other = layer_sizes(model)
    resident = sum(sizes[: len(sizes) - layers]) + other
    if hardware.llama.supports_mlock is False:
        return False, "this llama.cpp build cannot lock memory"
    memory = hardware.memory
    allowed = memory.may_lock(resident)
    if allowed is None:
        return False, "cannot tell whether this process may lock memory"
    if not allowed:
        limit = (memory.mlock_limit or 0) // MIB
        return False, f"the memlock limit ({limit} MiB) is below the model's {resident // MIB} MiB in RAM"
    on_cpu = len(sizes) - layers
    kv = (kv_bytes_per_token(model, cache_type) or 0) * ctx * on_cpu // max(1, len(sizes))
    if resident > memory.usable_total // 4 or resident + kv > memory.usable_available // 2:
        return False, f"the {resident // MIB} MiB of weights in RAM do not fit comfortably (keep it pageable)"
    return (
        True,
        f"the {resident // MIB} MiB of weights in RAM fit comfortably: keep them from being paged out",
    )


def plain_settings(model: GGUFInfo | None = None, hardware: HardwareInfo | None = None) -> TunedSettings:
    """Settings with optimisations off: llama-cpp-python's defaults (threads: half the CPUs,
    batch 512, no offload, mmap on, mlock off) and a context of :data:`PLAIN_CONTEXT` bounded by
    the trained context (its own default, 512, is too small for a chat).

    ``extra_buffers`` is a safety decision, not an optimisation: with ``hardware`` it is
    :func:`choose_extra_buffers`'s, without it llama.cpp's default (on)."""
    trained = model.context_length if model and model.context_length else PLAIN_CONTEXT
    ctx = min(PLAIN_CONTEXT, trained)
    why = "optimisations are off: library default"
    reasons = dict.fromkeys(SETTINGS, why)
    reasons["context_size"] = f"optimisations are off: {PLAIN_CONTEXT}, or the trained context if smaller"
    threads = max((os.cpu_count() or 2) // 2, 1)
    extra = True
    if hardware is not None:
        extra, reasons["extra_buffers"] = choose_extra_buffers(hardware.cpu, _build_features(hardware))
    return TunedSettings(threads, ctx, min(DEFAULT_BATCH, ctx), 0, True, False, reasons, extra_buffers=extra)


def describe_optimizations(
    hardware: HardwareInfo | None = None,
    model: GGUFInfo | None = None,
    *,
    context_size: int | None = None,
    gpu_offload: bool | None = None,
) -> list[OptimizationLine]:
    """(setting, value, reason) lines of :func:`tune` for display (``papin doctor``).

    Without a model, ``context_size`` and ``gpu_layers`` have the value ``None`` and say that
    they depend on the model.
    """
    tuned = tune(hardware, model, context_size=context_size, gpu_offload=gpu_offload)
    lines = tuned.describe()
    if model is None:
        lines = [
            line._replace(value=None) if line.setting in ("context_size", "gpu_layers", "use_mlock") else line
            for line in lines
        ]
    return lines


def merge_user(user: Mapping[str, Any], tuned: TunedSettings) -> TunedSettings:
    """``tuned`` with the values the user set (not ``None``) put in, their reason saying so."""
    values = {k: v for k, v in user.items() if v is not None and k in SETTINGS}
    reasons = {**tuned.reasons, **dict.fromkeys(values, "set by the user")}
    return replace(tuned, **values, reasons=reasons)
