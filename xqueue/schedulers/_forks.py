"""How the submissions of one batch share ``forks`` on a backend that throttles arrays.

A Slurm or SGE batch becomes *units*: one array per group of jobs with the same
resources, and single jobs. Each array runs at most its throttle (``%N``, ``-tc N``) of
elements at once, a single job one. Giving every unit a throttle of at least 1 would run
more than ``forks`` jobs as soon as a batch has more units than ``forks`` (three shapes
with ``forks=2``, or a thousand jobs of distinct resources): so the units are put into
at most ``forks`` *lanes* whose budgets add up to ``forks``. The units of one lane run one
after the other (each waits for the whole previous one, a Slurm ``afterany`` or SGE
``-hold_jid`` dependency), so at any moment at most one unit per lane runs, and the
throttles of the units that can run together never add up to more than ``forks``.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


def split_throttle(sizes: Sequence[int], budget: int) -> list[int]:
    """Shares of ``budget``, one per size: each at least 1 and at most its size.

    When there are no more sizes than ``budget`` the shares add up to at most
    ``budget``: each gets 1, and what is left is split in proportion to what each still
    needs (largest remainder first).
    """
    if sum(sizes) <= budget:
        return list(sizes)
    shares = [1] * len(sizes)
    rest = budget - len(sizes)
    if rest <= 0:
        return shares
    needs = [n - 1 for n in sizes]
    exact = [rest * n / sum(needs) for n in needs]
    shares = [1 + int(e) for e in exact]
    spare = budget - sum(shares)
    for i in sorted(range(len(sizes)), key=lambda i: exact[i] - int(exact[i]), reverse=True):
        if spare <= 0:
            break
        if shares[i] < sizes[i]:
            shares[i] += 1
            spare -= 1
    return shares


@dataclass(frozen=True)
class Slot:
    """Where one unit runs: its throttle, and the unit it waits for (same lane), if any."""

    throttle: int
    after: int | None


def _rounds(sizes: Sequence[int], budget: int) -> int:
    """How many job durations a lane of ``budget`` takes for its units, one after another."""
    return sum(-(-n // min(budget, n)) for n in sizes)


def _lanes(sizes: Sequence[int], count: int) -> list[list[int]]:
    """Units (by index) into ``count`` lanes, largest first onto the least loaded lane."""
    heap = [(0, lane) for lane in range(count)]
    lanes: list[list[int]] = [[] for _ in range(count)]
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        load, lane = heapq.heappop(heap)
        lanes[lane].append(i)
        heapq.heappush(heap, (load + sizes[i], lane))
    return [sorted(lane) for lane in lanes if lane]  # queue order within a lane


def plan(sizes: Sequence[int], forks: int) -> list[Slot]:
    """One slot per unit (``sizes[i]`` jobs each) so that at most ``forks`` jobs run at once.

    With no more units than ``forks`` they all run side by side and share ``forks`` in
    proportion to their sizes. Otherwise they go into lanes: a few lane counts are
    tried (1, 2, 4, ... up to ``forks``) and the one that should finish soonest, counted
    in job durations, wins; one lane with all of ``forks`` is often best, since it
    runs each array at full width.
    """
    forks = max(forks, 1)
    if len(sizes) <= forks:
        return [Slot(share, None) for share in split_throttle(sizes, forks)]
    best: tuple[int, list[list[int]], list[int]] | None = None
    count = 1
    while True:
        lanes = _lanes(sizes, count)
        budgets = split_throttle([sum(sizes[i] for i in lane) for lane in lanes], forks)
        span = max(_rounds([sizes[i] for i in lane], b) for lane, b in zip(lanes, budgets))
        if best is None or span < best[0]:
            best = (span, lanes, budgets)
        if count >= forks:
            break
        count = min(count * 2, forks)
    _, lanes, budgets = best
    slots: list[Slot | None] = [None] * len(sizes)
    for lane, budget in zip(lanes, budgets):
        previous = None
        for i in lane:
            slots[i] = Slot(min(budget, sizes[i]), previous)
            previous = i
    return [s for s in slots if s is not None]
