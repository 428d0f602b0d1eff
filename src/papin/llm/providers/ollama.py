"""Ollama provider: the native ``/api/*`` REST API (NDJSON streaming).

Example::

    from papin.llm.providers.ollama import OllamaConfig, OllamaProvider

    async with OllamaProvider(OllamaConfig(endpoint="http://127.0.0.1:11434")) as ollama:
        print(await ollama.generate_text("llama3.2", "Why is the sky blue?"))
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, model_validator

from papin.llm.datatypes import (
    Capability,
    DownloadStatus,
    GenerationChunk,
    LoadedModel,
    ModelInfo,
    ProviderStatus,
    ProviderType,
)
from papin.llm.errors import (
    DownloadError,
    ModelNotFoundError,
    ProtocolError,
    ProviderError,
)
from papin.llm.options import GenerationOptions
from papin.llm.progress import ProgressMeter
from papin.llm.provider import Messages, ProviderConfig, as_messages
from papin.llm.transport.base import HttpProvider, HttpProviderConfig
from papin.llm.wire import ollama as wire
from papin.llm.wire.stream import NdjsonProgress, OllamaGeneration

if TYPE_CHECKING:
    from papin.llm.transport.client import ServiceInfo

__all__ = ["OllamaConfig", "OllamaProvider"]


class OllamaConfig(HttpProviderConfig):
    """Settings of the Ollama provider.

    ``endpoint`` accepts anything ``OLLAMA_HOST`` accepts (``127.0.0.1``, ``:11500``,
    ``https://host/sub``...); left empty it comes from ``OLLAMA_HOST``, else
    ``http://127.0.0.1:11434``. ``api_key`` defaults to ``OLLAMA_API_KEY``.
    """

    api_key_env: ClassVar[str | None] = "OLLAMA_API_KEY"

    keep_alive: float | str | None = Field(
        None, description="How long Ollama keeps a model loaded after a request ('5m', 300, -1)."
    )

    @model_validator(mode="after")
    def _resolve_endpoint(self) -> OllamaConfig:
        raw = self.endpoint or os.environ.get("OLLAMA_HOST", "")
        try:
            resolved = wire.parse_host(raw)
        except ProviderError as exc:
            raise ValueError(str(exc)) from None
        if self.endpoint != resolved:
            object.__setattr__(self, "endpoint", resolved)
        return self


class OllamaProvider(HttpProvider):
    """Talks to an Ollama server through its native REST API."""

    provider_type: ClassVar[ProviderType] = ProviderType.OLLAMA
    display_name: str = "Ollama"
    description: str = "Ollama runs open-weight models locally (https://ollama.com)."
    capabilities: frozenset[Capability] = frozenset(Capability)
    config_class: ClassVar[type[ProviderConfig]] = OllamaConfig
    config: OllamaConfig

    def service_info(self) -> ServiceInfo:
        """Ollama-specific hints for error messages."""
        from papin.llm.transport.client import ServiceInfo

        return ServiceInfo(
            provider=self.name,
            display_name=self.display_name,
            base_url=self.endpoint,
            start_hint="Start it with 'ollama serve', or set OLLAMA_HOST to where it runs.",
            auth_hint="Set the api_key (or OLLAMA_API_KEY) the server expects.",
            not_found_hint=lambda m: f"Pull it with 'papin models pull {m}' (or 'ollama pull {m}').",
            error_text=wire.error_text,
        )

    # -- status ---------------------------------------------------------------------------
    async def status(self) -> ProviderStatus:
        """Probe ``/api/version``; never raises."""
        timeout = min(self.config.timeout_seconds or 5.0, 5.0)
        try:
            data = await self.transport.request_json("GET", "/api/version", timeout=timeout)
        except ProviderError as exc:
            return ProviderStatus(self.name, False, endpoint=self.endpoint, error=str(exc), exception=exc)
        if not isinstance(data, dict) or "version" not in data:
            return ProviderStatus(
                self.name,
                False,
                endpoint=self.endpoint,
                error=f"The server at {self.endpoint} answers, but not like Ollama does.",
            )
        return ProviderStatus(self.name, True, endpoint=self.endpoint, version=str(data["version"]))

    # -- models ---------------------------------------------------------------------------
    async def list_downloaded_models(self) -> list[ModelInfo]:
        """Installed models (``GET /api/tags``)."""
        return wire.parse_models(await self.transport.request_json("GET", "/api/tags"), self.name)

    async def get_model_info(self, model: str) -> ModelInfo:
        """Model details (``POST /api/show``), including its context length."""
        data = await self.transport.request_json("POST", "/api/show", json={"model": model}, model=model)
        if not isinstance(data, dict):
            raise ProtocolError("Unexpected /api/show answer.", provider=self.name, model=model)
        return wire.parse_show(data, model, self.name)

    async def delete_model(self, model: str) -> None:
        """Delete an installed model (``DELETE /api/delete``)."""
        await self.transport.request_json(
            "DELETE", "/api/delete", json={"model": model}, model=model, allow_empty=True
        )

    async def pull_model(self, model: str) -> AsyncGenerator[DownloadStatus, None]:
        """Pull ``model``, aggregating per-layer progress into one status stream."""
        aggregator = wire.PullAggregator()
        meter = ProgressMeter(model)

        def failed(error: Any) -> ProviderError:
            text = str(error)
            cls = ModelNotFoundError if "file does not exist" in text else DownloadError
            hint = " Check the model name on https://ollama.com/library." if cls is ModelNotFoundError else ""
            return cls(f"Ollama could not pull '{model}': {text}.{hint}", provider=self.name, model=model)

        def incomplete() -> ProviderError:
            return DownloadError(
                f"Ollama's pull of '{model}' ended without reporting success (last status: "
                f"{aggregator.status!r}); the model may be incomplete. Run the pull again to resume.",
                provider=self.name,
                model=model,
            )

        parser = NdjsonProgress(
            self.name,
            is_final=lambda obj: obj.get("status") == "success",
            on_error=failed,
            on_incomplete=incomplete,
        )
        body = {"model": model, "stream": True}
        batches = self.stream_pieces("POST", "/api/pull", parser, json=body, model=model)
        try:
            async for batch in batches:
                for piece in batch:
                    done, total, status = aggregator.feed(piece.value)
                    yield meter.finish(status) if aggregator.success else meter.update(done, total, status)
        finally:
            await batches.aclose()

    # -- loading --------------------------------------------------------------------------
    async def list_loaded_models(self) -> list[LoadedModel]:
        """Models in memory (``GET /api/ps``)."""
        return wire.parse_loaded_models(await self.transport.request_json("GET", "/api/ps"), self.name)

    async def is_model_loaded(self, model: str) -> bool:
        """Whether ``model`` is in ``/api/ps`` (``x`` matches ``x:latest``)."""
        return any(wire.same_model(m.id, model) for m in await self.list_loaded_models())

    async def load_model(self, model: str) -> None:
        """Load ``model`` (a generate request without a prompt)."""
        body = wire.build_load(model, keep_alive=self.config.keep_alive, options=self._tuned(None))
        await self.transport.request_json(
            "POST",
            "/api/generate",
            json=body,
            model=model,
            timeout=self.config.first_byte_timeout_seconds,
        )

    async def unload_model(self, model: str) -> None:
        """Unload ``model`` now (``keep_alive: 0``)."""
        body = wire.build_load(model, keep_alive=0)
        await self.transport.request_json("POST", "/api/generate", json=body, model=model)

    # -- generation -----------------------------------------------------------------------
    def _with_keep_alive(self, options: GenerationOptions | None) -> GenerationOptions | None:
        if self.config.keep_alive is None or (options and options.keep_alive is not None):
            return options
        return (options or GenerationOptions()).model_copy(update={"keep_alive": self.config.keep_alive})

    #: ``num_thread`` papin sends this Ollama (0: none), worked out on first use: it depends
    #: only on the endpoint and this machine's CPU.
    _num_thread: int | None = None

    def _tuned(self, options: GenerationOptions | None) -> GenerationOptions | None:
        """``options`` with papin's tuned load options added where the user set none.

        See :func:`papin.llm.hardware.backend_settings.ollama_options` for what is sent and why (only
        ``num_thread``, only to an Ollama on this machine under a CPU limit). Nothing is added
        with ``optimize`` off, or when the call sets it (``threads`` or ``additional_params``).
        """
        if self._num_thread is None:
            self._num_thread = self._work_out_num_thread()
        if not self._num_thread or (options is not None and "num_thread" in options.additional_params):
            return options
        return (options or GenerationOptions()).merged(GenerationOptions(threads=self._num_thread))

    def _work_out_num_thread(self) -> int:
        from papin.llm.hardware.backend_settings import is_loopback, ollama_options

        if not self.config.optimize or not is_loopback(self.endpoint):
            return 0
        from papin.llm.hardware import detect_cpu

        return ollama_options(detect_cpu(), self.endpoint).get("threads", 0)

    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a completion from ``POST /api/generate``."""
        body = wire.build_generate(model, prompt, self._tuned(self._with_keep_alive(options)))
        return self._generation_stream("/api/generate", body, model)

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a chat reply from ``POST /api/chat``."""
        body = wire.build_chat(model, as_messages(messages), self._tuned(self._with_keep_alive(options)))
        return self._generation_stream("/api/chat", body, model)

    def _generation_stream(
        self, path: str, body: dict[str, Any], model: str
    ) -> AsyncGenerator[GenerationChunk, None]:
        parser = OllamaGeneration(self.name, "Ollama", model, endpoint=self.endpoint, path=path)
        return self.stream_generation("POST", path, parser, json=body, model=model)
