"""Shared helpers of the Ollama provider tests."""

from __future__ import annotations

import socket
from typing import Any

from papin.llm.providers.ollama import OllamaConfig

MODEL = "llama3.2"

#: Short limits so that no failure test waits long; generous enough for a loaded 2-core box.
FAST: dict[str, Any] = {
    "timeout_seconds": 5.0,
    "connect_timeout_seconds": 2.0,
    "first_byte_timeout_seconds": 5.0,
    "idle_timeout_seconds": 2.0,
}


def make_config(url: str, **overrides: Any) -> OllamaConfig:
    """An Ollama config for ``url`` with the short test limits."""
    return OllamaConfig(**{"endpoint": url, **FAST, **overrides})


def closed_port_url() -> str:
    """The URL of a 127.0.0.1 port that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
