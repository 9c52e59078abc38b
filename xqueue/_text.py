"""User strings on their way to a shell script or a backend: what is refused, what is escaped.

A job's arguments, environment and name end up in a wrapper script, on a backend's
command line or in an API request. Every such string is checked once, when the job is
fed, so a bad one fails there with the argument it came from named, and never later as
a broken or retried submission:

- a NUL cannot be passed through an argv, an environment or a shell script at all (the
  C strings underneath end at it), so it is refused rather than silently cut;
- a lone surrogate (text that is not valid Unicode) cannot be written as UTF-8, which is
  how every script and command line gets it, so it is refused too.

Everything else (newlines, quotes, ``$(...)``, unicode) is legal and reaches the job
byte for byte: the writers quote it (``shlex.quote``) or escape it (``comment``).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""What a shell accepts as a variable name (matched whole: no trailing newline)."""
RESERVED_ENVS = ("XQUEUE_JOB_INDEX", "XQUEUE_JOB_ATTEMPT", "XQUEUE_JOB_DIR")
"""Set by xqueue for every job: the backends find and kill jobs by them."""
# The longest string exec passes, in bytes with its NUL (Linux's MAX_ARG_STRLEN): an
# environment entry, NAME=value, longer than this reaches no program on any backend.
LONGEST_EXEC_STRING = 32 * 4096


def too_long_for_exec(text: str) -> bool:
    """Whether exec refuses ``text`` as one argument ("Argument list too long"). It is
    asked for every job's command: one under a quarter of the limit in characters (no
    encoding makes it longer in bytes) is the one length measured."""
    if len(text) * 4 < LONGEST_EXEC_STRING:
        return False
    return len(os.fsencode(text)) + 1 > LONGEST_EXEC_STRING


def check_text(value: str, what: str) -> str:
    """``value`` unchanged, or ConfigError naming ``what`` when no script can carry it."""
    if "\0" in value:
        raise ConfigError(f"{what} contains a NUL character, which no command or script can pass")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"{what} is not valid Unicode ({exc.reason} at position {exc.start}); "
            "xqueue passes text to jobs as UTF-8"
        ) from None
    return value


def env_value(name: str, value: Any) -> str:
    """The string an environment value becomes.

    Environment values are strings. For convenience some other types are converted,
    by a fixed rule: ``bool`` becomes ``"1"`` or ``"0"`` (what shell tests and most
    programs read as true/false; ``str(False)`` would be the non-empty ``"False"``),
    ``int`` and ``float`` become ``str(value)``, and a path (``os.PathLike``) its
    ``os.fspath``. Anything else, ``None`` included, is refused: there is no value
    that unambiguously means "unset" or a list in an environment.
    """
    what = f"environment variable {name!r}"
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "1" if value else "0"
    elif isinstance(value, (int, float)):
        text = str(value)
    elif isinstance(value, os.PathLike):
        path = os.fspath(value)
        text = path if isinstance(path, str) else os.fsdecode(path)
    else:
        hint = " (leave the variable out, or give '' for empty)" if value is None else ""
        raise ConfigError(
            f"{what} must be a string (or bool/int/float/path), not {type(value).__name__}{hint}"
        )
    check_text(text, what)
    if (len(name) + len(text)) * 4 >= LONGEST_EXEC_STRING:  # only then is it measured
        size = len(f"{name}={text}".encode()) + 1
        if size > LONGEST_EXEC_STRING:
            raise ConfigError(
                f"{what} is {size} bytes with its name: no program can receive an "
                f"environment entry over {LONGEST_EXEC_STRING} (exec refuses it, 'Argument "
                "list too long'); write the value to a file and pass its path"
            )
    return text


def check_envs(envs: Mapping[Any, Any]) -> dict[str, str]:
    """Names a shell accepts and xqueue does not reserve; values converted by ``env_value``."""
    if not isinstance(envs, Mapping):  # iterated, "A=1" was the names '=' and '1'
        raise ConfigError(f"envs is a dict of variable names to values, not {envs!r}")
    bad = [k for k in envs if not isinstance(k, str) or not ENV_NAME.fullmatch(k)]
    if bad:
        raise ConfigError(f"invalid environment variable name(s) {bad}: use letters, digits and _")
    reserved = [k for k in envs if k in RESERVED_ENVS]
    if reserved:
        raise ConfigError(
            f"environment variable(s) {reserved} are set by xqueue for every job "
            "(it finds and kills jobs by them); use other names"
        )
    return {k: env_value(k, v) for k, v in envs.items()}


def optional_envs(envs: Any) -> dict[str, str] | None:
    """``check_envs`` of a job's envs, None for none (None or an empty dict): "" or []
    is checked, and refused as no dict."""
    return None if envs is None else check_envs(envs) or None


def comment(text: str, limit: int = 200) -> str:
    """``text`` made safe for one line of a shell comment: it cannot end the line.

    Every character that is not printable (newlines, carriage returns, NUL, the Unicode
    line separators, lone surrogates) is written as its Python escape, so the comment
    still shows what it was; the rest is kept, cut at ``limit`` characters.
    """
    out = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit]
    )
    return out + ("..." if len(text) > limit else "")


_CR = "\"$(printf '\\r')\""


def quote(word: str) -> str:
    """``shlex.quote``, except that a carriage return is spelled ``"$(printf '\\r')"``.

    sbatch refuses a batch script that holds a carriage return before a newline (it takes
    it for a DOS file), even inside quotes, so a script never holds a raw one: the parts
    between them are quoted and joined by that expansion into the same single word.
    """
    if "\r" not in word:
        return shlex.quote(word)
    return _CR.join(shlex.quote(part) if part else "" for part in word.split("\r"))


def export(name: str, value: str) -> str:
    """One ``export NAME='value'`` line; the name is checked again here because it is the
    one word of a script that cannot be quoted (a plugin may have changed ``job.envs``)."""
    if not ENV_NAME.fullmatch(name):
        raise ConfigError(f"invalid environment variable name {name!r}")
    return f"export {name}={quote(value)}"
