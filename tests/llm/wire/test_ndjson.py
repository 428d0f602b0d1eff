"""Sans-I/O tests of the incremental NDJSON decoder (``papin.llm.wire.ndjson``)."""

from __future__ import annotations

import json

import pytest

from papin.llm.errors import ProtocolError
from papin.llm.wire.ndjson import DEFAULT_MAX_LINE_BYTES, NdjsonDecoder


def _lines(*objs: object) -> bytes:
    return b"".join(json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in objs)


def test_whole_lines_in_one_chunk() -> None:
    decoder = NdjsonDecoder()
    assert decoder.feed(_lines({"a": 1}, {"b": 2}, {"c": 3})) == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert decoder.close() == []


def test_frame_by_frame_byte_by_byte() -> None:
    data = _lines({"response": "Hello", "done": False}, {"response": "", "done": True})
    decoder = NdjsonDecoder()
    out: list[object] = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i : i + 1]))
    assert out == [{"response": "Hello", "done": False}, {"response": "", "done": True}]
    assert decoder.close() == []


def test_line_split_across_chunks_returns_nothing_until_complete() -> None:
    decoder = NdjsonDecoder()
    assert decoder.feed(b'{"response": "Hel') == []
    assert decoder.feed(b'lo"}') == []
    assert decoder.feed(b"\n") == [{"response": "Hello"}]


@pytest.mark.parametrize("text", ["Grüße", "日本語のテキスト", "emoji 🎉🚀", "mixed é—字😀"])
def test_utf8_character_split_across_chunks(text: str) -> None:
    data = _lines({"response": text})
    multibyte_starts = [i for i, b in enumerate(data) if b >= 0xC0]
    assert multibyte_starts, "the text must contain multi-byte characters"
    for cut in multibyte_starts:  # cut right after the lead byte of each character
        decoder = NdjsonDecoder()
        first = decoder.feed(data[: cut + 1])
        second = decoder.feed(data[cut + 1 :])
        assert first == []
        assert second == [{"response": text}]


def test_every_byte_split_keeps_utf8_intact() -> None:
    text = "Grüße — 日本語 🎉"
    data = _lines({"a": text}, {"b": text})
    decoder = NdjsonDecoder()
    out = [obj for b in data for obj in decoder.feed(bytes([b]))]
    assert out == [{"a": text}, {"b": text}]


def test_blank_lines_and_crlf_are_ignored() -> None:
    decoder = NdjsonDecoder()
    assert decoder.feed(b'\n\n{"a":1}\r\n  \n{"b":2}\n') == [{"a": 1}, {"b": 2}]


def test_truncated_trailing_line_raises_on_close() -> None:
    decoder = NdjsonDecoder(provider="ollama")
    assert decoder.feed(b'{"a":1}\n{"response":"hal') == [{"a": 1}]
    with pytest.raises(ProtocolError) as info:
        decoder.close()
    assert "cut off" in str(info.value)
    assert info.value.provider == "ollama"


def test_complete_trailing_line_without_newline_is_returned_on_close() -> None:
    # Ollama's non-streamed answers (and load/unload replies) have no trailing newline.
    decoder = NdjsonDecoder()
    assert decoder.feed(b'{"done":true,"done_reason":"load"}') == []
    assert decoder.close() == [{"done": True, "done_reason": "load"}]


def test_whitespace_only_tail_is_fine() -> None:
    decoder = NdjsonDecoder()
    decoder.feed(b'{"a":1}\n   ')
    assert decoder.close() == []


def test_malformed_line_raises_protocol_error_with_preview() -> None:
    decoder = NdjsonDecoder(provider="ollama")
    with pytest.raises(ProtocolError) as info:
        decoder.feed(b'{"a":1}\nthis is not json\n')
    assert "malformed" in str(info.value)
    assert "this is not json" in str(info.value)


def test_oversize_line_is_refused() -> None:
    decoder = NdjsonDecoder(max_line_bytes=1024)
    decoder.feed(b"x" * 1000)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(b"x" * 100)
    assert "1024" in str(info.value)
    # the buffer is dropped, so memory stays bounded after the error
    assert decoder.close() == []


def test_oversize_check_counts_only_the_unfinished_line() -> None:
    decoder = NdjsonDecoder(max_line_bytes=64)
    line = _lines({"k": "v" * 40})
    assert len(line) < 64
    out = [obj for _ in range(50) for obj in decoder.feed(line)]
    assert len(out) == 50


def test_oversize_complete_line_in_one_chunk_is_refused_after_split() -> None:
    decoder = NdjsonDecoder(max_line_bytes=32)
    with pytest.raises(ProtocolError):
        decoder.feed(b'{"a":1}\n' + b"y" * 40)


def test_default_limit_matches_ollama_go_client() -> None:
    assert DEFAULT_MAX_LINE_BYTES == 8 * 1024 * 1024
