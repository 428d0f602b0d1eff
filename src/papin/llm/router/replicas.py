"""Replicas: one backend served by several endpoints (``endpoints: [url, ...]``).

A :class:`ReplicaSet` holds one provider per endpoint, each behind a
:class:`~papin.llm.router.breaker.CircuitBreaker`. A generation goes to the endpoint with the
fewest requests in flight among those whose breaker lets it through; when it fails before its
first chunk in a way another endpoint may not (refused, reset, connect or first-byte timeout,
429/503, 401/403), the next endpoint is tried at once, without a backoff, and the failure
counts against the endpoint's breaker. Nothing moves once a chunk has reached the caller. When
every endpoint is open, the request waits for the first one to come out of its cooldown (a
request deadline still bounds it), then fails typed with the time left if none is free.

Model management goes to every replica (``pull_model``, ``delete_model``, ``load_model``,
``unload_model``) and says which failed; :meth:`ReplicaSet.replica` gives the one named.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from papin.llm.chunk_stream import ChunkStream, batches_of
from papin.llm.datatypes import DownloadStatus, GenerationChunk, ModelInfo, ProviderStatus
from papin.llm.errors import AuthenticationError, ProviderError, ProviderUnavailableError
from papin.llm.provider import Messages, Provider
from papin.llm.router.breaker import BreakerState, CircuitBreaker
from papin.llm.router.retry import EventKind, RecoveryEvent, is_retryable
from papin.llm.wrapper import WrapperProvider

if TYPE_CHECKING:
    from papin.llm.config.recovery import BreakerConfig
    from papin.llm.options import GenerationOptions

__all__ = ["ReplicaSet", "endpoint_of", "replicate"]

_STATE_EVENTS: dict[BreakerState, EventKind] = {
    "open": "breaker_opened",
    "half_open": "breaker_half_open",
    "closed": "breaker_closed",
}


def endpoint_of(provider: Provider) -> str:
    """A provider's endpoint (its ``endpoint`` attribute, else its name)."""
    return str(getattr(provider, "endpoint", "") or provider.name)


class ReplicaSet(WrapperProvider):
    """Several endpoints of one backend as one provider (see the module)."""

    def __init__(
        self,
        replicas: Sequence[Provider],
        breaker: BreakerConfig,
        *,
        on_event: Callable[[RecoveryEvent], None] | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("a replica set needs at least one provider")
        super().__init__(replicas[0])
        self.replicas = list(replicas)
        self.on_event = on_event
        self.breakers = [
            CircuitBreaker(
                endpoint_of(r),
                failure_threshold=breaker.failure_threshold,
                cooldown_seconds=breaker.cooldown_seconds,
                on_change=self._breaker_changed,
            )
            for r in self.replicas
        ]
        self.in_flight = [0] * len(self.replicas)
        self._name = self.replicas[0].name

    @property
    def endpoints(self) -> list[str]:
        """Every replica's endpoint, in order."""
        return [endpoint_of(r) for r in self.replicas]

    def replica(self, endpoint: str) -> Provider:
        """The replica at ``endpoint`` (for management of that one only)."""
        for provider in self.replicas:
            if endpoint_of(provider).rstrip("/") == endpoint.rstrip("/"):
                return provider
        raise ProviderError(
            f"{self.name} has no replica at {endpoint}; its endpoints are {', '.join(self.endpoints)}.",
            provider=self.name,
        )

    # -- events ---------------------------------------------------------------------------
    def _emit(self, kind: EventKind, model: str, index: int, *, reason: str = "",
              error: ProviderError | None = None, delay: float = 0.0) -> None:  # fmt: skip
        if self.on_event is not None:
            import time

            name = f"{self.name}@{endpoint_of(self.replicas[index])}"
            self.on_event(RecoveryEvent(kind, name, model, 0, reason, error, delay, time.time()))

    def _breaker_changed(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        index = self.breakers.index(breaker) if breaker in self.breakers else 0
        self._emit(_STATE_EVENTS[new], "", index, reason=f"{old} -> {new}", delay=breaker.retry_in())

    # -- choosing an endpoint -------------------------------------------------------------
    def _pick(self, tried: set[int]) -> int | None:
        """The replica to use now: a half-open one whose probe is free (so that a recovered
        endpoint comes back; if the probe fails, the request moves on before any output), else
        the closed one with the fewest in flight; ``None`` when every untried one is open."""
        order = sorted(
            (i for i in range(len(self.replicas)) if i not in tried),
            key=lambda i: (self.breakers[i].state != "half_open", self.in_flight[i], i),
        )
        for index in order:
            if self.breakers[index].allow():
                return index
        return None

    def _all_open_error(self, wait: float) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            f"Every endpoint of {self.display_name} is failing and resting ({', '.join(self.endpoints)}); "
            f"the first is tried again in {wait:.1f} s (circuit_breaker.cooldown_seconds).",
            provider=self.name,
        )

    # -- generation -----------------------------------------------------------------------
    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """A completion from the best endpoint, moving to the next before the first chunk."""
        return ChunkStream(self._failover(model, lambda p: p.stream_generate(model, prompt, options)))

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """A chat reply from the best endpoint, moving to the next before the first chunk."""
        return ChunkStream(self._failover(model, lambda p: p.stream_chat(model, messages, options)))

    async def _failover(
        self, model: str, open_stream: Callable[[Provider], AsyncGenerator[GenerationChunk, None]]
    ) -> AsyncGenerator[list[GenerationChunk], None]:
        tried: set[int] = set()
        last: ProviderError | None = None
        waited = False
        while True:
            index = self._pick(tried)
            if index is None:
                if last is not None and len(tried) == len(self.replicas):
                    raise last
                wait = min((b.retry_in() for i, b in enumerate(self.breakers) if i not in tried), default=0.0)
                if waited or last is not None and wait <= 0:
                    raise last if last is not None else self._all_open_error(wait)
                waited = True
                await asyncio.sleep(wait)
                continue
            breaker = self.breakers[index]
            self.in_flight[index] += 1
            batches = batches_of(open_stream(self.replicas[index]))
            outcome = False  # whether the breaker heard how this attempt went
            try:
                try:
                    first = await batches.__anext__()
                except StopAsyncIteration:
                    breaker.record_success()
                    outcome = True
                    return
                except ProviderError as exc:
                    refused = isinstance(exc, AuthenticationError)
                    if not (is_retryable(exc) or refused):
                        breaker.record_success()  # it answered: the request was the problem
                        outcome = True
                        raise
                    breaker.record_failure(immediate=refused)
                    outcome = True
                    tried.add(index)
                    last = exc
                    self._emit("failed_over", model, index, reason=exc.kind, error=exc)
                    continue
                breaker.record_success()
                outcome = True
                yield first
                async for batch in batches:
                    yield batch
                return  # the whole answer came: never from a second endpoint
            finally:
                if not outcome:
                    breaker.release()
                self.in_flight[index] -= 1
                await batches.aclose()

    # -- status and models ----------------------------------------------------------------
    async def status(self) -> ProviderStatus:
        """Available when any replica is; details name each endpoint's health and breaker."""
        statuses = await asyncio.gather(*(r.status() for r in self.replicas))
        details = {
            f"replica {i}": f"{endpoint_of(r)} {'up' if s.available else 'down'}, breaker {b.state}"
            for i, (r, s, b) in enumerate(zip(self.replicas, statuses, self.breakers, strict=True))
        }
        up = [s for s in statuses if s.available]
        if up:
            first = up[0]
            return ProviderStatus(self.name, True, first.endpoint, first.version, details=details)
        pairs = zip(self.replicas, statuses, strict=True)
        errors = "; ".join(f"{s.endpoint or endpoint_of(r)}: {s.error}" for r, s in pairs)
        return ProviderStatus(self.name, False, self.endpoints[0], None,
                              error=f"No replica of {self.display_name} is available ({errors}).",
                              details=details, exception=statuses[0].exception)  # fmt: skip

    async def list_downloaded_models(self) -> list[ModelInfo]:
        """The models of every replica that answers (each once)."""
        found: dict[str, ModelInfo] = {}
        calls = (r.list_downloaded_models() for r in self.replicas)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if len(errors) == len(outcomes):
            raise errors[0]
        for models in outcomes:
            if not isinstance(models, BaseException):
                for info in models:
                    found.setdefault(info.id, info)
        return list(found.values())

    async def _on_every(self, what: str, action: Callable[[Provider], Awaitable[Any]]) -> None:
        failed: list[tuple[str, ProviderError]] = []
        for provider in self.replicas:
            try:
                await action(provider)
            except ProviderError as exc:
                failed.append((endpoint_of(provider), exc))
        if not failed:
            return
        bad = [where for where, _ in failed]
        done = [e for e in self.endpoints if e not in bad]
        first = failed[0][1]
        message = f"{what} failed on {', '.join(bad)} ({first.message})"
        message += f"; done on {', '.join(done)}." if done else "."
        error = copy.copy(first)  # the first failure's type and fields, with the whole story
        error.message, error.args = message, (message,)
        raise error from first

    async def delete_model(self, model: str) -> None:
        """Delete ``model`` on every replica; the error says which ones failed."""
        await self._on_every(f"Deleting '{model}'", lambda p: p.delete_model(model))

    async def load_model(self, model: str) -> None:
        """Load ``model`` on every replica."""
        await self._on_every(f"Loading '{model}'", lambda p: p.load_model(model))

    async def unload_model(self, model: str) -> None:
        """Unload ``model`` on every replica."""
        await self._on_every(f"Unloading '{model}'", lambda p: p.unload_model(model))

    async def pull_model(self, model: str) -> AsyncGenerator[DownloadStatus, None]:
        """Pull ``model`` on every replica in turn; each status names its endpoint."""
        for provider in self.replicas:
            where = endpoint_of(provider)
            stream = provider.pull_model(model)
            try:
                async for status in stream:
                    yield dataclasses.replace(status, status=f"{where}: {status.status}", complete=False)
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        yield DownloadStatus(model, f"pulled on {', '.join(self.endpoints)}", complete=True)

    async def aclose(self) -> None:
        """Close every replica."""
        for provider in self.replicas:
            await provider.aclose()


def replicate(
    provider: Provider,
    make: Callable[[str], Provider],
    breaker: BreakerConfig,
    on_event: Callable[[RecoveryEvent], None] | None = None,
) -> Provider:
    """``provider`` as a :class:`ReplicaSet` when its config names several ``endpoints``
    (``make(endpoint)`` creates each other replica), else ``provider`` itself."""
    endpoints: list[str] = list(getattr(provider.config, "endpoints", None) or [])
    if len(endpoints) < 2:
        return provider
    first = endpoint_of(provider)
    others = [make(e) for e in endpoints if e.rstrip("/") != first.rstrip("/")]
    return ReplicaSet([provider, *others], breaker, on_event=on_event)
