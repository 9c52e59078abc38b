"""The engine: a bounded pool that feeds jobs to a scheduler and applies what comes back.

Three kinds of task run in one anyio task group:

- the submitter takes queued jobs while fewer than ``forks`` are active and hands them
  to ``scheduler.submit_jobs`` in batches;
- completion: for an awaiting scheduler one small task per active job awaits
  ``scheduler.wait_job``; for a polled one a single poller calls ``scheduler.poll_jobs``
  once per tick with every active job;
- an optional signal watcher turns SIGTERM/SIGHUP into an orderly stop.

Every state change goes through ``_move`` (state table, counters) and the few methods
that call it, so the cost of a tick depends on the active jobs only: finished jobs are
never scanned. Tasks never raise into the task group: an error is stored, the run is
stopped, running jobs are killed, and the error is raised on its own, not inside an
exception group.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from .errors import Interrupted, JobFailedError, PluginError, SchedulerError
from .hooks import Hooks
from .job import Job
from .scheduler import JobState, Scheduler
from .states import JobStatus
from .workdir import Workdir, read_rc

if TYPE_CHECKING:
    from .queue import Xqueue

log = logging.getLogger("xqueue")

S = JobStatus
# A scheduler whose status query fails this many ticks in a row stops the run.
MAX_POLL_FAILURES = 30
# The most jobs handed to one submit_jobs call (a backend splits further as it needs).
MAX_BATCH = 10_000
# How long a stopping run waits for its jobs to be killed.
SHUTDOWN_TIMEOUT = 60.0


class Engine:
    def __init__(
        self,
        queue: Xqueue,
        scheduler: Scheduler,
        hooks: Hooks,
        workdir: Workdir,
        *,
        forks: int,
        error_strategy: str,
        num_retries: int,
        handle_signals: bool,
    ) -> None:
        self.queue = queue
        self.scheduler = scheduler
        self.hooks = hooks
        self.workdir = workdir
        self.forks = forks
        self.error_strategy = error_strategy
        self.num_retries = num_retries
        self.handle_signals = handle_signals

        self.jobs: list[Job] = []
        self.counts: Counter[JobStatus] = Counter()
        self.completed: list[Job] = []  # final jobs, in the order they ended
        self._pending: deque[Job] = deque()
        self._to_adopt: list[Job] = []
        self._active: set[Job] = set()
        self._submitting = 0
        self.feeding = False
        self.feed_closed = False  # stop_feeding() came, possibly before run() started
        self.running = False
        self._tg: TaskGroup | None = None
        self._error: BaseException | None = None
        self._halting = False  # no more submissions: the run is about to stop
        self._done: anyio.Event | None = None
        self._submit_wake: anyio.Event | None = None
        self._poll_wake: anyio.Event | None = None
        self._progress: anyio.Event | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    # -- bookkeeping -----------------------------------------------------------------
    def _move(self, job: Job, new: JobStatus) -> None:
        old = job.transition(new)
        self.counts[old] -= 1
        self.counts[new] += 1

    def _kw(self, job: Job) -> dict[str, Any]:
        return {"xqueue": self.queue, "scheduler": self.scheduler, "job": job}

    def _wake_submitter(self) -> None:
        if self._submit_wake is not None:
            self._submit_wake.set()

    def _notify_progress(self) -> None:
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    def _all_done(self) -> bool:
        return (
            not self.feeding
            and not self._pending
            and not self._active
            and not self._to_adopt
            and self._submitting == 0
        )

    def _check_done(self) -> None:
        if self._done is not None and self._all_done():
            self._done.set()

    def _stop(self, error: BaseException) -> None:
        """Record the first error and end the run; later errors are logged only."""
        self._halting = True
        if self._error is None:
            self._error = error
        else:
            log.error("further error while stopping: %r", error)
        if self._done is not None:
            self._done.set()

    # -- feeding -----------------------------------------------------------------------
    async def add(self, job: Job) -> None:
        record = self.workdir.prepare(job)
        self.jobs.append(job)
        self.counts[S.INIT] += 1
        await self.hooks.call("on_job_init", **self._kw(job))
        if record is not None and self._resume(job, record):
            if job.status is S.FINISHED:
                await self.hooks.call("on_job_succeeded", **self._kw(job))
            return
        await self._enqueue(job)

    def _resume(self, job: Job, record: dict[str, Any]) -> bool:
        """Use an earlier run's record: skip a success, adopt a job that may still run."""
        status, rc, attempt = record.get("status"), record.get("rc"), record.get("attempt")
        if status == S.FINISHED.value and rc == 0:
            job.rc, job.attempt = 0, int(attempt or 1)
            job.reason = "succeeded in an earlier run"
            self._move(job, S.FINISHED)
            self.completed.append(job)
            return True
        if status in (S.SUBMITTED.value, S.RUNNING.value) and record.get("jid"):
            job.jid, job.attempt = str(record["jid"]), int(attempt or 1)
        elif record:
            return False  # it ended (failed, killed): run it again
        # else: no record at all, so the earlier run may have died between starting the
        # job and recording its id; the scheduler gets a chance to find it.
        self._to_adopt.append(job)
        self._wake_submitter()
        return True

    async def _enqueue(self, job: Job) -> None:
        self._move(job, S.QUEUED)
        await self.hooks.call("on_job_queued", **self._kw(job))
        self._pending.append(job)
        self._wake_submitter()

    # -- running -----------------------------------------------------------------------
    async def run(self, keep_feeding: bool) -> None:
        if self.running:
            from .errors import QueueStateError

            raise QueueStateError("the queue is already running")
        self.workdir.lock()
        self.running, self._error = True, None
        self.feeding = keep_feeding and not self.feed_closed
        self._halting = False
        self._done = anyio.Event()
        self.started_at, self.stopped_at = time.monotonic(), None
        reason = "error"
        try:
            self.scheduler.forks = self.forks
            await self.scheduler.open(self.workdir)
            await self.hooks.call("on_init", xqueue=self.queue, scheduler=self.scheduler)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._guard, self._submitter)
                if not self.scheduler.awaits_completion:
                    tg.start_soon(self._guard, self._poller)
                if self.handle_signals and threading.current_thread() is threading.main_thread():
                    tg.start_soon(self._guard, self._watch_signals)
                self._check_done()
                await self._done.wait()
                tg.cancel_scope.cancel()
            if self._error is None:
                reason = "complete"
            elif isinstance(self._error, JobFailedError):
                reason = "halted"
        except BaseException:
            reason = "cancelled"
            raise
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._shutdown(reason)
                finally:
                    self.workdir.unlock()
        if self._error is not None:
            raise self._error

    async def _guard(self, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except Exception as exc:
            self._stop(exc)

    async def _shutdown(self, reason: str) -> None:
        """Leave no job behind: cancel queued ones, kill running ones, tell the plugins."""
        self._tg = None
        try:
            if self._pending or self._to_adopt or self._active:
                await self._kill_all(f"the run stopped ({reason})")
            await self.hooks.call(
                "on_shutdown", xqueue=self.queue, scheduler=self.scheduler, reason=reason
            )
        except PluginError as exc:
            self._stop(exc)
        finally:
            # Every run opens the backend and closes it again, so code that never calls
            # aclose() (the xqute style) leaves no connection or thread behind.
            with anyio.move_on_after(SHUTDOWN_TIMEOUT):
                try:
                    await self.scheduler.aclose()
                except Exception as exc:  # closing must not hide the run's own outcome
                    log.warning("closing scheduler %s failed: %r", self.scheduler.name, exc)
            self.running = False
            self.feeding = self.feed_closed = False
            self.stopped_at = time.monotonic()
            self._notify_progress()

    async def _kill_all(self, why: str) -> None:
        for job in [*self._pending, *self._to_adopt]:
            if not job.status.is_final:
                job._kill_requested = True
                job.reason = f"cancelled before it was submitted: {why}"
                await self._finalize(job, S.KILLED, record=False)
        self._pending.clear()
        self._to_adopt.clear()
        to_kill = []
        for job in list(self._active):
            vetoer = await self.hooks.vetoed_by("on_job_killing", **self._kw(job))
            if vetoer:
                job.reason = f"left running: plugin {vetoer!r} vetoed the kill ({why})"
                log.warning("job %s %s", job.index, job.reason)
                self._active.discard(job)
                continue
            job._kill_requested = True
            to_kill.append(job)
        if to_kill:
            with anyio.move_on_after(SHUTDOWN_TIMEOUT):
                await self.scheduler.kill_jobs(to_kill)
        for job in to_kill:
            self._active.discard(job)
            self.scheduler.forget(job)
            job.reason = f"killed: {why}"
            await self._finalize(job, S.KILLED)

    async def _watch_signals(self) -> None:
        """Turn SIGTERM/SIGHUP into an orderly stop; restore the old handlers afterwards."""
        sigs = (signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.getsignal(sig) for sig in sigs}
        try:
            with anyio.open_signal_receiver(*sigs) as received:
                async for sig in received:
                    self._stop(Interrupted(f"run stopped by {sig.name}; running jobs were killed"))
                    return
        finally:
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)

    # -- submitting --------------------------------------------------------------------
    def _free_slots(self) -> int:
        free = self.forks - len(self._active) - self._submitting
        if self.scheduler.enforces_forks and not self._active and not self._submitting:
            # Nothing of this backend runs: it may take more than forks at once and
            # throttle them itself (see Scheduler.enforces_forks).
            return max(free, self.scheduler.max_batch)
        return free

    async def _submitter(self) -> None:
        while True:
            if self._to_adopt:
                await self._adopt()
            while self._pending and self._free_slots() > 0 and not self._halting:
                await self._submit_batch()
            self._check_done()
            self._submit_wake = anyio.Event()
            await self._submit_wake.wait()
            self._submit_wake = None

    async def _submit_batch(self) -> None:
        batch: list[Job] = []
        limit = min(self._free_slots(), MAX_BATCH)
        while self._pending and len(batch) < limit:
            job = self._pending.popleft()
            if job.status is not S.QUEUED:  # killed while it waited
                continue
            vetoer = await self.hooks.vetoed_by("on_job_submitting", **self._kw(job))
            if vetoer:
                job.reason = f"submission vetoed by plugin {vetoer!r}"
                await self._finalize(job, S.SKIPPED)
                continue
            job.attempt += 1
            batch.append(job)
        if not batch:
            return
        self._submitting += len(batch)
        try:
            results = await self.scheduler.submit_jobs(batch)
        finally:
            self._submitting -= len(batch)
        for job, result in zip(batch, results):
            if isinstance(result, BaseException):
                await self._submission_failed(job, result)
            else:
                await self._submitted(job, result)

    async def _submitted(self, job: Job, jid: str) -> None:
        job.jid = jid
        self._move(job, S.SUBMITTED)
        self._active.add(job)
        self.workdir.record(job)
        await self.hooks.call("on_job_submitted", **self._kw(job))
        await self._track(job)

    async def _track(self, job: Job) -> None:
        """Start following an active job's progress."""
        if self.scheduler.running_on_submit:
            await self._started(job)
        if self.scheduler.awaits_completion:
            assert self._tg is not None
            self._tg.start_soon(self._guard, lambda: self._await_job(job))
        elif self._poll_wake is not None:
            self._poll_wake.set()

    async def _submission_failed(self, job: Job, exc: BaseException) -> None:
        job.jid, job.rc = None, None
        job.reason = f"submission failed: {exc}"
        try:
            with open(job.stderr_path, "a", encoding="utf-8") as fh:
                fh.write(f"xqueue: {job.reason}\n")
        except OSError:
            pass
        log.warning("job %s (%s): %s", job.index, job.name, job.reason)
        await self._end_attempt(job, S.FAILED, retryable=getattr(exc, "retryable", True))

    async def _adopt(self) -> None:
        """Re-attach jobs an earlier run left running (or that ended while nobody watched)."""
        jobs, self._to_adopt = self._to_adopt, []
        for job in jobs:
            alive = await self.scheduler.recover_job(job)
            if alive or (job.jid and read_rc(job) is not None):
                job.attempt = max(job.attempt, 1)
                log.info("job %s (%s): re-adopted %s", job.index, job.name, job.jid)
                self._move(job, S.SUBMITTED)
                self._active.add(job)
                await self._track(job)
            else:
                job.jid = None
                await self._enqueue(job)

    # -- completion --------------------------------------------------------------------
    async def _await_job(self, job: Job) -> None:
        try:
            state = await self.scheduler.wait_job(job)
        except SchedulerError as exc:  # this job is lost to us; the others go on
            state = JobState(S.FAILED, None, f"lost: {exc}")
        await self.apply(job, state)

    async def _poller(self) -> None:
        failures = 0
        interval = self.scheduler.options.poll_interval
        while True:
            if not self._active:
                self._poll_wake = anyio.Event()
                await self._poll_wake.wait()
                self._poll_wake = None
            await anyio.sleep(interval)
            jobs = list(self._active)
            if not jobs:
                continue
            self.scheduler.stats.ticks += 1
            try:
                states = await self.scheduler.poll_jobs(jobs)
            except SchedulerError as exc:
                failures += 1
                log.warning("status query failed (%d in a row): %s", failures, exc)
                if failures >= MAX_POLL_FAILURES:
                    raise SchedulerError(
                        f"{self.scheduler.name}: status queries failed {failures} times in a "
                        f"row; last error: {exc}"
                    ) from exc
                continue
            failures = 0
            for job, state in states.items():
                await self.apply(job, state)

    async def _started(self, job: Job) -> None:
        self._move(job, S.RUNNING)
        await self.hooks.call("on_job_started", **self._kw(job))

    async def apply(self, job: Job, state: JobState) -> None:
        """Apply what the scheduler reports about an active job."""
        if job not in self._active:
            return
        if state.status is S.SUBMITTED:
            return
        if job.status is S.SUBMITTED:
            await self._started(job)  # on_job_started always precedes the final hook
        if state.status is S.RUNNING:
            return
        self._active.discard(job)
        self.scheduler.forget(job)
        job.rc, job.reason = state.rc, state.reason
        if job.kill_requested:
            job.reason = job.reason or "killed"
            await self._finalize(job, S.KILLED)
            return
        if state.status is S.KILLED:  # killed outside xqueue
            job.reason = job.reason or "killed outside xqueue"
        new = S.FINISHED if state.status is S.FINISHED else S.FAILED
        await self._end_attempt(job, new, retryable=state.retryable)

    async def _end_attempt(self, job: Job, status: JobStatus, *, retryable: bool) -> None:
        if (
            status is S.FAILED
            and self.error_strategy == "retry"
            and retryable
            and job.attempt <= self.num_retries
        ):
            self._move(job, S.RETRYING)
            await self.hooks.call("on_job_retrying", **self._kw(job))
            job.jid, job.rc, job.reason = None, None, ""
            await self._enqueue(job)
            return
        halt = status is S.FAILED and self.error_strategy == "halt"
        if halt:
            self._halting = True  # before the hooks run, so nothing else is submitted
        await self._finalize(job, status)
        if halt:
            self._stop(JobFailedError(job))

    async def _finalize(self, job: Job, status: JobStatus, *, record: bool = True) -> None:
        self._move(job, status)
        if record:
            self.workdir.record(job)
        self.completed.append(job)
        self._notify_progress()
        hook = _FINAL_HOOKS.get(status)
        if hook:
            await self.hooks.call(hook, **self._kw(job))
        self._wake_submitter()
        self._check_done()

    # -- control -------------------------------------------------------------------------
    async def kill(self, job: Job) -> bool:
        """Kill one job; False if it already ended or a plugin vetoed the kill."""
        if job.status.is_final or job.kill_requested:
            return False
        vetoer = await self.hooks.vetoed_by("on_job_killing", **self._kw(job))
        if vetoer:
            log.info("job %s: kill vetoed by plugin %r", job.index, vetoer)
            return False
        job._kill_requested = True
        if job in self._active:
            (error,) = await self.scheduler.kill_jobs([job])
            if error is not None:
                job._kill_requested = False
                raise SchedulerError(f"could not kill job {job.index}: {error}") from error
            return True
        if job in self._to_adopt:
            self._to_adopt.remove(job)
        job.reason = "killed before it was submitted"
        if job.status is not S.INIT:
            await self._finalize(job, S.KILLED, record=False)
        else:
            self._move(job, S.KILLED)
        return True

    async def as_completed(self) -> AsyncIterator[Job]:
        seen = 0
        while True:
            while seen < len(self.completed):
                yield self.completed[seen]
                seen += 1
            if self.stopped_at is not None and not self.running:
                return
            if not self.feeding and not self.running and len(self.completed) == len(self.jobs):
                return
            if self._progress is None:
                self._progress = anyio.Event()
            await self._progress.wait()

    async def wait_stopped(self) -> None:
        while self.running:
            if self._progress is None:
                self._progress = anyio.Event()
            await self._progress.wait()

    def close_feeding(self) -> None:
        """No more jobs: the run ends once every job fed has ended."""
        self.feeding, self.feed_closed = False, True
        self._wake_submitter()
        self._check_done()

    def active_jobs(self) -> Sequence[Job]:
        return list(self._active)


_FINAL_HOOKS = {
    S.FINISHED: "on_job_succeeded",
    S.FAILED: "on_job_failed",
    S.KILLED: "on_job_killed",
}
