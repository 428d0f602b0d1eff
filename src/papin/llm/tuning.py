"""Machine-fitting defaults for in-process llama.cpp (threads, context size, GPU layers).

One small, pure function (:func:`default_load_settings`) that the full hardware tuning of a
later release replaces. It never forces anything heavy: no GPU offload unless the installed
llama.cpp supports it, and a context no larger than the model was trained for, than memory
allows, or than :data:`DEFAULT_CONTEXT_CAP`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DEFAULT_CONTEXT_CAP", "MachineFacts", "TunedSettings", "default_load_settings", "machine_facts"]

#: Largest context chosen automatically (users may ask for more explicitly).
DEFAULT_CONTEXT_CAP = 8192
#: Share of available memory the KV cache may take when sizing the context automatically.
KV_MEMORY_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class MachineFacts:
    """What the defaults depend on."""

    physical_cores: int
    available_memory: int | None
    gpu_offload: bool


@dataclass(frozen=True, slots=True)
class TunedSettings:
    """Chosen load settings, with the reason for the context size."""

    n_ctx: int
    n_threads: int
    n_batch: int
    n_gpu_layers: int
    reason: str


def machine_facts(*, gpu_offload: bool = False) -> MachineFacts:
    """Physical cores and available memory of this machine (psutil when present)."""
    cores = os.cpu_count() or 1
    available: int | None = None
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or cores
        available = int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil missing or unsupported platform
        pass
    return MachineFacts(physical_cores=cores, available_memory=available, gpu_offload=gpu_offload)


def kv_bytes_per_token(
    block_count: int | None,
    head_count_kv: int | None,
    key_length: int | None,
    value_length: int | None,
    *,
    bytes_per_value: int = 2,
) -> int | None:
    """KV-cache size of one token (f16 cache by default), from GGUF metadata.

    >>> kv_bytes_per_token(18, 1, 256, 256)
    18432
    """
    if not (block_count and head_count_kv and key_length and value_length):
        return None
    return block_count * head_count_kv * (key_length + value_length) * bytes_per_value


def default_load_settings(
    facts: MachineFacts,
    *,
    trained_context: int | None,
    model_bytes: int,
    kv_per_token: int | None,
) -> TunedSettings:
    """Threads from physical cores, context bounded by training, memory and a cap.

    >>> f = MachineFacts(physical_cores=4, available_memory=8 * 2**30, gpu_offload=False)
    >>> s = default_load_settings(f, trained_context=32768, model_bytes=250 * 2**20, kv_per_token=18432)
    >>> (s.n_ctx, s.n_threads, s.n_gpu_layers)
    (8192, 4, 0)
    >>> tight = MachineFacts(physical_cores=2, available_memory=300 * 2**20, gpu_offload=False)
    >>> default_load_settings(tight, trained_context=32768, model_bytes=250 * 2**20,
    ...                       kv_per_token=18432).n_ctx
    1280
    >>> default_load_settings(tight, trained_context=2048, model_bytes=0, kv_per_token=None).n_ctx
    2048
    """
    limits = [("the default cap", DEFAULT_CONTEXT_CAP)]
    if trained_context:
        limits.append(("the trained context", trained_context))
    if kv_per_token and facts.available_memory is not None:
        budget = max(0, facts.available_memory - model_bytes) * KV_MEMORY_SHARE
        limits.append(("available memory", max(512, int(budget // kv_per_token) // 256 * 256)))
    reason, n_ctx = min(limits, key=lambda item: item[1])
    return TunedSettings(
        n_ctx=n_ctx,
        n_threads=max(1, facts.physical_cores),
        n_batch=min(512, n_ctx),
        n_gpu_layers=-1 if facts.gpu_offload else 0,
        reason=f"context limited by {reason}",
    )
