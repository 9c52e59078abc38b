"""The failures table of ``xqueue run``: what it says about a job's stderr, by where the
file is (a backend without a shared file system copies it back only once a job ended)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from xqueue import Job, JobStatus
from xqueue.cli.report import NOT_COPIED, failures_table
from xqueue.workdir import Workdir


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
