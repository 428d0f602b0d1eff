"""Retries by error class, before the first chunk only.

A generation that fails before anything reached the caller is tried again when the failure is
one that a new attempt can fix: nothing listening or the connection reset before any byte, a
connect or first-byte timeout, 429/503 (after the server's ``Retry-After``). The waits grow
exponentially with jitter, capped. Nothing is retried once a chunk has reached the caller
(the answer would be duplicated or spliced): that failure is raised as it is, typed, with the
text received so far in ``partial_text``. Every decision is reported as a
:class:`RecoveryEvent`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from papin.llm.chunk_stream import ChunkStream, batches_of
from papin.llm.datatypes import GenerationChunk
from papin.llm.errors import (
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from papin.llm.provider import Messages, Provider
from papin.llm.wrapper import WrapperProvider

if TYPE_CHECKING:
    from papin.llm.config.recovery import RetryConfig
    from papin.llm.options import GenerationOptions

__all__ = ["EventKind", "RecoveryEvent", "RetryingProvider", "is_retryable", "retry_delay"]


EventKind = Literal[
    "attempt", "retried", "gave_up", "failed_after_output",  # retries (this module)
    "failed_over", "breaker_opened", "breaker_half_open", "breaker_closed",  # replicas
    "fell_back", "moved",  # fallback chains, and moving to a discovered backend
]  # fmt: skip

#: Timeout phases after which a new attempt may succeed (nothing was produced yet).
_RETRY_PHASES = frozenset({"connect", "first_byte"})


@dataclass(frozen=True, slots=True)
class RecoveryEvent:
    """What recovery did, for callbacks (``LLMManager.on_recovery_event``), logs and metrics.

    ``kind``: ``attempt`` (an attempt starts), ``retried`` (it failed and another follows
    after ``delay`` seconds), ``gave_up`` (it failed and no retry follows: not retryable, or
    attempts or ``Retry-After`` out of bounds), ``failed_after_output`` (it failed after chunks
    reached the caller: never retried); for replicas (:mod:`papin.llm.router.replicas`):
    ``failed_over`` (an endpoint failed before output; the next is tried at once) and the
    breaker's ``breaker_opened`` / ``breaker_half_open`` / ``breaker_closed``, with the endpoint
    in ``provider`` (``ollama@http://host:port``); for fallback chains: ``fell_back`` (the
    provider failed before output, or its breaker is open; ``reason`` names the error kind and
    the next provider) and ``moved`` (the primary and its fallbacks are down: discovery found
    another running backend, used until the primary's breaker closes again).
    """

    kind: EventKind
    provider: str
    model: str
    attempt: int
    reason: str = ""
    error: ProviderError | None = None
    delay: float = 0.0
    at: float = 0.0


def retry_delay(error: BaseException, attempt: int, policy: RetryConfig) -> float | None:
    """Seconds to wait before attempt ``attempt + 1`` after ``error``, or ``None`` when it must
    not be retried (not retryable, no attempts left, or a ``Retry-After`` beyond the cap).

    >>> from papin.llm.config.recovery import RetryConfig
    >>> policy = RetryConfig(initial_backoff_seconds=1, max_backoff_seconds=4)
    >>> retry_delay(RateLimitedError("busy", retry_after=2.5), 1, policy)
    2.5
    >>> retry_delay(RateLimitedError("busy", retry_after=90), 1, policy) is None
    True
    >>> retry_delay(ProviderTimeoutError("slow", phase="idle"), 1, policy) is None
    True
    """
    if attempt >= policy.max_attempts or not is_retryable(error):
        return None
    backoff = min(policy.max_backoff_seconds, policy.initial_backoff_seconds * 2.0 ** (attempt - 1))
    backoff *= 0.5 + random.random() / 2  # jitter: between half and all of it
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        if error.retry_after > policy.max_retry_after_seconds:
            return None
        return max(float(error.retry_after), 0.0)
    return backoff


def is_retryable(error: BaseException) -> bool:
    """Whether a failure before the first chunk may be fixed by trying again."""
    if isinstance(error, ProviderTimeoutError):
        return error.phase in _RETRY_PHASES
    if isinstance(error, RateLimitedError):
        return error.status_code in (None, 429, 503)
    return isinstance(error, ProviderUnavailableError)


class RetryingProvider(WrapperProvider):
    """Wraps a provider so that its generations are retried (see the module).

    ``on_event`` receives every :class:`RecoveryEvent`; ``sleep`` is ``asyncio.sleep`` (tests
    pass another).
    """

    def __init__(
        self,
        wrapped: Provider,
        policy: RetryConfig,
        *,
        on_event: Callable[[RecoveryEvent], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(wrapped)
        self.policy = policy
        self.on_event = on_event
        self._sleep: Callable[[float], Awaitable[None]] = sleep or asyncio.sleep

    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """The wrapped completion stream, retried before its first chunk."""
        return ChunkStream(
            self._retrying(model, lambda: self.wrapped.stream_generate(model, prompt, options))
        )

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """The wrapped chat stream, retried before its first chunk."""
        return ChunkStream(
            self._retrying(model, lambda: self.wrapped.stream_chat(model, messages, options))
        )

    def _emit(
        self,
        kind: EventKind,
        model: str,
        attempt: int,
        *,
        reason: str = "",
        error: ProviderError | None = None,
        delay: float = 0.0,
    ) -> None:
        if self.on_event is not None:
            self.on_event(RecoveryEvent(kind, self.name, model, attempt, reason, error, delay, time.time()))

    async def _retrying(
        self, model: str, open_stream: Callable[[], AsyncGenerator[GenerationChunk, None]]
    ) -> AsyncGenerator[list[GenerationChunk], None]:
        attempt = 0
        while True:
            attempt += 1
            self._emit("attempt", model, attempt)
            batches = batches_of(open_stream())
            try:
                try:
                    first = await batches.__anext__()
                except StopAsyncIteration:
                    return
                except ProviderError as exc:
                    delay = retry_delay(exc, attempt, self.policy)
                    if delay is None:
                        self._emit("gave_up", model, attempt, reason=exc.kind, error=exc)
                        raise
                    self._emit("retried", model, attempt, reason=exc.kind, error=exc, delay=delay)
                    await batches.aclose()
                    await self._sleep(delay)
                    continue
                received = [c.text for c in first]
                yield first
                try:
                    async for batch in batches:
                        received.extend(c.text for c in batch)
                        yield batch
                except ProviderError as exc:
                    exc.partial_text = "".join(received)
                    self._emit("failed_after_output", model, attempt, reason=exc.kind, error=exc)
                    raise
                return
            finally:
                await batches.aclose()
