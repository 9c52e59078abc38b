"""Local scheduler throughput and latency against plain asyncio, measured in one run.

Baseline: ``asyncio.create_subprocess_exec`` bounded by a semaphore, the way one would
write it by hand. Figures are reported as ratios to that baseline because the machines
this runs on are shared and noisy; repetitions are interleaved so drift hits both.

    python benchmarks/local_throughput.py [--jobs 2000] [--forks 16 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time

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


async def xqueue_rate(n: int, forks: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        q = Xqueue(forks=forks, workdir=tmp, handle_signals=False)
        start = time.perf_counter()
        for _ in range(n):
            await q.feed(["true"])
        await q.run_until_complete()
        rate = n / (time.perf_counter() - start)
        assert q.statistics().counts == {"finished": n}, q.statistics()
        return rate


async def latency(samples: int) -> tuple[float, float]:
    """Median seconds from feed() to the job observed done: xqueue (daemon), baseline."""
    xq, base = [], []
    with tempfile.TemporaryDirectory() as tmp:
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
    args = ap.parse_args()
    for forks in args.forks:
        base, xq = [], []
        for _ in range(args.reps):
            base.append(await baseline(args.jobs, forks))
            xq.append(await xqueue_rate(args.jobs, forks))
        b, x = statistics.median(base), statistics.median(xq)
        print(
            f"forks={forks:<3} N={args.jobs}: asyncio {b:7.0f} jobs/s  xqueue {x:7.0f} jobs/s"
            f"  ratio {x / b:.2f}x"
        )
    lx, lb = await latency(20)
    print(
        f"feed-to-done latency (median of 20): xqueue {lx * 1000:.2f} ms, "
        f"asyncio spawn+wait {lb * 1000:.2f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
