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
import logging
import math
import os
import pwd
import re
import time
from collections.abc import Sequence
from typing import Any

from ..errors import SchedulerOptionError
from ..failures import FailureClass
from ..job import Job
from ..scheduler import JobState
from ..states import JobStatus
from . import _sge_parse as parse
from .batch import BatchOptions, BatchScheduler, CommandResult, Submission, short_options

log = logging.getLogger("xqueue")

# SGE's default max_aj_tasks: the most tasks one -t array may have.
_MAX_ARRAY = 75_000
_QDEL_OK = re.compile(
    r"does not exist|already in deletion|registered .* for deletion|has deleted|"
    r"has registered",
)
_ERROR_STATE = "SGE error state"


@dataclasses.dataclass
class SgeOptions(BatchOptions):
    pe: str | None = None
    """Parallel environment that a job's ``cpus`` are requested from (``-pe <pe> <cpus>``).
    qsub's own ``-pe`` flag is ``native={"pe": "smp 4"}`` (or ``qsub_pe``)."""
    qsub: str = "qsub"
    """The ``qsub`` command (a name on PATH or a path); likewise the three below."""
    qstat: str = "qstat"
    """The ``qstat`` command: one ``qstat -xml`` per tick for every active job."""
    qdel: str = "qdel"
    """The ``qdel`` command."""
    qacct: str = "qacct"
    """The ``qacct`` command, for jobs ``qstat`` no longer shows."""


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


class SgeScheduler(BatchScheduler):
    """Jobs are SGE batch jobs (array tasks when submitted together)."""

    name = "sge"
    Options = SgeOptions
    enforces_walltime = True
    # qdel signals a job's whole group at once, and says nothing of jobs that had ended:
    # a success that ended as it ran was recorded killed, and the next run ran it again.
    rc_file_is_own_end = True
    options: SgeOptions
    clients = ("qsub", "qstat", "qdel")

    array_task_var = "SGE_TASK_ID"
    array_first = 1
    element_sep = "."
    max_array = _MAX_ARRAY
    chains = True
    query_by_id = False  # qstat -u lists every job of the user
    # The default TagStyle, in -N: "xq<run>_<index>_<attempt>", "xq<run>_A<batch>" (SGE
    # job names may not start with a digit nor hold '/', ':', '@' or whitespace).

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._user = pwd.getpwuid(os.getuid()).pw_name
        self._errors: dict[Job, str] = {}  # qstat -j's reason of a job in error state
        # When each job was first seen in deletion (dt, dr): held while it may still run
        # (a task sent to its host as qdel came starts all the same), for a bounded time.
        self._deleting: dict[str, float] = {}

    def _raw(self) -> dict[str, Any]:
        return qsub_options(None, None, self.options.extra)

    def arrays_possible(self) -> bool:
        return "t" not in self._raw()  # the user's own -t array

    async def open(self, workdir: Any) -> None:
        if _PSEUDO_VARS.search(str(workdir.path)):
            raise SchedulerOptionError(
                f"sge: the workdir path {str(workdir.path)!r} holds one of the variables qsub "
                "expands in output paths ($HOME, $USER, $JOB_ID, $JOB_NAME, $HOSTNAME, "
                "$TASK_ID); choose a workdir without it"
            )
        if "," in str(workdir.path):
            # qsub reads -o and -e as a comma-separated list of [host:]path: every job
            # failed with "two files are specified for the same host", the path unnamed.
            raise SchedulerOptionError(
                f"sge: the workdir path {str(workdir.path)!r} holds a comma, which qsub "
                "reads as a list of output paths; choose a workdir without one"
            )
        await super().open(workdir)

    # -- submitting ------------------------------------------------------------------
    def script_lines(self, job: Job) -> list[str]:
        """Keep SGE from acting on the job's own exit status (it is in the rc file).

        SGE reschedules a job script that exits 99 (it would run again) and puts one that
        exits 100 in error state, as would wait every job held on it: those two leave
        the wrapper as 1.
        """
        return ["trap 'st=$?; case $st in 99|100) exit 1;; esac' EXIT"]

    def submit_argv(self, sub: Submission) -> list[str]:
        """``-N`` carries the tag; ``-C ''``: qsub would otherwise read every line of the
        script starting with "#$" as an option, even inside a quoted argument that spans
        lines ('a\n#$ -a 2030...')."""
        opts: dict[str, Any] = {"N": sub.tag}
        if sub.tasks is None:
            opts["o"] = output_path(sub.job.path("sge.log"))
        else:
            opts["o"] = output_path(os.path.join(self.batch_dir, f"{sub.name}.$TASK_ID.log"))
        opts["j"] = "y"
        if sub.tasks is not None:
            opts.update({"t": f"{sub.tasks[0]}-{sub.tasks[-1]}", "tc": sub.throttle})
        opts.update(
            qsub_options(sub.job, self.options.pe, self.options.extra, self.options.timeout)
        )
        if sub.after is not None:  # the user's -hold_jid, and the unit this one waits for
            user = str(self._raw().get("hold_jid") or "")
            opts["hold_jid"] = f"{user},{sub.after}" if user else sub.after
        argv = [self.options.qsub, "-terse", "-C", "", "-S", "/bin/sh"]
        return [*argv, *_argv_flags(opts), sub.script]

    def parse_submit(self, stdout: str) -> str:
        return parse.parse_qsub(stdout)

    # -- status ----------------------------------------------------------------------
    def status_argv(self, ids: Sequence[str]) -> list[str]:
        """Every job of the user, array tasks one by one (``-g d``)."""
        return [self.options.qstat, "-xml", "-g", "d", "-u", self._user]

    def parse_status(self, stdout: str) -> dict[str, JobState]:
        states: dict[str, JobState] = {}
        now, grace = time.monotonic(), self._deleting_grace()
        for jid, letters in parse.parse_qstat_xml(stdout).items():
            if "d" in letters and now - self._deleting.setdefault(jid, now) > grace:
                # Still listed in deletion long after its qdel: its host is down or gone
                # (it leaves only once that host answers, or a qdel -f). Taken for ended,
                # as its rc file or qacct tells, rather than waited for for ever. Said
                # once: its time becomes -inf, past any grace.
                if self._deleting[jid] > -math.inf:
                    self._deleting[jid] = -math.inf
                    log.warning("sge: job %s still in deletion (%s); taken for ended", jid, letters)
                continue
            if parse.held(letters):
                running = "r" in letters or "t" in letters
                states[jid] = JobState(JobStatus.RUNNING if running else JobStatus.SUBMITTED)
            elif "E" in letters:  # Eqw: it would wait for ever; deleted, not retried
                # SGE would not start it (an output file it cannot open, a folder it
                # cannot enter): refused, not vanished, for a retry policy's class.
                states[jid] = JobState(
                    JobStatus.FAILED,
                    None,
                    _ERROR_STATE,
                    retryable=False,
                    kill=True,
                    failure=FailureClass.SUBMIT_FAILED,
                )
        return states

    def _deleting_grace(self) -> float:
        """How long a job listed in deletion counts as running: a task that starts after
        its qdel is killed once its host reports it running, within seconds."""
        return max(self.options.kill_grace, 30.0) + 3 * self.options.poll_interval

    def accounting_argvs(self, ids: Sequence[str]) -> list[list[str]]:
        """One ``qacct -j`` per job or array (it takes one at a time)."""
        bases = sorted({self.array_id(jid) for jid in ids})
        return [[self.options.qacct, "-j", base] for base in bases]

    def accounting_by_tag_argv(self, tag: str) -> list[str]:
        """qstat lists only jobs still held: an ended one is found in qacct by its name."""
        return [self.options.qacct, "-j", tag]

    def parse_accounting(self, stdout: str) -> dict[str, JobState]:
        return {jid: parse.accounting_state(r) for jid, r in parse.parse_qacct(stdout).items()}

    def failure_is_answer(self, kind: str, result: CommandResult) -> bool:
        if kind in ("accounting", "explain"):
            return True  # qacct exits 1 for a job it has no record of (yet)
        if kind == "kill":
            # qdel exits 1 when an id no longer exists, yet deletes the others; only a
            # failure that is not about an ended job is an error.
            text = (result.stdout + result.stderr).strip()
            return all(_QDEL_OK.search(line) for line in text.splitlines())
        return False

    async def explain(self, states: dict[Job, JobState]) -> dict[Job, JobState]:
        """A job in error state gets the reason ``qstat -j`` gives ("can't open output
        file ..."), asked once per job."""
        for job, state in states.items():
            if state.reason != _ERROR_STATE or not job.jid:
                continue
            if job not in self._errors:
                argv = [self.options.qstat, "-j", self.array_id(job.jid)]
                result = await self.run("explain", argv)
                why = parse.parse_error_reason(result.stdout) or "no reason given by qstat -j"
                self._errors[job] = f"{_ERROR_STATE} ({why}); deleted"
            states[job] = dataclasses.replace(state, reason=self._errors[job])
        return states

    # -- recovery and killing -----------------------------------------------------------
    def listing_argv(self) -> list[str]:
        return self.status_argv(())

    def parse_listing(self, stdout: str) -> dict[str, tuple[bool, str]]:
        names = parse.parse_qstat_names(stdout)
        return {
            jid: (parse.held(letters), names.get(jid, ""))
            for jid, letters in parse.parse_qstat_xml(stdout).items()
        }

    def kill_argv(self, ids: Sequence[str]) -> list[str]:
        """One ``qdel`` for many jobs and array tasks (``7.3``); ended ones are no error."""
        return [self.options.qdel, *ids]

    def forget(self, job: Job) -> None:
        super().forget(job)
        self._errors.pop(job, None)
        self._deleting.pop(str(job.jid), None)
