"""Incremental Server-Sent Events (SSE) decoding, as the WHATWG spec and openai-python read it.

Bytes arrive in arbitrary network chunks. Lines end with ``\\n``, ``\\r\\n`` or ``\\r`` (never
U+2028 or other Unicode separators); they are decoded as UTF-8 only once complete, so a
multi-byte character split across chunks stays intact. ``data:`` lines of one event are joined
with ``\\n``; one space after the colon is dropped; lines starting with ``:`` are comments
(keep-alives); a blank line ends an event. ``event`` and ``retry`` belong to one event; the
last ``id`` carries over to the events after it (the spec's "last event ID").
"""

from __future__ import annotations

from typing import NamedTuple, NoReturn

from papin.llm.errors import ProtocolError

__all__ = ["DEFAULT_MAX_LINE_BYTES", "SSEDecoder", "ServerSentEvent"]

DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


class ServerSentEvent(NamedTuple):
    """One event: its ``data`` (joined lines), and the optional ``event``, ``id``, ``retry``.

    (A named tuple: one is made per event, and it is several times cheaper than a dataclass.)
    """

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

    __slots__ = (
        "_buffer", "_data", "_event", "_id", "_max_line_bytes", "_parts", "_parts_size", "_retry",
        "_seen", "_start", "provider",
    )

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, provider: str | None = None) -> None:
        self._buffer = b""  # an unfinished line (or a CR that may start a CRLF)...
        self._parts: list[bytes] = []  # ...and more pieces of it, joined once its end comes
        self._parts_size = 0
        self._start = True  # a UTF-8 byte order mark may open the stream
        self._id: str | None = None  # the last event id: it carries over to later events
        self._max_line_bytes = max_line_bytes
        self.provider = provider
        self._reset()

    def _reset(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self._retry: int | None = None
        self._seen = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Add bytes; return the events they complete."""
        if self._buffer and not self._start and not self._buffer.endswith(b"\r"):
            if b"\n" not in chunk and b"\r" not in chunk:
                # more of a long line: keep the pieces, join them once (no quadratic copying)
                self._parts.append(chunk)
                self._parts_size += len(chunk)
                if len(self._buffer) + self._parts_size > self._max_line_bytes:
                    self._too_long(len(self._buffer) + self._parts_size)
                return []
            if self._parts:
                chunk = b"".join([*self._parts, chunk])
                self._parts, self._parts_size = [], 0
        buffer = self._buffer + chunk if self._buffer else chunk
        if self._start and buffer:
            if len(buffer) < 3 and _BOM.startswith(buffer):
                self._buffer = buffer  # maybe a BOM split across chunks
                return []
            self._start = False
            if buffer.startswith(_BOM):
                buffer = buffer[3:]
        if b"\r" in buffer:
            lines = buffer.splitlines(keepends=True)
            if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")):
                # an unfinished line, or a lone CR that may be the first half of CRLF
                self._buffer = lines.pop()
            else:
                self._buffer = b""
            raws = [raw.rstrip(b"\r\n") for raw in lines]
        else:  # LF only (the usual case): the last piece is the unfinished line, or b""
            raws = buffer.split(b"\n")
            self._buffer = raws.pop()
        pending = len(self._buffer)
        if pending > self._max_line_bytes and pending - self._buffer.endswith(b"\r") > self._max_line_bytes:
            self._too_long(pending)
        if len(buffer) > self._max_line_bytes:  # the same limit however the bytes arrived
            for line in raws:
                if len(line) > self._max_line_bytes:
                    self._too_long(len(line))
        events: list[ServerSentEvent] = []
        index, count = 0, len(raws)
        while index < count:
            line = raws[index]
            index += 1
            if line.startswith(b"data: "):  # the usual line, parsed in place
                if not self._seen and index < count and not raws[index]:
                    # the usual event: one data line, then a blank line
                    events.append(ServerSentEvent(line[6:].decode("utf-8", "replace"), None, self._id))
                    index += 1
                    continue
                self._data.append(line[6:].decode("utf-8", "replace"))
                self._seen = True
            elif not line:
                if self._seen:
                    events.append(self._dispatch())
            else:
                self._line(line)
        return events

    def _too_long(self, size: int) -> NoReturn:
        self._buffer, self._parts, self._parts_size = b"", [], 0
        raise ProtocolError(
            f"A server-sent event line exceeded {self._max_line_bytes} bytes ({size} bytes "
            "without a line break); refusing to buffer more.",
            provider=self.provider,
        )

    def close(self) -> list[ServerSentEvent]:
        """End of stream: a last line and an event not yet ended by a blank line are kept."""
        events: list[ServerSentEvent] = []
        rest = b"".join([self._buffer, *self._parts]).rstrip(b"\r")
        self._buffer, self._parts, self._parts_size = b"", [], 0
        if self._start and _BOM.startswith(rest):
            rest = b""
        if rest:
            event = self._line(rest)
            if event is not None:
                events.append(event)
        if self._seen:
            events.append(self._dispatch())
        return events

    def _dispatch(self) -> ServerSentEvent:
        data = self._data
        event = ServerSentEvent(
            data[0] if len(data) == 1 else "\n".join(data), self._event, self._id, self._retry
        )
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
