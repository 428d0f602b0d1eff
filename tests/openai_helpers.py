"""Shared pieces of the OpenAI-compatible provider tests."""

from __future__ import annotations

import socket
from typing import Any

from papin.llm.providers.openai_compatible import OpenAICompatibleConfig, OpenAICompatibleProvider
from tests.fakes.openai_server import DEFAULT_TOKENS

MODEL = "tiny-chat"
TEXT = "".join(DEFAULT_TOKENS)
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
#: Tiny phase limits: a failure never waits long.
FAST: dict[str, Any] = {"timeout_seconds": 0.8, "connect_timeout_seconds": 1.0,
                        "first_byte_timeout_seconds": 0.8, "idle_timeout_seconds": 0.3}


def make_config(url: str, **overrides: Any) -> OpenAICompatibleConfig:
    """A config for ``url`` with the tiny limits."""
    return OpenAICompatibleConfig(**{"endpoint": url, **FAST, **overrides})


def closed_port_url() -> str:
    """The URL of a 127.0.0.1 port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def still_works(provider: OpenAICompatibleProvider) -> None:
    """After a failure the same provider (and its pool) still works."""
    assert (await provider.generate(MODEL, "again")).text == TEXT
