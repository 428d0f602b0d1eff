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

_raw_decode = json.JSONDecoder().raw_decode


def loads_text(text: str) -> Any:
    """``json.loads`` for a ``str``, a third cheaper on short stream messages: the decoder's
    ``raw_decode`` and one check that only whitespace follows (``json.loads`` adds two regular
    expression matches and a type dispatch). Anything unusual goes to ``json.loads``, so the
    result, or the ``ValueError``, is the same.

    >>> loads_text('{"a": 1}'), loads_text(' [2] ')
    ({'a': 1}, [2])
    """
    try:
        obj, end = _raw_decode(text)
    except ValueError:
        return json.loads(text)
    if end != len(text) and not text[end:].isspace():
        return json.loads(text)  # raises "Extra data"
    return obj
_BYTES_WS = " \t\n\r\x0b\x0c"  # what bytes.strip() removes


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

    __slots__ = ("_max_line_bytes", "_pending", "_size", "provider")

    def __init__(
        self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, provider: str | None = None
    ) -> None:
        # Bytes of the unfinished line, kept as a list of pieces so that a long line arriving
        # in many small chunks is joined once (not copied again with every chunk).
        self._pending: list[bytes] = []
        self._size = 0
        self._max_line_bytes = max_line_bytes
        self.provider = provider

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes; return the objects of every line completed by them."""
        if b"\n" not in data:
            if data:
                self._pending.append(data)
                self._size += len(data)
                self._check_size()
            return []
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
        *lines, rest = data.split(b"\n")
        self._pending = [rest] if rest else []
        self._size = len(rest)
        self._check_size()
        return self._parse_lines(lines)

    def close(self) -> list[Any]:
        """Signal the end of the stream and return a last line that had no newline.

        Raises:
            ProtocolError: the stream stopped in the middle of a message (truncated frame).
        """
        rest = b"".join(self._pending)
        self._pending, self._size = [], 0
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
        if self._size > self._max_line_bytes:
            size = self._size
            self._pending, self._size = [], 0
            raise ProtocolError(
                f"A streamed message exceeded {self._max_line_bytes} bytes ({size} bytes "
                "without a newline); refusing to buffer more.",
                provider=self.provider,
            )

    def _parse_lines(self, lines: list[bytes]) -> list[Any]:
        # Fast path: decode the complete lines to text at once, then parse each as text
        # (json.loads on bytes detects and decodes the encoding line by line: that costs
        # more than the parsing of a short stream message). On any problem, the exact
        # line-by-line path below gives the same objects or the same error.
        try:
            text = b"\n".join(lines).decode("utf-8")
            return [loads_text(line) for line in text.split("\n") if line.strip(_BYTES_WS)]
        except ValueError:
            return [self._parse(line) for line in lines if line.strip()]

    def _parse(self, line: bytes) -> Any:
        try:
            return json.loads(line)
        except ValueError as exc:
            preview = line[:120].decode("utf-8", "replace")
            raise ProtocolError(
                f"Received a malformed stream message (not JSON: {exc}): {preview!r}",
                provider=self.provider,
            ) from None
