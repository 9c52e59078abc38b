"""Text from users and workdirs made safe to print, without importing rich.

Job names, commands, reasons and stderr lines come from users and from workdirs. An
escape sequence in one could rewrite the screen or the window title, and a bidirectional
override could make it read as something else, so they are shown as escapes.
"""

from __future__ import annotations

import signal
from typing import Any

MAX_ROWS = 50  # rows of failed jobs shown by default, after a run and by xqueue status

_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(32), *range(127, 160))}
_ESCAPES.update({9: "\\t", 10: "\\n", 13: "\\r"})
# Bidirectional overrides reorder what is shown ("Trojan source").
_ESCAPES.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def printable(text: str) -> str:
    """``text`` with control characters and bidirectional overrides spelled as escapes."""
    return text.translate(_ESCAPES)


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
