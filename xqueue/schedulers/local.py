"""Run each job as a local process and await its exit.

No polling: the job runs under a two-line ``sh`` wrapper (its argv passed through as
``"$@"``, so nothing is re-parsed) whose only task is to write the job's return code to
``job.<n>.rc`` when it ends. While the controller lives it reads the exit status from its
child directly, awaited on a pidfd (no thread per child, the same on asyncio and trio);
the rc file is for the controller that died: a job that ends while nobody watches still
leaves its exit status, so the next run collects it instead of running the job again.
The wrapper costs one ``sh`` per job, measured in benchmarks/local_throughput.py.

Every job gets its own session, so a kill reaches the whole process group, and Ctrl-C
in a terminal does not hit the jobs behind the queue's back.

The id recorded for a job is ``pid@start`` (when it was spawned, in seconds since the
epoch), checked against the process's start time in /proc, so a later run never mistakes
an unrelated process that reused the pid for the job. While a run holds a job's Popen
handle the pid cannot be reused at all (the exited child stays a zombie until reaped).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from typing import Any

import anyio

from ..errors import SchedulerOptionError, SubmissionError
from ..job import RC, Job
from ..options import SchedulerOptions
from ..scheduler import JobState, Scheduler
from ..states import JobStatus
from ..workdir import open_output, read_rc
from ._proc import start_ticks, wait_exit

# Records the job's return code where a later run finds it; exits with the same code.
# The no-op TERM trap keeps the wrapper alive until its command has ended (a trap runs
# only after the foreground command completes), so a kill's grace applies to the job
# and not to the wrapper, while the command itself keeps TERM's default action.
# ``set -C`` (noclobber) creates the rc file with O_EXCL, so a link planted at its name
# makes the write fail instead of redirecting it; the controller removes a stale one first.
WRAPPER = 'trap : TERM; f=$1; shift; "$@"; r=$?; set -C; echo "$r" > "$f"; exit "$r"'

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


def _has_marker(pid: int, jobdir: str) -> bool:
    """Whether the process carries the job's folder in its environment (XQUEUE_JOB_DIR).

    A journal line is only a claim (anyone who can write the workdir can plant one):
    the start time and this marker together make sure a process is the job's own before
    it is adopted, waited on or killed.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read()
    except OSError:
        return False
    return f"XQUEUE_JOB_DIR={jobdir}".encode() in environ.split(b"\0")


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


def _adopted_pids(jobs: list[Job]) -> dict[Job, int]:
    """The live process of each adopted job: its recorded pid, if that process is still the
    one started at the recorded time and carries the job's folder. Blocking (/proc)."""
    alive: dict[Job, int] = {}
    for job in jobs:
        if job.jid and live_local_jid(job.jid):
            pid = int(job.jid.partition("@")[0])
            if _has_marker(pid, job.dir):
                alive[job] = pid
    return alive


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
        self._let_go: list[subprocess.Popen[bytes]] = []
        self._found: set[tuple[str, str | None]] = set()

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
        if self._let_go:
            self.reap()
        env = self._base_env.copy()
        env["XQUEUE_JOB_INDEX"] = str(job.index)
        env["XQUEUE_JOB_ATTEMPT"] = str(max(job.attempt, 1))
        env["XQUEUE_JOB_DIR"] = job.dir
        if job.envs:
            env.update(job.envs)
        rc_path = job.attempt_path(RC)
        try:
            os.unlink(rc_path)  # a stale one (an earlier run's attempt n) or a planted link
        except FileNotFoundError:
            pass
        out = open_output(job.stdout_path)  # never through a link planted at the name
        try:
            err = open_output(job.stderr_path)
            try:
                if "/" in job.argv[0]:
                    if not os.access(os.path.join(self.options.cwd or "", job.argv[0]), os.X_OK):
                        raise PermissionError(13, "not executable", job.argv[0])
                elif not self._on_path(job.argv[0], env.get("PATH")):
                    raise FileNotFoundError(job.argv[0])
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", WRAPPER, "xqueue-job", rc_path, *job.argv],
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
        if proc is None:  # adopted: not our child; its wrapper leaves the return code
            pid = (await self._alive_pids([job])).get(job)
            if pid is not None:
                await wait_exit(pid)
            rc = await anyio.to_thread.run_sync(read_rc, job)
            if rc is None:
                return JobState(JobStatus.FAILED, None, UNKNOWN_EXIT, retryable=False)
            return JobState(JobStatus.FINISHED if rc == 0 else JobStatus.FAILED, rc)
        if proc.returncode is None:
            try:
                await wait_exit(proc.pid)
            except OSError:  # no pidfd support: fall back to a thread
                await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
        rc = proc.wait()
        return JobState(JobStatus.FINISHED if rc == 0 else JobStatus.FAILED, rc)

    async def _alive_pids(self, jobs: Iterable[Job]) -> dict[Job, int]:
        """The live process of each job that still runs.

        Our own children are asked directly (a non-blocking waitpid); the processes of
        adopted jobs are checked in /proc, all of them in one worker thread.
        """
        alive: dict[Job, int] = {}
        adopted: list[Job] = []
        for job in jobs:
            proc = self._procs.get(job)
            if proc is None:
                adopted.append(job)
            elif proc.poll() is None:
                alive[job] = proc.pid
        if adopted:
            found = await anyio.to_thread.run_sync(_adopted_pids, adopted)
            alive.update(found)
        return alive

    async def job_is_running(self, job: Job) -> bool:
        return job in await self._alive_pids([job])

    async def recover_job(self, job: Job) -> bool:
        if job.jid is None:
            # The /proc scan and the checks of what it finds run in a worker thread.
            jid = await anyio.to_thread.run_sync(self._find_by_environment, job)
            if jid is None:
                return False
            job.jid = jid
        if job not in await self._alive_pids([job]):
            return False
        self._procs[job] = None
        return True

    def _find_by_environment(self, job: Job) -> str | None:
        """The id of a process started for ``job`` (XQUEUE_JOB_DIR in its environment).

        An earlier run killed between starting a job and recording its pid leaves no
        other trace; every job process carries its folder in its environment. /proc is
        scanned once and the map reused for the jobs recovered in the same second.
        Blocking (it reads /proc): called in a worker thread.
        """
        now = time.monotonic()
        if self._env_map is None or now - self._env_map[0] > 1.0:
            self._env_map = (now, _job_dirs_of_processes())
        pid = self._env_map[1].get(job.dir)
        return None if pid is None else f"{pid}@{_start_epoch(pid) or 0:.2f}"

    async def kill_job(self, job: Job) -> None:
        (error,) = await self.kill_jobs([job])
        if error is not None:
            raise error

    async def kill_jobs(self, jobs: Any) -> list[BaseException | None]:
        """SIGTERM every job's group at once, wait once for kill_grace, SIGKILL the rest.

        Returns an error for a job whose leader outlived even SIGKILL, so the engine
        reports it instead of recording it as killed.
        """
        self.stats.kill_calls += 1
        groups = await self._alive_pids(jobs)
        _signal_groups(groups.values(), signal.SIGTERM)
        left = await _wait_all(groups, self.options.kill_grace)
        _signal_groups(left.values(), signal.SIGKILL)
        # Our own children's groups cannot be reused before we reap them: take down
        # whatever a leader left behind in its group.
        _signal_groups(
            [pid for job, pid in groups.items() if self._procs.get(job) is not None],
            signal.SIGKILL,
        )
        left = await _wait_all(left, max(self.options.kill_grace, 5.0))
        for job in groups:
            proc = self._procs.get(job)
            if proc is not None:
                proc.poll()  # reap it now; its waiter reads the cached return code
        return [
            SubmissionError(f"process group {left[job]} survived SIGKILL", retryable=False)
            if job in left
            else None
            for job in jobs
        ]

    def forget(self, job: Job) -> None:
        super().forget(job)
        proc = self._procs.pop(job, None)
        if proc is not None and proc.poll() is None:
            self._let_go.append(proc)  # left running (a vetoed kill): still ours to reap

    def _on_path(self, program: str, path: str | None) -> bool:
        """Whether ``program`` is on PATH; found ones are remembered (a PATH search is a
        dozen stat calls, and a run usually starts the same few programs many times)."""
        key = (program, path)
        if key in self._found:
            return True
        if shutil.which(program, path=path) is None:
            return False
        self._found.add(key)
        return True

    def reap(self) -> None:
        """Reap the children let go while still running that have exited since."""
        self._let_go = [proc for proc in self._let_go if proc.poll() is None]


def _signal_groups(pids: Any, sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


async def _wait_all(groups: dict[Job, int], timeout: float) -> dict[Job, int]:
    """Wait up to ``timeout`` for every leader to exit; return the ones still alive."""
    left = dict(groups)

    async def one(job: Job, pid: int) -> None:
        await wait_exit(pid)
        left.pop(job, None)

    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as tg:
            for job, pid in groups.items():
                tg.start_soon(one, job, pid)
    return left
