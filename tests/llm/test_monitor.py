"""The model monitor: changes noticed, subscribers told, back-off, errors survived, clean stop."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from papin.llm.config import LLMConfig
from papin.llm.discovery import Discovery
from papin.llm.factory import ProviderFactory, get_provider_factory
from papin.llm.manager import LLMManager
from papin.llm.monitor import ModelChange, ModelMonitor, Snapshot, SourceModels, discovery_snapshot
from papin.llm.store import ModelStore
from tests.fakes.memory import MemoryProvider
from tests.fakes.ollama import FakeOllama
from tests.ggufs import write_gguf


class Script:
    """A snapshot function whose answers the test sets."""

    def __init__(self) -> None:
        self.models: set[str] = {"a"}
        self.fail = False
        self.calls = 0

    async def __call__(self) -> Snapshot:
        self.calls += 1
        if self.fail:
            raise RuntimeError("backend exploded")
        return {"s": SourceModels("server", "ollama", "http://x", frozenset(self.models))}


def other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_first_poll_is_a_baseline_then_changes_are_reported() -> None:
    script = Script()
    monitor = ModelMonitor(script, min_interval=0.01, max_interval=1)
    assert await monitor.check_now() == []  # baseline
    script.models.add("b")
    (added,) = await monitor.check_now()
    assert (added.kind, added.model, added.provider, added.address) == ("added", "b", "ollama", "http://x")
    assert added.where == "ollama at http://x"
    script.models.discard("a")
    (removed,) = await monitor.check_now()
    assert (removed.kind, removed.model) == ("removed", "a")
    assert monitor.snapshot is not None and monitor.snapshot["s"].models == {"b"}


async def test_backoff_grows_while_nothing_changes_and_resets_on_a_change() -> None:
    script = Script()
    monitor = ModelMonitor(script, min_interval=0.01, max_interval=0.08, backoff=2)
    await monitor.check_now()
    intervals = []
    for _ in range(5):
        await monitor.check_now()
        intervals.append(monitor.interval)
    assert intervals == [0.02, 0.04, 0.08, 0.08, 0.08]
    script.models.add("new")
    await monitor.check_now()
    assert monitor.interval == 0.01


async def test_background_task_notifies_callbacks_and_iterators_and_stops_cleanly() -> None:
    script = Script()
    monitor = ModelMonitor(script, min_interval=0.01, max_interval=0.05)
    seen: list[ModelChange] = []
    async_seen: list[str] = []

    async def async_callback(change: ModelChange) -> None:
        await asyncio.sleep(0)
        async_seen.append(change.model)

    def failing(change: ModelChange) -> None:
        raise ValueError("subscriber bug")

    monitor.subscribe(failing)
    unsubscribe = monitor.subscribe(seen.append)
    monitor.subscribe(async_callback)
    received: list[ModelChange] = []

    async def read() -> None:
        async for change in monitor.events():
            received.append(change)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)
    monitor.start(delay=0)
    assert monitor.running
    await asyncio.sleep(0.03)  # the baseline is taken
    script.models.add("b")
    async with asyncio.timeout(2):
        while not received:
            await asyncio.sleep(0.005)
    assert [c.model for c in received] == ["b"] and [c.model for c in seen] == ["b"] and async_seen == ["b"]
    unsubscribe()
    script.models.add("c")
    async with asyncio.timeout(2):
        while len(received) < 2:
            await asyncio.sleep(0.005)
    assert [c.model for c in seen] == ["b"]  # unsubscribed
    await monitor.stop()
    async with asyncio.timeout(1):
        await reader  # the iterator ended with the monitor
    assert not monitor.running and other_tasks() == set()
    assert [c async for c in monitor.events()] == []  # a stopped monitor's iterator ends at once


async def test_snapshot_errors_are_counted_and_survived() -> None:
    script = Script()
    monitor = ModelMonitor(script, min_interval=0.01, max_interval=0.02)
    monitor.start(delay=0)
    await asyncio.sleep(0.03)
    script.fail = True
    async with asyncio.timeout(2):
        while monitor.errors < 2:
            await asyncio.sleep(0.005)
    assert monitor.running and "backend exploded" in (monitor.last_error or "")
    script.fail = False
    script.models.add("z")
    changes: list[ModelChange] = []
    monitor.subscribe(changes.append)
    async with asyncio.timeout(2):
        while not changes:
            await asyncio.sleep(0.005)
    assert changes[0].model == "z"
    await monitor.stop()
    await monitor.stop()  # idempotent


async def test_stop_during_a_slow_poll_cancels_it() -> None:
    started = asyncio.Event()

    async def slow() -> Snapshot:
        started.set()
        await asyncio.sleep(30)
        return {}

    monitor = ModelMonitor(slow, min_interval=0.01)
    monitor.start(delay=0)
    await started.wait()
    async with asyncio.timeout(1):
        await monitor.stop()
    assert other_tasks() == set()


def test_invalid_intervals_are_refused() -> None:
    from papin.llm.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="min_interval"):
        ModelMonitor(Script(), min_interval=2, max_interval=1)


# -- with discovery, a fake Ollama and papin's store ------------------------------------------------
async def test_models_added_to_and_removed_from_a_fake_ollama_arrive_as_events(tmp_path: Path) -> None:
    with FakeOllama(models=["llama3.2:latest"]) as ollama:
        d = Discovery(candidates=[ollama.url], default_dirs=False)
        store = ModelStore(tmp_path / "store")
        monitor = ModelMonitor(discovery_snapshot(d, store=store), min_interval=0.02, max_interval=0.1)
        monitor.start(delay=0)
        events = monitor.events()
        try:
            async with asyncio.timeout(5):
                while monitor.snapshot is None:
                    await asyncio.sleep(0.01)
                ollama.add_model("qwen2.5:7b")
                added = await anext(events)
                assert (added.kind, added.model, added.address) == ("added", "qwen2.5:7b", ollama.url)
                ollama.models.pop("llama3.2:latest")
                removed = await anext(events)
                assert (removed.kind, removed.model) == ("removed", "llama3.2:latest")
                write_gguf(tmp_path / "store" / "tiny.gguf")  # a GGUF dropped into papin's store
                stored = await anext(events)
                assert (stored.kind, stored.model, stored.where) == ("added", "tiny", "papin's model store")
        finally:
            await events.aclose()  # type: ignore[attr-defined]
            await monitor.stop()
    assert other_tasks() == set()


async def test_model_files_on_disk_are_watched() -> None:
    models = Path(os.environ["HOME"]) / "models"
    d = Discovery(candidates=[], model_dirs=[models], default_dirs=False)
    monitor = ModelMonitor(discovery_snapshot(d), min_interval=0.01)
    await monitor.check_now()
    write_gguf(models / "new-model.gguf")
    (change,) = await monitor.check_now()
    assert (change.kind, change.model, change.source_kind) == ("added", "new-model.gguf", "disk")


@pytest.fixture
def factory() -> ProviderFactory:
    f = get_provider_factory()
    f.register_provider("memory", MemoryProvider)
    return f


async def test_the_manager_starts_monitoring_and_stops_it_on_close(factory: ProviderFactory) -> None:
    config = LLMConfig(provider_type="memory", provider_config={"models": ["a"]}, monitor_for_models=True)
    manager = LLMManager(config, discovery=Discovery(candidates=[], default_dirs=False))
    await manager.initialize()
    monitor = manager.model_monitor
    assert monitor is not None and monitor.running
    await manager.aclose()
    assert manager.model_monitor is None and not monitor.running and other_tasks() == set()


async def test_the_manager_view_follows_its_provider() -> None:
    with FakeOllama(models=["llama3.2:latest"]) as ollama:
        config = LLMConfig(provider_type="ollama", provider_config={"endpoint": ollama.url},
                           monitor_for_models=False)  # fmt: skip
        manager = LLMManager(config, discovery=Discovery(candidates=[], default_dirs=False))
        await manager.initialize()
        monitor = manager.start_model_monitor(min_interval=0.02, max_interval=0.1)
        changes = manager.model_changes()
        got: list[ModelChange] = []
        manager.subscribe_model_changes(got.append)
        try:
            async with asyncio.timeout(5):
                while manager.model_view is None:
                    await asyncio.sleep(0.01)
                assert manager.model_view[f"ollama@{ollama.url}"].models == {"llama3.2:latest"}
                ollama.add_model("phi3:mini")
                change = await anext(changes)
        finally:
            await changes.aclose()  # type: ignore[attr-defined]
            await manager.aclose()
    assert (change.kind, change.model, change.source_kind) == ("added", "phi3:mini", "provider")
    assert [c.model for c in got] == ["phi3:mini"]
    assert manager.model_view is not None and "phi3:mini" in manager.model_view[f"ollama@{ollama.url}"].models
    assert not monitor.running and other_tasks() == set()


async def test_monitoring_off_starts_nothing(factory: ProviderFactory) -> None:
    config = LLMConfig(provider_type="memory", monitor_for_models=False)
    async with LLMManager(config, discovery=Discovery(candidates=[], default_dirs=False)) as manager:
        assert manager.model_monitor is None
