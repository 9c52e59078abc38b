"""``Xqueue``: the public face of the engine, in the xqute style.

It validates arguments up front (so a typo fails before any job runs), resolves the
scheduler and plugins, and offers the three ways to run: ``run_until_complete()``,
``async with Xqueue(...) as q:`` (daemon mode, structured), and the xqute-compatible
``run_until_complete(keep_feeding=True)`` + ``stop_feeding()`` on asyncio.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from . import calls, profiles, remote_workdir
from ._suggest import did_you_mean
from ._text import check_text, optional_envs
from .capacity import check_axes
from .control import Control
from .dependencies import After, resolve_after
from .engine import Engine, RunState
from .errors import ConfigError, QueueStateError
from .events import EVENTS_FILE, EVENTS_PLUGIN, EventLog
from .hooks import Hooks
from .job import Job, check_name, default_name, normalize_command
from .params import check_params
from .resources import Resources
from .retry import RetryPolicy
from .scheduler import Scheduler
from .states import JobStatus
from .workdir import Workdir

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("xqueue")

ERROR_STRATEGIES = ("halt", "retry", "ignore")
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class QueueStatistics:
    """A snapshot of a queue, cheap to take (no job is scanned)."""

    total: int
    counts: Mapping[str, int] = field(default_factory=dict)
    active: int = 0
    pending: int = 0
    submit_calls: int = 0
    status_calls: int = 0
    kill_calls: int = 0
    ticks: int = 0
    elapsed: float = 0.0
    reused: int = 0
    """Of the finished jobs, those this run did not run: an earlier run's success settled
    them as they were fed (their reason is "succeeded in an earlier run"), or an earlier
    run's attempt, still running or found ended, succeeded."""

    @property
    def done(self) -> int:
        return sum(self.counts.get(s.value, 0) for s in JobStatus if s.is_final)

    @property
    def failed(self) -> int:
        return self.counts.get(JobStatus.FAILED.value, 0)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


_FEEDING: weakref.WeakSet[Xqueue] = weakref.WeakSet()
"""Queues in keep-feeding mode; one still running when the process exits is reported."""


_EXIT_CHECK: list[bool] = []  # registered with atexit once, by the first feeding queue


def _watch_at_exit(queue: Xqueue) -> None:
    if not _EXIT_CHECK:
        atexit.register(_warn_still_feeding)
        _EXIT_CHECK.append(True)
    _FEEDING.add(queue)


def _warn_still_feeding() -> None:
    """At exit: a queue left feeding by an event loop that stopped under its run (xqute
    style ``loop.run_until_complete`` without ``stop_feeding()``). Its run never ended:
    nobody waited for its jobs, and the ones it started may still be running."""
    for queue in list(_FEEDING):
        if queue._feeding_mode and queue._engine.state is RunState.RUNNING:
            log.warning(
                "the process exits while an Xqueue (%s, %d job(s)) is still feeding: "
                "stop_feeding() was never called and its event loop stopped under it, so "
                "its run never ended; jobs it started may still be running",
                queue.workdir.path,
                len(queue.jobs),
            )


def _check_bool(name: str, value: Any) -> None:
    """True or False, not a value that only looks like one (``"no"`` is true)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


def _check_job_class(value: Any) -> type[Job]:
    if not (isinstance(value, type) and issubclass(value, Job)):
        raise ConfigError(f"job_class must be xqueue.Job or a subclass of it, got {value!r}")
    if issubclass(value, calls.CallJob):
        raise ConfigError("job_class cannot be a CallJob: Python calls are fed by submit()")
    return value


def _check_cache_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"a cache key is a non-empty string, got {value!r}")
    return check_text(value, "the cache key")


def _check_timeout(value: Any) -> float | None:
    import math

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"hook_timeout must be a number of seconds or None, got {value!r}")
    if value <= 0:
        raise ConfigError(f"hook_timeout must be > 0, got {value}")
    return float(value)


class Xqueue:
    """A queue of jobs run by one scheduler with at most ``forks`` active at once.

    ``scheduler`` is a registered name ("local", "slurm", ...), a ``Scheduler``
    subclass, or an instance. ``error_strategy`` decides what a failed job does:
    "halt" stops the run and raises ``JobFailedError``; "retry" runs it again up to
    ``num_retries`` times (then it is failed and the run goes on); "ignore" records the
    failure and goes on.

    ``workdir`` is a folder, or ``gs://bucket/prefix`` for a scheduler that runs its jobs
    on Cloud Storage (gbatch): the jobs' files go there, the run's records stay in a
    local folder (``xqueue.remote_workdir``).

    ``trust_workdir=True`` accepts a workdir that another user owns or can write to
    (refused by default: whoever can write it could redirect what xqueue writes or
    plant records; the XQUEUE_TRUST_WORKDIR=1 environment variable does the same).

    ``profile`` names a profile of the config files (``xqueue.toml``, see
    ``xqueue.profiles``): its options, on top of the scheduler's ``default`` profile,
    are used where ``scheduler_opts`` does not set them, and its ``resources`` are the
    defaults of every job fed.

    ``hook_timeout`` bounds each awaited hook implementation (seconds, None for no
    bound): a plugin that hangs stops the run with a PluginError naming it, instead of
    hanging the run for ever. While a run stops, hooks get at most 10 s each.

    ``slots`` gives the queue named slot axes (``{"machine": [0, 1], "gpu": [0, 1]}``):
    a job fed with ``resources={"slots": ["machine", "gpu"]}`` gets one value of each,
    never held by a running job at the same time (``job.slots``, and the variables
    ``XQUEUE_SLOT_MACHINE``...). ``backfill``: how many later jobs may start ahead of a job
    that waits for room (CPUs, memory, GPUs, slot values) before room is set aside for
    it; see ``xqueue.admission``.
    ``retry_policy`` says, per failure class (``job.failure``: OOM, TIMEOUT, PREEMPTED,
    ...), whether a failed job runs again and with what, e.g. ``{"OOM": {"memory": 2,
    "max_memory": "64G"}, "NONZERO_EXIT": "stop"}`` (see ``xqueue.retry``); classes it
    does not name follow ``error_strategy`` and ``num_retries``. Under "halt" a failure
    the policy retries does not stop the run; one it does not retry does.
    For pipeline frameworks (docs/embedding.md): ``job_class`` is the class ``feed``
    makes its jobs of (a subclass of ``Job``; ``feed_job`` takes jobs built by the
    caller). ``resume=False`` never counts an earlier run's success: every job fed runs
    again, in the same folder (one that succeeded as a new attempt after that one, so
    its files stay); an attempt of an earlier run that is still running is killed
    first, never run twice at once.
    ``events=False`` turns off the run's event stream, ``<workdir>/events.jsonl`` (one
    JSON line per job event, written off the event loop; see ``xqueue.events``), which
    ``xqueue status --follow`` reads.
    """

    def __init__(
        self,
        scheduler: str | type[Scheduler] | Scheduler = "local",
        *,
        forks: int = 1,
        workdir: str | os.PathLike[str] = "./.xqueue",
        error_strategy: str = "halt",
        num_retries: int = 3,
        scheduler_opts: dict[str, Any] | None = None,
        profile: str | None = None,
        plugins: Iterable[Any] | None = None,
        handle_signals: bool = True,
        hook_timeout: float | None = 300.0,
        trust_workdir: bool | None = None,
        slots: Mapping[str, Sequence[Any]] | None = None,
        backfill: int = 16,
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        job_class: type[Job] = Job,
        resume: bool = True,
        events: bool = True,
    ) -> None:
        forks = _check_int("forks", forks, 1)
        backfill = _check_int("backfill", backfill, 0)
        axes = check_axes(slots)  # before anything is made on disk
        num_retries = _check_int("num_retries", num_retries, 0)
        if error_strategy not in ERROR_STRATEGIES:
            raise ConfigError(
                f"invalid error_strategy {error_strategy!r}"
                f"{did_you_mean(error_strategy, ERROR_STRATEGIES)}; choose one of "
                + ", ".join(repr(s) for s in ERROR_STRATEGIES)
            )
        policy = RetryPolicy.parse(retry_policy)
        self._job_class = _check_job_class(job_class)
        _check_bool("resume", resume)
        _check_bool("events", events)
        _check_bool("handle_signals", handle_signals)
        if trust_workdir is not None:  # a safety check: "no" must not turn it off
            _check_bool("trust_workdir", trust_workdir)
        if not isinstance(workdir, (str, os.PathLike)):
            raise ConfigError(f"workdir is a folder (a str or a path), not {workdir!r}")
        if scheduler_opts is not None and (
            not isinstance(scheduler_opts, Mapping)
            or not all(isinstance(key, str) for key in scheduler_opts)
        ):
            raise ConfigError(
                f"scheduler_opts is a dict of option names to values, not {scheduler_opts!r}"
            )
        if isinstance(plugins, (str, bytes)):  # iterated, a name would be its letters
            raise ConfigError(f"plugins is a list of plugins, not a string: plugins=[{plugins!r}]")
        self.scheduler, self._default_resources = profiles.resolve(
            scheduler, profile, scheduler_opts
        )
        self.hooks = Hooks(plugins)  # an unknown plugin is refused before anything is made
        # A gs:// workdir: records in a local folder, job files in the bucket.
        self.workdir: Workdir = remote_workdir.make_workdir(workdir, self.scheduler, trust_workdir)
        # Built in, registered as any plugin is (after the user's, so called first):
        # run.json and kill requests for `xqueue cancel`, the event stream.
        # Its kills go through the engine made below, with why one was not killed.
        self.hooks.register(Control(lambda job: self._engine.kill_outcome(job)), "xqueue-control")
        self._events: EventLog | None = None
        if events and EVENTS_PLUGIN not in self.hooks.blocked:  # plugins=["-xqueue-events"]
            self._events = EventLog(str(self.workdir.path / EVENTS_FILE))
            self.hooks.register(self._events, EVENTS_PLUGIN)
        self._engine = Engine(
            self,
            self.scheduler,
            self.hooks,
            self.workdir,
            forks=forks,
            error_strategy=error_strategy,
            num_retries=num_retries,
            handle_signals=handle_signals,
            hook_timeout=_check_timeout(hook_timeout),
            slots=axes,
            backfill=backfill,
            retry_policy=policy,
            resume=resume,
        )
        self._task_group: TaskGroup | None = None
        self._background: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        # Started in keep-feeding mode and stop_feeding() not called yet: a queue whose
        # run is cancelled, or still runs when the process exits, in this mode warns.
        self._feeding_mode = False

    def _set_feeding_mode(self, on: bool) -> None:
        self._feeding_mode = on
        if on:
            _watch_at_exit(self)
        else:
            _FEEDING.discard(self)

    # -- properties ----------------------------------------------------------------------
    @property
    def jobs(self) -> Sequence[Job]:
        return self._engine.jobs

    @property
    def forks(self) -> int:
        return self._engine.forks

    @property
    def error_strategy(self) -> str:
        return self._engine.error_strategy

    def is_feeding(self) -> bool:
        return self._engine.feeding

    def statistics(self) -> QueueStatistics:
        """O(1) whatever the number of jobs: from the engine's counts, which it keeps as
        jobs move. Safe from another thread (rich's refresh thread): the counts are
        copied in one step, never iterated while the loop changes them."""
        e = self._engine
        end = e.stopped_at if e.stopped_at is not None else time.monotonic()
        stats = self.scheduler.stats
        counts = dict(e.counts)
        return QueueStatistics(
            total=len(e.jobs),
            counts={s.value: n for s, n in counts.items() if n},
            active=counts.get(JobStatus.SUBMITTED, 0) + counts.get(JobStatus.RUNNING, 0),
            pending=counts.get(JobStatus.QUEUED, 0),
            submit_calls=stats.submit_calls,
            status_calls=stats.status_calls,
            kill_calls=stats.kill_calls,
            ticks=stats.ticks,
            elapsed=0.0 if e.started_at is None else end - e.started_at,
            reused=e.reused,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<Xqueue {self.scheduler.name} forks={self.forks} jobs={s.total} "
            f"active={s.active} done={s.done} failed={s.failed}>"
        )

    # -- feeding ---------------------------------------------------------------------------
    async def feed(
        self,
        cmd: str | Sequence[Any],
        envs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        resources: Resources | dict[str, Any] | None = None,
        after: After = None,
        cache_key: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Job:
        """Add a job and return it.

        A list is executed exactly as given (no shell, nothing expanded); a string is run
        by ``/bin/sh -c``. Fed again with the same workdir (same index and command), a
        job that already succeeded is not run again.

        ``after`` (jobs of this queue, or their indices) holds the job until each of them
        has succeeded; if one fails for good or is killed, the job ends SKIPPED, and so do
        the jobs that wait for it. Only jobs fed before it can be named, so dependencies
        never form a cycle; anything else is refused with ``ConfigError``.

        ``cache_key`` (a string the caller derives from what the job depends on: its
        script, its inputs) replaces "same command" as the test of an earlier success:
        the job is skipped only if it succeeded under the same key; under another key
        (or none) it runs again, in the same folder, as a new attempt after the last.
        The job is made by the queue's ``job_class``.
        ``params`` (names to plain values: a sweep's point) are recorded with the job, in
        its spec (``specs.jsonl``): ``xqueue status`` shows them and filters on them (``--param``).
        They are part of what the job is, so a resumed run skips it only with the same.
        """
        # The hot path of feeding: helpers are called only for what was given (and
        # ``add`` checks that the queue takes jobs before anything changes).
        if cache_key is not None:
            cache_key = _check_cache_key(cache_key)
        if resources is not None or self._default_resources is not None:
            resources = profiles.with_defaults(
                Resources.from_value(resources), self._default_resources
            )
        if envs is None and name is None and resources is None:
            job = self._job_class(len(self._engine.jobs), cmd)  # no keywords to pack
        else:
            job = self._job_class(
                len(self._engine.jobs), cmd, envs=envs, name=name, resources=resources
            )
        job.cache_key = cache_key
        if after is not None:
            job.after = resolve_after(after, self._engine.jobs)
        if params is not None:
            job.params = check_params(params)
        await self._engine.add(job)
        return job

    async def feed_job(self, job: Job, *, after: After = None, cache_key: str | None = None) -> Job:
        """Add a job the caller built (a ``Job``, or an instance of a subclass) and return it.

        For frameworks that make their own job objects before feeding them (to render a
        script into them, to check their own cache). The queue assigns ``index`` and
        ``dir`` (the index given to the constructor is a placeholder) and applies the
        profile's default resources; ``after`` and ``cache_key`` work as for ``feed`` (a
        ``cache_key`` given here replaces ``job.cache_key``). A job can be fed once, to
        one queue; its command, environment and name are checked again, as ``feed``
        checks them, since they may have been changed after it was made.
        """
        self._engine.check_can_feed()
        if not isinstance(job, Job):
            raise ConfigError(f"feed_job() takes an xqueue.Job, not {type(job).__name__}")
        if isinstance(job, calls.CallJob):
            raise ConfigError("a CallJob is fed by submit() / submit_call(), not feed_job()")
        if job.dir or job.status is not JobStatus.INIT or job.attempt or job.jid is not None:
            raise ConfigError(
                f"{job!r} was fed already (or given a folder): the queue assigns a job's "
                "index and folder when it is fed, once; make a new job to run it again"
            )
        job.command = normalize_command(job.command)
        job.envs = optional_envs(job.envs)
        job.name = check_name(job.name) or default_name(job.command)
        job.resources = profiles.with_defaults(
            Resources.from_value(job.resources), self._default_resources
        )
        job.cache_key = _check_cache_key(job.cache_key if cache_key is None else cache_key)
        job.after = resolve_after(after, self._engine.jobs)
        job.params = check_params(job.params)
        await self._engine.add(job)
        return job

    async def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> calls.CallJob[T]:
        """Add a job that runs ``fn(*args, **kwargs)``; ``await job.result()`` gives its value.

        See ``submit_call`` (which also takes a name, envs, resources and the interpreter).
        """
        return await self.submit_call(fn, args, kwargs)

    async def submit_call(
        self,
        fn: Callable[..., T],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        envs: Mapping[str, Any] | None = None,
        resources: Resources | dict[str, Any] | None = None,
        python: str | None = None,
        after: After = None,
        params: Mapping[str, Any] | None = None,
    ) -> calls.CallJob[T]:
        """Add a job that runs a Python call where jobs run, and return it.

        The call is pickled now (cloudpickle), so one that cannot be sent raises
        ConfigError here. ``python`` is the interpreter on the executing side (default:
        the scheduler option ``python``, else this interpreter): it must see this
        workdir at the same path and have xqueue and cloudpickle installed. ``after``,
        ``params`` and the profile's default resources work as for ``feed``.
        """
        resources = profiles.with_defaults(Resources.from_value(resources), self._default_resources)
        return await calls.submit(
            self._engine,
            fn,
            args,
            kwargs,
            name=name,
            envs=envs,
            resources=resources,
            python=python,
            after=resolve_after(after, self._engine.jobs),
            params=check_params(params),
        )

    # -- running ---------------------------------------------------------------------------
    async def run(
        self,
        *,
        keep_feeding: bool = False,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run every job fed and return when all have ended.

        With ``keep_feeding=True`` it also takes jobs fed while it runs, until
        ``stop_feeding()`` is called from another task: start it in your own task group
        with ``await tg.start(partial(q.run, keep_feeding=True))``, which returns once the
        run has begun, so a ``stop_feeding()`` right after it cannot come too early.
        Raises ``JobFailedError`` when a job fails under "halt", and lets cancellation
        through after killing the running jobs (with a warning if it was still feeding:
        ``stop_feeding()`` is the way to end a keep-feeding run and keep its jobs).
        """
        if keep_feeding:
            self._set_feeding_mode(True)
        try:
            await self._engine.lock_workdir()
            self._engine.begin(keep_feeding)
            task_status.started()
            await self._engine.run(keep_feeding=keep_feeding, begun=True)
        except anyio.get_cancelled_exc_class():
            self._warn_cancelled_while_feeding()
            raise

    def _warn_cancelled_while_feeding(self) -> None:
        if self._feeding_mode:
            log.warning(
                "the run of an Xqueue (%s) was cancelled while still feeding: "
                "stop_feeding() was never called, so its jobs that had not ended were "
                "killed; await q.stop_feeding() before leaving to let them finish",
                self.workdir.path,
            )
            self._set_feeding_mode(False)

    async def _run_in_task(self) -> None:
        """The xqute-style background run (``run_until_complete(keep_feeding=True)``)."""
        try:
            await self._engine.run(True, begun=True)
        except anyio.get_cancelled_exc_class():
            self._warn_cancelled_while_feeding()
            raise

    async def run_until_complete(self, keep_feeding: bool = False) -> None:
        """Run every job fed and return when all have ended (see ``run``).

        With ``keep_feeding=True`` this returns at once, as xqute's does: feed from here
        on, then ``await stop_feeding()``. That needs a task nobody awaits, so it works on
        asyncio only; the structured forms work on every backend: ``async with
        Xqueue(...) as q:``, or ``run(keep_feeding=True)`` in your own task group.
        """
        if self._engine.state is RunState.CLOSED:
            raise QueueStateError("this queue is closed")
        if keep_feeding and self._task_group is None and self._background is None:
            import asyncio  # only this xqute-style mode needs it; keeps `import xqueue` light

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise QueueStateError(
                    "run_until_complete(keep_feeding=True) returns at once only on asyncio; "
                    "on trio use `async with Xqueue(...) as q:` or run(keep_feeding=True) "
                    "in a task group"
                ) from None
            await self._engine.lock_workdir()
            self._engine.begin(keep_feeding=True)  # feeding from this line on
            self._engine.one_run = (
                "the run of run_until_complete(keep_feeding=True) stopped before "
                "stop_feeding() was called, and a job fed now would never run: await "
                "stop_feeding() for how it ended (its error, if a job failed)"
            )
            self._set_feeding_mode(True)
            self._background = loop.create_task(self._run_in_task())
            await anyio.lowlevel.checkpoint()
            return
        await self.run(keep_feeding=keep_feeding)

    async def stop_feeding(self) -> None:
        """Accept no more jobs, then wait until every job has ended.

        Only meaningful in keep-feeding mode; called otherwise (twice, or on a queue not
        started with ``keep_feeding=True`` or ``async with``) it logs a warning and only
        waits for a run in progress to end. From a hook the run awaits, it returns once
        feeding is closed: the run would end only after the hook."""
        if not self._feeding_mode:
            log.warning(
                "stop_feeding() called on an Xqueue (%s) that is not in keep-feeding mode: "
                "start it with run_until_complete(keep_feeding=True), run(keep_feeding="
                "True) or `async with`; nothing to stop",
                self.workdir.path,
            )
        self._set_feeding_mode(False)
        self._engine.close_feeding()
        if self._engine.in_run():
            # From a hook the run awaits: the run ends only after the hook returns, so
            # waiting for its end here would hang it. Feeding is closed; it ends after.
            return
        if self._background is not None:
            task, self._background = self._background, None
            self._engine.one_run = None  # the queue may be fed and run again after it
            await _await_background(task)
        else:
            await self._engine.wait_stopped()

    async def kill(self, job: Job) -> bool:
        """Kill a job (queued or running); False if it had ended or a plugin vetoed."""
        return await self._engine.kill(job)

    async def as_completed(self) -> AsyncIterator[Job]:
        """Yield each job once, as it reaches a final state, until the run stops.

        Inside ``async with Xqueue(...)`` the run stops only once ``stop_feeding()`` is
        called (more jobs may come): call it before iterating, or the loop waits for
        ever after the last job."""
        async for job in self._engine.as_completed():
            yield job

    async def aclose(self) -> None:
        """Close a queue whose run has ended (``async with`` does it on leaving): the
        workdir's lock is released, the scheduler closed, and waiters on jobs that will
        never end are told so. Refused while its run is in progress: closed under it, the
        run lost its lock and its backend and waited for ever for jobs that had ended."""
        if self._engine.running:
            raise QueueStateError(
                "aclose(): this queue's run is still in progress; end it first "
                "(stop_feeding() in keep-feeding mode, or cancel the task that runs it), "
                "then close the queue"
            )
        await self._close()

    async def _close(self) -> None:
        if self._engine.state is not RunState.CLOSED:
            self._engine.state = RunState.CLOSED
            self._engine.release_collector()
            for job in self._engine.jobs:  # fed, never run, or left running by a stop
                if not job.status.is_final:
                    job._abandon()
            # Cleanup is often in a `finally:` after a cancellation: what the queue holds
            # is let go all the same (a close cut short stayed closed, holding it).
            with anyio.CancelScope(shield=True):
                if self.workdir.has_unmade():
                    await anyio.to_thread.run_sync(self.workdir.forget_unmade)
                self.workdir.unlock()
                if self._events is not None and self._events.writing:  # fed, not run since
                    await anyio.to_thread.run_sync(self._events.close)
            if self._engine.scheduler_open:  # a run closes what it opened
                self._engine.scheduler_open = False
                await self.scheduler.aclose()

    async def __aenter__(self) -> Xqueue:
        if self._engine.state is RunState.CLOSED or self._task_group is not None:
            raise QueueStateError("an Xqueue can be entered only once")
        await self._engine.lock_workdir()
        self._engine.begin(keep_feeding=True)
        self._engine.one_run = (
            "the run of this `async with` block takes no more jobs: stop_feeding() was "
            "called, or the run stopped; feed before that, or use a new Xqueue"
        )
        self._set_feeding_mode(True)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._task_group = tg
        tg.start_soon(self._run_in_background)
        return self

    async def _run_in_background(self) -> None:
        try:
            await self._engine.run(True, begun=True)
        except (Exception, KeyboardInterrupt) as exc:
            # Raised by __aexit__ as it is: a KeyboardInterrupt (the run's SIGINT) that
            # left this task was wrapped in an exception group, and asyncio's loop
            # raised it a second time.
            self._failure = exc
            assert self._task_group is not None
            self._task_group.cancel_scope.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._task_group
        assert tg is not None
        self._set_feeding_mode(False)  # leaving the block ends feeding: no misuse
        try:
            if exc_type is None:
                self._engine.close_feeding()
                suppressed = await tg.__aexit__(None, None, None)
            elif self._failure is None and not issubclass(
                exc_type, anyio.get_cancelled_exc_class()
            ):
                # The body failed, or exited (SystemExit, KeyboardInterrupt): stop the run
                # (its jobs are killed) and let the body's own exception through, not
                # wrapped in an exception group. A cancellation goes to the task group,
                # whose scope it may belong to.
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
                suppressed = False
            else:
                tg.cancel_scope.cancel()
                suppressed = await tg.__aexit__(exc_type, exc, tb)
        finally:
            await self._close()  # its run's task has ended, whatever state it left
        if self._failure is not None:
            raise self._failure
        return suppressed


async def _await_background(task: asyncio.Task[None]) -> None:
    """Wait for the xqute-style background run; a cancellation of the wait cancels the
    run once, as a cancelled ``run()`` is (its jobs killed), and comes through once the
    run has stopped. Awaited bare, the task got each of the cancellations anyio delivers
    again and again to a cancelled scope's task, and one cut the run's shielded stop
    short: its running jobs were left running, recorded as running for good."""
    import asyncio

    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved (asyncio would report it): the cancellation stands
        raise
