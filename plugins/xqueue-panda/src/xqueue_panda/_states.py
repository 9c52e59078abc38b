"""What a PanDA job record means to xqueue: held or not, and how it ended.

PanDA walks a job through ``defined`` (stored), ``assigned``/``waiting``/``activated``
(ready for a pilot), ``sent`` and ``starting`` (a pilot took it), ``running``, then
``holding``/``transferring``/``merging`` (the payload is done, outputs are being
registered) and one of four final states: ``finished``, ``failed``, ``cancelled``
(killed) and ``closed`` (ended by the system, e.g. reassigned). A record is read from the
``JobSpec`` panda-client decodes, whose attributes read ``"NULL"`` when unset.

The job's own return code file (its wrapper's) always wins over what PanDA says; PanDA's
record settles the job only when that file is not there: a pilot that failed before the
payload ran, a payload the pilot killed, a queue whose workers do not share the workdir.
Then the return code is the payload's exit code as the pilot reported it
(``transExitCode``, else ``exeErrorCode``), and the reason lists every error code and
diagnostic PanDA recorded, pilot first, so the user sees the pilot's own words.
"""

from __future__ import annotations

from typing import Any

from xqueue.failures import FailureClass
from xqueue.scheduler import JobState
from xqueue.states import JobStatus

WAITING = frozenset(
    {"pending", "defined", "assigned", "waiting", "activated", "throttled", "sent", "starting"}
)
"""Held by PanDA, the payload not started yet (``sent``/``starting``: a pilot is setting up)."""
RUNNING = frozenset({"running", "holding", "transferring", "merging"})
"""Held by PanDA with the payload running or done and its outputs on their way."""
ENDED = frozenset({"finished", "failed", "cancelled", "closed"})

# (code field, diagnostic field, what to call it), in the order a user should read them.
_ERRORS = (
    ("pilotErrorCode", "pilotErrorDiag", "pilot error"),
    ("exeErrorCode", "exeErrorDiag", "execution error"),
    ("supErrorCode", "supErrorDiag", "supervisor error"),
    ("ddmErrorCode", "ddmErrorDiag", "data management error"),
    ("brokerageErrorCode", "brokerageErrorDiag", "brokerage error"),
    ("jobDispatcherErrorCode", "jobDispatcherErrorDiag", "dispatcher error"),
    ("taskBufferErrorCode", "taskBufferErrorDiag", "task buffer error"),
)


# The pilot error codes whose failure class is known (the pilot's own error table):
# 1213, its walltime limit reached.
PILOT_CLASSES = {1213: FailureClass.TIMEOUT}


def field(spec: Any, name: str) -> Any:
    """An attribute of a decoded JobSpec; None when unset (the client reads ``"NULL"``)."""
    value = getattr(spec, name, None)
    return None if value in (None, "NULL", "") else value


def number(spec: Any, name: str) -> int | None:
    """An integer attribute (PanDA sends some as strings); None when unset or not a number."""
    value = field(spec, name)
    if isinstance(value, bool):
        return None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def diagnostics(spec: Any) -> str:
    """Every error code and diagnostic PanDA recorded for the job, pilot's first."""
    parts = []
    for code_field, diag_field, what in _ERRORS:
        code, diag = number(spec, code_field), field(spec, diag_field)
        if code or diag:
            text = f"{what} {code}" if code else what
            parts.append(f"{text}: {diag}" if diag else text)
    trans = number(spec, "transExitCode")
    if trans:
        parts.append(f"payload exit code {trans}")
    return "; ".join(parts)


def exit_code(spec: Any) -> int | None:
    """The payload's exit status as PanDA recorded it, if it recorded one."""
    for name in ("transExitCode", "exeErrorCode"):
        code = number(spec, name)
        if code:
            return code
    return None


def verdict(spec: Any, kill_requested: bool) -> tuple[bool, JobState | None]:
    """(whether PanDA still holds the job, what PanDA's record says about it).

    A record of an ended job gives the final state the job has if its return code file
    is missing. A job cancelled in PanDA by someone other than this run is failed, not
    retried: someone meant it to stop.
    """
    status = str(field(spec, "jobStatus") or "")
    if status in RUNNING:
        return True, JobState(JobStatus.RUNNING)
    if status not in ENDED:
        # WAITING, or a state this version does not know: held, not "running forever"
        # either, since PanDA itself ends every job it holds.
        return True, None
    why = diagnostics(spec)
    if status == "finished":
        return False, JobState(JobStatus.FINISHED, 0)
    if status == "cancelled":
        if kill_requested:
            return False, JobState(JobStatus.KILLED, None, "killed")
        reason = f"cancelled in PanDA outside this run ({why or 'no diagnostics'})"
        return False, JobState(JobStatus.FAILED, exit_code(spec), reason, retryable=False)
    if status == "closed":
        reason = f"closed by PanDA before it finished ({why or 'no diagnostics'})"
        return False, JobState(JobStatus.FAILED, exit_code(spec), reason)
    reason = f"PanDA job failed: {why or 'no diagnostics recorded'}"
    failure = PILOT_CLASSES.get(number(spec, "pilotErrorCode") or 0)
    return False, JobState(JobStatus.FAILED, exit_code(spec), reason, failure=failure)
