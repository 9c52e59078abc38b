"""A portable resource request that every backend maps to its own flags.

Values are normalised once, here, so backends never parse user strings: memory is
in MiB, walltime in seconds. ``slots`` names axes of the queue's named slots
(``Xqueue(slots=...)``, see ``capacity``): the job gets one value of each while it runs.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from ._duration import duration
from ._suggest import did_you_mean_any
from .errors import ConfigError

_MEM_UNITS = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
# ASCII digits only: re's \d (and str.isdigit) take other scripts' digits and "²", which
# int() then refused with a bare ValueError.
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE | re.ASCII)
# The most a request may say: past these, arithmetic on it (a retry's growth, a deadline)
# overflowed a float in the middle of a run.
_MAX_MIB = 1 << 40  # an exbibyte
_MAX_SECONDS = 1000 * 365 * 86400  # a thousand years


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _whole(number: float, what: str, value: object) -> int:
    """``int(number)``; ConfigError for a number too large to be a float (OverflowError)."""
    if not math.isfinite(number):
        raise ConfigError(f"{what} {value!r} is too large")
    return int(number)


def parse_memory(value: int | str) -> int:
    """Memory in MiB from ``2048``, ``"2G"``, ``"512MB"``, ``"1.5GiB"``; ints are MiB."""
    if isinstance(value, bool):
        raise ConfigError(f"memory must be a size such as '4G', not {value!r}")
    if isinstance(value, int):
        mib = value
    else:
        m = _MEM_RE.match(str(value))
        if not m:
            raise ConfigError(f"invalid memory {value!r}: use a number of MiB or e.g. '512M', '4G'")
        # A bare "B" is bytes ("4096B" was read as 4096 MiB).
        unit = _MEM_UNITS[m.group(2).lower()] if m.group(2) or not m.group(3) else 1 / 1024**2
        mib = _whole(float(m.group(1)) * unit, "memory", value)
        if mib <= 0 and float(m.group(1)) > 0:
            raise ConfigError(f"memory {value!r} is under 1 MiB, the least a job can ask")
    if mib <= 0:
        raise ConfigError(f"memory must be positive, got {value!r}")
    if mib > _MAX_MIB:
        raise ConfigError(f"memory {_shown(value)} is too large")
    return mib


def parse_walltime(value: int | float | str) -> int:
    """Seconds from ``3600``, ``"90m"``, ``"2h"``, ``"1-12:00:00"``, ``"01:30:00"``."""
    if isinstance(value, bool):
        raise ConfigError(f"walltime must be a duration, not {value!r}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):  # int() raised, a traceback
            raise ConfigError(f"walltime must be a finite number of seconds, got {value!r}")
        seconds = int(value)
    else:
        try:
            seconds = _whole(duration(str(value)), "walltime", value)
        except ValueError as exc:
            raise ConfigError(f"invalid walltime {value!r}: {exc}") from None
    if seconds <= 0:  # 0.5 is cut to 0 whole seconds: "positive" alone misled
        raise ConfigError(f"walltime must be at least 1 second, got {value!r}")
    if seconds > _MAX_SECONDS:
        raise ConfigError(f"walltime {_shown(value)} is too large (at most a thousand years)")
    return seconds


def _axis_names(value: Any) -> tuple[str, ...]:
    """``"gpu"`` or ``["machine", "gpu"]``: the slot axes a job asks a value of."""
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"slots must be an axis name or a list of them, got {value!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"slots names an axis twice: {value!r}")
    return tuple(names)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Resources:
    """What one job asks for; ``None`` means "the backend's default"."""

    cpus: int | None = None
    memory_mb: int | None = None
    gpus: int | None = None
    walltime_s: int | None = None
    slots: tuple[str, ...] | None = None

    @classmethod
    def from_value(cls, value: Resources | dict[str, Any] | None) -> Resources | None:
        """Accept a Resources, a dict with user units (``memory="4G"``) or None."""
        if value is None or isinstance(value, Resources):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"resources must be a dict or Resources, got {type(value).__name__}")
        known = ("cpus", "memory", "gpus", "walltime", "slots")
        unknown = sorted(set(value) - set(known), key=repr)  # keys of any type
        if unknown:
            raise ConfigError(
                f"unknown resource(s) {unknown}{did_you_mean_any(unknown, known)}; "
                f"accepted: {', '.join(known)}"
            )
        return cls(
            cpus=None if value.get("cpus") is None else _positive_int("cpus", value["cpus"]),
            memory_mb=None if value.get("memory") is None else parse_memory(value["memory"]),
            gpus=None if value.get("gpus") is None else _positive_int("gpus", value["gpus"]),
            walltime_s=None if value.get("walltime") is None else parse_walltime(value["walltime"]),
            slots=None if not value.get("slots") else _axis_names(value["slots"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_record(cls, value: Any) -> Resources | None:
        """The request a record holds (``to_dict``'s form), or None if it is not one: a
        record may be torn or edited, and a bad one must not fail the run."""
        if not isinstance(value, dict) or not value or set(value) - _FIELDS - {"slots"}:
            return None
        numbers = {k: v for k, v in value.items() if k != "slots"}
        # cpus and gpus may be 0, as ``from_value`` takes them (a job that asks for no
        # GPU where a profile gives one): refused here, a resume lost a grown request.
        if not all(
            type(v) is int and (v > 0 or (v == 0 and k in _COUNTS)) for k, v in numbers.items()
        ):
            return None
        slots = value.get("slots")
        if slots is not None:
            if not isinstance(slots, (list, tuple)) or not all(
                isinstance(a, str) and a for a in slots
            ):
                return None
            return cls(**numbers, slots=tuple(slots))
        return cls(**numbers)


_FIELDS = {"cpus", "memory_mb", "gpus", "walltime_s"}
_COUNTS = ("cpus", "gpus")
