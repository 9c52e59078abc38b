"""``xqueue run`` on a job list against ``xargs -P`` and GNU parallel, as whole commands.

    python benchmarks/cli_vs_xargs.py [--jobs 2000] [--forks 16] [--repeat 5]
                                      [--dirs /var/tmp,/dev/shm]

The job list has N lines of ``true``. For each folder (a disk one and a tmpfs one by
default: check ``df`` that the first is not tmpfs), the three run one after the other,
their order rotated each round so that none always runs first or last on a loaded
machine; each run gets a fresh folder there, made outside the timing and removed only
once every round has run (see ``_scratch``: a removal just before a run slowed it):

- ``xargs -d '\\n' -n1 -P<forks> sh -c`` reading the list: records nothing;
- ``xargs+files``: the same ``sh`` per line, its output sent to two files in a folder of
  its own, the folders made by one ``mkdir`` (no process more than xargs): the floor of
  any tool that keeps each job's output as xqueue does, on that file system;
- ``parallel -j<forks> --joblog FILE --results DIR/{#}/``: one line per job with its
  exit status, each job's stdout and stderr in a folder of its own (ci/bench-tools.sh
  installs GNU parallel);
- ``xqueue run -f <forks> -w DIR --no-progress``: each job's folder, script, outputs,
  return code, and the run's event stream (the defaults). Plugins installed in the
  environment are not loaded (XQUEUE_DISABLE_PLUGIN_AUTOLOAD), so xqueue alone is timed.

Printed: the median wall time of each, and its rate against xargs' (issue 11's goal:
xqueue at 0.8x xargs' rate or more), against that floor's and against parallel's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _scratch import kept_folders

GOAL = 0.8  # issue 11: xqueue at 0.8x xargs' rate or more
XQUEUE = os.path.join(os.path.dirname(sys.executable), "xqueue")


def commands(tool: str, forks: int, out: str) -> list[str]:
    if tool == "xargs":
        return ["xargs", "-d", "\n", "-n1", f"-P{forks}", "sh", "-c"]
    if tool == "xargs+files":
        # Each line after its number (awk), the folders named by those numbers made first.
        job = 'eval "$2" > "$0/$1/stdout" 2> "$0/$1/stderr"'
        return [
            "sh",
            "-c",
            (
                f'awk \'{{print NR; print}}\' > "$0/list" && cd "$0" && '
                f"awk 'NR % 2' list | xargs mkdir && "
                f'xargs -d "\\n" -n2 -P{forks} sh -c \'{job}\' "$0" < list'
            ),
            out,
        ]
    if tool == "parallel":
        log, results = os.path.join(out, "joblog"), os.path.join(out, "results", "{#}") + "/"
        return ["parallel", "--will-cite", f"-j{forks}", "--joblog", log, "--results", results]
    return [XQUEUE, "run", "-f", str(forks), "-w", os.path.join(out, "wd"), "--no-progress"]


def once(tool: str, jobs: str, forks: int, out: str) -> float:
    env = {**os.environ, "XQUEUE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    with open(jobs) as stdin:
        start = time.perf_counter()
        done = subprocess.run(commands(tool, forks, out), stdin=stdin, capture_output=True, env=env)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{tool} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return wall


def fs_type(path: str) -> str:
    out = subprocess.run(["df", "--output=fstype", path], capture_output=True, text=True)
    return out.stdout.split()[-1] if out.returncode == 0 else "?"


def main(args: argparse.Namespace) -> None:
    tools = ["xargs", "xargs+files", "parallel", "xqueue"]
    if shutil.which("parallel") is None:
        sys.exit("GNU parallel is missing: run ci/bench-tools.sh")
    with tempfile.TemporaryDirectory(prefix="xq-cli-list-") as tmp:
        jobs = os.path.join(tmp, "jobs.txt")
        with open(jobs, "w") as fh:
            fh.write("true\n" * args.jobs)
        print(f"{args.jobs} true jobs, {args.forks} at once, {args.repeat} rounds", flush=True)
        for where in args.dirs.split(","):
            times: dict[str, list[float]] = {t: [] for t in tools}
            with kept_folders(where) as new:
                for r in range(args.repeat):
                    for tool in tools[r % len(tools) :] + tools[: r % len(tools)]:
                        out = new(f"xq-cli-{tool.replace('+', '-')}-")
                        times[tool].append(once(tool, jobs, args.forks, out))
            med = {t: statistics.median(v) for t, v in times.items()}
            print(f"{where} ({fs_type(where)}):", flush=True)
            for tool in tools:
                spread = ", ".join(f"{t:.2f}" for t in times[tool])
                print(
                    f"  {tool:<11} median {med[tool]:6.2f} s ({args.jobs / med[tool]:6.0f} jobs/s)"
                    f"  rate x{med['xargs'] / med[tool]:.2f} of xargs,"
                    f" x{med['xargs+files'] / med[tool]:.2f} of xargs+files,"
                    f" x{med['parallel'] / med[tool]:.2f} of parallel  [{spread}]",
                    flush=True,
                )
            floor = med["xargs"] / med["xargs+files"]
            if floor < GOAL:  # the goal is out of reach of any tool that keeps the output
                print(
                    f"  the floor itself is x{floor:.2f} of xargs here, under the goal's"
                    f" x{GOAL}: this file system's file creation bounds the run",
                    flush=True,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--forks", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dirs", default="/var/tmp,/dev/shm", help="comma-separated folders")
    main(parser.parse_args())
