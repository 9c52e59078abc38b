"""Local scheduler throughput and latency against plain asyncio, measured in one run.

Baselines: ``asyncio.create_subprocess_exec`` bounded by a semaphore, the way one would
write it by hand, and the same loop giving each job a folder with its stdout and stderr
files (the floor for a queue that keeps every job's output). Figures are reported as
ratios to them because the machines this runs on are shared and noisy; repetitions are
interleaved so drift hits all alike.

    python benchmarks/local_throughput.py [--jobs 2000] [--forks 16 64] [--reps 3] [--dir D]

The baseline writes no files while xqueue keeps a folder and output files per job, so
the file system under ``--dir`` matters: the script prints what creating one file costs
there. The default is tmpfs (/dev/shm), which isolates the engine's own cost; pass
``--dir`` to measure a disk. Every run's folder is kept until the end (``_scratch``): on
the sandboxes this was written on, a disk's file creations cost up to ten times more in
the minutes after thousands of files were removed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import time
from collections.abc import Callable

from _scratch import kept_folders

# The engine alone: hook plugins installed in the environment are not loaded.
os.environ["XQUEUE_DISABLE_PLUGIN_AUTOLOAD"] = "1"

from xqueue import Xqueue


async def baseline(n: int, forks: int) -> float:
    sem = asyncio.Semaphore(forks)

    async def one() -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec(
                "true", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            await proc.wait()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - start)


async def baseline_with_files(n: int, forks: int, tmp: str) -> float:
    """Plain asyncio that gives each job a folder with its stdout and stderr files: the
    floor for any queue that keeps each job's output."""
    sem = asyncio.Semaphore(forks)

    async def one(i: int) -> None:
        async with sem:
            folder = f"{tmp}/{i}"
            # Blocking, as the hand-written loop it stands for would be.
            os.mkdir(folder)
            out = open(f"{folder}/stdout", "wb")  # noqa: ASYNC230
            err = open(f"{folder}/stderr", "wb")  # noqa: ASYNC230
            with out, err:
                proc = await asyncio.create_subprocess_exec("true", stdout=out, stderr=err)
            await proc.wait()

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - start)


def file_cost_us(tmp: str, n: int = 500) -> float:
    """Microseconds to create (and write) one small file in a fresh folder."""
    start = time.perf_counter()
    for i in range(n):
        with open(f"{tmp}/{i}", "w") as fh:
            fh.write("x")
    return (time.perf_counter() - start) / n * 1e6


async def xqueue_rate(n: int, forks: int, tmp: str) -> float:
    q = Xqueue(forks=forks, workdir=tmp, handle_signals=False)
    start = time.perf_counter()
    for _ in range(n):
        await q.feed(["true"])
    await q.run_until_complete()
    rate = n / (time.perf_counter() - start)
    assert q.statistics().counts == {"finished": n}, q.statistics()
    return rate


async def latency(samples: int, tmp: str) -> tuple[float, float]:
    """Median seconds from feed() to the job observed done: xqueue (daemon), baseline."""
    xq, base = [], []
    async with Xqueue(forks=4, workdir=tmp, handle_signals=False) as q:
        for _ in range(samples):
            t = time.perf_counter()
            job = await q.feed(["true"])
            await job.wait()
            xq.append(time.perf_counter() - t)
    for _ in range(samples):
        t = time.perf_counter()
        proc = await asyncio.create_subprocess_exec("true")
        await proc.wait()
        base.append(time.perf_counter() - t)
    return statistics.median(xq), statistics.median(base)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--forks", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/dev/shm", help="where the workdirs go")
    args = ap.parse_args()
    with kept_folders(args.dir) as new:  # removed at the end: see _scratch
        await measure(args, new)


async def measure(args: argparse.Namespace, new: Callable[[str], str]) -> None:
    cost = file_cost_us(new("xq-files-"))
    print(f"workdirs under {args.dir}: {cost:.0f} us to create one file")
    for forks in args.forks:
        base, files, xq = [], [], []
        for _ in range(args.reps):
            base.append(await baseline(args.jobs, forks))
            files.append(await baseline_with_files(args.jobs, forks, new("xq-asyncio-")))
            xq.append(await xqueue_rate(args.jobs, forks, new("xq-xqueue-")))
        b, f, x = statistics.median(base), statistics.median(files), statistics.median(xq)
        print(
            f"forks={forks:<3} N={args.jobs}: asyncio {b:6.0f} jobs/s, asyncio+files {f:6.0f}, "
            f"xqueue {x:6.0f}; xqueue/asyncio {x / b:.2f}x, xqueue/asyncio+files {x / f:.2f}x"
        )
    lx, lb = await latency(20, new("xq-latency-"))
    print(
        f"feed-to-done latency (median of 20): xqueue {lx * 1000:.2f} ms, "
        f"asyncio spawn+wait {lb * 1000:.2f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
