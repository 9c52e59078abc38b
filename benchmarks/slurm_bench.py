"""N ``true`` jobs on the real single-node Slurm of ci/slurm.sh, with and without arrays,
and 10,000 of them through arrays, against ``sbatch --wrap true`` in a shell loop.

Reports wall time, sbatch calls, status calls (squeue + sacct), ticks and status calls
per tick for each mode, and each run's rate against the loop's (measured in the same
run). The goals: one status call per tick whatever N, and at most 10 sbatch calls for
10,000 homogeneous jobs with arrays (issue 11), so that Slurm starting jobs on the
node's CPUs bounds the wall time, not xqueue.

    python benchmarks/slurm_bench.py [--jobs 500] [--huge 10000] [--loop 500]
                                     [--forks 100] [--poll 1.0] [--nice 100000]
                                     [--workdir DIR]

Wall time is dominated by Slurm starting jobs (8 CPUs, a few jobs a second each), so
compare modes run here, not against another machine. 10,000 jobs need MaxJobCount above
10,000 (ci/slurm.sh sets 20000) and MinJobAge keeps ended jobs in ``squeue``: the status
query of a 10,000-job run lists them all.
"""

from __future__ import annotations

import argparse
import tempfile

import anyio
from _clusters import NICE, show, slurm_loop, xqueue_run  # benchmarks/ is on sys.path


async def run(n: int, args: argparse.Namespace, arrays: bool) -> dict[str, float]:
    opts = {"arrays": arrays, "poll_interval": args.poll, "submit_concurrency": 16}
    opts["nice"] = args.nice  # sbatch --nice: let test runs on the same Slurm go first
    with tempfile.TemporaryDirectory(prefix="xq-slurm-bench-", dir=args.workdir) as tmp:
        return await xqueue_run("slurm", n, args.forks, tmp, opts)


async def main(args: argparse.Namespace) -> None:
    base = await anyio.to_thread.run_sync(slurm_loop, args.loop, args.nice) if args.loop else None
    if base is not None:
        show("sbatch --wrap loop", base, base)
    if args.jobs:
        show("arrays", await run(args.jobs, args, True), base)
        show("one sbatch per job", await run(args.jobs, args, False), base)
    if args.huge:
        show("arrays (huge)", await run(args.huge, args, True), base)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="0 to skip")
    parser.add_argument("--huge", type=int, default=10_000, help="0 to skip")
    parser.add_argument("--loop", type=int, default=500, help="the baseline's N; 0 to skip")
    parser.add_argument("--forks", type=int, default=100)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--nice", type=int, default=NICE, help="sbatch --nice of every job")
    parser.add_argument("--workdir", default=None, help="where workdirs go (default: TMPDIR)")
    anyio.run(main, parser.parse_args())
