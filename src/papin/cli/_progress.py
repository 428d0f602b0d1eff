"""A rich progress bar on stderr for model downloads, fed with :class:`DownloadStatus`.

Speed and ETA come from the library's :class:`~papin.llm.datatypes.DownloadStatus` (a smoothed
moving average), not from rich's own estimate, so every frontend shows the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING

from papin.cli._common import get_console, human_bytes, human_duration

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from papin.llm.datatypes import DownloadStatus

__all__ = ["DownloadProgress"]


class DownloadProgress:
    """A callable progress callback that draws one bar on stderr.

    Use it as ``on_progress``/``on_download``; the bar appears on the first update, and
    :meth:`stop` (or leaving the ``with`` block) removes the live display, leaving the last
    frame on screen (unless it ends with an exception). ``intro`` is a line shown above the
    bar.
    """

    def __init__(self, model: str, *, intro: str | None = None, console: Console | None = None):
        self.model = model
        self.intro = intro
        self.last: DownloadStatus | None = None
        self._console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def _start(self) -> tuple[Progress, TaskID]:
        from rich.console import RenderableType
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
        )
        from rich.table import Column
        from rich.text import Text

        intro = self.intro

        class _Progress(Progress):
            """The bar, under the intro line: both are erased together after a failure."""

            def get_renderables(self) -> Iterable[RenderableType]:
                if intro:
                    yield Text(intro)
                yield from super().get_renderables()

        console = self._console or get_console(stderr=True)
        progress = _Progress(
            TextColumn(
                "{task.description}",
                markup=False,
                table_column=Column(width=22, no_wrap=True, overflow="ellipsis"),
            ),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            DownloadColumn(binary_units=False),
            TextColumn("{task.fields[speed]}", markup=False),
            TextColumn("ETA {task.fields[eta]}", markup=False),
            console=console,
            transient=False,
            refresh_per_second=8,
        )
        task = progress.add_task(self.model, total=None, speed="-", eta="-")
        progress.start()
        self._progress, self._task = progress, task
        return progress, task

    def __call__(self, status: DownloadStatus) -> None:
        """Show ``status`` (the library calls this for every progress update)."""
        self.last = status
        if self._progress is None or self._task is None:
            progress, task = self._start()
        else:
            progress, task = self._progress, self._task
        speed = f"{human_bytes(status.speed_bps)}/s" if status.speed_bps is not None else "-"
        progress.update(
            task,
            description=status.status or self.model,
            completed=status.bytes_downloaded,
            total=status.total_bytes,
            speed=speed,
            eta=human_duration(status.eta_seconds),
            refresh=status.complete,
        )

    @property
    def started(self) -> bool:
        """Whether a bar has been shown (i.e. a download really happened)."""
        return self.last is not None

    def stop(self, *, keep: bool = True) -> None:
        """End the live display (idempotent); ``keep=False`` erases the bar (after an error
        or Ctrl-C, so that a single line explains what happened)."""
        progress, self._progress = self._progress, None
        if progress is not None:
            if keep:
                progress.stop()
            else:
                # Live.stop, as Progress.stop would add a newline when stderr is not a tty.
                progress.live.transient = True
                progress.live.stop()

    def __enter__(self) -> DownloadProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(keep=exc is None)
