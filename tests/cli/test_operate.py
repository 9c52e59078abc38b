"""Operating a run from another terminal, as a user does: ``xqueue status --follow``,
``xqueue logs`` and ``xqueue cancel`` against a controller in another process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import process_alive
from tests.procs import PtyProcess, job_processes, kill_job_processes, stop, wait_no_job_processes
from xqueue.schedulers._proc import start_ticks

from .test_cli import XQ, xqueue


class Run:
    """``xqueue run`` of some commands in the background, cleaned up whatever happens."""

    def __init__(self, wd: Path, commands: list[str], *args: str) -> None:
        self.wd = wd
        self.proc = subprocess.Popen(
            [*XQ, "run", "-w", str(wd), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin
        self.proc.stdin.write("".join(f"{c}\n" for c in commands))
        self.proc.stdin.close()
        self.proc.stdin = None

    def wait_journal(self, what: str, count: int, timeout: float = 20) -> None:
        """Until the journal holds ``count`` lines containing ``what``."""
        journal = self.wd / "journal.jsonl"
        deadline = time.monotonic() + timeout
        while not journal.exists() or journal.read_text().count(what) < count:
            assert self.proc.poll() is None or journal.exists(), self.stderr()
            assert time.monotonic() < deadline, f"no {count} x {what!r} in the journal"
            time.sleep(0.05)

    def wait_event(self, what: str, timeout: float = 20) -> None:
        """Until the run's event stream holds ``what``, the run going on."""
        deadline = time.monotonic() + timeout
        while what not in read_if_there(self.wd / "events.jsonl"):
            assert time.monotonic() < deadline and self.proc.poll() is None, self.stderr()
            time.sleep(0.05)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def close(self) -> None:
        stop(self.proc)  # type: ignore[arg-type]
        kill_job_processes(self.wd)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.close()


def read_if_there(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def final_states(wd: Path, key: str = "status") -> list[Any]:
    lines = xqueue("status", str(wd), "--json").stdout.splitlines()
    return [(json.loads(line)["state"] or {}).get(key) for line in lines]


# -- status --follow --------------------------------------------------------------------------
def follow(wd: Path) -> subprocess.Popen[str]:
    """``xqueue status WD --follow`` in the background, its output read as text."""
    return subprocess.Popen(
        [*XQ, "status", str(wd), "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_follow_shows_a_run_of_another_process_until_it_stops(
    tmp_path: Path, runs: list[Run]
) -> None:
    wd, go = tmp_path / "wd", tmp_path / "go"
    # The last sleep ends only once the view has shown the run going on: however slow
    # the follower's start, the run is still there for it to show.
    commands = [f"sleep 0.{4 + i % 3}" for i in range(10)]
    commands += [f"until [ -e {go} ]; do sleep 0.05; done", "echo '[red]x' >&2; exit 3"]
    run = Run(wd, commands, "-f", "3")
    runs.append(run)
    deadline = time.monotonic() + 20
    while not (wd / "events.jsonl").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    plain = subprocess.Popen(
        [*XQ, "status", str(wd), "--follow"], stdout=subprocess.PIPE, text=True
    )
    as_json = subprocess.Popen(
        [*XQ, "status", str(wd), "-F", "--json"], stdout=subprocess.PIPE, text=True
    )
    assert plain.stdout is not None
    early: list[str] = []
    while not any(" running" in line for line in early):
        assert plain.poll() is None, early
        early.append(plain.stdout.readline())  # one a second at most while it runs
    go.touch()
    rest, _ = plain.communicate(timeout=60)
    out = "".join(early) + rest
    lines, _ = as_json.communicate(timeout=60)
    assert run.wait() == 1  # one job failed
    assert plain.returncode == 1  # the run did not fully succeed: so says the view too
    shown = out.splitlines()
    # Lines while it ran (one a second at most), then the end: counts, failures, outcome.
    assert any(" running" in line for line in shown[:-3]), out
    assert shown[-3].startswith("12/12 done, ") and shown[-3].endswith(": 1 failed, 11 finished")
    assert sum(line.endswith(": 1 failed, 11 finished") for line in shown) == 1, out  # once
    assert shown[-2] == "  #11  echo '[red]x' >&2; exit 3  failed  rc 3"
    assert shown[-1] == "the run stopped: complete"

    assert as_json.returncode == 1
    events = [json.loads(line) for line in lines.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "run_stopped" and "run_started" in kinds
    assert kinds.count("job_succeeded") == 11 and kinds.count("job_failed") == 1
    assert events == [json.loads(line) for line in (wd / "events.jsonl").read_text().splitlines()]


def test_follow_ends_when_the_controller_is_killed_and_on_ctrl_c(
    tmp_path: Path, runs: list[Run]
) -> None:
    wd = tmp_path / "wd"
    run = Run(wd, ["sleep 60"] * 2, "-f", "2")
    runs.append(run)
    run.wait_journal('"jid": "', 2)
    following = follow(wd)
    interrupted = PtyProcess([*XQ, "status", str(wd), "--follow"])  # a terminal's view
    try:
        deadline = time.monotonic() + 20
        while "running 2" not in interrupted.output():
            assert time.monotonic() < deadline, interrupted.output()
            time.sleep(0.05)
        interrupted.type(b"\x03")  # Ctrl-C
        assert interrupted.wait(timeout=10) == 130
        assert "Traceback" not in interrupted.output()
        # The view is cleared as it closes; its last counts are printed as a line (the
        # view itself writes "running 2").
        assert ": 2 running" in interrupted.output()
    finally:
        interrupted.close()
    run.proc.kill()  # no run_stopped event will ever come
    out, err = following.communicate(timeout=30)
    assert following.returncode == 1
    assert "the run's controller is gone without stopping its run" in err
    assert out.splitlines()[-1].endswith(": 2 running")


def test_follow_of_a_run_killed_and_replaced_at_once_ends_with_it(
    tmp_path: Path, runs: list[Run]
) -> None:
    """The controller was SIGKILLed and a new run took the workdir before the follower's
    next look at the lock: it followed the new run's stream as this run's, and exited 0
    at its end. The follower is held (SIGSTOP) over the swap, so the new stream is what
    it sees first."""
    wd = tmp_path / "wd"
    first = Run(wd, ["sleep 60"], "-f", "1")
    runs.append(first)
    first.wait_journal('"jid": "', 1)
    following = subprocess.Popen(
        [*XQ, "status", str(wd), "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (wd / "events.jsonl").read_text().count("job_started"):
            assert time.monotonic() < deadline, "the first run started no job"
            time.sleep(0.05)
        time.sleep(1)  # the follower has read the first run's stream
        following.send_signal(signal.SIGSTOP)
        first.proc.kill()
        first.wait()
        second = Run(wd, ["sleep 60"], "-f", "1")
        runs.append(second)
        while "run_started" not in (wd / "events.jsonl").read_text():
            assert time.monotonic() < deadline + 20, "the second run did not start"
            time.sleep(0.05)
        following.send_signal(signal.SIGCONT)
        out, err = following.communicate(timeout=20)
    finally:
        if following.poll() is None:
            following.kill()
    assert following.returncode == 1, err
    assert "the run's controller is gone without stopping its run" in err
    assert [json.loads(line)["event"] for line in out.splitlines()].count("run_started") == 1
    second.proc.terminate()  # the runs fixture ends what is left
    second.wait()


def test_follow_of_a_run_killed_earlier_times_it_by_its_last_event(
    tmp_path: Path, runs: list[Run]
) -> None:
    """A run whose controller was killed a while ago: its time ran to now (a run killed
    yesterday showed a day, and a rate a day long), and it had an ETA."""
    wd = tmp_path / "wd"
    run = Run(wd, ["true", "true", "sleep 60"], "-f", "3")
    runs.append(run)
    run.wait_event('"event": "job_started", "job": 2')
    run.proc.kill()
    run.proc.wait(timeout=10)
    events = [json.loads(line) for line in (wd / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] != "run_stopped"
    start = next(e["time"] for e in events if e["event"] == "run_started")
    time.sleep(1.5)  # what the follower would have added had it timed it to now
    out = xqueue("status", str(wd), "--follow")
    assert out.returncode == 1 and "gone without stopping its run" in out.stderr
    last = out.stdout.splitlines()[-1]
    assert f", ETA -, {events[-1]['time'] - start:,.1f}s: " in last, last


def test_follow_of_a_workdir_removed_under_it_says_so(tmp_path: Path, runs: list[Run]) -> None:
    """The workdir of a live run removed: the follower blamed a killed controller."""
    import shutil

    wd = tmp_path / "wd"
    run = Run(wd, ["sleep 60"], "-f", "1")
    runs.append(run)
    run.wait_journal('"jid": "', 1)
    following = follow(wd)
    assert following.stdout is not None
    # Removed once it follows (its first line), not after a guess at its start-up.
    assert "1 running" in following.stdout.readline()
    shutil.rmtree(wd, ignore_errors=True)
    _, err = following.communicate(timeout=30)
    assert following.returncode == 1
    assert "the workdir was removed (or moved) while it was followed" in err, err
    assert run.proc.poll() is None  # the controller is alive all the same


def test_follow_without_a_stream_or_run_says_so(tmp_path: Path) -> None:
    (tmp_path / "wd").mkdir()
    out = xqueue("status", str(tmp_path / "wd"), "--follow")
    assert out.returncode == 2
    assert "nothing to follow" in out.stderr and "Traceback" not in out.stderr


def test_follow_of_a_run_without_events_says_so_not_the_last_runs_end(
    tmp_path: Path, runs: list[Run]
) -> None:
    """The earlier run's stream stayed: a follower of a --no-events run reported that
    run's failure as this one's end, and exited 1 while the run went on to succeed."""
    wd = tmp_path / "wd"
    assert xqueue("run", "-w", str(wd), input="exit 3\n").returncode == 1
    run = Run(wd, ["sleep 30"], "--no-events")
    runs.append(run)
    run.wait_journal('"status": "submitted", "attempt": 1, "jid": "', 2)  # then its own
    out = xqueue("status", str(wd), "--follow")
    assert out.returncode == 2, out.stdout
    said = " ".join(out.stderr.split())
    assert "writes no event stream (started with --no-events" in said, said
    assert "complete" not in out.stdout and not (wd / "events.jsonl").exists()
    assert '"run_stopped"' in (wd / "events.jsonl.1").read_text()  # kept as the earlier one


@pytest.mark.parametrize("earlier", ["failed", "killed"])
def test_follow_started_just_before_a_run_follows_it_not_the_run_before(
    tmp_path: Path, runs: list[Run], earlier: str
) -> None:
    """`xqueue run -w WD ... & xqueue status WD -F` on a workdir run before: the follower
    read the earlier run's stream, found no controller yet (the new one was still
    starting), and exited 1 with that run's failure, or its controller's death, while
    the new run succeeded. The follower is held (SIGSTOP) from the moment it has read
    the earlier stream to the moment the new run holds the workdir, so the race goes
    the bad way every time."""
    wd = tmp_path / "wd"
    if earlier == "failed":
        assert xqueue("run", "-w", str(wd), input="exit 3\n").returncode == 1
        last, commands = "run_stopped", ["true"]
    else:  # its job ends on its own, and the new run (the same list) takes it as done
        last, commands = "job_started", ["sleep 0.5"]
        killed = Run(wd, commands)
        runs.append(killed)
        killed.wait_event('"event": "job_started"')
        killed.proc.kill()
        killed.wait()
    follower = subprocess.Popen(
        [*XQ, "status", str(wd), "-F", "--json"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert follower.stdout is not None
        kinds = []
        while not kinds or kinds[-1] != last:  # the earlier run's whole stream
            line = follower.stdout.readline()
            assert line, f"the follower ended after {kinds}"
            kinds.append(json.loads(line)["event"])
        follower.send_signal(signal.SIGSTOP)
        run = Run(wd, commands)
        runs.append(run)
        deadline = time.monotonic() + 20
        while not (wd / "events.jsonl.1").exists():  # it holds the workdir: a stream of its own
            assert time.monotonic() < deadline and run.proc.poll() is None, run.stderr()
            time.sleep(0.05)
        follower.send_signal(signal.SIGCONT)
        rest, _ = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert run.wait() == 0, run.stderr()
    after = [json.loads(line)["event"] for line in rest.splitlines()]
    assert "run_started" in after and after[-1] == "run_stopped", after
    assert after.count("job_succeeded") == 1 and "job_failed" not in after, after
    assert follower.returncode == 0


def test_follow_started_before_a_run_makes_its_new_workdir_waits_for_it(
    tmp_path: Path, runs: list[Run], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`xqueue run -w NEW ... & xqueue status NEW -F`: the run had not made its workdir
    yet, and the follower said "no workdir" at once (5 times in 7). In this process,
    with a grace long enough for a slow machine; the run starts once it waits."""
    from xqueue.cli import follow as following

    monkeypatch.setattr(following, "START_GRACE", 60.0)
    wd = tmp_path / "new"
    result: list[Any] = []
    waiting = threading.Thread(target=lambda: result.append(following.run(str(wd), True)))
    waiting.start()
    time.sleep(0.3)  # it looks for the workdir, which is not there
    assert waiting.is_alive() and not wd.exists()
    run = Run(wd, ["true"])
    runs.append(run)
    waiting.join(timeout=60)
    assert run.wait() == 0
    assert result == [0], result
    kinds = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert kinds.count("job_succeeded") == 1 and kinds[-1] == "run_stopped", kinds


SLOW_FEED = (
    "import sys, time, anyio\n"
    "from xqueue import Xqueue\n"
    "async def main():\n"
    "    q = Xqueue(workdir=sys.argv[1], events=False, handle_signals=False)\n"
    "    await q.feed('sleep 2')\n"
    "    print('fed', flush=True)\n"
    "    await anyio.sleep(2)  # the workdir is taken; the earlier stream is still there\n"
    "    await q.run_until_complete()\n"
    "anyio.run(main)\n"
)


def test_follow_started_before_a_run_without_events_begins_says_so(tmp_path: Path) -> None:
    """Started while the run was still being fed (the workdir taken, the earlier run's
    stream still there), the follower reported that run's end once this one's ended."""
    wd = tmp_path / "wd"
    assert xqueue("run", "-w", str(wd), input="exit 3\n").returncode == 1
    run = subprocess.Popen([sys.executable, "-c", SLOW_FEED, str(wd)], stdout=subprocess.PIPE)
    try:
        assert run.stdout and run.stdout.readline() == b"fed\n"
        out = xqueue("status", str(wd), "--follow")
        assert out.returncode == 2, out.stdout
        assert "writes no event stream" in " ".join(out.stderr.split())
    finally:
        run.communicate(timeout=30)
    assert run.returncode == 0


def test_a_folder_name_that_is_another_jobs_name_is_refused(tmp_path: Path) -> None:
    """A job named as another job's folder: `cancel WD <that>` killed the folder's job,
    exit 0, and the job of that name ran on; which one is meant is a guess."""
    wd = tmp_path / "wd"
    code = textwrap.dedent(
        f"""
        import anyio
        from xqueue import Xqueue

        async def main():
            q = Xqueue(workdir={str(wd)!r})
            await q.feed(["echo", "zero"])
            await q.feed(["echo", "one"], name="0-echo-zero")
            await q.run_until_complete()

        anyio.run(main)
        """
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
    assert (wd / "0-echo-zero").is_dir()
    for command in ("logs", "cancel"):
        out = xqueue(command, str(wd), "0-echo-zero")
        assert out.returncode == 2, (command, out.stdout)
        said = " ".join(out.stderr.split())
        assert "'0-echo-zero' is job 0's folder and the name of job(s) 1" in said, said
    assert xqueue("logs", str(wd), "1").stdout == "one\n"


# -- logs ----------------------------------------------------------------------------------
def test_logs_by_index_name_folder_stream_and_attempt(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    tries = 'echo "try $XQUEUE_JOB_ATTEMPT"; [ "$XQUEUE_JOB_ATTEMPT" -ge 2 ]'
    commands = ["echo out; echo '[bold]err' >&2", "echo same", "echo same", tries]
    ran = xqueue("run", "-w", str(wd), "-e", "retry", "-r", "2", input="\n".join(commands))
    assert ran.returncode == 0, ran.stderr
    assert xqueue("logs", str(wd), "0").stdout == "out\n"
    assert xqueue("logs", str(wd), "0", "--stderr").stdout == "[bold]err\n"
    assert xqueue("logs", str(wd), commands[0], "--stderr").stdout == "[bold]err\n"
    folder = next(p.name for p in wd.iterdir() if p.name.startswith("1-"))
    assert xqueue("logs", str(wd), folder).stdout == "same\n"
    assert xqueue("logs", str(wd), "3").stdout == "try 2\n"  # the latest attempt
    assert xqueue("logs", str(wd), "3", "--attempt", "1").stdout == "try 1\n"

    ambiguous = xqueue("logs", str(wd), "echo same")
    assert ambiguous.returncode == 2
    assert "2 jobs are named 'echo same': jobs 1, 2; name one by its index" in ambiguous.stderr
    for args, message in [
        (["9"], "no job 9 in"),
        (["nothing"], "no job named 'nothing'"),
        (["3", "--attempt", "7"], 'job 3 (echo "try'),
    ]:
        out = xqueue("logs", str(wd), *args)
        assert out.returncode == 2 and message in out.stderr, out.stderr


def test_logs_of_a_job_whose_folder_was_replaced_by_a_link_says_so(tmp_path: Path) -> None:
    """A link where a job's folder was said "no job 0 (it has no jobs)" of a workdir whose
    journal has it: now it says what is there, and that xqueue does not follow it."""
    wd = tmp_path / "wd"
    assert xqueue("run", "-w", str(wd), input="echo hi\n").returncode == 0
    (folder,) = [p for p in wd.iterdir() if p.name.startswith("0-")]
    folder.rename(tmp_path / "moved")
    folder.symlink_to(tmp_path / "moved")
    out = xqueue("logs", str(wd), "0")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"'{folder.name}' there, the name of job 0's folder, is a symbolic link" in out.stderr
    assert "never follows links" in out.stderr


# Commands longer than a name (48 characters) whose first 48 are the same: they cut to
# one name, and only the whole command tells them apart.
LONG = ": a command longer than the 48 characters of a job name; echo {0}"


def test_logs_takes_a_job_by_its_whole_command_and_never_by_its_first_48(
    tmp_path: Path,
) -> None:
    """A job's name is its command cut to 48 characters, so a whole long command named no
    job (``no job named '...'``, and nothing said why). It names the job whose recorded
    command it is; one that only begins as a job's name does is refused, naming it."""
    wd = tmp_path / "wd"
    commands = [LONG.format(word) for word in ("one", "two")]
    short = "echo short"  # a command under 48: its name, as before
    ran = xqueue("run", "-w", str(wd), input="\n".join([*commands, short, LONG.format("one")]))
    assert ran.returncode == 0, ran.stderr
    assert xqueue("logs", str(wd), commands[1]).stdout == "two\n"
    assert xqueue("logs", str(wd), short).stdout == "short\n"

    same = xqueue("logs", str(wd), commands[0])  # jobs 0 and 3 run the same command
    assert same.returncode == 2
    assert f"2 jobs have the command {commands[0]!r}: jobs 0, 3; name one by its index" in (
        " ".join(same.stderr.split())
    )
    other = xqueue("logs", str(wd), LONG.format("six"))  # begins as jobs 0, 1 and 3 do
    assert other.returncode == 2 and other.stdout == ""
    said = " ".join(other.stderr.split())
    assert f"no job named {LONG.format('six')!r}" in said
    assert "a job's name is its command cut to 48 characters, and its first 48" in said
    assert "are the name of jobs 0, 1, 3, whose commands are others" in said


def test_a_later_run_keeps_the_earlier_attempts_and_logs_shows_its_own(tmp_path: Path) -> None:
    """A job that failed runs again in a later run as attempts after its last: the
    earlier run's files stay, and ``logs`` shows the new output (a later run that
    started again from attempt 1 overwrote job.1.* and left ``logs`` on the old 3)."""
    wd, state = tmp_path / "wd", tmp_path / "state"
    state.write_text("first\n")
    job = f"cat {state}; exit 1"
    first = xqueue("run", "-w", str(wd), "-e", "retry", "-r", "2", input=job)
    assert first.returncode == 1 and "1 failed" in first.stderr, first.stderr
    state.write_text("second\n")
    second = xqueue("run", "-w", str(wd), input=job)
    assert second.returncode == 1, second.stderr
    assert xqueue("logs", str(wd), "0").stdout == "second\n"
    assert xqueue("logs", str(wd), "0", "--attempt", "4").stdout == "second\n"
    for n in (1, 2, 3):
        assert xqueue("logs", str(wd), "0", "--attempt", str(n)).stdout == "first\n"
    status = json.loads(xqueue("status", str(wd), "--json").stdout.splitlines()[0])
    assert status["state"]["attempt"] == 4, status


def test_logs_follow_prints_until_the_job_ends_while_the_run_goes_on(
    tmp_path: Path, runs: list[Run]
) -> None:
    wd = tmp_path / "wd"
    talk = "for i in 1 2 3; do echo line $i; sleep 0.4; done; echo bye >&2"
    run = Run(wd, [talk, "sleep 60"], "-f", "2")
    runs.append(run)
    run.wait_journal('"status": "submitting"', 1)  # its folder exists; its output may not yet
    out = xqueue("logs", str(wd), "0", "--follow")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "line 1\nline 2\nline 3\n"
    assert run.proc.poll() is None  # it stopped with the job, not with the run
    assert xqueue("logs", str(wd), "0", "-f", "--stderr").stdout == "bye\n"  # ended: at once
    assert xqueue("cancel", str(wd)).returncode == 0
    assert run.wait() == 143


def test_logs_follow_of_a_job_no_run_will_end_says_so_and_exits_1(
    tmp_path: Path, runs: list[Run]
) -> None:
    """Its controller killed while the job ran: following it stopped at once, as it
    should (nothing will record its end), but with exit 0, as if the job had ended."""
    wd = tmp_path / "wd"
    killed_controller(wd, ["sleep 60"], runs)
    assert xqueue("logs", str(wd), "0").returncode == 0  # started: its output so far
    out = xqueue("logs", str(wd), "0", "--follow")
    assert out.returncode == 1
    assert out.stderr == f"xqueue: no run is in progress in {wd}; stopped following\n"


def test_logs_follow_of_a_job_run_again_follows_the_new_attempt(
    tmp_path: Path, runs: list[Run]
) -> None:
    """A job that failed in a run, run again by the next: `logs -f` took the journal's
    old "failed" (attempt 1) for the end of attempt 2, and stopped at once."""
    wd, flag = tmp_path / "wd", tmp_path / "flag"
    ticks = "for i in 1 2 3; do echo tick $i; sleep 0.4; done"
    job = f"if [ -e {flag} ]; then {ticks}; else touch {flag}; exit 1; fi"
    assert xqueue("run", "-w", str(wd), input=job + "\n").returncode == 1
    run = Run(wd, [job])
    runs.append(run)
    run.wait_journal('"attempt": 2', 1)  # attempt 2 is being submitted
    out = xqueue("logs", str(wd), "0", "--follow")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "tick 1\ntick 2\ntick 3\n"
    assert run.wait() == 0


# -- cancel --------------------------------------------------------------------------------------
# A job whose shell dies on SIGTERM while the process it started ignores it: the whole
# group must go, or the job is recorded killed while its work goes on (and runs twice).
STUBBORN = "sh -c \"trap '' TERM; exec sleep 60\"; echo after"


@pytest.mark.parametrize("job", ["sleep 60", STUBBORN])
def test_cancel_stops_a_live_run_as_its_sigterm_does(
    tmp_path: Path, runs: list[Run], job: str
) -> None:
    wd = tmp_path / "wd"
    run = Run(wd, [job] * 3, "-f", "2", "-o", "kill_grace=1")
    runs.append(run)
    run.wait_journal('"jid": "', 2)
    out = xqueue("cancel", str(wd))
    assert out.returncode == 0, out.stderr
    assert "sent SIGTERM to the run's controller" in out.stdout
    assert out.stdout.endswith("the run stopped\n")
    assert run.wait() == 143
    assert "interrupted: run stopped by SIGTERM" in run.stderr()
    assert final_states(wd) == ["killed", "killed", None]
    assert wait_no_job_processes(wd, 5) == []


def test_cancel_kills_named_jobs_through_the_live_run(tmp_path: Path, runs: list[Run]) -> None:
    wd, go = tmp_path / "wd", tmp_path / "go"
    # Job 2 ends when the test says: ended any sooner, it would free its fork for job 3
    # while the cancels below are still starting up (a second, on a busy machine).
    second = f"while [ ! -e {go} ]; do sleep 0.05; done; echo done"
    run = Run(wd, ["sleep 60", "sleep 60", second, "sleep 60"], "-f", "3")
    runs.append(run)
    run.wait_journal('"jid": "', 3)
    ambiguous = xqueue("cancel", str(wd), "sleep 60")
    assert ambiguous.returncode == 2 and "jobs 0, 1, 3" in ambiguous.stderr
    out = xqueue("cancel", str(wd), "0", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "job 0 (sleep 60): killed\njob 3 (sleep 60): killed\n"
    go.touch()
    run.wait_journal('"status": "finished"', 1)  # the run goes on: job 2 ends as it would
    assert run.proc.poll() is None
    # Job 3 was still queued: killed before it was ever submitted, and recorded so (a
    # kill asked for by name shows in status as killed, not "not submitted").
    states = final_states(wd)
    assert states[0] == "killed" and states[2] == "finished" and states[3] == "killed"
    assert not (wd / "3-sleep-60" / "job.1.stdout").exists()  # never started
    assert states[1] in ("submitted", "running")  # still running, untouched
    again = xqueue("cancel", str(wd), "0")
    assert again.returncode == 0 and again.stdout == "job 0 (sleep 60): already ended (killed)\n"
    assert xqueue("cancel", str(wd)).returncode == 0
    assert run.wait() == 143
    assert final_states(wd) == ["killed", "killed", "finished", "killed"]
    assert wait_no_job_processes(wd, 5) == []


def test_cancel_of_a_job_that_ended_as_it_was_asked_says_so(
    tmp_path: Path, runs: list[Run]
) -> None:
    """A job whose exit was recorded but not yet seen by the run (its end comes with the
    next poll) is not killed: its end is its own. `xqueue cancel WD JOB` said "not
    killed: a kill is under way or a plugin vetoed it" and exited 1; it waits for the
    end and says how the job ended."""
    wd = tmp_path / "wd"
    # It writes its exit code, as a cluster wrapper does when its command ends, and
    # ends 3 s later: the run reads that file before a kill, and answers (before the
    # fix, "not killed", at once) within the half second its watcher takes.
    ended = 'echo 0 > "$XQUEUE_JOB_DIR/job.$XQUEUE_JOB_ATTEMPT.rc"'
    run = Run(wd, [f"{ended}; sleep 3"])
    runs.append(run)
    run.wait_journal('"jid": "', 1)
    while not list(wd.glob("0-*/job.1.rc")):
        time.sleep(0.05)
    out = xqueue("cancel", str(wd), "0")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.endswith(": already ended (finished)\n"), out.stdout
    assert run.wait() == 0
    assert final_states(wd) == ["finished"]


def test_cancel_kills_a_job_by_its_whole_command_never_by_its_first_48_characters(
    tmp_path: Path, runs: list[Run]
) -> None:
    """``xqueue cancel WD "<a command over 48 characters>"`` said ``no job named`` and
    killed nothing. The whole command names its job; a command that only begins as a
    job's name does (its first 48 characters) kills nothing and says which job that is."""
    wd = tmp_path / "wd"
    one, two = (f"sleep 60; {LONG.format(word)}" for word in ("one", "two"))
    run = Run(wd, [one, two], "-f", "2")
    runs.append(run)
    run.wait_journal('"jid": "', 2)
    guess = xqueue("cancel", str(wd), f"sleep 60; {LONG.format('six')}")
    assert guess.returncode == 2 and guess.stdout == ""
    said = " ".join(guess.stderr.split())
    assert "its first 48" in said and "are the name of jobs 0, 1, whose commands are others" in said
    out = xqueue("cancel", str(wd), two)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"job 1 ({two[:48]}): killed\n"
    run.wait_journal('"status": "killed"', 1)
    assert run.proc.poll() is None  # the run goes on, job 0 with it
    assert final_states(wd)[0] in ("submitted", "running")
    assert xqueue("cancel", str(wd)).returncode == 0
    assert run.wait() == 143


@pytest.mark.parametrize(
    ("job", "name"),
    # A folder that is not UTF-8: its jobs' marker was looked for as UTF-8 and cancel
    # failed with a traceback, leaving them running (a later run retried for ever).
    [("sleep 60", "wd"), (STUBBORN, "wd"), ("sleep 60", os.fsdecode(b"wd \xe9"))],
)
def test_cancel_without_a_controller_kills_what_it_left_running(
    tmp_path: Path, runs: list[Run], job: str, name: str
) -> None:
    wd = tmp_path / name
    run = Run(wd, [job] * 3, "-f", "2", "-o", "kill_grace=1")
    runs.append(run)
    run.wait_journal('"jid": "', 2)
    deadline = time.monotonic() + 20  # and the third job's folder (its spec: made, fed)
    while (wd / "specs.jsonl").read_text().count("\n") < 3:
        assert time.monotonic() < deadline, "the third job's folder was never made"
        time.sleep(0.05)
    run.proc.kill()
    run.wait()
    assert len(job_processes(wd)) >= 2  # the jobs outlive their controller
    assert final_states(wd) == ["submitted", "submitted", None]
    info = (wd / "run.json").read_text()
    (wd / "run.json").write_text('{"scheduler": ')  # torn: not "no run.json, older xqueue"
    torn = xqueue("cancel", str(wd))
    assert "run.json is not one xqueue writes (torn or edited)" in " ".join(torn.stderr.split())
    (wd / "run.json").write_text(info)
    out = xqueue("cancel", str(wd))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["job 0", "job 1"]
    assert all(": killed (" in line for line in lines)
    assert wait_no_job_processes(wd, 10) == []
    assert final_states(wd) == ["killed", "killed", None]
    # With the code the kill left, as a live run records it (it was recorded without).
    assert final_states(wd, "rc") == [143, 143, None]
    if name != "wd":
        return  # what follows reads output that names the folder as text
    status = xqueue("status", str(wd))
    assert "2 killed, 1 not submitted" in status.stdout
    nothing = xqueue("cancel", str(wd))
    assert nothing.returncode == 0
    assert nothing.stdout == "no run is in progress and no job is recorded as active\n"


def test_a_second_cancel_does_not_take_the_first_for_the_run(
    tmp_path: Path, runs: list[Run]
) -> None:
    """Two `xqueue cancel` on a workdir whose controller died: the first holds the lock
    while it kills (the jobs ignore SIGTERM for kill_grace). The second took it for the
    run's controller, SIGTERMed it mid-kill and said "the run stopped", exit 0, while
    the jobs ran on. Now it is refused, and the first finishes its work."""
    wd, go = tmp_path / "wd", tmp_path / "go"
    # A job's shell outlives the SIGTERM (its sleep does not) until the test says so:
    # the first cancel's kill lasts as long as the test needs, however slow the CLI.
    job = f"trap 'until [ -e {go} ]; do sleep 0.05; done; exit 143' TERM; sleep 60"
    run = Run(wd, [job] * 2, "-f", "2", "-o", "kill_grace=60")
    runs.append(run)
    run.wait_journal('"jid": "', 2)
    run.proc.kill()
    run.wait()
    first = subprocess.Popen(
        [*XQ, "cancel", str(wd)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while not (wd / ".lock").read_text().endswith(" cancel"):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first cancel never took the lock"
            time.sleep(0.02)
        second = xqueue("cancel", str(wd))
        assert second.returncode == 2, (second.stdout, second.stderr)
        said = " ".join(second.stderr.split())
        assert "another `xqueue cancel` (pid " in said and "is killing this workdir's jobs" in said
        run_now = xqueue("run", "-w", str(wd), input="true\n")  # nor does a run start
        assert run_now.returncode == 2
        assert "is held by `xqueue cancel` (pid" in " ".join(run_now.stderr.split())
        go.touch()
        out, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert out.count(": killed (") == 2, out
    assert wait_no_job_processes(wd, 10) == []
    assert final_states(wd) == ["killed", "killed"]


def test_a_kill_request_the_run_took_is_not_said_to_be_withdrawn(
    tmp_path: Path, runs: list[Run]
) -> None:
    """A kill that outlasts cancel's --timeout (the job ignores SIGTERM for kill_grace):
    cancel said "the request is withdrawn" while the run was killing the job."""
    wd = tmp_path / "wd"
    run = Run(wd, ["trap '' TERM; sleep 60"], "-o", "kill_grace=3")
    runs.append(run)
    run.wait_journal('"jid": "', 1)
    out = xqueue("cancel", str(wd), "0", "--timeout", "1")
    assert out.returncode == 1, out.stderr
    said = " ".join(out.stdout.split())
    assert "took the kill request but did not answer in 1s: the kill is under way" in said
    assert "withdrawn" not in said
    deadline = time.monotonic() + 20
    while final_states(wd) != ["killed"]:
        assert time.monotonic() < deadline, final_states(wd)
        time.sleep(0.2)
    assert run.wait() == 1  # the killed job is the run's failure


def test_a_kill_request_sent_while_the_run_feeds_is_kept_for_it(tmp_path: Path) -> None:
    """A run takes the lock at its first feed and drops requests "left from an earlier
    run" when it starts: one `xqueue cancel WD JOB` sent to it in between (a long list
    being fed) was dropped, and cancel waited out its timeout. Requests now name the run
    they are for; the others are still dropped."""
    from xqueue._identity import own_identity
    from xqueue.control import CONTROL_DIR, _prepare

    wd = tmp_path / "wd"
    folder = wd / CONTROL_DIR
    folder.mkdir(parents=True, mode=0o700)
    mine = folder / "kill-00000000000000aa.json"
    mine.write_text(json.dumps({"kill": [0], "controller": own_identity()}))
    other = folder / "kill-00000000000000bb.json"
    other.write_text(json.dumps({"kill": [0], "controller": "1@1"}))
    unaddressed = folder / "kill-00000000000000cc.json"
    unaddressed.write_text(json.dumps({"kill": [0]}))
    answered = folder / "kill-00000000000000dd.reply"
    answered.write_text("{}")
    for path in (mine, other, unaddressed, answered):
        path.chmod(0o600)
    _prepare(wd, {"events": True})
    assert sorted(p.name for p in folder.iterdir()) == [mine.name]


def test_a_run_that_stops_without_killing_what_is_running_is_not_said_to_have(
    tmp_path: Path, runs: list[Run]
) -> None:
    """cancel SIGTERMs the run that holds the lock; one still feeding (no handlers yet)
    dies of it and kills nothing, so an earlier run's jobs run on. cancel said "the run
    stopped", exit 0. It now names the jobs still recorded running, exit 1, and a second
    cancel (no controller) kills them. The holder here is a bare process taking the lock
    as a run's first feed does."""
    wd = tmp_path / "wd"
    killed_controller(wd, ["sleep 60", "sleep 60"], runs)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from xqueue.workdir import Workdir\n"
            "Workdir(sys.argv[1]).lock()\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            str(wd),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        out = xqueue("cancel", str(wd))
        assert holder.wait(timeout=10) == -signal.SIGTERM
    finally:
        stop(holder)  # type: ignore[arg-type]
    assert out.returncode == 1, out.stderr
    said = " ".join(out.stdout.split())
    assert "the run stopped" in said
    assert "2 job(s) are still recorded as running, which it did not kill" in said
    assert len(job_processes(wd)) >= 2  # left running
    again = xqueue("cancel", str(wd))
    assert again.returncode == 0, again.stderr
    assert wait_no_job_processes(wd, 10) == []
    assert final_states(wd) == ["killed", "killed"]


def test_cancel_of_named_jobs_none_active_says_so_of_those_only(
    tmp_path: Path, runs: list[Run]
) -> None:
    """With no controller, `cancel WD 1` of an ended job said "no job is recorded as
    active" while job 0 was: the line is about the jobs it was given."""
    wd = tmp_path / "wd"
    run = Run(wd, ["sleep 60", "true"], "-f", "2")
    runs.append(run)
    run.wait_journal('"status": "finished"', 1)
    run.wait_journal('"jid": "', 2)
    run.proc.kill()
    run.wait()
    out = xqueue("cancel", str(wd), "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "job 1 (true): not active (finished)\n"
        "no run is in progress and none of these jobs is recorded as active\n"
    )
    everything = xqueue("cancel", str(wd))
    assert everything.returncode == 0 and "job 0 (sleep 60): killed" in everything.stdout
    assert wait_no_job_processes(wd, 10) == []


def test_cancel_whose_run_dies_before_taking_the_request_exits_1_and_says_what_to_do(
    tmp_path: Path, runs: list[Run]
) -> None:
    """The run died (SIGKILL) with the kill request untaken: cancel exited 2, the code of
    a usage error, and did not say that a second cancel reaches the jobs."""
    wd = tmp_path / "wd"
    run = Run(wd, ["sleep 60"], "-f", "1")
    runs.append(run)
    run.wait_journal('"jid": "', 1)
    run.proc.send_signal(signal.SIGSTOP)  # it takes no request
    cancel = subprocess.Popen(
        [*XQ, "cancel", str(wd), "0", "--timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not any(p.suffix == ".json" for p in (wd / ".control").glob("*")):
            assert time.monotonic() < deadline, "cancel sent no request"
            time.sleep(0.05)
        run.proc.kill()
        run.wait()
        out, err = cancel.communicate(timeout=30)
    finally:
        if cancel.poll() is None:
            cancel.kill()
    assert cancel.returncode == 1, err
    assert "ended before it took the kill request; run `xqueue cancel` again" in out, out
    assert not [p for p in (wd / ".control").glob("*") if p.suffix == ".json"]  # withdrawn
    again = xqueue("cancel", str(wd))
    assert again.returncode == 0 and "job 0 (sleep 60): killed" in again.stdout, again.stdout
    assert wait_no_job_processes(wd, 10) == []


def killed_controller(wd: Path, commands: list[str], runs: list[Run]) -> None:
    """Run the commands at once, and SIGKILL the controller once each was submitted."""
    run = Run(wd, commands, "-f", str(len(commands)))
    runs.append(run)
    run.wait_journal('"jid": "', len(commands))
    run.proc.kill()
    run.wait()


def one_ended_one_running(wd: Path, runs: list[Run]) -> None:
    """A dead controller's two jobs: the first ended unwatched (its shepherd recorded
    its exit), the second still runs."""
    killed_controller(wd, ["sleep 0.2", "sleep 60"], runs)
    deadline = time.monotonic() + 10
    while not (wd / "exits.jsonl").read_text().count("\n"):
        assert time.monotonic() < deadline, "the shepherd recorded no exit"
        time.sleep(0.05)


def test_a_changed_command_does_not_push_aside_a_job_left_running(
    tmp_path: Path, runs: list[Run]
) -> None:
    """The list edited while a dead controller's job still ran: its folder was moved
    aside, out of sight of ``status`` and ``cancel``, and the list changed back started
    it again beside itself. Now the run refuses, and says what to do; a job that ended
    unwatched (its shepherd recorded the end) makes way as before."""
    wd = tmp_path / "wd"
    one_ended_one_running(wd, runs)
    edited = "echo zero\necho one\n"
    out = xqueue("run", "-w", str(wd), input=edited)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    said = " ".join(out.stderr.split())
    assert "job 1 is now another command" in said and "may be running still" in said
    assert f"xqueue cancel {wd}" in said
    assert (wd / "1-sleep-60").is_dir() and job_processes(wd)  # untouched, running
    assert xqueue("cancel", str(wd)).returncode == 0
    assert wait_no_job_processes(wd, 10) == []
    again = xqueue("run", "-w", str(wd), input=edited)
    assert again.returncode == 0, again.stderr
    outputs = [
        (wd / f"{i}-echo-{w}" / "job.1.stdout").read_text()
        for i, w in enumerate(edited.split()[1::2])
    ]
    assert outputs == ["zero\n", "one\n"]
    assert len(list(wd.glob("*.replaced-*"))) == 2


def test_a_job_whose_spec_line_is_gone_never_runs_beside_its_earlier_attempt(
    tmp_path: Path, runs: list[Run]
) -> None:
    """specs.jsonl removed (or torn) while a dead controller's job still ran: the folder
    was taken for one made and never used, and the job started again beside the earlier
    attempt, as attempt 1 again, into its files. Now the run refuses, as for a changed
    command; a folder whose attempt has ended is moved aside, with a warning."""
    wd, mark = tmp_path / "wd", tmp_path / "ran"
    # Job 1 runs for a minute the first time only, so that the last run here is short.
    listed = ["sleep 0.2", f"[ -e {mark} ] || {{ touch {mark}; exec sleep 60; }}"]
    killed_controller(wd, listed, runs)
    deadline = time.monotonic() + 10
    while not (wd / "exits.jsonl").read_text().count("\n"):  # job 0 ended unwatched
        assert time.monotonic() < deadline, "the shepherd recorded no exit"
        time.sleep(0.05)
    earlier = job_processes(wd)
    (wd / "specs.jsonl").unlink()
    out = xqueue("run", "-w", str(wd), input="".join(f"{c}\n" for c in listed))
    assert out.returncode == 2, out.stderr
    said = " ".join(out.stderr.split())
    assert "job 0: folder '0-sleep-0-2' has records but no spec line in specs.jsonl" in said
    assert "job 1 has no spec line in specs.jsonl any more" in said
    assert "may be running still" in said and f"xqueue cancel {wd}" in said
    assert job_processes(wd) == earlier  # the earlier attempt alone, untouched
    assert xqueue("cancel", str(wd)).returncode == 0
    assert wait_no_job_processes(wd, 10) == []
    again = xqueue("run", "-w", str(wd), input="".join(f"{c}\n" for c in listed))
    assert again.returncode == 0, again.stderr
    assert "job 1: folder" in " ".join(again.stderr.split())
    assert len(list(wd.glob("0-sleep-0-2.replaced-*"))) == 1
    assert len(list(wd.glob("1-*.replaced-*"))) == 1
    assert final_states(wd) == ["finished", "finished"]


def _shepherds_of(wd: Path) -> list[int]:
    """The shepherds appending to this workdir's exits.jsonl."""
    exits, found = str(wd / "exits.jsonl"), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fds = os.listdir(f"/proc/{entry}/fd")
                if any(os.readlink(f"/proc/{entry}/fd/{fd}") == exits for fd in fds):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_cancel_records_the_end_of_a_job_nobody_watched_end(
    tmp_path: Path, runs: list[Run]
) -> None:
    """Controller, shepherd and job all SIGKILLed: no exit code anywhere. cancel said "a
    new run collects its outcome" and recorded nothing, so a changed list stayed refused
    at that index for good (the refusal told the user to run cancel)."""
    wd = tmp_path / "wd"
    killed_controller(wd, ["echo zero", "sleep 60"], runs)
    for pid in _shepherds_of(wd) + job_processes(wd):
        os.kill(pid, signal.SIGKILL)
    assert wait_no_job_processes(wd, 10) == []
    edited = "echo zero\necho one\n"
    assert xqueue("run", "-w", str(wd), input=edited).returncode == 2
    out = xqueue("cancel", str(wd))
    assert out.returncode == 0, out.stderr
    assert "job 1 (sleep 60): not running any more: it left no exit code: recorded failed" in (
        out.stdout
    )
    assert final_states(wd)[1] == "failed"
    again = xqueue("run", "-w", str(wd), input=edited)
    assert again.returncode == 0, again.stderr
    assert (wd / "1-echo-one" / "job.1.stdout").read_text() == "one\n"


def test_cancel_records_its_kills_when_the_backend_cannot_say_how_others_ended(
    tmp_path: Path,
    runs: list[Run],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """cancel asks the backend how the jobs it found ended (gbatch's are in a bucket); a
    backend that fails to answer must not lose the kills just made: they are recorded,
    and the ended jobs go by the exit codes here."""
    from xqueue.cli.commands import main
    from xqueue.schedulers.local import LocalScheduler

    wd = tmp_path / "wd"
    one_ended_one_running(wd, runs)

    async def no_answer(self: LocalScheduler, jobs: object) -> None:
        raise RuntimeError("the status query timed out")

    monkeypatch.setattr(LocalScheduler, "poll_jobs", no_answer)
    assert main(["cancel", str(wd)]) == 0
    said = capsys.readouterr().out
    assert "could not ask the backend how ended jobs ended: the status query timed out" in said
    assert "job 0 (sleep 0.2): not running any more: recorded finished (exit code 0)" in said
    assert "job 1 (sleep 60): killed (" in said
    assert wait_no_job_processes(wd, 10) == []
    assert final_states(wd) == ["finished", "killed"]


LOCK_HOLDER = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('locked', flush=True)\n"
    "time.sleep(60)\n"
)


def test_cancel_signals_only_the_process_that_holds_the_lock(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    wd.mkdir()
    lock = wd / ".lock"
    bystander = subprocess.Popen(["sleep", "60"])
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout and holder.stdout.readline() == "locked\n"
        ticks = {p.pid: start_ticks(p.pid) for p in (bystander, holder)}
        refusals = [
            (f"{bystander.pid}@{ticks[bystander.pid]}", "does not hold the lock"),  # planted
            (f"{bystander.pid}", "does not hold the lock"),
            (f"{holder.pid}@{ticks[holder.pid] + 1}", "its start time differs"),  # pid reused
            ("rm -rf /", "names no process"),
        ]
        for claim, why in refusals:
            lock.write_text(claim)
            out = xqueue("cancel", str(wd))
            assert out.returncode == 2, (claim, out)
            assert why in out.stderr and "Traceback" not in out.stderr, (claim, out.stderr)
            assert bystander.poll() is None and holder.poll() is None
        lock.write_text(f"{holder.pid}@{ticks[holder.pid]}")  # the true holder, as a run writes
        out = xqueue("cancel", str(wd))
        assert out.returncode == 0, out.stderr
        assert holder.wait(timeout=10) == -signal.SIGTERM
        assert bystander.poll() is None
    finally:
        for proc in (bystander, holder):
            stop(proc)  # type: ignore[arg-type]


def test_cancel_of_a_job_that_the_run_does_not_answer_exits_1(tmp_path: Path) -> None:
    """A run that does not answer a kill request in ``--timeout`` is the run not
    stopping in time (exit 1, as documented), not a usage error (2); the request is
    withdrawn, so the run does not act on it later. The timeout is a duration, which
    must be above 0."""
    wd = tmp_path / "wd"
    (wd / "0-job").mkdir(parents=True)
    lock = wd / ".lock"
    holder = subprocess.Popen(  # holds the lock as a run does, and never answers
        [sys.executable, "-c", LOCK_HOLDER, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout and holder.stdout.readline() == "locked\n"
        lock.write_text(f"{holder.pid}@{start_ticks(holder.pid)}")
        out = xqueue("cancel", str(wd), "0", "--timeout", "0.3")
        assert out.returncode == 1, out
        assert "did not answer the kill request in 0.3s; the request is withdrawn" in out.stdout
        assert not list((wd / ".control").glob("kill-*.json"))
        # A duration as every option reads one: a unit was refused here alone.
        out = xqueue("cancel", str(wd), "0", "--timeout", "300ms")
        assert "did not answer the kill request in 0.3s" in out.stdout, out
        for bad in ("0", "-5", "nan", "inf", "0s", "5 parsecs"):
            refused = xqueue("cancel", str(wd), "0", "--timeout", bad)
            assert refused.returncode == 2, refused
            assert f"{bad!r} is not a duration above 0 (a number, or with a unit" in refused.stderr
        assert holder.poll() is None
    finally:
        stop(holder)  # type: ignore[arg-type]


def test_cancel_refuses_a_workdir_others_can_write(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "journal.jsonl").write_text("")  # a run used it
    wd.chmod(0o777)
    out = xqueue("cancel", str(wd))
    assert out.returncode == 2 and "every user can write to it" in out.stderr
    assert os.listdir(wd) == ["journal.jsonl"]


def test_a_folder_no_run_used_is_refused_with_the_default_workdir_named(tmp_path: Path) -> None:
    """``xqueue cancel .`` (the default workdir being ./.xqueue) said "no run is in
    progress", exit 0, while a run went on there, and left a lock file in the folder."""
    (tmp_path / ".xqueue").mkdir()
    (tmp_path / "notes.txt").write_text("")
    for args in (["cancel", "."], ["status", "."], ["logs", ".", "0"]):
        out = subprocess.run([*XQ, *args], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 2, (args, out)
        assert "'.' is not an xqueue workdir: no run has used it" in out.stderr, out.stderr
        assert "the default workdir is ./.xqueue: './.xqueue'" in out.stderr
    assert sorted(os.listdir(tmp_path)) == [".xqueue", "notes.txt"]


def test_cancel_leaves_a_job_its_backend_lost_sight_of_as_recorded(tmp_path: Path) -> None:
    """A job the backend reports lost (an SSH server gone down: it may still run there,
    ``JobState.unsettled``) is not recorded ended by cancel: a later run must look for it
    before it runs it again, as the engine leaves such a job."""
    from xqueue import Job, JobState, JobStatus
    from xqueue.cli.cancel import _record_ends
    from xqueue.failures import FailureClass
    from xqueue.workdir import Workdir

    workdir = Workdir(tmp_path / "wd")
    workdir.lock()
    try:
        job = Job(0, ["sleep", "60"])
        workdir.prepare(job, make=True)
        job.attempt, job.jid, job.status = 1, "big:123@1", JobStatus.SUBMITTED
        workdir.record(job)
        lost = JobState(
            JobStatus.FAILED,
            None,
            "lost: server 'big' went down while the job ran",
            failure=FailureClass.NODE_FAIL,
            unsettled=True,
        )
        said, left = _record_ends(workdir, [job], {job: lost})
    finally:
        workdir.unlock()
    assert said[job].startswith("not known to have ended (lost: server 'big'")
    assert said[job].endswith("left as recorded")
    assert left == [job]
    assert final_states(tmp_path / "wd") == ["submitted"]


def test_cancel_records_a_job_its_dead_run_was_killing_as_killed(
    tmp_path: Path, runs: list[Run]
) -> None:
    """The run journalled its kills (``record_kills``) and was SIGKILLed while they took
    effect: the jobs' 143 is that kill's, as a resume and ``status`` take it. cancel
    recorded it as the jobs' own failure (NONZERO_EXIT), with status then agreeing."""
    wd, ledger = tmp_path / "wd", tmp_path / "ledger"
    job = (
        f"echo x >> {ledger}; trap 'echo t >> {ledger}; sleep 2; exit 143' TERM; "
        "while :; do sleep 0.1; done"
    )
    run = Run(wd, [job, job], "-f", "2")
    runs.append(run)
    run.wait_journal('"jid": "', 2)
    deadline = time.monotonic() + 20
    while not ledger.exists() or ledger.read_text().count("x") < 2:
        assert time.monotonic() < deadline, "the jobs did not start"
        time.sleep(0.05)
    run.proc.send_signal(signal.SIGTERM)
    run.wait_journal('"kill": true', 2)
    # The SIGKILL lands once both jobs have their SIGTERM (their traps say so): aimed at
    # the journal line alone, under load it could land before the kills were sent, and
    # the jobs then ran on for ever, as the kills had never been made.
    while ledger.read_text().count("t") < 2:
        assert time.monotonic() < deadline + 30, "the stop's SIGTERM did not reach the jobs"
        time.sleep(0.02)
    run.proc.kill()
    run.wait()
    assert wait_no_job_processes(wd, 20) == []
    deadline = time.monotonic() + 10
    while (wd / "exits.jsonl").read_text().count("\n") < 2:
        assert time.monotonic() < deadline, "the shepherd recorded no exits"
        time.sleep(0.05)
    out = xqueue("cancel", str(wd))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("recorded killed, by its run's stop (exit code 143)") == 2, out.stdout
    assert final_states(wd) == ["killed", "killed"]
    assert "2 killed" in xqueue("status", str(wd)).stdout
    assert "killed: the run stopped (SIGTERM)" in xqueue("status", str(wd)).stdout


def test_cancel_ends_what_a_job_its_dead_run_was_killing_left_running(
    tmp_path: Path, runs: list[Run]
) -> None:
    """The run's stop ended the job's shell (SIGTERM) and the run was SIGKILLed within
    its kill_grace, before the SIGKILL of the job's group: a child that ignores SIGTERM
    lived on. cancel recorded the job killed, exit 0, and left the child running; the
    next run then started the job again beside it. A resume ends such a group."""
    wd, child = tmp_path / "wd", tmp_path / "child"
    job = f"sh -c \"trap '' TERM; echo \\$\\$ > {child}; exec sleep 120\" & wait"
    run = Run(wd, [job], "-f", "1", "-o", "kill_grace=5")
    runs.append(run)
    deadline = time.monotonic() + 20
    while not child.exists() or not child.read_text().strip():
        assert time.monotonic() < deadline, "the job did not start its child"
        time.sleep(0.05)
    pid = int(child.read_text())
    run.proc.send_signal(signal.SIGTERM)
    run.wait_journal('"kill": true', 1)
    while not (wd / "exits.jsonl").exists() or not (wd / "exits.jsonl").read_text():
        assert time.monotonic() < deadline + 10, "the shepherd recorded no exit"
        time.sleep(0.02)
    run.proc.kill()  # within the kill_grace: the group's SIGKILL is never sent
    run.wait()
    assert process_alive(pid)
    try:
        out = xqueue("cancel", str(wd))
        assert out.returncode == 0, out.stderr
        assert "recorded killed, by its run's stop (exit code 143)" in out.stdout, out.stdout
        deadline = time.monotonic() + 10
        while process_alive(pid):
            assert time.monotonic() < deadline, "cancel left the job's child running"
            time.sleep(0.05)
        assert final_states(wd) == ["killed"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slurm
def test_cancel_leaves_a_job_whose_submission_may_be_under_way_for_the_next_run(
    tmp_path: Path, runs: list[Run], slurm_cluster: str
) -> None:
    """A SIGKILLed controller's sbatch still going through (a busy slurmctld): cancel
    found no job, took the intent-only records for ended and recorded them failed, and
    the next run started the jobs beside the copies that sbatch went on to submit."""
    wd, ledger = tmp_path / "wd", tmp_path / "ledger"
    slow = tmp_path / "slow-sbatch"
    slow.write_text('#!/bin/sh\nsleep 4\nexec sbatch "$@"\n')
    slow.chmod(0o755)
    jobs = [f"echo {i} >> {ledger}; sleep 3" for i in range(2)]
    opts = ["-s", "slurm", "-f", "2", "-o", "poll_interval=0.2"]
    run = Run(wd, jobs, *opts, "-o", f"sbatch={slow}")
    runs.append(run)
    run.wait_journal('"status": "submitting"', 2)
    run.proc.kill()
    run.wait()
    out = xqueue("cancel", str(wd))
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout.count("not found on its backend: its submission may still be") == 2
    assert final_states(wd) == ["submitting", "submitting"]
    time.sleep(6)  # the orphan sbatch submits the jobs
    again = subprocess.run(
        [*XQ, "run", "-w", str(wd), *opts],
        input="".join(f"{j}\n" for j in jobs),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert sorted(ledger.read_text().split()) == ["0", "1"]  # each ran once


@pytest.mark.slurm
def test_cancel_leaves_a_job_that_ended_as_it_looked_for_the_next_run(
    tmp_path: Path, runs: list[Run], slurm_cluster: str
) -> None:
    """A job whose wrapper recorded rc 0 while the backend still listed it (SGE does for
    a second): cancel killed it and recorded it killed, and the next run ran a success
    again. The squeue here answers with what it saw before letting the job end."""
    wd, ledger, go, armed = (tmp_path / n for n in ("wd", "ledger", "go", "armed"))
    lagging = tmp_path / "squeue"
    lagging.write_text(
        "#!/bin/sh\n"
        f'[ -e {armed} ] || exec squeue "$@"\n'
        'out=$(squeue "$@"); rc=$?\n'
        f"touch {go}; n=0\n"
        f'until [ -n "$(ls {wd}/*/job.1.rc 2>/dev/null)" ] || [ $n -ge 600 ]; do\n'
        "  n=$((n+1)); sleep 0.05\ndone\n"
        'printf "%s\\n" "$out"; exit $rc\n'
    )
    lagging.chmod(0o755)
    job = f"echo 0 >> {ledger}; until [ -e {go} ]; do sleep 0.05; done"
    opts = ["-s", "slurm", "-o", "poll_interval=0.2", "-o", f"squeue={lagging}"]
    run = Run(wd, [job], *opts)
    runs.append(run)
    run.wait_journal('"jid": "', 1)
    deadline = time.monotonic() + 60
    while not ledger.exists():  # it runs
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    run.proc.kill()
    run.wait()
    armed.touch()
    out = xqueue("cancel", str(wd))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "killed" not in out.stdout, out.stdout
    assert final_states(wd) == ["finished"]
    again = subprocess.run(
        [*XQ, "run", "-w", str(wd), *opts],
        input=f"{job}\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert ledger.read_text().split() == ["0"]  # it ran once


def test_a_pipe_of_the_run_closes_when_its_controller_dies_whatever_it_left_running(
    tmp_path: Path,
) -> None:
    """The shepherd kept the controller's stderr: after a SIGKILL of the controller,
    `xqueue run ... 2>&1 | tee log` waited for the last job the shepherd still ran."""
    import select

    wd = tmp_path / "wd"
    proc = subprocess.Popen(
        [*XQ, "run", "-w", str(wd), "--no-progress"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin and proc.stderr
        proc.stdin.write(b"sleep 30\n")
        proc.stdin.close()
        deadline = time.monotonic() + 20
        journal = wd / "journal.jsonl"
        while not journal.exists() or b'"jid": "' not in journal.read_bytes():
            assert time.monotonic() < deadline, "the job was never submitted"
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=10)
        assert job_processes(wd)  # the job runs on, its shepherd with it
        ready, _, _ = select.select([proc.stderr], [], [], 10)
        assert ready and proc.stderr.read() == b""  # the end of the stream, not a wait
    finally:
        if proc.stderr:
            proc.stderr.close()
        kill_job_processes(wd)
        wait_no_job_processes(wd, 10)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_cancel_of_a_read_only_workdir_with_nothing_active_says_so(tmp_path: Path) -> None:
    """Nothing to kill, but cancel took the lock first: 'workdir is not writable', exit 2."""
    from .test_status import as_nobody, as_nobody_run, read_only_copy, snapshot

    runner = as_nobody()
    if runner is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    assert xqueue("run", "-w", str(tmp_path / "wd"), input="true\n").returncode == 0
    with read_only_copy(tmp_path / "wd") as copy:
        before = snapshot(copy)
        # Another user's workdir, read-only to us: trusted, or cancel refuses it first.
        out = as_nobody_run(runner, "cancel", str(copy), env={"XQUEUE_TRUST_WORKDIR": "1"})
        assert out.returncode == 0, out.stderr
        assert out.stdout == "no run is in progress and no job is recorded as active\n"
        assert snapshot(copy) == before
