"""``run_command``, through which every cluster backend runs its client (sbatch, squeue,
qsub, condor_q...): a command cut short ends with everything it started."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from tests.helpers import is_alive
from xqueue.schedulers._process import SchedulerCommandError, run_command

pytestmark = pytest.mark.anyio


async def hung_client(tmp_path: Path) -> tuple[str, Path]:
    """A site's wrapper script that hangs in a child of its own (a stuck squeue)."""
    pidfile = tmp_path / "child.pid"
    script = anyio.Path(tmp_path / "squeue")
    await script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    await script.chmod(0o755)
    return str(script), pidfile


async def child_of(pidfile: Path) -> int:
    with anyio.fail_after(10):
        while not (text := (await anyio.Path(pidfile).read_text()).strip()):
            await anyio.sleep(0.02)
    return int(text)


async def gone(pid: int) -> bool:
    with anyio.move_on_after(5):
        while await is_alive(pid):
            await anyio.sleep(0.02)
    return not await is_alive(pid)


async def test_a_command_that_times_out_ends_with_its_children(tmp_path: Path) -> None:
    client, pidfile = await hung_client(tmp_path)
    await anyio.Path(pidfile).write_text("")
    with pytest.raises(SchedulerCommandError, match="no answer within 1s") as raised:
        await run_command([client], timeout=1)
    assert raised.value.transient and raised.value.ambiguous
    assert await gone(await child_of(pidfile))


async def test_a_cancelled_command_ends_with_its_children(tmp_path: Path) -> None:
    client, pidfile = await hung_client(tmp_path)
    await anyio.Path(pidfile).write_text("")
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_command, [client])
        child = await child_of(pidfile)
        tg.cancel_scope.cancel()
    assert await gone(child)


def children() -> set[str]:
    """This process's children, from every thread (trio forks in a worker thread)."""
    return {
        pid
        for task in Path("/proc/self/task").iterdir()
        for pid in (task / "children").read_text().split()
    }


def holding_the_loop(pidfile: Path) -> int:
    """``child_of``, blocking: no task runs until the pid is there."""
    deadline = time.monotonic() + 10
    while not (text := pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the client never started its child"
        time.sleep(0.02)
    return int(text)


@pytest.mark.blocking_allowed("holds the loop so the command's start cannot finish first")
async def test_a_command_cancelled_as_it_starts_ends_with_its_children(tmp_path: Path) -> None:
    """Cancelled after its fork but before its start returned (asyncio then waits for the
    pipes): under load the client has already started its child by then."""
    client, pidfile = await hung_client(tmp_path)
    await anyio.Path(pidfile).write_text("")
    before = children()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_command, [client])
        while children() <= before:
            await anyio.lowlevel.checkpoint()  # one step of the start at a time
        child = holding_the_loop(pidfile)  # so that the start cannot finish first
        tg.cancel_scope.cancel()
    assert await gone(child)


async def test_output_input_and_exit_status_come_back(tmp_path: Path) -> None:
    done = await run_command(["sh", "-c", "cat; echo err >&2; exit 3"], input="in\n", check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "in\n", "err\n")
    with pytest.raises(SchedulerCommandError, match="exited 3: err"):
        await run_command(["sh", "-c", "echo err >&2; exit 3"])
    ignored = await run_command(["true"], input="x" * 1_000_000)  # never read: no error
    assert ignored.returncode == 0
