"""A run's event stream: one JSON line per job event, in ``<workdir>/events.jsonl``.

Written by default, by a built-in plugin (``Xqueue(events=False)`` or ``xqueue run
--no-events`` turns it off), so that a run started anywhere can be followed from another
terminal (``xqueue status WD --follow``) or by other tools (``tail -F``, ``jq``).

It never blocks the event loop. A hook formats its line and appends it to a deque
(thread-safe without a lock, so the loop never waits on one); a writer thread writes
what has piled up every ``FLUSH_INTERVAL`` seconds in one ``write()``. A job event costs
the loop a couple of microseconds and no system call; the one file operation of a run,
opening the file, is awaited in a worker thread when its first event comes.

One file holds one run: its first event renames the file of an earlier run to
``events.jsonl.1`` (that one is replaced), so a reader starts at a run's beginning and
knows a new run by a new file. Lines, each one JSON object::

    {"time": 1767225600.125, "event": "job_started", "job": 3, "name": "sim 3",
     "status": "running", "attempt": 1, "jid": "4242@b81234.56~1f2e3d4c", "rc": null,
     "reason": ""}

``event`` is the hook's name without ``on_`` (``job_init``, ``job_queued``,
``job_submitted``, ``job_started``, ``job_retrying``, ``job_succeeded``, ``job_failed``,
``job_killed``, ``job_skipped``), and every job event has the same keys: the job's state
at that moment. A job that an earlier run's success settles as it is fed has one line,
its ``job_succeeded`` (reason "succeeded in an earlier run"), not a ``job_init`` before
it: a resumed million-job run writes a million lines, not two. A run adds
``run_started`` (``scheduler``, ``forks``, ``pid``, ``jobs``, ``counts``) and, last,
``run_stopped`` (``reason``, ``signal``, ``jobs``, ``counts``, ``elapsed``). Events of
jobs fed before the run starts come before ``run_started``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from json.encoder import encode_basestring_ascii as _quote
from typing import TYPE_CHECKING, Any

import anyio

from ._threads import run_in_daemon_thread
from .hooks import hookimpl
from .states import S
from .workdir import open_plain

if TYPE_CHECKING:
    from .job import Job
    from .queue import Xqueue
    from .scheduler import Scheduler

log = logging.getLogger("xqueue")

EVENTS_FILE = "events.jsonl"
EVENTS_PLUGIN = "xqueue-events"  # its plugin name (``plugins=["-xqueue-events"]``)
PREVIOUS = ".1"  # the earlier run's events: events.jsonl.1
FLUSH_INTERVAL = 0.1
_BATCH = 10_000  # lines per write(), so a burst never builds one huge string


def job_line(when: float, event: str, job: Job) -> str:
    """A job event's line at ``when`` (an ``EventLog`` stamps its own lines, see ``add``)."""
    return _line(_stamp(int(when * 1000)), event, job)


def _stamp(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def _line(stamp: str, event: str, job: Job) -> str:
    """One job event's line, put together by hand: ``json.dumps`` of a dict costs three
    times more, and this runs on the loop for every event. Strings still go through
    json's own escaping, so the line is valid JSON whatever a name or reason holds."""
    jid, rc = job.jid, job.rc
    return (
        f'{{"time": {stamp}, "event": "{event}", "job": {job.index}, '
        f'"name": {_quote(job.name)}, "status": "{job.status._value_}", '
        f'"attempt": {job.attempt}, "jid": {"null" if jid is None else _quote(jid)}, '
        f'"rc": {"null" if rc is None else int(rc)}, "reason": {_quote(job.reason)}}}\n'
    )


def run_line(when: float, event: str, fields: dict[str, Any]) -> str:
    return json.dumps({"time": round(when, 3), "event": event, **fields}) + "\n"


class Writer(threading.Thread):
    """Writes the lines other threads append to ``pending``, in batches. It does as
    little as it can while holding the GIL (join, write): a thread that computes holds
    the GIL for up to a switch interval each time the loop makes a system call, and the
    loop would wait for it (the convoy effect; formatting here made runs 1.5x slower)."""

    def __init__(self, path: str, pending: deque[str]) -> None:
        super().__init__(name="xqueue-events", daemon=True)
        self.path = path
        self.pending = pending
        self._halt = threading.Event()
        self._fd: int | None = None
        self._failed = False

    def open(self) -> None:
        """Start a new file (the earlier run's kept as ``.1``). Blocking: a worker thread."""
        try:
            os.replace(self.path, self.path + PREVIOUS)  # a planted link is moved, not followed
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not keep the earlier run's events (%s): %s", self.path, exc)
        self._fd = open_plain(self.path, os.O_WRONLY | os.O_APPEND | os.O_TRUNC)

    def run(self) -> None:
        while not self._halt.wait(FLUSH_INTERVAL):
            self.flush()
        self.flush()

    def flush(self) -> None:
        pop = self.pending.popleft
        while self.pending:
            lines: list[str] = []
            try:
                while len(lines) < _BATCH:
                    lines.append(pop())
            except IndexError:  # drained
                pass
            self._write("".join(lines).encode())

    def _write(self, data: bytes) -> None:
        if self._fd is None or self._failed:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:  # a full disk must not stop the run: the stream stops
            self._failed = True
            log.warning("writing %s failed (%s); no further events are written", self.path, exc)

    def finish(self) -> None:
        """Write what is left and close the file. Blocking: a worker thread."""
        self._halt.set()
        if self.is_alive():
            self.join()
        else:
            self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _job_event(event: str) -> Callable[[EventLog, Job], None]:
    def hook(self: EventLog, job: Job) -> None:
        self.add(event, job)

    hook.__name__ = f"on_{event}"
    return hookimpl(hook)


class EventLog:
    """The built-in plugin; one per queue, one writer thread per run."""

    def __init__(self, path: str) -> None:
        # The stream's file, known before any event: a job's hook then takes only the job
        # (a hook of two arguments costs each call a list to build).
        self.path = path
        # Records wait here for the run's writer; one that comes between runs (a job
        # killed after its run ended) waits for the next run's file.
        self.pending: deque[str] = deque()
        self._writer: Writer | None = None
        self._opening: anyio.Event | None = None
        self._started_at = 0.0
        self._ms, self._stamped = 0, ""  # the time of the latest line, in ms and as written
        # A job being fed that an earlier run's success settles (the engine says so before
        # its ``on_job_init``): it gets one line, its ``job_succeeded``, which says why.
        self.settling: Job | None = None
        self._settled_reason, self._settled_tail = "", ""  # see ``_settled_line``

    def add(self, event: str, job: Job) -> None:
        self.pending.append(_line(self._now(), event, job))

    def _now(self) -> str:
        # The time is formatted once a millisecond, not once a line: feeding 100,000 jobs
        # writes two lines a job, and a float's formatting was a third of a line's cost.
        ms = int(time.time() * 1000)
        if ms != self._ms:
            self._ms, self._stamped = ms, _stamp(ms)
        return self._stamped

    def _settled_line(self, job: Job) -> str:
        """``_line`` of the ``job_succeeded`` of a job an earlier run's success settled as
        it was fed, formatted in half the time: a million-job resume writes a million of
        them, and all that follows the attempt is the same in each (no id, rc 0, the
        reason). The tests compare the two."""
        if job.reason is not self._settled_reason:
            self._settled_reason = job.reason
            self._settled_tail = f', "jid": null, "rc": 0, "reason": {_quote(job.reason)}}}\n'
        return (
            f'{{"time": {self._now()}, "event": "job_succeeded", "job": {job.index}, '
            f'"name": {_quote(job.name)}, "status": "finished", '
            f'"attempt": {job.attempt}{self._settled_tail}'
        )

    def _add_run(self, event: str, fields: dict[str, Any]) -> None:
        self.pending.append(run_line(time.time(), event, fields))

    async def _start(self) -> None:
        """The run's first event: the file is opened in a worker thread, then the writer
        starts. Events that come meanwhile wait in its deque."""
        if self._opening is not None:
            await self._opening.wait()
            return
        self._opening = anyio.Event()
        writer = Writer(self.path, self.pending)
        self._writer = writer
        try:
            await run_in_daemon_thread(writer.open)  # not anyio's: see _threads
            writer.start()
        except BaseException:
            self._writer = None  # the next event tries again (and reports again)
            raise
        finally:
            self._opening.set()
            self._opening = None

    @property
    def writing(self) -> bool:
        return self._writer is not None

    def close(self) -> None:
        """Write what waits and close the file: the queue is closed with no run since it
        was fed (a run's end does it in ``on_shutdown``). The writer thread and the file
        stayed open for as long as the process lived. Blocking: a worker thread."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.finish()

    # -- hooks ---------------------------------------------------------------------------
    @hookimpl
    def on_job_init(self, job: Job) -> Awaitable[None] | None:
        """Plain for every job but a run's first, which awaits the opening of the file
        (``Hooks.call`` awaits what a hook returns only if it is awaitable)."""
        if self._writer is None or self._opening is not None:
            return self._first(job)
        if job is not self.settling:
            self.add("job_init", job)
        return None

    async def _first(self, job: Job) -> None:
        await self._start()
        if job is not self.settling:
            self.add("job_init", job)

    @hookimpl
    async def on_init(self, xqueue: Xqueue, scheduler: Scheduler) -> None:
        if self._writer is None or self._opening is not None:
            await self._start()
        self._started_at = time.monotonic()
        stats = xqueue.statistics()
        fields = {
            "scheduler": scheduler.name,
            "forks": xqueue.forks,
            "pid": os.getpid(),
            "jobs": stats.total,
            "counts": dict(stats.counts),
        }
        self._add_run("run_started", fields)

    @hookimpl
    async def on_shutdown(self, xqueue: Xqueue, reason: str, signal: str | None) -> None:
        writer, self._writer = self._writer, None  # the next run writes a file of its own
        if writer is None:
            return
        stats = xqueue.statistics()
        elapsed = round(time.monotonic() - self._started_at, 3)
        fields = {
            "reason": reason,
            "signal": signal,
            "jobs": stats.total,
            "counts": dict(stats.counts),
            "elapsed": elapsed,
        }
        self._add_run("run_stopped", fields)
        await anyio.to_thread.run_sync(writer.finish)

    on_job_queued = _job_event("job_queued")
    on_job_submitted = _job_event("job_submitted")
    on_job_started = _job_event("job_started")
    on_job_retrying = _job_event("job_retrying")
    on_job_failed = _job_event("job_failed")
    on_job_killed = _job_event("job_killed")
    on_job_skipped = _job_event("job_skipped")

    @hookimpl
    def on_job_succeeded(self, job: Job) -> None:
        if job is self.settling and job.jid is None and job.rc == 0 and job.status is S.FINISHED:
            self.pending.append(self._settled_line(job))
        else:
            self.add("job_succeeded", job)
