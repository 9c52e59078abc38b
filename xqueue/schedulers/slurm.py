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
import logging
import math
import os
import pwd
from collections.abc import Collection, Sequence
from typing import Any

import anyio

from ..errors import SchedulerError, SchedulerOptionError, WorkdirError
from ..failures import FailureClass, timed_out
from ..job import Job
from ..scheduler import JobState
from ..states import JobStatus
from ..workdir import read_text
from . import _slurm_parse as parse
from ._process import read_output, run_command
from .batch import (
    BatchOptions,
    BatchScheduler,
    CommandResult,
    Submission,
    TagStyle,
    hms,
    job_name,
    long_options,
)

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


@dataclasses.dataclass
class SlurmOptions(BatchOptions):
    accounting: bool | None = None
    """Whether ``sacct`` works; None detects it from ``scontrol show config`` once."""
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


def literal_path(path: str) -> str:
    """``path`` as an ``--output`` pattern that names it: sbatch replaces ``%j``, ``%a``...
    in it, so a ``%`` of the path itself is doubled (a backslash, which turns the
    replacements off, is refused when the run opens)."""
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


def sbatch_argv(sbatch: str, opts: dict[str, Any], script: str) -> list[str]:
    return [sbatch, "--parsable", *long_options(opts), script]


log = logging.getLogger("xqueue.slurm")


class SlurmScheduler(BatchScheduler):
    """Jobs are Slurm batch jobs (array elements when submitted together)."""

    name = "slurm"
    Options = SlurmOptions
    enforces_walltime = True
    options: SlurmOptions
    clients = ("sbatch", "squeue", "scancel")

    array_task_var = "SLURM_ARRAY_TASK_ID"
    array_first = 0
    element_sep = "_"
    max_array = 1001
    chains = True
    tag_style = TagStyle("xqueue:{run}:", ".", "@")  # in --comment

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._accounting = self.options.accounting
        self._user = pwd.getpwuid(os.getuid()).pw_name
        self._stuck: dict[str, str] = {}  # job id -> the pending reason said (``_say_stuck``)

    def _raw(self) -> dict[str, Any]:
        return sbatch_options(None, self.options.extra)

    def arrays_possible(self) -> bool:
        return "array" not in self._raw()  # the user's own --array

    def chains_possible(self) -> bool:
        # Arrays that wait for each other (see _forks) need their dependency joined to
        # the user's: "a?b" (any of) cannot be joined with an "and".
        return "?" not in str(self._raw().get("dependency") or "")

    async def open(self, workdir: Any) -> None:
        if "\\" in str(workdir.path):
            # In an --output pattern a backslash turns off every %-replacement (the
            # arrays' %a) and is dropped: slurmd opened another path, and each job
            # failed with "the wrapper wrote none" (JobLaunchFailure).
            raise SchedulerOptionError(
                f"slurm: the workdir path {str(workdir.path)!r} holds a backslash, which "
                "sbatch's --output cannot name; choose a workdir without one"
            )
        await super().open(workdir)
        argv = [self.options.scontrol, "show", "config"]
        try:
            result = await run_command(argv, timeout=self.options.status_timeout)
            config = read_output(argv, result.stdout, parse.parse_config)
        except SchedulerError:
            return  # the defaults hold; sbatch will say what is wrong
        size = config.get("MaxArraySize", "")
        if size.isdigit() and int(size) > 1:
            self.array_limit = int(size)
        if self._accounting is None:
            self._accounting = "accounting_storage/none" not in config.get(
                "AccountingStorageType", "accounting_storage/none"
            )

    # -- submitting ------------------------------------------------------------------
    def submit_argv(self, sub: Submission) -> list[str]:
        """``--comment`` carries the tag; every directive is on the command line."""
        opts: dict[str, Any] = {"job-name": job_name(sub.job.name)}
        if sub.tasks is None:
            opts["output"] = literal_path(sub.job.path("slurm.log"))
        else:
            opts["job-name"] = job_name(f"xqueue-{sub.job.name}")
            opts["output"] = self._array_log(str(sub.name), "%a", literal_path(self.batch_dir))
            opts["array"] = f"{sub.tasks[0]}-{sub.tasks[-1]}%{sub.throttle}"
        opts.update({"comment": sub.tag, "kill-on-invalid-dep": "yes"})
        opts.update(sbatch_options(sub.job, self.options.extra, self.options.timeout))
        if sub.after is not None:  # the user's dependency, and (all of) the unit before
            user = str(self._raw().get("dependency") or "")
            opts["dependency"] = f"{user},afterany:{sub.after}" if user else f"afterany:{sub.after}"
        return sbatch_argv(self.options.sbatch, opts, sub.script)

    def parse_submit(self, stdout: str) -> str:
        return parse.parse_jobid(stdout)

    def _array_log(self, name: str, task: str, folder: str | None = None) -> str:
        return os.path.join(folder or self.batch_dir, f"{name}-{task}.log")

    # -- status ----------------------------------------------------------------------
    def status_argv(self, ids: Sequence[str]) -> list[str]:
        """Array elements expanded (``-r``), ended jobs too (``-t all``, for MinJobAge)."""
        argv = [self.options.squeue, "-h", "-r", "-t", "all", "-o", parse.SQUEUE_FORMAT]
        return [*argv, "-j", ",".join(ids)]

    def parse_status(self, stdout: str) -> dict[str, JobState]:
        states: dict[str, JobState] = {}
        for jid, row in parse.parse_squeue(stdout).items():
            if row.state in parse.ENDED:
                continue  # COMPLETED or FAILED: the rc file, else sacct, has the verdict
            ended = parse.terminal_state(row)
            if ended is None:
                pending = row.state == "PENDING"
                if pending and row.reason in parse.STUCK_REASONS:
                    self._say_stuck(jid, row.reason)
                states[jid] = JobState(JobStatus.SUBMITTED if pending else JobStatus.RUNNING)
            elif row.state == "PENDING":  # a dependency never satisfied: cancel it first
                states[jid] = dataclasses.replace(ended, kill=True)
            else:
                states[jid] = ended
        return states

    def _say_stuck(self, jid: str, reason: str) -> None:
        """Said once a job and reason: such a job waits until someone changes it, and the
        run waited with it for ever without a word (more CPUs than any node has)."""
        if self._stuck.get(jid) != reason:
            self._stuck[jid] = reason
            log.warning(
                "Slurm job %s is pending for %s: Slurm will not start it as it was asked "
                "for until its request (or the partition) changes; stop it with `xqueue "
                "cancel` (or scancel %s) and feed it with less (see `squeue -j %s -o %%r`)",
                jid,
                reason,
                jid,
                jid,
            )

    def accounting_argvs(self, ids: Sequence[str]) -> list[list[str]]:
        if self._accounting is False:
            return []
        argv = [self.options.sacct, "-n", "-P", "-X", "-o", parse.SACCT_FIELDS]
        return [[*argv, "-j", ",".join(ids)]]

    def parse_accounting(self, stdout: str) -> dict[str, JobState]:
        states: dict[str, JobState] = {}
        for jid, row in parse.parse_sacct(stdout).items():
            if row.state in parse.HELD:
                states[jid] = JobState(JobStatus.RUNNING)
            elif (verdict := parse.accounting_state(row)) is not None:
                states[jid] = verdict
        return states

    def failure_is_answer(self, kind: str, result: CommandResult) -> bool:
        if kind == "status" and "Invalid job id" in result.stderr:
            return True  # every id in the list has been purged
        if kind == "accounting" and "accounting storage is disabled" in result.stderr.lower():
            self._accounting = False
            return True
        return False

    async def explain(self, states: dict[Job, JobState]) -> dict[Job, JobState]:
        """A step killed for its memory says so only in its output; a TIMEOUT gets the
        limit it reached."""
        suspects = [
            job
            for job, state in states.items()
            if state.status is JobStatus.FAILED
            and state.failure in (None, FailureClass.VANISHED)
            and state.rc in (None, 128 + 9)
        ]
        if suspects:
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
        where = self.placement(job)
        if where is not None:
            path: str | None = self._array_log(where[0], str(self.array_first + where[1]))
        elif job.jid and self.element_sep not in job.jid:
            path = job.path("slurm.log")  # a single job (re-adopted ones too): its own file
        else:
            path = None
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
        raw = self._raw().get("time")
        limit = self.walltime(job)
        if raw is not None or not limit:  # given as sbatch's own option, or by the site
            return f"timed out at its Slurm time limit ({raw or 'set outside xqueue'}; TIMEOUT)"
        # Slurm counts time limits in whole minutes.
        return timed_out(math.ceil(limit / 60) * 60, "Slurm TIMEOUT")

    # -- recovery and killing -----------------------------------------------------------
    def listing_argv(self) -> list[str]:
        """Every job of the user, ended ones too (``-t all``), with its ``--comment``."""
        fmt = "%i|%T|%r|%k"
        return [self.options.squeue, "-h", "-r", "-t", "all", "-u", self._user, "-o", fmt]

    def parse_listing(self, stdout: str) -> dict[str, tuple[bool, str]]:
        return {
            jid: (row.state in parse.HELD, comment)
            for jid, (row, comment) in parse.parse_my_jobs(stdout).items()
        }

    def kill_argv(self, ids: Sequence[str]) -> list[str]:
        """``scancel -v``: ids that already ended are not an error to Slurm, and only its
        verbose output names them."""
        return [self.options.scancel, "-v", *ids]

    def parse_kill(self, result: CommandResult) -> Collection[str]:
        return parse.already_ended(result.stderr)
