"""What a run prints when it ends, and the escaping every CLI output goes through.

Job names, commands, reasons and stderr lines come from users and from workdirs, so they
are never handed to rich as markup (``[/]`` in a name would crash the table, ``[link=...]``
would forge a link) and never reach the terminal with control characters (an escape
sequence in a name could rewrite the screen or the window title).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._files import READ_FLAGS
from ..job import Job
from ..states import JobStatus
from .stderr import silence
from .text import MAX_ROWS, NOT_SUCCEEDED, printable, rc_text, status_text


class StderrConsole(Console):
    """rich's console on standard error, which ``stderr.Stderr`` loads for what needs
    rich: a terminal's colours, the live view, the table of failed jobs.

    A write that fails does not end the command with a traceback. A closed pipe raises
    BrokenPipeError once (``on_broken_pipe``), for an exit code of 141; a terminal that
    is gone (``EIO`` once an SSH connection dropped and its pty was closed) only makes
    the console quiet, so the exit code stays the run's own: 129 for the SIGHUP that
    came with it. Either way nothing is written there again.
    """

    def __init__(self) -> None:
        super().__init__(stderr=True)
        self.pipe_closed = False  # the reader went away: the command exits 141

    def on_broken_pipe(self) -> None:
        """A closed pipe exits 141, as one on standard output does (``main``), not 1,
        which rich exits with and which says a job failed (``xqueue run 2>&1 | head``).
        Standard error goes to /dev/null first, so nothing else tries to write there."""
        self.pipe_closed = True
        self._silence()
        raise BrokenPipeError

    def _check_buffer(self) -> None:
        # rich's one way to the file (print, control codes, the live view's redraws);
        # it handles a closed pipe (on_broken_pipe) and lets every other error through.
        try:
            super()._check_buffer()
        except BrokenPipeError:
            raise
        except OSError:  # the terminal is gone (EIO), or the disk under a file is full
            self._silence()

    def _silence(self) -> None:
        """Write nothing more: rich is made quiet, and standard error is /dev/null."""
        self.quiet = True
        silence(self.file)


def plain(text: str, style: str = "") -> Text:
    """A rich cell that shows ``text`` literally: no markup, no emoji codes, no controls."""
    return Text(printable(text), style=style)


NOT_COPIED = "- (not copied back: the job ran without this machine's file system)"


def failures_table(jobs: Iterable[Job], shared_fs: bool = True) -> Table | None:
    """The jobs that did not succeed, with the last line of each one's stderr.

    Failed and killed jobs come first, then the skipped ones, each in index order: a
    failure is the cause of the skips after it (``not run: job 0 (a), which it runs
    after, failed``), and must not be pushed past the rows shown by the jobs it held back.

    ``shared_fs`` is the scheduler's (``Scheduler.shared_fs``): where it is False a job's
    stderr is only here if the backend copied it back (it does once the job ended, not
    for one killed or lost on the way), so a missing file is said to be elsewhere rather
    than shown as a path to open.
    """
    bad = [j for j in jobs if j.status in NOT_SUCCEEDED]
    if not bad:
        return None
    bad.sort(key=lambda j: j.status is JobStatus.SKIPPED)  # stable: index order kept
    table = Table(title=f"{len(bad)} job(s) did not succeed", title_style="bold red")
    for col in ("#", "job", "status", "rc", "reason", "stderr"):
        table.add_column(col, overflow="fold")
    for job in bad[:MAX_ROWS]:
        if job.attempt == 0 or job.status is JobStatus.SKIPPED:
            # Never started (cancelled before its turn, or skipped): no stderr of its own.
            # A skipped job may have an attempt number all the same: a plugin's veto
            # comes after it was counted, and a rerun goes on from an earlier run's.
            tail, where = "", "-"
        else:
            tail = _last_line(job.stderr_path)
            here = shared_fs or tail or os.path.lexists(job.stderr_path)
            where = job.stderr_path if here else NOT_COPIED
        table.add_row(
            plain(str(job.index)),
            plain(job.name),
            plain(status_text(job.status.value, job.failure.name if job.failure else None)),
            plain(rc_text(job.rc)),
            plain(job.reason or tail),
            plain(where),
        )
    if len(bad) > MAX_ROWS:
        table.caption = f"... and {len(bad) - MAX_ROWS} more"
    return table


def print_whole(console: Console, table: Table | None) -> None:
    """Print ``table``; into a pipe or a file at the width its cells need, so that none is
    folded. At rich's 80 columns there, a job's stderr path came out in pieces over four
    lines: a log could not be searched for it, nor the path copied. (A terminal's width
    still folds cells: the screen has no more.)"""
    if table is None:
        return
    if console.is_terminal:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update(max_width=1 << 16))
    width = console.width
    console.width = max(width, natural.maximum)
    try:
        console.print(table)
    finally:
        console.width = width


def _last_line(path: str, limit: int = 120) -> str:
    """The last line of a job's stderr: usually the reason it failed. Read through the
    workdir's reader rules (no links followed, a FIFO never waited on), 4 KiB at most."""
    try:
        fd = os.open(path, READ_FLAGS)
        try:
            size = os.fstat(fd).st_size
            tail = os.pread(fd, 4096, max(0, size - 4096))
        finally:
            os.close(fd)
    except OSError:
        return ""
    lines = tail.decode(errors="replace").strip().splitlines()
    return lines[-1][:limit] if lines else ""
