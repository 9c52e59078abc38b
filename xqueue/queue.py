"""``Xqueue``: the public face of the engine, in the xqute style.

It validates arguments up front (so a typo fails before any job runs), resolves the
scheduler and plugins, and offers the three ways to run: ``run_until_complete()``,
``async with Xqueue(...) as q:`` (daemon mode, structured), and the xqute-compatible
``run_until_complete(keep_feeding=True)`` + ``stop_feeding()`` on asyncio.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from . import calls, profiles
from .capacity import check_axes
from .dependencies import After, resolve_after
from .engine import Engine, RunState
from .errors import ConfigError, QueueStateError
from .hooks import Hooks
from .job import Job
from .params import check_params
from .resources import Resources
from .retry import RetryPolicy
from .scheduler import Scheduler
from .states import JobStatus
from .workdir import Workdir

if TYPE_CHECKING:
    import asyncio

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
    ) -> None:
        forks = _check_int("forks", forks, 1)
        backfill = _check_int("backfill", backfill, 0)
        axes = check_axes(slots)  # before anything is made on disk
        num_retries = _check_int("num_retries", num_retries, 0)
        if error_strategy not in ERROR_STRATEGIES:
            raise ConfigError(
                f"invalid error_strategy {error_strategy!r}; choose one of "
                + ", ".join(repr(s) for s in ERROR_STRATEGIES)
            )
        policy = RetryPolicy.parse(retry_policy)
        self.scheduler, self._default_resources = profiles.resolve(
            scheduler, profile, scheduler_opts
        )
        self.workdir = Workdir(workdir, trust=trust_workdir)
        self.hooks = Hooks(plugins)
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
        )
        self._task_group: TaskGroup | None = None
        self._background: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

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
        e = self._engine
        end = e.stopped_at if e.stopped_at is not None else time.monotonic()
        stats = self.scheduler.stats
        return QueueStatistics(
            total=len(e.jobs),
            counts={s.value: n for s, n in e.counts.items() if n},
            active=len(e.active_jobs()),
            pending=e.counts.get(JobStatus.QUEUED, 0),
            submit_calls=stats.submit_calls,
            status_calls=stats.status_calls,
            kill_calls=stats.kill_calls,
            ticks=stats.ticks,
            elapsed=0.0 if e.started_at is None else end - e.started_at,
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

        ``params`` (names to plain values: a sweep's point) are recorded with the job, in
        its ``job.json``: ``xqueue status`` shows them and filters on them (``--param``).
        They are part of what the job is, so a resumed run skips it only with the same.
        """
        self._engine.check_can_feed()
        resources = profiles.with_defaults(Resources.from_value(resources), self._default_resources)
        job = Job(len(self._engine.jobs), cmd, envs=envs, name=name, resources=resources)
        job.after = resolve_after(after, self._engine.jobs)
        job.params = check_params(params)
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
    async def run(self, *, keep_feeding: bool = False) -> None:
        """Run every job fed and return when all have ended.

        With ``keep_feeding=True`` it also takes jobs fed while it runs, until
        ``stop_feeding()`` is called from another task: start it in your own task group.
        Raises ``JobFailedError`` when a job fails under "halt", and lets cancellation
        through after killing the running jobs.
        """
        await self._engine.run(keep_feeding=keep_feeding)

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
            self._background = loop.create_task(self._engine.run(True, begun=True))
            await anyio.lowlevel.checkpoint()
            return
        await self.run(keep_feeding=keep_feeding)

    async def stop_feeding(self) -> None:
        """Accept no more jobs, then wait until every job has ended."""
        self._engine.close_feeding()
        if self._background is not None:
            task, self._background = self._background, None
            await task
        else:
            await self._engine.wait_stopped()

    async def kill(self, job: Job) -> bool:
        """Kill a job (queued or running); False if it had ended or a plugin vetoed."""
        return await self._engine.kill(job)

    async def as_completed(self) -> AsyncIterator[Job]:
        """Yield each job once, as it reaches a final state, until the run stops."""
        async for job in self._engine.as_completed():
            yield job

    async def aclose(self) -> None:
        if self._engine.state is not RunState.CLOSED:
            self._engine.state = RunState.CLOSED
            self.workdir.unlock()
            if self._engine.scheduler_open:  # a run closes what it opened
                self._engine.scheduler_open = False
                await self.scheduler.aclose()

    async def __aenter__(self) -> Xqueue:
        if self._engine.state is RunState.CLOSED or self._task_group is not None:
            raise QueueStateError("an Xqueue can be entered only once")
        await self._engine.lock_workdir()
        self._engine.begin(keep_feeding=True)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._task_group = tg
        tg.start_soon(self._run_in_background)
        return self

    async def _run_in_background(self) -> None:
        try:
            await self._engine.run(True, begun=True)
        except Exception as exc:
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
        try:
            if exc_type is None:
                self._engine.close_feeding()
                suppressed = await tg.__aexit__(None, None, None)
            elif issubclass(exc_type, Exception) and self._failure is None:
                # The body failed: stop the run (its jobs are killed) and let the body's
                # own exception through, not wrapped in an exception group.
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
                suppressed = False
            else:
                tg.cancel_scope.cancel()
                suppressed = await tg.__aexit__(exc_type, exc, tb)
        finally:
            await self.aclose()
        if self._failure is not None:
            raise self._failure
        return suppressed
