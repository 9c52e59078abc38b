"""A later run with the same workdir skips successes and re-adopts running jobs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.procs import job_processes
from xqueue import JobStatus, Xqueue, successes
from xqueue.records import WorkdirReader

pytestmark = pytest.mark.anyio


def counting(marker: Path, i: int, extra: str = "") -> str:
    """A job that appends a line to ``marker`` each time it really runs."""
    return f"echo {i} >> {marker}; {extra}"


async def run_all(workdir: Path, cmds: list[Any]) -> Xqueue:
    """A queue of ``cmds`` on ``workdir``, run to its end (failures ignored)."""
    q = Xqueue(workdir=workdir, error_strategy="ignore")
    for c in cmds:
        await q.feed(c)
    await q.run_until_complete()
    return q


async def test_second_run_skips_succeeded_and_reruns_failed(workdir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    flag = tmp_path / "fixed"
    cmds = [counting(marker, 0), counting(marker, 1, f"test -e {flag}"), counting(marker, 2)]

    q1 = await run_all(workdir, cmds)
    assert [j.status for j in q1.jobs] == [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.FINISHED]

    await anyio.Path(flag).write_text("")
    q2 = Xqueue(workdir=workdir, error_strategy="ignore")
    for c in cmds:
        await q2.feed(c)
    assert q2.jobs[0].status is JobStatus.FINISHED  # known before running
    await q2.run_until_complete()
    assert [j.status for j in q2.jobs] == [JobStatus.FINISHED] * 3
    assert q2.jobs[0].reason == "succeeded in an earlier run"
    ran = (await anyio.Path(marker).read_text()).split()
    assert sorted(ran) == ["0", "1", "1", "2"]  # only job 1 ran again
    folders = [p async for p in anyio.Path(workdir).iterdir() if await p.is_dir()]
    assert len(folders) == 3  # reused, none replaced


@pytest.mark.parametrize("index", ["indexed", "journal", "indexed-one-failed"])
async def test_a_resume_reads_the_workdir_off_the_event_loop(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, index: str
) -> None:
    """The first feed of a resume read the index of successes, or without one the
    journal and the specs (seconds for a million jobs), on the event loop: every other
    task of the application waited. With an index, so did the first job it did not
    vouch for (one that failed)."""
    failed = index == "indexed-one-failed"
    cmds = [["sh", "-c", "exit 3" if failed and i == 1 else "true", str(i)] for i in range(3)]
    await run_all(workdir, cmds)
    if index == "journal":
        await anyio.Path(workdir / "successes.idx").unlink()
    readers: list[str] = []

    def watched(name: str, read: Any) -> Any:
        def reading(*args: Any, **kwargs: Any) -> Any:
            if name != "_digest_once" or args[0]._digests is None:  # a read, not a look
                on_loop = threading.current_thread() is threading.main_thread()
                readers.append(name if on_loop else "")
            return read(*args, **kwargs)

        return reading

    monkeypatch.setattr(successes, "load", watched("the index", successes.load))
    for method in ("_index_winners", "_digest_once"):
        read = getattr(WorkdirReader, method)
        monkeypatch.setattr(WorkdirReader, method, watched(method, read))
    q2 = Xqueue(workdir=workdir, error_strategy="ignore")
    jobs = [await q2.feed(c) for c in cmds]
    await q2.run_until_complete()
    skipped = [j.reason == "succeeded in an earlier run" for j in jobs]
    assert skipped == [True, not failed, True]
    assert len(readers) == (1 if index == "indexed" else 3)  # each read once
    assert readers == [""] * len(readers), f"read on the event loop: {readers}"


async def test_same_command_maps_to_same_folder_other_command_does_not(workdir: Path) -> None:
    q1 = Xqueue(workdir=workdir)
    a = await q1.feed(["echo", "a"])
    await q1.run_until_complete()
    q2 = Xqueue(workdir=workdir)
    a2 = await q2.feed(["echo", "a"])
    assert a2.dir == a.dir and a2.status is JobStatus.FINISHED
    await q2.aclose()  # a fed queue holds the workdir until it runs or is closed
    q3 = Xqueue(workdir=workdir)
    b = await q3.feed(["echo", "a"], envs={"X": "1"})  # same index, different job
    assert b.status is JobStatus.QUEUED
    await q3.run_until_complete()
    assert [p.name async for p in anyio.Path(workdir).iterdir() if ".replaced-" in p.name]


async def test_a_changed_command_moves_the_old_folder_of_its_index_aside(workdir: Path) -> None:
    """A job list edited between runs: job 0's command, so its folder's name, changed.
    The old folder holds another job: it is moved aside, as a changed spec's is, so
    ``xqueue status`` counts one job 0 and ``logs 0`` shows the new one's output (it
    used to show the old job's, and a status listed two job 0s). Links and files named
    like job folders are left alone."""
    q1 = Xqueue(workdir=workdir, forks=2)
    old = [await q1.feed(["echo", "old-zeta"]), await q1.feed(["echo", "same"])]
    await q1.run_until_complete()
    await anyio.Path(workdir / "2-planted").symlink_to(old[1].dir)
    q2 = Xqueue(workdir=workdir, forks=2)
    new = [await q2.feed(["echo", "new-alpha"]), await q2.feed(["echo", "same"])]
    await q2.run_until_complete()
    assert new[1].dir == old[1].dir and new[1].reason == "succeeded in an earlier run"
    assert new[0].dir != old[0].dir and new[0].attempt == 1
    names = sorted([p.name async for p in anyio.Path(workdir).iterdir()])
    zeros = [n for n in names if n.startswith("0-")]
    assert len(zeros) == 2 and zeros[0] == os.path.basename(new[0].dir)
    assert zeros[1].startswith(os.path.basename(old[0].dir) + ".replaced-")
    assert "2-planted" in names
    reader = WorkdirReader(workdir)
    folders = await anyio.to_thread.run_sync(reader.folders)
    assert folders == [os.path.basename(job.dir) for job in new]
    assert await anyio.Path(reader.path / folders[0] / "job.1.stdout").read_text() == "new-alpha\n"


CONTROLLER = textwrap.dedent(
    """
    import anyio, sys
    from xqueue import Xqueue

    async def main(workdir, marker, n):
        q = Xqueue(workdir=workdir, forks=3, error_strategy="ignore")
        for i in range(n):
            await q.feed(f"echo {i} >> {marker}; sleep 1.5")
        await q.run_until_complete()
        print("statuses", [j.status.value for j in q.jobs], flush=True)

    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


async def test_controller_killed_mid_run_loses_nothing_and_runs_nothing_twice(
    workdir: Path, tmp_path: Path
) -> None:
    marker = anyio.Path(tmp_path / "ran")
    script = anyio.Path(tmp_path / "controller.py")
    await script.write_text(CONTROLLER)
    n = 6
    argv = [sys.executable, str(script), str(workdir), str(marker), str(n)]
    first = await anyio.open_process(argv, stdin=None, stdout=None, stderr=None)
    # Wait until the first three jobs run, then kill the controller without warning.
    deadline = time.monotonic() + 20
    while not (await marker.exists() and len((await marker.read_text()).split()) >= 3):
        assert time.monotonic() < deadline, "jobs never started"
        await anyio.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    await first.wait()
    await first.aclose()
    # The kill may land between a job's start and the record of its pid, so a job can
    # be running with no record yet: the next run must find it all the same.
    records = (await anyio.to_thread.run_sync(WorkdirReader(workdir).journal)).values()
    assert len(records) <= 3
    assert all(r["status"] in ("submitting", "submitted") for r in records)
    assert len((await marker.read_text()).split()) == 3  # forks=3: no more than three started

    q = Xqueue(workdir=workdir, forks=3, error_strategy="ignore")
    for i in range(n):
        await q.feed(f"echo {i} >> {marker}; sleep 1.5")
    with anyio.fail_after(30):
        await q.run_until_complete()

    ran = (await marker.read_text()).split()
    assert sorted(ran) == [str(i) for i in range(n)], "a job was lost or run twice"
    # The adopted jobs were not our children: their wrappers left their return codes.
    assert all(j.status is JobStatus.FINISHED and j.rc == 0 for j in q.jobs)
    assert all(j.attempt == 1 for j in q.jobs[:3])


LONG_JOB = 'echo "start $$" >> "$1"; sleep 4; echo "end $$" >> "$1"'


@pytest.mark.parametrize("command", ["same", "changed"])
async def test_a_job_left_running_whose_folder_was_removed_is_stopped_before_it_runs_again(
    workdir: Path, tmp_path: Path, command: str
) -> None:
    """Its controller SIGKILLed, the job ran on; its folder removed by hand (to run it
    afresh). The next run took the missing folder for a new job and started it beside
    the one still running (a trial saw both write "end"). The earlier attempt, which
    the journal has as running, is stopped first; then the job runs again once. So it
    is if its command changed too (same name, same folder): no refusal the user could
    not get past, as `xqueue cancel` lists folders and sees none."""
    marker = tmp_path / "ran"
    controller = textwrap.dedent(
        f"""
        import anyio
        from xqueue import Xqueue

        async def main():
            q = Xqueue(workdir={str(workdir)!r})
            await q.feed(["sh", "-c", {LONG_JOB!r}, "job", {str(marker)!r}], name="a")
            await q.run_until_complete()

        anyio.run(main)
        """
    )
    first = await anyio.open_process([sys.executable, "-c", controller])
    try:
        deadline = time.monotonic() + 20
        journal = anyio.Path(workdir / "journal.jsonl")
        while not (
            await anyio.Path(marker).exists()
            and await journal.exists()
            and '"jid"' in await journal.read_text()
        ):
            assert time.monotonic() < deadline, "the job never started"
            await anyio.sleep(0.05)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        await first.wait()
        await first.aclose()
    pid = (await anyio.Path(marker).read_text()).split()[1]
    await anyio.to_thread.run_sync(shutil.rmtree, workdir / "0-a")

    q = Xqueue(workdir=workdir)
    again = LONG_JOB if command == "same" else f"{LONG_JOB}; true"
    job = await q.feed(["sh", "-c", again, "job", str(marker)], name="a")
    with anyio.fail_after(30):
        await q.run_until_complete()
    lines = (await anyio.Path(marker).read_text()).splitlines()
    assert f"end {pid}" not in lines, f"the earlier attempt ran on beside the new: {lines}"
    assert [line.split()[0] for line in lines] == ["start", "start", "end"], lines
    assert (job.status, job.rc, job.attempt) == (JobStatus.FINISHED, 0, 2)
    assert not await anyio.to_thread.run_sync(job_processes, workdir)


@pytest.mark.parametrize("index", ["kept", "removed"])
async def test_a_queue_fed_again_sees_what_another_run_made_meanwhile(
    workdir: Path, tmp_path: Path, index: str
) -> None:
    """Between two runs of one queue, another run made job 1's folder and ran it: the
    queue's next feed of job 1 finds it (it listed the workdir before, and failed with
    "cannot create job folder: File exists")."""
    marker = tmp_path / "ran"
    cmds = [f"echo 0 >> {marker}", f"echo 1 >> {marker}"]
    first = Xqueue(workdir=workdir, error_strategy="ignore")
    await first.feed(cmds[0])
    await first.run_until_complete()
    await run_all(workdir, cmds)  # another run
    if index == "removed":
        await anyio.Path(workdir / "successes.idx").unlink()
    job = await first.feed(cmds[1])
    await first.run_until_complete()
    assert job.status is JobStatus.FINISHED and job.reason == "succeeded in an earlier run"
    assert sorted((await anyio.Path(marker).read_text()).split()) == ["0", "1"]


async def test_two_runs_on_one_workdir_are_refused(workdir: Path) -> None:
    first = Xqueue(workdir=workdir)
    job = await first.feed(["sleep", "0.5"])
    with anyio.fail_after(10):  # the workdir's thread makes a fed job's folder soon after
        while not await anyio.Path(job.dir).exists():
            await anyio.sleep(0.01)
    before = sorted([p.name async for p in anyio.Path(workdir).iterdir()])
    second = Xqueue(workdir=workdir)
    from xqueue import WorkdirError

    # Refused at its first feed, before it touches a folder of the first run.
    with pytest.raises(WorkdirError, match="taken by another Xqueue of this process"):
        await second.feed(["echo", "other"])
    assert sorted([p.name async for p in anyio.Path(workdir).iterdir()]) == before
    assert not second.jobs
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run_until_complete)
        await anyio.sleep(0.1)
        with pytest.raises(WorkdirError, match="taken by another Xqueue of this process"):
            await second.feed(["echo", "other"])
    assert first.jobs[0].status is JobStatus.FINISHED
    await second.feed(["true"])  # free again once the first run ended
    await second.run_until_complete()
    assert second.jobs[0].status is JobStatus.FINISHED


async def _held(folder: Path) -> list[str]:
    """The files of ``folder`` this process holds open."""
    return await anyio.to_thread.run_sync(_held_now, folder)


def _held_now(folder: Path) -> list[str]:
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (listdir's own)
            continue
        if path.startswith(f"{folder}/"):
            held.append(os.path.basename(path))
    return sorted(held)


def _event_writers() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "xqueue-events" and t.is_alive())


async def test_a_queue_closed_unrun_holds_nothing_and_its_fed_jobs_are_in_the_stream(
    workdir: Path,
) -> None:
    """``aclose()`` of a queue fed and never run released the lock, but its event
    stream's writer thread and file stayed for the life of the process (one more for
    each such queue); its fed jobs' lines are written as it closes."""
    writers = _event_writers()
    q = Xqueue(workdir=workdir)
    job = await q.feed(["true"])
    assert _event_writers() == writers + 1 and "events.jsonl" in await _held(workdir)
    await q.aclose()
    assert await _held(workdir) == [] and _event_writers() == writers
    lines = (await anyio.Path(workdir / "events.jsonl").read_text()).splitlines()
    assert [(json.loads(line)["event"], json.loads(line)["job"]) for line in lines] == [
        ("job_init", job.index),
        ("job_queued", job.index),
    ]


async def test_a_queue_closed_in_a_cancelled_scope_still_lets_everything_go(
    workdir: Path,
) -> None:
    """Cleanup in a `finally:` after a cancellation: aclose() stopped at its first await
    (closing the event stream), so the waiters on fed jobs were never told and the
    stream stayed open, with the queue marked closed for good."""
    writers = _event_writers()
    q = Xqueue(workdir=workdir)
    job = await q.feed(["true"])
    told: list[str] = []

    async def waiter() -> None:
        try:
            await job.wait()
        except Exception as exc:
            told.append(type(exc).__name__)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.05)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await q.aclose()
    assert told == ["QueueStateError"]
    assert await _held(workdir) == [] and _event_writers() == writers


HALTING = textwrap.dedent(
    """
    import sys
    import anyio
    from xqueue import Xqueue

    async def main(wd, ledger):
        q = Xqueue(workdir=wd, forks=4)  # halt: the first failure stops the run
        await q.feed(f"sleep 1; echo a >> {ledger}; exit 7", name="a")
        for name in "bcd":
            await q.feed(f"sleep 1; echo {name} >> {ledger}", name=name)
        try:
            await q.run_until_complete()
        except Exception as exc:
            print("raised", type(exc).__name__)
        print(*[f"{j.name}:{j.status.value}:{j.rc}" for j in q.jobs], flush=True)

    anyio.run(main, sys.argv[1], sys.argv[2])
    """
)


def test_a_halt_does_not_turn_jobs_that_had_ended_into_kills(tmp_path: Path) -> None:
    """A controller dies while four jobs run; they all end before the next run (one
    failed, three succeeded). That run re-adopts them and halts on the failure: the
    three successes, which no kill could reach any more, were recorded killed (rc 0),
    and the run after started them again."""
    script, wd, ledger = tmp_path / "halting.py", tmp_path / "wd", tmp_path / "ledger"
    script.write_text(HALTING)
    argv = [sys.executable, str(script), str(wd), str(ledger)]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while len(list(wd.glob("*/job.1.stdout"))) < 4:  # all four started
        assert time.monotonic() < deadline, "jobs never started"
        time.sleep(0.02)
    first.kill()
    first.wait()
    while len(ledger.read_text().split() if ledger.exists() else []) < 4:
        assert time.monotonic() < deadline + 10, "jobs never ended"
        time.sleep(0.05)
    time.sleep(0.3)  # their shepherd records the codes
    second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert second.stdout.splitlines() == [
        "raised JobFailedError",
        "a:failed:7 b:finished:0 c:finished:0 d:finished:0",
    ], second
    third = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert sorted(ledger.read_text().split()) == ["a", "a", "b", "c", "d"], third


ONE_JOB = textwrap.dedent(
    """
    import sys
    import anyio
    from xqueue import Xqueue

    async def main(wd, ledger):
        q = Xqueue(workdir=wd, error_strategy="ignore")
        job = await q.feed(f"echo ran >> {ledger}; sleep 1")
        await q.run_until_complete()
        print(job.status.value, job.rc, flush=True)

    anyio.run(main, sys.argv[1], sys.argv[2])
    """
)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def test_a_readopted_job_that_ended_unreaped_gets_its_code_not_a_rerun(tmp_path: Path) -> None:
    """The controller dies; its job ends, but its shepherd (stopped here: slow) has not
    reaped it yet when the next run looks. The process is a zombie, so not alive, and
    the next run gave up on its code at once: "exit status unknown", and the run after
    ran the job again. The code is waited for a moment whatever the process looks like."""
    script, wd, ledger = tmp_path / "one.py", tmp_path / "wd", tmp_path / "ledger"
    script.write_text(ONE_JOB)
    argv = [sys.executable, str(script), str(wd), str(ledger)]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not (ledger.exists() and ledger.read_text()):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    (leader,) = [p for p in job_processes(wd) if os.getpgid(p) == p]
    with open(f"/proc/{leader}/stat") as fh:
        shepherd = int(fh.read().rsplit(")", 1)[1].split()[1])
    first.kill()
    first.wait()
    os.kill(shepherd, signal.SIGSTOP)
    try:
        while _state(leader) != "Z":  # ended, and nobody reaps it
            assert time.monotonic() < deadline, "the job never ended"
            time.sleep(0.05)
        second = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)  # the new run has looked, and found no live process
    finally:
        os.kill(shepherd, signal.SIGCONT)
    out, _ = second.communicate(timeout=60)
    assert out.split() == ["finished", "0"]
    third = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert third.stdout.split() == ["finished", "0"]
    assert ledger.read_text().split() == ["ran"]
