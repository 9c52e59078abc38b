"""A workdir cannot be turned against its user: corrupted files are recovered or named in a
one-line error, planted links never redirect a write, and other users' workdirs are refused."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from xqueue import WorkdirError, Xqueue, hookimpl
from xqueue._files import atomic_write
from xqueue.job import Job
from xqueue.records import WorkdirReader, parse_journal
from xqueue.states import JobStatus
from xqueue.workdir import Workdir, open_output

from .cli.test_cli import xqueue

pytestmark = pytest.mark.anyio


def submitted(wd: Workdir, index: int, final: JobStatus | None = None) -> Job:
    """A job recorded the way the engine records it: submitted, then maybe final."""
    job = Job(index, f"echo {index}")
    wd.prepare(job, make=True)
    job.attempt, job.jid, job.status = 1, f"{4000 + index}@1.00", JobStatus.SUBMITTED
    wd.record(job)
    if final is not None:
        job.status, job.rc = final, 0 if final is JobStatus.FINISHED else 1
        wd.record(job)
    return job


def outside_file(tmp_path: Path) -> Path:
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    return target


def no_traceback(out: str) -> None:
    assert "Traceback" not in out, out


# -- corrupted state files ------------------------------------------------------------------
GARBAGE_LINES = [
    b"\xff\xfe\xfd not utf-8",
    b"[1, 2, 3]",
    b"42",
    b'"just a string"',
    b"null",
    b'{"status": "submitted", "dir": 5}',
    b'{"status": 3, "dir": "1-x"}',
    b'{"status": "submitted", "dir": "../../etc"}',
    b"[" * 100_000,
]


@pytest.mark.parametrize("garbage", GARBAGE_LINES, ids=range(len(GARBAGE_LINES)))
def test_garbage_journal_lines_are_skipped_with_a_warning(
    tmp_path: Path, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    wd = Workdir(tmp_path / "wd")
    first, second = submitted(wd, 0), submitted(wd, 1)
    wd.unlock()
    journal = tmp_path / "wd" / "journal.jsonl"
    lines = journal.read_bytes().splitlines()
    journal.write_bytes(b"\n".join([lines[0], garbage, lines[1]]) + b"\n")
    with caplog.at_level(logging.WARNING, "xqueue.workdir"):
        records = WorkdirReader(tmp_path / "wd").journal()
    assert {k: v["jid"] for k, v in records.items()} == {
        os.path.basename(first.dir): "4000@1.00",
        os.path.basename(second.dir): "4001@1.00",
    }
    assert "journal.jsonl: ignoring 1 line(s) that are not xqueue records (line 2)" in caplog.text


def test_a_garbage_newest_line_falls_back_to_the_last_valid_one(tmp_path: Path) -> None:
    """The fast path files a line under its folder unparsed; when that winner is not a
    record, the strict reading decides, and the folder's previous line wins."""
    ok = b'{"status": "submitted", "attempt": 1, "jid": "7@1.00", "rc": null, "reason": ""'
    data = (
        ok + b', "time": 1.0, "dir": "0-a"}\n'
        b'{"status": ["not", "a", "string"], "time": 2.0, "dir": "0-a"}\n'
    )
    assert parse_journal(data, "j")["0-a"]["jid"] == "7@1.00"


def test_the_journal_shortcut_gives_the_strict_answer() -> None:
    """Lines as xqueue writes them are grouped without parsing; lines of any other shape,
    garbage and torn lines in between must not change which record wins."""
    import random

    from xqueue.records import _parse_strictly

    def line(folder: str, n: int, shape: int) -> str:
        record = {"status": "submitted", "attempt": 1, "jid": f"{n}@1.0", "rc": None}
        if shape == 0:  # as xqueue writes it: "dir" last
            return json.dumps({**record, "reason": "", "time": 1.0, "dir": folder})
        if shape == 1:  # another writer: "dir" first, trailing blank
            return json.dumps({"dir": folder, **record, "time": 1.0}) + " "
        if shape == 2:
            return json.dumps({**record, "dir": folder})[: n % 40]  # torn somewhere
        if shape == 3:
            return f'garbage, "dir": "{folder}"}}'  # looks like xqueue's at the end
        return ["", '{"status": "finished"}', "[1]"][n % 3]  # blank, no folder, not a dict

    rng = random.Random(8)
    for _ in range(500):
        lines = [
            line(f"{rng.randrange(5)}-j", n, rng.choice([0, 0, 0, 0, 1, 2, 3, 4]))
            for n in range(rng.randrange(1, 30))
        ]
        data = "\n".join(lines).encode() + rng.choice([b"\n", b""])
        strict = _parse_strictly(data.decode().split("\n"), "j")
        assert parse_journal(data, "j") == strict, lines


@pytest.mark.parametrize("order", ["journal", "reversed", "shuffled"])
def test_a_resume_reads_each_record_as_the_strict_reading_does(
    tmp_path: Path, order: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume takes each folder's record once, parsing lines ahead in batches; in
    whatever order it asks, with garbage among the lines, it gets the strict answer, as
    do the whole index (``xqueue status``) and a lookup of one folder (``xqueue logs``)."""
    import random

    import xqueue.records as records

    monkeypatch.setattr(records, "_PARSE_AHEAD", 3)  # many batches, and a full cache
    rng = random.Random(order)
    for trial in range(150):
        wd = tmp_path / f"wd{trial}"
        wd.mkdir()
        folders = [f"{i}-j" for i in range(rng.randrange(1, 12))]
        lines = []
        for n in range(rng.randrange(1, 40)):
            status = rng.choice(["submitted", "finished", "failed"])
            record = {"status": status, "attempt": 1, "jid": f"{n}@1.0", "rc": n % 2}
            line = json.dumps({**record, "reason": "", "time": 1.0, "dir": rng.choice(folders)})
            if rng.random() < 0.04:
                line = rng.choice([line[: n % 30], "[1]", '{"status": "finished"}', ""])
            elif rng.random() < 0.04:  # near misses of the shape a block is read fast in
                line = rng.choice(
                    [
                        json.dumps({**record, "reason": "", "time": 1.0, "dir": '0-j"x'}),
                        line + '"}',  # a second quote and brace after the folder's
                        line[:-2] + '\\"}',  # a backslash in the folder
                        '{"status": "finished", "reason": "x"}',  # no "dir", ends in "}
                        # "dir" first: the text after the last "dir" is no folder's name
                        json.dumps({"dir": rng.choice(folders), **record, "reason": "x"}),
                        # the last '"dir": "' is the end of another key (escaped quote)
                        json.dumps({**record, "time": 2.0, "dir": "1-j", 'x"dir': "0-j"}),
                        # a folder's name in another field, and spelt with an escape
                        json.dumps({**record, "reason": rng.choice(folders), "dir": "0-j"}),
                        json.dumps({**record, "reason": "", "time": 2.0, "dir": "0-j"}).replace(
                            '"0-j"', '"\\u0030-j"'
                        ),
                    ]
                )
            lines.append(line)
        text = "\n".join(lines) + rng.choice(["\n", ""])  # "": its last line may be whole
        (wd / "journal.jsonl").write_text(text)
        # Blocks of a few lines, or of part of one: lines cross the blocks' ends.
        monkeypatch.setattr(records, "_BLOCK", rng.choice([7, 64, 300, 1 << 22]))
        asked = [*folders, "99-none"]
        if order == "reversed":
            asked.reverse()
        elif order == "shuffled":
            rng.shuffle(asked)
        strict = records._parse_strictly(text.split("\n"), "j")  # every line on its own
        assert WorkdirReader(wd).journal() == strict, lines  # what ``xqueue status`` reads
        resume = WorkdirReader(wd)
        for folder in asked:
            assert resume.take_record(folder) == strict.get(folder), (folder, lines)
            # ``xqueue logs`` asks for one folder, searching the journal's bytes instead
            assert WorkdirReader(wd).record_of(folder) == strict.get(folder), (folder, lines)


def test_a_job_folder_is_found_by_index_as_in_the_list_of_folders(tmp_path: Path) -> None:
    """``xqueue logs 1`` looks for job 1's folder by its name's prefix instead of listing
    every folder: it must pick what ``folders()`` would, never a link, a longer index, a
    moved-aside folder or a path outside the workdir."""
    wd = tmp_path / "wd"
    for name in ["1-a", "1-b", "10-a", "1-c.replaced-5", "2-x", "12"]:
        (wd / name).mkdir(parents=True)
    (wd / "3-link").symlink_to(wd / "2-x")
    (wd / "4-file").write_text("")
    reader = WorkdirReader(wd)
    listed = reader.folders()
    by_index = {int(name.partition("-")[0]): name for name in listed}
    for index in range(15):
        assert reader.folder_of(index) == by_index.get(index), index
    for name in [*listed, "3-link", "4-file", "12", "1-c.replaced-5", "2-x/..", "9-none"]:
        assert reader.is_folder(name) == (name in listed), name


def test_one_folder_is_looked_up_without_reading_the_journal_whole(tmp_path: Path) -> None:
    """``record_of`` (what ``xqueue logs`` asks) finds a folder's newest line by searching
    the journal; the careful reading, which parses every line, is not needed for lines
    as xqueue writes them, and is for a folder named in another field."""
    wd = tmp_path / "wd"
    wd.mkdir()
    lines = [
        {"status": "submitted", "attempt": 1, "jid": "7@1.0", "rc": None, "reason": ""},
        {"status": "finished", "attempt": 1, "jid": "7@1.0", "rc": 0, "reason": ""},
        {"status": "failed", "attempt": 2, "jid": "8@1.0", "rc": 3, "reason": "5-b"},
    ]
    folders = ["3-a", "3-a", "4-c"]
    text = "".join(json.dumps({**r, "time": 1.0, "dir": f}) + "\n" for r, f in zip(lines, folders))
    (wd / "journal.jsonl").write_text(text)
    reader = WorkdirReader(wd)
    reader.journal = None  # type: ignore[assignment,method-assign]  # any careful reading fails
    assert reader.record_of("3-a") == {**lines[1], "time": 1.0}
    assert reader.record_of("9-none") is None
    with pytest.raises(TypeError):  # "5-b" is a reason here: only the careful reading can tell
        reader.record_of("5-b")
    assert WorkdirReader(wd).record_of("5-b") is None
    (wd / "journal.jsonl").write_text("")
    assert WorkdirReader(wd).record_of("3-a") is None


def test_the_spec_index_reads_blocks_as_each_line_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume skips a job whose spec digest matches its folder's: the index, read a
    block of lines at a time, must give each folder exactly what reading its lines one
    by one gives, whatever near misses of xqueue's shape are among them."""
    import random

    import xqueue.records as records

    def one_by_one(data: bytes) -> dict[str, bytes]:
        found = {}
        lines = data.split(b"\n")
        if lines[-1] and records.parse_object(lines[-1]) is None:
            lines.pop()  # a last line with no newline counts only if it is whole
        for line in lines:
            text, sep, tail = line.rpartition(b', "dir": "')
            if sep and tail[-2:] == b'"}' and text[:9] == b'{"spec": ':
                found[tail[:-2].decode(errors="replace")] = records.digest(text[9:])
        return found

    rng = random.Random(11)
    for trial in range(300):
        lines = []
        for n in range(rng.randrange(1, 30)):
            spec = json.dumps({"command": ["true", str(n)], "index": n}, sort_keys=True)
            folder = f"{rng.randrange(6)}-j"
            line = f'{{"spec": {spec}, "dir": "{folder}"}}'
            if rng.random() < 0.15:
                line = rng.choice(
                    [
                        line[: rng.randrange(len(line))],  # torn
                        f'{{"spec": {spec}, "dir": "{folder}\\"x"}}',  # an escaped quote
                        f'{{"spec": {spec}, "dir": "{folder}"}}"}}',  # a second ending
                        f'{{"spec" : {spec}, "dir": "{folder}"}}',  # another head
                        f'{{"dir": "{folder}"}}',  # no spec
                        f'{{"spec": {spec}, "dir": "{folder}\\\\"}}',  # an escaped backslash
                        f'{{"spec": {spec}, "dir": "{folder}"',  # cut after the quote
                        # cut after a nested "dir" (in its envs): it ends as a line does
                        f'{{"spec": {{"envs": {{"a": "1", "dir": "{folder}"}}',
                        "",
                    ]
                )
            lines.append(line)
        data = "\n".join(lines).encode() + rng.choice([b"\n", b""])
        wd = tmp_path / f"wd{trial}"
        wd.mkdir()
        (wd / "specs.jsonl").write_bytes(data)
        monkeypatch.setattr(records, "_BLOCK", rng.choice([5, 50, 400, 1 << 22]))
        reader = WorkdirReader(wd)
        assert reader.spec_digest("none") is None
        # All of the index, names no job could have included: the same as line by line.
        assert reader._digests == one_by_one(data), lines
        # and what ``xqueue status`` reads (the careful reading) says the same
        careful = records.parse_specs(data)
        assert {f: records.digest(t.encode()) for f, t in careful.items()} == one_by_one(data)


def test_fields_of_the_wrong_type_are_not_trusted(tmp_path: Path) -> None:
    data = b'{"status": "submitted", "attempt": "x", "rc": true, "jid": 5, "time": "soon"'
    record = parse_journal(data + b', "dir": "0-a"}\n', "j")["0-a"]
    assert [record[k] for k in ("attempt", "rc", "jid", "time")] == [None, None, "5", 0.0]


def test_held_records_are_written_together_and_before_a_later_intent(tmp_path: Path) -> None:
    """The engine holds the records it makes while handling a burst of events: none is
    written until the flush, then all in one line each; a submission intent made
    meanwhile goes after them (a job's intent must follow its earlier lines)."""
    wd = Workdir(tmp_path / "wd")
    first, second = submitted(wd, 0), submitted(wd, 1)
    journal = wd.path / "journal.jsonl"
    before = journal.read_bytes()
    wd.hold_records()
    first.status, first.rc = JobStatus.FINISHED, 0
    wd.record(first)
    second.status = JobStatus.RETRYING
    wd.record(second)
    assert journal.read_bytes() == before  # held
    second.status, second.attempt = JobStatus.SUBMITTING, 2
    wd.record_many([second])  # the intent of its next attempt: written now, after them
    lines = journal.read_bytes()[len(before) :].decode().splitlines()
    assert [(json.loads(x)["dir"][:1], json.loads(x)["status"]) for x in lines] == [
        ("0", "finished"),
        ("1", "retrying"),
        ("1", "submitting"),
    ]
    wd.record(first)  # still held after the intent
    assert journal.read_bytes().count(b"\n") == len(before.splitlines()) + 3
    wd.flush_records()
    assert journal.read_bytes().count(b"\n") == len(before.splitlines()) + 4
    wd.record(second)  # no longer held: written at once
    assert journal.read_bytes().count(b"\n") == len(before.splitlines()) + 5
    assert WorkdirReader(wd.path).journal()["1-echo-1"]["status"] == "submitting"


@pytest.mark.parametrize("journal", ["writable", "failing"])
@pytest.mark.parametrize("end", ["after its start", "with its start"])
async def test_a_bug_in_a_handler_still_writes_the_held_records(
    workdir: Path,
    journal: str,
    end: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error raised while the engine holds records (a bug in a handler) leaves with
    the records made before it written; a write that fails then is logged, and does
    not replace the error on its way out. Also when the job's end is heard before its
    start is handled (a loaded machine): that end is handled once the start's records
    are written, as it was when a task awaited it, not in the same batch."""
    from xqueue.engine import Engine
    from xqueue.schedulers.local import LocalScheduler

    handle, flush, bugs = Engine._on_update, Workdir.flush_records, []
    submit = LocalScheduler.submit_jobs

    async def slow_return(self: LocalScheduler, jobs: Any) -> Any:
        results = await submit(self, jobs)
        await anyio.sleep(0.3)  # `true` ends meanwhile, and its end is read
        return results

    if end == "with its start":
        monkeypatch.setattr(LocalScheduler, "submit_jobs", slow_return)

    def buggy(self: Engine, job: Job, *args: Any) -> Any:
        calls = handle(self, job, *args)
        if job.status is JobStatus.FINISHED:
            bugs.append(job)
            raise RuntimeError("a bug in a handler")
        return calls

    def full(self: Workdir) -> None:
        if bugs and self._held:  # the disk fills as the bug strikes
            raise OSError(28, "No space left on device")
        flush(self)

    monkeypatch.setattr(Engine, "_on_update", buggy)
    if journal == "failing":
        monkeypatch.setattr(Workdir, "flush_records", full)
    q = Xqueue(workdir=workdir)
    job = await q.feed(["true"])
    with caplog.at_level(logging.ERROR, "xqueue"), pytest.raises(Exception) as raised:
        await q.run_until_complete()
    # The run raises the task group's group, which holds the handler's error alone.
    assert raised.group_contains(RuntimeError, match="a bug in a handler")
    assert not raised.group_contains(OSError)
    records = await anyio.to_thread.run_sync(WorkdirReader(workdir).journal)
    if journal == "writable":
        assert records[Path(job.dir).name]["status"] == "finished"
    else:
        assert records[Path(job.dir).name]["status"] == "submitted"
        assert "could not write the journal: [Errno 28] No space left" in caplog.text


async def test_a_hook_that_awaits_finds_the_job_recorded(workdir: Path) -> None:
    """Records held while the engine handles events are written before it awaits a hook:
    a plugin that acts on a job's end finds that end in the journal."""
    seen: list[tuple[str, int, str]] = []

    async def newest(job: Job) -> str:
        records = await anyio.to_thread.run_sync(WorkdirReader(workdir).journal)
        return str(records[Path(job.dir).name]["status"])

    class Plugin:
        @hookimpl
        async def on_job_retrying(self, job: Job) -> None:
            seen.append(("retrying", job.attempt, await newest(job)))

        @hookimpl
        async def on_job_succeeded(self, job: Job) -> None:
            seen.append(("succeeded", job.attempt, await newest(job)))

        @hookimpl
        async def on_job_failed(self, job: Job) -> None:
            seen.append(("failed", job.attempt, await newest(job)))

    q = Xqueue(workdir=workdir, plugins=[Plugin()], error_strategy="retry", num_retries=1)
    await q.feed(["true"])
    await q.feed("exit 3")
    await q.run_until_complete()
    assert sorted(seen) == [
        ("failed", 2, "failed"),
        ("retrying", 1, "retrying"),
        ("succeeded", 1, "finished"),
    ]


@pytest.mark.parametrize(
    "garbage", [b"\xff\xfe", b"[]", b"12", b'"finished"', b'{"status": "fin', b'{"status": []}']
)
def test_a_garbage_status_file_counts_as_not_finished(
    tmp_path: Path, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # A workdir of the older layout: final records in job.status files, still read.
    wd = Workdir(tmp_path / "wd")
    job = submitted(wd, 0)
    wd.unlock()
    Path(job.path("job.status")).write_bytes(garbage)
    with caplog.at_level(logging.WARNING, "xqueue.workdir"):
        record = WorkdirReader(tmp_path / "wd").last_record(job.dir)
    assert record is not None and record["status"] == "submitted"  # the journal's word
    assert f"ignoring {job.path('job.status')}: not an xqueue record" in caplog.text


async def test_a_run_over_a_corrupted_status_file_recovers_the_result(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    first = Xqueue(workdir=tmp_path / "wd")
    job = await first.feed(f"echo x >> {marker}")
    await first.run_until_complete()
    assert job.status is JobStatus.FINISHED
    await anyio.Path(job.path("job.status")).write_bytes(b"\xff[1,2")
    again = Xqueue(workdir=tmp_path / "wd")
    rerun = await again.feed(f"echo x >> {marker}")
    await again.run_until_complete()
    # The unreadable record is passed over; the journal and the job's own rc file still
    # say it ran and succeeded, so it is collected, not run a second time.
    assert rerun.status is JobStatus.FINISHED and rerun.rc == 0
    assert await anyio.Path(marker).read_text() == "x\n"


def test_a_directory_as_the_journal_is_a_one_line_error(tmp_path: Path) -> None:
    wd = Workdir(tmp_path / "wd")
    (tmp_path / "wd" / "journal.jsonl").mkdir()
    with pytest.raises(WorkdirError, match=r"journal.jsonl' is a directory .* move it away"):
        WorkdirReader(wd.path).journal()
    with pytest.raises(WorkdirError, match=r"journal.jsonl' is a directory"):
        submitted(wd, 0)
    for out in (
        xqueue("status", str(wd.path)),
        xqueue("run", "-w", str(wd.path), input="true\n"),
    ):
        assert out.returncode == 2
        no_traceback(out.stderr)
        assert "journal.jsonl' is a directory where xqueue keeps a file; move it away" in out.stderr
        # The job was never started (its intent could not be recorded): nothing is left
        # submitting for the run to wait for until its shutdown deadline.
        assert "still alive" not in out.stderr


def test_a_directory_as_a_status_file_is_a_one_line_error(tmp_path: Path) -> None:
    wd = Workdir(tmp_path / "wd")
    job = submitted(wd, 0)
    wd.unlock()
    Path(job.path("job.status")).mkdir()
    with pytest.raises(WorkdirError, match=r"job.status' is a directory"):
        wd.last_record(job.dir)
    with pytest.raises(WorkdirError, match=r"job.status' is a directory"):
        atomic_write(job.path("job.status"), "{}")
    assert [p.name for p in Path(job.dir).iterdir() if p.name.endswith(".tmp")] == []
    for out in (
        xqueue("status", str(wd.path)),
        xqueue("run", "-w", str(wd.path), input="echo 0\n"),
    ):
        assert out.returncode == 2, out
        no_traceback(out.stderr)
        assert "job.status' is a directory" in out.stderr


def test_a_torn_last_line_is_ignored_and_the_next_record_starts_a_new_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wd = Workdir(tmp_path / "wd")
    first = submitted(wd, 0)
    wd.unlock()
    journal = tmp_path / "wd" / "journal.jsonl"
    with journal.open("ab") as fh:
        fh.write(b'{"status": "submitted", "attempt": 1, "ji')  # a crash mid-write
    with caplog.at_level(logging.WARNING, "xqueue.workdir"):
        assert set(WorkdirReader(wd.path).journal()) == {os.path.basename(first.dir)}
    assert caplog.text == ""  # expected after a crash: not worth a warning

    again = Workdir(tmp_path / "wd")
    second = submitted(again, 1)
    again.unlock()
    lines = journal.read_bytes().split(b"\n")
    assert lines[1] == b'{"status": "submitted", "attempt": 1, "ji'
    assert json.loads(lines[2])["dir"] == os.path.basename(second.dir)
    assert set(WorkdirReader(wd.path).journal()) == {
        os.path.basename(first.dir),
        os.path.basename(second.dir),
    }


async def test_a_torn_exits_line_does_not_take_the_next_exit_code_with_it(workdir: Path) -> None:
    # The shepherd appended its next line to the torn one: a job that had ended while
    # no controller watched was failed as "exit status unknown" and run again.
    q = Xqueue(workdir=workdir, handle_signals=False)
    await q.feed("true")
    await q.run_until_complete()
    exits = anyio.Path(workdir / "exits.jsonl")
    await exits.write_bytes((await exits.read_bytes())[:-3])  # a crash mid-write
    q = Xqueue(workdir=workdir, handle_signals=False, error_strategy="ignore")
    await q.feed("true")
    second = await q.feed("exit 3")
    await q.run_until_complete()
    codes = await anyio.to_thread.run_sync(Workdir(workdir).exit_codes, [second])
    assert codes == {second: 3}


async def test_a_torn_spec_line_does_not_make_the_next_job_run_again(workdir: Path) -> None:
    # A full disk (or a crash) cut a spec line short; the next run's spec was glued to
    # it and matched nothing after, so a job that had succeeded ran again in every run.
    ledger = anyio.Path(workdir.parent / "ledger")
    q = Xqueue(workdir=workdir, handle_signals=False)
    await q.feed(f"echo 0 >> {ledger}")
    await q.run_until_complete()
    specs = anyio.Path(workdir / "specs.jsonl")
    await specs.write_bytes((await specs.read_bytes())[:-5])
    for _ in range(3):
        q = Xqueue(workdir=workdir, handle_signals=False)
        for i in range(2):
            await q.feed(f"echo {i} >> {ledger}")
        await q.run_until_complete()
    # Job 0 ran again once (its own spec was the torn one), job 1 once: never again.
    assert sorted((await ledger.read_text()).split()) == ["0", "0", "1"]


# -- planted links ----------------------------------------------------------------------------
def plant(path: Path, target: Path, kind: str) -> None:
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "hardlink":
        os.link(target, path)
    else:
        os.mkfifo(path)


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_a_planted_lock_file_is_refused(tmp_path: Path, kind: str) -> None:
    target = outside_file(tmp_path)
    wd = Workdir(tmp_path / "wd")
    plant(wd.path / ".lock", target, kind)
    with pytest.raises(WorkdirError, match=r"\.lock' is (a symbolic link|a hard link|not a plain)"):
        wd.lock()
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_a_planted_journal_is_refused(tmp_path: Path, kind: str) -> None:
    target = outside_file(tmp_path)
    wd = Workdir(tmp_path / "wd")
    plant(wd.path / "journal.jsonl", target, kind)
    with pytest.raises(WorkdirError, match=r"journal.jsonl' is"):
        submitted(wd, 0)
    assert target.read_text() == "precious\n"
    if kind == "symlink":  # reading does not follow it either
        with pytest.raises(WorkdirError, match="is a symbolic link"):
            WorkdirReader(wd.path).journal()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
async def test_a_planted_specs_file_fails_the_job_not_the_target(tmp_path: Path, kind: str) -> None:
    """specs.jsonl is where a job's spec goes when its folder is made: planted, it fails
    the job before anything runs (a job with no spec could run twice later)."""
    target = await anyio.to_thread.run_sync(outside_file, tmp_path)
    q = Xqueue(workdir=tmp_path / "wd", error_strategy="ignore")
    await anyio.to_thread.run_sync(plant, tmp_path / "wd" / "specs.jsonl", target, kind)
    job = await q.feed(["echo", "never"])
    await q.run_until_complete()
    assert job.status is JobStatus.FAILED and "specs.jsonl' is" in job.reason
    assert not await anyio.Path(job.stdout_path).exists()
    assert await anyio.Path(target).read_text() == "precious\n"


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
async def test_a_planted_exits_file_stops_the_run_before_any_job(tmp_path: Path, kind: str) -> None:
    """exits.jsonl is opened for the local shepherd when the run starts."""
    target = await anyio.to_thread.run_sync(outside_file, tmp_path)
    q = Xqueue(workdir=tmp_path / "wd", error_strategy="ignore")
    await anyio.to_thread.run_sync(plant, tmp_path / "wd" / "exits.jsonl", target, kind)
    job = await q.feed(["echo", "never"])
    with pytest.raises(WorkdirError, match=r"exits.jsonl' is"):
        await q.run_until_complete()
    assert job.status is JobStatus.KILLED and not await anyio.Path(job.stdout_path).exists()
    assert await anyio.Path(target).read_text() == "precious\n"


def test_status_files_are_written_through_fresh_names_only(tmp_path: Path) -> None:
    target = outside_file(tmp_path)
    wd = Workdir(tmp_path / "wd")
    job = submitted(wd, 0)
    status = Path(job.path("job.status"))
    status.symlink_to(target)
    Path(f"{status}.tmp").symlink_to(target)  # the temporary name xqueue once used
    job.status, job.rc = JobStatus.FINISHED, 0
    wd.record(job)  # a final record is a journal line: no file at a name one could plant
    assert target.read_text() == "precious\n"
    assert WorkdirReader(wd.path).journal()[os.path.basename(job.dir)]["status"] == "finished"
    atomic_write(str(status), "{}")  # and a file written atomically replaces the link
    assert target.read_text() == "precious\n"
    assert not status.is_symlink() and status.read_text() == "{}"
    assert sorted(p.name for p in Path(job.dir).iterdir()) == [
        "job.status",
        "job.status.tmp",
    ]


def test_the_write_probe_cannot_be_redirected(tmp_path: Path) -> None:
    target = outside_file(tmp_path)
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / f".xqueue-write-test-{os.getpid()}").symlink_to(target)  # the old name
    Workdir(tmp_path / "wd")
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_open_output_refuses_anything_but_a_plain_file(tmp_path: Path, kind: str) -> None:
    target = outside_file(tmp_path)
    plant(tmp_path / "job.stdout", target, kind)
    with pytest.raises(WorkdirError, match=r"job\.stdout' is"):
        open_output(tmp_path / "job.stdout")
    assert target.read_text() == "precious\n"


def test_open_output_empties_a_plain_file(tmp_path: Path) -> None:
    (tmp_path / "job.stdout").write_text("an earlier attempt\n")
    fd = open_output(tmp_path / "job.stdout")
    os.write(fd, b"new\n")
    os.close(fd)
    assert (tmp_path / "job.stdout").read_text() == "new\n"


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
async def test_a_planted_job_output_fails_the_job_not_the_target(tmp_path: Path, kind: str) -> None:
    target = await anyio.to_thread.run_sync(outside_file, tmp_path)
    first = Xqueue(workdir=tmp_path / "wd", error_strategy="ignore")
    job = await first.feed("echo overwritten; exit 1")
    await first.run_until_complete()
    assert job.status is JobStatus.FAILED

    # Planted where the next run's attempt (the second) writes its output.
    await anyio.to_thread.run_sync(plant, Path(job.dir, "job.2.stdout"), target, kind)
    again = Xqueue(workdir=tmp_path / "wd", error_strategy="ignore")
    rerun = await again.feed("echo overwritten; exit 1")
    await again.run_until_complete()
    assert rerun.status is JobStatus.FAILED and rerun.attempt == 2
    assert "job.2.stdout' is a" in rerun.reason
    assert await anyio.Path(target).read_text() == "precious\n"
    assert await anyio.Path(job.dir, "job.1.stdout").read_text() == "overwritten\n"  # kept


async def test_a_link_planted_at_a_job_folder_is_never_written_through(tmp_path: Path) -> None:
    # The job failed ("cannot create job folder ... File exists"), and its failure was
    # noted in job.1.stderr through the link: outside the workdir.
    elsewhere = anyio.Path(tmp_path / "elsewhere")
    await elsewhere.mkdir()
    workdir = anyio.Path(tmp_path / "wd")
    await workdir.mkdir()
    await (workdir / "0-echo-hi").symlink_to(elsewhere)
    q = Xqueue(workdir=tmp_path / "wd", error_strategy="ignore", handle_signals=False)
    job = await q.feed("echo hi")
    await q.run_until_complete()
    assert job.status is JobStatus.FAILED and "cannot create job folder" in job.reason
    assert [p async for p in elsewhere.iterdir()] == []


# -- whose workdir ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o757])
def test_a_workdir_everyone_can_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "wd"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(WorkdirError, match=r"every user can write to it .*XQUEUE_TRUST_WORKDIR=1"):
        Workdir(path)
    Workdir(path, trust=True)


def test_trust_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "wd"
    path.mkdir()
    path.chmod(0o777)
    monkeypatch.setenv("XQUEUE_TRUST_WORKDIR", "0")
    with pytest.raises(WorkdirError):
        Workdir(path)
    monkeypatch.setenv("XQUEUE_TRUST_WORKDIR", "1")
    Workdir(path)


def test_a_group_writable_workdir_of_ours_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "wd"
    path.mkdir()
    path.chmod(0o770)
    Workdir(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_a_workdir_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wd"
    path.mkdir()
    os.chown(path, 65534, 65534)
    with pytest.raises(WorkdirError, match=r"it belongs to .*uid 65534.*, not to you"):
        Workdir(path)
    Workdir(path, trust=True)


def test_the_cli_says_how_to_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "wd"
    path.mkdir()
    path.chmod(0o777)
    out = xqueue("run", "-w", str(path), input="true\n")
    assert out.returncode == 2
    no_traceback(out.stderr)
    assert "every user can write to it" in out.stderr and "XQUEUE_TRUST_WORKDIR=1" in out.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 and list(path.iterdir()) == []


_LOCK_HOLDER = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "os.write(fd, f'{os.getpid()}@1'.encode())\n"
    "print('locked', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_status_probe_on_the_lock_does_not_fail_a_starting_run(tmp_path: Path) -> None:
    """``xqueue status`` tests the lock with a brief shared flock; a run that starts at
    that moment waits it out instead of reporting the workdir in use."""
    import fcntl
    import threading

    wd = Workdir(tmp_path / "wd")
    (wd.path / ".lock").write_text("")
    probe = os.open(wd.path / ".lock", os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)
    threading.Timer(0.05, os.close, [probe]).start()
    wd.lock()  # would fail at once without the retry
    try:
        assert WorkdirReader(wd.path).controller() == str(os.getpid())
        with pytest.raises(WorkdirError, match="taken by another Xqueue of this process"):
            Workdir(tmp_path / "wd").lock()
    finally:
        wd.unlock()
    assert WorkdirReader(wd.path).controller() is None
    # Held by another process: that one is named.
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(wd.path / ".lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout and holder.stdout.readline() == "locked\n"
        with pytest.raises(
            WorkdirError, match=rf"in use by another xqueue run \(pid {holder.pid}\)"
        ):
            Workdir(tmp_path / "wd").lock()
    finally:
        holder.kill()
        holder.communicate()


def test_a_full_file_system_is_not_called_a_permission_problem() -> None:
    # Out of inodes, a job's output file was refused with "No space left on device;
    # fix its permissions or use another workdir".
    from xqueue._files import file_error

    full = str(file_error("/wd/0-x/job.1.stdout", OSError(errno.ENOSPC, "No space left"), "open"))
    assert "make room on its file system" in full and "permissions" not in full
    denied = str(file_error("/wd/x", OSError(errno.EACCES, "Permission denied"), "open"))
    assert "fix its permissions" in denied
