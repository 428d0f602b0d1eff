"""One parser interface for every streamed answer, sans I/O.

A :class:`StreamParser` turns raw body bytes into :class:`StreamPiece` values: text (or, for
progress streams, a parsed ``value``), an error the backend reported inside the stream, and
the final message that ends it. It also knows what its stream's failures mean: the
:class:`~papin.llm.errors.ProviderError` for an in-stream error (:meth:`StreamParser.failure`)
and for a stream that ended without its final message (:meth:`StreamParser.incomplete`), and,
for generations, the statistics of the final message (:meth:`StreamParser.stats`).

One driver runs them all (:meth:`papin.llm.transport.base.HttpProvider.stream_pieces`): Ollama's
NDJSON generations and pulls (:class:`OllamaGeneration`, :class:`NdjsonProgress`), the OpenAI
SSE family (:class:`OpenAIEvents`) and llama-server's native ``/completion``
(:class:`LlamaNativeEvents`). Keep-alive frames (blank NDJSON lines, SSE comments) produce no
piece; malformed frames raise :class:`~papin.llm.errors.ProtocolError`.

>>> parser = OllamaGeneration("ollama", "Ollama", "m")
>>> [p.text for p in parser.feed(b'{"response":"Hi","done":false}\\n\\n{"response":"!","done":tr')]
['Hi']
>>> [(p.text, p.final is not None) for p in parser.feed(b'ue,"eval_count":2}\\n')]
[('!', True)]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from papin.llm.datatypes import FinishReason, GenerationStats
from papin.llm.errors import GenerationError, ProtocolError, ProviderError
from papin.llm.wire import ollama as ollama_wire
from papin.llm.wire import openai as openai_wire
from papin.llm.wire.llamacpp import NativeCompletion, NativeStream
from papin.llm.wire.ndjson import NdjsonDecoder, loads_text
from papin.llm.wire.sse import SSEDecoder

__all__ = [
    "LlamaNativeEvents",
    "NdjsonProgress",
    "OllamaGeneration",
    "OpenAIEvents",
    "StreamParser",
    "StreamPiece",
]


class StreamPiece(NamedTuple):
    """One meaningful part of a stream (a named tuple: one is made per token).

    ``text``: generated text; ``value``: a parsed message of a progress stream; ``final``: the
    message that ends the stream (not ``None`` on the last piece); ``error``: what the backend
    reported inside the stream (the driver raises :meth:`StreamParser.failure` for it).
    """

    text: str = ""
    value: Any = None
    final: Any = None
    error: Any = None


class StreamParser(Protocol):
    """What the stream driver needs from a wire format."""

    #: Frames parsed so far (keep-alives excluded): none at all means an empty body.
    events: int

    def feed(self, data: bytes) -> list[StreamPiece]:
        """The pieces completed by ``data`` (nothing after the final piece)."""
        ...

    def close(self) -> list[StreamPiece]:
        """End of the body: a last frame without its terminator still counts."""
        ...

    def failure(self, piece: StreamPiece, received: int) -> ProviderError:
        """The error for an in-stream error, after ``received`` characters of text."""
        ...

    def incomplete(self, received: int, content_type: str) -> ProviderError:
        """The error for a body that ended without the final message."""
        ...

    def stats(self, final: Any, time_to_first_token: float | None, total_time: float) -> GenerationStats:
        """Statistics of a generation, from its final message and papin's clock."""
        ...


def _in_stream_error(
    name: str, provider: str, model: str, received: int, message: Any, body: Any
) -> GenerationError:
    where = f" after {received} characters" if received else ""
    return GenerationError(
        f"{name} reported an error during generation{where}: {message}",
        provider=provider,
        model=model,
        status_code=200,
        body=body,
    )


class _NdjsonParser:
    """NDJSON streams: one JSON object per line; nothing is read after the final piece."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.events = 0
        self._decoder = NdjsonDecoder(provider=provider)
        self._done = False

    def feed(self, data: bytes) -> list[StreamPiece]:
        return self._pieces(self._decoder.feed(data))

    def close(self) -> list[StreamPiece]:
        return self._pieces(self._decoder.close())

    def _pieces(self, objects: list[Any]) -> list[StreamPiece]:
        raise NotImplementedError


class OllamaGeneration(_NdjsonParser):
    """Ollama's ``/api/generate`` and ``/api/chat`` NDJSON: ``response`` or
    ``message.content`` text, an ``error`` object, ``"done": true`` on the last message."""

    def __init__(self, provider: str, name: str, model: str, *, endpoint: str = "", path: str = "") -> None:
        super().__init__(provider)
        self.name, self.model = name, model
        self.endpoint, self.path = endpoint, path

    def _pieces(self, objects: list[Any]) -> list[StreamPiece]:
        pieces: list[StreamPiece] = []
        for obj in objects:
            if self._done:
                break
            self.events += 1
            if type(obj) is not dict:
                raise ProtocolError(
                    f"Unexpected stream message: {obj!r}", provider=self.provider, model=self.model
                )
            if "error" in obj:
                pieces.append(StreamPiece(error=obj["error"]))
                self._done = True
                break
            text = obj.get("response")
            if text is None:
                message = obj.get("message")
                text = message.get("content", "") if isinstance(message, dict) else ""
            if obj.get("done"):
                self._done = True
                pieces.append(StreamPiece(text or "", final=obj))
            elif text:
                pieces.append(StreamPiece(text))
        return pieces

    def failure(self, piece: StreamPiece, received: int) -> ProviderError:
        return _in_stream_error(self.name, self.provider, self.model, received, piece.error, piece.error)

    def incomplete(self, received: int, content_type: str) -> ProviderError:
        if not self.events:
            return ProtocolError(
                f"{self.name} at {self.endpoint} answered {self.path} with an empty body instead of "
                "a stream. Is the endpoint really Ollama, or is a proxy in the way?",
                provider=self.provider,
                model=self.model,
            )
        return ProtocolError(
            f"{self.name}'s stream ended without its final message after {received} characters; "
            "the answer is incomplete (the server may have crashed or been stopped).",
            provider=self.provider,
            model=self.model,
        )

    def stats(self, final: Any, time_to_first_token: float | None, total_time: float) -> GenerationStats:
        stats = ollama_wire.parse_chunk(final, time_to_first_token=time_to_first_token).stats
        assert stats is not None  # a done message always has statistics
        return stats


class NdjsonProgress(_NdjsonParser):
    """A progress stream of NDJSON objects (Ollama's pull): each object is a piece's
    ``value``; ``is_final(obj)`` says which one ends it; an ``error`` object is an error piece.
    ``on_error`` and ``on_incomplete`` build the errors (a download error, not a generation's)."""

    def __init__(
        self,
        provider: str,
        *,
        is_final: Callable[[Any], bool],
        on_error: Callable[[Any], ProviderError],
        on_incomplete: Callable[[], ProviderError],
    ) -> None:
        super().__init__(provider)
        self._is_final, self._on_error, self._on_incomplete = is_final, on_error, on_incomplete

    def _pieces(self, objects: list[Any]) -> list[StreamPiece]:
        pieces: list[StreamPiece] = []
        for obj in objects:
            if self._done:
                break
            self.events += 1
            if not isinstance(obj, dict):
                raise ProtocolError(f"Unexpected progress line: {obj!r}", provider=self.provider)
            if "error" in obj:
                self._done = True
                pieces.append(StreamPiece(error=obj["error"]))
            elif self._is_final(obj):
                self._done = True
                pieces.append(StreamPiece(value=obj, final=obj))
            else:
                pieces.append(StreamPiece(value=obj))
        return pieces

    def failure(self, piece: StreamPiece, received: int) -> ProviderError:
        return self._on_error(piece.error)

    def incomplete(self, received: int, content_type: str) -> ProviderError:
        return self._on_incomplete()

    def stats(self, final: Any, time_to_first_token: float | None, total_time: float) -> GenerationStats:
        return GenerationStats(total_time=total_time)


class OpenAIEvents:
    """OpenAI's SSE chunks (``/v1/completions``, ``/v1/chat/completions``): text deltas, a
    finish reason, usage (possibly in a last ``"choices": []`` chunk), error events, and
    ``data: [DONE]``. A stream that ends after a finish reason without ``[DONE]`` is complete."""

    def __init__(self, provider: str, name: str, model: str) -> None:
        self.provider, self.name, self.model = provider, name, model
        self.events = 0
        self._decoder = SSEDecoder(provider=provider)
        self._done = False
        self.finish: FinishReason | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def feed(self, data: bytes) -> list[StreamPiece]:
        return self._pieces(self._decoder.feed(data))

    def close(self) -> list[StreamPiece]:
        pieces = self._pieces(self._decoder.close())
        if not self._done and self.finish is not None:  # no [DONE], but the answer is whole
            self._done = True
            pieces.append(StreamPiece(final=True))
        return pieces

    def _pieces(self, events: list[Any]) -> list[StreamPiece]:
        pieces: list[StreamPiece] = []
        for event in events:
            if self._done:
                break
            data = event.data
            if data.startswith("[DONE]"):
                self._done = True
                pieces.append(StreamPiece(final=True))
                break
            if not data or data.isspace():
                continue
            self.events += 1
            try:
                obj = loads_text(data)
            except ValueError:
                raise ProtocolError(
                    f"{self.name} sent a malformed stream event (not JSON): {data[:120]!r}",
                    provider=self.provider,
                    model=self.model,
                ) from None
            choices = obj.get("choices") if type(obj) is dict else None
            if type(choices) is list and choices and "error" not in obj and "usage" not in obj:
                first = choices[0]  # the usual event: one choice with text and no finish reason
                if type(first) is dict and first.get("finish_reason") is None:
                    text = first.get("text")
                    if type(text) is not str:
                        delta = first.get("delta")
                        text = delta.get("content") if type(delta) is dict else None
                    if type(text) is str:
                        if text:
                            pieces.append(StreamPiece(text))
                        continue
            if type(obj) is not dict or "error" in obj:
                message = openai_wire.stream_error(obj)
                if message is not None:
                    self._done = True
                    pieces.append(StreamPiece(error=(message, obj.get("error"))))
                    break
                if not isinstance(obj, dict):
                    raise ProtocolError(
                        f"Unexpected stream event: {data[:120]!r}", provider=self.provider, model=self.model
                    )
            delta = openai_wire.parse_delta(obj)
            if delta.finish_reason is not None:
                self.finish = delta.finish_reason
            if delta.prompt_tokens is not None:
                self.prompt_tokens = delta.prompt_tokens
            if delta.completion_tokens is not None:
                self.completion_tokens = delta.completion_tokens
            if delta.text:
                pieces.append(StreamPiece(delta.text))
        return pieces

    def failure(self, piece: StreamPiece, received: int) -> ProviderError:
        message, body = piece.error
        return _in_stream_error(self.name, self.provider, self.model, received, message, body)

    def incomplete(self, received: int, content_type: str) -> ProviderError:
        what = f"after {received} characters; the answer is incomplete"
        if not self.events and not content_type.startswith("text/event-stream"):
            what = (
                f"with no events (content type {content_type or 'none'!r}, not "
                "text/event-stream). Is the endpoint an OpenAI-compatible server?"
            )
        return ProtocolError(
            f"{self.name}'s stream ended without a finish reason or [DONE] {what}",
            provider=self.provider,
            model=self.model,
        )

    def stats(self, final: Any, time_to_first_token: float | None, total_time: float) -> GenerationStats:
        tokens = self.completion_tokens
        tps = None
        if tokens and tokens > 1 and time_to_first_token is not None and total_time > time_to_first_token:
            tps = (tokens - 1) / (total_time - time_to_first_token)
        return GenerationStats(
            finish_reason=self.finish or "stop",
            prompt_tokens=self.prompt_tokens,
            output_tokens=tokens,
            time_to_first_token=time_to_first_token,
            tokens_per_second=tps,
            total_time=total_time,
        )


class LlamaNativeEvents:
    """llama-server's native ``/completion`` SSE: ``content`` pieces, an error event, and a
    last event with ``"stop": true`` (no ``[DONE]`` follows)."""

    def __init__(self, provider: str, name: str, model: str, *, load_time: float | None = None) -> None:
        self.provider, self.name, self.model = provider, name, model
        self.load_time = load_time
        self._reader = NativeStream(SSEDecoder(provider=provider))
        self.events = 0

    def feed(self, data: bytes) -> list[StreamPiece]:
        return self._pieces(lambda: self._reader.feed(data))

    def close(self) -> list[StreamPiece]:
        return self._pieces(self._reader.close)

    def _pieces(self, read: Callable[[], list[str]]) -> list[StreamPiece]:
        had_end = self._reader.final is not None or self._reader.error is not None
        try:
            texts = read()
        except ValueError as exc:
            raise ProtocolError(
                f"{self.name} sent a malformed stream event ({exc}).",
                provider=self.provider,
                model=self.model,
            ) from None
        self.events += len(texts)
        pieces = [StreamPiece(text) for text in texts]
        if not had_end and self._reader.error is not None:
            pieces.append(StreamPiece(error=self._reader.error))
        elif not had_end and self._reader.final is not None:
            pieces.append(StreamPiece(final=self._reader.final))
        return pieces

    def failure(self, piece: StreamPiece, received: int) -> ProviderError:
        error = piece.error
        return _in_stream_error(
            self.name, self.provider, self.model, received, error, getattr(error, "body", None)
        )

    def incomplete(self, received: int, content_type: str) -> ProviderError:
        return ProtocolError(
            f"{self.name}'s stream ended without its final event after {received} characters; the "
            "answer is incomplete.",
            provider=self.provider,
            model=self.model,
        )

    def stats(self, final: Any, time_to_first_token: float | None, total_time: float) -> GenerationStats:
        return NativeCompletion.from_json(final).stats(
            time_to_first_token, total_time, counted=self._reader.tokens, load_time=self.load_time
        )
