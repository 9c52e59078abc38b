"""The SGE scheduler against the real SGE 8.1.9 of ci/sge.sh.

What SGE itself recorded (``qstat -j``, ``qacct``) is read back; jobs left behind are
deleted when a test ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import SGE_FAST as FAST
from tests.helpers import (
    cluster_queue,
    kill_as_it_ends,
    kill_once_exited,
    read_text,
    remove_after,
    run_watching_peak,
)
from tests.schedulers.fakes import calls, garbling, submitted_ids, submitting_then
from xqueue import FailureClass, Job, JobStatus, Xqueue
from xqueue.errors import SubmissionUnknownError
from xqueue.schedulers._sge_parse import parse_qacct
from xqueue.schedulers.sge import SgeScheduler, _argv_flags, qsub_options
from xqueue.workdir import Workdir

pytestmark = [pytest.mark.anyio, pytest.mark.sge, pytest.mark.usefixtures("sge_cluster")]


async def sh(*argv: str) -> str:
    """A command's output (the cluster's own CLI, the witness independent of xqueue)."""
    with anyio.fail_after(30):
        return (await anyio.run_process(argv, check=False)).stdout.decode()


async def qacct(jid: str) -> dict[str, Any]:
    """The accounting record of a job or task, waiting for SGE to write it."""
    for _ in range(50):
        record = parse_qacct(await sh("qacct", "-j", jid.split(".")[0])).get(jid)
        if record is not None:
            return {"exit_status": record.exit_status, "failed": record.failed}
        await anyio.sleep(0.2)
    raise AssertionError(f"no accounting record for {jid}")


@pytest.fixture
def delete_after() -> Iterator[list[Job]]:
    yield from remove_after("qdel")


def queue(workdir: Path, **kw: Any) -> Xqueue:
    return cluster_queue("sge", FAST, workdir, **kw)


def test_seed_document_options_render_as_qsub_flags() -> None:
    job = Job(0, ["true"], resources={"cpus": 4, "memory": "1G", "walltime": "1h"})
    raw = {"q": "all.q", "l": ["h_vmem=2G", "scratch=1"], "cwd": True, "N": "x", "qsub_p": -5}
    opts = qsub_options(job, "smp", raw)
    assert _argv_flags(opts) == [
        "-pe", "smp", "4",
        "-q", "all.q",
        "-cwd",
        "-N", "x",
        "-p", "-5",
        "-l", "h_rt=3600",  # mapped; h_vmem is given raw, and the raw one wins
        "-l", "h_vmem=2G",
        "-l", "scratch=1",
    ]  # fmt: skip


async def test_resources_and_options_reach_sge(workdir: Path, delete_after: list[Job]) -> None:
    # -h holds the jobs, so they stay in qstat to be read back; then they are killed.
    opts = {"h": True, "l": ["h_vmem=300M"], "N": "xq_res", "p": -10}
    async with queue(workdir, scheduler_opts=opts) as q:
        job = await q.feed(["true"], resources={"memory": "200M", "walltime": "7m"})
        delete_after.append(job)
        with anyio.fail_after(30):
            while not job.jid:
                await anyio.sleep(0.05)
        info = await sh("qstat", "-j", job.jid)
        assert await q.kill(job)
    assert "job_name:                   xq_res" in info
    assert "h_vmem=300M" in info and "h_vmem=200M" not in info  # raw l wins
    assert "h_rt=420" in info
    assert "priority:                   -10" in info
    assert job.status is JobStatus.KILLED


@pytest.mark.slow
async def test_200_jobs_with_status_calls_proportional_to_ticks(
    workdir: Path, anyio_backend: str
) -> None:
    # One event loop submits 200 single jobs, the other one array: each mode once,
    # to keep the cluster tests short. Either way, one status command per tick.
    arrays = anyio_backend == "trio"
    opts = {"arrays": arrays, "submit_concurrency": 8}
    q = queue(workdir, forks=200, scheduler_opts=opts)
    jobs = [await q.feed(["true"]) for _ in range(200)]
    peak = await run_watching_peak(q, 110)
    assert all(j.status is JobStatus.FINISHED for j in jobs)
    stats = q.statistics()
    # Many jobs were active at once (the node runs a few at a time), and yet one status
    # command per tick, however many ticks the run took on a loaded machine.
    assert peak > 20
    assert stats.submit_calls == (1 if arrays else 200)
    assert stats.ticks <= stats.status_calls <= stats.ticks + 3  # one qstat per tick


async def test_a_kill_of_a_job_that_already_exited_0_leaves_it_finished(workdir: Path) -> None:
    """Its wrapper had recorded rc 0, the run had not polled since (qdel says nothing of
    jobs that had ended): the kill was sent all the same, and the job was recorded
    KILLED, rc 0, and run again by the next run. The engine reads the rc file first."""
    async with queue(workdir, scheduler_opts={"poll_interval": 10}) as q:
        job, killed = await kill_once_exited(q)
    assert not killed  # nothing to kill: it had ended
    assert (job.status, job.rc, job.reason) == (JobStatus.FINISHED, 0, "")


async def test_a_job_that_ends_as_qdel_runs_keeps_its_own_end(
    workdir: Path, tmp_path: Path
) -> None:
    """The job's wrapper wrote rc 0 while the kill was on its way (qdel registers a job
    SGE still lists for deletion, and says nothing of its end): recorded KILLED, rc 0,
    and run again by the next run. The qdel here lets the job end first."""
    go, slow = tmp_path / "go", tmp_path / "qdel"
    job_rc = workdir / "*" / "job.1.rc"
    await anyio.Path(slow).write_text(
        f"#!/bin/sh\ntouch {go}; n=0\n"
        f'until [ -n "$(ls {job_rc} 2>/dev/null)" ] || [ $n -ge 600 ]; do\n'
        "  n=$((n+1)); sleep 0.05\ndone\n"
        'exec qdel "$@"\n'
    )
    await anyio.Path(slow).chmod(0o755)
    async with queue(workdir, scheduler_opts={"qdel": str(slow)}) as q:
        job, _ = await kill_as_it_ends(q, go)  # kill() said True: qdel does not tell
    assert (job.status, job.rc, job.reason) == (JobStatus.FINISHED, 0, "")


async def test_a_stop_as_jobs_are_sent_to_their_host_waits_for_them_to_go(
    workdir: Path, tmp_path: Path, delete_after: list[Job]
) -> None:
    """A stop's qdel "registers for deletion" tasks SGE is sending to their host (state
    ``t``); they still start and run to their end (``dt``, ``dr``). Taken for ended, they
    were recorded killed, the run exited while they ran, and the next run ran their
    successes again (a trial: 6 to 8 jobs of 8, 4 times in 4). A job is killed once qstat
    lists it no more; one that ran to its end keeps it."""
    starts, done = tmp_path / "starts", tmp_path / "done"
    q = queue(workdir, forks=8, error_strategy="ignore")
    jobs = [await q.feed(f"echo {i} >> {starts}; sleep 0.3; echo {i} >> {done}") for i in range(8)]
    delete_after.extend(jobs)
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.run_until_complete)
        with anyio.fail_after(60):  # every job submitted: some still on their way
            while not all(job.jid for job in jobs):
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()  # the stop, as a Ctrl-C's
    await anyio.sleep(3)  # anything still running would end meanwhile
    finished = sorted(str(job.index) for job in jobs if job.status is JobStatus.FINISHED)
    path = anyio.Path(done)
    ended = (await path.read_text()).split() if await path.exists() else []
    assert sorted(ended) == finished, [(job.status, job.rc) for job in jobs]


@pytest.mark.timeout(300)  # over the suite's 120 s: the bound below is the test's
async def test_array_of_100_retries_only_the_failing_element(workdir: Path, tmp_path: Path) -> None:
    flag = tmp_path / "failed-once"
    q = queue(workdir, forks=100, error_strategy="retry", num_retries=2)
    cmd = (
        f'echo "$XQUEUE_JOB_INDEX"; [ "$XQUEUE_JOB_INDEX" != 37 ] || [ -e {flag} ] || '
        f"{{ touch {flag}; exit 9; }}"
    )
    jobs = [await q.feed(cmd) for _ in range(100)]
    # Only a bound against a hang: 15 s alone, and once over 90 s under the full suite.
    with anyio.fail_after(240):
        await q.run_until_complete()
    assert all(j.status is JobStatus.FINISHED for j in jobs)
    assert [j.index for j in jobs if j.attempt > 1] == [37]
    base = jobs[0].jid.split(".")[0] if jobs[0].jid else ""
    assert all(j.jid == f"{base}.{j.index + 1}" for j in jobs if j.index != 37)
    assert jobs[37].jid and not jobs[37].jid.startswith(f"{base}.")
    assert (await qacct(f"{base}.38"))["exit_status"] == 9
    assert q.statistics().submit_calls == 2
    assert (await read_text(jobs[37].stdout_path)) == "37\n"


async def test_bad_options_fail_with_sges_message(workdir: Path) -> None:
    q = queue(workdir, error_strategy="retry", scheduler_opts={"q": "nope.q"})
    job = await q.feed(["true"])
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert 'job requests unknown queue "nope.q"' in job.reason and job.attempt == 1

    q = queue(workdir / "2", error_strategy="ignore", scheduler_opts={"l": "h_vmem=lots"})
    job = await q.feed(["true"])
    await q.run_until_complete()
    assert 'attribute "h_vmem" is not a memory value' in job.reason


async def test_bad_resource_fails_only_its_job(workdir: Path) -> None:
    q = queue(workdir, error_strategy="ignore")
    good = [await q.feed(["echo", str(i)]) for i in range(3)]
    gpu = await q.feed(["true"], resources={"gpus": 1})  # this SGE has no gpu complex
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert gpu.status is JobStatus.FAILED and 'unknown resource "gpu"' in gpu.reason
    assert [(await read_text(j.stdout_path)) for j in good] == ["0\n", "1\n", "2\n"]


async def test_job_in_error_state_fails_with_sges_reason(workdir: Path) -> None:
    q = queue(workdir, error_strategy="retry", scheduler_opts={"o": "/nonexistent/dir/x.log"})
    job = await q.feed(["true"])
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED and job.attempt == 1
    assert "can't open output file" in job.reason
    assert job.failure is FailureClass.SUBMIT_FAILED  # SGE refused to start it; not vanished
    assert job.jid and job.jid not in await sh("qstat", "-u", "root")  # deleted, not left in Eqw


async def test_garbled_qstat_answer_mid_run_is_survived(
    workdir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A qstat -xml cut short: its XML error used to end the whole run.
    whole = await read_text(Path(__file__).with_name("outputs") / "sge_qstat_array.xml")
    fake = await garbling(tmp_path, "qstat", whole[:300], {2})
    q = queue(workdir, forks=3, scheduler_opts={"qstat": fake, "vanish_grace": 0})
    jobs = [await q.feed(["sleep", "2"]) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="xqueue"), anyio.fail_after(60):
        await q.run_until_complete()
    assert [j.status for j in jobs] == [JobStatus.FINISHED] * 3
    assert await calls(fake) > 2
    assert "cannot read the output of" in caplog.text and "<job_info" in caplog.text


async def test_exit_codes_sge_acts_on_run_the_job_once(workdir: Path, tmp_path: Path) -> None:
    # SGE reschedules a job script exiting 99 and sets one exiting 100 in error state.
    runs = tmp_path / "runs"
    q = queue(workdir, forks=2, error_strategy="ignore", scheduler_opts={"arrays": False})
    jobs = [await q.feed(f"echo {rc} >> {runs}; exit {rc}") for rc in (99, 100)]
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert [(j.status, j.rc) for j in jobs] == [(JobStatus.FAILED, 99), (JobStatus.FAILED, 100)]
    await anyio.sleep(3)  # time enough for SGE to start a rescheduled one again
    assert sorted((await read_text(runs)).split()) == ["100", "99"]
    queued = await sh("qstat", "-u", "root")
    assert all(j.jid and j.jid not in queued for j in jobs)


async def test_qsub_that_times_out_is_unknown_and_found_by_its_name(
    workdir: Path, tmp_path: Path, delete_after: list[Job], go: Path
) -> None:
    fake = await submitting_then(tmp_path, "qsub", "sleep 5")
    wd = Workdir(workdir)
    scheduler = SgeScheduler(**FAST, qsub=fake, submit_timeout=1)
    scheduler.forks = 3
    await scheduler.open(wd)
    marker = tmp_path / "ran"
    wait = f"while [ ! -e {go} ]; do sleep 0.1; done"  # held until the test says go
    jobs = [Job(i, f"echo {i} >> {marker}; {wait}") for i in range(3)]
    for job in jobs:
        wd.prepare(job, make=True)
        job.attempt = 1
    delete_after.extend(jobs)
    single = await scheduler.submit_jobs(jobs[:1])  # alone: a single job
    array = await scheduler.submit_jobs(jobs[1:])  # together: one array
    assert all(isinstance(r, SubmissionUnknownError) for r in [*single, *array])
    assert await calls(fake) == 2
    single_id, array_id = (line.split(".")[0] for line in (await submitted_ids(fake)))
    for job in jobs:
        assert await scheduler.recover_job(job)
    assert [j.jid for j in jobs] == [single_id, f"{array_id}.1", f"{array_id}.2"]
    await anyio.Path(go).touch()
    with anyio.fail_after(60):
        while not all(s.status.is_final for s in (await scheduler.poll_jobs(jobs)).values()):
            await anyio.sleep(0.3)
    assert sorted((await read_text(marker)).split()) == ["0", "1", "2"]  # each ran once

    # Ended, it has left qstat: a later run finds it in qacct by its name.
    queued = await sh("qstat", "-u", "root")
    with anyio.fail_after(30):  # the rc file settles a job before SGE has let it go
        while any(f" {j.jid.split('.')[0]} " in queued for j in jobs if j.jid):
            await anyio.sleep(0.3)
            queued = await sh("qstat", "-u", "root")
    later = SgeScheduler(**FAST)
    await later.open(wd)
    for job in jobs:
        found, job.jid = job.jid, None
        assert not await later.recover_job(job) and job.jid == found
    jobs[0].jid, jobs[0].attempt = None, 2  # another attempt is another submission
    assert not await later.recover_job(jobs[0]) and jobs[0].jid is None
