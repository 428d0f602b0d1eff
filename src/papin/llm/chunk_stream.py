"""A stream of generation chunks that also hands over the chunks that arrived together.

A backend's stream arrives in network reads, and one read often holds many chunks. The stream
driver parses a read into a list at once; a :class:`ChunkStream` keeps those lists, so that
a consumer that can take several chunks at a time (the synchronous facade, ``collect``) does
so with one ``await`` per read instead of one per chunk, while ``async for`` still sees one
chunk at a time. It is an ordinary async generator to everyone else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import TYPE_CHECKING

from papin.llm.datatypes import GenerationChunk
from papin.llm.errors import ProviderTimeoutError

if TYPE_CHECKING:
    from papin.llm.options import GenerationOptions

__all__ = ["ChunkStream", "batches_of", "with_deadline"]


class ChunkStream(AsyncGenerator[GenerationChunk, None]):
    """Chunks, one per ``__anext__``, from an async generator of chunk lists."""

    __slots__ = ("_batches", "_buffer")

    def __init__(self, batches: AsyncGenerator[list[GenerationChunk], None]) -> None:
        self._batches = batches
        self._buffer: deque[GenerationChunk] = deque()

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        buffer = self._buffer
        while not buffer:
            buffer.extend(await self._batches.__anext__())
        return buffer.popleft()

    async def next_batch(self) -> list[GenerationChunk]:
        """Every chunk that is available now (at least one); ``StopAsyncIteration`` at the end."""
        if self._buffer:
            batch = list(self._buffer)
            self._buffer.clear()
            return batch
        while True:
            batch = await self._batches.__anext__()
            if batch:
                return batch

    async def asend(self, value: None) -> GenerationChunk:
        """As ``__anext__`` (a chunk stream takes no values)."""
        return await self.__anext__()

    async def athrow(
        self,
        typ: type[BaseException] | BaseException,
        val: BaseException | object = None,
        tb: TracebackType | None = None,
    ) -> GenerationChunk:
        """Raise ``typ`` inside the underlying generator (it normally ends it)."""
        self._buffer.clear()
        exc = typ if isinstance(typ, BaseException) else typ() if val is None else val
        if not isinstance(exc, BaseException):
            raise TypeError("athrow() needs an exception")
        self._buffer.extend(await self._batches.athrow(exc))
        return await self.__anext__()

    async def aclose(self) -> None:
        """Close the underlying generator (and with it the backend stream)."""
        self._buffer.clear()
        await self._batches.aclose()


async def batches_of(
    chunks: AsyncGenerator[GenerationChunk, None],
) -> AsyncGenerator[list[GenerationChunk], None]:
    """The chunks of any stream as lists: a :class:`ChunkStream`'s own batches, else one per list.
    Closing it (or its end) closes ``chunks``, and with it the backend stream."""
    try:
        if isinstance(chunks, ChunkStream):
            while True:
                try:
                    batch = await chunks.next_batch()
                except StopAsyncIteration:
                    return
                yield batch
        else:
            async for chunk in chunks:
                yield [chunk]
    finally:
        await chunks.aclose()


def with_deadline(
    stream: ChunkStream,
    options: GenerationOptions | None,
    provider: Callable[[], str | None],
    model: str | None,
) -> ChunkStream:
    """``stream`` bounded as a whole by the request's ``deadline_seconds`` (itself when none)."""
    seconds = options.deadline_seconds if options is not None else None
    if seconds is None:
        return stream
    return ChunkStream(_deadline_batches(stream, seconds, provider, model))


async def _deadline_batches(
    stream: ChunkStream, seconds: float, provider: Callable[[], str | None], model: str | None
) -> AsyncGenerator[list[GenerationChunk], None]:
    """``stream``'s batches until ``seconds`` after the first request; then the stream is closed
    and ProviderTimeoutError(phase="deadline") raised. Only the waits for the backend are
    bounded by the timer (never the caller's code between chunks), but the wall clock runs on."""
    import asyncio  # lazily: importing papin.llm stays light

    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    received = 0
    try:
        while True:
            left = end - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                async with asyncio.timeout(left):
                    batch = await stream.next_batch()
            except StopAsyncIteration:
                return
            except TimeoutError:
                if loop.time() < end:
                    raise  # a timeout of the provider's own, not the deadline
                raise ProviderTimeoutError(
                    f"The generation did not finish within its deadline of {seconds:g} s "
                    f"(deadline_seconds); {received} characters had arrived.",
                    phase="deadline",
                    timeout=seconds,
                    provider=provider(),
                    model=model,
                ) from None
            received += sum(len(c.text) for c in batch)
            yield batch
    finally:
        await stream.aclose()
