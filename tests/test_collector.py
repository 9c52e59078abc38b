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
    # Fed again for a second run: spaced again while it holds them.
    await feed(q, 1)
    assert gc.get_threshold() == SPACED
    await q.run_until_complete()
    assert gc.get_threshold() == DEFAULT
    assert q.statistics().counts == {"finished": HOLD_AT + 1}


async def test_queues_share_one_change_undone_by_the_last(workdir: Path) -> None:
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
    q = queue(workdir)
    await feed(q, HOLD_AT)
    assert gc.get_threshold() == SPACED
    del q
    gc.collect()
    assert gc.get_threshold() == DEFAULT


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
