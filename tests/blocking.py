"""Fail any test whose event loop thread makes a blocking call (blockbuster), on asyncio and trio.

A scheduler that reads a file per job per tick, or a hook that sleeps, stalls every
other job of the run while it blocks; nothing in a test's outcome shows it. So while an
async test runs, blockbuster replaces the blocking functions (file reads and writes,
os.stat and friends, os.listdir, time.sleep, blocking socket calls, waiting on a held
lock...) with checks that raise ``BlockingError`` when called from the loop's thread
with xqueue's or the tests' code on the stack. Work in a worker thread is not checked.

blockbuster knows only asyncio: it asks ``asyncio.get_running_loop()`` whether the call
comes from a loop. ``_LoopProbe`` answers for trio as well, by ``in_trio_task()``:
true only while a trio task runs, in that run's thread. (``in_trio_run()`` would not
do: anyio runs trio tests as a guest run whose runner stays set between tests, so
synchronous fixtures would be checked too.) ``test_blocking.py`` proves both backends
are covered, so a blockbuster release that stops consulting the probe fails there.

What each backend covers: on asyncio, everything that runs in the test's loop thread
while the loop runs (tasks and callbacks); on trio, what runs inside a trio task (trio's
own scheduling between tasks is not checked, and needs no checking). On both, the
private asyncio loop in which ``_aio.AsyncioBridge`` runs asyncssh and aiodocker under
trio is checked as any asyncio loop is. Only calls with xqueue's or the tests' code on
the stack count, as in anyio's own use of blockbuster: a library's callback that the
loop runs by itself is not checked. Two of blockbuster's rules are sharpened: a
non-blocking descriptor that is a regular file still waits for the disk
(``_never_waits``), and ``os.path.abspath`` of an absolute path is pure string work.

What may block, deliberately, is listed in ``ALLOWED`` with its reason, by function
name; anything else is a bug to fix (a worker thread, ``anyio.Path``, a batch). A test
whose own code must block says so with ``@pytest.mark.blocking_allowed("why")``.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator

import blockbuster.blockbuster as _bb
import pytest
import trio
from blockbuster import BlockBuster

BlockingError = _bb.BlockingError

FILE_READ = ("io.BufferedReader.read", "io.TextIOWrapper.read")
FILE_IO = ("io.BufferedWriter.write", "io.TextIOWrapper.write", *FILE_READ)

EVERY = ("*",)  # every function blockbuster checks

# (blockbuster functions, file, functions in it, why blocking there is accepted)
ALLOWED: list[tuple[tuple[str, ...], str, tuple[str, ...], str]] = [
    (
        EVERY,
        "<frozen importlib._bootstrap>",
        ("_find_and_load",),
        "a module's first import, once per process: its module-level code runs then "
        "(xqueue imports a backend's client library lazily; asyncssh runs ldconfig as it loads)",
    ),
    (
        ("os.write",),
        "xqueue/workdir.py",
        ("record", "record_many", "record_kills", "flush_records"),
        "one O_APPEND write per record made outside the engine's handling of events, per "
        "batch of them made in it (flush_records), or per batch of submission intents or "
        "of kills: microseconds on a local disk",
    ),
    (
        ("os.listdir", "os.replace", "os.read", *FILE_IO),
        "xqueue/workdir.py",
        ("prepare",),
        "at feed, a job whose folder an earlier run left: an older workdir's job.json "
        "read for its spec, a folder of another command moved aside; and a tool's or "
        "test's prepare(make=True), which lists the workdir (the engine's feeds have the "
        "listing and the records read in a worker thread: read_ahead, read_records; "
        "test_resume.py's off-loop test checks it)",
    ),
    (
        ("os.replace",),
        "xqueue/workdir.py",
        ("_move_aside_others",),
        "at feed, for a job whose folder is missing while an earlier run's folder of its "
        "index has another name: that folder is moved aside (once per changed job)",
    ),
    (
        ("os.mkdir", "os.replace", "os.write", *FILE_IO),
        "xqueue/workdir.py",
        ("_make_now",),
        "prepare(job, make=True): a test or tool that hands a job straight to a backend "
        "makes its folder at once (the engine has its folders made off the loop)",
    ),
    (
        ("os.listdir",),
        "xqueue/workdir.py",
        ("last_attempt",),
        "at feed, for a resumed job whose record names no attempt (an earlier run died "
        "before recording it): one listing of its folder",
    ),
    (
        ("os.write",),
        "xqueue/engine.py",
        ("_note_in_stderr",),
        "one line appended to a job's stderr when its submission failed",
    ),
    (
        ("os.stat", "os.access"),
        "xqueue/schedulers/local.py",
        ("_request",),
        "before a local job is handed to the shepherd: its command looked up on PATH (cached)",
    ),
    (
        ("os.read",),
        "xqueue/schedulers/_shepherd_link.py",
        ("start",),
        "the shepherd's fork/exec, once per run (Popen waits for the exec on a pipe)",
    ),
    *(
        (
            ("os.stat", "os.mkdir", "os.unlink", "os.listdir", "os.getcwd", *FILE_READ),
            path,
            ("__init__",),
            "constructing a queue, its scheduler or its workdir (synchronous, once): the "
            "workdir is created and checked, entry points and option paths looked up, "
            "the config files of profiles read (./xqueue.toml)",
        )
        for path in (
            "xqueue/queue.py",
            "xqueue/scheduler.py",
            "xqueue/schedulers/ssh.py",  # its servers' key files, checked at construction
            "xqueue/workdir.py",
        )
    ),
]


class _LoopProbe:
    """Stands in for the asyncio module inside blockbuster: "is an event loop running here?"."""

    @staticmethod
    def get_running_loop() -> object:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            if trio.lowlevel.in_trio_task():
                return trio
            raise


@pytest.fixture(autouse=True)
def no_blocking(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BlockBuster | None]:
    """Blocking calls in the event loop thread fail the test (on asyncio and on trio).

    Active for every test: synchronous code is not checked (no loop runs), but an async
    test, its async fixtures, and everything they call are. Mark a test
    ``blocking_allowed("why")`` only where its own code must block.
    """
    if request.node.get_closest_marker("blocking_allowed"):
        yield None
        return
    monkeypatch.setattr(_bb, "asyncio", _LoopProbe)
    bb = BlockBuster(["xqueue", "tests"])
    for function in ("os.read", "os.write"):
        bb.functions[function].can_block_predicate = _never_waits
    bb.functions["os.path.abspath"].can_block_predicate = _already_absolute
    for functions, path, names, _why in ALLOWED:
        for function in bb.functions if functions == EVERY else functions:
            bb.functions[function].can_block_in(path, names)
    bb.activate()
    try:
        yield bb
    finally:
        bb.deactivate()


def _already_absolute(path: str | os.PathLike[str], *_: object, **__: object) -> bool:
    """os.path.abspath of an absolute path is string work; only a relative one asks for
    the working directory (blockbuster counts every call)."""
    return os.path.isabs(path)


def _never_waits(fd: int, *_: object, **__: object) -> bool:
    """os.read/os.write on a descriptor that cannot block: a non-blocking pipe or socket.

    blockbuster lets every non-blocking descriptor through, but O_NONBLOCK means nothing
    to a regular file (xqueue opens its state files with it, so a planted FIFO cannot
    hang the open): reading one still waits for the disk, and is checked here.
    """
    try:
        return not os.get_blocking(fd) and not stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False
