"""Model metadata for :mod:`papin.llm.hardware.fit`: a model named on the command line (a file, a store
id, the packaged default), or described without a file (parameters, quantization, layout)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from papin.llm.errors import ConfigurationError
from papin.llm.store.gguf import FILE_TYPES, GGUFInfo, int_value, size_label

__all__ = [
    "BITS_PER_WEIGHT",
    "describe_model",
    "info_from_metadata",
    "info_from_ollama_show",
]

#: Approximate bits per weight of whole files by quantization (llama.cpp's quantize table,
#: Llama-3-8B sizes): used to estimate a described model's size and to rank quantizations.
BITS_PER_WEIGHT: dict[str, float] = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.51, "Q6_K": 6.57, "Q5_1": 6.04,
    "Q5_K_M": 5.70, "Q5_K_S": 5.57, "Q5_0": 5.57, "Q4_1": 5.11, "Q4_K_M": 4.90, "Q4_K_S": 4.67,
    "Q4_0": 4.64, "IQ4_NL": 4.50, "MXFP4_MOE": 4.25, "IQ4_XS": 4.25, "Q3_K_L": 4.31,
    "Q3_K_M": 4.00, "IQ3_M": 3.66, "Q3_K_S": 3.65, "IQ3_S": 3.44, "IQ3_XS": 3.30,
    "Q2_K": 3.17, "Q2_K_S": 3.17, "IQ3_XXS": 3.06, "IQ2_M": 2.70, "IQ2_S": 2.50,
    "IQ2_XS": 2.31, "IQ2_XXS": 2.06, "TQ2_0": 2.06, "IQ1_M": 1.75, "TQ1_0": 1.69, "IQ1_S": 1.56,
}  # fmt: skip


def describe_model(
    *,
    parameter_count: int,
    quantization: str,
    block_count: int,
    head_count: int | None = None,
    head_count_kv: int | None = None,
    embedding_length: int | None = None,
    key_length: int | None = None,
    value_length: int | None = None,
    context_length: int | None = None,
    vocab_size: int | None = None,
    name: str | None = None,
    architecture: str | None = None,
    file_size: int | None = None,
) -> GGUFInfo:
    """A :class:`GGUFInfo` for a model known by its metadata only (no file): its size is
    ``file_size``, or the parameter count times the quantization's typical bits per weight
    (:data:`BITS_PER_WEIGHT`). Layer sizes are then an even split (see
    :func:`~papin.llm.hardware.tuning.layer_sizes`).

    >>> info = describe_model(parameter_count=8_030_000_000, quantization="q4_k_m", block_count=32)
    >>> info.quantization, round(info.file_size / 1024**3, 2)
    ('Q4_K_M', 4.58)
    """
    quant = quantization.strip().upper()
    if file_size is None:
        bits = BITS_PER_WEIGHT.get(quant)
        if bits is None:
            raise ConfigurationError(
                f"Unknown quantization {quantization!r}: give the file size, or one of "
                f"{', '.join(sorted(BITS_PER_WEIGHT))}."
            )
        file_size = int(parameter_count * bits / 8)
    return GGUFInfo(
        architecture=architecture,
        name=name,
        size_label=size_label(parameter_count) if parameter_count else None,
        parameter_count=parameter_count or None,
        quantization=quant if quant != "UNKNOWN" else None,
        context_length=context_length,
        block_count=block_count,
        embedding_length=embedding_length,
        head_count=head_count,
        head_count_kv=head_count_kv,
        key_length=key_length,
        value_length=value_length,
        file_size=file_size,
        vocab_size=vocab_size,
    )


def _int(value: Any) -> int | None:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return int_value(value)


def info_from_metadata(
    metadata: Mapping[str, Any], *, quantization: str | None = None, file_size: int | None = None
) -> GGUFInfo:
    """A :class:`GGUFInfo` from GGUF metadata keys (``general.architecture``,
    ``{arch}.block_count``, ``{arch}.attention.head_count_kv``...), as Ollama's ``/api/show``
    returns them in ``model_info``. The quantization comes from ``quantization`` or
    ``general.file_type``; the size from ``file_size`` or the parameter count.
    """
    arch = metadata.get("general.architecture")
    arch = arch if isinstance(arch, str) else None

    def key(suffix: str) -> int | None:
        return _int(metadata.get(f"{arch}.{suffix}")) if arch else None

    params = _int(metadata.get("general.parameter_count"))
    file_type = _int(metadata.get("general.file_type"))
    quant = quantization or (FILE_TYPES.get(file_type) if file_type is not None else None)
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = key("vocab_size") or (len(tokens) if isinstance(tokens, list) and tokens else None)
    name = metadata.get("general.name")
    blocks = key("block_count")
    if not blocks:
        raise ConfigurationError(
            "The model metadata has no block count: cannot tell how the model is laid out."
        )
    if not (params and (quant or file_size)) and file_size is None:
        raise ConfigurationError(
            "The model metadata gives neither its parameter count and quantization nor its size."
        )
    return describe_model(
        parameter_count=params or 0,
        quantization=quant or "unknown",
        block_count=blocks,
        head_count=key("attention.head_count"),
        head_count_kv=key("attention.head_count_kv"),
        embedding_length=key("embedding_length"),
        key_length=key("attention.key_length"),
        value_length=key("attention.value_length"),
        context_length=key("context_length"),
        vocab_size=vocab,
        name=name if isinstance(name, str) else None,
        architecture=arch,
        file_size=file_size,
    )


def info_from_ollama_show(show: Mapping[str, Any], *, file_size: int | None = None) -> GGUFInfo:
    """A :class:`GGUFInfo` from an Ollama ``POST /api/show`` answer (``model_info`` and
    ``details.quantization_level``); ``file_size`` from ``/api/tags`` when known."""
    info = show.get("model_info") or show.get("modelinfo") or {}
    details = show.get("details") or {}
    quant = details.get("quantization_level") if isinstance(details, Mapping) else None
    if not isinstance(info, Mapping):
        raise ConfigurationError("The /api/show answer has no model_info.")
    return info_from_metadata(
        info, quantization=quant if isinstance(quant, str) else None, file_size=file_size
    )
