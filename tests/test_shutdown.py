"""Shutdown that leaves nothing behind, under real signals from a real terminal.

A controller (``xqueue run``, or tests/fault_driver.py on the API) runs 100 jobs at once
on a pty that is its controlling terminal, so Ctrl-C is typed as a user types it: the
line discipline sends SIGINT to the foreground process group, which holds the
controller and not the jobs (each has its own session). The jobs ignore SIGTERM, so
only the escalation to SIGKILL after ``kill_grace`` ends them. Whatever the signal,
and even when it comes twice, the controller must exit with the signal's code, and not
one job process may be left.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.procs import (
    PtyProcess,
    driver_argv,
    job_processes,
    kill_job_processes,
    stop,
    wait_no_job_processes,
)
from xqueue import SchedulerOptionError, Xqueue

N_JOBS = 100
KILL_GRACE = 1.0
# A stopping controller must have killed its 100 jobs and exited this soon: the grace
# runs for all jobs at once, not once per job or per batch of jobs.
EXIT_BOUND = KILL_GRACE + 9.0
# How long we wait for a stuck controller before we call it hung and kill it ourselves.
HUNG = 40.0
# How long killed jobs may take to disappear from /proc once the controller is gone.
SETTLE = 3.0
# A hook that never returns may hold up the end of a run at most this long.
HOOK_BOUND = 20.0


def stubborn_jobs(path: Path, started: Path, n: int) -> None:
    """Jobs that ignore SIGTERM (the ignored signal survives exec) and say they started."""
    started.mkdir()
    lines = [f"trap '' TERM; touch {started}/{i}; exec sleep 60" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def wait_started(started: Path, n: int, proc: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list(started.iterdir())) < n:
        if proc.poll() is not None:
            pytest.fail(f"the controller ended (rc {proc.returncode}) before its jobs started")
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(list(started.iterdir()))} of {n} jobs started in {timeout}s")
        time.sleep(0.05)


def status_records(workdir: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "xqueue", "status", "--json", str(workdir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def send(term: PtyProcess, how: str) -> None:
    """Deliver the interruption: typed Ctrl-C, or signals sent to the controller's pid."""
    if how.startswith("ctrl-c"):
        term.type(b"\x03")
        if how == "ctrl-c-twice":
            time.sleep(0.1)
            term.type(b"\x03")
    elif how == "sigterm-twice":
        term.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        term.proc.send_signal(signal.SIGTERM)
    elif how == "sighup":
        term.proc.send_signal(signal.SIGHUP)
    else:  # pragma: no cover - a typo in the parameters
        raise ValueError(how)


CLI_EXIT = {"ctrl-c": 130, "ctrl-c-twice": 130, "sigterm-twice": 143, "sighup": 129}
API_ERROR = {
    "ctrl-c": ("KeyboardInterrupt", "running jobs were killed"),
    "ctrl-c-twice": ("KeyboardInterrupt", "running jobs were killed"),
    "sigterm-twice": ("Interrupted", "SIGTERM"),
    "sighup": ("Interrupted", "SIGHUP"),
}


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["ctrl-c", "ctrl-c-twice", "sigterm-twice", "sighup"])
@pytest.mark.parametrize(("mode", "backend"), [("cli", ""), ("api", "asyncio"), ("api", "trio")])
def test_interrupted_run_exits_with_the_signal_and_leaves_no_job(
    tmp_path: Path, mode: str, backend: str, how: str
) -> None:
    workdir, jobs, started = tmp_path / "wd", tmp_path / "jobs.txt", tmp_path / "started"
    result = tmp_path / "result.json"
    stubborn_jobs(jobs, started, N_JOBS)
    args = [mode, str(jobs), "-w", str(workdir), "-f", str(N_JOBS), "-e", "ignore"]
    args += ["-o", f"kill_grace={KILL_GRACE}"]
    if mode == "api":
        args += ["--backend", backend, "--result", str(result)]
    term = PtyProcess(driver_argv(*args))
    try:
        wait_started(started, N_JOBS, term.proc)
        sent = time.monotonic()
        send(term, how)
        code = term.wait(HUNG)
        took = time.monotonic() - sent
        assert code is not None, (
            f"the controller did not exit within {HUNG}s of {how}; "
            f"{len(job_processes(workdir))} job processes alive; output:\n{term.output()[-2000:]}"
        )
        left = wait_no_job_processes(workdir, SETTLE)
        assert not left, f"{len(left)} job process(es) left running after {how}: {left[:10]}"
        if mode == "cli":
            assert code == CLI_EXIT[how], f"exit code {code} after {how}:\n{term.output()[-2000:]}"
            assert f"{N_JOBS} killed" in term.output(), term.output()[-2000:]
            # Said once, by the command line (the engine no longer logs it as well).
            assert term.output().count("interrupted:") == 1, term.output()[-2000:]
        else:
            outcome = json.loads(result.read_text())
            error = outcome["error"] or {}
            kind, word = API_ERROR[how]
            assert error.get("type") == kind, f"after {how} the run raised {error}"
            assert word in error.get("message", ""), error
            statuses = {j["status"] for j in outcome["jobs"]}
            assert statuses == {"killed"}, f"job statuses after {how}: {statuses}"
        states = {(r["state"] or {}).get("status") for r in status_records(workdir)}
        assert states == {"killed"}, f"recorded statuses after {how}: {states}"
        assert took < EXIT_BOUND, f"stopping took {took:.1f}s after {how} (kill_grace={KILL_GRACE})"
    finally:
        term.close()
        kill_job_processes(workdir)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_one_ctrl_c_surfaces_as_keyboard_interrupt_not_a_group(
    tmp_path: Path, backend: str
) -> None:
    # What a user's `except KeyboardInterrupt:` around anyio.run(main) must catch, on
    # trio too, where the interrupt would otherwise come out of a nursery in a group.
    workdir, jobs, started = tmp_path / "wd", tmp_path / "jobs.txt", tmp_path / "started"
    result = tmp_path / "result.json"
    stubborn_jobs(jobs, started, 2)
    args = ["api", str(jobs), "-w", str(workdir), "--backend", backend, "-e", "ignore"]
    args += ["-o", f"kill_grace={KILL_GRACE}", "--result", str(result)]
    term = PtyProcess(driver_argv(*args))
    try:
        wait_started(started, 2, term.proc)
        term.type(b"\x03")
        assert term.wait(HUNG) is not None, f"Ctrl-C did not end the run in {HUNG}s"
        error = json.loads(result.read_text())["error"] or {}
        assert error.get("type") == "KeyboardInterrupt", f"one Ctrl-C surfaced as {error}"
        assert not wait_no_job_processes(workdir, SETTLE)
    finally:
        term.close()
        kill_job_processes(workdir)


# -- hooks that never return -------------------------------------------------------------


def run_driver(args: list[str], bound: float) -> tuple[int | None, str]:
    """Run the api driver; (exit code or None if it outlived ``bound``, its output)."""
    proc = subprocess.Popen(
        driver_argv(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=bound)
        return proc.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        return None, ""
    finally:
        stop(proc)


def error_text(result: Path) -> str:
    outcome = json.loads(result.read_text())
    error = outcome["error"] or {}
    return " | ".join(f"{e['type']}: {e['message']}" for e in error.get("leaves", []))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    ("plugin", "job", "extra"),
    [
        ("HangsInOnShutdown", "true", []),
        # Killed while the run goes on: the queue's hook_timeout bounds it.
        ("HangsInOnJobKilled", "exec sleep 60", ["--kill-first", "--hook-timeout", "3"]),
    ],
)
def test_hung_hook_does_not_block_the_end_of_the_run(
    tmp_path: Path, backend: str, plugin: str, job: str, extra: list[str]
) -> None:
    workdir, jobs, result = tmp_path / "wd", tmp_path / "jobs.txt", tmp_path / "result.json"
    jobs.write_text(job + "\n")
    args = ["api", str(jobs), "-w", str(workdir), "--backend", backend, "-e", "ignore"]
    args += ["-o", "kill_grace=1", "--result", str(result), "--plugin", plugin, *extra]
    try:
        code, out = run_driver(args, HOOK_BOUND)
        assert code is not None, f"the run did not end within {HOOK_BOUND}s: {plugin} hangs it"
        assert result.exists(), out
        assert plugin in error_text(result), (
            f"the error does not name {plugin}: {error_text(result)}"
        )
        assert not wait_no_job_processes(workdir, SETTLE)
    finally:
        kill_job_processes(workdir)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_hung_on_job_killed_does_not_block_a_sigterm_shutdown(tmp_path: Path, backend: str) -> None:
    workdir, jobs, started = tmp_path / "wd", tmp_path / "jobs.txt", tmp_path / "started"
    result = tmp_path / "result.json"
    stubborn_jobs(jobs, started, 3)
    args = ["api", str(jobs), "-w", str(workdir), "--backend", backend, "-e", "ignore"]
    args += ["-o", "kill_grace=1", "--result", str(result), "--plugin", "HangsInOnJobKilled"]
    proc = subprocess.Popen(
        driver_argv(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_started(started, 3, proc)
        proc.send_signal(signal.SIGTERM)
        try:
            out = proc.communicate(timeout=HOOK_BOUND)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIGTERM did not end the run within {HOOK_BOUND}s: a hung hook holds it")
        left = wait_no_job_processes(workdir, SETTLE)
        assert not left, f"job processes left running: {left}"
        assert result.exists(), out
        said = error_text(result) + out
        assert "HangsInOnJobKilled" in said, f"the hung plugin is not named: {said[-2000:]}"
    finally:
        stop(proc)
        kill_job_processes(workdir)


# -- a kill grace that is not a number of seconds ------------------------------------------


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -1.0, "nan", "inf", "-inf"],
    ids=["nan", "inf", "negative", "nan-text", "inf-text", "minus-inf-text"],
)
def test_kill_grace_must_be_a_finite_number_of_seconds(tmp_path: Path, value: Any) -> None:
    # nan would make every "has the grace passed?" comparison false and inf never
    # passes: either way a stopping run would wait for ever on a job ignoring SIGTERM.
    with pytest.raises(SchedulerOptionError, match="kill_grace"):
        Xqueue(workdir=tmp_path / "wd", scheduler_opts={"kill_grace": value})


def test_cli_refuses_a_nan_kill_grace_before_running_anything(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    marker = tmp_path / "ran"
    jobs.write_text(f"touch {marker}\n")
    argv = [sys.executable, "-m", "xqueue", "run", str(jobs), "-w", str(tmp_path / "wd")]
    out = subprocess.run(
        [*argv, "-o", "kill_grace=nan", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "kill_grace" in out.stderr
    assert not marker.exists()
