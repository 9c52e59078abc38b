# ruff: noqa: F811 (project: the fixture of test_gbatch, imported)
"""Google Batch arrays: jobs fed together with the same resources become one Batch job of
many tasks, each task picking its job by ``BATCH_TASK_INDEX``.

Against the Batch stand-in (which runs each task for real, honouring ``taskCount``,
``parallelism`` and ``BATCH_TASK_INDEX``) and the Cloud Storage emulator; what the
scheduler claims is checked through the official client's view of the stand-in, the
bucket and the processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import read_text, wait_running
from tests.schedulers.test_gbatch import (  # noqa: F401
    batch_job,
    calls,
    parent,
    pid_alive,
    project,
    readopted_by_a_later_run,
)
from tests.schedulers.test_gbatch import options as single_options
from tests.schedulers.test_gbatch import queue as single_queue
from tests.standins.gcloud import Gcloud
from xqueue import Job, JobStatus, Xqueue
from xqueue.schedulers.gbatch import GbatchScheduler
from xqueue.workdir import Workdir

pytestmark = pytest.mark.anyio


def options(gcloud: Gcloud, project: str, **extra: Any) -> dict[str, Any]:
    return single_options(gcloud, project, arrays=True, **extra)


def queue(gcloud: Gcloud, project: str, workdir: Path, **kw: Any) -> Xqueue:
    kw["scheduler_opts"] = {"arrays": True, **kw.get("scheduler_opts", {})}
    return single_queue(gcloud, project, workdir, **kw)


def array_name(job: Job) -> str:
    assert job.jid and "/taskGroups/" in job.jid, job.jid
    return job.jid.split("/taskGroups/")[0]


async def test_fifty_homogeneous_jobs_are_one_batch_job_of_fifty_tasks(
    gcloud: Gcloud, project: str, workdir: Path
) -> None:
    q = queue(gcloud, project, workdir, forks=50, error_strategy="ignore")
    jobs = [
        await q.feed(
            ["sh", "-c", f'echo "job {i} task $BATCH_TASK_INDEX"; echo e{i} >&2; exit {i % 3}']
        )
        for i in range(50)
    ]
    with anyio.fail_after(120):
        await q.run_until_complete()
    seen = await calls(gcloud, project)
    assert seen["CreateJob"] == 1
    names = {array_name(job) for job in jobs}
    assert len(names) == 1
    for i, job in enumerate(jobs):
        assert job.rc == i % 3, job.reason
        assert job.status is (JobStatus.FINISHED if i % 3 == 0 else JobStatus.FAILED)
        assert job.jid == f"{array_name(job)}/taskGroups/group0/tasks/{i}"
        assert await read_text(job.stdout_path) == f"job {i} task {i}\n"
        assert await read_text(job.stderr_path) == f"e{i}\n"
    batch = await batch_job(gcloud, array_name(jobs[0]))
    assert batch.task_groups[0].task_count == 50
    assert batch.task_groups[0].parallelism == 50
    assert batch.status.state.name == "FAILED"
    assert dict(batch.status.task_groups["group0"].counts) == {"SUCCEEDED": 17, "FAILED": 33}
    stats = q.statistics()
    assert stats.submit_calls == 1
    # One ListJobs a tick; ListTasks only on ticks when the array's task counts moved.
    assert seen["ListJobs"] == stats.ticks
    assert 1 <= seen.get("ListTasks", 0) <= stats.ticks
    assert stats.status_calls == seen["ListJobs"] + seen["ListTasks"]
    assert "GetJob" not in seen


async def test_forks_bound_the_tasks_running_at_once(
    gcloud: Gcloud, project: str, workdir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "spans"
    cmd = f'a=$(date +%s.%N); sleep 0.6; echo "$a $(date +%s.%N)" >> {log}'
    q = queue(gcloud, project, workdir, forks=4)
    jobs = [await q.feed(cmd) for _ in range(12)]
    with anyio.fail_after(120):
        await q.run_until_complete()
    assert all(j.status is JobStatus.FINISHED for j in jobs)
    spans = [tuple(map(float, line.split())) for line in (await read_text(log)).splitlines()]
    assert len(spans) == 12
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert 2 <= most <= 4
    created = (await calls(gcloud, project))["CreateJob"]
    assert 3 <= created < 12  # arrays of the slots freed at once, never more than forks


async def test_killing_one_job_of_an_array_leaves_the_others_and_cancels_at_the_end(
    gcloud: Gcloud, project: str, workdir: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    async with queue(gcloud, project, workdir, forks=3) as q:
        short = [await q.feed(f"sleep 1.5; echo ok {i}") for i in range(2)]
        long = await q.feed(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"])
        await wait_running(long)
        with anyio.fail_after(20):
            while not (await anyio.Path(pidfile).exists()) or not (await read_text(pidfile)):
                await anyio.sleep(0.05)
        pid = int(await read_text(pidfile))
        assert array_name(long) == array_name(short[0])
        assert await q.kill(long)
        with anyio.fail_after(30):
            await long.wait()
            for job in short:
                await job.wait()
    assert long.status is JobStatus.KILLED
    assert "outside xqueue" not in long.reason, long.reason  # the array xqueue cancelled
    for i, job in enumerate(short):  # its siblings ran to their end
        assert job.status is JobStatus.FINISHED, job.reason
        assert await read_text(job.stdout_path) == f"ok {i}\n"
    assert not await anyio.to_thread.run_sync(pid_alive, pid)
    batch = await batch_job(gcloud, array_name(long))
    assert batch.status.state.name == "CANCELLED"
    seen = await calls(gcloud, project)
    assert seen["CancelJob"] == 1 and seen["CreateJob"] == 1


async def test_a_killed_job_whose_task_succeeds_before_its_array_is_cancelled_finished(
    gcloud: Gcloud, project: str, workdir: Path, tmp_path: Path
) -> None:
    """Batch cannot cancel one task: a running element's kill waits for the array's
    cancel, and one that succeeds first was recorded killed with rc 0, and the next run
    ran it again. Its success is recorded."""
    started = tmp_path / "started"
    async with queue(gcloud, project, workdir, forks=2) as q:
        long = await q.feed("sleep 6; echo long")
        short = await q.feed(f"echo go > {started}; sleep 2; echo short")
        with anyio.fail_after(30):
            while not await anyio.Path(started).exists():
                await anyio.sleep(0.05)
        assert array_name(long) == array_name(short)
        await q.kill(short)
        with anyio.fail_after(40):
            await short.wait()
            await long.wait()
    assert short.status is JobStatus.FINISHED and short.rc == 0, short.reason
    assert await read_text(short.stdout_path) == "short\n"
    assert long.status is JobStatus.FINISHED


async def test_a_killed_job_whose_task_has_not_started_never_runs(
    gcloud: Gcloud, project: str, workdir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    wd = Workdir(workdir)
    sched = GbatchScheduler(**options(gcloud, project))
    await sched.open(wd)
    try:
        jobs = [Job(0, "sleep 2"), Job(1, f"touch {marker}"), Job(2, "echo third")]
        for job in jobs:
            await anyio.to_thread.run_sync(lambda job=job: wd.prepare(job, make=True))
            job.attempt = 1
            await anyio.to_thread.run_sync(sched.write_script, job)
        # One task at a time: the second is still pending when it is killed.
        _, ids = await sched._submit_array(jobs, 1)
        for job, jid in zip(jobs, ids):
            job.jid = jid
        assert await sched.kill_jobs([jobs[1]]) == [None]
        states = {}
        with anyio.fail_after(40):
            while len(states) < 3:
                polled = await sched.poll_jobs([j for j in jobs if j not in states])
                states.update({j: s for j, s in polled.items() if s.status.is_final})
                await anyio.sleep(0.2)
    finally:
        await sched.aclose()
        wd.unlock()
    assert states[jobs[0]].status is JobStatus.FINISHED
    assert states[jobs[1]].status is JobStatus.KILLED
    assert states[jobs[2]].status is JobStatus.FINISHED
    assert not await anyio.Path(marker).exists()
    batch = await batch_job(gcloud, array_name(jobs[0]))
    assert batch.task_groups[0].parallelism == 1
    assert "CancelJob" not in await calls(gcloud, project)  # the others had to run


async def test_a_later_run_readopts_array_elements_by_name_and_by_task_script(
    gcloud: Gcloud, project: str, workdir: Path, tmp_path: Path
) -> None:
    ids, seen = await readopted_by_a_later_run(gcloud, project, workdir, tmp_path, arrays=True)
    assert all("/tasks/" in i for i in ids)  # one array: each job is one of its tasks
    assert seen["CreateJob"] == 1
    assert "GetJob" not in seen  # one listing served every job
    assert os.path.basename(ids[0]) == "0" and parent(project) in ids[0]


async def test_an_array_in_a_gs_workdir_writes_each_job_folder_in_the_bucket(
    gcloud: Gcloud, project: str, tmp_path: Path
) -> None:
    from tests.schedulers.test_gbatch_gcs_workdir import gs_queue, objects

    prefix = f"wd-{os.urandom(4).hex()}"
    opts = {"arrays": True}
    q = gs_queue(gcloud, project, prefix, tmp_path / "a", opts, forks=5, error_strategy="ignore")
    jobs = [await q.feed(["sh", "-c", f"echo out {i}; exit {i % 2}"]) for i in range(5)]
    with anyio.fail_after(60):
        await q.run_until_complete()
    for i, job in enumerate(jobs):
        assert job.rc == i % 2, job.reason
        assert await read_text(job.stdout_path) == f"out {i}\n"
    assert len({array_name(job) for job in jobs}) == 1
    assert (await calls(gcloud, project))["CreateJob"] == 1
    stored = await objects(gcloud, prefix)
    for i, job in enumerate(jobs):  # the job folders of the workdir, in the bucket
        assert stored[f"{Path(job.dir).name}/job.1.rc"] == f"{i % 2}\n".encode()
