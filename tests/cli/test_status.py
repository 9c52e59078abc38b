"""``xqueue status`` and what every CLI output shows, run as a user runs them (subprocesses)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xqueue.cli.text import clip, pad, rc_text, width
from xqueue.failures import FailureClass
from xqueue.job import Job
from xqueue.states import JobStatus
from xqueue.workdir import Workdir

from .test_cli import XQ, xqueue

WIDE = {**os.environ, "COLUMNS": "300"}  # rich tables fold long cells at 80 columns


def build(path: Path, states: list[JobStatus | None]) -> None:
    """A workdir as the engine leaves it: one job per entry, recorded submitted and then
    in that final state (SUBMITTED: left active; SUBMITTING: only the intent to submit it
    recorded; RETRYING: an attempt failed, the next one not yet submitted; None: fed,
    never submitted)."""
    wd = Workdir(path)
    for i, state in enumerate(states):
        job = Job(i, f"echo {i}", name=f"job-{i}")
        wd.prepare(job, make=True)
        if state is None:
            continue
        if state is JobStatus.SUBMITTING:
            job.attempt, job.status = 1, state
            wd.record_many([job])
            continue
        job.attempt, job.jid, job.status = 1, f"{999000 + i}@1.00", JobStatus.SUBMITTED
        wd.record(job)
        if state is not JobStatus.SUBMITTED:
            job.status, job.rc = state, 0 if state is JobStatus.FINISHED else 3
            job.reason = "" if state is JobStatus.FINISHED else f"reason {i}"
            if state is JobStatus.RETRYING:
                job.failure = FailureClass.NONZERO_EXIT
            wd.record(job)
    wd.unlock()


def shepherd_exit(wd: Path, folder: str, rc: int, attempt: int = 1) -> None:
    """The line the local scheduler's shepherd appends to exits.jsonl when a job ends."""
    line = {"rc": rc, "jid": "4242@1.00", "time": time.time(), "attempt": attempt, "dir": folder}
    with open(wd / "exits.jsonl", "a") as out:
        out.write(json.dumps(line) + "\n")


def rows(text: str) -> list[list[str]]:
    """The job rows of the plain table (lines after the header)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#"))
    return [re.split(r" {2,}", line) for line in lines[start + 1 :] if line[:1].isdigit()]


def test_summary_counts_and_bounded_attention_rows(tmp_path: Path) -> None:
    states = (
        [JobStatus.FAILED] * 55
        + [JobStatus.FINISHED] * 20
        + [JobStatus.KILLED] * 2
        + [JobStatus.SUBMITTED] * 3
        + [None] * 4
    )
    build(tmp_path / "wd", states)
    out = xqueue("status", str(tmp_path / "wd"))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert "84 job(s), no run in progress" in out.stdout
    assert "55 failed, 20 finished, 2 killed, 4 not submitted, 3 orphaned" in out.stdout
    assert "3 job(s) were left submitting, submitted or running by a run that is gone" in out.stdout
    shown = rows(out.stdout)
    assert len(shown) == 50 and all(r[2] == "failed" for r in shown)
    assert shown[0][:6] == ["0", "job-0", "failed", "1", "3", "999000@1.00"]
    assert "... and 10 more: xqueue status" in out.stdout  # 5 failed, 2 killed, 3 orphaned

    failed = xqueue("status", str(tmp_path / "wd"), "--state", "failed")
    assert [r[0] for r in rows(failed.stdout)] == [str(i) for i in range(55)]
    assert "55 of 84 jobs, no run in progress" in failed.stdout  # chosen, of all
    picked = xqueue("status", str(tmp_path / "wd"), "--state", "orphaned,not-submitted")
    assert [(r[0], r[2]) for r in rows(picked.stdout)] == [
        *((str(i), "orphaned") for i in range(77, 80)),
        *((str(i), "not submitted") for i in range(80, 84)),
    ]
    every = xqueue("status", str(tmp_path / "wd"), "--all")
    assert [r[0] for r in rows(every.stdout)] == [str(i) for i in range(84)]

    lines = xqueue("status", str(tmp_path / "wd"), "--json", "--state", "killed").stdout
    objects = [json.loads(line) for line in lines.splitlines()]
    assert [(o["index"], o["name"], o["status"], o["state"]["rc"]) for o in objects] == [
        (75, "job-75", "killed", 3),
        (76, "job-76", "killed", 3),
    ]


def test_unknown_state_is_a_usage_error(tmp_path: Path) -> None:
    build(tmp_path / "wd", [JobStatus.FINISHED])
    out = xqueue("status", str(tmp_path / "wd"), "--state", "broken")
    assert out.returncode == 2
    assert "unknown state 'broken' for --state; choose from" in out.stderr
    assert "Traceback" not in out.stderr
    out = xqueue("status", str(tmp_path / "wd"), "--state", "finised")
    assert out.returncode == 2
    assert "unknown state 'finised' for --state (did you mean 'finished'?)" in out.stderr


def test_json_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    build(tmp_path / "wd", [JobStatus.FINISHED] * 1500)  # far more than a pipe buffer
    xq = " ".join(XQ)
    script = f'{xq} status {tmp_path / "wd"} --json | head -1; echo "rc=${{PIPESTATUS[0]}}"'
    out = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    first, status = out.stdout.splitlines()
    assert json.loads(first)["index"] == 0
    assert status == "rc=141"  # as if killed by SIGPIPE, like other tools
    assert out.stderr == ""


@pytest.fixture
def controller_killed(tmp_path: Path) -> Iterator[Path]:
    """A workdir whose run was SIGKILLed while two jobs ran (they are killed afterwards)."""
    wd = tmp_path / "wd"
    proc = subprocess.Popen(
        [*XQ, "run", "-w", str(wd), "-f", "2"], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin and proc.stderr
    proc.stdin.write(b"sleep 60\nsleep 60\nsleep 60\n")
    proc.stdin.close()
    journal = wd / "journal.jsonl"
    deadline = time.monotonic() + 20
    # Each submission is journalled twice: its intent, then its id ("jid").
    while not journal.exists() or journal.read_bytes().count(b'"jid": "') < 2:
        assert time.monotonic() < deadline, "the run never submitted two jobs"
        time.sleep(0.05)
    # The third job's folder is made by the workdir's thread soon after it is fed.
    while (wd / "specs.jsonl").read_bytes().count(b"\n") < 3:
        assert time.monotonic() < deadline, "the third job's folder was never made"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    proc.stderr.close()
    try:
        yield wd
    finally:
        for line in journal.read_text().splitlines():
            if not json.loads(line).get("jid"):
                continue  # an intent: the id follows on a later line
            pid = int(json.loads(line)["jid"].split("@")[0])
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_jobs_of_a_controller_that_is_gone_are_orphaned(controller_killed: Path) -> None:
    out = xqueue("status", str(controller_killed))
    assert "3 job(s), no run in progress" in out.stdout
    assert "1 not submitted, 2 orphaned" in out.stdout
    assert [r[2] for r in rows(out.stdout)] == ["orphaned", "orphaned"]
    lines = xqueue("status", str(controller_killed), "--json").stdout.splitlines()
    objects = [json.loads(line) for line in lines]
    assert [o["status"] for o in objects] == ["orphaned", "orphaned", "not submitted"]
    assert [o["state"] and o["state"]["status"] for o in objects] == ["submitted"] * 2 + [None]


def test_a_job_that_ended_after_its_controller_shows_its_code(controller_killed: Path) -> None:
    # The shepherd outlives the SIGKILLed controller and appends the code of a job that
    # ends meanwhile to exits.jsonl: status shows that end, not "orphaned".
    journal = [
        json.loads(s) for s in (controller_killed / "journal.jsonl").read_text().splitlines()
    ]
    first = next(r for r in journal if r.get("jid") and r["dir"].startswith("0-"))
    os.killpg(int(first["jid"].split("@")[0]), signal.SIGTERM)
    exits = controller_killed / "exits.jsonl"
    deadline = time.monotonic() + 20
    while not exits.exists() or b'"rc": 143' not in exits.read_bytes():
        assert time.monotonic() < deadline, "the shepherd never recorded the job's end"
        time.sleep(0.05)
    out = xqueue("status", str(controller_killed))
    assert "1 failed, 1 not submitted, 1 orphaned" in out.stdout
    assert "1 job(s) ended after their run was gone" in out.stdout
    assert [r[2] for r in rows(out.stdout)] == ["failed (NONZERO_EXIT)", "orphaned"]
    lines = xqueue("status", str(controller_killed), "--json").stdout.splitlines()
    state = json.loads(lines[0])["state"]
    assert (state["rc"], state["ended_unwatched"], state["status"]) == (143, True, "submitted")


def test_a_held_lock_means_a_live_controller(tmp_path: Path) -> None:
    import fcntl

    build(tmp_path / "wd", [JobStatus.SUBMITTED, JobStatus.SUBMITTING, JobStatus.RETRYING])
    shepherd_exit(tmp_path / "wd", "1-job-1", 0)  # a live run records it itself
    fd = os.open(tmp_path / "wd" / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"4242")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        out = xqueue("status", str(tmp_path / "wd"), "--all")
    finally:
        os.close(fd)
    assert "a run is in progress (pid 4242)" in out.stdout
    assert "1 retrying, 1 submitted, 1 submitting" in out.stdout
    assert [r[2] for r in rows(out.stdout)] == ["submitted", "submitting", "retrying"]


def test_a_job_left_submitting_is_orphaned_or_settled_by_its_code(tmp_path: Path) -> None:
    # The run journals its intent, then hands the job to the backend: a controller that
    # dies in between leaves "submitting", and the job may run (and end) all the same.
    # The next run looks such a job up first, as it does a submitted one: orphaned.
    wd = tmp_path / "wd"
    build(wd, [JobStatus.SUBMITTING] * 3 + [JobStatus.SUBMITTED])
    shepherd_exit(wd, "1-job-1", 0)
    shepherd_exit(wd, "2-job-2", 2)
    shepherd_exit(wd, "0-job-0", 0, attempt=2)  # another attempt's end: not this one's
    out = xqueue("status", str(wd))
    assert out.returncode == 0 and out.stderr == ""
    assert "4 job(s), no run in progress" in out.stdout
    assert "1 failed, 1 finished, 2 orphaned" in out.stdout
    assert "2 job(s) ended after their run was gone" in out.stdout
    assert "2 job(s) were left submitting, submitted or running" in out.stdout
    assert [r[:5] for r in rows(out.stdout)] == [
        ["0", "job-0", "orphaned", "1", "-"],
        ["2", "job-2", "failed (NONZERO_EXIT)", "1", "2"],  # its class, as any failed job's
        ["3", "job-3", "orphaned", "1", "-"],
    ]
    picked = xqueue("status", str(wd), "--state", "orphaned,submitting")
    assert [(r[0], r[2]) for r in rows(picked.stdout)] == [("0", "orphaned"), ("3", "orphaned")]
    lines = xqueue("status", str(wd), "--json").stdout.splitlines()
    objects = [json.loads(line) for line in lines]
    assert [o["status"] for o in objects] == ["orphaned", "finished", "failed", "orphaned"]
    assert [o["state"]["status"] for o in objects] == ["submitting"] * 3 + ["submitted"]
    assert [o["state"].get("rc") for o in objects] == [None, 0, 2, None]
    assert objects[1]["state"]["ended_unwatched"] is True
    assert [o["state"].get("failure") for o in objects[1:3]] == [None, "NONZERO_EXIT"]


def test_a_retrying_job_without_a_run_is_failed(tmp_path: Path) -> None:
    # Its attempt failed and the run that was to retry it is gone: nothing runs it until
    # a new run, which runs it again as it does a failed job. Shown as failed, with the
    # failed attempt's code and reason, among the jobs that need attention.
    wd = tmp_path / "wd"
    build(wd, [JobStatus.RETRYING, JobStatus.FINISHED])
    out = xqueue("status", str(wd))
    assert out.returncode == 0 and out.stderr == ""
    assert "1 failed, 1 finished" in out.stdout
    assert "1 failed job(s) were to be retried by a run that is gone" in out.stdout
    assert [r[:7] for r in rows(out.stdout)] == [
        ["0", "job-0", "failed (NONZERO_EXIT)", "1", "3", "999000@1.00", "reason 0"]
    ]
    picked = xqueue("status", str(wd), "--state", "failed,orphaned")
    assert [r[0] for r in rows(picked.stdout)] == ["0"]
    assert "no jobs" in xqueue("status", str(wd), "--state", "retrying").stdout
    (line,) = xqueue("status", str(wd), "--json", "--state", "failed").stdout.splitlines()
    job = json.loads(line)
    assert (job["status"], job["state"]["status"], job["state"]["rc"]) == ("failed", "retrying", 3)


def test_a_run_killed_before_a_retry_leaves_a_failed_job(tmp_path: Path) -> None:
    """The retry of a failed attempt waits for the only slot; the controller is SIGKILLed."""
    wd = tmp_path / "wd"
    proc = subprocess.Popen(
        [*XQ, "run", "-w", str(wd), "-f", "1", "-e", "retry", "-r", "2"],
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin
    proc.stdin.write(b"exit 1\nsleep 60\n")
    proc.stdin.close()
    journal = wd / "journal.jsonl"
    deadline = time.monotonic() + 20
    # Job 1 takes the slot once job 0's attempt failed: then the retry waits behind it.
    while not journal.exists() or not re.search(
        rb'"retrying".*\n[^\n]*"jid": "[^"\n]+"[^\n]*"dir": "1-', journal.read_bytes(), re.DOTALL
    ):
        assert time.monotonic() < deadline, "the run never retried the failed job"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    try:
        out = xqueue("status", str(wd))
        assert "2 job(s), no run in progress" in out.stdout
        assert "1 failed, 1 orphaned" in out.stdout
        assert [r[:5] for r in rows(out.stdout)] == [
            ["0", "exit 1", "failed (NONZERO_EXIT)", "1", "1"],
            ["1", "sleep 60", "orphaned", "1", "-"],
        ]
    finally:
        for line in journal.read_text().splitlines():
            jid = json.loads(line).get("jid")
            if jid and json.loads(line)["dir"].startswith("1-"):
                try:
                    os.killpg(int(jid.split("@")[0]), signal.SIGKILL)
                except ProcessLookupError:
                    pass


# -- read-only ----------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple[int, int, int, int]]:
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            info = os.lstat(os.path.join(folder, name))
            key = os.path.relpath(os.path.join(folder, name), root)
            found[key] = (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return found


def make_read_only(root: Path) -> None:
    for folder, dirs, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o555)
    os.chmod(root, 0o555)


def as_nobody() -> tuple[list[str], dict[str, str]] | None:
    """An interpreter and environment uid 65534 can run xqueue with, or None."""
    import xqueue as package

    source = str(Path(package.__file__).parent.parent)
    site = next(p for p in sys.path if p.endswith("site-packages"))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{source}:{site}", "COLUMNS": "300"}
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/python{version}"):
        try:
            probe = subprocess.run(
                [python, "-c", "import xqueue.cli"],
                user=65534,
                group=65534,
                extra_groups=[],
                env=env,
                capture_output=True,
                cwd="/",
                timeout=60,
            )
        except OSError:  # this interpreter lives where uid 65534 may not go
            continue
        if probe.returncode == 0:
            return [python, "-m", "xqueue"], env
    return None


def test_status_writes_nothing_even_where_it_could(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    xqueue("run", "-w", str(wd), input="true\necho [bold]boom >&2; exit 2\n")
    make_read_only(wd)
    before = snapshot(wd)
    for extra in ([], ["--all"], ["--json"], ["--state", "failed"]):
        out = xqueue("status", str(wd), *extra)
        assert out.returncode == 0, out.stderr
    assert snapshot(wd) == before


@contextlib.contextmanager
def read_only_copy(wd: Path) -> Iterator[Path]:
    """A read-only copy of ``wd`` in a folder uid 65534 may enter (pytest's tmp_path is
    root-only, 0700), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="xq-ro-"))
    try:
        base.chmod(0o755)
        copy = base / "wd"
        shutil.copytree(wd, copy)
        make_read_only(copy)
        yield copy
    finally:
        for folder, dirs, _ in os.walk(base):
            for name in dirs:
                os.chmod(os.path.join(folder, name), 0o755)
        base.chmod(0o755)
        shutil.rmtree(base)


def as_nobody_run(
    runner: tuple[list[str], dict[str, str]], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``xqueue ARGS`` as uid 65534, with ``as_nobody``'s interpreter and environment."""
    argv, base_env = runner
    return subprocess.run(
        [*argv, *args],
        user=65534,
        group=65534,
        extra_groups=[],
        env={**base_env, **(env or {})},
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_status_of_a_read_only_copy_as_another_user(tmp_path: Path) -> None:
    runner = as_nobody()
    if runner is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    xqueue("run", "-w", str(tmp_path / "wd"), input="true\nexit 5\n")
    with read_only_copy(tmp_path / "wd") as copy:
        before = snapshot(copy)
        out = as_nobody_run(runner, "status", str(copy), "--all")
        assert out.returncode == 0, out.stderr
        assert "1 failed, 1 finished" in out.stdout
        assert snapshot(copy) == before


# -- names and output shown literally -----------------------------------------------------------
NASTY = [
    "echo '[/]' >&2; exit 1",
    "echo '[link=https://evil.example]click[/link] [bold]loud' >&2; exit 2",
    "echo ':smile: [red]' >&2; exit 3",
    "printf 'title\\033]0;pwned\\007\\n' >&2; exit 4",
]


@pytest.mark.parametrize("progress", ["--progress", "--no-progress"])
def test_run_prints_names_and_stderr_literally(tmp_path: Path, progress: str) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("\n".join([*NASTY, "echo 'esc \x1b]0;pwned\x07' >&2; exit 6"]) + "\n")
    out = subprocess.run(
        [*XQ, "run", str(jobs), "-w", str(tmp_path / "wd"), progress],
        capture_output=True,
        text=True,
        env=WIDE,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "5 job(s) did not succeed" in out.stderr
    for literal in (
        "echo '[/]' >&2; exit 1",  # the name
        "[link=https://evil.example]click[/link] [bold]loud",  # a stderr line as the reason
        ":smile: [red]",
    ):
        assert literal in out.stderr
    assert "\x1b]0;" not in out.stderr and "\x07" not in out.stderr
    assert "esc \\x1b]0;pwned\\x07" in out.stderr  # the name, escaped
    assert "title\\x1b]0;pwned\\x07" in out.stderr  # the stderr line, escaped


def test_status_prints_names_and_reasons_literally(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    build(wd, [])
    jobs = [Job(i, cmd, name=f"[bold]n{i}[/] [link=x]") for i, cmd in enumerate(NASTY)]
    w = Workdir(wd)
    for job in jobs:
        w.prepare(job, make=True)
        job.attempt, job.jid, job.status = 1, "1@1.00", JobStatus.FAILED
        job.rc, job.reason = 1, f"[/] {job.index} \x1b[31mred\u202e"
        w.record(job)
    w.unlock()
    journal = wd / "journal.jsonl"
    first = os.path.basename(jobs[0].dir)
    journal.write_text(
        "".join(
            line.replace('"failed"', '"\\u001b[2Jodd"') if f'"dir": "{first}"' in line else line
            for line in journal.read_text().splitlines(keepends=True)
        )
    )
    out = subprocess.run(
        [*XQ, "status", str(wd), "--all"], capture_output=True, text=True, env=WIDE, timeout=60
    )
    assert out.returncode == 0 and out.stderr == ""
    assert "[bold]n1[/] [link=x]" in out.stdout
    assert "[/] 1 \\x1b[31mred\\u202e" in out.stdout
    assert "1 \\x1b[2Jodd, 3 failed" in out.stdout  # a state is whatever a record says
    assert "n0[/] [link=x]  \\x1b[2Jodd" in out.stdout
    assert "\x1b" not in out.stdout and "\u202e" not in out.stdout


def test_errors_quote_user_input_literally(tmp_path: Path) -> None:
    out = xqueue("status", str(tmp_path / "[bold]no[/]such"))
    assert out.returncode == 2
    assert "error: no workdir at" in out.stderr and "[bold]no[/]such" in out.stderr


@pytest.mark.parametrize("command", [["status"], ["status", "-F"], ["logs", "0"], ["cancel"]])
def test_a_file_given_for_a_workdir_is_called_a_file(tmp_path: Path, command: list[str]) -> None:
    """``xqueue status jobs.txt`` (the job list, not the workdir) said "no workdir at",
    as if nothing were there."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("true\n")
    out = xqueue(command[0], str(jobs), *command[1:])
    assert out.returncode == 2
    assert f"error: {str(jobs)!r} is a file, not a workdir" in out.stderr, out.stderr


def test_status_and_the_run_say_why_a_job_failed(tmp_path: Path) -> None:
    """A user reads the class of a failure and the signal behind a return code above 128
    in the run's summary and in ``status``, not just a bare 137."""
    wd = tmp_path / "wd"
    run = subprocess.run(
        [*XQ, "run", "-w", str(wd), "-o", "timeout=1", "--no-progress"],
        input="exit 3\nkill -9 $$\nsleep 30\nexit 200\n",
        capture_output=True,
        text=True,
        env=WIDE,
        timeout=60,
    )
    assert run.returncode == 1, run.stderr
    assert "137 (SIGKILL)" in run.stderr and "failed (TIMEOUT)" in run.stderr
    out = subprocess.run(
        [*XQ, "status", "-a", str(wd)], capture_output=True, text=True, env=WIDE, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert [r[2:5] for r in rows(out.stdout)] == [
        ["failed (NONZERO_EXIT)", "1", "3"],
        ["failed (NONZERO_EXIT)", "1", "137 (SIGKILL)"],
        ["failed (TIMEOUT)", "1", "143 (SIGTERM)"],  # its own code, from the kill at its limit
        ["failed (NONZERO_EXIT)", "1", "200"],  # no signal is 72: a program's own code
    ]


def test_rc_text_names_only_standard_signals() -> None:
    assert [rc_text(rc) for rc in (None, 0, 3, 128, 130, 139, 143, 159, 160, 255)] == [
        "-",
        "0",
        "3",
        "128",
        "130 (SIGINT)",
        "139 (SIGSEGV)",
        "143 (SIGTERM)",
        "159 (SIGSYS)",
        "160",
        "255",
    ]


def test_the_table_lines_up_names_of_wide_and_combining_characters(tmp_path: Path) -> None:
    """Cells were padded by ``len``: a name of CJK characters (two columns each) or with
    combining accents (none) pushed the rest of its row out of line."""
    wd = Workdir(tmp_path / "wd")
    names = ["job 日本語", "job e\u0301e\u0301", "job abcdef", "job " + "語" * 30]
    for i, name in enumerate(names):
        job = Job(i, f"echo {i}", name=name)
        wd.prepare(job, make=True)
        job.attempt, job.jid, job.status, job.rc = 1, f"{7000 + i}@1.00", JobStatus.FINISHED, 0
        wd.record(job)
    wd.unlock()
    out = xqueue("status", str(tmp_path / "wd"), "--all").stdout.splitlines()
    lines = out[next(i for i, line in enumerate(out) if line.startswith("#")) + 1 :]
    # The widest name is the last one cut to 48 columns: "job " and 21 characters of two
    # columns each, then the "…" (47 columns); the others take 10, 6 and 10.
    shown = ["job 日本語", "job e\u0301e\u0301", "job abcdef", "job " + "語" * 21 + "…"]
    pads = [37, 41, 37, 0]
    assert [line.partition("  finished")[0] for line in lines] == [
        f"{i}  {name}{' ' * p}" for i, (name, p) in enumerate(zip(shown, pads, strict=True))
    ]


def test_width_counts_the_columns_a_terminal_gives() -> None:
    assert [width(t) for t in ("abc", "日本語", "e\u0301", "a\u200bb", "🙂", "")] == [
        3,
        6,
        1,
        2,
        2,
        0,
    ]
    assert clip("a" * 60, 48) == "a" * 47 + "…"
    assert clip("語" * 30, 48) == "語" * 23 + "…"  # a wide character is not cut in half
    assert clip("日本語", 6) == "日本語"
    assert pad("日本", 6) == "日本  "


def test_skipped_jobs_need_attention_too(tmp_path: Path) -> None:
    """A job skipped because one it runs after failed is listed with the failed one, as
    the run's own summary lists it; it was only counted."""
    build(tmp_path / "wd", [JobStatus.FAILED, JobStatus.SKIPPED, JobStatus.FINISHED])
    out = xqueue("status", str(tmp_path / "wd"))
    assert out.returncode == 0, out.stderr
    assert [(r[0], r[2]) for r in rows(out.stdout)] == [("0", "failed"), ("1", "skipped")]
