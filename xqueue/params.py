"""A job's parameters: the point of a sweep it runs, kept with the job.

``feed(..., params={"decay": 0.1})`` records plain data with a job, in its spec
(``specs.jsonl``) next to its command, so ``xqueue status`` can show and filter on it (``--param
decay=0.1``) long after the run, without knowing how the command used it. They are part
of the job's spec, so of its identity on resume: a job fed again at the same index with
other parameters is another job, and runs.

Values are what JSON holds (strings, numbers, booleans, lists and tables of those), so
the record reads back as it was fed; names are words, so each can be a shell variable
(``XQUEUE_PARAM_<NAME>``, see ``xqueue.sweep``) and ``--param name=value`` can name it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ._text import check_text
from .errors import ConfigError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""What a parameter may be called (matched whole): a word, usable as a variable name."""


def check_params(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``params`` as a plain dict (None when empty), or ConfigError naming what is wrong."""
    if params is None:
        return None
    if not isinstance(params, Mapping):
        raise ConfigError(f"params must map names to values, not {type(params).__name__}")
    checked: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(f"parameter name {name!r} must be a word (letters, digits, _)")
        checked[name] = check_value(value, f"parameter {name!r}")
    return checked or None


def check_value(value: Any, what: str) -> Any:
    """``value`` if JSON can hold it as it is (containers copied), else ConfigError."""
    if value is None or isinstance(value, (str, bool, int)):
        return check_text(value, what) if isinstance(value, str) else value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{what} is {value}, which a JSON record cannot hold")
        return value
    if isinstance(value, (list, tuple)):
        return [check_value(v, what) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: check_value(v, what) for k, v in value.items()}
    raise ConfigError(
        f"{what} is a {type(value).__name__}; parameters are strings, numbers, booleans, "
        "or lists and tables of those"
    )


def text(value: Any) -> str:
    """How a parameter is written in a command: strings as they are, booleans as ``true``
    and ``false`` (as TOML and JSON write them), numbers by ``str`` (``0.001``, ``1e-05``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    raise ConfigError(
        f"a {type(value).__name__} parameter cannot be written into a command; give it to "
        "a Python call instead, or use strings and numbers"
    )


def parse_filters(pairs: Iterable[str]) -> dict[str, list[str]]:
    """``NAME=VALUE`` strings (``xqueue status --param``) as the values wanted per name."""
    wanted: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not NAME.fullmatch(name):
            raise ConfigError(f"--param {pair!r} is not NAME=VALUE")
        wanted.setdefault(name, []).append(value)
    return wanted


def matches(params: Any, wanted: Mapping[str, list[str]]) -> bool:
    """Whether recorded ``params`` have, for every name wanted, one of its values.

    A value is compared as what the record holds: a number numerically (``0.1``,
    ``1e-1`` and ``0.10`` are one number), a boolean as ``true``/``false`` (or 1/0),
    a string exactly, a list or table as JSON.
    """
    if not isinstance(params, Mapping):
        return not wanted
    for name, values in wanted.items():
        if name not in params or not any(_equal(params[name], v) for v in values):
            return False
    return True


def _equal(value: Any, given: str) -> bool:
    if isinstance(value, str):
        return value == given
    word = given.strip().lower()
    if isinstance(value, bool):
        return word in (("true", "1") if value else ("false", "0"))
    if isinstance(value, int):
        try:  # exactly: a 64-bit seed is not a float's (2**63 - 1 matched nothing)
            return int(word) == value
        except ValueError:
            pass
    if isinstance(value, (int, float)):
        try:
            return float(word) == value
        except ValueError:
            return False
    import json

    try:
        return bool(json.loads(given) == value)
    except ValueError:
        return False
