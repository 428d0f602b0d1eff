"""Incremental NDJSON (newline-delimited JSON) decoding.

Bytes arrive in arbitrary network chunks: a line, or a multi-byte UTF-8 character, may be
split across them. Lines are only decoded once complete, so splits never corrupt text.
"""

from __future__ import annotations

import json
from typing import Any

from papin.llm.errors import ProtocolError

__all__ = ["DEFAULT_MAX_LINE_BYTES", "NdjsonDecoder"]

#: Same limit as Ollama's official Go client (8 MiB per line).
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024


class NdjsonDecoder:
    """Feed raw bytes, get parsed JSON objects back, one per complete line.

    >>> d = NdjsonDecoder()
    >>> d.feed(b'{"a": 1}\\n{"b"')
    [{'a': 1}]
    >>> d.feed(b': 2}\\n')
    [{'b': 2}]
    >>> d.close()
    []
    """

    __slots__ = ("_buffer", "_max_line_bytes", "provider")

    def __init__(
        self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, provider: str | None = None
    ) -> None:
        self._buffer = b""
        self._max_line_bytes = max_line_bytes
        self.provider = provider

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes; return the objects of every line completed by them."""
        buffer = self._buffer + data if self._buffer else data
        if b"\n" not in buffer:
            self._buffer = buffer
            self._check_size()
            return []
        *lines, self._buffer = buffer.split(b"\n")
        self._check_size()
        return [self._parse(line) for line in lines if line.strip()]

    def close(self) -> list[Any]:
        """Signal the end of the stream and return a last line that had no newline.

        Raises:
            ProtocolError: the stream stopped in the middle of a message (truncated frame).
        """
        rest, self._buffer = self._buffer, b""
        if not rest.strip():
            return []
        try:
            return [json.loads(rest)]
        except ValueError:
            raise ProtocolError(
                f"The stream was cut off in the middle of a message ({len(rest)} bytes of "
                "an incomplete JSON line); the answer is incomplete.",
                provider=self.provider,
            ) from None

    def _check_size(self) -> None:
        if len(self._buffer) > self._max_line_bytes:
            size = len(self._buffer)
            self._buffer = b""
            raise ProtocolError(
                f"A streamed message exceeded {self._max_line_bytes} bytes ({size} bytes "
                "without a newline); refusing to buffer more.",
                provider=self.provider,
            )

    def _parse(self, line: bytes) -> Any:
        try:
            return json.loads(line)
        except ValueError as exc:
            preview = line[:120].decode("utf-8", "replace")
            raise ProtocolError(
                f"Received a malformed stream message (not JSON: {exc}): {preview!r}",
                provider=self.provider,
            ) from None
