"""Run jobs on SSH servers, spread by load, over multiplexed asyncssh connections.

Each job's wrapper script (``write_script``) is started detached on a server::

    setsid sh <job folder>/job.sh </dev/null >/dev/null 2>&1 &

so the submission returns as soon as the remote shell has forked, and the job is the
leader of its own process group, whose id is its pid. The wrapper writes ``job.started``
and ``job.rc`` into the job folder, which the controller reads: the workdir must be
shared between the controller and the servers (the same path by default; a server's
``remote_workdir`` maps it when the server mounts it elsewhere).

One status command per server per tick reads ``/proc/<pid>/stat`` of every active job
on that server; the answer is merged with the job's files by ``reconcile``. A job id is
``<server>:<pid>:<start time>``, so a later controller re-attaches to the right process
and never to an unrelated one that reused the pid.

Connections that drop are reopened with backoff (see ``_ssh_pool``). While a server is
unreachable its jobs count as running (their return code files still end them); once
it is marked down, its jobs that left no return code are failed as lost, with the
reason, and not retried (they may still be running there): they stay journalled as
running, so a later run looks for them there and follows them, never starting them a
second time beside themselves. New jobs go to the servers that are up.

Each server has a capacity (``cpus``, ``memory``, ``gpus`` in its entry, else measured
when the run opens: ``nproc``, MemTotal, its GPUs): the engine places each job on a
server where what it asks fits beside the jobs running there (among the reachable
servers, when one of them could hold it), the one with the fewest jobs first, and hands
out that server's GPU ids. A job placed on a server that turns out unreachable goes back
to the queue to be placed again if it holds something there and another reachable
server could take it; a job that holds nothing goes to another server at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import anyio

from ..capacity import Capacity, Need
from ..errors import (
    JobAlreadyEnded,
    SchedulerError,
    SchedulerOptionError,
    SchedulerOutputError,
    SubmissionError,
    SubmissionUnknownError,
)
from ..failures import FailureClass
from ..job import SCRIPT, Job, attempt_file
from ..options import SchedulerOptions
from ..scheduler import JobState, Scheduler, gather_bounded
from ..states import JobStatus
from ..workdir import read_text, recorded_exits
from . import _machine
from ._aio import AsyncioBridge
from ._process import read_output
from ._ssh_pool import ReconnectPolicy, Refused, ServerConfig, ServerPool, Unreachable
from ._ssh_scripts import (
    NO_CWD,
    NO_SCRIPT,
    NO_SETSID,
    PID,
    alive,
    kill_script,
    parse_groups,
    parse_jid,
    parse_kill,
    parse_pid_file,
    parse_stat,
    parse_stats,
    read_pid_file_script,
    status_script,
    submit_answer,
    submit_script,
)

log = logging.getLogger("xqueue.ssh")


@dataclasses.dataclass
class SshOptions(SchedulerOptions):
    servers: dict[str, Any] = dataclasses.field(default_factory=dict)
    """name -> {host, port, user, keyfile, known_hosts, verify_host_keys, max_sessions,
    max_connections, remote_workdir, connect_timeout, cpus, memory, gpus, gpu_env}."""
    cwd: str | None = None
    """Directory the jobs run in on the server (default: the login directory)."""
    reconnect_attempts: int = 5
    """Failed connection attempts in a row after which a server is marked down."""
    reconnect_backoff: float = 0.5
    """Seconds before the first reconnect; doubled after each failure (up to 10 s)."""
    down_retry: float = 60.0
    """Seconds between probes of a server marked down."""
    command_timeout: float = 30.0
    """Seconds a status or submit command may take before its connection is dropped."""
    submit_timeout: float = 120.0
    """Seconds a job may wait for a reachable server before its submission fails."""

    # submit_timeout=0 is a choice: a job fails at once when no server is up.
    above_zero = frozenset({"command_timeout"})

    def validate(self, scheduler: str) -> None:
        super().validate(scheduler)
        if not isinstance(self.servers, dict) or not self.servers:
            raise SchedulerOptionError(
                f"{scheduler}: give at least one server, e.g. servers={{'node1': {{'host': "
                "'node1.example.org', 'user': 'me', 'keyfile': '~/.ssh/id_ed25519'}}"
            )
        if self.reconnect_attempts < 1:
            raise SchedulerOptionError(f"{scheduler}: reconnect_attempts must be >= 1")

    def server_configs(self, scheduler: str) -> list[ServerConfig]:
        return [
            ServerConfig.parse(scheduler, str(n), raw, _CAPACITY_KEYS)
            for n, raw in self.servers.items()
        ]

    def capacities(self, scheduler: str) -> dict[str, Capacity]:
        """Each server's capacity as its entry gives it; None where it is to be measured."""
        return {
            str(name): _machine.given(
                f"{scheduler}: server {name!r}", *(raw.get(k) for k in _CAPACITY_KEYS)
            )
            for name, raw in self.servers.items()
        }


_CAPACITY_KEYS = ("cpus", "memory", "gpus", "gpu_env")


class SshScheduler(Scheduler):
    """Jobs are detached process groups on SSH servers."""

    name = "ssh"
    Options = SshOptions
    options: SshOptions
    script_ends_group = True  # its end is read from the rc file and /proc, not its status
    # The kill script signals the job's whole group, its wrapper shell with it, which has
    # no trap: a return code file is written only by a wrapper whose command ended first.
    rc_file_is_own_end = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.configs = self.options.server_configs(self.name)
        self._given = self.options.capacities(self.name)
        self._measured: dict[str, Capacity] = {}
        self.policy = ReconnectPolicy(
            attempts=self.options.reconnect_attempts,
            backoff=self.options.reconnect_backoff,
            down_retry=self.options.down_retry,
        )
        self._bridge = AsyncioBridge()
        self._pools: dict[str, ServerPool] = {}
        self._load: dict[str, int] = {c.name: 0 for c in self.configs}
        self._server_of: dict[Job, str] = {}
        self._lost: dict[str, str] = {}
        # Jobs whose submission to a server may have started them there (the answer was
        # lost): recover_job asks that server for the pid file.
        self._maybe_on: dict[Job, str] = {}

    # -- lifecycle -----------------------------------------------------------------------
    async def open(self, workdir: Any) -> None:
        await super().open(workdir)
        await self._bridge.start()
        self._pools = {c.name: ServerPool(c, self.policy) for c in self.configs}
        errors: dict[str, BaseException] = {}

        async def probe(pool: ServerPool) -> None:
            given = self._given[pool.name]
            known = None not in (given.cpus, given.memory_mb, given.gpus)
            script = "exit 0" if known else _machine.PROBE
            try:
                result = await self._bridge.call(
                    pool.run, script, timeout=self.options.command_timeout
                )
            except (Unreachable, Refused) as exc:
                errors[pool.name] = exc
                return
            if not known:
                self._measured[pool.name] = _machine.parse_probe(result.stdout)

        async with anyio.create_task_group() as tg:
            for pool in self._pools.values():
                tg.start_soon(probe, pool)
        refused = [e for e in errors.values() if isinstance(e, Refused)]
        if refused:
            await self.aclose()
            raise SchedulerError(str(refused[0])) from refused[0]
        if len(errors) == len(self._pools):
            await self.aclose()
            detail = "; ".join(str(e) for e in errors.values())
            raise SchedulerError(f"ssh: no server is reachable: {detail}")
        for name, exc in errors.items():
            log.warning("ssh: server %r is not reachable yet: %s", name, exc)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await self._bridge.call(pool.close)
        await self._bridge.stop()

    # -- capacity ------------------------------------------------------------------------
    async def capacity(self) -> dict[str, Capacity]:
        """Each server: its entry's values, and what was measured when the run opened for
        the rest (not counted for a server that could not be reached then)."""
        return {
            name: _machine.merged(given, self._measured.get(name, Capacity()))
            for name, given in self._given.items()
        }

    def usable_hosts(self) -> list[str] | None:
        if not self._pools:
            return None
        now = time.monotonic()
        return [p.name for p in self._pools.values() if p.available(now)]

    # -- paths ---------------------------------------------------------------------------
    def _remote(self, config: ServerConfig, path: str) -> str:
        """A controller path as the server sees it."""
        if not config.remote_workdir or self.workdir is None:
            return path
        root = str(self.workdir.path)
        rel = os.path.relpath(path, root)
        return config.remote_workdir if rel == "." else os.path.join(config.remote_workdir, rel)

    # -- submitting ----------------------------------------------------------------------
    def _pick(self, exclude: set[str], only: str | None = None) -> ServerPool | None:
        """The reachable server with the fewest jobs (declaration order breaks ties)."""
        now = time.monotonic()
        candidates = [
            p
            for p in self._pools.values()
            if p.name not in exclude and p.available(now) and only in (None, p.name)
        ]
        return min(candidates, key=lambda p: self._load[p.name]) if candidates else None

    async def submit_job(self, job: Job) -> str:
        """Start the job on the server the engine placed it on (its claim), else on the
        reachable server with the fewest jobs.

        A server that could not be reached is left for the next one, since nothing was
        sent to it. A job that holds something on the server it was placed on (CPUs,
        memory, GPU ids, slot values) goes back to the engine instead, to be placed again
        (a transient refusal: a new attempt number, not counted as a retry), unless no
        other server is reachable either. A connection that dropped
        after the submit script was sent may have started the job there: its pid file
        says so, or else the outcome is unknown (``SubmissionUnknownError``) and the job
        is not started anywhere else.
        """
        deadline = time.monotonic() + self.options.submit_timeout
        placed = job.claim.host if job.claim is not None else None
        placed = placed if placed in self._pools else None
        tried: set[str] = set()
        while True:
            pool = self._pick(tried, placed)
            if pool is None and placed is not None and self._pick(tried | {placed}):
                assert job.claim is not None
                if job.claim.record() is None:
                    placed = None  # it holds nothing there: any server will do
                    continue
                if self._elsewhere(job, placed, tried):
                    # Its devices and slots are on that server: the engine places it anew.
                    raise SubmissionError(
                        f"server {placed!r} cannot be reached now; placing the job again",
                        transient=True,
                    )
            if pool is None:
                await self._wait_for_a_server(deadline, tried)
                tried.clear()
                continue
            self._load[pool.name] += 1
            try:
                jid = await self._submit_to(pool, job)
            except Unreachable as exc:
                self._load[pool.name] -= 1
                if exc.maybe_started:
                    return await self._after_lost_answer(pool, job, exc)
                log.info("job %s: %s; trying another server", job.index, exc)
                tried.add(pool.name)
                continue
            except BaseException:
                self._load[pool.name] -= 1
                raise
            self._server_of[job] = pool.name
            return jid

    def _elsewhere(self, job: Job, placed: str, tried: set[str]) -> bool:
        """Whether a reachable server other than ``placed`` could ever hold the job."""
        need = Need.of(job.resources)
        now = time.monotonic()
        return any(
            p.available(now)
            and _machine.merged(self._given[p.name], self._measured.get(p.name, Capacity())).holds(
                need
            )
            for p in self._pools.values()
            if p.name not in tried and p.name != placed
        )

    async def _after_lost_answer(self, pool: ServerPool, job: Job, why: BaseException) -> str:
        """The id of a job whose submit answer was lost, if it started; else unknown."""
        self._maybe_on[job] = pool.name
        found = await self._by_pid_file(job, pool.name, settle=1.0)
        if found is None:
            raise SubmissionUnknownError(
                f"job {job.index}: {why}; it may have started on server {pool.name!r}, "
                "where no pid file shows it yet"
            ) from why
        log.warning(
            "job %s started on %r although its submission lost the connection", job.index, pool.name
        )
        self._maybe_on.pop(job, None)
        self._load[pool.name] += 1
        self._server_of[job] = pool.name
        return found

    async def _by_pid_file(self, job: Job, server: str | None, settle: float = 0.0) -> str | None:
        """The id in the attempt's pid file, read here (for up to ``settle`` seconds while
        it is missing) and else on ``server`` itself, which sees its own write at once
        where a shared file system may not yet. Only a pid file naming ``server`` (any
        known server when None) counts."""
        path = job.attempt_path(PID)
        deadline = time.monotonic() + settle
        while True:
            text = await anyio.to_thread.run_sync(read_text, path)
            parsed = parse_pid_file(text or "")
            if parsed is not None or time.monotonic() >= deadline:
                break
            await anyio.sleep(0.1)
        pool = self._pools.get(server or "")
        if parsed is None and pool is not None:
            script = read_pid_file_script(self._remote(pool.config, job.dir), max(job.attempt, 1))
            try:
                result = await self._bridge.call(
                    pool.run, script, timeout=self.options.command_timeout
                )
            except (Unreachable, Refused) as exc:
                log.info("job %s: cannot read its pid file on %r: %s", job.index, server, exc)
            else:
                parsed = parse_pid_file(result.stdout)
        if parsed is None or parsed[0] not in self._pools or server not in (None, parsed[0]):
            return None
        return f"{parsed[0]}:{parsed[1]}:{parsed[2]}"

    async def _wait_for_a_server(self, deadline: float, tried: set[str]) -> None:
        """Sleep until some server may take jobs again; fail once none can."""
        pools = list(self._pools.values())
        now = time.monotonic()
        if not pools or all(p.down for p in pools) or now >= deadline:
            detail = "; ".join(f"{p.name}: {p.last_error or 'failed'}" for p in pools)
            raise SubmissionError(f"no SSH server can take the job ({detail})")
        waits = [max(p.next_try - now, 0.05) for p in pools if not p.down]
        await anyio.sleep(min([*waits, 1.0, deadline - now]))

    async def _submit_to(self, pool: ServerPool, job: Job) -> str:
        config = pool.config
        jobdir = self._remote(config, job.dir)
        await anyio.to_thread.run_sync(self._prepare_files, job, jobdir)
        result = await self._bridge.call(
            pool.run,
            submit_script(pool.name, jobdir, max(job.attempt, 1), self.options.cwd),
            timeout=self.options.command_timeout,
        )
        lines_out = submit_answer(result.stdout)
        if result.exit_status in (NO_SCRIPT, NO_SETSID, NO_CWD) or (
            # Its end came back, a failure, without the script's first line: it never ran
            # (an exit 0 without it is no proof: looked for as one that may have started).
            lines_out is None and result.exit_status > 0
        ):  # nothing was forked
            raise SubmissionError(self._submit_failure(pool, job, jobdir, result), retryable=False)
        lines_out = lines_out or []
        pid = lines_out[0].removeprefix("pid ").strip() if lines_out else ""
        parsed = parse_stat(lines_out[1]) if len(lines_out) > 1 else None
        if result.exit_status != 0 or not pid.isdigit() or parsed is None:
            # The script may have got past the fork (the job runs) before it went wrong.
            what = (
                self._submit_failure(pool, job, jobdir, result)
                if result.exit_status != 0
                else f"server {pool.name!r} answered the submission with {result.stdout[:200]!r}"
            )
            raise Unreachable(what, maybe_started=True)
        return f"{pool.name}:{pid}:{parsed[2]}"

    def _prepare_files(self, job: Job, jobdir: str) -> None:
        """The wrapper script written, a stale pid file removed. Blocking: in a worker thread."""
        self.write_script(job, jobdir)
        try:
            os.remove(job.attempt_path(PID))
        except FileNotFoundError:
            pass

    def _submit_failure(self, pool: ServerPool, job: Job, jobdir: str, result: Any) -> str:
        where = f"server {pool.name!r} ({pool.config.address})"
        status = result.exit_status
        if status == NO_SCRIPT:
            return (
                f"{where} cannot read {jobdir}/{attempt_file(SCRIPT, max(job.attempt, 1))}: "
                "the workdir must be shared with the server (same path, or set the server's "
                "remote_workdir) and readable by the remote user"
            )
        if status == NO_SETSID:
            return f"{where} has no `setsid` (util-linux), which runs each job in its own group"
        if status == NO_CWD:
            return f"{where} cannot enter cwd {self.options.cwd!r}"
        # Both streams: a login shell that runs no command (nologin) says why on stdout,
        # after a word on stderr about its home; the cause was left out.
        detail = "; ".join(t.strip() for t in (result.stderr, result.stdout) if t and t.strip())
        if submit_answer(result.stdout) is None:
            return (
                f"{where} never ran the submit script (does the remote user's login shell "
                f"run commands?); it exited {status}: {detail}"
            )
        return f"{where}: the submit command exited {status}: {detail}"

    # -- status --------------------------------------------------------------------------
    def _jobs_by_server(self, jobs: Sequence[Job]) -> dict[str, list[tuple[Job, int, str]]]:
        grouped: dict[str, list[tuple[Job, int, str]]] = {}
        for job in jobs:
            parsed = parse_jid(job.jid)
            server = parsed[0] if parsed else ""
            grouped.setdefault(server, []).append(
                (job, parsed[1] if parsed else 0, parsed[2] if parsed else "")
            )
        return grouped

    async def _stats(
        self, pool: ServerPool, pids: Sequence[int]
    ) -> tuple[dict[int, tuple[str, str]], set[int]]:
        """Each leader's (state, start time), and the leaders whose groups have processes."""
        self.stats.status_calls += 1
        script = status_script(pids)
        result = await self._bridge.call(pool.run, script, timeout=self.options.command_timeout)
        return read_output(
            ["ssh", pool.name, "status"],
            result.stdout,
            lambda out: (parse_stats(out), parse_groups(out)),
        )

    async def _end_orphans(self, jobs: list[Job]) -> set[Job]:
        """Kill what jobs whose wrapper was killed from outside left running in their
        groups (the kill script trusts a group then only by its members'
        ``XQUEUE_JOB_DIR``), and return those it found there: they count as running
        until that is done (failed at once, a retry ran beside what was left of the
        attempt before). What it does not take for the job's (a program that cleared its
        environment) is left, and the job vanishes as before."""
        verdicts = await gather_bounded(jobs, self._kill_group, self.options.submit_concurrency)
        held = set()
        for job, verdict in zip(jobs, verdicts, strict=True):
            if verdict == "gone":
                continue
            held.add(job)  # killed now, or it could not be: looked at again next poll
            log.warning(
                "job %s (%s): its wrapper was killed, and processes of its group ran on: %s",
                job.index,
                job.jid,
                "killed" if verdict == "dead" else f"could not kill them ({verdict})",
            )
        return held

    async def poll_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobState]:
        """One status command per server; an unreadable answer fails the whole query."""
        states: dict[Job, JobState] = {}
        garbled: list[SchedulerOutputError] = []

        async def one(server: str, entries: list[tuple[Job, int, str]]) -> None:
            pool = self._pools.get(server)
            # Each reconcile reads the job's files: the server's batch goes to a thread.
            if pool is None:  # an id we cannot place: reconcile fails it after vanish_grace
                states.update(
                    await anyio.to_thread.run_sync(
                        lambda: {job: self.reconcile(job, False) for job, _, _ in entries}
                    )
                )
                return
            try:
                stats, groups = await self._stats(pool, [pid for _, pid, _ in entries])
            except (Unreachable, Refused) as exc:
                error: BaseException = exc
                states.update(
                    await anyio.to_thread.run_sync(
                        lambda: {
                            job: self._unreachable_state(job, pool, error) for job, _, _ in entries
                        }
                    )
                )
                return
            except SchedulerOutputError as exc:
                garbled.append(exc)
                return
            orphans = [job for job, pid, _ in entries if pid in groups]
            left = await self._end_orphans(orphans) if orphans else set()
            states.update(
                await anyio.to_thread.run_sync(
                    lambda: {
                        job: self.reconcile(job, alive(stats, pid, start) or job in left)
                        for job, pid, start in entries
                    }
                )
            )

        async with anyio.create_task_group() as tg:
            for server, entries in self._jobs_by_server(jobs).items():
                tg.start_soon(one, server, entries)
        if garbled:
            raise garbled[0]
        return states

    def _unreachable_state(self, job: Job, pool: ServerPool, exc: BaseException) -> JobState:
        """Running while the server may come back; lost once it is marked down."""
        if not pool.down:
            return self.reconcile(job, True)
        lost = JobState(
            JobStatus.FAILED,
            None,
            f"lost: server {pool.name!r} ({pool.config.address}) went down while the job "
            f"ran ({pool.last_error}); it may still be running there, so it is not retried",
            retryable=False,
            failure=FailureClass.NODE_FAIL,
            unsettled=True,  # a later run looks for it there before running it again
        )
        return self.reconcile(job, False, lost)

    async def job_is_running(self, job: Job) -> bool:
        parsed = parse_jid(job.jid)
        pool = self._pools.get(parsed[0]) if parsed else None
        if parsed is None or pool is None:
            return False
        try:
            stats, groups = await self._stats(pool, [parsed[1]])
        except (Unreachable, Refused) as exc:
            raise SchedulerError(f"job {job.index}: {exc}") from exc
        # What is left of a job whose wrapper was killed runs all the same: adopted, the
        # next poll kills it, and it is never started a second time beside it.
        return alive(stats, parsed[1], parsed[2]) or parsed[1] in groups

    async def recover_job(self, job: Job) -> bool:
        """Find a job started earlier: by its id, or by its pid file; True if it runs.

        The attempt's pid file names the server and the process (with its start time,
        so a reused pid is not taken for the job). After a submission whose answer was
        lost the file is also read on that server itself. ``job.jid`` is set when the
        job is found, also when it has ended (its return code file tells how).
        """
        if job.jid is None:
            if job.attempt < 1:
                job.attempt = await anyio.to_thread.run_sync(_latest_attempt, job)
            job.jid = await self._by_pid_file(job, self._maybe_on.get(job))
            if job.jid is None:
                return False
        self._maybe_on.pop(job, None)
        try:
            alive = await self.job_is_running(job)
        except SchedulerError as exc:
            log.warning("job %s: cannot check %s: %s", job.index, job.jid, exc)
            alive = True  # not evidence that it ended; polling settles it
        parsed = parse_jid(job.jid)
        if alive and parsed:
            self._server_of[job] = parsed[0]
            self._load[parsed[0]] = self._load.get(parsed[0], 0) + 1
        return alive

    # -- killing -------------------------------------------------------------------------
    async def kill_job(self, job: Job) -> None:
        """TERM the job's process group, KILL it after kill_grace, and check it is gone.

        Nothing of the job's left to signal (the script looks right before it signals),
        and its wrapper wrote its return code: it ended on its own, and says so
        (``JobAlreadyEnded``). A kill that reaches the server a second after it was sent
        found many jobs of a stop ended so, and their successes were recorded killed and
        run again. One gone without a code (killed outside xqueue) is killed, as asked."""
        verdict = await self._kill_group(job)
        if verdict == "gone" and job in await anyio.to_thread.run_sync(recorded_exits, [job]):
            raise JobAlreadyEnded(f"job {job.index} ({job.jid}) had ended: nothing to kill")
        if verdict == "survived":
            server, pgid, _ = parse_jid(job.jid) or ("?", 0, "")
            raise SchedulerError(
                f"job {job.index} ({job.jid}): processes of group {pgid} survived SIGKILL "
                f"on server {server!r}"
            )

    async def _kill_group(self, job: Job) -> str:
        """``kill_job``'s work, and the kill script's verdict: gone (nothing of the job's
        was there), dead or survived."""
        parsed = parse_jid(job.jid)
        pool = self._pools.get(parsed[0]) if parsed else None
        if parsed is None or pool is None:
            return "gone"
        grace = self.options.kill_grace
        try:
            result = await self._bridge.call(
                pool.run,
                kill_script(parsed[1], grace, parsed[2], self._remote(pool.config, job.dir)),
                timeout=self.options.command_timeout + grace,
            )
        except (Unreachable, Refused) as exc:
            raise SchedulerError(f"cannot kill job {job.index} ({job.jid}): {exc}") from exc
        return read_output(["ssh", pool.name, "kill"], result.stdout, parse_kill)

    def forget(self, job: Job) -> None:
        super().forget(job)
        self._maybe_on.pop(job, None)
        server = self._server_of.pop(job, None)
        if server is not None:
            self._load[server] -= 1


def _latest_attempt(job: Job) -> int:
    """The latest attempt that left a pid file in the job's folder (1 if none did)."""
    attempts = (
        [
            int(name.split(".")[1])
            for name in os.listdir(job.dir)
            if name.startswith("job.") and name.endswith(f".{PID}") and name.split(".")[1].isdigit()
        ]
        if os.path.isdir(job.dir)
        else []
    )
    return max(attempts, default=1)
