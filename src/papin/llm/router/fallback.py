"""Fallback chains: other providers, tried in order when the primary fails before its output.

``LLMConfig.fallbacks`` lists them (``provider_type``, ``provider_config``, optional ``model``).
When the primary (with its retries and replicas) fails before its first chunk in a way that
another backend may not (unreachable, timed out, busy, refused credentials, model missing, a
server error or a malformed answer), the next fallback is created (once, lazily) and asked;
each step is a ``fell_back`` :class:`~papin.llm.router.retry.RecoveryEvent`. A bad request or
a configuration error is the caller's and is raised at once; nothing moves after the first
chunk. A fallback's model is its ``model``, else the requested one, else (when it lacks that
one) its own default, which is how the offline embedded default serves as the last resort;
with ``auto_pull`` a fallback that can pull a missing model does so first.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from papin.llm.chunk_stream import ChunkStream, batches_of
from papin.llm.datatypes import GenerationChunk
from papin.llm.errors import (
    ConfigurationError,
    ModelNotFoundError,
    ProviderAPIError,
    ProviderError,
    ProviderUnavailableError,
)
from papin.llm.provider import Messages, Provider
from papin.llm.router.breaker import CircuitBreaker
from papin.llm.router.retry import RecoveryEvent
from papin.llm.wrapper import WrapperProvider

if TYPE_CHECKING:
    from papin.llm.options import GenerationOptions

__all__ = ["MODEL_GIVEN", "Fallback", "FallbackChain", "falls_back"]

#: Whether the caller named the model of the request being opened (the manager sets it): a
#: backend moved to by discovery must serve a named model; for one the caller left to papin,
#: the backend's own default will do.
MODEL_GIVEN: ContextVar[bool] = ContextVar("papin_model_given", default=True)


def falls_back(error: ProviderError) -> bool:
    """Whether another backend may succeed where this failure happened."""
    if isinstance(error, ConfigurationError):
        return False
    if isinstance(error, ProviderAPIError) and not isinstance(error, ModelNotFoundError):
        status = error.status_code
        return error.retryable or status is None or status in (401, 403, 404, 408, 429) or status >= 500
    return True


@dataclass(slots=True)
class Fallback:
    """One step of the chain: how to create its provider, and the model it serves."""

    name: str
    create: Callable[[], Provider]
    model: str | None = None
    provider: Provider | None = field(default=None, repr=False)

    def get(self) -> Provider:
        if self.provider is None:
            self.provider = self.create()
        return self.provider


class FallbackChain(WrapperProvider):
    """The primary, then each fallback in turn (see the module)."""

    def __init__(
        self,
        primary: Provider,
        fallbacks: Sequence[Fallback],
        *,
        auto_pull: bool = True,
        on_event: Callable[[RecoveryEvent], None] | None = None,
        prepare: Callable[[Provider], Provider] | None = None,
        discover: Callable[[], Awaitable[Provider | None]] | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        super().__init__(primary)
        self.fallbacks = list(fallbacks)
        self.auto_pull = auto_pull
        self.on_event = on_event
        self._prepare = prepare
        self._discover = discover
        #: The primary's breaker: while open, requests go straight to the fallbacks (or the
        #: discovered backend); its half-open probe brings the primary back.
        self.breaker = breaker
        #: The backend discovery moved to while the primary is down (``None`` otherwise).
        self.discovered: Provider | None = None

    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """The primary's completion, or the first fallback's that works."""
        given = MODEL_GIVEN.get()  # read now: the generator body runs later
        return ChunkStream(self._chain(model, lambda p, m: p.stream_generate(m, prompt, options), given))

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """The primary's chat reply, or the first fallback's that works."""
        given = MODEL_GIVEN.get()
        return ChunkStream(self._chain(model, lambda p, m: p.stream_chat(m, messages, options), given))

    def _emit(self, model: str, step: int, error: ProviderError | None, to: str) -> None:
        if self.on_event is not None:
            reason = f"{error.kind if error else 'open'}; next: {to}"
            self.on_event(RecoveryEvent("fell_back", self.name, model, step, reason, error, 0.0, time.time()))

    def _next(self, step: int) -> str:
        return self.fallbacks[step].name if step < len(self.fallbacks) else "a discovered backend"

    async def _provider(self, step: int, model: str, given: bool) -> Provider | None:
        if step == 0:
            return self.wrapped
        if step > len(self.fallbacks):
            return await self._discovered(model, given)
        provider = self.fallbacks[step - 1].get()
        return self._prepare(provider) if self._prepare is not None else provider

    async def _discovered(self, model: str, given: bool) -> Provider | None:
        """Another running backend that serves ``model`` (or, when the caller named none, any:
        it serves its default), found by discovery and kept until the primary is back."""
        if self.discovered is None:
            assert self._discover is not None
            found = await self._discover()
            if found is None:
                return None
            try:
                await found.get_model_info(model)
            except ProviderError:
                if given or not await _default_of(found):
                    await found.aclose()
                    return None  # it does not serve the requested model
            self.discovered = self._prepare(found) if self._prepare is not None else found
            if self.on_event is not None:
                where = f"{found.name}@{getattr(found, 'endpoint', '') or 'in-process'}"
                self.on_event(RecoveryEvent("moved", self.name, model, 0, f"moved to {where}", None, 0.0,
                                            time.time()))  # fmt: skip
        elif given:  # moved earlier, for another request: it must serve this named model too
            try:
                await self.discovered.get_model_info(model)
            except ProviderError:
                return None
        return self.discovered

    async def _back_to_primary(self) -> None:
        moved, self.discovered = self.discovered, None
        if moved is not None:
            await moved.aclose()

    async def _model_for(self, step: int, provider: Provider, requested: str, given: bool = True) -> str:
        if step == 0:
            return requested
        if step > len(self.fallbacks):  # the backend discovery moved to
            if given:
                return requested  # it serves it (checked when it was found)
            try:
                await provider.get_model_info(requested)
                return requested
            except ProviderError:
                return await _default_of(provider) or requested
        chosen = self.fallbacks[step - 1].model
        if chosen:
            return chosen
        default = provider.default_model_id()
        if default and not provider.can_pull(requested):
            try:
                await provider.get_model_info(requested)
            except ProviderError:
                return default  # it lacks the requested model: its own default answers
        return requested

    async def _chain(
        self,
        model: str,
        open_stream: Callable[[Provider, str], AsyncGenerator[GenerationChunk, None]],
        given: bool = True,
    ) -> AsyncGenerator[list[GenerationChunk], None]:
        steps = 1 + len(self.fallbacks) + (1 if self._discover is not None else 0)
        last: ProviderError | None = None
        for step in range(steps):
            if step == 0 and steps > 1 and self.breaker is not None and not self.breaker.allow():
                self._emit(model, 0, None, self._next(0))  # the primary rests: straight on
                rest = f"{self.display_name} is resting after failures (its circuit breaker is open)."
                last = ProviderUnavailableError(rest, provider=self.name)
                continue
            if step > len(self.fallbacks) and not isinstance(last, ProviderUnavailableError):
                assert last is not None
                raise last  # discovery is for a backend that is down, not one that refused
            try:
                provider = await self._provider(step, model, given)
                if provider is None:  # discovery found nothing that serves the model
                    assert last is not None
                    raise last
                name = await self._model_for(step, provider, model, given)
            except ProviderError as exc:
                if exc is last:
                    raise
                last = exc
                if step + 1 < steps:
                    self._emit(model, step, exc, self._next(step))
                    continue
                raise
            pulled = False
            while True:
                batches = batches_of(open_stream(provider, name))
                received: list[str] | None = None  # set once output reached the caller
                try:
                    try:
                        first = await batches.__anext__()
                    except StopAsyncIteration:
                        return
                    except ModelNotFoundError:
                        can_pull = self.auto_pull and provider.can_pull(name)
                        if step == 0 and can_pull:
                            raise  # the manager pulls the primary's model, as without fallbacks
                        if pulled or not can_pull:
                            raise
                        pulled = True
                        await batches.aclose()
                        await provider.download_model(name)
                        continue
                    if step == 0 and self.breaker is not None:
                        self.breaker.record_success()
                        if self.discovered is not None:
                            await self._back_to_primary()
                    received = [c.text for c in first]
                    yield first
                    async for batch in batches:
                        received.extend(c.text for c in batch)
                        yield batch
                    return
                except ProviderError as exc:
                    if received is not None:  # never after output: fail typed, text kept
                        if exc.partial_text is None:
                            exc.partial_text = "".join(received)
                        raise
                    if step == 0 and self.breaker is not None:
                        if falls_back(exc):
                            self.breaker.record_failure()
                        else:
                            self.breaker.record_success()  # it answered: the request was the problem
                    if step + 1 >= steps or not falls_back(exc):
                        raise
                    last = exc
                    if step + 1 > len(self.fallbacks) and not isinstance(exc, ProviderUnavailableError):
                        raise  # only a backend that is down sends papin looking for another
                    self._emit(model, step, exc, self._next(step))
                    break
                finally:
                    if step == 0 and self.breaker is not None:
                        self.breaker.release()  # a probe that ended without an outcome frees its slot
                    await batches.aclose()

    async def close_extras(self) -> None:
        """Close what this chain created (fallbacks, the discovered backend), not the primary."""
        await self._back_to_primary()
        for fallback in self.fallbacks:
            provider, fallback.provider = fallback.provider, None
            if provider is not None:
                await provider.aclose()

    async def aclose(self) -> None:
        """Close the primary, every fallback created and the discovered backend."""
        await self.close_extras()
        await super().aclose()


async def _default_of(provider: Provider) -> str | None:
    """The model a backend serves when none is named: its default, else its first installed."""
    default = provider.default_model_id()
    if default:
        return default
    try:
        models = await provider.list_downloaded_models()
    except ProviderError:
        return None
    return models[0].id if models else None
