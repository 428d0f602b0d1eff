"""ChunkStream: one chunk per ``__anext__``, or every chunk of a network read at once."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from papin.llm.chunk_stream import ChunkStream, batches_of
from papin.llm.datatypes import GenerationChunk


def _source(closed: list[bool], *batches: list[str]) -> AsyncGenerator[list[GenerationChunk], None]:
    async def gen() -> AsyncGenerator[list[GenerationChunk], None]:
        try:
            for batch in batches:
                yield [GenerationChunk(t) for t in batch]
        finally:
            closed.append(True)

    return gen()


async def test_chunks_one_at_a_time_and_batches_as_they_came() -> None:
    closed: list[bool] = []
    stream = ChunkStream(_source(closed, ["a", "b"], [], ["c"]))
    assert (await stream.__anext__()).text == "a"
    assert [c.text for c in await stream.next_batch()] == ["b"]  # the rest of the first read
    assert [c.text for c in await stream.next_batch()] == ["c"]  # an empty read is skipped
    with pytest.raises(StopAsyncIteration):
        await stream.next_batch()
    assert closed == [True]


async def test_async_for_and_batches_of_keep_every_chunk_in_order() -> None:
    closed: list[bool] = []
    assert [c.text async for c in ChunkStream(_source(closed, ["a"], ["b", "c"]))] == ["a", "b", "c"]
    got = [[c.text for c in b] async for b in batches_of(ChunkStream(_source(closed, ["a", "b"], ["c"])))]
    assert got == [["a", "b"], ["c"]]

    async def plain() -> AsyncGenerator[GenerationChunk, None]:
        yield GenerationChunk("x")
        yield GenerationChunk("y")

    assert [[c.text for c in b] async for b in batches_of(plain())] == [["x"], ["y"]]


async def test_aclose_and_athrow_reach_the_underlying_generator() -> None:
    closed: list[bool] = []
    stream = ChunkStream(_source(closed, ["a", "b"], ["c"]))
    await stream.__anext__()
    await stream.aclose()
    assert closed == [True]
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    thrown = ChunkStream(_source(closed, ["a"], ["b"]))
    await thrown.__anext__()
    with pytest.raises(KeyError):
        await thrown.athrow(KeyError("stop"))
    assert closed == [True, True]
