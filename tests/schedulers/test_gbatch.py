"""The Google Cloud Batch scheduler against the project's Batch stand-in and a real
Cloud Storage emulator (tests/standins: both started once per session on loopback).

The stand-in really runs each job's script on this machine, with its GCS volume played
by a folder filled from and written back to the emulator's bucket; what the scheduler
claims is checked independently: through the official client's own calls to the
stand-in (job states, labels, specs), through the bucket, and through the processes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import container_engine, read_text, wait_running
from tests.schedulers.conftest import BUCKET, LOCATION
from tests.standins.gcloud import Gcloud
from xqueue import FailureClass, Job, JobStatus, Xqueue
from xqueue.errors import SchedulerError, SchedulerOptionError
from xqueue.schedulers import _gbatch_spec as spec
from xqueue.schedulers.gbatch import GbatchScheduler
from xqueue.workdir import Workdir

pytestmark = pytest.mark.anyio


@pytest.fixture
def project() -> str:
    """A project of the test's own: the stand-in counts calls per project."""
    return f"p-{uuid.uuid4().hex[:10]}"


def parent(project: str) -> str:
    return f"projects/{project}/locations/{LOCATION}"


def options(gcloud: Gcloud, project: str, **extra: Any) -> dict[str, Any]:
    return {
        "project": project,
        "location": LOCATION,
        "staging_bucket": f"gs://{BUCKET}/runs",
        "endpoint": gcloud.batch,
        "insecure": True,
        "storage_endpoint": gcloud.storage,
        "mount_root": f"{gcloud.vm_root}/mnt",
        "poll_interval": 0.2,
        "vanish_grace": 1.0,
        # One Batch job per job, the path these tests check; test_gbatch_arrays.py
        # checks arrays (the default).
        "arrays": False,
        **extra,
    }


def queue(gcloud: Gcloud, project: str, workdir: Path, **kw: Any) -> Xqueue:
    opts = options(gcloud, project, **kw.pop("scheduler_opts", {}))
    return Xqueue("gbatch", workdir=workdir, scheduler_opts=opts, **kw)


def batch_client(gcloud: Gcloud) -> Any:
    """The official (sync) client on the stand-in: an independent witness, from a thread."""
    import grpc
    from google.cloud import batch_v1
    from google.cloud.batch_v1.services.batch_service.transports import BatchServiceGrpcTransport

    channel = grpc.insecure_channel(gcloud.batch)
    return batch_v1.BatchServiceClient(transport=BatchServiceGrpcTransport(channel=channel))


async def batch_job(gcloud: Gcloud, name: str) -> Any:
    def get() -> Any:
        client = batch_client(gcloud)
        try:
            return client.get_job(name=name, retry=None, timeout=10)
        finally:
            client.transport.close()

    return await anyio.to_thread.run_sync(get)


async def calls(gcloud: Gcloud, project: str) -> dict[str, int]:
    return await anyio.to_thread.run_sync(gcloud.calls, parent(project))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is not alive
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


# -- running jobs ---------------------------------------------------------------------------
async def test_jobs_run_and_their_outputs_come_back_through_the_bucket(
    gcloud: Gcloud, project: str, workdir: Path
) -> None:
    q = queue(gcloud, project, workdir, forks=6, error_strategy="ignore")
    jobs = [
        await q.feed(
            ["sh", "-c", f'echo "out {i} task $BATCH_TASK_INDEX"; echo err {i} >&2; exit {i % 3}']
        )
        for i in range(6)
    ]
    with anyio.fail_after(60):
        await q.run_until_complete()
    for i, job in enumerate(jobs):
        assert job.rc == i % 3, job.reason
        assert job.status is (JobStatus.FINISHED if i % 3 == 0 else JobStatus.FAILED)
        assert await read_text(job.stdout_path) == f"out {i} task 0\n"
        assert await read_text(job.stderr_path) == f"err {i}\n"
        assert job.jid and job.jid.startswith(f"{parent(project)}/jobs/")
        seen = await batch_job(gcloud, job.jid)
        assert seen.status.state.name == ("SUCCEEDED" if i % 3 == 0 else "FAILED")
        assert seen.labels[spec.INDEX_LABEL] == str(job.index)
        assert dict(seen.status.task_groups["group0"].counts) == {
            "SUCCEEDED" if i % 3 == 0 else "FAILED": 1
        }
    # The outputs are the bucket's objects, read back; the script went there first.
    batch_id = str(jobs[1].jid).rsplit("/", 1)[1]
    blobs = await anyio.to_thread.run_sync(
        lambda: {
            b.name.rsplit("/", 1)[1]: b
            for b in gcloud.storage_client().list_blobs(BUCKET, prefix=f"runs/{batch_id}/")
        }
    )
    assert sorted(blobs) == [f"job.1.{k}" for k in ("rc", "sh", "started", "stderr", "stdout")]
    assert await anyio.to_thread.run_sync(blobs["job.1.rc"].download_as_text) == "1\n"
    stats = q.statistics()
    assert stats.submit_calls == 6
    assert (await calls(gcloud, project))["CreateJob"] == 6


async def test_resources_and_batch_fields_are_merged_into_the_job(
    gcloud: Gcloud, project: str, workdir: Path
) -> None:
    q = queue(
        gcloud,
        project,
        workdir,
        scheduler_opts={
            "taskGroups": [
                {
                    "taskSpec": {
                        "computeResource": {"memoryMib": 512},
                        "runnables": [{"script": {"text": "echo setup > /dev/null"}}],
                        "environment": {"variables": {"STAGE": "test"}},
                    }
                }
            ],
            "allocationPolicy": {"instances": [{"policy": {"machineType": "e2-standard-4"}}]},
            "labels": {"team": "genomics"},
            "gpu_type": "nvidia-tesla-t4",
        },
    )
    job = await q.feed(
        'echo "$STAGE"', resources={"cpus": 2, "memory": "4G", "walltime": "1h", "gpus": 1}
    )
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED, job.reason
    assert await read_text(job.stdout_path) == "test\n"
    assert job.jid
    seen = await batch_job(gcloud, job.jid)
    task = seen.task_groups[0].task_spec
    assert task.compute_resource.cpu_milli == 2000
    assert task.compute_resource.memory_mib == 512  # the Batch field given wins
    assert task.max_run_duration.total_seconds() == 3600
    assert [r.script.text.split()[0] for r in task.runnables] == ["echo", "exec"]
    assert task.volumes[0].gcs.remote_path.startswith(f"{BUCKET}/runs/xq-")
    assert seen.task_groups[0].task_count == 1
    policy = seen.allocation_policy.instances[0].policy
    assert policy.machine_type == "e2-standard-4"
    assert [(a.type_, a.count) for a in policy.accelerators] == [("nvidia-tesla-t4", 1)]
    assert seen.labels["team"] == "genomics" and seen.labels[spec.RUN_LABEL]


async def test_walltime_is_enforced_by_batch_and_reported(
    gcloud: Gcloud, project: str, workdir: Path
) -> None:
    q = queue(gcloud, project, workdir, error_strategy="ignore")
    job = await q.feed(["sleep", "30"], resources={"walltime": 1})
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED
    assert job.rc is None
    assert "maximum run duration" in job.reason and "50005" in job.reason
    assert job.failure is FailureClass.TIMEOUT


async def test_exit_code_comes_from_status_events_when_the_wrapper_left_none(
    gcloud: Gcloud, project: str, workdir: Path
) -> None:
    q = queue(gcloud, project, workdir, error_strategy="ignore")
    job = await q.feed(["sh", "-c", "echo before; kill -9 $PPID"])  # kills the wrapper
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED
    assert job.rc == 137
    assert "status events" in job.reason
    assert await read_text(job.stdout_path) == "before\n"
    assert not await anyio.Path(job.attempt_path("rc")).exists()


async def test_running_job_is_killed_and_batch_shows_it_cancelled(
    gcloud: Gcloud, project: str, workdir: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    async with queue(gcloud, project, workdir, forks=2) as q:
        job = await q.feed(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"])
        await wait_running(job)
        with anyio.fail_after(10):
            while not (await anyio.Path(pidfile).exists()) or not (await read_text(pidfile)):
                await anyio.sleep(0.05)
        pid = int(await read_text(pidfile))
        assert await anyio.to_thread.run_sync(pid_alive, pid)
        assert await q.kill(job)
        with anyio.fail_after(30):
            await job.wait()
    assert job.status is JobStatus.KILLED
    assert "outside xqueue" not in job.reason, job.reason  # xqueue's own cancel
    assert not await anyio.to_thread.run_sync(pid_alive, pid)
    assert job.jid
    assert (await batch_job(gcloud, job.jid)).status.state.name == "CANCELLED"
    assert q.statistics().kill_calls == 1
    assert (await calls(gcloud, project))["CancelJob"] == 1


async def readopted_by_a_later_run(
    gcloud: Gcloud, project: str, workdir: Path, tmp_path: Path, arrays: bool
) -> tuple[list[str], dict[str, int]]:
    """Four jobs submitted by a controller that died: jobs 0-1 had their names recorded
    in the journal, jobs 2-3 never had (the answer to their submission was lost). A
    later run must adopt all four, run none again and submit nothing; returns the ids
    and the calls the stand-in saw, for each test's own claims about how it found them."""
    marker = tmp_path / "ran"
    cmds = [f"echo {i} >> {marker}; sleep 1; echo done {i}" for i in range(4)]
    wd = Workdir(workdir)
    first = GbatchScheduler(**options(gcloud, project, arrays=arrays))
    first.forks = 4
    await first.open(wd)
    try:
        early = [Job(i, c) for i, c in enumerate(cmds)]
        for job in early:
            await anyio.to_thread.run_sync(lambda job=job: wd.prepare(job, make=True))
            job.attempt = 1
        ids = [str(i) for i in await first.submit_jobs(early)]
        for job, jid in zip(early[:2], ids[:2]):
            job.jid = jid
            job.status = JobStatus.SUBMITTED
            wd.record(job)
    finally:
        await first.aclose()
        wd.unlock()

    q = queue(gcloud, project, workdir, forks=4, scheduler_opts={"arrays": arrays})
    jobs = [await q.feed(c) for c in cmds]
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert [j.jid for j in jobs] == ids
    for i, job in enumerate(jobs):
        assert job.status is JobStatus.FINISHED and job.rc == 0, job.reason
        assert await read_text(job.stdout_path) == f"done {i}\n"
    assert sorted((await read_text(marker)).split()) == ["0", "1", "2", "3"]  # each ran once
    assert q.statistics().submit_calls == 0
    return ids, await calls(gcloud, project)


async def test_a_later_run_readopts_jobs_by_name_and_by_label(
    gcloud: Gcloud, project: str, workdir: Path, tmp_path: Path
) -> None:
    _, seen = await readopted_by_a_later_run(gcloud, project, workdir, tmp_path, arrays=False)
    assert seen["CreateJob"] == 4
    assert seen["GetJob"] >= 2  # the recorded names, looked up one by one


async def test_hostile_names_arguments_and_envs_reach_the_job_untouched(
    gcloud: Gcloud, project: str, workdir: Path, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    name = f"Ünïcode NAME\n$(touch {pwned}); `touch {pwned}` ' \" {'x' * 300}"
    argv = ["printf", "%s|", f"a b'c\"d;$(touch {pwned})", "$HOME", "line\nbreak", "*", ""]
    envs = {"HOSTILE": f"'; touch {pwned}; echo '", "EMPTY": ""}
    q = queue(gcloud, project, workdir)
    job = await q.feed(argv, name=name, envs=envs)
    job2 = await q.feed(["sh", "-c", 'printf "%s" "$HOSTILE"'], name="-" * 80, envs=envs)
    # A shell command over the 128 KiB exec passes in one argument: run from a file.
    word = f"$(touch {pwned})'\"\\\n"
    job3 = await q.feed(f"printf %s {shlex.quote(word * 20_000)} | wc -c")
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED, job.reason
    assert await read_text(job.stdout_path) == "|".join(argv[2:]) + "|"
    assert await read_text(job2.stdout_path) == envs["HOSTILE"]
    assert job3.status is JobStatus.FINISHED, await read_text(job3.stderr_path)
    assert (await read_text(job3.stdout_path)).strip() == str(len(word) * 20_000)
    assert not await anyio.Path(pwned).exists()
    for j in (job, job2):
        assert j.jid
        batch_id = j.jid.rsplit("/jobs/", 1)[1]
        assert spec.JOB_ID.match(batch_id) and len(batch_id) <= 63
        seen = await batch_job(gcloud, j.jid)
        assert all(re.fullmatch(r"[a-z0-9_-]{0,63}", v) for v in seen.labels.values()), seen.labels


async def test_one_listjobs_per_tick_serves_every_job(
    gcloud: Gcloud, project: str, workdir: Path
) -> None:
    q = queue(gcloud, project, workdir, forks=30)
    jobs = [await q.feed(["sleep", "0.5"]) for _ in range(30)]
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert all(j.status is JobStatus.FINISHED for j in jobs)
    stats = q.statistics()
    seen = await calls(gcloud, project)
    assert seen["ListJobs"] == stats.status_calls == stats.ticks  # one page each
    assert 1 <= stats.ticks <= 30
    assert "GetJob" not in seen and seen["CreateJob"] == 30


async def test_invalid_argument_is_a_clear_submission_error_not_retried(
    gcloud: Gcloud, project: str, workdir: Path
) -> None:
    q = queue(
        gcloud,
        project,
        workdir,
        error_strategy="retry",
        num_retries=3,
        scheduler_opts={"labels": {"Bad Key": "x"}},
    )
    job = await q.feed(["true"])
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED
    assert job.attempt == 1
    assert "INVALID_ARGUMENT" in job.reason and "'Bad Key'" in job.reason
    assert job.reason.startswith("submission failed: gbatch: Batch refused job 0")
    assert "CreateJob" in await calls(gcloud, project)


async def test_python_calls_run_on_batch_and_return_their_value(
    gcloud: Gcloud, project: str, workdir: Path
) -> None:
    q = queue(gcloud, project, workdir, scheduler_opts={"python": sys.executable})
    job = await q.submit(divmod, 17, 5)
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert await job.result() == (3, 2)


# -- the stand-in behaves like the service ----------------------------------------------------
async def test_standin_answers_like_the_batch_service(gcloud: Gcloud, project: str) -> None:
    from google.api_core import exceptions as gexc
    from google.cloud import batch_v1

    where = parent(project)

    def job(label: str, text: str = "true") -> Any:
        runnable = batch_v1.Runnable(script=batch_v1.Runnable.Script(text=text))
        group = batch_v1.TaskGroup(task_spec=batch_v1.TaskSpec(runnables=[runnable]))
        return batch_v1.Job(task_groups=[group], labels={"kind": label, "run": "r1"})

    def scenario() -> dict[str, Any]:
        c = batch_client(gcloud)
        out: dict[str, Any] = {}
        try:
            for bad in ("UPPER_bad", "-lead", "trail-", "x" * 64):
                with pytest.raises(gexc.InvalidArgument):
                    c.create_job(parent=where, job=job("a"), job_id=bad, retry=None)
            with pytest.raises(gexc.InvalidArgument):
                c.create_job(parent=where, job=batch_v1.Job(), job_id="empty", retry=None)
            with pytest.raises(gexc.InvalidArgument):
                c.create_job(parent="projects/x", job=job("a"), job_id="noloc", retry=None)
            c.create_job(parent=where, job=job("a"), job_id="a1", retry=None)
            c.create_job(parent=where, job=job("b", "exit 3"), job_id="b1", retry=None)
            c.create_job(parent=where, job=job("a", "sleep 60"), job_id="a2", retry=None)
            with pytest.raises(gexc.AlreadyExists):
                c.create_job(parent=where, job=job("a"), job_id="a1", retry=None)
            for missing in (
                lambda: c.get_job(name=f"{where}/jobs/nope", retry=None),
                lambda: c.cancel_job(name=f"{where}/jobs/nope", retry=None),
                lambda: c.delete_job(name=f"{where}/jobs/nope", retry=None),
            ):
                with pytest.raises(gexc.NotFound):
                    missing()

            def names(flt: str) -> list[str]:
                listed = c.list_jobs(request={"parent": where, "filter": flt}, retry=None)
                return sorted(j.name.rsplit("/", 1)[1] for j in listed)

            out["a"] = names('labels.kind="a"')
            out["a_and"] = names('labels.kind="a" AND labels.run="r1"')
            out["none"] = names('labels.kind="a" AND labels.run="r2"')
            out["or"] = names('labels.kind="a" OR labels.kind="b"')
            with pytest.raises(gexc.InvalidArgument):
                names("labels.kind = = x")
            end = time.monotonic() + 20
            states: list[str] = []
            while time.monotonic() < end:
                states = [
                    c.get_job(name=f"{where}/jobs/{n}", retry=None).status.state.name
                    for n in ("a1", "b1", "a2")
                ]
                if states[:2] == ["SUCCEEDED", "FAILED"] and states[2] == "RUNNING":
                    break
                time.sleep(0.05)
            out["states"] = states
            b1 = c.get_job(name=f"{where}/jobs/b1", retry=None)
            out["b1_events"] = [e.description for e in b1.status.status_events]
            task = c.get_task(name=f"{where}/jobs/b1/taskGroups/group0/tasks/0", retry=None)
            out["task_exit"] = [e.task_execution.exit_code for e in task.status.status_events]
            c.cancel_job(name=f"{where}/jobs/a2", retry=None).result(timeout=20)
            out["cancelled"] = c.get_job(name=f"{where}/jobs/a2", retry=None).status.state.name
            c.delete_job(name=f"{where}/jobs/a1", retry=None).result(timeout=20)
            with pytest.raises(gexc.NotFound):
                c.get_job(name=f"{where}/jobs/a1", retry=None)
        finally:
            c.transport.close()
        return out

    out = await anyio.to_thread.run_sync(scenario)
    assert out["a"] == out["a_and"] == ["a1", "a2"]
    assert out["none"] == []
    assert out["or"] == ["a1", "a2", "b1"]
    assert out["states"] == ["SUCCEEDED", "FAILED", "RUNNING"]
    assert [d.split(" for job")[0] for d in out["b1_events"]] == [
        "Job state is set from QUEUED to SCHEDULED",
        "Job state is set from SCHEDULED to RUNNING",
        "Job state is set from RUNNING to FAILED",
    ]
    assert out["b1_events"][-1].endswith('with exit code 3."')
    assert out["task_exit"][-1] == 3
    assert out["cancelled"] == "CANCELLED"


# -- options and names --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"project": ""}, "'project' is required"),
        ({"staging_bucket": "gs://"}, "does not name a Cloud Storage bucket"),
        ({"job_prefix": "Bad_Prefix"}, "job_prefix"),
        ({"taskGroups": [{}, {}]}, "one task group"),
        ({"taskGroups": {"taskCount": 4}}, "one Batch task"),
        ({"taskGroups": {"taskSpec": {"bogus": 1}}}, "bogus"),
        ({"machine": "e2"}, "does not accept option 'machine'"),
        # A typo of its own option passes through as a Batch field, refused there.
        ({"rpc_timout": "5"}, r"'rpc_timout' \(did you mean 'rpc_timeout'\?\)"),
        ({"labels": "[1]"}, "labels must be a mapping"),
    ],
)
def test_options_are_checked_when_the_scheduler_is_made(opts: dict[str, Any], message: str) -> None:
    base = {"project": "p", "location": "l", "staging_bucket": "gs://b-1/x"}
    with pytest.raises(SchedulerOptionError, match=message):
        GbatchScheduler(**{**base, **opts})


def test_job_ids_and_labels_are_always_valid() -> None:
    jid = spec.job_id("xq", "0123456789", "abcdef", 10**15, 999)
    assert spec.JOB_ID.match(jid) and len(jid) <= 63
    assert spec.label_value("Ünïcode NAME\n$(rm -rf /)" + "x" * 100) == (
        "n_code_name_rm_-rf_" + "x" * 44
    )


def test_exit_codes_are_read_from_real_shaped_status_events() -> None:
    from google.cloud import batch_v1

    job_level = batch_v1.StatusEvent(
        description=(
            "Job state is set from RUNNING to FAILED for job projects/p/locations/l/jobs/j."
            "Job failed due to task failure. Specifically, task with index 0 failed due to "
            'the following task event: "Task state is updated from RUNNING to FAILED on '
            'zones/us-central1-a/instances/123 with exit code 50005."'
        )
    )
    task_level = batch_v1.StatusEvent(
        description="Task failed", task_execution=batch_v1.TaskExecution(exit_code=42)
    )
    assert spec.exit_code([job_level]) == 50005
    assert spec.exit_code([job_level, task_level]) == 42
    timed_out = spec.ended_state("FAILED", [job_level])
    assert timed_out.status is JobStatus.FAILED and timed_out.rc is None
    assert "50005" in timed_out.reason
    assert spec.ended_state("CANCELLED", []).status is JobStatus.KILLED
    assert json.dumps(spec.ended_state("SUCCEEDED", []).rc) == "0"


# -- lost answers and a service without CancelJob ----------------------------------------------
async def test_a_create_whose_answer_is_lost_is_sent_again_and_runs_once(
    gcloud: Gcloud, project: str, workdir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    await anyio.to_thread.run_sync(
        lambda: gcloud.control(
            "Slow", method="CreateJob", parent=parent(project), seconds=1.5, times=1
        )
    )
    q = queue(gcloud, project, workdir, scheduler_opts={"rpc_timeout": 0.5})
    job = await q.feed(f"echo x >> {marker}")
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED, job.reason
    assert await read_text(marker) == "x\n"  # the job the first create made, only
    assert (await calls(gcloud, project))["CreateJob"] == 2  # the second met ALREADY_EXISTS
    assert q.statistics().submit_calls == 2


async def test_kill_deletes_the_job_where_the_service_cannot_cancel(
    gcloud: Gcloud, project: str, workdir: Path
) -> None:
    await anyio.to_thread.run_sync(
        lambda: gcloud.control("Disable", method="CancelJob", parent=parent(project))
    )
    async with queue(gcloud, project, workdir) as q:
        job = await q.feed(["sleep", "60"])
        await wait_running(job)
        assert await q.kill(job)
        with anyio.fail_after(30):
            await job.wait()
    assert job.status is JobStatus.KILLED
    seen = await calls(gcloud, project)
    assert seen["CancelJob"] == 1 and seen["DeleteJob"] == 1
    assert job.jid
    with pytest.raises(Exception, match="not found"):
        await batch_job(gcloud, job.jid)


@pytest.fixture
def podman_image(request: pytest.FixtureRequest) -> str:
    """The busybox image of ci/images.sh, imported into podman (the stand-in runs podman)."""
    return container_engine(request, "podman")["image"]


@pytest.mark.podman
async def test_image_runs_the_wrapper_in_a_container_runnable(
    gcloud: Gcloud, project: str, workdir: Path, podman_image: str
) -> None:
    image = podman_image  # busybox: /bin/busybox is the image's, not this machine's
    q = queue(gcloud, project, workdir, scheduler_opts={"image": image}, error_strategy="ignore")
    job = await q.feed(["sh", "-c", 'ls /bin/busybox && echo "task $BATCH_TASK_INDEX"; exit 4'])
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert job.rc == 4, job.reason
    assert await read_text(job.stdout_path) == "/bin/busybox\ntask 0\n"
    assert job.jid
    runnable = (await batch_job(gcloud, job.jid)).task_groups[0].task_spec.runnables[-1]
    assert runnable.container.image_uri == image


async def test_gpus_without_a_type_fail_the_job_before_anything_is_created(
    gcloud: Gcloud, project: str, workdir: Path
) -> None:
    q = queue(gcloud, project, workdir, error_strategy="retry", num_retries=2)
    job = await q.feed(["true"], resources={"gpus": 1})
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED and job.attempt == 1
    assert "gpu_type" in job.reason
    assert "CreateJob" not in await calls(gcloud, project)


async def test_a_missing_staging_bucket_stops_the_run_with_the_reason(
    gcloud: Gcloud, project: str, workdir: Path
) -> None:
    q = queue(gcloud, project, workdir, scheduler_opts={"staging_bucket": "gs://no-such-bkt"})
    await q.feed(["true"])
    with anyio.fail_after(30), pytest.raises(SchedulerError, match="no-such-bkt does not exist"):
        await q.run_until_complete()
