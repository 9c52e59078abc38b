"""xqueue: run large numbers of jobs from async Python, on whatever compute you have.

Only public names live here; backends are imported when chosen, never at import time.
"""

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

__version__ = "0.1.0"

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
