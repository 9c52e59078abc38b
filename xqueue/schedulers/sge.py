"""SGE (Son of Grid Engine and kin): ``qsub`` of the wrapper script, one ``qstat -xml`` per tick.

The wrapper is submitted as a script file, never with ``-b y`` (SGE re-joins the
arguments of a binary job and loses their quoting), and with ``-C ''``: qsub scans
*every* line of a script for ``#$`` directives, so a job argument holding a newline
could otherwise smuggle in qsub options; all options go on the command line instead.

Options from ``scheduler_opts`` become qsub flags as the xqute seed documents them:
``q="all.q"`` -> ``-q all.q``, ``l=["h_vmem=2G", "h_rt=3600"]`` -> ``-l h_vmem=2G -l
h_rt=3600``, ``cwd=True`` -> ``-cwd``, ``N="name"`` -> ``-N name``; a ``qsub_`` prefix is
dropped (``qsub_pe="smp 4"``).
A job's ``resources`` become ``-l h_vmem``, ``-l h_rt`` (the ``timeout`` option for a
job with no walltime of its own), ``-l gpu`` and, when the ``pe`` option names a
parallel environment, ``-pe <pe> <cpus>``; a raw ``l`` entry for the same resource wins.

Status: one ``qstat -xml -g d`` per tick for all jobs. A job in error state (``Eqw``)
is failed with the reason ``qstat -j`` gives and deleted; a job SGE no longer lists is
resolved from the wrapper's return code file, then ``qacct``, then "vanished". A job
qmaster killed at a limit (``failed 37``, which names h_rt, h_cpu and h_vmem together)
is a TIMEOUT when its wallclock reached its ``h_rt``, an OOM when its ``maxvmem``
reached its ``h_vmem``. A program that hits ``h_vmem`` itself (SGE makes it an address
space limit, so its allocations fail) exits as it sees fit: that is a plain non-zero exit.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import pwd
import re
import time
from collections.abc import Sequence
from typing import Any

import anyio

from ..errors import SchedulerError, SchedulerOptionError, SubmissionUnknownError
from ..job import SCRIPT, STARTED, Job
from ..options import SchedulerOptions
from ..scheduler import JobState, Scheduler
from ..states import JobStatus
from ..workdir import read_rc
from . import _sge_parse as parse
from ._cluster import (
    array_jobdirs,
    attempt_of,
    best_match,
    chunks,
    matches,
    run_submit,
    run_tag,
    short_options,
    submit_grouped,
    write_array,
)
from ._process import read_output, run_command

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
    """Seconds a ``qsub`` may take before its outcome counts as unknown."""
    status_timeout: float = 60.0
    """Seconds a ``qstat``/``qacct``/``qdel`` may take."""
    qsub: str = "qsub"
    """The ``qsub`` command (a name on PATH or a path); likewise the three below."""
    qstat: str = "qstat"
    """The ``qstat`` command: one ``qstat -xml`` per tick for every active job."""
    qdel: str = "qdel"
    """The ``qdel`` command."""
    qacct: str = "qacct"
    """The ``qacct`` command, for jobs ``qstat`` no longer shows."""

    accepts_extra = True


def _l_key(entry: str) -> str:
    return entry.split("=", 1)[0].strip()


def qsub_options(
    job: Job | None, pe: str | None, extra: dict[str, Any], timeout: float = 0.0
) -> dict[str, Any]:
    """The flags for one job (or array group): mapped resources, then raw ones (which win).

    ``timeout`` (the scheduler option) is the ``h_rt`` of a job that gives no walltime."""
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
    walltime = res.walltime_s if res is not None and res.walltime_s else timeout
    if res is not None and res.memory_mb:
        mapped_l.append(f"h_vmem={res.memory_mb}M")
    if job is not None and walltime:
        mapped_l.append(f"h_rt={math.ceil(walltime)}")
    if res is not None:
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
    enforces_walltime = True
    options: SgeOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._user = pwd.getpwuid(os.getuid()).pw_name
        self._batch_dir = ""
        self._tag = ""
        self._recover_cache: tuple[float, str, dict[str, str]] | None = None
        # When a submission last ended with an unknown outcome (see SlurmScheduler).
        self._unknown_at = 0.0
        self._arrays: dict[str, list[tuple[str, int]]] = {}

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
    def script_lines(self, job: Job) -> list[str]:
        """Keep SGE from acting on the job's own exit status (it is in the rc file).

        SGE reschedules a job script that exits 99 (it would run again) and puts one that
        exits 100 in error state, as would wait every job held on it: those two leave
        the wrapper as 1.
        """
        return ["trap 'st=$?; case $st in 99|100) exit 1;; esac' EXIT"]

    async def _qsub(self, opts: dict[str, Any], script: str) -> str:
        # -C '': qsub would otherwise read every line of the script starting with "#$" as
        # an option, even inside a quoted argument that spans lines ('a\n#$ -a 2030...').
        argv = [self.options.qsub, "-terse", "-C", "", "-S", "/bin/sh", *_argv_flags(opts), script]
        try:
            return await run_submit(argv, self.options.submit_timeout, self.stats, parse.parse_qsub)
        except SubmissionUnknownError:
            self._unknown_at = time.monotonic()
            raise

    def _prefix(self) -> str:
        # SGE job names may not start with a digit nor hold '/', ':', '@' or whitespace.
        return f"xq{self._tag}_"

    def _name(self, job: Job) -> str:
        """The tag ``recover_job`` looks for: this workdir, the job and its attempt."""
        return f"{self._prefix()}{job.index}_{attempt_of(job)}"

    def _hold(self, after: str | None) -> dict[str, str]:
        """``-hold_jid``: the user's, and the unit this one waits for (every task of it)."""
        if after is None:
            return {}
        user = str(qsub_options(None, None, self.options.extra).get("hold_jid") or "")
        return {"hold_jid": f"{user},{after}" if user else after}

    def _write_scripts(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self.write_script(job)

    async def submit_job(self, job: Job) -> str:
        await anyio.to_thread.run_sync(self.write_script, job)
        return (await self._submit([job], None, None))[0]

    async def _submit(
        self, jobs: Sequence[Job], throttle: int | None, after: str | None
    ) -> tuple[str, list[str]]:
        """One qsub: a single job (no throttle) or a ``-t`` array; scripts are written."""
        if throttle is None:
            (job,) = jobs
            opts: dict[str, Any] = {
                "N": self._name(job),
                "o": output_path(job.path("sge.log")),
                "j": "y",
                **qsub_options(job, self.options.pe, self.options.extra, self.options.timeout),
                **self._hold(after),
            }
            jid = await self._qsub(opts, job.attempt_path(SCRIPT))
            return jid, [jid]
        name, script = await anyio.to_thread.run_sync(
            lambda: write_array(self._batch_dir, jobs, "SGE_TASK_ID", 1)
        )
        opts = {
            "N": f"{self._prefix()}A{name}",
            "o": output_path(os.path.join(self._batch_dir, f"{name}.$TASK_ID.log")),
            "j": "y",
            "t": f"1-{len(jobs)}",
            "tc": throttle,
            **qsub_options(jobs[0], self.options.pe, self.options.extra, self.options.timeout),
            **self._hold(after),
        }
        base = await self._qsub(opts, script)
        return base, [f"{base}.{i + 1}" for i in range(len(jobs))]

    async def submit_jobs(self, jobs: Sequence[Job]) -> list[str | BaseException]:
        """``-t`` arrays of jobs with the same resources, single jobs otherwise, sharing
        forks; a failed qsub fails only the jobs it carried, with SGE's own message, and
        one whose outcome is unknown gives each of them ``SubmissionUnknownError``."""
        await anyio.to_thread.run_sync(self._write_scripts, jobs)
        return await submit_grouped(
            jobs,
            arrays=self.enforces_forks,
            max_array=_MAX_ARRAY,
            forks=self.forks,
            concurrency=self.options.submit_concurrency,
            submit=self._submit,
        )

    # -- status ----------------------------------------------------------------------
    async def _qstat_text(self) -> tuple[str, dict[str, str]]:
        """One ``qstat -xml`` of this user's jobs: its text, and id -> state letters."""
        self.stats.status_calls += 1
        argv = [self.options.qstat, "-xml", "-g", "d", "-u", self._user]
        result = await run_command(argv, timeout=self.options.status_timeout)
        return result.stdout, read_output(argv, result.stdout, parse.parse_qstat_xml)

    async def _qstat(self) -> dict[str, str]:
        return (await self._qstat_text())[1]

    async def _qacct(self, what: str) -> dict[str, parse.QacctRecord]:
        """The accounting records of a job id or job name; {} if SGE has none (yet)."""
        self.stats.status_calls += 1
        argv = [self.options.qacct, "-j", what]
        result = await run_command(argv, timeout=self.options.status_timeout, check=False)
        if result.returncode != 0:
            return {}
        return read_output(argv, result.stdout, parse.parse_qacct)

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
        # Return code files are read in one worker thread per tick, not in the loop.
        has_rc = await anyio.to_thread.run_sync(
            lambda: {job for job in jobs if read_rc(job) is not None}
        )
        held: list[tuple[Job, bool, JobState | None]] = []
        gone: list[Job] = []
        broken: list[Job] = []
        for job in jobs:
            state = queue.get(job.jid or "")
            if state is None:
                gone.append(job)
            elif "E" in state and job not in has_rc:
                broken.append(job)
            else:
                held.append((job, parse.held(state), None))
        states: dict[Job, JobState] = {}
        for job in broken:
            why = await self._error_reason(job)
            states[job] = JobState(
                JobStatus.FAILED, None, f"SGE error state ({why}); deleted", retryable=False
            )
        if broken:
            await self.kill_jobs(broken)
        records: dict[str, parse.QacctRecord] = {}
        bases = {str(j.jid).split(".")[0] for j in gone if j.jid and j not in has_rc}
        for base in sorted(bases):
            records.update(await self._qacct(base))
        for job in gone:
            record = records.get(job.jid or "")
            held.append((job, False, parse.accounting_state(record) if record else None))
        states.update(
            await anyio.to_thread.run_sync(
                lambda: {job: self.reconcile(job, alive, verdict) for job, alive, verdict in held}
            )
        )
        return states

    async def job_is_running(self, job: Job) -> bool:
        return parse.held((await self._qstat()).get(job.jid or "", ""))

    async def recover_job(self, job: Job) -> bool:
        """Find a job submitted earlier: by its id, or by its ``-N`` name; True if held.

        The name carries the workdir's tag, the job's index and attempt (or, for an
        array, the batch whose ``.jobs`` file maps tasks to job folders and attempts), so
        a submission whose id never came back (qsub timed out, the controller died right
        after it) is found all the same. qstat lists only jobs still held: one that has
        already ended, as its ``started`` file shows, is looked up in ``qacct`` by name,
        so ``job.jid`` is set then too (its return code file tells how it ended).
        """
        now = time.monotonic()
        cache = self._recover_cache
        if cache is None or now - cache[0] > 1.0 or cache[0] <= self._unknown_at:
            # One qstat serves every job re-adopted within the same second.
            self._recover_cache = cache = (now, *await self._qstat_text())
        _, text, states = cache
        if job.jid is None:
            names = read_output(["qstat", "-xml"], text, parse.parse_qstat_names)
            job.jid = await anyio.to_thread.run_sync(self._find_by_name, job, names)
            if job.jid is None:
                job.jid = await self._find_ended(job)
        return parse.held(states.get(job.jid or "", ""))

    def _elements(self, name: str) -> list[tuple[str, int]]:
        if name not in self._arrays:  # written once, never changed: read once
            self._arrays[name] = array_jobdirs(self._batch_dir, name)
        return self._arrays[name]

    def _find_by_name(self, job: Job, names: dict[str, str]) -> str | None:
        found: list[tuple[str, int]] = []
        single = f"{self._prefix()}{job.index}"
        array = f"{self._prefix()}A"
        for jid, name in names.items():
            rest = name.removeprefix(single)
            if rest != name and (not rest or rest[0] == "_"):  # "<prefix><index>[_<attempt>]"
                attempt = int(rest[1:]) if rest[1:].isdigit() else 1
                if matches(job, attempt):
                    found.append((jid, attempt))
            elif name.startswith(array) and "." in jid:
                task = jid.partition(".")[2]
                elements = self._elements(name[len(array) :])
                if task.isdigit() and 0 < int(task) <= len(elements):
                    jobdir, attempt = elements[int(task) - 1]
                    if jobdir == job.dir and matches(job, attempt):
                        found.append((jid, attempt))
        return best_match(job, found)

    def _task_of(self, job: Job) -> tuple[str, int] | None:
        """(array batch name, task) of this attempt, if an array carried it."""
        pattern = os.path.join(glob.escape(self._batch_dir), "*.jobs")
        for path in sorted(glob.glob(pattern), reverse=True):  # newest first
            name = os.path.basename(path)[: -len(".jobs")]
            for k, element in enumerate(self._elements(name)):
                if element == (job.dir, job.attempt):
                    return name, k + 1
        return None

    async def _find_ended(self, job: Job) -> str | None:
        """The id of this attempt once it left qstat, from ``qacct`` by its job name."""
        started = job.attempt_path(STARTED)
        if job.attempt < 1 or not await anyio.to_thread.run_sync(os.path.exists, started):
            return None  # it never started: nothing ran that could run twice
        where = await anyio.to_thread.run_sync(self._task_of, job)
        if where is None:
            records = await self._qacct(self._name(job))
            ids = [jid for jid in records if "." not in jid]
        else:
            records = await self._qacct(f"{self._prefix()}A{where[0]}")
            ids = [jid for jid in records if jid.endswith(f".{where[1]}")]
        return max(ids, key=lambda jid: int(jid.split(".")[0]), default=None)

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
