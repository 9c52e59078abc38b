"""``xqueue sweep FILE``: run a parameter sweep file (see ``xqueue.sweep``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from .text import printable

if TYPE_CHECKING:
    from ..sweep import Sweep
    from .stderr import Stderr


def add_parser(sub: Any) -> None:
    """The ``sweep`` subcommand: its file, the queue options ``run`` has, ``--dry-run``."""
    from .commands import queue_arguments

    sweep = sub.add_parser(
        "sweep",
        help="run a parameter sweep file (TOML)",
        description="Run every point of a sweep file: its sections one after another, the "
        "groups of a section at once, each point of a group's grid once. Run again on "
        "the same workdir, points that succeeded are not run again.",
    )
    sweep.add_argument("file", help="the sweep file (TOML)")
    sweep.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="list the jobs the sweep would feed, in order, and run nothing",
    )
    queue_arguments(sweep)


def run(args: argparse.Namespace, console: Stderr) -> int:
    """The command; XqueueError for what the user must fix (exit code 2)."""
    from ..sweep import Sweep, run_sweep
    from .commands import EXIT_OK, execute, make_queue

    sweep = Sweep.from_file(args.file)
    # A module next to the file is importable by `call = "module:function"`; the calls'
    # runner gets the same path. Last on the path, and only for a sweep with calls: first,
    # a `random.py` or `queue.py` beside the file was what the controller itself imported.
    folder = os.path.dirname(os.path.abspath(args.file))
    if folder not in sys.path and any(g.call for s in sweep.sections for g in s.groups):
        sys.path.append(folder)
    # Before the queue takes (or makes) the workdir; and for a dry run, which is how a
    # file is checked before it runs (it listed what the run then refused).
    sweep.check(args.file, sweep.slots)
    if args.dry_run:
        show(sweep)
        return EXIT_OK
    queue = make_queue(args, console, slots=sweep.slots)

    async def go() -> None:
        await run_sweep(sweep, queue)

    return execute(queue, console, go)


def show(sweep: Sweep) -> None:
    """One line per job the sweep would feed: index, section, name, and what it runs
    (a list command as a shell would read it, so that it can be pasted)."""
    import shlex

    for index, point in enumerate(sweep.points()):
        if point.group.call is not None:
            what = f"call {point.group.call}(**{dict(point.params)!r})"
        else:
            command = point.command()[0]
            what = command if isinstance(command, str) else shlex.join(command)
        fields = (str(index), point.section.name, point.name, what)
        sys.stdout.write("\t".join(printable(f) for f in fields) + "\n")
