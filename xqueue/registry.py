"""Scheduler lookup by name, through the ``xqueue.schedulers`` entry-point group.

Built-in schedulers are registered in xqueue's own pyproject exactly as a third-party
plugin would register one, and listed through the group with the others. Their names are
also known here (``BUILT_IN``, kept equal to the pyproject by a test), so that choosing
one does not read every installed distribution's metadata first: that costs the command
line about 50 ms at each start. A plugin cannot take a built-in name. Entry points are
read only when another name is resolved or the list is asked for, never at ``import
xqueue``, and a backend module is imported only when it is chosen.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from .errors import ConfigError, SchedulerOptionError, UnknownSchedulerError
from .scheduler import Scheduler

ENTRY_POINT_GROUP = "xqueue.schedulers"
BUILT_IN = {
    "local": "xqueue.schedulers.local:LocalScheduler",
    "slurm": "xqueue.schedulers.slurm:SlurmScheduler",
    "sge": "xqueue.schedulers.sge:SgeScheduler",
    "ssh": "xqueue.schedulers.ssh:SshScheduler",
    "container": "xqueue.schedulers.container:ContainerScheduler",
    "gbatch": "xqueue.schedulers.gbatch:GbatchScheduler",
    "htcondor": "xqueue.schedulers.htcondor:HTCondorScheduler",
}


@cache
def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    return sorted({*BUILT_IN, *_entry_points()})


def scheduler_class(name: str) -> type[Scheduler]:
    try:
        if name in BUILT_IN:
            module, _, attr = BUILT_IN[name].partition(":")
            cls = getattr(importlib.import_module(module), attr)
        else:
            eps = _entry_points()
            if name not in eps:
                raise UnknownSchedulerError(name, sorted({*BUILT_IN, *eps}))
            cls = eps[name].load()
    except ImportError as exc:
        # From the source folder: the "xqueue" on PyPI is another project.
        fix = f"install xqueue's {name} extra: pip install '.[{name}]' in xqueue's source folder"
        if name not in BUILT_IN:  # a plugin distribution: its dependency is missing
            fix = f"reinstall {getattr(_entry_points()[name].dist, 'name', name)}"
        raise ConfigError(
            f"scheduler {name!r} needs a package that is not installed ({exc.name or exc}); {fix}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise ConfigError(f"entry point {name!r} does not name a Scheduler subclass: {cls!r}")
    return cls


def resolve(
    scheduler: str | type[Scheduler] | Scheduler, options: dict[str, Any] | None
) -> Scheduler:
    """A scheduler instance from a name, a class or an instance."""
    if isinstance(scheduler, Scheduler):
        if options:
            raise SchedulerOptionError(
                "scheduler_opts cannot be combined with a scheduler instance; "
                "pass them to its constructor instead"
            )
        return scheduler
    if isinstance(scheduler, str):
        cls = scheduler_class(scheduler)
    elif isinstance(scheduler, type) and issubclass(scheduler, Scheduler):
        cls = scheduler
    else:
        raise ConfigError(
            f"scheduler must be a name, a Scheduler subclass or instance, not {scheduler!r}"
        )
    return cls(**(options or {}))
