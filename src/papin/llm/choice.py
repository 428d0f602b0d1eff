"""How :meth:`papin.llm.manager.LLMManager.initialize` chooses its provider, and records why.

1. The configured ``provider_type``, at its configured address, if it is available.
2. With ``auto_discover`` off: nothing else when a provider is configured; otherwise the
   providers of ``no_discovery_order`` (Ollama at ``OLLAMA_HOST`` or its default address, then
   the embedded provider), as papin always did.
3. With ``auto_discover`` on: discovery probes the machine, and the providers are tried in the
   order of :func:`papin.llm.discovery.rank_providers` (papin's preference rule, which looks
   at the hardware only when every running server is seen on the CPU); a server found at a
   non-default address is used at that address.

The first provider whose own ``status()`` says it is available wins. This module imports
nothing heavy at import time (discovery and hardware detection are imported when used).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from papin.llm.datatypes import ProviderStatus
from papin.llm.errors import ConfigurationError, ProviderError, ProviderUnavailableError

if TYPE_CHECKING:
    from papin.llm.config import LLMConfig
    from papin.llm.discovery import Discovery, DiscoveryResult
    from papin.llm.factory import ProviderFactory
    from papin.llm.hardware import HardwareInfo
    from papin.llm.provider import Provider
    from papin.llm.router import RecoveryEvent

__all__ = ["ProviderChoice", "choose_provider", "embedded_can_use_gpu", "provider_statuses"]


def _where(status: ProviderStatus) -> str:
    return f" at {status.endpoint}" if status.endpoint and "://" in status.endpoint else ""


def _reason(
    name: str,
    configured: str | None,
    status: ProviderStatus,
    tried: Sequence[ProviderStatus],
    why: str | None = None,
) -> str:
    where = _where(status)
    if name == configured and why is None:
        return f"configured provider '{name}' is available{where}"
    skipped = "; ".join(f"'{s.provider}' unavailable ({s.error})" for s in tried)
    head = f"configured provider '{configured}'" if configured else "no provider configured"
    tail = f": {why}" if why else ""
    if skipped:
        return f"{head}; {skipped}; using '{name}'{where}{tail}"
    return f"{head}; using '{name}'{where}{tail}"


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    """Which provider the manager chose, and why.

    ``tried`` are the providers found unavailable before it; ``discovery`` is what discovery
    found when it took part in the choice (``None`` when the configured provider was used
    without probing anything).
    """

    provider: str
    reason: str
    status: ProviderStatus
    tried: tuple[ProviderStatus, ...] = ()
    discovery: DiscoveryResult | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the discovery result is left to its own ``to_dict``)."""
        return {
            "provider": self.provider,
            "reason": self.reason,
            "status": self.status.to_dict(),
            "tried": [s.to_dict() for s in self.tried],
        }


def embedded_can_use_gpu(hardware: HardwareInfo) -> bool:
    """Whether the hardware report shows a GPU that the installed llama.cpp can offload to."""
    return hardware.has_gpu and hardware.llama.gpu_offload


def _unavailable(tried: Sequence[ProviderStatus], configured: str | None, note: str = "") -> ProviderError:
    """The error of a failed choice: the configured provider's own typed error (a copy, with the
    other candidates in its message, chained to the original), else ProviderUnavailableError."""
    own = next((s.exception for s in tried if s.provider == configured and s.exception), None)
    if own is not None:
        others = "; ".join(f"{s.provider}: {s.error}" for s in tried if s.provider != configured)
        message = own.message + (f" Also tried: {others}." if others else "") + note
        error = copy.copy(own)
        error.message, error.args = message, (message,)
        error.__cause__ = own
        error.__traceback__ = None
        return error
    details = "; ".join(f"{s.provider}: {s.error}" for s in tried)
    return ProviderUnavailableError(f"No LLM provider is available. {details}{note}", provider=configured)


async def _try(
    factory: ProviderFactory,
    name: str,
    settings: dict[str, Any],
    endpoint: str | None,
    replicas: Callable[[Provider, Callable[[str], Provider]], Provider] | None = None,
) -> tuple[Provider | None, ProviderStatus]:
    try:
        provider = factory.create_provider(name, settings)
        if replicas is not None:  # several endpoints: one provider per endpoint, as a set
            make = lambda url: factory.create_provider(name, {**settings, "endpoint": url})  # noqa: E731
            provider = replicas(provider, make)
    except ConfigurationError as exc:
        return None, ProviderStatus(name, False, endpoint=endpoint, error=str(exc), exception=exc)
    status = await provider.status()
    if not status.available:
        await provider.aclose()
        return None, status
    return provider, status


async def choose_provider(
    config: LLMConfig,
    factory: ProviderFactory,
    *,
    discovery: Callable[[], Discovery],
    hardware: Callable[[], Awaitable[HardwareInfo]],
    fallbacks: Sequence[str] = ("llamacpp",),
    no_discovery_order: Sequence[str] = ("ollama", "llamacpp"),
    on_event: Callable[[RecoveryEvent], None] | None = None,
) -> tuple[ProviderChoice, Provider]:
    """Choose and create the provider (see the module docstring); the caller owns it.

    A provider whose settings name several ``endpoints`` is created as a replica set
    (:class:`~papin.llm.router.ReplicaSet`, breakers from ``config.circuit_breaker``, events to
    ``on_event``); it is available when any replica is.

    ``discovery`` returns the :class:`~papin.llm.discovery.Discovery` to use; ``hardware``
    returns the hardware report (:func:`papin.llm.hardware.detect_hardware`'s) when the rule
    needs it.

    Raises:
        ProviderError: nothing is available. When a provider is configured, its own typed
            error (``AuthenticationError``, ``RateLimitedError``, ``ProviderTimeoutError``...,
            chained to the original) with the other candidates in the message; otherwise
            ``ProviderUnavailableError`` listing why, per provider.
    """
    configured = config.provider_type
    tried: list[ProviderStatus] = []

    def replicas(provider: Provider, make: Callable[[str], Provider]) -> Provider:
        if len(getattr(provider.config, "endpoints", None) or ()) < 2:
            return provider
        from papin.llm.router import replicate

        return replicate(provider, make, config.circuit_breaker, on_event)

    if configured:
        provider, status = await _try(factory, configured, config.settings_for(configured), None, replicas)
        if provider is not None:
            return ProviderChoice(
                configured, _reason(configured, configured, status, tried), status
            ), provider
        tried.append(status)
        for index, spec in enumerate(config.fallbacks, 1):  # the configured fallbacks, in order
            settings = {**config.settings_for(spec.provider_type), **spec.provider_config}
            provider, status = await _try(factory, spec.provider_type, settings, None, replicas)
            if provider is not None:
                kind = spec.provider_type
                reason = f"the configured {configured} is unavailable; fallback {index} ({kind}) answers"
                return ProviderChoice(spec.provider_type, reason, status, tuple(tried)), provider
            tried.append(status)
        if not config.auto_discover:
            raise _unavailable(tried, configured, " (auto_discover is off: no other provider was tried.)")
    if not config.auto_discover:
        for name in no_discovery_order:
            provider, status = await _try(factory, name, config.settings_for(name), None, replicas)
            if provider is not None:
                return ProviderChoice(
                    name, _reason(name, configured, status, tried), status, tuple(tried)
                ), provider
            tried.append(status)
        raise _unavailable(tried, configured)

    from papin.llm.discovery import hardware_matters, rank_providers

    result = await discovery().discover(servers=True, files=False, installed=False)
    embedded_gpu: bool | None = None
    if hardware_matters(result):
        embedded_gpu = embedded_can_use_gpu(await hardware())
    for named in result.backends:  # addresses the user named (OLLAMA_HOST...) that are down
        if named.health == "error" and named.provider != configured:
            tried.append(ProviderStatus(named.provider, False, named.address, named.version,
                                        f"{named.reason} at {named.address}"))  # fmt: skip
    registered = set(factory.registered_providers())
    for pref in rank_providers(result, configured=configured, fallbacks=fallbacks, embedded_gpu=embedded_gpu):
        if pref.provider not in registered or (pref.backend is None and pref.provider == configured):
            continue
        settings = dict(config.settings_for(pref.provider))
        if pref.address is not None:
            settings["endpoint"] = pref.address
            if pref.provider == "llamacpp_server":
                settings["managed"] = False
        provider, status = await _try(factory, pref.provider, settings, pref.address, replicas)
        if provider is not None:
            reason = _reason(pref.provider, configured, status, tried, pref.why)
            return ProviderChoice(pref.provider, reason, status, tuple(tried), result), provider
        tried.append(status)
    found = len(result.running())
    note = (
        f" (discovery probed {len(result.probed)} addresses and found {found} running server"
        f"{'s' if found != 1 else ''}.)"
    )
    raise _unavailable(tried, configured, note)


async def provider_statuses(
    config: LLMConfig, factory: ProviderFactory, found: DiscoveryResult
) -> dict[str, ProviderStatus]:
    """The status of every registered provider, from what discovery already found (one probing
    pass: ``papin providers`` and ``papin doctor``).

    A provider whose kind discovery found running is available there; one whose address
    discovery probed without finding it is unavailable, with what discovery saw; only the
    others (the embedded provider, an address discovery did not probe) are asked for their own
    ``status()``, all at once.
    """
    import asyncio

    from papin.llm.transport.base import HttpProvider
    from papin.llm.transport.errors import not_running

    statuses: dict[str, ProviderStatus] = {}
    pending: dict[str, Provider] = {}
    for name in factory.registered_providers():
        settings = config.settings_for(name)
        if len(settings.get("endpoints") or ()) > 1:  # replicas: each endpoint and its breaker
            try:
                first = factory.create_provider(name, settings)
            except ConfigurationError as exc:
                statuses[name] = ProviderStatus(name, False, error=str(exc))
                continue
            from papin.llm.router import replicate

            make = lambda url, n=name, s=settings: factory.create_provider(n, {**s, "endpoint": url})  # noqa: E731
            pending[name] = replicate(first, make, config.circuit_breaker)
            continue
        running = found.running(name)
        if running:
            b = running[0]
            details = {"found by": b.source, "health": b.health, "models": str(len(b.models))}
            statuses[name] = ProviderStatus(name, True, b.address, b.version, details=details)
            continue
        try:
            provider = factory.create_provider(name, config.settings_for(name))
        except ConfigurationError as exc:
            statuses[name] = ProviderStatus(name, False, error=str(exc))
            continue
        endpoint = str(getattr(provider, "endpoint", "") or "")
        probed, seen = found.seen_at(endpoint) if endpoint else (False, None)
        if probed:
            why = f"discovery found no {provider.display_name} answering at {endpoint}"
            if seen is not None and seen.reason:
                why = f"{provider.display_name} at {endpoint}: {seen.reason}"
                if "refused" in seen.reason and isinstance(provider, HttpProvider):
                    why = not_running(provider.service_info(), seen.reason)
            statuses[name] = ProviderStatus(name, False, endpoint, error=why)
            await provider.aclose()
            continue
        pending[name] = provider

    async def ask(provider: Provider) -> ProviderStatus:
        try:
            return await provider.status()
        except Exception as exc:  # a broken third-party provider must not break the report
            return ProviderStatus(provider.name, False, error=f"{type(exc).__name__}: {exc}")
        finally:
            await provider.aclose()

    answers = await asyncio.gather(*(ask(p) for p in pending.values()))
    statuses.update(zip(pending, answers, strict=True))
    return {name: statuses[name] for name in factory.registered_providers() if name in statuses}
