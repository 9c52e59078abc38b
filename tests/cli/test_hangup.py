"""A terminal that hangs up during ``xqueue run``: an SSH connection that drops.

The pty's master side is closed, as sshd closes it when the connection goes: the
controller gets SIGHUP, and from then on every write to the terminal fails (EIO). The
run must stop as it does on a SIGHUP sent while the terminal is still there: its jobs
killed, exit code 129, its event stream complete. Nothing may fail on the dead terminal:
not the live view (a display, which must never stop the run or the plugins called after
it), not the run's last lines, not a warning; no traceback, even one nobody would see.
"""

from __future__ import annotations

import errno
import io
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.procs import kill_job_processes, spawn_on_pty, stop, wait_no_job_processes
from xqueue import Xqueue
from xqueue.cli.progress import ProgressView
from xqueue.cli.report import StderrConsole

# The launcher makes the pty its controlling terminal (closing the master then hangs it
# up: SIGHUP to the controller), keeps in a file every traceback the command would print
# to the terminal (gone by then, so only the file shows one), and runs `python -m xqueue`.
_LAUNCH = r"""
import fcntl, logging, os, runpy, sys, termios, threading, traceback
fcntl.ioctl(0, termios.TIOCSCTTY, 0)

def keep(text):
    with open(os.environ["XQUEUE_TEST_TRACEBACKS"], "a") as fh:
        fh.write(text)

def excepthook(kind, value, tb, hook=sys.excepthook):
    keep("".join(traceback.format_exception(kind, value, tb)))
    hook(kind, value, tb)

def thread_excepthook(args, hook=threading.excepthook):
    keep("".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))
    hook(args)

def unraisablehook(args, hook=sys.unraisablehook):
    keep("".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))
    hook(args)

def handle_error(self, record, handle=logging.Handler.handleError):
    keep("--- Logging error ---\n" + traceback.format_exc())
    handle(self, record)

sys.excepthook, threading.excepthook, sys.unraisablehook = (
    excepthook, thread_excepthook, unraisablehook
)
logging.Handler.handleError = handle_error
sys.argv[0] = "xqueue"
runpy.run_module("xqueue", run_name="__main__", alter_sys=True)
"""

HUNG = 30.0  # a controller that has not exited this long after the hangup is stuck
SETTLE = 10.0  # how long killed jobs may take to leave /proc


class Terminal:
    """``xqueue ARGS`` on a fresh pty that is its controlling terminal.

    Unlike tests/procs.py's PtyProcess, nothing reads the master in another thread: a
    close while a read() is blocked on it would not release it, and the terminal would
    not hang up until the controller next wrote (never, without the live view)."""

    def __init__(self, args: list[str], tracebacks: Path) -> None:
        env = {**os.environ, "TERM": "xterm-256color", "XQUEUE_TEST_TRACEBACKS": str(tracebacks)}
        for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
            env.pop(name, None)
        self.proc, master = spawn_on_pty(["-c", _LAUNCH, *args], env)
        self.master: int | None = master
        self.data = bytearray()

    def read_until(self, done: Any, timeout: float) -> bool:
        """Read what the controller writes (a full terminal would block it) until
        ``done()`` or ``timeout``; whether ``done()`` came true."""
        assert self.master is not None
        deadline = time.monotonic() + timeout
        while not done():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return bool(done())
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    self.data += os.read(self.master, 65536)
                except OSError:
                    pass
        return True

    def hang_up(self) -> None:
        """Close the master, as sshd does when the connection drops."""
        assert self.master is not None
        os.close(self.master)
        self.master = None

    def output(self) -> str:
        return self.data.decode(errors="replace")

    def close(self) -> None:
        stop(self.proc)
        if self.master is not None:
            self.hang_up()


def events_of(workdir: Path) -> list[dict[str, Any]]:
    try:
        text = (workdir / "events.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


@pytest.mark.parametrize(
    "view",
    [
        pytest.param([], id="default"),  # on a terminal: the live view
        pytest.param(["--progress"], id="progress"),
        pytest.param(["--no-progress"], id="no-progress"),
    ],
)
def test_a_terminal_that_hangs_up_stops_the_run_as_sighup_does(
    tmp_path: Path, view: list[str]
) -> None:
    workdir, jobs, tracebacks = tmp_path / "wd", tmp_path / "jobs.txt", tmp_path / "tracebacks"
    jobs.write_text("sleep 30\nsleep 31\n")
    args = ["run", "-w", str(workdir), "-f", "2", *view, str(jobs)]
    term = Terminal(args, tracebacks)
    try:

        def both_started() -> bool:
            return sum(e["event"] == "job_started" for e in events_of(workdir)) == 2

        assert term.read_until(both_started, HUNG), (
            f"the jobs did not start (rc {term.proc.poll()}):\n{term.output()[-2000:]}"
        )
        if view != ["--no-progress"]:  # the view is drawn: its hooks meet the hangup
            assert term.read_until(lambda: "jobs/s" in term.output(), HUNG), term.output()
        term.hang_up()
        try:
            code = term.proc.wait(HUNG)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the controller did not exit within {HUNG}s of the hangup")
        kept = tracebacks.read_text() if tracebacks.exists() else ""
        assert code == 129, f"exit code {code} after the hangup; tracebacks:\n{kept}"
        assert not kept, f"the command raised on the dead terminal:\n{kept}"
        assert "Traceback" not in term.output()
        events = events_of(workdir)
        assert events, "no event stream"
        last = events[-1]
        assert (last["event"], last.get("reason"), last.get("signal")) == (
            "run_stopped",
            "signal",
            "SIGHUP",
        ), f"the event stream ends at {last}"
        killed = sorted(e["job"] for e in events if e["event"] == "job_killed")
        assert killed == [0, 1], [e["event"] for e in events]
        left = wait_no_job_processes(workdir, SETTLE)
        assert not left, f"job process(es) left running after the hangup: {left}"
    finally:
        term.close()
        kill_job_processes(workdir)


# -- the live view on a terminal that fails, in process ------------------------------------


class DyingTerminal(io.TextIOBase):
    """A terminal's file whose writes fail (``error``: EIO) once ``dead`` is set; with
    ``tty=False``, a file that is no terminal (a log, a pipe)."""

    def __init__(self, error: OSError | None = None, tty: bool = True) -> None:
        self.error = error or OSError(errno.EIO, os.strerror(errno.EIO))
        self.tty = tty
        self.dead = threading.Event()
        self.failed = threading.Event()  # a write was refused
        self.refused = 0
        self.written: list[str] = []

    def write(self, text: str) -> int:
        if self.dead.is_set():
            self.refused += 1
            self.failed.set()
            raise self.error
        self.written.append(text)
        return len(text)

    def isatty(self) -> bool:
        return self.tty

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BaseException | None]]:
    """What a thread raised (rich's redraw thread dies with a traceback on one)."""
    seen: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    yield seen


def view_on(terminal: DyingTerminal, tmp_path: Path) -> ProgressView:
    return ProgressView(
        Xqueue(workdir=tmp_path / "wd"), Console(file=terminal, force_terminal=True)
    )


def poll(done: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_live_view_on_a_terminal_that_is_already_gone_stays_off(
    tmp_path: Path, thread_errors: list[BaseException | None]
) -> None:
    terminal = DyingTerminal()
    terminal.dead.set()
    stdout, stderr = sys.stdout, sys.stderr
    view = view_on(terminal, tmp_path)
    view.on_init()  # hiding the cursor fails: nothing raised, nothing left taken over
    assert view.live is None
    assert sys.stdout is stdout and sys.stderr is stderr
    view.on_shutdown()
    assert not thread_errors


def test_the_live_view_turns_itself_off_when_its_terminal_goes(
    tmp_path: Path, thread_errors: list[BaseException | None]
) -> None:
    """The redraw thread is the first to meet the dead terminal: it stops the view and
    gives standard output and error back, and the hooks called later raise nothing."""
    terminal = DyingTerminal()
    stdout, stderr = sys.stdout, sys.stderr
    view = view_on(terminal, tmp_path)
    view.on_init()
    try:
        assert sys.stderr is not stderr  # redirected above the view while it is drawn
        assert poll(lambda: any("jobs/s" in text for text in terminal.written))
        terminal.dead.set()
        assert poll(terminal.failed.is_set), "the view was not redrawn"
        assert poll(lambda: sys.stdout is stdout and sys.stderr is stderr), (
            "the view did not give standard output and error back"
        )
        assert view.live is not None and view.live.gone
    finally:
        view.on_shutdown()
    assert view.live is None
    assert sys.stdout is stdout and sys.stderr is stderr
    assert not thread_errors


def test_the_console_goes_quiet_on_a_terminal_that_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hangup is not a closed pipe: nothing raises, and the exit code is not 141."""
    terminal = DyingTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    console = StderrConsole()
    console.print("before")
    terminal.dead.set()
    console.print("after")  # EIO: no error
    console.print("later")  # not even tried
    assert terminal.written == ["before\n"]
    assert console.quiet and not console.pipe_closed


@pytest.mark.parametrize("closed_pipe", [False, True], ids=["eio", "closed-pipe"])
def test_plain_lines_fail_as_rich_ones_do(
    monkeypatch: pytest.MonkeyPatch, closed_pipe: bool
) -> None:
    """Standard error that is no terminal gets plain lines, written without rich: a
    write that fails must end the same way as through ``StderrConsole``. A closed pipe
    raises once and says so (exit code 141); any other error makes the output quiet,
    the exit code untouched. Nothing is tried again either way."""
    from xqueue.cli.stderr import Stderr, message

    error = BrokenPipeError(errno.EPIPE, "") if closed_pipe else OSError(errno.EIO, "")
    file = DyingTerminal(error, tty=False)
    monkeypatch.setattr(sys, "stderr", file)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    stderr = Stderr()
    stderr.print(message("error", "before\x1b]0;title\x07"))
    assert file.written == ["error: before\\x1b]0;title\\x07\n"]
    file.dead.set()
    if closed_pipe:
        with pytest.raises(BrokenPipeError):
            stderr.print(message("error", "after"))
    else:
        stderr.print(message("error", "after"))  # EIO: no error
    stderr.print(message("error", "later"))  # not even tried
    assert file.refused == 1
    assert stderr.pipe_closed is closed_pipe and not stderr.is_terminal
    assert "rich.console" not in sys.modules or stderr._console is None
