"""What keeping a local job's exit status costs: one ``true`` spawned and awaited, bare
and under the local scheduler's rc wrapper, interleaved in one run (ratios, since these
machines are shared and noisy).

    python benchmarks/rc_wrapper_cost.py [--jobs 300] [--reps 5] [--dir /dev/shm]

The wrapper is what lets a job that ends while no controller watches leave its return
code (``job.<n>.rc``); its cost is one extra ``sh`` in the job's own process tree, paid
by the job, not by the controller's event loop.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time

from xqueue.schedulers.local import WRAPPER


def per_job_ms(n: int, wrapped: bool, folder: str) -> float:
    start = time.perf_counter()
    for i in range(n):
        argv = ["true"]
        if wrapped:
            argv = ["/bin/sh", "-c", WRAPPER, "xqueue-job", f"{folder}/{i}.rc", "true"]
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait()
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", default="/dev/shm")
    args = ap.parse_args()
    bare, wrapped = [], []
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for _ in range(args.reps):
            bare.append(per_job_ms(args.jobs, False, folder))
            wrapped.append(per_job_ms(args.jobs, True, folder))
    b, w = statistics.median(bare), statistics.median(wrapped)
    print(f"spawn+wait `true`: bare {b:.3f} ms, under the rc wrapper {w:.3f} ms ({w / b:.2f}x)")


if __name__ == "__main__":
    main()
