"""The sans-I/O SSE decoder, frame by frame: openai-python's cases S1–S8 (``backend-apis.md``
§7.2), and every way bytes can be cut and lines can end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import pytest

from papin.llm.errors import ProtocolError
from papin.llm.wire.sse import ServerSentEvent, SSEDecoder

pytestmark = pytest.mark.timeout(10)


def decode(chunks: Iterable[bytes], *, max_line_bytes: int = 1 << 20) -> list[ServerSentEvent]:
    """Feed ``chunks`` one by one, then close the decoder."""
    decoder = SSEDecoder(max_line_bytes=max_line_bytes)
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def every_split(data: bytes) -> Iterable[list[bytes]]:
    """``data`` whole, byte by byte, and cut in two at every position."""
    yield [data]
    yield bytewise(data)
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]


# -- openai-python S1–S8 ------------------------------------------------------------------------


def test_s1_event_and_json_data() -> None:
    for chunks in every_split(b'event: completion\ndata: {"foo":true}\n\n'):
        (event,) = decode(chunks)
        assert event.event == "completion"
        assert json.loads(event.data) == {"foo": True}


def test_s2_data_only_has_no_event_name() -> None:
    (event,) = decode([b'data: {"foo":true}\n\n'])
    assert event.event is None and json.loads(event.data) == {"foo": True}


def test_s3_event_without_data() -> None:
    (event,) = decode([b"event: ping\n\n"])
    assert event.event == "ping" and event.data == ""


def test_s4_two_events() -> None:
    data = b'event: ping\ndata: {"foo":true}\n\nevent: completion\ndata: {"bar":false}\n\n'
    for chunks in every_split(data):
        events = decode(chunks)
        assert [e.event for e in events] == ["ping", "completion"]
        assert [json.loads(e.data) for e in events] == [{"foo": True}, {"bar": False}]


def test_s5_multi_line_data() -> None:
    data = b'data: {\ndata: "foo":\ndata: \ndata:\ndata: true}\n\n\n'
    for chunks in every_split(data):
        (event,) = decode(chunks)
        assert event.data == '{\n"foo":\n\n\ntrue}'
        assert json.loads(event.data) == {"foo": True}


def test_s6_escaped_newlines_in_json() -> None:
    (event,) = decode([b'data: {"foo": "my long\\n\\ncontent"}\n\n'])
    assert json.loads(event.data) == {"foo": "my long\n\ncontent"}


def test_s7_u2028_is_not_a_line_break() -> None:
    data = '{"content":" \u2028"}'.encode()
    assert b"\xe2\x80\xa8" in data
    for chunks in every_split(b"data: " + data + b"\n\n"):
        (event,) = decode(chunks)
        assert json.loads(event.data) == {"content": " \u2028"}


@pytest.mark.parametrize("char", ["\u0085", "\u2029", "\x0b", "\x0c", "\x1c"])
def test_other_unicode_separators_are_not_line_breaks(char: str) -> None:
    (event,) = decode([f"data: a{char}b\n\n".encode()])
    assert event.data == f"a{char}b"


def test_s8_multibyte_character_split_across_chunks() -> None:
    data = 'data: {"content":"известни"}\n\n'.encode()
    for chunks in every_split(data):
        (event,) = decode(chunks)
        assert json.loads(event.data) == {"content": "известни"}


def test_every_utf8_length_split_everywhere() -> None:
    text = "aé€🎉 Grüße 日本語"
    data = f"data: {text}\n\n".encode()
    for chunks in every_split(data):
        assert [e.data for e in decode(chunks)] == [text]


# -- fields ---------------------------------------------------------------------------------------


def test_id_and_retry_fields() -> None:
    (event,) = decode([b"retry: 3000\nid: 42\nevent: chunk\ndata: x\n\n"])
    assert event == ServerSentEvent("x", "chunk", "42", 3000)


def test_invalid_retry_and_id_with_nul_are_ignored() -> None:
    (event,) = decode([b"retry: soon\nid: a\x00b\ndata: x\n\n"])
    assert event.retry is None and event.id is None and event.data == "x"


def test_event_and_retry_reset_between_events_but_the_last_id_carries_over() -> None:
    data = b"event: a\nid: 1\nretry: 5\ndata: x\n\ndata: y\n\nid: 2\ndata: z\n\ndata: w\n\n"
    for chunks in every_split(data):
        assert decode(chunks) == [ServerSentEvent("x", "a", "1", 5), ServerSentEvent("y", None, "1"),
                                  ServerSentEvent("z", None, "2"), ServerSentEvent("w", None, "2")]


def test_unknown_fields_are_ignored() -> None:
    assert decode([b"foo: bar\n\n"]) == []
    (event,) = decode([b"foo: bar\ndata: x\n\n"])
    assert event.data == "x"


def test_only_one_space_after_the_colon_is_dropped() -> None:
    events = decode([b"data:x\n\ndata:  two\n\ndata\n\n"])
    assert [e.data for e in events] == ["x", " two", ""]


def test_colon_inside_the_value_is_kept() -> None:
    (event,) = decode([b'data: {"url":"http://x:1"}\n\n'])
    assert json.loads(event.data) == {"url": "http://x:1"}


# -- comments and blank lines ---------------------------------------------------------------------


@pytest.mark.parametrize("comment", [b":\n\n", b": keep-alive\n\n", b": ping - 2024-01-01\n", b":\n"])
def test_comments_and_keepalives_are_skipped(comment: bytes) -> None:
    data = comment + b"data: a\n\n" + comment + b"data: b\n\n" + comment
    for chunks in every_split(data):
        assert [e.data for e in decode(chunks)] == ["a", "b"]


def test_comment_between_data_lines_does_not_end_the_event() -> None:
    (event,) = decode([b"data: a\n: ping\ndata: b\n\n"])
    assert event.data == "a\nb"


def test_blank_lines_alone_give_no_events() -> None:
    assert decode([b"\n\n\r\n\r\r\n"]) == []


# -- line endings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings(end: bytes) -> None:
    data = (b"event: e" + end + b"data: one" + end + b"data: two" + end + end
            + b": c" + end + b"data: [DONE]" + end + end)
    for chunks in every_split(data):
        events = decode(chunks)
        assert [(e.event, e.data) for e in events] == [("e", "one\ntwo"), (None, "[DONE]")]


def test_mixed_line_endings() -> None:
    data = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r"
    for chunks in every_split(data):
        assert [e.data for e in decode(chunks)] == ["a\nb\nc", "d"]


def test_cr_split_from_its_lf_is_one_line_break() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []  # CRLF: one line end, not a blank line
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\n\r") == []
    assert decoder.feed(b"\n") == [ServerSentEvent("a\nb")]
    assert decoder.close() == []


def test_cr_then_something_else_ends_the_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\rdata: b") == [ServerSentEvent("a")]
    assert decoder.close() == [ServerSentEvent("b")]


# -- the end of the stream -------------------------------------------------------------------------


def test_close_dispatches_an_unterminated_event() -> None:
    assert decode([b"data: a\n"]) == [ServerSentEvent("a")]
    assert decode([b"data: a"]) == [ServerSentEvent("a")]
    assert decode([b"data: a\r"]) == [ServerSentEvent("a")]


def test_close_with_nothing_pending() -> None:
    assert decode([b"data: a\n\n"]) == [ServerSentEvent("a")]
    assert decode([]) == []
    assert decode([b""]) == []


def test_truncated_frame_gives_its_partial_data() -> None:
    (event,) = decode([b'data: {"choices":[{"delta":{"cont'])
    assert event.data == '{"choices":[{"delta":{"cont'
    with pytest.raises(ValueError):
        json.loads(event.data)


def test_done_marker_and_what_follows() -> None:
    events = decode([b"data: a\n\ndata: [DONE]\n\ndata: late\n\n"])
    assert [e.data for e in events] == ["a", "[DONE]", "late"]
    assert events[1].data.startswith("[DONE]")


# -- the byte-order mark ----------------------------------------------------------------------------


def test_leading_bom_is_dropped() -> None:
    for chunks in every_split(b"\xef\xbb\xbfdata: a\n\n"):
        assert decode(chunks) == [ServerSentEvent("a")]


def test_bom_later_in_the_stream_is_data() -> None:
    (first, second) = decode([b"data: a\n\n\xef\xbb\xbfdata: b\n\ndata: c\n\n"])[:2]
    assert first.data == "a" and second.data == "c"


def test_bom_alone() -> None:
    assert decode([b"\xef\xbb"]) == []
    assert decode([b"\xef", b"\xbb", b"\xbf"]) == []


# -- limits and bad bytes ----------------------------------------------------------------------------


def test_oversize_line_in_pieces_is_refused() -> None:
    decoder = SSEDecoder(max_line_bytes=64, provider="custom")
    decoder.feed(b"data: " + b"x" * 50)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(b"y" * 20)
    assert "64 bytes" in str(info.value) and info.value.provider == "custom"


def test_oversize_line_in_one_chunk_is_refused_too() -> None:
    with pytest.raises(ProtocolError, match="exceeded 64 bytes"):
        SSEDecoder(max_line_bytes=64).feed(b"data: " + b"x" * 70 + b"\n\n")


def test_line_at_the_limit_is_fine() -> None:
    line = b"data: " + b"x" * 58
    assert len(line) == 64
    assert decode([line + b"\n\n"], max_line_bytes=64) == [ServerSentEvent("x" * 58)]
    assert decode(bytewise(line + b"\r\n\r\n"), max_line_bytes=64) == [ServerSentEvent("x" * 58)]


def test_many_short_lines_are_not_limited() -> None:
    data = b"".join(b"data: %d\n\n" % i for i in range(2000))
    events = decode([data[i : i + 7] for i in range(0, len(data), 7)], max_line_bytes=16)
    assert len(events) == 2000 and events[-1].data == "1999"


def test_invalid_utf8_is_replaced_not_raised() -> None:
    (event,) = decode([b"data: a\xff\xfeb\n\n"])
    assert event.data == "a\ufffd\ufffdb"


def test_a_realistic_chat_stream_byte_by_byte() -> None:
    frames = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "Grüße 🎉"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
    ]
    body = b":\n\n".join(
        b"data: " + json.dumps(f, ensure_ascii=False).encode() + b"\r\n\r\n" for f in frames
    ) + b"data: [DONE]\r\n\r\n"
    events = decode(bytewise(body))
    assert [json.loads(e.data) for e in events[:-1]] == frames
    assert events[-1].data == "[DONE]"


def test_long_line_in_small_pieces_is_joined_once() -> None:
    decoder = SSEDecoder()
    started = time.perf_counter()
    assert decoder.feed(b"data: ") == []
    for _ in range(1500):  # 6 MB in 4 KiB pieces: quadratic copying would take many seconds
        assert decoder.feed(b"x" * 4096) == []
    (event,) = decoder.feed(b"\r\n\r\n")
    assert len(event.data) == 1500 * 4096
    assert time.perf_counter() - started < 2.0


def test_long_line_pieces_then_close() -> None:
    assert decode([b"data: a", b"b", b"c", b"d\r", b"\n"]) == [ServerSentEvent("abcd")]
    assert decode([b"data: a", b"b", b"c"]) == [ServerSentEvent("abc")]
    with pytest.raises(ProtocolError):
        decode([b"data: a", *[b"b" * 10] * 10], max_line_bytes=64)
