"""WrapperProvider delegates every method of Provider; subclasses override what they change."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

from papin.llm.datatypes import Capability, GenerationChunk
from papin.llm.options import GenerationOptions
from papin.llm.provider import Provider
from papin.llm.wrapper import WrapperProvider
from tests.fakes.memory import MemoryConfig, MemoryProvider

#: Instance attributes a wrapper copies from the wrapped provider instead of delegating.
COPIED = {"display_name", "description", "capabilities"}


def public_members(cls: type) -> set[str]:
    return {
        name
        for name, value in inspect.getmembers(cls)
        if not name.startswith("_")
        and not inspect.isclass(value)  # config_class: what the factory builds, not behaviour
        and (callable(value) or isinstance(value, property))
    }


def test_every_public_method_and_property_is_delegated() -> None:
    missing = public_members(Provider) - set(vars(WrapperProvider)) - COPIED
    assert missing == set(), f"WrapperProvider does not delegate {sorted(missing)}"
    assert public_members(Provider) <= public_members(WrapperProvider)


async def test_it_behaves_as_the_wrapped_provider() -> None:
    inner = MemoryProvider(MemoryConfig(pullable=["new:latest"]))
    outer = WrapperProvider(inner)
    assert outer.name == "memory" and outer.kind == "wrapper" and inner.kind == "memory"
    assert outer.capabilities == inner.capabilities and outer.display_name == "Memory"
    assert outer.supports(Capability.CHAT) and outer.config is inner.config
    assert (await outer.status()).endpoint == "memory://"
    assert await outer.is_available() and await outer.get_version() == "1.0"
    assert [m.id for m in await outer.list_downloaded_models()] == ["tiny:latest"]
    assert (await outer.get_model_info("tiny:latest")).id == "tiny:latest"
    await outer.download_model("new:latest")
    assert "new:latest" in inner.installed
    await outer.load_model("tiny:latest")
    assert await outer.is_model_loaded("tiny:latest") and inner.loaded == ["tiny:latest"]
    await outer.unload_model("tiny:latest")
    result = await outer.generate("tiny:latest", "Hi")
    assert result.text == "Hello, world" and result.provider == "memory"
    assert (await outer.chat("tiny:latest", [{"role": "user", "content": "Hi"}])).text == "Hello, world"
    await outer.delete_model("new:latest")
    assert "new:latest" not in inner.installed
    outer.name = "memory@here"
    assert outer.name == "memory@here" and inner.name == "memory"
    await outer.aclose()
    assert inner.closed


async def test_a_subclass_changes_one_primitive_and_every_derived_call_follows() -> None:
    class Shouting(WrapperProvider):
        async def _upper(self, chunks: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
            async for chunk in chunks:
                yield GenerationChunk(chunk.text.upper(), done=chunk.done, stats=chunk.stats)

        def stream_generate(
            self, model: str, prompt: str, options: GenerationOptions | None = None
        ) -> AsyncIterator[GenerationChunk]:
            return self._upper(super().stream_generate(model, prompt, options))

    async with Shouting(MemoryProvider()) as llm:
        assert await llm.generate_text("tiny:latest", "Hi") == "HELLO, WORLD"
        seen: list[str] = []
        result = await llm.generate_text_streaming("tiny:latest", "Hi", None, seen.append)
        assert seen == ["HELLO", ",", " WORLD"] and result.text == "HELLO, WORLD"


async def test_a_third_party_provider_is_named_by_a_string() -> None:
    """No enum member: the class says its kind, the registry knows it by that name, and the
    configuration and the manager take it as written."""
    from typing import ClassVar

    from papin.llm import LLMConfig, LLMManager
    from papin.llm.factory import get_provider_factory

    class AcmeProvider(MemoryProvider):
        kind: ClassVar[str] = "acme"

    get_provider_factory().register_provider("acme", AcmeProvider)
    assert AcmeProvider.provider_type is None and AcmeProvider().name == "acme"
    manager = LLMManager.with_config(LLMConfig(provider_type="acme", auto_discover=False))
    async with manager:
        await manager.initialize()
        assert manager.current_provider.name == "acme"
        assert (await manager.generate("tiny:latest", "Hi")).provider == "acme"
    # a class registered under another name is known by that name
    get_provider_factory().register_provider("acme_eu", AcmeProvider)
    assert get_provider_factory().create_provider("acme_eu").name == "acme_eu"
