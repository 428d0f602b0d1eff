"""Time an event loop spends stopped between the synchronous facade's calls.

The synchronous facade runs its private loop only while a call waits. A stream's read may be
in flight while the loop is stopped (the caller is busy with the chunks it already has); that
time is the caller's, not the server's, and the phase timers and the keep-alive limit leave it
out. The facade reports each stop here; the transport reads the total. Imports nothing heavy.
"""

from __future__ import annotations

import asyncio
import weakref

__all__ = ["active_time", "add_pause", "paused_seconds"]

_PAUSED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, float] = weakref.WeakKeyDictionary()


def add_pause(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    """Record that ``loop`` was stopped for ``seconds`` between two runs."""
    if seconds > 0:
        _PAUSED[loop] = _PAUSED.get(loop, 0.0) + seconds


def paused_seconds(loop: asyncio.AbstractEventLoop) -> float:
    """The total time ``loop`` was reported stopped."""
    return _PAUSED.get(loop, 0.0)


def active_time(loop: asyncio.AbstractEventLoop) -> float:
    """``loop.time()`` without the time the loop was stopped: a clock for server-side limits."""
    return loop.time() - _PAUSED.get(loop, 0.0)
