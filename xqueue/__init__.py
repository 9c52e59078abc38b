"""xqueue: run large numbers of jobs from async Python, on whatever compute you have.

Only public names live here, each imported from its module the first time it is asked
for (PEP 562). Two kinds of process import this package and use little of it: the job
of a Python call (``python -m xqueue._callrun``, once per call) and the ``xqueue``
command before it knows what it will do. Loading the whole engine (anyio, pluggy, the
queue) took them about 50 ms each, before anything ran; a Ctrl-C in that time left a
traceback instead of the command's own handling. Backends are imported when chosen.
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

# Public name -> the module (under this package) that defines it.
_HOMES = {
    "CallError": "errors",
    "CallJob": "calls",
    "ConfigError": "errors",
    "FailureClass": "failures",
    "Interrupted": "errors",
    "InvalidTransitionError": "errors",
    "Job": "job",
    "JobAlreadyEnded": "errors",
    "JobFailedError": "errors",
    "JobState": "scheduler",
    "JobStatus": "states",
    "PluginError": "errors",
    "QueueStateError": "errors",
    "QueueStatistics": "queue",
    "RemoteTraceback": "calls",
    "Resources": "resources",
    "RetryPolicy": "retry",
    "RetryRule": "retry",
    "Scheduler": "scheduler",
    "SchedulerError": "errors",
    "SchedulerOptionError": "errors",
    "SchedulerOptions": "options",
    "SchedulerOutputError": "errors",
    "SchedulerStats": "scheduler",
    "SubmissionError": "errors",
    "SubmissionUnknownError": "errors",
    "UnknownSchedulerError": "errors",
    "WorkdirError": "errors",
    "Xqueue": "queue",
    "XqueueError": "errors",
    "hookimpl": "hooks",
}

__all__ = [
    "CallError",
    "CallJob",
    "ConfigError",
    "FailureClass",
    "Interrupted",
    "InvalidTransitionError",
    "Job",
    "JobAlreadyEnded",
    "JobFailedError",
    "JobState",
    "JobStatus",
    "PluginError",
    "QueueStateError",
    "QueueStatistics",
    "RemoteTraceback",
    "Resources",
    "RetryPolicy",
    "RetryRule",
    "Scheduler",
    "SchedulerError",
    "SchedulerOptionError",
    "SchedulerOptions",
    "SchedulerOutputError",
    "SchedulerStats",
    "SubmissionError",
    "SubmissionUnknownError",
    "UnknownSchedulerError",
    "WorkdirError",
    "Xqueue",
    "XqueueError",
    "hookimpl",
]


if not _typing.TYPE_CHECKING:
    # Hidden from type checkers, which see the imports below instead: a misspelt name
    # is then their error, where a module __getattr__ would make it Any.

    def __getattr__(name: str) -> _typing.Any:
        home = _HOMES.get(name)
        if home is not None:
            value = getattr(_importlib.import_module(f".{home}", __name__), name)
            globals()[name] = value  # asked once: later lookups are plain attribute reads
            return value
        if not name.startswith("_"):
            # A public submodule (xqueue.schedulers, xqueue.errors): an attribute once
            # the package loaded them all, as code written then may expect.
            try:
                return _importlib.import_module(f".{name}", __name__)
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise
        raise AttributeError(f"module 'xqueue' has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})


else:  # what type checkers and editors see: the names, eagerly
    from .calls import CallJob, RemoteTraceback
    from .errors import (
        CallError,
        ConfigError,
        Interrupted,
        InvalidTransitionError,
        JobAlreadyEnded,
        JobFailedError,
        PluginError,
        QueueStateError,
        SchedulerError,
        SchedulerOptionError,
        SchedulerOutputError,
        SubmissionError,
        SubmissionUnknownError,
        UnknownSchedulerError,
        WorkdirError,
        XqueueError,
    )
    from .failures import FailureClass
    from .hooks import hookimpl
    from .job import Job
    from .options import SchedulerOptions
    from .queue import QueueStatistics, Xqueue
    from .resources import Resources
    from .retry import RetryPolicy, RetryRule
    from .scheduler import JobState, Scheduler, SchedulerStats
    from .states import JobStatus
