"""A controller for tests to kill: runs one job list through xqueue, by the API or the CLI.

tests/test_exactly_once.py and tests/test_shutdown.py start it as a real subprocess so
they can SIGKILL it at any point, type Ctrl-C on its terminal or send it SIGTERM and
SIGHUP, and start it again on the same workdir, as a user (or a crashed machine) would.

    fault_driver.py api JOBS -w WORKDIR [--backend asyncio|trio] [-f N] [-e STRATEGY]
                        [-r N] [-s SCHEDULER] [-o KEY=VALUE]... [--phase FILE]
                        [--result FILE] [--plugin NAME] [--kill-first]
    fault_driver.py cli JOBS -w WORKDIR [-f N] [-e STRATEGY] [-r N] [-s SCHEDULER]
                        [-o KEY=VALUE]...

JOBS holds one shell command per line, as ``xqueue run`` reads it, so both modes run
the very same jobs. The api mode appends "feeding", "running" and "ended" to --phase
as it gets there (a test can aim a kill at a phase) and writes what it saw to --result
as JSON: every job's status, and the exception the run raised, if any (exit code 3
then, 0 otherwise). The cli mode execs ``python -m xqueue run``: the pid stays the
same, so a signal meant for the controller reaches the CLI itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from xqueue import Job, JobStatus, Xqueue, hookimpl


class HangsInOnJobKilled:
    """A plugin whose on_job_killed never returns."""

    @hookimpl
    async def on_job_killed(self) -> None:
        await anyio.sleep_forever()


class HangsInOnShutdown:
    """A plugin whose on_shutdown never returns."""

    @hookimpl
    async def on_shutdown(self) -> None:
        await anyio.sleep_forever()


PLUGINS = {cls.__name__: cls for cls in (HangsInOnJobKilled, HangsInOnShutdown)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fault_driver.py")
    parser.add_argument("mode", choices=("api", "cli"))
    parser.add_argument("jobs", help="file with one shell command per line")
    parser.add_argument("-w", "--workdir", required=True)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("-f", "--forks", type=int, default=8)
    parser.add_argument("-e", "--error-strategy", default="retry")
    parser.add_argument("-r", "--retries", type=int, default=3)
    parser.add_argument("-s", "--scheduler", default="local")
    parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--phase", help="file to append the phase reached to")
    parser.add_argument("--result", help="file to write the JSON outcome to")
    parser.add_argument("--plugin", action="append", default=[], choices=sorted(PLUGINS))
    parser.add_argument(
        "--kill-first", action="store_true", help="kill job 0 (q.kill) once it runs"
    )
    parser.add_argument("--hook-timeout", type=float, default=300.0)
    return parser


def read_commands(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip() and not line.startswith("#")]


def _phase(path: str | None, name: str) -> None:
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{name}\n".encode())
        finally:
            os.close(fd)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside an exception group (on 3.10 too, where the name is missing)."""
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, (list, tuple)):
        return [leaf for sub in inner for leaf in _leaves(sub)]
    return [exc]


def _describe(exc: BaseException | None) -> dict[str, Any] | None:
    if exc is None:
        return None
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "leaves": [{"type": type(e).__name__, "message": str(e)} for e in _leaves(exc)],
    }


def _job_record(job: Job) -> dict[str, Any]:
    return {
        "index": job.index,
        "status": job.status.value,
        "rc": job.rc,
        "attempt": job.attempt,
        "reason": job.reason,
        "jid": job.jid,
    }


async def _kill_when_running(q: Xqueue, job: Job) -> None:
    while job.status is not JobStatus.RUNNING:
        if job.status.is_final:
            return
        await anyio.sleep(0.02)
    await q.kill(job)


async def _run(args: argparse.Namespace, holder: list[Xqueue]) -> None:
    options = dict(pair.partition("=")[::2] for pair in args.option)
    q = Xqueue(
        args.scheduler,
        forks=args.forks,
        workdir=args.workdir,
        error_strategy=args.error_strategy,
        num_retries=args.retries,
        scheduler_opts=options,
        plugins=[PLUGINS[name]() for name in args.plugin],
        hook_timeout=args.hook_timeout,
    )
    holder.append(q)
    _phase(args.phase, "feeding")
    for command in read_commands(args.jobs):
        await q.feed(command)
    _phase(args.phase, "running")
    if args.kill_first and q.jobs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_kill_when_running, q, q.jobs[0])
            await q.run_until_complete()
            tg.cancel_scope.cancel()
    else:
        await q.run_until_complete()
    _phase(args.phase, "ended")


def _api(args: argparse.Namespace) -> int:
    holder: list[Xqueue] = []
    error: BaseException | None = None
    try:
        anyio.run(_run, args, holder, backend=args.backend)
    except BaseException as exc:  # the test wants to see exactly what surfaced
        error = exc
    outcome = {
        "error": _describe(error),
        "jobs": [_job_record(job) for job in holder[0].jobs] if holder else [],
    }
    if args.result:
        tmp = f"{args.result}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(outcome, fh)
        os.replace(tmp, args.result)
    return 0 if error is None else 3


def _cli(args: argparse.Namespace) -> None:
    argv = [sys.executable, "-m", "xqueue", "run", args.jobs, "-w", args.workdir]
    argv += ["-f", str(args.forks), "-e", args.error_strategy]
    if args.error_strategy == "retry":  # -r with another strategy is a usage error
        argv += ["-r", str(args.retries)]
    argv += ["-s", args.scheduler]
    for pair in args.option:
        argv += ["-o", pair]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.mode == "cli":
        _cli(args)
    return _api(args)


if __name__ == "__main__":
    sys.exit(main())
