"""The HTTP transport shared by every HTTP provider, and papin's single error boundary.

* One ``aiohttp.ClientSession`` per provider (created on first use, inside the event loop):
  aiohttp's C HTTP parser and connection pool cost a fraction of httpx's per request (see
  ``bench/bench_client.py``), and papin needs nothing of a higher-level client API.
* Per-phase timeouts: ``connect``; ``first_byte`` (long enough for a cold model load);
  ``idle`` between stream chunks; ``request`` for short management calls. Time the caller
  spends between chunks is never counted against the server.
* :func:`map_transport_errors` and :func:`error_for_response` are the only places where
  transport exceptions and HTTP error statuses become :class:`~papin.llm.errors.ProviderError`.

This module imports aiohttp, so providers import it lazily (``import papin.llm`` stays light).
"""

from __future__ import annotations

import asyncio
import functools
import json as jsonlib
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import aiohttp

from papin.llm.errors import (
    ConfigurationError,
    ProtocolError,
    ProviderError,
    ProviderTimeoutError,
)
from papin.llm.transport.errors import (
    ServiceInfo,
    error_for_response,
    map_transport_errors,
    model_missing,
    parse_retry_after,
)
from papin.llm.transport.pauses import active_time

__all__ = [
    "HttpClient",
    "HttpResponse",
    "HttpTransport",
    "PhaseTimeouts",
    "ResponseHead",
    "ServiceInfo",
    "error_for_response",
    "map_transport_errors",
    "model_missing",
    "parse_retry_after",
    "shared_ssl_context",
]

#: The client session a provider may be given (``http_client=``); papin does not close it.
HttpClient = aiohttp.ClientSession

T = TypeVar("T")

_JSON_HEADERS = {"content-type": "application/json"}
_MAX_URLS = 512


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """Status, headers (case-insensitive) and URL of a response, and of the redirects before it."""

    status_code: int
    headers: Mapping[str, str]
    url: str
    history: tuple[ResponseHead, ...] = ()

    @classmethod
    def of(cls, response: aiohttp.ClientResponse) -> ResponseHead:
        """The head of an aiohttp response."""
        history = tuple(cls.of(r) for r in response.history)
        return cls(response.status, response.headers, str(response.url), history)


#: What a response hook (``on_response``) and :meth:`HttpTransport.request` give back.
HttpResponse = ResponseHead
@dataclass(frozen=True, slots=True)
class PhaseTimeouts:
    """Timeouts in seconds for each phase of a request (``None`` = no limit)."""

    connect: float | None = 5.0
    first_byte: float | None = 600.0
    idle: float | None = 120.0
    request: float | None = 30.0


class _PhaseClock:
    """Cancels its task when one awaited phase outlasts its limit; one lazy timer per request.

    Only time spent awaiting the server counts: between awaits (the caller consuming a
    chunk) the clock is stopped.
    """

    __slots__ = ("_handle", "_limit", "_loop", "_phase", "_started", "_task", "expired")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._handle: asyncio.TimerHandle | None = None
        self._limit: float | None = None
        self._phase = ""
        self._started = 0.0
        self.expired: tuple[str, float] | None = None

    async def run(self, awaitable: Awaitable[T], phase: str, limit: float | None) -> T:
        if limit is None:
            return await awaitable
        # The task can change between calls (the sync facade drives a stream chunk by chunk).
        self._task = asyncio.current_task()
        # active_time: the time the sync facade's loop stands stopped is the caller's
        self._phase, self._limit, self._started = phase, limit, active_time(self._loop)
        due = self._loop.time() + limit
        # The timer is lazy (it re-arms itself when it fires early), but it must never fire
        # late: a shorter phase after a longer one (idle after first_byte) re-arms it now.
        if self._handle is None or self._handle.when() > due:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(due, self._fire)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self.expired is not None and self._task is not None and self._task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            self._limit = None

    def _fire(self) -> None:
        self._handle = None
        if self._limit is None or self._task is None:
            return
        left = self._started + self._limit - active_time(self._loop)
        if left > 0:
            self._handle = self._loop.call_at(self._loop.time() + left, self._fire)
            return
        self.expired = (self._phase, self._limit)
        self._task.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


_PHASE_TEXT = {
    "first_byte": "sent nothing for {limit:g} s after the request (first-byte timeout; a cold "
    "model load may need more: raise first_byte_timeout_seconds)",
    "idle": "stalled: no data for {limit:g} s in the middle of the answer (idle timeout; raise "
    "idle_timeout_seconds if the model is very slow)",
    "request": "did not complete the request within {limit:g} s (timeout_seconds)",
}


@functools.lru_cache(maxsize=8)
def shared_ssl_context(ca_bundle: str | None, verify: bool) -> ssl.SSLContext:
    """One TLS context per (CA bundle, verify) setting, shared by every transport: loading the
    system's certificates takes ~40 ms, which every provider paid again before."""
    ctx = ssl.create_default_context(cafile=ca_bundle)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class HttpTransport:
    """Sends requests to one backend with phase timeouts and the error boundary applied."""

    def __init__(
        self,
        service: ServiceInfo,
        *,
        headers: dict[str, str] | None = None,
        verify_ssl: bool = True,
        ca_bundle: str | None = None,
        timeouts: PhaseTimeouts | None = None,
        max_response_bytes: int = 64 * 1024 * 1024,
        client: aiohttp.ClientSession | None = None,
        follow_redirects: bool = False,
    ) -> None:
        self.service = service
        self.timeouts = timeouts or PhaseTimeouts()
        self.max_response_bytes = max_response_bytes
        self.follow_redirects = follow_redirects
        self._headers = {"accept": "application/json", "user-agent": "papin", **(headers or {})}
        self._verify_ssl = verify_ssl
        self._ca_bundle = ca_bundle
        self._session = client
        self._owns_session = client is None
        self._base = service.base_url.rstrip("/")
        self._urls: dict[str, str] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        """The underlying session, created on first use (inside the running event loop)."""
        if self._session is None:
            self._session = self._make_session()
        return self._session

    def _ssl(self) -> ssl.SSLContext | bool:
        """aiohttp's own verifying context (loaded once at its import) unless the settings need
        another: loading the system's certificates again costs ~40 ms."""
        if self._verify_ssl and self._ca_bundle is None:
            return True
        try:
            return shared_ssl_context(self._ca_bundle, self._verify_ssl)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"Cannot read the CA bundle {self._ca_bundle!r}: {exc}",
                provider=self.service.provider,
            ) from exc

    def _make_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=0, ssl=self._ssl())
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect)
        return aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=timeout, trust_env=False
        )

    def _url(self, path: str) -> str:
        url = self._urls.get(path)
        if url is None:
            url = path if "://" in path else f"{self._base}{path}"
            if len(self._urls) < _MAX_URLS:
                self._urls[path] = url
        return url

    async def _send(
        self, method: str, path: str, json: Any, headers: dict[str, str] | None
    ) -> aiohttp.ClientResponse:
        """Send a request; the response body is left unread (streamed)."""
        data: bytes | None = None
        if json is not None:
            try:
                text = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(
                    f"The request to {self.service.display_name} cannot be sent as JSON: {exc}. Check "
                    "the values in the options (NaN, infinity and objects are not valid JSON).",
                    provider=self.service.provider,
                ) from exc
            data = text.encode()
            headers = {**_JSON_HEADERS, **headers} if headers else _JSON_HEADERS
        return await self.session.request(
            method, self._url(path), data=data, headers=headers, allow_redirects=self.follow_redirects
        )

    async def aclose(self) -> None:
        """Close the connection pool (only if this transport created the session)."""
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    def _raise_timeout(self, clock: _PhaseClock, model: str | None) -> NoReturn:
        phase, limit = clock.expired or ("idle", self.timeouts.idle or 0.0)
        text = _PHASE_TEXT[phase].format(limit=limit)
        raise ProviderTimeoutError(
            f"{self.service.display_name} at {self.service.base_url} {text}.",
            phase=phase,
            timeout=limit,
            provider=self.service.provider,
            model=model,
        )

    async def _read_body(self, response: aiohttp.ClientResponse, clock: _PhaseClock | None) -> bytes:
        chunks: list[bytes] = []
        size = 0
        content = response.content
        while True:
            if clock is None:
                chunk = await content.readany()
            else:
                chunk = await clock.run(content.readany(), "idle", self.timeouts.idle)
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_response_bytes:
                raise ProtocolError(
                    f"{self.service.display_name} sent a response larger than "
                    f"{self.max_response_bytes // (1024 * 1024)} MiB; refusing to read it all.",
                    provider=self.service.provider,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> tuple[ResponseHead, bytes]:
        """Send a request and read the whole body; raises on an error status."""
        limit = timeout if timeout is not None else self.timeouts.request
        try:
            async with asyncio.timeout(limit):
                with map_transport_errors(self.service, model=model):
                    response = await self._send(method, path, json, None)
                    try:
                        body = await self._read_body(response, None)
                    finally:
                        response.release()
        except ProviderError:
            raise  # a ProviderTimeoutError (connect) is a TimeoutError too: keep its phase
        except TimeoutError:
            text = _PHASE_TEXT["request"].format(limit=limit)
            raise ProviderTimeoutError(
                f"{self.service.display_name} at {self.service.base_url} {text}.",
                phase="request",
                timeout=limit,
                provider=self.service.provider,
                model=model,
            ) from None
        if response.status >= 400:
            raise error_for_response(
                self.service, response.status, body, response.headers, path=path, model=model
            )
        return ResponseHead.of(response), body

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        model: str | None = None,
        timeout: float | None = None,
        allow_empty: bool = False,
    ) -> Any:
        """Send a request and parse its JSON answer (``None`` for an allowed empty body)."""
        response, body = await self.request(method, path, json=json, model=model, timeout=timeout)
        if not body.strip():
            if allow_empty:
                return None
            raise ProtocolError(
                f"{self.service.display_name} at {self.service.base_url} answered {path} with an "
                "empty body where JSON was expected.",
                provider=self.service.provider,
                model=model,
                status_code=response.status_code,
            )
        try:
            return jsonlib.loads(body)
        except ValueError:
            ctype = response.headers.get("content-type", "no content type")
            preview = body[:120].decode("utf-8", "replace")
            raise ProtocolError(
                f"{self.service.display_name} at {self.service.base_url} answered {path} with "
                f"{ctype!r} that is not JSON ({preview!r}). Is the endpoint right, or is a proxy "
                "in the way?",
                provider=self.service.provider,
                model=model,
                status_code=response.status_code,
            ) from None

    async def stream(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        model: str | None = None,
        headers: dict[str, str] | None = None,
        on_response: Callable[[ResponseHead], None] | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Yield the raw body chunks of a streamed answer.

        The first chunk must arrive within ``first_byte``, each later one within ``idle``.
        Closing the iterator (or cancelling the task) closes the connection, so the backend
        sees the client go away and stops generating. ``headers`` are added to this request;
        ``on_response`` sees the (successful) response's status and headers before the body.
        """
        clock = _PhaseClock()
        response: aiohttp.ClientResponse | None = None
        try:
            with map_transport_errors(self.service, model=model):
                response = await clock.run(
                    self._send(method, path, json, headers), "first_byte", self.timeouts.first_byte
                )
                if response.status >= 400:
                    body = await self._read_body(response, clock)
                    raise error_for_response(
                        self.service,
                        response.status,
                        body,
                        response.headers,
                        path=path,
                        model=model,
                    )
                ctype = response.headers.get("content-type", "")
                if ctype.startswith("text/html"):
                    raise ProtocolError(
                        f"{self.service.display_name} at {self.service.base_url} answered {path} "
                        "with an HTML page instead of a stream. Is the endpoint right, or is a "
                        "proxy in the way?",
                        provider=self.service.provider,
                        model=model,
                        status_code=response.status,
                    )
                if on_response is not None:
                    on_response(ResponseHead.of(response))
                content = response.content
                phase, limit = "first_byte", self.timeouts.first_byte
                while True:
                    chunk = await clock.run(content.readany(), phase, limit)
                    if not chunk:
                        break
                    phase, limit = "idle", self.timeouts.idle
                    yield chunk
        except ProviderError:
            raise  # a ProviderTimeoutError (connect) is a TimeoutError too: keep its phase
        except TimeoutError:
            self._raise_timeout(clock, model)
        finally:
            clock.close()
            if response is not None:
                response.release()  # closes the connection unless the body was read to its end

    async def finish_stream(
        self, stream: AsyncGenerator[bytes, None], *, wait: float = 0.25, max_bytes: int = 64 * 1024
    ) -> None:
        """Read the rest of a stream whose last message has arrived (normally only the end of
        the chunked body), so that the connection goes back to the pool instead of being
        closed, and the iterators under it end normally. Bounded by ``wait`` seconds and
        ``max_bytes``; past either, or on an error, it gives up (the caller then closes the
        stream, and with it the connection). Never raises for those.
        """
        received = 0
        try:
            async with asyncio.timeout(wait):
                async for data in stream:
                    received += len(data)
                    if received > max_bytes:
                        return
        except (TimeoutError, ProviderError):
            pass
