"""The cycle collector's full collections, spaced out while a queue holds many jobs.

The thresholds are the process's: each test starts from CPython's defaults and puts back
what the process had, whatever it asserts.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import EndsAtOnce
from xqueue import Xqueue, _collector

pytestmark = pytest.mark.anyio

DEFAULT = _collector.DEFAULTS[0] if _collector.DEFAULTS else (700, 10, 10)
SPACED = (700, 10, _collector.SPACED)
HOLD_AT = 20


@pytest.fixture(autouse=True)
def thresholds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_collector, "HOLD_AT", HOLD_AT)  # not 10,000 jobs a test
    before, enabled = gc.get_threshold(), gc.isenabled()
    gc.set_threshold(*DEFAULT)
    gc.enable()
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if not enabled:
            gc.disable()


def queue(workdir: Path, name: str = "wd") -> Xqueue:
    return Xqueue(scheduler=EndsAtOnce, workdir=workdir / name, forks=8)


async def feed(q: Xqueue, n: int) -> None:
    for i in range(n):
        await q.feed(["true", str(i)])


async def test_spaced_from_the_jobs_that_make_it_worth_it_until_the_run_ends(
    workdir: Path,
) -> None:
    q = queue(workdir)
    await feed(q, HOLD_AT - 1)
    assert gc.get_threshold() == DEFAULT  # a few jobs: a full collection costs nothing
    await feed(q, 1)
    assert gc.get_threshold() == SPACED
    await q.run_until_complete()
    assert gc.get_threshold() == DEFAULT
    # Fed in bulk again for a second run: spaced again while that lasts.
    await feed(q, 1)
    assert gc.get_threshold() == DEFAULT
    await feed(q, HOLD_AT)
    assert gc.get_threshold() == SPACED
    await q.run_until_complete()
    assert gc.get_threshold() == DEFAULT
    assert q.statistics().counts == {"finished": 2 * HOLD_AT + 1}


async def test_bulk_feeding_keeps_it_across_young_collections(workdir: Path) -> None:
    """The young collections that check the feeding see a queue fed in bulk each time."""
    young = [0]

    def count(phase: str, info: dict[str, int]) -> None:
        young[0] += phase == "start" and info["generation"] == 0

    q = queue(workdir)
    await feed(q, HOLD_AT)
    gc.callbacks.append(count)
    try:
        await feed(q, 5000)
    finally:
        gc.callbacks.remove(count)
    assert young[0] >= 3  # it was looked at, several times
    assert gc.get_threshold() == SPACED
    await q.aclose()


def keep_some_objects(n: int = 20_000) -> list[dict[str, int]]:
    """What an application does once it has fed its jobs: objects it keeps a while."""
    return [{"n": i} for i in range(n)]


async def test_a_pause_in_the_feeding_gives_it_back_at_once(workdir: Path) -> None:
    """A daemon that feeds a burst and goes on with its own work: its full collections
    come back at the next young collection, not millions of allocations later (the
    cyclic garbage it made meanwhile waited, and its memory grew 16-fold)."""
    q = queue(workdir)
    await feed(q, HOLD_AT)
    assert gc.get_threshold() == SPACED
    kept = keep_some_objects()
    assert gc.get_threshold() == DEFAULT
    await feed(q, 1)  # a job now and then: not held again
    assert gc.get_threshold() == DEFAULT
    await feed(q, HOLD_AT)  # but another bulk of them is
    assert gc.get_threshold() == SPACED
    await q.run_until_complete()
    assert gc.get_threshold() == DEFAULT and len(kept) == 20_000


async def test_queues_share_one_change_undone_by_the_last(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither is fed while the other runs: only the ends of runs are looked at here.
    monkeypatch.setattr(_collector, "SHARE", 10**9)
    first, second = queue(workdir, "a"), queue(workdir, "b")
    await feed(first, HOLD_AT)
    await feed(second, HOLD_AT)
    await first.run_until_complete()
    assert gc.get_threshold() == SPACED  # the second still holds its jobs
    await second.run_until_complete()
    assert gc.get_threshold() == DEFAULT


async def test_a_queue_closed_unrun_gives_it_back(workdir: Path) -> None:
    q = queue(workdir)
    await feed(q, HOLD_AT)
    assert gc.get_threshold() == SPACED
    await q.aclose()
    assert gc.get_threshold() == DEFAULT


async def test_a_queue_dropped_unrun_and_unclosed_gives_it_back(workdir: Path) -> None:
    """Without a full collection to free the dropped queue (it sits in cycles): the hold
    must not wait for the very collections it spaces out."""
    q = queue(workdir)
    await feed(q, HOLD_AT)
    assert gc.get_threshold() == SPACED
    del q
    keep_some_objects()
    assert gc.get_threshold() == DEFAULT


async def test_queues_run_again_and_again_leave_nothing_behind(workdir: Path) -> None:
    q = queue(workdir)
    for _ in range(5):
        await feed(q, HOLD_AT)
        await q.run_until_complete()
    assert gc.get_threshold() == DEFAULT
    assert _collector._holds == [] and gc.callbacks.count(_collector._watch) <= 1


async def test_the_applications_own_thresholds_are_left_alone(workdir: Path) -> None:
    gc.set_threshold(5000, 20, 20)
    q = queue(workdir)
    await feed(q, HOLD_AT)
    assert gc.get_threshold() == (5000, 20, 20)
    await q.run_until_complete()
    assert gc.get_threshold() == (5000, 20, 20)


async def test_a_disabled_collector_is_left_alone(workdir: Path) -> None:
    gc.disable()
    q = queue(workdir)
    await feed(q, HOLD_AT)
    assert gc.get_threshold() == DEFAULT and not gc.isenabled()
    await q.run_until_complete()
    assert gc.get_threshold() == DEFAULT and not gc.isenabled()


async def test_thresholds_set_meanwhile_are_kept(workdir: Path) -> None:
    q = queue(workdir)
    await feed(q, HOLD_AT)
    gc.set_threshold(300, 5, 5)  # the application's choice, made while the queue held
    await q.run_until_complete()
    assert gc.get_threshold() == (300, 5, 5)


class Fed:
    """What a hold watches: something with the jobs fed so far."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, object]] = []


def test_a_hold_is_not_judged_on_the_interval_it_began_in() -> None:
    """The young generation is part full when a hold is taken: the first young
    collection came a few jobs later, and judged on those few it ended the hold in the
    middle of a burst (3 to 11 jobs after each hold, a whole 100,000-job feed)."""
    fed = Fed()
    gc.collect()
    nearly_full = [{} for _ in range(gc.get_threshold()[0] - 20)]
    taken = _collector.hold(fed)
    assert taken is not None
    for i in range(2000):  # two tracked objects a job: jobs are what the process keeps
        fed.jobs.append({"job": i, "spec": {}})
    assert taken.held and gc.get_threshold() == SPACED
    taken.release()
    assert gc.get_threshold() == DEFAULT and len(nearly_full) > 0


def test_a_hold_taken_while_another_thread_lets_go_leaves_nothing_behind() -> None:
    """Holds taken and given back from several threads at once, while collections
    check them: no deadlock, nothing left held, no error out of the collector's callback."""
    import threading

    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for _ in range(300):
                fed = Fed()
                taken = _collector.hold(fed)
                fed.jobs.extend({"n": i} for i in range(100))
                if taken is not None:
                    taken.release()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert _collector._holds == [] and gc.get_threshold() == DEFAULT
