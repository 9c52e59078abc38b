"""What operating a run costs: the live views' refresh, and the event stream on the loop.

    python benchmarks/operate_bench.py [--jobs 1000 100000] [--reps 3] [--dir /dev/shm]

- ``progress``: one refresh of ``xqueue run``'s live view (``cli.progress.ProgressView``,
  rendered to a string) while N jobs are running at once, on an in-memory scheduler
  that holds every job until it is killed. Against it, in the same run, what a refresh
  cost when ``statistics()`` counted the active jobs one by one (``active_jobs()``).
  A refresh that is O(1) costs the same at every N.
- ``follow``: ``xqueue status --follow`` on a 5-event-per-job stream of N jobs: reading
  and applying every event (the catch-up of a late follower), then one refresh of its
  terminal view, which must not grow with N either.
- ``events``: a whole run of N jobs on an in-memory scheduler that ends each one at
  once (so the engine and its hooks are all that is measured), with the event stream
  (the default) against ``events=False``: CPU seconds of the process (every thread), the
  steadier figure on a shared machine, and wall seconds. The ratio is what the stream
  costs. Then the same with real local jobs (``true``, at most ``--local-jobs``), where
  starting processes dwarfs it (the controller's CPU only: the shepherd forks).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import tempfile
import time
from typing import Any

os.environ["XQUEUE_DISABLE_PLUGIN_AUTOLOAD"] = "1"

import anyio
from _instant import Instant  # benchmarks/ is on sys.path when a script runs
from rich.console import Console

from xqueue import Job, JobState, JobStatus, Xqueue, hookimpl
from xqueue.cli.follow import Follower, _Screen
from xqueue.cli.progress import ProgressView
from xqueue.events import job_line, run_line


class Hold(Instant):
    """Every job runs until it is killed."""

    name = "hold"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.killed: dict[Job, anyio.Event] = {}

    async def submit_jobs(self, jobs: Any) -> list[str | BaseException]:
        for job in jobs:
            self.killed[job] = anyio.Event()
        return [str(job.index) for job in jobs]

    async def kill_job(self, job: Job) -> None:
        self.killed[job].set()

    async def wait_job(self, job: Job) -> JobState:
        await self.killed[job].wait()
        return JobState(JobStatus.KILLED, None, "killed")


def per_call(fn: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


async def progress(n: int, directory: str, calls: int = 200) -> tuple[float, float]:
    """(seconds per refresh now, per refresh counting active jobs one by one) at N running."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        hold = Hold()
        q = Xqueue(
            hold, forks=n, workdir=tmp, handle_signals=False, events=False, error_strategy="ignore"
        )
        for _ in range(n):
            await q.feed(["true"])
        console = Console(file=io.StringIO(), width=120, force_terminal=True)
        view = ProgressView(q, console)
        result: list[float] = []
        running = anyio.Event()

        class Started:
            @hookimpl
            def on_job_started(self) -> None:
                if q.statistics().counts.get("running", 0) == n:
                    running.set()

        q.hooks.register(Started())

        async def measure() -> None:
            await running.wait()
            result.append(per_call(lambda: console.print(view), calls))
            engine = q._engine  # what a refresh counted before: every active job, one by one
            result.append(per_call(lambda: (engine.active_jobs(), console.print(view)), calls))
            for ended in hold.killed.values():  # the jobs end (as failed: killed outside)
                ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(measure)
            await q.run_until_complete()
        return result[0], result[1]


def follow(n: int, directory: str) -> tuple[float, float]:
    """(seconds to read and apply the whole stream, seconds per refresh of the view)."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        now = time.time()
        with open(os.path.join(tmp, "events.jsonl"), "w") as fh:
            fh.write(run_line(now, "run_started", {"scheduler": "local", "forks": 8}))
            for i in range(n):
                job = Job(i, ["job", str(i)], name=f"job {i}")
                job.attempt, job.jid = 1, f"{i}@1.0"
                for event, status in (
                    ("job_init", "init"),
                    ("job_queued", "queued"),
                    ("job_submitted", "running"),
                    ("job_started", "running"),
                    (
                        "job_succeeded" if i % 50 else "job_failed",
                        "finished" if i % 50 else "failed",
                    ),
                ):
                    job.status = JobStatus(status)
                    job.rc = 0 if status == "finished" else (1 if status == "failed" else None)
                    fh.write(job_line(now, event, job))
        follower = Follower(tmp, io.StringIO(), as_json=False)
        start = time.perf_counter()
        follower.step()
        while not follower.tail.caught_up():
            follower.step()
        read = time.perf_counter() - start
        assert follower.view.total == n
        console = Console(file=io.StringIO(), width=120, force_terminal=True)
        screen = _Screen(follower)
        return read, per_call(lambda: console.print(screen), 200)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime


async def events(n: int, directory: str, on: bool, local: bool) -> tuple[float, float]:
    """(wall, CPU) seconds of a whole run; CPU is the steadier on a shared machine."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        scheduler = "local" if local else Instant()
        q = Xqueue(scheduler, forks=64, workdir=tmp, handle_signals=False, events=on)
        start, used = time.perf_counter(), cpu()
        for _ in range(n):
            await q.feed(["true"])
        await q.run_until_complete()
        return time.perf_counter() - start, cpu() - used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", default="/dev/shm")
    parser.add_argument("--only", choices=("progress", "follow", "events"))
    parser.add_argument(
        "--local-jobs", type=int, default=5_000, help="at most this many jobs of `true`"
    )
    args = parser.parse_args()
    for n in args.jobs:
        if args.only in (None, "progress"):
            now, old = anyio.run(progress, n, args.dir)
            print(
                f"progress {n:>7,} running: {now * 1e6:8.0f} us/refresh; counting active "
                f"jobs one by one: {old * 1e6:8.0f} us/refresh (x{old / now:.1f})"
            )
        if args.only in (None, "follow"):
            read, refresh = follow(n, args.dir)
            print(
                f"follow   {n:>7,} jobs:    {read:6.2f} s to read {5 * n:,} events "
                f"({5 * n / read:,.0f}/s); {refresh * 1e6:8.0f} us/refresh"
            )
        if args.only in (None, "events"):
            compare_events(n, args.reps, args.dir, local=False)
            compare_events(min(n, args.local_jobs), args.reps, args.dir, local=True)


def compare_events(n: int, reps: int, directory: str, local: bool) -> None:
    walls: dict[bool, list[float]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(reps):  # interleaved, so drift hits both alike
        for on in (False, True):
            wall, used = anyio.run(events, n, directory, on, local)
            walls[on].append(wall)
            cpus[on].append(used)
    off, on_ = statistics.median(cpus[False]), statistics.median(cpus[True])
    where = "local `true`" if local else "in memory"
    print(
        f"events   {n:>7,} jobs ({where}): controller CPU {off:6.2f} s without the stream, "
        f"{on_:6.2f} s with it (x{on_ / off:.2f}); wall {statistics.median(walls[False]):.2f} s, "
        f"{statistics.median(walls[True]):.2f} s"
    )


if __name__ == "__main__":
    main()
