"""The Job: one command, its settings, and where it is in its life.

A Job is a plain in-memory record that the engine owns; schedulers read it and
never change its status themselves (they report states, the engine applies them).
It uses ``__slots__`` because a run may hold 100,000 of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import anyio

from ._text import check_text, optional_envs
from .capacity import Claim
from .errors import ConfigError, InvalidTransitionError, QueueStateError
from .failures import FailureClass
from .resources import Resources
from .states import TRANSITIONS, JobStatus, S
from .wrapping import Wrap

# Names of the files a job keeps in its folder, once per job.
SPEC_FILE = "job.json"  # older versions; read, never written (see ``records``)
STATUS_FILE = "job.status"
# Kinds of the files each attempt writes, as ``job.<attempt>.<kind>``: every attempt has its
# own, so a late earlier attempt (a cluster job that surfaces after it was given up) can
# never overwrite the output of the current one or settle it with its own return code.
STDOUT = "stdout"
STDERR = "stderr"
SCRIPT = "sh"
RC = "rc"
STARTED = "started"
# A shell command too long for exec, which a wrapper script writes and runs from a file.
COMMAND = "cmd"


_J = TypeVar("_J", bound="Job")


def attempt_file(kind: str, attempt: int) -> str:
    return f"job.{attempt}.{kind}"


def normalize_command(cmd: str | Sequence[Any]) -> str | tuple[str, ...]:
    """A string stays a shell command; a sequence becomes an argv tuple of strings.

    Arguments are converted with ``str`` (a path with ``os.fspath``); ``None`` and bytes
    are refused, as is a NUL anywhere (see ``_text``): the error names the argument.
    """
    if isinstance(cmd, str):
        if not cmd.strip():
            raise ConfigError("empty command: give a program to run, e.g. ['echo', 'hi']")
        return check_text(cmd, "the command")
    if type(cmd) in (list, tuple):  # the common case, checked in C: all plain text
        try:
            joined = "".join(cmd)
        except TypeError:  # not all strings: each argument is converted or refused
            joined = "\0"
        if joined.isascii() and "\0" not in joined and cmd and cmd[0].strip():
            return tuple(cmd)
    if isinstance(cmd, (bytes, bytearray)) or not isinstance(cmd, Sequence):
        raise ConfigError(f"a command is a string or a list of arguments, not {type(cmd).__name__}")
    argv = tuple([_argument(i, a) for i, a in enumerate(cmd)])
    if not argv or not argv[0].strip():
        raise ConfigError("empty command: give a program to run, e.g. ['echo', 'hi']")
    return argv


def _argument(i: int, arg: Any) -> str:
    if type(arg) is str and arg.isascii() and "\0" not in arg:
        return arg  # the common case, checked without a call
    what = f"argument {i} of the command"
    if arg is None or isinstance(arg, (bytes, bytearray)):
        raise ConfigError(f"{what} is {type(arg).__name__}; give a string")
    return check_text(os.fspath(arg) if isinstance(arg, os.PathLike) else str(arg), what)


def check_name(name: Any) -> str | None:
    """A job name as given (None: derived from the command); refused if no script can hold it."""
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        raise ConfigError(f"a job name is a string, not {type(name).__name__}")
    return check_text(name, "the job name")


def default_name(command: str | tuple[str, ...]) -> str:
    if isinstance(command, str):
        return command.strip()[:48]
    # rpartition is os.path.basename for a str, without its Python-level call
    return " ".join([command[0].rpartition("/")[2], *command[1:3]])[:48]


class Job:
    """A command to run, with its environment, resources and state.

    A pipeline framework may subclass it (``Xqueue(job_class=...)``, ``Xqueue.feed_job``)
    to carry its own record: add attributes, properties and methods, and extend
    ``__init__`` (keeping its parameters, which ``feed`` passes by keyword). A subclass
    without ``__slots__`` gets a ``__dict__``, about 100 bytes more per job. Without
    subclassing, ``data`` is a slot free for the embedder. The engine owns the rest:
    ``index`` and ``dir`` are assigned when the job is fed; ``status``, ``attempt``,
    ``jid``, ``rc`` and ``reason`` change only through it. Overriding those, or
    ``transition``, ``wait``, ``argv``, ``command_argv`` or the path methods, is not
    supported.
    """

    __slots__ = (
        "_base_attempt",
        "_done",
        "_failures",
        "_grown",
        "_kill_requested",
        "_pending_state",
        "_since",
        "_wrap",
        "after",
        "attempt",
        "cache_key",
        "claim",
        "command",
        "data",
        "dir",
        "envs",
        "failure",
        "index",
        "jid",
        "name",
        "params",
        "rc",
        "reason",
        "resources",
        "status",
    )

    def __init__(
        self,
        index: int,
        command: str | Sequence[Any],
        *,
        envs: Mapping[str, Any] | None = None,
        name: str | None = None,
        resources: Resources | dict[str, Any] | None = None,
        dir: str = "",
    ) -> None:
        self.index = index
        self.command = normalize_command(command)
        self.envs = optional_envs(envs)
        # Checks only for what was given: a job is made for every feed.
        self.name = (name is not None and check_name(name)) or default_name(self.command)
        self.resources = None if resources is None else Resources.from_value(resources)
        self.dir = dir
        self.status = S.INIT  # JobStatus.INIT, read faster (see S)
        self.jid: str | None = None
        self.rc: int | None = None
        self.reason = ""
        # Why its last failed attempt failed; None once it succeeded, or never failed.
        self.failure: FailureClass | None = None
        self.attempt = 0
        self.data: Any = None  # free for embedders (a pipeline's own job record)
        # What it was fed with as ``params`` (a sweep's point): part of its spec, read-only.
        self.params: dict[str, Any] | None = None
        # The jobs it runs after (``feed(after=...)``), fixed when it is fed: read-only.
        self.after: tuple[Job, ...] = ()
        # What its latest start was given (a host, GPU ids, slot values); set by the engine.
        self.claim: Claim | None = None
        self._done: anyio.Event | None = None
        self._kill_requested = False
        self._base_attempt = 0  # attempts that do not count against num_retries
        self._pending_state: Any = None  # a backend's verdict waiting for its kill
        self._failures: dict[FailureClass, int] | None = None  # failed attempts by class
        self._grown = False  # resources grown by a retry policy (the spec has the fed ones)
        # When an earlier run journaled the submission of the attempt it re-adopts.
        self._since = 0.0
        # What decides whether an earlier success counts (``feed(cache_key=...)``).
        self.cache_key: str | None = None
        # Shell lines around this attempt's command (``wrapping``), set at submission.
        self._wrap: Wrap | None = None

    @property
    def command_argv(self) -> tuple[str, ...]:
        """The job's own argv: a list command as given, a string through ``sh -c --``
        (without the ``--``, a line such as ``-rf`` or ``+e`` was read as the shell's
        options and failed with "Illegal option", rc 2, instead of "not found", 127)."""
        if isinstance(self.command, str):
            return ("/bin/sh", "-c", "--", self.command)
        return self.command

    @property
    def argv(self) -> tuple[str, ...]:
        """The exact argv to execute: ``command_argv``, inside ``/bin/sh -c`` when the
        run adds shell lines around it (``prescript``, the jobcmd hooks: ``wrapping``)."""
        return self.argv_with(self.command_argv)

    def argv_with(self, command_argv: tuple[str, ...]) -> tuple[str, ...]:
        """``argv`` with ``command_argv`` in the place of the job's own: a backend that
        runs a command too long for exec from a file keeps the run's shell lines."""
        if self._wrap is not None:
            return self._wrap.argv(command_argv)
        return command_argv

    @property
    def slots(self) -> dict[str, Any]:
        """The slot values (axis -> value) its latest start was given; read-only.

        ``capacity.fill_slots(text, job.slots)`` puts them into a ``{axis}`` template.
        """
        return dict(self.claim.slots) if self.claim is not None else {}

    @property
    def gpus(self) -> tuple[str, ...]:
        """The GPU ids its latest start was given (also in its CUDA_VISIBLE_DEVICES)."""
        return self.claim.gpus if self.claim is not None else ()

    @property
    def kill_requested(self) -> bool:
        """True once a kill was asked for, so its end is reported as KILLED."""
        return self._kill_requested

    @property
    def stdout_path(self) -> str:
        """The current attempt's stdout (the first attempt's before any was made)."""
        return self.attempt_path(STDOUT)

    @property
    def stderr_path(self) -> str:
        return self.attempt_path(STDERR)

    def path(self, filename: str) -> str:
        return os.path.join(self.dir, filename)

    def attempt_path(self, kind: str, attempt: int | None = None) -> str:
        """The file of ``kind`` (``STDOUT``, ``RC``, ...) of one attempt, the current by default."""
        return os.path.join(self.dir, attempt_file(kind, attempt or max(self.attempt, 1)))

    def transition(self, new: JobStatus) -> JobStatus:
        """Move to ``new`` if the state table allows it; return the old state."""
        old = self.status
        if new not in TRANSITIONS[old]:  # can_transition, inline: every move passes here
            raise InvalidTransitionError(self, old, new)
        self.status = new
        if self._done is not None and new.is_final:
            self._done.set()
        return old

    async def wait(self: _J) -> _J:
        """Wait until the job reaches a final state in this run, then return it (typed as
        the caller's own job class: ``await (await q.submit(f)).wait()`` is a ``CallJob``
        whose ``result()`` keeps its type)."""
        if not self.status.is_final:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()
            if not self.status.is_final:  # set by ``_abandon``
                raise QueueStateError(
                    f"job {self.index} ({self.name}) will not end: its queue was closed "
                    f"while it was {self.status.value}"
                )
        return self

    def _abandon(self) -> None:
        """Its queue closed with it not ended: whoever waits for it is told so (``wait``
        raises) rather than wait for ever. For the engine only."""
        if not self.status.is_final:
            if self._done is None:
                self._done = anyio.Event()
            self._done.set()

    def __repr__(self) -> str:
        rc = "" if self.rc is None else f" rc={self.rc}"
        return f"<Job {self.index} {self.name!r} {self.status.name}{rc}>"
