"""How long ``xqueue status`` takes on a large workdir, as a user runs it (a subprocess).

    python benchmarks/status_bench.py [--jobs 100000] [--dir /dev/shm] [--reps 3] [--keep D]

The workdir is written through the real ``Workdir`` API (the same calls the engine
makes: ``prepare``, ``record`` while active and when final), plus the empty output files
a local run leaves, so its layout follows the code. The mix is what a big run leaves
behind: mostly finished jobs, a few failed and killed, some still recorded as running by
a controller that is gone, some never submitted. Building 100,000 job folders takes a
while (a slug and four files per job); ``--keep D`` builds once into D and reuses it.
Final states are journal lines, as the engine writes them; ``--status-files`` writes
them as one ``job.status`` file per job instead, the layout of earlier versions (still
read), to compare.

Reported: wall-clock seconds and peak RSS of ``xqueue status WD`` (the summary), of
``--json`` (one object per job, written to /dev/null), of ``xqueue logs WD N`` (the
output of the job in the middle) and of a bare interpreter start for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from xqueue._files import atomic_write
from xqueue.job import Job
from xqueue.states import JobStatus
from xqueue.workdir import Workdir, job_record


def status_file(job: Job) -> None:
    """Record a final state as earlier versions did: a ``job.status`` file per job."""
    atomic_write(job.path("job.status"), json.dumps(job_record(job)))


def build(path: str, n: int, status_files: bool = False) -> None:
    workdir = Workdir(path)
    try:
        for i in range(n):
            job = Job(i, f"echo {i}; sleep 0")
            workdir.prepare(job, make=True)
            if i % 1000 == 999:
                continue  # fed, never submitted
            for name in ("job.1.stdout", "job.1.stderr"):
                with open(job.path(name), "wb"):
                    pass
            job.attempt, job.jid = 1, f"{100000 + i}@{time.time():.2f}"
            job.status = JobStatus.SUBMITTED
            workdir.record(job)
            if i % 1000 == 998:
                continue  # left running by a controller that is gone
            if i % 100 == 7:
                job.status, job.rc, job.reason = JobStatus.FAILED, 1, "return code 1"
            elif i % 500 == 11:
                job.status, job.rc, job.reason = JobStatus.KILLED, None, "killed on request"
            else:
                job.status, job.rc = JobStatus.FINISHED, 0
            if status_files:
                status_file(job)
            else:
                workdir.record(job)
    finally:
        workdir.unlock()


def timed(argv: list[str], reps: int) -> str:
    """Median wall and CPU (user+sys) seconds of ``reps`` runs, and the largest peak RSS
    of the process. CPU time is the steadier figure on a shared machine; a failing run
    stops the benchmark."""
    walls, cpus, peak = [], [], 0
    for _ in range(reps):
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own usage
        child.returncode = os.waitstatus_to_exitcode(status)
        walls.append(time.perf_counter() - start)
        if child.returncode != 0:
            raise SystemExit(f"{argv} exited {child.returncode}")
        cpus.append(usage.ru_utime + usage.ru_stime)
        peak = max(peak, usage.ru_maxrss)
    return (
        f"{statistics.median(walls):.3f}s wall, {statistics.median(cpus):.3f}s CPU, "
        f"peak RSS {peak / 1024:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--dir", default="/dev/shm", help="where to build (default tmpfs)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep", help="build into (or reuse) this workdir")
    parser.add_argument(
        "--status-files",
        action="store_true",
        help="record final states as job.status files, as earlier versions did",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="xq-status-") as tmp:
        wd = args.keep or os.path.join(tmp, "wd")
        if not os.path.exists(os.path.join(wd, "journal.jsonl")):
            start = time.perf_counter()
            build(wd, args.jobs, args.status_files)
            print(f"built {args.jobs:,} jobs in {time.perf_counter() - start:.1f}s: {wd}")
        xq = [sys.executable, "-m", "xqueue", "status", wd]
        print(f"python start:            {timed([sys.executable, '-c', 'pass'], args.reps)}")
        print(f"xqueue status (summary): {timed(xq, args.reps)}")
        print(f"xqueue status --json:    {timed([*xq, '--json'], args.reps)}")
        logs = [sys.executable, "-m", "xqueue", "logs", wd, str(args.jobs // 2)]
        print(f"xqueue logs (one job):   {timed(logs, args.reps)}")


if __name__ == "__main__":
    main()
