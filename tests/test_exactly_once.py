"""Exactly once, proven by fault injection: a controller SIGKILLed anywhere loses nothing.

The harness runs a real controller (tests/fault_driver.py, by the API on asyncio or trio,
or as ``xqueue run``) on a job list whose every job appends its index to a ledger file,
SIGKILLs it at 50 or more seeded random points (while Python starts, while it feeds,
right after the run starts, after the n-th new job started), starts it again on the same
workdir each time, and finally lets a run complete. The ledger is the jobs' own word on
how often each one ran: every index must be there exactly once. A job that was still
running when its controller died keeps running (it has its own session): the next
controller must adopt it, and collect its real return code even if it ended while no
controller was watching, never run it a second time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ssh_server
from tests.procs import (
    driver_argv,
    job_processes,
    kill_job_processes,
    stop,
    wait_no_job_processes,
)
from xqueue.schedulers._ssh_scripts import kill_script, parse_jid

JOBS = 500  # enough work left for every kill to land: a faster run ends sooner
KILLS = 50
FORKS = 8
SEED = 20260823
# The longest one controller may take to reach its kill point or its end.
RUN_TIMEOUT = 30.0
FINAL_TIMEOUT = 90.0
MAX_FINAL_RUNS = 3


def job_sleep(i: int) -> float:
    """Seconds job ``i`` sleeps: mostly 0-96 ms, and every 25th job 1.2 s, so that some
    jobs are still running when the next controller starts (to be adopted alive), while
    most end while no controller watches (to be collected)."""
    return 1.2 if i % 25 == 7 else ((i * 37) % 97) / 1000


def write_jobs(path: Path, ledger: Path, n: int) -> None:
    lines = [f"echo {i} >> {ledger}; sleep {job_sleep(i):.3f}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def ledger_lines(ledger: Path) -> list[str]:
    try:
        return ledger.read_text().split()
    except FileNotFoundError:
        return []


def phases(path: Path) -> list[str]:
    """The phases an api driver has reported so far."""
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def check_ledger(ledger: Path, n: int) -> None:
    """Every job index appears in the ledger exactly once."""
    seen = Counter(ledger_lines(ledger))
    missing = [i for i in range(n) if seen[str(i)] == 0]
    twice = {int(i): c for i, c in seen.items() if c > 1}
    stray = sorted(i for i in seen if not (i.isdigit() and int(i) < n))
    assert not (missing or twice or stray), (
        f"not exactly once: {len(twice)} job(s) ran more than once "
        f"{dict(sorted(twice.items())[:15])}, {len(missing)} never ran {missing[:15]}, "
        f"stray lines {stray[:5]}"
    )


@dataclass
class KillPoint:
    """Where to SIGKILL a controller: ``delay`` seconds after its anchor is reached.

    Anchors: "spawn" (the process was started: Python is still starting, or feeding),
    "feeding"/"running" (the phase the api driver reports), "ledger" (``count`` new
    jobs have started since this controller was spawned).
    """

    anchor: str
    delay: float
    count: int = 0

    def __str__(self) -> str:
        what = f"{self.count} new jobs" if self.anchor == "ledger" else self.anchor
        return f"{what} + {self.delay * 1000:.0f} ms"


def kill_points(rng: random.Random, with_phases: bool) -> Iterator[KillPoint]:
    """Seeded kill points: the first ones fixed and very early, then drawn at random."""
    yield KillPoint("spawn", 0.0)
    yield KillPoint("spawn", 0.25)
    if with_phases:
        yield KillPoint("feeding", 0.0)
        yield KillPoint("running", 0.0)
    yield KillPoint("ledger", 0.0, 1)
    while True:
        kind = rng.random()
        if kind < 0.25:
            yield KillPoint("spawn", rng.uniform(0.0, 0.45))
        elif kind < 0.4 and with_phases:
            yield KillPoint("feeding", rng.uniform(0.0, 0.03))
        elif kind < 0.55 and with_phases:
            yield KillPoint("running", rng.uniform(0.0, 0.05))
        else:
            yield KillPoint("ledger", rng.uniform(0.0, 0.02), rng.randint(1, 10))


@dataclass
class Harness:
    """One workdir, one ledger, and the controllers started on them."""

    tmp: Path
    mode: str  # "api" or "cli"
    backend: str = "asyncio"
    scheduler: str = "local"
    forks: int = FORKS
    error_strategy: str = "retry"
    options: list[str] = field(default_factory=list)
    runs: int = 0
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = self.tmp / "wd"
        self.ledger = self.tmp / "ledger"
        self.jobs = self.tmp / "jobs.txt"
        self.logs = self.tmp / "runs"
        self.logs.mkdir()

    def start(self) -> tuple[subprocess.Popen[bytes], Path]:
        self.runs += 1
        phase = self.logs / f"{self.runs}.phase"
        args = [self.mode, str(self.jobs), "-w", str(self.workdir), "-f", str(self.forks)]
        args += ["-e", self.error_strategy, "-s", self.scheduler]
        for pair in self.options:
            args += ["-o", pair]
        if self.mode == "api":
            args += ["--backend", self.backend, "--phase", str(phase)]
            args += ["--result", str(self.result_path)]
        with open(self.logs / f"{self.runs}.out", "wb") as out:
            proc = subprocess.Popen(
                driver_argv(*args), stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        return proc, phase

    @property
    def result_path(self) -> Path:
        return self.tmp / "result.json"

    def _reached(self, point: KillPoint, phase: Path, base: int) -> bool:
        if point.anchor == "spawn":
            return True
        if point.anchor == "ledger":
            return len(ledger_lines(self.ledger)) - base >= point.count
        return point.anchor in phases(phase)

    def run_and_kill(self, point: KillPoint) -> bool:
        """Start a controller and SIGKILL it at ``point``; False if it ended before."""
        base = len(ledger_lines(self.ledger))
        proc, phase = self.start()
        started = time.monotonic()
        try:
            while not self._reached(point, phase, base):
                if proc.poll() is not None:
                    break
                if time.monotonic() - started > RUN_TIMEOUT:
                    self.log.append(f"run {self.runs}: {point} not reached in {RUN_TIMEOUT}s")
                    break
                time.sleep(0.002)
            if point.delay:
                time.sleep(point.delay)
            if proc.poll() is not None:
                self.log.append(f"run {self.runs}: ended (rc {proc.returncode}) before {point}")
                return False
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            self.log.append(f"run {self.runs}: SIGKILLed at {point}")
            return True
        finally:
            stop(proc)

    def run_to_end(self) -> int:
        """Start a controller and let it finish; its exit code."""
        proc, _ = self.start()
        try:
            return proc.wait(timeout=FINAL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the final run did not end within {FINAL_TIMEOUT}s: {self.last_output()}")
        finally:
            stop(proc)

    def last_output(self, limit: int = 3000) -> str:
        try:
            return (self.logs / f"{self.runs}.out").read_text()[-limit:]
        except FileNotFoundError:
            return ""

    def status_records(self) -> list[dict[str, Any]]:
        """What ``xqueue status --json`` reads back from the workdir."""
        out = subprocess.run(
            [sys.executable, "-m", "xqueue", "status", "--json", str(self.workdir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def cleanup(self) -> list[int]:
        """Kill what the runs left behind; keep the harness's notes next to the run logs."""
        (self.logs / "harness.log").write_text("\n".join(self.log) + "\n")
        return kill_job_processes(self.workdir)


def inject_faults(h: Harness, n_jobs: int, kills: int, rng: random.Random) -> int:
    """Kill ``kills`` controllers at seeded points, then run to the end; the exit code."""
    write_jobs(h.jobs, h.ledger, n_jobs)
    delivered = 0
    points = kill_points(rng, with_phases=h.mode == "api")
    # Some points may come after a controller had nothing left to do and ended:
    # those do not count, so allow a few more attempts than kills.
    while delivered < kills and h.runs < 3 * kills:
        if h.run_and_kill(next(points)):
            delivered += 1
    assert delivered >= kills, (
        f"harness: only {delivered} of {kills} kills landed in {h.runs} runs: "
        + "; ".join(h.log[-10:])
    )
    for _ in range(MAX_FINAL_RUNS):
        code = h.run_to_end()
        h.log.append(f"run {h.runs}: ran to the end, exit code {code}")
        if code == 0:
            break
    return code


def check_all_finished(records: list[dict[str, Any]], n_jobs: int, where: str) -> None:
    bad = [r for r in records if r.get("status") != "finished" or r.get("rc") != 0]
    assert len(records) == n_jobs and not bad, (
        f"{where}: {len(bad)} of {len(records)} job(s) not finished with rc 0, e.g. {bad[:3]}"
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("mode", "backend"), [("api", "asyncio"), ("api", "trio"), ("cli", "asyncio")]
)
def test_controller_killed_at_50_points_runs_each_job_exactly_once(
    tmp_path: Path, mode: str, backend: str
) -> None:
    h = Harness(tmp_path, mode, backend)
    try:
        code = inject_faults(h, JOBS, KILLS, random.Random(f"{SEED}-{mode}-{backend}"))
        check_ledger(h.ledger, JOBS)
        assert code == 0, f"no run completed in {MAX_FINAL_RUNS} tries: {h.last_output()}"
        if mode == "api":
            result = json.loads(h.result_path.read_text())
            assert result["error"] is None, result["error"]
            check_all_finished(result["jobs"], JOBS, "the final run's report")
        states = [r["state"] or {} for r in h.status_records()]
        check_all_finished(states, JOBS, "xqueue status --json")
        left = wait_no_job_processes(h.workdir, settle=2.0)
        assert not left, f"job processes still running after a complete run: {left}"
    finally:
        h.cleanup()


# -- a job that ends while no controller watches -----------------------------------------


def waiting_job(i: int, ledger: Path, go: Path, rc: int) -> str:
    """Record that job ``i`` started, wait for the test's go-ahead, then exit ``rc``."""
    return f"echo {i} >> {ledger}; while [ ! -e {go} ]; do sleep 0.02; done; exit {rc}"


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("ends", ["before-restart", "after-restart"])
def test_job_ending_unwatched_is_collected_with_its_rc_not_rerun(
    tmp_path: Path, backend: str, ends: str
) -> None:
    # Ignore, not retry: a failure collected from an earlier run is final, so any
    # second ledger line can only be a job run again by mistake.
    h = Harness(tmp_path, "api", backend, forks=2, error_strategy="ignore")
    go = tmp_path / "go"
    h.jobs.write_text(
        waiting_job(0, h.ledger, go, 0) + "\n" + waiting_job(1, h.ledger, go, 3) + "\n"
    )
    proc = None
    try:
        proc, _ = h.start()
        wait_for(lambda: len(ledger_lines(h.ledger)) == 2, 30, "both jobs to start")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if ends == "before-restart":
            go.touch()
            left = wait_no_job_processes(h.workdir, settle=10)
            assert not left, f"the jobs did not end on their own: {left}"
            proc, _ = h.start()
        else:
            proc, phase = h.start()
            wait_for(lambda: "running" in phases(phase), 30, "the second run")
            time.sleep(0.5)  # let it adopt the jobs before they end
            assert len(wait_no_job_processes(h.workdir, settle=0)) >= 2
            go.touch()
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the second run did not end: {h.last_output()}")
        assert code == 0, h.last_output()
        assert sorted(ledger_lines(h.ledger)) == ["0", "1"], "a job ran again"
        result = json.loads(h.result_path.read_text())
        got = [(j["status"], j["rc"]) for j in result["jobs"]]
        assert got == [("finished", 0), ("failed", 3)], [
            (j["status"], j["rc"], j["reason"]) for j in result["jobs"]
        ]
        states = [(r["state"]["status"], r["state"]["rc"]) for r in h.status_records()]
        assert states == [("finished", 0), ("failed", 3)]
    finally:
        stop(proc)
        h.cleanup()


# -- a controller killed while it stops ------------------------------------------------


def test_controller_killed_while_stopping_ends_the_kill_and_runs_the_jobs_again(
    tmp_path: Path,
) -> None:
    """SIGTERM stops the run and signals its jobs; a SIGKILL of the controller within the
    kill grace leaves each job's shell dead of that SIGTERM and a child that ignores it
    alive. The next run must take rc 143 for the kill it was, not the job's own failure
    (it recorded all of them failed, did not run them again and exited 1), and end the
    children before the jobs run again (they ran on beside their next attempt)."""
    ledger, go, wd = tmp_path / "ledger", tmp_path / "go", tmp_path / "wd"
    hold = tmp_path / "hold"  # the children wait for it: none may live to see it
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(
        "".join(
            f"echo S {i} >> {ledger}; [ -e {go} ] && exit 0; "
            f"(trap '' TERM; until [ -e {hold} ]; do sleep 0.05; done; echo C {i} >> {ledger})"
            " & sleep 60\n"
            for i in range(2)
        )
    )
    xq = [sys.executable, "-m", "xqueue"]
    env = {**os.environ, "XQUEUE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    run = [*xq, "run", str(jobs), "-w", str(wd), "-f", "2", "--no-progress"]
    first = [*run, "-o", "kill_grace=60"]
    proc = subprocess.Popen(first, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(ledger_lines(ledger)) == 4, 30, "both jobs to start")
        time.sleep(0.3)  # their children start too
        proc.send_signal(signal.SIGTERM)
        # Inside the kill grace (60 s, however slow the machine): the kills journaled and
        # both shells dead of the SIGTERM, the children alive; then the SIGKILL.
        wait_for(
            lambda: (
                (wd / "journal.jsonl").read_text().count('"kill": true') == 2
                and (wd / "exits.jsonl").exists()
                and (wd / "exits.jsonl").read_text().count('"rc": 143') == 2
            ),
            30,
            "the stop to signal both jobs",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        status = subprocess.run([*xq, "status", str(wd)], env=env, capture_output=True, text=True)
        assert status.stdout.count(" killed ") == 2, status.stdout
        go.touch()
        again = subprocess.run(
            [*run, "-o", "kill_grace=1"], env=env, capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert "2 finished" in again.stderr, again.stderr
        assert wait_no_job_processes(wd, 10) == []  # the children were ended too
        hold.touch()
        time.sleep(0.5)
        # Each job started twice (killed, then run again), and no child lived to write.
        assert sorted(ledger.read_text().splitlines()) == ["S 0", "S 0", "S 1", "S 1"]
    finally:
        stop(proc)
        kill_job_processes(wd)


# -- Slurm -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("slurm_cluster")
def test_slurm_controller_killed_at_50_points_runs_each_job_exactly_once(
    tmp_path: Path,
) -> None:
    name = f"xqfault-{uuid.uuid4().hex[:8]}"
    h = Harness(tmp_path, "api", "asyncio", scheduler="slurm")
    # Arrays on (the default), a short poll; the job name marks this test's jobs for scancel.
    h.options = ["poll_interval=0.2", "vanish_grace=5", "arrays=true", f"job-name={name}"]
    try:
        code = inject_faults(h, 100, KILLS, random.Random(f"{SEED}-slurm"))
        check_ledger(h.ledger, 100)
        assert code == 0, f"no run completed in {MAX_FINAL_RUNS} tries: {h.last_output()}"
        result = json.loads(h.result_path.read_text())
        assert result["error"] is None, result["error"]
        check_all_finished(result["jobs"], 100, "the final run's report")
        states = [r["state"] or {} for r in h.status_records()]
        check_all_finished(states, 100, "xqueue status --json")
    finally:
        subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30)


def _limit_file_size(limit: int) -> None:
    """In the controller's process: a file may not grow past ``limit`` bytes (the journal
    hits it as on a full disk or a quota: the write fails, EFBIG)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("full", ["journal.jsonl", "specs.jsonl"])
def test_a_workdir_that_cannot_be_written_stops_the_run_and_loses_nothing(
    tmp_path: Path, full: str
) -> None:
    """The workdir refuses a write (a full disk, a quota): the journal mid-run, or the
    specs file (written for every job fed, ahead of the run). The run stops with one line
    saying so; it leaves its running jobs running instead of killing them (their kills
    could not be recorded: a later run took their SIGTERM, rc 143, for the jobs' own
    failure and did not run them again), and a later run picks them up: each job runs
    exactly once and succeeds. It was a traceback (the journal), or a failure of every
    job left, each said on its own (the specs)."""
    wd, ledger = tmp_path / "wd", tmp_path / "L"
    # Short commands: the journal (three lines a job) fills first; long ones: the specs.
    pad = "" if full == "journal.jsonl" else f" # {'x' * 300}"
    # The long jobs end when the test says: after the first run has stopped.
    long = [f"while [ ! -e go ]; do sleep 0.05; done; echo long{i} >> L{pad}" for i in range(2)]
    short = [f"echo {i} >> L{pad}" for i in range(200)]
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("\n".join(long + short) + "\n")
    run = [sys.executable, "-m", "xqueue", "run", "-w", str(wd), "-f", "4", "--no-progress"]
    # Output to a file: the shepherd keeps the left jobs, and a pipe, open after the run.
    log = tmp_path / "first.log"
    try:
        with log.open("w") as out:
            first = subprocess.run(
                [*run, str(jobs)],
                stdout=out,
                stderr=out,
                timeout=60,
                cwd=tmp_path,
                preexec_fn=lambda: _limit_file_size(30_000),
            )
        said = log.read_text()
        assert first.returncode == 2, said
        error = [line for line in said.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and f"{full}' (File too large): the run stops" in error[0], said
        assert "Traceback" not in said and "job 1" not in said, said
        if full == "journal.jsonl":  # the long jobs' shells: left running, not killed
            assert len(job_processes(wd)) >= 2
        (tmp_path / "go").touch()
        again = subprocess.run(
            [*run, str(jobs)], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert again.returncode == 0, again.stderr
        counts = Counter(ledger.read_text().split())
        assert counts == Counter([*(f"long{i}" for i in range(2)), *map(str, range(200))])
        assert wait_no_job_processes(wd, 5) == []
    finally:
        kill_job_processes(wd)


# Python-API runs whose workdir fills at a chosen moment (RLIMIT_FSIZE, in a process of
# their own: the limit is the whole process's). Each prints what a test checks.
_FULL_PRELUDE = """
import os, resource, signal, sys
import anyio
from xqueue import Xqueue
from xqueue.schedulers.local import LocalScheduler
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
HARD = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
wd = sys.argv[1]

def fill(name, room=0):
    size = os.path.getsize(os.path.join(wd, name))
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + room, HARD))

def report(label, jobs):
    print(label, *[f"{j.status.value}:{j.rc}" for j in jobs])
"""

_FULL_WHILE_SUBMITTING = """
class Slow(LocalScheduler):
    name = "local"
    async def submit_jobs(self, jobs):
        if any("B" in j.name for j in jobs):  # its intent is journalled; now it is full
            fill("journal.jsonl")
            await anyio.sleep(1.0)  # meanwhile C ends, its record is refused: the run stops
        return await super().submit_jobs(jobs)

CMDS = ["sleep 1.2; echo A >> ../L", "sleep 0.3; echo C >> ../L", "sleep 1; echo B >> ../L"]

async def first():
    # Two at a time: B goes once C has ended; while its submission is on its way, A
    # ends and its record is refused: the run stops.
    q = Xqueue(Slow(), workdir=wd, forks=2, error_strategy="ignore")
    jobs = [await q.feed(cmd) for cmd in CMDS]
    try:
        await q.run_until_complete()
    except Exception as exc:
        print("error", type(exc).__name__)
    report("first", jobs)
    resource.setrlimit(resource.RLIMIT_FSIZE, (HARD, HARD))
    # The same queue runs again, once there is room (its error is not kept).
    jobs.append(await q.feed("echo D >> ../L"))
    await q.run_until_complete()
    report("again", jobs)
    await q.aclose()

anyio.run(first)
"""

_FULL_IN_THE_FOLDER_THREAD = """
async def main():
    q = Xqueue(workdir=wd, forks=4, error_strategy="ignore")
    try:
        async with q:
            a = await q.feed("sleep 1; exit 3")
            await anyio.sleep(0.3)
            fill("specs.jsonl", room=1000)  # room for a few specs, of the folder thread
            deps = [await q.feed(f"echo {i} # {'x' * 300}", after=[a]) for i in range(20)]
    except Exception as exc:
        print("error", type(exc).__name__)
    else:
        print("no error")

anyio.run(main)
"""


def test_a_full_workdir_leaves_a_job_being_submitted_running_and_the_queue_usable(
    tmp_path: Path,
) -> None:
    """A job whose submission was on its way when the workdir filled is left running too
    (it was SIGTERMed unrecorded, and the next run took rc 143 for its failure), and the
    same queue runs again once there is room (the error was kept: every job fed after it
    was cancelled, every record dropped)."""
    (tmp_path / "wd").mkdir()
    script = tmp_path / "s.py"
    script.write_text(_FULL_PRELUDE + _FULL_WHILE_SUBMITTING)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "wd" / "w")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path / "wd",
    )
    lines = out.stdout.splitlines()
    assert lines[:2] == ["error WorkdirError", "first finished:0 finished:0 running:None"], out
    assert lines[2] == "again finished:0 finished:0 finished:0 finished:0", out
    assert sorted((tmp_path / "L").read_text().split()) == ["A", "B", "C", "D"]


def test_a_workdir_filled_by_its_folder_thread_stops_the_run(tmp_path: Path) -> None:
    """The folder thread was the first to find the workdir full: every record after it
    went nowhere, and the run ended without a word."""
    script = tmp_path / "s.py"
    script.write_text(_FULL_PRELUDE + _FULL_IN_THE_FOLDER_THREAD)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "wd")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.splitlines() == ["error WorkdirError"], out


# -- a controller killed while its kills are on their way ----------------------------------
# A stop journals its kills (``"kill": true``) before it sends them. A controller SIGKILLed
# in between leaves the next run to guess whether a kill reached each job. An attempt that
# exited 0 before any did is a success, and running it again runs it twice (a trial: 1-8
# jobs of 20 on SGE and SSH); one that exited 0 of the kill's SIGTERM was cut short.

XQ = [sys.executable, "-m", "xqueue"]
ENV = {**os.environ, "XQUEUE_DISABLE_PLUGIN_AUTOLOAD": "1"}


def journal(wd: Path) -> str:
    path = wd / "journal.jsonl"
    return path.read_text() if path.exists() else ""


def rc_files(wd: Path) -> list[Path]:
    return list(wd.glob("*/job.1.rc"))


def first_run_dies_after_journalling(run: list[str], wd: Path, ledger: Path) -> None:
    """Start ``run``, let the job start, SIGTERM it (the stop), SIGKILL it once the
    stop has journalled its kill (its ``qdel`` never returns: the kill is not sent)."""
    proc = subprocess.Popen(run, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: ledger_lines(ledger) == ["S"], 60, "the job to start")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: '"kill": true' in journal(wd), 30, "the stop to journal its kill")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop(proc)


@pytest.mark.slow
@pytest.mark.sge
@pytest.mark.timeout(360)
@pytest.mark.usefixtures("sge_cluster")
@pytest.mark.parametrize("cancel", [False, True], ids=["run", "cancel-then-run"])
def test_sge_success_while_a_dead_runs_kill_was_on_its_way_is_kept(
    tmp_path: Path, cancel: bool
) -> None:
    """SGE's kill ends the wrapper with its job, so a return code file is always the
    job's own end (``rc_file_is_own_end``): the job exited 0 with no kill sent, and the
    next run must keep that success, not take it for the kill's end and run it again;
    so must an ``xqueue cancel`` with no controller, which records how it ended."""
    ledger, go, release, wd = (tmp_path / n for n in ("ledger", "go", "release", "wd"))
    qdel = tmp_path / "qdel"  # the stop's qdel: waits, deletes nothing
    qdel.write_text(f"#!/bin/sh\nuntil [ -e {release} ]; do sleep 0.05; done\nexit 0\n")
    qdel.chmod(0o755)
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(f"echo S >> {ledger}; until [ -e {go} ]; do sleep 0.05; done\n")
    run = [*XQ, "run", str(jobs), "-w", str(wd), "-s", "sge", "--no-progress"]
    run += ["-o", "poll_interval=0.3"]
    try:
        first_run_dies_after_journalling([*run, "-o", f"qdel={qdel}"], wd, ledger)
        go.touch()  # the job ends on its own, while no controller watches
        wait_for(lambda: rc_files(wd), 60, "the job to write its return code")
        status = subprocess.run([*XQ, "status", str(wd)], env=ENV, capture_output=True, text=True)
        assert "1 finished" in status.stdout and "killed" not in status.stdout, status.stdout
        if cancel:
            said = subprocess.run(
                [*XQ, "cancel", str(wd)], env=ENV, capture_output=True, text=True, timeout=120
            )
            assert "recorded finished (exit code 0)" in said.stdout, said.stdout + said.stderr
        again = subprocess.run(run, env=ENV, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "1 finished" in again.stderr, again.stderr
        assert ledger_lines(ledger) == ["S"]  # kept, not run again
    finally:
        go.touch()
        release.touch()


def _ssh_run(ssh_env: dict[str, str], jobs: Path, wd: Path) -> list[str]:
    servers = {"s": ssh_server(ssh_env, ssh_env["XQ_SSH_PORT"])}
    return [
        *XQ,
        *("run", str(jobs), "-w", str(wd), "-s", "ssh", "--no-progress"),
        *("-o", f"servers={json.dumps(servers)}", "-o", "poll_interval=0.3"),
    ]


def _journal_kill(wd: Path) -> dict[str, Any]:
    """Append the kill mark a stop journals before its kill is sent, to the job's last
    record (what ``Workdir.record_kills`` writes), and return that record."""
    record = json.loads(journal(wd).splitlines()[-1])
    assert record["status"] in ("submitted", "running") and record["jid"], record
    with (wd / "journal.jsonl").open("a") as fh:
        fh.write(json.dumps({**record, "kill": True}) + "\n")
    return record


@pytest.mark.slow
@pytest.mark.ssh
@pytest.mark.timeout(240)
@pytest.mark.parametrize("reached", [False, True], ids=["not-reached", "reached"])
def test_ssh_success_while_a_dead_runs_kill_was_on_its_way(
    tmp_path: Path, ssh_env: dict[str, str], reached: bool
) -> None:
    """A controller SIGKILLed right after its stop journalled a kill (the record is
    written here as it writes it; a stop sends its kill scripts a moment later). If the
    kill script never reached the job, which exited 0 on its own, the next run keeps the
    success. If it did, the job was cut short, even one that traps SIGTERM to exit 0:
    the group's signal ends its wrapper too, which writes no return code, and the job
    runs again. (A wrapper that outlived the kill to write 0 would make the first case's
    rule keep a job cut short.)"""
    ledger, go, wd = tmp_path / "ledger", tmp_path / "go", tmp_path / "wd"
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(
        f"trap 'echo T >> {ledger}; exit 0' TERM; echo S >> {ledger}; "
        f"until [ -e {go} ]; do sleep 0.05; done\n"
    )
    run = _ssh_run(ssh_env, jobs, wd)
    proc = subprocess.Popen(run, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: ledger_lines(ledger) == ["S"], 60, "the job to start")
        wait_for(lambda: '"jid"' in journal(wd), 30, "the run to journal its id")
        proc.send_signal(signal.SIGKILL)  # its job runs on, in its own session
        proc.wait(timeout=10)
        record = _journal_kill(wd)
        if reached:  # the real kill script, as the dead stop sent it (a loopback server)
            _, pgid, start = parse_jid(record["jid"]) or ("", 0, "")
            script = kill_script(pgid, 5, start, str(wd / record["dir"]))
            killed = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True)
            assert killed.stdout.split() == ["dead"], killed
            wait_for(lambda: ledger_lines(ledger) == ["S", "T"], 30, "its trap to run")
            assert rc_files(wd) == []
        else:
            go.touch()
            wait_for(lambda: rc_files(wd), 60, "the job to write its return code")
            assert rc_files(wd)[0].read_text().strip() == "0"
        go.touch()
        again = subprocess.run(run, env=ENV, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "1 finished" in again.stderr, again.stderr
        assert ledger_lines(ledger) == (["S", "T", "S"] if reached else ["S"])
    finally:
        go.touch()
        stop(proc)
