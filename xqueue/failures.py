"""Why an attempt failed, as one small enum every backend maps its own reasons onto.

A retry policy (``xqueue.retry``) acts on the class, not on backend words: an OOM is
retried with more memory whether Slurm said ``OUT_OF_MEMORY``, Slurm's accounting
killed the step for exceeding ``--mem``, or SGE's qmaster enforced ``h_vmem``. A class
is only claimed on evidence; a job that died from a signal with nothing to say why is
``NONZERO_EXIT`` (a local rc of 137 may be the kernel's OOM killer, or anyone's
``kill -9``).
"""

from __future__ import annotations

import enum


class FailureClass(enum.Enum):
    """What made an attempt fail (``job.failure``, ``"failure"`` in the job's record)."""

    OOM = "OOM"
    """It used more memory than it asked for, and the backend says so."""
    TIMEOUT = "TIMEOUT"
    """It ran past its walltime (or the ``timeout`` option) and was stopped."""
    PREEMPTED = "PREEMPTED"
    """The backend took its resources for other work (Slurm PREEMPTED)."""
    NODE_FAIL = "NODE_FAIL"
    """The machine it ran on failed or became unreachable (Slurm NODE_FAIL, an SSH server
    marked down)."""
    SUBMIT_FAILED = "SUBMIT_FAILED"
    """The backend refused the submission (a bad option, a program not found)."""
    NONZERO_EXIT = "NONZERO_EXIT"
    """It exited with a non-zero code (or a signal no backend explained)."""
    KILLED = "KILLED"
    """It was killed outside xqueue (``scancel``, ``qdel``, ``docker stop``)."""
    VANISHED = "VANISHED"
    """It ended without a return code and the backend cannot tell how (purged, lost)."""

    @classmethod
    def parse(cls, value: FailureClass | str) -> FailureClass:
        """A class from itself or its name, any case (``"oom"``, ``"NODE_FAIL"``)."""
        if isinstance(value, FailureClass):
            return value
        try:
            return cls[str(value).strip().upper().replace("-", "_")]
        except KeyError:
            raise ValueError(value) from None


# The classes a backend establishes on its own evidence; a wrapper's return code that
# the same evidence explains keeps the class (a step killed at its limit still exits,
# and so does one cancelled from outside: scancel, qdel, condor_rm; its 143 was the
# cancel's doing, and a retry must not run what someone deliberately stopped).
BACKEND_CLASSES = frozenset(
    {
        FailureClass.OOM,
        FailureClass.TIMEOUT,
        FailureClass.PREEMPTED,
        FailureClass.NODE_FAIL,
        FailureClass.KILLED,
    }
)


def timed_out(seconds: float, detail: str = "") -> str:
    """The reason of a job stopped at its time limit, the same words on every backend."""
    limit = f"{seconds:g}" if isinstance(seconds, float) else str(seconds)
    return f"timed out after {limit} s" + (f" ({detail})" if detail else "")
