"""How long ``feed()`` takes for many jobs, against the least a queue in Python can do.

The goal (issue 11) is 100,000 jobs fed in under 1 s. On a shared machine the absolute
figure swings with the neighbours, so each repetition also times, in the same process and
right before, a **floor**: a loop that awaits a coroutine per job which makes an object
for it, appends it to a list, and formats two JSON lines for it (what the event stream
writes for a fed job). The ratio xqueue / floor is what to compare between versions.

    python benchmarks/feed_bench.py [--jobs 100000] [--reps 5] [--dir /var/tmp]

Repetitions alternate floor and xqueue, each xqueue one in a fresh workdir under
``--dir``; the minimum of each is reported (the least disturbed), and the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ["XQUEUE_DISABLE_PLUGIN_AUTOLOAD"] = "1"

import anyio

from xqueue import Xqueue


class _Fed:
    __slots__ = ("argv", "index", "name", "status")

    def __init__(self, index: int, argv: list[str]) -> None:
        self.index, self.argv, self.name, self.status = index, tuple(argv), " ".join(argv), "init"


async def floor(n: int) -> float:
    jobs: list[_Fed] = []
    lines: list[str] = []

    async def feed(argv: list[str]) -> _Fed:
        job = _Fed(len(jobs), argv)
        jobs.append(job)
        lines.extend(
            json.dumps({"event": event, "job": job.index, "name": job.name})
            for event in ("job_init", "job_queued")
        )
        return job

    start = time.perf_counter()
    for i in range(n):
        await feed(["true", str(i)])
    return time.perf_counter() - start


async def xqueue(n: int, directory: str) -> float:
    with tempfile.TemporaryDirectory(dir=directory, ignore_cleanup_errors=True) as tmp:
        q = Xqueue(forks=64, workdir=tmp, handle_signals=False)
        start = time.perf_counter()
        for i in range(n):
            await q.feed(["true", str(i)])
        took = time.perf_counter() - start
        await q.aclose()
        return took


async def main(args: argparse.Namespace) -> None:
    floors, ours = [], []
    for _ in range(args.reps):
        floors.append(await floor(args.jobs))
        ours.append(await xqueue(args.jobs, args.dir))
    ratios = sorted(o / f for o, f in zip(ours, floors))
    print(
        f"feed {args.jobs:,} jobs: xqueue min {min(ours):.2f} s, median "
        f"{statistics.median(ours):.2f} s ({min(ours) / args.jobs * 1e6:.1f} us a job); "
        f"floor min {min(floors):.2f} s; xqueue/floor x{min(ratios):.2f} to "
        f"x{max(ratios):.2f} (median x{statistics.median(ratios):.2f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp")
    anyio.run(main, parser.parse_args())
