"""Will this model fit? A GGUF model against this machine's memory.

:func:`assess_fit` says whether a model (a GGUF file's metadata, or a model described by its
parameter count and quantization: :func:`describe_model`, :func:`info_from_metadata`,
:func:`info_from_ollama_show`) fits entirely on the GPU, with part of its layers offloaded,
on the CPU only, or not at all, with the figures. :func:`best_fit` picks, among several
quantizations of one model, the best one that fits. ``papin models fit MODEL...`` prints both.

The memory counted is what llama.cpp allocates: the weights (per-layer sizes from the GGUF
tensor directory), the KV cache at the context (f16 by default, see
:func:`papin.llm.hardware.tuning.kv_bytes_per_token`; an upper bound for models with sliding-window
layers) and the compute buffer (:func:`papin.llm.hardware.tuning.compute_buffer_bytes`). The GPU part
must fit in the free VRAM minus a reserve (:func:`papin.llm.hardware.tuning.gpu_budget`), the rest in
the usable available RAM (inside a container's cgroup limit). On Apple Silicon the GPU's share
comes out of the same RAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from papin.llm.errors import ConfigurationError
from papin.llm.formatting import human_bytes as _size
from papin.llm.hardware.fit_models import (
    BITS_PER_WEIGHT,
    describe_model,
    info_from_metadata,
    info_from_ollama_show,
)
from papin.llm.hardware.tuning import (
    DEFAULT_CONTEXT_CAP,
    PLAIN_CONTEXT,
    choose_batch,
    compute_buffer_bytes,
    gpu_budget,
    kv_bytes_per_token,
    layer_sizes,
    offload_layers,
)
from papin.llm.store.gguf import GGUFInfo

if TYPE_CHECKING:
    from papin.llm.hardware.info import HardwareInfo

__all__ = [
    "BITS_PER_WEIGHT",
    "MIN_GOOD_BITS",
    "BestFit",
    "FitReport",
    "Verdict",
    "assess_fit",
    "best_fit",
    "bits_per_weight",
    "describe_model",
    "info_from_metadata",
    "info_from_ollama_show",
]

Verdict = Literal["gpu", "partial", "cpu", "no_fit"]

#: Below this many bits per weight a quantization loses noticeable quality: :func:`best_fit`
#: prefers a full-GPU fit only among quantizations at or above it.
MIN_GOOD_BITS = 4.0


@dataclass(frozen=True, slots=True)
class FitReport:
    """Whether one model fits this machine, with the numbers (bytes).

    ``verdict``: ``"gpu"`` (everything on the GPU), ``"partial"`` (``gpu_layers`` of
    ``layers`` offloaded), ``"cpu"`` (CPU only, fits in RAM) or ``"no_fit"`` (``missing_bytes``
    short). ``gpu_bytes`` and ``ram_bytes`` are what the verdict's placement needs on each
    side; ``vram_available`` is the GPU budget (free VRAM minus the reserve), ``ram_available``
    the usable available RAM. ``max_context`` is, for a model that does not fit at
    ``context_size``, the largest context at which it would (``None`` if none). ``estimated``
    is true when the layer sizes were not read from a file.
    """

    verdict: Verdict
    model: str
    quantization: str | None
    context_size: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    total_bytes: int
    layers: int
    gpu_layers: int
    gpu_bytes: int
    ram_bytes: int
    vram_available: int
    ram_available: int
    ram_total: int
    missing_bytes: int
    max_context: int | None
    estimated: bool
    summary: str
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        """Whether the model runs at all (any verdict but ``no_fit``)."""
        return self.verdict != "no_fit"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True, slots=True)
class BestFit:
    """:func:`best_fit`'s answer: the chosen candidate (``None`` when none fits), its report,
    every candidate's report (in the given order) and the reason for the choice."""

    choice: GGUFInfo | None
    report: FitReport | None
    reports: tuple[FitReport, ...]
    reason: str
    index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the choice as its index and report)."""
        return {
            "index": self.index,
            "reason": self.reason,
            "report": self.report.to_dict() if self.report else None,
            "reports": [r.to_dict() for r in self.reports],
        }


def bits_per_weight(model: GGUFInfo) -> float | None:
    """Bits per weight: from the file's size and parameter count, else the quantization's
    typical figure (:data:`BITS_PER_WEIGHT`), else ``None``."""
    if model.parameter_count and model.weights_bytes:
        return model.weights_bytes * 8 / model.parameter_count
    return BITS_PER_WEIGHT.get((model.quantization or "").upper())


def _label(model: GGUFInfo) -> str:
    name = model.name or model.architecture or "model"
    parts = [name]
    if model.size_label and model.size_label.lower() not in name.lower():
        parts.append(model.size_label)
    if model.quantization:
        parts.append(model.quantization)
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class _Plan:
    verdict: Verdict
    gpu_layers: int
    gpu_bytes: int
    ram_bytes: int
    missing: int


def _plan(model: GGUFInfo, hardware: HardwareInfo, ctx: int, batch: int, cache_type: str) -> _Plan:
    sizes, output, _ = layer_sizes(model)
    n = len(sizes)
    weights = model.weights_bytes
    kv_total = (kv_bytes_per_token(model, cache_type) or 0) * ctx
    kv_layer = kv_total // max(1, n)
    head, body = compute_buffer_bytes(model, batch)
    ram_free = hardware.memory.usable_available
    unified = hardware.unified_memory
    budget = gpu_budget(hardware)
    cpu_total = weights + kv_total + head + body
    best_missing = max(0, cpu_total - ram_free)
    if budget:
        layers, gpu_bytes = offload_layers(model, budget, ctx, batch=batch, cache_type=cache_type)
        if layers >= n + 1:
            ram = weights - sum(sizes) - (0 if model.output_tied else output)
        elif layers:
            on_gpu = sum(sizes[n - layers :])
            ram = weights - on_gpu + kv_layer * (n - layers) + head + body
        else:
            ram = cpu_total
        if unified and layers:
            ram += gpu_bytes
        if layers and ram <= ram_free:
            return _Plan("gpu" if layers >= n + 1 else "partial", layers, gpu_bytes, ram, 0)
        if layers:
            best_missing = min(best_missing, ram - ram_free)
    if cpu_total <= ram_free:
        return _Plan("cpu", 0, 0, cpu_total, 0)
    return _Plan("no_fit", 0, 0, cpu_total, best_missing)


def assess_fit(
    model: GGUFInfo,
    hardware: HardwareInfo,
    *,
    context_size: int | None = None,
    cache_type: str = "f16",
) -> FitReport:
    """Whether ``model`` fits ``hardware`` at ``context_size`` tokens (default: the trained
    context up to :data:`~papin.llm.hardware.tuning.DEFAULT_CONTEXT_CAP`).

    Example (a model described without its file, on a machine with one 8 GiB GPU)::

        assess_fit(describe_model(parameter_count=8_030_000_000, quantization="Q4_K_M",
                                  block_count=32, head_count=32, head_count_kv=8,
                                  embedding_length=4096, context_length=131072), detect_hardware())
    """
    if context_size is not None and context_size < 1:
        raise ConfigurationError(f"The context size must be a positive number of tokens, not {context_size}.")
    ctx = context_size or min(model.context_length or PLAIN_CONTEXT, DEFAULT_CONTEXT_CAP)
    ram_free = hardware.memory.usable_available
    budget = gpu_budget(hardware)
    batch, _ = choose_batch(model, max(budget, ram_free))
    plan = _plan(model, hardware, ctx, batch, cache_type)
    sizes, _, _ = layer_sizes(model)
    per_token = kv_bytes_per_token(model, cache_type)
    kv_total = (per_token or 0) * ctx
    compute = sum(compute_buffer_bytes(model, batch))
    weights = model.weights_bytes
    notes: list[str] = []
    estimated = model.layer_bytes is None
    if estimated:
        notes.append("layer sizes estimated (no tensor directory): an even split of the weights")
    if per_token is None:
        notes.append("the KV cache size is unknown (no attention shape in the metadata): not counted")
    if not model.weights_bytes:
        notes.append("the model's size is unknown: only the KV cache and buffers are counted")
    max_context: int | None = None
    if plan.verdict == "no_fit":
        max_context = _largest_context(model, hardware, ctx, batch, cache_type)
        if max_context:
            notes.append(f"it would fit with a context of {max_context} tokens (--context {max_context})")
        total_ram = hardware.memory.usable_total
        if weights + kv_total + compute <= total_ram:
            notes.append(
                f"it would fit in RAM if more of the {_size(total_ram)} were free (close other programs)"
            )
    if (
        plan.verdict in ("gpu", "partial")
        and hardware.llama.package_version
        and not hardware.llama.gpu_offload
    ):
        notes.append(
            "the installed llama-cpp-python is a CPU-only build: the embedded provider runs it on the CPU"
        )
    report = FitReport(
        verdict=plan.verdict,
        model=_label(model),
        quantization=model.quantization,
        context_size=ctx,
        weights_bytes=weights,
        kv_bytes=kv_total,
        compute_bytes=compute,
        total_bytes=weights + kv_total + compute,
        layers=len(sizes) + 1,
        gpu_layers=plan.gpu_layers,
        gpu_bytes=plan.gpu_bytes,
        ram_bytes=plan.ram_bytes,
        vram_available=budget,
        ram_available=ram_free,
        ram_total=hardware.memory.usable_total,
        missing_bytes=plan.missing,
        max_context=max_context,
        estimated=estimated,
        summary="",
        notes=tuple(notes),
    )
    return _with_summary(report, hardware)


def _largest_context(
    model: GGUFInfo, hardware: HardwareInfo, ctx: int, batch: int, cache_type: str
) -> int | None:
    low, high = 0, ctx // 256  # contexts in steps of 256 tokens
    while low < high:
        mid = (low + high + 1) // 2
        if _plan(model, hardware, mid * 256, batch, cache_type).verdict != "no_fit":
            low = mid
        else:
            high = mid - 1
    return low * 256 or None


def _with_summary(r: FitReport, hardware: HardwareInfo) -> FitReport:
    from dataclasses import replace

    need = f"{_size(r.weights_bytes)} of weights + {_size(r.kv_bytes)} of KV cache at {r.context_size} tokens"
    if r.verdict == "gpu":
        where = "unified memory" if hardware.unified_memory else "VRAM"
        text = f"Fits entirely on the GPU: {need} in {_size(r.vram_available)} of free {where}."
    elif r.verdict == "partial":
        text = (
            f"Fits with partial offload: {r.gpu_layers} of {r.layers} layers on the GPU "
            f"({_size(r.gpu_bytes)} of {_size(r.vram_available)} free VRAM), the rest in RAM "
            f"({_size(r.ram_bytes)} of {_size(r.ram_available)} available)."
        )
    elif r.verdict == "cpu":
        why = (
            "no usable GPU"
            if not hardware.has_gpu
            else f"not even one layer fits the GPU's {_size(r.vram_available)}"
        )
        used = f"{_size(r.ram_bytes)} of {_size(r.ram_available)} available"
        text = f"Fits in RAM, CPU only ({why}): {need}, {used}."
    else:
        gpu = f" + {_size(r.vram_available)} of free VRAM" if r.vram_available else ""
        text = (
            f"Does not fit: it needs {_size(r.total_bytes)} ({need}); {_size(r.ram_available)} of RAM{gpu} "
            f"available, {_size(r.missing_bytes)} short."
        )
    return replace(r, summary=text)


def _rank(report: FitReport, bits: float | None) -> tuple[int, float, int, int]:
    quality = min(bits or 0.0, 16.0)  # F32 is no better than F16
    good = quality >= MIN_GOOD_BITS
    if report.verdict == "gpu" and good:
        tier = 3
    elif report.fits and good:
        tier = 2
    elif report.fits:
        tier = 1
    else:
        tier = 0
    # within a tier: better quality, then (for tier 1) full GPU first, more GPU layers, smaller file
    gpu_first = 1 if report.verdict == "gpu" else 0
    if tier == 1:
        return tier, gpu_first + quality / 100, report.gpu_layers, -report.total_bytes
    return tier, quality, report.gpu_layers, -report.total_bytes


def best_fit(
    candidates: Sequence[GGUFInfo],
    hardware: HardwareInfo,
    *,
    context_size: int | None = None,
) -> BestFit:
    """The best of several quantizations of one model that fits ``hardware``.

    The rule: a quantization that fits entirely on the GPU and keeps at least
    :data:`MIN_GOOD_BITS` bits per weight wins (the highest quality such one); else the highest
    quality one (at least that many bits) that fits with partial offload or on the CPU, more
    GPU layers breaking ties; else any that fits, full-GPU first; the smaller file breaks any
    remaining tie. ``choice`` is ``None`` when none fits.
    """
    if not candidates:
        raise ConfigurationError("best_fit needs at least one model to compare.")
    reports = tuple(assess_fit(m, hardware, context_size=context_size) for m in candidates)
    ranked = sorted(
        range(len(candidates)), key=lambda i: _rank(reports[i], bits_per_weight(candidates[i])), reverse=True
    )
    best = ranked[0]
    report = reports[best]
    if not report.fits:
        closest = min(reports, key=lambda r: r.missing_bytes)
        return BestFit(
            None,
            None,
            reports,
            f"none fits; the closest, {closest.model}, is {_size(closest.missing_bytes)} short",
        )
    bits = bits_per_weight(candidates[best])
    quality = f"{bits:.1f} bits/weight" if bits else "unknown quality"
    placement = {
        "gpu": "fits entirely on the GPU",
        "partial": f"fits with {report.gpu_layers} of {report.layers} layers on the GPU",
        "cpu": "fits in RAM (CPU only)",
    }[report.verdict]
    others = sum(1 for r in reports if r.fits) - 1
    tail = (
        f"; {others} other{'s' if others != 1 else ''} also fit{'s' if others == 1 else ''}" if others else ""
    )
    return BestFit(candidates[best], report, reports, f"{report.model}: {placement}, {quality}{tail}", best)
