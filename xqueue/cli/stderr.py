"""Standard error for a run's ending, its warnings and every error: rich only where needed.

Importing rich is about a fifth of ``xqueue run``'s start-up (20-25 ms of roughly 100 on
this project's machines), paid before the first job starts. A run whose standard error
is not a terminal (a pipe, a log file: a batch job, a pipeline step) prints nothing
there but lines of plain text: its summary, its warnings, how it was halted. ``Stderr``
writes those itself and loads rich (``report.StderrConsole``) only for what needs it: a
terminal's colours, the live view, the table of failed jobs. What is printed is the
same either way: rich adds no styling where it finds no terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .text import printable

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


@dataclass(frozen=True)
class Line:
    """``label: text`` (or ``text`` alone) with only the label styled, on a terminal.

    ``text`` is shown literally, never read as rich markup; it may quote user input, so
    the functions that make a ``Line`` escape its control characters (``printable``).
    """

    text: str
    label: str = ""
    style: str = ""

    def __str__(self) -> str:
        return f"{self.label}: {self.text}" if self.label else self.text

    def rich(self) -> Text:
        from rich.text import Text

        if not self.label:
            return Text(self.text)
        return Text.assemble((f"{self.label}: ", self.style), self.text)


def message(label: str, text: str, style: str = "bold red") -> Line:
    """An error or a warning that quotes user input: ``label: text``."""
    return Line(printable(text), label, style)


def summary_line(counts: dict[str, int], total: int, elapsed: float, reused: int = 0) -> Line:
    """``2,000 job(s) in 1.2s: 2,000 finished``; finished jobs an earlier run ran are
    said so, or a run that ran nothing would seem to have run them all again."""
    parts = ", ".join(
        f"{n:,} {state}"
        + (f" ({reused:,} in an earlier run)" if state == "finished" and reused else "")
        for state, n in sorted(counts.items())
    )
    return Line(printable(f"{total:,} job(s) in {elapsed:,.1f}s: {parts or 'nothing to do'}"))


# Settings that make rich style an output that is not a terminal: with any of them set
# rich prints everything, as it always did.
_RICH_SETTINGS = ("FORCE_COLOR", "TTY_COMPATIBLE")


class Stderr:
    """Where a run's view, summary and errors go: standard error.

    A write that fails does not end the command with a traceback: a closed pipe raises
    BrokenPipeError once, with ``pipe_closed`` set, for an exit code of 141; any other
    error (``EIO`` from a terminal that is gone, a full disk under a file) only makes it
    quiet, so the exit code stays the run's own. Either way nothing is written there
    again. ``report.StderrConsole`` does the same once rich is loaded.
    """

    def __init__(self) -> None:
        self._console: Console | None = None
        self._pipe_closed = False
        self._quiet = False
        stream = sys.stderr
        plain = (
            stream is not None
            and not any(name in os.environ for name in _RICH_SETTINGS)
            and "ipykernel" not in sys.modules  # a notebook: rich shows it as one
        )
        if plain:
            try:
                plain = not stream.isatty()
            except (AttributeError, ValueError):  # not a real file, or a closed one
                plain = False
        if not plain:  # a terminal shows its colours from the first line
            self._console = _rich_console()

    @property
    def rich(self) -> Console:
        """rich's console on standard error, loaded at the first call."""
        if self._console is None:
            self._console = _rich_console()
            self._console.quiet = self._quiet
        return self._console

    @property
    def is_terminal(self) -> bool:
        return self._console is not None and self._console.is_terminal

    @property
    def pipe_closed(self) -> bool:
        """The reader went away: the command exits 141."""
        return self._pipe_closed or bool(getattr(self._console, "pipe_closed", False))

    def print(self, line: Line, *, wrap: bool = False) -> None:
        """``line`` and a line end; ``wrap``: at a terminal's width, between words, as
        rich does (a plain line never is: a log or a pipe takes any length)."""
        if self._console is not None:
            self._console.print(line.rich(), soft_wrap=not wrap)
            return
        stream = sys.stderr
        if self._quiet or stream is None:
            return
        try:
            stream.write(f"{line}\n")
            stream.flush()
        except BrokenPipeError:
            self._pipe_closed = self._quiet = True
            silence(stream)
            raise
        except OSError:
            self._quiet = True
            silence(stream)


def _rich_console() -> Console:
    from .report import StderrConsole

    return StderrConsole()


def silence(stream: object) -> None:
    """Send ``stream``'s descriptor to /dev/null, so that whatever else writes there
    later (the interpreter's last flush, a late warning, a thread's traceback) does not
    fail again."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


class ConsoleLogHandler(logging.Handler):
    """xqueue's warnings during a run (``SIGHUP: stopping; ...``), printed by the run's
    ``Stderr`` as logging's last resort printed them, the message alone, so that a write
    that fails is handled as for every other line: quietly. Logging itself would print
    a traceback (``--- Logging error ---``) for each warning to a terminal that is gone."""

    def __init__(self, stderr: Stderr) -> None:
        super().__init__(logging.WARNING)
        self.stderr = stderr

    def emit(self, record: logging.LogRecord) -> None:
        try:
            lines = self.format(record).split("\n")  # kept apart; each one escaped
            self.stderr.print(Line("\n".join(printable(line) for line in lines)))
        except OSError:  # a closed pipe: the output has gone quiet, the exit code is 141
            pass
        except Exception:
            self.handleError(record)


@contextmanager
def logging_to(stderr: Stderr) -> Iterator[None]:
    """xqueue's log goes to ``stderr`` (``ConsoleLogHandler``) until the block ends."""
    logger = logging.getLogger("xqueue")
    handler = ConsoleLogHandler(stderr)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
