"""A million ``true`` jobs through the API, then a resumed run over the same workdir.

Three figures the issue sets goals for, each phase in a fresh process so nothing else
inflates its memory:

- **run**: N jobs fed and run on the local scheduler (forks 64): the controller's peak
  RSS (goal: at most 1 GB for 1M), and the rate in each tenth of the run, so a cost per
  tick that grew with the finished jobs would show as a falling rate;
- **resume**: the same N jobs fed again on the same workdir, all of them succeeded
  before: how long feeding takes, and how long the run takes to decide that every job
  is to be skipped (goal: under 10 s for 1M), with its peak RSS. It reads the index of
  successes the run wrote as it ended (``successes.idx``); ``--variants`` also resumes
  without it (``no-index``: removed first), deciding from the journal.

    python benchmarks/million.py [--jobs 1000000] [--dir /var/tmp] [--variants]
    python benchmarks/million.py --floor [--jobs 1000000]

``--variants`` resumes four more times: without the index, with the event stream off,
with the cycle collector off (``gc.disable()``, for the measure only) and with both:
where a resume's time goes.

``--floor`` runs no queue and reads no disk: three loops of ``await`` on a coroutine per
job, each in a fresh process, doing a little more of what a resume must do for each job
with xqueue's own functions: make the ``Job``; then also its identity check (the folder's
slug, the spec text, its digest, one lookup in a dict made beforehand); then also the two
event lines a skipped job gets; then ("bare") that last loop without the coroutine, the
per-job work alone. What is left of the goal once the per-job work is paid.

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
        if "no-index" in phase and os.path.exists(os.path.join(wd, "successes.idx")):
            os.remove(os.path.join(wd, "successes.idx"))
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


FLOOR = textwrap.dedent(
    """
    import gc, sys, time
    import anyio
    from xqueue.events import _line, _stamp
    from xqueue.job import Job
    from xqueue.records import digest
    from xqueue.workdir import job_spec, slug

    n, step = int(sys.argv[1]), sys.argv[2]
    jobs, lines, known = [], [], {}
    if step != "jobs":
        for i in range(n):
            job = Job(i, ["true", str(i)])
            known[f"{i}-{slug(job.name)}"] = digest(job_spec(job).encode())
        del job
    gc.collect()

    def one(argv):
        job = Job(len(jobs), argv)
        jobs.append(job)
        if step == "jobs":
            return job
        folder = f"{job.index}-{slug(job.name)}"
        job.dir = "/nowhere/" + folder
        if known.pop(folder) == digest(job_spec(job).encode()):
            job.rc, job.attempt, job.reason = 0, 1, "succeeded in an earlier run"
        if step in ("events", "bare"):
            stamp = _stamp(int(time.time() * 1000))
            lines.append(_line(stamp, "job_init", job))
            lines.append(_line(stamp, "job_succeeded", job))
        return job

    async def feed(argv):
        return one(argv)

    async def main():
        start = time.perf_counter()
        if step == "bare":  # the work of "events" without a coroutine per job
            for i in range(n):
                one(["true", str(i)])
        else:
            for i in range(n):
                await feed(["true", str(i)])
        print(f"floor, {step}: {time.perf_counter() - start:.2f} s for {n} jobs")

    anyio.run(main)
    """
)
FLOOR_STEPS = ("jobs", "identity", "events", "bare")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--variants", action="store_true", help="also resume without events, gc")
    ap.add_argument("--floor", action="store_true", help="only the per-job floor of a resume")
    args = ap.parse_args()
    if args.floor:
        for step in FLOOR_STEPS:
            subprocess.run([sys.executable, "-c", FLOOR, str(args.jobs), step], check=True)
        return
    top = tempfile.mkdtemp(prefix="xq-million-", dir=args.dir)
    wd = os.path.join(top, "wd")
    try:
        phases = ["run", "resume"]
        if args.variants:
            phases += [
                "resume no-index",
                "resume no-events",
                "resume no-gc",
                "resume no-events no-gc",
            ]
        for phase in phases:
            subprocess.run([sys.executable, "-c", PHASE, str(args.jobs), wd, phase], check=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
