"""Reading a local process's state and start time from /proc.

The start time is what tells a job's process apart from an unrelated one that got the
same pid later, so every backend that records a local pid checks it through here.
"""

from __future__ import annotations

import os
import signal

import anyio


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


async def wait_exit(pid: int, ticks: int | None = None) -> None:
    """Wait until process ``pid`` exits, without reaping it (a pidfd: no thread, no polling).

    With ``ticks``, the start time recorded for the process, a pid that names another
    process by now means the one awaited is gone: it is checked after the pidfd is
    open, so the pid cannot be reused in between.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if ticks is None or await anyio.to_thread.run_sync(start_ticks, pid) == ticks:
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)


async def kill_group(pid: int, grace: float, after_kill: float) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if the leader outlives ``grace``.

    The caller must know the group is still the job's (a held child or a checked start
    time): a group id is reused once its processes are gone.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, after_kill)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        with anyio.move_on_after(wait):
            await wait_exit(pid)
            return
