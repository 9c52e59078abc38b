"""Run one scheduler command (sbatch, squeue, qsub ...) and map its failure to our errors.

Backends build argv lists (never shell strings) and call ``run_command``. A command that
exits non-zero raises ``SchedulerCommandError`` carrying the command's own stderr, so the
user sees the scheduler's words ("invalid partition specified"), not ours. Timeouts and
errors that a controller under load produces (socket timeouts, "try again") are marked
transient so callers can retry them instead of failing jobs; those that leave open
whether the controller acted on the request (it timed out while answering) are also
marked ``ambiguous``, which for a submission means the job may exist already.

``read_output`` is the one boundary where a command's answer is parsed: whatever a
parser raises on an answer it cannot read becomes ``SchedulerOutputError``.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from ..errors import SchedulerError, SchedulerOutputError
from ._proc import signal_groups

T = TypeVar("T")

_TRANSIENT = re.compile(
    r"timed? ?out|try again|temporarily|unable to contact|connection refused|"
    r"resource temporarily unavailable|slurm_load_jobs error|socket|"
    r"failed receiving gdi request",
    re.IGNORECASE,
)
# Failures after the request may have reached the controller: it may have acted on it
# (queued the job) and only the answer was lost. "Socket timed out on send/recv" is
# Slurm's, "failed receiving gdi request response" SGE's (syncron message receive
# timeout). A refused connection, by contrast, proves nothing was received.
_AMBIGUOUS = re.compile(
    r"timed? ?out|timeout|send/recv|failed receiving|connection reset|broken pipe|"
    r"unexpected eof|zero bytes",
    re.IGNORECASE,
)


class SchedulerCommandError(SchedulerError):
    """A scheduler command failed; ``stderr`` holds what the scheduler itself said.

    ``returncode`` is None when we gave up waiting for the command ourselves.
    """

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.transient = returncode is None or bool(_TRANSIENT.search(self.stderr))
        self.ambiguous = returncode is None or bool(_AMBIGUOUS.search(self.stderr))
        what = "timed out" if returncode is None else f"exited {returncode}"
        detail = f": {self.stderr}" if self.stderr else ""
        super().__init__(f"{shlex.join(self.argv[:2])} {what}{detail}")


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


def describe(argv: Sequence[str], limit: int = 120) -> str:
    """The command line for a message, cut short (a query may list thousands of ids)."""
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_output(argv: Sequence[str], output: str, parse: Callable[[str], T]) -> T:
    """``parse(output)``, with any failure to read it raised as ``SchedulerOutputError``.

    Parsers raise what comes naturally on input they do not understand (ValueError,
    ``xml.etree.ElementTree.ParseError``, which is a SyntaxError, a missing key); none
    of that may escape a backend as anything but a failed command, which the engine
    counts and survives, instead of ending the whole run.
    """
    try:
        return parse(output)
    except (ValueError, LookupError, TypeError, SyntaxError, AttributeError) as exc:
        raise SchedulerOutputError(describe(argv), output, str(exc)) from exc


async def run_command(
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> CommandResult:
    """Run ``argv`` and return its output; raise ``SchedulerCommandError`` on failure.

    The command leads a session of its own, and a command cut short (no answer within
    ``timeout``, or the caller cancelled) is ended with everything it started: sites
    wrap ``squeue`` or ``qsub`` in scripts, and a hung script's children would otherwise
    outlive it, one more each time the query is tried again."""
    full_env = {**os.environ, **env} if env else None
    try:
        # Shielded: asyncio forks, then waits for the pipes; a cancel in between would
        # kill the command alone (not its session) and return no process to end it with.
        with anyio.CancelScope(shield=True):
            process = await anyio.open_process(
                list(argv),
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
    except FileNotFoundError:
        raise SchedulerError(
            f"{argv[0]!r} not found: is the scheduler's client installed and on PATH?"
        ) from None
    out: list[bytes] = []
    err: list[bytes] = []
    try:
        with anyio.fail_after(timeout):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain, process.stdout, out)
                tg.start_soon(_drain, process.stderr, err)
                if process.stdin is not None and input is not None:
                    async with process.stdin:
                        try:
                            await process.stdin.send(input.encode())
                        except anyio.BrokenResourceError:
                            pass  # it ended, or closed its input, without reading it all
                await process.wait()
    except TimeoutError:
        signal_groups([process.pid], signal.SIGKILL)  # the session it led
        raise SchedulerCommandError(argv, None, f"no answer within {timeout:g}s") from None
    except BaseException:
        signal_groups([process.pid], signal.SIGKILL)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
    assert process.returncode is not None
    result = CommandResult(
        process.returncode,
        b"".join(out).decode(errors="replace"),
        b"".join(err).decode(errors="replace"),
    )
    if check and result.returncode != 0:
        raise SchedulerCommandError(argv, result.returncode, result.stderr or result.stdout)
    return result


async def _drain(stream: Any, into: list[bytes]) -> None:
    if stream is not None:
        into.extend([chunk async for chunk in stream])
