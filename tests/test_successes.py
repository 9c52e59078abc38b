"""The index of succeeded jobs (``successes.idx``): a resume skips by it, and never on
its word alone once the workdir changed since it was written."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from xqueue import JobStatus, Xqueue
from xqueue.successes import SUCCESSES_FILE

pytestmark = pytest.mark.anyio

EARLIER = "succeeded in an earlier run"


def jobs_of(marker: Path, flag: Path, n: int = 4) -> list[str]:
    """Jobs that append their index to ``marker`` each time they really run; job 1 fails
    while ``flag`` exists (same command either way, so the same spec)."""
    cmds = [f"echo {i} >> {marker}" for i in range(n)]
    cmds[1] += f"; test ! -e {flag}"
    return cmds


# Whether a queue's feeds read the journal, noted before it ran (a run's end drops what
# its workdir read: another controller may change the workdir before the next run).
_READ: dict[int, bool] = {}


async def run(workdir: Path, cmds: list[str], **options: object) -> Xqueue:
    q = Xqueue(workdir=workdir, error_strategy="ignore", **options)  # type: ignore[arg-type]
    for cmd in cmds:
        await q.feed(cmd)
    reader = q.workdir.reader  # each job was decided as it was fed: by the index or not
    _READ[id(q)] = reader._winners is not None or reader._journal is not None
    await q.run_until_complete()
    return q


async def off_loop(fn: Callable[..., object], *args: object) -> None:
    await anyio.to_thread.run_sync(fn, *args)


async def ran(marker: Path) -> list[str]:
    return sorted((await anyio.Path(marker).read_text()).split())


def journal_read(q: Xqueue) -> bool:
    """Whether the run read the journal to decide its feeds (the index did not answer)."""
    return _READ[id(q)]


async def test_a_resume_skips_by_the_index_without_reading_the_journal(
    workdir: Path, tmp_path: Path
) -> None:
    cmds = jobs_of(tmp_path / "ran", tmp_path / "flag")
    await run(workdir, cmds)
    assert await anyio.Path(workdir / SUCCESSES_FILE).is_file()
    q = await run(workdir, cmds)
    assert [j.reason for j in q.jobs] == [EARLIER] * 4
    assert [j.attempt for j in q.jobs] == [1] * 4
    assert not journal_read(q)
    assert await ran(tmp_path / "ran") == ["0", "1", "2", "3"]


async def test_a_stale_index_is_ignored_when_the_journal_has_moved_on(
    workdir: Path, tmp_path: Path
) -> None:
    """Restored after a later run failed job 1, the old index vouches for it: the journal
    it no longer matches says otherwise, and the job runs again."""
    marker, flag = tmp_path / "ran", tmp_path / "flag"
    cmds = jobs_of(marker, flag)
    await run(workdir, cmds)
    await off_loop(shutil.copy, workdir / SUCCESSES_FILE, tmp_path / "old.idx")
    await anyio.Path(flag).touch()
    q = await run(workdir, cmds, resume=False)
    assert q.jobs[1].status is JobStatus.FAILED
    await anyio.Path(flag).unlink()
    await off_loop(shutil.copy, tmp_path / "old.idx", workdir / SUCCESSES_FILE)
    q = await run(workdir, cmds)
    assert journal_read(q)
    assert q.jobs[1].status is JobStatus.FINISHED and q.jobs[1].attempt == 3
    assert [j.reason for j in q.jobs if j.index != 1] == [EARLIER] * 3
    assert await ran(marker) == ["0", "0", "1", "1", "1", "2", "2", "3", "3"]


async def test_a_job_whose_folder_was_removed_runs_again(workdir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cmds = jobs_of(marker, tmp_path / "flag")
    first = await run(workdir, cmds)
    await off_loop(shutil.rmtree, first.jobs[2].dir)
    q = await run(workdir, cmds)
    assert q.jobs[2].reason != EARLIER and q.jobs[2].status is JobStatus.FINISHED
    assert await anyio.Path(q.jobs[2].dir, "job.1.stdout").exists()
    assert [j.reason for j in q.jobs if j.index != 2] == [EARLIER] * 3
    assert await ran(marker) == ["0", "1", "2", "2", "3"]
    # That run wrote an index of the workdir as it is now: the next one skips all four.
    q = await run(workdir, cmds)
    assert [j.reason for j in q.jobs] == [EARLIER] * 4 and not journal_read(q)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # torn
        lambda data: b"not json\n" + data,
        lambda data: data.replace(b'"format": 1', b'"format": 99'),
        lambda data: b"",
    ],
    ids=["torn", "garbage", "other-format", "empty"],
)
async def test_a_damaged_index_is_ignored(workdir: Path, tmp_path: Path, damage: object) -> None:
    marker, flag = tmp_path / "ran", tmp_path / "flag"
    cmds = jobs_of(marker, flag)
    await anyio.Path(flag).touch()
    await run(workdir, cmds)  # job 1 fails: the index does not vouch for it
    await anyio.Path(flag).unlink()
    index = anyio.Path(workdir / SUCCESSES_FILE)
    await index.write_bytes(damage(await index.read_bytes()))  # type: ignore[operator]
    q = await run(workdir, cmds)
    assert journal_read(q)
    assert [j.reason for j in q.jobs if j.index != 1] == [EARLIER] * 3
    assert q.jobs[1].attempt == 2 and q.jobs[1].status is JobStatus.FINISHED
    assert await ran(marker) == ["0", "1", "1", "2", "3"]


async def test_a_changed_job_runs_and_the_others_are_still_skipped_by_the_index(
    workdir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    cmds = jobs_of(marker, tmp_path / "flag")
    await run(workdir, cmds)
    cmds[3] = f"echo 3b >> {marker}"
    q = await run(workdir, cmds)
    assert [j.reason for j in q.jobs[:3]] == [EARLIER] * 3
    assert q.jobs[3].reason == "" and q.jobs[3].status is JobStatus.FINISHED
    assert await ran(marker) == ["0", "1", "2", "3", "3b"]


@pytest.mark.blocking_allowed("counts the listings the feeds make, on the loop as they are")
async def test_a_job_the_index_does_not_vouch_for_costs_no_second_listing(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index's check lists the workdir; the first job it did not vouch for (one
    changed in a million) listed it again: a second pass over a million names."""
    marker = tmp_path / "ran"
    cmds = jobs_of(marker, tmp_path / "flag")
    await run(workdir, cmds)
    cmds[3] = f"echo 3b >> {marker}"
    listings: list[str] = []
    listdir = os.listdir

    def counted(path: str | os.PathLike[str] = ".") -> list[str]:
        if os.path.samefile(path, workdir):
            listings.append(str(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", counted)
    q = Xqueue(workdir=workdir, error_strategy="ignore")
    for cmd in cmds:
        await q.feed(cmd)
    assert q.jobs[3].status is not JobStatus.FINISHED  # not vouched for: it runs
    assert len(listings) == 1, listings
    monkeypatch.undo()
    await q.run_until_complete()
    assert await ran(marker) == ["0", "1", "2", "3", "3b"]


async def test_a_shorter_run_keeps_the_index_of_the_jobs_it_was_not_fed(
    workdir: Path, tmp_path: Path
) -> None:
    marker, flag = tmp_path / "ran", tmp_path / "flag"
    cmds = jobs_of(marker, flag, n=6)
    await anyio.Path(flag).touch()
    await run(workdir, cmds)  # job 1 fails
    await anyio.Path(flag).unlink()
    q = await run(workdir, cmds[:2])  # job 1 succeeds now, in its folder; 2-5 not fed
    assert q.jobs[1].attempt == 2
    q = await run(workdir, cmds)
    assert not journal_read(q)
    assert [j.reason for j in q.jobs] == [EARLIER] * 6
    assert [j.attempt for j in q.jobs] == [1, 2, 1, 1, 1, 1]
    assert await ran(marker) == ["0", "1", "1", "2", "3", "4", "5"]


async def test_a_keyed_job_is_not_skipped_by_a_success_without_its_key(
    workdir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    await run(workdir, [f"echo a >> {marker}"])
    q = Xqueue(workdir=workdir)
    job = await q.feed(f"echo a >> {marker}", cache_key="v2")
    await q.run_until_complete()
    assert job.reason == "" and job.attempt == 2
    assert await ran(marker) == ["a", "a"]


async def test_a_success_settled_under_another_key_is_not_vouched_for_without_it(
    workdir: Path, tmp_path: Path
) -> None:
    """Fed without a key, a job is settled by a success made under key "k"; its newest
    record still has the key, so a job fed with "k" next time is settled too."""
    marker = tmp_path / "ran"
    command = f"echo run >> {marker}"
    for key in ("k", None, "k"):
        q = Xqueue(workdir=workdir)
        job = await q.feed(command, cache_key=key)
        await q.run_until_complete()
    assert job.reason == EARLIER and job.attempt == 1
    assert await ran(marker) == ["run"]


async def test_a_queue_run_again_does_not_vouch_for_what_another_run_changed(
    workdir: Path, tmp_path: Path
) -> None:
    """A queue's earlier jobs are as it last saw them; another controller may have run
    one of them again since (and failed): its next index must not say they succeeded."""
    marker, flag = tmp_path / "ran", tmp_path / "flag"
    command = f"echo 0 >> {marker}; test ! -e {flag}"
    first = Xqueue(workdir=workdir, error_strategy="ignore")
    await first.feed(command)
    await first.run_until_complete()
    await anyio.Path(flag).touch()
    other = Xqueue(workdir=workdir, error_strategy="ignore", resume=False)
    await other.feed(command)
    await other.run_until_complete()
    assert other.jobs[0].status is JobStatus.FAILED
    await anyio.Path(flag).unlink()
    await first.feed(["true"])  # the first queue runs again, job 0 as it knew it
    await first.run_until_complete()
    q = await run(workdir, [command, "true"])
    assert q.jobs[0].reason == "" and q.jobs[0].attempt == 3
    assert await ran(marker) == ["0", "0", "0"]
