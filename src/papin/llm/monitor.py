"""Model monitoring: notice models added to or removed from the backends and local stores.

A :class:`ModelMonitor` polls a *snapshot* function (which models each source has now) in a
background asyncio task, compares it with the previous snapshot and tells subscribers what
changed, as :class:`ModelChange` events, through callbacks (plain functions or coroutine
functions) and async iterators. When nothing changes it polls less and less often (the
interval doubles up to ``max_interval``); a change brings it back to ``min_interval``. An
error in the snapshot or in a subscriber is logged and counted, never fatal. :meth:`stop`
cancels the task and waits for it, so no task or connection outlives the monitor.

The manager starts one when ``monitor_for_models`` is on (see
:meth:`papin.llm.manager.LLMManager.start_model_monitor`) with :func:`discovery_snapshot`:
the discovered servers, the active provider, papin's model store and the model files on disk.

Example::

    monitor = manager.model_monitor          # after await manager.initialize()
    monitor.subscribe(lambda change: print(change.kind, change.model, change.where))
    async for change in manager.model_changes():
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from papin.llm.discovery import Discovery, DiscoveryResult
    from papin.llm.provider import Provider
    from papin.llm.store import ModelStore

__all__ = [
    "ChangeCallback",
    "ModelChange",
    "ModelMonitor",
    "Snapshot",
    "SourceModels",
    "diff_snapshots",
    "discovery_snapshot",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceModels:
    """The models one source has: a server, papin's store, or the model files on disk.

    ``kind`` is ``"server"``, ``"provider"`` (the manager's active provider), ``"store"`` or
    ``"disk"``; ``address`` is the server's URL (``None`` for local sources).
    """

    kind: str
    provider: str | None
    address: str | None
    models: frozenset[str]


#: A snapshot: source key -> its models.
Snapshot = Mapping[str, SourceModels]


@dataclass(frozen=True, slots=True)
class ModelChange:
    """A model that appeared in or disappeared from a source."""

    kind: Literal["added", "removed"]
    model: str
    source: str
    source_kind: str
    provider: str | None
    address: str | None
    at: float

    @property
    def where(self) -> str:
        """Where, for people: ``ollama at http://127.0.0.1:11434``, ``papin's model store``..."""
        if self.address:
            return f"{self.provider} at {self.address}"
        return {"store": "papin's model store", "disk": "model files on disk"}.get(
            self.source_kind, self.source
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "kind": self.kind,
            "model": self.model,
            "source": self.source,
            "source_kind": self.source_kind,
            "provider": self.provider,
            "address": self.address,
            "at": self.at,
        }


ChangeCallback = Callable[[ModelChange], Any]


def diff_snapshots(old: Snapshot, new: Snapshot, *, at: float | None = None) -> list[ModelChange]:
    """The changes from ``old`` to ``new`` (a source that vanished removes all its models).

    >>> a = {"s": SourceModels("store", None, None, frozenset({"x", "y"}))}
    >>> b = {"s": SourceModels("store", None, None, frozenset({"y", "z"}))}
    >>> [(c.kind, c.model) for c in diff_snapshots(a, b)]
    [('added', 'z'), ('removed', 'x')]
    """
    when = time.time() if at is None else at
    changes: list[ModelChange] = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        ref = after or before
        assert ref is not None
        was = before.models if before else frozenset()
        now = after.models if after else frozenset()
        for model in sorted(now - was):
            changes.append(ModelChange("added", model, key, ref.kind, ref.provider, ref.address, when))
        for model in sorted(was - now):
            changes.append(ModelChange("removed", model, key, ref.kind, ref.provider, ref.address, when))
    return changes


_STOP: Any = object()


class ModelMonitor:
    """Polls ``snapshot`` in the background and reports what changed.

    Args:
        snapshot: Coroutine function returning the current :data:`Snapshot`.
        min_interval, max_interval: Bounds of the polling interval, in seconds.
        backoff: Factor the interval grows by after a poll that found no change.
        on_snapshot: Called with each new snapshot and its changes (the manager keeps its
            view of the models up to date with it).
        queue_size: Events kept for a slow ``async for`` reader (older ones are dropped).
    """

    def __init__(
        self,
        snapshot: Callable[[], Awaitable[Snapshot]],
        *,
        min_interval: float = 2.0,
        max_interval: float = 60.0,
        backoff: float = 2.0,
        on_snapshot: Callable[[Snapshot, list[ModelChange]], None] | None = None,
        queue_size: int = 256,
    ) -> None:
        from papin.llm.errors import ConfigurationError

        if not 0 < min_interval <= max_interval or backoff < 1:
            raise ConfigurationError(
                "Model monitor intervals need 0 < min_interval <= max_interval and backoff >= 1; got "
                f"{min_interval}, {max_interval}, {backoff}."
            )
        self._snapshot_fn = snapshot
        self.min_interval = float(min_interval)
        self.max_interval = float(max_interval)
        self.backoff = float(backoff)
        self._on_snapshot = on_snapshot
        self._queue_size = queue_size
        self._interval = self.min_interval
        self._snapshot: dict[str, SourceModels] | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._poll_lock: asyncio.Lock | None = None
        self._callbacks: list[ChangeCallback] = []
        self._queues: set[asyncio.Queue[Any]] = set()
        self._closed = False
        #: Polls done, polls that failed, and the last failure.
        self.polls = 0
        self.errors = 0
        self.last_error: str | None = None

    # -- state ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the background task is running."""
        return self._task is not None and not self._task.done()

    @property
    def interval(self) -> float:
        """Seconds until the next poll after the current one (grows while nothing changes)."""
        return self._interval

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest snapshot (``None`` before the first poll)."""
        return self._snapshot

    # -- subscribers ------------------------------------------------------------------------
    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(change)`` for each change (it may be a coroutine function);
        returns a function that unsubscribes it. A failing callback is logged, not fatal."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    async def events(self) -> AsyncGenerator[ModelChange, None]:
        """Changes as they happen (``async for``); ends when the monitor stops."""
        if self._closed:
            return
        queue: asyncio.Queue[Any] = asyncio.Queue(self._queue_size)
        self._queues.add(queue)
        try:
            while True:
                item = await queue.get()
                if item is _STOP:
                    return
                yield item
        finally:
            self._queues.discard(queue)

    @staticmethod
    def _offer(queue: asyncio.Queue[Any], item: Any) -> None:
        while True:
            try:
                queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # drop the oldest for a reader that fell behind

    async def _notify(self, changes: list[ModelChange]) -> None:
        for change in changes:
            for queue in list(self._queues):
                self._offer(queue, change)
            for callback in list(self._callbacks):
                try:
                    outcome = callback(change)
                    if inspect.isawaitable(outcome):
                        await outcome
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("A model-change subscriber failed (ignored)")

    # -- polling ----------------------------------------------------------------------------
    async def check_now(self) -> list[ModelChange]:
        """Poll now (also when not started); returns the changes (none for the first poll,
        which only records the baseline). Never raises for a failing snapshot."""
        if self._poll_lock is None:
            self._poll_lock = asyncio.Lock()
        async with self._poll_lock:
            self.polls += 1
            try:
                current = dict(await self._snapshot_fn())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("Model monitor: taking a snapshot failed: %s", self.last_error)
                self._interval = min(self._interval * self.backoff, self.max_interval)
                return []
            previous, self._snapshot = self._snapshot, current
            changes = [] if previous is None else diff_snapshots(previous, current)
            if changes:
                self._interval = self.min_interval
            elif previous is not None:
                self._interval = min(self._interval * self.backoff, self.max_interval)
            if self._on_snapshot is not None:
                try:
                    self._on_snapshot(current, changes)
                except Exception:
                    log.exception("Model monitor: the snapshot handler failed (ignored)")
        await self._notify(changes)  # outside the lock: a subscriber may call check_now()
        return changes

    def wake(self) -> None:
        """Poll as soon as possible (and reset the interval to ``min_interval``)."""
        self._interval = self.min_interval
        if self._wake is not None:
            self._wake.set()

    async def _run(self, delay: float) -> None:
        assert self._wake is not None
        wait = delay
        while True:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            try:
                await self.check_now()
            except asyncio.CancelledError:
                raise
            except Exception:  # pragma: no cover - check_now reports its own failures
                log.exception("Model monitor poll failed (ignored)")
            wait = self._interval

    def start(self, *, delay: float | None = None) -> ModelMonitor:
        """Start polling on the running event loop; the first poll (the baseline) comes after
        ``delay`` seconds (default ``min_interval``). Starting a running monitor does nothing."""
        if self.running:
            return self
        self._closed = False
        self._wake = asyncio.Event()
        first = self.min_interval if delay is None else max(0.0, delay)
        self._task = asyncio.get_running_loop().create_task(self._run(first), name="papin-model-monitor")
        return self

    async def stop(self) -> None:
        """Stop polling and end every ``events()`` iterator; waits for the task to finish."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in list(self._queues):
            self._offer(queue, _STOP)

    async def __aenter__(self) -> ModelMonitor:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


# -- the manager's snapshot ---------------------------------------------------------------------
def discovery_snapshot(
    discovery: Discovery,
    *,
    store: ModelStore | None = None,
    provider: Callable[[], Provider | None] | None = None,
    on_result: Callable[[DiscoveryResult], None] | None = None,
    files: bool = True,
) -> Callable[[], Awaitable[Snapshot]]:
    """A snapshot function over the discovered servers (probed afresh each time), the active
    ``provider`` (its installed models; kept as before when listing fails), papin's model
    ``store`` and the model files on disk. ``on_result`` sees each discovery result."""
    from papin.llm.transport.base import HttpProvider

    previous: dict[str, SourceModels] = {}

    async def take() -> Snapshot:
        result = await discovery.discover(refresh=True, servers=True, files=files, installed=False)
        if on_result is not None:
            on_result(result)
        snap: dict[str, SourceModels] = {}
        active = provider() if provider is not None else None
        active_endpoint = active.endpoint if isinstance(active, HttpProvider) else None
        if active is not None and active_endpoint:
            key = f"{active.name}@{active_endpoint}"
            try:
                models = frozenset(m.id for m in await active.list_downloaded_models())
                snap[key] = SourceModels("provider", active.name, active_endpoint, models)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unknown is not empty: keep what it had
                log.debug("Model monitor: listing %s failed: %s", key, exc)
                if key in previous:
                    snap[key] = previous[key]
        for backend in result.backends:
            if backend.health != "ready" or backend.address == active_endpoint:
                continue
            snap[f"{backend.provider}@{backend.address}"] = SourceModels(
                "server", backend.provider, backend.address, frozenset(backend.models)
            )
        if store is not None:
            stored = await asyncio.to_thread(store.list)
            snap["store"] = SourceModels("store", "llamacpp", None, frozenset(m.id for m in stored))
        if files:
            snap["disk"] = SourceModels(
                "disk", None, None, frozenset(f.name for f in result.model_files if f.usable)
            )
        previous.clear()
        previous.update(snap)
        return snap

    return take
