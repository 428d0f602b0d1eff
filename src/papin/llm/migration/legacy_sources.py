"""Where the legacy Papin (formerly "mcp-client") kept its LLM configuration and model files,
and how to read them: the detection half of :mod:`papin.llm.migration`.

The places and formats are the ones the original looked at (its ``detect_legacy_system``):

1. the configuration, first hit wins: a path given explicitly; on Windows the registry
   (``HKLM`` then ``HKCU`` ``\\SOFTWARE\\Papin``, value ``LLMConfig``, a JSON string, which
   the original found but never loaded); then these files, each also as ``.toml``,
   ``.yaml``, ``.yml`` and ``.db``::

       <data dir>/papin/llm_config.json      <data dir>/papin/config/llm.json
       <data dir>/mcp-client/llm_config.json <data dir>/mcp-client/config/llm.json
       ~/.papin/llm_config.json              ~/.mcp-client/llm_config.json
       ~/.config/papin/llm.json              ~/.config/mcp-client/llm.json
       ./llm_config.json                     ./config/llm.json

   where ``<data dir>`` is ``$XDG_DATA_HOME`` or ``~/.local/share`` on Linux,
   ``~/Library/Application Support`` on macOS and ``%APPDATA%`` on Windows;
2. model files, non-recursively: ``<data dir>/papin/models``, ``<data dir>/mcp-client/models``,
   the directory of the legacy ``model_path`` (and ``model_path`` itself when it is a
   directory), and any extra directories given.

Files in papin's own model store are not legacy and are left out; which directories those
are is worked out (reading papin's config file) only when a model directory or file exists.

Detection never raises and never writes: a file it cannot read is reported with the problem.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from papin.llm.config import LLMConfig
from papin.llm.errors import ConfigurationError, InvalidModelFileError
from papin.llm.migration.legacy_config import (
    FORMATS,
    LegacyConfig,
    config_format,
    config_to_dict,
    decode_document,
    parse_legacy_config,
    read_legacy_config_file,
)

if TYPE_CHECKING:
    from papin.llm.store import ModelStore

__all__ = [
    "LEGACY_MODEL_EXTENSIONS",
    "LegacyDetection",
    "LegacyModelFile",
    "RegistryReader",
    "config_candidates",
    "default_store",
    "detect_legacy",
    "legacy_data_dir",
    "real_path",
    "resolve_path",
    "scan_model_dir",
]

#: Extensions the original counted as model files (compared case-insensitively).
LEGACY_MODEL_EXTENSIONS = (
    "bin", "gguf", "ggml", "weight", "pt", "pth", "model", "onnx", "safetensors", "f16", "f32",
)  # fmt: skip
_VARIANTS = (".toml", ".yaml", ".yml", ".db")
_REGISTRY = (("HKEY_LOCAL_MACHINE", r"SOFTWARE\Papin"), ("HKEY_CURRENT_USER", r"SOFTWARE\Papin"))
_REGISTRY_VALUE = "LLMConfig"
#: Reads one registry value: ``(hive, key, value name) -> the string, or None if absent``.
RegistryReader = Callable[[str, str, str], "str | None"]


@dataclass(frozen=True, slots=True)
class LegacyModelFile:
    """A model file found where the legacy system kept models.

    Attributes:
        legacy_id: Its legacy id (the file stem, as the original named it).
        usable: Whether papin can run it (a valid GGUF file); if not, ``reason`` says why.
    """

    path: Path
    legacy_id: str
    size_bytes: int
    usable: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class LegacyDetection:
    """What :func:`detect_legacy` found.

    Attributes:
        config_source: The legacy configuration's file, or ``registry:HIVE\\KEY\\LLMConfig``.
        config_format: ``json``, ``toml``, ``yaml``, ``sqlite`` or ``registry``.
        config: The parsed configuration (``None`` if none was found or it is unreadable).
        config_error: Why the found configuration cannot be used.
        model_files: Model files found (usable or not).
        searched: Every place looked at, in order.
        notes: Other remarks (directories that could not be read, files skipped).
    """

    config_source: str | None = None
    config_format: str | None = None
    config: LegacyConfig | None = None
    config_error: str | None = None
    model_files: tuple[LegacyModelFile, ...] = ()
    searched: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    fingerprint: str = ""

    @property
    def found(self) -> bool:
        """Whether there is anything legacy: a configuration (even unreadable) or a model file."""
        return self.config_source is not None or bool(self.model_files)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description."""
        cfg = self.config
        return {
            "found": self.found,
            "config_source": self.config_source,
            "config_format": self.config_format,
            "config_error": self.config_error,
            "config": None if cfg is None else config_to_dict(cfg),
            "model_files": [
                {
                    "path": str(m.path),
                    "legacy_id": m.legacy_id,
                    "size_bytes": m.size_bytes,
                    "usable": m.usable,
                    "reason": m.reason,
                }
                for m in self.model_files
            ],
            "searched": list(self.searched),
            "notes": list(self.notes),
        }


# -- places ---------------------------------------------------------------------------------
def legacy_data_dir(platform: str, environ: Mapping[str, str], home: Path) -> Path:
    """The data directory the original used (Rust's ``dirs::data_dir``) on ``platform``
    (a ``sys.platform`` value)."""
    if platform.startswith("win"):
        appdata = environ.get("APPDATA", "")
        return Path(appdata) if appdata else home / "AppData" / "Roaming"
    if platform == "darwin":
        return home / "Library" / "Application Support"
    xdg = environ.get("XDG_DATA_HOME", "")
    return Path(xdg) if xdg and os.path.isabs(xdg) else home / ".local" / "share"


def config_candidates(data_dir: Path, home: Path, cwd: Path) -> list[Path]:
    """The configuration files looked for, in order (each base name, then its variants)."""
    bases = [
        data_dir / "papin" / "llm_config.json",
        data_dir / "papin" / "config" / "llm.json",
        data_dir / "mcp-client" / "llm_config.json",
        data_dir / "mcp-client" / "config" / "llm.json",
        home / ".papin" / "llm_config.json",
        home / ".mcp-client" / "llm_config.json",
        home / ".config" / "papin" / "llm.json",
        home / ".config" / "mcp-client" / "llm.json",
        cwd / "llm_config.json",
        cwd / "config" / "llm.json",
    ]
    return [p for base in bases for p in (base, *(base.with_suffix(s) for s in _VARIANTS))]


def default_registry_reader() -> RegistryReader | None:
    """A reader of the Windows registry (``None`` elsewhere)."""
    if not sys.platform.startswith("win"):
        return None
    import winreg  # type: ignore[import-not-found,unused-ignore]

    def read(hive: str, key: str, name: str) -> str | None:
        try:
            with winreg.OpenKey(getattr(winreg, hive), key) as handle:
                value, kind = winreg.QueryValueEx(handle, name)
        except OSError:
            return None
        return value if isinstance(value, str) and kind in (winreg.REG_SZ, winreg.REG_EXPAND_SZ) else None

    return read  # type: ignore[no-any-return,unused-ignore]


# -- model files ----------------------------------------------------------------------------
_HINTS = {
    "onnx": "ONNX models cannot be run by llama.cpp",
    "safetensors": "convert it to GGUF first (llama.cpp's convert_hf_to_gguf.py)",
    "pt": "PyTorch weights: convert them to GGUF first (llama.cpp's convert_hf_to_gguf.py)",
    "pth": "PyTorch weights: convert them to GGUF first (llama.cpp's convert_hf_to_gguf.py)",
}


def _check_model_file(path: Path) -> tuple[bool, str | None]:
    from papin.llm.store.gguf import read_gguf_info

    try:
        read_gguf_info(path)
    except InvalidModelFileError as exc:
        reason = str(exc)
        hint = _HINTS.get(path.suffix.lower().lstrip("."))
        if hint and hint not in reason:
            reason = f"{reason.rstrip('.')}; {hint}."
        return False, reason + " papin's local providers run GGUF files only."
    return True, None


def scan_model_dir(folder: Path, notes: list[str]) -> list[LegacyModelFile]:
    """Model files directly in ``folder`` (not in sub-directories), by the legacy extensions."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        notes.append(f"Cannot read the directory {folder}: {exc.strerror or exc}.")
        return []
    found: list[LegacyModelFile] = []
    for entry in entries:
        if entry.name.rsplit(".", 1)[-1].lower() not in LEGACY_MODEL_EXTENSIONS or "." not in entry.name:
            continue
        try:
            if not entry.is_file():
                continue
            size = entry.stat().st_size
        except OSError:
            continue
        path = Path(entry.path)
        usable, reason = _check_model_file(path)
        found.append(LegacyModelFile(path, path.stem, size, usable, reason))
    return found


def resolve_path(path_text: str, cwd: Path) -> Path:
    """A path from the legacy configuration: ``~`` expanded, relative to ``cwd``."""
    path = Path(path_text).expanduser()
    return path if path.is_absolute() else cwd / path


def real_path(path: Path) -> Path:
    """``path`` resolved (absolute when it cannot be resolved)."""
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _missing(path: Path) -> bool:
    try:
        path.stat()
    except FileNotFoundError:
        return True
    except OSError:
        return False  # there, but unreadable: scanning reports it
    return False


def default_store(config: LLMConfig) -> ModelStore:
    """The model store the embedded provider uses with ``config``."""
    from papin.llm.store import ModelStore

    models_dir = config.settings_for("llamacpp").get("models_dir")
    return ModelStore(Path(str(models_dir)).expanduser() if models_dir else None)


def _papin_store_dirs(store_root: Path | None) -> set[Path]:
    """papin's own model store (``store_root``, default the embedded provider's) and papin's
    default store directory (on Linux also the legacy ``<data dir>/papin/models``): with
    ``PAPIN_MODELS_DIR`` pointing elsewhere, the files there are still papin's, from before."""
    import platformdirs

    if store_root is None:
        try:
            store_root = default_store(LLMConfig.from_file()).root
        except ConfigurationError:
            from papin.llm.store import ModelStore

            store_root = ModelStore().root
    default = Path(platformdirs.user_data_dir("papin", appauthor=False)) / "models"
    return {real_path(store_root), real_path(default)}


def _fingerprint(parts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()[:16]


def _stamp(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path}:missing"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


# -- detection ------------------------------------------------------------------------------
def detect_legacy(
    *,
    legacy_file: Path | None = None,
    data_dir: Path | None = None,
    home: Path | None = None,
    cwd: Path | None = None,
    extra_model_dirs: Iterable[Path] = (),
    platform: str | None = None,
    environ: Mapping[str, str] | None = None,
    registry_reader: RegistryReader | None = None,
    store_root: Path | None = None,
) -> LegacyDetection:
    """Find the legacy configuration and model files where the original looked (see the
    module docstring). Never raises; a file that cannot be read is reported in
    ``config_error``.

    ``legacy_file`` replaces the search for the configuration (the original's
    ``legacy_config_path``). Everything else is injectable for tests (data dir, home, working
    directory, platform, environment, and a registry reader ``(hive, key, value) -> str |
    None``); by default the real ones are used. Files in papin's own model store
    (``store_root``, default the embedded provider's) are not legacy and are left out, and
    neither are those in papin's default store directory (on Linux that is also the legacy
    ``<data dir>/papin/models``): with ``PAPIN_MODELS_DIR`` pointing elsewhere, its files are
    still papin's, from before, not the legacy engine's.
    """
    platform = platform or sys.platform
    environ = os.environ if environ is None else environ
    home = home or Path.home()
    cwd = cwd or Path.cwd()
    data_dir = data_dir or legacy_data_dir(platform, environ, home)
    if registry_reader is None and platform.startswith("win") and platform == sys.platform:
        registry_reader = default_registry_reader()
    searched: list[str] = []
    notes: list[str] = []
    source = fmt = error = None
    config: LegacyConfig | None = None
    stamps: list[str] = []

    if legacy_file is not None:
        searched.append(str(legacy_file))
        source = str(legacy_file)
        try:
            fmt = config_format(legacy_file)
            if not legacy_file.is_file():
                raise ConfigurationError(f"The legacy configuration {legacy_file} does not exist.")
            fmt, config = read_legacy_config_file(legacy_file)
        except ConfigurationError as exc:
            error = exc.message
        stamps.append(_stamp(legacy_file))
    if source is None and registry_reader is not None and platform.startswith("win"):
        for hive, key in _REGISTRY:
            where = f"registry:{hive}\\{key}\\{_REGISTRY_VALUE}"
            searched.append(where)
            try:
                text = registry_reader(hive, key, _REGISTRY_VALUE)
            except Exception as exc:  # an injected or real reader failing is "not found"
                notes.append(f"Cannot read {where}: {exc}.")
                continue
            if text is None:
                continue
            source, fmt = where, "registry"
            stamps.append(f"{where}:{hashlib.sha256(text.encode()).hexdigest()}")
            try:
                config = parse_legacy_config(decode_document(text, "json", where), where)
            except ConfigurationError as exc:
                error = exc.message
            break
    if source is None:
        for candidate in config_candidates(data_dir, home, cwd):
            searched.append(str(candidate))
            try:
                if not candidate.is_file():
                    continue
            except OSError:
                continue
            try:
                fmt, config = read_legacy_config_file(candidate)
            except ConfigurationError as exc:
                fmt = FORMATS.get(candidate.suffix.lower())
                error = exc.message
            else:
                if not config.recognised:
                    notes.append(
                        f"{candidate} has none of the legacy settings (model_id, model_path, "
                        "context_size, parameters...): not a legacy Papin configuration, skipped."
                    )
                    fmt = config = None
                    continue
            source = str(candidate)
            stamps.append(_stamp(candidate))
            break

    dirs = [data_dir / "papin" / "models", data_dir / "mcp-client" / "models"]
    model_path: Path | None = None
    if config is not None and config.model_path:
        model_path = resolve_path(config.model_path, cwd)
        dirs.append(model_path.parent)
        if model_path.is_dir():
            dirs.append(model_path)
    dirs.extend(Path(d).expanduser() for d in extra_model_dirs)
    papins: set[Path] | None = None  # worked out when first needed: it reads papin's config

    def is_papins(folder: Path) -> bool:
        nonlocal papins
        if papins is None:
            papins = _papin_store_dirs(store_root)
        return folder in papins

    seen_dirs: set[Path] = set()
    seen_files: set[Path] = set()
    models: list[LegacyModelFile] = []
    for folder in dirs:
        real = real_path(folder)
        if real in seen_dirs:
            continue
        seen_dirs.add(real)
        searched.append(str(folder))
        if _missing(real):
            continue
        if is_papins(real):
            notes.append(f"{folder} is papin's own model store; its models are already papin's.")
            continue
        for found in scan_model_dir(folder, notes):
            real_file = real_path(found.path)
            if real_file not in seen_files:
                seen_files.add(real_file)
                models.append(found)
                stamps.append(_stamp(found.path))
    # The file the legacy configuration names, whatever its extension.
    if model_path is not None and model_path.is_file() and real_path(model_path) not in seen_files:
        if is_papins(real_path(model_path.parent)):
            notes.append(f"{model_path} is in papin's own model store.")
        else:
            try:
                size = model_path.stat().st_size
            except OSError as exc:
                notes.append(f"Cannot read {model_path}: {exc.strerror or exc}.")
            else:
                usable, reason = _check_model_file(model_path)
                models.append(LegacyModelFile(model_path, model_path.stem, size, usable, reason))
                stamps.append(_stamp(model_path))
    return LegacyDetection(
        config_source=source,
        config_format=fmt,
        config=config,
        config_error=error,
        model_files=tuple(models),
        searched=tuple(searched),
        notes=tuple(notes),
        fingerprint=_fingerprint(stamps) if stamps else "",
    )
