"""``feed(after=...)``: jobs that run only once the jobs they depend on have succeeded.

Every job here is a real local process (one test uses the real Slurm) that writes when it
started and ended (``date +%s.%N``) and appends its name to a ledger, so order and
"never ran" are read from what the jobs themselves did, not from xqueue's view.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.helpers import SLURM_FAST, Recorder, cluster_queue, read_text, remove_after
from xqueue import ConfigError, Job, JobFailedError, JobStatus, Xqueue, hookimpl
from xqueue.cli import status
from xqueue.records import WorkdirReader

pytestmark = pytest.mark.anyio

S = JobStatus


def stamped(tmp: Path, name: str, body: str = "true") -> str:
    """A job that records its start, appends ``name`` to the ledger, runs ``body``, and
    records its end (a failing ``body`` leaves no end)."""
    t = tmp / f"{name}.t"
    return f"date +%s.%N > {t}; echo {name} >> {tmp / 'ledger'}; {body}; date +%s.%N >> {t}"


async def span(tmp: Path, name: str) -> tuple[float, float]:
    """(start, end) of a job, as it wrote them."""
    start, end = (await read_text(tmp / f"{name}.t")).split()
    return float(start), float(end)


async def ledger(tmp: Path) -> list[str]:
    path = anyio.Path(tmp / "ledger")
    return (await path.read_text()).split() if await path.exists() else []


def records(workdir: Path) -> dict[int, dict[str, object]]:
    """Each job's durable record, by index, as ``xqueue status`` reads it."""
    reader = WorkdirReader(workdir)
    folders = reader.folders()
    return {
        int(folder.partition("-")[0]): record or {}
        for folder, record in zip(folders, reader.last_records(folders), strict=True)
    }


async def test_chain_runs_in_order(workdir: Path, tmp_path: Path) -> None:
    rec = Recorder()
    q = Xqueue(workdir=workdir, forks=3, plugins=[rec])
    a = await q.feed(stamped(tmp_path, "a", "sleep 0.2"))
    b = await q.feed(stamped(tmp_path, "b", "sleep 0.2"), after=[a])
    c = await q.feed(stamped(tmp_path, "c"), after=b)  # one job, or its index, will do
    assert (b.after, c.after) == ((a,), (b,))
    # Fed before the run: only a is queued, the others wait, and are counted as waiting.
    assert [j.status for j in q.jobs] == [S.QUEUED, S.WAITING, S.WAITING]
    assert q.statistics().counts == {"queued": 1, "waiting": 2}
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert [j.status for j in q.jobs] == [S.FINISHED] * 3
    (_, a_end), (b_start, b_end), (c_start, _) = [await span(tmp_path, n) for n in "abc"]
    assert a_end <= b_start and b_end <= c_start
    assert await ledger(tmp_path) == ["a", "b", "c"]
    # A waiting job is queued (on_job_queued) only once what it waits for has succeeded.
    assert rec.calls.index(("on_job_succeeded", 0)) < rec.calls.index(("on_job_queued", 1))
    assert rec.calls.index(("on_job_succeeded", 1)) < rec.calls.index(("on_job_queued", 2))
    assert rec.for_job(2)[:2] == ["on_job_init", "on_job_queued"]
    # The dependencies' indices are part of each job's durable record: status shows them.
    out = io.StringIO()
    await anyio.to_thread.run_sync(status.show, WorkdirReader(workdir), set(), False, True, out)
    shown = [json.loads(line)["state"] for line in out.getvalue().splitlines()]
    assert [state.get("after") for state in shown] == [None, [0], [1]]


async def test_failed_dependency_skips_its_dependents_transitively(
    workdir: Path, tmp_path: Path
) -> None:
    rec = Recorder()
    q = Xqueue(workdir=workdir, forks=2, error_strategy="ignore", plugins=[rec])
    a = await q.feed(stamped(tmp_path, "a", "exit 3"), name="a")
    b = await q.feed(stamped(tmp_path, "b"), name="b", after=[a])
    c = await q.feed(stamped(tmp_path, "c"), name="c", after=[b])
    d = await q.feed(stamped(tmp_path, "d"), name="d")  # unrelated: runs all the same
    e = await q.feed(stamped(tmp_path, "e"), name="e", after=[d, 0])  # needs a too
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert [j.status for j in q.jobs] == [S.FAILED, S.SKIPPED, S.SKIPPED, S.FINISHED, S.SKIPPED]
    assert b.reason == "not run: job 0 (a), which it runs after, failed with rc 3"
    assert c.reason == (
        "not run: job 1 (b), which it runs after, was skipped: job 0 (a) failed with rc 3"
    )
    assert "job 0 (a)" in e.reason
    assert sorted(await ledger(tmp_path)) == ["a", "d"]  # b, c and e never ran
    for job in (b, c, e):
        assert job.attempt == 0 and job.jid is None and job.rc is None
        assert not await anyio.Path(job.stdout_path).exists()
    # Each skipped job fires on_job_skipped once, and nothing but init before it.
    assert rec.for_job(1) == rec.for_job(2) == ["on_job_init", "on_job_skipped"]
    assert [h for h, _ in rec.calls].count("on_job_failed") == 1
    recs = await anyio.to_thread.run_sync(records, workdir)
    assert (recs[2]["status"], recs[2]["reason"], recs[2]["after"]) == ("skipped", c.reason, [1])
    assert recs[4]["after"] == [3, 0]
    # A job fed after a dependency that already failed is skipped at once.
    late = await q.feed(["true"], after=[c])
    assert late.status is S.SKIPPED and "job 2 (c)" in late.reason


async def test_a_dependency_that_is_retried_is_waited_for(workdir: Path, tmp_path: Path) -> None:
    flag = tmp_path / "tried"
    q = Xqueue(workdir=workdir, error_strategy="retry", num_retries=1)
    a = await q.feed(stamped(tmp_path, "a", f"test -e {flag} || {{ touch {flag}; exit 1; }}"))
    b = await q.feed(stamped(tmp_path, "b"), after=[a])
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert (a.status, a.attempt, b.status) == (S.FINISHED, 2, S.FINISHED)
    assert await ledger(tmp_path) == ["a", "a", "b"]  # a failure with a retry left skips nothing


async def test_halt_skips_the_dependents_and_cancels_the_rest(
    workdir: Path, tmp_path: Path
) -> None:
    q = Xqueue(workdir=workdir, forks=2)
    a = await q.feed(stamped(tmp_path, "a", "exit 4"))
    b = await q.feed(stamped(tmp_path, "b"), after=[a])
    other = await q.feed(stamped(tmp_path, "other", "sleep 30"))
    after_other = await q.feed(stamped(tmp_path, "later"), after=[other])
    with anyio.fail_after(30), pytest.raises(JobFailedError):
        await q.run_until_complete()
    assert (a.status, b.status) == (S.FAILED, S.SKIPPED)
    assert "job 0" in b.reason
    assert (other.status, after_other.status) == (S.KILLED, S.KILLED)
    assert "cancelled before it was submitted" in after_other.reason


async def test_killed_dependency_skips_its_dependents(workdir: Path, tmp_path: Path) -> None:
    rec = Recorder()
    async with Xqueue(workdir=workdir, forks=2, plugins=[rec]) as q:
        a = await q.feed(stamped(tmp_path, "a", "sleep 30"), name="a")
        b = await q.feed(stamped(tmp_path, "b"), name="b", after=[a])
        c = await q.feed(stamped(tmp_path, "c"), name="c", after=[b])
        w = await q.feed(stamped(tmp_path, "w"), name="w", after=[a])
        x = await q.feed(stamped(tmp_path, "x"), name="x", after=[w])
        with anyio.fail_after(20):
            while await ledger(tmp_path) != ["a"]:
                await anyio.sleep(0.05)
        # A waiting job can be killed: what waits for it is skipped, a goes on.
        assert w.status is S.WAITING
        assert await q.kill(w)
        assert w.status is S.KILLED and x.status is S.SKIPPED
        assert x.reason == "not run: job 3 (w), which it runs after, was killed"
        assert a.status is S.RUNNING
        assert await q.kill(a)
        with anyio.fail_after(20):
            await c.wait()
    assert (a.status, b.status, c.status) == (S.KILLED, S.SKIPPED, S.SKIPPED)
    assert b.reason == "not run: job 0 (a), which it runs after, was killed"
    assert c.reason.endswith("was skipped: job 0 (a) was killed")
    assert await ledger(tmp_path) == ["a"]
    assert rec.for_job(2) == ["on_job_init", "on_job_skipped"]


async def test_diamond(workdir: Path, tmp_path: Path) -> None:
    q = Xqueue(workdir=workdir, forks=4)
    a = await q.feed(stamped(tmp_path, "a"))
    b = await q.feed(stamped(tmp_path, "b", "sleep 0.6"), after=[a])
    c = await q.feed(stamped(tmp_path, "c", "sleep 0.3"), after=[a])
    d = await q.feed(stamped(tmp_path, "d"), after=[b, c])
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert d.status is S.FINISHED
    (_, a_end), (b_start, b_end), (c_start, c_end), (d_start, _) = [
        await span(tmp_path, n) for n in "abcd"
    ]
    assert a_end <= min(b_start, c_start)
    assert b_start < c_end and c_start < b_end  # both released by a, side by side
    assert max(b_end, c_end) <= d_start  # d waited for the slower one too


async def test_diamond_with_a_failed_side(workdir: Path, tmp_path: Path) -> None:
    q = Xqueue(workdir=workdir, forks=4, error_strategy="ignore")
    a = await q.feed(stamped(tmp_path, "a"))
    b = await q.feed(stamped(tmp_path, "b", "sleep 0.2; exit 1"), name="b", after=[a])
    c = await q.feed(stamped(tmp_path, "c"), after=[a])
    d = await q.feed(stamped(tmp_path, "d"), after=[b, c])
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert [j.status for j in q.jobs] == [S.FINISHED, S.FAILED, S.FINISHED, S.SKIPPED]
    assert d.reason == "not run: job 1 (b), which it runs after, failed with rc 1"
    assert sorted(await ledger(tmp_path)) == ["a", "b", "c"]
    assert (b, c) == d.after


async def test_cycles_and_unknown_dependencies_are_refused_at_feed(
    workdir: Path, tmp_path: Path
) -> None:
    q = Xqueue(workdir=workdir)
    a = await q.feed(["true"], name="a")
    b = await q.feed(["true"], after=[a, 0, a])
    assert b.after == (a,)  # named three times, counted once
    other = Xqueue(workdir=tmp_path / "other")
    stranger = await other.feed(["true"], name="stranger")
    await other.aclose()
    refusals = [
        # The smallest cycle: the job being fed (index 2) waiting for itself. A longer one
        # cannot be written: only jobs fed earlier can be named, and a.after is fixed.
        ([2], "index of the job being fed; it cannot wait for itself"),
        ([a, 7], r"no job 7 was fed to this queue \(it has 2\).*never form a cycle"),
        (-1, "no job -1 was fed"),
        ([stranger], r"job 0 \(stranger\) was not fed to this queue"),
        ([Job(0, ["true"], name="a")], "was not fed to this queue"),  # same index, not a
        (["a"], "jobs of the same queue or their indices, not str"),
        ("0", "not str"),
        (True, "not bool"),
        ([1.0], "not float"),
        (object(), "not object"),
    ]
    for after, message in refusals:
        with pytest.raises(ConfigError, match=message):
            await q.feed(["true"], after=after)  # type: ignore[arg-type]
    assert q.jobs == [a, b]  # nothing refused was fed
    with pytest.raises(AttributeError):
        a.after.append(b)  # type: ignore[attr-defined]
    await q.run_until_complete()
    assert [j.status for j in q.jobs] == [S.FINISHED, S.FINISHED]
    # Nor given a folder (folders are made after feeding, at the latest when submitted).
    folders = sorted([p.name async for p in anyio.Path(workdir).iterdir() if await p.is_dir()])
    assert len(folders) == 2


def concurrency(spans: list[tuple[float, float]]) -> int:
    """The most intervals that overlap at one moment."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    return max(itertools.accumulate(d for _, d in edges))


async def test_waiting_jobs_hold_no_fork_slot(workdir: Path, tmp_path: Path) -> None:
    q = Xqueue(workdir=workdir, forks=2)
    root = await q.feed(stamped(tmp_path, "root", "sleep 0.8"))
    waiters = [await q.feed(stamped(tmp_path, f"w{i}"), after=[root]) for i in range(40)]
    free = await q.feed(stamped(tmp_path, "free", "sleep 0.2"))  # fed after 40 waiting jobs
    assert q.statistics().counts == {"queued": 2, "waiting": 40}
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert all(j.status is S.FINISHED for j in q.jobs)
    names = ["root", "free", *(f"w{i}" for i in range(40))]
    spans = {name: await span(tmp_path, name) for name in names}
    # The free job ran beside root: 40 waiting jobs did not take the second slot.
    assert spans["free"][0] < spans["root"][1]
    assert all(spans[f"w{i}"][0] >= spans["root"][1] for i in range(40))
    assert concurrency(list(spans.values())) <= 2  # the bound held once they were released
    assert free.attempt == 1 and all(w.attempt == 1 for w in waiters)


class HangAfterFirst:
    """Holds the run in the hook of job 0's success, so the test can stop it right there,
    before anything that waited for job 0 could be submitted."""

    def __init__(self) -> None:
        self.reached = anyio.Event()

    @hookimpl
    async def on_job_succeeded(self, job: Job) -> None:
        if job.index == 0:
            self.reached.set()
            await anyio.sleep_forever()


async def test_resume_after_a_partial_run_runs_only_the_rest(workdir: Path, tmp_path: Path) -> None:
    def feeds() -> list[tuple[str, list[int]]]:
        return [
            (stamped(tmp_path, "a"), []),
            (stamped(tmp_path, "b"), [0]),
            (stamped(tmp_path, "c"), [1]),
        ]

    hang = HangAfterFirst()
    first = Xqueue(workdir=workdir, forks=3, plugins=[hang])
    for cmd, after in feeds():
        await first.feed(cmd, after=after)
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run_until_complete)
        with anyio.fail_after(20):
            await hang.reached.wait()
        tg.cancel_scope.cancel()
    assert [j.status for j in first.jobs] == [S.FINISHED, S.KILLED, S.KILLED]
    assert await ledger(tmp_path) == ["a"]

    second = Xqueue(workdir=workdir, forks=3)
    for cmd, after in feeds():  # the same feeds, in the same order: the same graph
        await second.feed(cmd, after=after)
    a, b, c = second.jobs
    assert (a.status, a.reason) == (S.FINISHED, "succeeded in an earlier run")
    assert (b.status, c.status) == (S.QUEUED, S.WAITING)
    with anyio.fail_after(30):
        await second.run_until_complete()
    assert [j.status for j in second.jobs] == [S.FINISHED] * 3
    assert await ledger(tmp_path) == ["a", "b", "c"]  # a did not run again
    assert (await span(tmp_path, "b"))[1] <= (await span(tmp_path, "c"))[0]


@pytest.mark.parametrize("outcome", ["fails", "succeeds"])
async def test_a_dependent_of_a_job_that_runs_again_runs_again_after_it(
    workdir: Path, tmp_path: Path, outcome: str
) -> None:
    """An upstream changed since (or failed before, or lost its folder) runs again; its
    dependent's earlier success was made from the old upstream's output. It was kept:
    it stood as a success though the upstream now failed, and completed before the
    upstream had even run (a trial of the embedding API). It runs again after the
    upstream, in its folder, as the attempt after its last; skipped if that fails."""
    first = Xqueue(workdir=workdir, error_strategy="ignore")
    up = await first.feed(stamped(tmp_path, "up"), name="up")
    await first.feed(stamped(tmp_path, "down"), name="down", after=[up])
    await first.run_until_complete()
    assert await ledger(tmp_path) == ["up", "down"]

    body = "exit 3" if outcome == "fails" else "echo changed"
    second = Xqueue(workdir=workdir, error_strategy="ignore")
    up = await second.feed(stamped(tmp_path, "up", body), name="up")  # changed
    down = await second.feed(stamped(tmp_path, "down"), name="down", after=[up])
    assert down.status is S.WAITING  # not settled by its earlier success
    async with anyio.create_task_group() as tg:
        tg.start_soon(second.run_until_complete)
        with anyio.fail_after(30):
            order = [job.name async for job in second.as_completed()]
    assert order == ["up", "down"]
    if outcome == "fails":
        assert (up.status, down.status) == (S.FAILED, S.SKIPPED)
        assert await ledger(tmp_path) == ["up", "down", "up"]
    else:
        assert (up.status, down.status, down.attempt) == (S.FINISHED, S.FINISHED, 2)
        assert await ledger(tmp_path) == ["up", "down", "up", "down"]

    third = Xqueue(workdir=workdir, error_strategy="ignore")  # nothing changed: all kept
    up = await third.feed(stamped(tmp_path, "up", body), name="up")
    down = await third.feed(stamped(tmp_path, "down"), name="down", after=[up])
    if outcome == "succeeds":
        assert (up.reason, down.reason) == ("succeeded in an earlier run",) * 2


@pytest.mark.parametrize("why", ["changed", "resume=False"])
async def test_a_dependent_whose_upstream_ran_again_is_not_reused_after_a_stop(
    workdir: Path, tmp_path: Path, why: str
) -> None:
    """Its upstream ran again (changed, or every job did: resume=False) and succeeded,
    then the run stopped (a halt) before the dependent ran: its old success was still
    the journal's word, and the next run, finding the upstream's new success, reused it
    (made from the old output). It is journalled as no longer standing when its
    success is dropped; `xqueue status` shows it not submitted once that run is gone."""
    changed = "echo changed" if why == "changed" else "true"

    def feeds(body: str, other: str) -> list[tuple[str, str, bool]]:
        return [
            (stamped(tmp_path, "up", body), "up", False),
            (stamped(tmp_path, "other", other), "other", False),
            (stamped(tmp_path, "down"), "down", True),
        ]

    async def run(body: str, other: str, resume: bool = True) -> list[Job]:
        q = Xqueue(workdir=workdir, forks=1, resume=resume)  # halt: the first failure stops
        up = None
        for cmd, name, dependent in feeds(body, other):
            job = await q.feed(cmd, name=name, after=[up] if dependent else None)
            up = up or job
        with anyio.fail_after(30), contextlib.suppress(JobFailedError):
            await q.run_until_complete()
        return list(q.jobs)

    await run("true", "true")
    assert await ledger(tmp_path) == ["up", "other", "down"]
    up, other, down = await run(changed, "exit 3", why == "changed")  # other fails
    assert (up.status, other.status, down.status) == (S.FINISHED, S.FAILED, S.KILLED)
    assert await ledger(tmp_path) == ["up", "other", "down", "up", "other"]
    rows, _ = await anyio.to_thread.run_sync(status.collect, WorkdirReader(workdir))
    assert rows[2].status == "not submitted", rows[2]
    up, other, down = await run(changed, "true")
    assert up.reason == "succeeded in an earlier run"
    assert down.status is S.FINISHED and down.reason != "succeeded in an earlier run"
    assert await ledger(tmp_path) == ["up", "other", "down", "up", "other", "other", "down"]


CONTROLLER = textwrap.dedent(
    """
    import anyio, json, sys
    from xqueue import Xqueue

    async def main(workdir, feeds):
        q = Xqueue(workdir=workdir, forks=2)
        for cmd, after in json.loads(feeds):
            await q.feed(cmd, after=after)
        await q.run_until_complete()

    anyio.run(main, sys.argv[1], sys.argv[2])
    """
)


async def test_resume_re_adopts_a_running_dependency_and_then_runs_its_dependent(
    workdir: Path, tmp_path: Path
) -> None:
    """The controller dies while b (after a) runs: the next run re-adopts b, does not
    start it again, and starts c (after b) only once b has ended."""
    feeds = [
        (stamped(tmp_path, "a"), []),
        (stamped(tmp_path, "b", "sleep 1.5"), [0]),
        (stamped(tmp_path, "c"), [1]),
    ]
    script = anyio.Path(tmp_path / "controller.py")
    await script.write_text(CONTROLLER)
    argv = [sys.executable, str(script), str(workdir), json.dumps(feeds)]
    controller = await anyio.open_process(argv, stdin=None, stdout=None, stderr=None)
    try:
        with anyio.fail_after(20):
            while await ledger(tmp_path) != ["a", "b"]:
                await anyio.sleep(0.05)
    finally:
        os.kill(controller.pid, signal.SIGKILL)
        await controller.wait()
        await controller.aclose()

    q = Xqueue(workdir=workdir, forks=2)
    for cmd, after in feeds:
        await q.feed(cmd, after=after)
    a, b, c = q.jobs
    assert (a.status, b.status, c.status) == (S.FINISHED, S.SUBMITTING, S.WAITING)
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert [j.status for j in q.jobs] == [S.FINISHED] * 3
    assert b.attempt == 1  # re-adopted, not run again
    assert await ledger(tmp_path) == ["a", "b", "c"]
    assert (await span(tmp_path, "b"))[1] <= (await span(tmp_path, "c"))[0]


@pytest.fixture
def cancel_after() -> Iterator[list[Job]]:
    yield from remove_after("scancel")


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
async def test_chain_on_slurm(workdir: Path, tmp_path: Path, cancel_after: list[Job]) -> None:
    """On Slurm the engine holds a dependent too: it is submitted only once what it runs
    after has ended well (Slurm's own SubmitTime says so), and never if that failed."""
    q = cluster_queue("slurm", SLURM_FAST, workdir, forks=4, error_strategy="ignore")
    a = await q.feed(stamped(tmp_path, "a", "sleep 1"))
    b = await q.feed(stamped(tmp_path, "b", "sleep 1"), after=[a])
    c = await q.feed(stamped(tmp_path, "c"), after=[b])
    bad = await q.feed(stamped(tmp_path, "bad", "exit 5"))
    never = await q.feed(stamped(tmp_path, "never"), after=[bad])
    cancel_after.extend(q.jobs)
    with anyio.fail_after(90):
        await q.run_until_complete()
    assert [j.status for j in q.jobs] == [S.FINISHED] * 3 + [S.FAILED, S.SKIPPED]
    (_, a_end), (b_start, b_end), (c_start, _) = [await span(tmp_path, n) for n in "abc"]
    assert a_end <= b_start and b_end <= c_start
    assert never.jid is None and "job 3" in never.reason
    assert "never" not in await ledger(tmp_path)
    shown = {}
    for job in (a, b, c):
        assert job.jid
        out = await anyio.run_process(["scontrol", "show", "job", "-o", job.jid])
        shown[job] = dict(w.partition("=")[::2] for w in out.stdout.decode().split() if "=" in w)
    # Slurm's clock has whole seconds: each dependent was submitted no earlier than the
    # second its dependency ended in.
    assert shown[a]["EndTime"] <= shown[b]["SubmitTime"]
    assert shown[b]["EndTime"] <= shown[c]["SubmitTime"]
    assert all(shown[j]["JobState"] == "COMPLETED" for j in (a, b, c))
