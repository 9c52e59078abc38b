"""Text from users and workdirs made safe to print, without importing rich.

Job names, commands, reasons and stderr lines come from users and from workdirs. An
escape sequence in one could rewrite the screen or the window title, and a bidirectional
override could make it read as something else, so they are shown as escapes.
"""

from __future__ import annotations

import signal
import unicodedata
from typing import Any

from ..states import JobStatus

MAX_ROWS = 50  # rows of failed jobs shown by default, after a run and by xqueue status

# A skipped job did not succeed either: left out, a run with a failure and the jobs it
# held back reported "3 job(s): 1 failed, 1 finished, 1 skipped" over a table of one.
NOT_SUCCEEDED = (JobStatus.FAILED, JobStatus.KILLED, JobStatus.SKIPPED)

_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(32), *range(127, 160))}
_ESCAPES.update({9: "\\t", 10: "\\n", 13: "\\r"})
# Bidirectional overrides reorder what is shown ("Trojan source").
_ESCAPES.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def printable(text: str) -> str:
    """``text`` with control characters and bidirectional overrides spelled as escapes."""
    return text.translate(_ESCAPES)


def width(text: str) -> int:
    """The columns a terminal gives ``text``: two for a wide character (CJK, most
    emoji), none for a combining mark or a zero-width one, one for the rest. A table
    padded by ``len`` put every cell after such a name out of line."""
    if text.isascii():  # the common case, in C: a million rows of ``status --all``
        return len(text)
    return sum(map(_char_width, text))


def _char_width(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def clip(text: str, columns: int) -> str:
    """``text`` cut to at most ``columns`` columns (``width``), ending in "…" if cut."""
    if width(text) <= columns:
        return text
    if text.isascii():
        return text[: columns - 1] + "…"
    kept, used = [], 1  # the "…" takes one column
    for char in text:
        used += _char_width(char)
        if used > columns:
            break
        kept.append(char)
    return "".join(kept) + "…"


def pad(text: str, columns: int) -> str:
    """``text`` padded with spaces to ``columns`` columns, as ``str.ljust`` by ``width``."""
    return text + " " * (columns - width(text))


def rc_text(rc: Any) -> str:
    """A return code as a user reads it: ``137 (SIGKILL)`` for a code a signal's end
    gives, as a shell reports it and xqueue records it (128 + the signal), since a bare
    137 says nothing to most. Only a hint: a program may also exit 137 on its own."""
    if type(rc) is not int:
        return "-"
    try:
        # The standard signals only: a code of 192 is likelier a program's own choice.
        return f"{rc} ({signal.Signals(rc - 128).name})" if 128 < rc < 160 else str(rc)
    except ValueError:  # no such signal here
        return str(rc)


def status_text(status: str, failure: str | None) -> str:
    """A job's status, with why it failed when that is known: ``failed (TIMEOUT)``, as the
    run's summary and ``xqueue status`` both show it."""
    return f"{status} ({failure})" if status == "failed" and failure else status
