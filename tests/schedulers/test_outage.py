"""A controller outage in the middle of a run: slurmctld or sge_qmaster is down for 20 s.

Real clusters lose their controller for a while (a restart, a failover, an upgrade):
the jobs already running go on (slurmd and sge_execd keep them and report them later),
but every status query and every submission fails until it is back. A run must ride
that out: wait, keep its jobs, and end with each job FINISHED, run exactly once.

Each job appends its label to a ledger file when it starts, so a job submitted twice
(a submission that failed on our side but reached the cluster) or lost and rerun shows
up as a duplicate, and a job never run as a missing label. Three queues share each
outage: two with more jobs than forks, fed before it (one submits arrays, the other
single jobs), whose status queries fail while it lasts, and one fed in the middle of
it, whose submissions fail.

These tests stop a daemon every other test shares: they are marked ``outage`` (deselect
with ``-m "not outage"``) and ``serial`` (nox runs them alone: on a machine loaded by
other tests' workers the SGE one failed), and each runs on one event loop only, Slurm
on asyncio and SGE on trio, which keeps the harness near a minute. The daemon is always
started again, and the test waits until the cluster takes jobs before it ends.
"""

from __future__ import annotations

import collections
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import cluster_queue, remove_after
from tests.schedulers.test_sge import FAST as SGE_FAST
from tests.schedulers.test_slurm import FAST as SLURM_FAST
from xqueue import Job, JobStatus, Xqueue

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.outage, pytest.mark.serial]

CI = Path(__file__).resolve().parents[2] / "ci"
OUTAGE = 20.0
LATE = 5.0  # seconds into the outage at which the late jobs are fed
EARLY_JOBS, LATE_JOBS, FORKS = 10, 4, 3
STARTS_WITHIN = 60.0  # for the first FORKS jobs to start, before the outage begins


def ci(script: str, action: str) -> None:
    subprocess.run(["bash", str(CI / script), action], check=True, capture_output=True, timeout=180)


@asynccontextmanager
async def daemon_restored(script: str, start: str) -> AsyncIterator[None]:
    """Whatever happens in the test, the daemon runs again and the cluster takes jobs."""
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):  # idempotent; returns once it accepts jobs
            await anyio.to_thread.run_sync(ci, script, start)


def ledger_lines(ledger: Path) -> list[str]:
    return ledger.read_text().split() if ledger.exists() else []


class Outage:
    """Three queues on one cluster, and the outage of its controller in their midst.

    ``a`` submits its jobs as arrays and ``s`` one by one, both before the outage, with
    more jobs than forks (status queries fail while jobs wait); ``l`` is fed LATE s into
    the outage with free forks, so its submissions are made while the controller is down.
    """

    def __init__(self, kind: str, fast: dict[str, Any], tmp_path: Path, jobs: list[Job]) -> None:
        self.ledger = tmp_path / "ledger"
        self.jobs: dict[str, Job] = {}
        self.cleanup = jobs  # for the fixture that removes what is left on the cluster
        self.errors: dict[str, str] = {}
        self.started_at_stop = -1

        def make(label: str, arrays: bool, forks: int) -> Xqueue:
            return cluster_queue(
                kind,
                fast,
                tmp_path / f"wd-{label}",
                forks=forks,
                error_strategy="ignore",  # a job that fails once stays FAILED: nothing hides
                scheduler_opts={"arrays": arrays},
            )

        self.queues = {"a": make("a", True, FORKS), "s": make("s", False, FORKS)}
        self.queues["l"] = make("l", False, LATE_JOBS)

    async def feed(self, label: str, count: int) -> None:
        for i in range(count):
            cmd = f"echo {label}{i} >> {self.ledger}; sleep 2"
            job = self.jobs[f"{label}{i}"] = await self.queues[label].feed(cmd)
            self.cleanup.append(job)

    async def _run(self, label: str) -> None:
        try:
            await self.queues[label].run_until_complete()
        except Exception as exc:  # kept to report every queue's failure, not just the first
            self.errors[label] = f"{type(exc).__name__}: {exc}"

    async def _run_late(self, began: anyio.Event) -> None:
        try:
            async with self.queues["l"]:
                await began.wait()
                await anyio.sleep(LATE)
                await self.feed("l", LATE_JOBS)
        except Exception as exc:
            self.errors["l"] = f"{type(exc).__name__}: {exc}"

    async def ride_out(self, script: str, stop: str, start: str) -> None:
        """Run the queues; stop the daemon for OUTAGE s once jobs are running."""
        await self.feed("a", EARLY_JOBS)
        await self.feed("s", EARLY_JOBS)
        began = anyio.Event()
        try:
            async with daemon_restored(script, start):
                with anyio.fail_after(OUTAGE + 90):
                    async with anyio.create_task_group() as tg:
                        await self._outage(tg, script, stop, start, began)
        finally:
            for q in self.queues.values():
                await q.aclose()

    async def _outage(
        self, tg: Any, script: str, stop: str, start: str, began: anyio.Event
    ) -> None:
        tg.start_soon(self._run, "a")
        tg.start_soon(self._run, "s")
        tg.start_soon(self._run_late, began)
        with anyio.move_on_after(STARTS_WITHIN) as waiting:
            while len(await anyio.to_thread.run_sync(ledger_lines, self.ledger)) < FORKS:
                await anyio.sleep(0.1)  # running, more waiting
        if waiting.cancelled_caught:  # say so, rather than time out with no word
            started = len(await anyio.to_thread.run_sync(ledger_lines, self.ledger))
            pytest.fail(
                f"only {started} of the first {FORKS} jobs started within {STARTS_WITHIN:.0f} s,"
                " before any outage: is the cluster's queue full of other jobs?"
            )
        await anyio.run_process(["bash", str(CI / script), stop])
        self.started_at_stop = len(await anyio.to_thread.run_sync(ledger_lines, self.ledger))
        began.set()
        await anyio.sleep(OUTAGE)
        await anyio.run_process(["bash", str(CI / script), start])

    def assert_each_finished_once(self) -> None:
        # The outage really fell in the middle of the run.
        assert 0 < self.started_at_stop < 2 * EARLY_JOBS
        # Every failure at once: a queue whose run raised, and each job not FINISHED in
        # the others (the jobs of a queue that raised are left wherever it stopped).
        problems = [f"queue {q} raised {err}" for q, err in self.errors.items()]
        problems += [
            f"job {label} ({job.jid}) {job.status.name}: {job.reason}"
            for label, job in self.jobs.items()
            if job.status is not JobStatus.FINISHED and label[0] not in self.errors
        ]
        assert not problems, "\n".join(" ".join(p.split()) for p in problems)
        sizes = {"a": EARLY_JOBS, "s": EARLY_JOBS, "l": LATE_JOBS}
        labels = [f"{q}{i}" for q, n in sizes.items() for i in range(n)]
        assert sorted(self.jobs) == sorted(labels)
        assert dict(collections.Counter(ledger_lines(self.ledger))) == dict.fromkeys(labels, 1)


@pytest.fixture
def cancel_after() -> Iterator[list[Job]]:
    yield from remove_after("scancel")


@pytest.fixture
def delete_after() -> Iterator[list[Job]]:
    yield from remove_after("qdel")


@pytest.mark.slurm
@pytest.mark.timeout(240)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_slurm_run_rides_out_a_slurmctld_outage(
    slurm_cluster: str, tmp_path: Path, cancel_after: list[Job]
) -> None:
    outage = Outage("slurm", SLURM_FAST, tmp_path, cancel_after)
    await outage.ride_out("slurm.sh", "stop-ctld", "start-ctld")
    await anyio.to_thread.run_sync(outage.assert_each_finished_once)  # reads the ledger


@pytest.mark.sge
@pytest.mark.timeout(240)
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_sge_run_rides_out_a_qmaster_outage(
    sge_cluster: None, tmp_path: Path, delete_after: list[Job]
) -> None:
    outage = Outage("sge", SGE_FAST, tmp_path, delete_after)
    await outage.ride_out("sge.sh", "stop-qmaster", "start-qmaster")
    await anyio.to_thread.run_sync(outage.assert_each_finished_once)  # reads the ledger
