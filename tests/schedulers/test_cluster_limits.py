"""Memory and time limits on the real clusters of ci/: Slurm and SGE enforce them, xqueue
reads their verdict as a failure class and retries with a grown request.

ci/slurm.sh makes memory a consumable resource and has Slurm's accounting kill a step
that outgrows ``--mem`` (``JobAcctGatherParams=OverMemoryKill``, sampled every second):
without it ``--mem`` is only a scheduling hint. What a test claims is read back from
the cluster's own records (``scontrol show job``, ``qacct``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import SGE_FAST, SLURM_FAST, cluster_queue, read_text, remove_after
from xqueue import FailureClass, Job, JobStatus, Resources, hookimpl
from xqueue.records import WorkdirReader

pytestmark = pytest.mark.anyio


async def sh(*argv: str) -> str:
    with anyio.fail_after(30):
        return (await anyio.run_process(argv, check=False)).stdout.decode()


async def show_job(jid: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for word in (await sh("scontrol", "show", "job", "-o", jid)).split():
        key, sep, value = word.partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields


async def qacct(jid: str) -> dict[str, str]:
    """The accounting record of a job or array task (``7.2``)."""
    number, _, task = jid.partition(".")
    with anyio.fail_after(30):
        while True:
            for block in (await sh("qacct", "-j", number)).split("=" * 62):
                fields = {}
                for line in block.splitlines():
                    key, _, value = line.strip().partition(" ")
                    fields[key] = value.strip()
                if fields.get("taskid", "undefined") == (task or "undefined"):
                    return fields
            await anyio.sleep(0.2)


async def records_of(workdir: Path, job: Job) -> list[dict[str, Any]]:
    """The job's journal records, in order (the run's own account)."""
    text = await anyio.Path(workdir, "journal.jsonl").read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    return [r for r in lines if r["dir"] == Path(job.dir).name]


async def attempt_ids(workdir: Path, job: Job) -> dict[int, str]:
    """The scheduler id of each attempt."""
    return {r["attempt"]: r["jid"] for r in await records_of(workdir, job) if r.get("jid")}


@pytest.fixture
def cancel_after() -> Iterator[list[Job]]:
    yield from remove_after("scancel")


@pytest.fixture
def delete_after() -> Iterator[list[Job]]:
    yield from remove_after("qdel")


# 300 MiB held for 3 s: Slurm's accounting samples each second.
HOG = [sys.executable, "-c", "import time; b = b'x' * (300 << 20); time.sleep(3); print('ok')"]


@pytest.mark.slurm
async def test_slurm_oom_is_retried_with_more_memory(
    slurm_cluster: str, workdir: Path, anyio_backend: str, cancel_after: list[Job]
) -> None:
    # Two alike jobs: an array on one event loop, single jobs on the other.
    opts: dict[str, Any] = {"arrays": anyio_backend == "trio"}
    q = cluster_queue(
        "slurm",
        SLURM_FAST,
        workdir,
        forks=2,
        error_strategy="halt",
        retry_policy={"OOM": {"memory": 4, "max_memory": "1G"}},
        scheduler_opts=opts,
    )
    jobs = [await q.feed(HOG, resources={"memory": "100M"}) for _ in range(2)]
    cancel_after.extend(jobs)
    seen: list[FailureClass | None] = []

    class Spy:
        @hookimpl
        def on_job_retrying(self, job: Job) -> None:
            seen.append(job.failure)

    q.hooks.register(Spy(), "spy")
    with anyio.fail_after(90):
        await q.run_until_complete()
    for job in jobs:
        assert job.status is JobStatus.FINISHED and job.attempt == 2, job.reason
        assert job.resources == Resources(memory_mb=400)
        assert await read_text(job.stdout_path) == "ok\n"
        ids = await attempt_ids(workdir, job)
        first, second = await show_job(ids[1]), await show_job(ids[2])
        # Slurm's own word: attempt 1 was killed with signal 9 under 100M, 2 ran in 400M.
        assert first["MinMemoryNode"] == "100M" and first["ExitCode"] == "0:9"
        assert second["MinMemoryNode"] == "400M" and second["JobState"] == "COMPLETED"
        (retrying,) = [r for r in await records_of(workdir, job) if r["status"] == "retrying"]
        assert retrying["failure"] == "OOM"
        assert "Slurm killed it for using more than its 100 MiB" in retrying["reason"]
        assert "exceeded memory limit" in retrying["reason"]  # slurmstepd's own line
    assert seen == [FailureClass.OOM] * 2


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # about 70 s: one event loop
async def test_slurm_timeout_is_retried_with_more_time(
    slurm_cluster: str, workdir: Path, cancel_after: list[Job]
) -> None:
    # Slurm's limits are whole minutes, enforced ~1 min after the start: the first
    # attempt outlives it; the second, with the doubled limit, need not (time is short).
    q = cluster_queue(
        "slurm",
        SLURM_FAST,
        workdir,
        error_strategy="retry",
        num_retries=0,  # only the policy's own TIMEOUT retry
        retry_policy={"TIMEOUT": {"walltime": 2, "retries": 1}},
    )
    # Attempt 1 execs its sleep: no shell of the job's outlives it. Slurm signals every
    # process of the step at its limit, in no set order; with `sleep 150; echo` the
    # shell could reap a killed sleep, echo, and exit 0 before its own signal came.
    cmd = '[ "$XQUEUE_JOB_ATTEMPT" = 1 ] && exec sleep 150; echo "attempt $XQUEUE_JOB_ATTEMPT"'
    job = await q.feed(cmd, resources={"walltime": "1m"})
    cancel_after.append(job)
    with anyio.fail_after(180):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED and job.attempt == 2, job.reason
    assert await read_text(job.stdout_path) == "attempt 2\n"
    ids = await attempt_ids(workdir, job)
    first, second = await show_job(ids[1]), await show_job(ids[2])
    assert first["JobState"] == "TIMEOUT" and first["TimeLimit"] == "00:01:00"
    assert second["TimeLimit"] == "00:02:00"
    records = await anyio.to_thread.run_sync(WorkdirReader(workdir).journal)
    assert records[Path(job.dir).name]["resources"] == {"walltime_s": 120}
    journal = await anyio.Path(workdir, "journal.jsonl").read_text()
    assert '"reason": "timed out after 60 s (Slurm TIMEOUT)"' in journal
    assert '"failure": "TIMEOUT"' in journal


@pytest.mark.sge
@pytest.mark.parametrize("anyio_backend", ["trio"])  # about 25 s: one event loop
async def test_sge_h_rt_is_a_timeout_retried_with_more_time(
    sge_cluster: None, workdir: Path, delete_after: list[Job]
) -> None:
    q = cluster_queue(
        "sge",
        SGE_FAST,
        workdir,
        error_strategy="ignore",
        retry_policy={"TIMEOUT": {"walltime": 3, "max_walltime": 6}},
    )
    job = await q.feed(["sh", "-c", "sleep 4; echo done"], resources={"walltime": 2})
    stuck = await q.feed(["sleep", "30"], resources={"walltime": 2})
    delete_after.extend([job, stuck])
    with anyio.fail_after(120):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED and job.attempt == 2, job.reason
    assert await read_text(job.stdout_path) == "done\n"
    first = await qacct((await attempt_ids(workdir, job))[1])
    # SGE's own record: qmaster killed attempt 1 at its h_rt.
    assert first["failed"].startswith("37") and "h_rt=2" in first["category"]
    second = await qacct((await attempt_ids(workdir, job))[2])
    assert second["failed"] == "0" and "h_rt=6" in second["category"]
    # 2 s, then 6 s, the cap: too short for 30 s, and not tried again at the cap.
    assert stuck.status is JobStatus.FAILED and stuck.failure is FailureClass.TIMEOUT
    assert stuck.attempt == 2
    assert stuck.reason == (
        "timed out after 6 s (SGE h_rt); not retried: walltime is already at its cap of 6 s"
    )
