"""Any server that speaks OpenAI's ``/v1`` API: the custom provider (endpoint of your choice).

Example::

    from papin.llm.providers.openai_compatible import OpenAICompatibleConfig, OpenAICompatibleProvider

    config = OpenAICompatibleConfig(endpoint="http://127.0.0.1:8000/v1", api_key="sk-local")
    async with OpenAICompatibleProvider(config) as server:
        print(await server.generate_text("my-model", "Once upon a time"))
"""

from __future__ import annotations

from typing import ClassVar

from papin.llm.datatypes import ProviderType
from papin.llm.providers._openai import OpenAIBase, OpenAICompatibleConfig

__all__ = ["OpenAICompatibleConfig", "OpenAICompatibleProvider"]


class OpenAICompatibleProvider(OpenAIBase):
    """Completion, chat and model listing on any OpenAI-compatible server (custom endpoint)."""

    provider_type: ClassVar[ProviderType] = ProviderType.OPENAI_COMPATIBLE
    display_name: str = "OpenAI-compatible server"
    description: str = "Any server that speaks OpenAI's /v1 API (custom endpoint)."
