"""The plugin contract: one function per lifecycle event.

Implement any of these in a plugin (a module or an object) decorated with
``xqueue.hookimpl``; name only the arguments you need. Implementations may be plain or
``async`` functions; async ones are awaited, one after another, in the engine's task,
so a slow hook slows the queue: hand long work to your own task.

Arguments available to every job hook: ``xqueue`` (the queue), ``scheduler`` and ``job``.
A hook that raises stops the run with a ``PluginError`` naming the plugin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .job import Job
    from .queue import Xqueue
    from .scheduler import Scheduler

hookspec = pluggy.HookspecMarker("xqueue")


@hookspec
def on_init(xqueue: Xqueue, scheduler: Scheduler) -> None:
    """The queue starts running (before the first submission)."""


@hookspec
def on_shutdown(xqueue: Xqueue, scheduler: Scheduler, reason: str, signal: str | None) -> None:
    """The queue stopped: ``reason`` is "complete", "cancelled", "halted", "signal" or "error".

    ``signal`` names the signal that stopped the run ("SIGTERM"), or is None. Like every
    hook called while a run stops, it has a bounded time before it is reported and skipped."""


@hookspec
def on_job_init(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> None:
    """A job was fed: ``job.index`` and ``job.dir`` are set. The folder itself is made
    later, off the event loop (feeding does no file I/O), and exists from
    ``on_job_submitting`` on."""


@hookspec
def on_job_queued(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> None:
    """A job waits for a free slot (after feeding, and again before each retry)."""


@hookspec
def on_job_submitting(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> bool | None:
    """A job is about to be submitted; its folder exists (a plugin may put files in it).
    Return ``False`` to veto: the job becomes SKIPPED (and ``on_job_skipped`` fires)."""


@hookspec
def on_job_submitted(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> None:
    """The scheduler accepted the job; ``job.jid`` holds its id."""


@hookspec
def on_job_started(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> None:
    """The job is known to run. Fires before the job's final hook even for jobs too
    quick for any status query to see running; not for a job resumed as succeeded in
    an earlier run (it fires only ``on_job_init`` and ``on_job_succeeded``)."""


@hookspec
def on_job_killing(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> bool | None:
    """A job is about to be killed. Return ``False`` to veto: the job keeps running and,
    if the queue is stopping, is left running (its id stays recorded for a later run)."""


@hookspec
def on_job_killed(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> None:
    """A job was killed (or cancelled before it could run)."""


@hookspec
def on_job_failed(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> None:
    """A job failed for good: no retry is left (``job.rc``, ``job.reason`` say why)."""


@hookspec
def on_job_succeeded(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> None:
    """A job finished with return code 0."""


@hookspec
def on_job_skipped(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> None:
    """A job ended without running: a plugin vetoed its submission, or a job it runs after
    (``feed(after=...)``) failed for good, was killed or was skipped (``job.reason`` names
    it). Fires once per skipped job, for the dependents of dependents too."""


@hookspec
def on_job_retrying(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> None:
    """An attempt failed and the job will run again; ``job.rc`` is the failed attempt's."""


@hookspec
def on_job_checking(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> str | bool | None:
    """An attempt exited 0; check what it left (its outputs) before it counts as a success.

    Return a reason (a non-empty string) to fail the attempt: the job ends FAILED with
    that reason (``job.rc`` stays 0) and is retried under the normal rules
    (``error_strategy``, ``num_retries``); under "halt" it stops the run. ``False`` fails it
    with a reason naming the plugin. ``None`` (or ``True``, ``""``) accepts it. The job
    keeps its slot until every implementation has answered. A job skipped as succeeded
    in an earlier run is not checked again (see ``feed(cache_key=...)``)."""


@hookspec
def on_job_polling(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> None:
    """Once per tick for each active job (submitted or running): live output tails.

    A tick is one status query of a polled backend, or every ``poll_interval`` seconds
    for a backend that awaits its jobs (local, containers). At most one tick is pending
    at a time: a slow implementation makes ticks rarer, never piles them up. Not called
    while the run stops. With many active jobs prefer ``on_jobs_polling``."""


@hookspec
def on_jobs_polling(xqueue: Xqueue, scheduler: Scheduler, jobs: Sequence[Job]) -> None:
    """The batched form of ``on_job_polling``: once per tick with every active job."""


@hookspec
def on_jobcmd_init(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> str | None:
    """Shell text run first, before the command and before the ``prescript`` option.

    Called once per attempt, before it is submitted; the text is fixed for that attempt.
    It runs in the job's shell, on every backend (see ``xqueue.wrapping``)."""


@hookspec
def on_jobcmd_prep(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> str | None:
    """Shell text run right before the command, after the ``prescript`` option."""


@hookspec
def on_jobcmd_end(xqueue: Xqueue, scheduler: Scheduler, job: Job) -> str | None:
    """Shell text run after the command and the ``postscript`` option; ``$XQUEUE_JOB_RC``
    holds the command's exit status. An ``exit N`` here ends the job with status N."""
