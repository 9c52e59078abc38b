"""Reading a local process's state and start time from /proc.

The start time is what tells a job's process apart from an unrelated one that got the
same pid later, so every backend that records a local pid checks it through here.
"""

from __future__ import annotations


def stat(pid: int) -> tuple[bytes, int] | None:
    """(state letter, start time in clock ticks since boot), or None if there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            line = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = line[line.rindex(b")") + 2 :].split()
    return fields[0], int(fields[19])


def start_ticks(pid: int) -> int | None:
    """Start time of a live process in clock ticks since boot; None if gone or a zombie."""
    found = stat(pid)
    return None if found is None or found[0] == b"Z" else found[1]
