"""The failures table of ``xqueue run``: which jobs it lists (every one that did not
succeed, skipped ones too) and what it says about a job's stderr, by where the file is
(a backend without a shared file system copies it back only once a job ended)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from rich.console import Console

from tests.helpers import plugin_distribution
from xqueue import Job, JobStatus
from xqueue.cli.report import NOT_COPIED, failures_table
from xqueue.workdir import Workdir

from .test_cli import XQ


def rendered(jobs: list[Job], shared_fs: bool) -> str:
    console = Console(record=True, width=400)
    table = failures_table(jobs, shared_fs)
    assert table is not None
    console.print(table)
    return console.export_text()


def failed_jobs(tmp_path: Path) -> tuple[Job, Job]:
    wd = Workdir(tmp_path / "wd")
    fetched, remote = Job(0, ["false"], name="fetched"), Job(1, ["sleep", "9"], name="remote")
    for job in (fetched, remote):
        wd.prepare(job, make=True)
        job.attempt, job.status = 1, JobStatus.FAILED
    Path(fetched.stderr_path).write_text("first\nthe last word\n")
    remote.status = JobStatus.KILLED  # killed while it ran elsewhere: nothing came back
    return fetched, remote


def test_a_stderr_that_was_never_copied_back_is_not_shown_as_a_path(tmp_path: Path) -> None:
    fetched, remote = failed_jobs(tmp_path)
    text = rendered([fetched, remote], shared_fs=False)
    assert "the last word" in text and fetched.stderr_path in text
    assert remote.stderr_path not in text and NOT_COPIED in text


def test_on_a_shared_file_system_every_stderr_path_is_shown(tmp_path: Path) -> None:
    fetched, remote = failed_jobs(tmp_path)
    text = rendered([fetched, remote], shared_fs=True)
    assert fetched.stderr_path in text and remote.stderr_path in text
    assert NOT_COPIED not in text


WIDE = {**os.environ, "COLUMNS": "400"}  # a wide table: no cell folded in two

# A section whose job fails, and a later one whose job runs after it, so is skipped.
HELD_BACK = """
[[section]]
name = "first"
[[section.group]]
name = "a"
command = "echo boom >&2; exit 3"
[[section.group]]
name = "fine"
command = "true"

[[section]]
name = "second"
[[section.group]]
name = "b"
command = "echo never"
"""


def cells(stderr: str, name: str) -> list[str]:
    """The cells of the failures table's row of the job ``name``."""
    row = next(line for line in stderr.splitlines() if f"│ {name} " in line)
    return [cell.strip() for cell in row.strip("│ ").split("│")]


def test_a_job_skipped_because_one_it_runs_after_failed_is_listed(tmp_path: Path) -> None:
    """The summary said ``1 failed, 1 finished, 1 skipped`` over a table titled ``1 job(s)
    did not succeed`` that left the skipped job out; it did not succeed either."""
    path = tmp_path / "sweep.toml"
    path.write_text(HELD_BACK)
    argv = [*XQ, "sweep", str(path), "-w", str(tmp_path / "wd"), "-f", "1", "--no-progress"]
    out = subprocess.run(argv, capture_output=True, text=True, env=WIDE, timeout=60)
    assert out.returncode == 1, out.stderr  # a job failed
    assert "3 job(s) in" in out.stderr and "1 failed, 1 finished, 1 skipped" in out.stderr
    assert "2 job(s) did not succeed" in out.stderr
    assert cells(out.stderr, "a")[:4] == ["0", "a", "failed (NONZERO_EXIT)", "3"]
    reason = "not run: job 0 (a), which it runs after, failed with rc 3"
    assert cells(out.stderr, "b") == ["2", "b", "skipped", "-", reason, "-"]  # no stderr file


VETO = """
from xqueue import hookimpl


@hookimpl
def on_job_submitting(job):
    return job.name != ": vetoed"
"""


def test_a_run_whose_only_unsuccessful_job_a_plugin_vetoed_lists_it_and_exits_0(
    tmp_path: Path,
) -> None:
    """A veto is the plugin's decision, not a failure: the exit code stays 0 (1 is for a
    job that failed or was killed, docs/cli.md), but the job is listed, with the reason."""
    path = plugin_distribution(
        tmp_path / "site", "xq-veto", "xqueue.plugins", "veto = xq_veto", VETO
    )
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("true\n: vetoed\n")  # a command's name is the command
    out = subprocess.run(
        [*XQ, "run", str(jobs), "-w", str(tmp_path / "wd"), "-p", "veto", "--no-progress"],
        capture_output=True,
        text=True,
        env={**WIDE, "PYTHONPATH": path, "XQUEUE_DISABLE_PLUGIN_AUTOLOAD": "1"},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "1 finished, 1 skipped" in out.stderr
    assert "1 job(s) did not succeed" in out.stderr
    row = cells(out.stderr, ": vetoed")
    assert row == ["1", ": vetoed", "skipped", "-", "submission vetoed by plugin 'veto'", "-"]


def test_the_live_view_of_a_resumed_run_counts_only_its_own_pace(tmp_path: Path) -> None:
    """A resumed run settles what an earlier run did at once: the live view counted
    those in its rate (900 jobs/s) and said "ETA 0s" for the whole of a 30 s run."""
    import io

    import anyio
    from rich.console import Console

    from xqueue import Xqueue
    from xqueue.cli.progress import ProgressView

    wd = tmp_path / "wd"

    async def first() -> None:
        q = Xqueue(workdir=wd, forks=8)
        for i in range(200):
            await q.feed(["true", str(i)])
        await q.run_until_complete()

    anyio.run(first)
    q = Xqueue(workdir=wd)

    async def resume() -> None:
        for i in range(200):
            await q.feed(["true", str(i)])
        await q.feed(["sleep", "30"])

    anyio.run(resume)
    view = ProgressView(q, Console(file=io.StringIO(), width=200))
    view.on_init()  # as the run starts: the 200 are settled already
    try:
        out = io.StringIO()
        Console(file=out, width=200).print(view)
        text = out.getvalue()
    finally:
        assert view.live is not None
        view.live.stop()
        anyio.run(q.aclose)
    assert "200/201" in text
    assert "0.0 jobs/s" in text and "ETA -" in text, text


def test_into_a_pipe_the_table_folds_no_cell(tmp_path: Path) -> None:
    """Into a pipe or a log rich drew the table at 80 columns, and each job's stderr path
    came out in pieces over four lines: a log could not be searched for it, nor the path
    copied. There the table now takes the width its cells need."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("echo ok\nexit 3\nnosuchcmd_xyz\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    wd = tmp_path / "a rather long workdir name" / "so that its paths pass 80 columns"
    out = subprocess.run(
        [*XQ, "run", str(jobs), "-w", str(wd)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    for index, name in ((1, "exit-3"), (2, "nosuchcmd-xyz")):
        path = f"{wd}/{index}-{name}/job.1.stderr"
        assert len(path) > 80
        assert any(path in line for line in out.stderr.splitlines()), out.stderr
    row = next(line for line in out.stderr.splitlines() if "nosuchcmd_xyz: not found" in line)
    assert "failed (NONZERO_EXIT)" in row, out.stderr
