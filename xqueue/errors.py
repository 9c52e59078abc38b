"""Every exception xqueue raises, so callers can catch one base class.

Hierarchy::

    XqueueError
    ├── ConfigError (also ValueError)      an argument or option is invalid
    │   ├── UnknownSchedulerError (also LookupError)
    │   ├── SchedulerOptionError           a scheduler does not accept an option
    │   └── WorkdirError                   the workdir cannot be created or written
    ├── QueueStateError (also RuntimeError) a method called in the wrong lifecycle state
    ├── InvalidTransitionError             a job was moved between states illegally
    ├── JobFailedError                     a job failed under error_strategy="halt"
    ├── CallError                          a call job gave neither a value nor its exception
    ├── Interrupted                        a run was stopped by SIGTERM or SIGHUP
    ├── SchedulerError                     a backend misbehaved (command failed, unreachable)
    │   ├── SchedulerOutputError           a backend answered with output xqueue cannot read
    │   ├── SubmissionError                a backend refused a submission
    │   └── SubmissionUnknownError         a submission may or may not have reached the backend
    └── PluginError                        a hook implementation raised
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._suggest import did_you_mean

if TYPE_CHECKING:
    from .job import Job
    from .states import JobStatus


class XqueueError(Exception):
    """Base class of every error raised by xqueue itself."""


class ConfigError(XqueueError, ValueError):
    """Raised when an argument to xqueue is invalid, before any job runs."""


class UnknownSchedulerError(ConfigError, LookupError):
    """Raised when a scheduler name is not registered; the message lists the names that are."""

    def __init__(self, name: str, available: list[str]) -> None:
        self.name = name
        self.available = sorted(available)
        names = ", ".join(self.available) or "none (is xqueue installed, not just on sys.path?)"
        message = (
            f"unknown scheduler {name!r}{did_you_mean(name, self.available)}; "
            f"available schedulers: {names}"
        )
        if name in PLUGIN_SCHEDULERS:
            message += f"; {name!r} comes with its own distribution: {PLUGIN_SCHEDULERS[name]}"
        super().__init__(message)


PLUGIN_SCHEDULERS = {
    "panda": "pip install ./plugins/xqueue-panda (in xqueue's source folder)",
}
"""Schedulers xqueue's project ships as separate plugin distributions, and how to get each."""


class SchedulerOptionError(ConfigError):
    """Raised when scheduler_opts holds a key or value the chosen scheduler cannot use."""


class WorkdirError(ConfigError):
    """Raised when the workdir cannot be created or written to."""


class QueueStateError(XqueueError, RuntimeError):
    """Raised when a queue method is called in a lifecycle state that does not allow it."""


class InvalidTransitionError(XqueueError):
    """Raised when code tries to move a job between two states the state table forbids."""

    def __init__(self, job: Job, old: JobStatus, new: JobStatus) -> None:
        self.job = job
        super().__init__(
            f"job {job.index} ({job.name}): illegal transition {old.name} -> {new.name}"
        )


class JobFailedError(XqueueError):
    """Raised by a run under error_strategy="halt" when a job fails for good.

    It names the job, its return code, the reason and where its stderr is, so the
    user can act without digging through the workdir.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        rc = "no return code" if job.rc is None else f"return code {job.rc}"
        reason = f": {job.reason}" if job.reason else ""
        super().__init__(
            f"job {job.index} ({job.name}) failed with {rc}{reason}; stderr: {job.stderr_path}"
        )


class CallError(XqueueError):
    """Raised by ``CallJob.result()`` when the call gave neither a value nor an exception
    of its own: the job was killed, vanished, could not start the interpreter, or its
    outcome cannot be loaded here. The message names the job and its status."""

    def __init__(self, job: Job, message: str) -> None:
        self.job = job
        super().__init__(message)


class Interrupted(XqueueError):
    """Raised by a run stopped by SIGTERM or SIGHUP, after its running jobs were killed.

    ``signal`` is the signal that stopped it, so a command line can exit 128 + its number.
    """

    def __init__(self, message: str, *, signal: int | None = None) -> None:
        self.signal = signal
        super().__init__(message)


class SchedulerError(XqueueError):
    """Raised or recorded when a scheduler backend fails (a command errors, a host is down)."""


class JobAlreadyEnded(SchedulerError):
    """A kill's answer for a job that had ended on its own: nothing was signalled.

    The engine then records the end the backend reports (its return code), not a kill:
    a job that had succeeded before its kill came (a run halted, or stopped, just as it
    ended; a re-adopted job whose end was not collected yet) is not run again.
    """


class SubmissionError(SchedulerError):
    """Recorded on a job when its scheduler refused or failed the submission.

    ``retryable`` is False when trying again cannot help (the command does not exist),
    so error_strategy="retry" does not waste attempts on it. ``transient`` is True when
    nothing was submitted because the backend could not be reached (its controller is
    restarting): the engine then submits the job again after a pause, without spending
    an attempt, for as long as the outage tolerance allows.
    """

    def __init__(self, message: str, *, retryable: bool = True, transient: bool = False) -> None:
        self.retryable = retryable
        self.transient = transient
        super().__init__(message)


class SchedulerOutputError(SchedulerError):
    """A backend command answered with output its parser cannot read.

    It is a SchedulerError like any other failure of that command, so one garbled
    ``qstat`` answer counts against the status-query budget instead of ending the run.
    The message names the command and shows the start of its output.
    """

    def __init__(self, command: str, output: str, detail: str = "") -> None:
        self.command = command
        self.output = output
        head = output[:200] + ("..." if len(output) > 200 else "")
        why = f" ({detail})" if detail else ""
        super().__init__(f"cannot read the output of {command}{why}: {head!r}")


class SubmissionUnknownError(SchedulerError):
    """A submission whose outcome is unknown: it timed out, or the connection dropped.

    Unlike a refused submission (``SubmissionError``), the job may be queued on the
    backend already, so submitting it again could run it twice. The engine first looks
    for it by its tag (``Scheduler.recover_job``) and resubmits only if it is not there.
    """


class PluginError(XqueueError):
    """Raised when a hook implementation raises; names the plugin and the hook."""

    def __init__(self, plugin: str, hook: str, cause: BaseException) -> None:
        self.plugin = plugin
        self.hook = hook
        self.cause = cause
        super().__init__(f"plugin {plugin!r} raised in hook {hook}: {cause!r}")

    def reraised(self) -> BaseException:
        """What the run raises once stopped: a plugin's sys.exit() or a KeyboardInterrupt
        in a hook as itself (the caller's ``except KeyboardInterrupt`` sees it), any
        other error as this one."""
        return self.cause if isinstance(self.cause, (SystemExit, KeyboardInterrupt)) else self
