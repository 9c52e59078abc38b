"""What a pipeline framework needs from a queue: its own job objects, cache keys, a resume
that can be turned off, polling hooks, shell lines around each command, checks of a
job's outputs, and warnings when keep-feeding mode is misused (docs/embedding.md)."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import (
    SLURM_FAST,
    DetachedScheduler,
    Recorder,
    cluster_queue,
    is_alive,
    read_text,
    remove_after,
)
from xqueue import (
    CallJob,
    ConfigError,
    Job,
    JobFailedError,
    JobStatus,
    PluginError,
    Scheduler,
    SchedulerOptionError,
    Xqueue,
    hookimpl,
)
from xqueue.schedulers.local import LocalScheduler

pytestmark = pytest.mark.anyio
S = JobStatus


class StepJob(Job):
    """A framework's job: it carries the step it belongs to."""

    __slots__ = ("step",)

    def __init__(self, *args: Any, step: str = "default", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step = step


class Seen:
    """Records the job objects the hooks were given."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    @hookimpl
    def on_job_succeeded(self, job: Job) -> None:
        self.jobs.append(job)


# -- job classes -----------------------------------------------------------------------------
async def test_job_class_makes_the_jobs_feed_makes(workdir: Path) -> None:
    seen = Seen()
    q = Xqueue(workdir=workdir, job_class=StepJob, plugins=[seen])
    a = await q.feed(["echo", "a"])
    assert type(a) is StepJob and a.step == "default"
    a.step, a.data = "align", {"sample": 1}
    await q.run_until_complete()
    assert seen.jobs == [a] and type(seen.jobs[0]) is StepJob
    assert seen.jobs[0].step == "align" and seen.jobs[0].data == {"sample": 1}


async def test_feed_job_takes_a_built_job_and_assigns_index_and_folder(workdir: Path) -> None:
    def build() -> list[StepJob]:
        # The index given to the constructor is a placeholder: the queue numbers jobs.
        return [StepJob(99, ["echo", str(i)], step=f"s{i}") for i in range(2)]

    seen = Seen()
    q = Xqueue(workdir=workdir, plugins=[seen])
    jobs = [await q.feed_job(job) for job in build()]
    plain = await q.feed(["echo", "plain"])
    assert [j.index for j in [*jobs, plain]] == [0, 1, 2]
    assert all(os.path.dirname(j.dir) == str(q.workdir.path) for j in jobs)
    assert jobs[1].after == () and jobs[1].step == "s1"
    dependent = await q.feed_job(StepJob(0, ["echo", "after"]), after=jobs)
    assert dependent.after == tuple(jobs)
    await q.run_until_complete()
    assert sorted(j.index for j in seen.jobs) == [0, 1, 2, 3]
    assert [type(j) for j in seen.jobs if j is not plain] == [StepJob] * 3
    assert await read_text(jobs[1].stdout_path) == "1\n"

    # Built again the same way, in a later run, they are the same jobs: resumed.
    q2 = Xqueue(workdir=workdir)
    again = [await q2.feed_job(job) for job in build()]
    assert [j.status for j in again] == [S.FINISHED, S.FINISHED]
    assert again[0].dir == jobs[0].dir
    await q2.aclose()


async def test_feed_job_refuses_what_it_cannot_run(workdir: Path) -> None:
    q = Xqueue(workdir=workdir)
    fed = await q.feed_job(Job(0, ["true"]))
    with pytest.raises(ConfigError, match="was fed already"):
        await q.feed_job(fed)
    other = Xqueue(workdir=workdir / "other")
    with pytest.raises(ConfigError, match="was fed already"):
        await other.feed_job(fed)
    with pytest.raises(ConfigError, match=r"takes an xqueue\.Job, not str"):
        await q.feed_job("true")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fed by submit"):
        await q.feed_job(CallJob(0, ["true"]))
    with pytest.raises(ConfigError, match=r"was fed already .*or given a folder"):
        await q.feed_job(Job(0, ["true"], dir=str(workdir)))
    changed = Job(0, ["true"])
    changed.envs = {"A=B": "x"}  # changed after it was made: checked again
    with pytest.raises(ConfigError, match="invalid environment variable name"):
        await q.feed_job(changed)
    changed = Job(0, ["true"])
    changed.command = ("echo", "a\0b")
    with pytest.raises(ConfigError, match="contains a NUL"):
        await q.feed_job(changed)
    with pytest.raises(ConfigError, match="cache key is a non-empty string"):
        await q.feed_job(Job(0, ["true"]), cache_key="")
    assert len(q.jobs) == 1 and not other.jobs
    await q.aclose()
    await other.aclose()
    with pytest.raises(ConfigError, match=r"job_class must be xqueue\.Job or a subclass"):
        Xqueue(workdir=workdir, job_class=dict)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot be a CallJob"):
        Xqueue(workdir=workdir, job_class=CallJob)


# -- resume: cache keys and resume=False ---------------------------------------------------------
COUNTED = 'echo "$XQUEUE_JOB_ATTEMPT" >> "$MARKER"; echo "attempt $XQUEUE_JOB_ATTEMPT"'


async def one_run(workdir: Path, marker: Path, cache_key: str | None, **kw: Any) -> Job:
    q = Xqueue(workdir=workdir, **kw)
    job = await q.feed(COUNTED, {"MARKER": str(marker)}, cache_key=cache_key)
    await q.run_until_complete()
    assert job.status is S.FINISHED, job.reason
    return job


async def test_cache_key_decides_whether_an_earlier_success_counts(
    workdir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"

    async def runs() -> list[str]:
        return (await read_text(marker)).split()

    first = await one_run(workdir, marker, None)
    # Same command, but now a key: the success was not made under it, so it runs again.
    keyed = await one_run(workdir, marker, "inputs-v1")
    assert await runs() == ["1", "2"] and keyed.attempt == 2
    same = await one_run(workdir, marker, "inputs-v1")
    assert same.reason == "succeeded in an earlier run" and await runs() == ["1", "2"]
    changed = await one_run(workdir, marker, "inputs-v2")
    assert await runs() == ["1", "2", "3"] and changed.attempt == 3
    # The same folder; each attempt kept its own output (a new attempt, not a rewrite).
    assert changed.dir == first.dir
    for n in (1, 2, 3):
        assert await read_text(changed.attempt_path("stdout", n)) == f"attempt {n}\n"
    # No key: resume by command, as always.
    plain = await one_run(workdir, marker, None)
    assert plain.reason == "succeeded in an earlier run" and await runs() == ["1", "2", "3"]


async def test_resume_false_runs_every_job_again_and_keeps_earlier_attempts(
    workdir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    await one_run(workdir, marker, "k")
    again = await one_run(workdir, marker, "k", resume=False)
    assert again.attempt == 2 and again.reason == ""
    assert (await read_text(marker)).split() == ["1", "2"]
    assert await read_text(again.attempt_path("stdout", 1)) == "attempt 1\n"
    folders = [p.name async for p in anyio.Path(workdir).iterdir() if await p.is_dir()]
    assert folders == [Path(again.dir).name]  # reused: nothing moved aside or deleted
    # And a later run with resume on counts the newest success.
    last = await one_run(workdir, marker, "k")
    assert last.reason == "succeeded in an earlier run" and last.attempt == 2


CONTROLLER = textwrap.dedent(
    """
    import anyio, sys
    from xqueue import Xqueue

    async def main(workdir, command):
        q = Xqueue(workdir=workdir)
        await q.feed(command, cache_key="v1")
        await q.run_until_complete()

    anyio.run(main, sys.argv[1], sys.argv[2])
    """
)


@pytest.mark.parametrize("how", ["changed key", "resume=False"])
async def test_an_unwanted_attempt_still_running_is_stopped_before_the_job_runs_again(
    workdir: Path, tmp_path: Path, how: str
) -> None:
    """The first controller dies while its job runs; the second must not adopt that
    attempt (its result is for other inputs) nor run the job beside it."""
    pids, release = tmp_path / "pids", tmp_path / "release"
    await anyio.Path(pids).mkdir()
    # Refuses to work while another attempt lives; then waits to be released.
    alive = '[ "$(cut -d" " -f3 "/proc/$(cat "$f")/stat" 2>/dev/null || echo X)" != X ]'
    command = (
        f'for f in {pids}/*; do [ -e "$f" ] && {alive} && exit 3; done; '
        f"echo $$ > {pids}/$XQUEUE_JOB_ATTEMPT; while [ ! -e {release} ]; do sleep 0.05; done"
    )
    script = anyio.Path(tmp_path / "controller.py")
    await script.write_text(CONTROLLER)
    first = await anyio.open_process([sys.executable, str(script), str(workdir), command])
    first_pid = anyio.Path(pids / "1")
    with anyio.fail_after(20):
        while not await first_pid.exists() or not (await first_pid.read_text()).strip():
            await anyio.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    await first.wait()
    await first.aclose()
    old = int((await first_pid.read_text()).strip())
    assert await is_alive(old)  # the shepherd outlives its controller: the job runs on

    kw: dict[str, Any] = {"resume": False} if how == "resume=False" else {}
    q = Xqueue(workdir=workdir, **kw)
    job = await q.feed(command, cache_key="v1" if how == "resume=False" else "v2")
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.run_until_complete)
        second_pid = anyio.Path(pids / "2")
        with anyio.fail_after(20):
            while not await second_pid.exists():
                await anyio.sleep(0.05)
        assert not await is_alive(old)
        await anyio.Path(release).touch()
    assert job.status is S.FINISHED and job.attempt == 2, (job, job.reason)


MANY = textwrap.dedent(
    """
    import anyio, sys
    from xqueue import Xqueue

    async def main(workdir, command, n):
        q = Xqueue(workdir=workdir, forks=n)
        for i in range(n):
            await q.feed(command + f" # {i}")
        await q.run_until_complete()

    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


async def test_unwanted_attempts_found_together_are_stopped_in_one_call(
    workdir: Path, tmp_path: Path
) -> None:
    """A resume that finds many attempts of a dead controller unwanted stops them all
    with one call to the backend (it made one a job, each a pass over /proc locally)."""
    started, n = tmp_path / "started", 6
    command = f'echo $$ >> {started}; [ "$XQUEUE_JOB_ATTEMPT" = 1 ] && exec sleep 60; true'
    script = anyio.Path(tmp_path / "controller.py")
    await script.write_text(MANY)
    await anyio.Path(started).write_text("")
    first = await anyio.open_process([sys.executable, str(script), str(workdir), command, str(n)])
    with anyio.fail_after(20):
        while len((await read_text(started)).split()) < n:
            await anyio.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    await first.wait()
    await first.aclose()
    old = [int(pid) for pid in (await read_text(started)).split()]

    q = Xqueue(workdir=workdir, forks=n, resume=False)
    jobs = [await q.feed(command + f" # {i}") for i in range(n)]
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert [(j.status, j.attempt) for j in jobs] == [(S.FINISHED, 2)] * n
    assert q.statistics().kill_calls == 1
    assert not [pid for pid in old if await is_alive(pid)]


# -- polling hooks ---------------------------------------------------------------------------------
class Polls:
    """Records each polling call: (time, job index, status, the job's stdout so far)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.each: list[tuple[float, int, JobStatus, str]] = []
        self.batches: list[list[tuple[int, JobStatus]]] = []
        self.delay = delay

    @hookimpl
    async def on_job_polling(self, job: Job) -> None:
        try:
            tail = await anyio.Path(job.stdout_path).read_text()
        except FileNotFoundError:  # a wrapper script that has not started yet
            tail = ""
        self.each.append((time.monotonic(), job.index, job.status, tail))
        await anyio.sleep(self.delay)

    @hookimpl
    def on_jobs_polling(self, jobs: list[Job]) -> None:
        self.batches.append([(j.index, j.status) for j in jobs])


TICKING = "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.15; done"


def polled(backend: str, interval: float) -> Scheduler:
    if backend == "local":  # awaits its jobs: the hooks tick on a timer
        return LocalScheduler(poll_interval=interval)
    return DetachedScheduler(poll_interval=interval)


@pytest.mark.parametrize("backend", ["local", "polled"])
async def test_polling_hooks_tick_once_per_tick_for_each_active_job(
    workdir: Path, backend: str
) -> None:
    polls = Polls()
    interval = 0.2
    sched = polled(backend, interval)
    q = Xqueue(sched, workdir=workdir, plugins=[polls], forks=3)
    jobs = [await q.feed(["sh", "-c", TICKING]) for _ in range(3)]
    started = time.monotonic()
    await q.run_until_complete()
    elapsed = time.monotonic() - started
    assert all(j.status is S.FINISHED for j in jobs)
    ticks = len(polls.batches)
    assert 3 <= ticks <= elapsed / interval + 1, (ticks, elapsed)
    if backend == "polled":  # one hook tick per status query, never more
        assert ticks <= q.statistics().ticks
    for batch in polls.batches:  # active jobs only, each once
        assert batch and len({i for i, _ in batch}) == len(batch) <= 3
        assert all(status in (S.SUBMITTED, S.RUNNING) for _, status in batch)
    for job in jobs:
        mine = [(at, status, tail) for at, i, status, tail in polls.each if i == job.index]
        assert len(mine) <= ticks and all(status.is_active for _, status, _ in mine)
        # Live output: the hook saw the job's stdout grow while it ran.
        tails = [tail for _, _, tail in mine]
        assert any(0 < len(t) < len("12345678") * 2 for t in tails), tails
    # The per-job hook skips a job that ended since the tick's batch was taken.
    assert len(polls.each) <= sum(len(b) for b in polls.batches)


async def test_a_slow_polling_hook_makes_ticks_rarer_not_queued(workdir: Path) -> None:
    polls = Polls(delay=0.5)
    q = Xqueue(workdir=workdir, plugins=[polls], scheduler_opts={"poll_interval": 0.05}, forks=2)
    await q.feed(["sleep", "1.2"])
    await q.feed(["sleep", "1.2"])
    started = time.monotonic()
    await q.run_until_complete()
    elapsed = time.monotonic() - started
    # A tick takes 2 x 0.5 s of hooks: no second tick starts before the first is done.
    ends = sorted(at for at, *_ in polls.each)
    assert len(ends) <= 2 * (elapsed / 1.0 + 1)
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(ends)), ends


async def test_a_polling_hook_that_raises_stops_the_run(workdir: Path) -> None:
    class Broken:
        @hookimpl
        def on_jobs_polling(self, jobs: list[Job]) -> None:
            raise RuntimeError("tail failed")

    q = Xqueue(workdir=workdir, plugins=[Broken()], scheduler_opts={"poll_interval": 0.05})
    job = await q.feed(["sleep", "30"])
    with anyio.fail_after(20), pytest.raises(PluginError, match=r"on_jobs_polling.*tail failed"):
        await q.run_until_complete()
    assert job.status is S.KILLED


# -- shell lines around the command ----------------------------------------------------------------
class CmdHooks:
    """Shell text from the three jobcmd hooks; the prep text names the attempt."""

    @hookimpl
    def on_jobcmd_init(self, job: Job) -> str:
        return "echo init"

    @hookimpl
    async def on_jobcmd_prep(self, job: Job) -> str:
        return f"echo prep {job.attempt}"

    @hookimpl
    def on_jobcmd_end(self) -> str:
        return 'echo "end $XQUEUE_JOB_RC"'


WRAP_OPTS = {
    "prescript": "export GREETING='hello there'\necho pre",
    "postscript": 'echo "post $XQUEUE_JOB_RC"',
}


def wrapped(backend: str, **opts: Any) -> Scheduler:
    """Local (a ``/bin/sh -c`` argv) or a polled backend running wrapper scripts."""
    merged = {**WRAP_OPTS, **opts}
    if backend == "local":
        return LocalScheduler(**merged)
    return DetachedScheduler(poll_interval=0.1, **merged)


@pytest.mark.parametrize("backend", ["local", "polled"])
async def test_prescript_postscript_and_jobcmd_hooks_run_in_order_around_the_command(
    workdir: Path, backend: str
) -> None:
    q = Xqueue(
        wrapped(backend),
        workdir=workdir,
        plugins=[CmdHooks()],
        error_strategy="retry",
        num_retries=1,
    )
    argv = ["sh", "-c", 'printf "%s|" "$GREETING" "$@"; echo; exit "$1"', "x"]
    ok = await q.feed([*argv, "0", "$(touch CANARY)", "a  b"])
    bad = await q.feed([*argv, "7"])
    await q.run_until_complete()
    out = await read_text(ok.stdout_path)
    assert out == "init\npre\nprep 1\nhello there|0|$(touch CANARY)|a  b|\npost 0\nend 0\n"
    assert ok.status is S.FINISHED
    # The command's status is the job's; each attempt gets its own hook text.
    assert bad.status is S.FAILED and bad.rc == 7 and bad.attempt == 2
    assert await read_text(bad.stdout_path) == "init\npre\nprep 2\nhello there|7|\npost 7\nend 7\n"
    assert not await anyio.Path("CANARY").exists()


@pytest.mark.parametrize("backend", ["local", "polled"])
async def test_the_lines_after_the_command_can_change_its_status(
    workdir: Path, backend: str
) -> None:
    post = 'if [ "$XQUEUE_JOB_RC" = 4 ]; then exit 0; fi; [ -e "$XQUEUE_JOB_DIR/out" ] || exit 9'
    q = Xqueue(wrapped(backend, postscript=post), workdir=workdir, error_strategy="ignore")
    forgiven = await q.feed(["sh", "-c", "exit 4"])
    missing = await q.feed(["true"])
    await q.run_until_complete()
    assert forgiven.status is S.FINISHED and forgiven.rc == 0
    assert missing.status is S.FAILED and missing.rc == 9


@pytest.mark.parametrize("backend", ["local", "polled"])
async def test_a_fragment_cannot_take_the_wrapper_apart(workdir: Path, backend: str) -> None:
    class Odd:
        @hookimpl
        def on_jobcmd_init(self, job: Job) -> str | None:
            # `set --` and `shift` must not reach the command's own arguments.
            return "set -- changed; shift" if job.index == 0 else "echo 'unclosed"

    q = Xqueue(wrapped(backend), workdir=workdir, plugins=[Odd()], error_strategy="ignore")
    args = await q.feed(["sh", "-c", 'printf "%s|" "$@"', "x", "a", "b"])
    broken = await q.feed(["sh", "-c", "echo ran"])
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert await read_text(args.stdout_path) == "pre\na|b|post 0\n"
    # A fragment that does not parse fails the job, with the shell's message; nothing
    # after it runs, and a return code is still recorded (no "vanished" job).
    assert broken.status is S.FAILED and broken.rc == 2, broken.reason
    assert "ran" not in await read_text(broken.stdout_path)
    assert "unterminated" in (await read_text(broken.stderr_path)).lower()


async def test_a_prescript_can_put_a_local_command_on_path(workdir: Path, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    await anyio.Path(tools).mkdir()
    tool = anyio.Path(tools / "xq-tool")
    await tool.write_text("#!/bin/sh\necho tool ran\n")
    await tool.chmod(0o755)
    plain = Xqueue(workdir=tmp_path / "plain", error_strategy="ignore")
    refused = await plain.feed(["xq-tool"])
    await plain.run_until_complete()
    assert refused.status is S.FAILED and "command not found" in refused.reason
    # The wrapped job is started as /bin/sh; the PATH it finds the tool on is its own.
    opts = {"prescript": f"PATH={tools}:$PATH"}
    q = Xqueue(workdir=workdir, scheduler_opts=opts)
    job = await q.feed(["xq-tool"])
    await q.run_until_complete()
    assert job.status is S.FINISHED and await read_text(job.stdout_path) == "tool ran\n"


async def test_bad_shell_text_is_refused(workdir: Path) -> None:
    with pytest.raises(SchedulerOptionError, match="prescript contains a NUL"):
        Xqueue(workdir=workdir, scheduler_opts={"prescript": "echo \0"})

    class Bad:
        @hookimpl
        def on_jobcmd_prep(self) -> list[str]:
            return ["echo", "a list"]

    q = Xqueue(workdir=workdir, plugins=[Bad()])
    job = await q.feed(["true"])
    with anyio.fail_after(20), pytest.raises(PluginError, match=r"on_jobcmd_prep.*not list"):
        await q.run_until_complete()
    assert job.status is S.KILLED  # cancelled: it never ran


# -- checks of what a job left ---------------------------------------------------------------------
class Outputs:
    """Fails an attempt that exited 0 without leaving ``out`` in its folder."""

    def __init__(self, delay: float = 0.0) -> None:
        self.checked: list[tuple[int, int]] = []
        self.delay = delay

    @hookimpl
    async def on_job_checking(self, job: Job) -> str | None:
        self.checked.append((job.index, job.attempt))
        await anyio.sleep(self.delay)
        if not await anyio.Path(job.dir, "out").exists():
            return f"missing output {job.dir}/out"
        return None


MAKES_OUT_ON_2 = '[ "$XQUEUE_JOB_ATTEMPT" -ge 2 ] && touch "$XQUEUE_JOB_DIR/out"; exit 0'


async def test_a_check_fails_an_attempt_that_exited_0_and_it_is_retried(workdir: Path) -> None:
    outputs, rec = Outputs(), Recorder()
    q = Xqueue(workdir=workdir, plugins=[outputs, rec], error_strategy="retry", num_retries=2)
    job = await q.feed(MAKES_OUT_ON_2)
    await q.run_until_complete()
    assert job.status is S.FINISHED and job.attempt == 2 and job.rc == 0
    assert outputs.checked == [(0, 1), (0, 2)]
    assert rec.for_job(0).count("on_job_retrying") == 1
    assert rec.for_job(0)[-1] == "on_job_succeeded"


async def test_a_failed_check_is_a_failure_like_any_other(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, plugins=[Outputs()], error_strategy="ignore")
    job = await q.feed(["true"])
    await q.run_until_complete()
    assert job.status is S.FAILED and job.rc == 0
    assert job.reason == f"missing output {job.dir}/out"
    # Recorded as failed: a later run does not skip it.
    q2 = Xqueue(workdir=workdir, plugins=[Outputs()], error_strategy="halt")
    again = await q2.feed(["true"])
    assert again.status is S.QUEUED
    with pytest.raises(JobFailedError):
        await q2.run_until_complete()


async def test_check_answers_false_and_nonsense(workdir: Path) -> None:
    class No:
        @hookimpl
        def on_job_checking(self, job: Job) -> Any:
            return False if job.index == 0 else None

    q = Xqueue(workdir=workdir, plugins=[No()], error_strategy="ignore")
    a = await q.feed(["true"])
    b = await q.feed(["true"])
    await q.run_until_complete()
    assert a.status is S.FAILED and "failed the job's check" in a.reason and "No" in a.reason
    assert b.status is S.FINISHED

    class Nonsense:
        @hookimpl
        def on_job_checking(self) -> Any:
            return 3

    q = Xqueue(workdir=workdir / "2", plugins=[Nonsense()])
    job = await q.feed(["true"])
    with pytest.raises(PluginError, match=r"on_job_checking.*returned 3"):
        await q.run_until_complete()
    assert job.status is S.FAILED and "not checked" in job.reason


async def test_a_job_being_checked_has_ended_and_is_not_killed(workdir: Path) -> None:
    outputs = Outputs(delay=1.0)
    q = Xqueue(workdir=workdir, plugins=[outputs], error_strategy="ignore")
    job = await q.feed('touch "$XQUEUE_JOB_DIR/out"')
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.run_until_complete)
        with anyio.fail_after(20):
            while not outputs.checked:
                await anyio.sleep(0.02)
        assert job.status is S.RUNNING  # it keeps its slot while it is checked
        assert await q.kill(job) is False  # its process has ended: nothing to kill
    assert job.status is S.FINISHED


@pytest.mark.parametrize("seed", range(3))
async def test_a_run_cancelled_while_its_jobs_start_leaves_none_running(
    tmp_path: Path, seed: int
) -> None:
    """The caller's scope cancelled at seeded points while the shepherd starts the jobs:
    each job it started is killed by its pid. The pids' answer was lost with the
    cancelled submission, a look in /proc made before the jobs started found nothing,
    and they were recorded "killed before it was submitted" while they ran on."""
    import random

    rng = random.Random(seed)
    for round_ in range(6):
        wd, pids = tmp_path / f"wd{round_}", anyio.Path(tmp_path / f"pids{round_}")
        q = Xqueue(forks=4, workdir=wd)
        for _ in range(4):
            await q.feed(f"echo $$ >> {pids}; exec sleep 30")
        with anyio.move_on_after(rng.uniform(0.003, 0.04)):
            await q.run_until_complete()
        await anyio.sleep(0.3)  # what the shepherd was still starting has started
        started = [int(p) for p in (await pids.read_text()).split()] if await pids.exists() else []
        alive = [pid for pid in started if await is_alive(pid)]
        for pid in alive:
            os.kill(pid, signal.SIGKILL)
        assert alive == [], [(j.index, j.status.value, j.jid, j.reason) for j in q.jobs]
        for pid in started:  # each one it started, it knew
            assert [j for j in q.jobs if str(j.jid).startswith(f"{pid}@")], (pid, q.jobs)
        assert all(job.status.is_final for job in q.jobs)


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt()], ids=["exit", "ctrl-c"])
async def test_an_exit_in_the_block_comes_out_as_it_was_and_kills_the_jobs(
    workdir: Path, tmp_path: Path, raised: BaseException
) -> None:
    """docs/embedding.md: an exception in the block stops the run and comes out as it
    was. ``sys.exit(3)`` and a KeyboardInterrupt came out wrapped in an exception group
    (the process exited 1 with a traceback, not 3)."""
    from tests.helpers import wait_running

    pidfile = tmp_path / "pid"
    with pytest.raises(type(raised)) as caught:
        async with Xqueue(workdir=workdir) as q:
            job = await q.feed(f"echo $$ > {pidfile}; exec sleep 30")
            await wait_running(job)
            raise raised
    assert caught.value is raised
    assert job.status is JobStatus.KILLED
    assert not await is_alive(int(await read_text(pidfile)))


async def test_a_run_cancelled_during_a_check_still_settles_the_job(workdir: Path) -> None:
    outputs = Outputs(delay=1.0)
    q = Xqueue(workdir=workdir, plugins=[outputs], error_strategy="ignore")
    job = await q.feed('touch "$XQUEUE_JOB_DIR/out"')
    with anyio.fail_after(15):  # not the shutdown deadline (kill_grace + 30 s)
        async with anyio.create_task_group() as tg:
            tg.start_soon(q.run_until_complete)
            while not outputs.checked:
                await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
    # The check was cut short with the run; the shutdown asked again and it passed.
    assert outputs.checked == [(0, 1), (0, 1)]
    assert job.status is S.FINISHED


# -- keep-feeding misuse warns ---------------------------------------------------------------------
async def test_stop_feeding_outside_keep_feeding_mode_warns(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    q = Xqueue(workdir=workdir)
    with caplog.at_level(logging.WARNING, "xqueue"):
        await q.stop_feeding()
    assert "stop_feeding() called on an Xqueue" in caplog.text
    caplog.clear()
    async with Xqueue(workdir=workdir) as q2:
        await q2.feed(["true"])
        with caplog.at_level(logging.WARNING, "xqueue"):
            await q2.stop_feeding()  # fine: ends feeding, waits for the job
            assert not caplog.text
            await q2.stop_feeding()  # twice: nothing left to stop
        assert "not in keep-feeding mode" in caplog.text
    await q.aclose()


async def test_a_run_cancelled_while_still_feeding_warns(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    q = Xqueue(workdir=workdir)
    with caplog.at_level(logging.WARNING, "xqueue"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: q.run(keep_feeding=True))
            job = await q.feed(["sleep", "30"])
            with anyio.fail_after(20):
                while job.status is not S.RUNNING:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
    assert job.status is S.KILLED
    assert "cancelled while still feeding" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "xqueue"):  # stopped properly: silent
        async with anyio.create_task_group() as tg:
            q2 = Xqueue(workdir=workdir / "2")
            tg.start_soon(lambda: q2.run(keep_feeding=True))
            while not q2.is_feeding():  # stop_feeding() before the run began would warn
                await anyio.sleep(0.01)
            await q2.feed(["true"])
            await q2.stop_feeding()
    assert not caplog.text


# Run in a process of their own: a run abandoned by its event loop leaves coroutines
# and tasks behind (asyncio reports them as it is torn down), not this test process.
LEFT_FEEDING = textwrap.dedent(
    """
    import asyncio, sys
    from tests.helpers import EndsAtOnce
    from xqueue import Xqueue

    async def start():
        q = Xqueue(EndsAtOnce(), workdir=sys.argv[1], handle_signals=False)
        await q.run_until_complete(keep_feeding=True)
        await q.feed(["true"])

    if sys.argv[2] == "asyncio.run":
        asyncio.run(start())  # it cancels the run as it ends
    else:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(start())  # the loop stops under the run: nobody cancels it
    """
)


@pytest.mark.parametrize(
    ("how", "warning"),
    [
        ("asyncio.run", "was cancelled while still feeding"),
        ("run_until_complete", "the process exits while an Xqueue"),
    ],
)
async def test_xqute_style_feeding_never_stopped_warns(
    workdir: Path, tmp_path: Path, how: str, warning: str
) -> None:
    script = anyio.Path(tmp_path / "left.py")
    await script.write_text(LEFT_FEEDING)
    root = str(Path(__file__).parent.parent)
    done = await anyio.run_process(
        [sys.executable, str(script), str(workdir), how], env={**os.environ, "PYTHONPATH": root}
    )
    assert warning in done.stderr.decode(), done.stderr


# -- on a real cluster -----------------------------------------------------------------------------
@pytest.fixture
def cancel_after() -> Iterator[list[Job]]:
    yield from remove_after("scancel")


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
async def test_on_slurm_shell_lines_checks_and_polling_hooks(
    workdir: Path, cancel_after: list[Job]
) -> None:
    outputs, polls = Outputs(), Polls()
    opts = {
        "prescript": 'export OUT="$XQUEUE_JOB_DIR/out"',
        "postscript": 'echo "post $XQUEUE_JOB_RC"',
    }
    q = cluster_queue(
        "slurm",
        SLURM_FAST,
        workdir,
        scheduler_opts=opts,
        plugins=[outputs, polls, CmdHooks()],
        error_strategy="retry",
        num_retries=1,
    )
    job = await q.feed(["sh", "-c", '[ "$XQUEUE_JOB_ATTEMPT" -ge 2 ] && touch "$OUT"; ' + TICKING])
    cancel_after.append(job)
    with anyio.fail_after(90):
        await q.run_until_complete()
    assert job.status is S.FINISHED and job.attempt == 2, job.reason
    assert outputs.checked == [(0, 1), (0, 2)]  # the first attempt left no output
    out = await read_text(job.stdout_path)
    assert out == "init\nprep 2\n" + "".join(f"{i}\n" for i in range(1, 9)) + "post 0\nend 0\n"
    assert 1 <= len(polls.batches) <= q.statistics().ticks
    assert any(0 < len(tail) < len(out) for *_, tail in polls.each)
