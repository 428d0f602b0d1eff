"""Incremental Server-Sent Events (SSE) decoding, as the WHATWG spec and openai-python read it.

Bytes arrive in arbitrary network chunks. Lines end with ``\\n``, ``\\r\\n`` or ``\\r`` (never
U+2028 or other Unicode separators); they are decoded as UTF-8 only once complete, so a
multi-byte character split across chunks stays intact. ``data:`` lines of one event are joined
with ``\\n``; one space after the colon is dropped; lines starting with ``:`` are comments
(keep-alives); a blank line ends an event.
"""

from __future__ import annotations

from dataclasses import dataclass

from papin.llm.errors import ProtocolError

__all__ = ["DEFAULT_MAX_LINE_BYTES", "SSEDecoder", "ServerSentEvent"]

DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event: its ``data`` (joined lines), and the optional ``event``, ``id``, ``retry``."""

    data: str = ""
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed raw bytes, get complete events back.

    >>> d = SSEDecoder()
    >>> d.feed(b'event: completion\\ndata: {"foo":')
    []
    >>> d.feed(b'true}\\n\\n: ping\\n\\ndata: a\\ndata:b\\n\\n')
    [ServerSentEvent(data='{"foo":true}', event='completion', id=None, retry=None), \
ServerSentEvent(data='a\\nb', event=None, id=None, retry=None)]
    """

    __slots__ = ("_buffer", "_data", "_event", "_id", "_max_line_bytes", "_retry", "_seen", "provider")

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, provider: str | None = None) -> None:
        self._buffer = b""
        self._max_line_bytes = max_line_bytes
        self.provider = provider
        self._reset()

    def _reset(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._seen = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Add bytes; return the events they complete."""
        buffer = self._buffer + chunk if self._buffer else chunk
        lines = buffer.splitlines(keepends=True)
        if lines and not lines[-1].endswith((b"\n", b"\r")) or lines and lines[-1].endswith(b"\r"):
            # an unfinished line, or a lone CR that may be the first half of CRLF
            self._buffer = lines.pop()
        else:
            self._buffer = b""
        if len(self._buffer) > self._max_line_bytes:
            size, self._buffer = len(self._buffer), b""
            raise ProtocolError(
                f"A server-sent event line exceeded {self._max_line_bytes} bytes ({size} bytes "
                "without a line break); refusing to buffer more.",
                provider=self.provider,
            )
        events: list[ServerSentEvent] = []
        for raw in lines:
            event = self._line(raw.rstrip(b"\r\n"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of stream: a last line and an event not yet ended by a blank line are kept."""
        events: list[ServerSentEvent] = []
        rest, self._buffer = self._buffer.rstrip(b"\r"), b""
        if rest:
            event = self._line(rest)
            if event is not None:
                events.append(event)
        if self._seen:
            events.append(self._dispatch())
        return events

    def _dispatch(self) -> ServerSentEvent:
        event = ServerSentEvent("\n".join(self._data), self._event, self._id, self._retry)
        self._reset()
        return event

    def _line(self, raw: bytes) -> ServerSentEvent | None:
        if not raw:
            return self._dispatch() if self._seen else None
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            return None  # comment / keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
        else:
            return None  # unknown fields are ignored
        self._seen = True
        return None
