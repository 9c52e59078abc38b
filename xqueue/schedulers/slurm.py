"""Slurm: ``sbatch`` to submit (arrays for homogeneous jobs), one ``squeue`` per tick.

Every option of ``scheduler_opts`` that is not one of xqueue's own knobs goes to
``sbatch`` as a long option (``partition="gpu"`` -> ``--partition=gpu``; a one-letter
key such as ``p`` is read as its long name). A job's portable ``resources`` become
``--cpus-per-task``, ``--mem``, ``--gres=gpu:N`` and ``--time`` (the ``timeout`` option
for a job with no walltime of its own); an option given in ``scheduler_opts`` wins over
the mapped one.

Status: one ``squeue -t all -r`` per tick for every active job (array elements
expanded), then, for jobs Slurm no longer lists (after ``MinJobAge``), the wrapper's
return code file, then one ``sacct`` for all of them when accounting is on, and
finally the "vanished" verdict after ``vanish_grace``. A job pending on a dependency
that can never be satisfied is failed and cancelled instead of waiting for ever.

Slurm's own verdicts carry a failure class: TIMEOUT, OUT_OF_MEMORY, PREEMPTED,
NODE_FAIL. A step that Slurm's accounting killed for exceeding ``--mem``
(``JobAcctGatherParams=OverMemoryKill``) ends as a plain FAILED with signal 9: the
line slurmstepd wrote into the job's Slurm output is the evidence that makes it an OOM.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pwd
import time
from collections.abc import Sequence
from typing import Any

import anyio

from ..errors import SchedulerError, SubmissionUnknownError, WorkdirError
from ..failures import FailureClass, timed_out
from ..job import SCRIPT, Job
from ..options import SchedulerOptions
from ..scheduler import JobState, Scheduler
from ..states import JobStatus
from ..workdir import read_rc, read_text
from . import _slurm_parse as parse
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
    submit_grouped,
    write_array,
)
from ._process import SchedulerCommandError, read_output, run_command

# sbatch's one-letter options, read as their long names so a raw option and a mapped
# one meet under one key (and the raw one wins).
_SHORT = {
    "A": "account",
    "a": "array",
    "C": "constraint",
    "c": "cpus-per-task",
    "d": "dependency",
    "D": "chdir",
    "e": "error",
    "G": "gpus",
    "J": "job-name",
    "N": "nodes",
    "n": "ntasks",
    "o": "output",
    "p": "partition",
    "q": "qos",
    "t": "time",
    "w": "nodelist",
}
_KILL_CHUNK = 500
# Tagged jobs of this workdir: "#<index>" (a single job) or a job folder (an array
# element) -> every (id, attempt) carrying that tag.
_TagIndex = dict[str, list[tuple[str, int]]]
# Every job of the user: id -> (row, comment).
_Listing = dict[str, tuple[parse.SlurmRow, str]]
_QUERY_CHUNK = 2000


@dataclasses.dataclass
class SlurmOptions(SchedulerOptions):
    arrays: bool = True
    """Submit jobs fed together with the same resources as one array (``--array=...%forks``)."""
    accounting: bool | None = None
    """Whether ``sacct`` works; None detects it from ``scontrol show config`` once."""
    submit_timeout: float = 60.0
    """Seconds an ``sbatch`` may take before it counts as failed."""
    status_timeout: float = 60.0
    """Seconds a ``squeue``/``sacct``/``scancel`` may take."""
    sbatch: str = "sbatch"
    """The ``sbatch`` command (a name on PATH or a path); likewise the four below."""
    squeue: str = "squeue"
    """The ``squeue`` command: one call per tick for every active job."""
    sacct: str = "sacct"
    """The ``sacct`` command, for jobs ``squeue`` has forgotten."""
    scancel: str = "scancel"
    """The ``scancel`` command."""
    scontrol: str = "scontrol"
    """The ``scontrol`` command (configuration and recovery by tag)."""

    accepts_extra = True


def literal_path(path: str) -> str:
    """``path`` as an ``--output`` pattern that names it: sbatch replaces ``%j``, ``%a``...
    in it, so a ``%`` of the path itself is doubled."""
    return path.replace("%", "%%")


def sbatch_options(job: Job | None, extra: dict[str, Any], timeout: float = 0.0) -> dict[str, Any]:
    """The long options for one job (or one array group): mapped resources, then raw ones.

    ``timeout`` (the scheduler option) is the walltime of a job that gives none."""
    opts: dict[str, Any] = {}
    res = job.resources if job is not None else None
    if res is not None:
        if res.cpus:
            opts["cpus-per-task"] = res.cpus
        if res.memory_mb:
            opts["mem"] = f"{res.memory_mb}M"
        if res.gpus:
            opts["gres"] = f"gpu:{res.gpus}"
    walltime = res.walltime_s if res is not None and res.walltime_s else timeout
    if job is not None and walltime:
        opts["time"] = hms(math.ceil(walltime))
    for key, value in extra.items():
        name = str(key).lstrip("-")
        name = _SHORT.get(name, name.replace("_", "-"))
        opts[name] = value
    return opts


class SlurmScheduler(Scheduler):
    """Jobs are Slurm batch jobs (array elements when submitted together)."""

    name = "slurm"
    Options = SlurmOptions
    enforces_walltime = True
    options: SlurmOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._max_array = 1001
        self._accounting = self.options.accounting
        self._tag = ""
        self._batch_dir = ""
        self._user = pwd.getpwuid(os.getuid()).pw_name
        self._queue_cache: tuple[float, _Listing, _TagIndex] | None = None
        # When a submission last ended with an unknown outcome: an older listing of the
        # queue cannot tell whether that job is there.
        self._unknown_at = 0.0
        self._arrays: dict[str, list[tuple[str, int]]] = {}
        self._logs: dict[Job, str] = {}  # the Slurm output file of each job's attempt

    @property
    def max_batch(self) -> int:
        return self._max_array

    @property
    def enforces_forks(self) -> bool:
        # Arrays that wait for each other (see _forks) need their dependency joined to
        # the user's: "a?b" (any of) cannot be joined with an "and".
        raw = sbatch_options(None, self.options.extra)
        return self.options.arrays and "array" not in raw and "?" not in self._user_dependency()

    def _user_dependency(self) -> str:
        return str(sbatch_options(None, self.options.extra).get("dependency") or "")

    async def open(self, workdir: Any) -> None:
        await super().open(workdir)
        self._tag = run_tag(str(workdir.path))
        self._batch_dir = os.path.join(workdir.path, ".xqueue-slurm")
        argv = [self.options.scontrol, "show", "config"]
        try:
            result = await run_command(argv, timeout=self.options.status_timeout)
            config = read_output(argv, result.stdout, parse.parse_config)
        except SchedulerError:
            return  # the defaults hold; sbatch will say what is wrong
        size = config.get("MaxArraySize", "")
        if size.isdigit() and int(size) > 1:
            self._max_array = int(size)
        if self._accounting is None:
            self._accounting = "accounting_storage/none" not in config.get(
                "AccountingStorageType", "accounting_storage/none"
            )

    # -- submitting ------------------------------------------------------------------
    def _comment(self, job: Job) -> str:
        """The tag ``recover_job`` looks for: this workdir, the job and its attempt."""
        return f"xqueue:{self._tag}:{job.index}.{attempt_of(job)}"

    def _argv(self, opts: dict[str, Any], script: str) -> list[str]:
        return [self.options.sbatch, "--parsable", *long_options(opts), script]

    def _dependency(self, after: str | None) -> dict[str, str]:
        """``--dependency``: the user's, and (all of) the unit this one waits for."""
        if after is None:
            return {}
        user = self._user_dependency()
        return {"dependency": f"{user},afterany:{after}" if user else f"afterany:{after}"}

    async def _sbatch(self, argv: list[str]) -> str:
        try:
            return await run_submit(
                argv, self.options.submit_timeout, self.stats, parse.parse_jobid
            )
        except SubmissionUnknownError:
            self._unknown_at = time.monotonic()
            raise

    def _write_scripts(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self.write_script(job)

    async def submit_job(self, job: Job) -> str:
        await anyio.to_thread.run_sync(self.write_script, job)
        return (await self._submit([job], None, None))[0]

    async def _submit(
        self, jobs: Sequence[Job], throttle: int | None, after: str | None
    ) -> tuple[str, list[str]]:
        """One sbatch: a single job (no throttle) or an array; scripts are written."""
        if throttle is None:
            (job,) = jobs
            opts = {
                "job-name": job_name(job.name),
                "output": literal_path(job.path("slurm.log")),
                "comment": self._comment(job),
                "kill-on-invalid-dep": "yes",
                **sbatch_options(job, self.options.extra, self.options.timeout),
                **self._dependency(after),
            }
            self._logs[job] = job.path("slurm.log")
            jid = await self._sbatch(self._argv(opts, job.attempt_path(SCRIPT)))
            return jid, [jid]
        name, script = await anyio.to_thread.run_sync(
            lambda: write_array(self._batch_dir, jobs, "SLURM_ARRAY_TASK_ID", 0)
        )
        opts = {
            "job-name": job_name(f"xqueue-{jobs[0].name}"),
            "output": os.path.join(literal_path(self._batch_dir), f"{name}-%a.log"),
            "comment": f"xqueue:{self._tag}:@{name}",
            "kill-on-invalid-dep": "yes",
            "array": f"0-{len(jobs) - 1}%{throttle}",
            **sbatch_options(jobs[0], self.options.extra, self.options.timeout),
            **self._dependency(after),
        }
        for i, job in enumerate(jobs):
            self._logs[job] = os.path.join(self._batch_dir, f"{name}-{i}.log")
        base = await self._sbatch(self._argv(opts, script))
        return base, [f"{base}_{i}" for i in range(len(jobs))]

    async def submit_jobs(self, jobs: Sequence[Job]) -> list[str | BaseException]:
        """Arrays of jobs with the same resources, single jobs otherwise, sharing forks.

        A failed ``sbatch`` fails only the jobs it carried, with Slurm's own message;
        one whose outcome is unknown gives each of its jobs ``SubmissionUnknownError``.
        The wrapper scripts of the whole batch are written in a worker thread first.
        """
        await anyio.to_thread.run_sync(self._write_scripts, jobs)
        return await submit_grouped(
            jobs,
            arrays=self.enforces_forks,
            max_array=self._max_array,
            forks=self.forks,
            concurrency=self.options.submit_concurrency,
            submit=self._submit,
        )

    # -- status ----------------------------------------------------------------------
    async def _squeue(self, ids: Sequence[str]) -> dict[str, parse.SlurmRow]:
        """One ``squeue`` for these ids (array elements expanded); {} if Slurm forgot them all."""
        rows: dict[str, parse.SlurmRow] = {}
        for part in chunks(sorted(set(ids)), _QUERY_CHUNK):
            self.stats.status_calls += 1
            argv = [self.options.squeue, "-h", "-r", "-t", "all", "-o", parse.SQUEUE_FORMAT]
            argv += ["-j", ",".join(part)]
            try:
                result = await run_command(argv, timeout=self.options.status_timeout)
            except SchedulerCommandError as exc:
                if "Invalid job id" in exc.stderr:
                    continue  # every id in the list has been purged
                raise
            rows.update(read_output(argv, result.stdout, parse.parse_squeue))
        return rows

    async def _sacct(self, ids: Sequence[str]) -> dict[str, parse.SlurmRow]:
        if not ids or self._accounting is False:
            return {}
        self.stats.status_calls += 1
        argv = [self.options.sacct, "-n", "-P", "-X", "-o", parse.SACCT_FIELDS]
        argv += ["-j", ",".join(sorted(set(ids)))]
        try:
            result = await run_command(argv, timeout=self.options.status_timeout)
        except SchedulerCommandError as exc:
            if "accounting storage is disabled" in exc.stderr.lower():
                self._accounting = False
                return {}
            raise
        return read_output(argv, result.stdout, parse.parse_sacct)

    async def poll_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobState]:
        known = [job for job in jobs if job.jid]
        rows = await self._squeue([str(job.jid).split("_")[0] for job in known])
        held: list[tuple[Job, bool, JobState | None]] = []
        gone: list[Job] = []
        never: list[Job] = []
        for job in jobs:
            row = parse.lookup(rows, job.jid or "")
            if row is None or row.state in parse.ENDED:
                gone.append(job)
                continue
            ended = parse.terminal_state(row)
            if ended is not None and row.state == "PENDING":
                never.append(job)
            held.append((job, ended is None, ended))
        # Reading return code files is blocking work: one worker thread per tick.
        unresolved = await anyio.to_thread.run_sync(
            lambda: [job for job in gone if job.jid and read_rc(job) is None]
        )
        acct = await self._sacct([str(job.jid) for job in unresolved]) if unresolved else {}
        for job in gone:
            row = parse.lookup(acct, job.jid or "")
            verdict = parse.accounting_state(row) if row else None
            held.append((job, row is not None and row.state in parse.HELD, verdict))
        states = await anyio.to_thread.run_sync(
            lambda: {job: self.reconcile(job, alive, verdict) for job, alive, verdict in held}
        )
        for job in never:
            # Cancelled by the engine (through the kill veto), then recorded as this state.
            state = states[job]
            if state.status.is_final:
                states[job] = dataclasses.replace(state, kill=True)
        suspects = [
            job
            for job, state in states.items()
            if state.status is JobStatus.FAILED
            and state.failure in (None, FailureClass.VANISHED)
            and state.rc in (None, 128 + 9)
        ]
        if suspects:  # a step killed for its memory says so only in its output
            found = await anyio.to_thread.run_sync(
                lambda: {j: self._memory_kill(j) for j in suspects}
            )
            for job, line in found.items():
                if line:
                    states[job] = self._out_of_memory(job, states[job], line)
        for job, state in states.items():
            if state.failure is FailureClass.TIMEOUT:
                states[job] = dataclasses.replace(state, reason=self._timed_out(job))
        return states

    def _memory_kill(self, job: Job) -> str | None:
        """slurmstepd's line about a memory kill in the attempt's Slurm output. Blocking."""
        path = self._logs.get(job)
        if path is None and job.jid and "_" not in job.jid:
            path = job.path("slurm.log")  # re-adopted single job: its own file
        try:
            text = read_text(path) if path else None
        except WorkdirError:
            return None
        return parse.memory_kill(text) if text else None

    @staticmethod
    def _out_of_memory(job: Job, state: JobState, line: str) -> JobState:
        limit = job.resources.memory_mb if job.resources else None
        what = f"its {limit} MiB" if limit else "its memory limit"
        why = f"out of memory: Slurm killed it for using more than {what} ({line})"
        return dataclasses.replace(state, reason=why, failure=FailureClass.OOM)

    def _timed_out(self, job: Job) -> str:
        raw = sbatch_options(None, self.options.extra).get("time")
        limit = self.walltime(job)
        if raw is not None or not limit:  # given as sbatch's own option, or by the site
            return f"timed out at its Slurm time limit ({raw or 'set outside xqueue'}; TIMEOUT)"
        # Slurm counts time limits in whole minutes.
        return timed_out(math.ceil(limit / 60) * 60, "Slurm TIMEOUT")

    async def job_is_running(self, job: Job) -> bool:
        if not job.jid:
            return False
        row = parse.lookup(await self._squeue([job.jid.split("_")[0]]), job.jid)
        return row is not None and row.state in parse.HELD

    # -- resume ----------------------------------------------------------------------
    async def _my_jobs(self) -> tuple[_Listing, _TagIndex]:
        """Every job of this user (jid -> (row, comment)) and this workdir's jobs by tag.

        One squeue serves every job re-adopted within a second, but a listing older than
        the last submission with an unknown outcome is not reused: it cannot show that job.
        """
        now = time.monotonic()
        cache = self._queue_cache
        if cache is not None and now - cache[0] < 1.0 and cache[0] > self._unknown_at:
            return cache[1], cache[2]
        self.stats.status_calls += 1
        argv = [self.options.squeue, "-h", "-r", "-t", "all", "-u", self._user, "-o", "%i|%T|%r|%k"]
        result = await run_command(argv, timeout=self.options.status_timeout)
        found = read_output(argv, result.stdout, parse.parse_my_jobs)
        index = await anyio.to_thread.run_sync(self._index_tags, found)
        self._queue_cache = (now, found, index)
        return found, index

    def _index_tags(self, mine: _Listing) -> _TagIndex:
        """(id, attempt) of this workdir's jobs, under ``#<index>`` or an element's folder.

        Array elements are mapped to folders and attempts by their batch's ``.jobs`` file.
        """
        prefix = f"xqueue:{self._tag}:"
        index: _TagIndex = {}
        for jid, (_, comment) in mine.items():
            if not comment.startswith(prefix):
                continue
            what = comment[len(prefix) :]
            if what.startswith("@"):
                element = jid.partition("_")[2]
                elements = self._elements(what[1:])
                if element.isdigit() and int(element) < len(elements):
                    jobdir, attempt = elements[int(element)]
                    index.setdefault(jobdir, []).append((jid, attempt))
                continue
            number, _, attempt_text = what.partition(".")
            attempt = int(attempt_text) if attempt_text.isdigit() else 1
            index.setdefault(f"#{number}", []).append((jid, attempt))
        return index

    def _elements(self, name: str) -> list[tuple[str, int]]:
        if name not in self._arrays:  # written once, never changed: read once
            self._arrays[name] = array_jobdirs(self._batch_dir, name)
        return self._arrays[name]

    async def recover_job(self, job: Job) -> bool:
        """Find a job submitted earlier: by its id, or by its ``--comment``; True if held.

        The comment names the workdir, the job's index and attempt (or, for an array,
        the batch whose ``.jobs`` file maps elements to job folders and attempts), so a
        submission whose id never came back (sbatch timed out, the controller died
        right after it) is found all the same. ``job.jid`` is set when the job is found,
        also when it has already ended (its return code file then tells how).
        """
        mine, index = await self._my_jobs()
        if job.jid is None:
            tagged = [*index.get(f"#{job.index}", []), *index.get(job.dir, [])]
            job.jid = best_match(job, [(jid, n) for jid, n in tagged if matches(job, n)])
        entry = mine.get(job.jid or "")
        return entry is not None and entry[0].state in parse.HELD

    # -- killing ---------------------------------------------------------------------
    async def kill_jobs(self, jobs: Sequence[Job]) -> list[BaseException | None]:
        """One ``scancel`` for many jobs; ids that already ended are not an error to Slurm."""
        ids = [job.jid for job in jobs if job.jid]
        errors: list[BaseException | None] = [None] * len(jobs)
        for part in chunks(ids, _KILL_CHUNK):
            self.stats.kill_calls += 1
            try:
                await run_command(
                    [self.options.scancel, *part], timeout=self.options.status_timeout
                )
            except SchedulerError as exc:
                errors = [exc if job.jid in part else e for job, e in zip(jobs, errors)]
        return errors

    async def kill_job(self, job: Job) -> None:
        (error,) = await self.kill_jobs([job])
        if error is not None:
            raise error

    def forget(self, job: Job) -> None:
        super().forget(job)
        self._logs.pop(job, None)
