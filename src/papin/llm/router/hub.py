"""The recovery of one manager: its event listeners and subscribers, and the wrappers it puts
around the provider it chose (retries, then the fallback chain)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from papin.llm.datatypes import GenerationChunk
from papin.llm.errors import ProviderError
from papin.llm.provider import Provider
from papin.llm.router.breaker import CircuitBreaker
from papin.llm.router.fallback import MODEL_GIVEN, Fallback, FallbackChain
from papin.llm.router.replicas import endpoint_of
from papin.llm.router.retry import RecoveryEvent, RetryingProvider

if TYPE_CHECKING:
    from papin.llm.config import LLMConfig
    from papin.llm.config.recovery import FallbackSpec, RetryConfig
    from papin.llm.factory import ProviderFactory

__all__ = ["RecoveryHub"]

_log = logging.getLogger("papin.llm.router")


class RecoveryHub:
    """Recovery for one manager: the listeners of its :class:`RecoveryEvent` and the wrapper
    around its current provider (made again when the provider or the policy changes).

    Example::

        manager.recovery.listeners.append(lambda event: print(event.kind, event.reason))
    """

    def __init__(
        self,
        config: Callable[[], LLMConfig],
        factory: Callable[[], ProviderFactory] | None = None,
        choose: Callable[[LLMConfig], Awaitable[tuple[Any, Provider]]] | None = None,
    ) -> None:
        """``config`` and ``factory`` give the manager's current ones; ``choose`` runs the
        manager's provider choice (discovery included) on a configuration."""
        self.listeners: list[Callable[[RecoveryEvent], None]] = []
        self._config = config
        self._factory = factory
        self._choose = choose
        self._for: tuple[Provider, LLMConfig] | None = None
        self._wrapper: Provider | None = None
        self._chains: list[FallbackChain] = []
        self._queues: list[asyncio.Queue[RecoveryEvent]] = []

    async def events(self, *, max_queued: int = 1000) -> AsyncGenerator[RecoveryEvent, None]:
        """The events from now on, as an async iterator (``async for event in hub.events()``);
        leaving the loop unsubscribes. A subscriber that falls ``max_queued`` events behind
        loses the oldest ones rather than holding memory forever."""
        queue: asyncio.Queue[RecoveryEvent] = asyncio.Queue(max_queued)
        self._queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(queue)

    def wrap(self, provider: Provider) -> Provider:
        """``provider`` with recovery: retries (``config.retry``), then the fallback chain
        (``config.fallbacks``, and with ``auto_discover`` another running backend that serves
        the model when the primary is down); ``provider`` itself when none is on."""
        config = self._config()
        if self._for is not None and self._for[0] is provider and self._for[1] is config:
            assert self._wrapper is not None
            return self._wrapper
        wrapper = self._retrying(provider, config.retry)
        discover = self._discovery(config) if config.auto_discover and self._choose is not None else None
        if (config.fallbacks and self._factory is not None) or discover is not None:
            factory = self._factory
            assert factory is not None
            steps = [
                Fallback(spec.provider_type, functools.partial(_create, factory, config, spec), spec.model)
                for spec in config.fallbacks
            ]
            breaker = CircuitBreaker(
                endpoint_of(provider), failure_threshold=config.circuit_breaker.failure_threshold,
                cooldown_seconds=config.circuit_breaker.cooldown_seconds,
            )  # fmt: skip
            wrapper = FallbackChain(
                wrapper, steps, auto_pull=config.auto_pull, on_event=self.emit,
                prepare=lambda p: self._retrying(p, config.retry), discover=discover, breaker=breaker,
            )  # fmt: skip
            self._chains.append(wrapper)
        self._for, self._wrapper = (provider, config), wrapper
        return wrapper

    def open(
        self,
        provider: Provider,
        open_stream: Callable[[Provider], AsyncGenerator[GenerationChunk, None]],
        model_given: bool = True,
    ) -> AsyncGenerator[GenerationChunk, None]:
        """``open_stream`` on ``provider`` with recovery; ``model_given`` says whether the
        caller named the model (else a backend moved to may serve its own default)."""
        token = MODEL_GIVEN.set(model_given)
        try:
            return open_stream(self.wrap(provider))
        finally:
            MODEL_GIVEN.reset(token)

    def _discovery(self, config: LLMConfig) -> Callable[[], Awaitable[Provider | None]]:
        """Another running backend by the usual choice (the configured one left out), or None."""
        choose = self._choose
        assert choose is not None

        async def discover() -> Provider | None:
            try:
                _, found = await choose(config.model_copy(update={"provider_type": None}))
            except ProviderError:
                return None
            return found

        return discover

    def _retrying(self, provider: Provider, policy: RetryConfig) -> Provider:
        if policy.max_attempts <= 1:
            return provider
        return RetryingProvider(provider, policy, on_event=self.emit)

    async def aclose(self) -> None:
        """Close the providers this hub's chains created: fallbacks and discovered backends (the
        primary is the manager's)."""
        chains, self._chains = self._chains, []
        self._for = self._wrapper = None
        for chain in chains:
            await chain.close_extras()

    def emit(self, event: RecoveryEvent) -> None:
        """Give ``event`` to every listener (a failing listener is logged, never raised)."""
        if event.kind != "attempt":
            _log.info(
                "%s %s (attempt %d, %s)%s", event.provider, event.kind, event.attempt, event.reason,
                f", next in {event.delay:.2f} s" if event.kind == "retried" else "",
            )  # fmt: skip
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a listener must not break a generation
                _log.exception("recovery event listener failed")
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)


def _create(factory: Callable[[], ProviderFactory], config: LLMConfig, spec: FallbackSpec) -> Provider:
    """A fallback's provider: its settings laid over the provider's own."""
    settings = {**config.settings_for(spec.provider_type), **spec.provider_config}
    return factory().create_provider(spec.provider_type, settings)
