"""Which queued jobs start when some must wait for room: backfill, with a bound.

The engine hands every queued job to a ``Backlog`` and, whenever it decides, asks it
for as many jobs as ``forks`` leaves room for. The policy:

- Queue order first: the job queued earliest is tried first.
- No head-of-line blocking: a job that does not fit in what is free (``capacity.Pool``)
  waits without holding up the jobs behind it; a later one that fits starts ahead of
  it (it *passes* it).
- No starvation: each job that claims something (CPUs, memory, GPUs, slot values) and
  starts ahead of a waiting job counts one pass against it. Once a job has been passed
  ``patience`` times it is *reserved for*: from then on what is free on one host, up to
  what it asks, is set aside for it (an ``Earmark``: some CPUs, memory, a number of
  GPUs, the slot values it is to get), and no other job may take any of it. Jobs that
  fit beside the earmark still start. As the jobs running when the reservation was
  made end, the earmark grows until the job fits, so it waits at most for those jobs.
  One job is reserved for at a time, the oldest one that waited past its patience; its
  host and slot values stay the same until it starts. ``patience=0`` reserves for a job
  as soon as it cannot start.

Jobs that ask for the same thing (the same ``Need``) fit or not alike, so they wait in
one line per shape, and a decision only looks at the first job of each line: its cost
grows with the number of distinct requests, never with the number of queued jobs.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Collection

from .capacity import Claim, Earmark, Need, Pool
from .job import Job
from .states import JobStatus

_QUEUED = JobStatus.QUEUED


class Backlog:
    """Queued jobs waiting for room, by shape, in the order they were queued."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self._lines: dict[Need, deque[tuple[int, Job]]] = {}
        self._order = itertools.count()
        self._passed: dict[Job, int] = {}  # first jobs of their line passed so far
        self._reserved: tuple[Job, Earmark] | None = None
        self._size = 0

    def __len__(self) -> int:
        """Jobs held, counting those that have left the queue since (dropped lazily)."""
        return self._size

    def push(self, job: Job, need: Need) -> None:
        line = self._lines.get(need)
        if line is None:
            self._lines[need] = line = deque()
        line.append((next(self._order), job))
        self._size += 1

    def _head(self, need: Need) -> Job | None:
        """The first job of a line still queued; the ones that left (killed) are dropped."""
        line = self._lines[need]
        while line and line[0][1].status is not _QUEUED:
            self._passed.pop(line.popleft()[1], None)
            self._size -= 1
        if not line:
            del self._lines[need]
            return None
        return line[0][1]

    def pick(
        self, pool: Pool, limit: int, prefer: Collection[str] | None
    ) -> tuple[list[tuple[Job, Claim]], list[tuple[Job, str]]]:
        """Up to ``limit`` jobs to start now, each with its claim; and the jobs that can
        never start (what they ask exceeds every host), with why."""
        heads = [
            (self._lines[need][0][0], need)
            for need in list(self._lines)
            if self._head(need) is not None
        ]
        heapq.heapify(heads)
        reserved, mark = self._reservation(pool, prefer)
        started: list[tuple[Job, Claim]] = []
        refused: list[tuple[Job, str]] = []
        blocked: list[Job] = []
        while heads and len(started) < limit:
            _, need = heapq.heappop(heads)
            job = self._lines[need][0][1]
            claim = pool.claim(need, prefer, None if job is reserved else mark)
            if claim is None:
                why = pool.never_fits(need)
                if why is not None:
                    refused += [(j, why) for _, j in self._drop(need)]
                    continue
                blocked.append(job)
                if reserved is None and need and self._passed.get(job, 0) >= self.patience:
                    reserved, mark = job, pool.earmark(need, prefer, None)
                continue  # its whole line waits: the others ask the same
            self._lines[need].popleft()
            self._size -= 1
            self._passed.pop(job, None)
            if job is reserved:
                reserved, mark = None, None
            started.append((job, claim))
            if need:
                for waiting in blocked:  # every one of them was queued before this job
                    self._passed[waiting] = self._passed.get(waiting, 0) + 1
            if self._head(need) is not None:
                heapq.heappush(heads, (self._lines[need][0][0], need))
        self._reserved = None if reserved is None or mark is None else (reserved, mark)
        return started, refused

    def _reservation(
        self, pool: Pool, prefer: Collection[str] | None
    ) -> tuple[Job | None, Earmark | None]:
        """The job reserved for in an earlier decision, if it still waits, and its
        earmark as it stands now (what has been freed since is set aside too)."""
        if self._reserved is None:
            return None, None
        job, last = self._reserved
        if job.status is not _QUEUED:
            self._reserved = None
            return None, None
        need = Need.of(job.resources)
        return job, pool.earmark(need, prefer, last)

    def _drop(self, need: Need) -> list[tuple[int, Job]]:
        line = self._lines.pop(need)
        self._size -= len(line)
        for _, job in line:
            self._passed.pop(job, None)
        return [(n, job) for n, job in line if job.status is _QUEUED]
