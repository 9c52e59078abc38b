"""``xqueue status WORKDIR --follow``: a live view of a run started elsewhere.

It reads the run's event stream (``<workdir>/events.jsonl``, see ``xqueue.events``) as it
grows, and never the job folders: every event updates the counts by state, the number of
jobs ended in this run and the last few failures, in O(1), so a refresh costs the same
for 10 jobs as for 100,000. On a terminal the view is redrawn in place; into a pipe it is
a line whenever the counts changed (at most one a second); ``--json`` passes the events
on, one JSON object per line, for other tools.

It ends with the run: at its ``run_stopped`` event (exit 0 if every job succeeded, else
1), or when the workdir's lock shows the controller gone without one (killed: exit 1).
A stream that already ended while a controller holds the lock belongs to the run before
it: the view waits for the new run's stream. Names and reasons come from the workdir and
are shown as plain text, escaped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any, TextIO

from ..control import RUN_FILE
from ..errors import XqueueError
from ..events import EVENTS_FILE
from ..records import WorkdirReader, parse_object, read_json
from ..states import JobStatus
from .jobs import no_workdir
from .tail import Tail
from .text import printable, rc_text

if TYPE_CHECKING:
    from rich.console import RenderableType

POLL = 0.2  # seconds between two reads of the stream
CONTROLLER_CHECK = 1.0  # seconds between two looks at the workdir's lock
PLAIN_EVERY = 1.0  # the most often a line is printed into a pipe
START_GRACE = 2.0  # how long a workdir no run holds is given to get one (Follower.start)
FAILURES = 5
FINAL = frozenset(s.value for s in JobStatus if s.is_final)
BAD = (JobStatus.FAILED.value, JobStatus.KILLED.value)


class RunView:
    """One run as its events tell it, kept up to date one event at a time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.status: dict[int, str] = {}
        self.counts: Counter[str] = Counter()
        self.done = 0  # jobs in a final state
        self.ended = 0  # jobs that reached a final state in this run (for the rate)
        self.failures: deque[dict[str, Any]] = deque(maxlen=FAILURES)
        self.started: dict[str, Any] | None = None
        self.stopped: dict[str, Any] | None = None
        self.ignored = 0  # lines that were not events
        self.latest: float | None = None  # the time of the newest event
        self.abandoned = False  # its controller went away without a run_stopped event

    @property
    def total(self) -> int:
        return len(self.status)

    def apply(self, event: dict[str, Any]) -> None:
        when = event.get("time")
        if type(when) is float or type(when) is int:
            self.latest = when
        kind = event.get("event")
        if kind == "run_started":
            self.started = event
            return
        if kind == "run_stopped":
            self.stopped = event
            return
        job, status = event.get("job"), event.get("status")
        if type(job) is not int or type(status) is not str:
            self.ignored += 1
            return
        old = self.status.get(job)
        if old is not None:
            self.counts[old] -= 1
            if not self.counts[old]:
                del self.counts[old]
            self.done -= old in FINAL
        self.status[job] = status
        self.counts[status] += 1
        if status in FINAL:
            self.done += 1
            self.ended += self.started is not None
        if status in BAD:
            self.failures.append(event)

    def elapsed(self, now: float) -> float:
        start = _number(self.started, "time")
        if start is None:
            return 0.0
        end = _number(self.stopped, "time")
        if end is None and self.abandoned:
            # Its last word, not now: a run killed yesterday has not run since.
            end = self.latest
        return max((end if end is not None else now) - start, 0.0)

    def rate(self, now: float) -> float:
        elapsed = self.elapsed(now)
        return self.ended / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float) -> str:
        rate, left = self.rate(now), self.total - self.done
        if self.stopped is not None or self.abandoned or not left:
            return "-"
        return f"{left / rate:,.0f}s" if rate > 0 else "?"

    def summary(self, now: float) -> str:
        """One line: progress, rate, ETA and the counts (escaped: states come from the file)."""
        counts = ", ".join(f"{n:,} {s}" for s, n in sorted(self.counts.items()))
        line = (
            f"{self.done:,}/{self.total:,} done, {self.rate(now):,.1f} jobs/s, "
            f"ETA {self.eta(now)}, {self.elapsed(now):,.1f}s: {counts or 'no jobs yet'}"
        )
        return printable(line)

    def outcome(self) -> str:
        stopped = self.stopped or {}
        reason = stopped.get("reason")
        signal = stopped.get("signal")
        text = f"the run stopped: {reason}" if isinstance(reason, str) else "the run stopped"
        return printable(text + (f" ({signal})" if isinstance(signal, str) else ""))

    def succeeded(self) -> bool:
        stopped = self.stopped or {}
        bad = sum(self.counts.get(s, 0) for s in BAD)
        return stopped.get("reason") == "complete" and not bad


def _number(event: dict[str, Any] | None, key: str) -> float | None:
    value = None if event is None else event.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def failure_line(event: dict[str, Any]) -> str:
    rc = event.get("rc")
    reason = event.get("reason")
    parts = [
        f"#{event.get('job')}",
        str(event.get("name", "")),
        str(event.get("status")),
        f"rc {rc_text(rc)}" if type(rc) is int else "",
        reason if isinstance(reason, str) else "",
    ]
    return printable("  ".join(p for p in parts if p))


class Follower:
    """Reads the stream, feeds the view, says when the run is over."""

    def __init__(self, workdir: str, out: TextIO, as_json: bool) -> None:
        self.reader = WorkdirReader(workdir)
        self._stream = os.path.join(self.reader.path, EVENTS_FILE)
        self.tail = Tail(self._stream)
        self.view = RunView()
        self.out = out
        self.as_json = as_json
        self.gone = False  # the controller went away without a run_stopped event
        self._checked = 0.0
        self._controller: str | None = None
        self._stale = False  # the stream read first had ended: a new one is awaited
        self._following = False  # start() chose the run: a stream replaced is news now
        self._new_stream = False  # a stream replaced the one read first

    def start(self, deadline: float | None = None, new_workdir: bool = False) -> None:
        """Read what is there, and find the run to follow by ``deadline`` (monotonic;
        ``START_GRACE`` from now if None; ``new_workdir``: the folder was made after the
        follower started, so any stream in it is the run awaited).

        ``xqueue run WD ... & xqueue status WD -F`` starts the follower before the run
        has taken the workdir (its interpreter takes about 0.1 s to get there), so a
        workdir that no run holds is given ``START_GRACE`` to get one before the
        follower decides: with no stream, that there is nothing to follow; with the
        stream of the run before, that this run's end (or its controller's death, if it
        was killed) is the view's. Without the grace the follower exited at once with
        the earlier run's outcome while the new run went on."""
        if deadline is None:
            deadline = time.monotonic() + START_GRACE
        # A stream was there at the first look: the run before (None: not looked yet).
        found: bool | None = False if new_workdir else None
        while True:
            self._controller = self.reader.controller()
            self.step()
            if self._controller is not None:
                if not self.tail.exists():
                    self._refuse_without_stream()
                break
            if found is None:
                found = self.tail.exists()
            elif self._new_stream or (not found and self.tail.exists()):
                break  # the run came and went between two looks: its stream is whole
            if time.monotonic() >= deadline:
                if self.tail.exists():
                    break  # no run came after the last one: its stream is the view's
                raise XqueueError(
                    f"nothing to follow in {self.reader.path}: no {EVENTS_FILE} and no run "
                    "in progress (a run writes its events there unless started with events off)"
                )
            time.sleep(POLL)
        self._stale = self.view.stopped is not None and self._controller is not None
        self._following = True

    def step(self) -> bool:
        """Read what was appended; True if anything was."""
        changed = False
        for item in self.tail.poll():
            changed = True
            if not isinstance(item, bytes):  # a new run's stream
                followed = self.view.started is not None and self.view.stopped is None
                if followed and self._following:
                    # The run followed never stopped, and another has taken the workdir:
                    # its controller died (SIGKILL) and a new run started within one look
                    # at the lock. That new run is not this one's end (it was followed,
                    # and its end taken for this run's).
                    self.gone = self.view.abandoned = True
                    break
                self.view.reset()
                self._stale = False
                self._new_stream = True
                continue
            event = parse_object(item) if item.strip() else None
            if event is None:
                self.view.ignored += bool(item.strip())
                continue
            self.view.apply(event)
            if self.as_json:
                self.out.write(json.dumps(event) + "\n")
        if changed and self.as_json:
            self.out.flush()
        return changed

    def _refuse_without_stream(self) -> None:
        """The run in progress writes no stream (events off), as its run.json says: the
        earlier run's, read meanwhile, must not pass for its end."""
        info = read_json(os.path.join(self.reader.path, RUN_FILE)) or {}
        if info.get("events") is False:
            raise XqueueError(
                f"the run in progress in {self.reader.path} writes no event stream "
                "(started with --no-events, or events=False): nothing to follow; "
                "`xqueue status WORKDIR` shows its jobs from its records"
            )

    def over(self, now: float) -> bool:
        """The run ended (its last event read), or its controller is gone."""
        if self.gone:
            return True
        if self.view.stopped is not None and not self._stale and self.tail.caught_up():
            return True
        if now - self._checked < CONTROLLER_CHECK:
            return False
        self._checked = now
        self._controller = self.reader.controller()
        if self._controller is not None:
            if self._stale and not os.path.exists(self._stream):  # moved aside: events off
                self._refuse_without_stream()
            return False
        self.step()  # the last words of a controller that just ended
        if self.view.stopped is None:
            self.gone = self.view.abandoned = True
        return True


def run(workdir: str, as_json: bool) -> int:
    """The command; returns the exit code."""
    deadline = time.monotonic() + START_GRACE
    new_workdir = not os.path.isdir(workdir)
    while not os.path.isdir(workdir):
        # ``xqueue run -w WD ... & xqueue status WD -F`` with a new workdir: the run,
        # still starting, has not made it yet (the follower said "no workdir" at once).
        if os.path.lexists(workdir) or time.monotonic() >= deadline:
            raise XqueueError(no_workdir(workdir))
        time.sleep(POLL)
    out = sys.stdout
    follower = Follower(workdir, out, as_json)
    follower.start(deadline, new_workdir)  # one grace for both waits, as docs/cli.md says
    if as_json:
        _follow_quietly(follower)
    elif out.isatty():
        try:
            _follow_live(follower)
        except KeyboardInterrupt:  # the view is cleared as it closes: its counts stay
            out.write(follower.view.summary(time.time()) + "\n")
            raise
    else:
        return _ending(follower, out, _follow_plain(follower, out))
    return _ending(follower, None if as_json else out)


def _follow_quietly(follower: Follower) -> None:
    while not follower.over(time.time()):
        if not follower.step():
            time.sleep(POLL)


def _follow_plain(follower: Follower, out: TextIO) -> str:
    """Print the counts when they change, at most every ``PLAIN_EVERY``; return the
    counts last printed."""
    shown, last = "", 0.0
    while not follower.over(time.time()):
        follower.step()
        now = time.time()
        line = follower.view.summary(now)
        counts = line.partition(": ")[2]
        if counts != shown and now - last >= PLAIN_EVERY:
            out.write(line + "\n")
            out.flush()
            shown, last = counts, now
        time.sleep(POLL)
    return shown


def _follow_live(follower: Follower) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    view = _Screen(follower)
    with Live(view, console=console, auto_refresh=False, transient=True) as live:
        while not follower.over(time.time()):
            follower.step()
            live.refresh()
            time.sleep(POLL)


def _ending(follower: Follower, out: TextIO | None, shown: str = "") -> int:
    """The end of the view; ``shown``: the counts a plain view printed last, not
    printed again."""
    view = follower.view
    if out is not None:
        line = view.summary(time.time())
        if line.partition(": ")[2] != shown:
            out.write(line + "\n")
        for event in view.failures:
            out.write("  " + failure_line(event) + "\n")
    if follower.gone:
        if not os.path.isdir(follower.reader.path):  # its lock went with it
            why = "the workdir was removed (or moved) while it was followed"
        elif follower.tail.exists():
            why = "the run's controller is gone without stopping its run (killed?)"
        else:
            why = "the run ended without an event stream (started with events off)"
        sys.stderr.write(f"xqueue: {why}; see xqueue status {printable(workdir_of(follower))}\n")
        return 1
    if out is not None:
        out.write(view.outcome() + "\n")
        out.flush()
    return 0 if view.succeeded() else 1


def workdir_of(follower: Follower) -> str:
    return str(follower.reader.path)


class _Screen:
    """The terminal view: rendered from the view's counters only, whatever the run's size."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower

    def __rich__(self) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        from .progress import STYLES
        from .report import plain

        view, now = self.follower.view, time.time()
        started = view.started or {}
        head = Table.grid(padding=(0, 1))
        head.add_row(
            ProgressBar(total=max(view.total, 1), completed=view.done, width=40),
            Text(f"{view.done:,}/{view.total:,}"),
            Text(f"{view.rate(now):,.1f} jobs/s", style="bold"),
            Text(f"ETA {view.eta(now)}"),
            Text(f"{view.elapsed(now):,.1f}s", style="dim"),
        )
        where = plain(
            f"{workdir_of(self.follower)}: "
            + (f"{started.get('scheduler')}, forks {started.get('forks')}" if started else "")
            + ("" if started else "waiting for the run to start"),
            "dim",
        )
        counts = Text()
        styles = {status.value: style for status, style in STYLES.items()}
        for status, n in sorted(view.counts.items()):
            counts.append_text(plain(f"{status} {n:,}  ", styles.get(status, "")))
        parts: list[RenderableType] = [where, head, counts]
        if view.failures:
            parts.append(Text("latest failures:", style="bold red"))
            parts.extend(plain("  " + failure_line(e)) for e in view.failures)
        return Group(*parts)
