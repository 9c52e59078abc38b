"""What a run prints when it ends, and the escaping every CLI output goes through.

Job names, commands, reasons and stderr lines come from users and from workdirs, so they
are never handed to rich as markup (``[/]`` in a name would crash the table, ``[link=...]``
would forge a link) and never reach the terminal with control characters (an escape
sequence in a name could rewrite the screen or the window title).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..job import Job
from ..records import READ_FLAGS
from ..states import JobStatus
from .text import MAX_ROWS, printable, rc_text, status_text


class StderrConsole(Console):
    """The console every run's view, summary and error go to: standard error.

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
        """Write nothing more: rich is made quiet, and standard error is /dev/null, so
        that whatever else writes there later (the interpreter's last flush, a late
        warning, a thread's traceback) does not fail again."""
        self.quiet = True
        try:
            fd = self.file.fileno()
        except (OSError, ValueError):  # not a real file (a test's capture): nothing to do
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


class ConsoleLogHandler(logging.Handler):
    """xqueue's warnings during a run (``SIGHUP: stopping; ...``), printed by the run's
    console as logging's last resort printed them, the message alone, so that a write
    that fails is handled as for every other line: quietly. Logging itself would print
    a traceback (``--- Logging error ---``) for each warning to a terminal that is gone."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = "\n".join(printable(line) for line in self.format(record).split("\n"))
            self.console.print(Text(text), soft_wrap=True)
        except OSError:  # a closed pipe: the console has gone quiet, the exit code is 141
            pass
        except Exception:
            self.handleError(record)


@contextmanager
def logging_to(console: Console) -> Iterator[None]:
    """xqueue's log goes to ``console`` (``ConsoleLogHandler``) until the block ends."""
    logger = logging.getLogger("xqueue")
    handler = ConsoleLogHandler(console)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def plain(text: str, style: str = "") -> Text:
    """A rich cell that shows ``text`` literally: no markup, no emoji codes, no controls."""
    return Text(printable(text), style=style)


def message(label: str, text: str, style: str = "bold red") -> Text:
    """``label: text`` with only the label styled, for errors that quote user input."""
    return Text.assemble((f"{label}: ", style), printable(text))


NOT_COPIED = "- (not copied back: the job ran without this machine's file system)"


# A skipped job did not succeed either: left out, a run with a failure and the jobs it
# held back reported "3 job(s): 1 failed, 1 finished, 1 skipped" over a table of one.
NOT_SUCCEEDED = (JobStatus.FAILED, JobStatus.KILLED, JobStatus.SKIPPED)


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


def summary_line(counts: dict[str, int], total: int, elapsed: float) -> Text:
    parts = ", ".join(f"{n:,} {state}" for state, n in sorted(counts.items()))
    return plain(f"{total:,} job(s) in {elapsed:,.1f}s: {parts or 'nothing to do'}")


def print_table(console: Console, table: Table | None) -> None:
    if table is not None:
        console.print(table)
