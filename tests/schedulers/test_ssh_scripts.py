"""The shell scripts the SSH scheduler runs on a server, run here by a real sh."""

from __future__ import annotations

import os
import subprocess
import time

from xqueue.schedulers._ssh_scripts import kill_script


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


def test_kill_spares_a_group_that_is_no_longer_the_job() -> None:
    # A group id reused by an unrelated process: wrong start time, no job marker.
    foreign = start_group()
    try:
        time.sleep(0.2)
        assert run(kill_script(foreign.pid, 0.2, "1", "/no/such/job")).strip() == "gone"
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
