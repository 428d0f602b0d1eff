"""Where discovery looks for running servers (sans-I/O): the candidate addresses.

:func:`default_candidates` turns the environment into the addresses worth probing: those the
backends' own variables name (``OLLAMA_HOST`` parsed as Ollama does, ``LLAMA_ARG_HOST``/
``LLAMA_ARG_PORT``, ``LOCALAI_ADDRESS``/``ADDRESS``, a local ``OPENAI_BASE_URL``) and the
well-known loopback ports. ``PAPIN_DISCOVERY_CANDIDATES`` (comma-separated ``[TYPE=]URL``
entries; empty for none) replaces the well-known ports: the addresses the environment names are
still probed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from papin.llm.errors import ConfigurationError
from papin.llm.wire.hosts import connectable_host

__all__ = [
    "CANDIDATES_ENV",
    "PROVIDER_NAMES",
    "WELL_KNOWN_PORTS",
    "Candidate",
    "dedupe",
    "default_candidates",
    "env_candidates",
    "normal_url",
    "parse_candidate",
    "well_known_candidates",
]

#: Loopback ports probed by default, with the backends that usually listen there.
WELL_KNOWN_PORTS: tuple[tuple[int, str], ...] = (
    (11434, "Ollama"),
    (8080, "llama-server, LocalAI"),
    (8000, "vLLM, llama-cpp-python's server"),
    (1234, "LM Studio"),
    (8081, "a second llama-server or LocalAI"),
    (8765, "LocalAI (older setups)"),
)

#: Environment variable that replaces the default candidates: comma-separated
#: ``[provider=]URL`` entries, reported only when something answers (like the well-known
#: ports); empty means "probe nothing by default".
CANDIDATES_ENV = "PAPIN_DISCOVERY_CANDIDATES"

PROVIDER_NAMES = ("ollama", "localai", "llamacpp_server", "vllm", "lmstudio", "openai_compatible")


# -- candidates ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Candidate:
    """An address worth probing.

    Attributes:
        url: Base URL (``http://127.0.0.1:11434``), without a trailing slash.
        hint: The provider expected there (from the variable or setting that named it).
        source: Why it is probed (``"well-known port"``, ``"OLLAMA_HOST"``, ``"configured"``).
        explicit: Reported even when it does not answer or is not recognised (an address the
            user named), where a well-known port that says nothing is simply left out.
    """

    url: str
    hint: str | None = None
    source: str = "well-known port"
    explicit: bool = False


def normal_url(url: str, default_port: int | None = None) -> str:
    """``url`` with a scheme (``http`` when it has none, and then ``default_port`` when it
    names no port), loopback for bind-all or missing hosts, and no trailing slash.

    >>> normal_url("0.0.0.0:8080"), normal_url("http://localhost:1234/"), normal_url(":9", 80)
    ('http://127.0.0.1:8080', 'http://localhost:1234', 'http://127.0.0.1:9')
    >>> normal_url("[::1]", 8080)
    'http://[::1]:8080'
    """
    url = url.strip()
    if "://" in url:
        default_port = None
    else:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as exc:  # "http://[::1" and the like
        raise ConfigurationError(f"Invalid address {url!r}: {exc}.") from None
    host = connectable_host(hostname or "127.0.0.1")
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    netloc = f"{host}:{port}" if port else host
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def parse_candidate(
    entry: str | Candidate | Mapping[str, Any] | tuple[str, str | None],
    *,
    source: str = "configured",
    explicit: bool = True,
) -> Candidate:
    """A :class:`Candidate` from ``"URL"``, ``"provider=URL"``, ``(url, provider)`` or
    ``{"url": ..., "provider": ...}``; explicit (always reported).

    >>> parse_candidate("vllm=http://gpu-box:8000")
    Candidate(url='http://gpu-box:8000', hint='vllm', source='configured', explicit=True)
    >>> parse_candidate(":11500").url
    'http://127.0.0.1:11500'
    """
    if isinstance(entry, Candidate):
        return entry
    hint: str | None
    if isinstance(entry, tuple):
        url, hint = entry
    elif isinstance(entry, Mapping):
        url, hint = str(entry.get("url") or entry.get("endpoint") or ""), entry.get("provider")
    else:
        text = entry.strip()
        head, sep, rest = text.partition("=")
        url, hint = (rest, head.strip().lower()) if sep and "://" not in head else (text, None)
    if hint is not None and hint not in PROVIDER_NAMES:
        raise ConfigurationError(
            f"Unknown provider {hint!r} for discovery endpoint {url!r}; use one of "
            f"{', '.join(PROVIDER_NAMES)}."
        )
    if not url.strip():
        raise ConfigurationError(f"Empty URL in discovery endpoint {entry!r}.")
    return Candidate(normal_url(url), hint, source, explicit=explicit)


def well_known_candidates() -> list[Candidate]:
    """The loopback ports in :data:`WELL_KNOWN_PORTS`."""
    return [Candidate(f"http://127.0.0.1:{port}") for port, _ in WELL_KNOWN_PORTS]


def _is_local_host(host: str) -> bool:
    if host in ("localhost", "") or host.endswith((".localhost", ".local")):
        return True
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def env_candidates(env: Mapping[str, str]) -> list[Candidate]:
    """Addresses named by the backends' own environment variables.

    ``OLLAMA_HOST`` (parsed as Ollama does), ``LLAMA_ARG_HOST``/``LLAMA_ARG_PORT``
    (llama-server), ``LOCALAI_ADDRESS``/``ADDRESS`` (LocalAI), and ``OPENAI_BASE_URL`` when it
    points at this machine or the local network (never a cloud API).

    >>> [c.url for c in env_candidates({"OLLAMA_HOST": "0.0.0.0:11500", "LLAMA_ARG_PORT": "9000"})]
    ['http://127.0.0.1:11500', 'http://127.0.0.1:9000']
    """
    found: list[Candidate] = []
    raw = env.get("OLLAMA_HOST", "").strip()
    if raw:
        from papin.llm.wire.ollama import parse_host

        with contextlib.suppress(ConfigurationError):  # a value Ollama would refuse too
            found.append(Candidate(parse_host(raw), "ollama", "OLLAMA_HOST", True))
    host, port = env.get("LLAMA_ARG_HOST", "").strip(), env.get("LLAMA_ARG_PORT", "").strip()
    if host or port:
        with contextlib.suppress(ConfigurationError):
            url = normal_url(host, int(port) if port.isdigit() else 8080)
            found.append(Candidate(url, "llamacpp_server", "LLAMA_ARG_HOST/LLAMA_ARG_PORT", True))
    for var in ("LOCALAI_ADDRESS", "ADDRESS"):
        value = env.get(var, "").strip()
        if value and (":" in value) and " " not in value:
            with contextlib.suppress(ConfigurationError):
                found.append(Candidate(normal_url(value, 8080), "localai", var, True))
                break
    base = env.get("OPENAI_BASE_URL", "").strip()
    if base.lower().startswith(("http://", "https://")):
        with contextlib.suppress(ConfigurationError):
            url = normal_url(base)
            if _is_local_host(urlsplit(url).hostname or ""):
                root = url[: -len("/v1")] if url.endswith("/v1") else url
                found.append(Candidate(root, "openai_compatible", "OPENAI_BASE_URL", True))
    return found


def default_candidates(env: Mapping[str, str] | None = None) -> list[Candidate]:
    """What discovery probes when not told otherwise: the environment's addresses, then the
    well-known loopback ports, which ``PAPIN_DISCOVERY_CANDIDATES`` replaces."""
    env = os.environ if env is None else env
    override = env.get(CANDIDATES_ENV)
    if override is not None:
        entries = [e for e in override.split(",") if e.strip()]
        try:
            ports = [parse_candidate(e, source=CANDIDATES_ENV, explicit=False) for e in entries]
        except ConfigurationError as exc:
            raise ConfigurationError(f"{CANDIDATES_ENV}: {exc.message}") from None
        return dedupe([*env_candidates(env), *ports])
    return dedupe([*env_candidates(env), *well_known_candidates()])


def dedupe(candidates: Iterable[Candidate]) -> list[Candidate]:
    """First candidate per URL; a later explicit duplicate makes the kept one explicit."""
    seen: dict[str, Candidate] = {}
    for c in candidates:
        kept = seen.get(c.url)
        if kept is None:
            seen[c.url] = c
        elif c.explicit and not kept.explicit:
            seen[c.url] = Candidate(c.url, kept.hint or c.hint, c.source, True)
    return list(seen.values())
