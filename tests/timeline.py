"""Jobs that record their own timeline: when they ran and what they were given.

Each job writes its start and end times (``date``) and the variables it was given to a
file of its own; the tests read overlaps and shared devices from those files, where
they would matter, not from the engine's books.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio

VARS = ("CUDA_VISIBLE_DEVICES", "XQUEUE_GPUS", "XQUEUE_SLOT_MACHINE", "XQUEUE_SLOT_GPU")


@dataclass
class Span:
    """One job as it saw itself: when it ran, and what it was given."""

    name: str
    start: float
    end: float
    env: dict[str, str]

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end


def timed(log: Path, name: str, seconds: float, then: str = "") -> list[str]:
    """A job that records its start, its variables and its end in ``log/name``."""
    out = log / name
    env = " ".join(f'{v}="${{{v}-}}"' for v in VARS)
    script = (
        f"{{ echo start $(date +%s.%N); echo env {env}; sleep {seconds}; "
        f"echo end $(date +%s.%N); }} > {out}{then}"
    )
    return ["sh", "-c", script]


def read_span(path: Path) -> Span:
    fields: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(" ")
        if key == "env":
            env = dict(part.split("=", 1) for part in rest.split(" ") if "=" in part)
        else:
            fields[key] = rest
    # A job killed while it ran never wrote its end: it ran until then.
    return Span(path.name, float(fields["start"]), float(fields.get("end", "inf")), env)


async def spans(log: Path) -> dict[str, Span]:
    def read_all() -> dict[str, Span]:
        return {p.name: read_span(p) for p in sorted(log.iterdir())}

    return await anyio.to_thread.run_sync(read_all)


def depth(items: Iterable[Span], weight: dict[str, int] | None = None) -> int:
    """The most jobs (or CPUs, by ``weight``) running at one moment."""
    events = []
    for s in items:
        w = (weight or {}).get(s.name, 1)
        events += [(s.start, 1, w), (s.end, 0, -w)]  # an end before a start at the same time
    now = most = 0
    for _, _, w in sorted(events):
        now += w
        most = max(most, now)
    return most


def concurrent(items: Iterable[Span]) -> list[tuple[Span, Span]]:
    listed = list(items)
    return [(a, b) for i, a in enumerate(listed) for b in listed[i + 1 :] if a.overlaps(b)]
