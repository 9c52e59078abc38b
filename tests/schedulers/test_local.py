"""The local scheduler against real processes."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.helpers import cancellable_run, is_alive, process_alive, read_text
from xqueue import Job, JobStatus, SchedulerError, Xqueue
from xqueue.records import WorkdirReader
from xqueue.scheduler import JobState
from xqueue.schedulers import _shepherd_link
from xqueue.schedulers import local as local_module
from xqueue.schedulers._proc import boot_id, job_dir_in, job_dirs_of_processes, start_ticks
from xqueue.schedulers.local import LocalScheduler
from xqueue.workdir import Workdir

pytestmark = pytest.mark.anyio

PY = sys.executable


async def read(path: str) -> str:
    return await anyio.Path(path).read_text()


async def run_one(workdir: Path, cmd: object, **kw: object) -> Job:
    q = Xqueue(workdir=workdir, error_strategy="ignore", **kw)  # type: ignore[arg-type]
    job = await q.feed(cmd)  # type: ignore[arg-type]
    await q.run_until_complete()
    return job


async def test_a_shepherd_that_reads_a_batch_slowly_is_not_taken_for_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shepherd reads a batch as it starts its jobs: 3,000 take it over a second, a
    slow disk far more. A bound on the whole send (meant for a shepherd that reads
    nothing) failed such a run with "the shepherd is gone"; the bound is on a wait
    without progress. The shepherd here is a thread reading 4 KiB every 50 ms."""
    import socket
    import threading
    import time
    from types import SimpleNamespace

    from xqueue.schedulers import _shepherd_link

    monkeypatch.setattr(_shepherd_link, "_SEND_WAIT", 1.0)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ours.setblocking(False)
    size, got = 200_000, []

    def slow_reader() -> None:
        while sum(got) < size:
            got.append(len(theirs.recv(4096)))
            time.sleep(0.05)

    class Frame:
        def frame(self, key: int) -> bytes:
            return b"x" * size

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    link = _shepherd_link.ShepherdLink(SimpleNamespace(pid=0), ours)  # type: ignore[arg-type]
    try:
        started = time.monotonic()
        with anyio.fail_after(60):
            await link.spawn([Frame()])  # type: ignore[list-item]
        assert time.monotonic() - started > 1.0  # longer than the bound, all in all
        assert link.failure() is None
        await anyio.to_thread.run_sync(reader.join, 30)
        assert sum(got) == size
    finally:
        ours.close()
        theirs.close()


async def test_list_command_reaches_program_exactly(workdir: Path) -> None:
    args = ["print('hi')", "$HOME", "`whoami`", "a  b", "'q'", '"dq"', "; rm -rf /", ""]
    job = await run_one(
        workdir, [PY, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *args]
    )
    assert job.status is JobStatus.FINISHED, await read(job.stderr_path)
    assert json.loads(await read(job.stdout_path)) == args


async def test_python_dash_c_runs(workdir: Path) -> None:
    job = await run_one(workdir, ["python3", "-c", 'print("hi there")'])
    assert await read(job.stdout_path) == "hi there\n"
    assert await read(job.stderr_path) == ""


async def test_string_command_runs_in_a_shell(workdir: Path) -> None:
    job = await run_one(workdir, "echo $((1 + 2)) | tr 3 X; echo err >&2")
    assert await read(job.stdout_path) == "X\n"
    assert await read(job.stderr_path) == "err\n"


@pytest.mark.parametrize("opts", [{}, {"prescript": "echo pre"}])
async def test_a_shell_command_too_long_for_exec_runs_from_a_script(
    workdir: Path, opts: dict[str, str]
) -> None:
    """Over 128 KiB, ``sh -c -- COMMAND`` failed to start ("Argument list too long"),
    where every other backend runs the command from a script: here too now, with the
    run's shell lines around it, and the environment as for any job."""
    canary = workdir.parent / "canary"
    word = f"$(touch {canary})'\"\\"
    command = f"printf %s {shlex.quote(word * 40_000)} | wc -c; echo $XQUEUE_JOB_INDEX"
    job = await run_one(workdir, command, scheduler_opts=opts)
    assert job.status is JobStatus.FINISHED, await read(job.stderr_path)
    pre = "pre\n" if opts else ""
    assert await read(job.stdout_path) == f"{pre}{len(word) * 40_000}\n0\n"
    assert not await anyio.Path(canary).exists()


async def test_an_argument_too_long_for_exec_fails_saying_so(workdir: Path) -> None:
    """No program can get one argument over 128 KiB, from a script or not: exec's error."""
    job = await run_one(workdir, ["echo", "a" * 200_000])
    assert job.status is JobStatus.FAILED
    assert "Argument list too long" in job.reason


async def test_envs_and_job_variables_reach_the_job(workdir: Path) -> None:
    q = Xqueue(workdir=workdir)
    job = await q.feed("echo $GREETING $XQUEUE_JOB_INDEX; pwd", envs={"GREETING": "hello $HOME"})
    await q.run_until_complete()
    out = (await read(job.stdout_path)).splitlines()
    assert out[0] == "hello $HOME 0"
    assert out[1] == str(await anyio.Path.cwd())


async def test_cwd_option(workdir: Path, tmp_path: Path) -> None:
    job = await run_one(workdir, ["pwd"], scheduler_opts={"cwd": str(tmp_path)})
    assert (await read(job.stdout_path)).strip() == str(tmp_path)


async def test_a_working_directory_gone_during_the_run_is_named_as_the_cause(
    workdir: Path, tmp_path: Path
) -> None:
    """The folder ``cwd`` names is checked as the run opens; one removed since failed
    its jobs with "could not start '/bin/sh': No such file or directory", which sent
    the user after the shell. The failure names the folder now."""
    gone = tmp_path / "d\nx"
    await anyio.Path(gone).mkdir()
    q = Xqueue(workdir=workdir, forks=1, error_strategy="ignore", scheduler_opts={"cwd": str(gone)})
    first = await q.feed(["rmdir", str(gone)])
    second = await q.feed("pwd")
    await q.run_until_complete()
    assert first.status is JobStatus.FINISHED
    assert second.status is JobStatus.FAILED
    assert second.reason == (
        f"submission failed: could not start '/bin/sh': cannot enter its working directory "
        f"{str(gone)!r}: No such file or directory"
    )


async def test_return_code_and_status_are_recorded(workdir: Path) -> None:
    job = await run_one(workdir, "echo bad >&2; exit 3")
    assert job.status is JobStatus.FAILED
    assert job.rc == 3
    record = await anyio.to_thread.run_sync(WorkdirReader(workdir).last_record, job.dir)
    assert record is not None and record["status"] == "failed" and record["rc"] == 3
    assert await read(job.stderr_path) == "bad\n"


async def test_job_killed_by_signal_reports_128_plus_the_signal(workdir: Path) -> None:
    # As the shell and every batch backend report it (the job runs under an sh wrapper
    # that records its return code), and the same whether a controller watched or not.
    job = await run_one(workdir, "kill -9 $$")
    assert job.status is JobStatus.FAILED
    assert job.rc == 128 + signal.SIGKILL
    reader = WorkdirReader(workdir)
    recorded = await anyio.to_thread.run_sync(
        reader.exit_codes, {(os.path.basename(job.dir), 1): (str(job.jid).partition("@")[0], 0.0)}
    )
    assert recorded == {(os.path.basename(job.dir), 1): 128 + signal.SIGKILL}


async def test_a_job_folder_holds_only_what_the_job_wrote(workdir: Path) -> None:
    """The controller's records (spec, states, exit codes) are lines in the workdir's
    append-only files: a job costs no file of the controller's own, on a disk where
    creating one costs a metadata round trip."""
    job = await run_one(workdir, "echo out; echo err >&2")
    assert sorted([p.name async for p in anyio.Path(job.dir).iterdir()]) == [
        "job.1.stderr",
        "job.1.stdout",
    ]
    spec = await anyio.to_thread.run_sync(WorkdirReader(workdir).spec, os.path.basename(job.dir))
    assert spec is not None and spec["command"] == job.command
    files = {p.name async for p in anyio.Path(workdir).iterdir()}
    assert {"journal.jsonl", "specs.jsonl", "exits.jsonl"} <= files


async def _wait_for_file(path: Path, timeout: float = 10) -> str:
    file = anyio.Path(path)
    with anyio.fail_after(timeout):
        while not (await file.exists() and (await file.read_text()).strip()):
            await anyio.sleep(0.02)
    return (await file.read_text()).strip()


def _exit_recorded(workdir: Path, folder: str) -> None:
    """Until the shepherd has reaped the job and recorded its exit (it tells the
    controller right after): blocking, so the controller has not heard of it yet."""
    deadline = time.monotonic() + 20
    exits = workdir / "exits.jsonl"
    while not (exits.exists() and f'"dir": "{folder}"' in exits.read_text()):
        assert time.monotonic() < deadline, "the job's exit was never recorded"
        time.sleep(0.01)


@pytest.mark.blocking_allowed("holds the loop so the controller hears of the exit after the kill")
async def test_a_kill_of_a_job_that_already_exited_0_leaves_it_finished(
    workdir: Path, tmp_path: Path
) -> None:
    """Its exit reaped, not yet heard of: the kill found its group gone and said nothing,
    so the job was recorded KILLED with rc 0, and the next run ran a success again."""
    started = tmp_path / "started"
    async with Xqueue(workdir=workdir, error_strategy="ignore") as q:
        job = await q.feed(f"touch {started}; while [ -e {started} ]; do sleep 0.01; done")
        with anyio.fail_after(20):
            while not await anyio.Path(started).exists():
                await anyio.sleep(0.01)
        await anyio.Path(started).unlink()  # it exits 0 now
        _exit_recorded(workdir, os.path.basename(job.dir))
        assert not await q.kill(job)  # nothing to kill: it had ended
        await job.wait()
    assert (job.status, job.rc, job.reason) == (JobStatus.FINISHED, 0, "")


@contextlib.contextmanager
def _shepherd_stopped(q: Xqueue) -> Iterator[None]:
    """The run's shepherd stopped (as a busy one is slow): a job that exits stays a
    zombie, unreaped, until it goes on."""
    shepherd = q.scheduler._link.proc.pid  # type: ignore[attr-defined]
    os.kill(shepherd, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(shepherd, signal.SIGCONT)


async def _finished_and_its_child_ended(job: Job, child: int) -> None:
    """The job ends with its own success, and what it left in its group is ended."""
    with anyio.fail_after(30):
        await job.wait()
    assert (job.status, job.rc, job.reason) == (JobStatus.FINISHED, 0, "")
    with anyio.fail_after(10):
        while await is_alive(child):
            await anyio.sleep(0.05)


async def test_a_kill_of_a_job_whose_shell_exited_leaves_it_finished_and_its_group_ended(
    workdir: Path, tmp_path: Path
) -> None:
    """Its shell exited 0, not yet reaped (the shepherd stopped here, as a busy one is
    slow): the kill is not sent, the job finished, and what it left in its group is
    ended by the shepherd as it reaps (told it was being stopped, it left it running)."""
    go, child_file = tmp_path / "go", tmp_path / "child"
    async with Xqueue(workdir=workdir, error_strategy="ignore") as q:
        job = await q.feed(
            f"sleep 300 & echo $! > {child_file}; until [ -e {go} ]; do sleep 0.01; done"
        )
        child = int(await _wait_for_file(child_file))
        leader = q.scheduler._tickets[job].pid  # type: ignore[attr-defined]
        with _shepherd_stopped(q):
            await anyio.Path(go).touch()
            with anyio.fail_after(20):
                while await is_alive(leader):  # a zombie counts as dead
                    await anyio.sleep(0.01)
            assert not await q.kill(job)  # it had ended: nothing to kill
        await _finished_and_its_child_ended(job, child)


async def test_a_job_whose_shell_exits_as_its_kill_is_sent_keeps_its_own_end(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its shell exits 0 after the kill looked at it and before its group is signalled
    (a stop that ends many jobs awaits the shepherd in between): signalled as a zombie,
    it was recorded KILLED with rc 0, and the next run ran a success again (an
    adversarial trial's Ctrl-C hit it 1 time in 4 to 15). It is looked at again as it
    is signalled. Here it exits while the first look runs, the shepherd stopped so
    it stays unreaped. What it left in its group, a child that ignores SIGTERM, is still
    ended by the kill (the shepherd was told the job is being stopped)."""
    go, child_file = tmp_path / "go", tmp_path / "child"
    async with Xqueue(
        workdir=workdir, error_strategy="ignore", scheduler_opts={"kill_grace": 1}
    ) as q:
        job = await q.feed(
            f"sh -c \"trap '' TERM; sleep 300\" & echo $! > {child_file}; "
            f"echo up > {tmp_path}/up; until [ -e {go} ]; do sleep 0.01; done"
        )
        await _wait_for_file(tmp_path / "up")
        child = int(await _wait_for_file(child_file))
        leader = q.scheduler._tickets[job].pid  # type: ignore[attr-defined]

        def exits_once_looked_at(pids: dict[Job, int]) -> list[Job]:
            go.touch()
            deadline = time.monotonic() + 20
            while start_ticks(leader) is not None:  # a zombie has none
                assert time.monotonic() < deadline
                time.sleep(0.01)
            return []  # what the look said, a moment before

        monkeypatch.setattr(local_module, "exited", exits_once_looked_at)
        with _shepherd_stopped(q):
            assert not await q.kill(job)  # it had ended: nothing was killed
        await _finished_and_its_child_ended(job, child)


async def test_kill_reaches_the_whole_process_group(workdir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    async with Xqueue(workdir=workdir, error_strategy="ignore") as q:
        # the job forks a grandchild; killing must take both down
        job = await q.feed(f"sleep 60 & echo $! > {pidfile}; wait")
        grandchild = int(await _wait_for_file(pidfile))
        assert await q.kill(job)
        await job.wait()
    assert job.status is JobStatus.KILLED
    # Signalled with its group; the kernel takes it down a moment later under load.
    with anyio.fail_after(5):
        while await anyio.to_thread.run_sync(process_alive, grandchild):
            await anyio.sleep(0.02)
    record = await anyio.to_thread.run_sync(WorkdirReader(workdir).last_record, job.dir)
    assert record is not None and record["status"] == "killed"


async def test_what_a_job_leaves_running_in_its_group_ends_with_it(
    workdir: Path, tmp_path: Path
) -> None:
    """A job that starts ``cmd &`` and exits has ended: what it left in its group, even
    a process that ignores SIGTERM, is ended with it (as Slurm ends a step's processes),
    instead of running on untracked into a later attempt. One that left the group
    (``setsid``) is no longer the job's and is left alone."""
    left, escaped = tmp_path / "left", tmp_path / "escaped"
    q = Xqueue(workdir=workdir, error_strategy="ignore")
    job = await q.feed(
        f"sh -c \"trap '' TERM; echo \\$\\$ > {left}; exec sleep 60\" & "
        f"setsid sh -c 'echo $$ > {escaped}; exec sleep 60' & "
        f"while [ ! -s {left} ] || [ ! -s {escaped} ]; do sleep 0.01; done; echo done"
    )
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED and job.rc == 0
    assert await anyio.Path(job.stdout_path).read_text() == "done\n"
    child, other = int(await _wait_for_file(left)), int(await _wait_for_file(escaped))
    try:
        with anyio.fail_after(5):
            while await anyio.to_thread.run_sync(process_alive, child):
                await anyio.sleep(0.02)
        assert await anyio.to_thread.run_sync(process_alive, other)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(other, signal.SIGKILL)


async def test_a_stopped_job_whose_shell_traps_sigterm_and_exits_gives_its_children_their_grace(
    workdir: Path, tmp_path: Path
) -> None:
    """A leader that handles SIGTERM by exiting (a wrapper that forwards it) looked like
    a job that ended by itself, and its group was SIGKILLed at once: a child saving its
    work on SIGTERM lost the grace kill_grace promises."""
    saved, started = tmp_path / "saved", tmp_path / "started"
    script = (
        "trap 'exit 143' TERM\n"
        f'sh -c \'trap "sleep 1; echo saved > {saved}; exit 0" TERM; '
        f"echo 1 > {started}; sleep 30 & wait' &\n"
        "wait\n"
    )
    opts = {"kill_grace": 5}
    async with Xqueue(workdir=workdir, error_strategy="ignore", scheduler_opts=opts) as q:
        job = await q.feed(["sh", "-c", script])
        await _wait_for_file(started)
        assert await q.kill(job)
        with anyio.fail_after(15):
            await job.wait()
    assert job.status is JobStatus.KILLED
    assert await _wait_for_file(saved) == "saved"


async def test_a_job_whose_shell_is_killed_from_outside_leaves_nothing_running(
    workdir: Path, tmp_path: Path
) -> None:
    """SIGTERM from outside xqueue (a user's ``kill``) ended the leader; what it left in
    its group ran on while the next attempt ran."""
    pidfile = tmp_path / "pid"
    q = Xqueue(workdir=workdir, error_strategy="retry", num_retries=1)
    job = await q.feed(
        f'sleep 60 & echo $! >> {pidfile}; [ "$XQUEUE_JOB_ATTEMPT" = 2 ] || kill -TERM $$'
    )
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED and job.attempt == 2
    pids = [int(p) for p in (await anyio.Path(pidfile).read_text()).split()]
    with anyio.fail_after(5):
        while any([await anyio.to_thread.run_sync(process_alive, pid) for pid in pids]):
            await anyio.sleep(0.02)


async def test_kill_escalates_to_sigkill_after_grace(workdir: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    opts = {"kill_grace": 0.3}
    async with Xqueue(workdir=workdir, error_strategy="ignore", scheduler_opts=opts) as q:
        job = await q.feed(["sh", "-c", f"trap '' TERM; echo 1 > {ready}; sleep 60"])
        await _wait_for_file(ready)
        start = time.monotonic()
        await q.kill(job)
        await job.wait()
    assert job.status is JobStatus.KILLED
    assert 0.25 < time.monotonic() - start < 5


async def test_kill_ends_what_the_shell_leaves_in_its_group(workdir: Path, tmp_path: Path) -> None:
    """A job's shell dies at once on SIGTERM; what it started lives on in its group. A
    child that ignores SIGTERM is SIGKILLed once kill_grace is over (it outlived jobs
    recorded killed, and a later run ran them again), and one that cleans up on SIGTERM
    is given that grace, though its shell is gone."""
    stubborn, graceful, cleaned = tmp_path / "stubborn", tmp_path / "graceful", tmp_path / "done"
    opts = {"kill_grace": 2}
    async with Xqueue(workdir=workdir, forks=2, error_strategy="ignore", scheduler_opts=opts) as q:
        jobs = [
            await q.feed(
                f"sh -c \"trap '' TERM; echo \\$\\$ > {stubborn}; exec sleep 60\"; echo after"
            ),
            await q.feed(
                f"sh -c \"trap 'sleep 0.5; echo clean > {cleaned}; exit 0' TERM; "
                f'echo \\$\\$ > {graceful}; while :; do sleep 0.05; done"; echo after'
            ),
        ]
        pids = [int(await _wait_for_file(path)) for path in (stubborn, graceful)]
        start = time.monotonic()
        for job in jobs:
            assert await q.kill(job)
        for job in jobs:
            await job.wait()
    assert [job.status for job in jobs] == [JobStatus.KILLED] * 2
    assert not any([await anyio.to_thread.run_sync(process_alive, pid) for pid in pids])
    assert time.monotonic() - start >= 1.5  # the stubborn child had its grace, then SIGKILL
    assert await anyio.Path(cleaned).read_text() == "clean\n"  # it cleaned up in its grace


async def test_a_kill_is_seen_through_when_the_run_is_cancelled_in_its_grace(
    workdir: Path, tmp_path: Path
) -> None:
    """Cancelled while a kill waited for a stubborn child, the run recorded the job
    killed and left the child alive."""
    pidfile = tmp_path / "pid"
    q = Xqueue(workdir=workdir, error_strategy="ignore", scheduler_opts={"kill_grace": 2})
    job = await q.feed(
        f"sh -c \"trap '' TERM; echo \\$\\$ > {pidfile}; exec sleep 60\"; echo after"
    )
    scope, run = cancellable_run(q)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            pid = int(await _wait_for_file(pidfile))
            tg.start_soon(q.kill, job)
            await anyio.sleep(0.8)  # the shell is gone, the child ignores SIGTERM
            scope.cancel()
    assert job.status is JobStatus.KILLED
    assert not await anyio.to_thread.run_sync(process_alive, pid)


def _start_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as fh:
        btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


async def earlier_controller(workdir: Path) -> tuple[Workdir, LocalScheduler]:
    """The workdir and the local scheduler of a controller about to die (see ``intended``)."""
    wd = Workdir(workdir)
    first = LocalScheduler()
    await first.open(wd)
    return wd, first


def intended(wd: Workdir, command: object) -> Job:
    """A job as the engine has it just before it submits: its folder made, the intent
    recorded (a controller that dies next leaves it to be looked up)."""
    job = Job(0, command)  # type: ignore[arg-type]
    wd.prepare(job, make=True)
    job.attempt, job.status = 1, JobStatus.SUBMITTING
    wd.record(job)
    return job


@pytest.mark.parametrize("stopped", ["reaping", "starting"])
async def test_a_job_an_earlier_shepherd_has_not_handled_yet_is_not_run_again(
    workdir: Path, tmp_path: Path, stopped: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A controller died between starting a job and recording its id; its shepherd,
    still alive, was slow to reap the job once it exited ("reaping": a zombie has no
    environment to be found by) or to start it ("starting": the request sits in its
    socket). The next run looked the job up in between, found neither the process nor
    an exit code, and ran it a second time. Each time the shepherd is stopped
    (SIGSTOP) for the moment that was missed, then let go."""
    ran = tmp_path / "ran"
    command = f"echo $$ >> {shlex.quote(str(ran))}"
    wd, first = await earlier_controller(workdir)
    shepherd = first._link.proc.pid  # type: ignore[union-attr]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.serve)
            early = intended(wd, command)
            if stopped == "starting":
                os.kill(shepherd, signal.SIGSTOP)
                with anyio.move_on_after(0.5):  # sent; its answer never comes
                    await first.submit_jobs([early])
            else:
                (jid,) = await first.submit_jobs([early])
                os.kill(shepherd, signal.SIGSTOP)
                pid = int(str(jid).partition("@")[0])
                with anyio.fail_after(10):
                    while await anyio.to_thread.run_sync(start_ticks, pid):  # a zombie yet?
                        await anyio.sleep(0.02)
            wd.unlock()  # the controller is gone; nothing of the job recorded
            tg.cancel_scope.cancel()
        q = Xqueue(workdir=workdir, error_strategy="ignore")
        job = await q.feed(command)
        async with anyio.create_task_group() as tg:
            tg.start_soon(q.run_until_complete)
            with anyio.fail_after(10):  # the run has looked the job up meanwhile
                while not any("looking it up failed" in r.message for r in caplog.records):
                    await anyio.sleep(0.05)
            os.kill(shepherd, signal.SIGCONT)
    finally:
        os.kill(shepherd, signal.SIGCONT)
        await first.aclose()
    assert (job.status, job.rc, job.attempt) == (JobStatus.FINISHED, 0, 1), job.reason
    assert len((await read(str(ran))).split()) == 1  # it ran once


async def test_an_earlier_job_that_emptied_its_environment_is_found_and_followed(
    workdir: Path, tmp_path: Path
) -> None:
    """A job of a dead run that ran `env -i ...` carries no XQUEUE_JOB_DIR: taken for a
    job being started, it kept every lookup unanswered for two minutes, then the jobs
    were left unrun; adopted by its id, it was declared dead while it ran ("exit status
    unknown"). It is found by the output files its shepherd opened for it."""
    ran = tmp_path / "ran"
    # A list: the job's own process is env, which execs sh with an empty environment
    # (a string would run under a shell of the shepherd's, which keeps its own).
    command = ["env", "-i", "/bin/sh", "-c", f"echo $$ >> {shlex.quote(str(ran))}; sleep 3"]
    wd, first = await earlier_controller(workdir)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.serve)
            await first.submit_jobs([intended(wd, command)])  # dies before the id
            wd.unlock()
            tg.cancel_scope.cancel()
        q = Xqueue(workdir=workdir, error_strategy="ignore")
        job = await q.feed(command)
        with anyio.fail_after(30):
            await q.run_until_complete()
    finally:
        await first.aclose()
    assert (job.status, job.rc, job.attempt) == (JobStatus.FINISHED, 0, 1), job.reason
    (pid,) = (await read(str(ran))).split()  # it ran once
    # Adopted while it ran, by its process (not collected from exits.jsonl once the
    # lookups, unanswered while it ran, could at last tell it had ended: "unknown").
    assert str(job.jid).partition("@")[0] == pid


async def test_liveness_is_not_fooled_by_pid_reuse_or_a_planted_id(workdir: Path) -> None:
    job = await run_one(workdir, ["true"])
    sched = LocalScheduler()
    # It says "ready" once it runs: right after an exec its environment may still read
    # as empty from /proc, and the marker check would miss it.
    marked = await anyio.open_process(
        [PY, "-c", "import time; print('ready', flush=True); time.sleep(30)"],
        env={**os.environ, "XQUEUE_JOB_DIR": job.dir},
        stdin=subprocess.DEVNULL,
    )
    start_of = partial(anyio.to_thread.run_sync, _start_of)
    try:
        assert marked.stdout is not None
        ready = BufferedByteReceiveStream(marked.stdout)
        assert await ready.receive_until(b"\n", 100) == b"ready"
        # The job's own process (it carries the job's folder), at its own start time.
        job.jid = f"{marked.pid}@{await start_of(marked.pid):.2f}"  # as written before
        assert await sched.job_is_running(job)
        ticks = await anyio.to_thread.run_sync(start_ticks, marked.pid)
        assert ticks is not None
        since_boot = ticks / os.sysconf("SC_CLK_TCK")  # as written now
        job.jid = f"{marked.pid}@b{since_boot:.2f}"
        assert await sched.job_is_running(job)
        job.jid = f"{marked.pid}@b{since_boot:.2f}~{boot_id()}"  # and this boot's
        assert await sched.job_is_running(job)
        # The same pid with a start time that is not its own: a reused pid. And the same
        # pid and start of another boot: after a reboot, a process of this boot has them.
        for jid in (
            f"{marked.pid}@{time.time() - 3600:.2f}",
            f"{marked.pid}@b{since_boot - 60}",
            f"{marked.pid}@b{since_boot:.2f}~00000000",
        ):
            job.jid = jid
            assert not await sched.job_is_running(job)
            assert not await sched.recover_job(job)
        # A planted journal line naming an unrelated live process at its real start time.
        job.jid = f"{os.getpid()}@{await start_of(os.getpid()):.2f}"
        assert not await sched.job_is_running(job)
        assert not await sched.recover_job(job)
    finally:
        marked.kill()
        await marked.wait()
        await marked.aclose()


async def test_forks_bounds_concurrency(workdir: Path) -> None:
    from tests.helpers import Recorder

    class Active(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.now = self.peak = 0

        def on_job_started(self, job: Job) -> None:  # type: ignore[override]
            self.now += 1
            self.peak = max(self.peak, self.now)

        def on_job_succeeded(self, job: Job) -> None:  # type: ignore[override]
            self.now -= 1

    from xqueue import hookimpl

    Active.on_job_started = hookimpl(Active.on_job_started)  # type: ignore[method-assign]
    Active.on_job_succeeded = hookimpl(Active.on_job_succeeded)  # type: ignore[method-assign]
    plugin = Active()
    q = Xqueue(workdir=workdir, forks=3, plugins=[plugin])
    for i in range(12):
        await q.feed(["sleep", f"0.0{i % 5}"])
    await q.run_until_complete()
    assert plugin.peak == 3
    assert q.statistics().counts == {"finished": 12}


async def test_many_jobs_complete(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, forks=32)
    for i in range(300):
        await q.feed(["sh", "-c", f"echo {i}"])
    await q.run_until_complete()
    assert q.statistics().counts == {"finished": 300}
    assert [await read(j.stdout_path) for j in q.jobs] == [f"{j.index}\n" for j in q.jobs]


# -- the shepherd ------------------------------------------------------------------------


async def test_jobs_start_with_default_signal_dispositions(workdir: Path) -> None:
    """The shepherd ignores the terminal's signals (and Python ignores SIGPIPE and SIGXFSZ):
    none of that may reach a job, or `yes | head` would not end and a kill's SIGTERM
    would be ignored."""
    job = await run_one(workdir, ["grep", "^SigIgn:", "/proc/self/status"])
    assert job.status is JobStatus.FINISHED
    mask = int((await read_text(job.stdout_path)).split()[1], 16)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ):
        assert not mask & (1 << (sig - 1)), f"{sig.name} is ignored in the job"


async def test_a_jobs_end_is_reported_by_its_shepherd_without_a_task_per_job(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each job's end comes with its shepherd's answer (``watch_end``): a task awaiting
    each running job cost the controller more than a short job's record. Short jobs
    end before the engine hears they started, long ones after; both are reported."""
    from xqueue import engine as engine_module

    awaited: list[int] = []
    await_job = engine_module.Engine._await_job

    async def counted(self: engine_module.Engine, job: Job) -> None:
        awaited.append(job.index)
        await await_job(self, job)

    monkeypatch.setattr(engine_module.Engine, "_await_job", counted)
    q = Xqueue(workdir=workdir, forks=4, error_strategy="ignore")
    commands = ["true", "exit 3", "sleep 0.3", "sleep 0.3; exit 5", "kill -9 $$"] * 4
    jobs = [await q.feed(c) for c in commands]
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert [(j.status, j.rc) for j in jobs[:5]] == [
        (JobStatus.FINISHED, 0),
        (JobStatus.FAILED, 3),
        (JobStatus.FINISHED, 0),
        (JobStatus.FAILED, 5),
        (JobStatus.FAILED, 137),
    ]
    assert [(j.status, j.rc) for j in jobs] == [(j.status, j.rc) for j in jobs[:5]] * 4
    assert awaited == []


async def test_a_set_flag_is_waited_for_without_a_yield_but_not_past_a_cancellation() -> None:
    """A ticket's start, answered before it is awaited, costs no turn of the loop; but a
    cancelled submission still stops at it (its tickets then go to ``_unanswered``, and
    a stop tells the shepherd before it signals them)."""
    flag = _shepherd_link.Flag()
    flag.set()
    await flag.wait()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await flag.wait()
        pytest.fail("a cancelled wait returned")
    assert scope.cancelled_caught


def test_a_tickets_end_is_reported_once_whatever_comes_after() -> None:
    """An exit line read after the link was lost (``end(None)``) is no second end."""
    ticket, heard = _shepherd_link.Ticket(), []
    ticket.watcher = heard.append
    ticket.end(None)
    ticket.end(3)
    assert heard == [None] and ticket.rc == 3


async def test_a_wait_job_patched_on_the_instance_is_awaited(workdir: Path) -> None:
    """A scheduler whose ``wait_job`` is replaced (a subclass's, or a patch on the object)
    waits its own way: its jobs' ends are not taken from the shepherd's answers."""
    q = Xqueue(workdir=workdir, error_strategy="ignore")
    own, called = q.scheduler.wait_job, []

    async def wait_job(job: Job) -> JobState:
        called.append(job.index)
        await own(job)
        return JobState(JobStatus.FAILED, 99, "its own way")

    q.scheduler.wait_job = wait_job  # type: ignore[method-assign]
    job = await q.feed(["true"])
    await q.run_until_complete()
    assert called == [0] and (job.status, job.rc) == (JobStatus.FAILED, 99)


async def test_a_dead_shepherd_stops_the_run_and_leaves_nothing_running(
    workdir: Path, tmp_path: Path
) -> None:
    q = Xqueue(workdir=workdir, forks=3, scheduler_opts={"kill_grace": 1})
    jobs = [await q.feed(f"echo $$ > {tmp_path}/{i}; exec sleep 30") for i in range(3)]

    async def kill_the_shepherd() -> None:
        while not all(j.status is JobStatus.RUNNING for j in jobs):
            await anyio.sleep(0.02)
        while not all([await anyio.Path(tmp_path / str(i)).exists() for i in range(3)]):
            await anyio.sleep(0.02)
        os.kill(q.scheduler._link.proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_the_shepherd)
            with pytest.raises(SchedulerError, match=r"shepherd process \(pid \d+\) is gone"):
                await q.run_until_complete()
    pids = [int(await read_text(tmp_path / str(i))) for i in range(3)]
    assert not [pid for pid in pids if process_alive(pid)]
    assert all(j.status is JobStatus.KILLED for j in jobs), [j.status for j in jobs]


# The command line where the shepherd cannot be started: sys.executable is what the
# launch runs, here a path with nothing at it (an interpreter another user cannot read,
# or a process or descriptor limit, fail the same launch).
NO_SHEPHERD = """
import sys
from xqueue.cli import console_main
sys.executable = sys.argv[1]
sys.argv[1:] = sys.argv[2:]
sys.exit(console_main())
"""


def test_a_shepherd_that_cannot_start_is_a_one_line_error_and_loses_no_job(
    tmp_path: Path,
) -> None:
    """It was a traceback out of subprocess.Popen, exit 1 ("a job failed"). Now a line
    naming the shepherd, what runs it and why, exit 2; the job never started and runs
    once when the next run can start its shepherd."""
    wd, missing = tmp_path / "wd", tmp_path / "no-python"
    mark = tmp_path / "ran"
    jobs = f"echo once >> {shlex.quote(str(mark))}\n"
    argv = [sys.executable, "-c", NO_SHEPHERD, str(missing), "run", "-w", str(wd), "--no-progress"]
    out = subprocess.run(argv, input=jobs, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert out.stderr == (
        f"error: local: cannot start the run's shepherd (the process that starts its jobs and "
        f"records their exits, run by {missing}): [Errno 2] No such file or directory: "
        f"{str(missing)!r}\n"
    )
    assert not mark.exists()
    argv = [sys.executable, "-m", "xqueue", "run", "-w", str(wd), "--no-progress"]
    again = subprocess.run(argv, input=jobs, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again
    assert mark.read_text() == "once\n"


def test_a_process_start_read_back_from_proc_is_its_start_on_the_boot_clock() -> None:
    """A job is known by its pid and start (``pid@bSTART``), and a later run takes a live
    process for the job's own only if /proc puts its start within 2 s of that. The start
    read back once used /proc/stat's btime, whole seconds cut: up to a second early,
    which a slow spawn on a loaded machine pushed past 2 s (jobs left running were run
    again beside themselves in a full test run). It is as exact as the clock's ticks."""
    assert local_module._SAME_PROCESS_WINDOW == 2.0
    for _ in range(5):
        before = time.clock_gettime(time.CLOCK_BOOTTIME)
        proc = subprocess.Popen(["sleep", "5"])
        after = time.clock_gettime(time.CLOCK_BOOTTIME)
        try:
            started = local_module._since_boot(proc.pid)
            assert started is not None
            assert before - 0.03 <= started <= after + 0.03, (before, started, after)
        finally:
            proc.kill()
            proc.wait()


async def jobs_with_ids(q: Xqueue, n: int) -> list[Job]:
    jobs = [await q.feed(["sleep", "30"]) for _ in range(n)]
    with anyio.fail_after(30):
        while not all(job.jid for job in jobs):
            await anyio.sleep(0.02)
    return jobs


async def test_a_job_id_gives_the_start_its_process_has_in_proc(workdir: Path) -> None:
    """The shepherd names a job's start by the clock before it spawns the job, whose
    spawn returns only once the job has exec'd: the start in the id and the one /proc
    gives the process agree to a tick or two."""
    async with Xqueue(workdir=workdir, forks=4) as q:
        for job in await jobs_with_ids(q, 4):
            parsed = local_module._parse_jid(job.jid)
            assert parsed is not None and job.jid is not None and "@b" in job.jid
            assert job.jid.endswith(f"~{boot_id()}") and len(boot_id()) == 8
            pid, start = parsed
            proc_start = await anyio.to_thread.run_sync(local_module._since_boot, pid)
            assert proc_start is not None and abs(proc_start - start) < 0.1, job.jid
            await q.kill(job)


def test_a_job_is_found_by_its_own_variable_not_by_the_text_in_another() -> None:
    """A job whose id was never recorded is found by XQUEUE_JOB_DIR in its environment.
    A search for that text found it inside a variable placed before it (exported in the
    controller's shell, so in every job's environment): every job was taken for the one
    the decoy named, and none for its own (run again while it ran on)."""
    decoy = {"OLD_XQUEUE_JOB_DIR": "/elsewhere/5-x", "NOTE": "see XQUEUE_JOB_DIR=/elsewhere/6-y"}
    env = {**decoy, **os.environ, "XQUEUE_JOB_DIR": "/wd/3-real"}
    proc = subprocess.Popen(["sleep", "30"], env=env, start_new_session=True)
    try:
        environ = b""
        deadline = time.monotonic() + 10
        while b"XQUEUE_JOB_DIR=/wd" not in environ and time.monotonic() < deadline:
            with open(f"/proc/{proc.pid}/environ", "rb") as fh:  # set once it has exec'd
                environ = fh.read()
        assert job_dir_in(environ) == b"/wd/3-real"
        found = job_dirs_of_processes()
        assert found.get("/wd/3-real") == proc.pid
        assert "/elsewhere/5-x" not in found and "/elsewhere/6-y" not in found
    finally:
        proc.kill()
        proc.wait()
    assert job_dir_in(b"XQUEUE_JOB_DIR=/a\0B=1") == b"/a"  # the first entry
    assert job_dir_in(b"A=1\0XQUEUE_JOB_DIR=") == b""
    assert job_dir_in(b"A=XQUEUE_JOB_DIR=/a") is None


async def test_a_shepherd_not_asked_for_the_boot_clock_speaks_as_before(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that imported xqueue before it was upgraded starts the shepherd file
    now on disk, without its new argument: that shepherd must answer in the form the
    old controller reads (seconds since the epoch; ``float("b1713.80")`` ended its run
    while the job ran on). Such ids are still known for the job's own."""
    from xqueue.schedulers import _shepherd_link

    monkeypatch.setattr(_shepherd_link, "BOOT_CLOCK", "")
    async with Xqueue(workdir=workdir, forks=2) as q:
        (job,) = await jobs_with_ids(q, 1)
        assert job.jid is not None and "@b" not in job.jid
        assert abs(float(job.jid.partition("@")[2]) - time.time()) < 30
        assert await LocalScheduler().job_is_running(job)
        await q.kill(job)


async def test_a_job_left_running_is_its_own_after_the_wall_clock_steps(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later run (another process, so the boot time is worked out again) finds a job
    an earlier run left running, though the wall clock stepped by minutes in between
    (NTP, a VM resumed). With a start in seconds since the epoch, the boot time worked
    out from the stepped clock moved the job's start by the step: the job was taken for
    gone, and run a second time beside itself."""
    async with Xqueue(workdir=workdir, forks=2) as q:
        jobs = await jobs_with_ids(q, 2)
        real_time = time.time
        for step in (-300.0, 300.0):
            monkeypatch.setattr(local_module, "_BOOT_TIME", None)
            monkeypatch.setattr(time, "time", lambda step=step: real_time() + step)
            later = LocalScheduler()  # no ticket: it knows the jobs by their ids alone
            assert [await later.job_is_running(job) for job in jobs] == [True, True]
        monkeypatch.undo()
        for job in jobs:
            await q.kill(job)


@pytest.mark.parametrize("tail", ["; sleep 3", ""], ids=["running", "ended"])
def test_a_job_found_by_its_folder_is_the_job_not_a_process_it_left_in_a_session_of_its_own(
    tmp_path: Path, tail: str
) -> None:
    """A controller killed right after it recorded a job's submission: the next run finds
    the job by XQUEUE_JOB_DIR. The job had left a process in a session of its own
    (``setsid cmd &``, a daemon, a nested ``xqueue run``), which carries the variable and
    leads its session too: taken for the job, the job's own exit (under its pid) was not
    its, the job failed as vanished, and the next run ran it a second time. Whether the
    job still runs (the session leader that started first is the job) or has ended (its
    end is in exits.jsonl: what is left is not the job)."""
    ran, jobs, wd = tmp_path / "ran.txt", tmp_path / "jobs.txt", tmp_path / "wd"
    left = f"sleep 9.37{len(tail)}"  # a name of its own, to find and end it afterwards
    jobs.write_text(f"setsid {left} </dev/null >/dev/null 2>&1 & echo ran >> {ran}{tail}\n")
    xq = [PY, "-m", "xqueue", "run", "-w", str(wd), str(jobs), "--no-progress"]
    try:
        first = subprocess.Popen(xq, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not ran.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the setsid'd process is started too
        first.kill()
        first.wait()
        # What a controller killed between the intent and the id leaves: no id.
        journal = wd / "journal.jsonl"
        lines = journal.read_text().splitlines(keepends=True)
        intent = next(i for i, line in enumerate(lines) if '"submitting"' in line)
        journal.write_text("".join(lines[: intent + 1]))
        for _ in range(2):  # the second run must find it done, not run it again
            out = subprocess.run(xq, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert "1 finished" in out.stderr, out.stderr
        assert ran.read_text() == "ran\n"
    finally:
        subprocess.run(["pkill", "-f", left], check=False)


TIME_NS = ["unshare", "-T", "--boottime", "86400", "--fork"]  # a boot clock a day ahead
LIVE = (
    "import sys; from xqueue.schedulers.local import live_local_jid; "
    "print(live_local_jid(sys.argv[1]))"
)
STARTS = """
import anyio, sys
from xqueue import Xqueue
async def main():
    async with Xqueue(workdir=sys.argv[1]) as q:
        job = await q.feed(["sleep", "30"])
        while not job.jid:
            await anyio.sleep(0.02)
        print(job.jid, flush=True)
        sys.stdin.read()
        await q.kill(job)
anyio.run(main)
"""


def _live_from(prefix: list[str], jid: str) -> str:
    out = subprocess.run([*prefix, PY, "-c", LIVE, jid], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr


def test_a_job_id_reads_the_same_from_another_time_namespace(tmp_path: Path) -> None:
    """The start in a job's id is counted from boot, and a time namespace moves the boot
    clock (and the starts /proc shows): a run resumed in one (a restored container) took
    every running job for gone, and ran it again. Both sides count in the machine's."""
    if subprocess.run([*TIME_NS, "true"], capture_output=True).returncode != 0:
        pytest.skip("no time namespaces here (unshare -T needs root and Linux 5.6)")
    for n, (starter, looker) in enumerate([([], TIME_NS), (TIME_NS, [])]):
        started = subprocess.Popen(
            [*starter, PY, "-c", STARTS, str(tmp_path / str(n))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert started.stdout is not None
            jid = started.stdout.readline().strip()
            assert "@b" in jid
            assert _live_from(looker, jid) == "True", (starter, jid)
        finally:
            started.communicate("", timeout=60)
