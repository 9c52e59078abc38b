"""Python calls as jobs (``Xqueue.submit``) against an interpreter started per job.

    python benchmarks/calls_bench.py [--calls 300] [--forks 8] [--reps 3] [--dir /dev/shm]

Each call is a job that starts an interpreter, which loads the call's runner
(``python -m xqueue._callrun``) and the call, runs it and writes its result; the
controller then reads the result back. Measured in the same process, alternately:

- **floor**: the same number of jobs that start the same interpreter and do nothing
  (``python -c pass``), through the same queue: what any tool that runs each call in an
  interpreter of its own pays, with the same folders and outputs;
- **calls**: ``await q.submit(operator.add, i, 1)`` for each, then every ``result()``.

Printed: the fastest and median seconds of each, and calls/floor (1.0 would mean a call
costs nothing over an interpreter's start). The runner's own loading (what it imports
before the call runs) is most of the difference for a call this small.

Compare two checkouts by running it with each on ``PYTHONPATH``, from a folder that
holds no ``xqueue`` package: a job's ``python -m`` puts its current folder first on the
path, so from inside a checkout every job loads that checkout's runner.
"""

from __future__ import annotations

import argparse
import operator
import os
import statistics
import sys
import tempfile
import time

os.environ["XQUEUE_DISABLE_PLUGIN_AUTOLOAD"] = "1"

import anyio

from xqueue import Xqueue


async def floor(n: int, forks: int, where: str) -> float:
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        q = Xqueue(forks=forks, workdir=tmp, handle_signals=False)
        start = time.perf_counter()
        for _ in range(n):
            await q.feed([sys.executable, "-c", "pass"])
        await q.run_until_complete()
        took = time.perf_counter() - start
        assert q.statistics().counts == {"finished": n}, q.statistics().counts
        return took


async def calls(n: int, forks: int, where: str) -> float:
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        q = Xqueue(forks=forks, workdir=tmp, handle_signals=False)
        start = time.perf_counter()
        jobs = [await q.submit(operator.add, i, 1) for i in range(n)]
        await q.run_until_complete()
        values = [await job.result() for job in jobs]
        took = time.perf_counter() - start
        assert values == [i + 1 for i in range(n)]
        return took


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--forks", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/dev/shm")
    args = ap.parse_args()
    times: dict[str, list[float]] = {"floor": [], "calls": []}
    for rep in range(args.reps):
        order = [floor, calls] if rep % 2 == 0 else [calls, floor]
        for run in order:
            times[run.__name__].append(await run(args.calls, args.forks, args.dir))
    print(f"{args.calls} calls, forks {args.forks}, {args.reps} rounds, in {args.dir}")
    for name, found in times.items():
        print(
            f"  {name:5} fastest {min(found):.2f} s, median {statistics.median(found):.2f} s "
            f"({args.calls / statistics.median(found):.0f}/s)  {[round(t, 2) for t in found]}"
        )
    ratio = statistics.median(times["calls"]) / statistics.median(times["floor"])
    print(f"  calls/floor x{ratio:.2f} (median over median)")


if __name__ == "__main__":
    anyio.run(main)
