"""Value types shared by every provider: models, downloads, generation chunks and results.

These are small frozen dataclasses (cheap to create on the streaming hot path) with a
``to_dict()`` for JSON output.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from papin.llm.errors import ProviderError

__all__ = [
    "Capability",
    "ChatMessage",
    "DownloadStatus",
    "FinishReason",
    "GenerationChunk",
    "GenerationResult",
    "GenerationStats",
    "LoadedModel",
    "ModelInfo",
    "ProviderStatus",
    "ProviderType",
]


class ProviderType(enum.StrEnum):
    """The kinds of backend papin has built in (a third-party provider names itself with a string).

    Values are the registry names used by the factory, the config file and the CLI.
    """

    OLLAMA = "ollama"
    LOCALAI = "localai"
    LLAMACPP = "llamacpp"
    LLAMACPP_SERVER = "llamacpp_server"
    OPENAI_COMPATIBLE = "openai_compatible"
    VLLM = "vllm"
    LMSTUDIO = "lmstudio"


class Capability(enum.StrEnum):
    """Optional operations a provider may offer; calling a missing one raises
    :class:`~papin.llm.errors.UnsupportedOperationError`."""

    GENERATE = "generate"
    CHAT = "chat"
    STREAMING = "streaming"
    LIST_MODELS = "list_models"
    DOWNLOAD = "download"
    DELETE = "delete"
    LOAD = "load"
    UNLOAD = "unload"
    LIST_LOADED = "list_loaded"
    MODEL_INFO = "model_info"


FinishReason = Literal["stop", "length", "cancelled", "error"]


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model as a provider reports it.

    ``size_bytes`` and ``context_size`` are ``None`` when the backend does not say;
    ``metadata`` holds provider-specific facts as strings.
    """

    id: str
    name: str
    provider: str
    installed: bool = True
    size_bytes: int | None = None
    context_size: int | None = None
    description: str = ""
    family: str | None = None
    parameter_size: str | None = None
    quantization: str | None = None
    format: str | None = None
    capabilities: tuple[str, ...] = ()
    modified_at: str | None = None
    digest: str | None = None
    download_url: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def size_mb(self) -> int | None:
        """Size in MiB, when known."""
        return None if self.size_bytes is None else self.size_bytes // (1024 * 1024)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        d = _as_dict(self)
        d["capabilities"] = list(self.capabilities)
        d["size_mb"] = self.size_mb
        return d


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model currently loaded in memory (Ollama's ``/api/ps`` entry and equivalents)."""

    id: str
    provider: str
    size_bytes: int | None = None
    size_vram_bytes: int | None = None
    context_size: int | None = None
    expires_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return _as_dict(self)


@dataclass(frozen=True, slots=True)
class DownloadStatus:
    """Progress of a model download, aggregated over all its parts.

    ``progress`` is 0.0–1.0 (``None`` until the total size is known); ``speed_bps`` is a
    moving average in bytes per second and ``eta_seconds`` follows from it.
    """

    model_id: str
    status: str = "starting"
    bytes_downloaded: int = 0
    total_bytes: int | None = None
    speed_bps: float | None = None
    eta_seconds: float | None = None
    complete: bool = False
    cancelled: bool = False
    error: str | None = None

    @property
    def progress(self) -> float | None:
        """Fraction done (0.0–1.0), when the total is known."""
        if self.complete:
            return 1.0
        if not self.total_bytes:
            return None
        return min(1.0, self.bytes_downloaded / self.total_bytes)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        d = _as_dict(self)
        d["progress"] = self.progress
        return d


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    """A provider's health report; ``available=False`` carries the reason in ``error`` and,
    when a request failed, the typed error itself in ``exception`` (not serialised)."""

    provider: str
    available: bool
    endpoint: str | None = None
    version: str | None = None
    error: str | None = None
    details: dict[str, str] = field(default_factory=dict)
    exception: ProviderError | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        d = _as_dict(self)
        del d["exception"]
        return d


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat message. ``role`` is free text (``system``, ``user``, ``assistant``, ``tool``...)."""

    role: str
    content: str
    images: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form used by chat APIs."""
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.images:
            d["images"] = list(self.images)
        return d


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """Statistics reported at the end of every generation (streamed or not).

    Times are seconds; ``tokens_per_second`` is output tokens over generation time.
    """

    finish_reason: FinishReason = "stop"
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    time_to_first_token: float | None = None
    tokens_per_second: float | None = None
    total_time: float | None = None
    load_time: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return _as_dict(self)


@dataclass(slots=True)
class GenerationChunk:
    """One piece of a streamed generation. The last chunk has ``done=True`` and ``stats``.

    Not frozen: it is created once per token on the streaming hot path, and a frozen
    dataclass costs three times as much to create. Treat it as read-only.
    """

    text: str
    done: bool = False
    stats: GenerationStats | None = None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A complete generation: the text, the model that produced it and its statistics."""

    text: str
    model: str
    provider: str
    stats: GenerationStats = field(default_factory=GenerationStats)

    @property
    def finish_reason(self) -> FinishReason:
        """Why generation ended: ``stop``, ``length`` or ``cancelled``."""
        return self.stats.finish_reason

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return {
            "text": self.text,
            "model": self.model,
            "provider": self.provider,
            "stats": self.stats.to_dict(),
        }
