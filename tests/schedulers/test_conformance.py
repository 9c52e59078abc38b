"""The conformance kit (``xqueue.testing``) on every built-in backend, each on its real
system: local processes, Slurm, SGE, HTCondor, an sshd, docker, podman, charliecloud,
apptainer, and the Batch stand-in (the PanDA plugin runs it in its own tests). Each class
is what a plugin author writes for their own scheduler: a ``backend`` fixture, nothing
else; the tests come from the kit.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import SGE_FAST, SLURM_FAST, ssh_server
from tests.schedulers.test_gbatch import options as gbatch_options
from tests.standins.gcloud import Gcloud
from xqueue import Job
from xqueue.testing import Backend, SchedulerConformance

NEVER_ISSUED = "99999999"
"""A job id neither cluster of ci/ has issued (nor will, within a test run)."""


def removing(command: str) -> Callable[[Sequence[Job]], None]:
    """``Backend.cleanup`` for a cluster: its kill command on every id the jobs carry."""

    def cleanup(jobs: Sequence[Job]) -> None:
        ids = [j.jid for j in jobs if j.jid and j.jid != NEVER_ISSUED]
        if ids:
            subprocess.run([command, *ids], capture_output=True, timeout=30)

    return cleanup


def purging(*commands: Sequence[str]) -> Callable[[Job], Awaitable[None]]:
    """``Backend.forget`` for a cluster, which cannot be told to forget a job: the job's
    id becomes one the cluster never issued (what xqueue sees once a job is purged), and
    the real job is removed by ``commands`` (each given the id), so it leaves no return
    code."""

    async def forget(job: Job) -> None:
        real, job.jid = str(job.jid), NEVER_ISSUED
        for command in commands:
            await anyio.run_process([*command, real], check=False)

    return forget


SLURM_PURGE = (("scancel", "--signal=KILL", "--batch"),)
"""The job's shell alone SIGKILLed: it writes the return code, and dies before it can.
A plain scancel's SIGTERM reached the job's processes one by one, children first, and
the shell saw its command end and wrote 143 first when slurmstepd lost the CPU between
them; SIGSTOP, then SIGKILL, to all of them did no better under the full suite's load.
The command is left to end on its own (an orphan of the step, as on a lost node)."""


class TestLocal(SchedulerConformance):
    @pytest.fixture
    def backend(self) -> Backend:
        return Backend("local")


@pytest.mark.slurm
class TestSlurm(SchedulerConformance):
    @pytest.fixture
    def backend(self, slurm_cluster: str) -> Backend:
        return Backend(
            "slurm",
            SLURM_FAST,
            packs=True,
            forget=purging(*SLURM_PURGE),
            cleanup=removing("scancel"),
        )


@pytest.mark.sge
class TestSge(SchedulerConformance):
    @pytest.fixture
    def backend(self, sge_cluster: None) -> Backend:
        return Backend(
            "sge", SGE_FAST, packs=True, forget=purging(("qdel",)), cleanup=removing("qdel")
        )


@pytest.mark.htcondor
class TestHTCondor(SchedulerConformance):
    """The personal pool of ci/htcondor.sh; workdirs in the folder it shares at the same
    path. Jobs with the same resources fed together are procs of one cluster (packs)."""

    @pytest.fixture
    def backend(self, htcondor_pool: dict[str, Any], shared_workdir: Path) -> Backend:
        def schedd() -> Any:
            import htcondor2

            coll = htcondor2.Collector(str(htcondor_pool["collector"]))
            return htcondor2.Schedd(coll.locate(htcondor2.DaemonType.Schedd))

        def remove(ids: list[str]) -> None:
            import htcondor2

            if ids:
                schedd().act(htcondor2.JobAction.Remove, ids)

        async def forget(job: Job) -> None:
            # As with Slurm and SGE: an id the schedd never issued (what a job purged
            # from its history looks like), and the real job removed.
            real, job.jid = str(job.jid), f"{NEVER_ISSUED}.0"
            await anyio.to_thread.run_sync(remove, [real])

        def cleanup(jobs: Sequence[Job]) -> None:
            remove([str(j.jid) for j in jobs if j.jid and not j.jid.startswith(NEVER_ISSUED)])

        opts = {**htcondor_pool, "poll_interval": 0.2, "vanish_grace": 2.0}
        return Backend(
            "htcondor",
            opts,
            packs=True,
            forget=forget,
            cleanup=cleanup,
            root=shared_workdir.parent,
            timeout=90.0,
        )


@pytest.mark.ssh
class TestSsh(SchedulerConformance):
    @pytest.fixture
    def backend(self, ssh_env: dict[str, str]) -> Backend:
        servers = {"big": ssh_server(ssh_env, ssh_env["XQ_SSH_PORT"])}
        return Backend("ssh", {"servers": servers, "poll_interval": 0.2, "vanish_grace": 2})


class TestContainer(SchedulerConformance):
    """docker and podman through their API (the ``engine`` fixture's two params)."""

    @pytest.fixture
    def backend(self, engine: dict[str, str]) -> Backend:
        return Backend("container", {**engine, "kill_grace": 1})


class TestChRun(SchedulerConformance):
    @pytest.fixture
    def backend(self, chrun_image: str) -> Backend:
        # No labels, no daemon: a runner whose id was not recorded is found by the job
        # folder in its environment (XQUEUE_JOB_DIR).
        opts = {"bin": "ch-run", "image": chrun_image, "kill_grace": 1}
        return Backend("container", opts)


@pytest.mark.apptainer
class TestApptainer(SchedulerConformance):
    """apptainer inside the chroot of ci/apptainer.sh, which sees only the shared folder
    of this host (at the same path): the workdirs live there."""

    @pytest.fixture
    def backend(self, apptainer: dict[str, str], shared_workdir: Path) -> Backend:
        # Like ch-run: a runner whose id was not recorded is found by its job folder.
        opts = {**apptainer, "kill_grace": 1}
        return Backend("container", opts, root=shared_workdir.parent)


class TestGbatch(SchedulerConformance):
    @pytest.fixture
    def backend(self, gcloud: Gcloud) -> Backend:
        async def forget(job: Job) -> None:
            answer = await anyio.to_thread.run_sync(lambda: gcloud.control("Forget", name=job.jid))
            assert answer == {"forgotten": True}

        opts = gbatch_options(gcloud, f"p-{uuid.uuid4().hex[:10]}")
        return Backend("gbatch", opts, forget=forget)


class TestGbatchArrays(SchedulerConformance):
    """Google Batch as it runs by default: jobs fed together with the same resources are
    tasks of one Batch job (packs), whose per-task status takes a ListTasks beside the
    run's ListJobs on a tick when its task counts moved (two status calls a tick). The
    kit's forget test runs one job, a Batch job of its own (the stand-in forgets whole
    Batch jobs); its re-adoption test finds an array's elements by its task script."""

    @pytest.fixture
    def backend(self, gcloud: Gcloud) -> Backend:
        async def forget(job: Job) -> None:
            answer = await anyio.to_thread.run_sync(lambda: gcloud.control("Forget", name=job.jid))
            assert answer == {"forgotten": True}

        opts = gbatch_options(gcloud, f"p-{uuid.uuid4().hex[:10]}", arrays=True)
        return Backend("gbatch", opts, forget=forget, packs=True, status_calls_per_tick=2)
