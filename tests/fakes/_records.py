"""Value types shared by papin's fake servers: recorded requests, faults, stream records."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict

__all__ = [
    "BODY_FAULTS",
    "FAULT_KINDS",
    "PRE_FAULTS",
    "Fault",
    "Frame",
    "RecordedRequest",
    "StreamRecord",
    "split_mid_character",
]

#: Faults applied before the handler runs (they replace or delay the whole answer).
PRE_FAULTS = frozenset(
    {"status", "never_answer", "cold_load", "reset", "wrong_content_type", "empty_body",
     "huge_response", "bad_chunked", "bad_status_line"}
)
#: Faults applied while the answer's body is written (streamed or not).
BODY_FAULTS = frozenset(
    {"stall_mid_stream", "disconnect_mid_stream", "malformed_frame", "truncated_frame",
     "split_utf8", "error_in_stream", "no_done", "slow_drip", "keepalive_forever"}
)
FAULT_KINDS = PRE_FAULTS | BODY_FAULTS

#: One frame of a streamed answer; a callable is evaluated just before it is written (so a
#: side effect, such as installing a pulled model, happens before the client can see it).
Frame = bytes | Callable[[], bytes]

@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes
    json: Any  # the parsed body, or None when it is empty or not JSON
    received_at: float


@dataclass(slots=True)
class Fault:
    """A fault queued for the next request(s) to one path."""

    kind: str
    params: dict[str, Any]
    times: int = 1

    def get(self, key: str, default: Any = None) -> Any:
        """A parameter of the fault."""
        return self.params.get(key, default)


@dataclass(slots=True)
class StreamRecord:
    """What the fake did with one answer body: frames planned and sent, and how it ended."""

    path: str
    planned: int
    fault: str | None = None
    sent: int = 0
    completed: bool = False
    disconnected: bool = False
    aborted: bool = False
    started_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None


def split_mid_character(data: bytes) -> list[bytes]:
    """Split ``data`` right after the first byte of every multi-byte UTF-8 character.

    >>> split_mid_character("aé€".encode())
    [b'a\\xc3', b'\\xa9\\xe2', b'\\x82\\xac']
    """
    cuts = [i + 1 for i, byte in enumerate(data) if byte >= 0xC0]
    pieces: list[bytes] = []
    start = 0
    for cut in cuts:
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    return [p for p in pieces if p]
