"""Pure parsers for Slurm's output, tested on output captured from a real cluster.

Formats are always requested explicitly (``squeue -o '%i|%T|%r|%E'``, ``sacct -P -o ...``),
so a user's ``SQUEUE_FORMAT`` or a site's defaults cannot change what is parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..failures import FailureClass
from ..scheduler import JobState
from ..states import JobStatus

SQUEUE_FORMAT = "%i|%T|%r|%E"
SACCT_FIELDS = "JobID,State,ExitCode"

# States in which Slurm still holds the job (it may run, or run again).
HELD = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    }
)
# Ended normally: the wrapper's return code file has the verdict.
ENDED = frozenset({"COMPLETED", "FAILED"})
# Ended by Slurm itself, usually before the wrapper could write a return code: why, in
# words and as a failure class.
_ENDED_BY_SLURM = {
    "CANCELLED": ("cancelled in Slurm", FailureClass.KILLED),
    "TIMEOUT": ("walltime exceeded (Slurm TIMEOUT)", FailureClass.TIMEOUT),
    "OUT_OF_MEMORY": ("out of memory (Slurm OUT_OF_MEMORY)", FailureClass.OOM),
    "NODE_FAIL": ("its node failed (Slurm NODE_FAIL)", FailureClass.NODE_FAIL),
    "BOOT_FAIL": ("its node failed to boot (Slurm BOOT_FAIL)", FailureClass.NODE_FAIL),
    "PREEMPTED": ("preempted (Slurm PREEMPTED)", FailureClass.PREEMPTED),
    "DEADLINE": ("deadline reached (Slurm DEADLINE)", FailureClass.KILLED),
    "REVOKED": ("revoked by a sibling cluster (Slurm REVOKED)", FailureClass.KILLED),
}
# What slurmstepd writes into a job's output when it ends a step for its memory: the
# accounting poll (JobAcctGatherParams=OverMemoryKill: "StepId=12.batch exceeded memory
# limit (329953280 > 104857600), being killed") or the cgroup's OOM killer ("Detected 1
# oom-kill event(s) in StepId=12.batch"). Such a job ends FAILED (signal 9), or
# OUT_OF_MEMORY where cgroups count the kills: this line is the evidence of the first.
_MEMORY_KILL = re.compile(r"exceeded (?:job |step )?memory limit|oom-kill event", re.IGNORECASE)
NEVER_SATISFIED = "DependencyNeverSatisfied"
# Pending reasons that only a changed request (or an administrator) removes: the job asks
# more than its partition's nodes or limits give, or what its account or QOS may not
# (Slurm's "job reason codes"). Slurm that does not enforce partition limits at submission
# (EnforcePartLimits=NO) accepts such a job and keeps it pending.
STUCK_REASONS = frozenset(
    {
        "PartitionConfig",
        "PartitionTimeLimit",
        "PartitionNodeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "AccountNotAllowed",
        "QOSNotAllowed",
    }
)

# A job id as squeue and sacct print it: ``12``, ``12_3``, ``12_[1-4%2]``, ``12+0`` (a
# heterogeneous job's component). A line that starts otherwise is not an answer to the
# format we asked for, and a parser that skipped it would report the job as gone.
_JOBID = re.compile(r"\d+(?:_\d+|_\[[\d,%-]+\]|\+\d+)?")
_STATE = re.compile(r"[A-Z_]+")
_EXIT = re.compile(r"\d+:\d+")


def _fields(line: str, count: int) -> list[str]:
    """The first ``count`` ``|``-separated fields of a line, whose id and state are checked."""
    parts = line.strip().split("|")
    if len(parts) < count or not _JOBID.fullmatch(parts[0]):
        raise ValueError(f"not a job line: {line.strip()[:80]!r}")
    if not _STATE.fullmatch(parts[1].strip().partition(" ")[0]):
        raise ValueError(f"not a job state: {parts[1][:40]!r}")
    return parts


@dataclass(frozen=True)
class SlurmRow:
    state: str
    reason: str = ""
    exit_code: str = ""
    dependency: str = ""
    """squeue's ``%E``: each dependency left, marked ``(unfulfilled)`` or ``(failed)``."""

    @property
    def never_satisfied(self) -> bool:
        """Whether it waits (or waited) on a dependency that can never be met. The
        reason alone does not say: Slurm that cancels such a job as it is submitted
        leaves its stale pending reason ("Resources"), and it was retried as cancelled."""
        return self.reason == NEVER_SATISFIED or _dependency_failed(self.dependency)


def _dependency_failed(dependency: str) -> bool:
    """Whether a ``%E`` list can no longer be met: one of ``a,b`` (all needed) failed, or
    every one of ``a?b`` (any will do)."""
    if "?" in dependency:
        return all("(failed)" in part for part in dependency.split("?"))
    return "(failed)" in dependency


def parse_jobid(stdout: str) -> str:
    """The id ``sbatch --parsable`` printed (``id`` or ``id;cluster``); ValueError if none."""
    for line in reversed(stdout.strip().splitlines()):
        head = line.strip().split(";", 1)[0]
        if head.isdigit():
            return head
    raise ValueError(f"no job id in sbatch output {stdout!r}")


def expand_ids(jid: str) -> list[str]:
    """``12_[2-4%2]`` or ``12_[1,3]`` (elements not yet split off an array) as element ids."""
    base, sep, rest = jid.partition("_[")
    if not sep:
        return [jid]
    ids: list[str] = []
    for part in rest.rstrip("]").split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            ids.extend(f"{base}_{i}" for i in range(int(first), int(last or first) + 1))
    return ids


def parse_squeue(stdout: str) -> dict[str, SlurmRow]:
    """``squeue -h -r -o '%i|%T|%r|%E'``: element ids (``12_3``) map to their own row.

    Elements of an array that were never split off its record (still pending, or
    cancelled while pending) appear under the array's bare id (``12``): see ``lookup``.
    """
    rows: dict[str, SlurmRow] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = _fields(line, 3)
        dependency = parts[3].strip() if len(parts) > 3 else ""
        row = SlurmRow(parts[1].strip(), parts[2].strip(), dependency=dependency)
        rows.update(dict.fromkeys(expand_ids(parts[0]), row))
    return rows


def parse_my_jobs(stdout: str) -> dict[str, tuple[SlurmRow, str]]:
    """``squeue -o '%i|%T|%r|%k'``: id -> (row, comment); the comment may hold ``|``."""
    found: dict[str, tuple[SlurmRow, str]] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = _fields(line, 4)
        row = SlurmRow(parts[1].strip(), parts[2].strip())
        comment = "|".join(parts[3:]).strip()
        found.update(dict.fromkeys(expand_ids(parts[0]), (row, comment)))
    return found


def lookup(rows: dict[str, SlurmRow], jid: str) -> SlurmRow | None:
    """The row of a job or array element (an unsplit element shares its array's row)."""
    row = rows.get(jid)
    if row is None and "_" in jid:
        row = rows.get(jid.split("_", 1)[0])
    return row


def parse_sacct(stdout: str) -> dict[str, SlurmRow]:
    """``sacct -n -P -X -o JobID,State,ExitCode``; ``CANCELLED by 0`` keeps its first word."""
    rows: dict[str, SlurmRow] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = _fields(line, 3)
        if not _EXIT.fullmatch(parts[2].strip()):
            raise ValueError(f"not an exit code: {parts[2][:40]!r}")
        state, _, by = parts[1].partition(" ")
        rows.update(dict.fromkeys(expand_ids(parts[0]), SlurmRow(state, by, parts[2])))
    return rows


def parse_config(stdout: str) -> dict[str, str]:
    """``scontrol show config`` as a dict (``MaxArraySize`` -> ``1001``)."""
    config: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            config[key.strip()] = value.strip()
    if "ClusterName" not in config and "MaxArraySize" not in config:
        raise ValueError("no ClusterName or MaxArraySize line: not a Slurm configuration")
    return config


def exit_status(exit_code: str) -> int | None:
    """A shell-style status from Slurm's ``code:signal`` (a signal gives 128 + signal)."""
    code, _, sig = exit_code.partition(":")
    if sig.isdigit() and int(sig):
        return 128 + int(sig)
    return int(code) if code.isdigit() else None


def terminal_state(row: SlurmRow) -> JobState | None:
    """What a row says when Slurm itself ended the job (or it can never start); else None."""
    never = "dependency can never be satisfied (Slurm DependencyNeverSatisfied); cancelled"
    if row.state == "PENDING" and row.never_satisfied:
        return JobState(JobStatus.FAILED, None, never, retryable=False, failure=FailureClass.KILLED)
    ended = _ENDED_BY_SLURM.get(row.state)
    if ended is None:
        return None
    why, failure = ended
    if row.state == "CANCELLED":
        if row.never_satisfied:
            return JobState(JobStatus.FAILED, None, never, retryable=False, failure=failure)
        if row.reason.startswith("by "):  # sacct says who; squeue keeps a stale pending reason
            why = f"{why} ({row.reason})"
        return JobState(JobStatus.KILLED, None, why, failure=failure)
    return JobState(JobStatus.FAILED, exit_status(row.exit_code), why, failure=failure)


def memory_kill(log: str) -> str | None:
    """The line of a job's Slurm output saying Slurm ended it for its memory, if any."""
    for line in log.splitlines():
        if _MEMORY_KILL.search(line):
            return line.strip()
    return None


def accounting_state(row: SlurmRow) -> JobState | None:
    """A verdict from a ``sacct`` row for a job whose wrapper left no return code."""
    if row.state in HELD:
        return None
    if row.state in ENDED:
        rc = exit_status(row.exit_code)
        why = f"return code from sacct ({row.state}); the wrapper wrote none"
        if row.state == "COMPLETED" and rc == 0:
            return JobState(JobStatus.FINISHED, 0, why)
        if not rc:  # FAILED with "0:0": never a success; Slurm gave no code
            rc = None
            why = (
                f"Slurm ended it as {row.state} with exit code {row.exit_code} (sacct); "
                "the wrapper wrote no return code"
            )
        return JobState(JobStatus.FAILED, rc, why)
    return terminal_state(row)


# scancel -v, for each id it could not signal: "scancel: error: Kill job error on job id
# 12_3: Job/step already completing or completed" (it ended: its script exited) or
# "...: Invalid job id specified" (purged, long gone).
_ALREADY_ENDED = re.compile(
    r"Kill job error on job id (\S+): "
    r"(?:Job/step already completing or completed|Invalid job id specified)"
)


def already_ended(stderr: str) -> set[str]:
    """The ids ``scancel -v`` said it did not signal because they had ended."""
    return set(_ALREADY_ENDED.findall(stderr))
