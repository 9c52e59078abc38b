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

Status: ONE schedd query per tick, constrained on the run tag (``XqueueRun``, a custom
attribute every job of the workdir carries), serves every active job. A job that left
the queue is settled by its wrapper's return code file; one that left none is looked up
in ``history()`` (one call for all of them): removed outside xqueue, or ended by a
signal. A held job is reported with HTCondor's ``HoldReason``: by default it fails with
that reason and is removed (``on_hold="fail"``); ``on_hold="release"`` releases it up
to ``max_releases`` times first, and ``on_hold="wait"`` leaves it for someone else.

Kill: ``act(JobAction.Remove)`` for every job of a tick at once. Resume: a job whose id
was recorded is followed by that id; one whose id never came back is found by its tag
(``XqueueJob = "<index>.<attempt>"``).

The bindings block: every call runs in a worker thread, one at a time (the library is
not documented as thread-safe), under ``call_timeout``. Client settings come from the
usual places (``CONDOR_CONFIG``, ``_CONDOR_*`` environment variables) and from the
``config`` option, which sets HTCondor configuration knobs in this process (for
example ``SEC_CLIENT_AUTHENTICATION_METHODS`` and ``SEC_CLAIMTOBE_USER``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio

from ..errors import SchedulerError, SchedulerOptionError, SubmissionError, SubmissionUnknownError
from ..failures import FailureClass
from ..job import SCRIPT, Job
from ..options import SchedulerOptions
from ..scheduler import JobState, Scheduler
from ..states import JobStatus
from ..workdir import read_rc
from ._cluster import attempt_of, best_match, chunks, group_by, matches, run_tag

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
class HTCondorOptions(SchedulerOptions):
    collector: str = ""
    """The pool's collector (``host[:port]``); empty: the client configuration's."""
    schedd: str = ""
    """The schedd's name; empty: the pool's only schedd (or the local one)."""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """HTCondor configuration knobs set in this process before the pool is contacted
    (process-wide), e.g. ``{"SEC_CLAIMTOBE_USER": "me"}``."""
    arrays: bool = True
    """Submit jobs fed together with the same resources as one cluster of many procs."""
    on_hold: str = "fail"
    """What a held job means: ``fail`` (with its HoldReason, and remove it), ``release``
    (release it up to ``max_releases`` times, then fail it) or ``wait`` (leave it)."""
    max_releases: int = 3
    """How often ``on_hold="release"`` releases one attempt before it fails it."""
    call_timeout: float = 60.0
    """Seconds one bindings call (submit, query, history, act) may take."""

    accepts_extra = True

    def validate(self, scheduler: str) -> None:
        super().validate(scheduler)
        if self.on_hold not in _HOLD_POLICIES:
            raise SchedulerOptionError(
                f"{scheduler}: on_hold must be one of {', '.join(_HOLD_POLICIES)}, "
                f"not {self.on_hold!r}"
            )
        if self.max_releases < 0 or not self.call_timeout > 0:
            raise SchedulerOptionError(f"{scheduler}: max_releases >= 0 and call_timeout > 0")
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
    """What a job ad out of the queue (or completed in it) says about how the job ended."""
    status = ad.get("JobStatus")
    if status == COMPLETED:
        if ad.get("ExitBySignal"):
            rc = 128 + int(ad.get("ExitSignal") or 0)
        else:
            rc = int(ad.get("ExitCode") or 0)
        return JobState(JobStatus.FINISHED if rc == 0 else JobStatus.FAILED, rc)
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


def held_state(ad: Any) -> JobState:
    """A held job failed with HTCondor's reason (removed first, ``kill=True``)."""
    reason = ad.get("HoldReason") or "no reason given"
    code = ad.get("HoldReasonCode")
    failure = FailureClass.SUBMIT_FAILED  # it could not run as it was submitted
    if code == 34 and "memory" in str(reason).lower():  # JobOutOfResources: memory
        failure = FailureClass.OOM
    return JobState(
        JobStatus.FAILED,
        None,
        f"held by HTCondor: {reason} (HoldReasonCode {code})",
        kill=True,
        failure=failure,
    )


def _jid(ad: Any) -> str:
    return f"{ad.get('ClusterId')}.{ad.get('ProcId')}"


def _htcondor() -> Any:
    """The bindings module, imported on first use (it reads the client configuration)."""
    import htcondor2

    return htcondor2


class HTCondorScheduler(Scheduler):
    """Jobs are HTCondor jobs (procs of one cluster when submitted together)."""

    name = "htcondor"
    Options = HTCondorOptions
    options: HTCondorOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._tag = ""
        self._schedd: Any = None
        self._limiter = anyio.CapacityLimiter(1)
        self._listing: tuple[float, dict[str, Any]] | None = None
        self._unknown_at = 0.0
        self._releases: dict[Job, int] = {}
        self._held_logged: set[Job] = set()

    @property
    def max_batch(self) -> int:
        return _MAX_CLUSTER if self.options.arrays else 1 << 30

    # -- the bindings, in a worker thread --------------------------------------------------
    async def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """One blocking bindings call in the worker thread, under ``call_timeout``."""
        try:
            with anyio.fail_after(self.options.call_timeout):
                return await anyio.to_thread.run_sync(
                    fn, *args, limiter=self._limiter, abandon_on_cancel=True
                )
        except TimeoutError as exc:
            raise _Timeout(
                f"htcondor: {what} took longer than {self.options.call_timeout:g} s"
            ) from exc

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

    async def open(self, workdir: Any) -> None:
        await super().open(workdir)
        self._tag = run_tag(str(workdir.path))
        try:
            self._schedd = await self._call("finding the schedd", self._connect)
        except Exception as exc:
            where = self.options.collector or "the configured collector"
            raise SchedulerError(
                f"htcondor: cannot reach the schedd through {where}: {exc}"
            ) from exc

    # -- submitting ------------------------------------------------------------------------
    def _items(self, jobs: Sequence[Job]) -> list[dict[str, str]]:
        """Each proc's item data; the scripts are written first. Blocking."""
        items = []
        for job in jobs:
            self.write_script(job)
            items.append(
                {
                    "xqscript": submit_value(job.attempt_path(SCRIPT)),
                    "xqdir": submit_value(job.dir),
                    "xqjob": f"{job.index}.{attempt_of(job)}",
                }
            )
        return items

    async def _submit(self, jobs: Sequence[Job]) -> list[str]:
        """One schedd submission: a cluster with one proc per job; their ids in order."""
        htcondor = _htcondor()
        items = await anyio.to_thread.run_sync(self._items, jobs)
        desc = description(self._tag, jobs[0], self.options.extra)
        schedd = self._schedd

        def submit() -> Any:
            return schedd.submit(htcondor.Submit(desc), itemdata=iter(items))

        self.stats.submit_calls += 1
        try:
            result = await self._call("submit", submit)
        except _Timeout as exc:
            self._unknown_at = time.monotonic()
            raise SubmissionUnknownError(f"{exc}; the jobs may have been queued") from exc
        except Exception as exc:
            raise _submit_error(exc) from exc
        cluster, first = int(result.cluster()), int(result.first_proc())
        return [f"{cluster}.{first + i}" for i in range(len(jobs))]

    async def submit_job(self, job: Job) -> str:
        return (await self._submit([job]))[0]

    async def submit_jobs(self, jobs: Sequence[Job]) -> list[str | BaseException]:
        """Jobs with the same resources as procs of one cluster (at most 1000 a cluster).

        A refused submission fails the jobs it carried, with HTCondor's message."""
        units: list[Sequence[Job]] = []
        if self.options.arrays:
            for group in group_by(jobs, lambda j: j.resources).values():
                units.extend(chunks(group, _MAX_CLUSTER))
        else:
            units = [[job] for job in jobs]
        results: dict[Job, str | BaseException] = {}

        async def one(unit: Sequence[Job]) -> None:
            try:
                ids: list[str | BaseException] = list(await self._submit(unit))
            except Exception as exc:
                ids = [exc] * len(unit)
            results.update(zip(unit, ids))

        async with anyio.create_task_group() as tg:
            for unit in units:
                tg.start_soon(one, unit)
        return [results[job] for job in jobs]

    # -- status ----------------------------------------------------------------------------
    async def _queue(self) -> dict[str, Any]:
        """Every job of this workdir in the schedd's queue, by id: ONE query."""
        schedd = self._schedd
        constraint = f'{RUN_ATTR} == "{self._tag}"'
        self.stats.status_calls += 1
        try:
            ads = await self._call("query", lambda: schedd.query(constraint, PROJECTION))
        except Exception as exc:
            raise SchedulerError(f"htcondor: querying the schedd failed: {exc}") from exc
        listing = {_jid(ad): ad for ad in ads}
        self._listing = (time.monotonic(), listing)
        return listing

    async def _history(self, ids: Sequence[str]) -> dict[str, Any]:
        """How jobs that left the queue ended: ONE history call for all of them."""
        schedd = self._schedd
        pairs = [jid.split(".") for jid in ids]
        which = " || ".join(f"(ClusterId == {c} && ProcId == {p})" for c, p in pairs)
        constraint = f'{RUN_ATTR} == "{self._tag}" && ({which})'
        self.stats.status_calls += 1
        try:
            ads = await self._call(
                "history", lambda: list(schedd.history(constraint, PROJECTION, match=len(ids)))
            )
        except Exception as exc:
            raise SchedulerError(f"htcondor: reading the schedd's history failed: {exc}") from exc
        return {_jid(ad): ad for ad in ads}

    async def poll_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobState]:
        queue = await self._queue()
        held: list[tuple[Job, bool, JobState | None]] = []
        gone: list[Job] = []
        on_hold: list[tuple[Job, Any]] = []
        for job in jobs:
            ad = queue.get(job.jid or "")
            status = ad.get("JobStatus") if ad is not None else None
            if status in ALIVE:
                held.append((job, True, None))
            elif status == HELD:
                on_hold.append((job, ad))
            elif status == COMPLETED:
                held.append((job, False, ended_state(ad, job.kill_requested)))
            else:
                gone.append(job)
        held += await self._held(on_hold)
        unresolved = await anyio.to_thread.run_sync(
            lambda: [job.jid for job in gone if job.jid and read_rc(job) is None]
        )
        past = await self._history([j for j in unresolved if j]) if unresolved else {}
        for job in gone:
            ad = past.get(job.jid or "")
            held.append((job, False, ended_state(ad, job.kill_requested) if ad else None))
        return await anyio.to_thread.run_sync(
            lambda: {job: self.reconcile(job, alive, verdict) for job, alive, verdict in held}
        )

    async def _held(self, jobs: list[tuple[Job, Any]]) -> list[tuple[Job, bool, JobState | None]]:
        """Held jobs, per ``on_hold``: failed with the reason, released, or left waiting."""
        out: list[tuple[Job, bool, JobState | None]] = []
        release: list[Job] = []
        for job, ad in jobs:
            if job not in self._held_logged:
                self._held_logged.add(job)
                log.warning("job %s (%s): held: %s", job.index, job.jid, ad.get("HoldReason"))
            policy = self.options.on_hold
            if policy == "release" and self._releases.get(job, 0) < self.options.max_releases:
                release.append(job)
                out.append((job, True, None))
            elif policy == "wait" or job.kill_requested:
                out.append((job, True, None))
            else:
                state = held_state(ad)
                if policy == "release":
                    state = dataclasses.replace(
                        state, reason=f"{state.reason}; released {self.options.max_releases} times"
                    )
                out.append((job, True, state))
        if release:
            await self._act("Release", release, "xqueue: on_hold=release")
            for job in release:
                self._releases[job] = self._releases.get(job, 0) + 1
                self._held_logged.discard(job)
        return out

    async def job_is_running(self, job: Job) -> bool:
        ad = (await self._queue()).get(job.jid or "")
        return ad is not None and ad.get("JobStatus") in ALIVE | {HELD}

    # -- resume ----------------------------------------------------------------------------
    async def recover_job(self, job: Job) -> bool:
        """Find a job an earlier run submitted: by its id, or by its ``XqueueJob`` tag.

        One queue listing serves every job re-adopted within a second (but never one
        older than the last submission whose outcome was unknown). ``job.jid`` is set
        when the job is found; a job no longer queued is then settled by polling (its
        return code file, or the schedd's history)."""
        cached = self._listing
        now = time.monotonic()
        if cached is not None and now - cached[0] < 1.0 and cached[0] > self._unknown_at:
            queue = cached[1]
        else:
            queue = await self._queue()
        if job.jid is None:
            found = []
            for jid, ad in queue.items():
                index, _, attempt = str(ad.get(JOB_ATTR) or "").partition(".")
                if index == str(job.index) and attempt.isdigit() and matches(job, int(attempt)):
                    found.append((jid, int(attempt)))
            job.jid = best_match(job, found)
        ad = queue.get(job.jid or "")
        return ad is not None and ad.get("JobStatus") in ALIVE | {HELD}

    # -- killing ---------------------------------------------------------------------------
    async def _act(self, action: str, jobs: Sequence[Job], reason: str) -> None:
        htcondor = _htcondor()
        ids = [job.jid for job in jobs if job.jid]
        if not ids:
            return
        schedd = self._schedd
        self.stats.kill_calls += action == "Remove"
        try:
            await self._call(
                action.lower(),
                # A plain string reason is dropped by the bindings (25.x); a (reason,
                # code) pair reaches the schedd, which records it as RemoveReason.
                lambda: schedd.act(getattr(htcondor.JobAction, action), ids, reason=(reason, None)),
            )
        except Exception as exc:
            raise SchedulerError(f"htcondor: {action} of {len(ids)} jobs failed: {exc}") from exc

    async def kill_jobs(self, jobs: Sequence[Job]) -> list[BaseException | None]:
        """One ``Remove`` for every job; a job that has already left is not an error."""
        try:
            await self._act("Remove", jobs, "xqueue: killed")
        except SchedulerError as exc:
            return [exc] * len(jobs)
        return [None] * len(jobs)

    async def kill_job(self, job: Job) -> None:
        (error,) = await self.kill_jobs([job])
        if error is not None:
            raise error

    def forget(self, job: Job) -> None:
        super().forget(job)
        self._releases.pop(job, None)
        self._held_logged.discard(job)


class _Timeout(SchedulerError):
    """A bindings call outlived ``call_timeout`` (it may still complete in its thread)."""


def _submit_error(exc: Exception) -> SubmissionError:
    """HTCondor's refusal of a submission: final for a bad description, else transient.

    "Failed to create job ad" is the submit language refusing the description: trying
    again cannot help. A schedd or collector that cannot be reached queued nothing."""
    text = str(exc).strip()
    if "Failed to create job ad" in text or "errmsg=Submit" in text:
        return SubmissionError(f"htcondor refused the submission: {text}", retryable=False)
    return SubmissionError(f"htcondor: submission failed: {text}", transient=True)
