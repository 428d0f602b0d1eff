"""The error hierarchy of papin's LLM provider system.

Every failure a provider can meet is raised as a :class:`ProviderError` subclass, so an
application needs a single ``except ProviderError`` to stay safe, and can catch a narrower
class to react (retry a :class:`RateLimitedError`, pull on :class:`ModelNotFoundError`, ...)::

    ProviderError                    base; .provider, .model, .status_code, .body, .retryable
    ├── ConfigurationError           invalid configuration or arguments
    │   └── InvalidModelFileError    a model file is not a valid (or is a truncated) GGUF
    ├── ProviderUnavailableError     server not running / unreachable / connection lost
    │   └── ProviderTimeoutError     a connect, first-byte, idle or request timeout expired
    ├── ProviderAPIError             the backend answered with an error status or body
    │   ├── AuthenticationError      401 / 403
    │   ├── RateLimitedError         429 / 503 (busy, loading); .retry_after seconds
    │   ├── ModelNotFoundError       the model is not installed or not known
    │   └── GenerationError          generation failed (also an error inside a 200 stream)
    │       └── NativeCrashError     llama.cpp died by a signal (in a probe child or the isolated worker)
    ├── ProtocolError                malformed, truncated or unexpected response
    ├── DownloadError                a model download failed
    ├── OperationCancelledError      the caller stopped the operation (alias: CancelledError)
    └── UnsupportedOperationError    the provider lacks this capability

Transport exceptions are translated into this tree in exactly one place,
:func:`papin.llm.transport.client.map_transport_errors`; the original exception stays chained as
``__cause__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "AuthenticationError",
    "CancelledError",
    "OperationCancelledError",
    "ConfigurationError",
    "DownloadError",
    "GenerationError",
    "InvalidModelFileError",
    "ModelNotFoundError",
    "NativeCrashError",
    "ProtocolError",
    "ProviderAPIError",
    "ProviderError",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "UnsupportedOperationError",
    "format_validation_error",
]


class ProviderError(Exception):
    """Base class of every error papin's LLM layer raises.

    Attributes:
        message: A sentence a person can act on.
        provider: Name of the provider involved (``"ollama"``), when known.
        model: The model involved, when known.
        status_code: HTTP status of the backend's answer, when there was one.
        body: The backend's error text or parsed body, when there was one.
    """

    #: Whether repeating the same call later may succeed (used by recovery logic).
    retryable: bool = False
    #: Short name of the error kind (``"timeout"``, ``"rate_limited"``...), for JSON output.
    kind: str = "provider"
    #: The text a generation had produced when it failed after its first chunk (``None``
    #: when it failed before; such a failure is never retried, see the router).
    partial_text: str | None = None

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status_code: int | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.model = model
        self.status_code = status_code
        self.body = body

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description (used by ``--json`` output)."""
        return {
            "error": self.kind,
            "message": self.message,
            "provider": self.provider,
            "model": self.model,
            "status_code": self.status_code,
        }


class ConfigurationError(ProviderError, ValueError):
    """The configuration or an argument is invalid; the message says which and how to fix it."""

    kind = "configuration"


class InvalidModelFileError(ConfigurationError):
    """A model file is not a GGUF file, or is truncated or corrupt; the message names the file."""

    kind = "invalid_model_file"


class ProviderUnavailableError(ProviderError, ConnectionError):
    """The backend cannot be reached: not running, refused, reset or closed the connection."""

    kind = "unavailable"
    retryable = True


class ProviderTimeoutError(ProviderUnavailableError, TimeoutError):
    """A phase timeout expired (connect, first byte, idle between chunks, or whole request).

    Attributes:
        phase: ``"connect"``, ``"first_byte"``, ``"idle"``, ``"request"`` or ``"deadline"``
            (the request's ``deadline_seconds``).
        timeout: The limit that expired, in seconds.
    """

    kind = "timeout"

    def __init__(
        self, message: str, *, phase: str = "request", timeout: float | None = None, **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.phase = phase
        self.timeout = timeout


class ProviderAPIError(ProviderError):
    """The backend answered with an error (a 4xx/5xx status, or an error object)."""

    kind = "api"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        if self.status_code is not None and self.status_code >= 500:
            self.retryable = True


class AuthenticationError(ProviderAPIError):
    """The backend refused the credentials (401/403): set or fix the API key."""

    kind = "authentication"


class RateLimitedError(ProviderAPIError):
    """The backend is busy or still loading (429/503); retry after ``retry_after`` seconds."""

    kind = "rate_limited"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retryable = True
        self.retry_after = retry_after


class ModelNotFoundError(ProviderAPIError, LookupError):
    """The requested model is not installed on (or not known to) the backend."""

    kind = "model_not_found"


class GenerationError(ProviderAPIError):
    """Generation failed, including an error reported inside a successful (200) stream."""

    kind = "generation"


class NativeCrashError(GenerationError):
    """llama.cpp itself crashed (a signal such as SIGSEGV or SIGILL, or an out-of-memory kill)
    in a process papin runs for it: the crash probe before a first load, or the isolated
    worker (``isolation: "process"``). The caller's process survives; the message says what
    crashed and what to do instead.

    Attributes:
        signal: The signal's name (``"SIGSEGV"``), when the process died by one.
        stage: What the process was doing: ``"load"``, ``"decode"`` or ``"generate"``.
        settings: The load settings that crashed (``{"extra_buffers": True}``...).
    """

    kind = "native_crash"

    def __init__(
        self,
        message: str,
        *,
        signal: str | None = None,
        stage: str | None = None,
        settings: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.signal = signal
        self.stage = stage
        self.settings = dict(settings or {})


class ProtocolError(ProviderError):
    """The backend's answer was malformed, truncated, of the wrong type or incomplete."""

    kind = "protocol"
    retryable = True


class DownloadError(ProviderError):
    """A model download failed; the message carries the backend's reason."""

    kind = "download"


class OperationCancelledError(ProviderError):
    """The operation was stopped by the caller (callback returned False, task cancelled)."""

    kind = "cancelled"


#: The earlier name of :class:`OperationCancelledError` (it read like ``asyncio.CancelledError``).
CancelledError = OperationCancelledError


class UnsupportedOperationError(ProviderError, NotImplementedError):
    """The provider does not offer this operation (see ``Provider.capabilities``)."""

    kind = "unsupported"


def format_validation_error(exc: ValidationError, where: str) -> str:
    """One readable line per problem of a pydantic validation, naming the setting."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        problems.append(f"{loc}: {msg}")
    return f"Invalid {where}: " + "; ".join(problems)
