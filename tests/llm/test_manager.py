"""LLMManager and the provider factory, over the in-memory provider."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from papin.llm import (
    ConfigurationError,
    DownloadStatus,
    GenerationOptions,
    LLMConfig,
    LLMManager,
    ModelNotFoundError,
    ProviderUnavailableError,
    UnsupportedOperationError,
    create_llm_manager,
    get_provider_factory,
)
from papin.llm.discovery import Discovery
from papin.llm.factory import ProviderFactory, reset_provider_factory
from papin.llm.provider import Provider
from tests.contract.backends import closed_port_url
from tests.fakes.llama_server import FakeLlamaServer
from tests.fakes.memory import MemoryProvider
from tests.fakes.ollama import FakeOllama
from tests.fakes.ollama_models import FakeLoadedModel
from tests.fakes.vllm import FakeVLLM


@pytest.fixture
def factory() -> ProviderFactory:
    f = get_provider_factory()
    f.register_provider("memory", MemoryProvider)
    return f


def manager(**settings: Any) -> LLMManager:
    cfg = LLMConfig(provider_type="memory", provider_config=settings, auto_discover=False)
    return LLMManager.with_config(cfg)


def provider_of(m: LLMManager) -> MemoryProvider:
    p = m.current_provider
    assert isinstance(p, MemoryProvider)
    return p


# -- factory ----------------------------------------------------------------------------------
def test_factory_is_a_lazy_thread_safe_singleton() -> None:
    reset_provider_factory()
    seen: list[ProviderFactory] = []
    threads = [threading.Thread(target=lambda: seen.append(get_provider_factory())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(f) for f in seen}) == 1
    reset_provider_factory()
    assert get_provider_factory() is not seen[0]


def test_factory_registers_and_creates(factory: ProviderFactory) -> None:
    assert "ollama" in factory.registered_providers()
    assert "memory" in factory.registered_providers()
    p = factory.create_provider("memory", {"models": ["a"]})
    assert isinstance(p, MemoryProvider) and p.installed == ["a"]
    with pytest.raises(ConfigurationError, match="Unknown provider 'zzz'"):
        factory.create_provider("zzz")
    with pytest.raises(ConfigurationError, match="settings for provider 'memory'.*models"):
        factory.create_provider("memory", {"models": 3})
    factory.set_default_provider("memory")
    assert factory.default_provider == "memory"
    with pytest.raises(ConfigurationError):
        factory.set_default_provider("zzz")


def test_factory_lazy_import_path_and_bad_path(factory: ProviderFactory) -> None:
    factory.register_provider("mem2", "tests.fakes.memory:MemoryProvider")
    assert factory.provider_class("mem2") is MemoryProvider
    factory.register_provider("broken", "tests.fakes.memory:Nope")
    with pytest.raises(ConfigurationError, match="cannot be loaded"):
        factory.provider_class("broken")
    factory.register_provider("notprov", "tests.fakes.memory:MemoryConfig")
    with pytest.raises(ConfigurationError, match="not a papin Provider"):
        factory.provider_class("notprov")


def test_entry_points_are_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata as md

    ep = md.EntryPoint("thirdparty", "tests.fakes.memory:MemoryProvider", "papin.providers")

    def fake_entry_points(group: str) -> list[md.EntryPoint]:
        return [ep] if group == "papin.providers" else []

    monkeypatch.setattr(md, "entry_points", fake_entry_points)
    f = ProviderFactory()
    assert "thirdparty" in f.registered_providers()
    assert f.provider_class("thirdparty") is MemoryProvider


async def test_factory_checks_availability(factory: ProviderFactory) -> None:
    statuses = await factory.check_providers(
        {"memory": {"available": True}, "ollama": {"endpoint": "http://127.0.0.1:1"}}
    )
    assert statuses["memory"].available
    assert not statuses["ollama"].available and "not running" in (statuses["ollama"].error or "")
    available = await factory.available_providers({"ollama": {"endpoint": "http://127.0.0.1:1"}})
    assert "memory" in available and "ollama" not in available


# -- selection ----------------------------------------------------------------------------------
async def test_initialize_uses_configured_provider(factory: ProviderFactory) -> None:
    m = manager()
    await m.initialize()
    assert m.provider_choice is not None
    assert m.provider_choice.provider == "memory"
    assert "configured provider 'memory' is available" in m.provider_choice.reason
    assert factory.default_provider == "memory"
    await m.aclose()


async def test_initialize_reports_why_nothing_is_available(factory: ProviderFactory) -> None:
    m = manager(available=False)
    with pytest.raises(ProviderUnavailableError, match="memory backend switched off"):
        await m.initialize()


async def test_auto_discover_falls_back(factory: ProviderFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    import papin.llm.manager as mgr

    factory.register_provider("memory_backup", MemoryProvider)
    monkeypatch.setattr(mgr, "FALLBACK_PROVIDERS", ("memory_backup",))
    cfg = LLMConfig(provider_type="memory", provider_config={"available": False}, auto_discover=True)
    m = LLMManager(cfg, discovery=Discovery(candidates=[], default_dirs=False))
    await m.initialize()
    assert m.provider_choice is not None
    assert "unavailable (memory backend switched off); using 'memory_backup'" in m.provider_choice.reason
    await m.aclose()


# -- choice by discovery --------------------------------------------------------------------------
def auto(
    factory: ProviderFactory,
    monkeypatch: pytest.MonkeyPatch,
    *urls: str,
    hardware: Any = None,
    **settings: Any,
) -> LLMManager:
    """A manager choosing by discovery among ``urls``, with ``memory_backup`` as the in-process
    fallback (so that nothing depends on llama-cpp-python or on what runs on this machine)."""
    import papin.llm.manager as mgr

    factory.register_provider("memory_backup", MemoryProvider)
    monkeypatch.setattr(mgr, "FALLBACK_PROVIDERS", ("memory_backup",))
    cfg = LLMConfig(auto_discover=True, monitor_for_models=False, **settings)
    return LLMManager(cfg, discovery=Discovery(candidates=list(urls), default_dirs=False), hardware=hardware)


async def test_a_discovered_server_is_used_at_its_address(
    factory: ProviderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOllama(models=["llama3.2:latest"]) as ollama:
        async with auto(factory, monkeypatch, closed_port_url(), ollama.url) as m:
            choice = m.provider_choice
            assert choice is not None and choice.provider == "ollama"
            assert choice.status.endpoint == ollama.url and m.current_provider.endpoint == ollama.url  # type: ignore[attr-defined]
            head = f"no provider configured; using 'ollama' at {ollama.url}: found ollama 0.12.6 running at"
            assert choice.reason.startswith(head)
            assert "a running server is preferred" in choice.reason
            assert choice.discovery is not None and choice.discovery.running()[0].address == ollama.url
            assert m.discovery_result is choice.discovery
            assert await m.generate_text(None, "Hi") == "The sky is blue because of Rayleigh scattering."


async def test_the_configured_kind_found_elsewhere_is_preferred(
    factory: ProviderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOllama(models=["a:latest"]) as ollama, FakeVLLM() as vllm:
        m = auto(factory, monkeypatch, vllm.url, ollama.url, provider_type="ollama",
                 provider_config={"endpoint": closed_port_url()})  # fmt: skip
        async with m:
            choice = m.provider_choice
            assert choice is not None and choice.provider == "ollama" and choice.status.endpoint == ollama.url
            assert "configured provider 'ollama'; 'ollama' unavailable (" in choice.reason
            assert "the configured kind of server" in choice.reason
            assert [s.provider for s in choice.tried] == ["ollama"]


async def test_a_gpu_backed_server_is_preferred(
    factory: ProviderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOllama(models=["a:latest"]) as ollama, FakeVLLM() as vllm:
        async with auto(factory, monkeypatch, ollama.url, vllm.url) as m:
            choice = m.provider_choice
            assert choice is not None and choice.provider == "vllm" and choice.status.endpoint == vllm.url
            assert "GPU-backed: vLLM serves models from the GPU" in choice.reason


@pytest.mark.parametrize("gpu", [True, False], ids=["gpu-machine", "cpu-machine"])
async def test_hardware_decides_between_a_cpu_server_and_the_embedded_provider(
    factory: ProviderFactory, monkeypatch: pytest.MonkeyPatch, gpu: bool
) -> None:
    hardware = SimpleNamespace(has_gpu=gpu, llama=SimpleNamespace(gpu_offload=gpu))
    with FakeOllama(models=["a:latest"]) as ollama:
        ollama.loaded["a:latest"] = FakeLoadedModel("a:latest", 10, 0, 4096, None)  # in RAM, not VRAM
        async with auto(factory, monkeypatch, ollama.url, hardware=hardware) as m:
            choice = m.provider_choice
            assert choice is not None
            if gpu:
                assert choice.provider == "memory_backup" and "this machine has a GPU" in choice.reason
            else:
                assert choice.provider == "ollama" and "running on the CPU" in choice.reason


async def test_a_server_that_is_not_usable_is_skipped_with_its_reason(
    factory: ProviderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeLlamaServer() as llama:
        llama.loading = True
        async with auto(factory, monkeypatch, llama.url, closed_port_url()) as m:
            choice = m.provider_choice
            assert choice is not None and choice.provider == "memory_backup"
            assert [s.provider for s in choice.tried] == ["llamacpp_server"]
            assert "'llamacpp_server' unavailable (" in choice.reason
            assert choice.discovery is not None and choice.discovery.backends[0].health == "loading"


async def test_nothing_running_falls_back_to_the_embedded_provider(
    factory: ProviderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with auto(factory, monkeypatch, closed_port_url(), closed_port_url()) as m:
        choice = m.provider_choice
        assert choice is not None and choice.provider == "memory_backup"
        assert choice.reason == (
            "no provider configured; using 'memory_backup' at memory://: no running LLM server found "
            "(2 addresses probed); running models in-process"
        )


async def test_nothing_available_says_what_discovery_did(
    factory: ProviderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = auto(factory, monkeypatch, closed_port_url(), provider_config={})
    monkeypatch.setattr(m.config, "providers", {"memory_backup": {"available": False}})
    with pytest.raises(ProviderUnavailableError, match="discovery probed 1 addresses and found 0 running"):
        await m.initialize()


async def test_without_auto_discover_nothing_is_probed(
    factory: ProviderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import papin.llm.manager as mgr

    monkeypatch.setattr(mgr, "NO_DISCOVERY_ORDER", ("memory",))
    with FakeOllama(models=["a:latest"]) as ollama:
        cfg = LLMConfig(auto_discover=False, monitor_for_models=False)
        async with LLMManager(cfg, discovery=Discovery(candidates=[ollama.url])) as m:
            assert m.provider_choice is not None and m.provider_choice.provider == "memory"
            assert m.provider_choice.discovery is None
        assert ollama.requests == []


# -- model resolution ---------------------------------------------------------------------------
async def test_model_resolution_order(factory: ProviderFactory) -> None:
    m = manager(models=["first", "second"])
    assert await m.resolve_model("explicit") == "explicit"
    assert await m.resolve_model(None) == "first"  # first installed
    provider_of(m).loaded.append("second")
    assert await m.resolve_model("") == "second"  # a loaded model wins over installed
    m.config = m.config.model_copy(update={"default_model": "configured"})
    assert await m.resolve_model(None) == "configured"
    m.select_model("selected")
    assert await m.resolve_model(None) == "selected"
    with pytest.raises(ConfigurationError):
        m.select_model(" ")
    await m.aclose()


async def test_no_model_anywhere_is_actionable(factory: ProviderFactory) -> None:
    m = manager(models=[])
    with pytest.raises(ModelNotFoundError, match="papin models pull"):
        await m.generate_text(None, "hi")
    await m.aclose()


# -- generation ---------------------------------------------------------------------------------
async def test_seed_usage_examples(factory: ProviderFactory) -> None:
    m = manager(models=["llama2:7b"])
    await m.initialize()
    text = await m.generate_text("llama2:7b", "Tell me a story about a robot.", None)
    assert text == "Hello, world"
    seen: list[str] = []
    result = await m.generate_text_streaming(
        "llama2:7b", "Tell me a story about a robot.", None, lambda c: seen.append(c) is None
    )
    assert seen == ["Hello", ",", " world"]
    assert result.finish_reason == "stop" and result.stats.output_tokens == 3
    await m.aclose()
    assert provider_of_closed(m)


def provider_of_closed(m: LLMManager) -> bool:
    return m.provider_choice is None


async def test_callback_false_stops_generation(factory: ProviderFactory) -> None:
    m = manager(tokens=[str(i) for i in range(100)])
    seen: list[str] = []

    def cb(chunk: str) -> bool:
        seen.append(chunk)
        return len(seen) < 3

    result = await m.generate_text_streaming(None, "count", None, cb)
    assert result.finish_reason == "cancelled"
    assert result.text == "012"
    assert provider_of(m).produced == 3  # the provider was not asked for more
    await m.aclose()


async def test_async_callback_is_awaited(factory: ProviderFactory) -> None:
    m = manager()

    async def cb(chunk: str) -> bool:
        await asyncio.sleep(0)
        return chunk != ","

    result = await m.generate_text_streaming(None, "x", None, cb)
    assert result.text == "Hello," and result.finish_reason == "cancelled"
    await m.aclose()


async def test_cancelling_the_task_stops_the_provider(factory: ProviderFactory) -> None:
    m = manager(tokens=["t"] * 1000, token_delay=0.01)
    task = asyncio.create_task(m.generate_text(None, "long"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    produced = provider_of(m).produced
    await asyncio.sleep(0.1)
    assert provider_of(m).produced == produced < 1000
    await m.aclose()


async def test_stream_iterator_and_chat(factory: ProviderFactory) -> None:
    m = manager()
    chunks = [c async for c in m.stream(None, "x", GenerationOptions(max_tokens=2))]
    assert [c.text for c in chunks] == ["Hello", ",", ""]
    assert chunks[-1].done and chunks[-1].stats is not None
    assert chunks[-1].stats.finish_reason == "length"
    reply = await m.chat(None, [{"role": "user", "content": "hi"}])
    assert reply.text == "Hello, world"
    call = provider_of(m).calls[-1]
    assert call[0] == "generate" and call[1][1][0].content == "hi"
    with pytest.raises(ConfigurationError, match="Invalid chat message"):
        await m.chat(None, [{"nope": 1}])
    await m.aclose()


async def test_auto_pull_reports_progress(factory: ProviderFactory) -> None:
    m = manager(models=[], pullable=["new:latest"])
    progress: list[DownloadStatus] = []
    text = await m.generate_text("new:latest", "hi", on_download=progress.append)
    assert text == "Hello, world"
    assert progress[-1].complete and progress[-1].progress == 1.0
    assert [c[0] for c in provider_of(m).calls] == ["generate", "pull", "generate"]
    await m.aclose()


async def test_auto_pull_off_says_how_to_pull(factory: ProviderFactory) -> None:
    cfg = LLMConfig(provider_type="memory", provider_config={"models": []}, auto_pull=False)
    m = LLMManager.with_config(cfg)
    with pytest.raises(ModelNotFoundError, match="auto_pull true"):
        await m.generate_text("missing", "hi")
    await m.aclose()


async def test_auto_pull_of_unknown_model_fails_clearly(factory: ProviderFactory) -> None:
    m = manager(models=[])
    with pytest.raises(ModelNotFoundError, match="cannot pull nothing"):
        await m.generate_text("nothing", "hi")
    await m.aclose()


# -- model management -----------------------------------------------------------------------------
async def test_model_management_passthrough(factory: ProviderFactory) -> None:
    m = manager(models=["a"], pullable=["b"])
    assert [x.id for x in await m.list_downloaded_models()] == ["a"]
    status = await m.download_model("b")
    assert status.complete
    assert [x.id for x in await m.list_available_models()] == ["a", "b"]
    assert (await m.get_model_info("b")).id == "b"
    await m.load_model("a")
    assert await m.is_model_loaded("a")
    assert [x.id for x in await m.list_loaded_models()] == ["a"]
    await m.unload_model("a")
    assert not await m.is_model_loaded("a")
    await m.delete_model("a")
    with pytest.raises(ModelNotFoundError):
        await m.get_model_info("a")
    info = await m.get_system_info()
    assert info["provider"] == "Memory" and info["version"] == "1.0"
    await m.aclose()


async def test_background_download_and_cancel(factory: ProviderFactory) -> None:
    m = manager(models=[], pullable=["b"])
    await m.start_download("b")
    for _ in range(100):
        st = await m.get_download_status("b")
        if st is not None and st.complete:
            break
        await asyncio.sleep(0.01)
    st = await m.get_download_status("b")
    assert st is not None and st.complete
    await m.aclose()


async def test_unsupported_operation_is_clear() -> None:
    class Minimal(Provider):
        from papin.llm.datatypes import ProviderType as _PT

        provider_type = _PT.OLLAMA
        display_name = "Minimal"

        async def status(self) -> Any:
            raise NotImplementedError

        async def list_downloaded_models(self) -> Any:
            return []

        def stream_generate(self, model: str, prompt: str, options: Any = None) -> Any:
            raise NotImplementedError

    p = Minimal()
    with pytest.raises(UnsupportedOperationError, match="Minimal provider does not support deleting"):
        await p.delete_model("x")
    with pytest.raises(UnsupportedOperationError, match="downloading"):
        await p.start_download("x")
    with pytest.raises(UnsupportedOperationError, match="loading"):
        await p.load_model("x")
    with pytest.raises(UnsupportedOperationError, match="chat"):
        p.stream_chat("x", [])


# -- configuration applied by the manager: default options, legacy migration, monitoring -------
async def test_default_options_reach_the_backend_and_a_call_overrides_them() -> None:
    with FakeOllama(models=["llama3.2"]) as fake:
        config = LLMConfig(
            provider_type="ollama",
            provider_config={"endpoint": fake.url},
            default_options={"temperature": 0.2, "top_k": 7},
        )
        async with LLMManager(config) as manager:
            await manager.generate_text("llama3.2", "hi")
            sent = fake.requests[-1].json["options"]
            assert sent["temperature"] == 0.2 and sent["top_k"] == 7
            await manager.generate_text("llama3.2", "hi", GenerationOptions(temperature=0.9))
            sent = fake.requests[-1].json["options"]
            assert sent["temperature"] == 0.9 and sent["top_k"] == 7


def test_create_llm_manager_migrates_a_legacy_config_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from papin.llm.store import ModelStore
    from tests.ggufs import write_gguf

    home = Path(os.environ["HOME"])
    model = write_gguf(home / "models" / "medium.gguf")
    legacy = home / ".papin" / "llm_config.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"model_id": "medium", "model_path": str(model), "context_size": 2048}))
    before = legacy.read_bytes()
    store_dir = tmp_path / "store"
    monkeypatch.setenv("PAPIN_MODELS_DIR", str(store_dir))
    manager = create_llm_manager()
    report = manager.migration_report
    assert report is not None and report.status == "completed", report
    assert manager.config.default_model == "medium" and manager.config.provider_type == "llamacpp"
    assert manager.config.settings_for("llamacpp")["context_size"] == 2048
    assert ModelStore(store_dir).get("medium").in_place
    assert legacy.read_bytes() == before  # the legacy file is never touched
    again = create_llm_manager()
    assert again.migration_report is None and again.config.default_model == "medium"
    assert create_llm_manager(config=LLMConfig()).migration_report is None  # explicit config: no migration


async def test_the_monitor_starts_with_initialize_unless_turned_off(factory: ProviderFactory) -> None:
    factory.register_provider("memory", MemoryProvider)
    config = LLMConfig(provider_type="memory", auto_discover=False)
    async with LLMManager(config, factory=factory, discovery=Discovery(candidates=[], default_dirs=[])) as m:
        assert m.model_monitor is not None and m.model_monitor.running
    assert m.model_monitor is None
    quiet = LLMManager(config, factory=factory, discovery=Discovery(candidates=[], default_dirs=[]))
    quiet.monitor_on_initialize = False
    async with quiet:
        assert quiet.model_monitor is None
