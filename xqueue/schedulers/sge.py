"""SGE (Son of Grid Engine and kin): ``qsub`` of the wrapper script, one ``qstat -xml`` per tick.

The wrapper is submitted as a script file, never with ``-b y`` (SGE re-joins the
arguments of a binary job and loses their quoting), and with ``-C ''``: qsub scans
*every* line of a script for ``#$`` directives, so a job argument holding a newline
could otherwise smuggle in qsub options; all options go on the command line instead.

Options from ``scheduler_opts`` become qsub flags as the xqute seed documents them:
``q="all.q"`` -> ``-q all.q``, ``l=["h_vmem=2G", "h_rt=3600"]`` -> ``-l h_vmem=2G -l
h_rt=3600``, ``cwd=True`` -> ``-cwd``, ``N="name"`` -> ``-N name``; a ``qsub_`` prefix is
dropped (``qsub_pe="smp 4"``).
A job's ``resources`` become ``-l h_vmem``, ``-l h_rt``, ``-l gpu`` and, when the
``pe`` option names a parallel environment, ``-pe <pe> <cpus>``; a raw ``l`` entry for
the same resource wins.

Status: one ``qstat -xml -g d`` per tick for all jobs. A job in error state (``Eqw``)
is failed with the reason ``qstat -j`` gives and deleted; a job SGE no longer lists is
resolved from the wrapper's return code file, then ``qacct``, then "vanished".
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import time
from collections.abc import Sequence
from typing import Any

from ..errors import SchedulerError, SchedulerOptionError
from ..job import Job
from ..options import SchedulerOptions
from ..scheduler import JobState, Scheduler
from ..states import JobStatus
from ..workdir import read_rc
from . import _sge_parse as parse
from ._cluster import (
    array_jobdirs,
    chunks,
    run_submit,
    run_tag,
    short_options,
    submit_grouped,
    write_array,
)
from ._process import run_command

_KILL_CHUNK = 500
# SGE's default max_aj_tasks: the most tasks one -t array may have.
_MAX_ARRAY = 75_000
_QDEL_OK = re.compile(
    r"does not exist|already in deletion|registered .* for deletion|has deleted|"
    r"has registered",
)


@dataclasses.dataclass
class SgeOptions(SchedulerOptions):
    arrays: bool = True
    """Submit jobs fed together with the same resources as one ``-t`` array (``-tc forks``)."""
    pe: str | None = None
    """Parallel environment that a job's ``cpus`` are requested from (``-pe <pe> <cpus>``)."""
    submit_timeout: float = 60.0
    status_timeout: float = 60.0
    qsub: str = "qsub"
    qstat: str = "qstat"
    qdel: str = "qdel"
    qacct: str = "qacct"

    accepts_extra = True


def _l_key(entry: str) -> str:
    return entry.split("=", 1)[0].strip()


def qsub_options(job: Job | None, pe: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    """The flags for one job (or array group): mapped resources, then raw ones (which win)."""
    raw: dict[str, Any] = {}
    for key, value in extra.items():
        name = str(key).lstrip("-").removeprefix("qsub_")
        raw[name] = value
    raw_l = raw.pop("l", [])
    raw_l = [raw_l] if isinstance(raw_l, str) else list(raw_l)
    given = {_l_key(part) for entry in raw_l for part in str(entry).split(",")}
    mapped_l: list[str] = []
    opts: dict[str, Any] = {}
    res = job.resources if job is not None else None
    if res is not None:
        if res.memory_mb:
            mapped_l.append(f"h_vmem={res.memory_mb}M")
        if res.walltime_s:
            mapped_l.append(f"h_rt={res.walltime_s}")
        if res.gpus:
            mapped_l.append(f"gpu={res.gpus}")
        if res.cpus and pe and "pe" not in raw:
            opts["pe"] = f"{pe} {res.cpus}"
    opts.update(raw)
    all_l = [e for e in mapped_l if _l_key(e) not in given] + [str(e) for e in raw_l]
    if all_l:
        opts["l"] = all_l
    return opts


# What qsub expands in an -o path (its own variables, not the shell's).
_PSEUDO_VARS = re.compile(r"\$\{?(HOME|USER|JOB_ID|JOB_NAME|HOSTNAME|TASK_ID)\b")


def output_path(path: str) -> str:
    """``path`` for ``-o``: qsub reads ``host:path``, so an empty host is given (a ``:`` in
    the path would otherwise be taken for one)."""
    return f":{path}"


def _argv_flags(opts: dict[str, Any]) -> list[str]:
    """Flags whose value holds several words (``-pe smp 4``) are split into arguments."""
    argv: list[str] = []
    for key, value in opts.items():
        if key == "pe" and isinstance(value, str):
            argv.extend(["-pe", *value.split()])
        else:
            argv.extend(short_options({key: value}))
    return argv


class SgeScheduler(Scheduler):
    """Jobs are SGE batch jobs (array tasks when submitted together)."""

    name = "sge"
    Options = SgeOptions
    options: SgeOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._user = pwd.getpwuid(os.getuid()).pw_name
        self._batch_dir = ""
        self._tag = ""
        self._recover_cache: tuple[float, str] | None = None

    @property
    def max_batch(self) -> int:
        return _MAX_ARRAY

    @property
    def enforces_forks(self) -> bool:
        extra = {str(k).removeprefix("qsub_") for k in self.options.extra}
        return self.options.arrays and "t" not in extra

    async def open(self, workdir: Any) -> None:
        await super().open(workdir)
        if _PSEUDO_VARS.search(str(workdir.path)):
            raise SchedulerOptionError(
                f"sge: the workdir path {str(workdir.path)!r} holds one of the variables qsub "
                "expands in output paths ($HOME, $USER, $JOB_ID, $JOB_NAME, $HOSTNAME, "
                "$TASK_ID); choose a workdir without it"
            )
        self._batch_dir = os.path.join(workdir.path, ".xqueue-sge")
        self._tag = run_tag(str(workdir.path))

    # -- submitting ------------------------------------------------------------------
    async def _qsub(self, opts: dict[str, Any], script: str) -> str:
        # -C '': qsub would otherwise read every line of the script starting with "#$" as
        # an option, even inside a quoted argument that spans lines ('a\n#$ -a 2030...').
        argv = [self.options.qsub, "-terse", "-C", "", "-S", "/bin/sh", *_argv_flags(opts), script]
        stdout = await run_submit(argv, self.options.submit_timeout, self.stats)
        try:
            return parse.parse_qsub(stdout)
        except ValueError as exc:
            raise SchedulerError(str(exc)) from exc

    def _prefix(self) -> str:
        # SGE job names may not start with a digit nor hold '/', ':', '@' or whitespace.
        return f"xq{self._tag}_"

    def _name(self, job: Job) -> str:
        return f"{self._prefix()}{job.index}"

    async def submit_job(self, job: Job) -> str:
        script = self.write_script(job)
        opts = {
            "N": self._name(job),
            "o": output_path(job.path("sge.log")),
            "j": "y",
            **qsub_options(job, self.options.pe, self.options.extra),
        }
        return await self._qsub(opts, script)

    async def _submit_array(self, jobs: Sequence[Job], throttle: int) -> list[str]:
        for job in jobs:
            self.write_script(job)
        name, script = write_array(self._batch_dir, jobs, "SGE_TASK_ID", 1)
        opts = {
            "N": f"{self._prefix()}A{name}",
            "o": output_path(os.path.join(self._batch_dir, f"{name}.$TASK_ID.log")),
            "j": "y",
            "t": f"1-{len(jobs)}",
            "tc": throttle,
            **qsub_options(jobs[0], self.options.pe, self.options.extra),
        }
        base = await self._qsub(opts, script)
        return [f"{base}.{i + 1}" for i in range(len(jobs))]

    async def submit_jobs(self, jobs: Sequence[Job]) -> list[str | BaseException]:
        """One ``-t`` array per group of jobs with the same resources; a failed qsub fails
        only the jobs it carried, with SGE's own message."""
        return await submit_grouped(
            jobs,
            arrays=self.enforces_forks,
            max_array=_MAX_ARRAY,
            forks=self.forks,
            concurrency=self.options.submit_concurrency,
            one=self.submit_job,
            array=self._submit_array,
        )

    # -- status ----------------------------------------------------------------------
    async def _qstat(self) -> dict[str, str]:
        self.stats.status_calls += 1
        result = await run_command(
            [self.options.qstat, "-xml", "-g", "d", "-u", self._user],
            timeout=self.options.status_timeout,
        )
        return parse.parse_qstat_xml(result.stdout)

    async def _qacct(self, base: str) -> dict[str, parse.QacctRecord]:
        self.stats.status_calls += 1
        result = await run_command(
            [self.options.qacct, "-j", base], timeout=self.options.status_timeout, check=False
        )
        return parse.parse_qacct(result.stdout) if result.returncode == 0 else {}

    async def _error_reason(self, job: Job) -> str:
        self.stats.status_calls += 1
        result = await run_command(
            [self.options.qstat, "-j", str(job.jid).split(".")[0]],
            timeout=self.options.status_timeout,
            check=False,
        )
        return parse.parse_error_reason(result.stdout) or "no reason given by qstat -j"

    async def poll_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobState]:
        queue = await self._qstat()
        states: dict[Job, JobState] = {}
        gone: list[Job] = []
        broken: list[Job] = []
        for job in jobs:
            state = queue.get(job.jid or "")
            if state is None:
                gone.append(job)
            elif "E" in state and read_rc(job) is None:
                broken.append(job)
            else:
                states[job] = self.reconcile(job, parse.held(state))
        for job in broken:
            why = await self._error_reason(job)
            states[job] = JobState(
                JobStatus.FAILED, None, f"SGE error state ({why}); deleted", retryable=False
            )
        if broken:
            await self.kill_jobs(broken)
        records: dict[str, parse.QacctRecord] = {}
        bases = {str(j.jid).split(".")[0] for j in gone if j.jid and read_rc(j) is None}
        for base in sorted(bases):
            records.update(await self._qacct(base))
        for job in gone:
            record = records.get(job.jid or "")
            verdict = parse.accounting_state(record) if record else None
            states[job] = self.reconcile(job, False, verdict)
        return states

    async def job_is_running(self, job: Job) -> bool:
        return parse.held((await self._qstat()).get(job.jid or "", ""))

    async def recover_job(self, job: Job) -> bool:
        """Re-adopt a job an earlier run submitted: by its id, or by its ``-N`` name.

        The name carries the workdir's tag and the job's index (or, for an array, the
        batch whose ``.jobs`` file maps tasks to job folders), so a job whose id was never
        recorded (the controller died right after qsub) is found all the same.
        """
        now = time.monotonic()
        if self._recover_cache is None or now - self._recover_cache[0] > 1.0:
            # One qstat serves every job re-adopted within the same second.
            self.stats.status_calls += 1
            result = await run_command(
                [self.options.qstat, "-xml", "-g", "d", "-u", self._user],
                timeout=self.options.status_timeout,
            )
            self._recover_cache = (now, result.stdout)
        text = self._recover_cache[1]
        if job.jid is None:
            job.jid = self._find_by_name(job, parse.parse_qstat_names(text))
        return parse.held(parse.parse_qstat_xml(text).get(job.jid or "", ""))

    def _find_by_name(self, job: Job, names: dict[str, str]) -> str | None:
        for jid, name in names.items():
            if name == self._name(job):
                return jid
            prefix = f"{self._prefix()}A"
            if name.startswith(prefix) and "." in jid:
                task = jid.partition(".")[2]
                dirs = array_jobdirs(self._batch_dir, name[len(prefix) :])
                if task.isdigit() and 0 < int(task) <= len(dirs) and dirs[int(task) - 1] == job.dir:
                    return jid
        return None

    # -- killing ---------------------------------------------------------------------
    async def kill_jobs(self, jobs: Sequence[Job]) -> list[BaseException | None]:
        """One ``qdel`` for many jobs and array tasks (``7.3``); ended ones are no error."""
        ids = [str(job.jid) for job in jobs if job.jid]
        errors: list[BaseException | None] = [None] * len(jobs)
        for part in chunks(ids, _KILL_CHUNK):
            self.stats.kill_calls += 1
            result = await run_command(
                [self.options.qdel, *part], timeout=self.options.status_timeout, check=False
            )
            # qdel exits 1 when an id no longer exists, yet deletes the others; only a
            # failure that is not about an ended job is an error.
            text = (result.stdout + result.stderr).strip()
            unexpected = [ln for ln in text.splitlines() if not _QDEL_OK.search(ln)]
            if result.returncode != 0 and unexpected:
                error = SchedulerError(f"qdel failed: {'; '.join(unexpected)}")
                errors = [error if j.jid in part else e for j, e in zip(jobs, errors)]
        return errors

    async def kill_job(self, job: Job) -> None:
        (error,) = await self.kill_jobs([job])
        if error is not None:
            raise error
