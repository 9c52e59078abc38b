"""The PanDA scheduler: the real panda-client against a stand-in server and pilot.

A real PanDA server cannot be installed from the package registries (it needs
PostgreSQL with extensions and a schema no registry carries; see
panda_standin/server.py), so the server is a stand-in on loopback speaking the
HTTP API the installed client speaks, and its pilot really runs every payload on this
machine. Every test reads back what the server recorded (states walked, attributes,
error codes, calls per endpoint) rather than trusting xqueue's view.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
from pathlib import Path

import anyio
import pytest
from panda_standin import Panda
from panda_standin.server import USER
from pandaclient.JobSpec import JobSpec  # the client's data class: reads no configuration
from xqueue_panda import PandaScheduler
from xqueue_panda._states import verdict

from xqueue import FailureClass, Job, JobStatus, Xqueue
from xqueue.errors import SchedulerOptionError, SubmissionUnknownError
from xqueue.job import SCRIPT
from xqueue.scheduler import JobState
from xqueue.workdir import Workdir, WorkdirReader

pytestmark = pytest.mark.anyio


async def read_text(path: str | os.PathLike[str]) -> str:
    return await anyio.Path(path).read_text()


async def wait_running(job: Job, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while job.status is not JobStatus.RUNNING:
            await anyio.sleep(0.1)


WALK = ["defined", "activated", "sent", "starting", "running", "holding"]
"""The states every job that a pilot ran goes through before its final one."""


def tag_of(q: Xqueue) -> str:
    return str(q.scheduler._tag)  # type: ignore[attr-defined]


async def test_jobs_run_with_their_output_and_return_codes(panda: Panda, workdir: Path) -> None:
    q = Xqueue(
        "panda", workdir=workdir, forks=4, error_strategy="ignore", scheduler_opts=panda.opts()
    )
    jobs = [
        await q.feed(["sh", "-c", f"echo out {i}; echo err {i} >&2; exit {i * 3}"])
        for i in range(2)
    ]
    with anyio.fail_after(30):
        await q.run_until_complete()
    ok, bad = jobs
    assert ok.status is JobStatus.FINISHED and ok.rc == 0
    assert bad.status is JobStatus.FAILED and bad.rc == 3
    for i, job in enumerate(jobs):
        assert (await read_text(job.stdout_path)) == f"out {i}\n"
        assert (await read_text(job.stderr_path)) == f"err {i}\n"
    first, second = await panda.ended(ok.jid), await panda.ended(bad.jid)
    # The rc file settled the failure, usually before the pilot's report reached PanDA;
    # once PanDA has recorded it, its diagnostics explain a failure the rc file gave.
    later = PandaScheduler(**panda.opts())
    await later.open(Workdir(workdir))
    state = (await later.poll_jobs([bad]))[bad]
    assert (state.status, state.rc) == (JobStatus.FAILED, 3)
    assert state.reason == "PanDA job failed: execution error 3; payload exit code 3"
    assert first["history"] == [*WALK, "finished"] and first["transExitCode"] == 0
    assert second["history"] == [*WALK, "failed"] and second["transExitCode"] == 3
    assert first["computingSite"] == panda.queue and first["transformation"] == "/bin/sh"
    assert shlex.split(first["jobParameters"]) == [ok.attempt_path(SCRIPT)]
    assert first["jobsetID"] == second["jobsetID"]  # one submission for the batch
    assert q.statistics().submit_calls == 1


async def test_running_job_is_killed_and_panda_records_it_cancelled(
    panda: Panda, workdir: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    async with Xqueue("panda", workdir=workdir, scheduler_opts=panda.opts()) as q:
        job = await q.feed(f"while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.1; done")
        await wait_running(job)
        assert await q.kill(job)
        with anyio.fail_after(30):
            await job.wait()
    assert job.status is JobStatus.KILLED
    record = await panda.record(job.jid)
    assert record["jobStatus"] == "cancelled" and record["commandToPilot"] == "tobekilled"
    assert record["history"][-3:] == ["running", "holding", "cancelled"]
    assert record["pilotErrorCode"] == 1144  # the pilot killed the payload on PanDA's word
    assert not await anyio.Path(job.attempt_path("rc")).exists()  # it never finished
    assert q.statistics().kill_calls == 1


async def test_pilot_error_is_the_reason_of_a_failed_job(panda: Panda, workdir: Path) -> None:
    q = Xqueue("panda", workdir=workdir, error_strategy="ignore", scheduler_opts=panda.opts())
    job = await q.feed(["sleep", "30"], resources={"walltime": 1})
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED and job.rc is None
    assert "pilot error 1213: Reached batch system time limit" in job.reason
    assert job.failure is FailureClass.TIMEOUT
    record = await panda.record(job.jid)
    assert record["maxWalltime"] == 1 and record["history"] == [*WALK, "failed"]


async def test_options_and_resources_reach_panda(panda: Panda, workdir: Path) -> None:
    opts = panda.opts(
        site="XQ_SE",
        container_image="docker://busybox:1.36",
        resource_type="MCORE",
        processing_type="xq-test",
        vo="wlcg",
        cloud="US",
        priority=900,
        task_id=777,
    )
    q = Xqueue("panda", workdir=workdir, forks=2, error_strategy="ignore", scheduler_opts=opts)
    job = await q.feed(
        ["true"], name="my job", resources={"cpus": 4, "memory": "2G", "walltime": "1h"}
    )
    gpu = await q.feed(["true"], resources={"gpus": 1})
    with anyio.fail_after(30):
        await q.run_until_complete()
    record = await panda.record(job.jid)
    expected = {
        "computingSite": panda.queue,
        "destinationSE": "XQ_SE",
        "container_name": "docker://busybox:1.36",
        "resource_type": "MCORE",
        "processingType": "xq-test",
        "VO": "wlcg",
        "cloud": "US",
        "assignedPriority": 900,
        "currentPriority": 900,
        "jediTaskID": 777,
        "coreCount": 4,
        "minRamCount": 2048,
        "minRamUnit": "MB",
        "maxWalltime": 3600,
        "prodSourceLabel": "user",
        "jobName": f"xq{tag_of(q)}_0_1_my_job",
    }
    assert {k: record[k] for k in expected} == expected
    # This queue's pilots have no container runtime: the pilot says so, and it is the reason.
    assert job.status is JobStatus.FAILED and job.rc is None
    assert "pilot error 1384: Queue is not set up for containers" in job.reason
    assert gpu.status is JobStatus.FAILED and gpu.jid is None
    assert "cannot ask for gpus" in gpu.reason
    assert len(await panda.named(f"xq{tag_of(q)}_")) == 1  # the gpu job never reached PanDA


def test_bad_options_are_refused() -> None:
    with pytest.raises(SchedulerOptionError, match="option 'queue' is required"):
        PandaScheduler()
    with pytest.raises(SchedulerOptionError, match="resource_type 'BIG' is not one of"):
        PandaScheduler(queue="Q", resource_type="BIG")
    with pytest.raises(SchedulerOptionError, match="submit_chunk must be between 1 and 5000"):
        PandaScheduler(queue="Q", submit_chunk=6000)
    with pytest.raises(SchedulerOptionError, match="does not accept option 'partition'"):
        PandaScheduler(queue="Q", partition="x")


async def test_server_refusal_is_a_clear_submission_error(panda: Panda, workdir: Path) -> None:
    opts = panda.opts(prod_source_label="managed")
    q = Xqueue("panda", workdir=workdir, error_strategy="retry", num_retries=2, scheduler_opts=opts)
    job = await q.feed(["true"])
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED and job.attempt == 1  # a refusal is not retried
    assert job.reason == (
        "submission failed: PanDA refused the submission: "
        f"{USER} is missing production for prodSourceLabel=managed submission"
    )
    counts, _ = panda.server.calls()
    assert counts["job/submit"] == 1
    assert await panda.named(f"xq{tag_of(q)}_") == []


async def test_job_the_server_forgets_vanishes(panda: Panda, workdir: Path) -> None:
    # A queue no pilot serves: the job waits in "activated" until the server loses it.
    opts = panda.opts(queue=f"{panda.queue}_NO_PILOT", vanish_grace=0.5)
    q = Xqueue("panda", workdir=workdir, error_strategy="ignore", scheduler_opts=opts)
    job = await q.feed(["true"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.run_until_complete)
        with anyio.fail_after(30):
            while job.jid is None or (await panda.record(job.jid))["jobStatus"] != "activated":
                await anyio.sleep(0.05)
        await anyio.to_thread.run_sync(panda.server.forget, job.jid)
    assert job.status is JobStatus.FAILED and job.reason.startswith("vanished")


async def test_lost_submit_answer_is_found_by_tag_not_submitted_twice(
    panda: Panda, workdir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    wd = Workdir(workdir)
    scheduler = PandaScheduler(**panda.opts())
    await scheduler.open(wd)
    jobs = [Job(i, f"echo {i} >> {shlex.quote(str(marker))}") for i in range(3)]
    for job in jobs:
        wd.prepare(job, make=True)
        job.attempt = 1
    await anyio.to_thread.run_sync(panda.server.drop_submit_answers, 1)
    results = await scheduler.submit_jobs(jobs)
    assert all(isinstance(r, SubmissionUnknownError) for r in results), results
    stored = {
        r["jobName"].split("_")[1]: str(r["PandaID"])
        for r in await panda.named(f"xq{scheduler._tag}_")
    }
    assert len(stored) == 3  # the server took them all, once
    for job in jobs:
        assert job.jid is None
        await scheduler.recover_job(job)
        assert job.jid == stored[str(job.index)]
    with anyio.fail_after(30):
        while not all(s.status.is_final for s in (await scheduler.poll_jobs(jobs)).values()):
            await anyio.sleep(0.1)
    assert sorted((await read_text(marker)).split()) == ["0", "1", "2"]
    assert scheduler.stats.submit_calls == 1

    # Through the engine: the lookup adopts the job, which runs once.
    await anyio.to_thread.run_sync(panda.server.drop_submit_answers, 1)
    q = Xqueue("panda", workdir=tmp_path / "wd2", scheduler_opts=panda.opts())
    job = await q.feed(f"echo once >> {shlex.quote(str(tmp_path / 'once'))}")
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED and job.attempt == 1
    assert (await read_text(tmp_path / "once")) == "once\n"
    assert len(await panda.named(f"xq{tag_of(q)}_")) == 1
    assert q.statistics().submit_calls == 1


@pytest.mark.parametrize("stop", [False, True], ids=["run", "cancelled"])
async def test_a_submission_slower_than_its_timeout_is_not_made_twice(
    panda: Panda, tmp_path: Path, stop: bool
) -> None:
    """The server took longer than submit_timeout to store a job: the client's call
    went on in its thread while the engine looked the job up by name, found nothing,
    and submitted it again (two PanDA jobs, one unwatched). Cancelled meanwhile, the
    run recorded the job "killed before it was submitted" while it ran."""
    await anyio.to_thread.run_sync(panda.server.delay_submits, 3.0)
    marker = tmp_path / "ran"
    q = Xqueue("panda", workdir=tmp_path / "wd", scheduler_opts=panda.opts(submit_timeout=1))
    job = await q.feed(f"echo once >> {shlex.quote(str(marker))}; sleep 1")
    try:
        with anyio.move_on_after(1.5 if stop else 60):
            await q.run_until_complete()
    finally:
        await q.aclose()
    with anyio.fail_after(10):  # the stored job, once the slow call has returned
        while not (stored := await panda.named(f"xq{tag_of(q)}_")):
            await anyio.sleep(0.1)
    assert len(stored) == 1
    if stop:  # found once the call returned, and killed: not "never submitted"
        assert job.status is JobStatus.KILLED and "before it was submitted" not in job.reason
    else:
        assert job.status is JobStatus.FINISHED and (await read_text(marker)) == "once\n"


async def test_controller_restart_readopts_running_jobs(
    panda: Panda, workdir: Path, tmp_path: Path, anyio_backend: str
) -> None:
    marker, go = tmp_path / "ran", tmp_path / "go"
    commands = [
        f"echo {i} >> {shlex.quote(str(marker))}; "
        f"while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.1; done"
        for i in range(3)
    ]
    jobs_file = anyio.Path(tmp_path / "jobs")
    await jobs_file.write_text("".join(c + "\n" for c in commands))
    # The first controller is the command line, as a user would start it; it dies by
    # SIGKILL, and the second one is this test's own queue.
    argv = [
        sys.executable,
        "-m",
        "xqueue",
        "run",
        str(jobs_file),
        "-w",
        str(workdir),
        "--no-progress",
        "-f",
        "3",
        "-s",
        "panda",
    ]
    for key, value in panda.opts().items():
        argv += ["-o", f"{key}={value}"]
    first = await anyio.open_process(argv, stdin=None, stdout=None, stderr=None)
    try:
        with anyio.fail_after(30):
            while not (
                await anyio.Path(marker).exists() and len((await read_text(marker)).split()) == 3
            ):
                await anyio.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)  # the controller dies without a word
        await first.wait()
        await first.aclose()
    records = (await anyio.to_thread.run_sync(WorkdirReader(workdir).journal)).values()
    assert sorted(r["status"] for r in records) == ["submitted"] * 3

    q = Xqueue("panda", workdir=workdir, scheduler_opts=panda.opts())
    jobs = [await q.feed(c) for c in commands]
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.run_until_complete)
        for job in jobs:
            await wait_running(job)  # re-adopted while they run
        await anyio.Path(go).touch()
    assert all(j.status is JobStatus.FINISHED and j.rc == 0 and j.attempt == 1 for j in jobs)
    assert sorted((await read_text(marker)).split()) == ["0", "1", "2"]  # each ran once
    assert q.statistics().submit_calls == 0
    assert len(await panda.named(f"xq{tag_of(q)}_")) == 3


async def test_one_status_call_per_tick_for_many_jobs(
    panda: Panda, workdir: Path, anyio_backend: str
) -> None:
    # One event loop sends every job at once, the other in chunks of 8 jobs and 8 ids.
    chunk = 1000 if anyio_backend == "asyncio" else 8
    opts = panda.opts(status_chunk=chunk, submit_chunk=chunk)
    q = Xqueue("panda", workdir=workdir, forks=30, scheduler_opts=opts)
    jobs = [await q.feed(["true"]) for _ in range(30)]
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert all(j.status is JobStatus.FINISHED for j in jobs)
    stats = q.statistics()
    counts, described = panda.server.calls()
    per_tick = -(-30 // chunk)  # the calls one batch of 30 jobs takes
    assert counts["job/submit"] == stats.submit_calls == per_tick
    assert counts["job/get_description"] == stats.status_calls
    assert max(len(ids) for ids in described) == min(chunk, 30)
    assert stats.status_calls <= stats.ticks * per_tick
    assert stats.ticks < 30


async def test_hostile_names_and_arguments_stay_inert(panda: Panda, tmp_path: Path) -> None:
    workdir = tmp_path / "wd it's $(touch pwned1) `touch pwned2`; touch pwned3"
    argv = ["printf", "%s|", "a b", "'q'", "$(touch pwned4)", "`touch pwned5`", "x\ny", ";", "*"]
    q = Xqueue("panda", workdir=workdir, scheduler_opts=panda.opts())
    job = await q.feed(argv, name="n'; touch pwned6 $(touch pwned7)\nx")
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED
    assert (await read_text(job.stdout_path)) == "a b|'q'|$(touch pwned4)|`touch pwned5`|x\ny|;|*|"
    record = await panda.record(job.jid)
    assert re.fullmatch(rf"xq{tag_of(q)}_0_1_[A-Za-z0-9_.+-]*", record["jobName"])
    assert shlex.split(record["jobParameters"]) == [job.attempt_path(SCRIPT)]
    pwned = await anyio.to_thread.run_sync(lambda: sorted(tmp_path.rglob("pwned*")))
    assert pwned == []


async def test_client_that_cannot_load_is_reported(tmp_path: Path) -> None:
    # Without PANDA_BEHIND_REAL_LB the client resolves its cache server's name on import;
    # a fresh interpreter shows what a user without outside DNS sees.
    script = (
        "import anyio\n"
        "from xqueue_panda import PandaScheduler\n"
        "from xqueue.workdir import Workdir\n"
        "async def main():\n"
        f"    await PandaScheduler(queue='Q').open(Workdir({str(tmp_path / 'wd')!r}))\n"
        "anyio.run(main)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANDA")}
    env["PANDACACHE_URL"] = "http://xqueue-no-such-host.invalid:1/server/panda"
    result = await anyio.run_process([sys.executable, "-c", script], env=env, check=False)
    assert result.returncode == 1
    assert b"panda-client could not be loaded" in result.stderr
    assert b"PANDA_BEHIND_REAL_LB=1" in result.stderr


async def test_job_cancelled_outside_the_run_fails_without_retry(
    panda: Panda, workdir: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    q = Xqueue(
        "panda",
        workdir=workdir,
        error_strategy="retry",
        num_retries=2,
        scheduler_opts=panda.opts(),
    )
    job = await q.feed(f"while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.1; done")
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.run_until_complete)
        await wait_running(job)
        # Someone else kills it, with the client's own public call (pbook does the same).
        # Imported here: the client reads the server's address when first imported.
        from pandaclient import Client

        status, answer = await anyio.to_thread.run_sync(Client.killJobs, [int(str(job.jid))])
        assert (status, answer) == (0, [True])
    assert job.status is JobStatus.FAILED and job.attempt == 1  # not retried
    assert job.reason.startswith("cancelled in PanDA outside this run (pilot error 1144")
    assert f"task buffer error 100: killed by {USER}" in job.reason


def test_closed_and_unknown_states_read_from_the_clients_jobspec() -> None:
    spec = JobSpec()
    spec.jobStatus, spec.supErrorCode, spec.supErrorDiag = "closed", 4, "reassigned"
    held, state = verdict(spec, kill_requested=False)
    assert not held and state is not None and state.status is JobStatus.FAILED
    assert state.reason == "closed by PanDA before it finished (supervisor error 4: reassigned)"
    assert state.retryable and state.rc is None
    spec.jobStatus = "some-future-state"  # held: PanDA itself ends every job it holds
    assert verdict(spec, kill_requested=False) == (True, None)
    spec.jobStatus = "merging"
    assert verdict(spec, kill_requested=False)[1] == JobState(JobStatus.RUNNING)
