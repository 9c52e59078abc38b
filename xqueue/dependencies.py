"""Dependencies between the jobs of one queue: ``feed(cmd, after=[job, ...])``.

A job may only run after jobs already fed to the same queue. So the graph grows in feed
order and a cycle cannot even be written down (a job cannot name itself or a job fed
later), and a resumed run that feeds the same jobs in the same order rebuilds the same
graph: indices are the feed order, and a dependency that succeeded in the earlier run is
already FINISHED when its dependents are fed.

The engine keeps the graph as an index next to its counts (``Graph``): for each job that
others wait for, the list of those others, and for each waiting job how many of its
dependencies have not succeeded yet. When a job ends only its own dependents are looked
at, so jobs that wait cost nothing per event or per tick, however many there are. The
graph never changes a status: the engine asks it who is ready (or stranded) and moves
them itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .errors import ConfigError
from .job import Job
from .states import JobStatus

After = Job | int | Iterable[Job | int] | None
"""What ``feed(after=...)`` takes: jobs of the same queue or their indices, one or many."""


def resolve_after(after: After, jobs: Sequence[Job]) -> tuple[Job, ...]:
    """The jobs ``after`` names among ``jobs`` (those fed so far), each once, in order.

    Refused with a ``ConfigError``, before anything is fed: a job of another queue (or
    one never fed), an index not fed yet (the job's own included: that is how a cycle
    would be written), anything else than a job or an index.
    """
    if after is None:
        return ()
    if isinstance(after, (Job, int)):
        items: Iterable[Job | int] = [after]
    elif isinstance(after, (str, bytes, bytearray)) or not isinstance(after, Iterable):
        raise ConfigError(_WHAT + f", not {type(after).__name__}")
    else:
        items = after
    found: dict[Job, None] = {}  # ordered, and a job named twice counts once
    for item in items:
        found[_one(item, jobs)] = None
    return tuple(found)


_WHAT = "after= takes jobs of the same queue or their indices"


def _one(item: Job | int, jobs: Sequence[Job]) -> Job:
    fed = len(jobs)
    if isinstance(item, Job):
        if 0 <= item.index < fed and jobs[item.index] is item:
            return item
        raise ConfigError(
            f"after=: job {item.index} ({item.name}) was not fed to this queue; a job can "
            "only run after jobs of its own queue"
        )
    if isinstance(item, bool) or not isinstance(item, int):
        raise ConfigError(_WHAT + f", not {type(item).__name__}")
    if 0 <= item < fed:
        return jobs[item]
    if item == fed:
        raise ConfigError(
            f"after=: {item} is the index of the job being fed; it cannot wait for itself"
        )
    raise ConfigError(
        f"after=: no job {item} was fed to this queue (it has {fed}); a job can only run "
        "after jobs fed before it, so that dependencies can never form a cycle"
    )


class Graph:
    """Who waits for whom, for the engine; it reads statuses and never changes one."""

    __slots__ = ("_dependents", "_unmet")

    def __init__(self) -> None:
        self._dependents: dict[Job, list[Job]] = {}  # a job -> the jobs waiting for it
        self._unmet: dict[Job, int] = {}  # a waiting job -> dependencies not succeeded yet

    def add(self, job: Job) -> Job | None:
        """Follow ``job``'s dependencies from now on.

        Returns a dependency that has already ended without succeeding (then the job
        can never run and nothing is followed), else None; ``waits(job)`` then says
        whether some dependency has yet to succeed. Called once per job, when it would
        otherwise be queued.
        """
        for dep in job.after:
            if dep.status.is_final and dep.status is not JobStatus.FINISHED:
                return dep
        unmet = 0
        for dep in job.after:
            if dep.status is not JobStatus.FINISHED:
                self._dependents.setdefault(dep, []).append(job)
                unmet += 1
        if unmet:
            self._unmet[job] = unmet
        return None

    def waits(self, job: Job) -> bool:
        return job in self._unmet

    def followed(self, job: Job) -> bool:
        """Whether some job waits for ``job``."""
        return job in self._dependents

    def succeeded(self, dep: Job) -> list[Job]:
        """``dep`` succeeded: the jobs that waited for it and for nothing else any more."""
        ready = []
        for job in self._dependents.pop(dep, ()):
            left = self._unmet.get(job)
            if left is None:  # already stranded by another dependency
                continue
            if left == 1:
                del self._unmet[job]
                ready.append(job)
            else:
                self._unmet[job] = left - 1
        return ready

    def stranded(self, dep: Job) -> list[Job]:
        """``dep`` ended without succeeding: the jobs waiting for it, which never can run."""
        return [job for job in self._dependents.pop(dep, ()) if self._unmet.pop(job, None)]


def skip_reason(dep: Job, root: Job) -> str:
    """Why a job did not run: ``dep``, which it runs after, did not succeed, because of ``root``."""
    why = f"not run: job {dep.index} ({dep.name}), which it runs after, {_ended(dep)}"
    if root is not dep:
        why += f": job {root.index} ({root.name}) {_ended(root)}"
    return why


def _ended(job: Job) -> str:
    if job.status is JobStatus.FAILED:
        return "failed" if job.rc is None else f"failed with rc {job.rc}"
    if job.status is JobStatus.KILLED:
        return "was killed"
    return "was skipped"
