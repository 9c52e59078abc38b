"""``BatchScheduler``: the base of every backend that drives a batch system.

Slurm, SGE, HTCondor, PBS and LSF differ in the words of their commands (or calls) and
answers, not in what a backend must do with them. This base does that part once:

- **submitting**: every job's wrapper script is written (``Scheduler.write_script``) in a
  worker thread; jobs fed together with the same resources become arrays (at most
  ``array_limit`` elements each) whose throttles share ``forks`` (``_forks.plan``: when
  there are more arrays than ``forks``, some wait for another one, a *chain*); a refused
  submission fails only the jobs it carried; one whose outcome is unknown (it timed
  out) fails them with ``SubmissionUnknownError``, so the engine looks for them by their
  tag before it submits anything again;
- **status**: one status query per tick for every active job (chunked only past
  ``query_chunk`` ids); the wrapper's return code file wins; jobs the status query no
  longer lists and that left no return code are looked up in accounting (one query
  for all of them), and only then given ``vanish_grace`` (``Scheduler.reconcile``);
- **recovery**: every submission carries a *tag* naming the workdir, the job and its
  attempt (or, for an array with a batch script, the batch whose ``.jobs`` file maps
  elements to job folders), so a later run, or this one after an unknown outcome,
  finds a job whose id was never recorded: from one listing of the user's jobs per
  second, then, for a job that already left it, from accounting by tag;
- **killing**: one kill for many ids (``kill_chunk`` per call).

The base reaches the system through six *steps*, each an async method a subclass may
override; the default of each runs a command line (``run_command``: timeout, stderr in
the error, ``stats`` counted) and parses its output with the subclass's *facts*. A
system driven by commands supplies only the facts, each small and pure where it can be,
so a new batch backend is about a page long (``slurm.py`` and ``sge.py`` are the
examples); one reached through a library or an API overrides the steps instead and
keeps everything above (``htcondor.py`` is the example):

================================  ========================================================
step (async)                      default: the facts it runs and reads
================================  ========================================================
``submit_unit(sub) -> str``       ``submit_argv(sub)`` (``submit_input(sub)`` on stdin),
                                  ``parse_submit(out)``: the id the submission got
                                  (``ValueError`` if none: the outcome is unknown).
                                  Raise ``SubmissionError`` when nothing was queued,
                                  ``SubmissionUnknownError`` when it may have been
``query_status(ids)``             ``status_argv(ids)``, ``parse_status(out)``: id ->
                                  ``JobState``; a non-final state means the system still
                                  holds the job, a final one is its own verdict (killed,
                                  timed out); an id left out has ended, and its return
                                  code file or accounting says how. ``ids``: one chunk
                                  of ``query_chunk`` array ids, or none when not
                                  ``query_by_id`` (the step then lists every job)
``query_accounting(ids)``         ``accounting_argvs(ids)`` (none by default),
                                  ``parse_accounting(out)``: how ended jobs that left no
                                  return code ended, read as ``query_status``'s answer
``query_accounting_by_tag(tag)``  ``accounting_by_tag_argv(tag)``, ``parse_accounting``:
                                  the ended jobs carrying ``tag``; None: not offered
``kill_ids(ids) -> ended``        ``kill_argv(ids)``, ``parse_kill(result)``: kill one
                                  chunk of ``kill_chunk`` ids; the ids that had ended
                                  already, nothing signalled (raise ``SchedulerError``
                                  when it failed)
``list_jobs()``                   ``listing_argv()``, ``parse_listing(out)``: every job of
                                  the user as id -> (still held, tag), for recovery;
                                  None: no recovery by tag
================================  ========================================================

A step that calls something other than ``run`` counts its calls itself in ``stats``
(``submit_calls``, ``status_calls``, ``kill_calls``): the engine's one-query-per-tick
promise is checked on them. Beside the steps a subclass states:

========================  =============================================================
``name``, ``Options``      the registered name; options (a ``BatchOptions`` subclass)
``array_task_var``         the variable holding an array element's task id in the batch
                           script the base writes for an array (None: no such script);
                           ``array_first``, ``element_sep`` (``12_3``, ``12.3``)
``per_element_scripts``    True when ``submit_unit`` gives each element of an array its
                           own wrapper (HTCondor's item data): arrays without a batch
                           script, each element tagged as a single job
``chains``                 True when a submission can wait for another one to end
``query_by_id``            False when the status step lists every job of the user
``tag_style``              how a tag is spelt where the system keeps it
========================  =============================================================

and may refine: ``failure_is_answer`` (a non-zero exit that is an answer, such as
"no such job"), ``explain`` (more evidence for states the status step gave, such as
a reason only a second command tells), ``script_lines`` (directives in the wrapper),
``arrays_possible`` and ``chains_possible`` (a user's own option that rules them out),
``job_ids``, ``element_id`` and ``array_id`` (ids spelt otherwise than
``<array><sep><task>``).

Shared file system: like every polled backend, this one learns how a job ended from the
files its wrapper writes into the job's folder, so the batch system's nodes must see the
workdir at the same path (``shared_fs = True``, the default). A system whose nodes do
not see it must stage the files itself and copy a job's outputs back before reporting
it ended (see ``Scheduler.shared_fs``; ``gbatch`` does so).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from .._text import quote
from ..errors import (
    JobAlreadyEnded,
    SchedulerError,
    SubmissionUnknownError,
)
from ..job import SCRIPT, STARTED, Job
from ..options import SchedulerOptions
from ..scheduler import JobState, Scheduler
from ..workdir import read_rc
from ._cluster import (
    array_jobdirs,
    attempt_of,
    best_match,
    chunks,
    hms,
    job_name,
    long_options,
    matches,
    run_submit,
    run_tag,
    short_options,
    submit_grouped,
    write_array,
)
from ._process import CommandResult, SchedulerCommandError, read_output, run_command

if TYPE_CHECKING:
    from ..workdir import Workdir

# Public for every backend that hands jobs to another system, built on this base or not
# (the PanDA plugin is a plain Scheduler): a plugin imports these from here, never from
# the private modules behind them.
__all__ = [
    "BatchOptions",
    "BatchScheduler",
    "CommandResult",
    "Submission",
    "TagStyle",
    "attempt_of",
    "best_match",
    "chunks",
    "hms",
    "job_name",
    "long_options",
    "matches",
    "quote",
    "run_tag",
    "short_options",
]


@dataclasses.dataclass
class BatchOptions(SchedulerOptions):
    """Options of every batch backend; any other key is one of the system's own flags."""

    arrays: bool = True
    """Submit jobs fed together with the same resources as one array, throttled to share
    ``forks`` (for systems that have arrays)."""
    submit_timeout: float = 60.0
    """Seconds a submit command may take; past it, its outcome counts as unknown."""
    status_timeout: float = 60.0
    """Seconds a status, accounting or kill command may take."""

    accepts_extra = True
    above_zero = frozenset({"submit_timeout", "status_timeout"})


@dataclasses.dataclass(frozen=True)
class Submission:
    """One submit command's worth of jobs: a single job, or an array of them."""

    jobs: tuple[Job, ...]
    script: str
    """The file to submit: the job's wrapper, or the array's batch script that runs the
    wrapper of the element's job (``write_array``); empty for an array of
    ``per_element_scripts``, whose elements run their own job's wrapper."""
    tag: str
    """What recovery looks for; put it where ``list_jobs`` reads it back (Slurm's
    ``--comment``, SGE's ``-N``). Empty for an array of ``per_element_scripts``: each
    element carries its own job's tag (``BatchScheduler.tag``)."""
    throttle: int | None = None
    """For an array, the most elements that may run at once (Slurm's ``%N``, SGE's
    ``-tc``); None for a single job."""
    after: str | None = None
    """The id of the submission this one must wait for (all of it, whatever its
    outcome), or None; only set when ``BatchScheduler.chains``."""
    name: str | None = None
    """An array's batch name: its files in ``BatchScheduler.batch_dir`` start with it
    (None for an array of ``per_element_scripts``: it has no files)."""
    tasks: range | None = None
    """An array's task ids, ``array_first`` onwards; None for a single job."""

    @property
    def job(self) -> Job:
        """The job whose resources stand for the submission (an array's jobs share them)."""
        return self.jobs[0]

    @property
    def is_array(self) -> bool:
        return self.tasks is not None


@dataclasses.dataclass(frozen=True)
class TagStyle:
    """How a submission's tag is spelled: ``prefix`` (``{run}`` is the workdir's run tag),
    then ``<index><attempt_sep><attempt>`` for a single job or ``<array_mark><batch>``
    for an array. The default fits the narrowest job-name alphabets (SGE's)."""

    prefix: str = "xq{run}_"
    attempt_sep: str = "_"
    array_mark: str = "A"


# Tagged jobs of this workdir: "#<index>" (a single job) or a job folder (an array
# element) -> every (id, attempt) carrying that tag.
_TagIndex = dict[str, list[tuple[str, int]]]


class BatchScheduler(Scheduler):
    """A backend that submits wrapper scripts to a batch system, by its commands or by
    steps of its own (``submit_unit``, ``query_status``, ...).

    See the module's docstring for the steps and facts a subclass supplies.
    """

    Options: ClassVar[type[SchedulerOptions]] = BatchOptions
    options: BatchOptions

    array_task_var: ClassVar[str | None] = None
    """The environment variable an array element reads its task id from, in the batch
    script the base writes for an array (None: no such script; then the system has no
    arrays, every job is submitted alone, unless ``per_element_scripts``)."""
    per_element_scripts: ClassVar[bool] = False
    """True when ``submit_unit`` names each element's own wrapper in the submission (as
    HTCondor's item data do): an array needs no batch script, and each element carries
    its own job's tag, so recovery reads no ``.jobs`` file."""
    array_first: ClassVar[int] = 0
    """The task id of an array's first element (Slurm 0, SGE 1)."""
    element_sep: ClassVar[str] = "."
    """What joins an array's id and a task id in an element's id (``12_3``, ``12.3``)."""
    clients: ClassVar[tuple[str, ...]] = ()
    """The options naming the commands every run needs (submit, status, kill): ``open``
    refuses a run whose commands are not there, instead of failing each job."""
    max_array: ClassVar[int] = 1000
    """The most elements of one array, unless the system says otherwise (``array_limit``)."""
    chains: ClassVar[bool] = False
    """True when one submission can wait for another (Slurm ``afterany``, SGE
    ``-hold_jid``). Only then does the backend keep ``forks`` itself across arrays
    (``enforces_forks``), so that it is handed a whole batch at once."""
    query_by_id: ClassVar[bool] = True
    """True when the status query takes the ids to report (``squeue -j``); False when it
    lists every job of the user (``qstat -u``) and ``query_status`` gets no ids."""
    query_chunk: ClassVar[int] = 2000
    """The most ids one status or accounting query gets."""
    kill_chunk: ClassVar[int] = 500
    """The most ids one kill gets."""
    tag_style: ClassVar[TagStyle] = TagStyle()

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.array_limit = self.max_array
        """The most elements of one array (a subclass may read it from the system)."""
        self.run_tag = ""
        """Names this workdir in every tag (set by ``open``)."""
        self.batch_dir = ""
        """Where array batch scripts and their ``.jobs`` files go (set by ``open``)."""
        # When a submission last ended with an unknown outcome: an older listing of the
        # queue cannot tell whether that job is there.
        self._unknown_at = 0.0
        self._listing: tuple[float, dict[str, tuple[bool, str]], _TagIndex] | None = None
        self._arrays: dict[str, list[tuple[str, int]]] = {}
        self._placed: dict[Job, tuple[str, int]] = {}

    # -- steps: how the system is reached (override to call a library or an API) ----------
    async def submit_unit(self, sub: Submission) -> str:
        """Submit one ``Submission``; return the id the system gave it (``job_ids`` makes
        each job's id of it). Raise ``SubmissionError`` when nothing was queued (its
        ``transient`` when trying again later may help), ``SubmissionUnknownError`` when
        the outcome is unknown (the job may be queued: it is looked up by its tag first).

        The default runs ``submit_argv`` (stdin ``submit_input``) and reads the id with
        ``parse_submit``, trying again twice a refusal that proves nothing was queued."""
        return await run_submit(
            self.submit_argv(sub),
            self.options.submit_timeout,
            self.stats,
            self.parse_submit,
            input=self.submit_input(sub),
        )

    async def query_status(self, ids: Sequence[str]) -> dict[str, JobState]:
        """One status query: id -> state, as ``parse_status`` documents; raise
        ``SchedulerError`` when the system did not answer (never return an empty answer
        for a failure: every job would vanish). ``ids`` are at most ``query_chunk`` array
        ids, or none when not ``query_by_id``. The default runs ``status_argv``."""
        return await self._query("status", self.status_argv(ids), self.parse_status)

    async def query_accounting(self, ids: Sequence[str]) -> dict[str, JobState]:
        """How these ended jobs (that left no return code) ended, read as ``query_status``
        reads its answer; at most ``query_chunk`` ids. The default runs the
        ``accounting_argvs`` (none: nothing is known)."""
        found: dict[str, JobState] = {}
        for argv in self.accounting_argvs(ids):
            found.update(await self._query("accounting", argv, self.parse_accounting))
        return found

    async def query_accounting_by_tag(self, tag: str) -> dict[str, JobState] | None:
        """The ended jobs carrying ``tag`` (id -> state), to find a job that has left the
        listing; None when not offered (the listing keeps ended jobs long enough, or
        nothing can tell). The default runs ``accounting_by_tag_argv``."""
        argv = self.accounting_by_tag_argv(tag)
        if argv is None:
            return None
        found: dict[str, JobState] = await self._query("accounting", argv, self.parse_accounting)
        return found

    async def kill_ids(self, ids: Sequence[str]) -> Collection[str]:
        """Kill these jobs and array elements (at most ``kill_chunk``); one that has
        already ended is no error. Return the ids the system says had ended before the
        kill (nothing was signalled: their ends are their own). Raise ``SchedulerError``
        when the kill failed. The default runs ``kill_argv`` and ``parse_kill``."""
        return self.parse_kill(await self.run("kill", self.kill_argv(ids)))

    async def list_jobs(self) -> dict[str, tuple[bool, str]] | None:
        """Every job of the user (or of this workdir) as id -> (the system still holds
        it, its tag), for recovery; None: no recovery by tag. The default runs
        ``listing_argv``."""
        argv = self.listing_argv()
        if argv is None:
            return None
        found: dict[str, tuple[bool, str]] = await self._query("listing", argv, self.parse_listing)
        return found

    # -- facts the default steps run and read ------------------------------------------------
    def submit_argv(self, sub: Submission) -> list[str]:
        """The command that submits ``sub`` (its script, tag, throttle and ``after``)."""
        raise NotImplementedError(f"{type(self).__name__} must define submit_argv")

    def submit_input(self, sub: Submission) -> str | None:
        """Standard input of the submit command (a submit description); None for none."""
        return None

    def parse_submit(self, stdout: str) -> str:
        """The id the submit command printed; raise ``ValueError`` when there is none."""
        raise NotImplementedError(f"{type(self).__name__} must define parse_submit")

    def status_argv(self, ids: Sequence[str]) -> list[str]:
        """The status command for these ids (the array ids of elements: one per array)."""
        raise NotImplementedError(f"{type(self).__name__} must define status_argv")

    def parse_status(self, stdout: str) -> dict[str, JobState]:
        """The status command's answer as id -> state; raise on an answer it cannot read.

        A non-final status means the system holds the job (queued, running, suspended);
        a final one is the system's verdict (cancelled, out of time), used when the job
        left no return code, and whose ``failure`` class explains a non-zero one. Leave
        out a job that ended normally: its return code file, else accounting, says how.
        A state with ``kill=True`` asks the engine to remove the job first.
        """
        raise NotImplementedError(f"{type(self).__name__} must define parse_status")

    def accounting_argvs(self, ids: Sequence[str]) -> list[list[str]]:
        """The accounting commands for ended jobs that left no return code (none here)."""
        return []

    def parse_accounting(self, stdout: str) -> dict[str, JobState]:
        """An accounting command's answer, read as ``parse_status`` reads its own."""
        return {}

    def accounting_by_tag_argv(self, tag: str) -> list[str] | None:
        """An accounting command for the jobs carrying ``tag`` (read by
        ``parse_accounting``), to find a job that has ended and left the listing; None
        when the listing keeps ended jobs long enough, or accounting cannot tell."""
        return None

    def kill_argv(self, ids: Sequence[str]) -> list[str]:
        """The command that kills these jobs and array elements."""
        raise NotImplementedError(f"{type(self).__name__} must define kill_argv")

    def parse_kill(self, result: CommandResult) -> Collection[str]:
        """The ids the kill command said had ended before it (default: none known, so a
        job that ended as the kill ran counts as killed)."""
        return ()

    def listing_argv(self) -> list[str] | None:
        """A command listing every job of the user with its tag; None: no recovery by tag."""
        return None

    def parse_listing(self, stdout: str) -> dict[str, tuple[bool, str]]:
        """The listing as id -> (the system still holds it, its tag)."""
        return {}

    def failure_is_answer(self, kind: str, result: CommandResult) -> bool:
        """Whether a non-zero exit of a command is an answer rather than a failure.

        ``kind`` is "status", "accounting", "listing", "explain" or "kill". Return True
        for what means "nothing to report" ("invalid job id": every id was purged; a kill
        of a job that has already ended); its standard output is then parsed as usual.
        """
        return False

    def arrays_possible(self) -> bool:
        """False when the user's own options rule out xqueue's arrays (their own array)."""
        return True

    def chains_possible(self) -> bool:
        """False when the user's own options rule out chaining submissions."""
        return True

    async def explain(self, states: dict[Job, JobState]) -> dict[Job, JobState]:
        """Refine a tick's states with evidence beyond the status command (a reason that
        takes another command, a line in the system's own log of the job)."""
        return states

    # -- what the base does -----------------------------------------------------------------
    @property
    def uses_arrays(self) -> bool:
        """Whether jobs fed together are packed into arrays."""
        has = self.array_task_var is not None or self.per_element_scripts
        return has and self.options.arrays and self.arrays_possible()

    @property
    def enforces_forks(self) -> bool:
        return self.uses_arrays and self.chains and self.chains_possible()

    @property
    def max_batch(self) -> int:
        # Every queued job, when idle (the engine caps it): the batch becomes arrays of
        # array_limit that share forks, chained in lanes when there are more than forks.
        # One array per batch left the rest to trickle out behind it as small arrays,
        # one per tick as slots freed (1,300 jobs took 32 sbatch calls, 10,000 ~900).
        return 1 << 30

    async def open(self, workdir: Workdir) -> None:
        commands = {option: getattr(self.options, option) for option in self.clients}
        found = await anyio.to_thread.run_sync(
            lambda: {option: shutil.which(command) for option, command in commands.items()}
        )
        missing = [option for option, path in found.items() if path is None]
        if missing:
            listed = ", ".join(repr(commands[option]) for option in missing)
            raise SchedulerError(
                f"{self.name}: {listed} not found (no executable of that name on PATH): "
                f"install the {self.name} client commands here, or give their paths as "
                f"options (e.g. -o {missing[0]}=/path/to/{os.path.basename(commands[missing[0]])})"
            )
        await super().open(workdir)
        self.run_tag = run_tag(str(workdir.path))
        self.batch_dir = os.path.join(workdir.path, f".xqueue-{self.name}")

    async def run(
        self, kind: str, argv: Sequence[str], *, input: str | None = None
    ) -> CommandResult:
        """Run one status, accounting, listing, explain or kill command, counted in
        ``stats``; a non-zero exit raises ``SchedulerCommandError`` with the system's own
        words, unless ``failure_is_answer`` says it is an answer."""
        if kind == "kill":
            self.stats.kill_calls += 1
        else:
            self.stats.status_calls += 1
        result = await run_command(
            argv, timeout=self.options.status_timeout, check=False, input=input
        )
        if result.returncode != 0 and not self.failure_is_answer(kind, result):
            raise SchedulerCommandError(argv, result.returncode, result.stderr or result.stdout)
        return result

    def tag(self, job: Job) -> str:
        """The tag of a single job's submission: the workdir, the job and its attempt."""
        style = self.tag_style
        prefix = style.prefix.format(run=self.run_tag)
        return f"{prefix}{job.index}{style.attempt_sep}{attempt_of(job)}"

    def array_tag(self, name: str) -> str:
        """The tag of an array's submission: the workdir and the array's batch name."""
        style = self.tag_style
        return f"{style.prefix.format(run=self.run_tag)}{style.array_mark}{name}"

    def element_id(self, base: str, task: int) -> str:
        return f"{base}{self.element_sep}{task}"

    def job_ids(self, sub: Submission, base: str) -> list[str]:
        """The id of each job of ``sub`` from the id its submit command printed: a single
        job's own, an array's elements (``element_id``). A system that names even a
        single job as an element (HTCondor's ``123.0``) says so here."""
        if sub.tasks is None:
            return [base]
        return [self.element_id(base, task) for task in sub.tasks]

    def array_id(self, jid: str) -> str:
        """The id of the array an element belongs to (a single job's own id)."""
        return jid.split(self.element_sep, 1)[0]

    def placement(self, job: Job) -> tuple[str, int] | None:
        """(batch name, element position) of the array that carried this run's submission
        of the job's current attempt; None for a single job or one this run did not submit."""
        return self._placed.get(job)

    # -- submitting -------------------------------------------------------------------------
    def _write_scripts(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self.write_script(job)

    async def submit_job(self, job: Job) -> str:
        await anyio.to_thread.run_sync(self.write_script, job)
        return (await self._submit_unit([job], None, None))[1][0]

    async def submit_jobs(self, jobs: Sequence[Job]) -> list[str | BaseException]:
        """Arrays of jobs with the same resources, single jobs otherwise, sharing forks.

        The wrapper scripts of the whole batch are written in a worker thread first. A
        failed submission fails only the jobs it carried, with the system's own message.
        """
        await anyio.to_thread.run_sync(self._write_scripts, jobs)
        # A backend that does not keep forks itself is handed no more jobs than forks
        # allows: its units all run side by side, none waits for another.
        forks = self.forks if self.enforces_forks else max(self.forks, len(jobs))
        return await submit_grouped(
            jobs,
            arrays=self.uses_arrays,
            max_array=self.array_limit,
            forks=forks,
            concurrency=self.options.submit_concurrency,
            submit=self._submit_unit,
        )

    async def _submit_unit(
        self, jobs: Sequence[Job], throttle: int | None, after: str | None
    ) -> tuple[str, list[str]]:
        """One submit command for a single job (no throttle) or an array; its scripts are
        written. Returns the id ``after`` names and one id per job."""
        first = self.array_first
        if throttle is not None and self.per_element_scripts:
            for job in jobs:
                self._placed.pop(job, None)
            tasks = range(first, first + len(jobs))
            sub = Submission(tuple(jobs), "", "", throttle, after, None, tasks)
            base = await self._submit(sub)
            return base, self.job_ids(sub, base)
        if throttle is None or self.array_task_var is None:
            (job,) = jobs
            self._placed.pop(job, None)
            sub = Submission((job,), job.attempt_path(SCRIPT), self.tag(job), after=after)
            jid = await self._submit(sub)
            return jid, self.job_ids(sub, jid)
        var = self.array_task_var
        name, script = await anyio.to_thread.run_sync(
            lambda: write_array(self.batch_dir, jobs, var, first)
        )
        tasks = range(first, first + len(jobs))
        sub = Submission(tuple(jobs), script, self.array_tag(name), throttle, after, name, tasks)
        for k, job in enumerate(jobs):
            self._placed[job] = (name, k)
        base = await self._submit(sub)
        return base, self.job_ids(sub, base)

    async def _submit(self, sub: Submission) -> str:
        try:
            return await self.submit_unit(sub)
        except SubmissionUnknownError:
            self._unknown_at = time.monotonic()
            raise

    # -- status -----------------------------------------------------------------------------
    async def _query(self, kind: str, argv: list[str], parse: Any) -> dict[str, Any]:
        result = await self.run(kind, argv)
        found: dict[str, Any] = read_output(argv, result.stdout, parse)
        return found

    async def status(self, ids: Iterable[str]) -> dict[str, JobState]:
        """What the status step says about these jobs (one query per ``query_chunk``)."""
        if not self.query_by_id:
            return await self.query_status(())
        found: dict[str, JobState] = {}
        for part in chunks(sorted({self.array_id(jid) for jid in ids}), self.query_chunk):
            found.update(await self.query_status(part))
        return found

    async def accounting(self, ids: Iterable[str]) -> dict[str, JobState]:
        """What accounting says about these ended jobs (one query per ``query_chunk``)."""
        found: dict[str, JobState] = {}
        for part in chunks(sorted(set(ids)), self.query_chunk):
            found.update(await self.query_accounting(part))
        return found

    def _find(self, states: Mapping[str, JobState], jid: str | None) -> JobState | None:
        """A job's state; an element not split off its array yet shares the array's."""
        if not jid:
            return None
        state = states.get(jid)
        if state is None and self.element_sep in jid:
            state = states.get(self.array_id(jid))
        return state

    async def poll_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobState]:
        seen = await self.status([str(job.jid) for job in jobs if job.jid])
        verdicts: list[tuple[Job, bool, JobState | None]] = []
        gone: list[Job] = []
        for job in jobs:
            state = self._find(seen, job.jid)
            if state is None:
                gone.append(job)
            elif state.status.is_final:
                verdicts.append((job, False, state))
            else:
                verdicts.append((job, True, None))
        # Reading return code files is blocking work: one worker thread per tick.
        unresolved = await anyio.to_thread.run_sync(
            lambda: [job for job in gone if job.jid and read_rc(job) is None]
        )
        acct = await self.accounting(str(job.jid) for job in unresolved) if unresolved else {}
        for job in gone:
            state = self._find(acct, job.jid)
            if state is None or state.status.is_final:
                verdicts.append((job, False, state))
            else:
                verdicts.append((job, True, None))
        states = await anyio.to_thread.run_sync(
            lambda: {job: self.reconcile(job, held, verdict) for job, held, verdict in verdicts}
        )
        return await self.explain(states)

    async def job_is_running(self, job: Job) -> bool:
        return (await self._still_held([job]))[job]

    async def jobs_are_running(self, jobs: Sequence[Job]) -> dict[Job, bool]:
        """Which jobs the system still holds, from one status query; a failed query is
        not evidence that they ended: they count as held."""
        try:
            return await self._still_held(jobs)
        except SchedulerError:
            return dict.fromkeys(jobs, True)

    async def _still_held(self, jobs: Sequence[Job]) -> dict[Job, bool]:
        """One status query; a job whose state asks for its removal (a held one, one
        waiting on a dependency that cannot be met) is still held."""
        ids = [str(job.jid) for job in jobs if job.jid]
        seen = await self.status(ids) if ids else {}
        held: dict[Job, bool] = {}
        for job in jobs:
            state = self._find(seen, job.jid)
            held[job] = state is not None and (not state.status.is_final or state.kill)
        return held

    # -- recovery ---------------------------------------------------------------------------
    async def _listed(self) -> tuple[dict[str, tuple[bool, str]], _TagIndex] | None:
        """Every job of the user (id -> (held, tag)) and this workdir's jobs by tag.

        One listing serves every job re-adopted within a second, but a listing older than
        the last submission with an unknown outcome (or than the end of a submission call
        that outlived its wait) is not reused: it cannot show that job.
        """
        now = time.monotonic()
        cache = self._listing
        since = max(self._unknown_at, self.flights_ended_at)
        if cache is not None and now - cache[0] < 1.0 and cache[0] > since:
            return cache[1], cache[2]
        found = await self.list_jobs()
        if found is None:
            return None
        index = await anyio.to_thread.run_sync(self._index_tags, found)
        self._listing = (now, found, index)
        return found, index

    def _read_tag(self, tag: str) -> tuple[str, int] | None:
        """("#<index>", attempt) of a single job's tag, ("@<batch>", 0) of an array's; None
        for a tag of another workdir or none at all."""
        style = self.tag_style
        prefix = style.prefix.format(run=self.run_tag)
        if not tag.startswith(prefix):
            return None
        rest = tag[len(prefix) :]
        if rest.startswith(style.array_mark):
            return f"@{rest[len(style.array_mark) :]}", 0
        number, _, attempt = rest.partition(style.attempt_sep)
        if not number.isdigit():
            return None
        return f"#{number}", int(attempt) if attempt.isdigit() else 1

    def _index_tags(self, listed: Mapping[str, tuple[bool, str]]) -> _TagIndex:
        """(id, attempt) of this workdir's jobs, under ``#<index>`` or an element's folder.

        Array elements are mapped to folders and attempts by their batch's ``.jobs`` file.
        Blocking (it reads those files).
        """
        index: _TagIndex = {}
        for jid, (_, tag) in listed.items():
            what = self._read_tag(tag)
            if what is None:
                continue
            key, attempt = what
            if key.startswith("@"):
                task = jid.partition(self.element_sep)[2]
                elements = self._elements(key[1:])
                position = int(task) - self.array_first if task.isdigit() else -1
                if 0 <= position < len(elements):
                    jobdir, attempt = elements[position]
                    index.setdefault(jobdir, []).append((jid, attempt))
                continue
            index.setdefault(key, []).append((jid, attempt))
        return index

    def _elements(self, name: str) -> list[tuple[str, int]]:
        if name not in self._arrays:  # written once, never changed: read once
            self._arrays[name] = array_jobdirs(self.batch_dir, name)
        return self._arrays[name]

    async def recover_job(self, job: Job) -> bool:
        """Find a job submitted earlier: by its id, or by its tag; True if still held.

        A submission whose id never came back (the command timed out, the controller died
        right after it) is found all the same. ``job.jid`` is set when the job is found,
        also when it has already ended (its return code file then tells how).
        """
        listed = await self._listed()
        if listed is None:
            return await super().recover_job(job)
        jobs, index = listed
        if job.jid is None:
            tagged = [*index.get(f"#{job.index}", []), *index.get(job.dir, [])]
            job.jid = best_match(job, [(jid, n) for jid, n in tagged if matches(job, n)])
            if job.jid is None:
                job.jid = await self._find_ended(job)
        entry = jobs.get(job.jid or "")
        return entry is not None and entry[0]

    def _array_of(self, job: Job) -> tuple[str, int] | None:
        """(batch name, position) of the array that carried this attempt, newest first.
        Blocking (it reads ``.jobs`` files)."""
        pattern = os.path.join(glob.escape(self.batch_dir), "*.jobs")
        for path in sorted(glob.glob(pattern), reverse=True):
            name = os.path.basename(path)[: -len(".jobs")]
            for k, element in enumerate(self._elements(name)):
                if element == (job.dir, job.attempt):
                    return name, k
        return None

    async def _find_ended(self, job: Job) -> str | None:
        """The id of this attempt once it left the listing, from accounting by its tag."""
        if not self._by_tag_offered():
            return None  # not offered: the listing keeps ended jobs, or nothing can tell
        started = job.attempt_path(STARTED)
        if job.attempt < 1 or not await anyio.to_thread.run_sync(os.path.exists, started):
            return None  # it never started: nothing ran that could run twice
        where = await anyio.to_thread.run_sync(self._array_of, job)
        tag = self.tag(job) if where is None else self.array_tag(where[0])
        records = await self.query_accounting_by_tag(tag)
        if records is None:
            return None
        if where is None:
            # A single job's tag; every element of a per-element array carries one too.
            single = self.per_element_scripts
            ids = [jid for jid in records if single or self.element_sep not in jid]
        else:
            task = str(self.array_first + where[1])
            ids = [jid for jid in records if jid.partition(self.element_sep)[2] == task]
        return max(ids, key=_numbers, default=None)

    def _by_tag_offered(self) -> bool:
        """Whether the subclass offers accounting by tag (either layer of it)."""
        cls, base = type(self), BatchScheduler
        return (
            cls.query_accounting_by_tag is not base.query_accounting_by_tag
            or cls.accounting_by_tag_argv is not base.accounting_by_tag_argv
        )

    # -- killing ----------------------------------------------------------------------------
    async def kill_jobs(self, jobs: Sequence[Job]) -> list[BaseException | None]:
        """One kill for many jobs (``kill_chunk`` ids each); a failed one fails only the
        jobs it carried."""
        ids = [str(job.jid) for job in jobs if job.jid]
        errors: list[BaseException | None] = [None] * len(jobs)
        for part in chunks(ids, self.kill_chunk):
            try:
                ended = set(await self.kill_ids(part))
            except SchedulerError as exc:
                errors = [exc if job.jid in part else e for job, e in zip(jobs, errors)]
                continue
            errors = [
                JobAlreadyEnded(f"{job.jid} had ended: nothing to kill") if job.jid in ended else e
                for job, e in zip(jobs, errors)
            ]
        return errors

    async def kill_job(self, job: Job) -> None:
        (error,) = await self.kill_jobs([job])
        if error is not None:
            raise error

    def forget(self, job: Job) -> None:
        super().forget(job)
        self._placed.pop(job, None)


def _numbers(jid: str) -> list[int]:
    """An id's numbers, for ordering ids by age (``12.3`` -> [12, 3])."""
    return [int(p) for p in re.split(r"\D+", jid) if p]
