"""The commands that operate a run from another terminal: ``logs`` and ``cancel`` (and
``status --follow``), their arguments and their exit codes.

Each is synchronous, polls files a few times a second, and stops on Ctrl-C with exit
code 130 and no traceback.
"""

from __future__ import annotations

import argparse
import math
import sys

from .._duration import FORMS

EXIT_SIGINT = 130


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    logs = sub.add_parser(
        "logs",
        help="print a job's output",
        description="Print a job's stdout (or stderr) as it wrote it; --follow prints what "
        "comes until the attempt ends.",
    )
    logs.add_argument("workdir", help="the workdir of a run")
    logs.add_argument("job", help="the job's index, name or folder name")
    logs.add_argument("--stderr", action="store_true", help="its stderr instead of its stdout")
    logs.add_argument("-f", "--follow", action="store_true", help="go on while the job runs")
    logs.add_argument(
        "--attempt", type=int, metavar="N", help="which attempt (default: the latest)"
    )

    cancel = sub.add_parser(
        "cancel",
        help="stop a run, or kill some of its jobs, from another terminal",
        description="Without JOBs, stop the run in progress as its first SIGTERM does. "
        "With JOBs, have the run kill those and go on. With no run in progress, kill the "
        "jobs the workdir records as active on their backend and record them killed.",
    )
    cancel.add_argument("workdir", help="the workdir of a run")
    cancel.add_argument("jobs", nargs="*", metavar="JOB", help="a job's index, name or folder")
    cancel.add_argument(
        "--timeout",
        type=_seconds,
        default=120.0,
        metavar="DURATION",
        help="how long to wait for the run to stop or answer: seconds, or with a unit"
        " (90s, 5m; default 120)",
    )


def _seconds(text: str) -> float:
    """Read as every duration option is (``options.seconds``): ``--timeout 5m`` was
    refused here while ``-o timeout=5m`` was taken."""
    from ..options import seconds  # only when given: status and logs start without it

    try:
        value = seconds(text)
    except (ValueError, OverflowError):
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration above 0 ({FORMS})")
    return value


def dispatch(args: argparse.Namespace) -> int | None:
    """Run one of these commands; None if ``args`` names another."""
    try:
        if args.command == "logs":
            from . import logs

            return logs.run(args.workdir, args.job, args.stderr, args.follow, args.attempt)
        if args.command == "cancel":
            from . import cancel

            return cancel.run(args.workdir, args.jobs, args.timeout, sys.stdout)
        if args.command == "status" and args.follow:
            from . import follow

            return follow.run(args.workdir, args.json)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_SIGINT
    return None
