"""The provider factory: a registry of provider classes, and the process-wide singleton.

Built-in providers are registered as import paths and imported only when used. Third-party
packages add providers through the entry-point group ``papin.providers``::

    [project.entry-points."papin.providers"]
    myserver = "my_package.provider:MyProvider"

``get_provider_factory()`` returns one lazily created, thread-safe factory;
``reset_provider_factory()`` drops it (for tests).
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from pydantic import ValidationError

from papin.llm.datatypes import ProviderStatus, ProviderType
from papin.llm.errors import ConfigurationError, ProviderError, format_validation_error
from papin.llm.provider import Provider, ProviderConfig

__all__ = ["ENTRY_POINT_GROUP", "ProviderFactory", "get_provider_factory", "reset_provider_factory"]

ENTRY_POINT_GROUP = "papin.providers"

#: Built-in providers: name -> "module:Class", imported on first use.
BUILTIN_PROVIDERS: dict[str, str] = {
    ProviderType.OLLAMA.value: "papin.llm.providers.ollama:OllamaProvider",
    ProviderType.LLAMACPP.value: "papin.llm.providers.llamacpp:LlamaCppProvider",
    ProviderType.LLAMACPP_SERVER.value: "papin.llm.providers.llamacpp_server:LlamaCppServerProvider",
    ProviderType.LOCALAI.value: "papin.llm.providers.localai:LocalAIProvider",
    ProviderType.VLLM.value: "papin.llm.providers.vllm:VLLMProvider",
    ProviderType.LMSTUDIO.value: "papin.llm.providers.lmstudio:LMStudioProvider",
    ProviderType.OPENAI_COMPATIBLE.value: "papin.llm.providers.openai_compatible:OpenAICompatibleProvider",
}


class ProviderFactory:
    """Registers provider classes, creates configured providers, tracks the default."""

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self._lock = threading.RLock()
        self._registry: dict[str, str | type[Provider]] = dict(BUILTIN_PROVIDERS)
        self._entry_points_loaded = not load_entry_points
        self._default: str = ProviderType.OLLAMA.value

    # -- registration ---------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        with self._lock:
            if self._entry_points_loaded:
                return
            from importlib.metadata import entry_points

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                self._registry.setdefault(ep.name, ep.value)
            self._entry_points_loaded = True

    def register_provider(self, name: str, provider: str | type[Provider]) -> None:
        """Register (or replace) a provider class, or a lazy ``"module:Class"`` path."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigurationError(f"Invalid provider name {name!r}: use letters, digits, '_'.")
        with self._lock:
            self._registry[name] = provider

    def unregister_provider(self, name: str) -> None:
        """Remove a provider from the registry (no error if absent)."""
        with self._lock:
            self._registry.pop(name, None)

    def registered_providers(self) -> list[str]:
        """Names of all registered providers, built-ins first."""
        self._load_entry_points()
        with self._lock:
            return list(self._registry)

    def provider_class(self, name: str) -> type[Provider]:
        """The class registered under ``name`` (imported now if it was lazy)."""
        self._load_entry_points()
        with self._lock:
            target = self._registry.get(name)
        if target is None:
            raise ConfigurationError(
                f"Unknown provider {name!r}. Registered providers: "
                f"{', '.join(self.registered_providers())}."
            )
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            try:
                cls = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigurationError(
                    f"Provider {name!r} cannot be loaded from {target!r}: {exc}"
                ) from exc
            if not (isinstance(cls, type) and issubclass(cls, Provider)):
                raise ConfigurationError(f"{target!r} is not a papin Provider class.")
            with self._lock:
                self._registry[name] = cls
            return cls
        return target

    # -- creation -------------------------------------------------------------------------
    def make_config(
        self, name: str, settings: ProviderConfig | dict[str, Any] | None
    ) -> ProviderConfig:
        """Validate ``settings`` with the provider's config class (clear error if invalid)."""
        cls = self.provider_class(name).config_class
        if isinstance(settings, cls):
            return settings
        if isinstance(settings, ProviderConfig):
            settings = settings.model_dump(exclude_unset=True)
        try:
            return cls.model_validate(settings or {})
        except ValidationError as exc:
            raise ConfigurationError(
                format_validation_error(exc, f"settings for provider {name!r}"), provider=name
            ) from None

    def create_provider(
        self, name: str | ProviderType, config: ProviderConfig | dict[str, Any] | None = None
    ) -> Provider:
        """Create a new provider instance from its settings (defaults when ``None``)."""
        key = name.value if isinstance(name, ProviderType) else name
        cls = self.provider_class(key)
        provider = cls(self.make_config(key, config))
        if provider.name != key:  # a class registered under another name (or without a kind)
            provider.name = key
        return provider

    async def check_providers(
        self, settings: dict[str, dict[str, Any]] | None = None
    ) -> dict[str, ProviderStatus]:
        """Probe every registered provider concurrently; never raises."""
        settings = settings or {}

        async def probe(name: str) -> ProviderStatus:
            # A broken third-party provider must not break the report on the others.
            try:
                provider = self.create_provider(name, settings.get(name))
            except Exception as exc:
                return ProviderStatus(name, False, error=_describe(exc))
            try:
                return await provider.status()
            except Exception as exc:
                return ProviderStatus(name, False, error=_describe(exc))
            finally:
                await provider.aclose()

        names = self.registered_providers()
        import asyncio

        results = await asyncio.gather(*(probe(n) for n in names))
        return dict(zip(names, results, strict=True))

    async def available_providers(
        self, settings: dict[str, dict[str, Any]] | None = None
    ) -> list[str]:
        """Names of the providers whose backend answers now."""
        statuses = await self.check_providers(settings)
        return [name for name, st in statuses.items() if st.available]

    # -- default --------------------------------------------------------------------------
    @property
    def default_provider(self) -> str:
        """Name of the default provider."""
        return self._default

    def set_default_provider(self, name: str | ProviderType) -> None:
        """Set the default provider (must be registered)."""
        key = name.value if isinstance(name, ProviderType) else name
        if key not in self.registered_providers():
            raise ConfigurationError(f"Cannot make unknown provider {key!r} the default.")
        with self._lock:
            self._default = key


def _describe(exc: Exception) -> str:
    if isinstance(exc, ProviderError):
        return str(exc)
    return f"provider failed: {type(exc).__name__}: {exc}"


_factory: ProviderFactory | None = None
_factory_lock = threading.Lock()


def get_provider_factory() -> ProviderFactory:
    """The process-wide factory, created on first call (thread-safe)."""
    global _factory
    if _factory is None:
        with _factory_lock:
            if _factory is None:
                _factory = ProviderFactory()
    return _factory


def reset_provider_factory() -> None:
    """Forget the process-wide factory (tests use this to start clean)."""
    global _factory
    with _factory_lock:
        _factory = None
