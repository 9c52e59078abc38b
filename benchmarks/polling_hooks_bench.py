"""What the polling hooks cost per tick with many active jobs: per job, or one batch.

    python benchmarks/polling_hooks_bench.py [--jobs 1000 10000] [--window 3] [--dir D]

N jobs run "for ever" on an in-memory polled scheduler (its status query answers at
once, from memory), so only the engine and the hooks are measured. Once all N run, the
controller's CPU time over a window of ``--window`` seconds is divided by the ticks in
that window. Plugins compared, each against the run with no plugin:

- ``none``: no polling hook (the engine only polls);
- ``per-job``: ``on_job_polling``, a plain function doing nothing;
- ``per-job async``: the same as a coroutine (one await per job per tick);
- ``batch``: ``on_jobs_polling``, one call with the list of active jobs.

Reported: CPU milliseconds per tick, and the hooks' share per job per tick in
microseconds (the difference to ``none`` divided by N). A tick's hooks run in one task
beside the loop (``Engine._poll_hooks``), and the next tick waits for them, so a costly
sweep makes ticks rarer, never piles them up.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Sequence
from typing import Any

# The engine alone: hook plugins installed in the environment are not loaded.
os.environ["XQUEUE_DISABLE_PLUGIN_AUTOLOAD"] = "1"

import anyio

from xqueue import Job, JobState, JobStatus, Scheduler, Xqueue, hookimpl

INTERVAL = 0.2


class Forever(Scheduler):
    """Polled; every job runs until it is killed. Nothing leaves memory."""

    name = "forever"

    async def submit_job(self, job: Job) -> str:
        return str(job.index)

    async def kill_job(self, job: Job) -> None:
        pass

    async def job_is_running(self, job: Job) -> bool:
        return not job.kill_requested

    async def kill_jobs(self, jobs: Sequence[Job]) -> list[BaseException | None]:
        return [None] * len(jobs)

    async def poll_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobState]:
        killed = JobState(JobStatus.KILLED, None, "killed")
        running = JobState(JobStatus.RUNNING)
        return {job: killed if job.kill_requested else running for job in jobs}


class PerJob:
    @hookimpl
    def on_job_polling(self, job: Job) -> None:
        pass


class PerJobAsync:
    @hookimpl
    async def on_job_polling(self, job: Job) -> None:
        pass


class Batch:
    @hookimpl
    def on_jobs_polling(self, jobs: Sequence[Job]) -> None:
        pass


PLUGINS: dict[str, list[Any]] = {
    "none": [],
    "per-job": [PerJob()],
    "per-job async": [PerJobAsync()],
    "batch": [Batch()],
}


class AllStarted:
    """Sets ``event`` once ``n`` jobs have started (in every variant alike)."""

    def __init__(self, n: int) -> None:
        self.left, self.event = n, anyio.Event()

    @hookimpl
    def on_job_started(self) -> None:
        self.left -= 1
        if not self.left:
            self.event.set()


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(n: int, plugins: list[Any], window: float, directory: str) -> float:
    """CPU seconds per tick over the window, all ``n`` jobs running."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        sched = Forever(poll_interval=INTERVAL)
        started = AllStarted(n)
        q = Xqueue(sched, forks=n, workdir=tmp, plugins=[started, *plugins], handle_signals=False)
        for i in range(n):
            await q.feed(["true"], name=f"j{i}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(q.run_until_complete)
            await started.event.wait()
            await anyio.sleep(2 * INTERVAL)  # past the submissions' own work
            ticks, used, start = sched.stats.ticks, cpu(), time.monotonic()
            await anyio.sleep(window)
            ticks, used = sched.stats.ticks - ticks, cpu() - used
            elapsed = time.monotonic() - start
            tg.cancel_scope.cancel()
        assert ticks > 0, "no tick in the window"
        print(f"    ({ticks} ticks in {elapsed:.1f} s)", flush=True)
        return used / ticks


async def main(sizes: list[int], window: float, directory: str) -> None:
    for n in sizes:
        per_tick = {}
        for label, plugins in PLUGINS.items():
            per_tick[label] = await measure(n, plugins, window, directory)
        base = per_tick["none"]
        for label, t in per_tick.items():
            share = (t - base) / n * 1e6
            print(
                f"{n:>7,} active jobs  {label:<14} {t * 1e3:8.2f} ms CPU/tick  "
                f"hooks {share:6.2f} us/job/tick"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--dir", default="/dev/shm")
    args = parser.parse_args()
    anyio.run(main, args.jobs, args.window, args.dir)
