"""How the synchronous facade iterates an async stream: in batches, one loop run per wait.

Running the event loop once per chunk costs ~20 microseconds (a task, two selector polls), as
much as parsing the chunk: a 10,000-chunk stream paid 200 ms for it. A :class:`ChunkPump`
drives the async generator from one long-lived task instead, and takes every item the
generator can give *without waiting* (the rest of a network read that held many frames) in
one go; the facade's loop runs only when the generator really waits for the backend.

The pump steps the generator by hand (``send``) to learn whether an item is ready or the
generator waits; when it waits, the pump hands over the items it has, waits until the caller
wants more (so nothing is produced ahead of the caller beyond what was ready), and then awaits
the same step through :class:`_Continue`, so the task, cancellation and timeouts behave
exactly as if the step had been awaited directly. While the facade's loop stands stopped (the caller is busy
with the items it has), a read may be in flight; that time is the caller's, and the facade
reports it to :mod:`papin.llm.transport.pauses` so that no server-side limit counts it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Coroutine, Generator
from typing import Any, Generic, TypeVar

from papin.llm.chunk_stream import ChunkStream

__all__ = ["ChunkPump"]

T = TypeVar("T")

#: Items taken without waiting before the pump lets the loop (and the caller) run.
MAX_BATCH = 1024


class _Continue:
    """Awaits a generator step that was started by hand and is waiting on ``blocked``."""

    __slots__ = ("_blocked", "_error", "_step")

    def __init__(
        self, step: Coroutine[Any, None, Any], blocked: Any, error: BaseException | None = None
    ) -> None:
        self._step, self._blocked, self._error = step, blocked, error

    def __await__(self) -> Generator[Any, None, Any]:
        step, blocked = self._step, self._blocked
        if self._error is not None:  # a cancellation that reached the task while it held the step
            try:
                blocked = step.throw(self._error)
            except StopIteration as done:
                return done.value
        while True:
            try:
                yield blocked  # to the task: it waits for this future as the step would have
            except BaseException as exc:  # cancellation (a timeout) goes into the step
                try:
                    blocked = step.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                blocked = step.send(None)
            except StopIteration as done:
                return done.value


class ChunkPump(Generic[T]):
    """Drives ``agen`` in one task and hands its items over in batches (see the module)."""

    def __init__(self, agen: AsyncGenerator[T, None]) -> None:
        self.agen = agen
        self.ready: deque[T] = deque()
        self.finished = False
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self._signal: asyncio.Future[None] | None = None
        self._asked: asyncio.Future[None] | None = None

    def wanted(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Ask for more: a future that is done once there are items, or the stream has ended."""
        if self._asked is not None and not self._asked.done():
            self._asked.set_result(None)
        if self._signal is None or self._signal.done():
            self._signal = loop.create_future()
        if self.ready or self.finished:
            self._signal.set_result(None)
        return self._signal

    async def _hand_over(self) -> None:
        """Let the caller take the items, and wait until it wants more."""
        self._notify()
        self._asked = asyncio.get_running_loop().create_future()
        await self._asked

    def _notify(self) -> None:
        if self._signal is not None and not self._signal.done():
            self._signal.set_result(None)

    async def run(self) -> None:
        """The task's body: step the generator until it ends; never raises (see ``error``)."""
        agen = self.agen
        ready = self.ready
        try:
            if isinstance(agen, ChunkStream):  # it keeps its chunks in the lists they came in
                while True:
                    ready.extend(await agen.next_batch())  # type: ignore[arg-type]
                    await self._hand_over()
            while True:
                step = agen.__anext__()
                try:
                    blocked = step.send(None)
                except StopIteration as done:  # an item was ready without waiting
                    ready.append(done.value)
                    if len(ready) >= MAX_BATCH:
                        self._notify()
                        await asyncio.sleep(0)
                    continue
                if ready:  # the generator waits: the caller takes what is here first
                    self._notify()
                    self._asked = asyncio.get_running_loop().create_future()
                    try:
                        await self._asked  # until the caller has taken it all and wants more
                    except BaseException as exc:  # noqa: BLE001 - the step gets the cancellation
                        ready.append(await _Continue(step, None, exc))
                        continue
                ready.append(await _Continue(step, blocked))
        except StopAsyncIteration:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, cancellation included
            self.error = exc
        finally:
            self.finished = True
            self._notify()
