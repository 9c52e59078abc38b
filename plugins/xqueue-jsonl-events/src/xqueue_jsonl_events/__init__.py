"""An example of a plugin distribution: each job event as a JSON line.

xqueue writes a run's event stream itself (``<workdir>/events.jsonl``, off the event
loop); this package shows how a plugin is packaged and loaded through its entry point.
It writes to ``<workdir>/jsonl-events.jsonl`` (or ``$XQUEUE_EVENTS_FILE``), so the two
never write the same file.

A module-level plugin: xqueue registers the module itself. Each queue gets its own file
handle, opened on its first event and closed on ``on_shutdown``; lines are flushed as
they are written so ``tail -f`` shows them at once. (Written from the hook, on the event
loop: simple, and fine for an example; see ``xqueue/events.py`` for a writer thread.)
"""

from __future__ import annotations

import json
import os
import time
from typing import IO, Any

from xqueue import Job, Xqueue, hookimpl

FILE_NAME = "jsonl-events.jsonl"
_files: dict[int, IO[str]] = {}


def _path(xqueue: Xqueue) -> str:
    return os.environ.get("XQUEUE_EVENTS_FILE") or str(xqueue.workdir.path / FILE_NAME)


def _emit(xqueue: Xqueue, event: str, job: Job | None = None, **extra: Any) -> None:
    fh = _files.get(id(xqueue))
    if fh is None:
        fh = _files[id(xqueue)] = open(_path(xqueue), "a", encoding="utf-8")
    record: dict[str, Any] = {"time": round(time.time(), 3), "event": event, **extra}
    if job is not None:
        record.update(
            job=job.index,
            name=job.name,
            status=job.status.value,
            attempt=job.attempt,
            jid=job.jid,
            rc=job.rc,
            reason=job.reason,
        )
    fh.write(json.dumps(record) + "\n")
    fh.flush()


@hookimpl
def on_init(xqueue: Xqueue) -> None:
    _emit(xqueue, "run_started", forks=xqueue.forks, scheduler=xqueue.scheduler.name)


@hookimpl
def on_shutdown(xqueue: Xqueue, reason: str) -> None:
    stats = xqueue.statistics()
    _emit(xqueue, "run_stopped", reason=reason, counts=dict(stats.counts))
    fh = _files.pop(id(xqueue), None)
    if fh is not None:
        fh.close()


def _job_hook(event: str) -> Any:
    def hook(xqueue: Xqueue, job: Job) -> None:
        _emit(xqueue, event, job)

    hook.__name__ = f"on_{event}"
    return hookimpl(hook)


on_job_queued = _job_hook("job_queued")
on_job_submitted = _job_hook("job_submitted")
on_job_started = _job_hook("job_started")
on_job_retrying = _job_hook("job_retrying")
on_job_killed = _job_hook("job_killed")
on_job_failed = _job_hook("job_failed")
on_job_succeeded = _job_hook("job_succeeded")
on_job_skipped = _job_hook("job_skipped")
