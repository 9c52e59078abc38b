"""N homogeneous ``true`` jobs on each cluster backend against its own client in a loop.

    python benchmarks/cluster_bench.py [--jobs 500] [--backends slurm,htcondor,gbatch]
                                       [--forks N] [--poll 1.0] [--repeat 1]

For each backend, the baseline first (the backend's client submitting the jobs one by
one, then one status call a second until all have ended), then xqueue with arrays on
(Slurm arrays, one HTCondor cluster; Google Batch has no arrays in xqueue: one Batch job
per job). Printed: wall time, submit calls, status calls, ticks and status calls per
tick, and xqueue's rate against the loop's (issue 10's goals: one status call per tick,
a handful of submissions for the whole run).

- slurm: the Slurm of ci/slurm.sh; baseline ``sbatch --wrap true`` in a shell loop.
- htcondor: the pool of ci/htcondor.sh (in its trixie chroot); baseline ``condor_submit``
  of a one-job description in a shell loop, run in the chroot as the pool's job user.
  Workdirs go under the pool's shared folder.
- gbatch: tests/standins (the Batch stand-in that runs each task on this machine, and
  the Cloud Storage emulator), started for the benchmark; baseline one CreateJob per job
  through the official client (a ``gcloud batch jobs submit`` loop's calls, without
  gcloud's own start-up per job, so a stricter baseline than the real CLI); and a
  *staged* loop that moves each job's files through the bucket as xqueue does (upload
  its script, mount its folder as the job's GCS volume, download its stdout, stderr and
  exit status once it has ended), the fair comparison for a backend with no shared
  file system.

``--forks`` defaults to N: the loops put no bound of their own on the jobs either, so
each backend's own capacity (8 CPUs for Slurm and HTCondor) bounds both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
from _clusters import (  # benchmarks/ is on sys.path
    GBATCH_BUCKET,
    NICE,
    condor_folder,
    condor_loop,
    condor_opts,
    gbatch_loop,
    gbatch_opts,
    show,
    slurm_loop,
    xqueue_run,
)

ROOT = Path(__file__).resolve().parents[1]


async def bench_slurm(args: argparse.Namespace) -> None:
    base = await anyio.to_thread.run_sync(slurm_loop, args.jobs, NICE)
    show("slurm: sbatch loop", base, base)
    opts = {"poll_interval": args.poll, "submit_concurrency": 16, "nice": NICE}
    with tempfile.TemporaryDirectory(prefix="xq-cluster-bench-") as tmp:
        show("slurm: xqueue", await xqueue_run("slurm", args.jobs, args.forks, tmp, opts), base)


async def bench_htcondor(args: argparse.Namespace) -> None:
    base = await anyio.to_thread.run_sync(condor_loop, args.jobs)
    show("htcondor: condor_submit loop", base, base)
    opts = {**condor_opts(), "poll_interval": args.poll}
    with condor_folder() as folder:
        r = await xqueue_run("htcondor", args.jobs, args.forks, os.path.join(folder, "wd"), opts)
    show("htcondor: xqueue", r, base)


async def bench_gbatch(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))  # tests.standins
    from tests.standins.gcloud import running

    # Fresh services for each measurement: the storage emulator lists a folder by
    # scanning every object it holds, so a run after another would pay for its files.
    @contextlib.contextmanager
    def services() -> Iterator[Any]:
        with tempfile.TemporaryDirectory(prefix="xq-gcloud-bench-") as tmp:
            with running(Path(tmp) / "gcloud") as gcloud:
                gcloud.storage_client().create_bucket(GBATCH_BUCKET)
                yield gcloud, tmp

    project = f"bench-{uuid.uuid4().hex[:8]}"
    with services() as (gcloud, _):
        base = await anyio.to_thread.run_sync(gbatch_loop, gcloud, project, args.jobs)
    show("gbatch: CreateJob loop", base, base)
    with services() as (gcloud, _):
        staged = await anyio.to_thread.run_sync(gbatch_loop, gcloud, project, args.jobs, True)
    show("gbatch: staged loop", staged, base)
    with services() as (gcloud, tmp):
        opts: dict[str, Any] = gbatch_opts(gcloud, project, args.poll)
        r = await xqueue_run("gbatch", args.jobs, args.forks, os.path.join(tmp, "wd"), opts)
    show("gbatch: xqueue", r, base)
    show("  against the staged loop", r, staged)


BENCHES = {"slurm": bench_slurm, "htcondor": bench_htcondor, "gbatch": bench_gbatch}


async def main(args: argparse.Namespace) -> None:
    for _ in range(args.repeat):
        for name in args.backends.split(","):
            await BENCHES[name](args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--backends", default="slurm,htcondor,gbatch")
    parser.add_argument("--forks", type=int, default=0, help="default: --jobs")
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=1)
    parsed = parser.parse_args()
    parsed.forks = parsed.forks or parsed.jobs
    anyio.run(main, parsed)
