"""Run each job as a local process and await its exit.

No wrapper script and no polling: the job's argv is executed directly (a string command
through ``/bin/sh -c``) with stdout and stderr going straight to the job's files, and
its exit is awaited on a pidfd, which costs no thread per child and works the same on
asyncio and trio. Every job gets its own session, so a kill reaches the whole process
group, and Ctrl-C in a terminal does not hit the jobs behind the queue's back.

The id recorded for a job is ``pid@start`` (when it was spawned, in seconds since the
epoch), checked against the process's start time in /proc, so a later run never mistakes
an unrelated process that reused the pid for the job. While a run holds a job's Popen
handle the pid cannot be reused at all (the exited child stays a zombie until reaped).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from typing import Any

import anyio

from ..errors import SchedulerOptionError, SubmissionError
from ..job import Job
from ..options import SchedulerOptions
from ..scheduler import JobState, Scheduler
from ..states import JobStatus
from ..workdir import open_output
from ._proc import kill_group, start_ticks, wait_exit

UNKNOWN_EXIT = (
    "exit status unknown: the job ended while no xqueue controller was watching it "
    "(an earlier run was killed); see its stdout/stderr"
)


@dataclasses.dataclass
class LocalOptions(SchedulerOptions):
    cwd: str | None = None
    """Directory the jobs run in (default: the controller's current directory)."""

    def validate(self, scheduler: str) -> None:
        super().validate(scheduler)
        if self.cwd is not None and not os.path.isdir(self.cwd):
            raise SchedulerOptionError(f"{scheduler}: cwd {self.cwd!r} is not a directory")


_BOOT_TIME: float | None = None
# A pid is only reused after the kernel has cycled through every other pid, which takes
# far longer than this; a start time within it is the same process.
_SAME_PROCESS_WINDOW = 2.0


def _boot_time() -> float:
    global _BOOT_TIME
    if _BOOT_TIME is None:
        with open("/proc/stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"btime "):
                    _BOOT_TIME = float(line.split()[1])
                    break
            else:  # pragma: no cover - every Linux has btime
                _BOOT_TIME = 0.0
    return _BOOT_TIME


def _start_epoch(pid: int) -> float | None:
    """When a live process started (seconds since the epoch); None if gone or a zombie."""
    ticks = start_ticks(pid)
    return None if ticks is None else _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def _parse_jid(jid: str | None) -> tuple[int, float] | None:
    """A local job id is ``pid@start`` (start in seconds since the epoch)."""
    if not jid or "@" not in jid:
        return None
    pid, _, start = jid.partition("@")
    try:
        return int(pid), float(start)
    except ValueError:
        return None


def live_local_jid(jid: str) -> bool:
    """Whether a local job id names a process that is still alive (not a reused pid)."""
    parsed = _parse_jid(jid)
    if parsed is None:
        return False
    started = _start_epoch(parsed[0])
    return started is not None and abs(started - parsed[1]) < _SAME_PROCESS_WINDOW


def _job_dirs_of_processes() -> dict[str, int]:
    """XQUEUE_JOB_DIR -> pid for every live process we may read (the leader wins)."""
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue
        start = environ.find(b"XQUEUE_JOB_DIR=")
        if start < 0 or _start_epoch(int(entry)) is None:
            continue
        end = environ.find(b"\0", start)
        jobdir = environ[start + 15 : end if end >= 0 else None].decode(errors="replace")
        pid = int(entry)
        try:
            leader = os.getsid(pid) == pid
        except OSError:
            continue
        # A job's children inherit the variable; the session leader is the job itself.
        if jobdir not in found or leader:
            found[jobdir] = pid
    return found


class LocalScheduler(Scheduler):
    """Jobs are child processes of the controller."""

    name = "local"
    Options = LocalOptions
    awaits_completion = True
    running_on_submit = True
    options: LocalOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # job -> its Popen, or None for a job adopted from an earlier run.
        self._procs: dict[Job, subprocess.Popen[bytes] | None] = {}
        self._base_env: dict[str, str] = {}
        self._env_map: tuple[float, dict[str, int]] | None = None

    async def open(self, workdir: Any) -> None:
        await super().open(workdir)
        self._base_env = dict(os.environ)

    async def submit_jobs(self, jobs: Any) -> list[str | BaseException]:
        # Spawning is synchronous and fast; a task per job would only add overhead.
        results: list[str | BaseException] = []
        for job in jobs:
            self.stats.submit_calls += 1
            try:
                results.append(self._spawn(job))
            except Exception as exc:
                results.append(exc)
        return results

    async def submit_job(self, job: Job) -> str:
        return self._spawn(job)

    def _spawn(self, job: Job) -> str:
        env = self._base_env.copy()
        env["XQUEUE_JOB_INDEX"] = str(job.index)
        env["XQUEUE_JOB_DIR"] = job.dir
        if job.envs:
            env.update(job.envs)
        out = open_output(job.stdout_path)  # never through a link planted at the name
        try:
            err = open_output(job.stderr_path)
            try:
                proc = subprocess.Popen(
                    job.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=env,
                    cwd=self.options.cwd,
                    start_new_session=True,
                )
            finally:
                os.close(err)
        except FileNotFoundError as exc:
            raise SubmissionError(
                f"command not found: {job.argv[0]!r} (not an executable on PATH)", retryable=False
            ) from exc
        except PermissionError as exc:
            raise SubmissionError(
                f"command not executable: {job.argv[0]!r} ({exc.strerror})", retryable=False
            ) from exc
        finally:
            os.close(out)
        self._procs[job] = proc
        return f"{proc.pid}@{time.time():.2f}"

    async def wait_job(self, job: Job) -> JobState:
        proc = self._procs.get(job)
        if proc is None:  # adopted: not our child, so its exit status cannot be read
            parsed = _parse_jid(job.jid)
            if parsed:
                await wait_exit(parsed[0])
            return JobState(JobStatus.FAILED, None, UNKNOWN_EXIT, retryable=False)
        if proc.returncode is None:
            try:
                await wait_exit(proc.pid)
            except OSError:  # no pidfd support: fall back to a thread
                await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
        rc = proc.wait()
        return JobState(JobStatus.FINISHED if rc == 0 else JobStatus.FAILED, rc)

    def _alive_pid(self, job: Job) -> int | None:
        proc = self._procs.get(job)
        if proc is not None:
            return proc.pid if proc.poll() is None else None
        if job.jid and live_local_jid(job.jid):
            return int(job.jid.partition("@")[0])
        return None

    async def job_is_running(self, job: Job) -> bool:
        return self._alive_pid(job) is not None

    async def recover_job(self, job: Job) -> bool:
        if job.jid is None:
            pid = self._find_by_environment(job)
            if pid is None:
                return False
            job.jid = f"{pid}@{_start_epoch(pid) or 0:.2f}"
        if self._alive_pid(job) is None:
            return False
        self._procs[job] = None
        return True

    def _find_by_environment(self, job: Job) -> int | None:
        """The pid of a process started for ``job`` (XQUEUE_JOB_DIR in its environment).

        An earlier run killed between starting a job and recording its pid leaves no
        other trace; every job process carries its folder in its environment. /proc is
        scanned once and the map reused for the jobs recovered in the same second.
        """
        now = time.monotonic()
        if self._env_map is None or now - self._env_map[0] > 1.0:
            self._env_map = (now, _job_dirs_of_processes())
        return self._env_map[1].get(job.dir)

    async def kill_job(self, job: Job) -> None:
        """SIGTERM the job's process group, then SIGKILL it if it has not exited in time."""
        pid = self._alive_pid(job)
        if pid is None:
            return
        await kill_group(pid, self.options.kill_grace, self.options.kill_grace)
        # The leader is gone; take down anything it left behind in its group, then reap.
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc = self._procs.get(job)
        if proc is not None:
            proc.poll()

    def forget(self, job: Job) -> None:
        super().forget(job)
        self._procs.pop(job, None)
