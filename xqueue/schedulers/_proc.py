"""Reading a local process's state and start time from /proc.

The start time is what tells a job's process apart from an unrelated one that got the
same pid later, so every backend that records a local pid checks it through here.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from functools import cache
from typing import TypeVar

import anyio

K = TypeVar("K")
_GROUP_POLL = 0.1  # seconds between looks at a group whose leader is gone


def read_proc(pid: int, name: str) -> bytes | None:
    """``/proc/<pid>/<name>``; None for a process gone, or one whose file cannot be read
    (another user's, a setuid program's). Blocking."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as fh:
            return fh.read()
    except OSError:
        return None


def stat_fields(line: bytes) -> list[bytes]:
    """The fields of a ``/proc/<pid>/stat`` line from the state on (state, ppid, pgrp,
    ...): the command name before them may hold spaces and parentheses, so the line is
    split after its last ")"."""
    return line[line.rindex(b")") + 2 :].split()


def stat(pid: int) -> tuple[bytes, int] | None:
    """(state letter, start time in clock ticks since boot), or None if there is no such pid."""
    line = read_proc(pid, "stat")
    if line is None:
        return None
    fields = stat_fields(line)
    return fields[0], int(fields[19])


def start_ticks(pid: int) -> int | None:
    """Start time of a live process in clock ticks since boot; None if gone or a zombie."""
    found = stat(pid)
    return None if found is None or found[0] == b"Z" else found[1]


def exited(pids: Mapping[K, int]) -> list[K]:
    """The keys whose process has exited (a zombie, or gone). Blocking: a /proc read each."""
    return [key for key, pid in pids.items() if start_ticks(pid) is None]


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


def live_groups(pgids: Collection[int]) -> set[int]:
    """The process groups among ``pgids`` that still hold a live process (a zombie does
    not count: an orphan's is reaped whenever init gets to it). Blocking: one pass over
    /proc, made only when a group's leader is gone and its group has to be looked at."""
    return set(_members(pgids)[1])


def leaderless_groups(pgids: Collection[int]) -> dict[int, list[int]]:
    """The groups among ``pgids`` whose leader is gone while other processes live on in
    them (children a stop's SIGTERM did not end, their controller killed before it sent
    SIGKILL), with those processes. No new process can have a group's id while any
    process is in the group; a group whose id some new process took (and leads) has
    that process, with the group's id as its pid, and is left out. The caller still
    checks a member is the job's (its marker): a journal's id is only a claim.
    Blocking: one pass over /proc."""
    pids, found = _members(pgids)
    return {pgid: members for pgid, members in found.items() if pgid not in pids}


def _members(pgids: Collection[int]) -> tuple[set[int], dict[int, list[int]]]:
    """Every live pid, and the live (not zombie) processes of each group of ``pgids``."""
    pids: set[int] = set()
    found: dict[int, list[int]] = {}
    for pid, line in each_process("stat"):
        pids.add(pid)
        fields = stat_fields(line)
        if fields[0] != b"Z" and int(fields[2]) in pgids:
            found.setdefault(int(fields[2]), []).append(pid)
    return pids, found


_JOB_DIR = b"\0XQUEUE_JOB_DIR="


@cache
def boot_offset() -> float:
    """How far this process's time namespace moves the boot clock from the machine's:
    CLOCK_BOOTTIME and the start times /proc shows are both moved by it (0 outside a
    time namespace, or where the kernel has none). A job's start less this is the same
    seen from any namespace: a run resumed in another one found every running job gone."""
    try:
        with open("/proc/self/timens_offsets", "rb") as fh:
            for line in fh:
                name, secs, nsecs = line.split()
                if name == b"boottime":
                    return int(secs) + int(nsecs) / 1e9
    except (OSError, ValueError):
        pass
    return 0.0


@cache
def boot_id() -> str:
    """This boot's id, its first 8 characters ("" where the kernel does not say): what
    tells a start since boot of this boot from the same start of an earlier one."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as fh:
            text = fh.read(8).decode("ascii", "replace")
    except OSError:
        return ""
    return text if text.isalnum() else ""


def job_dir_in(environ: bytes) -> bytes | None:
    """The XQUEUE_JOB_DIR of a process's environment (``/proc/<pid>/environ``), or None.

    Only an entry of that very name counts, the first as for ``getenv``: a search for
    the text found it inside ``OLD_XQUEUE_JOB_DIR=...`` (or any value holding it) placed
    before the job's own entry, and took every job started with it in its environment
    for the job that text named."""
    at = (b"\0" + environ).find(_JOB_DIR)
    if at < 0:
        return None
    start = at + len(_JOB_DIR) - 1  # in ``environ``, which has no leading NUL
    end = environ.find(b"\0", start)
    return environ[start : end if end >= 0 else None]


def job_dirs_of_processes() -> dict[str, int]:
    """XQUEUE_JOB_DIR -> pid of the live process that is the job of that folder: how a
    job whose id was never recorded (its controller died right after starting it) is
    found. Blocking.

    Every process the job started inherits the variable, and one that called ``setsid``
    (a daemon it left behind, ``setsid cmd &``, a nested ``xqueue run``'s shepherd) leads
    a session of its own, as the job does. The job is the session leader that started
    first: each of its descendants started after it. Taking the last leader seen, a run
    adopted such a descendant: the job's own exit (recorded under its pid) was then not
    its, it was failed as vanished and run again, and ``xqueue cancel`` killed the
    descendant and left the job running."""
    best: dict[str, tuple[tuple[bool, int], int]] = {}  # (not a leader, start) -> pid
    for pid, environ in each_process("environ"):
        value = job_dir_in(environ)
        if value is None:
            continue
        started = start_ticks(pid)
        if started is None:
            continue
        try:
            leader = os.getsid(pid) == pid
        except OSError:
            continue
        jobdir = os.fsdecode(value)  # as job.dir
        rank = (not leader, started)
        if jobdir not in best or rank < best[jobdir][0]:
            best[jobdir] = (rank, pid)
    return {jobdir: pid for jobdir, (_, pid) in best.items()}


def files_of_session_leaders() -> dict[tuple[int, int], int]:
    """(device, inode) of each file a session leader holds open -> its pid.

    How a container runner whose id was never recorded is found: by the runtime log it
    was started with as its output (every runner leads a session of its own). Not by
    its environment: apptainer execs its starter with one of its own, 40 ms after it
    starts. Not only by descriptors 1 and 2: under ch-run the leader is the wrapper's
    shell, which moves them aside while a command's output is redirected. Inodes, not
    paths: a runner in a mount namespace of its own is matched all the same. This
    process is left out: it held the log for a moment, to hand it over.
    Blocking: a pass over /proc.
    """
    found: dict[tuple[int, int], int] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) != pid:
                continue
        except OSError:  # ended meanwhile
            continue
        for file in files_held(pid):
            found[file] = pid
    return found


def files_held(pid: int) -> Iterator[tuple[int, int]]:
    """(device, inode) of each file the process holds open; none for a process gone or
    another user's. Blocking."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for fd in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        yield st.st_dev, st.st_ino


def parent_and_state(line: bytes) -> tuple[int, bytes]:
    """(parent pid, state letter) from a ``/proc/<pid>/stat`` line."""
    fields = stat_fields(line)
    return int(fields[1]), fields[0]


def each_process(name: str) -> Iterator[tuple[int, bytes]]:
    """(pid, content of ``/proc/<pid>/<name>``) of every process whose file can be read
    (one that ended meanwhile, or another user's, is passed over). Blocking."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        data = read_proc(int(entry), name)
        if data is not None:
            yield int(entry), data


async def end_groups(
    groups: Mapping[K, int], grace: float, after_kill: float, leaders: Collection[K] = ()
) -> tuple[dict[K, int], set[K]]:
    """SIGTERM each process group (``groups`` maps a key to its id, its leader's pid); once
    every process in them has ended, or ``grace`` has passed, SIGKILL what is left of
    them. Return those with a live process ``after_kill`` later still, and those that
    had ended on their own: nothing was killed. Those held none when signalled, or, for
    the keys of ``leaders``, their leader had exited (a zombie, not yet reaped) when
    looked at just before its group was signalled; such a group is still signalled,
    waited for and SIGKILLed as any other, for what the leader left in it (the shepherd,
    told of the stop, leaves that to the stop). A look made any earlier leaves a window in
    which a job that exits 0 is signalled as a zombie and recorded killed.

    The whole group, not only its leader: a job's shell dies on SIGTERM while a child
    that ignores it runs on in the group, and would outlive a job recorded killed. The
    caller must know each group is the job's when it calls (a held child, a checked
    start time). A group's id stays taken while any process is in it, and each SIGKILL
    goes only to a group just seen to hold one.
    """
    gone, unsignalled = await anyio.to_thread.run_sync(_look_and_signal, groups, leaders)
    unreached = {key for key, pgid in groups.items() if pgid in unsignalled}
    # A group whose leader had exited is waited for and SIGKILLed as any other: what the
    # leader left in it may ignore SIGTERM, and the shepherd, told of the stop, leaves it.
    left = await _wait_groups({k: g for k, g in groups.items() if k not in unreached}, grace)
    signal_groups(left.values(), signal.SIGKILL)
    return await _wait_groups(left, after_kill), gone | unreached


def _look_and_signal(groups: Mapping[K, int], leaders: Collection[K]) -> tuple[set[K], set[int]]:
    """SIGTERM each group right after looking at its leader (for the keys of
    ``leaders``): the keys whose leader had exited, and the groups not reached.
    Blocking: a /proc read per leader."""
    gone, missed = set(), set()
    for key, pgid in groups.items():
        if key in leaders and start_ticks(pgid) is None:
            gone.add(key)
        missed |= signal_groups((pgid,), signal.SIGTERM)
    return gone, missed


def signal_groups(pgids: Iterable[int], sig: signal.Signals) -> set[int]:
    """Send ``sig`` to each process group; return those it did not reach (gone, or not
    ours: the id now names another user's group)."""
    missed = set()
    for pgid in pgids:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            missed.add(pgid)
    return missed


async def _wait_groups(groups: Mapping[K, int], timeout: float) -> dict[K, int]:
    """Wait up to ``timeout`` for every process of the groups to end; return the groups
    that still hold one. Leaders are awaited by pidfd (no polling); a group whose leader
    is gone is then looked for in /proc, every ``_GROUP_POLL`` seconds while it lives."""
    deadline = time.monotonic() + timeout
    left = dict(groups)

    async def leader(key: K, pgid: int) -> None:
        await wait_exit(pgid)
        del leaders[key]

    leaders = dict(groups)
    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as tg:
            for key, pgid in groups.items():
                tg.start_soon(leader, key, pgid)
    while True:
        rest = {key: pgid for key, pgid in left.items() if key not in leaders}
        alive = await anyio.to_thread.run_sync(live_groups, set(rest.values())) if rest else set()
        left = {key: pgid for key, pgid in left.items() if key in leaders or pgid in alive}
        pause = min(_GROUP_POLL, deadline - time.monotonic())
        if not left or pause <= 0:
            return left
        await anyio.sleep(pause)
