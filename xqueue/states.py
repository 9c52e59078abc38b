"""Job states and the table of legal moves between them.

The table is the single source of truth: ``Job.transition`` refuses anything not
listed, so a bug that would skip a state (and so skip its hook) fails loudly.
"""

from __future__ import annotations

import enum
from typing import Final


class JobStatus(enum.Enum):
    """Where a job is in its life; ``is_final`` states never change again in a run."""

    INIT = "init"  # fed, not yet in the queue
    WAITING = "waiting"  # held until every job it runs after (``feed(after=...)``) succeeded
    QUEUED = "queued"  # waiting for a free slot (forks)
    SUBMITTING = "submitting"  # being submitted, or looked up after an unknown outcome
    SUBMITTED = "submitted"  # accepted by the scheduler, not known to run yet
    RUNNING = "running"
    RETRYING = "retrying"  # an attempt failed and another one will follow
    FINISHED = "finished"  # return code 0
    FAILED = "failed"  # failed for good (non-zero rc, lost, refused by the scheduler)
    KILLED = "killed"  # killed on request, or cancelled before it could run
    SKIPPED = "skipped"  # never run: a plugin vetoed it, or a job it runs after did not succeed

    # Members are singletons compared by identity: hashing them by identity too (in C)
    # keeps the engine's per-state tables cheap; Enum's own hash is a Python call.
    __hash__ = object.__hash__

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    @property
    def is_active(self) -> bool:
        """True while the scheduler holds (or may hold) the job: it counts against ``forks``."""
        return self in ACTIVE


class S:
    """``JobStatus``'s members as plain class attributes, for the engine's hot paths. On
    Python 3.10 and 3.11 ``JobStatus.QUEUED`` passes through ``EnumType.__getattr__``, at
    ten times the cost of ``S.QUEUED``, and every move of every job reads a few."""

    INIT: Final = JobStatus.INIT
    WAITING: Final = JobStatus.WAITING
    QUEUED: Final = JobStatus.QUEUED
    SUBMITTING: Final = JobStatus.SUBMITTING
    SUBMITTED: Final = JobStatus.SUBMITTED
    RUNNING: Final = JobStatus.RUNNING
    RETRYING: Final = JobStatus.RETRYING
    FINISHED: Final = JobStatus.FINISHED
    FAILED: Final = JobStatus.FAILED
    KILLED: Final = JobStatus.KILLED
    SKIPPED: Final = JobStatus.SKIPPED


_FINAL = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.KILLED, JobStatus.SKIPPED})
ACTIVE = frozenset({JobStatus.SUBMITTING, JobStatus.SUBMITTED, JobStatus.RUNNING})
"""The states of ``is_active``, for a hot path to test without a property call."""
ACTIVE_RECORDS = frozenset(status.value for status in ACTIVE)
"""The ``status`` of a record whose job its run may have left running."""
FINISHED_RECORD: Final = JobStatus.FINISHED.value
"""The ``status`` of a success's record, read without ``Enum.value`` (a property): a
resume asks it of every job it is fed."""

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # INIT -> FINISHED: an earlier run with the same workdir already succeeded.
    # INIT -> SUBMITTING: an earlier run may have started it; it is looked up first.
    # INIT -> SKIPPED: a job it runs after had already failed (or was killed) when it was fed.
    S.INIT: frozenset({S.QUEUED, S.WAITING, S.FINISHED, S.SUBMITTING, S.KILLED, S.SKIPPED}),
    S.WAITING: frozenset({S.QUEUED, S.SKIPPED, S.KILLED}),
    S.QUEUED: frozenset({S.SUBMITTING, S.KILLED}),
    # SUBMITTING -> QUEUED: a lookup found the submission never happened (-> WAITING: and
    # a job it runs after has not succeeded in this run yet).
    S.SUBMITTING: frozenset(
        {S.SUBMITTED, S.QUEUED, S.WAITING, S.FAILED, S.RETRYING, S.KILLED, S.SKIPPED}
    ),
    S.SUBMITTED: frozenset({S.RUNNING, S.FINISHED, S.FAILED, S.RETRYING, S.KILLED}),
    S.RUNNING: frozenset({S.FINISHED, S.FAILED, S.RETRYING, S.KILLED}),
    S.RETRYING: frozenset({S.QUEUED, S.KILLED}),
    S.FINISHED: frozenset(),
    S.FAILED: frozenset(),
    S.KILLED: frozenset(),
    S.SKIPPED: frozenset(),
}


def can_transition(old: JobStatus, new: JobStatus) -> bool:
    return new in TRANSITIONS[old]
