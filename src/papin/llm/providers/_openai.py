"""What every provider that speaks OpenAI's ``/v1`` API shares: completion, chat and model
listing with SSE streaming (:class:`OpenAIBase`), and its settings. The custom provider
(:mod:`papin.llm.providers.openai_compatible`), llama-server, LocalAI, vLLM and LM Studio
build on it; none of them imports another."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, ClassVar

from papin.llm.datatypes import (
    Capability,
    GenerationChunk,
    ModelInfo,
    ProviderStatus,
)
from papin.llm.errors import ProtocolError, ProviderError
from papin.llm.options import GenerationOptions
from papin.llm.provider import Messages, ProviderConfig, as_messages
from papin.llm.transport.base import HttpProvider, HttpProviderConfig
from papin.llm.wire import openai as wire
from papin.llm.wire.stream import OpenAIEvents

if TYPE_CHECKING:
    from papin.llm.transport.client import HttpClient, ServiceInfo

__all__ = ["OpenAIBase", "OpenAICompatibleConfig"]


class OpenAICompatibleConfig(HttpProviderConfig):
    """Settings of an OpenAI-compatible server: ``endpoint`` with or without ``/v1``."""


class OpenAIBase(HttpProvider):
    """Completion, chat and model listing over OpenAI's ``/v1`` API with SSE streaming.

    Subclasses name the backend and add its health checks and model management.
    """

    capabilities: frozenset[Capability] = frozenset(
        {
            Capability.GENERATE,
            Capability.CHAT,
            Capability.STREAMING,
            Capability.LIST_MODELS,
            Capability.MODEL_INFO,
        }
    )
    config_class: ClassVar[type[ProviderConfig]] = OpenAICompatibleConfig
    #: Endpoint used when the configuration gives none (``""``: one must be configured).
    default_endpoint: ClassVar[str] = ""
    #: How to start the server, for "not running" messages.
    start_hint: ClassVar[str] = "Start the server, or fix the endpoint in the configuration."
    #: What to do about a rejected key, for 401/403 messages.
    auth_hint: ClassVar[str] = "Set api_key to the key the server expects."

    def __init__(
        self, config: HttpProviderConfig | None = None, *, http_client: HttpClient | None = None
    ) -> None:
        super().__init__(config, http_client=http_client)
        self._root = wire.split_base_url(self.config.endpoint or self.default_endpoint)

    @property
    def endpoint(self) -> str:
        """The server root (without ``/v1``)."""
        return self._root

    def service_info(self) -> ServiceInfo:
        """Error-message hints for this backend."""
        from papin.llm.transport.client import ServiceInfo

        return ServiceInfo(
            provider=self.name,
            display_name=self.display_name,
            base_url=self.endpoint,
            start_hint=self.start_hint,
            auth_hint=self.auth_hint,
            not_found_hint=self.model_hint,
            error_text=self.error_text,
            is_model_missing=self.is_model_missing,
        )

    def error_text(self, body: bytes, content_type: str | None) -> str:
        """The message of an error body (backends with odd shapes override it)."""
        return wire.error_text(body, content_type)

    def model_hint(self, model: str) -> str:
        """What to do about a missing model (shown after "Model 'x' is not available")."""
        return "List the served models with 'papin models list'."

    def is_model_missing(self, status: int, text: str) -> bool:
        """Whether an error answer means the model does not exist on this server."""
        from papin.llm.transport.client import model_missing

        return model_missing(status, text)

    # -- status and models ----------------------------------------------------------------
    async def status(self) -> ProviderStatus:
        """Probe ``GET /v1/models``; never raises."""
        try:
            await self._probe()
        except ProviderError as exc:
            return ProviderStatus(self.name, False, endpoint=self.endpoint, error=str(exc), exception=exc)
        return ProviderStatus(self.name, True, endpoint=self.endpoint, version=await self._version())

    async def _probe(self) -> None:
        timeout = min(self.config.timeout_seconds or 5.0, 5.0)
        data = await self.transport.request_json("GET", "/v1/models", timeout=timeout)
        if not isinstance(data, dict) or "data" not in data:
            raise ProtocolError(
                f"The server at {self.endpoint} answers /v1/models, but not with an OpenAI model list.",
                provider=self.name,
            )

    async def _version(self) -> str | None:
        return None

    async def list_downloaded_models(self) -> list[ModelInfo]:
        """The served models (``GET /v1/models``)."""
        return wire.parse_models(await self.transport.request_json("GET", "/v1/models"), self.name)

    # -- generation -----------------------------------------------------------------------
    def stream_generate(
        self, model: str, prompt: str, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a completion from ``POST /v1/completions``."""
        return self._sse("/v1/completions", wire.build_completion(model, prompt, options), model)

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a chat reply from ``POST /v1/chat/completions``."""
        body = wire.build_chat(model, as_messages(messages), options)
        return self._sse("/v1/chat/completions", body, model)

    def _sse(self, path: str, body: dict[str, Any], model: str) -> AsyncGenerator[GenerationChunk, None]:
        parser = OpenAIEvents(self.name, self.display_name, model)
        return self.stream_generation("POST", path, parser, json=body, model=model)

