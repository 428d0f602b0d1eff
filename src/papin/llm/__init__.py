"""papin's LLM provider system: one interface to local LLM backends.

Names are exported lazily: ``import papin.llm`` does no I/O and imports no backend or HTTP
package; each name's module is imported the first time it is used.

Example::

    from papin.llm import create_llm_manager

    manager = create_llm_manager()
    await manager.initialize()
    print(await manager.generate_text("llama2:7b", "Tell me a story about a robot.", None))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from papin.llm.config import LLMConfig, config_path
    from papin.llm.datatypes import (
        Capability,
        ChatMessage,
        DownloadStatus,
        GenerationChunk,
        GenerationResult,
        GenerationStats,
        LoadedModel,
        ModelInfo,
        ProviderStatus,
        ProviderType,
    )
    from papin.llm.discovery import DiscoveredBackend, Discovery, DiscoveryResult, get_discovery
    from papin.llm.errors import (
        AuthenticationError,
        CancelledError,
        ConfigurationError,
        DownloadError,
        GenerationError,
        InvalidModelFileError,
        ModelNotFoundError,
        NativeCrashError,
        OperationCancelledError,
        ProtocolError,
        ProviderAPIError,
        ProviderError,
        ProviderTimeoutError,
        ProviderUnavailableError,
        RateLimitedError,
        UnsupportedOperationError,
    )
    from papin.llm.factory import ProviderFactory, get_provider_factory
    from papin.llm.hardware import HardwareInfo, detect_hardware
    from papin.llm.hardware.fit import FitReport, assess_fit, best_fit
    from papin.llm.hardware.tuning import TunedSettings, tune
    from papin.llm.manager import LLMManager, ProviderChoice, create_llm_manager
    from papin.llm.migration import MigrationReport, detect_legacy, plan_migration, run_migration
    from papin.llm.monitor import ModelChange, ModelMonitor
    from papin.llm.options import GenerationOptions
    from papin.llm.provider import Provider, ProviderConfig
    from papin.llm.sync import SyncLLMManager, create_sync_llm_manager
    from papin.llm.wrapper import WrapperProvider

#: Every public name, once, by the module that defines it: ``__all__`` and the lazy lookup are
#: derived from it, and a test checks it against the modules and the ``TYPE_CHECKING`` imports
#: above (which give type checkers the same names).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "config": ("LLMConfig", "config_path"),
    "datatypes": (
        "Capability",
        "ChatMessage",
        "DownloadStatus",
        "GenerationChunk",
        "GenerationResult",
        "GenerationStats",
        "LoadedModel",
        "ModelInfo",
        "ProviderStatus",
        "ProviderType",
    ),
    "discovery": ("DiscoveredBackend", "Discovery", "DiscoveryResult", "get_discovery"),
    "errors": (
        "AuthenticationError",
        "CancelledError",
        "ConfigurationError",
        "DownloadError",
        "GenerationError",
        "InvalidModelFileError",
        "ModelNotFoundError",
        "NativeCrashError",
        "OperationCancelledError",
        "ProtocolError",
        "ProviderAPIError",
        "ProviderError",
        "ProviderTimeoutError",
        "ProviderUnavailableError",
        "RateLimitedError",
        "UnsupportedOperationError",
    ),
    "factory": ("ProviderFactory", "get_provider_factory"),
    "hardware": ("HardwareInfo", "detect_hardware"),
    "hardware.fit": ("FitReport", "assess_fit", "best_fit"),
    "hardware.tuning": ("TunedSettings", "tune"),
    "manager": ("LLMManager", "ProviderChoice", "create_llm_manager"),
    "migration": ("MigrationReport", "detect_legacy", "plan_migration", "run_migration"),
    "monitor": ("ModelChange", "ModelMonitor"),
    "options": ("GenerationOptions",),
    "provider": ("Provider", "ProviderConfig"),
    "sync": ("SyncLLMManager", "create_sync_llm_manager"),
    "wrapper": ("WrapperProvider",),
}
_WHERE: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'papin.llm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"papin.llm.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
