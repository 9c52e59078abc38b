"""N ``true`` jobs on the real single-node Slurm of ci/slurm.sh, with and without arrays.

Reports wall time, sbatch calls, status calls (squeue + sacct), ticks and status calls
per tick for each mode, then how many sbatch calls N2 homogeneous jobs take with arrays.
The goals: one status call per tick whatever N, and at most 5 sbatch calls for 1000
homogeneous jobs with arrays.

    python benchmarks/slurm_bench.py [--jobs 500] [--big 1000] [--forks 100] [--poll 1.0]

Wall time is dominated by Slurm starting jobs (8 CPUs, a few jobs a second each), so
compare modes run here, not against another machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import anyio

from xqueue import JobStatus, Xqueue


async def run(n: int, forks: int, poll: float, arrays: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="xq-slurm-bench-") as tmp:
        q = Xqueue(
            "slurm",
            forks=forks,
            workdir=tmp,
            error_strategy="ignore",
            handle_signals=False,
            scheduler_opts={"arrays": arrays, "poll_interval": poll, "submit_concurrency": 16},
        )
        start = time.perf_counter()
        for _ in range(n):
            await q.feed(["true"])
        await q.run_until_complete()
        wall = time.perf_counter() - start
        stats = q.statistics()
        ok = sum(j.status is JobStatus.FINISHED for j in q.jobs)
    return {
        "jobs": n,
        "finished": ok,
        "wall_s": wall,
        "sbatch": stats.submit_calls,
        "status": stats.status_calls,
        "ticks": stats.ticks,
        "status_per_tick": stats.status_calls / max(stats.ticks, 1),
    }


def show(label: str, r: dict[str, float]) -> None:
    print(
        f"{label:<22} jobs={r['jobs']:.0f} finished={r['finished']:.0f} "
        f"wall={r['wall_s']:.1f}s sbatch={r['sbatch']:.0f} status={r['status']:.0f} "
        f"ticks={r['ticks']:.0f} status/tick={r['status_per_tick']:.2f}"
    )


async def main(args: argparse.Namespace) -> None:
    show("arrays", await run(args.jobs, args.forks, args.poll, True))
    show("one sbatch per job", await run(args.jobs, args.forks, args.poll, False))
    if args.big:
        show("arrays (big)", await run(args.big, args.forks, args.poll, True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--big", type=int, default=1000, help="0 to skip")
    parser.add_argument("--forks", type=int, default=100)
    parser.add_argument("--poll", type=float, default=1.0)
    anyio.run(main, parser.parse_args())
