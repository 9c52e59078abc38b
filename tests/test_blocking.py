"""The no_blocking fixture (tests/blocking.py) catches blocking calls in the event loop.

Every test here runs on asyncio and on trio: blockbuster itself knows only asyncio, so
the trio runs prove that the fixture's loop probe still reaches it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.blocking import BlockingError
from tests.helpers import DetachedScheduler
from xqueue import Job, JobState, JobStatus, PluginError, Xqueue, hookimpl

pytestmark = pytest.mark.anyio


def _read(path: Path) -> str:
    with open(path) as fh:
        return fh.read()


def _read_nonblocking(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.read(fd, 10)
    finally:
        os.close(fd)


BLOCKING: dict[str, Callable[[Path], Any]] = {
    "time.sleep": lambda _: time.sleep(0.01),
    "open+read": _read,
    "os.stat": lambda path: os.stat(path),
    "os.read of a file opened O_NONBLOCK": lambda path: _read_nonblocking(path),
    "os.listdir": lambda path: os.listdir(path.parent),
}


@pytest.mark.parametrize("call", sorted(BLOCKING))
async def test_a_blocking_call_in_the_loop_raises(tmp_path: Path, call: str) -> None:
    path = tmp_path / "file"
    await anyio.Path(path).write_text("x")
    with pytest.raises(BlockingError):
        BLOCKING[call](path)
    await anyio.to_thread.run_sync(BLOCKING[call], path)  # off the loop it is fine


async def test_a_hook_that_sleeps_fails_the_run(workdir: Path) -> None:
    class Sleeps:
        @hookimpl
        def on_job_started(self, job: Job) -> None:
            time.sleep(0.01)

    q = Xqueue(workdir=workdir, plugins=[Sleeps()])
    await q.feed(["true"])
    with anyio.fail_after(20), pytest.raises(PluginError, match="on_job_started") as info:
        await q.run_until_complete()
    assert isinstance(info.value.__cause__, BlockingError)


async def test_reconciling_job_files_in_the_loop_is_caught(workdir: Path) -> None:
    """The bug this fixture was made for: a backend reading every job's files on the loop."""
    sched = DetachedScheduler(poll_interval=0.05)
    q = Xqueue(sched, workdir=workdir)
    job = await q.feed(["true"])
    with anyio.fail_after(20):
        await q.run_until_complete()  # the base poll_jobs reconciles in a worker thread
    assert job.status is JobStatus.FINISHED
    # The same reads made on the loop (its rc file, opened O_NONBLOCK like every state
    # file xqueue reads, which does not keep a regular file's read from waiting).
    with pytest.raises(BlockingError):
        sched.reconcile(job, held=False)
    assert await anyio.to_thread.run_sync(sched.reconcile, job, False) == JobState(
        JobStatus.FINISHED, 0
    )


@pytest.mark.blocking_allowed("checks that the opt-out marker switches the fixture off")
async def test_the_opt_out_marker_allows_blocking() -> None:
    time.sleep(0.001)  # noqa: ASYNC251 - the blocking call this test is about
