"""Time limits on the backends that do not enforce one of their own: local processes, SSH
servers and containers. The engine kills a job at its limit through the backend's own
kill, so the whole process group goes, and records it FAILED with class TIMEOUT.

What a test claims is read back from outside xqueue: /proc (locally), the server's /proc
over a separate ``ssh`` login, the container engine's API, the ``xqueue status`` command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import IMAGE, call_api, is_alive, read_text
from tests.helpers import ssh_server as server
from xqueue import FailureClass, JobStatus, Xqueue

pytestmark = pytest.mark.anyio

FAST_KILL = {"kill_grace": 0.5}


async def wait_for_file(path: Path, timeout: float = 20) -> str:
    file = anyio.Path(path)
    with anyio.fail_after(timeout):
        while not (await file.exists() and (await file.read_text()).strip()):
            await anyio.sleep(0.02)
    return (await file.read_text()).strip()


def status_json(workdir: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "xqueue", "status", str(workdir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


async def test_local_timeout_kills_the_whole_group(workdir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    q = Xqueue(workdir=workdir, error_strategy="ignore", scheduler_opts=FAST_KILL)
    # The job's child would outlive a kill of the job's own process alone.
    job = await q.feed(f"sleep 60 & echo $! > {pidfile}; wait", resources={"walltime": "1s"})
    quick = await q.feed(["true"], resources={"walltime": 1})
    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.run_until_complete)
        child = int(await wait_for_file(pidfile))
    took = time.monotonic() - start
    assert job.status is JobStatus.FAILED and job.failure is FailureClass.TIMEOUT
    assert job.reason == "timed out after 1 s"
    assert job.rc == 128 + 15 or job.rc is None  # SIGTERM; or the kill's word came first
    assert 1 <= took < 10
    assert quick.status is JobStatus.FINISHED and quick.failure is None
    with anyio.fail_after(5):  # signalled with its group; the kernel takes it down
        while await is_alive(child):
            await anyio.sleep(0.02)
    (row,) = [r for r in await anyio.to_thread.run_sync(status_json, workdir) if r["index"] == 0]
    assert row["status"] == "failed" and row["state"]["failure"] == "TIMEOUT"
    assert row["state"]["reason"] == "timed out after 1 s"


async def test_a_job_ignoring_sigterm_is_killed_at_its_limit(workdir: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    q = Xqueue(workdir=workdir, error_strategy="ignore", scheduler_opts=FAST_KILL)
    job = await q.feed(
        ["sh", "-c", f"trap '' TERM; echo 1 > {ready}; sleep 60"], resources={"walltime": 1}
    )
    with anyio.fail_after(20):
        await q.run_until_complete()
    assert await read_text(ready) == "1\n"
    assert job.status is JobStatus.FAILED and job.failure is FailureClass.TIMEOUT


async def test_a_job_that_exits_at_its_limit_keeps_its_own_code(workdir: Path) -> None:
    """docs/limits.md: a job that exits 0 at its deadline (it caught SIGTERM and finished
    cleanly) counts as succeeded; one that exits with another code failed for its time,
    with that code. It was recorded failed (TIMEOUT, no code) whatever it exited with:
    the confirmed kill's verdict was recorded before the job's own end, reported meanwhile."""
    q = Xqueue(
        workdir=workdir,
        forks=3,
        error_strategy="ignore",
        scheduler_opts={"timeout": 1, "kill_grace": 5},
    )
    clean = await q.feed(["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done"])
    python = await q.feed(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
            "time.sleep(30)",
        ]
    )
    three = await q.feed(["sh", "-c", "trap 'exit 3' TERM; while :; do sleep 0.05; done"])
    with anyio.fail_after(20):
        await q.run_until_complete()
    for job in (clean, python):
        assert (job.status, job.rc, job.failure) == (JobStatus.FINISHED, 0, None), job.reason
    assert (three.status, three.rc, three.failure) == (JobStatus.FAILED, 3, FailureClass.TIMEOUT)
    assert three.reason == "timed out after 1 s"
    rows = await anyio.to_thread.run_sync(status_json, workdir)
    recorded = {row["index"]: row for row in rows}
    assert [recorded[i]["status"] for i in range(3)] == ["finished", "finished", "failed"]


async def test_timeout_option_applies_unless_the_job_has_a_walltime(workdir: Path) -> None:
    # xqute's scheduler option: every job of the run, unless its walltime says otherwise.
    q = Xqueue(
        workdir=workdir,
        forks=3,
        error_strategy="ignore",
        scheduler_opts={"timeout": 1, **FAST_KILL},
    )
    limited = await q.feed(["sleep", "1.8"])
    longer = await q.feed(["sleep", "1.8"], resources={"walltime": 5})
    fast = await q.feed(["sleep", "0.1"])
    with anyio.fail_after(20):
        await q.run_until_complete()
    assert limited.status is JobStatus.FAILED and limited.failure is FailureClass.TIMEOUT
    assert limited.reason == "timed out after 1 s"
    assert longer.status is JobStatus.FINISHED
    assert fast.status is JobStatus.FINISHED


@pytest.mark.ssh
async def test_ssh_timeout_kills_the_group_on_the_server(
    ssh_env: dict[str, str], workdir: Path
) -> None:
    from tests.schedulers.test_ssh import live_group_members

    q = Xqueue(
        "ssh",
        workdir=workdir,
        error_strategy="ignore",
        scheduler_opts={
            "servers": {"big": server(ssh_env, ssh_env["XQ_SSH_PORT"])},
            "poll_interval": 0.2,
            **FAST_KILL,
        },
    )
    job = await q.feed(["sh", "-c", "sleep 300 & sleep 300; echo never"], resources={"walltime": 2})
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED and job.failure is FailureClass.TIMEOUT
    assert job.reason == "timed out after 2 s"
    pgid = int(str(job.jid).split(":")[1])
    assert await live_group_members(ssh_env, pgid) == []
    assert await read_text(job.stdout_path) == ""


async def test_container_timeout_stops_the_container(engine: dict[str, str], workdir: Path) -> None:
    q = Xqueue(
        "container",
        workdir=workdir,
        error_strategy="ignore",
        scheduler_opts={**engine, "remove": False, "kill_grace": 1},
    )
    job = await q.feed(["sleep", "300"], resources={"walltime": 1})
    try:
        with anyio.fail_after(60):
            await q.run_until_complete()
        assert job.status is JobStatus.FAILED and job.failure is FailureClass.TIMEOUT
        assert job.reason == "timed out after 1 s"
        status, info = await call_api(engine["url"], "GET", f"/containers/{job.jid}/json")
        assert status == 200 and info["State"]["Running"] is False
        assert info["Config"]["Image"] == IMAGE
    finally:
        if job.jid:
            await call_api(engine["url"], "DELETE", f"/containers/{job.jid}?force=1")
