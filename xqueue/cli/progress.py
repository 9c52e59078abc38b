"""A live rich view of a run, registered as an ordinary hook plugin.

It keeps no per-job state: it reads ``Xqueue.statistics()``, which is O(1), at the
display's refresh rate, so a 100,000-job run costs the same to draw as a 10-job one.

It is only a display: a terminal it cannot write to (gone after an SSH connection
dropped, a closed pipe) turns it off, quietly. Its hooks never raise for that, so the
run, and the plugins called after it (the event stream's ``run_stopped``), go on.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..hooks import hookimpl
from ..states import JobStatus

if TYPE_CHECKING:
    from ..queue import Xqueue

STYLES = {
    JobStatus.WAITING: "dim cyan",
    JobStatus.QUEUED: "cyan",
    JobStatus.SUBMITTED: "blue",
    JobStatus.RUNNING: "yellow",
    JobStatus.RETRYING: "magenta",
    JobStatus.FINISHED: "green",
    JobStatus.FAILED: "red",
    JobStatus.KILLED: "red",
    JobStatus.SKIPPED: "dim",
}


class _Live(Live):
    """rich's live display, which never raises for a write that fails: the first one
    stops it for good (its redraw thread's too, which would otherwise die with a
    traceback), and gives standard output and error back."""

    gone = False

    def start(self, refresh: bool = False) -> None:
        try:
            super().start(refresh)
        except OSError:
            # Its one write before it takes anything over is hiding the cursor: undo
            # only what came before it.
            self.gone = True
            self._started = False
            self.console.clear_live()

    def refresh(self) -> None:
        if self.gone:
            return
        try:
            super().refresh()
        except OSError:
            self.gone = True
            self.stop()

    def stop(self) -> None:
        # rich gives standard output and error back before its last writes (a new line,
        # the cursor shown again), so whichever of those fails, nothing is left taken.
        try:
            super().stop()
            if not self.console.is_terminal:
                # rich ends its last render with a new line only on a terminal: in a log
                # the run's summary went on the same line as the counts.
                self.console.line()
        except OSError:
            self.gone = True


class ProgressView:
    """Counts by state, rate and ETA, redrawn a few times a second."""

    def __init__(self, queue: Xqueue, console: Console) -> None:
        self.queue = queue
        self.console = console
        self.live: _Live | None = None
        self.started = time.monotonic()
        self.done_before = 0  # ended before the run began: skipped, done in an earlier run

    def __rich__(self) -> RenderableType:
        s = self.queue.statistics()
        elapsed = max(time.monotonic() - self.started, 1e-9)
        # This run's pace: jobs an earlier run did, settled at once, made a resumed run
        # show thousands of jobs/s and "ETA 0s" for its whole length.
        rate = (s.done - self.done_before) / elapsed
        left = s.total - s.done
        eta = f"{left / rate:,.0f}s" if rate > 0 and left else "-"
        counts = Text()
        for status, style in STYLES.items():
            n = s.counts.get(status.value, 0)
            if n:
                counts.append(f"{status.value} {n:,}  ", style=style)
        bar = ProgressBar(total=max(s.total, 1), completed=s.done, width=40)
        head = Table.grid(padding=(0, 1))
        head.add_row(
            bar,
            Text(f"{s.done:,}/{s.total:,}"),
            Text(f"{rate:,.1f} jobs/s", style="bold"),
            Text(f"ETA {eta}"),
            Text(f"{elapsed:,.1f}s", style="dim"),
        )
        return Group(head, counts)

    @hookimpl
    def on_init(self) -> None:
        self.started = time.monotonic()
        self.done_before = self.queue.statistics().done
        live = _Live(self, console=self.console, refresh_per_second=4, transient=False)
        live.start()
        self.live = None if live.gone else live

    @hookimpl
    def on_shutdown(self) -> None:
        live, self.live = self.live, None
        if live is not None:
            live.refresh()
            live.stop()
