"""Model files on disk that papin can run where they lie (never copied).

Found where the backends keep them:

* Ollama's store (``OLLAMA_MODELS``, else ``~/.ollama/models`` and the Linux service's
  ``/usr/share/ollama/.ollama/models``): ``manifests/<host>/<namespace>/<model>/<tag>`` JSON
  files whose ``application/vnd.ollama.image.model`` layer names a GGUF blob
  ``blobs/sha256-<hex>``;
* LM Studio's model folders (``~/.lmstudio/models``, ``~/.cache/lm-studio/models``):
  ``<publisher>/<repo>/*.gguf``;
* the Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``): ``models--<owner>--<repo>/snapshots/<rev>/*.gguf``;
* llama.cpp's download cache (``LLAMA_CACHE``, else ``~/.cache/llama.cpp``);
* any extra directories given (searched a few levels deep).

Every GGUF is described by :func:`papin.llm.store.gguf.read_gguf_info` (a header read, cached
by path, size and modification time); a file that is not a usable GGUF is listed with the
reason, never raised. Of a split model (``-00001-of-00003.gguf``) only the first part is
listed, with the number of parts.

:func:`register_discovered_model` makes such a file runnable by papin's local providers: it
registers it in the model store in place (a record only; the file is not touched).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from papin.llm.errors import ConfigurationError, InvalidModelFileError, ModelNotFoundError
from papin.llm.store.gguf import GGUFInfo, read_gguf_info

if TYPE_CHECKING:
    from papin.llm.store import ModelStore, StoredModel

__all__ = [
    "LocalModelFile",
    "clear_cache",
    "find_model_file",
    "find_model_info",
    "model_roots",
    "register_discovered_model",
    "scan_model_files",
]

_OLLAMA_MODEL_MEDIA = "application/vnd.ollama.image.model"
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
_MAX_FILES = 2000
_DEFAULT_DEPTH = 4


@dataclass(frozen=True, slots=True)
class LocalModelFile:
    """A GGUF model file found on disk.

    Attributes:
        name: Its natural name: the Ollama model name (``llama3.2:1b``), ``owner/repo/file.gguf``
            in the Hugging Face cache, ``publisher/repo/file.gguf`` in LM Studio's folders, or
            the file name.
        id: A model-store id derived from the name (``llama3.2-1b``), usable to run it.
        source: ``"ollama"``, ``"lmstudio"``, ``"huggingface"``, ``"llama.cpp"`` or ``"directory"``.
        path: The GGUF file (for a split model, its first part).
        size_bytes: Size on disk (all parts of a split model).
        info: GGUF metadata, or ``None`` when the file is unusable (``error`` says why).
        parts: Number of files of a split model (1 otherwise).
    """

    name: str
    id: str
    source: str
    path: Path
    size_bytes: int
    info: GGUFInfo | None = None
    error: str | None = None
    parts: int = 1
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """A readable GGUF holding a language model (not a vision projector)."""
        return self.info is not None and (self.info.architecture or "") != "clip"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (metadata without the chat template text)."""
        info = None
        if self.info is not None:
            info = {k: v for k, v in self.info.to_dict().items() if k != "chat_template"}
        return {
            "name": self.name,
            "id": self.id,
            "source": self.source,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "parts": self.parts,
            "usable": self.usable,
            "error": self.error,
            "info": info,
            **({"extra": self.extra} if self.extra else {}),
        }


# -- model files --------------------------------------------------------------------------------
def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())


def model_roots(env: Mapping[str, str] | None = None) -> dict[str, list[Path]]:
    """Where each backend keeps its models, from the environment (existing or not)."""
    env = os.environ if env is None else env
    home = _home(env)
    cache = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else home / ".cache"
    ollama = (
        [Path(env["OLLAMA_MODELS"])]
        if env.get("OLLAMA_MODELS")
        else [home / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]
    )
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        hf = [Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"])]
    elif env.get("HF_HOME"):
        hf = [Path(env["HF_HOME"]) / "hub"]
    else:
        hf = [cache / "huggingface" / "hub"]
    if env.get("LLAMA_CACHE"):
        llama = [Path(env["LLAMA_CACHE"])]
    elif sys.platform == "darwin":
        llama = [home / "Library" / "Caches" / "llama.cpp"]
    elif sys.platform == "win32" and env.get("LOCALAPPDATA"):
        llama = [Path(env["LOCALAPPDATA"]) / "llama.cpp"]
    else:
        llama = [cache / "llama.cpp"]
    lmstudio = [home / ".lmstudio" / "models", cache / "lm-studio" / "models"]
    return {"ollama": ollama, "lmstudio": lmstudio, "huggingface": hf, "llama.cpp": llama}


_info_cache: dict[str, tuple[int, int, GGUFInfo | None, str | None]] = {}
_info_lock = threading.Lock()


def _describe(path: Path) -> tuple[int, GGUFInfo | None, str | None]:
    """(size, info, error) of a GGUF, cached by path, size and mtime."""
    try:
        st = path.stat()
    except OSError as exc:
        return 0, None, f"cannot read {path}: {exc.strerror or exc}"
    key = str(path)
    with _info_lock:
        cached = _info_cache.get(key)
    if cached is not None and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
        return st.st_size, cached[2], cached[3]
    info: GGUFInfo | None
    error: str | None
    try:
        info, error = read_gguf_info(path), None
    except InvalidModelFileError as exc:
        info, error = None, str(exc)
    except Exception as exc:  # pragma: no cover - defensive: a scan never raises
        info, error = None, f"cannot read {path}: {exc}"
    with _info_lock:
        _info_cache[key] = (st.st_size, st.st_mtime_ns, info, error)
    return st.st_size, info, error


def _slug(text: str) -> str:
    from papin.llm.store.sources import slug_id

    return slug_id(text) or "model"


def _ollama_name(host: str, namespace: str, model: str, tag: str) -> str:
    if host == "registry.ollama.ai":
        return f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
    return f"{host}/{namespace}/{model}:{tag}"


def _ollama_files(root: Path) -> Iterator[LocalModelFile]:
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    count = 0
    for dirpath, _dirs, files in os.walk(manifests):
        rel = Path(dirpath).relative_to(manifests).parts
        if len(rel) != 3:
            continue
        host, namespace, model = rel
        for tag in sorted(files):
            count += 1
            if count > _MAX_FILES:
                return
            name = _ollama_name(host, namespace, model, tag)
            model_id = _slug(name.replace(":", "-"))
            manifest = Path(dirpath) / tag
            try:
                data = json.loads(manifest.read_bytes())
                layers = data.get("layers") if isinstance(data, dict) else None
                digest = next(
                    str(layer["digest"])
                    for layer in (layers or [])
                    if isinstance(layer, dict)
                    and layer.get("mediaType") == _OLLAMA_MODEL_MEDIA
                    and isinstance(layer.get("digest"), str)
                )
            except StopIteration:
                continue  # a manifest without weights (a cloud model, an adapter-only one)
            except (OSError, ValueError, TypeError, KeyError) as exc:
                why = f"unreadable Ollama manifest {manifest}: {exc}"
                yield LocalModelFile(name, model_id, "ollama", manifest, 0, error=why)
                continue
            blob = root / "blobs" / digest.replace(":", "-", 1)
            size, info, error = _describe(blob)
            if error and not blob.exists():
                error = f"Ollama blob {blob} named by {manifest} is missing"
            yield LocalModelFile(
                name,
                model_id,
                "ollama",
                blob,
                size,
                info,
                error,
                extra={"manifest": str(manifest), "digest": digest},
            )


def _walk_ggufs(root: Path, depth: int) -> Iterator[Path]:
    """GGUF files under ``root`` at most ``depth`` folders down (symlinks followed, no loops)."""
    seen: set[tuple[int, int]] = set()
    count = 0

    def walk(folder: Path, level: int) -> Iterator[Path]:
        nonlocal count
        try:
            st = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            if is_dir:
                if level < depth:
                    yield from walk(Path(entry.path), level + 1)
            elif entry.name.lower().endswith(".gguf"):
                count += 1
                if count > _MAX_FILES:
                    return
                yield Path(entry.path)

    if root.is_dir():
        yield from walk(root, 0)


def _file_entry(
    path: Path, name: str, source: str, extra: dict[str, str] | None = None
) -> LocalModelFile | None:
    """The listing entry of one GGUF (``None`` for a split model's later parts)."""
    match = _SPLIT.match(path.name)
    if match is None:
        base = Path(name).name
        stem, total = (base[:-5] if base.lower().endswith(".gguf") else base), "00001"
    elif int(match["part"]) != 1:
        return None
    else:
        stem, total = match["stem"], match["total"]
    size, info, error = _describe(path)
    parts = int(total)
    for i in range(2, parts + 1):
        sibling = path.with_name(f"{stem}-{i:05d}-of-{total}.gguf")
        try:
            size += sibling.stat().st_size
        except OSError:
            info, error = None, error or f"part {i} of {parts} ({sibling.name}) is missing"
    return LocalModelFile(name, _slug(stem), source, path, size, info, error, parts, extra or {})


def _hf_files(root: Path) -> Iterator[LocalModelFile]:
    try:
        repos = sorted(p for p in root.iterdir() if p.name.startswith("models--"))
    except OSError:
        return
    for repo in repos:
        repo_id = repo.name[len("models--") :].replace("--", "/")
        snapshots = repo / "snapshots"
        try:
            main = (repo / "refs" / "main").read_text().strip()
        except OSError:
            main = ""
        try:
            revisions = sorted(snapshots.iterdir(), key=lambda p: (p.name != main, p.name))
        except OSError:
            continue
        seen: set[str] = set()
        for revision in revisions:
            for path in _walk_ggufs(revision, 3):
                rel = path.relative_to(revision).as_posix()
                if rel in seen:
                    continue  # an older revision of a file already listed
                seen.add(rel)
                entry = _file_entry(path, f"{repo_id}/{rel}", "huggingface", {"revision": revision.name})
                if entry is not None:
                    yield entry


def _folder_files(root: Path, source: str, depth: int) -> Iterator[LocalModelFile]:
    for path in _walk_ggufs(root, depth):
        name = path.relative_to(root).as_posix() if source == "lmstudio" else path.name
        entry = _file_entry(path, name, source)
        if entry is not None:
            yield entry


def scan_model_files(
    *, extra_dirs: Iterable[str | Path] = (), default_dirs: bool = True, env: Mapping[str, str] | None = None
) -> list[LocalModelFile]:
    """Every GGUF in the backends' stores and in ``extra_dirs``; never raises.

    A file reachable from several places (a symlink into a blob store) is listed once, under
    its first name; Ollama names that share a blob (``llama3.2:latest`` and ``llama3.2:3b``)
    are each listed.
    """
    roots = model_roots(env) if default_dirs else {}
    found: list[LocalModelFile] = []
    sources: list[Iterator[LocalModelFile]] = []
    for root in roots.get("ollama", []):
        sources.append(_ollama_files(root))
    for root in roots.get("lmstudio", []):
        sources.append(_folder_files(root, "lmstudio", 3))
    for root in roots.get("huggingface", []):
        sources.append(_hf_files(root))
    for root in roots.get("llama.cpp", []):
        sources.append(_folder_files(root, "llama.cpp", 3))
    for folder in extra_dirs:
        sources.append(_folder_files(Path(folder).expanduser(), "directory", _DEFAULT_DEPTH))
    seen: set[str] = set()
    for source in sources:
        try:
            for entry in source:
                try:
                    key = str(entry.path.resolve())
                except OSError:
                    key = str(entry.path)
                if key in seen and entry.source != "ollama":  # Ollama names share blobs: keep each name
                    continue
                seen.add(key)
                found.append(entry)
        except Exception:  # pragma: no cover - defensive: one bad folder never spoils the rest
            continue
    return found


# -- running a discovered file ------------------------------------------------------------------
def _ollama_key(name: str) -> str:
    """``llama3.2`` -> ``llama3.2:latest``; the default registry and namespace dropped."""
    key = name.strip().lower().removeprefix("registry.ollama.ai/").removeprefix("library/")
    if ":" not in key.rsplit("/", 1)[-1]:
        key += ":latest"
    return key


def find_model_file(name: str, files: Iterable[LocalModelFile]) -> LocalModelFile | None:
    """The usable discovered file ``name`` means: its name (an Ollama name with or without
    ``:latest``; ``hf:OWNER/REPO/FILE.gguf`` or ``OWNER/REPO/FILE.gguf``), its id, or its file
    name; the first match in discovery order."""
    wanted = name.strip()
    if not wanted:
        return None
    lowered = wanted.lower().removeprefix("hf:")
    candidates = [f for f in files if f.usable]
    tests: tuple[Callable[[LocalModelFile], bool], ...] = (
        lambda f: f.name.lower() == lowered,
        lambda f: f.source == "ollama" and _ollama_key(f.name) == _ollama_key(wanted),
        lambda f: f.id == lowered,
        lambda f: f.source != "ollama" and f.path.name.lower() == lowered,
    )
    for test in tests:
        for f in candidates:
            if test(f):
                return f
    return None


async def register_discovered_model(
    store: ModelStore, name: str, files: Iterable[LocalModelFile]
) -> StoredModel | None:
    """Register the usable file ``name`` means among ``files`` in ``store``, in place.

    Returns the stored model (an earlier registration of the same file is reused), or
    ``None`` when no usable file goes by that name or its id is taken by another model. Only a
    record is written; the file stays where it is, and deleting the model from papin's store
    never touches it.
    """
    found = find_model_file(name, files)
    if found is None:
        return None
    resolved = found.path.resolve()
    for model_id in (found.id, f"{found.id}-{found.source.replace('.', '')}"):
        existing = await asyncio.to_thread(store.find, model_id)
        if existing is not None:
            if existing.path.resolve() == resolved:
                return existing
            continue
        async for _ in store.add(str(found.path), model_id=model_id, copy=False):
            pass
        return await asyncio.to_thread(store.find, model_id)
    return None


def clear_cache() -> None:
    """Forget cached GGUF metadata (tests)."""
    with _info_lock:
        _info_cache.clear()


# -- a model named by the user: path, store id, packaged default or file on disk -----------------


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.lower().endswith(".gguf") or text.startswith(("~", "."))


def _from_package(model_id: str) -> GGUFInfo | None:
    """The packaged default model's metadata, read from its first chunk (nothing installed)."""
    from papin.llm.store.sources import DEFAULT_MODEL_ID, DEFAULT_PACKAGE, load_package

    if model_id.strip().lower() != DEFAULT_MODEL_ID:
        return None
    try:
        parts, _ = load_package(DEFAULT_PACKAGE)
    except ConfigurationError:  # not installed, or incompletely
        return None
    total = sum(p.stat().st_size for p in parts)
    return read_gguf_info(parts[0], display_name=f"the packaged model '{model_id}'", total_size=total)


def find_model_info(
    reference: str, *, models_dir: Path | None = None, model_dirs: Sequence[str | Path] = ()
) -> tuple[str, GGUFInfo]:
    """(where it came from, metadata) of ``reference``: a GGUF file's path, a model id in
    papin's model store (its tensor sizes read again from the file for an old record), or the
    packaged default model (read from its package, not installed).

    Raises:
        InvalidModelFileError: the path is missing, a directory, or not a (whole) GGUF file.
        ModelNotFoundError: neither a file nor a model papin knows.
    """
    text = reference.strip()
    path = Path(text).expanduser()
    if path.exists():
        return str(path), read_gguf_info(path)
    from papin.llm.hardware.tuning import with_layer_sizes
    from papin.llm.store import ModelStore

    store = ModelStore(models_dir)
    stored = store.find(text)
    if stored is not None:
        return str(stored.path), with_layer_sizes(stored.info, stored.path)
    packaged = _from_package(text)
    if packaged is not None:
        return f"package:{text}", packaged
    on_disk = _from_disk(text, model_dirs)
    if on_disk is not None:
        return on_disk
    if _looks_like_path(text) and not text.lower().startswith("hf:"):
        raise InvalidModelFileError(f"No such model file: {path}.")
    raise ModelNotFoundError(
        f"'{reference}' is neither a GGUF file, a model in papin's model store ({store.root}), nor "
        "a model file found on disk ('papin providers' lists them). Give the path of a .gguf "
        "file, or a model id from 'papin --provider llamacpp models list'.",
        model=reference,
    )


def _from_disk(name: str, model_dirs: Sequence[str | Path]) -> tuple[str, GGUFInfo] | None:
    """A model file discovery finds on disk under ``name`` (an Ollama name such as
    ``llama3.2:1b``, ``OWNER/REPO/FILE.gguf`` in the Hugging Face cache...)."""
    from papin.llm.hardware.tuning import with_layer_sizes

    found = find_model_file(name, scan_model_files(extra_dirs=model_dirs))
    if found is None or found.info is None:
        return None
    return str(found.path), with_layer_sizes(found.info, found.path)


# -- models described by metadata -----------------------------------------------------------------
