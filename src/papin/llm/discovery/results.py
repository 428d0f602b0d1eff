"""What a discovery found: :class:`DiscoveredBackend` and :class:`DiscoveryResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from papin.llm.discovery.installed import InstalledExecutable, InstalledPackage
    from papin.llm.discovery.model_files import LocalModelFile
    from papin.llm.discovery.probes import ProbeOutcome

__all__ = ["DiscoveredBackend", "DiscoveryResult"]


@dataclass(frozen=True, slots=True)
class DiscoveredBackend:
    """A server found at an address (or an address named by the user that did not answer).

    Attributes:
        provider: papin's provider name (``ollama``, ``localai``, ``llamacpp_server``, ``vllm``,
            ``lmstudio``, ``openai_compatible``; ``unknown`` for an unrecognised named address).
        address: Base URL to give the provider as ``endpoint``.
        version: What the server says its version is (llama-server: its build).
        health: ``"ready"``, ``"loading"`` (llama-server loading its model, LocalAI preloading)
            or ``"error"`` (``reason`` says why).
        models: Models it serves or has installed; ``loaded_models``: those in memory.
        accelerated: ``True`` when it runs on a GPU (vLLM; Ollama with models in VRAM),
            ``False`` when it is seen running on the CPU, ``None`` when it does not say.
        source: Why the address was probed (``"well-known port"``, ``"OLLAMA_HOST"``...).
    """

    provider: str
    address: str
    version: str | None = None
    health: str = "ready"
    reason: str | None = None
    models: tuple[str, ...] = ()
    loaded_models: tuple[str, ...] = ()
    accelerated: bool | None = None
    source: str = "well-known port"
    details: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def usable(self) -> bool:
        """Ready, or loading (it will be ready soon)."""
        return self.health in ("ready", "loading")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "provider": self.provider,
            "address": self.address,
            "version": self.version,
            "health": self.health,
            "reason": self.reason,
            "models": list(self.models),
            "loaded_models": list(self.loaded_models),
            "accelerated": self.accelerated,
            "source": self.source,
            "details": dict(self.details),
            "elapsed_ms": round(self.elapsed * 1000, 1),
        }

    @classmethod
    def from_outcome(cls, outcome: ProbeOutcome) -> DiscoveredBackend | None:
        """The entry for a probe outcome: a recognised server, or a named address with its
        error; ``None`` for a well-known port with nothing (recognisable) behind it."""
        c, found = outcome.candidate, outcome.found
        if found is not None:
            return cls(
                found.provider,
                c.url,
                found.version,
                found.health,
                found.reason,
                found.models,
                found.loaded_models,
                found.accelerated,
                c.source,
                dict(found.details),
                outcome.elapsed,
            )
        if not c.explicit:
            return None
        return cls(
            c.hint or "unknown",
            c.url,
            None,
            "error",
            outcome.error or "no answer",
            source=c.source,
            elapsed=outcome.elapsed,
        )


@dataclass(frozen=True, slots=True)
class DiscoveryResult:
    """Everything one discovery found. Parts not asked for are empty (see ``*_scanned``)."""

    backends: tuple[DiscoveredBackend, ...] = ()
    executables: tuple[InstalledExecutable, ...] = ()
    packages: tuple[InstalledPackage, ...] = ()
    model_files: tuple[LocalModelFile, ...] = ()
    probed: tuple[str, ...] = ()
    servers_scanned: bool = False
    files_scanned: bool = False
    installed_scanned: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    checked_at: float = 0.0

    def running(self, provider: str | None = None) -> list[DiscoveredBackend]:
        """Servers that are ready or loading (of ``provider``, when given)."""
        return [b for b in self.backends if b.usable and (provider is None or b.provider == provider)]

    def seen_at(self, url: str) -> tuple[bool, DiscoveredBackend | None]:
        """(whether discovery probed ``url``, what it found there), whatever the spelling of
        the address (``localhost`` or ``127.0.0.1``, with or without ``/v1``)."""
        key = _address(url)
        found = next((b for b in self.backends if _address(b.address) == key), None)
        return key in {_address(u) for u in self.probed}, found

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "backends": [b.to_dict() for b in self.backends],
            "executables": [e.to_dict() for e in self.executables],
            "packages": [p.to_dict() for p in self.packages],
            "model_files": [f.to_dict() for f in self.model_files],
            "probed": list(self.probed),
            "scanned": {
                "servers": self.servers_scanned,
                "files": self.files_scanned,
                "installed": self.installed_scanned,
            },
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "checked_at": self.checked_at,
        }


def _address(url: str) -> str:
    """One spelling of an address, for comparisons.

    >>> _address("http://localhost:8080/v1/"), _address("127.0.0.1:8080")
    ('http://127.0.0.1:8080', 'http://127.0.0.1:8080')
    """
    from papin.llm.discovery.candidates import normal_url
    from papin.llm.errors import ConfigurationError

    try:
        url = normal_url(url.rstrip("/").removesuffix("/v1"))
    except ConfigurationError:
        return url
    return url.replace("://localhost", "://127.0.0.1")
