"""Typed scheduler options, parsed from ``scheduler_opts`` or the CLI's ``-o key=value``.

Each scheduler declares a dataclass of the options it understands. Parsing coerces the
strings the command line gives into the declared types and rejects unknown keys with the
list of accepted ones, unless the scheduler passes extra keys through to its backend
(Slurm hands them to sbatch as long options).

Two namespaces share ``scheduler_opts``: xqueue's own options (the fields) and, for a
backend that passes keys through, the batch system's native flags. A bare key is
xqueue's when a field has its name, else native. Either side can be named outright:
``xq_<option>`` (``xq_poll_interval``) is always xqueue's own and never reaches the
backend, and ``native={"pe": "smp 4"}`` (or ``native.pe="smp 4"``, as the CLI and
TOML spell it) always goes to the backend, even under a name xqueue also uses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from ._duration import FORMS, duration
from ._suggest import did_you_mean
from .errors import ConfigError, SchedulerOptionError
from .wrapping import check_fragment

T = TypeVar("T", bound="SchedulerOptions")

OWN_PREFIX = "xq_"
"""``xq_<option>``: xqueue's own option, whatever the backend's flags are called."""
NATIVE = "native"
"""``native={...}`` / ``native.<flag>``: the backend's own flags, passed through as given."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# Every float option is a duration in seconds (a timeout, a grace, an interval): given
# as text (the CLI, a profile), it may carry a unit, as people write durations.
_SECONDS = f"seconds ({FORMS})"


@dataclasses.dataclass
class SchedulerOptions:
    """Options every scheduler accepts."""

    poll_interval: float = 1.0
    """Seconds between two batched status queries (polled schedulers only)."""
    submit_concurrency: int = 8
    """How many submissions a scheduler may have in flight at once."""
    kill_grace: float = 5.0
    """Seconds between SIGTERM and SIGKILL when a job is killed."""
    vanish_grace: float = 10.0
    """Seconds a job may be unknown to the scheduler, with no return code, before it is failed."""
    timeout: float = 0.0
    """Seconds any job of the run may run (0: no limit), as xqute's option; a job's own
    ``walltime`` resource takes precedence. Slurm and SGE get it as their own limit."""
    python: str = ""
    """Interpreter that runs Python calls (``Xqueue.submit``) where the jobs run; empty:
    the controller's own ``sys.executable``, right when the backend shares its files and
    Python environment (local, a cluster or SSH host on the same file system)."""
    prescript: str = ""
    """Shell lines run before each job's command, in the job's own shell (``export``,
    ``cd``, ``module load`` apply to the command); see ``xqueue.wrapping``."""
    postscript: str = ""
    """Shell lines run after each job's command; ``$XQUEUE_JOB_RC`` holds its exit status,
    which stays the job's unless a line exits with another."""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keys the scheduler passes through to its backend (only when ``accepts_extra``)."""

    accepts_extra: ClassVar[bool] = False
    above_zero: ClassVar[frozenset[str]] = frozenset()
    """Duration options that 0 breaks rather than turns off: a command's time limit, with
    which every command timed out (and SSH said the server was unreachable)."""

    @classmethod
    def parse(cls: type[T], scheduler: str, raw: Mapping[str, Any] | None) -> T:
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in (raw or {}).items():
            name, value = cls.parse_option(scheduler, key, value)
            if name is None:
                extra[str(key)] = value
            elif name == NATIVE:
                extra.update(value)
            else:
                known[name] = value
        opts = cls(**known, extra=extra)
        opts.validate(scheduler)
        return opts

    @classmethod
    def parse_option(cls, scheduler: str, key: Any, value: Any) -> tuple[str | None, Any]:
        """One option as ``parse`` reads it: its field name (None for a key passed through
        to the backend, ``NATIVE`` for a mapping of native flags) and coerced value. It
        runs none of the checks across options (``validate``), so a caller can blame the
        one key that is wrong (a profile file)."""
        hints = _declared(cls)
        text = str(key)
        if text == NATIVE or text.startswith(f"{NATIVE}."):
            return NATIVE, cls._native(scheduler, text, value)
        name = text.replace("-", "_")
        own = name.startswith(OWN_PREFIX)
        if own:
            name = name[len(OWN_PREFIX) :]
        if name in hints:
            return name, _coerce(scheduler, name, value, hints[name])
        if cls.accepts_extra and not own:
            return None, value
        accepted = ", ".join(sorted(hints))
        raise SchedulerOptionError(
            f"scheduler {scheduler!r} does not accept option {key!r}"
            f"{did_you_mean(name, hints)}; accepted: {accepted}"
        )

    @classmethod
    def _native(cls, scheduler: str, key: str, value: Any) -> dict[str, Any]:
        """``native={...}`` or ``native.<flag>=value`` as {flag: value}."""
        if not cls.accepts_extra:
            raise SchedulerOptionError(
                f"scheduler {scheduler!r} takes no native flags ({key!r}): all its options "
                f"are xqueue's own"
            )
        if key != NATIVE:
            flag = key[len(NATIVE) + 1 :]
            if not flag:
                raise SchedulerOptionError(f"scheduler {scheduler!r}: {key!r} names no flag")
            return {flag: value}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        if not isinstance(value, Mapping):
            raise SchedulerOptionError(
                f"scheduler {scheduler!r}: {NATIVE!r} must map flags to values, "
                f'e.g. native={{"pe": "smp 4"}}; got {value!r}'
            )
        return {str(k): v for k, v in value.items()}

    def validate(self, scheduler: str) -> None:
        """Reject values that parse but cannot work; subclasses extend it."""
        # Every float option is a duration (each backend's timeouts and intervals too).
        for name in [n for n, hint in _declared(type(self)).items() if hint is float]:
            value = getattr(self, name)
            # NaN compares false with everything, so a plain "< 0" would let it through
            # and every wait on it would misbehave silently.
            above = name in self.above_zero
            if not math.isfinite(value) or value < 0 or (above and value == 0):
                raise SchedulerOptionError(
                    f"{scheduler}: {name} must be a finite number of seconds "
                    f"{'> 0' if above else '>= 0'}, got {value!r}"
                )
        if self.submit_concurrency < 1:
            raise SchedulerOptionError(f"{scheduler}: submit_concurrency must be >= 1")
        for name in ("prescript", "postscript"):
            try:
                check_fragment(getattr(self, name), f"{scheduler}: {name}")
            except ConfigError as exc:
                raise SchedulerOptionError(str(exc)) from None


_DECLARED: dict[type[SchedulerOptions], dict[str, Any]] = {}


def _declared(cls: type[SchedulerOptions]) -> dict[str, Any]:
    """The type of each option field of an options class (``extra`` is not an option)."""
    if cls not in _DECLARED:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        _DECLARED[cls] = {f.name: hints[f.name] for f in fields if f.name != "extra"}
    return _DECLARED[cls]


def seconds(value: Any) -> float:
    """A duration given as a number, or as text with a unit (``_seconds``); ValueError,
    TypeError or OverflowError for anything else."""
    if isinstance(value, bool):
        raise TypeError(value)
    return _seconds(value) if isinstance(value, str) else float(value)


def _seconds(text: str) -> float:
    """``"2.5"``, ``"90s"``, ``"5m"``, ``"500ms"``, ``"01:30:00"``: a float option's text,
    in seconds (``_duration.duration``; also what ``float`` reads, such as ``"inf"``,
    which ``validate`` then refuses by name)."""
    try:
        return float(text)
    except ValueError:
        return duration(text)


def _list_or_text(text: str) -> Any:
    """An option of either kind (a container's ``volumes``: a path, or a list of them)
    given as text: a JSON list as a list, as a list option reads it. From the command
    line, ``-o volumes='["/a", "/b"]'`` was one volume of that name. Any other text,
    a word that begins with "[" included, is itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, list) else text


def _coerce(scheduler: str, name: str, value: Any, hint: Any) -> Any:
    """Turn a CLI string into the declared type; pass through values already of that type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        hint = non_none[0] if len(non_none) == 1 else Any
        origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if hint is float:
            return seconds(value)
        if hint is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if hint is str:
            if isinstance(value, (list, tuple)):  # str() of it named a path "['a', 'b']"
                raise ValueError(value)
            return str(value)
        if origin in (dict, list, Mapping) and isinstance(value, str):
            return json.loads(value)
        if hint is Any and isinstance(value, str) and value.lstrip().startswith("["):
            return _list_or_text(value)
    # TypeError: float([1]) from a TOML list; OverflowError: float(10**400) from TOML.
    except (ValueError, TypeError, OverflowError) as exc:
        expected = _SECONDS if hint is float else getattr(hint, "__name__", str(hint))
        raise SchedulerOptionError(
            f"scheduler {scheduler!r}: option {name!r} expects {expected}, got {value!r}"
        ) from exc
    return value
