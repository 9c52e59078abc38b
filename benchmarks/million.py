"""A million ``true`` jobs through the API, then a resumed run over the same workdir.

Three figures the issue sets goals for, each phase in a fresh process so nothing else
inflates its memory:

- **run**: N jobs fed and run on the local scheduler (forks 64): the controller's peak
  RSS (goal: at most 1 GB for 1M), and the rate in each tenth of the run, so a cost per
  tick that grew with the finished jobs would show as a falling rate;
- **resume**: the same N jobs fed again on the same workdir, all of them succeeded
  before: how long feeding takes, and how long the run takes to decide that every job
  is to be skipped (goal: under 10 s for 1M), with its peak RSS.

    python benchmarks/million.py [--jobs 1000000] [--dir /var/tmp] [--variants]

``--variants`` resumes three more times, with the event stream off, with the cycle
collector off (``gc.disable()``, for the measure only) and with both: where a resume's
time goes.

The workdir goes under ``--dir`` (a disk: tmpfs would hold a million folders in RAM)
and is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

PHASE = textwrap.dedent(
    """
    import gc, os, resource, sys, time
    os.environ["XQUEUE_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    import anyio
    from xqueue import Xqueue

    async def main(n, wd, phase):
        events = "no-events" not in phase
        if "no-gc" in phase:
            gc.disable()
        q = Xqueue(
            forks=64, workdir=wd, handle_signals=False, error_strategy="ignore", events=events
        )
        marks = []

        async def watch():
            step, seen = max(n // 10, 1), 0
            while True:
                done = q.statistics().done
                if done >= seen + step or done == n:
                    marks.append((time.perf_counter(), done))
                    seen = done
                    if done == n:
                        return
                await anyio.sleep(0.2)

        t = time.perf_counter()
        for i in range(n):
            await q.feed(["true", str(i)])
        fed = time.perf_counter() - t
        t_run = time.perf_counter()
        async with anyio.create_task_group() as tg:
            if phase == "run":
                tg.start_soon(watch)
            await q.run_until_complete()
        ran = time.perf_counter() - t_run
        counts = q.statistics().counts
        assert counts == {"finished": n}, counts
        if phase.startswith("resume"):
            skipped = sum(1 for j in q.jobs if j.reason == "succeeded in an earlier run")
            assert skipped == n, f"only {skipped} of {n} were skipped"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rates, last = [], (t_run, 0)
        for when, done in marks:
            if when > last[0]:
                rates.append(round((done - last[1]) / (when - last[0])))
            last = (when, done)
        print(f"{phase}: fed in {fed:.1f} s, ran in {ran:.1f} s, peak RSS {rss:.0f} MB")
        if rates:
            print(f"  jobs/s in each tenth of the run: {rates}")

    anyio.run(main, int(sys.argv[1]), sys.argv[2], sys.argv[3])
    """
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--variants", action="store_true", help="also resume without events, gc")
    args = ap.parse_args()
    top = tempfile.mkdtemp(prefix="xq-million-", dir=args.dir)
    wd = os.path.join(top, "wd")
    try:
        phases = ["run", "resume"]
        if args.variants:
            phases += ["resume no-events", "resume no-gc", "resume no-events no-gc"]
        for phase in phases:
            subprocess.run([sys.executable, "-c", PHASE, str(args.jobs), wd, phase], check=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
