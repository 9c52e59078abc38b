"""The shell scripts the SSH scheduler runs on a server, run here by a real sh."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from xqueue.schedulers._ssh_scripts import (
    kill_script,
    parse_kill,
    parse_pid_file,
    parse_stats,
    status_script,
    submit_answer,
    submit_script,
)


def start_group(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["sh", "-c", "sleep 60 & wait"],
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def run(script: str) -> str:
    return subprocess.run(
        ["sh", "-s"], input=script, capture_output=True, text=True, timeout=30
    ).stdout


def start_ticks(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[19]


@pytest.mark.parametrize(
    ("env", "jobdir"),
    [
        # A group id reused by an unrelated process: wrong start time, no job marker.
        ({}, "/no/such/job"),
        # Its process carries a value with the job's marker on a line of its own (an
        # environment dump kept in a variable): the marker is a whole variable, and the
        # environment is split at its NULs, not at newlines.
        ({"SNAPSHOT": "HOME=/root\nXQUEUE_JOB_DIR=/w/3-job\nPATH=/bin"}, "/w/3-job"),
    ],
    ids=["no-marker", "marker-inside-a-value"],
)
def test_kill_spares_a_group_that_is_no_longer_the_job(env: dict[str, str], jobdir: str) -> None:
    foreign = start_group(env)
    try:
        time.sleep(0.2)
        assert run(kill_script(foreign.pid, 0.2, "1", jobdir)).strip() == "gone"
        assert foreign.poll() is None  # still alive
    finally:
        os.killpg(foreign.pid, 9)
        foreign.wait()


def test_kill_takes_the_job_group_by_start_time_or_marker() -> None:
    by_start = start_group()
    by_marker = start_group({"XQUEUE_JOB_DIR": "/w/3-job"})
    time.sleep(0.2)
    assert run(kill_script(by_start.pid, 0.2, start_ticks(by_start.pid), "")).strip() == "dead"
    assert run(kill_script(by_marker.pid, 0.2, "1", "/w/3-job")).strip() == "dead"
    assert by_start.wait(5) != 0 and by_marker.wait(5) != 0


def test_submit_script_writes_the_pid_file_even_when_nobody_reads_its_answer(
    tmp_path: Path,
) -> None:
    # The connection drops before the answer: the first echo hits a closed pipe. The job
    # has started, so its pid file must be there (written before anything is printed).
    (tmp_path / "job.1.sh").write_text("echo ran >> ran\n")
    shell = subprocess.Popen(["sh", "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert shell.stdin is not None and shell.stdout is not None
    shell.stdout.close()  # nobody will read what it prints
    shell.stdin.write(submit_script("node one", str(tmp_path), 1, str(tmp_path)).encode())
    shell.stdin.close()
    assert shell.wait(10) == 0  # SIGPIPE did not stop it
    parsed = parse_pid_file((tmp_path / "job.1.ssh").read_text())
    assert parsed is not None and parsed[0] == "node one" and parsed[2].isdigit()
    for _ in range(50):
        if (tmp_path / "ran").exists():
            break
        time.sleep(0.1)
    assert (tmp_path / "ran").read_text() == "ran\n"
    assert not (tmp_path / "job.1.ssh.tmp").exists()


def test_the_submit_answer_is_read_after_its_marker(tmp_path: Path) -> None:
    """A login that greets (a ~/.ssh/rc that prints) put its words where the pid was read;
    a login shell that runs no command prints only its own: the script never ran."""
    (tmp_path / "job.1.sh").write_text("true\n")
    script = submit_script("one", str(tmp_path), 1, None)

    def login(shell: str) -> list[str] | None:
        """The answer of the script sent to a login shell that starts with ``shell``."""
        out = subprocess.run(
            ["sh", "-c", shell], input=script.encode(), capture_output=True, timeout=30
        )
        return submit_answer(out.stdout.decode())

    answer = login("echo 'pid 1 from a greeting'; exec sh -s")
    assert answer is not None and len(answer) == 2
    pid = int(answer[0].removeprefix("pid "))
    assert answer[1].startswith(f"{pid} (")  # its /proc stat line
    assert (tmp_path / "job.1.ssh").read_text().startswith(f"one {pid} ")
    # A greeting with no newline (a terminal title set by ~/.bashrc): glued to the
    # marker, it read as a script that never ran, and the job it started ran unwatched.
    again = login("printf '\\033]0;node one\\007'; exec sh -s")
    assert again is not None and again[0].startswith("pid ")
    assert login("echo 'This account is currently not available.'; exit 1") is None


def test_status_answers_are_read_between_their_markers() -> None:
    me = os.getpid()
    answer = run(status_script([me, 999_999_999]))
    stats = parse_stats("Welcome to node one\n" + answer)  # a login's greeting is left out
    assert list(stats) == [me] and stats[me][1] == start_ticks(me)
    with pytest.raises(ValueError, match="cut short"):
        parse_stats(answer.replace("xqueue-stat-end", ""))
    with pytest.raises(ValueError, match="not a /proc stat line"):
        parse_stats("xqueue-stat-begin\n<html>busy</html>\nxqueue-stat-end\n")
    assert parse_stats("xqueue-stat-begin\nxqueue-stat-end\n") == {}  # all of them gone


def test_pid_files_old_and_new() -> None:
    assert parse_pid_file("a b 12 345\n") == ("a b", 12, "345")
    assert parse_pid_file("big 12\n") == ("big", 12, "")  # written before start times were
    assert parse_pid_file("") is None and parse_pid_file("garbage") is None
    assert parse_kill("dead\n") == "dead"
    with pytest.raises(ValueError):
        parse_kill("Welcome\n")
