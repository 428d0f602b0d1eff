"""The recovery settings of :class:`~papin.llm.config.LLMConfig`: how failed requests are retried."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["BreakerConfig", "FallbackSpec", "RetryConfig"]


class RetryConfig(BaseModel):
    """How a request that failed before its first chunk is tried again.

    Retried: connection refused or reset before any byte, a connect or first-byte timeout, and
    429/503 (after ``Retry-After`` when the server gives one, up to ``max_retry_after_seconds``).
    Never retried: 401/403, a missing model, a rejected request, a configuration error, and any
    failure after the first chunk reached the caller (that one fails with ``partial_text`` set).

    Example::

        LLMConfig(retry=RetryConfig(max_attempts=5, max_backoff_seconds=2))
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)

    max_attempts: int = Field(3, ge=1, le=20, description="Tries in all, the first included (1: none).")
    initial_backoff_seconds: float = Field(
        0.25, ge=0, le=60, description="Wait before the second try; doubled each time, with jitter."
    )
    max_backoff_seconds: float = Field(4.0, ge=0, le=600, description="The longest wait between tries.")
    max_retry_after_seconds: float = Field(
        30.0, ge=0, le=3600, description="The longest Retry-After honoured; a longer one fails at once."
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.max_backoff_seconds < self.initial_backoff_seconds:
            raise ValueError("max_backoff_seconds must be at least initial_backoff_seconds")
        return self


class BreakerConfig(BaseModel):
    """The circuit breaker of each endpoint of a provider with several (``endpoints: [...]``).

    After ``failure_threshold`` failures in a row (or at once, for a refusal such as 401) the
    endpoint is left alone for ``cooldown_seconds``; then one request tries it (half-open), and
    its outcome closes the breaker or opens it again.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)

    failure_threshold: int = Field(5, ge=1, le=1000, description="Failures in a row that open it.")
    cooldown_seconds: float = Field(10.0, gt=0, le=3600, description="How long an open endpoint rests.")


class FallbackSpec(BaseModel):
    """One provider of ``LLMConfig.fallbacks``, tried when those before it failed before output.

    ``provider_config`` is laid over the provider's own settings (``providers``); ``model``
    replaces the requested model (else the requested one, else the provider's default).

    Example::

        FallbackSpec(provider_type="ollama", provider_config={"endpoint": "http://backup:11434"})
    """

    model_config = ConfigDict(extra="forbid", defer_build=True)

    provider_type: str = Field(description="A registered provider name (ollama, llamacpp, vllm...).")
    provider_config: dict[str, Any] = Field(default_factory=dict, description="Its settings.")
    model: str | None = Field(None, description="The model it serves instead of the requested one.")

    @field_validator("provider_type", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        value = getattr(value, "value", value)  # a ProviderType member
        return value.strip().lower() if isinstance(value, str) else value
