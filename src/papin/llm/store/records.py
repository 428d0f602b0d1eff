"""The model store's records: :class:`StoredModel` and its small JSON file.

A record keeps what listing needs (source, size, sha256, GGUF metadata) so that listing many
models reads a few kilobytes each and never a model file. Records are written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from papin.llm.datatypes import ModelInfo
from papin.llm.store.gguf import GGUFInfo

__all__ = [
    "RECORD_FORMAT",
    "StoredModel",
    "fsync_dir",
    "fsync_file",
    "now_iso",
    "record_from_json",
    "record_to_json",
    "write_json_atomic",
]

#: Version of the record layout.
RECORD_FORMAT = 1


@dataclass(frozen=True)
class StoredModel:
    """A model in the store.

    Attributes:
        id: The model id (lowercase).
        path: The GGUF file (in the store, or the user's own file when ``in_place``).
        size_bytes: File size.
        sha256: Hex digest, when known (computed for every copy and download).
        source: Where it came from (a path, URL, ``hf:...`` or ``package:...``).
        added_at: When it was added, ISO 8601 UTC.
        in_place: Registered where it lies; deleting it removes only the record.
        info: Metadata from the GGUF header.
    """

    id: str
    path: Path
    size_bytes: int
    sha256: str | None
    source: str
    added_at: str
    in_place: bool
    info: GGUFInfo

    def to_model_info(self, provider: str) -> ModelInfo:
        """Describe this model as a provider reports it (``format="gguf"``)."""
        info = self.info
        metadata = {
            "path": str(self.path),
            "source": self.source,
            "in_place": str(self.in_place).lower(),
            "has_chat_template": str(info.has_chat_template).lower(),
        }
        if self.sha256:
            metadata["sha256"] = self.sha256
        for key in ("architecture", "parameter_count", "block_count", "embedding_length",
                    "head_count", "head_count_kv", "key_length", "value_length"):  # fmt: skip
            value = getattr(info, key)
            if value is not None:
                metadata[key] = str(value)
        return ModelInfo(
            id=self.id,
            name=self.id,
            provider=provider,
            installed=True,
            size_bytes=self.size_bytes,
            context_size=info.context_length,
            description=info.name or "",
            family=info.architecture,
            parameter_size=info.size_label,
            quantization=info.quantization,
            format="gguf",
            modified_at=self.added_at,
            digest=self.sha256,
            metadata=metadata,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (``info`` nested)."""
        return {
            "id": self.id,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "source": self.source,
            "added_at": self.added_at,
            "in_place": self.in_place,
            "info": self.info.to_dict(),
        }


def record_to_json(model: StoredModel, mtime_ns: int, root: Path) -> dict[str, Any]:
    """The record of ``model`` (a file in ``root`` is named relative to it)."""
    in_store = not model.in_place and model.path.parent == root
    return {
        "format": RECORD_FORMAT,
        "id": model.id,
        "file": model.path.name if in_store else str(model.path),
        "size_bytes": model.size_bytes,
        "mtime_ns": mtime_ns,
        "sha256": model.sha256,
        "source": model.source,
        "added_at": model.added_at,
        "in_place": model.in_place,
        "info": model.info.to_dict(),
    }


def record_from_json(path: Path, data: Any, root: Path) -> tuple[StoredModel, int]:
    """The model and file mtime (ns) a record describes; ``ValueError`` etc. if it is invalid."""
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise ValueError("not a model record")
    model_id = str(data["id"])
    if path.name != f"{model_id}.json":
        raise ValueError("record name and id differ")
    file = Path(str(data["file"]))
    model = StoredModel(
        id=model_id,
        path=file if file.is_absolute() else root / file,
        size_bytes=int(data["size_bytes"]),
        sha256=data.get("sha256"),
        source=str(data.get("source", "")),
        added_at=str(data.get("added_at", "")),
        in_place=bool(data.get("in_place", False)),
        info=GGUFInfo.from_dict(data.get("info") or {}),
    )
    return model, int(data.get("mtime_ns", 0))


def now_iso() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically: temporary file, fsync, ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk."""
    with path.open("rb") as f:
        os.fsync(f.fileno())
