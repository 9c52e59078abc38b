"""Races between feeding, submitting, killing and stopping, each of which broke the old engine.

The schedulers here run real local processes; what they add is timing: a submission that
takes a while, or one whose outcome is unknown. Each test fails on the bug it names.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import cancellable_run, is_alive, read_text, reap_lingering_shepherds
from xqueue import (
    Interrupted,
    JobFailedError,
    JobState,
    JobStatus,
    SchedulerError,
    SchedulerOptionError,
    SubmissionError,
    SubmissionUnknownError,
    Xqueue,
    hookimpl,
)
from xqueue import engine as engine_module
from xqueue.job import Job
from xqueue.records import WorkdirReader
from xqueue.schedulers._process import SchedulerCommandError
from xqueue.schedulers.local import LocalScheduler
from xqueue.workdir import Workdir

from .test_workdir_safety import submitted

pytestmark = pytest.mark.anyio
S = JobStatus


class SlowSubmit(LocalScheduler):
    """Local processes, but each submission waits on a gate first (an sbatch under load)."""

    name = "slow-submit"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.gate = anyio.Event()
        self.in_flight = anyio.Event()

    async def submit_jobs(self, jobs: Any) -> list[str | BaseException]:
        self.in_flight.set()
        await self.gate.wait()
        return await super().submit_jobs(jobs)


async def test_veto_at_the_end_of_a_batch_does_not_end_the_run_early(
    workdir: Path, tmp_path: Path
) -> None:
    """The last job of a batch vetoed, while the others are still being submitted."""
    ledger = tmp_path / "ledger"

    class VetoLast:
        @hookimpl
        async def on_job_submitting(self, job: Job) -> bool | None:
            await anyio.sleep(0.05)  # the veto check itself takes a moment
            return False if job.index == 4 else None

    q = Xqueue(workdir=workdir, forks=5, plugins=[VetoLast()])
    for i in range(5):
        await q.feed(f"sleep 0.3; echo {i} >> {ledger}")
    await q.run_until_complete()
    assert [j.status for j in q.jobs] == [S.FINISHED] * 4 + [S.SKIPPED]
    assert sorted((await read_text(ledger)).split()) == ["0", "1", "2", "3"]


async def test_kill_during_an_in_flight_submission(workdir: Path, tmp_path: Path) -> None:
    """kill() while the job is being submitted: killed once submitted, nothing orphaned."""
    pidfile = tmp_path / "pid"
    sched = SlowSubmit()
    q = Xqueue(sched, workdir=workdir, error_strategy="ignore")
    job = await q.feed(f"echo $$ > {pidfile}; exec sleep 60")
    other = await q.feed(["true"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.run_until_complete)
        with anyio.fail_after(10):
            await sched.in_flight.wait()
        assert job.status is S.SUBMITTING
        assert await q.kill(job) is True
        sched.gate.set()
    assert job.status is S.KILLED
    assert other.status is S.FINISHED
    # It may have been killed before its shell wrote the pid (or all of it).
    text = (await read_text(pidfile)).strip() if await anyio.Path(pidfile).exists() else ""
    if text:
        assert not await is_alive(int(text))


async def test_feed_racing_stop_feeding_with_an_async_init_hook(workdir: Path) -> None:
    """A job fed while on_job_init awaits, as stop_feeding() comes: it runs, wait() returns."""

    class SlowInit:
        @hookimpl
        async def on_job_init(self, job: Job) -> None:
            await anyio.sleep(0.2)

    async with Xqueue(workdir=workdir, plugins=[SlowInit()]) as q:
        async with anyio.create_task_group() as tg:
            fed: list[Job] = []

            async def feed() -> None:
                fed.append(await q.feed(["true"]))

            tg.start_soon(feed)
            await anyio.sleep(0.05)  # feed() is inside on_job_init now
            await q.stop_feeding()
    with anyio.fail_after(10):
        (job,) = fed
        await job.wait()
    assert job.status is S.FINISHED


class UnknownOnce(LocalScheduler):
    """The first submission starts the job but reports its outcome as unknown (a timeout).

    ``started`` decides whether the process really started before the "timeout".
    """

    name = "unknown-once"

    def __init__(self, started: bool, **options: Any) -> None:
        super().__init__(**options)
        self.started = started
        self.submits = 0

    async def submit_jobs(self, jobs: Any) -> list[str | BaseException]:
        self.submits += 1
        if self.submits == 1:
            if self.started:
                await super().submit_jobs(jobs)
            return [SubmissionUnknownError("sbatch timed out")] * len(jobs)
        return await super().submit_jobs(jobs)


@pytest.mark.parametrize("started", [True, False])
async def test_unknown_submission_is_looked_up_before_resubmitting(
    workdir: Path, tmp_path: Path, started: bool
) -> None:
    ledger = tmp_path / "ledger"
    sched = UnknownOnce(started)
    q = Xqueue(sched, workdir=workdir, error_strategy="retry", num_retries=0)
    job = await q.feed(f"echo ran >> {ledger}; sleep 0.2")
    with anyio.fail_after(20):
        await q.run_until_complete()
    assert job.status is S.FINISHED
    assert (await read_text(ledger)).split() == ["ran"]  # exactly once, whichever way
    # Found by the lookup: no second submission. Not found: resubmitted, not counted
    # against num_retries=0.
    assert sched.submits == (1 if started else 2)


class Down(LocalScheduler):
    """Local processes behind a backend that is down until ``up`` is set: each
    submission is refused as transient (nothing was submitted), as an unreachable
    slurmctld or schedd refuses it."""

    name = "down"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.up = False
        self.refused = 0

    async def submit_jobs(self, jobs: Any) -> list[str | BaseException]:
        if not self.up:
            self.refused += len(jobs)
            return [SubmissionError("cannot reach the controller", transient=True)] * len(jobs)
        return await super().submit_jobs(jobs)


async def test_an_outage_is_reported_once_and_a_stop_in_it_records_the_jobs_killed(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Jobs waiting out an outage: one warning for all of them (each job said so every
    second before), and a run stopped meanwhile journals them killed. Their journal
    ended with the intent of a submission the backend never took, which ``status`` and
    the next run read as a submission a dead run may have made."""
    sched = Down()
    q = Xqueue(sched, workdir=workdir, forks=4)
    jobs = [await q.feed(f"echo {i}") for i in range(4)]
    scope, run = cancellable_run(q)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while sched.refused < 12:  # every job refused three times: a few seconds
                await anyio.sleep(0.05)
            scope.cancel()
    warned = [r for r in caplog.records if "submitting again shortly" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"
    assert [job.status for job in jobs] == [S.KILLED] * 4
    reader = WorkdirReader(workdir)
    records = [
        await anyio.to_thread.run_sync(reader.last_record, os.path.basename(job.dir))
        for job in jobs
    ]
    assert [r and r["status"] for r in records] == ["killed"] * 4


async def test_a_job_killed_before_its_submission_is_recorded_killed(workdir: Path) -> None:
    """Asked for by name (``q.kill``, ``xqueue cancel WD JOB``), a queued job is killed in
    the workdir's record too: ``status`` showed it "not submitted", with no reason."""
    q = Xqueue(workdir=workdir, forks=1)
    async with q:
        first = await q.feed("sleep 0.5")
        queued = await q.feed("echo never")
        assert await q.kill(queued)
        await first.wait()
    assert queued.status is S.KILLED and first.status is S.FINISHED
    reader = WorkdirReader(workdir)
    record = await anyio.to_thread.run_sync(reader.last_record, os.path.basename(queued.dir))
    assert record is not None and record["status"] == "killed"
    assert record["reason"] == "killed before it was submitted"
    assert not await anyio.Path(queued.stdout_path).exists()


class WantsKill(LocalScheduler):
    """Reports a running job as failed-and-to-be-removed, as Slurm does for a dead dependency."""

    name = "wants-kill"

    async def wait_job(self, job: Job) -> JobState:
        if job.index == 0:
            await anyio.sleep(0.2)
            return JobState(S.FAILED, None, "dependency can never be satisfied", kill=True)
        return await super().wait_job(job)


async def test_a_backend_kill_goes_through_the_kill_veto(workdir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    vetoed: list[int] = []

    class Veto:
        @hookimpl
        def on_job_killing(self, job: Job) -> bool:
            vetoed.append(job.index)
            return False

    q = Xqueue(WantsKill(), workdir=workdir, error_strategy="ignore", plugins=[Veto()])
    job = await q.feed(f"echo $$ > {pidfile}; exec sleep 2")
    await q.run_until_complete()
    assert vetoed == [0]
    assert job.status is S.FAILED
    assert "dependency can never be satisfied" in job.reason and "vetoed" in job.reason
    pid = int(await read_text(pidfile))
    assert await is_alive(pid)  # the plugin kept it alive
    os.kill(pid, 9)
    with anyio.fail_after(10):
        while await is_alive(pid):
            await anyio.sleep(0.05)
    await reap_lingering_shepherds()


async def test_a_backend_kill_is_carried_out(workdir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    q = Xqueue(WantsKill(), workdir=workdir, error_strategy="ignore")
    job = await q.feed(f"echo $$ > {pidfile}; exec sleep 30")
    with anyio.fail_after(20):
        await q.run_until_complete()
    assert job.status is S.FAILED
    assert job.reason == "dependency can never be satisfied"
    assert not await is_alive(int(await read_text(pidfile)))


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_kill_grace_must_be_a_finite_number(value: str) -> None:
    with pytest.raises(SchedulerOptionError, match="kill_grace must be a finite number"):
        Xqueue(scheduler_opts={"kill_grace": value})


async def test_a_hung_shutdown_hook_is_reported_and_the_run_ends(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xqueue.engine

    monkeypatch.setattr(xqueue.engine, "SHUTDOWN_HOOK_TIMEOUT", 0.5)

    class Hangs:
        @hookimpl
        async def on_shutdown(self) -> None:
            await anyio.sleep_forever()

    q = Xqueue(workdir=workdir, plugins=[Hangs()])
    await q.feed(["true"])
    from xqueue import PluginError

    with anyio.fail_after(10), pytest.raises(PluginError, match=r"Hangs.*on_shutdown"):
        await q.run_until_complete()
    assert q.jobs[0].status is S.FINISHED


class CannotKill(LocalScheduler):
    """A backend whose kill of job 0 fails (a node that does not answer), as seen from
    xqueue: always, or the first ``failures`` times."""

    name = "cannot-kill"
    failures: float = float("inf")
    delay = 0.0  # seconds each failing kill of job 0 takes
    # The failure said how: a node that did not answer may have carried the kill out; a
    # refused connection proves nothing was sent.
    error: SchedulerError = SchedulerError("the node did not answer")

    async def kill_jobs(self, jobs: Any) -> list[BaseException | None]:
        self.tries = getattr(self, "tries", 0) + any(j.index == 0 for j in jobs)
        if self.delay and any(j.index == 0 for j in jobs) and self.tries <= self.failures:
            await anyio.sleep(self.delay)
        fails = self.tries <= self.failures
        ours = [j for j in jobs if j.index != 0 or not fails]
        errors = dict(zip(ours, await super().kill_jobs(ours))) if ours else {}
        return [self.error if j not in errors else errors[j] for j in jobs]


async def test_a_kill_that_fails_once_while_stopping_is_tried_again(
    workdir: Path, tmp_path: Path
) -> None:
    """A stop's kill that failed (scancel killed by a second SIGTERM to the controller's
    process group as it started) left the job running, said unkillable at once, and the
    run exited: now it is tried again until the stop's deadline."""
    pidfile = tmp_path / "pid"
    backend = CannotKill(kill_grace=0.5)
    backend.failures = 1
    q = Xqueue(backend, workdir=workdir, forks=2)
    job = await q.feed(f"echo $$ > {pidfile}; exec sleep 30")
    await q.feed("sleep 0.5; exit 2")  # halts the run
    with anyio.fail_after(20), pytest.raises(JobFailedError):
        await q.run_until_complete()
    assert backend.tries == 2
    assert job.status is S.KILLED, job.reason
    assert "could not be killed" not in job.reason  # it was, in the end
    assert not await is_alive(int(await read_text(pidfile)))


async def test_a_job_that_ends_after_its_kill_failed_keeps_its_own_end(workdir: Path) -> None:
    """A stop's kill failed (sending nothing), and the job then ended on its own, rc 0,
    before the kill was tried again: it was recorded KILLED, rc 0, and the next run ran
    a success again."""
    backend = CannotKill(kill_grace=0.5)
    backend.failures = 1
    backend.error = SchedulerCommandError(["scancel"], 1, "Unable to contact slurm controller")
    assert not backend.error.ambiguous
    q = Xqueue(backend, workdir=workdir, forks=2)
    job = await q.feed("sleep 1")
    await q.feed("sleep 0.3; exit 2")  # halts the run while job 0 sleeps
    with anyio.fail_after(20), pytest.raises(JobFailedError):
        await q.run_until_complete()
    assert backend.tries == 1  # it had ended before the kill was tried again
    assert (job.status, job.rc) == (S.FINISHED, 0), job.reason


async def test_a_return_code_file_that_cannot_be_read_keeps_no_kill_from_being_sent(
    workdir: Path, tmp_path: Path
) -> None:
    """A kill reads the jobs' return code files first (one already there: the job ended
    on its own). One that could not be read (a folder in its place; on NFS a stale
    handle) raised, and no job of the stop's batch was killed: all ran on past the run."""
    started = tmp_path / "started"
    q = Xqueue(workdir=workdir, forks=3, scheduler_opts={"kill_grace": 1})
    odd = await q.feed(f'mkdir "$XQUEUE_JOB_DIR/job.1.rc"; touch {started}; sleep 300')
    other = await q.feed("sleep 300")
    await q.feed(f"until [ -e {started} ]; do sleep 0.02; done; exit 3")  # halts the run
    with anyio.fail_after(20), pytest.raises(JobFailedError):
        await q.run_until_complete()
    assert [j.status for j in (odd, other)] == [S.KILLED, S.KILLED]
    for job in (odd, other):
        assert not await is_alive(int(str(job.jid).partition("@")[0]))


async def test_a_kill_tried_again_and_cut_short_by_the_deadline_leaves_no_kill_mark(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kill tried again is journalled first (its mark); one still under way at the
    stop's deadline left the mark, and the next run took the job's own end (a success)
    for the kill's and ran it a second time."""
    monkeypatch.setattr(engine_module, "SHUTDOWN_MARGIN", 2.5)
    backend = CannotKill(kill_grace=0.5)
    backend.delay = 1.5  # a slow scancel that fails
    q = Xqueue(backend, workdir=workdir, forks=2)
    stuck = await q.feed(["sleep", "30"])
    await q.feed("sleep 0.5; exit 2")  # halts the run
    try:
        with anyio.fail_after(20), pytest.raises(JobFailedError):
            await q.run_until_complete()
        assert backend.tries >= 2 and stuck.status is S.RUNNING
        assert "could not be killed" in stuck.reason
        record = await anyio.to_thread.run_sync(WorkdirReader(workdir).last_record, stuck.dir)
        assert record is not None and record["status"] == "running" and "kill" not in record
    finally:
        os.killpg(int(str(stuck.jid).partition("@")[0]), signal.SIGKILL)
        await reap_lingering_shepherds()


async def test_a_job_that_cannot_be_killed_is_reported_not_recorded_killed(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "SHUTDOWN_MARGIN", 2.5)  # kills are tried till then
    pidfile = tmp_path / "pid"
    backend = CannotKill(kill_grace=0.5)
    q = Xqueue(backend, workdir=workdir, forks=3)
    stuck = await q.feed(f"echo $$ > {pidfile}; exec sleep 30")
    other = await q.feed(["sleep", "30"])
    await q.feed("sleep 0.5; exit 2")  # halts the run
    with anyio.fail_after(20), pytest.raises(JobFailedError):
        await q.run_until_complete()
    try:
        assert other.status is S.KILLED
        assert stuck.status is S.RUNNING  # not recorded as killed: it is not
        assert "could not be killed" in stuck.reason and "did not answer" in stuck.reason
        assert backend.tries >= 2  # tried again while the stop had time
        record = await anyio.to_thread.run_sync(WorkdirReader(workdir).last_record, stuck.dir)
        # Active, and without the mark of the kill that failed: a later run adopts it.
        assert record is not None and record["status"] == "running" and "kill" not in record
        assert await is_alive(int(await read_text(pidfile)))
    finally:
        os.killpg(int(str(stuck.jid).partition("@")[0]), signal.SIGKILL)
        await reap_lingering_shepherds()


class CannotLookUp(LocalScheduler):
    """A backend that cannot say whether an earlier run's job is there (it raises)."""

    name = "cannot-look-up"

    async def recover_job(self, job: Job) -> bool:
        raise SchedulerError("the node did not answer")


async def test_a_job_that_cannot_be_looked_up_is_left_as_recorded_in_time(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Its lookup was tried every second for ever, a warning each time, and the run never
    # ended. Not run again either: whether it runs cannot be known.
    def left_by_a_dead_run() -> None:
        wd = Workdir(workdir)
        submitted(wd, 0)
        wd.unlock()

    await anyio.to_thread.run_sync(left_by_a_dead_run)
    monkeypatch.setattr(engine_module, "OUTAGE_TOLERANCE", 1.0)
    q = Xqueue(CannotLookUp(), workdir=workdir, handle_signals=False, error_strategy="ignore")
    job = await q.feed("echo 0")
    with anyio.fail_after(20), caplog.at_level(logging.WARNING, "xqueue"):
        await q.run_until_complete()
    assert job.status is S.FAILED and "could not be looked up for 1 s" in job.reason
    assert caplog.text.count("looking it up failed") == 1
    assert not await anyio.Path(job.attempt_path("stdout")).exists()  # never run
    record = await anyio.to_thread.run_sync(WorkdirReader(workdir).last_record, job.dir)
    assert record is not None and record["status"] == "submitted"  # a later run looks again


async def test_on_shutdown_receives_the_signal_and_interrupted_carries_it(
    workdir: Path, tmp_path: Path
) -> None:
    seen: list[tuple[str, str | None]] = []

    class Record:
        @hookimpl
        def on_shutdown(self, reason: str, signal: str | None) -> None:
            seen.append((reason, signal))

    q = Xqueue(workdir=workdir, plugins=[Record()])
    job = await q.feed(["sleep", "30"])

    async def send() -> None:
        while job.status is not S.RUNNING:
            await anyio.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            with pytest.raises(Interrupted) as caught:
                await q.run_until_complete()
    assert caught.value.signal == signal.SIGTERM
    assert seen == [("signal", "SIGTERM")]
    assert job.status is S.KILLED


# -- time limits meeting checks and kills (found in review) ---------------------------------


async def test_a_job_that_exited_in_time_is_not_timed_out_while_its_check_runs(
    workdir: Path,
) -> None:
    class SlowCheck:
        @hookimpl
        async def on_job_checking(self, job: Job) -> None:
            await anyio.sleep(1.5)  # past the job's limit, long after it exited

    q = Xqueue(workdir=workdir, plugins=[SlowCheck()], error_strategy="retry", num_retries=2)
    job = await q.feed(["sleep", "0.2"], resources={"walltime": 1})
    with anyio.fail_after(20):
        await q.run_until_complete()
    assert job.status is S.FINISHED and job.attempt == 1 and job.failure is None


async def test_a_kill_of_a_job_being_checked_is_refused_before_its_veto(workdir: Path) -> None:
    """Asked from a hook, kill() answered True for a job whose check ran (on_job_killing
    fired too) and the job then finished: a job being checked is not killed, False."""
    answers: list[bool] = []
    killing: list[int] = []

    class Check:
        @hookimpl
        async def on_job_checking(self, xqueue: Xqueue, job: Job) -> None:
            answers.append(await xqueue.kill(job))

        @hookimpl
        def on_job_killing(self, job: Job) -> None:
            killing.append(job.index)

    q = Xqueue(workdir=workdir, plugins=[Check()])
    job = await q.feed(["true"])
    with anyio.fail_after(20):
        await q.run_until_complete()
    assert (answers, killing) == ([False], [])
    assert job.status is S.FINISHED and job.rc == 0


async def test_a_kill_asked_while_a_time_limit_kill_runs_ends_the_job_killed(
    workdir: Path,
) -> None:
    """The user's kill wins over the time limit's retry: the job is not run again, and
    kill() answers even though the job's end was the run's last event."""
    retried: list[int] = []

    class Watch:
        @hookimpl
        def on_job_retrying(self, job: Job) -> None:
            retried.append(job.attempt)

    q = Xqueue(
        workdir=workdir,
        plugins=[Watch()],
        error_strategy="retry",
        num_retries=2,
        scheduler_opts={"kill_grace": 2},
    )
    job = await q.feed(["sh", "-c", "trap '' TERM; sleep 30"], resources={"walltime": 1})
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(q.run_until_complete)
            while job.status is not S.RUNNING:
                await anyio.sleep(0.02)
            await anyio.sleep(1.5)  # the limit's kill is waiting out kill_grace now
            assert await q.kill(job) is True
    assert job.status is S.KILLED and job.attempt == 1 and retried == []


def test_a_grown_request_with_slots_survives_its_record() -> None:
    import json

    from xqueue.resources import Resources

    grown = Resources(walltime_s=2, slots=("machine",))
    assert Resources.from_record(json.loads(json.dumps(grown.to_dict()))) == grown


async def test_a_killed_job_says_why_it_was_killed(workdir: Path) -> None:
    """The reason of a kill is why it was asked for, not the backend's bare "killed":
    by name, or by the run's stop (here a failure under halt)."""
    q = Xqueue(workdir=workdir, forks=3)
    named = await q.feed("sleep 30")
    stopped = await q.feed("sleep 30")
    failing = await q.feed("sleep 0.5; exit 3")
    errors: list[BaseException] = []

    async def run() -> None:
        try:
            await q.run_until_complete()
        except JobFailedError as exc:
            errors.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while named.status is not S.RUNNING:
                await anyio.sleep(0.02)
            assert await q.kill(named)
    assert len(errors) == 1 and failing.status is S.FAILED
    assert (named.status, named.reason) == (S.KILLED, "killed on request")
    assert (stopped.status, stopped.reason) == (S.KILLED, "killed: the run stopped (halted)")
    reader = WorkdirReader(workdir)
    record = await anyio.to_thread.run_sync(reader.last_record, os.path.basename(named.dir))
    assert record is not None and record["reason"] == "killed on request"


async def test_a_second_kill_while_the_first_is_under_way_says_so(workdir: Path) -> None:
    """``xqueue cancel`` prints why a job was not killed: a second kill of a job that
    holds off the first one's SIGTERM is "under way", not ended nor vetoed."""
    go = workdir.parent / "go"
    held = f"trap '' TERM; while [ ! -e {go} ]; do sleep 0.02; done"
    async with Xqueue(workdir=workdir, scheduler_opts={"kill_grace": 30}) as q:
        job = await q.feed(["sh", "-c", held])
        with anyio.fail_after(10):
            while job.status is not JobStatus.RUNNING:
                await anyio.sleep(0.02)
        async with anyio.create_task_group() as tg:
            tg.start_soon(q.kill, job)
            with anyio.fail_after(10):
                while not job.kill_requested:
                    await anyio.sleep(0.02)
            assert await q._engine.kill_outcome(job) is engine_module.KillOutcome.UNDER_WAY
            await anyio.Path(go).touch()  # it ends as the first kill's grace runs
        await q.stop_feeding()
    assert job.status is JobStatus.KILLED
    assert await q._engine.kill_outcome(job) is engine_module.KillOutcome.ENDED
