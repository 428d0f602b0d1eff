"""The error boundary: where transport exceptions and HTTP error statuses become
:class:`~papin.llm.errors.ProviderError` (:func:`map_transport_errors`,
:func:`error_for_response`), with the backend's own words and a hint a person can act on."""

from __future__ import annotations

import contextlib
import email.utils
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import http_exceptions

from papin.llm.errors import (
    AuthenticationError,
    ConfigurationError,
    ModelNotFoundError,
    ProtocolError,
    ProviderAPIError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)

__all__ = [
    "ServiceInfo",
    "classify",
    "error_for_response",
    "map_transport_errors",
    "model_missing",
    "not_running",
    "parse_retry_after",
]


def _default_error_text(body: bytes, content_type: str | None) -> str:
    return body.decode("utf-8", "replace").strip()[:500]


def model_missing(status: int, text: str) -> bool:
    """Whether an error answer means "this model does not exist here" (the default rule).

    >>> model_missing(404, "model 'x' not found")
    True
    >>> model_missing(404, "The model `x` does not exist.")
    True
    >>> model_missing(404, "404 page not found")
    False
    >>> model_missing(404, "Not Found")  # FastAPI's (vLLM's) unknown route
    False
    """
    lowered = text.lower().strip().rstrip(".")
    return (
        status == 404
        and ("not found" in lowered or "does not exist" in lowered)
        and ("page" not in lowered and lowered not in _ROUTE_NOT_FOUND)
    )


#: Bodies of a 404 for an unknown route (no model named), not of a missing model.
_ROUTE_NOT_FOUND = frozenset({"not found", "404 not found", "404: not found", "resource not found"})


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What the error boundary needs to know to write messages a person can act on."""

    provider: str
    display_name: str
    base_url: str
    start_hint: str = ""
    auth_hint: str = "Check the API key in the provider's configuration."
    not_found_hint: Callable[[str], str] = field(default=lambda model: "")
    error_text: Callable[[bytes, str | None], str] = _default_error_text
    is_model_missing: Callable[[int, str], bool] = model_missing


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header (delay seconds or an HTTP date) into seconds.

    >>> parse_retry_after("7")
    7.0
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412475.0)
    5.0
    >>> parse_retry_after("soon") is None
    True
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def error_for_response(
    service: ServiceInfo,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    path: str,
    model: str | None = None,
) -> ProviderError:
    """Build the error for an HTTP error status (the one place statuses are mapped)."""
    content_type = headers.get("content-type")
    text = service.error_text(body, content_type) if body else ""
    where = f"{service.display_name} at {service.base_url}"
    detail = f": {text.rstrip('.')}" if text else " (empty body)"
    kw: dict[str, Any] = {
        "provider": service.provider,
        "model": model,
        "status_code": status,
        "body": text or None,
    }
    if status in (401, 403):
        return AuthenticationError(
            f"{where} refused the request ({status}){detail}. {service.auth_hint}", **kw
        )
    if status in (429, 503):
        retry_after = parse_retry_after(headers.get("retry-after"))
        wait = f" Retry in {retry_after:g} s." if retry_after is not None else " Retry later."
        busy = "is rate limiting requests" if status == 429 else "is busy or still loading"
        return RateLimitedError(f"{where} {busy} ({status}){detail}.{wait}", retry_after=retry_after, **kw)
    if model is not None and service.is_model_missing(status, text):
        hint = service.not_found_hint(model)
        return ModelNotFoundError(
            f"Model '{model}' is not available on {where}{detail}. {hint}".rstrip(), **kw
        )
    if status == 404:
        return ProviderAPIError(
            f"{where} has no endpoint {path} (404){detail}. Check that the endpoint is really "
            f"{service.display_name} and that its version supports this operation.",
            **kw,
        )
    if status >= 500:
        return ProviderAPIError(f"{where} failed with a server error ({status}){detail}.", **kw)
    return ProviderAPIError(f"{where} rejected the request ({status}){detail}.", **kw)


def not_running(service: ServiceInfo, reason: str) -> str:
    """What papin says of a backend where nothing listens: where, why, and how to start it."""
    where = f"{service.display_name} is not running at {service.base_url} ({reason})."
    return f"{where} {service.start_hint}".rstrip()


def classify(exc: BaseException) -> tuple[str, str]:
    """Classify a transport failure as (kind, reason), for every exception aiohttp's client can
    raise (``aiohttp.client_exceptions`` and ``aiohttp.http_exceptions``) and the OS and TLS
    errors under them. Kinds:

    * ``refused``: nothing listens, or the host cannot be reached or resolved;
    * ``connect_timeout``: no connection within the connect limit;
    * ``tls``: the TLS handshake or the certificate failed;
    * ``lost``: the connection dropped or the body was cut off mid-answer;
    * ``malformed``: the server's HTTP is broken (status line, headers, chunked framing,
      content length or encoding);
    * ``redirect``: too many redirects, or one to a URL papin cannot follow;
    * ``invalid_url``: the URL itself is unusable;
    * ``other``.
    """
    c = aiohttp
    if isinstance(exc, c.ClientSSLError | c.ServerFingerprintMismatch):  # before ClientConnectorError
        return "tls", str(exc)
    if isinstance(exc, c.ConnectionTimeoutError):
        return "connect_timeout", "connect timed out"
    if isinstance(exc, c.SocketTimeoutError):
        return "lost", "the server stopped sending (socket read timeout)"
    if isinstance(exc, c.ClientConnectorDNSError):
        return "refused", f"cannot resolve the host name: {exc.os_error}"
    if isinstance(exc, c.ClientConnectorError):  # proxy and unix-socket variants included
        err = exc.os_error
        if isinstance(err, ConnectionRefusedError):
            return "refused", "connection refused"
        return "refused", str(err) or "cannot connect"
    if isinstance(exc, c.ServerDisconnectedError):
        return "lost", "the server closed the connection"
    if isinstance(exc, c.ClientPayloadError):
        cause = exc.__cause__
        if isinstance(cause, http_exceptions.HttpProcessingError) and not _cut_off(cause):
            return "malformed", f"the response body is malformed: {_processing_text(cause)}"
        return "lost", f"the response was cut off: {_processing_text(cause) if cause else exc}"
    if isinstance(exc, c.TooManyRedirects | c.RedirectClientError):
        return "redirect", str(exc) or type(exc).__name__
    if isinstance(exc, c.InvalidURL | c.NonHttpUrlClientError):
        return "invalid_url", str(exc) or type(exc).__name__
    if isinstance(exc, c.ClientResponseError):  # the head or framing could not be parsed
        return "malformed", exc.message or f"unreadable response ({exc.status})"
    if isinstance(exc, http_exceptions.HttpProcessingError):
        return "malformed", _processing_text(exc)
    if isinstance(exc, ConnectionResetError | BrokenPipeError | c.ClientConnectionResetError):
        return "lost", "connection reset by the server"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls", str(exc)
    if isinstance(exc, c.ClientOSError | c.ServerConnectionError | c.ClientConnectionError | OSError):
        return "lost", str(exc) or type(exc).__name__
    return "other", str(exc) or type(exc).__name__


def _processing_text(exc: BaseException) -> str:
    message = exc.message if isinstance(exc, http_exceptions.HttpProcessingError) else str(exc)
    return str(message or type(exc).__name__).strip().rstrip(".")


def _cut_off(exc: http_exceptions.HttpProcessingError) -> bool:
    """Whether a body error means the connection ended early (not that the framing is bad)."""
    return "not enough data" in str(exc.message).lower()


#: OpenSSL errors meaning the server answered a TLS handshake with something else (plain HTTP).
_NOT_TLS = (
    "wrong version number",
    "wrong_version_number",
    "record layer failure",
    "packet length too long",
    "http request",
)


@contextlib.contextmanager
def map_transport_errors(service: ServiceInfo, *, model: str | None = None) -> Iterator[None]:
    """Translate aiohttp, TLS and OS transport exceptions into :class:`ProviderError`.

    A plain ``TimeoutError`` is a phase timeout and passes through (the caller turns it into a
    :class:`ProviderTimeoutError` naming the phase); aiohttp's own timeouts are mapped here.
    """
    kw: dict[str, Any] = {"provider": service.provider, "model": model}
    where = f"{service.display_name} at {service.base_url}"
    try:
        yield
    except ProviderError:
        raise
    except (aiohttp.ClientError, http_exceptions.HttpProcessingError) as exc:
        raise _mapped(exc, service, where, kw) from exc
    except TimeoutError:
        raise  # a phase timeout, turned into ProviderTimeoutError by the caller
    except (ssl.SSLError, OSError) as exc:
        raise _mapped(exc, service, where, kw) from exc


def _mapped(exc: BaseException, service: ServiceInfo, where: str, kw: dict[str, Any]) -> ProviderError:
    kind, reason = classify(exc)
    if kind == "refused":
        return ProviderUnavailableError(not_running(service, reason), **kw)
    if kind == "connect_timeout":
        return ProviderTimeoutError(
            f"Timed out connecting to {where}. Check that the address is right and reachable.",
            phase="connect",
            **kw,
        )
    if kind == "tls" and any(s in reason.lower() for s in _NOT_TLS):
        return ProviderUnavailableError(
            f"{where} does not answer TLS (https) on that port ({reason}). If it serves plain "
            "HTTP, use an http:// endpoint.",
            **kw,
        )
    if kind == "tls":
        return ProviderUnavailableError(
            f"TLS error talking to {where}: {reason}. Set verify_ssl to false, or ca_bundle to "
            "the server's CA certificate, if it uses a private or self-signed certificate.",
            **kw,
        )
    if kind == "lost":
        return ProviderUnavailableError(
            f"Lost the connection to {where} ({reason}); the answer is incomplete.", **kw
        )
    if kind == "malformed":
        return ProtocolError(
            f"{where} sent a malformed HTTP response ({reason}). Is the endpoint really "
            f"{service.display_name}, or is a proxy in the way?",
            **kw,
        )
    if kind == "invalid_url":
        return ConfigurationError(
            f"Cannot send a request to {service.base_url}: {reason}. Use an http:// or https:// URL.",
            **kw,
        )
    return ProviderUnavailableError(f"Request to {where} failed: {reason}", **kw)
