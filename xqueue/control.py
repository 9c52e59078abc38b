"""Operating a run from another process: what it records of itself, and kill requests.

A built-in plugin of every queue, for ``xqueue cancel``:

- At run start it writes ``<workdir>/run.json`` (mode 0600: options may name hosts and
  keys): the scheduler's registered name and class, its options, ``forks``, the workdir
  path as the jobs see it, the controller as ``pid@ticks``. With no controller alive,
  ``xqueue cancel`` builds the same scheduler from it to kill the jobs left running.
- While the run goes, a thread looks for kill requests in ``<workdir>/.control/``, every
  ``CHECK_INTERVAL`` seconds, at the cost of one ``stat`` of that folder (it lists it
  only when the folder changed, or changed in the last two seconds: a coarse mtime can
  hide a second change in the same tick). No inotify: it is not there on every file
  system a workdir lives on (NFS, Lustre), and one stat per half second costs nothing.
  A request is a file ``kill-<16 hex>.json``, ``{"kill": [job indices]}``, renamed into
  the folder whole; the thread removes it, has the run's loop kill the jobs (as
  ``Xqueue.kill`` does, plugin vetoes included) and answers in ``kill-<hex>.reply``.

The folder is trusted as the workdir is (``workdir.check_trust``), and more: it must be
a directory of the controller's user that nobody else can write, and a request a plain
file of that user, or it is ignored with a warning. Who may kill the jobs is who could
write the workdir anyway (and so plant the commands it runs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from ._files import READ_FLAGS, atomic_write
from ._identity import own_identity
from ._threads import run_in_daemon_thread
from .engine import KillOutcome
from .errors import XqueueError
from .events import EVENTS_FILE, PREVIOUS
from .hooks import hookimpl
from .records import parse_object
from .states import JobStatus

if TYPE_CHECKING:
    from .job import Job
    from .queue import Xqueue
    from .scheduler import Scheduler

log = logging.getLogger("xqueue")

RUN_FILE = "run.json"
CONTROL_DIR = ".control"
REQUEST = re.compile(r"kill-[0-9a-f]{16}\.json")
REPLY_SUFFIX = ".reply"
CHECK_INTERVAL = 0.5
# How long one request waits for a kill to be confirmed before it answers without it.
KILL_WAIT = 60.0
# How long past two polls a job that ended on its own is waited for, to say how it ended.
ENDING_WAIT = 5.0
_MAX_REQUEST = 1 << 16
KILLED = JobStatus.KILLED

Apply = Callable[[list[int]], Coroutine[Any, Any, dict[str, str]]]


async def _said(job: Job, outcome: KillOutcome, interval: float) -> str:
    """A kill's outcome, as ``xqueue cancel`` prints it. A job that ended on its own
    before the kill reached it (its exit recorded, or the backend had it ending) is
    reported ended once its end is seen, at the latest a couple of polls later: it was
    said not to be killed "because a kill is under way or a plugin vetoed it"."""
    if outcome is KillOutcome.KILLED:
        return "killed"
    if outcome is KillOutcome.VETOED:
        return "not killed: a plugin vetoed the kill"
    if outcome is KillOutcome.UNDER_WAY:
        return "not killed: a kill of it is under way"
    with anyio.move_on_after(2 * interval + ENDING_WAIT):
        try:
            await job.wait()
        except XqueueError:  # its queue closed first: it was still ending
            pass
    if job.status.is_final:
        return f"already ended ({job.status.value})"
    return "already ended on its own; its end is not recorded yet (`xqueue status` shows it)"


def _as_it_stands(job: Job, otherwise: str) -> str:
    """What a kill cut short by its bound or the run's end says: the job's end if it
    has one (a job that ended on its own is not "not killed: the run is ending")."""
    if job.status is KILLED:
        return "killed"
    if job.status.is_final:
        return f"already ended ({job.status.value})"
    return otherwise


def scheduler_options(scheduler: Scheduler) -> dict[str, Any]:
    """The options as ``scheduler_opts`` would give them (pass-through keys at top level)."""
    opts = scheduler.options
    found = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name != "extra"}
    found.update(opts.extra)
    return found


def run_info(xqueue: Xqueue, scheduler: Scheduler) -> dict[str, Any]:
    cls = type(scheduler)
    return {
        "scheduler": scheduler.name,
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "options": scheduler_options(scheduler),
        "forks": xqueue.forks,
        "workdir": str(xqueue.workdir.path),
        # A gs:// run's: `xqueue cancel` opens the scheduler on it, not on the records here.
        "url": getattr(getattr(xqueue.workdir, "url", None), "text", None),
        "started": time.time(),
        # Whether it writes events.jsonl: `xqueue status --follow` has nothing to follow.
        "events": "xqueue-events" in xqueue.hooks.names(),
    }


def reply_path(request: Path) -> Path:
    return request.with_name(request.name.removesuffix(".json") + REPLY_SUFFIX)


def read_request(path: str | os.PathLike[str]) -> bytes | None:
    """A request's bytes if it is a plain file of ours (not linked, small); else None."""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.geteuid()
            or info.st_nlink != 1
            or info.st_size > _MAX_REQUEST
        ):
            log.warning("ignoring %s: not a plain file of this user", path)
            return None
        return os.read(fd, _MAX_REQUEST)
    finally:
        os.close(fd)


def usable_folder(info: os.stat_result) -> bool:
    """The control folder may be used: a directory of ours that nobody else can write."""
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.geteuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


class _Watcher(threading.Thread):
    def __init__(self, folder: Path, token: anyio.lowlevel.EventLoopToken, apply: Apply):
        super().__init__(name="xqueue-control", daemon=True)
        self.folder = folder
        self.token = token
        self.apply = apply
        self._halt = threading.Event()
        self._seen: tuple[int, int] | None = None
        self._warned = False

    def run(self) -> None:
        while not self._halt.wait(CHECK_INTERVAL):
            try:
                self.check()
            except Exception:  # a request gone wrong must not end the watching
                log.exception("xqueue control: handling a request failed")

    def finish(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join()

    def check(self) -> None:
        try:
            info = os.stat(self.folder, follow_symlinks=False)
        except FileNotFoundError:
            return
        seen = (info.st_ino, info.st_mtime_ns)
        if seen == self._seen and time.time() - info.st_mtime > 2.0:
            return
        self._seen = seen
        if not usable_folder(info):
            if not self._warned:
                self._warned = True
                log.warning(
                    "ignoring %s: not a directory of this user that only it can write",
                    self.folder,
                )
            return
        for name in sorted(os.listdir(self.folder)):
            if REQUEST.fullmatch(name):
                self.serve(self.folder / name)

    def serve(self, path: Path) -> None:
        data = read_request(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return  # answered already (a concurrent check), or withdrawn
        request = None if data is None else parse_object(data)
        kill = None if request is None else request.get("kill")
        if not isinstance(kill, list) or not all(type(i) is int for i in kill):
            self.answer(path, {"error": "not a request this controller understands"})
            return
        try:
            results: dict[str, str] = anyio.from_thread.run(self.apply, kill, token=self.token)
        except Exception as exc:  # the run ended under the request
            self.answer(path, {"error": f"the run could not act on it: {exc!r}"})
            return
        self.answer(path, {"results": results})

    def answer(self, request: Path, reply: dict[str, Any]) -> None:
        atomic_write(str(reply_path(request)), json.dumps(reply), 0o600)


def _prepare(workdir: Path, info: dict[str, Any]) -> None:
    """Record the run and drop requests left from an earlier run (they named its jobs).
    Blocking: a worker thread."""
    info["controller"] = own_identity()
    text = json.dumps(info, default=str, indent=1)
    atomic_write(str(workdir / RUN_FILE), text, 0o600)
    if not info.get("events"):
        # A run without a stream leaves none of an earlier run's to pass for its own (a
        # follower reported that run's end); it is kept as the earlier stream, ``.1``.
        stream = workdir / EVENTS_FILE
        try:
            os.replace(stream, f"{stream}{PREVIOUS}")
        except OSError:
            pass
    folder = workdir / CONTROL_DIR
    try:
        if not usable_folder(os.stat(folder, follow_symlinks=False)):
            return
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if REQUEST.fullmatch(name) and _addressed(folder / name, info["controller"]):
            continue  # sent to this run since it took the lock (while it fed): served
        if REQUEST.fullmatch(name) or name.endswith(REPLY_SUFFIX):
            log.warning("removing a kill request left from an earlier run: %s", name)
            try:
                os.unlink(folder / name)
            except OSError:
                pass


def _addressed(path: Path, controller: str) -> bool:
    """Whether a request names ``controller`` (``pid@ticks``) as the run it is for."""
    data = read_request(path)
    request = None if data is None else parse_object(data)
    return request is not None and request.get("controller") == controller


class Control:
    """The built-in plugin of every queue (see the module's docstring)."""

    def __init__(self, kill: Callable[[Job], Awaitable[KillOutcome]]) -> None:
        """``kill``: the queue's kill that says why a job was not killed (``cancel``
        tells a job that ended on its own from a vetoed kill)."""
        self._kill = kill
        self._queue: Xqueue | None = None
        self._watcher: _Watcher | None = None
        self._open = False
        self._serving: set[anyio.CancelScope] = set()

    @hookimpl
    async def on_init(self, xqueue: Xqueue, scheduler: Scheduler) -> None:
        self._queue = xqueue
        path = xqueue.workdir.path
        await run_in_daemon_thread(_prepare, path, run_info(xqueue, scheduler))
        self._watcher = _Watcher(path / CONTROL_DIR, anyio.lowlevel.current_token(), self._apply)
        self._open = True
        self._watcher.start()

    @hookimpl
    async def on_shutdown(self) -> None:
        self._open = False  # from here on, requests are answered without touching the run
        for scope in self._serving:  # a kill posted as the loop ended would wait in vain
            scope.cancel()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await anyio.to_thread.run_sync(watcher.finish)

    async def _apply(self, indices: list[int]) -> dict[str, str]:
        """Kill the jobs a request names; what became of each, by index. On the loop."""
        results: dict[str, str] = {}
        queue = self._queue
        if queue is None or not self._open:
            return {str(i): "not killed: the run is ending" for i in indices}

        async def one(index: int) -> None:
            jobs = queue.jobs
            if not 0 <= index < len(jobs):
                results[str(index)] = "no such job in this run"
                return
            job = jobs[index]
            # Bounded: a run that ends meanwhile no longer answers kills.
            with anyio.move_on_after(KILL_WAIT):
                try:
                    outcome = await self._kill(job)
                except XqueueError as exc:
                    results[str(index)] = f"not killed: {exc}"
                    return
                interval = queue.scheduler.options.poll_interval
                results[str(index)] = await _said(job, outcome, interval)
                return
            results[str(index)] = _as_it_stands(job, "kill asked for; not confirmed in time")

        with anyio.CancelScope() as scope:
            self._serving.add(scope)
            try:
                async with anyio.create_task_group() as tg:
                    for index in dict.fromkeys(indices):
                        tg.start_soon(one, index)
            finally:
                self._serving.discard(scope)
        for index in indices:  # cut short by the end of the run: say what became of it
            if str(index) not in results:
                known = 0 <= index < len(queue.jobs)
                results[str(index)] = (
                    _as_it_stands(queue.jobs[index], "not killed: the run is ending")
                    if known
                    else "not killed: the run is ending"
                )
        return results
