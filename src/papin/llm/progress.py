"""Download progress bookkeeping: bytes done, total, smoothed speed and ETA.

Pure logic with an injectable clock, shared by every provider that downloads models.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from papin.llm.datatypes import DownloadStatus

__all__ = ["ProgressMeter"]


class ProgressMeter:
    """Turns successive (bytes done, total) readings into :class:`DownloadStatus` values.

    Speed is an exponential moving average over readings at least ``min_interval`` apart,
    so it stays stable when a backend reports every few milliseconds.
    """

    def __init__(
        self,
        model_id: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        smoothing: float = 0.3,
        min_interval: float = 0.25,
    ) -> None:
        self.model_id = model_id
        self._clock = clock
        self._smoothing = smoothing
        self._min_interval = min_interval
        self._last_time = clock()
        self._last_bytes = 0
        self._speed: float | None = None
        self.status = DownloadStatus(model_id=model_id)

    def update(self, done: int, total: int | None, status: str) -> DownloadStatus:
        """Record a reading and return the new status."""
        now = self._clock()
        elapsed = now - self._last_time
        if elapsed >= self._min_interval or (self._speed is None and elapsed > 0 and done):
            delta = max(0, done - self._last_bytes)
            rate = delta / elapsed if elapsed > 0 else 0.0
            if self._speed is None:
                self._speed = rate
            else:
                self._speed = self._smoothing * rate + (1 - self._smoothing) * self._speed
            self._last_time = now
            self._last_bytes = done
        eta = None
        if total and self._speed and self._speed > 0:
            eta = max(0.0, (total - done) / self._speed)
        self.status = DownloadStatus(
            model_id=self.model_id,
            status=status,
            bytes_downloaded=done,
            total_bytes=total,
            speed_bps=self._speed,
            eta_seconds=eta,
        )
        return self.status

    def rebase(self, done: int) -> None:
        """Measure speed from ``done`` bytes on (a resumed download: bytes already on disk
        are not counted as transferred now)."""
        self._last_time = self._clock()
        self._last_bytes = done
        self._speed = None

    def finish(self, status: str = "success") -> DownloadStatus:
        """Mark the download complete."""
        s = self.status
        total = s.total_bytes if s.total_bytes is not None else s.bytes_downloaded
        self.status = DownloadStatus(
            model_id=self.model_id,
            status=status,
            bytes_downloaded=max(s.bytes_downloaded, total),
            total_bytes=total,
            speed_bps=s.speed_bps,
            eta_seconds=0.0,
            complete=True,
        )
        return self.status

    def fail(self, error: str, *, cancelled: bool = False) -> DownloadStatus:
        """Mark the download failed (or cancelled) with a reason."""
        s = self.status
        self.status = DownloadStatus(
            model_id=self.model_id,
            status="cancelled" if cancelled else "error",
            bytes_downloaded=s.bytes_downloaded,
            total_bytes=s.total_bytes,
            speed_bps=s.speed_bps,
            eta_seconds=None,
            cancelled=cancelled,
            error=error,
        )
        return self.status
