"""A circuit breaker per endpoint: closed, open for a cooldown, then one half-open probe.

Closed, every request goes through. ``failure_threshold`` failures in a row, or one refusal
that retrying cannot fix (401/403), open it: the endpoint is left alone for
``cooldown_seconds``. Then it is half-open: exactly one request may try it; its success closes
the breaker, its failure opens it again for another cooldown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """The breaker of one endpoint; ``on_change(old, new)`` hears every transition.

    >>> b = CircuitBreaker("http://a", failure_threshold=2, cooldown_seconds=10, clock=lambda: 0.0)
    >>> b.record_failure(); b.state
    'closed'
    >>> b.record_failure(); b.state, b.allow()
    ('open', False)
    """

    def __init__(
        self,
        endpoint: str,
        *,
        failure_threshold: int = 5,
        cooldown_seconds: float = 10.0,
        on_change: Callable[[CircuitBreaker, BreakerState, BreakerState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self.on_change = on_change
        self._clock = clock
        self._state: BreakerState = "closed"
        self.failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open`` or ``half_open`` (an open breaker past its cooldown is half-open)."""
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_seconds:
            self._set("half_open")
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.cooldown_seconds - self._clock())

    def allow(self) -> bool:
        """Whether a request may go to this endpoint now (takes the half-open probe's slot)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        """A request succeeded: the breaker closes."""
        self.failures = 0
        self._probing = False
        if self._state != "closed":
            self._set("closed")

    def record_failure(self, *, immediate: bool = False) -> None:
        """A request failed; ``immediate`` (a refusal such as 401) opens the breaker at once."""
        self.failures += 1
        was_probe, self._probing = self._probing, False
        if immediate or was_probe or self._state == "half_open" or self.failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._set("open")

    def release(self) -> None:
        """A half-open probe ended without an outcome (cancelled): let another one try."""
        self._probing = False

    def _set(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old != new and self.on_change is not None:
            self.on_change(self, old, new)

    def to_dict(self) -> dict[str, object]:
        """State, failures in a row and seconds until a probe, for status reports."""
        return {"endpoint": self.endpoint, "state": self.state, "failures": self.failures,
                "retry_in_seconds": round(self.retry_in(), 3)}  # fmt: skip
