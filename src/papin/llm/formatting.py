"""Figures for people (standard library only): the library's messages and the CLI share them."""

from __future__ import annotations

__all__ = ["human_bytes"]


def human_bytes(value: float | None) -> str:
    """Bytes in decimal units, as Ollama shows them.

    >>> human_bytes(2_019_393_189), human_bytes(512), human_bytes(None)
    ('2.0 GB', '512 B', '-')
    >>> human_bytes(246_587_904), human_bytes(8 * 1024**3)
    ('246.6 MB', '8.6 GB')
    """
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
