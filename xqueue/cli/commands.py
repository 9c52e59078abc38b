"""``xqueue run`` and ``xqueue status``: argument parsing, exit codes, wiring."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, BinaryIO

import anyio

from .. import __version__, registry, remote_workdir
from .._suggest import did_you_mean
from ..errors import Interrupted, JobFailedError, XqueueError
from ..queue import ERROR_STRATEGIES, Xqueue
from ..retry import RetryPolicy
from ..states import JobStatus
from . import operate, sweep
from .stderr import Stderr, logging_to, message, summary_line
from .text import NOT_SUCCEEDED

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGINT, EXIT_SIGPIPE, EXIT_SIGTERM = 130, 141, 143
DEFAULT_STRATEGY, DEFAULT_RETRIES = "ignore", 3


class _Parser(argparse.ArgumentParser):
    """argparse's, naming the choice a refused one was likely meant to be: ``xqueue
    stauts`` and ``-e hlt`` got the whole list to read again. Its subcommands' parsers
    are of the same class (argparse makes them so)."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as exc:
            hint = did_you_mean(value, [str(choice) for choice in action.choices or ()])
            if not hint:
                raise
            raise argparse.ArgumentError(action, f"{exc.message}{hint}") from None


def _parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="xqueue", description="Run many jobs on local processes, clusters, servers."
    )
    parser.add_argument("--version", action="version", version=f"xqueue {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run commands, one per line, from a file or stdin",
        description="Run each non-empty line (not starting with #) as a shell command.",
    )
    run.add_argument("file", nargs="?", default="-", help="job list (default: stdin)")
    queue_arguments(run)
    sweep.add_parser(sub)

    status = sub.add_parser(
        "status",
        help="show the jobs of a workdir",
        description="Count a workdir's jobs by state and list those that need attention "
        "(failed, killed, skipped, orphaned by a run that is gone). Writes nothing to the workdir.",
    )
    status.add_argument("workdir", help="the workdir of a run")
    status.add_argument("--json", action="store_true", help="one JSON object per job (JSON lines)")
    status.add_argument("-a", "--all", action="store_true", help="one row per job")
    status.add_argument(
        "--state",
        action="append",
        default=[],
        metavar="STATE",
        help="only jobs in these states (repeatable or comma-separated), e.g. failed,orphaned",
    )
    status.add_argument(
        "-F",
        "--follow",
        action="store_true",
        help="follow the run live from its event stream until it stops (--json: the events)",
    )
    status.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="only jobs fed with this parameter value (repeatable: values of one name are "
        "alternatives, names must all match), e.g. --param decay=0.1",
    )
    operate.add_parsers(sub)

    sub.add_parser("schedulers", help="list the installed schedulers")
    return parser


def _command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    return parser


def queue_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the queue a command runs (``run``, ``sweep``): ``make_queue`` reads them."""
    parser.add_argument(
        "-s", "--scheduler", default="local", help="scheduler name (default: local)"
    )
    parser.add_argument(
        "-f",
        "--forks",
        type=int,
        default=os.cpu_count() or 1,
        help="jobs active at once (default: number of CPUs)",
    )
    parser.add_argument(
        "-w",
        "--workdir",
        default="./.xqueue",
        help="the workdir: each job's folder, the journal, the event stream (default: ./.xqueue)",
    )
    parser.add_argument(
        "-e",
        "--error-strategy",
        choices=ERROR_STRATEGIES,
        default=None,  # told apart from one given: -r alone makes it retry (retry_options)
        help=f"what a failed job does (default: {DEFAULT_STRATEGY}, i.e. run the rest; "
        "retry with -r, see there)",
    )
    parser.add_argument(
        "-r",
        "--retries",
        type=int,
        default=None,
        help=f"attempts after the first, with -e retry (default {DEFAULT_RETRIES}); -r "
        "without -e means -e retry, unless --retry-policy has a rule that gives no count "
        "(-r is then that count)",
    )
    parser.add_argument(
        "--retry-policy",
        metavar="JSON",
        help='what each failure class leads to, e.g. \'{"TIMEOUT": {"walltime": 2}}\'',
    )
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="scheduler option (repeatable, each key once), e.g. -o partition=debug",
    )
    parser.add_argument(
        "--profile",
        metavar="NAME",
        help="scheduler options from a profile of xqueue.toml; -o options win over it",
    )
    parser.add_argument(
        "-p",
        "--plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="enable an installed plugin; -p no:NAME disables one",
    )
    view = parser.add_mutually_exclusive_group()
    view.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show the live view",
    )
    view.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show the live view"
    )
    parser.add_argument(
        "--no-events",
        dest="events",
        action="store_false",
        help="do not write the run's event stream (<workdir>/events.jsonl)",
    )


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``-o KEY=VALUE`` pairs. A key given twice is refused: the last one silently won,
    and what each option would make of several (a flag repeated, a list of devices, a
    submit value) differs by backend; a profile in xqueue.toml takes a list."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise XqueueError(f"scheduler option {pair!r} is not KEY=VALUE")
        if key in options:
            raise XqueueError(
                f"scheduler option {key!r} is given twice ({options[key]!r} and {value!r}): "
                "give it once; for a flag repeated (sbatch's, qsub's -l), give a list in a "
                "profile of xqueue.toml"
            )
        options[key] = value
    return options


def parse_policy(text: str | None) -> RetryPolicy | None:
    """``--retry-policy``, validated as the queue would (``ConfigError`` naming the key)."""
    if text is None:
        return None
    import json

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise XqueueError(f"--retry-policy is not JSON: {exc}") from None
    return RetryPolicy.parse(data)


def retry_options(strategy: str | None, retries: int | None, policy: RetryPolicy | None) -> str:
    """The error strategy a run gets from ``-e``, ``-r`` and ``--retry-policy``.

    ``-r`` was ignored without ``-e retry`` (the default strategy is ignore): ``echo
    "exit 1" | xqueue run -r 3`` made one attempt and said nothing. A user who asks for
    retries wants them, so ``-r`` alone means ``-e retry``, and ``-r`` with ``-e halt``
    or ``-e ignore``, where it would change nothing, is refused. Unless a policy rule
    takes its count from ``-r`` (``"retry"`` or ``"requeue"`` without ``retries``):
    then ``-r`` is that count, with any strategy, and the classes the policy does not
    name keep following ``-e`` and its default, as documented.
    """
    if retries is None:
        return strategy or DEFAULT_STRATEGY
    counted = policy is not None and any(
        rule.action != "stop" and rule.retries is None for rule in policy.rules.values()
    )
    if strategy is None:
        return DEFAULT_STRATEGY if counted else "retry"
    if strategy != "retry" and not counted:
        what = "; no --retry-policy rule takes its count from it" if policy else ""
        raise XqueueError(
            f"-r/--retries {retries} does nothing with -e/--error-strategy {strategy}{what}: "
            "give -e retry, or leave -e out (-r alone means -e retry)"
        )
    return strategy


def read_commands(data: bytes, source: str) -> list[str]:
    """The commands of a job list: one a line, blank lines and ``#`` comments left out.

    Lines end at ``\n`` only (``\r\n`` too, the ``\r`` being stripped with the other
    blanks at the ends): a carriage return inside a line is part of its command, not
    the start of another job. Text that is not UTF-8, or holds a NUL (which no command
    can pass), is an error naming its line, given before anything is made. A byte order
    mark that some editors put first is not part of the first command.
    """
    commands = []
    data = data.removeprefix(b"\xef\xbb\xbf")
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode()
        except UnicodeDecodeError as exc:
            raise XqueueError(
                f"{source}, line {n}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                f"{exc.start + 1}); save the job list as UTF-8"
            ) from None
        if "\0" in line:
            raise XqueueError(
                f"{source}, line {n}: a NUL byte at column {line.index(chr(0)) + 1}, which no "
                "command can pass (is it a text file?)"
            )
        command = line.strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


# The commands whose answer is their standard output (a run's view is on stderr).
_ANSWERS_ON_STDOUT = ("status", "logs", "cancel", "schedulers")
# What a write to a full or closed output raises (not EIO, which a read may raise too).
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EBADF)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser, with its usage (the top level's is no help)
        _command_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    if sys.stdout is None and args.command in _ANSWERS_ON_STDOUT:
        return _say_error(
            f"standard output is closed: `xqueue {args.command}` has nowhere to write; "
            "redirect it (> FILE, or > /dev/null)",
            EXIT_USAGE,
        )
    try:
        if args.command == "schedulers":
            print("\n".join(registry.available()))
            return EXIT_OK
        if args.command in ("status", "logs", "cancel") and remote_workdir.is_url(args.workdir):
            # A gs:// workdir: its local folder, up to date with the bucket.
            args.workdir = remote_workdir.local_folder(args.workdir, pull=args.command != "cancel")
        code = operate.dispatch(args)
        if code is not None:
            return code
        if args.command == "status":
            from . import status

            status.run(args.workdir, args.state, args.all, args.json, args.param)
            return EXIT_OK
        if args.command == "sweep":
            return sweep.run(args, _console())
        return _run(args, _console())
    except BrokenPipeError:
        # The reader went away (``xqueue status --json | head -1``): stop quietly, as
        # other tools do.
        _stdout_to_devnull()
        return EXIT_SIGPIPE
    except OSError as exc:
        if exc.filename is not None or exc.errno not in _WRITE_ERRORS:
            raise
        # Standard output refused a write (a full disk or quota): said in a line, as any
        # error.
        code = _say_error(f"could not write the output: {exc.strerror}", EXIT_FAILED)
        _stdout_to_devnull()
        return code
    except KeyboardInterrupt:
        # A Ctrl-C once the run has stopped (a second one while it said how it ended):
        # the run's own handling is over, so only the printing stops, without a traceback.
        return EXIT_SIGINT
    except XqueueError as exc:
        return _say_error(str(exc), EXIT_USAGE)


def _say_error(text: str, code: int) -> int:
    """Say ``error: text``; ``code``, or 141 if standard error is a pipe nobody reads
    any more (``xqueue run -o bogus=1 2>&1 | head -0`` exited 1, as for a failed job)."""
    try:
        _console().print(message("error", text))
    except BrokenPipeError:
        return EXIT_SIGPIPE
    return code


def _stdout_to_devnull() -> None:
    """Keep the interpreter's final flush of an output that failed from failing again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _console() -> Stderr:
    """Where a run's view and every error go; rich is imported only when it is needed
    (see ``stderr``: ``xqueue status`` and a run without a terminal start faster)."""
    return Stderr()


_CHUNK = 1 << 20
LONGEST_LINE = 16 << 20
"""No job list has a line this long (bytes): the reading stops there."""


def read_job_list(stream: BinaryIO, source: str) -> list[str]:
    """``read_commands`` of what ``stream`` holds, read a chunk at a time: it stops at
    the first NUL byte, and at a line longer than ``LONGEST_LINE``, instead of taking
    everything in first (``< /dev/zero`` or a binary file piped in by mistake was read
    whole, until the OOM killer ended it)."""
    chunks: list[bytes] = []
    line = 0  # bytes of the line under way
    while chunk := stream.read(_CHUNK):
        nul = chunk.find(b"\0")
        if nul >= 0:  # read_commands names its line and column
            chunks.append(chunk[: nul + 1])
            break
        chunks.append(chunk)
        end = chunk.rfind(b"\n")
        line = line + len(chunk) if end < 0 else len(chunk) - end - 1
        if line > LONGEST_LINE:
            lines = sum(c.count(b"\n") for c in chunks) + 1
            raise XqueueError(
                f"{source}, line {lines}: over {LONGEST_LINE >> 20} MiB without a line end: "
                "not a job list (one shell command a line)"
            )
    return read_commands(b"".join(chunks), source)


def _run(args: argparse.Namespace, console: Stderr) -> int:
    if args.file == "-":
        if sys.stdin is None or sys.stdin.isatty():  # None: started with stdin closed
            raise XqueueError(
                "no job list: give a file (xqueue run jobs.txt) or pipe commands on stdin"
            )
        commands = read_job_list(sys.stdin.buffer, "the job list on stdin")
    else:
        try:
            with open(args.file, "rb") as fh:
                commands = read_job_list(fh, f"job list {args.file!r}")
        except OSError as exc:
            raise XqueueError(f"cannot read job list {args.file!r}: {exc.strerror}") from exc
    queue = make_queue(args, console)

    async def go() -> None:
        for command in commands:
            await queue.feed(command)
        try:
            await queue.run_until_complete()
        finally:
            await queue.aclose()

    return execute(queue, console, go)


def make_queue(args: argparse.Namespace, console: Stderr, **extra: Any) -> Xqueue:
    """The queue of ``queue_arguments``' options (and ``extra`` Xqueue arguments), with
    the live view when it is asked for or the console is a terminal."""
    plugins = [p[3:] and f"-{p[3:]}" if p.startswith("no:") else p for p in args.plugin]
    policy = parse_policy(args.retry_policy)
    queue = Xqueue(
        args.scheduler,
        forks=args.forks,
        workdir=args.workdir,
        error_strategy=retry_options(args.error_strategy, args.retries, policy),
        num_retries=DEFAULT_RETRIES if args.retries is None else args.retries,
        retry_policy=policy,
        scheduler_opts=parse_options(args.option),
        profile=args.profile,
        plugins=plugins,
        events=args.events,
        **extra,
    )
    show = console.is_terminal if args.progress is None else args.progress
    if show:  # rich's live display is imported only for it
        from .progress import ProgressView

        queue.hooks.register(ProgressView(queue, console.rich), "xqueue-progress")
    return queue


def execute(queue: Xqueue, console: Stderr, go: Callable[[], Awaitable[object]]) -> int:
    """Run ``go`` (which runs ``queue``), print how it ended, return the exit code.

    The run's warnings are printed by ``console`` too, so that a terminal that is gone
    (a hangup: SSH dropped) makes nothing print a traceback (StderrConsole goes quiet),
    and the code stays the signal's: 129 for the SIGHUP that came with it.
    """
    code = EXIT_OK
    try:
        with logging_to(console):
            anyio.run(go)
    except JobFailedError as exc:
        console.print(message("halted", str(exc)))
        code = EXIT_FAILED
    except Interrupted as exc:
        console.print(message("interrupted", str(exc)))
        code = 128 + exc.signal if exc.signal else EXIT_SIGTERM
    except KeyboardInterrupt as exc:
        # The run's own word on what it left; Python's, from outside a run, has none.
        what = str(exc)
        if not what:
            left = sum(1 for j in queue.jobs if j.status.is_active)
            what = (
                f"{left} job(s) could not be killed and may still run"
                if left
                else "running jobs were killed"
            )
        console.print(message("interrupted", f"Ctrl-C; {what}"))
        code = EXIT_SIGINT
    stats = queue.statistics()
    console.print(
        summary_line(dict(stats.counts), stats.total, stats.elapsed, stats.reused), wrap=True
    )
    if any(stats.counts.get(status.value) for status in NOT_SUCCEEDED):  # rich only then
        from .report import failures_table, print_whole

        print_whole(console.rich, failures_table(queue.jobs, queue.scheduler.shared_fs))
    # Skipped jobs are listed as not succeeded but do not make the code 1 (docs/cli.md):
    # one skipped because a job it runs after failed comes with that failure, and one a
    # plugin vetoed was the plugin's decision, not a job that failed.
    bad = stats.counts.get(JobStatus.FAILED.value, 0) + stats.counts.get(JobStatus.KILLED.value, 0)
    if code == EXIT_OK and bad:
        code = EXIT_FAILED
    if console.pipe_closed:
        # The live view met the closed pipe first: the console went quiet then, and the
        # lines above raised nothing. It is 141 all the same, as without the view.
        return EXIT_SIGPIPE
    return code
