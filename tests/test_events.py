"""The run's own records for operating it from outside: the event stream, run.json, the
kill requests of ``xqueue cancel``, on asyncio and trio, with blocking calls checked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import Recorder, is_alive, read_text, wait_running
from xqueue import JobStatus, Xqueue
from xqueue.cli.cancel import _send
from xqueue.control import reply_path

pytestmark = pytest.mark.anyio


async def events_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (await read_text(path)).splitlines()]


async def test_every_run_writes_its_events_by_default(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, error_strategy="retry", num_retries=1, forks=2)
    ok = await q.feed(["sh", "-c", "echo hi"], name="[bold]ok[/]")
    bad = await q.feed("exit 3", name='say "x"\n')
    after = await q.feed(["true"], after=[bad])
    await q.run_until_complete()
    events = await events_of(workdir / "events.jsonl")
    kinds = [e["event"] for e in events]
    # Jobs fed before the run come first; the run's own events open and close it.
    assert kinds[:2] == ["job_init", "job_queued"]
    started = kinds.index("run_started")
    assert events[started]["scheduler"] == "local" and events[started]["forks"] == 2
    assert events[started]["pid"] == os.getpid() and events[started]["jobs"] == 3
    assert events[-1]["event"] == "run_stopped" and events[-1]["reason"] == "complete"
    assert events[-1]["counts"] == {"finished": 1, "failed": 1, "skipped": 1}
    assert kinds.count("run_stopped") == 1
    per_job = {
        job.index: [
            (e["event"], e["status"], e["attempt"]) for e in events if e.get("job") == job.index
        ]
        for job in (ok, bad, after)
    }
    assert per_job[ok.index] == [
        ("job_init", "init", 0),
        ("job_queued", "queued", 0),
        ("job_submitted", "running", 1),  # local jobs run as soon as they are submitted
        ("job_started", "running", 1),
        ("job_succeeded", "finished", 1),
    ]
    assert [k for k, _, _ in per_job[bad.index]] == [
        "job_init",
        "job_queued",
        "job_submitted",
        "job_started",
        "job_retrying",
        "job_queued",
        "job_submitted",
        "job_started",
        "job_failed",
    ]
    failed = events[kinds.index("job_failed")]
    assert (failed["name"], failed["rc"], failed["attempt"]) == ('say "x"\n', 3, 2)
    assert failed["jid"] == bad.jid and failed["time"] >= events[started]["time"]
    assert per_job[after.index][-1] == ("job_skipped", "skipped", 0)
    skipped = next(e for e in events if e["event"] == "job_skipped")
    assert "runs after" in skipped["reason"]
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)


async def test_events_false_writes_no_stream(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, events=False)
    await q.feed(["true"])
    await q.run_until_complete()
    assert not await anyio.Path(workdir / "events.jsonl").exists()
    assert "xqueue-events" not in q.hooks.names()
    info = json.loads(await read_text(workdir / "run.json"))  # cancel still has what it needs
    assert info["scheduler"] == "local" and info["workdir"] == str(workdir)


async def test_one_file_per_run_and_a_planted_link_is_moved_aside(
    workdir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    await anyio.Path(victim).write_text("untouched")
    await anyio.Path(workdir).mkdir()
    await anyio.Path(workdir / "events.jsonl").symlink_to(victim)
    q = Xqueue(workdir=workdir)
    await q.feed(["true"])
    await q.run_until_complete()
    assert await read_text(victim) == "untouched"
    assert not await anyio.Path(workdir / "events.jsonl").is_symlink()
    first = await events_of(workdir / "events.jsonl")
    assert first[-1]["event"] == "run_stopped"

    again = Xqueue(workdir=workdir)
    await again.feed(["true"])  # succeeded before: nothing runs, and the run is recorded
    await again.run_until_complete()
    assert await events_of(workdir / "events.jsonl.1") == first
    second = await events_of(workdir / "events.jsonl")
    # Settled as it was fed: one line, its end (plugins still get both hooks).
    assert [e["event"] for e in second] == ["job_succeeded", "run_started", "run_stopped"]
    assert second[0]["reason"] == "succeeded in an earlier run"
    assert second[0]["status"] == "finished" and second[0]["attempt"] == 1


async def test_a_job_an_earlier_run_settled_is_one_line_and_still_both_hooks(
    workdir: Path, tmp_path: Path
) -> None:
    """Fed while the run goes on, as before it: the stream gets the settled job's end
    alone, a plugin both of its hooks, and a job that runs again its whole story."""
    flag = tmp_path / "flag"
    cmds = [["true"], ["test", "-e", str(flag)]]
    first = Xqueue(workdir=workdir, error_strategy="ignore")
    for cmd in cmds:
        await first.feed(cmd)
    await first.run_until_complete()
    await anyio.Path(flag).touch()
    rec = Recorder()
    q = Xqueue(workdir=workdir, plugins=[rec])
    async with q:
        for cmd in cmds:
            await q.feed(cmd)
        await q.stop_feeding()
    lines = await events_of(workdir / "events.jsonl")
    assert [e["event"] for e in lines if e.get("job") == 0] == ["job_succeeded"]
    assert [e["event"] for e in lines if e.get("job") == 1][:2] == ["job_init", "job_queued"]
    assert [e["event"] for e in lines if e.get("job") == 1][-1] == "job_succeeded"
    assert rec.for_job(0) == ["on_job_init", "on_job_succeeded"]


async def test_run_json_records_the_scheduler_for_cancel(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, scheduler_opts={"kill_grace": 2.5}, forks=3)
    await q.feed(["true"])
    await q.run_until_complete()
    info = json.loads(await read_text(workdir / "run.json"))
    assert info["class"] == "xqueue.schedulers.local:LocalScheduler"
    assert info["options"]["kill_grace"] == 2.5 and info["forks"] == 3
    pid, _, ticks = info["controller"].partition("@")
    assert int(pid) == os.getpid() and ticks.isdigit()
    mode = (await anyio.Path(workdir / "run.json").stat()).st_mode
    assert mode & 0o077 == 0  # options may name keys and hosts: the owner's alone


async def request_kill(workdir: Path, indices: list[int]) -> dict[str, Any]:
    """Drop a kill request as ``xqueue cancel`` does and wait for the run's answer."""
    request = await anyio.to_thread.run_sync(_send, workdir, {"kill": indices})
    reply = anyio.Path(reply_path(request))
    with anyio.fail_after(20):
        while not await reply.exists():
            await anyio.sleep(0.05)
    answer: dict[str, Any] = json.loads(await reply.read_text())
    await reply.unlink()  # as the command does
    return answer


async def test_kill_requests_kill_only_the_named_jobs(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, forks=3, error_strategy="ignore")
    a = await q.feed(["sleep", "60"])
    b = await q.feed(["sleep", "60"])
    c = await q.feed(["sleep", "60"], after=[a])  # waiting: killed before it is ever submitted
    answers: list[dict[str, Any]] = []

    async def operate() -> None:
        await wait_running(a)
        await wait_running(b)
        answers.append(await request_kill(workdir, [a.index, c.index, 7, a.index]))
        assert b.status is JobStatus.RUNNING  # the run goes on
        assert await is_alive(int(str(b.jid).partition("@")[0]))
        answers.append(await request_kill(workdir, [b.index]))

    with anyio.fail_after(40):
        async with anyio.create_task_group() as tg:
            tg.start_soon(operate)
            await q.run_until_complete()
    assert answers[0] == {"results": {"0": "killed", "2": "killed", "7": "no such job in this run"}}
    assert answers[1] == {"results": {"1": "killed"}}
    assert [j.status for j in (a, b, c)] == [JobStatus.KILLED] * 3
    left = [p.name async for p in anyio.Path(workdir / ".control").iterdir()]
    assert left == []  # requests taken, answers read


async def test_a_garbage_request_is_answered_and_changes_nothing(workdir: Path) -> None:
    q = Xqueue(workdir=workdir)
    job = await q.feed(["sleep", "60"])
    answers: list[dict[str, Any]] = []

    async def operate() -> None:
        await wait_running(job)
        answers.append(await request_kill(workdir, "all"))  # type: ignore[arg-type]
        assert job.status is JobStatus.RUNNING
        answers.append(await request_kill(workdir, [job.index]))

    with anyio.fail_after(40):
        async with anyio.create_task_group() as tg:
            tg.start_soon(operate)
            await q.run_until_complete()
    assert answers[0] == {"error": "not a request this controller understands"}
    assert answers[1] == {"results": {"0": "killed"}}
