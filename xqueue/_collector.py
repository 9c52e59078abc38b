"""Spacing out the cycle collector's full collections while a queue is fed many jobs.

A queue keeps every job it was fed (``Xqueue.jobs``), and a ``Job`` is a container the
cycle collector tracks. CPython's collector makes a full collection, a walk over every
tracked object in the process, each time the long-lived ones have grown by a quarter;
while a million jobs are fed, that is a dozen walks over a growing heap of jobs that are
never garbage: about a fifth of a million-job resume on this project's machines
(docs/benchmarks.md).

So while a queue that holds ``HOLD_AT`` jobs or more is being fed in bulk, the third
threshold (how many second-generation collections come before a full one) is raised to
``SPACED``. Only the growth of the queue is worth it, and only while it lasts: the hold
ends when the queue's run ends or it is closed, and as soon as its feeding slows down,
which each young collection checks (``_watch``: fewer than one new job for ten objects
the process kept since the last one, so the jobs are no longer what fills the heap).
An application that goes on with its own work after feeding (a daemon, a queue fed and
dropped) has its full collections back within a few hundred allocations, not after
millions; the young generations are collected as often as ever meanwhile.

The thresholds belong to the process, so this is careful with them. Only CPython's
defaults of a generational collector are changed: an application that set its own
thresholds, or disabled the collector, keeps what it chose (as does an incremental
collector, whose third threshold reads 0). Queues fed at the same time share one change,
undone when the last lets go; thresholds the application set meanwhile are kept.
"""

from __future__ import annotations

import gc
import os
import threading
import weakref
from typing import Any, Protocol

DEFAULTS = ((700, 10, 10), (2000, 10, 10))  # CPython's own: 3.10 to 3.12, then 3.13
SPACED = 1000  # full collections at most once per 1000 second-generation ones
HOLD_AT = 10_000  # below this many jobs, a full collection costs a few milliseconds
SHARE = 10  # a hold lasts while a tenth or more of what the process keeps is new jobs


class _Fed(Protocol):
    jobs: Any  # what ``len`` counts the fed jobs of (the engine's list)


_lock = threading.Lock()  # queues may be fed in several threads, each with its own loop
_holds: list[Hold] = []
_saved: tuple[int, int, int] | None = None  # the thresholds before, while changed


class Hold:
    """One queue's share of the spacing, ended by ``release`` or by ``_watch``."""

    __slots__ = ("_fed", "_seen", "held")

    def __init__(self, fed: _Fed) -> None:
        self._fed = weakref.ref(fed)  # the hold must not keep a dropped queue alive
        # Jobs at the last young collection; None until one came: the first interval
        # began before the hold (the young generation was part full), so it only starts
        # the count (judged on it, a hold ended a few jobs into a burst).
        self._seen: int | None = None
        self.held = True

    def release(self) -> None:
        if self.held:
            with _lock:
                _drop(self)


def hold(fed: _Fed) -> Hold | None:
    """Space out full collections while ``fed`` (an engine) is fed; None where the
    application chose its own thresholds."""
    global _saved
    with _lock:
        if not _holds:
            current = gc.get_threshold()
            if current not in DEFAULTS or not gc.isenabled():
                return None
            _saved = current
            gc.set_threshold(current[0], current[1], SPACED)
            # Left there, a no-op while nothing is held; put back if something (a leak
            # checker, a test fixture) emptied the list since.
            if _watch not in gc.callbacks:
                gc.callbacks.append(_watch)
        taken = Hold(fed)
        _holds.append(taken)
        return taken


def _drop(taken: Hold) -> None:
    """End a hold (``_lock`` held); the last one puts the thresholds back."""
    global _saved
    taken.held = False
    if taken in _holds:
        _holds.remove(taken)
    if _holds or _saved is None:
        return
    saved, _saved = _saved, None
    if gc.get_threshold() == (saved[0], saved[1], SPACED):  # not changed since
        gc.set_threshold(*saved)


def _watch(phase: str, info: dict[str, int]) -> None:
    """A collection is starting: end the holds of queues no longer fed in bulk."""
    if phase != "start" or not _holds:
        return
    # Not blocking: this very thread may be taking or ending a hold (an allocation there
    # started this collection); the next collection looks again.
    if not _lock.acquire(blocking=False):
        return
    try:
        saved = _saved  # read under the lock: another thread may have ended the last hold
        if saved is None:
            return
        least = saved[0] // SHARE
        for taken in _holds.copy():  # _drop removes from it
            fed = taken._fed()
            if fed is None:
                _drop(taken)
                continue
            count, seen = len(fed.jobs), taken._seen
            if seen is not None and count - seen < least:
                _drop(taken)
            else:
                taken._seen = count
    finally:
        _lock.release()


def _after_fork() -> None:
    """A child forked while another thread held the lock would never get it."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
