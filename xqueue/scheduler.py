"""The scheduler contract: how the engine talks to any backend.

A backend implements three coroutines, the same three an xqute scheduler has:

- ``submit_job(job) -> str``: start the job, return the backend's id for it;
- ``kill_job(job)``: stop it;
- ``job_is_running(job) -> bool``: whether the backend still holds it.

The engine never calls those directly. It calls the batched forms, whose defaults loop
over the single forms with bounded concurrency:

- ``submit_jobs(jobs)``: one result per job (an id, or the exception that refused it);
- ``kill_jobs(jobs)``;
- ``poll_jobs(jobs) -> {job: JobState}``: once per tick with *every* active job.

A cluster backend overrides ``poll_jobs`` (or ``jobs_are_running``) so that one status
command per tick serves every job, and ``submit_jobs`` to pack jobs into arrays. A
backend that can simply await its jobs (local processes) sets ``awaits_completion`` and
implements ``wait_job`` instead of being polled.

How completion is learnt when polled: the wrapper script written by ``write_script``
records ``job.started`` and ``job.rc`` in the job's folder. ``poll_jobs`` reconciles those
files with the backend's answer: a return code wins; a job the backend holds is
running; a job the backend has forgotten that left no return code is given
``vanish_grace`` seconds (file systems lag) and then failed as vanished, never left
"running forever".
"""

from __future__ import annotations

import abc
import os
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import anyio

from ._files import atomic_write
from ._text import comment, export, quote, too_long_for_exec
from .capacity import Capacity
from .failures import BACKEND_CLASSES, FailureClass
from .job import COMMAND, RC, SCRIPT, STARTED, STDERR, STDOUT, Job, attempt_file
from .options import SchedulerOptions
from .states import JobStatus
from .workdir import read_rc, read_text
from .wrapping import program_line

if TYPE_CHECKING:
    from .workdir import Workdir

T = TypeVar("T")
R = TypeVar("R")

VANISHED = (
    "vanished: the scheduler no longer knows the job and it left no return code "
    "(killed outside xqueue, node failure, or purged before it could write one)"
)


@dataclass(frozen=True)
class JobState:
    """What a backend reports about one job: a status, and a return code once it ended."""

    status: JobStatus
    rc: int | None = None
    reason: str = ""
    retryable: bool = True
    """False when running the job again could repeat work already done (exit status lost)."""
    kill: bool = False
    """The backend wants the job removed first (a dependency that can never be met): the
    engine kills it, plugin vetoes included, and records this state once it is gone."""
    failure: FailureClass | None = None
    """Why it failed, when the backend can tell (OOM, TIMEOUT, ...); the engine derives
    the rest (a non-zero return code, killed outside xqueue, vanished)."""
    unsettled: bool = False
    """The backend lost sight of a job that may still run (its server went down): this
    run reports it failed, but the workdir keeps it journalled as active, so a later run
    looks it up by its id, and follows it, before it would ever run it again."""
    unkilled: bool = False
    """The job succeeded though its kill was sent: the kill had not reached it (a Batch
    array task runs on while its kill waits for the whole array's cancel). The engine
    records this end, not a kill: a success recorded killed ran again in the next run."""


@dataclass
class SchedulerStats:
    """How many backend operations were made; tests and benchmarks assert on these."""

    submit_calls: int = 0
    status_calls: int = 0
    kill_calls: int = 0
    ticks: int = 0


async def gather_bounded(
    items: Sequence[T], fn: Callable[[T], Awaitable[R]], limit: int
) -> list[R | BaseException]:
    """Run ``fn`` on every item, at most ``limit`` at once; keep each item's exception."""
    results: list[R | BaseException] = [RuntimeError("not run")] * len(items)
    if len(items) == 1:
        limit = 1
    limiter = anyio.Semaphore(limit)

    async def one(i: int, item: T) -> None:
        async with limiter:
            try:
                results[i] = await fn(item)
            except Exception as exc:
                results[i] = exc

    async with anyio.create_task_group() as tg:
        for i, item in enumerate(items):
            tg.start_soon(one, i, item)
    return results


class Scheduler(abc.ABC):
    """Base class of every backend; the engine knows backends only through it."""

    name: ClassVar[str] = "custom"
    """The registered name, used in messages."""
    Options: ClassVar[type[SchedulerOptions]] = SchedulerOptions
    """The dataclass of options this scheduler accepts."""
    awaits_completion: ClassVar[bool] = False
    """True when ``wait_job`` reports each job's end (no polling)."""
    running_on_submit: ClassVar[bool] = False
    """True when a submitted job is already running (no queue in between)."""
    shared_fs: ClassVar[bool] = True
    """False when the jobs do not see the controller's workdir (a cloud batch service).

    Such a backend stages each job's files itself and copies a job's outputs (stdout,
    stderr, return code, a call's result) into its local folder *before* it reports the
    job ended, so what reads the workdir (the engine, ``xqueue status``, ``result()``)
    only ever reads local files. While such a job runs its folder holds only its
    script: its output is wherever the backend staged it, never read from here.
    """
    enforces_walltime: ClassVar[bool] = False
    """True when the backend stops a job at its limit itself (Slurm ``--time``, SGE
    ``h_rt``) and reports it as TIMEOUT; otherwise the engine kills it at the limit."""
    rc_file_is_own_end: ClassVar[bool] = False
    """True when a kill signals the job's whole process group at once, its wrapper with
    it (SGE, SSH): a return code file is then only ever written by a wrapper that finished
    first, so the end it tells is the job's own even if a kill was sent meanwhile."""

    @classmethod
    def ended_before_kill(cls, rc: int | None) -> bool:
        """Whether an attempt an earlier run was killing when it died, and which left
        ``rc``, succeeded on its own first: its success is kept (a resume, ``xqueue
        cancel`` and ``xqueue status`` all ask this). Only where a kill ends the wrapper
        with its job; elsewhere a 0 may be a job that exited 0 of its SIGTERM."""
        return cls.rc_file_is_own_end and rc == 0

    script_ends_group: ClassVar[bool] = False
    """True when the job script SIGKILLs its own process group once the return code is
    written, for a backend that leaves a finished job's other processes alone (a plain
    SSH server: nothing else ends what a job left running with ``cmd &``). Only where
    the script's own exit status is not read: it dies of that signal."""

    @property
    def enforces_forks(self) -> bool:
        """True when the backend itself keeps at most ``self.forks`` jobs running.

        When none of its jobs is active, the engine then hands it up to ``max_batch``
        queued jobs at once, more than ``forks``, so it can pack them into few
        submissions whose throttles add up to ``forks`` (Slurm arrays with ``%N``);
        otherwise it gets only as many jobs as there are free slots, so the bound holds
        across batches. False by default: the engine bounds active jobs by itself.
        """
        return False

    @property
    def max_batch(self) -> int:
        """The most jobs one ``submit_jobs`` call should get (a backend's array limit)."""
        return 1 << 30

    def __init__(self, **options: Any) -> None:
        self.options = self.Options.parse(self.name, options)
        self.stats = SchedulerStats()
        self.workdir: Workdir | None = None
        self.forks = 1  # set by the engine before open()
        self._missing_since: dict[Job, float] = {}
        # Submission calls that outlived their wait, by job (``submit_call``), and when
        # the last of them returned: a listing made before that cannot show its jobs.
        self._under_way: dict[Job, _Flight] = {}
        self.flights_ended_at = 0.0

    # -- capacity --------------------------------------------------------------------
    async def capacity(self) -> Mapping[str, Capacity] | None:
        """The hosts this backend runs jobs on and what each can run at once.

        None (the default) means the backend decides by itself (a cluster's own
        scheduler): the engine then bounds jobs by ``forks`` and slot values only.
        Otherwise a job starts only when what it asks fits in what the jobs running on
        some host leave free there, and a job that fits nowhere is refused when fed. It
        may be called before ``open`` (a job is fed before the run): answer with what
        is known then; it is called again once the backend is open.
        """
        return None

    def usable_hosts(self) -> Collection[str] | None:
        """The hosts that can take a job right now (None: all); others are used only when
        a job fits on none of these."""
        return None

    # -- lifecycle -------------------------------------------------------------------
    async def open(self, workdir: Workdir) -> None:
        """Called once before the first submission; open connections here."""
        self.workdir = workdir

    async def aclose(self) -> None:  # noqa: B027 - optional for backends
        """Called once when the queue stops; close connections here."""

    async def serve(self) -> None:  # noqa: B027 - optional for backends
        """A backend's own long-running task (reading a helper process's answers, say).

        The engine runs it in the run's task group for as long as the run's loop runs and
        cancels it after, so it never outlives the run and nobody else has to own it. A
        cancelled run's shutdown runs the loop, and so this, a second time. An exception
        stops the run with that error.
        """

    def walltime(self, job: Job) -> float | None:
        """The job's time limit in seconds: its own ``walltime``, else the ``timeout``
        option; None for none."""
        res = job.resources
        if res is not None and res.walltime_s:
            return res.walltime_s
        return getattr(self.options, "timeout", 0.0) or None

    # -- the single forms ------------------------------------------------------------
    @abc.abstractmethod
    async def submit_job(self, job: Job) -> str:
        """Start ``job``; return the backend's id for it. Raise to refuse it."""

    @abc.abstractmethod
    async def kill_job(self, job: Job) -> None:
        """Stop ``job`` (it may already have ended)."""

    @abc.abstractmethod
    async def job_is_running(self, job: Job) -> bool:
        """Whether the backend still holds ``job`` (queued or running)."""

    # -- the batched forms the engine calls -------------------------------------------
    async def submit_jobs(self, jobs: Sequence[Job]) -> list[str | BaseException]:
        """Submit many jobs; one id or exception per job, in order."""

        async def one(job: Job) -> str:
            self.stats.submit_calls += 1
            return await self.submit_job(job)

        return await gather_bounded(jobs, one, self.options.submit_concurrency)

    async def kill_jobs(self, jobs: Sequence[Job]) -> list[BaseException | None]:
        """Kill many jobs; one exception (or None) per job, in order.

        ``JobAlreadyEnded`` for a job that had ended on its own, so nothing was signalled:
        the engine then records the end the backend reports (a job that succeeded just
        before a halt's kill came is not run again), not a kill."""

        async def one(job: Job) -> None:
            self.stats.kill_calls += 1
            await self.kill_job(job)

        # Every kill at once (up to a bound): kills that each wait kill_grace must not
        # queue behind each other, or a stopping run outlives its shutdown deadline.
        limit = max(self.options.submit_concurrency, 256)
        return [
            r if isinstance(r, BaseException) else None
            for r in await gather_bounded(jobs, one, limit)
        ]

    async def jobs_are_running(self, jobs: Sequence[Job]) -> dict[Job, bool]:
        """Which jobs the backend still holds; override with one batched query."""

        async def one(job: Job) -> bool:
            self.stats.status_calls += 1
            return await self.job_is_running(job)

        results = await gather_bounded(jobs, one, self.options.submit_concurrency)
        # A failed check is not evidence that the job ended: count it as running.
        return {job: (r if isinstance(r, bool) else True) for job, r in zip(jobs, results)}

    async def poll_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobState]:
        """The state of every active job, from one batched query plus the jobs' own files."""
        running = await self.jobs_are_running(jobs)
        # Each reconcile reads the job's rc and started files: the whole tick's batch
        # goes to one worker thread, so a slow file system never stalls the event loop.
        return await anyio.to_thread.run_sync(
            lambda: {job: self.reconcile(job, running.get(job, False)) for job in jobs}
        )

    def reconcile(self, job: Job, held: bool, backend_state: JobState | None = None) -> JobState:
        """Merge the wrapper's files with what the backend says about one job.

        It reads the job's files: call it from a worker thread, a tick's jobs at once.

        The return code file wins (it is the job's own word), though a failure the
        backend explains (a step killed for its memory or time, a preemption) keeps the
        backend's class and reason. Then the backend's terminal answer, if it has one. A
        job the backend still holds is running (or submitted if its wrapper has not
        started). A job nobody knows is failed as vanished after ``vanish_grace`` seconds.
        """
        rc = read_rc(job)
        if rc is not None:
            self._missing_since.pop(job, None)
            # The job's own end, a kill sent or not, if the backend's design says so or
            # its answer does (an HTCondor job COMPLETED, not REMOVED).
            own = self.rc_file_is_own_end or (backend_state is not None and backend_state.unkilled)
            if rc == 0:
                return JobState(JobStatus.FINISHED, rc, unkilled=own)
            if backend_state is not None and backend_state.failure in BACKEND_CLASSES:
                return JobState(
                    JobStatus.FAILED,
                    rc,
                    backend_state.reason,
                    retryable=backend_state.retryable,
                    failure=backend_state.failure,
                    unkilled=own,
                )
            return JobState(JobStatus.FAILED, rc, unkilled=own)
        if backend_state is not None and backend_state.status.is_final:
            self._missing_since.pop(job, None)
            return backend_state
        started = os.path.exists(job.attempt_path(STARTED))
        current = JobState(JobStatus.RUNNING if started else JobStatus.SUBMITTED)
        if held:
            self._missing_since.pop(job, None)
            return backend_state or current
        if job.kill_requested:
            return JobState(JobStatus.KILLED, None, "killed")
        first = self._missing_since.setdefault(job, time.monotonic())
        if time.monotonic() - first >= self.options.vanish_grace:
            self._missing_since.pop(job, None)
            return JobState(JobStatus.FAILED, None, VANISHED, failure=FailureClass.VANISHED)
        return current

    async def wait_job(self, job: Job) -> JobState:
        """Wait for a submitted job to end (only for ``awaits_completion`` backends)."""
        raise NotImplementedError(f"{type(self).__name__} is polled, not awaited")

    def watch_end(self, job: Job, report: Callable[[JobState | None], None]) -> bool:
        """Have ``report`` called with ``job``'s end, rather than ``wait_job`` awaited
        in a task of its own (``awaits_completion`` backends only). Return True to take
        it on, False (the default) to be awaited.

        For a backend whose ends all come through one reader (its ``serve``: a helper
        process's answers): a task and a wait per running job cost the controller more
        than the rest of a short job's life. ``report`` is called at most once, from
        the run's own tasks (or at once, from this call, for a job that has ended
        already) and without blocking; ``report(None)`` hands the job back to
        ``wait_job`` (its end cannot come this way any more: the helper is gone).
        """
        return False

    async def submit_call(
        self,
        jobs: Sequence[Job],
        fn: Callable[[], T],
        timeout: float,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> T:
        """A blocking submission call (a client library's) in a worker thread, awaited
        for ``timeout`` seconds: TimeoutError after that.

        Such a call cannot be stopped: one that outlives the wait, or the caller's
        cancellation, goes on in its thread and may still submit ``jobs``. Until it
        returns, the engine does not look them up (``submission_under_way``): a lookup
        in between found nothing, and the jobs were submitted a second time.
        """
        flight = _Flight()

        def call() -> T:
            with flight.lock:
                if flight.abandoned:  # its caller gave up before it started: never run
                    raise TimeoutError("abandoned before it started")
                flight.started = True
            try:
                return fn()
            finally:
                flight.ended_at = time.monotonic()
                flight.ended.set()

        try:
            with anyio.fail_after(timeout):
                return await anyio.to_thread.run_sync(call, limiter=limiter, abandon_on_cancel=True)
        except BaseException:
            with flight.lock:
                flight.abandoned = True
                under_way = flight.started and not flight.ended.is_set()
            if under_way:
                for job in jobs:
                    self._under_way[job] = flight
            raise

    def submission_under_way(self, job: Job) -> bool:
        """Whether a submission call of ``job`` that outlived its wait has not returned
        yet (``submit_call``): until it has, nothing can tell whether it submitted."""
        flight = self._under_way.get(job)
        if flight is None:
            return False
        if not flight.ended.is_set():
            return True
        del self._under_way[job]
        # When it returned, once per call: a listing older than that cannot show its jobs
        # (the time it was noticed, for each job, made a listing per job).
        self.flights_ended_at = max(self.flights_ended_at, flight.ended_at)
        return False

    async def recover_job(self, job: Job) -> bool:
        """Whether a job an earlier run may have submitted can be adopted.

        ``job.jid`` is the id that run recorded, or None when it died before recording
        one: a backend that can find the job another way (its name, its environment)
        sets ``job.jid`` and returns True. The default can only check a known id.
        """
        if job.jid is None:
            return False
        return await self.job_is_running(job)

    def forget(self, job: Job) -> None:
        """Drop any per-job state once the job has ended."""
        self._missing_since.pop(job, None)
        self._under_way.pop(job, None)

    # -- the wrapper script ----------------------------------------------------------
    def script_lines(self, job: Job) -> list[str]:
        """Backend directives placed after the shebang (``#SBATCH ...``); none by default."""
        return []

    def write_script(self, job: Job, jobdir: str | None = None) -> str:
        """Write the job's wrapper script once and return its path.

        ``jobdir`` is the job folder as the executing host sees it (a container mount,
        say). The script is written to a temporary name and renamed: a running copy keeps
        reading its own inode, so even a rewrite could never truncate it under a running
        shell. The argv is quoted word by word, so it reaches the program exactly as given.
        """
        path = job.attempt_path(SCRIPT)
        # Only a submission writes a script: what an earlier run's attempt of the same
        # number left (a failed job runs again from attempt 1) must not settle this one.
        for kind in (RC, STARTED):
            try:
                os.unlink(job.attempt_path(kind))
            except FileNotFoundError:
                pass
        text = render_script(
            job, jobdir or job.dir, self.script_lines(job), end_group=self.script_ends_group
        )
        if read_text(path) != text:
            atomic_write(path, text)
            os.chmod(path, 0o755)
        return path


_END_GROUP = "kill -KILL 0  # what the job left in its group (cmd &) ends with it"


def render_script(
    job: Job, jobdir: str, directives: Iterable[str] = (), *, end_group: bool = False
) -> str:
    """The wrapper's text. Nothing of the job's reaches it unquoted: arguments and values
    are single-quoted word by word (``_text.quote``), and the name, which is only a
    comment, has its line breaks and other unprintable characters escaped (``comment``),
    so no name, argument or value can end a line and start a command of its own.

    ``end_group``: once the return code is written, SIGKILL the script's process group
    (``Scheduler.script_ends_group``), the script with it."""
    q = quote
    n = max(job.attempt, 1)

    def f(kind: str) -> str:
        return q(f"{jobdir}/{attempt_file(kind, n)}")

    envs = {
        "XQUEUE_JOB_INDEX": str(job.index),
        "XQUEUE_JOB_ATTEMPT": str(n),
        "XQUEUE_JOB_DIR": jobdir,
        **(job.envs or {}),
        **(job.claim.environment() if job.claim is not None else {}),
    }
    # A job's own PATH (a venv's bin alone, say) is the command's, not the wrapper's:
    # with it, rm, date and mv were not found, no return code was written, and a job
    # that succeeded was taken for vanished. They run with the PATH the script began with.
    saved, tool = "xqueue_wrapper_path", ""
    if "PATH" in envs:
        while saved in envs:
            saved += "_"
        tool = f'PATH="${saved}" '
    lines = [
        "#!/bin/sh",
        *directives,
        f"# xqueue job {job.index}: {comment(job.name)}",
        "# Written once per job; the engine never rewrites it while it may run.",
        *([f'{saved}="$PATH"'] if tool else []),
        *(export(k, v) for k, v in envs.items()),
        # Only files this attempt creates, each with O_EXCL (noclobber): a link planted
        # at one of these names is removed, never written through.
        f"{tool}rm -f {f(STARTED)} {f(STDOUT)} {f(STDERR)} {f(RC)}.tmp {f(COMMAND)}",
        "set -C",
        f"{tool}date +%s > {f(STARTED)}",
        *_command_lines(job, f"> {f(STDOUT)} 2> {f(STDERR)}", f(COMMAND)),
        "rc=$?",
        f'echo "$rc" > {f(RC)}.tmp && {tool}mv -f {f(RC)}.tmp {f(RC)}',
        *([_END_GROUP] if end_group else []),
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


def _command_lines(job: Job, redirect: str, command_file: str) -> list[str]:
    """The command, its output redirected; with shell lines around it (``wrapping``), a
    subshell that runs them, so an ``exit`` in one still leaves a return code here.

    A shell command too long for exec to pass as one argument (over 128 KiB: ``/bin/sh
    -c`` failed with "Argument list too long", rc 126) is written by the script itself,
    with the shell's own ``printf`` (no exec), to ``command_file`` (quoted), and run from
    there, as the local backend runs it: where the script runs, that file can be written.
    The command starts only once the whole file was, and a write that fails is the job's
    failure, its error in the job's stderr."""
    if isinstance(job.command, str) and too_long_for_exec(job.command):
        # Written under noclobber (``set -C`` in a subshell of its own) even where the
        # run's shell lines, which turn it off, run around it.
        write = f"(set -C; printf '%s\\n' {quote(job.command)} > {command_file})"
        command = f"{{ {write} && /bin/sh {command_file}; }}"
    else:
        argv = job.command_argv
        command = program_line(argv[0], " ".join(quote(a) for a in argv))
    if job._wrap is None:
        return [f"{command} < /dev/null {redirect}"]
    # set +C: the lines are the user's shell, to run as written (noclobber is only for
    # the wrapper's own files, opened before the subshell starts).
    return ["(", "set +C", *job._wrap.lines(command), f") < /dev/null {redirect}"]


class _Flight:
    """A submission call in its worker thread (``Scheduler.submit_call``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = False  # fn was called (else, once abandoned, it never will be)
        self.abandoned = False
        self.ended = threading.Event()
        self.ended_at = 0.0
