"""The HTCondor scheduler against the real personal pool of ci/htcondor.sh.

What the scheduler claims is read back from the schedd itself, through the bindings
called here directly (its queue and its history: exit codes, owners, removals, the
attributes of each job ad), never from the scheduler object's own view. The workdirs
live in the folder the pool's chroot shares with this host (``shared_workdir``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import read_text, wait_running
from xqueue import Job, JobStatus, Xqueue
from xqueue.errors import SchedulerOptionError, SubmissionError
from xqueue.failures import FailureClass
from xqueue.job import SCRIPT
from xqueue.scheduler import JobState
from xqueue.schedulers.htcondor import (
    HTCondorScheduler,
    description,
    ended_state,
    held_state,
    submit_value,
)
from xqueue.workdir import Workdir

pytestmark = [pytest.mark.anyio, pytest.mark.htcondor]

FAST = {"poll_interval": 0.5, "vanish_grace": 5.0}


def queue(pool: dict[str, Any], workdir: Path, **kw: Any) -> Xqueue:
    opts = {**pool, **FAST, **kw.pop("scheduler_opts", {})}
    kw.setdefault("error_strategy", "ignore")
    kw.setdefault("forks", 8)
    return Xqueue("htcondor", workdir=workdir, scheduler_opts=opts, **kw)


def _schedd(pool: dict[str, Any]) -> Any:
    import htcondor2

    coll = htcondor2.Collector(pool["collector"])
    return htcondor2.Schedd(coll.locate(htcondor2.DaemonType.Schedd))


async def history(pool: dict[str, Any], jids: list[str], attrs: list[str]) -> dict[str, Any]:
    """The schedd's own record of ended jobs (the witness), waiting until it has them all."""
    which = " || ".join(
        f"(ClusterId == {c} && ProcId == {p})" for c, p in (j.split(".") for j in jids)
    )

    def read() -> dict[str, Any]:
        ads = _schedd(pool).history(which, ["ClusterId", "ProcId", *attrs], match=len(jids))
        return {f"{ad['ClusterId']}.{ad['ProcId']}": ad for ad in ads}

    with anyio.fail_after(30):
        while len(found := await anyio.to_thread.run_sync(read)) < len(jids):
            await anyio.sleep(0.2)
    return found


async def in_queue(pool: dict[str, Any], jid: str, attrs: list[str]) -> Any:
    cluster, proc = jid.split(".")

    def read() -> Any:
        ads = _schedd(pool).query(f"ClusterId == {cluster} && ProcId == {proc}", attrs)
        return ads[0] if ads else None

    return await anyio.to_thread.run_sync(read)


@pytest.fixture
def remove_after(htcondor_pool: dict[str, Any]) -> Any:
    """Jobs to remove from the pool when the test ends, however it ends."""
    jobs: list[Job] = []
    yield jobs
    ids = [j.jid for j in jobs if j.jid and "." in j.jid]
    if ids:
        import htcondor2

        _schedd(htcondor_pool).act(htcondor2.JobAction.Remove, ids)


async def test_exit_codes_and_output_from_one_cluster(
    htcondor_pool: dict[str, Any], shared_workdir: Path
) -> None:
    q = queue(htcondor_pool, shared_workdir)
    args = ["a  b", "$(Process)", "$HOME", "'q'", '"dq"', "", "*", "x\ny"]
    try:
        ok = await q.feed(["sh", "-c", "echo out; echo err >&2"])
        bad = await q.feed(["sh", "-c", "exit 3"])
        argv = await q.feed(["printf", "[%s]\\n", *args], name="n$(Cluster)\n'; x")
        env = await q.feed("echo $XQ_V-$XQUEUE_JOB_INDEX-$(id -un)", envs={"XQ_V": "v $(x)"})
        with anyio.fail_after(90):
            await q.run_until_complete()
    finally:
        await q.aclose()
    assert [ok.rc, bad.rc, argv.rc, env.rc] == [0, 3, 0, 0]
    assert ok.status is JobStatus.FINISHED and bad.status is JobStatus.FAILED
    assert await read_text(ok.stdout_path) == "out\n" and await read_text(ok.stderr_path) == "err\n"
    assert await read_text(argv.stdout_path) == "".join(f"[{a}]\n" for a in args)
    assert await read_text(env.stdout_path) == f"v $(x)-{env.index}-xqcondor\n"
    # One submission: one cluster, one proc per job, each running its own job's wrapper.
    assert q.statistics().submit_calls == 1
    jids = [str(j.jid) for j in (ok, bad, argv, env)]
    assert len({jid.split(".")[0] for jid in jids}) == 1
    ads = await history(htcondor_pool, jids, ["ExitCode", "Owner", "Cmd", "Iwd", "XqueueJob"])
    for job, jid in zip((ok, bad, argv, env), jids):
        ad = ads[jid]
        assert ad["ExitCode"] == job.rc and ad["Owner"] == "xqcondor"
        assert ad["Cmd"] == job.attempt_path(SCRIPT) and ad["Iwd"] == job.dir
        assert ad["XqueueJob"] == f"{job.index}.1"


async def test_kill_removes_the_job(
    htcondor_pool: dict[str, Any], shared_workdir: Path, remove_after: list[Job]
) -> None:
    q = queue(htcondor_pool, shared_workdir, scheduler_opts={"kill_grace": 1})
    async with q:
        job = await q.feed(["sleep", "300"])
        remove_after.append(job)
        await wait_running(job, 60)
        with anyio.fail_after(30):  # the wrapper itself has started
            while not await anyio.Path(job.attempt_path("started")).exists():
                await anyio.sleep(0.1)
        ad = await in_queue(htcondor_pool, str(job.jid), ["JobStatus"])
        assert ad["JobStatus"] == 2
        assert await q.kill(job)
        with anyio.fail_after(60):
            await job.wait()
    await q.aclose()
    assert job.status is JobStatus.KILLED
    assert q.statistics().kill_calls == 1
    ad = (await history(htcondor_pool, [str(job.jid)], ["JobStatus", "RemoveReason"]))[str(job.jid)]
    assert ad["JobStatus"] == 3 and "xqueue: killed" in ad["RemoveReason"]


async def test_a_job_that_completes_as_its_removal_is_sent_keeps_its_own_end(
    htcondor_pool: dict[str, Any],
    shared_workdir: Path,
    remove_after: list[Job],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It ends while the removal is on its way (after the run read its return code
    file, before the schedd had the Remove): the schedd records it COMPLETED, not
    REMOVED, as nothing was removed. It was recorded KILLED with rc 0, and the next
    run ran a success again."""
    go = shared_workdir.parent / f"go-{os.getpid()}"
    act = HTCondorScheduler._act

    async def after_it_completed(self: HTCondorScheduler, action: str, ids: Any, why: str) -> Any:
        if action == "Remove":
            await anyio.Path(go).touch()
            with anyio.fail_after(60):  # out of the queue: it completed
                while await in_queue(htcondor_pool, ids[0], ["JobStatus"]) is not None:
                    await anyio.sleep(0.1)
        return await act(self, action, ids, why)

    monkeypatch.setattr(HTCondorScheduler, "_act", after_it_completed)
    q = queue(htcondor_pool, shared_workdir)
    async with q:
        job = await q.feed(f"until [ -e {go} ]; do sleep 0.1; done")
        remove_after.append(job)
        with anyio.fail_after(60):  # its wrapper runs
            while not await anyio.Path(job.attempt_path("started")).exists():
                await anyio.sleep(0.1)
        await q.kill(job)  # True: the schedd does not say which jobs it found gone
        with anyio.fail_after(90):
            await job.wait()
    await q.aclose()
    assert (job.status, job.rc, job.reason) == (JobStatus.FINISHED, 0, "")
    ad = (await history(htcondor_pool, [str(job.jid)], ["JobStatus"]))[str(job.jid)]
    assert ad["JobStatus"] == 4  # the schedd's own word: completed, not removed


async def test_held_job_fails_with_the_hold_reason(
    htcondor_pool: dict[str, Any], shared_workdir: Path
) -> None:
    hold = {"periodic_hold": "true", "periodic_hold_reason": '"xq test: held on purpose"'}
    q = queue(htcondor_pool, shared_workdir, scheduler_opts=hold)
    try:
        # Not `true`: on a loaded machine it ran to its end before the periodic hold came,
        # and its rc file (rightly) made it a success. This one is held while it runs.
        job = await q.feed(["sleep", "30"])
        with anyio.fail_after(60):
            await q.run_until_complete()
    finally:
        await q.aclose()
    assert job.status is JobStatus.FAILED and job.rc is None
    assert "held by HTCondor: xq test: held on purpose" in job.reason
    assert job.failure is FailureClass.SUBMIT_FAILED
    # It was removed from the pool, not left held.
    ad = (await history(htcondor_pool, [str(job.jid)], ["JobStatus"]))[str(job.jid)]
    assert ad["JobStatus"] == 3


@pytest.mark.parametrize("releases", [1, 0])
async def test_held_job_released_by_policy_runs(
    htcondor_pool: dict[str, Any], shared_workdir: Path, releases: int
) -> None:
    # Submitted on hold: released once by on_hold="release", then it runs; with no
    # release allowed it fails with the hold's reason.
    opts = {"hold": True, "on_hold": "release", "max_releases": releases}
    q = queue(htcondor_pool, shared_workdir, scheduler_opts=opts)
    try:
        job = await q.feed(["sh", "-c", "echo ran"])
        with anyio.fail_after(60):
            await q.run_until_complete()
    finally:
        await q.aclose()
    ad = (await history(htcondor_pool, [str(job.jid)], ["NumHolds", "JobStatus"]))[str(job.jid)]
    if releases:
        assert job.status is JobStatus.FINISHED and await read_text(job.stdout_path) == "ran\n"
        assert ad["JobStatus"] == 4 and ad["NumHolds"] == 1
    else:
        assert job.status is JobStatus.FAILED and job.rc is None
        assert job.reason.startswith("held by HTCondor: ") and "released 0 times" in job.reason
        assert ad["JobStatus"] == 3


@pytest.mark.slow
async def test_many_jobs_one_query_per_tick(
    htcondor_pool: dict[str, Any], shared_workdir: Path, anyio_backend: str
) -> None:
    # One event loop submits one cluster of 60 procs, the other 60 clusters of one.
    arrays = anyio_backend == "asyncio"
    q = queue(htcondor_pool, shared_workdir, forks=60, scheduler_opts={"arrays": arrays})
    jobs = [await q.feed(["sh", "-c", f"exit {i % 3}"]) for i in range(60)]
    with anyio.fail_after(110):
        await q.run_until_complete()
    await q.aclose()
    assert [j.rc for j in jobs] == [i % 3 for i in range(60)]
    stats = q.statistics()
    assert stats.submit_calls == (1 if arrays else 60)
    assert len({str(j.jid).split(".")[0] for j in jobs}) == (1 if arrays else 60)
    # One schedd query per tick (a history call only for jobs gone without an rc file).
    assert stats.ticks <= stats.status_calls <= stats.ticks + 2


async def test_resources_and_raw_commands_in_the_job_ad(
    htcondor_pool: dict[str, Any], shared_workdir: Path
) -> None:
    raw = {"request_disk": "2048", "+XqueueTest": '"from opts"', "getenv": False}
    q = queue(htcondor_pool, shared_workdir, scheduler_opts=raw)
    try:
        mapped = await q.feed(["true"], resources={"cpus": 2, "memory": "100M"})
        plain = await q.feed(["true"])
        with anyio.fail_after(90):
            await q.run_until_complete()
    finally:
        await q.aclose()
    attrs = ["RequestCpus", "RequestMemory", "RequestDisk", "XqueueTest", "GetEnv"]
    ads = await history(htcondor_pool, [str(mapped.jid), str(plain.jid)], attrs)
    ad = ads[str(mapped.jid)]
    assert (ad["RequestCpus"], ad["RequestMemory"]) == (2, 100)
    assert ad["RequestDisk"] == 2048 and ad["XqueueTest"] == "from opts"
    assert ads[str(plain.jid)]["RequestCpus"] == 1
    # Different resources: two clusters.
    assert str(mapped.jid).split(".")[0] != str(plain.jid).split(".")[0]


async def test_raw_request_wins_over_the_mapped_one(
    htcondor_pool: dict[str, Any], shared_workdir: Path
) -> None:
    q = queue(htcondor_pool, shared_workdir, scheduler_opts={"request_cpus": 1})
    try:
        job = await q.feed(["true"], resources={"cpus": 3})
        with anyio.fail_after(60):
            await q.run_until_complete()
    finally:
        await q.aclose()
    ad = (await history(htcondor_pool, [str(job.jid)], ["RequestCpus"]))[str(job.jid)]
    assert ad["RequestCpus"] == 1


async def test_a_restarted_controller_readopts_its_job(
    htcondor_pool: dict[str, Any], shared_workdir: Path, remove_after: list[Job]
) -> None:
    wd = Workdir(shared_workdir)
    opts = {**htcondor_pool, **FAST}
    first = HTCondorScheduler(**opts)
    await first.open(wd)
    job = Job(0, ["sh", "-c", "sleep 2; exit 6"])
    await anyio.to_thread.run_sync(lambda: wd.prepare(job, make=True))
    job.attempt = 1
    jid = await first.submit_job(job)  # the controller dies before it records the id
    remove_after.append(job)
    await first.aclose()
    second = HTCondorScheduler(**opts)
    await second.open(wd)
    try:
        job.jid, job.attempt = None, 0
        assert await second.recover_job(job)
        assert (job.jid, job.attempt) == (jid, 1)
        with anyio.fail_after(60):
            while not (state := (await second.poll_jobs([job]))[job]).status.is_final:
                await anyio.sleep(0.5)
    finally:
        await second.aclose()
    assert state.status is JobStatus.FAILED and state.rc == 6


async def clusters_of(pool: dict[str, Any], jobdir: str) -> list[int]:
    """Every cluster the schedd holds or held for a job folder (queue and history)."""

    def read() -> list[int]:
        schedd, where = _schedd(pool), f'Iwd == "{jobdir}"'
        ads = [*schedd.query(where, ["ClusterId"]), *schedd.history(where, ["ClusterId"])]
        return sorted({int(ad["ClusterId"]) for ad in ads})

    return await anyio.to_thread.run_sync(read)


@pytest.mark.parametrize("stop", [False, True], ids=["run", "cancelled"])
async def test_a_submission_slower_than_its_timeout_is_not_made_twice(
    htcondor_pool: dict[str, Any],
    shared_workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    remove_after: list[Job],
    stop: bool,
) -> None:
    """The schedd took longer than submit_timeout to queue a cluster: the bindings call
    went on in its thread while the engine looked the job up by its tag, found nothing,
    and submitted it again (two clusters, the first unwatched). Cancelled meanwhile, the
    run recorded the job "killed before it was submitted" while it ran."""
    import htcondor2

    real = htcondor2.Schedd.submit
    returned = threading.Event()

    def slow(self: Any, *args: Any, **kwargs: Any) -> Any:
        if returned.is_set():
            return real(self, *args, **kwargs)
        time.sleep(3)  # a busy schedd; it queues the cluster all the same
        try:
            return real(self, *args, **kwargs)
        finally:
            returned.set()

    monkeypatch.setattr(htcondor2.Schedd, "submit", slow)
    marker = shared_workdir.parent / "ran"
    q = queue(htcondor_pool, shared_workdir, scheduler_opts={"submit_timeout": 1})
    job = await q.feed(f"echo x >> {marker}; sleep 1")
    remove_after.append(job)
    try:
        with anyio.move_on_after(1.5 if stop else 120):
            await q.run_until_complete()
    finally:
        await q.aclose()
    with anyio.fail_after(30):
        while not returned.is_set():
            await anyio.sleep(0.1)
    assert len(await clusters_of(htcondor_pool, job.dir)) == 1
    if stop:  # found once the call returned, and removed: not "never submitted"
        assert job.status is JobStatus.KILLED and "before it was submitted" not in job.reason
    else:
        assert job.status is JobStatus.FINISHED and await read_text(marker) == "x\n"


async def test_hostile_workdir_path_is_inert(
    htcondor_pool: dict[str, Any], shared_workdir: Path
) -> None:
    # Submit values are macro-expanded: a path with $(...) in it must reach HTCondor as is.
    wd = shared_workdir.parent / "w$(Process) $x 'q' $(Cluster"
    q = queue(htcondor_pool, wd)
    try:
        job = await q.feed(["pwd"])
        with anyio.fail_after(60):
            await q.run_until_complete()
    finally:
        await q.aclose()
    assert job.rc == 0 and await read_text(job.stdout_path) == f"{job.dir}\n"
    assert job.dir.startswith(str(wd))


def test_submit_values_and_description() -> None:
    assert submit_value("/a/$(x)/b") == "/a/$(DOLLAR)(x)/b"
    with pytest.raises(SubmissionError, match="line break"):
        submit_value("/a\nqueue 100")
    with pytest.raises(SubmissionError, match="'\\$\\$'"):
        submit_value("/a/$$(Cluster)")
    with pytest.raises(SubmissionError, match="DOLLAR"):
        submit_value("/a/$(dollar)")
    job = Job(0, ["true"], resources={"cpus": 2, "memory": "1G", "gpus": 1})
    desc = description("tag", job, {"request_memory": "5G", "+Site": '"x"', "getenv": True})
    assert desc["request_cpus"] == "2" and desc["request_gpus"] == "1"
    assert desc["request_memory"] == "5G" and desc["+Site"] == '"x"' and desc["getenv"] == "true"
    assert desc["+XqueueRun"] == '"tag"' and desc["executable"] == "$(xqscript)"


def test_bad_options_are_refused() -> None:
    with pytest.raises(SchedulerOptionError, match="on_hold must be one of"):
        HTCondorScheduler(on_hold="ignore")
    with pytest.raises(SchedulerOptionError, match="'executable' is set by xqueue"):
        HTCondorScheduler(executable="/bin/true")
    with pytest.raises(SchedulerOptionError, match="line break"):
        HTCondorScheduler(requirements="true\nqueue 5")


def test_how_ended_and_held_ads_read() -> None:
    done = {"JobStatus": 4, "ExitCode": 0, "ExitBySignal": True, "ExitSignal": 9}
    # Completed: its own end, a removal sent or not (``unkilled``).
    own = {"unkilled": True}
    assert ended_state(done, False) == JobState(JobStatus.FAILED, 137, **own)
    assert ended_state({"JobStatus": 4, "ExitCode": 2}, True) == JobState(
        JobStatus.FAILED, 2, **own
    )
    assert ended_state({"JobStatus": 4, "ExitCode": 0}, True) == JobState(
        JobStatus.FINISHED, 0, **own
    )
    removed = {"JobStatus": 3, "RemoveReason": "via condor_rm (by user alice)"}
    assert ended_state(removed, True) == JobState(JobStatus.KILLED, None, "killed")
    outside = ended_state(removed, False)
    assert outside is not None and outside.failure is FailureClass.KILLED
    assert "via condor_rm (by user alice)" in outside.reason
    assert ended_state({"JobStatus": 2}, False) is None
    memory = {
        "HoldReason": "Job has gone over memory limit of 100 megabytes.",
        "HoldReasonCode": 34,
    }
    state = held_state(memory)
    assert state.kill and state.failure is FailureClass.OOM and "memory limit" in state.reason
    # A hold from outside stops a job that was accepted and may have run, as condor_rm
    # does: KILLED, not SUBMIT_FAILED ("the backend refused it"), which policies tell apart.
    user = held_state({"HoldReason": "outside test (by user bob)", "HoldReasonCode": 1})
    assert user.kill and user.failure is FailureClass.KILLED and "by user bob" in user.reason
    refused = held_state({"HoldReason": "Error from slot: no such file", "HoldReasonCode": 12})
    assert refused.failure is FailureClass.SUBMIT_FAILED


async def test_walltime_removes_the_job_as_a_timeout(
    htcondor_pool: dict[str, Any], shared_workdir: Path, remove_after: list[Job]
) -> None:
    q = queue(htcondor_pool, shared_workdir, scheduler_opts={"kill_grace": 1})
    try:
        job = await q.feed(["sleep", "300"], resources={"walltime": 3})
        remove_after.append(job)
        with anyio.fail_after(60):
            await q.run_until_complete()
    finally:
        await q.aclose()
    assert job.status is JobStatus.FAILED and job.failure is FailureClass.TIMEOUT
    assert job.reason.startswith("timed out after 3 s")
    ad = (await history(htcondor_pool, [str(job.jid)], ["JobStatus", "RemoveReason"]))[str(job.jid)]
    assert ad["JobStatus"] == 3 and "xqueue: killed" in ad["RemoveReason"]


def test_a_refused_login_fails_at_once_not_as_an_outage(
    htcondor_pool: dict[str, Any], shared_workdir: Path
) -> None:
    """A schedd that answers but will not authenticate the user (no CLAIMTOBE here: the
    bindings try FS, which a network schedd refuses) is a setting to fix: the job fails
    at its first attempt, saying so. It was retried as an outage for two minutes, an
    attempt and a job script a second. A process of its own: the bindings' settings
    are global to a process."""
    started = time.monotonic()
    run = [sys.executable, "-m", "xqueue", "run", "-s", "htcondor", "--no-progress"]
    out = subprocess.run(
        [*run, "-o", f"collector={htcondor_pool['collector']}", "-w", str(shared_workdir)],
        input="echo never\n",
        capture_output=True,
        text=True,
        env={**os.environ, "CONDOR_CONFIG": "/dev/null", "COLUMNS": "300"},
        timeout=100,
    )
    assert out.returncode == 1, out.stderr
    assert time.monotonic() - started < 60
    assert "refused to authenticate" in out.stderr and "AUTHENTICATE" in out.stderr
    assert "submitting again" not in out.stderr
    (folder,) = [p for p in shared_workdir.iterdir() if p.name.startswith("0-")]
    assert sorted(p.name for p in folder.iterdir()) == ["job.1.sh", "job.1.stderr"]
    assert "refused to authenticate" in (folder / "job.1.stderr").read_text()
