"""A stand-in for the Google Cloud Batch v1 API that really runs its jobs, on this machine.

    python -m tests.standins.gbatch_server --storage http://127.0.0.1:PORT \
        --vm-root DIR [--port 0] [--step 0.05] [--ready FILE]

It speaks gRPC with the messages of the real client library (``google.cloud.batch_v1``
types and ``google.longrunning`` operations), registered under the service's own method
names, so the official client talks to it unchanged over a plaintext channel. What it
does, as the real service does:

- CreateJob checks the request (parent, job id pattern, one task group with runnables,
  label keys and values, GCS volumes) and answers INVALID_ARGUMENT, or ALREADY_EXISTS;
  the job then moves QUEUED -> SCHEDULED -> RUNNING -> SUCCEEDED | FAILED, with a
  status event per change (a failure quotes its task's "... with exit code N."), the
  task group's counts by task state, and task-level events with the exit code.
- Each task really runs: its runnables in order (script text or path with ``/bin/sh``,
  containers with podman), with ``BATCH_TASK_INDEX``, ``BATCH_TASK_COUNT`` and
  ``BATCH_TASK_RETRY_ATTEMPT`` and the spec's environment, ``ignore_exit_status``,
  ``always_run``, ``background``, ``max_retry_count``, and ``max_run_duration`` (exit
  code 50005). A GCS volume is played by a folder at its mount path, filled from the
  bucket when the job's first task starts (a later task also gets the objects added
  since, as gcsfuse lists the bucket), shared by the job's tasks as by those of one VM,
  written back as each task ends (gcsfuse uploads a file when it is closed, and
  nothing reads one mid-run here), and removed with the job as the VM would be. Mount
  paths must lie under ``--vm-root``: the stand-in never touches the host elsewhere.
- ListJobs filters (``labels.K="V"``, ``labels.K:*``, ``status.state=S``, ``name=...``,
  ``!=``, ``AND``, ``OR``, ``NOT``), orders (``name``, ``create_time``, ``desc``) and
  pages; GetJob/CancelJob/DeleteJob answer NOT_FOUND for unknown jobs; CancelJob
  goes through CANCELLATION_IN_PROGRESS to CANCELLED (tasks killed: SIGTERM, then
  SIGKILL), DeleteJob through DELETION_IN_PROGRESS until the job is gone; both are
  long-running operations that GetOperation reports done (NOT_FOUND for unknown ones).

A control service (``xqueue.standin.Control``, JSON in and out) lets tests count calls
per method and parent (``Stats``), make the service lose a job (``Forget``: its task
is killed and its record dropped, nothing written back, as when a VM vanishes), answer
a method late after doing its work (``Slow``: a lost answer) or not at all
(``Disable``: UNIMPLEMENTED). Those last two apply to one parent (project and
location), so tests sharing one stand-in do not see each other's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.cloud.batch_v1.types import batch as batch_t
from google.cloud.batch_v1.types import job as job_t
from google.cloud.batch_v1.types import task as task_t
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

SERVICE = "google.cloud.batch.v1.BatchService"
OPERATIONS = "google.longrunning.Operations"
CONTROL = "xqueue.standin.Control"

JState = job_t.JobStatus.State
TState = task_t.TaskStatus.State

JOB_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
PARENT = re.compile(r"^projects/[^/]+/locations/[^/]+$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
TIMEOUT_EXIT = 50005
FAILED_EXIT = 50000


# A mounted GCS volume: host folder, bucket, prefix, and the files as downloaded.
Mount = tuple[str, str, str, dict[str, tuple[int, int]]]


class Abort(Exception):
    """Ends an RPC with a status code, as the real service would."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


@dataclass
class Record:
    job: job_t.Job
    runner: asyncio.Task[None] | None = None
    procs: set[asyncio.subprocess.Process] = field(default_factory=set)
    tasks: list[task_t.Task] = field(default_factory=list)
    ending: str = ""  # "cancel", "delete", "forget" once asked
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # The job's GCS volumes by mount path, mounted once on its "VM" and shared by its
    # tasks (as gcsfuse is by the tasks of one VM), written back as each task ends.
    mounts: dict[str, Mount] = field(default_factory=dict)
    mount_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Stopped(Exception):
    """A task stopped because its job is cancelled, deleted or forgotten."""


class StandinBatch:
    def __init__(self, storage: Any, vm_root: str, step: float, kill_grace: float) -> None:
        self.storage = storage
        self.vm_root = os.path.realpath(vm_root)
        self.step = step
        self.kill_grace = kill_grace
        self.jobs: dict[str, Record] = {}
        self.ops: dict[str, tuple[operations_pb2.Operation, Record, str]] = {}
        self.calls: Counter[tuple[str, str]] = Counter()
        # (method, parent) -> delays of its next answers; methods answered UNIMPLEMENTED
        self.slow: dict[tuple[str, str], list[float]] = {}
        self.disabled: set[tuple[str, str]] = set()

    # -- the BatchService -------------------------------------------------------------
    async def CreateJob(self, req: batch_t.CreateJobRequest) -> job_t.Job:
        self._check_parent(req.parent)
        job_id = req.job_id or f"job-{uuid.uuid4().hex[:20]}"
        if not JOB_ID.match(job_id):
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"job_id {job_id!r} is invalid: it must match {JOB_ID.pattern}",
            )
        name = f"{req.parent}/jobs/{job_id}"
        if name in self.jobs:
            raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"Job {name} already exists")
        job = job_t.Job(req.job)
        self._check_job(job)
        job.name = name
        job.uid = f"{job_id[:40]}-{uuid.uuid4().hex[:8]}"
        job.create_time = job.update_time = now()
        group = job.task_groups[0]
        group.name = f"{name}/taskGroups/group0"
        count = group.task_count or max(len(group.task_environments), 1)
        group.task_count = count
        group.parallelism = group.parallelism or count
        job.status = job_t.JobStatus(state=JState.QUEUED)
        record = Record(job)
        record.tasks = [
            task_t.Task(
                name=f"{group.name}/tasks/{i}", status=task_t.TaskStatus(state=TState.PENDING)
            )
            for i in range(count)
        ]
        self._count(record)
        self.jobs[name] = record
        record.runner = asyncio.get_running_loop().create_task(self._run(record))
        return job

    async def GetJob(self, req: batch_t.GetJobRequest) -> job_t.Job:
        return self._find(req.name).job

    async def ListJobs(self, req: batch_t.ListJobsRequest) -> batch_t.ListJobsResponse:
        self._check_parent(req.parent)
        match = parse_filter(req.filter)
        jobs = [r.job for n, r in self.jobs.items() if n.startswith(f"{req.parent}/jobs/")]
        jobs = [j for j in jobs if match(j)]
        order = (req.order_by or "name").strip()
        key, _, direction = order.partition(" ")
        if key not in ("name", "create_time") or direction.strip() not in ("", "desc", "asc"):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported order_by {order!r}")
        if key == "name":
            jobs.sort(key=lambda j: j.name, reverse=direction.strip() == "desc")
        else:
            jobs.sort(key=lambda j: (j.create_time, j.name), reverse=direction.strip() == "desc")
        size = min(req.page_size or 100, 1000)
        try:
            start = int(req.page_token or 0)
        except ValueError:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid page_token") from None
        page = jobs[start : start + size]
        token = str(start + size) if start + size < len(jobs) else ""
        return batch_t.ListJobsResponse(jobs=page, next_page_token=token)

    async def GetTask(self, req: batch_t.GetTaskRequest) -> task_t.Task:
        job_name = req.name.partition("/taskGroups/")[0]
        record = self._find(job_name)
        for task in record.tasks:
            if task.name == req.name:
                return task
        raise Abort(grpc.StatusCode.NOT_FOUND, f"Task {req.name} not found")

    async def ListTasks(self, req: batch_t.ListTasksRequest) -> batch_t.ListTasksResponse:
        job_name, _, group = req.parent.partition("/taskGroups/")
        record = self._find(job_name)
        if group != "group0":
            raise Abort(grpc.StatusCode.NOT_FOUND, f"TaskGroup {req.parent} not found")
        tasks = list(record.tasks)
        wanted = req.filter.strip()
        if wanted:  # the documented form only: State=RUNNING
            key, _, value = wanted.partition("=")
            if key.strip() not in ("State", "state", "status.state") or not value.strip():
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid filter {wanted!r}")
            tasks = [t for t in tasks if t.status.state.name == value.strip().strip('"')]
        size = min(req.page_size or 100, 1000)
        try:
            start = int(req.page_token or 0)
        except ValueError:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid page_token") from None
        token = str(start + size) if start + size < len(tasks) else ""
        return batch_t.ListTasksResponse(tasks=tasks[start : start + size], next_page_token=token)

    async def CancelJob(self, req: batch_t.CancelJobRequest) -> operations_pb2.Operation:
        record = self._find(req.name)
        state = record.job.status.state
        if state in (JState.SUCCEEDED, JState.FAILED, JState.CANCELLED):
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Job {req.name} is in state {state.name} and cannot be cancelled",
            )
        if state == JState.DELETION_IN_PROGRESS:
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION, f"Job {req.name} is being deleted")
        if not record.ending:
            record.ending = "cancel"
            self._move(record, JState.CANCELLATION_IN_PROGRESS)
            self._stop(record)
        return self._operation(
            record, "cancel", batch_t.CancelJobResponse.pb(batch_t.CancelJobResponse())
        )

    async def DeleteJob(self, req: batch_t.DeleteJobRequest) -> operations_pb2.Operation:
        record = self._find(req.name)
        if record.ending != "delete":
            record.ending = "delete"
            self._move(record, JState.DELETION_IN_PROGRESS)
            if record.done.is_set():  # nothing runs: the record goes at once
                self.jobs.pop(record.job.name, None)
            self._stop(record)
        return self._operation(record, "delete", empty_pb2.Empty())

    async def GetOperation(
        self, req: operations_pb2.GetOperationRequest
    ) -> operations_pb2.Operation:
        if req.name not in self.ops:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"Operation {req.name} not found")
        op, record, verb = self.ops[req.name]
        if record.done.is_set() and (verb != "delete" or record.job.name not in self.jobs):
            op.done = True
        return op

    # -- the control service -------------------------------------------------------------
    async def Stats(self, req: dict[str, Any]) -> dict[str, Any]:
        parent = str(req.get("parent", ""))
        return {"calls": {m: n for (m, p), n in self.calls.items() if p == parent}}

    async def Slow(self, req: dict[str, Any]) -> dict[str, Any]:
        """Delay the next ``times`` answers of ``method`` for ``parent`` by ``seconds``."""
        delays = self.slow.setdefault((str(req["method"]), str(req["parent"])), [])
        delays.extend([float(req["seconds"])] * int(req.get("times", 1)))
        return {}

    async def Disable(self, req: dict[str, Any]) -> dict[str, Any]:
        """Answer ``method`` for ``parent`` with UNIMPLEMENTED, as a service without it."""
        self.disabled.add((str(req["method"]), str(req["parent"])))
        return {}

    async def Forget(self, req: dict[str, Any]) -> dict[str, Any]:
        record = self.jobs.get(str(req.get("name")))
        if record is None:
            return {"forgotten": False}
        record.ending = "forget"
        self._stop(record)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(record.done.wait(), 10)
        self.jobs.pop(record.job.name, None)
        return {"forgotten": True}

    # -- checks ---------------------------------------------------------------------------
    def _check_parent(self, parent: str) -> None:
        if not PARENT.match(parent):
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"parent {parent!r} is invalid: expected projects/*/locations/*",
            )

    def _find(self, name: str) -> Record:
        record = self.jobs.get(name)
        if record is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"Job {name} not found")
        return record

    def _check_job(self, job: job_t.Job) -> None:
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if len(job.task_groups) != 1:
            raise Abort(
                bad,
                "a job needs exactly one task group"
                if not job.task_groups
                else "only one task group is supported",
            )
        spec = job.task_groups[0].task_spec
        if not spec.runnables:
            raise Abort(bad, "task_spec.runnables must not be empty")
        for i, runnable in enumerate(spec.runnables):
            kinds = [k for k in ("script", "container", "barrier") if k in runnable]
            if len(kinds) != 1:
                raise Abort(
                    bad, f"runnable {i} must have exactly one of script, container, barrier"
                )
            if "script" in runnable and not (runnable.script.text or runnable.script.path):
                raise Abort(bad, f"runnable {i}: script needs text or path")
            if "container" in runnable and not runnable.container.image_uri:
                raise Abort(bad, f"runnable {i}: container needs image_uri")
        for key, value in job.labels.items():
            if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
                raise Abort(bad, f"label {key!r}={value!r} is invalid")
        for volume in spec.volumes:
            if not volume.mount_path.startswith("/"):
                raise Abort(bad, f"volume mount_path {volume.mount_path!r} must be absolute")
            if "gcs" in volume and not volume.gcs.remote_path:
                raise Abort(bad, "a GCS volume needs remote_path")

    # -- state ----------------------------------------------------------------------------
    def _move(self, record: Record, new: Any, detail: str = "") -> None:
        job = record.job
        old = job.status.state
        if old == new:
            return
        description = f"Job state is set from {old.name} to {new.name} for job {job.name}."
        job.status.status_events.append(
            task_t.StatusEvent(
                type_="STATUS_CHANGED", description=description + detail, event_time=now()
            )
        )
        job.status.state = new
        job.update_time = now()

    def _task_move(self, record: Record, index: int, new: Any, code: int | None = None) -> None:
        task = record.tasks[index]
        old = task.status.state
        where = f"zones/standin-a/instances/standin-{os.getpid()}"
        description = f"Task state is updated from {old.name} to {new.name} on {where}"
        event = task_t.StatusEvent(type_="STATUS_CHANGED", event_time=now(), task_state=new)
        if code is not None:
            description += f" with exit code {code}"
            if new == TState.FAILED:
                event.task_execution = task_t.TaskExecution(exit_code=code)
        event.description = description + "."
        task.status.status_events.append(event)
        task.status.state = new
        self._count(record)

    def _count(self, record: Record) -> None:
        counts = Counter(task.status.state.name for task in record.tasks)
        record.job.status.task_groups["group0"] = job_t.JobStatus.TaskGroupStatus(
            counts={k: v for k, v in counts.items()}
        )

    def _operation(self, record: Record, verb: str, response: Any) -> operations_pb2.Operation:
        parent = record.job.name.rsplit("/jobs/", 1)[0]
        op = operations_pb2.Operation(name=f"{parent}/operations/operation-{uuid.uuid4().hex[:16]}")
        meta = any_pb2.Any()
        meta.Pack(
            batch_t.OperationMetadata.pb(
                batch_t.OperationMetadata(
                    verb=verb,
                    target=record.job.name,
                    create_time=now(),
                    requested_cancellation=verb == "cancel",
                    api_version="v1",
                )
            )
        )
        op.metadata.CopyFrom(meta)
        packed = any_pb2.Any()
        packed.Pack(response)
        op.response.CopyFrom(packed)
        self.ops[op.name] = (op, record, verb)
        return op

    def _stop(self, record: Record) -> None:
        if record.runner is not None and not record.runner.done():
            record.runner.cancel()

    # -- running ------------------------------------------------------------------------
    async def _run(self, record: Record) -> None:
        job = record.job
        group = job.task_groups[0]
        try:
            await asyncio.sleep(self.step)
            self._move(record, JState.SCHEDULED)
            await asyncio.sleep(self.step)
            self._move(record, JState.RUNNING)
            limit = asyncio.Semaphore(group.parallelism)
            codes: list[int] = [0] * len(record.tasks)

            async def one(index: int) -> None:
                async with limit:
                    codes[index] = await self._task(record, index)

            # A TaskGroup, not gather: a cancelled job waits for its tasks' clean-up.
            async with asyncio.TaskGroup() as tg:
                for i in range(len(record.tasks)):
                    tg.create_task(one(i))
            failed = [i for i, c in enumerate(codes) if c != 0]
            if failed:
                i = failed[0]
                quoted = record.tasks[i].status.status_events[-1].description
                self._move(
                    record,
                    JState.FAILED,
                    f"Job failed due to task failure. Specifically, task with index {i} "
                    f'failed due to the following task event: "{quoted}"',
                )
            else:
                self._move(record, JState.SUCCEEDED)
            await self._unmount(record)
        except asyncio.CancelledError:
            await asyncio.shield(self._unmount(record))
            if record.ending != "forget":
                for i, task in enumerate(record.tasks):
                    if task.status.state in (TState.PENDING, TState.ASSIGNED, TState.RUNNING):
                        self._task_move(record, i, TState.FAILED)
            if record.ending == "cancel":
                self._move(record, JState.CANCELLED)
            elif record.ending == "delete":
                self.jobs.pop(record.job.name, None)
        except Exception as exc:  # the stand-in's own fault: the job fails, it never hangs
            traceback.print_exc()
            await asyncio.shield(self._unmount(record))
            for i, task in enumerate(record.tasks):
                if task.status.state in (TState.PENDING, TState.ASSIGNED, TState.RUNNING):
                    self._task_move(record, i, TState.FAILED, FAILED_EXIT)
            self._move(record, JState.FAILED, f" The stand-in failed: {exc!r}")
        finally:
            record.done.set()

    async def _task(self, record: Record, index: int) -> int:
        spec = record.job.task_groups[0].task_spec
        retries = spec.max_retry_count
        code = 0
        for retry in range(retries + 1):
            self._task_move(record, index, TState.ASSIGNED)
            self._task_move(record, index, TState.RUNNING)
            code = await self._attempt(record, index, retry)
            if code == 0:
                self._task_move(record, index, TState.SUCCEEDED, 0)
                return 0
            if retry < retries:
                self._task_move(record, index, TState.PENDING, code)
        self._task_move(record, index, TState.FAILED, code)
        return code

    async def _attempt(self, record: Record, index: int, retry: int) -> int:
        """One run of a task on a fresh "VM": mount, runnables in order, unmount."""
        spec = record.job.task_groups[0].task_spec
        group = record.job.task_groups[0]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/root",
            "BATCH_TASK_INDEX": str(index),
            "BATCH_TASK_COUNT": str(group.task_count),
            "BATCH_TASK_RETRY_ATTEMPT": str(retry),
        }
        env.update(spec.environment.variables)
        if index < len(group.task_environments):
            env.update(group.task_environments[index].variables)
        vm = tempfile.mkdtemp(prefix="vm-", dir=self.vm_root)
        mounts: list[Mount] = []
        procs: set[asyncio.subprocess.Process] = set()
        try:
            for volume in spec.volumes:
                if "gcs" in volume:
                    mount = await self._mount(record, volume.gcs.remote_path, volume.mount_path)
                    mounts.append(mount)
            duration = spec.max_run_duration.total_seconds() if spec.max_run_duration else 0.0
            runs = self._runnables(record, procs, spec, env, [m[0] for m in mounts], vm)
            return await (asyncio.wait_for(runs, duration) if duration else runs)
        except asyncio.TimeoutError:
            return TIMEOUT_EXIT
        except OSError:  # a mount that failed: the runnables never start
            return FAILED_EXIT
        finally:
            await asyncio.shield(self._end_attempt(record, procs, mounts, vm))

    async def _end_attempt(
        self, record: Record, procs: set[asyncio.subprocess.Process], mounts: list[Mount], vm: str
    ) -> None:
        """Whatever still runs is killed and the volumes written back (unless the VM was
        lost), as gcsfuse has uploaded each file the task closed by the time Batch
        reports the task ended; the volumes stay mounted for the job's other tasks."""
        await asyncio.gather(*(self._kill(proc) for proc in procs))
        record.procs -= procs
        if record.ending != "forget":
            async with record.mount_lock:
                for mount in mounts:
                    await asyncio.to_thread(self._upload, *mount)
        await asyncio.to_thread(shutil.rmtree, vm, True)

    async def _runnables(
        self,
        record: Record,
        procs: set[asyncio.subprocess.Process],
        spec: Any,
        env: dict[str, str],
        mounts: list[str],
        vm: str,
    ) -> int:
        code = 0
        background: list[asyncio.subprocess.Process] = []
        try:
            for number, runnable in enumerate(spec.runnables):
                if code != 0 and not runnable.always_run:
                    continue
                if "barrier" in runnable:
                    continue
                renv = {**env, **runnable.environment.variables}
                proc = await self._start(runnable, renv, mounts, vm, number)
                procs.add(proc)
                record.procs.add(proc)
                if runnable.background:
                    background.append(proc)
                    continue
                timeout = runnable.timeout.total_seconds() if runnable.timeout else None
                try:
                    rc = await asyncio.wait_for(proc.wait(), timeout)
                except asyncio.TimeoutError:
                    await self._kill(proc)
                    rc = TIMEOUT_EXIT
                if rc < 0:
                    rc = 128 - rc  # killed by a signal: the shell's convention
                if rc != 0 and not runnable.ignore_exit_status and code == 0:
                    code = rc
            return code
        finally:
            for proc in background:
                await asyncio.shield(self._kill(proc))

    async def _start(
        self,
        runnable: Any,
        env: dict[str, str],
        mounts: list[str],
        vm: str,
        number: int,
    ) -> asyncio.subprocess.Process:
        if "container" in runnable:
            argv = self._podman(runnable.container, env, mounts)
        elif runnable.script.path:
            argv = ["/bin/sh", runnable.script.path]
        else:
            path = os.path.join(vm, f"runnable-{number}.sh")
            await asyncio.to_thread(_write_script, path, runnable.script.text)
            shebang = runnable.script.text.startswith("#!")
            argv = [path] if shebang else ["/bin/sh", path]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=vm,
            start_new_session=True,
        )
        return proc

    def _podman(self, container: Any, env: dict[str, str], mounts: list[str]) -> list[str]:
        argv = ["podman", "run", "--rm", "--network=host"]
        for path in mounts:
            argv += ["-v", f"{path}:{path}"]
        for key, value in env.items():
            if key not in ("PATH", "HOME"):
                argv += ["-e", f"{key}={value}"]
        if container.entrypoint:
            argv += ["--entrypoint", container.entrypoint]
        return [*argv, container.image_uri, *container.commands]

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the runnable's process group, SIGKILL it after the grace."""
        if proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, self.kill_grace), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), wait)
                return
            except asyncio.TimeoutError:
                continue

    # -- the GCS volume ---------------------------------------------------------------------
    def _host_path(self, mount_path: str) -> str:
        path = os.path.realpath(mount_path)
        if os.path.commonpath([path, self.vm_root]) != self.vm_root or path == self.vm_root:
            raise OSError(f"mount path {mount_path} is outside the stand-in's VM root")
        return path

    async def _mount(self, record: Record, remote: str, mount_path: str) -> Mount:
        """The job's volume at ``mount_path``: mounted (downloaded) by its first task; a
        later task sees the objects added to the bucket since (gcsfuse lists the bucket)."""
        path = self._host_path(mount_path)
        bucket, _, prefix = remote.strip("/").partition("/")
        prefix = f"{prefix}/" if prefix else ""
        async with record.mount_lock:
            mount = record.mounts.get(path)
            if mount is None or mount[1:3] != (bucket, prefix):
                snapshot = await asyncio.to_thread(self._download, bucket, prefix, path, None)
                mount = record.mounts[path] = (path, bucket, prefix, snapshot)
            else:
                await asyncio.to_thread(self._download, bucket, prefix, path, mount[3])
        return mount

    def _download(
        self, bucket: str, prefix: str, path: str, snapshot: dict[str, tuple[int, int]] | None
    ) -> dict[str, tuple[int, int]]:
        """Fill ``path`` from the bucket: all of it (``snapshot`` None), or only the
        objects it has not seen yet, which then join ``snapshot``."""
        if snapshot is None:
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
            snapshot = {}
        for blob in self.storage.list_blobs(bucket, prefix=prefix):
            rel = blob.name[len(prefix) :]
            if not rel or rel.endswith("/") or rel in snapshot:
                continue
            target = os.path.join(path, rel)
            if os.path.exists(target):
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            blob.download_to_filename(target)
            info = os.stat(target)
            snapshot[rel] = (info.st_size, info.st_mtime_ns)
        return snapshot

    async def _unmount(self, record: Record) -> None:
        """The job's VM is gone: its volumes with it."""
        mounts, record.mounts = list(record.mounts.values()), {}
        for path, *_ in mounts:
            await asyncio.to_thread(shutil.rmtree, path, True)

    def _upload(
        self, path: str, bucket: str, prefix: str, snapshot: dict[str, tuple[int, int]]
    ) -> None:
        """Write back what changed since ``snapshot`` (and bring it up to date).

        The volume is shared: other tasks of the job may still run and rename or remove
        their files while this one's are written back (a wrapper's ``rc.tmp`` becomes
        ``rc``). A file gone by the time it is read is not in the volume any more, so it
        is not in the bucket either (gcsfuse renames and removes objects as the files
        go); its new name is written back by the next task that ends, the last of them
        at the latest. Such a race must not stop the job's tasks.
        """
        target = self.storage.bucket(bucket)
        files = _files(path)
        for rel, stat in list(files.items()):
            if snapshot.get(rel) != stat:
                try:
                    target.blob(prefix + rel).upload_from_filename(os.path.join(path, rel))
                except FileNotFoundError:  # renamed or removed since it was listed
                    del files[rel]
                    continue
                snapshot[rel] = stat
        for rel in snapshot.keys() - files.keys():
            with contextlib.suppress(Exception):
                target.blob(prefix + rel).delete()
            snapshot.pop(rel, None)


def _write_script(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o755)


def _files(root: str) -> dict[str, tuple[int, int]]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            try:
                info = os.stat(full)
            except FileNotFoundError:  # renamed or removed by a task still running
                continue
            out[os.path.relpath(full, root)] = (info.st_size, info.st_mtime_ns)
    return out


# -- ListJobs filters ----------------------------------------------------------------------
_TOKEN = re.compile(
    r'\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<op>!=|=|:)|(?P<str>"(?:[^"\\]|\\.)*")'
    r"|(?P<word>[A-Za-z0-9_.*\-/]+))"
)


def parse_filter(text: str) -> Callable[[job_t.Job], bool]:
    """An AIP-160 subset: comparisons of labels.K, status.state, name, uid; AND, OR, NOT."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid filter {text!r} at {pos}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    if not tokens:
        return lambda job: True
    at = 0

    def peek() -> tuple[str, str]:
        return tokens[at] if at < len(tokens) else ("end", "")

    def take(kind: str) -> str:
        nonlocal at
        got = peek()
        if got[0] != kind:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid filter {text!r}")
        at += 1
        return got[1]

    def expr() -> Callable[[job_t.Job], bool]:  # AND binds looser than OR (AIP-160)
        parts = [disjunction()]
        while peek() == ("word", "AND"):
            take("word")
            parts.append(disjunction())
        return lambda job: all(p(job) for p in parts)

    def disjunction() -> Callable[[job_t.Job], bool]:
        parts = [unary()]
        while peek() == ("word", "OR"):
            take("word")
            parts.append(unary())
        return lambda job: any(p(job) for p in parts)

    def unary() -> Callable[[job_t.Job], bool]:
        if peek() in (("word", "NOT"), ("word", "-")):
            take("word")
            inner = unary()
            return lambda job: not inner(job)
        if peek()[0] == "lp":
            take("lp")
            inner = expr()
            take("rp")
            return inner
        name = take("word")
        op = take("op")
        kind, raw = peek()
        if kind not in ("str", "word"):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid filter {text!r}")
        take(kind)
        value = json.loads(raw) if kind == "str" else raw
        get = _field(name, text)
        if op == ":":
            return lambda job: (get(job) is not None) if value == "*" else value in (get(job) or "")
        if op == "=":
            return lambda job: get(job) == value
        return lambda job: get(job) != value

    result = expr()
    if at != len(tokens):
        raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid filter {text!r}")
    return result


def _field(name: str, text: str) -> Callable[[job_t.Job], str | None]:
    if name.startswith("labels."):
        key = name.removeprefix("labels.")
        return lambda job: job.labels.get(key)
    if name in ("status.state", "state"):
        return lambda job: job.status.state.name
    if name in ("name", "uid"):
        return lambda job: str(getattr(job, name))
    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"filter {text!r}: unknown field {name!r}")


# -- the gRPC server -------------------------------------------------------------------------
def _handler(
    impl: StandinBatch,
    method: str,
    fn: Callable[[Any], Awaitable[Any]],
    parent_of: Callable[[Any], str],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        key = (method, parent_of(request))
        impl.calls[key] += 1
        if key in impl.disabled:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
        try:
            answer = await fn(request)
        except Abort as exc:
            await context.abort(exc.code, exc.message)
        delays = impl.slow.get(key)
        if delays:
            await asyncio.sleep(delays.pop(0))  # done, but the answer comes late
        return answer

    return call


def _parent(name: str) -> str:
    return name.split("/jobs/")[0].split("/operations/")[0]


def handlers(impl: StandinBatch) -> list[grpc.GenericRpcHandler]:
    def unary(fn: Any, req: Any, resp: Any, parent_of: Callable[[Any], str]) -> Any:
        method = fn.__name__
        return grpc.unary_unary_rpc_method_handler(
            _handler(impl, method, fn, parent_of),
            request_deserializer=req,
            response_serializer=resp,
        )

    def proto_plus(cls: Any) -> Any:
        return cls.deserialize

    batch = {
        "CreateJob": unary(
            impl.CreateJob,
            proto_plus(batch_t.CreateJobRequest),
            job_t.Job.serialize,
            lambda r: r.parent,
        ),
        "GetJob": unary(
            impl.GetJob,
            proto_plus(batch_t.GetJobRequest),
            job_t.Job.serialize,
            lambda r: _parent(r.name),
        ),
        "ListJobs": unary(
            impl.ListJobs,
            proto_plus(batch_t.ListJobsRequest),
            batch_t.ListJobsResponse.serialize,
            lambda r: r.parent,
        ),
        "DeleteJob": unary(
            impl.DeleteJob,
            proto_plus(batch_t.DeleteJobRequest),
            operations_pb2.Operation.SerializeToString,
            lambda r: _parent(r.name),
        ),
        "CancelJob": unary(
            impl.CancelJob,
            proto_plus(batch_t.CancelJobRequest),
            operations_pb2.Operation.SerializeToString,
            lambda r: _parent(r.name),
        ),
        "GetTask": unary(
            impl.GetTask,
            proto_plus(batch_t.GetTaskRequest),
            task_t.Task.serialize,
            lambda r: _parent(r.name),
        ),
        "ListTasks": unary(
            impl.ListTasks,
            proto_plus(batch_t.ListTasksRequest),
            batch_t.ListTasksResponse.serialize,
            lambda r: _parent(r.parent),
        ),
    }
    ops = {
        "GetOperation": unary(
            impl.GetOperation,
            operations_pb2.GetOperationRequest.FromString,
            operations_pb2.Operation.SerializeToString,
            lambda r: _parent(r.name),
        )
    }
    as_json = (lambda b: json.loads(b or b"{}"), lambda d: json.dumps(d).encode())
    control = {
        "Stats": unary(impl.Stats, *as_json, lambda r: ""),
        "Slow": unary(impl.Slow, *as_json, lambda r: ""),
        "Disable": unary(impl.Disable, *as_json, lambda r: ""),
        "Forget": unary(impl.Forget, *as_json, lambda r: ""),
    }
    return [
        grpc.method_handlers_generic_handler(SERVICE, batch),
        grpc.method_handlers_generic_handler(OPERATIONS, ops),
        grpc.method_handlers_generic_handler(CONTROL, control),
    ]


async def serve(args: argparse.Namespace) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project="standin",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": args.storage},
    )
    os.makedirs(args.vm_root, exist_ok=True)
    impl = StandinBatch(client, args.vm_root, args.step, args.kill_grace)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(handlers(impl))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    if args.ready:
        await asyncio.to_thread(_write_script, f"{args.ready}.tmp", str(port))
        os.replace(f"{args.ready}.tmp", args.ready)
    print(f"gbatch stand-in on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for record in list(impl.jobs.values()):
        record.ending = "forget"
        impl._stop(record)
        for proc in list(record.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gbatch_server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--storage", required=True, help="Cloud Storage endpoint (emulator)")
    parser.add_argument("--vm-root", required=True, help="the only folder mounts may use")
    parser.add_argument("--step", type=float, default=0.05, help="seconds per queue state")
    parser.add_argument("--kill-grace", type=float, default=2.0)
    parser.add_argument("--ready", help="file to write the port to once serving")
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
