"""HTCondor: jobs submitted to a schedd through the official Python bindings (``htcondor2``).

Each job runs the wrapper script every backend runs (``Scheduler.write_script``) as its
executable, in its own folder (``initialdir``), with no file transfer: the pool must see
the workdir at the same path (a shared file system), as Slurm and SGE do. Jobs fed
together with the same resources go into ONE submission: a cluster with one proc per
job, each proc's executable, folder and tag given as item data (``queue ... from``), so
a proc runs its own job's wrapper and nothing is parsed at run time. ``$`` in a path is
written ``$(DOLLAR)``, since submit values are macro-expanded.

Every option of ``scheduler_opts`` that is not one of xqueue's own knobs is a submit
command passed straight through (``request_cpus``, ``request_memory``,
``request_gpus``, ``request_disk``, ``universe``, ``getenv``, ``requirements``,
``+Attribute`` custom attributes, ...). A job's portable ``resources`` become
``request_cpus``, ``request_memory`` (MiB) and ``request_gpus``; a command given in
``scheduler_opts`` wins over the mapped one.

It is a ``BatchScheduler`` whose steps are bindings calls instead of command lines:
``submit_unit`` is ``schedd.submit`` of a cluster (HTCondor's array), ``query_status`` one
``schedd.query``, ``query_accounting`` one ``schedd.history``, ``kill_ids`` one
``schedd.act(Remove)`` and ``list_jobs`` the same query read for tags; the base does the
grouping, the accounting fallback, vanishing, recovery and batching as for Slurm and SGE.

Status: ONE schedd query per tick, constrained on the run tag (``XqueueRun``, a custom
attribute every job of the workdir carries), serves every active job. A job that left
the queue is settled by its wrapper's return code file; one that left none is looked up
in ``history()`` (one call for all of them): removed outside xqueue, or ended by a
signal. A held job is reported with HTCondor's ``HoldReason``: by default it fails with
that reason and is removed (``on_hold="fail"``); ``on_hold="release"`` releases it up
to ``max_releases`` times first, and ``on_hold="wait"`` leaves it for someone else.

Kill: ``act(JobAction.Remove)`` for every job of a tick at once (``kill_chunk`` ids).
Resume: a job whose id was recorded is followed by that id; one whose id never came back
is found by its tag (``XqueueJob = "<index>.<attempt>"``) in the queue, or, once it left
the queue, in the history.

The bindings block: every call runs in a worker thread, one at a time (the library is
not documented as thread-safe), under ``submit_timeout`` (a submission: past it, its
outcome is unknown and the jobs are looked up by tag) or ``status_timeout`` (any other).
Client settings come from the usual places (``CONDOR_CONFIG``, ``_CONDOR_*`` environment
variables) and from the ``config`` option, which sets HTCondor configuration knobs in
this process (for example ``SEC_CLIENT_AUTHENTICATION_METHODS`` and
``SEC_CLAIMTOBE_USER``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ..errors import SchedulerError, SchedulerOptionError, SubmissionError, SubmissionUnknownError
from ..failures import FailureClass
from ..job import SCRIPT, Job
from ..scheduler import JobState
from ..states import JobStatus
from ._cluster import attempt_of
from .batch import BatchOptions, BatchScheduler, Submission, TagStyle

if TYPE_CHECKING:
    from ..workdir import Workdir

log = logging.getLogger("xqueue.htcondor")
T = TypeVar("T")

# JobStatus values of a job ad.
IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING, SUSPENDED = range(1, 8)
ALIVE = {IDLE, RUNNING, REMOVED, TRANSFERRING, SUSPENDED}
RUN_ATTR = "XqueueRun"
JOB_ATTR = "XqueueJob"
PROJECTION = [
    "ClusterId",
    "ProcId",
    "JobStatus",
    "ExitCode",
    "ExitBySignal",
    "ExitSignal",
    "HoldReason",
    "HoldReasonCode",
    "HoldReasonSubCode",
    "RemoveReason",
    JOB_ATTR,
]
# Submit commands xqueue sets itself: a raw option naming one would break every job.
_OWN = {"executable", "arguments", "initialdir", "iwd", "queue", f"+{RUN_ATTR}".lower()}
_OWN |= {f"my.{RUN_ATTR}".lower(), f"+{JOB_ATTR}".lower(), f"my.{JOB_ATTR}".lower()}
_MAX_CLUSTER = 1000
_HOLD_POLICIES = ("fail", "release", "wait")


@dataclasses.dataclass
class HTCondorOptions(BatchOptions):
    """``arrays``, ``submit_timeout`` (one submit call) and ``status_timeout`` (one
    query, history or act call) are ``BatchOptions``'; any other key is a submit command."""

    collector: str = ""
    """The pool's collector (``host[:port]``); empty: the client configuration's."""
    schedd: str = ""
    """The schedd's name; empty: the pool's only schedd (or the local one)."""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """HTCondor configuration knobs set in this process before the pool is contacted
    (process-wide), e.g. ``{"SEC_CLAIMTOBE_USER": "me"}``."""
    on_hold: str = "fail"
    """What a held job means: ``fail`` (with its HoldReason, and remove it), ``release``
    (release it up to ``max_releases`` times, then fail it) or ``wait`` (leave it)."""
    max_releases: int = 3
    """How often ``on_hold="release"`` releases one attempt before it fails it."""

    def validate(self, scheduler: str) -> None:
        super().validate(scheduler)
        if self.on_hold not in _HOLD_POLICIES:
            raise SchedulerOptionError(
                f"{scheduler}: on_hold must be one of {', '.join(_HOLD_POLICIES)}, "
                f"not {self.on_hold!r}"
            )
        if self.max_releases < 0:
            raise SchedulerOptionError(f"{scheduler}: max_releases must be >= 0")
        if "call_timeout" in self.extra:  # it would reach HTCondor as a submit command
            raise SchedulerOptionError(
                f"{scheduler}: call_timeout is now submit_timeout (a submission) and "
                "status_timeout (a query, history or act call)"
            )
        if not isinstance(self.config, dict):
            raise SchedulerOptionError(f"{scheduler}: config must be a mapping of knobs")
        for key, value in [*self.extra.items(), *self.config.items()]:
            if str(key).lower() in _OWN:
                raise SchedulerOptionError(
                    f"{scheduler}: {key!r} is set by xqueue for every job and cannot be given"
                )
            if any(c in f"{key}{value}" for c in "\n\r\0"):
                raise SchedulerOptionError(f"{scheduler}: {key!r}: a line break in a submit value")


def submit_value(text: str) -> str:
    """``text`` as a submit value that expands back to it: ``$`` is ``$(DOLLAR)``.

    A path must be one line, and not begin or end with blanks (the submit language trims
    them). Two things cannot be written at all: ``$$`` (once the first ``$(DOLLAR)`` is
    expanded, the ``$$(...)`` it forms with the next reads as a match-time macro) and
    ``$(DOLLAR)`` itself (expanded once more). Anything else reaches HTCondor unchanged.
    """
    if (
        any(c in text for c in "\n\r\0\x1f")
        or text != text.strip()
        or "$$" in text
        or "$(dollar)" in text.lower()
    ):
        raise SubmissionError(
            f"htcondor: {text!r} cannot be a submit value (a line break, blanks at an end, "
            "'$$' or '$(DOLLAR)')",
            retryable=False,
        )
    return text.replace("$", "$(DOLLAR)")


def description(tag: str, job: Job, extra: dict[str, Any]) -> dict[str, str]:
    """The submit description of one cluster: defaults, mapped resources, raw commands.

    ``$(xqscript)``, ``$(xqdir)`` and ``$(xqjob)`` come from each proc's item data."""
    desc = {
        "universe": "vanilla",
        "executable": "$(xqscript)",
        "initialdir": "$(xqdir)",
        "transfer_executable": "false",
        "should_transfer_files": "NO",
        "output": "/dev/null",
        "error": "htcondor.err",
        "notification": "never",
        "batch_name": f"xqueue-{tag}",
        f"+{RUN_ATTR}": f'"{tag}"',
        f"+{JOB_ATTR}": '"$(xqjob)"',
    }
    res = job.resources
    if res is not None:
        if res.cpus:
            desc["request_cpus"] = str(res.cpus)
        if res.memory_mb:
            desc["request_memory"] = str(res.memory_mb)
        if res.gpus:
            desc["request_gpus"] = str(res.gpus)
    for key, value in extra.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        desc[str(key)] = str(value)
    return desc


def ended_state(ad: Any, killed: bool) -> JobState | None:
    """What a job ad out of the queue (or completed in it) says about how the job ended.

    A removal ends a job REMOVED whatever its processes do meanwhile: one COMPLETED
    ended before any removal reached it, and that end is its own (``unkilled``), a
    removal sent or not (one that came as it ended was recorded killed, rc 0, and the
    next run ran a success again)."""
    status = ad.get("JobStatus")
    if status == COMPLETED:
        if ad.get("ExitBySignal"):
            rc = 128 + int(ad.get("ExitSignal") or 0)
        else:
            rc = int(ad.get("ExitCode") or 0)
        return JobState(JobStatus.FINISHED if rc == 0 else JobStatus.FAILED, rc, unkilled=True)
    if status == REMOVED:
        if killed:
            return JobState(JobStatus.KILLED, None, "killed")
        why = ad.get("RemoveReason") or "no reason given"
        return JobState(
            JobStatus.FAILED,
            None,
            f"removed from HTCondor outside xqueue: {why}",
            failure=FailureClass.KILLED,
        )
    return None


_USER_REQUEST = 1  # HoldReasonCode of a hold asked for by a user (condor_hold)


def held_state(ad: Any) -> JobState:
    """A held job failed with HTCondor's reason (removed first, ``kill=True``)."""
    reason = ad.get("HoldReason") or "no reason given"
    code = ad.get("HoldReasonCode")
    failure = FailureClass.SUBMIT_FAILED  # it could not run as it was submitted
    if code == 34 and "memory" in str(reason).lower():  # JobOutOfResources: memory
        failure = FailureClass.OOM
    elif code == _USER_REQUEST:  # condor_hold, from outside: stopped, as a removal is
        failure = FailureClass.KILLED
    return JobState(
        JobStatus.FAILED,
        None,
        f"held by HTCondor: {reason} (HoldReasonCode {code})",
        kill=True,
        failure=failure,
    )


def _count(ad: Any, key: str) -> int:
    """A count of an action's result ad (0 if it has none, as a stand-in's may not)."""
    try:
        return int(ad.get(key) or 0)
    except (AttributeError, TypeError, ValueError):
        return 0


def _any_of(ids: Sequence[str]) -> str:
    """A constraint matching the jobs ``ids`` (``cluster.proc``)."""
    pairs = [jid.split(".", 1) for jid in ids]
    return "(" + " || ".join(f"(ClusterId == {c} && ProcId == {p})" for c, p in pairs) + ")"


def _jid(ad: Any) -> str:
    return f"{ad.get('ClusterId')}.{ad.get('ProcId')}"


def _htcondor() -> Any:
    """The bindings module, imported on first use (it reads the client configuration)."""
    import htcondor2

    return htcondor2


class HTCondorScheduler(BatchScheduler):
    """Jobs are HTCondor jobs (procs of one cluster when submitted together).

    A ``BatchScheduler`` whose steps are bindings calls rather than command lines: the
    base groups jobs into clusters, polls once per tick, looks ended jobs up in the
    history, re-adopts by tag and kills in batches, as it does for Slurm and SGE.
    """

    name = "htcondor"
    Options = HTCondorOptions
    options: HTCondorOptions

    per_element_scripts = True  # each proc names its own wrapper (item data)
    array_first = 0  # ProcId
    element_sep = "."
    max_array = _MAX_CLUSTER
    query_by_id = False  # one query on the run tag lists every job of the workdir
    # XqueueRun and XqueueJob, read back by list_jobs as "<run>:<index>.<attempt>".
    tag_style = TagStyle("{run}:", ".", "@")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._schedd: Any = None
        self._limiter = anyio.CapacityLimiter(1)
        self._releases: dict[Job, int] = {}
        self._held: dict[str, Any] = {}  # id -> ad of a held job, from the last query
        self._held_logged: set[str] = set()
        self._removed: set[str] = set()  # ids this scheduler removed

    # -- the bindings, in a worker thread --------------------------------------------------
    async def _call(self, what: str, fn: Callable[[], T], timeout: float) -> T:
        """One blocking bindings call in the worker thread, under ``timeout``."""
        try:
            with anyio.fail_after(timeout):
                return await anyio.to_thread.run_sync(
                    fn, limiter=self._limiter, abandon_on_cancel=True
                )
        except TimeoutError as exc:
            raise _Timeout(f"htcondor: {what} took longer than {timeout:g} s") from exc

    async def _ask(self, what: str, fn: Callable[[], T]) -> T:
        """A query (status, history, listing), counted in ``status_calls``."""
        self.stats.status_calls += 1
        try:
            return await self._call(what, fn, self.options.status_timeout)
        except Exception as exc:
            raise SchedulerError(f"htcondor: {what} failed: {exc}") from exc

    def _connect(self) -> Any:
        """Apply ``config``, find the schedd, return a handle on it. Blocking."""
        htcondor = _htcondor()
        for key, value in self.options.config.items():
            htcondor.param[str(key)] = str(value)
        collector = htcondor.Collector(self.options.collector or None)
        if self.options.schedd:
            ad = collector.locate(htcondor.DaemonType.Schedd, self.options.schedd)
        else:
            ads = collector.query(htcondor.AdType.Schedd)
            ad = ads[0] if len(ads) == 1 else collector.locate(htcondor.DaemonType.Schedd)
        return htcondor.Schedd(ad)

    async def open(self, workdir: Workdir) -> None:
        await super().open(workdir)
        try:
            self._schedd = await self._call(
                "finding the schedd", self._connect, self.options.status_timeout
            )
        except Exception as exc:
            where = self.options.collector or "the configured collector"
            raise SchedulerError(
                f"htcondor: cannot reach the schedd through {where}: {exc}"
            ) from exc

    # -- submitting: one cluster, one proc per job -------------------------------------------
    async def submit_unit(self, sub: Submission) -> str:
        """One schedd submission: a cluster with one proc per job of ``sub``, each proc's
        wrapper, folder and tag given as item data. Returns ``<cluster>.<first proc>``.

        An array's throttle is not passed on: HTCondor keeps no ``forks`` of its own
        (``chains`` is False), so the engine hands over no more jobs than may run."""
        htcondor = _htcondor()
        items = [
            {
                "xqscript": submit_value(job.attempt_path(SCRIPT)),
                "xqdir": submit_value(job.dir),
                "xqjob": f"{job.index}.{attempt_of(job)}",
            }
            for job in sub.jobs
        ]
        desc = description(self.run_tag, sub.job, self.options.extra)
        schedd = self._schedd

        def submit() -> Any:
            return schedd.submit(htcondor.Submit(desc), itemdata=iter(items))

        self.stats.submit_calls += 1
        timeout = self.options.submit_timeout
        try:
            result = await self.submit_call(sub.jobs, submit, timeout, self._limiter)
        except TimeoutError as exc:
            raise SubmissionUnknownError(
                f"htcondor: submit took longer than {timeout:g} s; the jobs may have been queued"
            ) from exc
        except Exception as exc:
            raise _submit_error(exc) from exc
        return f"{int(result.cluster())}.{int(result.first_proc())}"

    def job_ids(self, sub: Submission, base: str) -> list[str]:
        """``<cluster>.<proc>`` of each job, from the cluster and its first proc."""
        cluster, _, first = base.partition(".")
        return [f"{cluster}.{int(first) + k}" for k in range(len(sub.jobs))]

    # -- status: one query on the run tag ----------------------------------------------------
    async def _queue(self) -> dict[str, Any]:
        """Every job of this workdir in the schedd's queue, by id: ONE query."""
        schedd = self._schedd
        constraint = f'{RUN_ATTR} == "{self.run_tag}"'
        ads = await self._ask("querying the schedd", lambda: schedd.query(constraint, PROJECTION))
        return {_jid(ad): ad for ad in ads}

    async def query_status(self, ids: Sequence[str]) -> dict[str, JobState]:
        """Idle is submitted; running, transferring, suspended and being removed are
        running; completed (not yet out of the queue) is its verdict. A held job is
        failed with its ``HoldReason`` (``explain`` applies ``on_hold``), or left waiting
        when ``on_hold="wait"``."""
        states: dict[str, JobState] = {}
        self._held = {}
        for jid, ad in (await self._queue()).items():
            status = ad.get("JobStatus")
            if status == IDLE:
                states[jid] = JobState(JobStatus.SUBMITTED)
            elif status in ALIVE:
                states[jid] = JobState(JobStatus.RUNNING)
            elif status == HELD:
                if jid not in self._held_logged:
                    self._held_logged.add(jid)
                    log.warning("job %s: held: %s", jid, ad.get("HoldReason"))
                if self.options.on_hold == "wait":
                    states[jid] = JobState(JobStatus.SUBMITTED)
                else:
                    self._held[jid] = ad
                    states[jid] = held_state(ad)
            elif (ended := ended_state(ad, jid in self._removed)) is not None:
                states[jid] = ended
        return states

    async def explain(self, states: dict[Job, JobState]) -> dict[Job, JobState]:
        """``on_hold`` for the held jobs of this tick: a job being killed, or one
        ``on_hold="release"`` releases (up to ``max_releases`` times), is still held."""
        release: list[Job] = []
        for job, state in states.items():
            if job.jid not in self._held or state.rc is not None or not state.kill:
                continue
            policy = self.options.on_hold
            if job.kill_requested or (
                policy == "release" and self._releases.get(job, 0) < self.options.max_releases
            ):
                if not job.kill_requested:
                    release.append(job)
                states[job] = await anyio.to_thread.run_sync(self.reconcile, job, True)
            elif policy == "release":
                why = f"{state.reason}; released {self.options.max_releases} times"
                states[job] = dataclasses.replace(state, reason=why)
        if release:
            await self._act("Release", [str(job.jid) for job in release], "xqueue: on_hold=release")
            for job in release:
                self._releases[job] = self._releases.get(job, 0) + 1
                self._held_logged.discard(str(job.jid))
        return states

    async def query_accounting(self, ids: Sequence[str]) -> dict[str, JobState]:
        """How jobs that left the queue ended: ONE history call for all of them."""
        return await self._history(_any_of(ids), len(ids))

    async def query_accounting_by_tag(self, tag: str) -> dict[str, JobState]:
        """The ended jobs carrying a job's tag (``XqueueJob``), from the history."""
        mark = tag.rpartition(":")[2]
        return await self._history(f'{JOB_ATTR} == "{mark}"', -1)

    async def _history(self, constraint: str, match: int) -> dict[str, JobState]:
        schedd = self._schedd
        where = f'{RUN_ATTR} == "{self.run_tag}" && {constraint}'
        ads = await self._ask(
            "reading the schedd's history",
            lambda: list(schedd.history(where, PROJECTION, match=match)),
        )
        found = {_jid(ad): ended_state(ad, _jid(ad) in self._removed) for ad in ads}
        return {jid: state for jid, state in found.items() if state is not None}

    # -- recovery and killing ----------------------------------------------------------------
    async def list_jobs(self) -> dict[str, tuple[bool, str]]:
        """This workdir's jobs in the queue (the same one query): held while not ended,
        each with its tag ``<run>:<XqueueJob>``."""
        prefix = self.tag_style.prefix.format(run=self.run_tag)
        return {
            jid: (ad.get("JobStatus") in ALIVE | {HELD}, f"{prefix}{ad.get(JOB_ATTR) or ''}")
            for jid, ad in (await self._queue()).items()
        }

    async def kill_ids(self, ids: Sequence[str]) -> Collection[str]:
        """One ``Remove`` for these jobs; one that has already left is not an error. The
        schedd counts those it did not find, without naming them: if there are some, the
        history says which of them COMPLETED, ended on their own before the removal
        (answered so, a success is not recorded killed)."""
        self._removed.update(ids)
        result = await self._act("Remove", ids, "xqueue: killed")
        missing = _count(result, "TotalNotFound")
        if not missing:
            return ()
        try:  # only those completed, and no more than were not found: a short scan
            ended = await self._history(f"JobStatus == {COMPLETED} && {_any_of(ids)}", missing)
        except SchedulerError:  # the removal stands; the polls will say how they ended
            return ()
        return [jid for jid, state in ended.items() if state.unkilled]

    async def _act(self, action: str, ids: Sequence[str], reason: str) -> Any:
        htcondor = _htcondor()
        schedd = self._schedd
        self.stats.kill_calls += action == "Remove"
        try:
            return await self._call(
                action.lower(),
                # A plain string reason is dropped by the bindings (25.x); a (reason,
                # code) pair reaches the schedd, which records it as RemoveReason.
                lambda: schedd.act(
                    getattr(htcondor.JobAction, action), list(ids), reason=(reason, None)
                ),
                self.options.status_timeout,
            )
        except Exception as exc:
            raise SchedulerError(f"htcondor: {action} of {len(ids)} jobs failed: {exc}") from exc

    def forget(self, job: Job) -> None:
        super().forget(job)
        self._releases.pop(job, None)
        self._held_logged.discard(str(job.jid))
        self._removed.discard(str(job.jid))


class _Timeout(SchedulerError):
    """A bindings call outlived its timeout (it may still complete in its thread)."""


def _submit_error(exc: Exception) -> SubmissionError:
    """HTCondor's refusal of a submission: final for a bad description or a refused
    login, else transient.

    "Failed to create job ad" is the submit language refusing the description, and an
    ``AUTHENTICATE`` error a schedd that answered but would not take this user: trying
    again cannot help (it was retried as an outage for two minutes, an attempt a
    second). A schedd or collector that cannot be reached queued nothing."""
    text = str(exc).strip()
    if "Failed to create job ad" in text or "errmsg=Submit" in text:
        return SubmissionError(f"htcondor refused the submission: {text}", retryable=False)
    if "AUTHENTICATE:" in text:  # reached, and refused: a setting, not an outage
        return SubmissionError(
            "htcondor: the schedd refused to authenticate this user; check the pool's "
            "security settings (the `config` option: SEC_CLIENT_AUTHENTICATION_METHODS, "
            f"a token or password): {text}",
            retryable=False,
        )
    return SubmissionError(f"htcondor: submission failed: {text}", transient=True)
