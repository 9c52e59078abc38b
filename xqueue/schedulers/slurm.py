"""Slurm: ``sbatch`` to submit (arrays for homogeneous jobs), one ``squeue`` per tick.

Every option of ``scheduler_opts`` that is not one of xqueue's own knobs goes to
``sbatch`` as a long option (``partition="gpu"`` -> ``--partition=gpu``; a one-letter
key such as ``p`` is read as its long name). A job's portable ``resources`` become
``--cpus-per-task``, ``--mem``, ``--gres=gpu:N`` and ``--time``; an option given in
``scheduler_opts`` wins over the mapped one.

Status: one ``squeue -t all -r`` per tick for every active job (array elements
expanded), then, for jobs Slurm no longer lists (after ``MinJobAge``), the wrapper's
return code file, then one ``sacct`` for all of them when accounting is on, and
finally the "vanished" verdict after ``vanish_grace``. A job pending on a dependency
that can never be satisfied is failed and cancelled instead of waiting for ever.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import time
from collections.abc import Sequence
from typing import Any

from ..errors import SchedulerError
from ..job import Job
from ..options import SchedulerOptions
from ..scheduler import JobState, Scheduler
from ..workdir import read_rc
from . import _slurm_parse as parse
from ._cluster import (
    array_jobdirs,
    chunks,
    hms,
    job_name,
    long_options,
    run_submit,
    run_tag,
    submit_grouped,
    write_array,
)
from ._process import SchedulerCommandError, run_command

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
    squeue: str = "squeue"
    sacct: str = "sacct"
    scancel: str = "scancel"
    scontrol: str = "scontrol"

    accepts_extra = True


def literal_path(path: str) -> str:
    """``path`` as an ``--output`` pattern that names it: sbatch replaces ``%j``, ``%a``...
    in it, so a ``%`` of the path itself is doubled."""
    return path.replace("%", "%%")


def sbatch_options(job: Job | None, extra: dict[str, Any]) -> dict[str, Any]:
    """The long options for one job (or one array group): mapped resources, then raw ones."""
    opts: dict[str, Any] = {}
    res = job.resources if job is not None else None
    if res is not None:
        if res.cpus:
            opts["cpus-per-task"] = res.cpus
        if res.memory_mb:
            opts["mem"] = f"{res.memory_mb}M"
        if res.gpus:
            opts["gres"] = f"gpu:{res.gpus}"
        if res.walltime_s:
            opts["time"] = hms(res.walltime_s)
    for key, value in extra.items():
        name = str(key).lstrip("-")
        name = _SHORT.get(name, name.replace("_", "-"))
        opts[name] = value
    return opts


class SlurmScheduler(Scheduler):
    """Jobs are Slurm batch jobs (array elements when submitted together)."""

    name = "slurm"
    Options = SlurmOptions
    options: SlurmOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._max_array = 1001
        self._accounting = self.options.accounting
        self._tag = ""
        self._batch_dir = ""
        self._user = pwd.getpwuid(os.getuid()).pw_name
        self._queue_cache: tuple[float, dict[str, tuple[parse.SlurmRow, str]]] | None = None

    @property
    def max_batch(self) -> int:
        return self._max_array

    @property
    def enforces_forks(self) -> bool:
        return self.options.arrays and "array" not in self._raw_keys()

    def _raw_keys(self) -> set[str]:
        return set(sbatch_options(None, self.options.extra))

    async def open(self, workdir: Any) -> None:
        await super().open(workdir)
        self._tag = run_tag(str(workdir.path))
        self._batch_dir = os.path.join(workdir.path, ".xqueue-slurm")
        try:
            result = await run_command(
                [self.options.scontrol, "show", "config"], timeout=self.options.status_timeout
            )
        except SchedulerError:
            return  # the defaults hold; sbatch will say what is wrong
        config = parse.parse_config(result.stdout)
        size = config.get("MaxArraySize", "")
        if size.isdigit() and int(size) > 1:
            self._max_array = int(size)
        if self._accounting is None:
            self._accounting = "accounting_storage/none" not in config.get(
                "AccountingStorageType", "accounting_storage/none"
            )

    # -- submitting ------------------------------------------------------------------
    def _comment(self, job: Job) -> str:
        return f"xqueue:{self._tag}:{job.index}"

    def _argv(self, opts: dict[str, Any], script: str) -> list[str]:
        return [self.options.sbatch, "--parsable", *long_options(opts), script]

    async def _sbatch(self, argv: list[str]) -> str:
        stdout = await run_submit(argv, self.options.submit_timeout, self.stats)
        try:
            return parse.parse_jobid(stdout)
        except ValueError as exc:
            raise SchedulerError(str(exc)) from exc

    async def submit_job(self, job: Job) -> str:
        script = self.write_script(job)
        opts = {
            "job-name": job_name(job.name),
            "output": literal_path(job.path("slurm.log")),
            "comment": self._comment(job),
            "kill-on-invalid-dep": "yes",
            **sbatch_options(job, self.options.extra),
        }
        return await self._sbatch(self._argv(opts, script))

    async def _submit_array(self, jobs: Sequence[Job], throttle: int) -> list[str]:
        for job in jobs:
            self.write_script(job)
        name, script = write_array(self._batch_dir, jobs, "SLURM_ARRAY_TASK_ID", 0)
        opts = {
            "job-name": job_name(f"xqueue-{jobs[0].name}"),
            "output": os.path.join(literal_path(self._batch_dir), f"{name}-%a.log"),
            "comment": f"xqueue:{self._tag}:@{name}",
            "kill-on-invalid-dep": "yes",
            "array": f"0-{len(jobs) - 1}%{throttle}",
            **sbatch_options(jobs[0], self.options.extra),
        }
        base = await self._sbatch(self._argv(opts, script))
        return [f"{base}_{i}" for i in range(len(jobs))]

    async def submit_jobs(self, jobs: Sequence[Job]) -> list[str | BaseException]:
        """One array per group of jobs with the same resources; single jobs otherwise.

        A failed ``sbatch`` fails only the jobs it carried, with Slurm's own message.
        """
        return await submit_grouped(
            jobs,
            arrays=self.enforces_forks,
            max_array=self._max_array,
            forks=self.forks,
            concurrency=self.options.submit_concurrency,
            one=self.submit_job,
            array=self._submit_array,
        )

    # -- status ----------------------------------------------------------------------
    async def _squeue(self, ids: Sequence[str]) -> dict[str, parse.SlurmRow]:
        """One ``squeue`` for these ids (array elements expanded); {} if Slurm forgot them all."""
        rows: dict[str, parse.SlurmRow] = {}
        for part in chunks(sorted(set(ids)), _QUERY_CHUNK):
            self.stats.status_calls += 1
            argv = [self.options.squeue, "-h", "-r", "-t", "all", "-o", parse.SQUEUE_FORMAT]
            try:
                result = await run_command(
                    [*argv, "-j", ",".join(part)], timeout=self.options.status_timeout
                )
            except SchedulerCommandError as exc:
                if "Invalid job id" in exc.stderr:
                    continue  # every id in the list has been purged
                raise
            rows.update(parse.parse_squeue(result.stdout))
        return rows

    async def _sacct(self, ids: Sequence[str]) -> dict[str, parse.SlurmRow]:
        if not ids or self._accounting is False:
            return {}
        self.stats.status_calls += 1
        argv = [self.options.sacct, "-n", "-P", "-X", "-o", parse.SACCT_FIELDS]
        try:
            result = await run_command(
                [*argv, "-j", ",".join(sorted(set(ids)))], timeout=self.options.status_timeout
            )
        except SchedulerCommandError as exc:
            if "accounting storage is disabled" in exc.stderr.lower():
                self._accounting = False
                return {}
            raise
        return parse.parse_sacct(result.stdout)

    async def poll_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobState]:
        known = [job for job in jobs if job.jid]
        rows = await self._squeue([str(job.jid).split("_")[0] for job in known])
        states: dict[Job, JobState] = {}
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
            states[job] = self.reconcile(job, ended is None, ended)
        unresolved = [job for job in gone if read_rc(job) is None and job.jid]
        acct = await self._sacct([str(job.jid) for job in unresolved]) if unresolved else {}
        for job in gone:
            row = parse.lookup(acct, job.jid or "")
            verdict = parse.accounting_state(row) if row else None
            held = row is not None and row.state in parse.HELD
            states[job] = self.reconcile(job, held, verdict)
        if never:
            await self.kill_jobs(never)
        return states

    async def job_is_running(self, job: Job) -> bool:
        if not job.jid:
            return False
        row = parse.lookup(await self._squeue([job.jid.split("_")[0]]), job.jid)
        return row is not None and row.state in parse.HELD

    # -- resume ----------------------------------------------------------------------
    async def _my_jobs(self) -> dict[str, tuple[parse.SlurmRow, str]]:
        """jid -> (row, comment) for every job of this user; one squeue per second of resume."""
        now = time.monotonic()
        if self._queue_cache is not None and now - self._queue_cache[0] < 1.0:
            return self._queue_cache[1]
        self.stats.status_calls += 1
        result = await run_command(
            [self.options.squeue, "-h", "-r", "-t", "all", "-u", self._user, "-o", "%i|%T|%r|%k"],
            timeout=self.options.status_timeout,
        )
        found: dict[str, tuple[parse.SlurmRow, str]] = {}
        for line in result.stdout.splitlines():
            parts = line.strip().split("|", 3)
            if len(parts) == 4:
                found[parts[0]] = (parse.SlurmRow(parts[1], parts[2]), parts[3])
        self._queue_cache = (now, found)
        return found

    async def recover_job(self, job: Job) -> bool:
        """Re-adopt a job an earlier run submitted: by its id, or by its ``--comment``.

        The comment names the workdir and the job's index (or, for an array, the batch
        whose ``.jobs`` file maps elements to job folders), so a job submitted by a
        controller that died before it recorded the id is found all the same.
        """
        mine = await self._my_jobs()
        if job.jid is None:
            job.jid = self._find_by_comment(job, mine)
        entry = mine.get(job.jid or "")
        return entry is not None and entry[0].state in parse.HELD

    def _find_by_comment(self, job: Job, mine: dict[str, tuple[parse.SlurmRow, str]]) -> str | None:
        prefix = f"xqueue:{self._tag}:"
        for jid, (_, comment) in mine.items():
            if not comment.startswith(prefix):
                continue
            what = comment[len(prefix) :]
            if what == str(job.index):
                return jid
            if what.startswith("@") and "_" in jid:
                element = jid.partition("_")[2]
                dirs = array_jobdirs(self._batch_dir, what[1:])
                if element.isdigit() and int(element) < len(dirs) and dirs[int(element)] == job.dir:
                    return jid
        return None

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
