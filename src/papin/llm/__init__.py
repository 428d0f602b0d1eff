"""papin's LLM provider system (the seed's ``crate::offline::llm``).

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
        ProtocolError,
        ProviderAPIError,
        ProviderError,
        ProviderTimeoutError,
        ProviderUnavailableError,
        RateLimitedError,
        UnsupportedOperationError,
    )
    from papin.llm.factory import ProviderFactory, get_provider_factory, reset_provider_factory
    from papin.llm.hardware import HardwareInfo, detect_hardware
    from papin.llm.hardware.fit import FitReport, assess_fit, best_fit
    from papin.llm.hardware.tuning import TunedSettings, tune
    from papin.llm.manager import LLMManager, ProviderChoice, create_llm_manager
    from papin.llm.migration import MigrationReport, detect_legacy, plan_migration, run_migration
    from papin.llm.monitor import ModelChange, ModelMonitor
    from papin.llm.options import GenerationOptions
    from papin.llm.provider import Provider, ProviderConfig
    from papin.llm.sync import SyncLLMManager, create_sync_llm_manager

_EXPORTS: dict[str, str] = {
    "Discovery": "discovery",
    "DiscoveryResult": "discovery",
    "DiscoveredBackend": "discovery",
    "get_discovery": "discovery",
    "ModelChange": "monitor",
    "ModelMonitor": "monitor",
    "HardwareInfo": "hardware",
    "detect_hardware": "hardware",
    "FitReport": "hardware.fit",
    "assess_fit": "hardware.fit",
    "best_fit": "hardware.fit",
    "TunedSettings": "hardware.tuning",
    "tune": "hardware.tuning",
    "MigrationReport": "migration",
    "detect_legacy": "migration",
    "plan_migration": "migration",
    "run_migration": "migration",
    "LLMConfig": "config",
    "config_path": "config",
    "AuthenticationError": "errors",
    "CancelledError": "errors",
    "ConfigurationError": "errors",
    "DownloadError": "errors",
    "GenerationError": "errors",
    "InvalidModelFileError": "errors",
    "ModelNotFoundError": "errors",
    "NativeCrashError": "errors",
    "ProtocolError": "errors",
    "ProviderAPIError": "errors",
    "ProviderError": "errors",
    "ProviderTimeoutError": "errors",
    "ProviderUnavailableError": "errors",
    "RateLimitedError": "errors",
    "UnsupportedOperationError": "errors",
    "ProviderFactory": "factory",
    "get_provider_factory": "factory",
    "reset_provider_factory": "factory",
    "LLMManager": "manager",
    "ProviderChoice": "manager",
    "create_llm_manager": "manager",
    "GenerationOptions": "options",
    "Provider": "provider",
    "ProviderConfig": "provider",
    "SyncLLMManager": "sync",
    "create_sync_llm_manager": "sync",
    "Capability": "datatypes",
    "ChatMessage": "datatypes",
    "DownloadStatus": "datatypes",
    "GenerationChunk": "datatypes",
    "GenerationResult": "datatypes",
    "GenerationStats": "datatypes",
    "LoadedModel": "datatypes",
    "ModelInfo": "datatypes",
    "ProviderStatus": "datatypes",
    "ProviderType": "datatypes",
}

__all__ = [
    "AuthenticationError",
    "CancelledError",
    "Capability",
    "ChatMessage",
    "ConfigurationError",
    "DiscoveredBackend",
    "Discovery",
    "DiscoveryResult",
    "DownloadError",
    "DownloadStatus",
    "FitReport",
    "GenerationChunk",
    "GenerationError",
    "GenerationOptions",
    "GenerationResult",
    "GenerationStats",
    "HardwareInfo",
    "InvalidModelFileError",
    "LLMConfig",
    "LLMManager",
    "LoadedModel",
    "MigrationReport",
    "ModelChange",
    "ModelInfo",
    "ModelMonitor",
    "ModelNotFoundError",
    "NativeCrashError",
    "ProtocolError",
    "Provider",
    "ProviderAPIError",
    "ProviderChoice",
    "ProviderConfig",
    "ProviderError",
    "ProviderFactory",
    "ProviderStatus",
    "ProviderTimeoutError",
    "ProviderType",
    "ProviderUnavailableError",
    "RateLimitedError",
    "SyncLLMManager",
    "TunedSettings",
    "UnsupportedOperationError",
    "assess_fit",
    "best_fit",
    "config_path",
    "create_llm_manager",
    "create_sync_llm_manager",
    "detect_hardware",
    "detect_legacy",
    "get_discovery",
    "get_provider_factory",
    "plan_migration",
    "reset_provider_factory",
    "run_migration",
    "tune",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'papin.llm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"papin.llm.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
