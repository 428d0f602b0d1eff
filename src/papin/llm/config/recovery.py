"""The recovery settings of :class:`~papin.llm.config.LLMConfig`: how failed requests are retried."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["RetryConfig"]


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
