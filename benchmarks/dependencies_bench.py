"""What dependencies (``feed(after=...)``) cost the engine, as ratios to independent jobs.

    python benchmarks/dependencies_bench.py [--jobs 20000 40000] [--reps 3] [--dir D]

The jobs run on an in-memory scheduler that ends each one as soon as it is submitted, so
only the engine (and its workdir writes, on tmpfs by default) is measured. Three shapes
of N jobs, each timed from the first feed to the end of the run:

- ``independent``: no dependencies, the baseline;
- ``fan-out``: N-1 jobs after one root, all waiting while the root runs;
- ``chain``: each job after the one before, so the run has N rounds of the loop.

A fan-out close to the baseline says waiting jobs cost nothing per event or per tick;
the chain is dearer (one job per round instead of ``forks``) but must stay linear:
compare its time per job at the two sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

# The engine alone: hook plugins installed in the environment are not loaded.
os.environ["XQUEUE_DISABLE_PLUGIN_AUTOLOAD"] = "1"

import anyio
from _instant import Instant  # benchmarks/ is on sys.path when a script runs

from xqueue import JobStatus, Xqueue


def after(shape: str, i: int) -> Any:
    if i == 0 or shape == "independent":
        return None
    return 0 if shape == "fan-out" else i - 1


async def one_run(shape: str, n: int, directory: str) -> float:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        q = Xqueue(Instant(), forks=64, workdir=tmp, handle_signals=False)
        start = time.perf_counter()
        for i in range(n):
            await q.feed(["true"], after=after(shape, i))
        await q.run_until_complete()
        elapsed = time.perf_counter() - start
        assert all(j.status is JobStatus.FINISHED for j in q.jobs)
        return elapsed


async def main(sizes: list[int], reps: int, directory: str) -> None:
    shapes = ("independent", "fan-out", "chain")
    for n in sizes:
        times: dict[str, list[float]] = {s: [] for s in shapes}
        for _ in range(reps):  # interleaved, so drift hits every shape alike
            for shape in shapes:
                times[shape].append(await one_run(shape, n, directory))
        base = statistics.median(times["independent"])
        for shape in shapes:
            t = statistics.median(times[shape])
            print(
                f"{n:>7,} jobs  {shape:<12} {t:7.2f} s  {t / n * 1e6:6.1f} us/job  "
                f"x{t / base:.2f} of independent"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, nargs="+", default=[20_000, 40_000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", default="/dev/shm")
    args = parser.parse_args()
    anyio.run(main, args.jobs, args.reps, args.dir)
