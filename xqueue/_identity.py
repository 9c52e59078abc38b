"""Which process is a workdir's controller, told apart from every other process.

A run writes ``pid@ticks`` into the workdir's lock file when it takes the lock (``ticks``:
the process's start time in clock ticks since boot, from /proc). ``xqueue cancel`` signals
that process only when all of these hold, checked on a pidfd opened first, so the pid
cannot name another process between the checks and the signal:

- the lock is held (a run is in progress);
- /proc/locks shows that very pid holding the exclusive flock on the lock file's inode;
- the process started at the recorded time.

The lock file's content is only a claim: whoever can write the workdir could put any pid
there. The second check is what makes a planted pid useless (only the process that took
the flock is named there by the kernel); the third catches a pid reused since.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from functools import cache

from .errors import XqueueError
from .schedulers._proc import start_ticks


def own_identity() -> str:
    """This process as ``pid@ticks`` (the pid alone where /proc cannot tell its start)."""
    return _identity_of(os.getpid())  # by pid: a forked child is another process


@cache
def _identity_of(pid: int) -> str:
    ticks = start_ticks(pid)
    return str(pid) if ticks is None else f"{pid}@{ticks}"


CANCELLING = "cancel"
"""Written after its identity by an ``xqueue cancel`` that holds a workdir's lock (no
controller was alive): a second cancel must not take it for a run and signal it."""


def read_claim(text: str) -> tuple[str, bool]:
    """A lock file's content as (the holder's ``pid@ticks``, whether it is a cancel)."""
    words = text.split()
    return (words[0] if words else ""), words[1:] == [CANCELLING]


def parse_identity(text: str) -> tuple[int, int | None] | None:
    """(pid, start ticks or None) from a lock file's content; None if it names no process."""
    pid, sep, ticks = read_claim(text)[0].partition("@")
    if not pid.isascii() or not pid.isdigit() or int(pid) <= 0:
        return None
    if not sep:
        return int(pid), None
    if not ticks.isascii() or not ticks.isdigit():
        return None
    return int(pid), int(ticks)


def flock_holders(inode: int) -> set[int]:
    """The pids that hold an exclusive flock on a file of this inode (from /proc/locks).

    Lines look like ``3: FLOCK  ADVISORY  WRITE 4242 fe:00:2280748 0 EOF``; waiters
    (``3: -> FLOCK ...``) hold nothing and are skipped. The device is not compared: it
    reads differently on overlay file systems, and a pid that holds a lock on another
    file of the same inode number still had to take it itself.
    """
    try:
        with open("/proc/locks", "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return set()
    found = set()
    suffix = f":{inode}".encode()
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != b"FLOCK" or fields[3] != b"WRITE":
            continue
        if fields[5].endswith(suffix) and fields[4].isdigit():
            found.add(int(fields[4]))
    return found


@dataclass(frozen=True)
class Controller:
    """A verified controller, with a pidfd that names it and nothing else."""

    pid: int
    pidfd: int

    def signal(self, sig: signal.Signals) -> None:
        signal.pidfd_send_signal(self.pidfd, sig)

    def close(self) -> None:
        os.close(self.pidfd)


def verify(claim: str, lock_inode: int) -> Controller:
    """The controller that ``claim`` (the lock file's content) names, checked as the module
    says; XqueueError saying why when it is not the process holding the lock."""
    parsed = parse_identity(claim)
    if parsed is None:
        raise XqueueError(
            f"the workdir's lock names no process ({claim[:40]!r}); refusing to signal anything"
        )
    pid, ticks = parsed
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise XqueueError(
            f"the process the workdir's lock names (pid {pid}) is gone; try again"
        ) from None
    try:
        if pid not in flock_holders(lock_inode):
            raise XqueueError(
                f"pid {pid}, named in the workdir's lock file, does not hold the lock: "
                "someone else wrote that file; refusing to signal it"
            )
        if ticks is not None and start_ticks(pid) != ticks:
            raise XqueueError(
                f"pid {pid} is not the process that took the workdir's lock (its start time "
                "differs); refusing to signal it"
            )
    except BaseException:
        os.close(pidfd)
        raise
    return Controller(pid, pidfd)
