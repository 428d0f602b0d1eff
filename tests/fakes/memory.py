"""An in-memory provider for manager, factory and facade tests (no network)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from papin.llm.datatypes import (
    Capability,
    DownloadStatus,
    GenerationChunk,
    GenerationStats,
    LoadedModel,
    ModelInfo,
    ProviderStatus,
)
from papin.llm.errors import ModelNotFoundError
from papin.llm.options import GenerationOptions
from papin.llm.provider import Messages, Provider, ProviderConfig, as_messages


class MemoryConfig(ProviderConfig):
    """Settings of the in-memory provider."""

    available: bool = True
    models: list[str] = ["tiny:latest"]
    pullable: list[str] = []
    tokens: list[str] = ["Hello", ",", " world"]
    token_delay: float = 0.0


class MemoryProvider(Provider):
    """Generates canned tokens; records what it was asked."""

    kind: ClassVar[str] = "memory"
    display_name: str = "Memory"
    capabilities: frozenset[Capability] = frozenset(Capability)
    config_class: ClassVar[type[ProviderConfig]] = MemoryConfig
    config: MemoryConfig

    def __init__(self, config: ProviderConfig | None = None) -> None:
        super().__init__(config)
        self.installed = list(self.config.models)
        self.loaded: list[str] = []
        self.calls: list[tuple[str, Any]] = []
        self.produced = 0
        self.closed = False

    async def status(self) -> ProviderStatus:
        if not self.config.available:
            return ProviderStatus(self.name, False, error="memory backend switched off")
        return ProviderStatus(self.name, True, endpoint="memory://", version="1.0")

    async def list_downloaded_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=m, name=m, provider=self.name) for m in self.installed]

    async def delete_model(self, model: str) -> None:
        if model not in self.installed:
            raise ModelNotFoundError(f"no {model}", provider=self.name, model=model)
        self.installed.remove(model)

    async def pull_model(self, model: str) -> AsyncIterator[DownloadStatus]:  # type: ignore[override]
        self.calls.append(("pull", model))
        if model not in self.config.pullable:
            raise ModelNotFoundError(f"cannot pull {model}", provider=self.name, model=model)
        for done in (0, 50, 100):
            yield DownloadStatus(model, "pulling", done, 100)
            await asyncio.sleep(0)
        self.installed.append(model)
        yield DownloadStatus(model, "success", 100, 100, complete=True)

    async def list_loaded_models(self) -> list[LoadedModel]:
        return [LoadedModel(id=m, provider=self.name) for m in self.loaded]

    async def load_model(self, model: str) -> None:
        self.loaded.append(model)

    async def unload_model(self, model: str) -> None:
        self.loaded.remove(model)

    async def _stream(
        self, model: str, what: Any, options: GenerationOptions | None
    ) -> AsyncIterator[GenerationChunk]:
        self.calls.append(("generate", (model, what, options)))
        if model not in self.installed:
            raise ModelNotFoundError(f"model '{model}' not found", provider=self.name, model=model)
        limit = options.max_tokens if options and options.max_tokens else None
        count = 0
        for token in self.config.tokens:
            if limit is not None and count >= limit:
                yield GenerationChunk(
                    "", done=True, stats=GenerationStats("length", output_tokens=count)
                )
                return
            # each token arrives from "the backend" after a wait, as with every real provider
            await asyncio.sleep(self.config.token_delay)
            self.produced += 1
            count += 1
            yield GenerationChunk(token)
        yield GenerationChunk("", done=True, stats=GenerationStats("stop", output_tokens=count))

    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncIterator[GenerationChunk]:
        return self._stream(model, prompt, options)

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncIterator[GenerationChunk]:
        return self._stream(model, as_messages(messages), options)

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()
