"""The scheduler base class: wrapper scripts, option parsing, reconciliation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import DetachedScheduler
from xqueue import Job, JobStatus, SchedulerOptionError
from xqueue.scheduler import VANISHED, JobState
from xqueue.workdir import Workdir


def make_job(tmp_path: Path, cmd: object, **kw: object) -> Job:
    job = Job(0, cmd, **kw)  # type: ignore[arg-type]
    Workdir(tmp_path / "wd").prepare(job, make=True)
    return job


def test_script_is_written_once_and_never_in_place(tmp_path: Path) -> None:
    job = make_job(tmp_path, ["echo", "a"])
    sched = DetachedScheduler()
    path = sched.write_script(job)
    first = os.stat(path).st_ino
    sched.write_script(job)  # same content (e.g. a retry): not touched at all
    assert os.stat(path).st_ino == first
    # Another content goes to a new inode by rename; a shell still reading the old
    # one keeps reading the old text, never a truncated file.
    with open(path) as reader:
        job.envs = {"X": "1"}
        sched.write_script(job)
        assert os.stat(path).st_ino != first
        assert "export X=" not in reader.read()
    assert "export X=" in Path(path).read_text()


def test_script_passes_argv_verbatim_through_sh(tmp_path: Path) -> None:
    args = ["$HOME", "`id`", "a b", "it's", '"q"', "\\n", ""]
    job = make_job(tmp_path, ["printf", "[%s]", *args], envs={"V": "$(id) 'x'"})
    script = DetachedScheduler().write_script(job)
    subprocess.run(["sh", script], check=True)
    assert Path(job.stdout_path).read_text() == "".join(f"[{a}]" for a in args)
    assert Path(job.attempt_path("rc")).read_text().strip() == "0"
    assert Path(job.attempt_path("started")).exists()


@pytest.mark.parametrize("saved", [None, "xqueue_wrapper_path"])
def test_a_job_with_a_path_of_its_own_still_leaves_its_return_code(
    tmp_path: Path, saved: str | None
) -> None:
    """A job whose envs set PATH to a folder without the basic tools (a venv's bin):
    the wrapper's own ``rm``, ``date`` and ``mv`` ran with it, found nothing, and no
    return code was written, so SSH took a job that succeeded for vanished (Slurm and
    SGE found its code only through their accounting). The command still gets the PATH
    it was given, also when a variable of its own has the name the wrapper keeps the
    old PATH in."""
    bin_ = tmp_path / "venv-bin"
    bin_.mkdir()
    (bin_ / "hello").write_text("#!/bin/sh\necho hello from $PATH $xqueue_wrapper_path\n")
    (bin_ / "hello").chmod(0o755)
    envs = {"PATH": str(bin_), **({saved: "mine"} if saved else {})}
    job = make_job(tmp_path, ["hello"], envs=envs)
    script = DetachedScheduler().write_script(job)
    subprocess.run(["/bin/sh", script], check=True)
    mine = " mine" if saved else ""
    assert Path(job.stdout_path).read_text() == f"hello from {bin_}{mine}\n"
    assert Path(job.attempt_path("rc")).read_text() == "0\n"
    assert Path(job.attempt_path("started")).read_text().strip().isdigit()


def test_reconcile_prefers_the_return_code_file(tmp_path: Path) -> None:
    job = make_job(tmp_path, ["true"])
    sched = DetachedScheduler(vanish_grace=0)
    assert sched.reconcile(job, held=True).status is JobStatus.SUBMITTED
    Path(job.attempt_path("started")).write_text("1")
    assert sched.reconcile(job, held=True).status is JobStatus.RUNNING
    Path(job.attempt_path("rc")).write_text("5\n")
    state = sched.reconcile(job, held=True)
    assert (state.status, state.rc) == (JobStatus.FAILED, 5)


def test_reconcile_keeps_a_backend_s_word_that_the_end_was_the_job_s_own(tmp_path: Path) -> None:
    """An end the backend says no kill caused (HTCondor's COMPLETED, not REMOVED) stays
    the job's own with the return code file's code: a kill sent as it ended was taken
    for its end, a success recorded killed."""
    job = make_job(tmp_path, ["true"])
    sched = DetachedScheduler()
    Path(job.attempt_path("rc")).write_text("0\n")
    completed = JobState(JobStatus.FINISHED, 0, unkilled=True)
    state = sched.reconcile(job, False, completed)
    assert (state.status, state.rc, state.unkilled) == (JobStatus.FINISHED, 0, True)
    assert not sched.reconcile(job, False, JobState(JobStatus.FINISHED, 0)).unkilled


def test_reconcile_fails_a_vanished_job_after_the_grace(tmp_path: Path) -> None:
    job = make_job(tmp_path, ["true"])
    sched = DetachedScheduler(vanish_grace=3600)
    assert sched.reconcile(job, held=False).status is JobStatus.SUBMITTED  # within grace
    sched.options.vanish_grace = 0
    state = sched.reconcile(job, held=False)
    assert state.status is JobStatus.FAILED and state.reason == VANISHED


def test_options_coerce_cli_strings() -> None:
    sched = DetachedScheduler(poll_interval="0.5", submit_concurrency="3")
    assert sched.options.poll_interval == 0.5 and sched.options.submit_concurrency == 3
    with pytest.raises(SchedulerOptionError, match="submit_concurrency must be >= 1"):
        DetachedScheduler(submit_concurrency=0)
    with pytest.raises(SchedulerOptionError, match="expects int, got 'many'"):
        DetachedScheduler(submit_concurrency="many")


@pytest.mark.anyio
async def test_a_submission_call_abandoned_before_it_started_never_runs_nor_blocks_lookups() -> (
    None
):
    """A call that timed out while it waited for its limiter was marked under way for ever
    (its jobs' lookups failed for two minutes, then they were left unrun) although it
    never started; and once started, it is under way until it returns."""
    import threading
    import time

    import anyio

    scheduler = DetachedScheduler()
    waiting, running = Job(0, "true"), Job(1, "true")
    limiter = anyio.CapacityLimiter(1)
    called, held, done = threading.Event(), anyio.Event(), anyio.Event()

    async def hold() -> None:  # by another task: the call waits for it, and times out
        async with limiter:
            held.set()
            await done.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await held.wait()
        with pytest.raises(TimeoutError):
            await scheduler.submit_call([waiting], called.set, 0.1, limiter)
        done.set()
    await anyio.sleep(0.2)
    assert not called.is_set() and not scheduler.submission_under_way(waiting)
    release = threading.Event()
    with pytest.raises(TimeoutError):
        await scheduler.submit_call([running], lambda: release.wait(10), 0.1)
    assert scheduler.submission_under_way(running)  # started: it may still submit
    release.set()
    with anyio.fail_after(5):
        while scheduler.submission_under_way(running):
            await anyio.sleep(0.01)
    assert 0 < scheduler.flights_ended_at <= time.monotonic()
