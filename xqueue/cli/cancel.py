"""``xqueue cancel WORKDIR [JOB...]``: stop a run, or kill some of its jobs, from elsewhere.

With a run in progress (its controller holds the workdir's lock), the controller is
first made sure of (``xqueue._identity``: the process the kernel shows holding the lock,
started when the lock file says), then:

- without JOBs, it gets SIGTERM and stops as on its own first SIGTERM: nothing more is
  submitted, every active job is killed and recorded killed, and it exits (143 for
  ``xqueue run``); ``cancel`` waits until the lock is released;
- with JOBs, a kill request goes to the run through ``<workdir>/.control/``
  (``xqueue.control``): the run kills those jobs as ``Xqueue.kill`` would and goes on.

With no run in progress, the jobs the workdir records as active (all, or the JOBs given)
are killed on their backend, which is built as the last run had it (``run.json``), and
recorded killed. The workdir is locked meanwhile, so no run starts under it. A job that
ended while nobody watched is left as it is: the next run collects its outcome.

Either way the workdir must be one the user may run in (``workdir.check_trust``): what
it says decides which process is signalled and which jobs are killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import signal
import stat
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TextIO

import anyio

from .. import registry, remote_workdir
from .._files import READ_FLAGS, write_new
from .._identity import CANCELLING, Controller, read_claim, verify
from ..control import CONTROL_DIR, RUN_FILE, read_request, reply_path, usable_folder
from ..errors import JobAlreadyEnded, XqueueError
from ..failures import FailureClass
from ..job import Job
from ..records import LOCK_FILE, WorkdirReader, job_index, read_json
from ..remote_workdir import RemoteWorkdir, UsesRemoteWorkdir
from ..scheduler import JobState, Scheduler
from ..states import ACTIVE_RECORDS, JobStatus
from ..workdir import Workdir, check_trust, recorded_exits
from .jobs import check_workdir, label, resolve
from .text import printable

POLL = 0.1
KILLED_REASON = "killed by xqueue cancel (no run was in progress)"
CODE_WAIT = 1.0
"""How long, at most, ``cancel`` looks for the exit codes of the jobs it killed."""


def held_lock(path: Path) -> tuple[str, int] | None:
    """(the lock file's claim, its inode) while a run holds the lock; None if none does."""
    try:
        fd = os.open(path / LOCK_FILE, READ_FLAGS)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 64).decode("ascii", errors="replace"), info.st_ino
        return None  # closing releases the probe's shared lock
    finally:
        os.close(fd)


def run(workdir: str, jobs: list[str], timeout: float, out: TextIO) -> int:
    """The command; returns the exit code."""
    check_workdir(workdir)
    path = Path(workdir).absolute()
    check_trust(path)
    reader = WorkdirReader(path)
    folders = resolve(reader, jobs)
    held = held_lock(path)
    if held is None:
        return _without_controller(path, reader, folders, out)
    identity, cancel = read_claim(held[0])
    if cancel:
        raise XqueueError(
            f"another `xqueue cancel` (pid {identity.partition('@')[0]}) is killing this "
            "workdir's jobs: wait for it to end, then run cancel again if any job is still active"
        )
    controller = verify(*held)
    try:
        if not folders:
            return _stop_run(controller, reader, timeout, out)
        return _through_controller(controller, identity, reader, folders, timeout, out)
    finally:
        controller.close()


# -- a run in progress --------------------------------------------------------------------
def _stop_run(controller: Controller, reader: WorkdirReader, timeout: float, out: TextIO) -> int:
    controller.signal(signal.SIGTERM)
    out.write(
        f"sent SIGTERM to the run's controller (pid {controller.pid}); "
        "waiting for it to kill its jobs and stop\n"
    )
    out.flush()
    deadline = time.monotonic() + timeout
    while reader.controller() is not None:
        if time.monotonic() >= deadline:
            out.write(f"the run is still stopping after {timeout:g}s\n")
            return 1
        time.sleep(POLL)
    out.write("the run stopped\n")
    # A run stopped before it took up its jobs (SIGTERM while it fed, before its handlers
    # were set) kills none: an earlier run's, still running, are left as they were.
    fresh = WorkdirReader(reader.path)
    # Those with a backend id: one left "submitting" (a lookup that found it never
    # submitted is not journalled) is the next run's to look up, not a job running.
    active = [
        folder
        for folder, record in _records(fresh).items()
        if (record or {}).get("status") in ACTIVE_RECORDS and (record or {}).get("jid")
    ]
    if active:
        shown = ", ".join(label(fresh, folder) for folder in active[:5])
        more = f" and {len(active) - 5} more" if len(active) > 5 else ""
        out.write(
            f"{len(active)} job(s) are still recorded as running, which it did not kill: "
            f"{shown}{more}; run `xqueue cancel {shlex.quote(str(reader.path))}` again to "
            "kill them\n"
        )
        return 1
    return 0


def _records(reader: WorkdirReader) -> dict[str, dict[str, Any] | None]:
    """Each job folder's newest record, in the folders' order."""
    every = reader.folders()
    return dict(zip(every, reader.last_records(every), strict=True))


def _through_controller(
    controller: Controller,
    identity: str,
    reader: WorkdirReader,
    folders: list[str],
    timeout: float,
    out: TextIO,
) -> int:
    indices = [job_index(folder) for folder in folders]
    # Addressed to the run that holds the lock: one that has just taken it (still
    # feeding) keeps it for when it starts, where it drops what was sent to others.
    request = _send(reader.path, {"kill": indices, "controller": identity})
    reply = _await_reply(request, reader, timeout)
    if reply is None:
        try:
            os.unlink(request)  # withdrawn: a later run must not act on it
        except FileNotFoundError:  # taken: the run is killing them, and answers later
            out.write(
                f"the run (pid {controller.pid}) took the kill request but did not answer "
                f"in {timeout:g}s: the kill is under way (`xqueue status` shows when it ends)\n"
            )
            return 1
        out.write(
            f"the run (pid {controller.pid}) did not answer the kill request in {timeout:g}s; "
            "the request is withdrawn\n"
        )
        return 1  # as for a run that does not stop in time: not a usage error
    if reply.get("ended") is True:
        # Not a usage error (exit 2): the jobs may run on, and a cancel now reaches them.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(request)  # a later run must not act on it
        out.write(
            f"the run (pid {controller.pid}) ended before it took the kill request; "
            "run `xqueue cancel` again: with no run in progress it kills the jobs on "
            "their backend\n"
        )
        return 1
    if "error" in reply:
        raise XqueueError(f"the run refused the kill request: {reply['error']}")
    results = reply.get("results")
    if not isinstance(results, dict):
        raise XqueueError("the run's answer to the kill request is not one xqueue writes")
    ok = True
    for folder, index in zip(folders, indices, strict=True):
        result = str(results.get(str(index), "no answer"))
        ok = ok and (result == "killed" or result.startswith("already ended"))
        out.write(f"{label(reader, folder)}: {printable(result)}\n")
    return 0 if ok else 1


def _send(workdir: Path, request: dict[str, Any]) -> Path:
    """Put a request in the control folder whole (written aside, renamed in)."""
    folder = workdir / CONTROL_DIR
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    if not usable_folder(os.stat(folder, follow_symlinks=False)):
        raise XqueueError(
            f"{str(folder)!r} is not a directory of yours that only you can write; "
            "remove it and try again"
        )
    name = f"kill-{secrets.token_hex(8)}"
    aside = folder / f".{name}.tmp"
    write_new(str(aside), json.dumps(request).encode(), 0o600)
    final = folder / f"{name}.json"
    os.replace(aside, final)
    return final


def _await_reply(request: Path, reader: WorkdirReader, timeout: float) -> dict[str, Any] | None:
    reply = reply_path(request)
    deadline = time.monotonic() + timeout
    checked = time.monotonic()
    while time.monotonic() < deadline:
        data = read_request(reply) if os.path.exists(reply) else None
        if data is not None:
            os.unlink(reply)
            try:
                answer = json.loads(data)
            except ValueError:
                return {"error": "an answer that is not JSON"}
            return answer if isinstance(answer, dict) else {"error": "a malformed answer"}
        if time.monotonic() - checked > 1.0:
            checked = time.monotonic()
            if reader.controller() is None and os.path.exists(request):
                return {"ended": True}
        time.sleep(POLL)
    return None


# -- no run in progress ---------------------------------------------------------------------
def _without_controller(path: Path, reader: WorkdirReader, folders: list[str], out: TextIO) -> int:
    info = read_json(path / RUN_FILE)
    if info is None and (path / RUN_FILE).exists():  # there, but empty or not JSON
        info = {}
    if (info or {}).get("url") is None:
        records = _records(reader)
        if not _active(reader, folders, None, records):
            # Nothing to kill: said without the lock (a read-only workdir answered "not
            # writable", exit 2). A gs:// run's records are pulled from the bucket first.
            _active(reader, folders, out, records)
            return 0
    workdir = Workdir(path)
    workdir.lock(CANCELLING)  # no run may start under us; refused if one just did
    try:
        pulled = None
        if info is not None and info.get("url") is not None:
            pulled = _pulled(workdir, info, out)
            if pulled is not None:
                reader = WorkdirReader(path)  # read again, as the bucket has it
        records = _records(reader)
        active = _active(reader, folders, out, records)
        if not active:
            return 0
        try:
            scheduler, backend = pulled or _opened_on(workdir, info)
        except XqueueError as exc:
            ids = ", ".join(
                f"{job_index(f)} ({(records[f] or {}).get('jid') or 'no id'})" for f in active
            )
            raise XqueueError(f"{exc}; kill these jobs on their backend: {ids}") from None
        seen_as = _jobs_path(path, info)
        jobs = [_job(reader, seen_as, folder, records[folder] or {}) for folder in active]
        # Those its run was killing when it died: their end is that kill's (``record_kills``).
        marked = {
            job for job, f in zip(jobs, active, strict=True) if (records[f] or {}).get("kill")
        }
        if isinstance(backend, RemoteWorkdir) and pulled is None:
            backend.stale = True  # the bucket's copies may be newer than these records
        killed, states, errors = anyio.run(_kill, scheduler, backend, jobs, out)
        codes = _codes_left(workdir, killed)
        for job in killed:
            job.status, job.rc, job.reason = JobStatus.KILLED, codes.get(job), KILLED_REASON
            workdir.record(job)
        gone = [j for j in jobs if j not in killed and j not in errors]
        ended, left = _record_ends(workdir, gone, states, marked, scheduler.ended_before_kill)
        if isinstance(backend, RemoteWorkdir) and not backend.stale:
            _push(backend, out)
        for job in jobs:
            name = label(reader, os.path.basename(job.dir))
            if job in killed:
                out.write(f"{name}: killed ({printable(job.jid or '')})\n")
            elif job in errors:
                out.write(f"{name}: could not be killed: {printable(str(errors[job]))}\n")
            else:
                out.write(f"{name}: {ended[job]}\n")
        return 1 if errors or left else 0
    finally:
        workdir.unlock()


def _active(
    reader: WorkdirReader,
    folders: list[str],
    out: TextIO | None,
    records: dict[str, dict[str, Any] | None] | None = None,
) -> list[str]:
    """The folders among ``folders`` (all if none) whose jobs are recorded as active;
    with ``out``, what is said of those that are not."""
    if records is None:
        records = _records(reader)
    chosen = folders or list(records)
    active = [f for f in chosen if (records.get(f) or {}).get("status") in ACTIVE_RECORDS]
    if out is not None:
        for folder in folders:
            if folder not in active:
                status = (records.get(folder) or {}).get("status", "not submitted")
                out.write(f"{label(reader, folder)}: not active ({printable(str(status))})\n")
        if not active:
            what = "none of these jobs is" if folders else "no job is"
            out.write(f"no run is in progress and {what} recorded as active\n")
    return active


def _opened_on(workdir: Workdir, info: dict[str, Any] | None) -> tuple[Scheduler, Workdir]:
    """The last run's scheduler, and the workdir it opened it on: this folder, or the
    ``gs://`` workdir whose records it holds (``run.json``'s ``url``). Its lock is
    ``workdir``'s: the two name one folder, and only the one taken here is held."""
    scheduler = build_scheduler(info)
    url = (info or {}).get("url")
    if url is None:
        return scheduler, workdir
    if not isinstance(url, str) or not isinstance(scheduler, UsesRemoteWorkdir):
        raise XqueueError(f"the workdir's {RUN_FILE} is not one xqueue writes (torn or edited)")
    store = scheduler.remote_store(remote_workdir.parse(url))
    store.local_dir = str(workdir.path)  # the records are here, wherever the run said
    return scheduler, RemoteWorkdir(store)


def _pulled(
    workdir: Workdir, info: dict[str, Any], out: TextIO
) -> tuple[Scheduler, Workdir] | None:
    """``_opened_on`` for a gs:// run, its records brought up to date from the bucket: a
    job that ended while no controller watched left its exit code there only, and would
    be recorded failed. None if the bucket cannot be read: the records here are all
    there is."""
    try:
        scheduler, backend = _opened_on(workdir, info)
        assert isinstance(backend, RemoteWorkdir)
        backend.pull()
    except (XqueueError, OSError) as exc:
        out.write(
            f"the records were not brought up to date from the bucket ({printable(str(exc))}); "
            "going by the ones here, which are not copied back (the bucket's may be newer)\n"
        )
        return None
    return scheduler, backend


def _push(workdir: RemoteWorkdir, out: TextIO) -> None:
    """Copy what was recorded here to the bucket, where a resume elsewhere reads it."""
    try:
        workdir.push()
    except Exception as exc:  # the store's own errors: the kills stand, only the copy waits
        out.write(
            f"the records were not copied to {workdir.url.text} ({printable(str(exc))}); "
            "the next run from this machine copies them\n"
        )


def _codes_left(workdir: Workdir, killed: list[Job]) -> dict[Job, int]:
    """The exit codes the killed jobs left, as a live run records a kill's (143 for a
    SIGTERM): a local job's shepherd writes its code as it reaps it, a moment after the
    kill. Recorded without one, ``status`` showed no code for it. A backend that leaves
    none within ``CODE_WAIT`` (a cluster's may come much later, or never): none."""
    deadline = time.monotonic() + CODE_WAIT
    while True:
        codes = workdir.exit_codes(killed) if killed else {}
        if len(codes) == len(killed) or time.monotonic() >= deadline:
            return codes
        time.sleep(POLL / 2)


def _record_ends(
    workdir: Workdir,
    gone: list[Job],
    states: dict[Job, JobState],
    marked: Collection[Job] = (),
    ended_before_kill: Callable[[int | None], bool] = Scheduler.ended_before_kill,
) -> tuple[dict[Job, str], list[Job]]:
    """Record how the jobs that are not running any more ended: as the backend tells it
    (``states``: one whose jobs leave their exit code elsewhere, in a bucket, fetches it),
    else by the exit code they left here, else failed with no code; a job its run was
    killing when it died (``marked``) as killed, as a resume takes it, unless it exited 0
    where a return code is always the job's own (``ended_before_kill``). Left recorded as
    running, a list changed since could never run at their index
    (``Workdir._check_ended``) whatever cancel did. Returns what was said of each job,
    and those left as recorded, which may still run."""
    codes = workdir.exit_codes([job for job in gone if job not in states])
    said: dict[Job, str] = {}
    left: list[Job] = []
    for job in gone:
        state, recorded = states.get(job), job.reason
        if state is not None and state.unsettled:
            # Lost from sight (an SSH server gone down), not ended: it may still run, so
            # it stays recorded as it is, for a later run to look for before rerunning.
            said[job] = f"not known to have ended ({state.reason}): left as recorded"
            left.append(job)
            continue
        if state is None and job.jid is None and codes.get(job) is None:
            # Only its submission's intent was recorded, and neither the backend nor an
            # exit code knows it: its submission may still be under way (a slow sbatch
            # outlives a SIGKILLed controller), or never happened. Recorded ended, it was
            # started again beside itself by the next run, which otherwise looks it up.
            said[job] = (
                "not found on its backend: its submission may still be under way, or never "
                "happened; left as recorded, for the next run to look up (or cancel again)"
            )
            left.append(job)
            continue
        if state is not None:
            job.status, job.rc, job.failure = state.status, state.rc, state.failure
            if job.status is JobStatus.FAILED and job.failure is None:
                job.failure = FailureClass.NONZERO_EXIT if job.rc else FailureClass.VANISHED
            job.reason = state.reason or "ended while no controller watched it"
            code = "no exit code" if job.rc is None else f"exit code {job.rc}"
            said[job] = f"not running any more: recorded {job.status.value} ({code})"
        else:
            job.rc = codes.get(job)
            if job.rc is None:
                job.status, job.failure = JobStatus.FAILED, FailureClass.VANISHED
                job.reason = "ended while no controller watched it, leaving no exit code"
                said[job] = "not running any more: it left no exit code: recorded failed"
            else:
                job.status = JobStatus.FINISHED if job.rc == 0 else JobStatus.FAILED
                job.failure = FailureClass.NONZERO_EXIT if job.rc else None
                job.reason = "ended while no controller watched it"
                said[job] = (
                    f"not running any more: recorded {job.status.value} (exit code {job.rc})"
                )
        if job in marked and not ended_before_kill(job.rc):
            job.status, job.failure = JobStatus.KILLED, None
            job.reason = recorded or "killed as its run stopped"
            code = "no exit code" if job.rc is None else f"exit code {job.rc}"
            said[job] = f"not running any more: recorded killed, by its run's stop ({code})"
        workdir.record(job)
    return said, left


def build_scheduler(info: dict[str, Any] | None) -> Scheduler:
    """The last run's scheduler, from what it recorded; only an installed one, by name."""
    if info is None:
        raise XqueueError(f"the workdir has no {RUN_FILE}: it was last run by an older xqueue")
    name, cls_path, options = info.get("scheduler"), info.get("class"), info.get("options")
    if not isinstance(name, str) or not isinstance(options, dict):
        raise XqueueError(f"the workdir's {RUN_FILE} is not one xqueue writes (torn or edited)")
    cls = registry.scheduler_class(name)
    installed = f"{cls.__module__}:{cls.__qualname__}"
    if cls_path != installed:
        raise XqueueError(
            f"the last run used scheduler {printable(str(cls_path))}, which is not the "
            f"installed {name!r} ({installed})"
        )
    scheduler = cls(**options)
    forks = info.get("forks")
    scheduler.forks = forks if type(forks) is int and forks > 0 else 1
    return scheduler


def _jobs_path(path: Path, info: dict[str, Any] | None) -> str:
    """The workdir as the run's jobs saw it (their environment names their folder by it)."""
    recorded = (info or {}).get("workdir")
    if isinstance(recorded, str) and os.path.isabs(recorded):
        try:
            if os.path.samefile(recorded, path):
                return recorded
        except OSError:
            pass
    return str(path)


def _job(reader: WorkdirReader, workdir: str, folder: str, record: dict[str, Any]) -> Job:
    index = job_index(folder)
    assert index is not None
    spec = reader.spec(folder) or {}
    try:
        job = Job(index, spec["command"], name=spec.get("name"), envs=spec.get("envs"))
    except (KeyError, TypeError, XqueueError):  # a torn spec: killing needs only the ids
        job = Job(index, ["unknown"], name=folder)
    job.dir = os.path.join(workdir, folder)
    job.jid = record.get("jid") or None
    job.reason = str(record.get("reason") or "")
    attempt = record.get("attempt")
    job.attempt = attempt if type(attempt) is int and attempt > 0 else 1
    job.status = JobStatus.SUBMITTED
    return job


async def _kill(
    scheduler: Scheduler, workdir: Workdir, jobs: list[Job], out: TextIO
) -> tuple[list[Job], dict[Job, JobState], dict[Job, BaseException]]:
    """(killed, how those found not running ended where the backend knows it, could not
    be killed) on the backend."""
    await scheduler.open(workdir)
    try:
        for job in jobs:
            if job.jid is None:  # recorded just before its submission: look for it
                try:
                    await scheduler.recover_job(job)
                except Exception:
                    job.jid = None
        known = [job for job in jobs if job.jid]
        held = await scheduler.jobs_are_running(known) if known else {}
        listed = [job for job in known if held.get(job)]
        # A job whose wrapper has recorded its exit ended on its own, though the backend
        # lists it a while longer (SGE, a second): killed, it was recorded killed and the
        # next run ran a success again. So is one the kill found ended.
        exited = await anyio.to_thread.run_sync(recorded_exits, listed) if listed else set()
        alive = [job for job in listed if job not in exited]
        # One that has ended is asked to be killed too, as a resume asks it
        # (``Engine._stop_stale``), for what it may have left running: a stop's SIGTERM
        # ended its shell, and its controller died before the SIGKILL. Left alive, that
        # ran on while the job was recorded ended, and the next run started it again
        # beside it. That kill's answer does not change how the job ended.
        outcome = list(await scheduler.kill_jobs(alive)) if alive else []
        exited |= {j for j, e in zip(alive, outcome, strict=True) if isinstance(e, JobAlreadyEnded)}
        rest = [job for job in known if job not in alive]
        if rest:
            try:
                await scheduler.kill_jobs(rest)
            except Exception as exc:
                out.write(f"could not look for what ended jobs left: {printable(str(exc))}\n")
        ended = [job for job in known if not held.get(job) or job in exited]
        # Asked as a run's poll asks: a backend fetches the files an ended job left
        # elsewhere (gbatch, from its bucket), and gives its word on how the job ended.
        polled: dict[Job, JobState] = {}
        try:
            polled = await scheduler.poll_jobs(ended) if ended else {}
        except Exception as exc:  # the kills stand and are recorded; these go by the files
            out.write(f"could not ask the backend how ended jobs ended: {printable(str(exc))}\n")
    finally:
        await scheduler.aclose()
    errors = {
        job: error
        for job, error in zip(alive, outcome, strict=True)
        if error is not None and job not in exited
    }
    killed = [job for job in alive if job not in errors and job not in exited]
    states = {job: state for job, state in polled.items() if state.status.is_final}
    return killed, states, errors
