"""Peak controller RSS for many jobs, and the cost of ``import xqueue``.

Both are measured in fresh subprocesses so nothing else inflates them. The RSS run feeds
N jobs and runs them all (``true``) at forks=64; the import figure is the median of
several cold imports, against ``import asyncio`` measured the same way as a baseline.

    python benchmarks/memory_import.py [--jobs 100000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import textwrap

RUN = textwrap.dedent(
    """
    import anyio, resource, sys, tempfile, time
    from xqueue import Xqueue

    async def main(n):
        with tempfile.TemporaryDirectory(dir=sys.argv[2]) as tmp:
            q = Xqueue(forks=64, workdir=tmp, handle_signals=False, error_strategy="ignore")
            t = time.perf_counter()
            for _ in range(n):
                await q.feed(["true"])
            fed = time.perf_counter() - t
            await q.run_until_complete()
            total = time.perf_counter() - t
            assert q.statistics().counts == {"finished": n}, q.statistics()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{rss:.0f} {fed:.2f} {total:.2f}")

    anyio.run(main, int(sys.argv[1]))
    """
)


def import_ms(module: str, reps: int = 7) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(reps)
    ]
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--dir", default=".", help="where the temporary workdir goes")
    args = ap.parse_args()
    xq, aio = import_ms("xqueue"), import_ms("asyncio")
    print(f"import xqueue: {xq:.1f} ms (import asyncio: {aio:.1f} ms, ratio {xq / aio:.1f}x)")
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(args.jobs), args.dir],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    rss, fed, total = float(out[0]), float(out[1]), float(out[2])
    print(
        f"{args.jobs:,} jobs: peak RSS {rss:.0f} MB, feed {fed:.1f} s, "
        f"feed+run {total:.1f} s ({args.jobs / total:,.0f} jobs/s)"
    )


if __name__ == "__main__":
    main()
