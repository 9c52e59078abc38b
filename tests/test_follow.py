"""Following a growing file (``cli.tail``) and a run's view built from its events
(``cli.follow.RunView``): replaced, truncated and half-written files, hostile lines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xqueue.cli.follow import RunView, failure_line
from xqueue.cli.tail import RESTART, Tail
from xqueue.errors import WorkdirError


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def test_only_whole_lines_are_handed_out(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tail = Tail(str(path))
    assert list(tail.poll()) == []  # nothing yet: not an error
    append(path, b'{"a": 1}\n{"b": ')
    assert list(tail.poll()) == [b'{"a": 1}']
    assert tail.caught_up()
    append(path, b"2}\n")
    assert list(tail.poll()) == [b'{"b": 2}']
    assert list(tail.poll()) == []


def test_a_replaced_file_is_finished_then_followed_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, b"old 1\n")
    tail = Tail(str(path))
    assert list(tail.poll()) == [b"old 1"]
    append(path, b"old 2\n")
    os.replace(path, tmp_path / "events.jsonl.1")  # a new run keeps the old one aside
    assert list(tail.poll()) == [b"old 2"]  # no new file yet: the old one is read on
    append(path, b"new 1\n")
    assert list(tail.poll()) == [RESTART, b"new 1"]


def test_a_truncated_file_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "out"
    append(path, b"one\ntwo\n")
    tail = Tail(str(path))
    assert list(tail.poll()) == [b"one", b"two"]
    with open(path, "wb") as fh:
        fh.write(b"x\n")
    assert list(tail.poll()) == [RESTART, b"x"]


def test_links_and_fifos_are_refused(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("secret\n")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(WorkdirError, match="symbolic link"):
        list(Tail(str(tmp_path / "link")).poll())
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(WorkdirError, match="not a regular file"):
        list(Tail(str(tmp_path / "fifo")).poll())


def job(event: str, index: int, status: str, time: float = 10.0, **extra: object) -> dict:
    return {"event": event, "job": index, "status": status, "time": time, **extra}


def test_the_view_counts_incrementally_and_keeps_the_last_failures() -> None:
    view = RunView()
    view.apply(job("job_succeeded", 0, "finished", reason="succeeded in an earlier run"))
    for i in range(1, 9):
        view.apply(job("job_init", i, "init"))
    view.apply({"event": "run_started", "time": 100.0, "scheduler": "local", "forks": 2})
    for i in range(1, 9):
        view.apply(job("job_started", i, "running"))
    for i in range(1, 8):
        view.apply(job("job_failed", i, "failed", name=f"n{i}", rc=i, reason=f"r{i}"))
    view.apply({"event": "job_started", "job": "x", "status": 3})  # not an event of ours
    assert view.total == 9 and view.done == 8 and view.ended == 7
    assert dict(view.counts) == {"finished": 1, "failed": 7, "running": 1}
    assert [e["job"] for e in view.failures] == [3, 4, 5, 6, 7]  # the latest five
    assert view.ignored == 1
    assert view.rate(110.0) == pytest.approx(0.7)  # 7 ended in this run, in 10 s
    assert view.eta(110.0) == "1s"
    view.apply({"event": "run_stopped", "time": 120.0, "reason": "complete"})
    assert view.elapsed(999.0) == 20.0 and view.eta(999.0) == "-"
    assert not view.succeeded()  # complete, with failures
    assert view.outcome() == "the run stopped: complete"


def test_text_from_the_stream_is_shown_literally() -> None:
    view = RunView()
    view.apply(job("job_started", 1, "\x1b[2Jodd"))  # a state is whatever a line says
    view.apply(
        job("job_failed", 0, "failed", name="[bold]x[/] \x1b]0;t\x07", rc=1, reason="\u202e")
    )
    assert "\x1b" not in view.summary(0.0) and "\\x1b[2Jodd" in view.summary(0.0)
    line = failure_line(view.failures[0])
    assert line == "#0  [bold]x[/] \\x1b]0;t\\x07  failed  rc 1  \\u202e"


def test_the_terminal_view_renders_hostile_text_literally(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from xqueue.cli.follow import Follower, _Screen

    lines = [
        '{"event": "run_started", "time": 1.0, "scheduler": "[/]", "forks": 2}',
        '{"event": "job_failed", "job": 0, "status": "failed", "time": 2.0, "rc": 1,'
        ' "name": "[link=https://evil.example]x[/link] [bold]", "reason": ":smile: [/]"}',
        '{"event": "job_started", "job": 1, "status": "[red]odd", "time": 2.0}',
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    follower = Follower(str(tmp_path), io.StringIO(), as_json=False)
    follower.step()
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(_Screen(follower))
    text = out.getvalue()
    assert "[link=https://evil.example]x[/link] [bold]" in text
    assert ":smile: [/]" in text and "[red]odd 1" in text and "[/], forks 2" in text


def test_a_plain_follow_prints_the_final_counts_once(tmp_path: Path) -> None:
    """Into a pipe the view prints the counts as they change; the run's end then adds the
    failures and the outcome, not the same counts a second time."""
    import io
    import json
    import threading
    import time

    from xqueue.cli import follow
    from xqueue.workdir import Workdir

    wd = Workdir(tmp_path / "wd")
    wd.lock()  # a controller holds the workdir while its run goes on
    now = time.time()
    events = [
        {"event": "run_started", "time": now, "scheduler": "local", "forks": 1},
        job("job_init", 0, "init", time=now),
        job("job_succeeded", 0, "finished", time=now),
    ]
    stream = wd.path / "events.jsonl"
    stream.write_text("".join(json.dumps(e) + "\n" for e in events))

    def stop() -> None:  # after the view printed the final counts while the run went on
        time.sleep(follow.PLAIN_EVERY + 0.5)
        append(
            stream,
            json.dumps({"event": "run_stopped", "time": now, "reason": "complete"}).encode()
            + b"\n",
        )

    stopper = threading.Thread(target=stop)
    stopper.start()
    try:
        out = io.StringIO()
        follower = follow.Follower(str(wd.path), out, as_json=False)
        follower.start()
        code = follow._ending(follower, out, follow._follow_plain(follower, out))
    finally:
        stopper.join()
        wd.unlock()
    lines = out.getvalue().splitlines()
    assert code == 0
    assert [line.partition(": ")[2] for line in lines] == ["1 finished", "complete"], lines
