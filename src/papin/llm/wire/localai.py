"""LocalAI's own wire shapes (sans I/O): sizes, error bodies, gallery entries and job status.

The OpenAI-compatible routes are :mod:`papin.llm.wire.openai`; this module reads what only
LocalAI sends: sizes written for humans (``"1.2 GiB"``), its error bodies in every version's
shape, ``GET /models/available`` entries and the ``OpStatus`` of gallery jobs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from papin.llm.datatypes import ModelInfo
from papin.llm.wire import openai as wire

__all__ = [
    "URL_PREFIXES",
    "JobTracker",
    "apply_body",
    "error_text",
    "gallery_model",
    "job_failed",
    "job_reason",
    "job_text",
    "parse_size",
]

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]?)(i?)B\s*$", re.IGNORECASE)
URL_PREFIXES = ("github:", "http://", "https://", "huggingface://", "hf://", "oci://", "ollama://")


def parse_size(text: Any) -> int | None:
    """Bytes of a size as LocalAI writes it (``"1.2 GiB"``, ``"300 MB"``, ``"512 B"``).

    >>> parse_size("1.5 KiB"), parse_size("2 MB"), parse_size("512 B"), parse_size("")
    (1536, 2000000, 512, None)
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return int(text)
    if not isinstance(text, str):
        return None
    match = _SIZE.match(text)
    if match is None:
        return None
    number, prefix, binary = float(match[1]), match[2].upper(), bool(match[3])
    power = "KMGTPE".index(prefix) + 1 if prefix else 0
    return int(number * (1024 if binary else 1000) ** power)


def error_text(body: bytes, content_type: str | None = None) -> str:
    """The message of a LocalAI error body, in every version's shape.

    >>> error_text(b'{"error":{"code":401,"message":"An authentication key is required","type":""}}')
    'An authentication key is required'
    >>> error_text(b'{"message":"Invalid API key"}')
    'Invalid API key'
    >>> error_text(b'{"error":{"code":400,"message":"code=400, message=failed parsing request body"}}')
    'failed parsing request body'
    >>> error_text(b'{"status":"starting","reason":"startup preload in progress"}')
    'starting: startup preload in progress'
    >>> error_text(b'<html><head><title>LocalAI - Login</title></head><body>Login</body></html>')
    'an HTML login page instead of an API answer (the API key is missing or wrong)'
    """
    text = body.decode("utf-8", "replace").strip()
    html = wire.is_html(text, content_type)
    if html and "login" in text.lower():
        return "an HTML login page instead of an API answer (the API key is missing or wrong)"
    if not html:
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            if isinstance(data, Mapping) and data.get("status") and "error" not in data:
                reason = data.get("reason")
                return f"{data['status']}: {reason}" if reason else str(data["status"])
    return wire.error_text(body, content_type)  # also drops echo's "code=N, message=" prefix


@dataclasses.dataclass(slots=True)
class JobTracker:
    """Turns successive ``OpStatus`` readings into bytes done and total, over all files."""

    files_done: int = 0
    file_name: str | None = None
    file_total: int = 0

    def bytes(self, job: Mapping[str, Any]) -> tuple[int, int | None]:
        current, total = job.get("current_bytes"), job.get("total_bytes")
        if isinstance(total, int) and total > 0:
            return (current if isinstance(current, int) else 0), total
        name = job.get("file_name") or None
        file_total = parse_size(job.get("file_size"))
        done = parse_size(job.get("downloaded_size"))
        if name is not None and name != self.file_name:
            if self.file_name is not None:
                self.files_done += self.file_total
            self.file_name, self.file_total = name, 0
        if file_total:
            self.file_total = file_total
        if self.file_name is None:
            return self.files_done, self.files_done or None
        return self.files_done + (done or 0), self.files_done + self.file_total or None


def job_failed(job: Mapping[str, Any]) -> bool:
    """LocalAI's own rule: ``message`` starting with ``error``, or an ``error`` set.

    Up to v4.3 ``error`` is ``{}`` when set (a marshalled Go error), ``null`` when not;
    since v4.4 it is a string, left out when there is none.
    """
    error = job.get("error")
    message = str(job.get("message") or "")
    return (error is not None and error != "") or message.lower().startswith("error")


def job_reason(job: Mapping[str, Any]) -> str:
    """Why a failed job failed, from its message or error."""
    message = str(job.get("message") or "").strip()
    if message.lower().startswith("error:"):
        message = message[len("error:") :].strip()
    error = job.get("error")
    if not message and isinstance(error, str):
        message = error
    return message or "unknown error"


def gallery_model(entry: Mapping[str, Any], provider: str) -> ModelInfo | None:
    """One entry of ``GET /models/available`` (``None`` for an entry without a name)."""
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        return None
    source = entry.get("gallery")
    gallery_name = source.get("name") if isinstance(source, Mapping) else None
    metadata = {
        key: str(entry[key])
        for key in ("license", "backend", "url", "icon")
        if isinstance(entry.get(key), str) and entry[key]
    }
    if gallery_name:
        metadata["gallery"] = str(gallery_name)
    tags = entry.get("tags")
    if isinstance(tags, list) and tags:
        metadata["tags"] = ",".join(str(t) for t in tags)
    return ModelInfo(
        id=f"{gallery_name}@{name}" if gallery_name else name,
        name=name,
        provider=provider,
        installed=bool(entry.get("installed")),
        size_bytes=parse_size(entry.get("size")),
        description=str(entry.get("description") or "").strip(),
        download_url=entry["url"] if isinstance(entry.get("url"), str) else None,
        metadata=metadata,
    )


def job_text(data: Mapping[str, Any]) -> str:
    """What a running job is doing, in a few words."""
    phase = data.get("phase")
    if isinstance(phase, str) and phase:
        return phase
    if data.get("file_name"):
        return f"downloading {data['file_name']}"
    return str(data.get("message") or "processing")


def apply_body(model: str) -> dict[str, Any]:
    """The body of ``POST /models/apply``: a config URL as ``url``, a gallery id as ``id``."""
    if model.startswith(URL_PREFIXES):
        return {"url": model}
    return {"id": model}
