"""The state table: every legal move is allowed, everything else raises."""

from __future__ import annotations

import pytest

from xqueue import InvalidTransitionError, Job, JobStatus
from xqueue.states import TRANSITIONS

S = JobStatus


def test_final_states_are_terminal() -> None:
    for status in S:
        assert status.is_final == (TRANSITIONS[status] == frozenset())


def test_normal_life_of_a_job() -> None:
    job = Job(0, ["true"])
    for new in (
        S.QUEUED,
        S.SUBMITTING,
        S.SUBMITTED,
        S.RUNNING,
        S.RETRYING,
        S.QUEUED,
        S.SUBMITTING,
        S.SUBMITTED,
        S.FINISHED,
    ):
        job.transition(new)
    assert job.status is S.FINISHED


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ([], S.RUNNING),  # INIT cannot run without being queued or adopted
        ([S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.RUNNING, S.FINISHED], S.RUNNING),  # final is final
        ([S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.RUNNING], S.QUEUED),  # must go through RETRYING
        ([S.QUEUED, S.SUBMITTING, S.SKIPPED], S.QUEUED),
        ([S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.KILLED], S.RETRYING),
        ([S.QUEUED], S.SUBMITTED),  # a submission goes through SUBMITTING,
    ],
)
def test_illegal_transitions_raise(path: list[JobStatus], bad: JobStatus) -> None:
    job = Job(7, ["true"], name="n")
    for status in path:
        job.transition(status)
    before = job.status
    with pytest.raises(
        InvalidTransitionError,
        match=f"job 7 \\(n\\): illegal transition {before.name} -> {bad.name}",
    ):
        job.transition(bad)
    assert job.status is before  # unchanged


def test_the_fast_names_are_the_members() -> None:
    """``S`` (and the engine's ``_Run``) repeat the enums' members for speed: every member,
    the same object, nothing else."""
    from xqueue.engine import RunState, _Run
    from xqueue.states import S

    for alias, enum_class in ((S, JobStatus), (_Run, RunState)):
        names = {n for n in vars(alias) if not n.startswith("_")}
        assert names == set(enum_class.__members__)
        for name, member in enum_class.__members__.items():
            assert getattr(alias, name) is member
