"""The synchronous facade, and the promise that ``import papin.llm`` stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import papin.llm
from papin.llm import ConfigurationError, LLMConfig, LLMManager, get_provider_factory
from papin.llm.sync import SyncLLMManager
from tests import REPO
from tests.fakes.memory import MemoryProvider


@pytest.fixture
def sync_manager() -> SyncLLMManager:
    get_provider_factory().register_provider("memory", MemoryProvider)
    cfg = LLMConfig(provider_type="memory", provider_config={"tokens": list("abcdef")})
    return SyncLLMManager(LLMManager.with_config(cfg))


def test_sync_facade_generates_and_streams(sync_manager: SyncLLMManager) -> None:
    with sync_manager as llm:
        llm.initialize()
        assert llm.generate_text(None, "x") == "abcdef"
        assert llm.generate(None, "x").finish_reason == "stop"
        stop = llm.generate_text_streaming(None, "x", None, lambda c: c != "c")
        assert stop.text == "abc" and stop.finish_reason == "cancelled"
        assert [c.text for c in llm.stream(None, "x")][:3] == ["a", "b", "c"]
        provider = llm.current_provider
        assert isinstance(provider, MemoryProvider)
        before = provider.produced
        for chunk in llm.stream(None, "x"):  # leaving the loop early closes the stream
            if chunk.text == "b":
                break
        assert provider.produced - before == 2
        assert llm.chat(None, [{"role": "user", "content": "hi"}]).text == "abcdef"
        assert [m.id for m in llm.list_downloaded_models()] == ["tiny:latest"]
    assert provider.closed
    with pytest.raises(ConfigurationError, match="closed"):
        sync_manager.generate_text(None, "x")


def test_lazy_exports_are_sorted_and_complete() -> None:
    assert papin.llm.__all__ == sorted(papin.llm.__all__)
    for name in papin.llm.__all__:
        assert getattr(papin.llm, name) is not None
    with pytest.raises(AttributeError):
        papin.llm.does_not_exist  # noqa: B018


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_import_does_no_io_and_loads_no_backend() -> None:
    out = _run(
        "import sys, socket\n"
        "def no_net(*a, **k): raise AssertionError('network at import')\n"
        "socket.socket.connect = no_net\n"
        "import papin.llm\n"
        "from papin.llm import create_llm_manager, GenerationOptions, LLMConfig, LLMManager, ProviderType\n"
        "from papin.llm.providers.ollama import OllamaConfig\n"
        "m = create_llm_manager()\n"
        "heavy = ('httpx', 'aiohttp', 'llama_cpp', 'starlette', 'uvicorn', 'rich')\n"
        "bad = [x for x in heavy if x in sys.modules]\n"
        "print(bad)\n"
    )
    assert out.strip() == "[]"


def test_bare_import_is_minimal() -> None:
    out = _run(
        "import sys; import papin.llm\n"
        "print(sorted(m for m in ('pydantic', 'asyncio', 'httpx') if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_one_export_table_matches_the_modules_and_the_type_checking_imports() -> None:
    """Each public name is listed once, in ``_EXPORTS``: it is defined (or re-exported) by the
    module named there and in that module's ``__all__``, and the ``TYPE_CHECKING`` imports
    that give type checkers the names are exactly the table."""
    import ast
    import importlib
    from pathlib import Path

    table = papin.llm._EXPORTS
    names = [n for ns in table.values() for n in ns]
    assert len(names) == len(set(names)) and sorted(names) == papin.llm.__all__
    for module, exported in table.items():
        mod = importlib.import_module(f"papin.llm.{module}")
        for name in exported:
            assert name in getattr(mod, "__all__", ()), f"{name} is not in papin.llm.{module}.__all__"
    tree = ast.parse(Path(papin.llm.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))
    imported = {
        node.module.removeprefix("papin.llm."): tuple(a.name for a in node.names)
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported == table


def test_test_hooks_are_not_public_names() -> None:
    assert not [n for n in papin.llm.__all__ if n.startswith("reset_")]


def test_a_facade_left_open_is_closed_when_collected() -> None:
    import gc

    get_provider_factory().register_provider("memory", MemoryProvider)
    llm = SyncLLMManager(LLMManager.with_config(LLMConfig(provider_type="memory")))
    llm.initialize()
    provider = llm.current_provider
    assert isinstance(provider, MemoryProvider) and not provider.closed
    del llm
    gc.collect()
    assert provider.closed


def test_a_script_that_never_closes_its_facade_exits_without_leak_warnings(tmp_path: object) -> None:
    """Against a real HTTP server (aiohttp sessions, the model monitor's task): nothing is
    printed about unclosed sessions or pending tasks when the script just ends."""
    script = (
        "from tests.fakes.ollama import FakeOllama\n"
        "from papin.llm.sync import create_sync_llm_manager\n"
        "with FakeOllama(['tiny']) as fake:\n"
        "    first = create_sync_llm_manager(provider='ollama', endpoint=fake.url)\n"
        "    second = create_sync_llm_manager(provider='ollama', endpoint=fake.url)\n"
        "    print(first.generate_text(None, 'hi'), second.generate_text(None, 'hi'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, timeout=60, cwd=str(REPO),
    )
    assert out.returncode == 0, out.stderr
    assert "Unclosed" not in out.stderr and "destroyed but it is pending" not in out.stderr, out.stderr
