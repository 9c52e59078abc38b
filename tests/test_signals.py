"""Signal handling is scoped to a run; SIGTERM stops a run cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from xqueue import Interrupted, JobStatus, Xqueue
from xqueue.schedulers.local import LocalScheduler

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


class _SlowToOpen(LocalScheduler):
    """A backend whose server does not answer as it opens (a silent collector)."""

    async def open(self, workdir: Any) -> None:
        self.opening.set()
        await anyio.sleep(120)
        await super().open(workdir)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_while_the_backend_opens_stops_the_run_at_once(
    workdir: Path, sig: signal.Signals
) -> None:
    scheduler = _SlowToOpen()
    scheduler.opening = anyio.Event()  # type: ignore[attr-defined]
    q = Xqueue(scheduler=scheduler, workdir=workdir)
    job = await q.feed(["true"])
    expected = KeyboardInterrupt if sig is signal.SIGINT else Interrupted
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                await scheduler.opening.wait()  # type: ignore[attr-defined]
                os.kill(os.getpid(), sig)

            tg.start_soon(send)
            with pytest.raises(expected):
                await q.run_until_complete()
    assert job.status is JobStatus.INIT or not job.status.is_active
    assert job.attempt == 0  # never submitted


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


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_in_daemon_mode_raises_keyboard_interrupt_once(tmp_path: Path, backend: str) -> None:
    """In ``async with``, as in ``run_until_complete``, SIGINT comes out of the block as
    a bare KeyboardInterrupt: it was wrapped in an exception group, and on asyncio the
    event loop raised it a second time (the background run's task let it escape)."""
    script = textwrap.dedent(
        f"""
        import anyio, os, signal
        from xqueue import Xqueue

        async def main():
            try:
                async with Xqueue(workdir={str(tmp_path / "wd")!r}) as q:
                    job = await q.feed(["sleep", "60"])
                    while not job.status.is_active:
                        await anyio.sleep(0.01)
                    os.kill(os.getpid(), signal.SIGINT)
                    await job.wait()
            except BaseException as exc:
                print("raised", type(exc).__name__, str(exc), job.status.value)

        try:
            anyio.run(main, backend={backend!r})
        except BaseException as exc:
            print("and again", type(exc).__name__)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "raised KeyboardInterrupt running jobs were killed killed", (
        out.stdout + out.stderr
    )


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM])
async def test_a_signal_ignored_before_the_run_stays_ignored(workdir: Path, sig: int) -> None:
    """`nohup` ignores SIGHUP, `cmd &` in a script ignores SIGINT: the run must not undo it."""
    old = signal.signal(sig, signal.SIG_IGN)
    try:
        q = Xqueue(workdir=workdir)
        job = await q.feed(["sleep", "1"])

        async def send() -> None:
            while job.status is not JobStatus.RUNNING:
                await anyio.sleep(0.01)
            os.kill(os.getpid(), sig)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                await q.run_until_complete()
        assert job.status is JobStatus.FINISHED
        assert signal.getsignal(sig) is signal.SIG_IGN
    finally:
        signal.signal(sig, old)


@pytest.mark.parametrize("slow_first", [True, False])
async def test_concurrent_runs_share_signals_and_restore_the_handlers(
    workdir: Path, slow_first: bool
) -> None:
    """Two queues in one process: one SIGTERM stops both; the handlers from before either
    run are back afterwards, whether the run holding them ends first or last."""
    before = signal.getsignal(signal.SIGTERM)
    fast = Xqueue(workdir=workdir / "a")
    slow = Xqueue(workdir=workdir / "b", scheduler_opts={"kill_grace": 1})
    a = await fast.feed(["sleep", "30"])
    b = await slow.feed(["sh", "-c", "trap '' TERM; exec sleep 30"])
    errors: list[BaseException] = []

    async def run(q: Xqueue) -> None:
        try:
            await q.run_until_complete()
        except Interrupted as exc:
            errors.append(exc)

    async def send() -> None:
        while a.status is not JobStatus.RUNNING or b.status is not JobStatus.RUNNING:
            await anyio.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            first, second = (slow, fast) if slow_first else (fast, slow)
            tg.start_soon(run, first)  # the first to start holds the handlers
            await anyio.sleep(0.05)
            tg.start_soon(run, second)
            tg.start_soon(send)
    assert len(errors) == 2
    assert a.status is JobStatus.KILLED and b.status is JobStatus.KILLED
    assert signal.getsignal(signal.SIGTERM) is before
