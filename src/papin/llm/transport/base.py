"""Common configuration and plumbing of providers that talk HTTP to a server, and the one
stream driver every streamed answer runs on (:meth:`HttpProvider.stream_pieces`,
:meth:`HttpProvider.stream_generation`).

Importing this module does not import aiohttp: the transport is created on first use.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import Field, field_validator, model_validator

from papin.llm.chunk_stream import ChunkStream
from papin.llm.datatypes import GenerationChunk
from papin.llm.errors import ProviderTimeoutError
from papin.llm.provider import Provider, ProviderConfig
from papin.llm.transport.pauses import active_time

if TYPE_CHECKING:
    import aiohttp

    from papin.llm.transport.client import HttpTransport, ResponseHead, ServiceInfo
    from papin.llm.wire.stream import StreamParser, StreamPiece

__all__ = ["HttpProvider", "HttpProviderConfig"]


class HttpProviderConfig(ProviderConfig):
    """Connection settings shared by every HTTP provider.

    The timeouts apply per phase, so a cold model load that takes minutes does not trip
    the short timeouts meant for a server that hangs.
    """

    endpoint: str = Field("", description="Base URL of the server.")
    endpoints: list[str] = Field(
        default_factory=list,
        description="Several servers of this backend serving the same models (replicas); "
        "requests go to the healthy one with the fewest in flight. The first is the endpoint "
        "when none is given.",
    )
    timeout_seconds: float | None = Field(
        30.0, gt=0, description="Limit for short management requests (list, show, delete)."
    )
    connect_timeout_seconds: float | None = Field(5.0, gt=0, description="TCP/TLS connect limit.")
    first_byte_timeout_seconds: float | None = Field(
        600.0, gt=0, description="Wait for the first byte of a generation (covers cold loads)."
    )
    idle_timeout_seconds: float | None = Field(
        120.0, gt=0, description="Longest silence allowed between stream chunks."
    )
    verify_ssl: bool = Field(True, description="Verify TLS certificates.")
    ca_bundle: str | None = Field(None, description="Path of a CA bundle for TLS verification.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers.")
    api_key: str | None = Field(None, description="Sent as 'Authorization: Bearer <key>'.")

    #: Environment variable that supplies ``api_key`` when none is configured (the backend's
    #: own, e.g. ``OLLAMA_API_KEY``). A comma-separated list (LocalAI's form) gives its first key.
    api_key_env: ClassVar[str | None] = None

    @model_validator(mode="after")
    def _api_key_from_env(self) -> Self:
        if self.api_key is None and self.api_key_env:
            key = os.environ.get(self.api_key_env, "").split(",")[0].strip()
            if key:
                object.__setattr__(self, "api_key", key)
        return self

    @field_validator("endpoints", mode="before")
    @classmethod
    def _endpoint_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v for v in (part.strip() for part in value.split(",")) if v]
        return value

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, value: list[str]) -> list[str]:
        checked = [cls._check_endpoint(v) for v in value]
        if len(set(checked)) != len(checked):
            raise ValueError("endpoints must not repeat an address")
        return checked

    @model_validator(mode="after")
    def _first_endpoint(self) -> Self:
        if not self.endpoint and self.endpoints:
            object.__setattr__(self, "endpoint", self.endpoints[0])
        return self

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        value = value.strip()
        if value and "://" in value and not value.lower().startswith(("http://", "https://")):
            raise ValueError(f"endpoint {value!r} must start with http:// or https://")
        return value.rstrip("/")


class HttpProvider(Provider):
    """Base class of HTTP providers: owns one lazily created :class:`HttpTransport`."""

    config: HttpProviderConfig
    config_class: ClassVar[type[ProviderConfig]] = HttpProviderConfig

    def __init__(
        self,
        config: HttpProviderConfig | None = None,
        *,
        http_client: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(config)
        self._http_client = http_client
        self._transport: HttpTransport | None = None

    @property
    def endpoint(self) -> str:
        """The base URL requests go to."""
        return self.config.endpoint

    def service_info(self) -> ServiceInfo:
        """How error messages describe this backend; providers override the hints."""
        from papin.llm.transport.client import ServiceInfo

        return ServiceInfo(provider=self.name, display_name=self.display_name, base_url=self.endpoint)

    def request_headers(self) -> dict[str, str]:
        """Headers sent with every request (custom headers, then the API key)."""
        headers = dict(self.config.headers)
        if self.config.api_key and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    @property
    def transport(self) -> HttpTransport:
        """The transport, created on first use."""
        if self._transport is None:
            from papin.llm.transport.client import HttpTransport, PhaseTimeouts

            c = self.config
            self._transport = HttpTransport(
                self.service_info(),
                headers=self.request_headers(),
                verify_ssl=c.verify_ssl,
                ca_bundle=c.ca_bundle,
                timeouts=PhaseTimeouts(
                    connect=c.connect_timeout_seconds,
                    first_byte=c.first_byte_timeout_seconds,
                    idle=c.idle_timeout_seconds,
                    request=c.timeout_seconds,
                ),
                client=self._http_client,
            )
        return self._transport

    # -- the stream driver ----------------------------------------------------------------
    async def stream_pieces(
        self, method: str, path: str, parser: StreamParser, *, json: Any = None, model: str | None = None
    ) -> AsyncGenerator[list[StreamPiece], None]:
        """Send one streamed request and yield what ``parser`` makes of the body, one list of
        pieces per network read (so a busy stream costs one hop per read, not per piece), up to
        and including the final piece. The one place that owns, for every streamed answer:

        * the phase timers (first byte, idle: in the transport) and keep-alive frames, which
          produce no piece and do not count as progress: only keep-alives for longer than the
          first-byte limit (before the first piece) or the idle limit (after it) is a
          :class:`~papin.llm.errors.ProviderTimeoutError`;
        * an error inside the stream (``parser.failure``: a ``GenerationError`` for a
          generation) and a body that ends without its final message (``parser.incomplete``);
        * the connection: read to its end after the final message, so that it goes back to the
          pool; closed at once when the caller stops early (the backend stops generating).

        A retry layer may retry a call that failed before the first piece arrived.
        """
        content_type = ""

        def seen(response: ResponseHead) -> None:
            nonlocal content_type
            content_type = response.headers.get("content-type", "")

        transport = self.transport
        limits = transport.timeouts
        stream = transport.stream(method, path, json=json, model=model, on_response=seen)
        received = 0
        pieces = 0
        loop = asyncio.get_running_loop()
        last = active_time(loop)
        try:
            ended = False
            while not ended:
                try:
                    data = await stream.__anext__()
                except StopAsyncIteration:
                    batch, ended = parser.close(), True
                else:
                    batch = parser.feed(data)
                if not batch:
                    limit = limits.idle if pieces else limits.first_byte
                    if limit is not None and active_time(loop) - last > limit:
                        raise self._keepalive_timeout(limit, pieces, model)
                    continue
                last = active_time(loop)
                for index, piece in enumerate(batch):
                    if piece.error is not None:
                        if index:
                            yield batch[:index]
                        raise parser.failure(piece, received + sum(len(p.text) for p in batch[:index]))
                    if piece.final is not None:
                        if not ended:
                            await transport.finish_stream(stream)  # keeps the connection
                        yield batch[: index + 1]
                        return
                pieces += len(batch)
                received += sum(len(p.text) for p in batch)
                yield batch
        finally:
            await stream.aclose()
        raise parser.incomplete(received, content_type)

    def _keepalive_timeout(self, limit: float, pieces: int, model: str | None) -> ProviderTimeoutError:
        phase = "idle" if pieces else "first_byte"
        return ProviderTimeoutError(
            f"{self.display_name} at {self.endpoint} sent only keep-alive frames for {limit:g} s "
            f"(raise {phase}_timeout_seconds if the model is very slow)",
            phase=phase,
            timeout=limit,
            provider=self.name,
            model=model,
        )

    def stream_generation(
        self, method: str, path: str, parser: StreamParser, *, json: Any = None, model: str | None = None
    ) -> ChunkStream:
        """A generation on the stream driver: text chunks, then one ``done`` chunk with the
        statistics (time to first token and total time by papin's clock, the rest from the
        backend's final message, through ``parser.stats``), kept in the lists they arrived in."""
        return ChunkStream(self._generation_batches(method, path, parser, json=json, model=model))

    async def _generation_batches(
        self, method: str, path: str, parser: StreamParser, *, json: Any = None, model: str | None = None
    ) -> AsyncGenerator[list[GenerationChunk], None]:
        started = time.perf_counter()
        first: float | None = None
        batches = self.stream_pieces(method, path, parser, json=json, model=model)
        try:
            async for batch in batches:
                if first is None and any(p.text for p in batch):
                    first = time.perf_counter()
                final = batch[-1].final
                if final is None:
                    yield [GenerationChunk(piece.text) for piece in batch]
                    continue
                chunks = [GenerationChunk(piece.text) for piece in batch[:-1]]
                ttft = None if first is None else first - started
                stats = parser.stats(final, ttft, time.perf_counter() - started)
                chunks.append(GenerationChunk(batch[-1].text, done=True, stats=stats))
                yield chunks
                return
        finally:
            await batches.aclose()

    async def aclose(self) -> None:
        """Cancel downloads and close the connection pool."""
        await super().aclose()
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None

    def _describe(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint}
