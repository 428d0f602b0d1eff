"""What every provider that speaks OpenAI's ``/v1`` API shares: completion, chat and model
listing with SSE streaming (:class:`OpenAIBase`), and its settings. The custom provider
(:mod:`papin.llm.providers.openai_compatible`), llama-server, LocalAI, vLLM and LM Studio
build on it; none of them imports another."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from papin.llm.datatypes import (
    Capability,
    FinishReason,
    GenerationChunk,
    GenerationStats,
    ModelInfo,
    ProviderStatus,
)
from papin.llm.errors import GenerationError, ProtocolError, ProviderError
from papin.llm.options import GenerationOptions
from papin.llm.provider import Messages, ProviderConfig, as_messages
from papin.llm.transport.base import HttpProvider, HttpProviderConfig
from papin.llm.wire import openai as wire
from papin.llm.wire.sse import SSEDecoder

if TYPE_CHECKING:
    from papin.llm.transport.client import HttpClient, HttpResponse, ServiceInfo

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
            return ProviderStatus(self.name, False, endpoint=self.endpoint, error=str(exc))
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
    ) -> AsyncIterator[GenerationChunk]:
        """Stream a completion from ``POST /v1/completions``."""
        return self._sse("/v1/completions", wire.build_completion(model, prompt, options), model)

    def stream_chat(
        self, model: str, messages: Messages, options: GenerationOptions | None = None
    ) -> AsyncIterator[GenerationChunk]:
        """Stream a chat reply from ``POST /v1/chat/completions``."""
        body = wire.build_chat(model, as_messages(messages), options)
        return self._sse("/v1/chat/completions", body, model)

    async def _sse(self, path: str, body: dict[str, Any], model: str) -> AsyncIterator[GenerationChunk]:
        started = time.perf_counter()
        first: float | None = None
        received = 0
        events = 0
        finish: FinishReason | None = None
        prompt_tokens = completion_tokens = None
        content_type = ""

        def seen(response: HttpResponse) -> None:
            nonlocal content_type
            content_type = response.headers.get("content-type", "")

        decoder = SSEDecoder(provider=self.name)
        stream = self.transport.stream("POST", path, json=body, model=model, on_response=seen)
        done = False
        try:
            ended = False
            while not done and not ended:
                try:
                    data = await stream.__anext__()
                except StopAsyncIteration:
                    batch, ended = decoder.close(), True
                else:
                    batch = decoder.feed(data)
                for event in batch:
                    text = event.data
                    if text.startswith("[DONE]"):
                        done = True
                        break
                    events += 1
                    delta = self._event(text, model, received)
                    if delta is None:
                        continue
                    text, reason, prompt, completion = delta
                    if text:
                        received += len(text)
                        if first is None:
                            first = time.perf_counter()
                        yield GenerationChunk(text)
                    if reason is not None:
                        finish = reason
                    if prompt is not None:
                        prompt_tokens = prompt
                    if completion is not None:
                        completion_tokens = completion
            if done and not ended:
                await self.transport.finish_stream(stream)  # keeps the connection
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        if not done and finish is None:
            what = f"after {received} characters; the answer is incomplete"
            if not events and not content_type.startswith("text/event-stream"):
                what = (
                    f"with no events (content type {content_type or 'none'!r}, not "
                    "text/event-stream). Is the endpoint an OpenAI-compatible server?"
                )
            raise ProtocolError(
                f"{self.display_name}'s stream ended without a finish reason or [DONE] {what}",
                provider=self.name,
                model=model,
            )
        end = time.perf_counter()
        tps = None
        if completion_tokens and first is not None and end > first and completion_tokens > 1:
            tps = (completion_tokens - 1) / (end - first)
        yield GenerationChunk(
            "",
            done=True,
            stats=GenerationStats(
                finish_reason=finish or "stop",
                prompt_tokens=prompt_tokens,
                output_tokens=completion_tokens,
                time_to_first_token=None if first is None else first - started,
                tokens_per_second=tps,
                total_time=end - started,
            ),
        )

    def _event(self, data: str, model: str, received: int) -> wire.StreamDelta | None:
        if not data or data.isspace():
            return None
        try:
            obj = json.loads(data)
        except ValueError:
            raise ProtocolError(
                f"{self.display_name} sent a malformed stream event (not JSON): {data[:120]!r}",
                provider=self.name,
                model=model,
            ) from None
        if type(obj) is dict and "error" not in obj:  # the usual chunk
            return wire.parse_delta(obj)
        message = wire.stream_error(obj)
        if message is not None:
            where = f" after {received} characters" if received else ""
            raise GenerationError(
                f"{self.display_name} reported an error during generation{where}: {message}",
                provider=self.name,
                model=model,
                status_code=200,
                body=obj.get("error"),
            )
        if not isinstance(obj, dict):
            raise ProtocolError(f"Unexpected stream event: {data[:120]!r}", provider=self.name, model=model)
        return wire.parse_delta(obj)
