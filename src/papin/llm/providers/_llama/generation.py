"""One generation on a loaded llama.cpp model, wherever the model lives.

:func:`execute` runs a :class:`GenerationRequest` on a ``Llama`` in the thread that owns it
(papin's llama thread in this process, or the isolated worker's) and reports what happens
through an ``emit(kind, payload)`` callback, as plain data that can cross a process boundary:

* ``("chunk", (text, finish_reason))`` for each piece of text (one per token);
* ``("warning", message)`` (the prompt was truncated);
* then exactly one of ``("end", outcome)`` (a dict: ``tokens_sampled``, ``prompt_tokens``,
  ``chunks``, ``tokens_after_stop``) or ``("error", (kind, message, numbers))``.

:func:`stream_in_thread` runs it on this process's llama thread and hands the events to the
event loop; :func:`raise_for` turns an ``error`` payload into the :class:`ProviderError` the
caller sees.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from papin.llm.errors import ConfigurationError, GenerationError
from papin.llm.options import GenerationOptions
from papin.llm.providers._llama.runtime import LoadedLlama, import_llama_cpp

__all__ = [
    "Emit",
    "Event",
    "GenerationJob",
    "GenerationRequest",
    "execute",
    "raise_for",
    "sampling_kwargs",
    "stream_in_thread",
    "strip_placeholders",
]

Emit = Callable[[str, Any], None]
Event = tuple[str, Any]
_CTX_ERROR = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What to generate: a completion of ``prompt`` or a reply to ``messages``, with the
    llama-cpp-python keyword arguments ``kwargs`` (sampling, ``max_tokens``)."""

    kind: Literal["completion", "chat"]
    model_id: str
    prompt: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    truncate_prompt: bool = False
    #: Reuse the prompt cache only where greedy output stays that of a fresh evaluation.
    exact_cache: bool = True

    @property
    def max_tokens(self) -> int | None:
        """The request's token limit."""
        value = self.kwargs.get("max_tokens")
        return int(value) if value is not None else None


@dataclass
class GenerationJob:
    """The state of one running generation, shared by the thread that runs it and the one
    that asks it to stop.

    The runner stops between chunks once ``stop`` is set (chunks come one per token), and
    completions also stop inside llama.cpp's loop (:meth:`stopping_criteria`).
    """

    stop: threading.Event = field(default_factory=threading.Event)
    tokens_sampled: int = 0
    prompt_tokens: int | None = None
    #: Stream chunks produced (one per token; the count for chats, which take no criteria).
    chunks: int = 0
    #: ``tokens_sampled`` when the stop was asked for.
    stopped_at: int | None = None
    #: Called after each sampled token (in-process: the pool's live token counter).
    on_token: Callable[[], None] | None = None

    def request_stop(self) -> None:
        """Ask the generation to end at the next token."""
        if not self.stop.is_set():
            self.stopped_at = self.tokens_sampled
            self.stop.set()

    def stopping_criteria(self, input_ids: Any, logits: Any) -> bool:
        """Called by llama-cpp-python after each sampled token (completions): counts tokens
        and ends generation as soon as the job is stopped. It touches no logits, so it costs
        nothing measurable (a logits processor copies the whole vocabulary every token)."""
        if self.prompt_tokens is None:
            self.prompt_tokens = len(input_ids)
        if self.stop.is_set():
            return True  # this sample is discarded: generation ends here
        self.tokens_sampled += 1
        if self.on_token is not None:
            self.on_token()
        return False

    def outcome(self) -> dict[str, Any]:
        """The counters as plain data (the ``end`` event's payload)."""
        after = None if self.stopped_at is None else self.tokens_sampled - self.stopped_at
        return {
            "tokens_sampled": self.tokens_sampled,
            "prompt_tokens": self.prompt_tokens,
            "chunks": self.chunks,
            "tokens_after_stop": after,
        }


def _stream(
    llama: Any, n_ctx: int, request: GenerationRequest, job: GenerationJob, emit: Emit
) -> Iterator[Any]:
    kw = request.kwargs
    if request.kind == "chat":
        # create_chat_completion takes no stopping criteria: the loop stops between chunks,
        # which come one per token.
        return iter(llama.create_chat_completion(request.messages, stream=True, **kw))
    prompt = request.prompt
    tokens: list[int] = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    prompt_input: str | list[int] = prompt
    if len(tokens) >= n_ctx:
        if not request.truncate_prompt:
            raise _ContextOverflow(len(tokens), n_ctx)
        keep = max(1, n_ctx - max(1, min(request.max_tokens or 256, n_ctx // 2)))
        emit(
            "warning",
            f"The prompt has {len(tokens)} tokens but the context is {n_ctx}; kept its last {keep} tokens.",
        )
        prompt_input = tokens[-keep:]
    criteria = import_llama_cpp().StoppingCriteriaList([job.stopping_criteria])
    return iter(llama.create_completion(prompt_input, stream=True, stopping_criteria=criteria, **kw))


#: Multimodal placeholder tokens (Gemma 3 and others) that base models emit as noise in text
#: generation; they are dropped from the output.
_PLACEHOLDERS = (
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
    "<start_of_audio>",
    "<end_of_audio>",
    "<audio_soft_token>",
)


def strip_placeholders(text: str) -> str:
    """Drop multimodal placeholder tokens from generated text.

    >>> strip_placeholders("<start_of_image>A robot")
    'A robot'
    """
    for marker in _PLACEHOLDERS:
        text = text.replace(marker, "")
    return text


class _ContextOverflow(Exception):
    def __init__(self, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(prompt_tokens, n_ctx)
        self.prompt_tokens, self.n_ctx = prompt_tokens, n_ctx


def execute(llama: Any, n_ctx: int, request: GenerationRequest, job: GenerationJob, emit: Emit) -> None:
    """Run ``request`` on ``llama`` (blocking, in the thread that owns it), reporting through
    ``emit`` as the module docstring says. Never raises."""
    finish: str | None = None
    try:
        if job.stop.is_set():
            emit("end", job.outcome())
            return
        if hasattr(llama, "exact_cache"):
            llama.exact_cache = request.exact_cache
        stream = _stream(llama, n_ctx, request, job, emit)
        try:
            for raw in stream:
                job.chunks += 1
                if job.stop.is_set():
                    break
                choice = (raw.get("choices") or [{}])[0]
                text = choice.get("text")
                if text is None:
                    text = (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason") or finish
                if "<" in text:
                    text = strip_placeholders(text)
                emit("chunk", (text, finish))
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
    except _ContextOverflow as exc:
        emit("error", ("context", "", (exc.prompt_tokens, exc.n_ctx)))
        return
    except Exception as exc:  # llama.cpp's errors arrive as ValueError/RuntimeError
        match = _CTX_ERROR.search(str(exc))
        if match:
            emit("error", ("context", "", (int(match[1]), int(match[2]))))
        else:
            emit("error", ("llama", _describe(exc), ()))
        return
    if job.prompt_tokens is None:  # chats: the context minus the output
        produced = job.tokens_sampled or job.chunks
        if finish == "length" and request.max_tokens:
            produced = min(produced, request.max_tokens)
        job.prompt_tokens = max(0, int(getattr(llama, "n_tokens", 0)) - produced)
    emit("end", job.outcome())


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"


def sampling_kwargs(
    options: GenerationOptions | None, default_max_tokens: int | None, method: Callable[..., Any]
) -> dict[str, Any]:
    """llama-cpp-python keyword arguments for ``options``; ``additional_params`` are checked
    against the signature of ``method`` (``Llama.create_completion``...)."""
    o = options or GenerationOptions()
    kw: dict[str, Any] = {"max_tokens": o.max_tokens if o.max_tokens is not None else default_max_tokens}
    for name in (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "stop",
        "seed",
    ):
        value = getattr(o, name)
        if value is not None:
            kw[name] = value
    if o.additional_params:
        allowed = set(inspect.signature(method).parameters) - {"self", "stream", "prompt", "messages"}
        unknown = sorted(set(o.additional_params) - allowed)
        if unknown:
            accepted = ", ".join(sorted(allowed))
            raise ConfigurationError(
                f"Unknown llama.cpp option(s) {', '.join(unknown)}; accepted: {accepted}.",
                provider="llamacpp",
            )
        kw.update(o.additional_params)
    return kw


def raise_for(payload: tuple[str, str, tuple[int, ...]], provider: str, model: str) -> NoReturn:
    """Raise the :class:`ProviderError` for an ``error`` event's payload."""
    kind, message, numbers = payload
    if kind == "context":
        prompt_tokens, n_ctx = numbers
        raise GenerationError(
            f"The prompt is {prompt_tokens} tokens but the context window of '{model}' is {n_ctx} "
            "tokens. Shorten the prompt, raise context_size, or set truncate_prompt to keep its end.",
            provider=provider,
            model=model,
        )
    raise GenerationError(f"llama.cpp failed: {message}", provider=provider, model=model)


class EventBridge:
    """Events produced on another thread (the llama thread, or the isolated worker's reader),
    consumed on the event loop that created the bridge.

    :meth:`post` is thread-safe; the first terminal event (``end``, ``error``, or the worker's
    ``dead``/``fail``) marks the producer finished. :meth:`events` yields until then; closed
    early, it calls ``stop`` and waits for the producer to finish, so the model is free for
    the next request.
    """

    TERMINAL = frozenset({"end", "error", "dead", "fail"})

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.finished = threading.Event()

    def post(self, kind: str, payload: Any) -> bool:
        """Hand one event to the loop; ``False`` when the loop is gone (nobody listens)."""
        if kind in self.TERMINAL:
            self.finished.set()
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:
            return False
        return True

    async def events(
        self, stop: Callable[[], None], wait: float | None = None
    ) -> AsyncGenerator[Event, None]:
        """The events, up to and including the terminal one."""
        try:
            while True:
                event = await self.queue.get()
                yield event
                if event[0] in self.TERMINAL:
                    return
        finally:
            if not self.finished.is_set():
                stop()
                await asyncio.shield(self.loop.run_in_executor(None, self.finished.wait, wait))


async def stream_in_thread(
    executor: ThreadPoolExecutor, entry: LoadedLlama, request: GenerationRequest, job: GenerationJob
) -> AsyncGenerator[Event, None]:
    """Run ``request`` on ``entry`` (a model in this process) in the pool's llama thread,
    yielding its events on the event loop (``entry.tokens_after_stop`` is set when it ends).

    Closing the iterator (or cancelling the task) stops the job and waits until the thread
    has really stopped, so the model is free for the next request.
    """
    bridge = EventBridge()

    def emit(kind: str, payload: Any) -> None:
        if kind in EventBridge.TERMINAL:
            entry.tokens_after_stop = job.outcome()["tokens_after_stop"]
        if not bridge.post(kind, payload):  # the loop is gone: stop generating
            job.request_stop()

    def work() -> None:
        try:
            with entry.lock:
                if entry.llama is None:
                    emit("error", ("llama", f"the model {entry.model_id} was unloaded", ()))
                else:
                    execute(entry.llama, entry.settings.n_ctx, request, job, emit)
        except BaseException as exc:  # reported to the caller, never lost
            emit("error", ("llama", _describe(exc), ()))

    executor.submit(work)
    async for event in bridge.events(job.request_stop):
        yield event
