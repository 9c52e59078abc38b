"""PanDA: jobs go to a PanDA server through its real client library, panda-client.

PanDA does not run a job where it is submitted: a pilot on a worker node of the job's
queue (``computingSite``) pulls it from the server and runs its payload, the
``transformation`` followed by the ``jobParameters``, through a shell. The payload is the
job's wrapper script, ``/bin/sh '<wrapper>'``, with the path quoted like every argument
(a workdir named ``it's $(x)`` stays one inert word); so the queue's workers must see
the workdir at the same path, as a Slurm cluster's nodes do. The wrapper's return code
file then settles the job; PanDA's own record (its state, the payload's exit code, the
pilot's error code and diagnostics) settles it when the file is not there
(``_states``).

Every client call is synchronous HTTP (a new httpx connection each): it runs in a worker
thread, bounded by a timeout, and is batched: one ``job/get_description``
(``getJobStatus``) for every active job per tick, one ``job/submit`` per batch, one
``job/kill`` per batch, each cut at the server's own limits (5000 jobs per submission,
5500 ids per description).

Submission. ``Client.submitJobs`` answers ``(255, None)`` both when the server refused
the jobs and when the connection was lost after the server may have stored them, and it
drops the server's message. xqueue must tell the two apart (a refusal is final, a lost
answer is looked up before anything is submitted again), so it sends the very request
submitJobs sends (the jobs serialized by the client's ``MiscUtils.dump_jobs_json``,
posted to ``job/submit`` by the client's own ``http_request_decorator``), asking the
decorator for the server's whole answer instead of the collapsed one.

Finding a submission again. Every job carries the workdir's run tag twice: in its
``jobName`` (``xq<tag>_<index>_<attempt>_<name>``) and in the number it is filed under
(``jediTaskID``: ``task_id``, or a number made from the tag). After a submission whose
answer was lost, and in a later run, one ``getPandaIDsWithTaskID`` lists the jobs filed
under that number and one ``getJobStatus`` reads their names: a job is adopted by its
index and attempt rather than submitted twice.

panda-client reads its server's address from the environment when it is first imported
(``PANDA_URL_SSL``, ``PANDA_URL``; ``PANDA_BEHIND_REAL_LB`` keeps it from resolving the
server's name at import), and its credentials (a grid proxy in ``X509_USER_PROXY``, or
OIDC with ``PANDA_AUTH=oidc``) on every call: xqueue leaves all of that to it.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import socket
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import anyio
import pandaclient  # noqa: F401 - a missing client fails when "panda" is chosen, by name

from xqueue.errors import (
    SchedulerError,
    SchedulerOptionError,
    SchedulerOutputError,
    SubmissionError,
    SubmissionUnknownError,
)
from xqueue.job import SCRIPT, Job
from xqueue.options import SchedulerOptions
from xqueue.scheduler import JobState, Scheduler, gather_bounded
from xqueue.schedulers.batch import (
    attempt_of,
    best_match,
    chunks,
    job_name,
    matches,
    quote,
    run_tag,
)
from xqueue.states import JobStatus

from ._states import field, verdict

# The server truncates longer lists (panda-server's api/v1 job.submit, job.get_description).
SERVER_MAX_SUBMIT = 5000
SERVER_MAX_DESCRIBE = 5500
# The jediTaskID a workdir's jobs are filed under when ``task_id`` is not given: above any
# task number a PanDA server hands out (JEDI counts from 1), within its 11-digit column.
TASK_BASE = 10**10
# Seconds one listing of a workdir's jobs serves the lookups of a resumed run.
LISTING_TTL = 10.0
RESOURCE_TYPES = ("SCORE", "MCORE", "SCORE_HIMEM", "MCORE_HIMEM")


@dataclasses.dataclass
class PandaOptions(SchedulerOptions):
    poll_interval: float = 10.0
    """Seconds between two status queries: a PanDA server is shared by many users."""
    queue: str = ""
    """The PanDA queue whose pilots run the jobs (the job's ``computingSite``); required."""
    site: str = ""
    """The site the job's outputs and log belong to (``destinationSE``); empty: PanDA's
    default for the queue."""
    container_image: str = ""
    """Image the pilot runs the payload in (``container_name``); empty: none. The queue
    must be set up for containers, and the image must see the workdir."""
    resource_type: str = ""
    """PanDA resource type (``SCORE``, ``MCORE``, ``SCORE_HIMEM``, ``MCORE_HIMEM``);
    empty: PanDA derives it from the job's cores and memory."""
    processing_type: str = ""
    """Free label PanDA groups jobs by in its monitor (``processingType``)."""
    prod_source_label: str = "user"
    """``user`` for analysis jobs; ``managed`` (production) needs a production role."""
    vo: str = ""
    """Virtual organisation (``VO``); empty: the server's default."""
    cloud: str = ""
    """Region the queue belongs to (``cloud``); empty: the server's default."""
    priority: int = 1000
    """The job's priority (``assignedPriority`` and ``currentPriority``)."""
    task_id: int = 0
    """The ``jediTaskID`` jobs are filed under and found again by; 0: a number made from
    the workdir, so that a later run on the same workdir finds them."""
    submit_chunk: int = 1000
    """The most jobs one ``job/submit`` carries (the server takes at most 5000)."""
    status_chunk: int = 5000
    """The most ids one ``job/get_description`` or ``job/kill`` carries (at most 5500)."""
    submit_timeout: float = 120.0
    """Seconds a submission may take; after that its outcome is unknown and looked up."""
    status_timeout: float = 60.0
    """Seconds a status, lookup or kill call may take before it counts as failed."""

    def validate(self, scheduler: str) -> None:
        super().validate(scheduler)
        self.queue = self.queue.strip()
        if not self.queue:
            raise SchedulerOptionError(
                f"{scheduler}: option 'queue' is required: the PanDA queue (computingSite) "
                "whose pilots run the jobs"
            )
        self.resource_type = self.resource_type.strip()
        if self.resource_type and self.resource_type not in RESOURCE_TYPES:
            raise SchedulerOptionError(
                f"{scheduler}: resource_type {self.resource_type!r} is not one of "
                f"{', '.join(RESOURCE_TYPES)}"
            )
        if not 1 <= self.submit_chunk <= SERVER_MAX_SUBMIT:
            raise SchedulerOptionError(
                f"{scheduler}: submit_chunk must be between 1 and {SERVER_MAX_SUBMIT}"
            )
        if not 1 <= self.status_chunk <= SERVER_MAX_DESCRIBE:
            raise SchedulerOptionError(
                f"{scheduler}: status_chunk must be between 1 and {SERVER_MAX_DESCRIBE}"
            )
        if self.task_id < 0:
            raise SchedulerOptionError(f"{scheduler}: task_id must be a positive number")
        for name in ("submit_timeout", "status_timeout"):
            if not getattr(self, name) > 0:
                raise SchedulerOptionError(f"{scheduler}: {name} must be > 0 seconds")


def task_number(tag: str) -> int:
    """The jediTaskID a workdir's jobs are filed under when ``task_id`` is not given."""
    return TASK_BASE + int(tag[:8], 16)


@dataclasses.dataclass
class _Client:
    """The client modules, imported in a worker thread (the import reads the environment
    and, without PANDA_BEHIND_REAL_LB, resolves the server's name)."""

    client: Any
    job_spec: Any
    dump_jobs: Callable[[list[Any]], str]
    submit: Callable[[str], tuple[int, Any]]
    host: str


def _load_client() -> _Client:
    client = importlib.import_module("pandaclient.Client")
    spec = importlib.import_module("pandaclient.JobSpec")
    misc = importlib.import_module("pandaclient.MiscUtils")

    def job_submit(jobs: str, verbose: bool = False) -> dict[str, str]:
        return {"jobs": jobs}

    submit = client.http_request_decorator(
        endpoint="job/submit", method="post", json_out=True, output_mode="full"
    )(job_submit)
    return _Client(client, spec.JobSpec, misc.dump_jobs_json, submit, socket.gethostname())


class PandaScheduler(Scheduler):
    """Jobs are PanDA jobs of one queue, run by its pilots."""

    name = "panda"
    # maxWalltime: the pilot stops the payload itself (pilot error 1213).
    enforces_walltime = True
    Options = PandaOptions
    options: PandaOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._api: _Client | None = None
        self._tag = ""
        self._task_id = 0
        self._names = re.compile("^$")
        # When a submission last ended with an unknown outcome: a lookup cached before
        # then cannot have seen what it may have stored.
        self._unknown_at = 0.0
        self._listing: tuple[float, dict[str, Any]] | None = None
        self._listing_lock = anyio.Lock()

    async def open(self, workdir: Any) -> None:
        await super().open(workdir)
        self._tag = run_tag(str(workdir.path))
        self._task_id = self.options.task_id or task_number(self._tag)
        self._names = re.compile(rf"^xq{self._tag}_(\d+)_(\d+)(?:_|$)")
        try:
            self._api = await anyio.to_thread.run_sync(_load_client)
        except OSError as exc:
            raise SchedulerError(
                f"panda: panda-client could not be loaded ({exc}); unless PANDA_BEHIND_REAL_LB=1 "
                "is set, it resolves its cache server's name (PANDACACHE_URL, a CERN host by "
                "default) when it is imported"
            ) from exc

    @property
    def api(self) -> _Client:
        if self._api is None:
            raise SchedulerError("panda: the scheduler was not opened")
        return self._api

    async def _call(self, timeout: float, fn: Callable[..., Any], *args: Any) -> Any:
        """One client call in a worker thread; TimeoutError when it outlasts ``timeout``
        (the thread is left to finish on its own: httpx gives up after 600 s)."""
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(partial(fn, *args), abandon_on_cancel=True)

    # -- submitting ------------------------------------------------------------------
    def job_name(self, job: Job) -> str:
        """The name that finds the job again: this workdir, its index and attempt."""
        return f"xq{self._tag}_{job.index}_{attempt_of(job)}_{job_name(job.name, 40)}"

    def _spec(self, job: Job) -> Any:
        """The JobSpec of one job. Only the script's path reaches the pilot's shell,
        quoted; the name is cut to letters, digits and ``_.+-``."""
        o = self.options
        spec = self.api.job_spec()
        spec.jobName = self.job_name(job)
        spec.transformation = "/bin/sh"
        spec.jobParameters = quote(job.attempt_path(SCRIPT))
        spec.computingSite = o.queue
        spec.prodSourceLabel = o.prod_source_label
        spec.jediTaskID = self._task_id
        spec.assignedPriority = spec.currentPriority = o.priority
        spec.creationHost = self.api.host
        for attr, value in (
            ("destinationSE", o.site),
            ("container_name", o.container_image),
            ("resource_type", o.resource_type),
            ("processingType", o.processing_type),
            ("VO", o.vo),
            ("cloud", o.cloud),
        ):
            if value:
                setattr(spec, attr, value)
        res = job.resources
        if res is not None:
            if res.cpus:
                spec.coreCount = res.cpus
            if res.memory_mb:
                spec.minRamCount, spec.minRamUnit = res.memory_mb, "MB"
            if res.walltime_s:
                spec.maxWalltime = res.walltime_s
        return spec

    def _prepare(self, jobs: Sequence[Job]) -> tuple[list[Job], str, dict[Job, BaseException]]:
        """Write the wrappers and serialize the jobs PanDA can take (worker thread)."""
        refused: dict[Job, BaseException] = {}
        sendable = []
        for job in jobs:
            if job.resources is not None and job.resources.gpus:
                refused[job] = SubmissionError(
                    "panda: a job cannot ask for gpus; PanDA gives GPUs by queue: choose a "
                    "GPU queue with the 'queue' option",
                    retryable=False,
                )
                continue
            self.write_script(job)
            sendable.append(job)
        return sendable, self.api.dump_jobs([self._spec(j) for j in sendable]), refused

    async def submit_jobs(self, jobs: Sequence[Job]) -> list[str | BaseException]:
        """One ``job/submit`` per chunk, ``submit_concurrency`` chunks at once; one
        PandaID or exception per job, in order."""
        results: dict[Job, str | BaseException] = {}

        async def one(part: Sequence[Job]) -> None:
            sendable, payload, refused = await anyio.to_thread.run_sync(self._prepare, part)
            results.update(refused)
            if sendable:
                results.update(zip(sendable, await self._submit(sendable, payload)))

        parts = list(chunks(jobs, self.options.submit_chunk))
        for part, error in zip(
            parts, await gather_bounded(parts, one, self.options.submit_concurrency)
        ):
            if isinstance(error, BaseException):  # the wrappers could not be written
                results.update((job, error) for job in part if job not in results)
        return [results[job] for job in jobs]

    async def _submit(self, jobs: list[Job], payload: str) -> list[str | BaseException]:
        self.stats.submit_calls += 1
        try:
            _, answer = await self.submit_call(
                jobs, partial(self.api.submit, payload), self.options.submit_timeout
            )
        except TimeoutError:
            return self._unknown(jobs, f"no answer within {self.options.submit_timeout:g} s")
        except Exception as exc:  # an answer the client could not read (200, not JSON)
            return self._unknown(jobs, repr(exc))
        if not isinstance(answer, dict):
            return self._unknown(jobs, "the connection failed or the answer was not JSON")
        if not answer.get("success"):
            message = str(answer.get("message") or "no message")
            error = SubmissionError(f"PanDA refused the submission: {message}", retryable=False)
            return [error] * len(jobs)
        data = answer.get("data")
        if not isinstance(data, list) or len(data) != len(jobs):
            return self._unknown(jobs, f"an answer that does not list the jobs: {data!r:.200}")
        results: list[str | BaseException] = []
        for entry in data:
            pid = entry[0] if isinstance(entry, (list, tuple)) and entry else None
            if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
                results.append(str(pid))
            else:
                results.append(SubmissionError(f"PanDA did not store the job: {entry!r:.200}"))
        return results

    def _unknown(self, jobs: Sequence[Job], why: str) -> list[str | BaseException]:
        self._unknown_at = time.monotonic()
        error = SubmissionUnknownError(
            f"panda: job/submit of {len(jobs)} job(s) got no usable answer ({why}); "
            "the server may have stored them"
        )
        return [error] * len(jobs)

    async def submit_job(self, job: Job) -> str:
        (result,) = await self.submit_jobs([job])
        if isinstance(result, BaseException):
            raise result
        return result

    # -- status ----------------------------------------------------------------------
    async def describe(self, ids: Sequence[str]) -> dict[str, Any]:
        """PanDA's record of each id it knows (one getJobStatus per ``status_chunk``)."""
        wanted = sorted({int(i) for i in ids if i.isdigit()})
        records: dict[str, Any] = {}
        for part in chunks(wanted, self.options.status_chunk):
            self.stats.status_calls += 1
            try:
                status, specs = await self._call(
                    self.options.status_timeout, self.api.client.getJobStatus, list(part)
                )
            except TimeoutError:
                raise SchedulerError(
                    f"panda: job/get_description gave no answer within "
                    f"{self.options.status_timeout:g} s"
                ) from None
            if status != 0 or not isinstance(specs, list):
                raise SchedulerError(
                    "panda: job/get_description failed (the server refused it or could not "
                    "be reached; panda-client printed the details)"
                )
            if len(specs) != len(part):
                raise SchedulerOutputError(
                    "job/get_description", repr(specs), f"{len(specs)} records for {len(part)} ids"
                )
            records.update((str(pid), spec) for pid, spec in zip(part, specs) if spec is not None)
        return records

    async def poll_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobState]:
        records = await self.describe([j.jid for j in jobs if j.jid])
        verdicts = {job: self._verdict(records.get(job.jid or ""), job) for job in jobs}
        return await anyio.to_thread.run_sync(
            lambda: {job: self._settle(job, *verdicts[job]) for job in jobs}
        )

    @staticmethod
    def _verdict(spec: Any, job: Job) -> tuple[bool, JobState | None]:
        return (False, None) if spec is None else verdict(spec, job.kill_requested)

    def _settle(self, job: Job, held: bool, said: JobState | None) -> JobState:
        """The wrapper's files first (``reconcile``); PanDA's diagnostics explain a
        failure whose return code the wrapper recorded without saying why."""
        state = self.reconcile(job, held, said)
        if state.status is JobStatus.FAILED and not state.reason and said and said.reason:
            state = dataclasses.replace(state, reason=said.reason)
        return state

    async def job_is_running(self, job: Job) -> bool:
        record = (await self.describe([job.jid or ""])).get(job.jid or "")
        return self._verdict(record, job)[0]

    # -- finding a submission again --------------------------------------------------------
    async def _filed(self) -> dict[str, Any]:
        """Every job filed under this workdir's task number, by PandaID.

        One listing serves the jobs re-adopted within ``LISTING_TTL`` seconds, unless a
        submission's outcome turned unknown since: only such a submission can add a job
        this workdir's lookups must see. A stale state is harmless: a job found by
        name is adopted whatever its state, and its next poll reads the state afresh.
        """
        async with self._listing_lock:
            cached = self._listing
            now = time.monotonic()
            fresh = cached is not None and now - cached[0] < LISTING_TTL
            since = max(self._unknown_at, self.flights_ended_at)
            if cached is not None and fresh and cached[0] > since:
                return cached[1]
            self.stats.status_calls += 1
            try:
                status, ids = await self._call(
                    self.options.status_timeout,
                    self.api.client.getPandaIDsWithTaskID,
                    self._task_id,
                )
            except TimeoutError:
                raise SchedulerError("panda: task/get_job_ids gave no answer in time") from None
            if status != 0 or not isinstance(ids, list):
                raise SchedulerError(f"panda: task/get_job_ids failed for task {self._task_id}")
            records = await self.describe([str(i) for i in ids])
            self._listing = (now, records)
            return records

    async def recover_job(self, job: Job) -> bool:
        """Find a job an earlier submission may have made: by its PandaID, or by the
        name of its index and attempt among the jobs filed under this workdir's task
        number; True while PanDA holds it. An ended one is adopted too (``job.jid`` is
        set): its return code file, or PanDA's record, tells how it ended."""
        filed = await self._filed()
        if job.jid is None:
            found = []
            for pid, spec in filed.items():
                m = self._names.match(str(field(spec, "jobName") or ""))
                if m and int(m.group(1)) == job.index and matches(job, int(m.group(2))):
                    found.append((pid, int(m.group(2))))
            job.jid = best_match(job, found)
            if job.jid is None:
                return False
        record = filed.get(job.jid)
        if record is None:  # filed under another task number (task_id was changed)
            record = (await self.describe([job.jid])).get(job.jid)
        return self._verdict(record, job)[0]

    # -- killing ---------------------------------------------------------------------
    async def kill_jobs(self, jobs: Sequence[Job]) -> list[BaseException | None]:
        """One ``job/kill`` per ``status_chunk`` ids. PanDA cancels a job no pilot has
        taken at once and tells a running one's pilot to kill it on its next heartbeat;
        the job ends when a poll sees it cancelled. An id PanDA does not kill (it has
        ended) is no error."""
        ids = sorted({int(j.jid) for j in jobs if j.jid and j.jid.isdigit()})
        failed: dict[str, BaseException] = {}
        for part in chunks(ids, self.options.status_chunk):
            self.stats.kill_calls += 1
            error: BaseException | None = None
            try:
                status, _ = await self._call(
                    self.options.status_timeout, self.api.client.killJobs, list(part)
                )
                if status != 0:
                    error = SchedulerError("panda: job/kill failed (refused or unreachable)")
            except TimeoutError:
                error = SchedulerError("panda: job/kill gave no answer in time")
            if error is not None:
                failed.update((str(pid), error) for pid in part)
        return [failed.get(job.jid or "") for job in jobs]

    async def kill_job(self, job: Job) -> None:
        (error,) = await self.kill_jobs([job])
        if error is not None:
            raise error
