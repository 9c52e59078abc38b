"""Engine behaviour through the public API, with real processes."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import DetachedScheduler, EndsAtOnce, is_alive, read_text, wait_running
from xqueue import (
    ConfigError,
    Job,
    JobFailedError,
    JobState,
    JobStatus,
    QueueStateError,
    WorkdirError,
    Xqueue,
)

pytestmark = pytest.mark.anyio


async def test_seed_document_local_example(workdir: Path) -> None:
    # xqute's README example, with only the import and class name changed.
    xqute = Xqueue(forks=3, workdir=workdir)
    for _ in range(10):
        await xqute.feed(["sleep", "0.1"])
    await xqute.run_until_complete()
    assert [j.status for j in xqute.jobs] == [JobStatus.FINISHED] * 10


async def test_halt_raises_naming_the_job_and_kills_the_others(workdir: Path) -> None:
    q = Xqueue(forks=2, workdir=workdir, error_strategy="halt")
    slow = await q.feed(["sleep", "60"])
    bad = await q.feed("sleep 0.2; exit 4", name="the bad one")
    later = await q.feed(["true"])
    with anyio.fail_after(20), pytest.raises(JobFailedError) as info:
        await q.run_until_complete()
    assert info.value.job is bad
    assert "job 1 (the bad one) failed with return code 4" in str(info.value)
    assert bad.stderr_path in str(info.value)
    assert slow.status is JobStatus.KILLED
    assert later.status is JobStatus.KILLED
    assert "cancelled before it was submitted" in later.reason


class FailsAtOnce(EndsAtOnce):
    ending = JobState(JobStatus.FAILED, 3)


async def test_halt_with_two_jobs_failing_in_one_tick_says_the_second_as_a_failed_job(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The second failure came in as the halt began, and was logged as a "further error
    # while stopping" with the exception's repr, before the line that said why the run
    # halted: it is one more failed job, listed as the others are.
    q = Xqueue(FailsAtOnce(), forks=2, workdir=workdir, error_strategy="halt")
    first = await q.feed(["true"], name="first")
    second = await q.feed(["true"], name="second")
    with anyio.fail_after(20), pytest.raises(JobFailedError) as info:
        await q.run_until_complete()
    assert info.value.job in (first, second)  # which ends first is the backend's order
    assert [first.rc, second.rc] == [3, 3]
    assert [first.status, second.status] == [JobStatus.FAILED] * 2
    assert "further error" not in caplog.text
    assert "JobFailedError(" not in caplog.text


async def test_retry_until_success_keeps_every_attempt(workdir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    cmd = f"echo x >> {counter}; n=$(wc -l < {counter}); echo attempt $n; [ $n -ge 3 ]"
    q = Xqueue(workdir=workdir, error_strategy="retry", num_retries=3)
    job = await q.feed(cmd)
    await q.run_until_complete()
    assert job.status is JobStatus.FINISHED
    assert job.attempt == 3
    assert await read_text(job.stdout_path) == "attempt 3\n"
    for n in (1, 2):
        assert await read_text(job.attempt_path("stdout", n)) == f"attempt {n}\n"


async def test_retry_exhausted_fails_and_run_goes_on(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, error_strategy="retry", num_retries=2)
    bad = await q.feed("exit 7")
    good = await q.feed(["true"])
    await q.run_until_complete()
    assert bad.status is JobStatus.FAILED and bad.rc == 7 and bad.attempt == 3
    assert good.status is JobStatus.FINISHED


async def test_ignore_records_failures(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, error_strategy="ignore", forks=4)
    jobs = [await q.feed(f"exit {i % 2}") for i in range(6)]
    await q.run_until_complete()
    assert [j.rc for j in jobs] == [0, 1, 0, 1, 0, 1]
    assert q.statistics().counts == {"finished": 3, "failed": 3}


async def test_daemon_mode_collects_while_feeding(workdir: Path) -> None:
    async with Xqueue(forks=1, workdir=workdir) as q:
        for i in range(3):
            job = await q.feed(["sh", "-c", f"echo {i}"])
            with anyio.fail_after(10):
                await job.wait()  # finished jobs are collected while feeding goes on
            assert job.status is JobStatus.FINISHED
        assert q.is_feeding()
    assert not q.is_feeding()
    assert q.statistics().counts == {"finished": 3}


async def test_daemon_mode_feeding_from_other_tasks(workdir: Path) -> None:
    q = Xqueue(forks=4, workdir=workdir)

    async def producer(start: int) -> None:
        for i in range(start, start + 5):
            await q.feed(["sh", "-c", f"echo {i}"])
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(q.run, keep_feeding=True))
        async with anyio.create_task_group() as producers:
            producers.start_soon(producer, 0)
            producers.start_soon(producer, 100)
        await q.stop_feeding()
    assert q.statistics().counts == {"finished": 10}


async def test_xqute_style_keep_feeding(workdir: Path, anyio_backend: str) -> None:
    xqute = Xqueue(forks=3, workdir=workdir)
    if anyio_backend == "trio":
        with pytest.raises(QueueStateError, match="async with"):
            await xqute.run_until_complete(keep_feeding=True)
        return
    await xqute.run_until_complete(keep_feeding=True)
    assert xqute.is_feeding()
    for _ in range(5):
        await xqute.feed(["sleep", "0.05"])
    await xqute.stop_feeding()
    assert xqute.statistics().counts == {"finished": 5}


async def test_cancelling_stop_feeding_of_the_xqute_style_run_kills_its_jobs(
    workdir: Path, tmp_path: Path, anyio_backend: str
) -> None:
    """A cancel scope around ``stop_feeding()``: the run was cancelled by each of the
    cancellations anyio delivers again and again, one of them in its shielded stop, and
    left its running jobs running (recorded as running for good) when the caller left."""
    if anyio_backend == "trio":
        pytest.skip("run_until_complete(keep_feeding=True) is asyncio's only")
    q = Xqueue(forks=2, workdir=workdir)
    await q.run_until_complete(keep_feeding=True)
    jobs = [await q.feed(f"echo $$ > {tmp_path}/{i}; exec sleep 60") for i in range(3)]
    for job in jobs[:2]:
        await wait_running(job)
    with anyio.fail_after(30):
        with anyio.move_on_after(0.3):
            await q.stop_feeding()
        assert [job.status for job in jobs] == [JobStatus.KILLED] * 3
    for i in range(2):
        assert not await is_alive(int(await read_text(tmp_path / str(i))))
    await q.aclose()


async def test_a_job_fed_after_the_xqute_style_run_halted_is_refused(
    workdir: Path, anyio_backend: str
) -> None:
    """The run stopped on a failure before stop_feeding(): a job fed then was taken, and
    never ran (its ``wait()`` hung), as in an ``async with`` block before its fix. Once
    stop_feeding() has said how the run ended, the queue takes jobs for a new run."""
    if anyio_backend == "trio":
        pytest.skip("run_until_complete(keep_feeding=True) is asyncio's only")
    q = Xqueue(workdir=workdir)  # error_strategy="halt"
    await q.run_until_complete(keep_feeding=True)
    await q.feed("exit 1")
    with anyio.fail_after(20):
        await q._engine.wait_stopped()  # stopped, not stopping: that state refused a job
    with pytest.raises(QueueStateError, match="stopped before stop_feeding"):
        await q.feed(["echo", "late"])
    assert len(q.jobs) == 1
    with pytest.raises(JobFailedError):
        await q.stop_feeding()
    again = await q.feed(["true"])
    with anyio.fail_after(20):
        await q.run_until_complete()
    assert again.status is JobStatus.FINISHED


async def test_as_completed_yields_in_completion_order(workdir: Path) -> None:
    # Each job ends once the run has taken the next one's end (its event line), not
    # once the shepherd recorded that exit: two ends close together were woken in one
    # batch of a loaded loop, in trio's random order.
    q = Xqueue(forks=3, workdir=workdir)
    events = workdir / "events.jsonl"
    for after in ("1", "2"):
        seen = f'"event": "job_succeeded", "job": {after},'
        await q.feed(f"until grep -qsF '{seen}' {events}; do sleep 0.02; done")
    await q.feed(["true"])
    order = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.run_until_complete)
        order += [job.index async for job in q.as_completed()]
    assert order == [2, 1, 0]


async def test_cancelling_the_caller_kills_jobs_and_raises(workdir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    q = Xqueue(forks=2, workdir=workdir)
    job = await q.feed(f"echo $$ > {pidfile}; exec sleep 60")
    queued = await q.feed(["sleep", "60"])
    waiting = await q.feed(["sleep", "60"])  # forks=2: never submitted

    async def time_out_once_both_run(scope: anyio.CancelScope) -> None:
        # Not a fixed 1 s: on a loaded machine the jobs had not started by then.
        running = (job, queued)
        while not all(j.status is JobStatus.RUNNING for j in running):
            await anyio.sleep(0.02)
        while not (await anyio.Path(pidfile).exists() and (await read_text(pidfile)).strip()):
            await anyio.sleep(0.02)
        scope.deadline = anyio.current_time()  # the caller's timeout, now

    with pytest.raises(TimeoutError):
        with anyio.fail_after(60) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(time_out_once_both_run, scope)
                await q.run_until_complete()
    assert job.status is JobStatus.KILLED
    assert queued.status is JobStatus.KILLED
    # Not "the run stopped (complete)", as they said when it was a cancellation.
    assert job.reason == "killed: the run stopped (cancelled)"
    assert waiting.reason == "cancelled before it was submitted: the run stopped (cancelled)"
    # Gone, or a zombie: the job's process is the wrapper's child, reaped by init.
    assert not await is_alive(int(await read_text(pidfile)))


async def test_a_stopped_run_makes_no_folder_for_the_jobs_it_never_submitted(
    workdir: Path,
) -> None:
    """The run's end made the folder of every job fed and never submitted, stop or not:
    a Ctrl-C a moment into a run of 100,000 jobs waited half a minute for 100,000
    folders. A stop now leaves them unmade (a later run makes them as it runs them)."""
    n = 50_000
    q = Xqueue(forks=1, workdir=workdir)
    jobs = [await q.feed(["true"]) for _ in range(n)]
    with anyio.fail_after(60):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(q.run_until_complete)
                while jobs[0].status is not JobStatus.FINISHED:
                    await anyio.sleep(0.01)
                scope.cancel()
    folders = [name async for name in anyio.Path(workdir).iterdir() if name.name[0].isdigit()]
    assert 0 < len(folders) < n // 2
    assert q.statistics().counts.get("finished", 0) < n


async def test_error_in_async_with_body_kills_jobs(workdir: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        async with Xqueue(workdir=workdir) as q:
            job = await q.feed(["sleep", "60"])
            await anyio.sleep(0.2)
            1 / 0  # noqa: B018
    assert job.status is JobStatus.KILLED


async def test_halt_inside_async_with_raises_job_failed(workdir: Path) -> None:
    with anyio.fail_after(10), pytest.raises(JobFailedError):
        async with Xqueue(workdir=workdir) as q:
            await q.feed("exit 1")
            await anyio.sleep(30)  # cancelled by the halt


async def test_feed_after_close_is_refused(workdir: Path) -> None:
    async with Xqueue(workdir=workdir) as q:
        await q.feed(["true"])
    with pytest.raises(QueueStateError, match="closed"):
        await q.feed(["true"])


async def test_feed_after_stop_feeding_in_async_with_is_refused(workdir: Path) -> None:
    """Accepted once the block's run had ended, such a job waited for a run that could
    never come (its ``wait()`` hung); refused with a message for the block, whether the
    run is still draining or has ended."""
    with anyio.fail_after(20):
        async with Xqueue(workdir=workdir) as q:
            await q.feed(["sleep", "0.5"])
            stopping = anyio.Event()

            async def stop() -> None:
                stopping.set()
                await q.stop_feeding()

            async with anyio.create_task_group() as tg:
                tg.start_soon(stop)
                await stopping.wait()
                await anyio.lowlevel.checkpoint()
                with pytest.raises(QueueStateError, match="block takes no more jobs"):
                    await q.feed(["true"])  # while it drains
            with pytest.raises(QueueStateError, match="block takes no more jobs"):
                await q.feed(["true"])  # once it ended
    assert [job.status for job in q.jobs] == [JobStatus.FINISHED]


async def test_kill_queued_job(workdir: Path) -> None:
    async with Xqueue(forks=1, workdir=workdir) as q:
        first = await q.feed(["sleep", "0.3"])
        second = await q.feed(["true"])
        assert await q.kill(second)
        assert second.status is JobStatus.KILLED
        assert not await q.kill(second)
    assert first.status is JobStatus.FINISHED


async def test_kill_refuses_what_this_queue_was_not_fed(workdir: Path, tmp_path: Path) -> None:
    """Another queue's job was marked killed, left this queue's counts negative and that
    queue's run waiting for ever; an index raised AttributeError."""
    other = Xqueue(workdir=tmp_path / "other")
    theirs = await other.feed(["true"])
    async with Xqueue(workdir=workdir) as q:
        ours = await q.feed(["true"])
        with pytest.raises(ConfigError, match=r"kill\(\): job 0 \(true\) was not fed to this"):
            await q.kill(theirs)
        with pytest.raises(ConfigError, match=r"kill\(\) takes a job of this queue, not int"):
            await q.kill(0)  # type: ignore[arg-type]
    assert ours.status is JobStatus.FINISHED and theirs.status is JobStatus.QUEUED
    with anyio.fail_after(20):
        await other.run_until_complete()
    assert theirs.status is JobStatus.FINISHED


async def test_custom_polled_scheduler_batches_active_jobs_only(workdir: Path) -> None:
    sched = DetachedScheduler(poll_interval=0.05)
    q = Xqueue(sched, forks=8, workdir=workdir, error_strategy="ignore")
    for i in range(60):
        await q.feed(f"exit {1 if i == 7 else 0}")
    await q.run_until_complete()
    stats = q.statistics()
    assert stats.counts == {"finished": 59, "failed": 1}
    assert q.jobs[7].rc == 1
    # every tick passes only the active jobs (never the finished ones) in one call
    assert max(sched.poll_sizes) <= 8
    assert len(sched.poll_sizes) == stats.ticks
    assert stats.status_calls <= 8 * stats.ticks


async def test_polled_job_that_vanishes_is_failed_not_hung(workdir: Path) -> None:
    sched = DetachedScheduler(poll_interval=0.05, vanish_grace=0.3)
    q = Xqueue(sched, workdir=workdir, error_strategy="ignore")
    # The wrapper dies before it can record a return code: nobody knows the job any more.
    job = await q.feed(["sleep", "60"])

    async def kill_wrapper() -> None:
        while job.jid is None:
            await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        os.killpg(int(job.jid), 9)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_wrapper)
            await q.run_until_complete()
    assert job.status is JobStatus.FAILED
    assert "vanished" in job.reason


async def test_statistics_and_repr(workdir: Path) -> None:
    q = Xqueue(forks=2, workdir=workdir, error_strategy="ignore")
    await q.feed(["true"])
    await q.feed(["false"])
    await q.run_until_complete()
    s = q.statistics()
    assert (s.total, s.done, s.failed, s.active) == (2, 2, 1, 0)
    assert repr(q) == "<Xqueue local forks=2 jobs=2 active=0 done=2 failed=1>"
    assert repr(q.jobs[1]) == "<Job 1 'false' FAILED rc=1>"


async def test_interpreter_path_with_spaces(tmp_path: Path) -> None:
    wd = tmp_path / "work dir with spaces"
    q = Xqueue(workdir=wd)
    job = await q.feed([sys.executable, "-c", "print(1)"])
    await q.run_until_complete()
    assert await read_text(job.stdout_path) == "1\n"


async def test_a_queue_runs_again_after_more_feeding(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, forks=2)
    await q.feed(["true"])
    await q.run_until_complete()
    await q.feed(["sh", "-c", "echo second"])
    await q.run_until_complete()
    assert [j.status for j in q.jobs] == [JobStatus.FINISHED, JobStatus.FINISHED]
    assert await read_text(q.jobs[1].stdout_path) == "second\n"


async def test_backend_enforcing_forks_gets_a_big_batch_only_when_idle(workdir: Path) -> None:
    class Packing(DetachedScheduler):
        """Claims to throttle itself; records what the engine hands it."""

        batches: list[tuple[int, int]] = []  # (batch size, active when handed)

        @property
        def enforces_forks(self) -> bool:
            return True

        @property
        def max_batch(self) -> int:
            return 7

        async def submit_jobs(self, jobs):  # type: ignore[no-untyped-def]
            self.batches.append((len(jobs), len(q._engine.active_jobs())))
            return await super().submit_jobs(jobs)

    sched = Packing(poll_interval=0.05)
    q = Xqueue(sched, forks=3, workdir=workdir)
    for _ in range(10):
        await q.feed(["sleep", "0.1"])
    await q.run_until_complete()
    assert q.statistics().counts == {"finished": 10}
    first, *rest = sched.batches
    assert first == (7, 0)  # idle: up to max_batch, for the backend to throttle to forks
    for size, active in rest:  # otherwise never more than the free slots
        assert (active == 0 and size <= 7) or size <= 3 - active


async def test_each_run_opens_and_closes_the_scheduler(workdir: Path) -> None:
    from xqueue.schedulers.local import LocalScheduler

    class Counting(LocalScheduler):
        opened = closed = 0

        async def open(self, workdir):  # type: ignore[no-untyped-def]
            self.opened += 1
            await super().open(workdir)

        async def aclose(self) -> None:
            self.closed += 1
            await super().aclose()

    sched = Counting()
    q = Xqueue(sched, workdir=workdir)  # the xqute style: nobody calls aclose()
    await q.feed(["true"])
    await q.run_until_complete()
    assert (sched.opened, sched.closed) == (1, 1)
    await q.feed(["true"])
    await q.run_until_complete()
    assert (sched.opened, sched.closed) == (2, 2)
    await q.aclose()  # closing the queue does not close the backend a second time
    assert (sched.opened, sched.closed) == (2, 2)

    sched2 = Counting()
    async with Xqueue(sched2, workdir=workdir) as q2:
        await q2.feed(["true"])
    assert (sched2.opened, sched2.closed) == (1, 1)


async def test_a_job_the_backend_loses_fails_alone(workdir: Path) -> None:
    from xqueue import SchedulerError
    from xqueue.schedulers.local import LocalScheduler

    class Flaky(LocalScheduler):
        async def wait_job(self, job: Job):  # type: ignore[no-untyped-def]
            state = await super().wait_job(job)
            if job.index == 1:
                raise SchedulerError("connection to the engine dropped")
            return state

    q = Xqueue(Flaky(), workdir=workdir, error_strategy="ignore", forks=3)
    jobs = [await q.feed(["true"]) for _ in range(3)]
    await q.run_until_complete()
    assert [j.status for j in jobs] == [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.FINISHED]
    assert jobs[1].reason == "lost: connection to the engine dropped"


async def test_concurrent_first_feeds_get_distinct_indices_and_folders(workdir: Path) -> None:
    """The first feed waits for the workdir lock; feeds racing over it must not share an
    index (and so a folder)."""
    q = Xqueue(workdir=workdir)
    jobs: list[Job] = []

    async def feed(i: int) -> None:
        jobs.append(await q.feed(["echo", str(i)]))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(feed, i)
    assert sorted(j.index for j in jobs) == list(range(20))
    assert len({j.dir for j in jobs}) == 20
    await q.run_until_complete()
    for job in jobs:
        assert (await read_text(job.stdout_path)).strip() == job.argv[1]


async def test_a_run_started_with_tg_start_takes_stop_feeding_right_after(workdir: Path) -> None:
    """``tg.start`` returns once the run has begun: a stop_feeding() right after it is
    neither lost nor too early (with start_soon it could come before the run began)."""
    from functools import partial

    q = Xqueue(workdir=workdir)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(partial(q.run, keep_feeding=True))
            job = await q.feed(["true"])
            await q.stop_feeding()
    assert job.status is JobStatus.FINISHED


async def test_a_queue_fed_and_left_names_itself_as_the_workdirs_holder(workdir: Path) -> None:
    # The lock of a queue fed and neither run nor closed was blamed on "another xqueue
    # run (pid N)", N being the caller's own process.
    first = Xqueue(workdir=workdir)
    await first.feed(["true"])
    second = Xqueue(workdir=workdir)
    with pytest.raises(WorkdirError, match="another Xqueue of this process") as caught:
        await second.feed(["true"])
    assert "aclose()" in str(caught.value)
    await first.aclose()
    await second.feed(["true"])
    await second.run_until_complete()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_feeding_a_running_queue_from_another_threads_loop_is_refused(
    workdir: Path,
) -> None:
    # Two threads doing so took the same index (two folders numbered 0), and the run hung.
    import asyncio

    async with Xqueue(workdir=workdir, forks=2, handle_signals=False) as q:

        def from_a_thread(coroutine: Any) -> BaseException | None:
            try:
                asyncio.run(coroutine)
            except QueueStateError as exc:
                return exc
            return None

        refused = await anyio.to_thread.run_sync(from_a_thread, q.feed(["true"]))
        assert isinstance(refused, QueueStateError) and "BlockingPortal" in str(refused)
        # A submit refused so must not leave its place in line taken: the feeds after it
        # waited for it for ever.
        refused = await anyio.to_thread.run_sync(from_a_thread, q.submit(len, "ab"))
        assert isinstance(refused, QueueStateError)
        fed = await anyio.to_thread.run_sync(anyio.from_thread.run, q.feed, ["true"])
        await q.stop_feeding()
    assert fed.status is JobStatus.FINISHED and [j.index for j in q.jobs] == [0]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # its tasks start in order
async def test_jobs_fed_at_once_are_numbered_in_the_order_fed(workdir: Path) -> None:
    # The first feed awaits the lock and a feed with resources the capacity: a feed
    # started after either one took its number first.
    q = Xqueue(workdir=workdir, handle_signals=False)
    found: dict[str, int] = {}

    async def feed(what: str, cpus: int | None) -> None:
        resources = {"cpus": cpus} if cpus else None
        found[what] = (await q.feed(["true"], name=what, resources=resources)).index

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed, "first", 1)
        tg.start_soon(feed, "second", None)
        tg.start_soon(feed, "third", 1)
    assert found == {"first": 0, "second": 1, "third": 2}
    await q.aclose()


async def test_waiting_for_a_job_of_a_queue_closed_before_it_ran_raises(workdir: Path) -> None:
    """A framework's error path closed the queue before its run: wait() and result()
    waited for ever on jobs no run could take, and nothing said so."""
    q = Xqueue(workdir=workdir)
    job = await q.feed(["true"])
    call = await q.submit(len, "abc")
    errors: list[str] = []

    async def waiter() -> None:
        with pytest.raises(QueueStateError) as raised:
            await job.wait()
        errors.append(str(raised.value))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)  # already waiting when the queue closes
            await anyio.wait_all_tasks_blocked()
            await q.aclose()
    assert errors == ["job 0 (true) will not end: its queue was closed while it was queued"]
    for waiting in (job.wait, call.result):
        with anyio.fail_after(5), pytest.raises(QueueStateError, match="closed while it was"):
            await waiting()


async def test_closing_a_queue_whose_run_is_in_progress_is_refused(workdir: Path) -> None:
    """aclose() from another task while run_until_complete() ran released the lock and
    closed the backend under the run, which then waited for ever for a job that had
    ended and recorded it "could not be killed in time" (a trial's run hung until cut
    off). It is refused; the run goes on and ends as it would."""
    q = Xqueue(workdir=workdir)
    job = await q.feed(["sleep", "0.5"])
    refused: list[str] = []

    async def closer() -> None:
        while job.status is not JobStatus.RUNNING:
            await anyio.sleep(0.01)
        with pytest.raises(QueueStateError) as raised:
            await q.aclose()
        refused.append(str(raised.value))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(closer)
            await q.run_until_complete()
    assert refused and "still in progress" in refused[0]
    assert (job.status, job.rc) == (JobStatus.FINISHED, 0)
    assert q.workdir.locked is False  # the run released it as it ended
    await q.aclose()  # and once it has ended, the queue closes
