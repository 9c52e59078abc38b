"""Google Cloud Batch: each job is one Batch task, its files staged in a bucket.

Jobs handed over together with the same resources become one Batch job of many tasks
(``submit_jobs``: grouped by ``_cluster.submit_grouped`` as Slurm arrays are); task ``k``
runs job ``k``, picked by the ``BATCH_TASK_INDEX`` Batch sets (``_gbatch_spec.selector``).
Arrays are done here rather than by moving onto ``BatchScheduler``: that base reads
return codes from a shared file system, chains arrays to keep ``forks`` (Batch jobs
cannot wait for one another) and finds elements by ``.jobs`` files on that file system;
this backend would override nearly every step, so it reuses the grouping only. Per-task
status costs one ``ListTasks`` per array, and only on a tick when its task counts (in
the ``ListJobs`` answer) moved. Batch cannot cancel one task: an element to kill gets a
kill marker its task reads before it starts, and the array is cancelled once only
elements to kill are left in it.

There is no file system shared with the jobs (``shared_fs = False``). The workdir stays
on the controller; each job's wrapper script (``write_script``, the same wrapper every
backend runs) is uploaded to the job's own folder in ``staging_bucket``, which the Batch
job mounts as a GCS volume (gcsfuse, set up by Batch itself) at ``mount_root/<job id>``.
The runnable runs the wrapper from there, so ``started``, ``stdout``, ``stderr`` and
``rc`` land in the bucket; when Batch reports the job ended (or forgets it) they are
downloaded into the local job folder (``_gcs.Staging``) and the job is settled from them
exactly as a cluster job is from its shared files (``Scheduler.reconcile``).

With a ``gs://`` workdir (``remote_workdir``; ``remote_store`` makes its storage) there
is no staging bucket: a job's folder in the bucket is its workdir folder,
``<prefix>/<index>-<slug>/``, which every attempt's Batch job mounts; ``specs.jsonl`` is
copied to the bucket before a wrapper goes up; the run tag comes from the URL, so a run
on another machine finds the jobs by their labels; and the journal (with the specs) is
copied to the bucket every ``journal_interval`` and when the run ends (``aclose``).

The API is driven with the official ``google-cloud-batch`` async client (grpc.aio). It
runs on asyncio only; under trio its calls go through ``_aio.AsyncioBridge``'s private
loop, like asyncssh and aiodocker. Storage calls are blocking and go to worker threads.

Status: one ``ListJobs`` per tick, filtered on the workdir's run tag label, serves every
job of the run (pages of ``page_size``). Batch states map to xqueue's: QUEUED and
SCHEDULED are submitted, RUNNING and CANCELLATION_IN_PROGRESS running; SUCCEEDED,
FAILED, CANCELLED and DELETION_IN_PROGRESS have ended. A job that ended without a return
code file (the wrapper never ran, or was cut off by a preemption or the walltime) is
settled from the task exit code in Batch's status events (``_gbatch_spec.ended_state``).

Kill: ``CancelJob`` (the service falls back to ``DeleteJob`` where cancel is not
offered); the job ends when the listing shows it CANCELLED. Resume: a job whose Batch
name was recorded is looked up by ``GetJob``; one whose name never came back is found by
its labels (run tag, index, attempt).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
from google.api_core import exceptions as gexc
from google.cloud import batch_v1
from google.cloud.batch_v1.services.batch_service.transports import (
    BatchServiceGrpcAsyncIOTransport,
)

from .._text import quote
from ..calls import CALL_FILE
from ..errors import SchedulerError, SchedulerOptionError, SubmissionError, SubmissionUnknownError
from ..job import SCRIPT, Job, attempt_file
from ..options import SchedulerOptions
from ..remote_workdir import RemoteWorkdir, WorkdirURL
from ..scheduler import JobState, Scheduler, gather_bounded
from ..states import JobStatus
from . import _gbatch_spec as spec
from . import _gbatch_view as listed
from ._aio import AsyncioBridge
from ._cluster import attempt_of, run_tag, submit_grouped
from ._gcs import KILL_MARK, OUTPUTS, Staging, make_client
from ._gcs_store import GcsStore

log = logging.getLogger("xqueue.gbatch")


@dataclasses.dataclass
class GbatchOptions(SchedulerOptions):
    project: str = ""
    """The Google Cloud project the jobs run in."""
    location: str = ""
    """The Batch region, e.g. ``us-central1``."""
    staging_bucket: str = ""
    """``gs://bucket[/prefix]``: where each job's script and outputs are staged, for a
    local workdir (required then). With a ``gs://`` workdir the job files go there."""
    local_dir: str = ""
    """With a ``gs://`` workdir: the local folder of the run's records (journal,
    specs, lock, events, copies of job files); empty: one under the user's cache folder."""
    journal_interval: float = 30.0
    """With a ``gs://`` workdir: seconds between copies of the journal to the bucket
    (and one at the end of each run)."""
    mount_root: str = "/mnt/disks/xqueue"
    """Where a job's staging folder is mounted on its VM (``<mount_root>/<job id>``)."""
    image: str = ""
    """Run the wrapper in this container image (a container runnable); empty: on the VM."""
    entrypoint: str = "/bin/sh"
    """The program that runs the wrapper script (on the VM, or in ``image``)."""
    gpu_type: str = ""
    """Accelerator type for jobs that ask for GPUs (e.g. ``nvidia-tesla-t4``)."""
    job_prefix: str = "xq"
    """First part of every Batch job id (lowercase letters, digits, ``-``)."""
    endpoint: str = ""
    """Batch API endpoint (host:port); empty: the service's default."""
    storage_endpoint: str = ""
    """Cloud Storage endpoint; empty: the default (``STORAGE_EMULATOR_HOST`` applies)."""
    insecure: bool = False
    """Talk plaintext gRPC to ``endpoint`` with no credentials: for a local emulator only."""
    page_size: int = 1000
    """Jobs per ``ListJobs`` page."""
    rpc_timeout: float = 60.0
    """Seconds one Batch API call may take."""
    python: str = "python3"
    """Interpreter that runs Python calls on the VM (it needs xqueue and cloudpickle)."""
    arrays: bool = True
    """Submit jobs fed together with the same resources as one Batch job of many tasks
    (``taskCount``), each task running one job; False: one Batch job per job."""
    array_limit: int = 1000
    """The most tasks (jobs) of one array."""

    above_zero = frozenset({"journal_interval", "rpc_timeout"})

    accepts_extra = True

    def validate(self, scheduler: str) -> None:
        super().validate(scheduler)
        for name in ("project", "location"):
            if not getattr(self, name):
                raise SchedulerOptionError(
                    f"{scheduler}: option {name!r} is required (project='my-project', "
                    "location='us-central1', and workdir='gs://my-bucket/runs' or "
                    "staging_bucket='gs://my-bucket/xqueue')"
                )
        if self.staging_bucket:
            spec.parse_staging(self.staging_bucket)
        if not spec.PREFIX.match(self.job_prefix):
            raise SchedulerOptionError(
                f"{scheduler}: job_prefix {self.job_prefix!r} must be 1-20 lowercase letters, "
                "digits or '-', starting with a letter"
            )
        if not self.mount_root.startswith("/"):
            raise SchedulerOptionError(f"{scheduler}: mount_root must be an absolute path")
        if self.insecure and not self.endpoint:
            raise SchedulerOptionError(f"{scheduler}: insecure needs an endpoint (host:port)")
        if self.array_limit < 1:
            raise SchedulerOptionError(f"{scheduler}: array_limit must be >= 1")
        if self.page_size < 1:
            raise SchedulerOptionError(f"{scheduler}: page_size must be > 0")


class GbatchScheduler(Scheduler):
    """Jobs are Google Cloud Batch jobs; their files travel through a bucket."""

    name = "gbatch"
    Options = GbatchOptions
    options: GbatchOptions
    shared_fs: ClassVar[bool] = False
    # maxRunDuration: Batch stops the task itself and reports exit code 50005.
    enforces_walltime: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        own = [field.name for field in dataclasses.fields(self.options) if field.name != "extra"]
        self.template = spec.template(self.name, self.options.extra, own)
        _check_template(self.template)
        self._bucket, self._prefix = "", ""
        if self.options.staging_bucket:
            self._bucket, self._prefix = spec.parse_staging(self.options.staging_bucket)
        self._store: GcsStore | None = None  # a gs:// workdir's (remote_store)
        self._remote: RemoteWorkdir | None = None  # that workdir, once open
        self._pushed_at = 0.0
        self._bridge = AsyncioBridge()
        self._client: Any = None
        self._staging: Staging | None = None
        self._tag = ""
        self._nonce = ""
        self._listing: tuple[float, dict[str, listed.Seen]] | None = None
        self._unknown_at = 0.0
        self._serial = 0  # arrays of this run, for their ids
        # Array name -> (its task counts when last listed, its tasks then).
        self._tasks: dict[str, tuple[tuple[tuple[str, int], ...], dict[int, listed.Task]]] = {}
        # Array name -> its elements not settled yet; those asked to be killed.
        self._members: dict[str, set[Job]] = {}
        self._killing: dict[str, set[Job]] = {}
        # Batch jobs this run cancelled: their CANCELLED is not "outside xqueue".
        self._cancelled: set[str] = set()

    @property
    def parent(self) -> str:
        return f"projects/{self.options.project}/locations/{self.options.location}"

    # -- lifecycle -----------------------------------------------------------------------
    def remote_store(self, url: WorkdirURL) -> GcsStore:
        """The storage of a ``gs://`` workdir (``remote_workdir``): its job files go there."""
        if self.options.staging_bucket:
            raise SchedulerOptionError(
                f"gbatch: workdir {url.text!r} is in Cloud Storage already; leave out "
                "staging_bucket (it is for a local workdir)"
            )
        credentials = None if self.options.insecure else _default_credentials
        self._store = GcsStore(
            url,
            project=self.options.project,
            endpoint=self.options.storage_endpoint,
            credentials=credentials,
            timeout=self.options.rpc_timeout,
            local_dir=self.options.local_dir,
        )
        return self._store

    async def open(self, workdir: Any) -> None:
        await super().open(workdir)
        remote = isinstance(workdir, RemoteWorkdir) and workdir.store is self._store
        self._remote = workdir if remote else None
        if self._remote is not None:  # the same tag whichever machine runs it
            self._tag = self._remote.url.tag
            self._bucket, self._prefix = self._remote.url.bucket, self._remote.url.prefix
        elif not self.options.staging_bucket:
            raise SchedulerOptionError(
                "gbatch: with a local workdir, option 'staging_bucket' is required "
                "(staging_bucket='gs://my-bucket/xqueue'), or use workdir='gs://my-bucket/runs'"
            )
        else:
            self._tag = run_tag(str(workdir.path))
        # Ids are deterministic within a run (a lost create is retried under its id) and
        # new for each run (a job run again restarts its attempts at 1).
        self._nonce = secrets.token_hex(3)
        credentials = None
        if not self.options.insecure:
            credentials = await anyio.to_thread.run_sync(_default_credentials)
        self._staging = await anyio.to_thread.run_sync(self._make_staging, credentials)
        await anyio.to_thread.run_sync(self._staging.check)
        await self._bridge.start()
        try:
            # The channel is made in the loop it will live in; the client around it in a
            # worker thread, since its constructor reads files (mTLS configuration).
            channel = await self._bridge.call(self._channel, credentials)
            self._client = await anyio.to_thread.run_sync(_client, channel, self._host)
        except BaseException:
            await self._bridge.stop()
            raise

    def _make_staging(self, credentials: Any) -> Staging:
        if self._store is not None and self._remote is not None:
            client = self._store.client()
        else:
            client = make_client(self.options.project, self.options.storage_endpoint, credentials)
        return Staging(client, self._bucket, self._prefix)

    @property
    def _host(self) -> str:
        return self.options.endpoint or batch_v1.BatchServiceAsyncClient.DEFAULT_ENDPOINT

    async def _channel(self, credentials: Any) -> Any:
        """The gRPC channel (in the client's loop): plaintext for a local emulator."""
        import grpc

        if self.options.insecure:
            return grpc.aio.insecure_channel(self.options.endpoint)
        return BatchServiceGrpcAsyncIOTransport.create_channel(self._host, credentials=credentials)

    async def aclose(self) -> None:
        if self._remote is not None:
            await self._push_journal()
        holder, self._client = [self._client], None
        if holder[0] is not None:
            await self._bridge.call(holder[0].transport.close)
            # When the process's last grpc.aio channel is freed, grpc joins its poller
            # thread: the client is freed in a worker thread, off the loop.
            await anyio.to_thread.run_sync(_free, holder)
        await self._bridge.stop()

    async def _call(self, method: str, **kwargs: Any) -> Any:
        """One Batch API call, in the client's loop, with no retry of the library's own."""
        assert self._client is not None, "GbatchScheduler.open() was not called"
        fn = getattr(self._client, method)
        return await self._bridge.call(fn, retry=None, timeout=self.options.rpc_timeout, **kwargs)

    async def _push_journal(self) -> None:
        """Copy the journal (and specs) to the bucket. A copy that fails loses nothing:
        the bucket names every attempt already (its wrapper and spec), so a resume looks
        those up."""
        assert self._remote is not None
        self._pushed_at = time.monotonic()
        try:
            await anyio.to_thread.run_sync(self._remote.push)
        except Exception as exc:
            log.warning("gbatch: cannot copy the journal to %s: %s", self._remote.url.text, exc)

    # -- submitting ----------------------------------------------------------------------
    def folder_key(self, job: Job, batch_id: str, task: int | None = None) -> str:
        """The job's folder under the bucket prefix: the job folder's own name in a
        gs:// workdir (its files, every attempt), else one folder per Batch job (per
        task of an array: ``<array id>/t<task>``)."""
        if self._remote is not None:
            return os.path.basename(job.dir)
        return batch_id if task is None else f"{batch_id}/t{task}"

    def task_dir(self, job: Job, batch_id: str, task: int | None) -> str:
        """The job's folder on its VM: the mount itself for a single job, a folder of
        the array's mount (the array's folder, or a gs:// workdir) for a task."""
        mount = self.mount_path(batch_id)
        if task is None:
            return mount
        if self._remote is not None:
            return f"{mount}/{os.path.basename(job.dir)}"
        return f"{mount}/t{task}"

    def batch_id(self, job: Job) -> str:
        return spec.job_id(self.options.job_prefix, self._tag, self._nonce, job.index, job.attempt)

    def mount_path(self, batch_id: str) -> str:
        """Where the job's staging folder is mounted on its VM (its own folder only)."""
        return f"{self.options.mount_root.rstrip('/')}/{batch_id}"

    def _runnable(self, script: str, text: str = "") -> dict[str, Any]:
        """The runnable of the job's wrapper at ``script``, or of an array's ``text``."""
        if text:
            if self.options.image:  # the selector is shell: the image has /bin/sh
                return {
                    "container": {
                        "image_uri": self.options.image,
                        "entrypoint": "/bin/sh",
                        "commands": ["-c", text],
                    }
                }
            return {"script": {"text": text}}
        if self.options.image:
            return {
                "container": {
                    "image_uri": self.options.image,
                    "entrypoint": self.options.entrypoint,
                    "commands": [script],
                }
            }
        return {"script": {"text": f"exec {quote(self.options.entrypoint)} {quote(script)}\n"}}

    def build(self, job: Job, batch_id: str) -> dict[str, Any]:
        """The Batch job (as JSON data) that runs one attempt of ``job``."""
        mount = self.mount_path(batch_id)
        assert self._staging is not None
        labels = {
            spec.RUN_LABEL: self._tag,
            spec.INDEX_LABEL: str(job.index),
            spec.ATTEMPT_LABEL: str(attempt_of(job)),
            spec.NAME_LABEL: spec.label_value(job.name),
        }
        return spec.build_job(
            self.template,
            runnable=self._runnable(f"{mount}/{attempt_file(SCRIPT, attempt_of(job))}"),
            volume={
                "gcs": {"remote_path": self._staging.remote_path(self.folder_key(job, batch_id))},
                "mount_path": mount,
            },
            labels=labels,
            resources=job.resources,
            gpu_type=self.options.gpu_type or None,
        )

    def build_array(self, jobs: Sequence[Job], batch_id: str, parallelism: int) -> dict[str, Any]:
        """The Batch job (as JSON data) whose task ``i`` runs ``jobs[i]``'s attempt.

        The volume is the array's own folder in the bucket (with a gs:// workdir, the
        workdir), mounted once per VM at ``mount_path(batch_id)``; each task's folder is
        a sub-folder of it.
        """
        mount = self.mount_path(batch_id)
        assert self._staging is not None
        remote = self._staging.remote_path(batch_id)
        if self._remote is not None:
            remote = self._staging.root_path()
        entries = [
            (self.task_dir(job, batch_id, k), attempt_of(job), job.index)
            for k, job in enumerate(jobs)
        ]
        labels = {
            spec.RUN_LABEL: self._tag,
            spec.ARRAY_LABEL: str(len(jobs)),
            spec.NAME_LABEL: spec.label_value(jobs[0].name),
        }
        body = spec.build_job(
            self.template,
            runnable=self._runnable("", spec.selector(entries, self.options.entrypoint)),
            volume={"gcs": {"remote_path": remote}, "mount_path": mount},
            labels=labels,
            resources=jobs[0].resources,  # the jobs of one array share them
            gpu_type=self.options.gpu_type or None,
        )
        group = body["task_groups"][0]
        group["task_count"] = len(jobs)
        group["parallelism"] = max(1, min(parallelism, len(jobs)))
        return body

    def _stage(self, job: Job, batch_id: str, task: int | None = None) -> None:
        """Write the wrapper for the mount path and upload it (and a call's pickle).

        Local copies of this attempt's outputs left by an earlier run go first: they
        would otherwise settle a job that ends without writing its own (preempted). In a
        gs:// workdir their copies in the bucket go too, and the bucket's ``specs.jsonl``
        is brought up to date before the script goes up: the bucket then names every
        attempt that may start, and its job, for a resume elsewhere (``remote_workdir``).
        """
        assert self._staging is not None
        key = self.folder_key(job, batch_id, task)
        for kind in OUTPUTS:
            try:
                os.unlink(job.attempt_path(kind, attempt_of(job)))
            except FileNotFoundError:
                pass
        script = self.write_script(job, self.task_dir(job, batch_id, task))
        files = {os.path.basename(script): script}
        if os.path.exists(job.path(CALL_FILE)):
            files[CALL_FILE] = job.path(CALL_FILE)
        if self._remote is not None:
            try:
                self._remote.push_specs()
            except Exception as exc:  # the store's (network, permission) or WorkdirError
                raise SchedulerError(
                    f"gbatch: cannot copy specs.jsonl to {self._remote.url.text}: {exc}"
                ) from exc
            self._staging.clear(key, attempt_of(job))
        self._staging.upload(key, files)

    async def submit_job(self, job: Job) -> str:
        """Stage the job's files, then create its Batch job; return the job's full name.

        A refusal (INVALID_ARGUMENT, a missing permission, an unknown project) fails the
        job with the service's message and is not retried. A create whose answer was lost
        is sent again under the same id: ALREADY_EXISTS then proves the first one went
        through. Only when that cannot be told is the outcome unknown.
        """
        batch_id = self.batch_id(job)
        try:
            body = self.build(job, batch_id)
            message = batch_v1.Job.from_json(_json(body))
        except SchedulerOptionError as exc:
            raise SubmissionError(str(exc), retryable=False) from exc
        except Exception as exc:  # json_format.ParseError: a field Batch does not have
            raise SubmissionError(
                f"gbatch: the Batch job built from scheduler_opts is not valid: {exc}",
                retryable=False,
            ) from exc
        try:
            await anyio.to_thread.run_sync(self._stage, job, batch_id)
        except SchedulerError as exc:  # nothing was created: submit again after a pause
            raise SubmissionError(str(exc), transient=True) from exc
        mine = {
            spec.RUN_LABEL: self._tag,
            spec.INDEX_LABEL: str(job.index),
            spec.ATTEMPT_LABEL: str(attempt_of(job)),
        }
        return await self._create(batch_id, message, f"job {job.index}", mine)

    async def _create(self, batch_id: str, message: Any, what: str, mine: dict[str, str]) -> str:
        """CreateJob, sent again under the same id when its answer was lost; an
        ALREADY_EXISTS whose labels are ``mine`` proves the first one went through."""
        name = f"{self.parent}/jobs/{batch_id}"
        for attempt in range(3):
            self.stats.submit_calls += attempt > 0  # the first is counted by submit_jobs
            try:
                created = await self._call(
                    "create_job", parent=self.parent, job=message, job_id=batch_id
                )
                return str(created.name)
            except gexc.AlreadyExists:
                return await self._adopt_existing(name, mine)
            except (gexc.ResourceExhausted, gexc.TooManyRequests) as exc:
                raise SubmissionError(
                    f"gbatch: {_describe(exc)}; nothing was created", transient=True
                ) from exc
            except (
                gexc.ServiceUnavailable,
                gexc.DeadlineExceeded,
                gexc.InternalServerError,
                gexc.Aborted,
                gexc.Unknown,
            ) as exc:
                log.info("%s: create_job %s: %s; trying again", what, batch_id, exc)
                if attempt < 2:
                    await anyio.sleep(0.5 * (attempt + 1))
                    continue
                self._unknown_at = time.monotonic()
                raise SubmissionUnknownError(
                    f"gbatch: creating {name} failed ({_describe(exc)}); it may exist all the same"
                ) from exc
            except gexc.GoogleAPICallError as exc:
                raise SubmissionError(
                    f"gbatch: Batch refused {what} ({name}): {_describe(exc)}",
                    retryable=False,
                ) from exc
        raise AssertionError("unreachable")

    async def submit_jobs(self, jobs: Sequence[Job]) -> list[str | BaseException]:
        """Jobs with the same resources as arrays (one Batch job of many tasks), others
        alone, grouped as the batch backends group them (``_cluster.submit_grouped``).

        Batch jobs cannot wait for one another, so this backend does not keep ``forks``
        across submissions: the engine hands it no more jobs than there are free slots,
        and each array runs all its tasks at once (``parallelism`` = its size), which
        keeps the run within ``forks``.
        """
        if not self.options.arrays:
            return await super().submit_jobs(jobs)
        return await submit_grouped(
            jobs,
            arrays=True,
            max_array=self.options.array_limit,
            forks=max(self.forks, len(jobs)),
            concurrency=self.options.submit_concurrency,
            submit=self._submit_unit,
        )

    async def _submit_unit(
        self, jobs: Sequence[Job], throttle: int | None, after: str | None
    ) -> tuple[str, list[str]]:
        del after  # never set: no chains (forks is not the backend's to keep)
        self.stats.submit_calls += 1
        if len(jobs) == 1:
            name = await self.submit_job(jobs[0])
            return name, [name]
        return await self._submit_array(jobs, throttle or len(jobs))

    async def _submit_array(self, jobs: Sequence[Job], parallelism: int) -> tuple[str, list[str]]:
        """Stage every job's files under its task's folder, then create one Batch job
        whose task ``i`` runs ``jobs[i]``; each job's id is its task's name."""
        self._serial += 1
        batch_id = spec.array_id(self.options.job_prefix, self._tag, self._nonce, self._serial)
        try:
            message = batch_v1.Job.from_json(_json(self.build_array(jobs, batch_id, parallelism)))
        except SchedulerOptionError as exc:
            raise SubmissionError(str(exc), retryable=False) from exc
        except Exception as exc:  # json_format.ParseError
            raise SubmissionError(
                f"gbatch: the Batch job built from scheduler_opts is not valid: {exc}",
                retryable=False,
            ) from exc

        def stage() -> None:
            for k, job in enumerate(jobs):
                self._stage(job, batch_id, k)

        try:
            await anyio.to_thread.run_sync(stage)
        except SchedulerError as exc:
            raise SubmissionError(str(exc), transient=True) from exc
        mine = {spec.RUN_LABEL: self._tag, spec.ARRAY_LABEL: str(len(jobs))}
        name = await self._create(batch_id, message, f"an array of {len(jobs)} jobs", mine)
        group = f"{name}/taskGroups/group0"  # the name Batch gives a job's only group
        self._members[name] = set(jobs)
        return name, [f"{group}/tasks/{k}" for k in range(len(jobs))]

    async def _adopt_existing(self, name: str, mine: dict[str, str]) -> str:
        """The job a lost create made, once its labels show it is this very submission."""
        found = await self._call("get_job", name=name)
        labels = dict(found.labels)
        if all(labels.get(key) == value for key, value in mine.items()):
            return name
        raise SubmissionError(f"gbatch: a Batch job named {name} exists already", retryable=False)

    # -- status --------------------------------------------------------------------------
    async def _list_run(self) -> dict[str, listed.Seen]:
        """Every Batch job of this workdir (one filtered ListJobs, page by page)."""
        request = {
            "parent": self.parent,
            "filter": f'labels.{spec.RUN_LABEL}="{self._tag}"',
            "page_size": self.options.page_size,
        }
        pages = await self._bridge.call(self._list_pages, request)
        self.stats.status_calls += len(pages)
        now = time.monotonic()
        seen = {name: view for page in pages for name, view in page.items()}
        self._listing = (now, seen)
        return seen

    async def _list_pages(self, request: dict[str, Any]) -> list[dict[str, listed.Seen]]:
        """Runs in the client's loop: the pager fetches the next page as it is iterated."""
        try:
            pager = await self._client.list_jobs(
                request=request, retry=None, timeout=self.options.rpc_timeout
            )
            pages = [{str(j.name): listed.seen(j) for j in page.jobs} async for page in pager.pages]
        except gexc.GoogleAPICallError as exc:
            raise SchedulerError(f"gbatch: ListJobs failed: {_describe(exc)}") from exc
        return pages

    async def poll_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobState]:
        if self._remote and time.monotonic() - self._pushed_at >= self.options.journal_interval:
            await self._push_journal()
        seen = await self._list_run()
        states: dict[Job, JobState] = {}
        ended: list[tuple[Job, JobState | None]] = []
        arrays: dict[str, list[tuple[Job, int]]] = {}
        for job in jobs:
            name, task = listed.split(job.jid)
            if task is not None:
                arrays.setdefault(name, []).append((job, task))
                continue
            view = seen.get(job.jid or "")
            if view is not None and view.state in spec.HELD:
                self._missing_since.pop(job, None)
                states[job] = JobState(spec.HELD[view.state])
            else:
                verdict = spec.ended_state(view.state, view.events) if view else None
                ended.append((job, verdict))
        for name, elements in arrays.items():
            view = seen.get(name)
            tasks = await self._array_tasks(name, view)
            for job, task in elements:
                held = listed.element_held(view, tasks.get(task))
                if held is not None:
                    self._missing_since.pop(job, None)
                    states[job] = JobState(held)
                else:
                    ended.append((job, listed.element_verdict(view, tasks.get(task))))
        if ended:
            fetched = await gather_bounded(
                [job for job, _ in ended], self._fetch, self.options.submit_concurrency
            )
            failed = [r for r in fetched if isinstance(r, BaseException)]
            if failed:  # settling a job without the files it left could misreport it
                raise SchedulerError(f"gbatch: cannot read ended jobs' outputs: {failed[0]}")
            states.update(
                await anyio.to_thread.run_sync(
                    lambda: {job: self.reconcile(job, False, verdict) for job, verdict in ended}
                )
            )
        for job, state in states.items():
            if state.status.is_final:
                name = listed.split(job.jid)[0]
                if state.status is JobStatus.KILLED and name in self._cancelled:
                    # Ours: the engine says why it was asked (the run stopped, by name).
                    states[job] = state = dataclasses.replace(state, reason="")
                if state.status is JobStatus.FINISHED and job in self._killing.get(name, ()):
                    # Its kill waited for the array's cancel, and it succeeded first: a
                    # success, not a kill (recorded killed, the next run ran it again).
                    # One that failed by itself stays killed, as asked, and not retried.
                    states[job] = dataclasses.replace(state, unkilled=True)
                self._settled(job)
        for name, members in list(self._members.items()):
            # Its other elements have ended: only elements to kill are left in it.
            if name in arrays and members <= self._killing.get(name, set()):
                await self._cancel(name)
        return states

    async def _array_tasks(self, name: str, view: listed.Seen | None) -> dict[int, listed.Task]:
        """The tasks of an array by index: one ListTasks, only when its task counts
        changed since the last one (a task that ends always changes them)."""
        if view is None or not view.group or view.state in ("QUEUED", "SCHEDULED"):
            return {}
        cached = self._tasks.get(name)
        if cached is not None and cached[0] == view.counts:
            return cached[1]
        request = {"parent": view.group, "page_size": self.options.page_size}
        pages = await self._bridge.call(self._task_pages, request)
        self.stats.status_calls += len(pages)
        tasks = {index: task for page in pages for index, task in page.items()}
        self._tasks[name] = (view.counts, tasks)
        return tasks

    async def _task_pages(self, request: dict[str, Any]) -> list[dict[int, listed.Task]]:
        """Runs in the client's loop: every page of one ListTasks."""
        try:
            pager = await self._client.list_tasks(
                request=request, retry=None, timeout=self.options.rpc_timeout
            )
            pages = [
                {
                    int(str(t.name).rsplit("/", 1)[1]): listed.Task(
                        t.status.state.name, tuple(t.status.status_events)
                    )
                    for t in page.tasks
                }
                async for page in pager.pages
            ]
        except gexc.GoogleAPICallError as exc:
            raise SchedulerError(f"gbatch: ListTasks failed: {_describe(exc)}") from exc
        return pages

    def _settled(self, job: Job) -> None:
        """An element that ended is no longer one its array waits on."""
        name, task = listed.split(job.jid)
        if task is None:
            return
        for table in (self._members, self._killing):
            members = table.get(name)
            if members is not None:
                members.discard(job)
                if not members:
                    del table[name]
        if name not in self._members:
            self._tasks.pop(name, None)

    def forget(self, job: Job) -> None:
        super().forget(job)
        self._settled(job)

    async def _fetch(self, job: Job) -> None:
        """Download the outputs an ended (or forgotten) job left in its staging folder."""
        name, task = listed.split(job.jid)
        batch_id = listed.batch_id(name)
        if self._staging is None or (batch_id is None and self._remote is None):
            return
        staging, key = self._staging, self.folder_key(job, batch_id or "", task)
        await anyio.to_thread.run_sync(staging.fetch, key, attempt_of(job), job.dir)

    async def job_is_running(self, job: Job) -> bool:
        if not job.jid:
            return False
        name, task = listed.split(job.jid)
        if task is not None:  # an element: its array's word, from the run's listing
            view = (await self._recent_listing()).get(name)
            if view is not None and view.state in spec.HELD:
                self._members.setdefault(name, set()).add(job)
                return True
            return False
        try:
            found = await self._call("get_job", name=job.jid)
        except gexc.NotFound:
            return False
        except gexc.GoogleAPICallError as exc:
            raise SchedulerError(f"gbatch: GetJob {job.jid}: {_describe(exc)}") from exc
        self.stats.status_calls += 1
        return listed.seen(found).state in spec.HELD

    # -- resume --------------------------------------------------------------------------
    async def recover_job(self, job: Job) -> bool:
        """Find a job an earlier run submitted: by its recorded name, or by its labels.

        The labels name this workdir, the job's index and attempt, so a create whose
        answer never came back is found all the same; an array element is found in its
        array's task script, which names each task's job and attempt
        (``_gbatch_spec.parse_selector``). ``job.jid`` is set when the job is found,
        also when it has ended (polling then reads its outputs).
        """
        if job.jid is not None:
            return await self.job_is_running(job)
        seen = await self._recent_listing()
        found: list[tuple[int, float, str, str]] = []  # (attempt, created, id, array name)
        for name, view in seen.items():
            if view.labels.get(spec.INDEX_LABEL) == str(job.index):
                attempt = int(view.labels.get(spec.ATTEMPT_LABEL, "0") or 0)
                found.append((attempt, view.created, name, ""))
            elif view.selector and view.group:
                for task, _, attempt, index in spec.parse_selector(view.selector):
                    if index == job.index:
                        found.append((attempt, view.created, f"{view.group}/tasks/{task}", name))
        found = [m for m in found if job.attempt < 1 or m[0] == job.attempt]
        if not found:
            return False
        attempt, _, jid, array = max(found, key=lambda m: (m[0], m[1]))
        if job.attempt < 1:
            job.attempt = attempt
        job.jid = jid
        held = seen[array or jid].state in spec.HELD
        if array and held:
            self._members.setdefault(array, set()).add(job)
        return held

    async def _recent_listing(self) -> dict[str, listed.Seen]:
        """The run's listing, reused within a second (one serves a whole resume), unless
        a submission's outcome became unknown since: it may not show that job."""
        cached = self._listing
        if cached is not None and time.monotonic() - cached[0] < 1.0:
            if cached[0] > self._unknown_at:
                return cached[1]
        return await self._list_run()

    # -- killing -------------------------------------------------------------------------
    async def kill_jobs(self, jobs: Sequence[Job]) -> list[BaseException | None]:
        """Single jobs are cancelled one by one; elements of an array together.

        Batch cancels whole jobs only, never one task. An array is cancelled once every
        element it still runs is to be killed; until then each element to kill gets a
        kill marker in its folder, so its task exits at once if it has not started yet
        (``_gbatch_spec.selector``); one already running runs on until the array is
        cancelled, and one that succeeds first is recorded finished (``poll_jobs``).
        """
        singles = [job for job in jobs if listed.split(job.jid)[1] is None]
        errors = dict(zip(singles, await super().kill_jobs(singles)))
        arrays: dict[str, list[Job]] = {}
        for job in jobs:
            name, task = listed.split(job.jid)
            if task is not None:
                arrays.setdefault(name, []).append(job)
        for name, members in arrays.items():
            self.stats.kill_calls += 1
            killing = self._killing.setdefault(name, set())
            killing.update(members)
            try:
                if self._members.get(name, set()) <= killing:
                    await self._cancel(name)
                else:
                    await anyio.to_thread.run_sync(self._mark_killed, members)
            except SchedulerError as exc:
                errors.update(dict.fromkeys(members, exc))
        return [errors.get(job) for job in jobs]

    def _mark_killed(self, jobs: Sequence[Job]) -> None:
        """Put each element's kill marker in its folder (blocking)."""
        assert self._staging is not None
        for job in jobs:
            name, task = listed.split(job.jid)
            key = self.folder_key(job, listed.batch_id(name) or "", task)
            self._staging.put(key, attempt_file(KILL_MARK, attempt_of(job)), "killed\n")

    async def kill_job(self, job: Job) -> None:
        """Ask Batch to cancel the job; it has ended once the listing shows it CANCELLED."""
        if not job.jid or listed.batch_id(job.jid) is None:
            return
        await self._cancel(job.jid)

    async def _cancel(self, name: str) -> None:
        """CancelJob (DeleteJob where cancel is not offered). A Batch job that is gone or
        has already ended needs nothing more."""
        self._cancelled.add(name)
        try:
            await self._call("cancel_job", name=name)
        except (gexc.NotFound, gexc.FailedPrecondition):
            return
        except gexc.MethodNotImplemented:
            try:
                await self._call("delete_job", name=name)
            except gexc.NotFound:
                return
            except gexc.GoogleAPICallError as exc:
                raise SchedulerError(f"gbatch: DeleteJob {name}: {_describe(exc)}") from exc
        except gexc.GoogleAPICallError as exc:
            raise SchedulerError(f"gbatch: CancelJob {name}: {_describe(exc)}") from exc


def _free(holder: list[Any]) -> None:
    """Drop the last reference to the client, and collect the cycles that may hold its
    channel too (a traceback kept by an API error does), so that the channel is freed
    here and now rather than by a later collection inside the event loop."""
    import gc

    holder.clear()
    gc.collect()


def _client(channel: Any, host: str) -> Any:
    """The async client on ``channel`` (blocking: the constructor reads files)."""
    transport = BatchServiceGrpcAsyncIOTransport(channel=channel, host=host)
    return batch_v1.BatchServiceAsyncClient(transport=transport)


def _check_template(template: dict[str, Any]) -> None:
    """Refuse Batch fields the service does not have, when the scheduler is made."""
    sample = spec.build_job(
        template,
        runnable={"script": {"text": "true"}},
        volume={"gcs": {"remote_path": "bucket/folder"}, "mount_path": "/mnt/disks/x"},
        labels={},
        resources=None,
        gpu_type=None,
    )
    try:
        batch_v1.Job.from_json(_json(sample))
    except Exception as exc:  # json_format.ParseError
        raise SchedulerOptionError(
            f"gbatch: scheduler_opts do not make a Batch job: {exc}"
        ) from exc


def _default_credentials() -> Any:
    """Application default credentials (blocking: it reads files, may ask a metadata server)."""
    import google.auth

    try:
        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
    except Exception as exc:
        raise SchedulerError(
            f"gbatch: no Google Cloud credentials ({exc}); run `gcloud auth application-default "
            "login` or set GOOGLE_APPLICATION_CREDENTIALS"
        ) from exc
    return credentials


def _describe(exc: Any) -> str:
    code = getattr(exc, "code", None)
    name = getattr(getattr(exc, "grpc_status_code", None), "name", None) or code
    return f"{name}: {getattr(exc, 'message', exc)}"


def _json(body: dict[str, Any]) -> str:
    import json

    return json.dumps(body)
