"""Signal handling is scoped to a run; SIGTERM stops a run cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from xqueue import Interrupted, JobStatus, Xqueue

pytestmark = pytest.mark.anyio


async def test_handlers_are_restored_after_a_run(workdir: Path) -> None:
    def mine(signum: int, frame: object) -> None: ...

    old = signal.signal(signal.SIGTERM, mine)
    sigint = signal.getsignal(signal.SIGINT)  # trio installs its own during a run
    try:
        q = Xqueue(workdir=workdir)
        await q.feed(["true"])
        await q.run_until_complete()
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGTERM, old)


async def test_sigterm_during_run_kills_jobs_and_raises(workdir: Path) -> None:
    q = Xqueue(workdir=workdir)
    job = await q.feed(["sleep", "60"])

    async def send() -> None:
        while job.status is not JobStatus.RUNNING:
            await anyio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            with pytest.raises(Interrupted, match="SIGTERM"):
                await q.run_until_complete()
    assert job.status is JobStatus.KILLED
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_ctrl_c_after_a_run_behaves_normally(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import anyio, os, signal
        from xqueue import Xqueue

        async def main():
            q = Xqueue(workdir={str(tmp_path / "wd")!r})
            await q.feed(["true"])
            await q.run_until_complete()
            os.kill(os.getpid(), signal.SIGINT)
            await anyio.sleep(5)
            print("SIGINT was swallowed")

        try:
            anyio.run(main)
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "KeyboardInterrupt", out.stderr
