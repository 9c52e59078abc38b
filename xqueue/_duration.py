"""Durations as people write them, read one way for every option in seconds and for a
job's walltime: ``timeout=01:30:00`` was refused where ``walltime="01:30:00"`` was taken,
and ``walltime="1500ms"`` the other way round."""

from __future__ import annotations

import re

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?"
_WITH_UNIT = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)?", re.IGNORECASE | re.ASCII)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DAYS = re.compile(r"(\d+)-(.*)", re.ASCII | re.DOTALL)
_CLOCK = re.compile(r"\d+(?::\d+){0,2}", re.ASCII)
FORMS = "a number, or with a unit: 500ms, 90s, 5m, 2h, or [D-]HH:MM:SS"
SIXTY = "minutes and seconds after another field are 00 to 59"


def duration(text: str) -> float:
    """Seconds from ``"90"``, ``"2.5"``, ``"1e3"``, ``"500ms"``, ``"90s"``, ``"5m"``,
    ``"2h"``, ``"1d"`` (units in either case), ``"MM:SS"`` or ``"HH:MM:SS"``; after
    ``D-`` (days), Slurm's ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``, or a number with its
    unit (``"1-2h"``). A bare number is seconds, as everywhere in xqueue, except right
    after the days, where it is Slurm's hours. ValueError (saying what is wrong) for
    anything else; what is too large to be a number is infinite, for the caller to
    refuse."""
    text = text.strip()
    days = _DAYS.fullmatch(text)
    rest = text if days is None else days[2].strip()
    match = _WITH_UNIT.fullmatch(rest)
    if match is not None and (days is None or match[2] is not None):
        return _days(days) + float(match[1]) * _UNITS[(match[2] or "s").lower()]
    if _CLOCK.fullmatch(rest) is None or (days is None and ":" not in rest):
        raise ValueError(f"use {FORMS}")
    fields = [int(field) for field in rest.split(":")]
    if any(field > 59 for field in fields[1:]):  # "1:99:99" was 2 h 40 min 39 s
        raise ValueError(SIXTY)
    if days is None:  # [HH:]MM:SS
        hours, minutes, seconds = [0] * (3 - len(fields)) + fields
    else:  # D-HH[:MM[:SS]]: after the days, hours come first
        hours, minutes, seconds = fields + [0] * (3 - len(fields))
    return _days(days) + float(hours * 3600 + minutes * 60 + seconds)


def _days(days: re.Match[str] | None) -> float:
    return 0.0 if days is None else int(days[1]) * 86400.0
