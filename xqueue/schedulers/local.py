"""Run each job as a local process and await its exit.

No polling, and no fork in the controller: a per-run shepherd process (``_shepherd.py``)
starts the jobs, reaps them and reports each start and exit on a socket. It appends
each job's return code to the workdir's ``exits.jsonl`` too, and outlives a controller
that dies: a job that ends while nobody watches still leaves its exit status, so the
next run collects it instead of running the job again. Forking from the small
shepherd, on another core, also takes the bulk of a local run's CPU off the controller
(benchmarks/local_throughput.py).

A job starts only when what it asks (``resources``: cpus, memory, gpus) fits in what the
jobs already running leave free of this machine (``_machine.measure``, or the options
``cpus``, ``memory``, ``gpus``); the GPU ids it is given are in its environment.

Every job gets its own session, so a kill reaches the whole process group, and Ctrl-C
in a terminal does not hit the jobs behind the queue's back.

The id recorded for a job is ``pid@bSTART~BOOT`` (when it was spawned, in seconds since
the machine booted, and which boot), checked against the process's start time in /proc,
so a later run never mistakes an unrelated process that reused the pid for the job.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii as quote_json
from typing import Any

import anyio

from .._files import atomic_write
from .._text import LONGEST_EXEC_STRING, too_long_for_exec
from ..capacity import Capacity
from ..errors import JobAlreadyEnded, SchedulerError, SchedulerOptionError, SubmissionError
from ..job import SCRIPT, Job
from ..options import SchedulerOptions
from ..records import EXITS_FILE
from ..scheduler import JobState, Scheduler
from ..states import JobStatus
from ..workdir import Workdir, refusal
from . import _machine
from ._proc import (
    boot_id,
    boot_offset,
    each_process,
    end_groups,
    exited,
    files_held,
    job_dir_in,
    job_dirs_of_processes,
    leaderless_groups,
    parent_and_state,
    read_proc,
    start_ticks,
    wait_exit,
)
from ._shepherd_link import SHEPHERD_NAME, Request, ShepherdLink, Ticket

# The shepherd writes an adopted job's return code right after the job exits; a job
# whose code has not appeared this long after its exit lost its shepherd too.
_RC_LAG = 2.0
# How long a submission cut short waits for the shepherd's word on what it started
# (it answers in milliseconds; a hung one is left to the /proc scan).
SPAWN_ANSWER_WAIT = 10.0
# Shepherds of ended runs that still had jobs running: reaped once those end.
_LINGERING: list[ShepherdLink] = []

UNKNOWN_EXIT = (
    "exit status unknown: the job ended and no exit status of it was kept (its controller "
    "and shepherd were killed, or the workdir's disk was full); see its stdout/stderr"
)


@dataclasses.dataclass
class LocalOptions(SchedulerOptions):
    cwd: str | None = None
    """Directory the jobs run in (default: the controller's current directory)."""
    cpus: int | None = None
    """CPUs the jobs may use at once (default: those this process may run on)."""
    memory: Any = None
    """Memory the jobs may use at once, e.g. ``"16G"`` (default: MemTotal or the cgroup's
    limit)."""
    gpus: Any = None
    """GPUs to hand out: a count or a list of device ids (default: detected)."""
    gpu_env: Any = None
    """The variables a job's GPU ids are put in (default: ``["CUDA_VISIBLE_DEVICES"]``)."""

    def validate(self, scheduler: str) -> None:
        super().validate(scheduler)
        _machine.given(scheduler, self.cpus, self.memory, self.gpus, self.gpu_env)
        if self.cwd is not None and not os.path.isdir(self.cwd):
            raise SchedulerOptionError(f"{scheduler}: cwd {self.cwd!r} is not a directory")


_BOOT_TIME: float | None = None
# A pid is only reused after the kernel has cycled through every other pid, which takes
# far longer than this; a start time within it is the same process.
_SAME_PROCESS_WINDOW = 2.0


def _boot_time() -> float:
    """When the machine booted, in seconds since the epoch, to the hundredth: the wall
    clock now less the time since boot (``/proc/uptime``, the clock of a process's start
    in ``/proc/<pid>/stat``). Only for the ids of earlier versions (``_parse_jid``).

    ``/proc/stat``'s ``btime`` is whole seconds, cut: a process's start read back came
    out up to a second early. With a slow spawn on a loaded machine (the shepherd's
    spawn returns once the child has exec'd) that passed the 2 s that tell a reused pid
    from the job's own process: a full test run saw jobs left running by a killed
    controller taken for gone, and run again beside themselves."""
    global _BOOT_TIME
    if _BOOT_TIME is None:
        with open("/proc/uptime", "rb") as fh:
            since_boot = float(fh.read().split()[0])
        _BOOT_TIME = round(time.time() - since_boot, 2)
    return _BOOT_TIME


def _since_boot(pid: int) -> float | None:
    """When a live process started, in seconds since boot (the machine's, whatever time
    namespace this process is in: ``boot_offset``); None if gone or a zombie."""
    ticks = start_ticks(pid)
    return None if ticks is None else ticks / os.sysconf("SC_CLK_TCK") - boot_offset()


def _parse_jid(jid: str | None) -> tuple[int, float] | None:
    """(pid, start in seconds since boot) of a local job id; None if it names no process
    of this boot.

    The shepherd writes ``pid@bSTART~BOOT``: the boot-time clock (CLOCK_BOOTTIME) before
    the spawn, the clock /proc gives a process's start by, which no step of the wall
    clock moves, and the first 8 characters of the boot's id: after a reboot, a process
    may have the same pid and start again (a service started at boot). Ids in seconds
    since the epoch (``pid@START``, written before 2026-12-05) are still read, through
    the boot time as the wall clock gives it now: a step of the clock since they were
    written moves them, which is why they are no longer written.
    """
    if not jid or "@" not in jid:
        return None
    pid, _, start = jid.partition("@")
    try:
        if start.startswith("b"):
            since, _, boot = start[1:].partition("~")
            if boot and boot != boot_id():
                return None  # a process of an earlier boot: none of it is alive
            return int(pid), float(since)
        return int(pid), float(start) - _boot_time()
    except ValueError:
        return None


def live_local_jid(jid: str) -> bool:
    """Whether a local job id names a process that is still alive (not a reused pid)."""
    parsed = _parse_jid(jid)
    if parsed is None:
        return False
    started = _since_boot(parsed[0])
    return started is not None and abs(started - parsed[1]) < _SAME_PROCESS_WINDOW


def _has_marker(pid: int, jobdir: str) -> bool:
    """Whether the process carries the job's folder in its environment (XQUEUE_JOB_DIR),
    or else has the job's output files as its stdout or stderr.

    A journal line is only a claim (anyone who can write the workdir can plant one):
    the start time and this marker together make sure a process is the job's own before
    it is adopted, waited on or killed.
    """
    environ = read_proc(pid, "environ")
    if environ is None:
        return False
    # fsencode: a folder under a path that is not UTF-8 is in the environment as its bytes.
    if job_dir_in(environ) == os.fsencode(jobdir):
        return True
    # A job that emptied its environment (`env -i`) still writes to the output files its
    # shepherd opened for it: declared dead, it ran on unwatched, "exit status unknown".
    folder = _job_folder_of_output(pid)
    return folder is not None and folder == os.path.realpath(jobdir)


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


def _unsettled(exits: str, own: set[int]) -> tuple[str | None, dict[str, int]]:
    """Why what an earlier run's shepherd started or saw end may not show yet (None if
    nothing), and the folders of its jobs that carry none in their environment.

    A shepherd outlives its controller, and until it has handled a job's start or exit
    the job is nowhere to be seen: a child not yet exec'd has the shepherd's command
    line and environment; one that has exited is a zombie (no environment) until the
    shepherd reaps it and appends its code to ``exits.jsonl``. A lookup in between took
    such a job for never started, and ran it a second time. So while a shepherd holding
    this workdir's ``exits.jsonl`` (not one of ``own``) is anything but asleep in its
    wait, or has such a child, the answer is unknown. Its other children are jobs: each
    found by XQUEUE_JOB_DIR, or, if it emptied its environment (``env -i``, apptainer's
    starter), by the job files its stdout and stderr are; one that shows neither (a
    setuid program's files cannot be read) leaves the answer unknown. Blocking: /proc.
    """
    try:
        st = os.stat(exits)
    except OSError:
        return None, {}
    shepherds: dict[int, bytes] = {}
    parents: dict[int, tuple[int, bytes]] = {}
    named = set()  # with a shepherd's command line: a shepherd, or a child not yet exec'd
    for pid, line in each_process("stat"):
        parents[pid] = parent_and_state(line)
        if pid in own or SHEPHERD_NAME not in (read_proc(pid, "cmdline") or b""):
            continue
        named.add(pid)
        if (st.st_dev, st.st_ino) in files_held(pid):
            shepherds[pid] = parents[pid][1]
    for pid, state in shepherds.items():
        if state != b"S":
            return f"an earlier run's shepherd (pid {pid}) is busy (state {state.decode()})", {}
    unmarked: dict[str, int] = {}
    for pid, (parent, state) in parents.items():
        if parent not in shepherds:
            continue
        if state == b"Z":
            return f"an exit that an earlier run's shepherd (pid {parent}) has not recorded", {}
        if pid in named:
            return f"an earlier run's shepherd (pid {parent}) is starting a job", {}
        if job_dir_in(read_proc(pid, "environ") or b"") is not None:
            continue
        folder = _job_folder_of_output(pid)
        if folder is None:
            return f"a job of an earlier run's shepherd (pid {pid}) cannot be told apart", {}
        unmarked[folder] = pid
    return None, unmarked


def _job_folder_of_output(pid: int) -> str | None:
    """The job folder (resolved) whose ``job.<n>.stdout`` or ``.stderr`` the process's
    stdout or stderr is: the shepherd opened them for the job it started."""
    for fd in (1, 2):
        try:
            path = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        folder, name = os.path.split(path)
        if _OUTPUT_NAME.fullmatch(name):
            return folder
    return None


_OUTPUT_NAME = re.compile(r"job\.[0-9]+\.std(out|err)")


def _leftovers(pgids: dict[Job, int]) -> dict[Job, int]:
    """``LocalScheduler._leftover_groups``' look at /proc. Blocking."""
    found = leaderless_groups(set(pgids.values()))
    return {
        job: pgid
        for job, pgid in pgids.items()
        if any(_has_marker(pid, job.dir) for pid in found.get(pgid, ()))
    }


class LocalScheduler(Scheduler):
    """Jobs are children of the run's shepherd process."""

    name = "local"
    Options = LocalOptions
    awaits_completion = True
    running_on_submit = True
    options: LocalOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # job -> its ticket with the shepherd, or None for a job adopted from an earlier run.
        self._tickets: dict[Job, Ticket | None] = {}
        self._link: ShepherdLink | None = None
        self._base_env: dict[str, str] = {}
        self._env_map: tuple[float, dict[str, int], dict[str, int], str | None] | None = None
        # Programs found executable: (name, PATH) of one looked up on PATH, (path, None)
        # of one given with a "/" (a name on PATH never has one).
        self._found: set[tuple[str, str | None]] = set()
        self._let_go: list[Ticket] = []
        # Jobs handed to the shepherd whose answer (the pid) was not awaited: the
        # submission was cancelled (kept only then, off the hot path). The shepherd
        # starts them all the same, so ``recover_job`` takes the answer here rather than
        # looking for the process.
        self._unanswered: dict[Job, Ticket] = {}
        self._capacity: Capacity | None = None

    async def capacity(self) -> dict[str, Capacity]:
        """This machine: the options, and what is measured (once) for what they leave out."""
        if self._capacity is None:
            o = self.options
            given = _machine.given(self.name, o.cpus, o.memory, o.gpus, o.gpu_env)
            measured = await anyio.to_thread.run_sync(
                _machine.measure,
                given.cpus is None,
                given.memory_mb is None,
                given.gpus is None,
            )
            self._capacity = _machine.merged(given, measured)
        return {"localhost": self._capacity}

    async def open(self, workdir: Any) -> None:
        await super().open(workdir)
        reap()
        self._base_env = dict(os.environ)
        try:
            launched = await anyio.to_thread.run_sync(_launch, workdir, self._base_env)
        except OSError as exc:  # out of descriptors or processes, an unreadable interpreter
            raise SchedulerError(
                f"local: cannot start the run's shepherd (the process that starts its jobs "
                f"and records their exits, run by {sys.executable}): {exc}"
            ) from exc
        self._link = ShepherdLink(*launched)

    async def serve(self) -> None:
        if self._link is not None:
            await self._link.serve()

    async def aclose(self) -> None:
        link, self._link = self._link, None
        if link is None:
            return
        # Jobs let go while running (a vetoed kill) keep their shepherd alive until they
        # end; otherwise it exits as soon as it has reaped the last one.
        let_go = [t.pid for t in self._let_go if not t.ended.is_set()]
        if let_go:
            let_go = await anyio.to_thread.run_sync(_still_running, let_go)
        if not await link.close(wait=0 if let_go else 5.0):
            _LINGERING.append(link)

    async def submit_jobs(self, jobs: Any) -> list[str | BaseException]:
        """Every job in one message to the shepherd; then await its answers."""
        if self._link is None:
            raise SchedulerError("local: the scheduler is not open")
        results: list[str | BaseException] = []
        requests: list[Request] = []
        sent: list[tuple[int, Job]] = []
        for job in jobs:
            self.stats.submit_calls += 1
            try:
                request = self._request(job)
                if _too_long_for_exec(job, request):  # rare: the script is written off the loop
                    request = await anyio.to_thread.run_sync(_from_script, job, request)
                requests.append(request)
            except Exception as exc:
                results.append(exc)
            else:
                sent.append((len(results), job))
                results.append("")
        tickets = await self._link.spawn(requests)
        try:
            for _, ticket in zip(sent, tickets):
                await ticket.started.wait()
        except BaseException:  # cut short (cancelled): the shepherd starts them regardless
            self._unanswered.update((job, t) for (_, job), t in zip(sent, tickets))
            raise
        for (i, job), ticket in zip(sent, tickets):
            if ticket.refused is not None:
                code, stream = ticket.refused
                path = job.stdout_path if stream == "stdout" else job.stderr_path
                results[i] = refusal(path, code)
            elif ticket.error is not None:
                results[i] = SubmissionError(
                    f"could not start {job.argv[0]!r}: {ticket.error}", retryable=False
                )
            elif not ticket.pid:
                results[i] = SchedulerError(self._link.failure() or "the shepherd is gone")
            else:
                self._tickets[job] = ticket
                results[i] = _jid(ticket)
        return results

    async def submit_job(self, job: Job) -> str:
        (result,) = await self.submit_jobs([job])
        if isinstance(result, BaseException):
            raise result
        return result

    def _request(self, job: Job) -> Request:
        """The shepherd's request for ``job``. The shepherd creates its output files, off
        this loop (on a disk that is most of a job's cost), refusing a planted link, FIFO
        or hard link there as ``open_plain`` does; the command is checked here, so a
        missing program is the controller's own error before anything runs."""
        env = {
            "XQUEUE_JOB_INDEX": str(job.index),
            "XQUEUE_JOB_ATTEMPT": str(max(job.attempt, 1)),
            "XQUEUE_JOB_DIR": job.dir,
        }
        if job.envs:
            env.update(job.envs)
        if job.claim is not None:
            env.update(job.claim.environment())  # its GPU ids and slot values
        path = env.get("PATH", self._base_env.get("PATH"))
        program = job.argv[0]
        if "/" in program:
            if not self._executable(os.path.join(self.options.cwd or "", program)):
                raise SubmissionError(
                    f"command not executable: {program!r} (no such file, or not executable)",
                    retryable=False,
                )
        elif not self._on_path(program, path):
            raise SubmissionError(
                f"command not found: {program!r} (not an executable on PATH)", retryable=False
            )
        folder = quote_json(os.path.basename(job.dir))
        tail = f', "attempt": {max(job.attempt, 1)}, "dir": {folder}}}'
        return Request(job.argv, env, self.options.cwd, tail, job.stdout_path, job.stderr_path)

    async def wait_job(self, job: Job) -> JobState:
        ticket = self._tickets.get(job)
        if ticket is not None:
            await ticket.ended.wait()
            if ticket.rc is not None:
                return _ended(ticket.rc)
        # Adopted (its earlier run's shepherd leaves the return code), or the shepherd
        # died under it: it may still run, and is watched, and killed, through /proc.
        pid = (await self._alive_pids([job])).get(job)
        if pid is not None:
            await wait_exit(pid)
        assert self.workdir is not None  # open() set it
        rc = await anyio.to_thread.run_sync(self.workdir.exit_code, job)
        # Waited for even if no live process was seen: one that has exited but that its
        # shepherd has not reaped yet (slow, or stopped) is no longer alive, and its code
        # comes a moment later. Only a job whose shepherd is gone waits for nothing.
        deadline = time.monotonic() + _RC_LAG
        while rc is None and time.monotonic() < deadline:
            await anyio.sleep(0.05)
            rc = await anyio.to_thread.run_sync(self.workdir.exit_code, job)
        if rc is None:
            return JobState(JobStatus.FAILED, None, UNKNOWN_EXIT, retryable=False)
        return _ended(rc)

    def watch_end(self, job: Job, report: Callable[[JobState | None], None]) -> bool:
        """Its shepherd's answer reports a job's end, with no task waiting for it."""
        if getattr(self.wait_job, "__func__", None) is not _OWN_WAIT_JOB:
            return False  # one that waits its own way (a subclass, a patch) is awaited
        ticket = self._tickets.get(job)
        if ticket is None or (ticket.ended.is_set() and ticket.rc is None):
            return False  # adopted, or its shepherd is gone: watched through /proc
        if ticket.ended.is_set():  # a short job's end often comes with its start
            _report_rc(report, ticket.rc)
        else:
            ticket.watcher = functools.partial(_report_rc, report)
        return True

    async def _alive_pids(self, jobs: Iterable[Job]) -> dict[Job, int]:
        """The live process of each job that still runs.

        The shepherd tells of our own jobs' ends; the processes of adopted jobs are
        checked in /proc, all of them in one worker thread.
        """
        alive: dict[Job, int] = {}
        adopted: list[Job] = []
        for job in jobs:
            ticket = self._tickets.get(job)
            if ticket is None or (ticket.rc is None and ticket.ended.is_set()):
                adopted.append(job)  # adopted, not ours, or its shepherd died: ask /proc
            elif not ticket.ended.is_set():
                alive[job] = ticket.pid
        if adopted:
            found = await anyio.to_thread.run_sync(_adopted_pids, adopted)
            alive.update(found)
        return alive

    async def job_is_running(self, job: Job) -> bool:
        return job in await self._alive_pids([job])

    async def recover_job(self, job: Job) -> bool:
        ticket = self._unanswered.pop(job, None)
        if ticket is not None:  # its submission was cut short after the shepherd had it
            with anyio.move_on_after(SPAWN_ANSWER_WAIT):
                await ticket.started.wait()
            if ticket.pid:
                self._tickets[job] = ticket
                job.jid = _jid(ticket)
                return True
            if ticket.started.is_set():
                return False  # refused, or not started: nothing runs
        if job.jid is None:
            # The /proc scan and the checks of what it finds run in a worker thread.
            jid = await anyio.to_thread.run_sync(self._find_by_environment, job)
            if jid is None:
                return False
            # Its shepherd recorded its end (the scan waits for that, ``_unsettled``):
            # what carries its folder now is something it left running, not the job.
            assert self.workdir is not None
            if await anyio.to_thread.run_sync(self.workdir.exit_code, job) is not None:
                return False  # the engine reads the recorded end
            job.jid = jid
        if job not in await self._alive_pids([job]):
            return False
        self._tickets[job] = None
        return True

    def _find_by_environment(self, job: Job) -> str | None:
        """The id of a process started for ``job`` (XQUEUE_JOB_DIR in its environment).

        An earlier run killed between starting a job and recording its pid leaves no
        other trace; every job process carries its folder in its environment. /proc is
        scanned once and the map reused for the jobs recovered in the same second.
        Raises SchedulerError while an earlier run's shepherd may still hold a start or
        an exit that neither /proc nor ``exits.jsonl`` shows (``_unsettled``): the
        engine looks again a moment later. Blocking (it reads /proc): a worker thread.
        """
        if self._env_map is None or time.monotonic() - self._env_map[0] > 1.0:
            # Settled before the scan: no job can start after it. Settled after it: none
            # that had ended by then is still unrecorded (a zombie has no environment).
            own = {self._link.proc.pid} if self._link is not None else set()
            exits = str(self.workdir.path / EXITS_FILE) if self.workdir is not None else ""
            why, unmarked = _unsettled(exits, own)
            found = job_dirs_of_processes() if why is None else {}
            if why is None:
                why, unmarked = _unsettled(exits, own)
            # Timed once the scans are done: on a machine of many processes they take
            # long enough that a time taken before them had every lookup scan again.
            self._env_map = (time.monotonic(), found, unmarked, why)
        _, found, unmarked, why = self._env_map
        pid = found.get(job.dir)
        if pid is None and unmarked:  # those are keyed by resolved folder (/proc's links)
            pid = unmarked.get(os.path.realpath(job.dir))
        if pid is None and why is not None:
            raise SchedulerError(why)
        if pid is None:
            return None
        boot = boot_id()
        return f"{pid}@b{_since_boot(pid) or 0:.2f}" + (f"~{boot}" if boot else "")

    async def kill_job(self, job: Job) -> None:
        (error,) = await self.kill_jobs([job])
        if error is not None:
            raise error

    async def kill_jobs(self, jobs: Any) -> list[BaseException | None]:
        """End every job's process group at once (``end_groups``: SIGTERM, one wait of
        kill_grace, SIGKILL for whatever is left of each group).

        Returns an error for a job whose group outlived even SIGKILL, so the engine
        reports it instead of recording it as killed.
        """
        self.stats.kill_calls += 1
        groups = await self._alive_pids(jobs)
        # Exited, not yet reaped by the shepherd: it ended on its own (nothing signalled
        # it yet), and its exit, whatever it is, stands. Signalled now, it would be
        # recorded killed, a success with rc 0 among them, and the next run ran it again.
        own = {job: pid for job, pid in groups.items() if job in self._tickets}
        for job in await anyio.to_thread.run_sync(exited, own) if own else ():
            del groups[job]
        grace = self.options.kill_grace
        if self._link is not None:  # its own jobs: their groups are the stop's to end
            # Not those that ended on their own: the shepherd ends what they left in their
            # groups as it reaps them, unless told they are being stopped.
            await self._link.stopping([t.pid for j in groups if (t := self._tickets.get(j))])
        # An adopted job's shell may be gone with its group alive: what an earlier run's
        # stop signalled and could not end (its controller SIGKILLed in the grace). Ended
        # too, and the job is still answered as ended on its own.
        leftovers = await self._leftover_groups([j for j in jobs if j not in groups])
        # Seen through even if the run is cancelled meanwhile (bounded: grace + 5 s at
        # most): cut short, it would leave a child of a group recorded killed alive.
        with anyio.CancelScope(shield=True):
            left, ended = await end_groups(
                {**groups, **leftovers}, grace, max(grace, 5.0), leaders=own
            )
        # A group gone by the SIGTERM: the job ended (and was reaped) after it was looked
        # at, before its exit was heard of. Answered killed, a job that exited 0 was
        # recorded KILLED, rc 0, and the next run ran it again.
        return [
            SubmissionError(f"process group {left[job]} survived SIGKILL", retryable=False)
            if job in left
            else None
            if job in groups and job not in ended
            else JobAlreadyEnded(f"job {job.index} had ended: nothing to kill")
            for job in jobs
        ]

    async def _leftover_groups(self, jobs: list[Job]) -> dict[Job, int]:
        """The groups of adopted jobs whose first process is gone and others live on."""
        pgids = {
            job: parsed[0]
            for job in jobs
            if self._tickets.get(job) is None and (parsed := _parse_jid(job.jid)) is not None
        }
        if not pgids:
            return {}
        return await anyio.to_thread.run_sync(_leftovers, pgids)

    def forget(self, job: Job) -> None:
        super().forget(job)
        self._unanswered.pop(job, None)
        ticket = self._tickets.pop(job, None)
        if ticket is not None and not ticket.ended.is_set():
            self._let_go.append(ticket)  # maybe left running: the shepherd reaps it

    def _executable(self, path: str) -> bool:
        """Whether ``path`` is executable; one found so is remembered, as ``_on_path``
        remembers (every shell command is ``/bin/sh``'s: a stat a job, on the loop)."""
        if (path, None) in self._found:
            return True
        if not os.access(path, os.X_OK):
            return False
        self._found.add((path, None))
        return True

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


# exec refuses the arguments and variables together beyond ARG_MAX, which the
# shepherd's own environment shares: a budget of half of it is left for that.
_ALL_STRINGS = max(os.sysconf("SC_ARG_MAX"), 2 * LONGEST_EXEC_STRING) // 2


def _too_long_for_exec(job: Job, request: Request) -> bool:
    """Whether ``exec`` would refuse a job's shell command (``E2BIG``, "Argument list too
    long"), alone or with the rest of its argv and environment. A list command is the
    exact argv the program gets, and no script can pass one longer: exec's error stands.
    This runs for every job: a command under a quarter of the limit in characters (no
    encoding reaches it then) is the one length asked."""
    command = job.command
    if type(command) is not str or len(command) * 4 < LONGEST_EXEC_STRING:
        return False
    sizes = [len(os.fsencode(a)) + 1 for a in request.argv]
    sizes += [len(os.fsencode(f"{k}={v}")) + 1 for k, v in request.env.items()]
    return too_long_for_exec(command) or sum(sizes) > _ALL_STRINGS


def _from_script(job: Job, request: Request) -> Request:
    """``request`` with the job's shell command read by ``/bin/sh`` from the attempt's
    script, as the wrapper of the other backends runs it (``scheduler.render_script``): a
    shell reads a script of any length. Blocking: a worker thread."""
    assert isinstance(job.command, str)
    path = job.attempt_path(SCRIPT)
    atomic_write(path, f"{job.command}\n")
    return dataclasses.replace(request, argv=job.argv_with(("/bin/sh", path)))


_OWN_WAIT_JOB = LocalScheduler.wait_job  # see watch_end


def _launch(workdir: Workdir, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Any]:
    """Start the run's shepherd (``ShepherdLink.launch``). Blocking (it opens
    ``exits.jsonl``, which may end a torn line, reads the boot's id and clock once, and
    forks): one worker thread for all of it."""
    exits = workdir.exits_fd()
    try:  # job ids say which boot, in the machine's boot clock
        return ShepherdLink.launch(env, exits, boot_id(), boot_offset())
    finally:
        os.close(exits)  # the shepherd holds its own


def _ended(rc: int) -> JobState:
    return JobState(JobStatus.FINISHED if rc == 0 else JobStatus.FAILED, rc)


def _report_rc(report: Callable[[JobState | None], None], rc: int | None) -> None:
    report(None if rc is None else _ended(rc))


def _still_running(pids: list[int]) -> list[int]:
    """The pids that name a live process (not gone, not an exited zombie)."""
    return [pid for pid in pids if start_ticks(pid) is not None]


def reap() -> None:
    """Reap the shepherds of ended runs whose last jobs have ended since."""
    _LINGERING[:] = [link for link in _LINGERING if link.proc.poll() is None]


def _jid(ticket: Ticket) -> str:
    """A started job's id: its pid and start time, which a reused pid cannot match."""
    return f"{ticket.pid}@{ticket.start}"
