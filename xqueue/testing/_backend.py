"""``Backend``: what the conformance kit needs to know about the scheduler under test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import registry
from ..job import Job
from ..queue import Xqueue
from ..scheduler import Scheduler


@dataclass
class Backend:
    """A scheduler wired to a real system for the kit, and the facts its tests check.

    Keep ``options`` quick (``poll_interval`` of a fraction of a second, a short
    ``vanish_grace``): every test waits on them.
    """

    scheduler: str | type[Scheduler]
    """The registered name, or the class."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """``scheduler_opts`` of every queue the tests make (a test adds its own)."""
    packs: bool = False
    """Jobs fed together with the same resources go to the backend in one submission (an
    array, a job set): ``submit_calls`` counts one per group, not one per job."""
    status_calls_per_tick: int = 1
    """The status queries one tick may take (a polled backend's batch, whatever the
    number of jobs); a backend that awaits its jobs is not polled and not counted."""
    recovers_by_tag: bool = True
    """A job whose id an earlier controller never recorded is found all the same (by its
    tag, labels, name, environment). False: only recorded ids are re-adopted."""
    forget: Callable[[Job], Awaitable[None]] | None = None
    """Make the backend forget a running job without a trace, as a purge or a lost node
    would (the job must then be failed as vanished); None skips that test. A system
    that cannot be told to may point ``job.jid`` at an id it never issued, and remove
    the real job."""
    cleanup: Callable[[Sequence[Job]], None] | None = None
    """Remove what a failed test left running on the system (called with its jobs, the
    ended ones included, when each test ends)."""
    timeout: float = 60.0
    """Seconds any one run of a test may take."""
    root: Path | None = None
    """The folder each test makes its workdir in (None: pytest's ``tmp_path``). A system
    that sees only part of this machine's file system at the same path (a pool sharing
    one folder) names a folder in that part; the test cleans up what it made there."""

    cls: type[Scheduler] = field(init=False)
    """The scheduler's class, looked up once when the fixture makes the backend (the
    lookup reads entry points: not something to do in a running event loop)."""

    def __post_init__(self) -> None:
        if isinstance(self.scheduler, str):
            self.cls = registry.scheduler_class(self.scheduler)
        else:
            self.cls = self.scheduler

    def queue(self, workdir: Path, **kw: Any) -> Xqueue:
        """A queue on the backend; ``scheduler_opts`` add to (and override) ``options``."""
        opts = {**self.options, **kw.pop("scheduler_opts", {})}
        return Xqueue(self.scheduler, workdir=workdir, scheduler_opts=opts, **kw)

    def make_scheduler(self) -> Scheduler:
        """A scheduler instance with ``options``, for a test that plays an earlier controller."""
        return self.cls(**self.options)
