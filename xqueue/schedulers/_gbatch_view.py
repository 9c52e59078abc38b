"""What a Google Cloud Batch listing says of xqueue's jobs: plain data, no client, no I/O.

A tick lists the run's Batch jobs once (``ListJobs``) and, for an array whose task counts
moved, its tasks (``ListTasks``); these types hold what those answers said, and the
functions read an element's id and decide, from the array's state and its task's, whether
Batch still holds it and how it ended. Kept apart from ``gbatch``, which makes the calls.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..scheduler import JobState
from ..states import JobStatus
from . import _gbatch_spec as spec


@dataclasses.dataclass(frozen=True)
class Seen:
    """One Batch job as a listing showed it."""

    state: str
    labels: dict[str, str]
    events: tuple[Any, ...]
    created: float
    group: str = ""
    """The task group's full name (its tasks are listed under it)."""
    counts: tuple[tuple[str, int], ...] = ()
    """Its tasks by state (``status.task_groups``): what changes when a task moves."""
    selector: str = ""
    """An array's task script (``_gbatch_spec.selector``); empty for a single job."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of an array as ListTasks showed it."""

    state: str
    events: tuple[Any, ...]


def seen(job: Any) -> Seen:
    status = job.status
    created = job.create_time.timestamp() if job.create_time else 0.0
    labels = dict(job.labels)
    group, selector = "", ""
    counts: tuple[tuple[str, int], ...] = ()
    if job.task_groups:
        group = str(job.task_groups[0].name)
    if spec.ARRAY_LABEL in labels and job.task_groups:
        groups = status.task_groups
        for key in groups:
            counts = tuple(sorted((str(k), int(v)) for k, v in groups[key].counts.items()))
        runnables = job.task_groups[0].task_spec.runnables
        last = runnables[-1] if runnables else None
        if last is not None:
            selector = str(last.script.text) or (
                str(last.container.commands[-1]) if last.container.commands else ""
            )
    return Seen(
        state=status.state.name,
        labels=labels,
        events=tuple(status.status_events),
        created=created,
        group=group,
        counts=counts,
        selector=selector,
    )


def split(jid: str | None) -> tuple[str, int | None]:
    """(Batch job name, task index) of an array element's id (its task's name); a single
    job's id and None otherwise."""
    if not jid or "/taskGroups/" not in jid:
        return jid or "", None
    name, _, rest = jid.partition("/taskGroups/")
    task = rest.rpartition("/tasks/")[2]
    return (name, int(task)) if task.isdigit() else (jid, None)


def element_held(view: Seen | None, task: Task | None) -> JobStatus | None:
    """What an element reports while Batch holds its task; None once it has ended."""
    if view is None:
        return None
    if task is None:  # not listed (yet): the array's word
        return spec.HELD.get(view.state)
    if task.state in spec.TASK_HELD and view.state in spec.HELD:
        return spec.TASK_HELD[task.state]
    return None


def element_verdict(view: Seen | None, task: Task | None) -> JobState | None:
    """How an ended element's task ended (its return code file, if any, wins)."""
    if view is None:
        return None
    if task is None:
        return spec.ended_state(view.state, ())
    if view.state in ("CANCELLED", "DELETION_IN_PROGRESS") and task.state != "SUCCEEDED":
        return spec.ended_state(view.state, task.events)
    if task.state == "FAILED" and spec.exit_code(task.events) == spec.KILLED_EXIT:
        return JobState(JobStatus.KILLED, None, "killed before its task started (kill marker)")
    state = task.state if task.state in ("SUCCEEDED", "FAILED") else view.state
    return spec.ended_state(state, task.events)


def batch_id(jid: str | None) -> str | None:
    """The job id at the end of a Batch job name (None for anything else)."""
    if not jid or "/jobs/" not in jid:
        return None
    batch_id = jid.rsplit("/jobs/", 1)[1]
    return batch_id if spec.JOB_ID.match(batch_id) else None
