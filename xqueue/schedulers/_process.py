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
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio

from ..errors import SchedulerError, SchedulerOutputError

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
    """Run ``argv`` and return its output; raise ``SchedulerCommandError`` on failure."""
    full_env = {**os.environ, **env} if env else None
    try:
        with anyio.fail_after(timeout):
            proc = await anyio.run_process(
                list(argv),
                input=input.encode() if input is not None else None,
                check=False,
                env=full_env,
                cwd=cwd,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
    except TimeoutError:
        raise SchedulerCommandError(argv, None, f"no answer within {timeout:g}s") from None
    except FileNotFoundError:
        raise SchedulerError(
            f"{argv[0]!r} not found: is the scheduler's client installed and on PATH?"
        ) from None
    result = CommandResult(
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )
    if check and result.returncode != 0:
        raise SchedulerCommandError(argv, result.returncode, result.stderr or result.stdout)
    return result
