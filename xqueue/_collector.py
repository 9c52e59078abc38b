"""Spacing out the cycle collector's full collections while a queue holds many jobs.

A queue keeps every job it was fed (``Xqueue.jobs``), and a ``Job`` is a container the
cycle collector tracks. CPython's collector makes a full collection, a walk over every
tracked object in the process, each time the long-lived ones have grown by a quarter;
while a million jobs are fed, that is a dozen walks over a growing heap of jobs that are
never garbage: about a fifth of a million-job resume on this project's machines
(docs/benchmarks.md). So once a queue holds ``HOLD_AT`` jobs, the third threshold (how
many younger collections come before a full one) is raised to ``SPACED``, until its run
ends or it is closed. Only full collections are spaced: the young generations, where
nearly all garbage dies, are collected exactly as often as before, and the process's
older cyclic garbage is still collected: the full collections come once per
``SPACED`` second-generation ones (seven million objects made and kept, with 3.11's
thresholds), not once per quarter of growth. Python 3.14's collector is incremental
(its old generation is walked a slice at a time, and the third threshold means nothing):
there, nothing is changed.

The thresholds belong to the process, so this is careful with them. Only CPython's
defaults are changed: an application that set its own thresholds, or disabled the
collector, keeps what it chose. Queues holding at the same time share one change, undone
when the last lets go; an application that set new thresholds meanwhile keeps those.
"""

from __future__ import annotations

import gc
import sys
import threading

# CPython's own thresholds: 3.10 to 3.12, then 3.13 (a larger first one).
DEFAULTS = () if sys.version_info >= (3, 14) else ((700, 10, 10), (2000, 10, 10))
SPACED = 1000  # full collections at most once per 1000 second-generation ones
HOLD_AT = 10_000  # below this many jobs, a full collection costs a few milliseconds

_lock = threading.Lock()  # queues may run in several threads, each with its own loop
_holders = 0
_saved: tuple[int, int, int] | None = None  # what was there before, while changed


class Hold:
    """A queue's share of the spacing; ``release`` is safe to call more than once."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = _take()

    def release(self) -> None:
        if self._held:
            self._held = False
            _give_back()


def _take() -> bool:
    global _holders, _saved
    with _lock:
        if _holders:
            _holders += 1
            return True
        current = gc.get_threshold()
        if current not in DEFAULTS or not gc.isenabled():
            return False  # the application's own choice
        _saved = current
        gc.set_threshold(current[0], current[1], SPACED)
        _holders = 1
        return True


def _give_back() -> None:
    global _holders, _saved
    with _lock:
        _holders -= 1
        if _holders or _saved is None:
            return
        saved, _saved = _saved, None
        if gc.get_threshold() == (saved[0], saved[1], SPACED):  # not changed since
            gc.set_threshold(*saved)
