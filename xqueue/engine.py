"""The engine: one owner of every job's state, deciding synchronously and acting after.

Everything that happens to a run arrives as an *event* in one inbox: a job fed, a
submission's result, a state reported by the backend (awaited or polled: both arrive
as ``("update", job, state)``), a kill asked for, a signal, a stop. One loop takes the
events in order and applies each with plain synchronous code (``_handle``): state moves
through the state table, counters, the few indexes kept next to them. Only then are
the hooks awaited, and the I/O that the new state calls for (submit these, kill those,
look that one up) is started as tasks owned by the run's task group; those tasks never
touch a job's state, they post events. httpcore's connection pool works the same way:
decide under no ``await``, act outside.

So a job's place is its status, never its membership of some container that an
``await`` could leave half-updated, and "done" is computed from the counts: every job
fed is final (or left running on purpose), and no more can come.

A job fed ``after=`` others is WAITING until they have all succeeded: it is in no queue
and holds no slot. The dependency graph (``dependencies.Graph``) is an index like the
others: when a job ends, only the jobs that wait for it are queued, or skipped for good
if it did not succeed (``_settle_dependents``), so waiting jobs cost nothing per tick.

Which queued job starts is decided by ``_decide`` too: with ``forks`` free slots only,
or, when the scheduler knows its hosts' capacity or the queue has slot axes, by the
``admission.Backlog``: a job starts once what it asks fits in what is free, and holds
its ``capacity.Claim`` (host, GPU ids, slot values) until it leaves the active set,
which ``_move`` gives back, whatever took it out.

A stopping run (a job failed under "halt", a signal, an error, cancellation) submits
nothing more, cancels what was not submitted, kills every active job at once and waits
until the backend confirms each is gone: a job is recorded KILLED only then. Jobs that
could not be killed in time are reported with their ids and stay recorded as active, so
a later run re-adopts them.

A job's time limit (its ``walltime``, else the scheduler's ``timeout`` option) is an
index too, for backends that do not enforce one of their own (local, SSH, containers):
a heap of deadlines, armed by ``_move`` when a job starts running. The loop sleeps no
longer than the nearest deadline; a job still running at its deadline is killed through
the backend's own kill (its whole process group) with a TIMEOUT verdict waiting for the
kill, like any verdict the backend asks a kill for. One heap serves every job: no task
or timer per job. It is enforced while a controller runs; a re-adopted job's limit
counts from when its wrapper recorded its start, where there is such a record.

A failed attempt carries a class (``FailureClass``: the backend's, else derived here);
the retry policy (``retry.RetryPolicy``) turns the class into: run it again, maybe with
more memory or time, or stop.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import heapq
import itertools
import logging
import math
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

import anyio
from anyio.abc import TaskGroup

from . import _collector, wrapping
from .admission import Backlog
from .capacity import Need, Pool
from .dependencies import Graph, skip_reason
from .errors import (
    ConfigError,
    Interrupted,
    JobAlreadyEnded,
    JobFailedError,
    PluginError,
    QueueStateError,
    SchedulerError,
    SubmissionError,
    SubmissionUnknownError,
    WorkdirError,
)
from .events import EVENTS_PLUGIN, EventLog
from .failures import FailureClass, timed_out
from .hooks import Hooks
from .job import STARTED, Job
from .records import record_time
from .resources import Resources
from .retry import RetryPolicy
from .scheduler import JobState, Scheduler
from .states import ACTIVE, ACTIVE_RECORDS, FINISHED_RECORD, JobStatus, S
from .workdir import ReadsWanted, Workdir, open_plain, read_text, recorded_exits

if TYPE_CHECKING:
    from .queue import Xqueue

log = logging.getLogger("xqueue")

# A scheduler whose status query fails this many ticks in a row, for at least
# OUTAGE_TOLERANCE seconds, stops the run; a controller restart (slurmctld, sge_qmaster)
# is ridden out. Submissions that prove the backend unreachable wait as long.
MAX_POLL_FAILURES = 30
OUTAGE_TOLERANCE = 120.0
# The most jobs handed to one submit_jobs call (a backend splits further as it needs).
MAX_BATCH = 10_000
# How long a stopping run waits, beyond kill_grace, for the backend to confirm its kills.
SHUTDOWN_MARGIN = 30.0
# How long one hook may take while the run is stopping, before it is reported and skipped.
SHUTDOWN_HOOK_TIMEOUT = 10.0
# Seconds between two lookups of a submission whose outcome is unknown.
RESOLVE_DELAY = 1.0
# How long a stopping run waits before it tries a failed kill again (until its deadline).
KILL_RETRY_DELAY = 1.0
EXIT_CHECK_LIMIT = 5.0
"""Seconds a kill may spend reading the return code files of the jobs it is for."""
# Submissions of one job in a row whose outcome was unknown and that its lookup did not
# find, after which the job fails: a submit command that exits 0 and never prints an id
# (a wrapper, a misconfigured sbatch) was submitted again every second, for ever.
MAX_UNKNOWN_SUBMISSIONS = 3
OUTAGE_NOTE_INTERVAL = 60.0
# The shortest time between two polling-hook ticks of a backend that awaits its jobs.
MIN_TICK = 0.05


_RUN: ContextVar[Engine | None] = ContextVar("xqueue_run", default=None)
"""The engine whose run the current task belongs to (``Engine.in_run``)."""


class RunState(enum.Enum):
    """The lifecycle of a queue's engine; what each method may do depends on it alone."""

    IDLE = "idle"  # not running: feed() prepares jobs for the next run
    RUNNING = "running"  # running and taking new jobs (keep_feeding)
    DRAINING = "draining"  # running; no more jobs will come, it ends when all have ended
    STOPPING = "stopping"  # halted, signalled or cancelled: killing what is active
    CLOSED = "closed"  # aclose() was called; nothing more can happen


class _Run:
    """``RunState``'s members, read without ``EnumType.__getattr__`` (see ``states.S``)."""

    IDLE: Final = RunState.IDLE
    RUNNING: Final = RunState.RUNNING
    DRAINING: Final = RunState.DRAINING
    STOPPING: Final = RunState.STOPPING
    CLOSED: Final = RunState.CLOSED


# Tuples, tested with ``in`` (identity first, in C): Enum's own hash is a Python call.
_LIVE = (_Run.RUNNING, _Run.DRAINING, _Run.STOPPING)
_TAKES_JOBS = (_Run.IDLE, _Run.RUNNING)

Event = tuple[Any, ...]
HookCall = tuple[str, Job]
Action = tuple[Callable[..., Awaitable[None]], tuple[Any, ...]]


EARLIER_SUCCESS: Final = "succeeded in an earlier run"  # a job settled as it is fed
_UPSTREAM_AGAIN = "a job it runs after runs again"


class KillOutcome(enum.Enum):
    """What became of a kill asked for by name (``Engine.kill_outcome``)."""

    KILLED = "killed"
    ENDED = "ended"  # on its own, before the kill reached it: its end stands
    UNDER_WAY = "under way"  # an earlier kill of it has not ended it yet
    VETOED = "vetoed"  # a plugin's on_job_killing said no


class _Reply:
    """The answer to a kill() call, set by the loop (or the kill it started)."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.value: bool | BaseException = False

    def set(self, value: bool | BaseException) -> None:
        self.value = value
        self.event.set()


class _Turn:
    """A job's place in line for its number (``Engine.take_turn``)."""

    __slots__ = ("ready",)

    def __init__(self) -> None:
        self.ready = anyio.Event()


class Engine:
    def __init__(
        self,
        queue: Xqueue,
        scheduler: Scheduler,
        hooks: Hooks,
        workdir: Workdir,
        *,
        forks: int,
        error_strategy: str,
        num_retries: int,
        handle_signals: bool,
        hook_timeout: float | None = None,
        slots: Mapping[str, Sequence[Any]] | None = None,
        backfill: int = 16,
        retry_policy: RetryPolicy | None = None,
        resume: bool = True,
    ) -> None:
        self.queue = queue
        self.hook_timeout = hook_timeout
        self.scheduler = scheduler
        self.hooks = hooks
        self.workdir = workdir
        # The built-in event stream, told of the jobs an earlier run settles (``add``).
        events = hooks.pm.get_plugin(EVENTS_PLUGIN)
        self._events = events if isinstance(events, EventLog) else None
        self.forks = forks
        self.error_strategy = error_strategy
        self.num_retries = num_retries
        self.retry_policy = retry_policy or RetryPolicy()
        self.handle_signals = handle_signals
        self.resume = resume

        self.state = _Run.IDLE
        self._opening_stopped = False  # a signal came while the backend was opening
        self.jobs: list[Job] = []
        self.counts: Counter[JobStatus] = Counter()
        self.reused = 0  # finished jobs this run did not run (``QueueStatistics.reused``)
        self._readopted: dict[Job, int] = {}  # earlier runs' attempts followed, by attempt
        self.completed: list[Job] = []  # final jobs, in the order they ended
        # Indexes kept by _move, never by hand: queued jobs in order, active ones.
        self._queued: deque[Job] = deque()
        self._active: dict[Job, None] = {}
        self._to_resolve: list[tuple[Job, float]] = []  # SUBMITTING jobs to look up (not before)
        self._kill_again: list[tuple[Job, float]] = []  # a stop's failed kills, to try again at
        self._kill_errors: dict[Job, str] = {}  # why a stop's kill of each failed last
        self._to_kill: list[Job] = []
        # Earlier runs' attempts found unwanted, stopped together once a batch of lookups
        # that finds them is done (``_on_looked_up``): one kill call, not one a job.
        self._stale_found: list[Job] = []
        self._stale_ready = False
        # The workdir hold (lock serial), and the jobs and ended jobs there were before it.
        self._hold = (0, 0, 0)
        # Jobs settled as fed from a success made under a cache key they were not fed with.
        self._keyed_settled: set[Job] = set()
        self._turns: deque[_Turn] = deque()  # jobs fed, awaiting their number in order
        self._lookups_failing: dict[Job, float] = {}  # since when each lookup has failed
        self._unknown: dict[Job, int] = {}  # submissions in a row with an unknown outcome
        # Jobs whose kill was sent to the backend (this attempt): an end reported for one
        # not in it came before any signal, and is the job's own.
        self._kill_sent: set[Job] = set()
        # Jobs whose kill the backend has not answered yet, and the end it reported for
        # one meanwhile: a job is recorded killed once its kill is confirmed, not when
        # its shell died (the rest of it may still run on the backend).
        self._killing: dict[Job, tuple[JobState, int | None] | None] = {}
        self._left: set[Job] = set()  # left running: a kill vetoed or failed while stopping
        self._graph = Graph()  # who waits for whom (feed(after=...)); WAITING jobs are there
        self._pool = Pool(slots)  # what active jobs hold of the hosts' capacity and slots
        self._backlog = Backlog(backfill)  # queued jobs waiting for room, when counted
        self._capacity_known = False
        # Set once a job asks for something countable: until then admission is by forks
        # alone, the fast path, even on a backend whose capacity is known.
        self._counting = bool(self._pool.axes)
        # (deadline, n, job, attempt) of running jobs with a time limit the backend does
        # not enforce itself; left behind lazily once the job or its attempt has ended.
        self._deadlines: list[tuple[float, int, Job, int]] = []
        self._deadline_seq = itertools.count()
        self._inbox: deque[Event] = deque()
        # Set while one run is to take every job fed (``async with``, and the xqute-style
        # run until its stop_feeding()): what a job fed once it stopped is told, since no
        # later run would take it (its ``wait()`` hung).
        self.one_run: str | None = None
        self._actions: list[Action] = []
        # Ends a backend reported from inside ``watch_end`` (a job that ended before its
        # start was handled): handled once the drain that started it has written its
        # records, as an ``_await_job`` task's word was.
        self._ended_at_once: list[Event] = []
        self._watching = False
        self._wake: anyio.Event | None = None
        self._progress: anyio.Event | None = None
        self._tg: TaskGroup | None = None
        self._error: BaseException | None = None
        self._signal: signal.Signals | None = None
        self._cancelled = False  # the run's task was cancelled (not a signal, not an error)
        self._thread = 0  # the thread of the run's event loop
        self._deadline: float | None = None
        self.scheduler_open = False  # so aclose() runs exactly once per open()
        self._hold_until = 0.0  # no submission before this (the backend looked down)
        self._unavailable_since = 0.0
        self._outage_noted = -math.inf  # when the outage was last reported (then each minute)
        # Jobs whose journal ends with a record no attempt stands behind: the intent of a
        # submission the backend could not take (transient), or "retrying". A run that
        # stops before they are submitted again records how they ended.
        self._open_intents: set[Job] = set()
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        # Embedding (docs/embedding.md): attempts of earlier runs whose result is not
        # wanted (resume=False, a changed cache key), jobs that exited 0 and whose check
        # (on_job_checking) is running, and which optional hooks the plugins implement.
        self._stale: set[Job] = set()
        # Of those, the ones stale only for the kill their run was sending when it died:
        # one that had ended on its own with success first is kept (``_look_up``).
        self._kill_marked: set[Job] = set()
        self._checking: set[Job] = set()
        self._wrapping = self._checks = self._polling = False
        self._polling_posted = False
        # Full collections spaced out while the queue is fed in bulk (``_collector``):
        # looked for once per ``HOLD_AT`` jobs fed, given back as the run ends, the queue
        # closes or the feeding slows down.
        self._collector: _collector.Hold | None = None
        self._hold_next = _collector.HOLD_AT

    # -- state -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state in _LIVE

    @property
    def feeding(self) -> bool:
        return self.state is _Run.RUNNING

    def check_can_feed(self) -> None:
        if self.state in _LIVE and threading.get_ident() != self._thread:
            # An event loop of another thread: two such feeds took the same index (two
            # folders numbered 0) and the run hung.
            raise QueueStateError(
                "feed() and submit() of a running queue must be called in its event loop's "
                "thread; from another thread, hand the call over with a BlockingPortal "
                "(anyio.from_thread.start_blocking_portal) or, in a thread anyio started "
                "(anyio.to_thread.run_sync), anyio.from_thread.run(q.feed, ...)"
            )
        if self.state in _TAKES_JOBS and not (self.one_run and self.state is _Run.IDLE):
            return
        if self.state is _Run.CLOSED:
            raise QueueStateError("this queue is closed; create a new Xqueue to run more jobs")
        if self.one_run:  # its one run is ending or has ended
            raise QueueStateError(self.one_run)
        if self.state is _Run.DRAINING:
            raise QueueStateError(
                "the queue is running and no longer accepts jobs; feed before "
                "run_until_complete(), or use keep_feeding=True / async with"
            )
        if self.state is _Run.STOPPING:
            raise QueueStateError("the queue is stopping and accepts no more jobs")

    def _move(self, job: Job, new: JobStatus) -> None:
        """The only place a job's status changes; it keeps the counts and indexes."""
        old = job.transition(new)
        self.counts[old] -= 1
        self.counts[new] += 1
        if old in ACTIVE:  # JobStatus.is_active, without a property call per move
            self._active.pop(job, None)
            if new not in ACTIVE:
                self._kill_sent.discard(job)  # the attempt is over, and its kill with it
            if new not in ACTIVE and job.claim is not None:
                self._pool.release(job.claim)  # ended, failed, killed, refused, requeued
        if new in ACTIVE:
            self._active[job] = None
            if old is S.QUEUED:  # a new attempt: nothing of the one before is its own
                job.rc, job.reason = None, ""
        if new is S.QUEUED:
            self._queued.append(job)  # left behind lazily when it moves on
        elif new is S.RUNNING and not self.scheduler.enforces_walltime:
            self._arm_deadline(job, time.monotonic())

    def _arm_deadline(self, job: Job, started: float) -> None:
        limit = self.scheduler.walltime(job)
        if limit:
            self._push_deadline(started + limit, job)

    def _push_deadline(self, at: float, job: Job) -> None:
        heapq.heappush(self._deadlines, (at, next(self._deadline_seq), job, job.attempt))

    def _kw(self, job: Job) -> dict[str, Any]:
        return {"xqueue": self.queue, "scheduler": self.scheduler, "job": job}

    def _post(self, *event: Any) -> None:
        self._inbox.append(event)
        if self._wake is not None:
            self._wake.set()

    def _notify_progress(self) -> None:
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    def _unsettled(self) -> int:
        final = sum(n for s, n in self.counts.items() if s.is_final)
        return len(self.jobs) - final - len(self._left)

    def _finished(self) -> bool:
        return self.state is not _Run.RUNNING and self._unsettled() == 0

    # -- feeding ---------------------------------------------------------------------------
    def take_turn(self) -> _Turn:
        """A place in line for a job fed now whose ``add`` comes after awaits of its own
        (a call's pickle is staged in a worker thread first): jobs are numbered in the
        order they were fed, not in the order those awaits end. An index is a job's
        identity on a resumed run: calls submitted from a task group were numbered by
        their pickles' sizes, and ran again in the next run. ``add`` gives it back."""
        turn = _Turn()
        if not self._turns:
            turn.ready.set()
        self._turns.append(turn)
        return turn

    def leave_turn(self, turn: _Turn) -> None:
        """Give back a place in line (numbered, or refused); the next one's turn comes."""
        first = self._turns[0] is turn
        self._turns.remove(turn)
        if first and self._turns:
            self._turns[0].ready.set()

    async def add(
        self, job: Job, staged: Mapping[str, str] | None = None, turn: _Turn | None = None
    ) -> None:
        """Take a fed job: the workdir is locked first, so a refused controller changes nothing.

        ``staged``: files written beforehand for the job's folder (``Workdir.stage``);
        ``turn``: its place in line (``take_turn``), given back here."""
        if turn is None and (
            self._turns  # a job fed before this one is not numbered yet
            or not self.workdir.locked  # or this one awaits before its number: the lock,
            or (job.resources is not None and not self._capacity_known)  # the capacity
        ):
            turn = self.take_turn()
        try:
            self.check_can_feed()
            if job.resources is not None:  # feeding is the hot path: no call for nothing
                await self._check_fits(job)
            if not self.workdir.locked:
                await self.workdir.lock_async()
                self.check_can_feed()  # the state may have moved on while the lock was taken
            if turn is not None:
                await turn.ready.wait()
                self.check_can_feed()
            # Numbered here, after the last await: two feeds racing over the first lock
            # must not both take the same index (and folder).
            self._new_hold()
            job.index = len(self.jobs)
            while True:
                try:
                    record = self.workdir.prepare(job, staged, defer_reads=True)
                    break
                except ReadsWanted:
                    # What a resume reads once (the index of successes; for the first job
                    # it does not vouch for, the listing and the records: seconds for a
                    # million jobs) is read in a worker thread, the job keeping its place.
                    turn = turn or self.take_turn()
                    await turn.ready.wait()
                    await anyio.to_thread.run_sync(self.workdir.read_wanted)
                    self.check_can_feed()
                    job.index = len(self.jobs)
            self.jobs.append(job)
        finally:
            if turn is not None:
                self.leave_turn(turn)
        if len(self.jobs) >= self._hold_next:
            self._space_collections()
        self.counts[S.INIT] += 1
        settled = bool(record and self._earlier_success(job, record))
        if settled and self._events is not None:
            # Settled now: the event stream's line for it is the one of its end, which
            # says why (a million-job resume writes half the lines).
            self._events.settling = job
        # Hooks that return nothing to await cost no coroutine: this runs once a job fed.
        try:
            pending = self.hooks.notify("on_job_init", self._kw(job), self._hook_timeout())
            if pending is not None:
                await pending
        except BaseException as exc:
            # It is fed all the same (numbered, listed, counted): handed to the engine, so
            # no run waits for a job nobody gave it. A plugin's error stops the run, as any
            # hook's does; a cancelled feed leaves the job to the run like any other.
            self._post("fed", job, record)
            if isinstance(exc, PluginError):
                self._hook_failed(exc)
            raise
        if self.state in _LIVE:  # self.running, without a property call per job
            self._post("fed", job, record)
        else:
            pending = self._fire(self._on_fed(job, record, settled))
            if pending is not None:
                await pending

    def _space_collections(self) -> None:
        self._hold_next = len(self.jobs) + _collector.HOLD_AT
        if self._collector is None or not self._collector.held:  # ended by a pause
            self._collector = _collector.hold(self)

    def release_collector(self) -> None:
        """Give back the spacing of full collections: the run that needed it has ended."""
        if self._collector is not None:
            self._collector.release()
            self._collector = None

    async def _check_fits(self, job: Job) -> None:
        """Refuse a job that could never start: more than any host has, unknown slot axes.

        The capacity is asked of the scheduler once (a local machine is looked at then);
        a backend that learns it only when it opens (SSH servers that were not given
        one) refuses such a job when its turn comes instead.
        """
        need = Need.of(job.resources)
        if not need:
            return
        self._counting = True
        if not self._capacity_known:
            self._pool.set_hosts(await self.scheduler.capacity())
            self._capacity_known = True
        why = self._pool.never_fits(need)
        if why is not None:
            raise ConfigError(f"job {job.name!r} can never start on {self.scheduler.name}: {why}")

    def close_feeding(self) -> None:
        """No more jobs: the run ends once every job fed has ended."""
        if self.state is _Run.RUNNING:
            self.state = _Run.DRAINING
            self._post("check")

    # -- running ---------------------------------------------------------------------------
    def check_can_begin(self) -> None:
        if self.state is _Run.CLOSED:
            raise QueueStateError("this queue is closed")
        if self.running:
            raise QueueStateError("the queue is already running")

    async def lock_workdir(self) -> None:
        """Take the workdir's lock before ``begin`` (which must not await to take it)."""
        self.check_can_begin()
        await self.workdir.lock_async()

    def begin(self, keep_feeding: bool) -> None:
        """The synchronous start of a run, so feeding state is right before any await.

        Async callers ``lock_workdir()`` first; the lock is then already held here.
        """
        self.check_can_begin()
        self.workdir.lock()
        self._new_hold()
        self.state = _Run.RUNNING if keep_feeding else _Run.DRAINING
        self._error, self._signal, self._deadline = None, None, None
        self._kill_again.clear()
        self._kill_errors.clear()
        self._cancelled = False
        self._thread = threading.get_ident()
        self._lookups_failing.clear()
        self._unknown.clear()
        self._left.clear()
        self._open_intents.clear()
        self._kill_sent.clear()
        self.started_at, self.stopped_at = time.monotonic(), None
        self.workdir.making_ahead(True)

    async def run(self, keep_feeding: bool, *, begun: bool = False) -> None:
        # The run's tasks, started from here, inherit it: their hooks are ``in_run``.
        token = _RUN.set(self)
        try:
            await self._run(keep_feeding, begun)
        finally:
            _RUN.reset(token)

    async def _run(self, keep_feeding: bool, begun: bool) -> None:
        if not begun:
            await self.lock_workdir()
            self.begin(keep_feeding)
        reason = "error"
        receiver = self._open_signals()
        try:
            self.scheduler.forks = self.forks
            self._plugin_features()
            self.scheduler_open = True  # closed by _close, even if open() fails half-way
            if await self._open(receiver):
                await self._run_loop(receiver)
                reason = self._reason()
            else:
                reason = "signal"
        except Exception as exc:  # the backend would not open, a plugin failed on_init
            reason = "error"
            if self._error is None:
                self._error = exc
        except BaseException:
            reason = "cancelled"
            self._cancelled = True  # its jobs' kill reasons say so, not "complete"
            raise
        finally:
            self.workdir.making_ahead(False)
            with anyio.CancelScope(shield=True):
                try:
                    if not self._finished():
                        # Cancelled mid-run: stop here, with the run's tasks gone. A
                        # submission cut short may or may not have happened: look it up.
                        for job in self.jobs:
                            if job.status is S.SUBMITTING:
                                self._to_resolve.append((job, 0.0))
                        # Stopped before the loop decides anything: a job that the last
                        # event queued (a dependency just succeeded) must not be submitted.
                        await self._call_hooks(self._on_stop(None))
                        await self._run_loop(receiver)
                    if self._signal is not None or self._cancelled:  # not to delay a stop
                        await anyio.to_thread.run_sync(self.workdir.halt_making)
                    elif self.workdir.has_unmade():
                        # Jobs that ended unsubmitted (skipped, cancelled) get the folder
                        # every fed job has, so `xqueue status` lists them with the rest.
                        await anyio.to_thread.run_sync(self.workdir.make_remaining)
                    if self._signal is None and not self._cancelled:  # not to delay a stop
                        # What the next resume reads instead of the journal: a shortcut,
                        # and only while nothing changed since (``successes``).
                        await anyio.to_thread.run_sync(
                            self.workdir.save_successes,
                            len(self.jobs),
                            self._fresh_jobs(),
                            frozenset(self._keyed_settled),
                        )
                    if self.workdir.broken is not None and self._error is None:
                        self._error = self.workdir.broken  # refused at the very end
                    await self._shutdown_hooks(reason)
                finally:
                    await self._close(receiver)
        if self._signal is not None:
            raise self._signal_error()
        if isinstance(self._error, PluginError):
            raise self._error.reraised()
        if self._error is not None:
            raise self._error

    async def _open(self, receiver: Any) -> bool:
        """Open the backend, learn its capacity, call ``on_init``; False if a signal came
        meanwhile, which stops the opening and the run (SIGINT, SIGTERM, SIGHUP are the
        run's from before this: an ``open()`` that waits on a silent server must not
        leave Ctrl-C unheard for as long as its timeout)."""
        self._opening_stopped = False
        error: Exception | None = None  # raised as it is, not in the task group's group
        async with anyio.create_task_group() as tg:
            if receiver is not None:
                tg.start_soon(self._stop_opening, receiver, tg.cancel_scope)
            try:
                await self.scheduler.open(self.workdir)
                self._pool.set_hosts(await self.scheduler.capacity())  # measured now, if not
                self._capacity_known = True
                await self.hooks.call(
                    "on_init", self._hook_timeout(), xqueue=self.queue, scheduler=self.scheduler
                )
            except Exception as exc:
                error = exc
            tg.cancel_scope.cancel()  # opened: the run's loop watches the signals now
        if error is not None:
            raise error
        return not self._opening_stopped

    async def _stop_opening(self, receiver: Any, opening: anyio.CancelScope) -> None:
        async for sig in receiver[1]:
            log.warning("%s while %s was opening: stopping", sig.name, self.scheduler.name)
            self._opening_stopped = True
            self._signal = sig  # this run stops as it would in its loop (``_on_signal``)
            for engine in _SIGNALLED:  # other runs of the process stop too
                if engine is not self:
                    engine._post("signal", sig)
            opening.cancel()
            return

    def _new_hold(self) -> None:
        """Note where this hold of the workdir's lock began, if it is a new one: what the
        queue knows of jobs from before may be stale (``_fresh_jobs``)."""
        if self._hold[0] != self.workdir.lock_serial:
            self._hold = (self.workdir.lock_serial, len(self.jobs), len(self.completed))

    def _fresh_jobs(self) -> list[Job]:
        """The jobs fed or ended while the workdir was held this time."""
        _, fed, ended = self._hold
        return [*self.jobs[fed:], *(job for job in self.completed[ended:] if job.index < fed)]

    def _plugin_features(self) -> None:
        """What this run must do for the optional hooks; nothing at all when unused."""
        implements = self.hooks.implements
        opts = self.scheduler.options
        self._wrapping = bool(opts.prescript.strip() or opts.postscript.strip()) or any(
            implements(h) for h in (*wrapping.BEFORE_HOOKS, wrapping.AFTER_HOOK)
        )
        self._checks = implements("on_job_checking")
        self._polling = implements("on_job_polling") or implements("on_jobs_polling")
        self._polling_posted = False

    def _stopped_why(self) -> str:
        return f"the run stopped ({self._signal.name if self._signal else self._reason()})"

    def _reason(self) -> str:
        if self._signal is not None:
            return "signal"
        if self._cancelled:
            return "cancelled"
        if self._error is None:
            return "complete"
        return "halted" if isinstance(self._error, JobFailedError) else "error"

    async def _run_loop(self, receiver: Any) -> None:
        """Run the loop and the tasks that feed it until every job has settled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                tg.start_soon(self._guard, self.scheduler.serve)
                for job in self._checking:  # a run cancelled mid-check checks it again
                    tg.start_soon(self._guard, self._check, job)
                if not self.scheduler.awaits_completion:
                    tg.start_soon(self._guard, self._poller)
                else:
                    for job in self._active:
                        if job.status is not S.SUBMITTING and job not in self._checking:
                            tg.start_soon(self._guard, self._await_job, job)
                    if self._polling:
                        tg.start_soon(self._guard, self._poll_timer)
                if receiver is not None:
                    tg.start_soon(self._guard, self._watch_signals, receiver)
                await self._loop()
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    def in_run(self) -> bool:
        """Whether the caller runs in one of the run's own tasks: in a hook the run
        awaits, which must not wait for the run's answer (a kill's, its end): that
        answer would come only after the hook."""
        return _RUN.get() is self

    async def _loop(self) -> None:
        while True:
            self._expire_deadlines()
            self._decide()
            actions, self._actions = self._actions, []
            assert self._tg is not None
            for fn, args in actions:
                self._tg.start_soon(self._guard, fn, *args)
            if self._finished():
                return
            if not self._inbox:
                self._wake = anyio.Event()
                with anyio.move_on_after(self._wait_for()):
                    await self._wake.wait()
                self._wake = None
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    self._give_up()
                    return
            if self._inbox:
                await self._drain()

    async def _drain(self) -> None:
        """Handle the events that came in; the records they make are written together,
        before any await (a hook that returns something to await may act on them)."""
        self.workdir.hold_records()
        try:
            while self._inbox:
                pending = self._fire(self._handle(self._inbox.popleft()))
                if pending is not None:
                    self._flush_records()
                    await pending
                    self.workdir.hold_records()
        except BaseException:
            # What is on its way out (a cancellation, a bug) must not be replaced by an
            # error of the write; the lost lines are only a crash's, logged.
            try:
                self.workdir.flush_records()
            except Exception as exc:
                log.error("could not write the journal: %s", exc)
            raise
        finally:
            if self._ended_at_once:
                self._inbox.extend(self._ended_at_once)
                self._ended_at_once.clear()
        self._flush_records()

    def _flush_records(self) -> None:
        """Write the records held back; a workdir that refuses them (full) stops the run,
        which then leaves its running jobs running (``Workdir._append_journal``)."""
        try:
            self.workdir.flush_records()
        except WorkdirError as exc:
            self._post("stop", exc)
        else:
            broken = self.workdir.broken  # by the folder thread: records now go nowhere
            if broken is not None and self.state is not _Run.STOPPING:
                self._post("stop", broken)

    def _wait_for(self) -> float:
        waits = [math.inf]
        if self._deadline is not None:
            waits.append(self._deadline - time.monotonic())
        if self._to_resolve:
            waits.append(min(at for _, at in self._to_resolve) - time.monotonic())
        if self._kill_again:
            waits.append(min(at for _, at in self._kill_again) - time.monotonic())
        if self._hold_until and (self._queued or self._backlog):
            waits.append(self._hold_until - time.monotonic())
        if self._deadlines:
            waits.append(self._deadlines[0][0] - time.monotonic())
        return max(0.0, min(waits))

    async def _guard(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Tasks never raise into the task group: an error stops the run instead."""
        try:
            await fn(*args)
        except Exception as exc:
            self._post("stop", exc)

    # -- decide: events in, state moves and actions out, no await ----------------------
    def _handle(self, event: Event) -> list[HookCall]:
        kind = event[0]
        handler: Callable[..., list[HookCall]] = getattr(self, f"_on_{kind}")
        return handler(*event[1:])

    def _on_check(self) -> list[HookCall]:
        return []

    def _on_looked_up(self) -> list[HookCall]:
        self._stale_ready = bool(self._stale_found)  # what this batch (and others) found
        return []

    def _on_fed(
        self, job: Job, record: dict[str, Any] | None, settled: bool | None = None
    ) -> list[HookCall]:
        """``settled``: ``_earlier_success`` of the job, if ``add`` has just asked it (a
        resume asks it of every job once, not twice); None when the run's loop takes
        the job later, and things may have moved on."""
        if job.status is not S.INIT:  # killed (or cancelled) while on_job_init ran
            return []
        if record is None:
            return self._release(job)
        grown = Resources.from_record(record.get("resources"))
        if grown is not None:  # a retry policy grew it: go on from there
            job.resources, job._grown = grown, True
        status, attempt = record.get("status"), record.get("attempt")
        if status == FINISHED_RECORD and record.get("rc") == 0:
            if not (self._earlier_success(job, record) if settled is None else settled):
                # Not wanted again (resume=False, another cache key, a job it runs after
                # that runs again): a new attempt after the last, so the files of the
                # attempt that succeeded stay as they are.
                job.attempt = job._base_attempt = _int(attempt, 0)
                if not job.after:
                    return self._release(job)
                # A dependent: journalled at once, so that a run that stops (or dies)
                # before it runs leaves no success of it to reuse beside its upstream's
                # new one (the upstream runs again too, or already ran: resume=False),
                # which the next run would take as a whole.
                if self._reusable(job, record):
                    job.reason = f"its earlier success no longer stands: {_UPSTREAM_AGAIN}"
                calls = self._release(job)
                if not job.status.is_final:
                    self.workdir.record(job)
                return calls
            # An earlier run's success (``_earlier_success``): settled as it is fed.
            if record.get("cache_key") is not None and job.cache_key is None:
                self._keyed_settled.add(job)  # not a plain success (``successes``)
            job.rc, job.attempt = 0, _int(attempt, 1)
            job.reason = EARLIER_SUCCESS
            self.reused += 1
            return self._finalize(job, S.FINISHED, record=False)
        if status in ACTIVE_RECORDS or not record:
            # An earlier run may have started it: look before running it again.
            job.attempt = _int(attempt, 0) or self.workdir.last_attempt(job)
            job.jid = str(record["jid"]) if record.get("jid") else None
            job._since = record_time(record.get("since", record.get("time")))
            job._base_attempt = job.attempt - 1  # a lost attempt n is not held against it
            if job.attempt == 0:
                return self._release(job)
            if not self._reusable(job, record) or record.get("kill") or record.get("gone"):
                # Not wanted, or being killed when the earlier run died (its stop, a kill,
                # a deadline: ``record_kills``), so its end is that kill's, not its own, or
                # its folder was removed since (``Workdir.prepare``): looked up all the
                # same, stopped, and run again; never run twice at once.
                self._stale.add(job)
                if self._reusable(job, record) and not record.get("gone"):
                    self._kill_marked.add(job)  # unless it exited 0 first (_on_resolved)
            # Re-adopted whatever its dependencies: the earlier run only started it once
            # they had succeeded, and it must not run twice. It may still hold the devices
            # and slot values it was given: held again, so no other job gets them.
            self._move(job, S.SUBMITTING)
            job.claim = self._pool.restore(record.get("claim"), Need.of(job.resources))
            self._to_resolve.append((job, 0.0))
            return []
        # It ended (failed, killed, skipped): run it again, as attempts after the last, so
        # the earlier run's files stay as they were and `xqueue logs` shows this run's.
        # Those attempts do not count against num_retries.
        job.attempt = job._base_attempt = _int(attempt, 0)
        return self._release(job)

    def _earlier_success(self, job: Job, record: Mapping[str, Any]) -> bool:
        """Whether ``_on_fed`` settles ``job`` as the success ``record`` tells of."""
        return (
            record.get("status") == FINISHED_RECORD
            and record.get("rc") == 0
            and self._reusable(job, record)
            and (not job.after or self._upstream_reused(job))
        )

    @staticmethod
    def _upstream_reused(job: Job) -> bool:
        """Whether every job ``job`` runs after was itself settled by an earlier success:
        one that runs again (changed, failed before, its folder removed) may make other
        output, and a dependent kept from before ran on the old one. It then ran before
        its upstream had run, and stood as a success when that failed. (The reason is
        the constant itself, never a copy: identity says "settled so".)"""
        return all(dep.reason is EARLIER_SUCCESS for dep in job.after)

    def _reusable(self, job: Job, record: Mapping[str, Any]) -> bool:
        """Whether an earlier run's attempt of ``job`` may stand for this run's.

        Not with ``resume=False``; with a cache key, only if the attempt was made under
        the same key (an attempt recorded without one does not match any key). Without
        a key, the job's folder is its identity: the same spec (command, environment,
        resources) is the same job."""
        if not self.resume:
            return False
        return job.cache_key is None or record.get("cache_key") == job.cache_key

    def _release(self, job: Job, *, announce: bool = True) -> list[HookCall]:
        """Queue a job whose dependencies have all succeeded; else hold it, or skip it
        for good if one of them ended without succeeding."""
        if job.after:
            dep = self._graph.add(job)
            if dep is not None:
                job.reason = skip_reason(dep, dep)
                return self._finalize(job, S.SKIPPED)
            if self._graph.waits(job):
                self._move(job, S.WAITING)  # not queued: no slot, no look at each tick
                return []
        if not announce:
            self._move(job, S.QUEUED)
            return []
        return self._enqueue(job)

    def _enqueue(self, job: Job) -> list[HookCall]:
        self._move(job, S.QUEUED)
        return [("on_job_queued", job)]

    def _on_unsent(self, job: Job) -> list[HookCall]:
        """A job of a batch whose submission stopped before it was sent, as another job's
        hook raised: cancelled, as the stop cancels every job not submitted yet (the
        plugin's error was each one's "submission failed", and a note in its stderr)."""
        job.jid, job.rc = None, None
        return self._cancel_unsubmitted(job, self._stopped_why())

    def _cancel_unsubmitted(self, job: Job, why: str, *, cascade: bool = True) -> list[HookCall]:
        """End a job that was never submitted, as a stop ends it. Not recorded (status
        shows it "not submitted"), but for one whose journal ends with an intent the
        backend never took: that would read as a submission a dead run left, to look up."""
        again = " again" if job._failures else ""  # its failed attempt's rc is not this end's
        job.rc, job.reason = None, f"cancelled before it was submitted{again}: {why}"
        return self._finalize(job, S.KILLED, record=job in self._open_intents, cascade=cascade)

    def _on_submitted(self, job: Job, result: str | BaseException) -> list[HookCall]:
        if isinstance(result, SubmissionUnknownError):
            tries = self._unknown[job] = self._unknown.get(job, 0) + 1
            if tries <= MAX_UNKNOWN_SUBMISSIONS:
                log.warning("job %s: %s; looking for it before submitting again", job.index, result)
                job.jid = None
                self._to_resolve.append((job, time.monotonic() + RESOLVE_DELAY))
                return []
            # Each lookup before found nothing, so nothing runs: a failed submission.
            del self._unknown[job]
            result = SubmissionError(
                f"{result}; {MAX_UNKNOWN_SUBMISSIONS} submissions in a row ended so and none "
                "was found on the backend: not submitted again",
                retryable=False,
            )
        if getattr(result, "transient", False) and not job.kill_requested:
            # Nothing was submitted and the backend looks down: wait and submit again,
            # without spending an attempt, until the outage outlasts the tolerance.
            now = time.monotonic()
            self._unavailable_since = self._unavailable_since or now
            if now - self._unavailable_since < OUTAGE_TOLERANCE:
                # Once for the outage, then a minute apart: a thousand jobs waiting a
                # second at a time would otherwise each say so, every second.
                if now - self._outage_noted >= OUTAGE_NOTE_INTERVAL:
                    self._outage_noted = now
                    log.warning(
                        "job %s: %s; submitting again shortly (jobs wait for the backend "
                        "for up to %d s)",
                        job.index,
                        result,
                        OUTAGE_TOLERANCE,
                    )
                else:
                    log.debug("job %s: %s; submitting again shortly", job.index, result)
                self._open_intents.add(job)
                job._base_attempt += 1
                self._hold_until = now + RESOLVE_DELAY
                self._move(job, S.QUEUED)
                self._queued.appendleft(self._queued.pop())  # keep its place in line
                return []
        if result is self.workdir.broken:  # the run's own error says it, once
            job.jid, job.rc = None, None
            job.reason = f"cancelled before it was submitted: {result}"
            return self._finalize(job, S.KILLED, record=False)
        if isinstance(result, BaseException):
            job.jid, job.rc = None, None
            job.reason = f"submission failed: {result}"
            self._note_in_stderr(job)
            log.warning("job %s (%s): %s", job.index, job.name, job.reason)
            if job.kill_requested:
                return self._finalize(job, S.KILLED)
            return self._end_attempt(
                job,
                S.FAILED,
                retryable=getattr(result, "retryable", True),
                failure=FailureClass.SUBMIT_FAILED,
            )
        job.jid = result
        self._unknown.pop(job, None)
        self._unavailable_since, self._outage_noted = 0.0, -math.inf
        self._open_intents.discard(job)
        return self._now_active(job, ["on_job_submitted"])

    def _now_active(self, job: Job, hooks: list[str]) -> list[HookCall]:
        self._move(job, S.SUBMITTED)
        self.workdir.record(job)
        calls = [(h, job) for h in hooks]
        if self.scheduler.running_on_submit:
            self._move(job, S.RUNNING)
            calls.append(("on_job_started", job))
        if job.kill_requested:
            if self.workdir.broken is not None:  # as _on_stop leaves the active ones
                self._leave_running(job)
                return calls
            self._to_kill.append(job)
        if self.scheduler.awaits_completion:
            report = functools.partial(self._reported, job, job.attempt)
            self._watching = True
            try:
                taken = self.scheduler.watch_end(job, report)
            finally:
                self._watching = False
            if not taken:
                self._actions.append((self._await_job, (job,)))
        elif self._wake_poller is not None:
            self._wake_poller.set()
        return calls

    def _reported(self, job: Job, attempt: int, state: JobState | None) -> None:
        """A backend's word of the end of a job it watches (``Scheduler.watch_end``)."""
        event = ("unwatched", job, attempt) if state is None else ("update", job, state, attempt)
        if self._watching:
            self._ended_at_once.append(event)
        else:
            self._post(*event)

    def _on_unwatched(self, job: Job, attempt: int) -> list[HookCall]:
        """The backend can no longer report the job's end: it is awaited after all."""
        if job.status.is_active and attempt == job.attempt:
            self._actions.append((self._await_job, (job,)))
        return []

    def _on_vetoed(self, job: Job, plugin: str) -> list[HookCall]:
        job.reason = f"submission vetoed by plugin {plugin!r}"
        return self._finalize(job, S.SKIPPED)

    def _on_resolved(
        self, job: Job, found: bool | BaseException, own_success: bool = False
    ) -> list[HookCall]:
        if job.status is not S.SUBMITTING:
            return []
        now = time.monotonic()
        if isinstance(found, BaseException):
            first = self._lookups_failing.setdefault(job, now)
            if now - first < OUTAGE_TOLERANCE:
                # Said once: it was said for each job every second, for ever.
                (log.warning if first == now else log.debug)(
                    "job %s: looking it up failed (%s); trying again", job.index, found
                )
                self._to_resolve.append((job, now + RESOLVE_DELAY))
                return []
            # Whether it runs cannot be known, so it is not run again: left as recorded,
            # for a later run to look up.
            del self._lookups_failing[job]
            return self._left_as_recorded(
                job,
                f"could not be looked up for {OUTAGE_TOLERANCE:.0f} s ({found}); it may still "
                "run: left as it was recorded, a later run looks for it again",
            )
        self._lookups_failing.pop(job, None)
        if own_success and job in self._kill_marked and job in self._stale:
            # Its run was killing it when it died, and it had succeeded on its own first
            # (``Scheduler.ended_before_kill``): kept, as a re-adopted job's success is.
            self._stale.discard(job)
            log.info("job %s (%s): had ended on its own before its kill", job.index, job.name)
        self._kill_marked.discard(job)
        if job in self._stale:
            # An earlier run's attempt whose result is not wanted: stopped if the backend
            # still holds it (the job must never run twice at once), then run afresh.
            if found:
                self._stale_found.append(job)  # stopped with the others of its lookups
                return []
            self._stale.discard(job)
            job.jid = None
        if found or job.jid is not None:
            # Held by the backend, or known by id: following it settles it (its rc
            # file, the backend's accounting, or vanished after a grace).
            log.info("job %s (%s): re-adopted %s", job.index, job.name, job.jid)
            self._readopted[job] = job.attempt
            calls = self._now_active(job, [])
            self._arm_readopted(job)
            return calls
        # Never submitted, or lost before it started: the next attempt gets new files.
        job._base_attempt += 1
        if job.kill_requested:
            job.reason = "killed before it was submitted"
            return self._finalize(job, S.KILLED, record=False)
        return self._release(job, announce=False)

    def _left_as_recorded(self, job: Job, reason: str) -> list[HookCall]:
        """Fail an earlier run's job for this run only: left as it is and recorded as it
        was (it may run still), so a later run looks for it again."""
        job.reason = reason
        log.error("job %s (%s): %s", job.index, job.name, job.reason)
        calls = self._finalize(job, S.FAILED, record=False)
        if self.error_strategy == "halt":
            calls += self._on_stop(JobFailedError(job))
        return calls

    def _arm_readopted(self, job: Job) -> None:
        """A re-adopted job's limit counts from the start its wrapper recorded, if any."""
        if self.scheduler.enforces_walltime or not self.scheduler.walltime(job):
            return
        try:
            epoch = float(read_text(job.attempt_path(STARTED)) or "")
        except (ValueError, WorkdirError):
            return
        self._arm_deadline(job, time.monotonic() - max(0.0, time.time() - epoch))

    def _expire_deadlines(self) -> None:
        """Kill the jobs running past their limit; a TIMEOUT verdict waits for the kill."""
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, job, attempt = heapq.heappop(self._deadlines)
            if (
                job.status not in (S.SUBMITTED, S.RUNNING)
                or job.attempt != attempt
                or job.kill_requested
                or job._pending_state is not None
                or job in self._checking  # it exited 0 in time; only its check remains
            ):
                continue  # ended, a later attempt, or already being killed
            limit = self.scheduler.walltime(job) or 0
            job._pending_state = JobState(
                S.FAILED, None, timed_out(limit), failure=FailureClass.TIMEOUT
            )
            log.warning("job %s (%s): %s; killing it", job.index, job.name, timed_out(limit))
            self._to_kill.append(job)

    def _on_stale_stopped(self, job: Job, error: BaseException | None) -> list[HookCall]:
        self._stale.discard(job)
        if job.status is not S.SUBMITTING:
            return []
        if error is not None:
            why = f"an attempt of an earlier run ({job.jid}) could not be stopped: {error}"
            return self._left_as_recorded(job, why)
        self.scheduler.forget(job)
        job.jid = None
        return self._on_resolved(job, False)

    def _on_update(self, job: Job, state: JobState, attempt: int | None = None) -> list[HookCall]:
        if not job.status.is_active or job.status is S.SUBMITTING or job in self._checking:
            return []
        if attempt is not None and attempt != job.attempt:
            return []  # an earlier attempt's late word (it was settled by its kill)
        if state.status is S.SUBMITTED:
            return []
        calls: list[HookCall] = []
        if job.status is S.SUBMITTED:
            self._move(job, S.RUNNING)  # on_job_started always precedes the final hook
            calls.append(("on_job_started", job))
        if state.status is S.RUNNING:
            return calls
        if job in self._killing:
            self._killing[job] = (state, attempt)  # recorded once the kill is confirmed
            return calls
        if state.kill and not job.kill_requested:
            # The backend wants it removed (a dependency that can never be met): kill it
            # like any other, veto included, and record this state once it is gone.
            job._pending_state = state
            self._to_kill.append(job)
            return calls
        self.scheduler.forget(job)
        asked = job.reason  # why its kill was asked for (the run stopped, by name), if it was
        job.rc, job.reason = state.rc, state.reason
        if job.kill_requested and job._pending_state is None:
            if job in self._kill_sent and not state.unkilled:
                job.reason = job.reason or asked or "killed"
                return calls + self._finalize(job, S.KILLED)
            # Decided, not sent yet (a halt's kills wait for their vetoes): it ended on
            # its own, and that end stands (a success recorded "killed", rc 0, ran again).
            job._kill_requested = False
        if job._pending_state is not None:
            pending, job._pending_state = job._pending_state, None
            # The verdict the kill was for, with the job's own code if it left one; but a
            # job that exited 0 at its deadline finished (as its rc file says on Slurm).
            if not (pending.failure is FailureClass.TIMEOUT and state.status is S.FINISHED):
                rc = state.rc if pending.rc is None else pending.rc
                state = dataclasses.replace(pending, rc=rc)
                job.rc, job.reason = state.rc, state.reason
        if state.status is S.KILLED:
            job.reason = job.reason or "killed outside xqueue"
        new = S.FINISHED if state.status is S.FINISHED else S.FAILED
        if new is S.FINISHED and self._checks:
            # It counts as a success once the plugins have checked what it left; it
            # keeps its slot meanwhile.
            self._checking.add(job)
            self._actions.append((self._check, (job,)))
            return calls
        return calls + self._end_attempt(
            job,
            new,
            retryable=state.retryable,
            failure=_classify(state),
            record=not state.unsettled,
        )

    def _on_checked(self, job: Job, reason: str, attempt: int) -> list[HookCall]:
        if attempt != job.attempt:
            return []  # the answer for an attempt that has since been settled otherwise
        self._checking.discard(job)
        if not job.status.is_active:
            return []
        if reason:
            job.reason = reason
            log.warning(
                "job %s (%s) exited 0 but failed its check: %s", job.index, job.name, reason
            )
            # Its own result is wrong, as with a non-zero exit: retried by the same rules.
            return self._end_attempt(
                job, S.FAILED, retryable=True, failure=FailureClass.NONZERO_EXIT
            )
        return self._end_attempt(job, S.FINISHED, retryable=True)

    def _on_polling(self) -> list[HookCall]:
        """A tick of the polling hooks: they are called, with every active job, by an
        action, so a sweep over many jobs never holds up the loop; the next tick is
        taken only once that action has finished (``_tick``)."""
        jobs = [j for j in self._active if j.status is not S.SUBMITTING and j not in self._checking]
        if self.state is _Run.STOPPING or not jobs:
            self._polling_posted = False
        else:
            self._actions.append((self._poll_hooks, (jobs,)))
        return []

    def _end_attempt(
        self,
        job: Job,
        status: JobStatus,
        *,
        retryable: bool,
        failure: FailureClass | None = None,
        record: bool = True,
    ) -> list[HookCall]:
        """``record=False``: the end is this run's verdict, not the workdir's (a job the
        backend lost sight of stays journalled active, for a later run to look up)."""
        self._checking.discard(job)
        if status is S.FAILED and job.kill_requested:
            # Killed on request while a kill of the backend's own (its time limit) was
            # under way: it ends killed, as asked, and is not run again.
            job.reason = job.reason or "killed"
            return self._finalize(job, S.KILLED)
        if status is S.FAILED:
            job.failure = failure or (
                FailureClass.NONZERO_EXIT if job.rc else FailureClass.VANISHED
            )
            counts = job._failures = job._failures or {}
            counts[job.failure] = counts.get(job.failure, 0) + 1
            if retryable and self.state is not _Run.STOPPING and self._retry(job):
                self._move(job, S.RETRYING)
                self.workdir.record(job)
                self._open_intents.add(job)
                # The failed attempt's rc and reason stay for on_job_retrying (and for
                # `status` while it waits); the next submission clears them (_move).
                job.jid = None
                return [("on_job_retrying", job), *self._enqueue(job)]
        calls = self._finalize(job, status, record=record)
        if status is S.FAILED and self.error_strategy == "halt":
            calls += self._on_stop(JobFailedError(job))
        return calls

    def _retry(self, job: Job) -> bool:
        """Whether the retry policy runs a failed job again; it may grow its request."""
        assert job.failure is not None and job._failures is not None
        decision = self.retry_policy.decide(
            job.failure,
            failures=job._failures,
            attempts=job.attempt - job._base_attempt,
            num_retries=self.num_retries,
            error_strategy=self.error_strategy,
            resources=job.resources,
            walltime=self.scheduler.walltime(job),
        )
        if not decision.retry:
            if decision.note:
                job.reason = f"{job.reason}; {decision.note}" if job.reason else decision.note
            return False
        if decision.resources is not None:
            job.resources, job._grown = decision.resources, True
        if decision.note:
            log.info("job %s (%s): %s; %s", job.index, job.name, job.failure.name, decision.note)
        return True

    def _finalize(
        self, job: Job, status: JobStatus, *, record: bool = True, cascade: bool = True
    ) -> list[HookCall]:
        """End a job; the jobs that wait for it are queued or skipped (``cascade``)."""
        calls = self._end(job, status, record)
        if cascade and self._graph.followed(job):
            calls += self._settle_dependents(job)
        return calls

    def _end(self, job: Job, status: JobStatus, record: bool) -> list[HookCall]:
        if status is not S.FAILED:
            job.failure = None  # a class tells why the job failed, and it has not
        self._move(job, status)
        self._left.discard(job)
        if self._readopted and status is S.FINISHED and self._readopted.get(job) == job.attempt:
            self.reused += 1  # an earlier run's attempt, not one of this run
        if record:
            self.workdir.record(job)
        self.completed.append(job)
        self._notify_progress()
        return [(_FINAL_HOOKS[status], job)]

    def _settle_dependents(self, ended: Job) -> list[HookCall]:
        """``ended`` is final: queue the jobs it was the last to wait for, or, if it did
        not succeed, skip every job that waits for it, directly or through others. A
        loop, not recursion: a chain of 100,000 jobs must not overflow the stack."""
        if ended.status is S.FINISHED:
            ready = [job for job in self._graph.succeeded(ended) if job.status is S.WAITING]
            return [call for job in ready for call in self._enqueue(job)]
        calls: list[HookCall] = []
        todo = [ended]
        while todo:
            dep = todo.pop()
            for job in self._graph.stranded(dep):
                if job.status is S.WAITING:
                    job.reason = skip_reason(dep, ended)
                    calls += self._end(job, S.SKIPPED, record=True)
                    todo.append(job)
        return calls

    def _on_kill(self, job: Job, reply: _Reply) -> list[HookCall]:
        if job.status.is_final or job.kill_requested or job in self._checking:
            reply.set(False)
            return []
        job._kill_requested = True
        if job.status.is_active and job.status is not S.SUBMITTING:
            if job not in self._kill_sent:
                # A verdict whose kill a plugin vetoed waits for the job's own end
                # (``_on_left``); this kill is asked for by name, and ends it as such.
                job._pending_state = None
            job.reason = "killed on request"
            self._actions.append((self._kill, ([job], reply, False)))
            return []
        reply.set(True)
        if job.status is S.SUBMITTING:
            return []  # killed as soon as its submission (or lookup) comes back
        job.reason = "killed before it was submitted"
        # Recorded: asked for by name, it is killed in `xqueue status` too, not "not
        # submitted" (a later run runs it again either way).
        return self._finalize(job, S.KILLED)

    def _on_killed(
        self, job: Job, error: BaseException | None, reply: _Reply | None
    ) -> list[HookCall]:
        ended = self._killing.pop(job, None)
        calls = self._killed(job, error, reply, ended is not None)
        # The end the backend reported while the kill went on counts now that the kill
        # answered; not for a job a stopping run could not kill (it is left running).
        if ended is not None and job.status.is_active and job not in self._left:
            calls += self._on_update(job, *ended)
        return calls

    def _killed(
        self, job: Job, error: BaseException | None, reply: _Reply | None, ended: bool = False
    ) -> list[HookCall]:
        if isinstance(error, JobAlreadyEnded):
            # Nothing was signalled: the end the backend reports is the job's own (an
            # rc 0 recorded "killed" made the next run start a success again).
            if job.status.is_active:  # not one settled meanwhile: its reason stands
                job._kill_requested, job.reason = False, ""
            if reply is not None:
                reply.set(False)
            return []
        if error is not None:
            # Journaled again without the kill's mark (``record_kills``): it runs on, and
            # a later run adopts it, rather than take its end for this kill's. Nor does
            # this run when the kill surely reached nothing (a refused connection): an end
            # of its own then stands. A kill that may have been carried out (it timed
            # out) still counts as sent: a job that exits 0 on SIGTERM is not a success.
            if getattr(error, "ambiguous", True) is False:
                self._kill_sent.discard(job)
            self.workdir.record(job)
            if self.state is _Run.STOPPING:
                self._kill_errors[job] = f"could not be killed: {error}"
                again = time.monotonic() + KILL_RETRY_DELAY
                if self._deadline is not None and again < self._deadline:
                    # Tried again while the stop has time: a client killed as it started
                    # (a second SIGTERM to the controller's process group reached it
                    # before it had a session of its own), a controller daemon's blip.
                    # Left at the first failure, the jobs ran on after the run exited.
                    self._kill_again.append((job, again))
                    log.warning("job %s (%s): %s; trying again", job.index, job.name, error)
                else:
                    job.reason = self._kill_errors[job]
                    self._left.add(job)
                    self.scheduler.forget(job)  # let go: the backend's close waits not for it
                    log.error("job %s (%s, %s) %s", job.index, job.name, job.jid, job.reason)
            else:
                job._kill_requested, job.reason = False, ""  # it runs on
                pending = job._pending_state
                if pending is not None and pending.failure is FailureClass.TIMEOUT:
                    # Past its limit still: the kill is tried again shortly.
                    job._pending_state = None
                    self._push_deadline(time.monotonic() + RESOLVE_DELAY, job)
        if reply is not None:
            reply.set(error if error is not None else True)
        state = job._pending_state
        if error is None and state is not None and job.status.is_active and not ended:
            # The kill was for a verdict (a deadline, or the backend's ``kill`` state)
            # and is confirmed: the verdict stands. But a job's own end that came
            # meanwhile (``ended``) is merged with it (``_on_update``: a job that exited
            # 0 at its deadline finished), and at a deadline a backend that awaits each
            # job is sure to report that end (its wait has not returned; a ``kill``
            # state was that wait's answer): it is waited for.
            if state.kill or not self.scheduler.awaits_completion:
                return self._verdict(job)
        return []  # the job ends when the backend reports it gone

    def _verdict(self, job: Job, left: str = "") -> list[HookCall]:
        """End a job with the verdict its kill was for (``_pending_state``); ``left``: why
        it was left running instead (a vetoed kill), and then it is not retried."""
        state, job._pending_state = job._pending_state, None
        assert state is not None
        self.scheduler.forget(job)
        job.rc, job.reason = state.rc, f"{state.reason} ({left})" if left else state.reason
        retryable = state.retryable and not left
        return self._end_attempt(job, S.FAILED, retryable=retryable, failure=_classify(state))

    def _on_left(self, job: Job, plugin: str) -> list[HookCall]:
        why = f"left running: plugin {plugin!r} vetoed the kill"
        log.warning("job %s %s", job.index, why)
        job._kill_requested = False
        pending = job._pending_state
        if pending is not None and job.status.is_active:
            if pending.kill:  # the backend's word: it holds the job for nothing any more
                return self._verdict(job, why)  # it stands; the job is only left where it is
            if self.state is not _Run.STOPPING:
                # The run's own verdict (its time limit) waits for the job's own end, and
                # then stands, not retried. Until then the job runs on as it was: it keeps
                # what it was given (a GPU, a slot) and stays active in the journal.
                # Settled at once, its GPU went to the next job while it still ran, and
                # the next run took its final record at its word and ran it beside itself.
                reason = _left_why(pending.reason, why)
                job._pending_state = dataclasses.replace(pending, reason=reason, retryable=False)
                return []
        job._pending_state = None
        job.reason = why if pending is None else _left_why(pending.reason, why)
        if self.state is _Run.STOPPING:
            self._left.add(job)
            # Let go, as ``_leave_running`` does: the backend's close does not wait for
            # it (the local one waited 5 s for its shepherd, or until the job ended).
            self.scheduler.forget(job)
        return []

    def _on_stop(self, error: BaseException | None) -> list[HookCall]:
        """Stop the run: nothing more is submitted, every active job is killed."""
        if error is not None:
            if self._error is None:
                self._error = error
            elif error is not self._error and not isinstance(error, JobFailedError):
                # Only the first error is raised; the others are said here. A job that
                # failed as the halt began (two ended in one tick) is not one: it is
                # listed with the failed jobs, as any is.
                log.error("further error while stopping: %s: %s", type(error).__name__, error)
        if self.state is _Run.STOPPING:
            return []
        self.state = _Run.STOPPING
        grace = _grace(self.scheduler)
        self._deadline = time.monotonic() + grace + SHUTDOWN_MARGIN
        calls: list[HookCall] = []
        why = self._stopped_why()
        for job in self.jobs:
            if job.status in (S.INIT, S.WAITING, S.QUEUED, S.RETRYING):
                job._kill_requested = True
                # Every job not submitted is cancelled here: none is skipped for another.
                calls += self._cancel_unsubmitted(job, why, cascade=False)
            elif job.status is S.SUBMITTING:
                job._kill_requested = True
            elif job.status.is_active and not job.kill_requested and job not in self._checking:
                if self.workdir.broken is not None:
                    self._leave_running(job)
                    continue
                job._kill_requested = True
                job.reason = f"killed: {why}"
                self._to_kill.append(job)
        return calls

    def _leave_running(self, job: Job) -> None:
        """A stopping run whose workdir refuses writes leaves an active job running: its
        kill could not be recorded, and a later run would take its SIGTERM for its own
        failure. As a dead controller leaves it, for the next run (of this queue, or
        another) to pick up by its journalled intent."""
        job._kill_requested = False
        job.reason = "left running: the workdir cannot be written"
        self._left.add(job)
        self.scheduler.forget(job)

    def _on_signal(self, sig: signal.Signals) -> list[HookCall]:
        if self._signal is None and self.state is not _Run.STOPPING:
            self._signal = sig
            log.warning("%s: stopping; killing %d active job(s)", sig.name, len(self._active))
            return self._on_stop(None)
        log.warning("%s again: still killing %d job(s)", sig.name, len(self._active))
        if self._signal is None:
            self._signal = sig
        return []

    def _decide(self) -> None:
        """Turn the current state into actions: submissions, lookups, kills."""
        now = time.monotonic()
        if self._to_resolve:
            due = [job for job, at in self._to_resolve if at <= now]
            if due:
                self._to_resolve = [(j, at) for j, at in self._to_resolve if at > now]
                self._actions.append((self._resolve, (due,)))
        if self._to_kill:
            jobs, self._to_kill = self._to_kill, []
            self._actions.append((self._kill, (jobs, None, True)))
        if self._kill_again and min(at for _, at in self._kill_again) <= now:
            due = [job for job, at in self._kill_again if at <= now and job.status.is_active]
            self._kill_again = [(job, at) for job, at in self._kill_again if at > now]
            if due:  # their kills were allowed already: no plugin is asked again
                self._actions.append((self._kill, (due, None, False)))
        if self._stale_found and self._stale_ready:
            jobs, self._stale_found, self._stale_ready = self._stale_found, [], False
            self._actions.append((self._stop_stale, (jobs,)))
        if self.state not in (_Run.RUNNING, _Run.DRAINING) or self._hold_until > now:
            return
        if self._counting and self._pool.in_use:
            self._admit()
            return
        while self._queued:
            free = self._free_slots()
            if free <= 0:
                break
            batch: list[Job] = []
            while self._queued and len(batch) < min(free, MAX_BATCH):
                job = self._queued.popleft()
                if job.status is not S.QUEUED:  # moved on while it waited
                    continue
                job.attempt += 1
                self._move(job, S.SUBMITTING)
                batch.append(job)
            if batch:
                self._actions.append((self._submit, (batch,)))

    def _admit(self) -> None:
        """Submit the queued jobs that fit in what is free, each with its claim."""
        while self._queued:
            job = self._queued.popleft()
            if job.status is S.QUEUED:
                self._backlog.push(job, Need.of(job.resources))
        free = min(self._free_slots(), MAX_BATCH)
        if free <= 0 or not self._backlog:
            return
        started, refused = self._backlog.pick(self._pool, free, self.scheduler.usable_hosts())
        for job, why in refused:  # the hosts turned out smaller than any could be at feed
            job.attempt += 1
            self._move(job, S.SUBMITTING)
            self._post("submitted", job, SubmissionError(f"cannot start: {why}", retryable=False))
        for job, claim in started:
            job.attempt += 1
            job.claim = claim
            self._move(job, S.SUBMITTING)
        if started:
            self._actions.append((self._submit, ([job for job, _ in started],)))

    def _free_slots(self) -> int:
        busy = sum(self.counts[s] for s in ACTIVE)
        free = self.forks - busy
        if self.scheduler.enforces_forks and not busy:
            # Nothing of this backend runs: it may take more than forks at once and
            # throttle them itself (see Scheduler.enforces_forks).
            return max(free, self.scheduler.max_batch)
        return free

    def _give_up(self) -> None:
        """The shutdown deadline passed: report what is still alive, leave it recorded."""
        for job in self.jobs:
            if job.status.is_active and job not in self._left:
                job.reason = (
                    self._kill_errors.get(job) or job.reason or "could not be killed in time"
                )
                self._left.add(job)
                self.scheduler.forget(job)  # let go: the backend's close waits not for it
                if job in self._kill_sent:
                    # Journalled again without the mark of its kill (``record_kills``),
                    # which a kill tried again was still under way with: the next run
                    # took the job's own end for that kill's, and ran a success again.
                    try:
                        self.workdir.record(job)
                    except WorkdirError as exc:
                        log.error("could not journal job %s: %s", job.index, exc)
                log.error(
                    "job %s (%s) is still alive after the shutdown deadline; id %s",
                    job.index,
                    job.name,
                    job.jid,
                )

    # -- act: I/O and hooks, outside the decision ----------------------------------------
    def _hook_timeout(self) -> float | None:
        if self.state is _Run.STOPPING:
            return min(self.hook_timeout or math.inf, SHUTDOWN_HOOK_TIMEOUT)
        return self.hook_timeout

    async def _call_hooks(self, calls: list[HookCall]) -> None:
        pending = self._fire(calls)
        if pending is not None:
            await pending

    def _fire(self, calls: list[HookCall]) -> Coroutine[Any, Any, None] | None:
        """Call the hooks of ``calls`` in order, without a coroutine while each returns
        nothing to await (None then); else a coroutine that awaits it and calls the rest.
        A plugin's error stops the run (and is only logged by a run already stopping)."""
        if not calls:
            return None
        timeout = self._hook_timeout()
        for n, (hook, job) in enumerate(calls):
            try:
                pending = self.hooks.notify(hook, self._kw(job), timeout)
            except PluginError as exc:
                self._hook_failed(exc)
                continue
            if pending is not None:
                return self._fire_rest(pending, calls[n + 1 :])
        return None

    async def _fire_rest(self, pending: Awaitable[None], rest: list[HookCall]) -> None:
        try:
            await pending
        except PluginError as exc:
            self._hook_failed(exc)
        await self._call_hooks(rest)

    def _hook_failed(self, exc: PluginError) -> None:
        if self.state is _Run.STOPPING:
            log.error("%s", exc)
        else:
            self._post("stop", exc)

    async def _submit(self, batch: list[Job]) -> None:
        # Folders are made only now, a batch at a time off the loop (feeding costs no
        # I/O), and before any hook: on_job_submitting may put files in them.
        unmade = [job for job in batch if not self.workdir.has_folder(job)]
        if unmade:
            try:
                failed: dict[Job, Exception] = dict(
                    await anyio.to_thread.run_sync(self.workdir.make_folders, unmade)
                )
            except Exception as exc:  # a bug, not a job's fault: no job is left submitting
                failed = dict.fromkeys(unmade, exc)
            broken = self.workdir.broken
            if broken is not None:  # full: the run stops, and these are cancelled
                self._post("stop", broken)
            for job, error in failed.items():
                self._post("submitted", job, self._submission_error(error))
            batch = [job for job in batch if job not in failed]
        allowed: list[Job] = []
        for n, job in enumerate(batch):
            try:
                vetoer = await self.hooks.vetoed_by(
                    "on_job_submitting", self._hook_timeout(), **self._kw(job)
                )
            except PluginError as exc:
                # The run stops: neither this job nor any allowed before it is submitted.
                self._refused_by_plugin(exc, job, [*allowed, *batch[n + 1 :]])
                return
            if vetoer:
                self._post("vetoed", job, vetoer)
            else:
                allowed.append(job)
        if not allowed:
            return
        for n, job in enumerate(allowed):
            try:
                job._wrap = await self._wrap(job) if self._wrapping else None
            except PluginError as exc:
                self._refused_by_plugin(exc, job, [*allowed[:n], *allowed[n + 1 :]])
                return
        # The intent first: a controller that dies during the submission leaves a record
        # that makes the next run look for the job instead of starting it again.
        try:
            self.workdir.record_many(allowed)
        except (OSError, WorkdirError) as exc:
            # Nothing may start unrecorded (a later run could start it again): the jobs
            # were never submitted, and the run stops with the workdir's own error.
            error = exc if isinstance(exc, WorkdirError) else WorkdirError(str(exc))
            self._post("stop", error)
            for job in allowed:
                self._post("submitted", job, self._submission_error(error))
            return
        try:
            results = await self.scheduler.submit_jobs(allowed)
        except Exception as exc:  # a backend bug fails the batch, it does not lose it
            results = [SubmissionUnknownError(f"{self.scheduler.name}: {exc!r}")] * len(allowed)
        for job, result in zip(allowed, results):
            self._post("submitted", job, result)

    def _refused_by_plugin(self, exc: PluginError, job: Job, others: list[Job]) -> None:
        """A hook raised for ``job`` as its batch was being submitted: the run stops, the
        job fails its submission with the plugin's error, the rest of the batch is not sent."""
        self._post("stop", exc)  # first: the run's error is the plugin's, not a job's
        self._post("submitted", job, exc)
        for unsent in others:
            self._post("unsent", unsent)

    def _submission_error(self, error: Exception) -> Exception:
        """What a job whose submission the workdir prevented is told: the workdir's own
        refusal when it is full (``_on_submitted`` cancels the job, and the run's error
        says it once), else a submission error that is not retried."""
        if error is self.workdir.broken:
            return error
        return SubmissionError(str(error), retryable=False)

    async def _wrap(self, job: Job) -> wrapping.Wrap | None:
        opts = self.scheduler.options
        return await wrapping.build(
            self.hooks, opts.prescript, opts.postscript, self._kw(job), self._hook_timeout()
        )

    async def _check(self, job: Job) -> None:
        """Ask the plugins whether an attempt that exited 0 left what it should."""
        hook, reason, attempt = "on_job_checking", "", job.attempt
        try:
            for plugin, result in await self.hooks.call(
                hook, timeout=self._hook_timeout(), **self._kw(job)
            ):
                if result is False:
                    reason = f"plugin {plugin!r} failed the job's check"
                elif isinstance(result, str) and result.strip():
                    reason = result
                elif result is not None and result is not True and result != "":
                    why = f"returned {result!r}; return a reason (str), False or None"
                    raise PluginError(plugin, hook, TypeError(why))
                if reason:
                    break
        except PluginError as exc:
            self._post("stop", exc)
            reason = f"not checked: {exc}"
        self._post("checked", job, reason, attempt)

    async def _poll_hooks(self, jobs: list[Job]) -> None:
        try:
            timeout = self._hook_timeout()
            if self.hooks.implements("on_jobs_polling"):
                kw = {"xqueue": self.queue, "scheduler": self.scheduler, "jobs": jobs}
                await self.hooks.call("on_jobs_polling", timeout=timeout, **kw)
            if self.hooks.implements("on_job_polling"):
                for job in jobs:
                    if job.status in (S.SUBMITTED, S.RUNNING):  # it may have ended since
                        await self.hooks.call_with("on_job_polling", self._kw(job), timeout)
        except PluginError as exc:
            self._post("stop", exc)
        finally:
            self._polling_posted = False

    async def _stop_stale(self, jobs: list[Job]) -> None:
        """Kill earlier runs' attempts that are not wanted, in one call to the backend (a
        resume after a stop cut short may find thousands; locally each call is a pass
        over /proc). One that has ended is asked to be killed too, for what it may have
        left running (a stop's SIGTERM ended its shell, and its controller died before
        the SIGKILL): that kill's error, if any, does not hold up the new attempt."""
        ended = await anyio.to_thread.run_sync(self.workdir.exit_codes, jobs)
        try:
            errors: list[BaseException | None] = list(await self.scheduler.kill_jobs(jobs))
        except Exception as exc:
            errors = [exc] * len(jobs)
        for job, error in zip(jobs, errors, strict=True):
            if job in ended or isinstance(error, JobAlreadyEnded):
                error = None
            if error is None:
                log.info(
                    "job %s (%s): stopped its attempt %s of an earlier run",
                    job.index,
                    job.name,
                    job.jid,
                )
            self._post("stale_stopped", job, error)

    async def _resolve(self, jobs: list[Job]) -> None:
        """Find jobs whose submission may have happened: their rc file, or the backend."""
        try:
            await self._look_up(jobs)
        finally:
            self._post("looked_up")  # after the answers: those found unwanted go together

    async def _look_up(self, jobs: list[Job]) -> None:
        # Their exit records are read in a worker thread, the whole batch at once.
        ended = await anyio.to_thread.run_sync(
            self.workdir.exit_codes, [job for job in jobs if job.jid is not None]
        )
        for job in jobs:
            if job in ended:
                self._post("resolved", job, True, self.scheduler.ended_before_kill(ended[job]))
                continue
            if self.scheduler.submission_under_way(job):
                # Its call outlived its wait and goes on in its thread: a lookup now may
                # miss what it is about to submit.
                why = "its submission call outlived its wait and is still under way"
                self._post("resolved", job, SchedulerError(why))
                continue
            try:
                found: bool | BaseException = await self.scheduler.recover_job(job)
            except Exception as exc:
                found = exc
            if (
                found is False
                and job.jid is None
                and await anyio.to_thread.run_sync(self.workdir.exit_code, job) is not None
            ):
                found = True  # it ran and ended; its rc file settles it
                job.jid = job.jid or "unknown"
            self._post("resolved", job, found)

    async def _kill(self, jobs: list[Job], reply: _Reply | None, ask_veto: bool) -> None:
        to_kill = []
        for job in jobs:
            if job.status.is_final:  # it ended on its own before its kill was sent
                if reply is not None:
                    reply.set(False)
                continue
            if not ask_veto:
                to_kill.append(job)
                continue
            try:
                vetoer = await self.hooks.vetoed_by(
                    "on_job_killing", timeout=self._hook_timeout(), **self._kw(job)
                )
            except PluginError as exc:
                log.error("%s; killing job %s anyway", exc, job.index)
                vetoer = None
            if vetoer:
                self._post("left", job, vetoer)
            else:
                to_kill.append(job)
        if to_kill:
            # One whose wrapper has recorded its exit ended on its own, unheard of yet (the
            # poll comes later): its end stands, as the backend will report it. Killed, it
            # was recorded KILLED, a success too, and the next run ran it again; a stop did
            # that to every job that had ended since the last poll. (Not a kill tried
            # again, below.)
            # Bounded: on a slow shared file system the files of a big stop must not hold
            # its kills past the deadline; those not read by then count as not ended.
            first = [job for job in to_kill if job not in self._kill_sent]
            exited: set[Job] = set()
            with anyio.move_on_after(EXIT_CHECK_LIMIT):
                exited = await anyio.to_thread.run_sync(
                    recorded_exits, first, abandon_on_cancel=True
                )
            for job in exited:
                self._post("killed", job, JobAlreadyEnded("its exit was recorded"), reply)
            to_kill = [job for job in to_kill if job not in exited]
            if reply is not None and any(job.status.is_final for job in to_kill):
                reply.set(False)  # it ended while the files were read
            to_kill = [job for job in to_kill if not job.status.is_final]
        if not to_kill:
            return
        # A kill tried again that finds the job gone may have been the cause (its first
        # try reached it before failing): it is not taken for an end of the job's own.
        again = {job for job in to_kill if job in self._kill_sent}
        for job in to_kill:
            self._killing.setdefault(job, None)
        self._kill_sent.update(to_kill)
        try:
            self.workdir.record_kills(to_kill)
        except WorkdirError as exc:  # a full disk: the kill is the user's word, sent all the same
            log.error("could not journal the kills of %d job(s): %s", len(to_kill), exc)
        try:
            errors = await self.scheduler.kill_jobs(to_kill)
        except Exception as exc:
            errors = [exc] * len(to_kill)
        except BaseException:
            # Cancelled (the run gives up on its kills): the backend's word on each stands.
            for job in to_kill:
                ended = self._killing.pop(job, None)
                if ended is not None:
                    self._post("update", job, *ended)
            raise
        for job, error in zip(to_kill, errors):
            if job in again and isinstance(error, JobAlreadyEnded):
                error = None
            self._post("killed", job, error, reply)

    async def _await_job(self, job: Job) -> None:
        attempt = job.attempt  # its word is for this attempt (a kill may settle it first)
        try:
            state = await self.scheduler.wait_job(job)
        except SchedulerError as exc:  # this job is lost to us; the others go on
            state = JobState(S.FAILED, None, f"lost: {exc}")
        self._post("update", job, state, attempt)

    _wake_poller: anyio.Event | None = None

    async def _poller(self) -> None:
        failures, since = 0, 0.0
        interval = self.scheduler.options.poll_interval
        while True:
            jobs = [j for j in self._active if j.status is not S.SUBMITTING]
            if not jobs:
                self._wake_poller = anyio.Event()
                await self._wake_poller.wait()
                self._wake_poller = None
            stopping = self.state is _Run.STOPPING
            await anyio.sleep(min(interval, 0.5) if stopping else interval)
            jobs = [
                j for j in self._active if j.status is not S.SUBMITTING and j not in self._checking
            ]
            if not jobs:
                continue
            self.scheduler.stats.ticks += 1
            try:
                states = await self.scheduler.poll_jobs(jobs)
            except SchedulerError as exc:
                failures += 1
                since = since or time.monotonic()
                log.warning("status query failed (%d in a row): %s", failures, exc)
                outage = time.monotonic() - since
                if failures >= MAX_POLL_FAILURES and outage >= OUTAGE_TOLERANCE and not stopping:
                    self._post(
                        "stop",
                        SchedulerError(
                            f"{self.scheduler.name}: status queries failed {failures} times "
                            f"in a row over {outage:.0f} s; last error: {exc}"
                        ),
                    )
                continue
            failures, since = 0, 0.0
            for job, state in states.items():
                self._post("update", job, state)
            self._tick()

    def _tick(self) -> None:
        """A tick of the polling hooks; at most one waits in the inbox at a time."""
        if self._polling and not self._polling_posted:
            self._polling_posted = True
            self._post("polling")

    async def _poll_timer(self) -> None:
        """Polling-hook ticks for a backend that awaits its jobs (nothing polls it)."""
        interval = max(self.scheduler.options.poll_interval, MIN_TICK)
        while True:
            await anyio.sleep(interval)
            self._tick()

    # -- signals ---------------------------------------------------------------------------
    def _open_signals(self) -> Any:
        """SIGINT, SIGTERM and SIGHUP are the run's own from start to end of its shutdown.

        Taking SIGINT too means Ctrl-C stops the run the same way on asyncio and trio,
        and a second Ctrl-C cannot abandon the kills of the first: the old handlers are
        put back only after the shutdown has finished.
        """
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return None
        _SIGNALLED.append(self)
        if len(_SIGNALLED) > 1:
            return None  # another run of this process holds the signals and tells us too
        # A signal ignored when the run starts stays ignored: `nohup` ignores SIGHUP, and a
        # shell without job control starts `cmd &` with SIGINT ignored so that the terminal's
        # Ctrl-C does not reach it. Taking those would undo what the user asked for.
        sigs = [s for s in _RUN_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
        if not sigs:
            return None
        previous = {sig: signal.getsignal(sig) for sig in sigs}
        receiver = anyio.open_signal_receiver(*sigs)
        iterator = receiver.__enter__()
        return (receiver, iterator, previous)

    async def _watch_signals(self, opened: Any) -> None:
        async for sig in opened[1]:
            for engine in _SIGNALLED:  # every run of the process stops together
                engine._post("signal", sig)

    def _signal_error(self) -> BaseException:
        sig = self._signal
        assert sig is not None
        left = [j for j in self._left if not j.status.is_final]
        what = "running jobs were killed"
        if left:
            ids = ", ".join(f"{j.index} ({j.jid})" for j in left[:10])
            what = f"{len(left)} job(s) could not be killed and may still run: {ids}"
        if sig is signal.SIGINT:
            return KeyboardInterrupt(what)  # its message, shown once: by its handler
        return Interrupted(f"run stopped by {sig.name}; {what}", signal=sig)

    # -- the end of a run ------------------------------------------------------------------
    async def _shutdown_hooks(self, reason: str) -> None:
        self.state = _Run.STOPPING if self.state is not _Run.CLOSED else self.state
        try:
            await self.hooks.call(
                "on_shutdown",
                timeout=self._hook_timeout(),
                xqueue=self.queue,
                scheduler=self.scheduler,
                reason=reason,
                signal=self._signal.name if self._signal else None,
            )
        except PluginError as exc:
            log.error("%s", exc)
            if self._error is None:
                self._error = exc

    async def _close(self, receiver: Any) -> None:
        try:
            # Every run opens the backend and closes it again, so code that never calls
            # aclose() (the xqute style) leaves no connection or thread behind.
            with anyio.move_on_after(SHUTDOWN_MARGIN):
                try:
                    self.scheduler_open = False
                    await self.scheduler.aclose()
                except Exception as exc:  # closing must not hide the run's own outcome
                    log.warning("closing scheduler %s failed: %r", self.scheduler.name, exc)
        finally:
            if self in _SIGNALLED:
                _SIGNALLED.remove(self)
            if receiver is not None:
                cm, _, previous = receiver
                cm.__exit__(None, None, None)
                for sig, handler in previous.items():
                    if handler is not None:
                        signal.signal(sig, handler)
            if self.state is not _Run.CLOSED:
                self.state = _Run.IDLE
            self.stopped_at = time.monotonic()
            self.workdir.unlock()
            self.release_collector()
            self._notify_progress()

    # -- control ---------------------------------------------------------------------------
    async def kill(self, job: Job) -> bool:
        """Kill one job; False if it already ended or a plugin vetoed the kill. From a
        hook the run awaits, True once the kill is asked for: the run carries it out
        when the hook returns."""
        return await self.kill_outcome(job) is KillOutcome.KILLED

    async def kill_outcome(self, job: Job) -> KillOutcome:
        """``kill``, saying why a job was not killed: ``xqueue cancel`` tells a job that
        ended on its own (its end may come with the next poll) from a vetoed kill."""
        if not isinstance(job, Job):
            raise ConfigError(f"kill() takes a job of this queue, not {type(job).__name__}")
        if not (0 <= job.index < len(self.jobs) and self.jobs[job.index] is job):
            # Another queue's job: killing it here would corrupt both queues' counts.
            raise ConfigError(f"kill(): job {job.index} ({job.name}) was not fed to this queue")
        if job.status.is_final or job in self._checking:
            return KillOutcome.ENDED  # being checked: its process has ended, not killed
        if job.kill_requested:
            return KillOutcome.UNDER_WAY
        if job.status.is_active and job.status is not S.SUBMITTING:
            try:
                vetoer = await self.hooks.vetoed_by(
                    "on_job_killing", self._hook_timeout(), **self._kw(job)
                )
            except PluginError as exc:  # as any hook's error: a run in progress stops
                if self.running:
                    self._hook_failed(exc)
                raise
            if vetoer:
                log.info("job %s: kill vetoed by plugin %r", job.index, vetoer)
                return KillOutcome.VETOED
        reply = _Reply()
        if self.running:
            self._post("kill", job, reply)
            if self.in_run():
                # From a hook the run awaits: its answer comes only after the hook, so
                # waiting for it here would hang the run. Asked for is all it can say.
                return KillOutcome.KILLED
            await self._await_reply(reply)
            if not reply.event.is_set():
                # The run ended first (the job's end was its last event): the kill's
                # own answer was cancelled with the run; the job's state answers.
                reply.set(job.status is S.KILLED)
        elif job.status.is_active and job.status is not S.SUBMITTING:
            raise QueueStateError(
                f"job {job.index} was left running by a stopped run; run the queue again to "
                "re-adopt it, or kill it on its backend ({job.jid})"
            )
        else:
            await self._call_hooks(self._on_kill(job, reply))
        if isinstance(reply.value, BaseException):
            raise SchedulerError(f"could not kill job {job.index}: {reply.value}") from reply.value
        if reply.value:
            return KillOutcome.KILLED
        # Not killed: another kill got there first, or the job had ended on its own (the
        # kill's answer resets the request: ``_killed``).
        return KillOutcome.UNDER_WAY if job.kill_requested else KillOutcome.ENDED

    async def _await_reply(self, reply: _Reply) -> None:
        """Wait for a kill's answer, or for the run to stop, whichever comes first."""
        async with anyio.create_task_group() as tg:

            async def until_stopped() -> None:
                await self.wait_stopped()
                tg.cancel_scope.cancel()

            tg.start_soon(until_stopped)
            await reply.event.wait()
            tg.cancel_scope.cancel()

    async def as_completed(self) -> AsyncIterator[Job]:
        seen = 0
        while True:
            while seen < len(self.completed):
                yield self.completed[seen]
                seen += 1
            if self.stopped_at is not None and not self.running:
                return
            if not self.running and len(self.completed) == len(self.jobs):
                return
            if self._progress is None:
                self._progress = anyio.Event()
            await self._progress.wait()

    async def wait_stopped(self) -> None:
        while self.running:
            if self._progress is None:
                self._progress = anyio.Event()
            await self._progress.wait()

    def active_jobs(self) -> Sequence[Job]:
        return [j for j in self._active if j.status is not S.SUBMITTING]

    def _note_in_stderr(self, job: Job) -> None:
        # In the folder opened without following a link: one planted at its name (the
        # folder's making failed on it) took the note outside the workdir.
        try:
            folder = os.open(job.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            name = os.path.basename(job.stderr_path)
            fd = open_plain(name, os.O_WRONLY | os.O_APPEND, dir_fd=folder)
        except (OSError, WorkdirError):
            return
        finally:
            os.close(folder)
        try:
            os.write(fd, f"xqueue: {job.reason}\n".encode())
        finally:
            os.close(fd)


def _classify(state: JobState) -> FailureClass | None:
    """The class of a failed state: the backend's, else what the state itself shows."""
    if state.status is S.FINISHED:
        return None
    if state.failure is not None:
        return state.failure
    if state.status is S.KILLED:
        return FailureClass.KILLED
    return FailureClass.NONZERO_EXIT if state.rc else FailureClass.VANISHED


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _grace(scheduler: Scheduler) -> float:
    return float(getattr(scheduler.options, "kill_grace", 5.0))


# The runs of this process that take signals, in the order they started. Only the first
# installs handlers (so the handlers it restores are the ones from before any run) and it
# passes each signal to all of them; a run that starts while it runs gets signals from
# it, and none after it ends. Concurrent runs with handlers of their own would restore
# each other's stale handlers when they end in another order than they started.
_SIGNALLED: list[Engine] = []
_RUN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_FINAL_HOOKS = {
    S.FINISHED: "on_job_succeeded",
    S.FAILED: "on_job_failed",
    S.KILLED: "on_job_killed",
    S.SKIPPED: "on_job_skipped",
}


def _left_why(reason: str, why: str) -> str:
    """A verdict's reason with why its job was left running, said once (a job whose
    kill was vetoed at its time limit may have it vetoed again when the run stops)."""
    return reason if reason.endswith(f"({why})") else f"{reason} ({why})"
