"""A ``gs://`` workdir on the gbatch scheduler, against the Batch stand-in and the real
storage emulator (tests/standins): job files in the bucket, records in a local folder,
and resumes from another machine (an empty local folder) that run nothing twice.

What the scheduler claims is checked independently: the bucket's objects through the
emulator's own client, the Batch jobs through the stand-in's call counts, and how many
times each job really ran through a marker file its command appends to.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import subprocess
import sys
import uuid
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import read_text
from tests.schedulers.conftest import BUCKET
from tests.schedulers.test_gbatch import batch_job, calls, options, pid_alive
from tests.standins.gcloud import Gcloud
from xqueue import Job, JobStatus, Xqueue
from xqueue.errors import ConfigError, SchedulerOptionError, WorkdirError
from xqueue.remote_workdir import (
    RemoteWorkdir,
    default_local_dir,
    local_folder,
    make_workdir,
    parse,
)
from xqueue.schedulers.gbatch import GbatchScheduler

pytestmark = pytest.mark.anyio


@pytest.fixture
def project() -> str:
    return f"p-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def prefix() -> str:
    """A prefix of the test's own in the shared bucket."""
    return f"wd-{uuid.uuid4().hex[:8]}"


def gs_options(gcloud: Gcloud, project: str, local_dir: Path, **extra: Any) -> dict[str, Any]:
    opts = options(gcloud, project, local_dir=str(local_dir), **extra)
    del opts["staging_bucket"]
    return opts


def gs_queue(
    gcloud: Gcloud, project: str, prefix: str, local_dir: Path, opts: Any = None, **kw: Any
) -> Xqueue:
    return Xqueue(
        "gbatch",
        workdir=f"gs://{BUCKET}/{prefix}",
        scheduler_opts=gs_options(gcloud, project, local_dir, **(opts or {})),
        **kw,
    )


async def objects(gcloud: Gcloud, prefix: str) -> dict[str, bytes]:
    """Every object under the prefix (names relative to it) with its content."""

    def read() -> dict[str, bytes]:
        client = gcloud.storage_client()
        return {
            blob.name[len(prefix) + 1 :]: blob.download_as_bytes()
            for blob in client.list_blobs(BUCKET, prefix=f"{prefix}/")
        }

    return await anyio.to_thread.run_sync(read)


async def drop(gcloud: Gcloud, name: str) -> None:
    await anyio.to_thread.run_sync(
        lambda: gcloud.storage_client().bucket(BUCKET).blob(name).delete()
    )


async def test_job_files_live_in_the_bucket_and_outputs_are_read_back(
    gcloud: Gcloud, project: str, prefix: str, tmp_path: Path
) -> None:
    local = tmp_path / "records"
    q = gs_queue(gcloud, project, prefix, local, forks=4, error_strategy="ignore")
    jobs = [
        await q.feed(["sh", "-c", f"echo out {i}; echo err {i} >&2; exit {i % 2}"], name=f"j{i}")
        for i in range(3)
    ]
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert q.workdir.path == local
    for i, job in enumerate(jobs):
        assert job.rc == i % 2, job.reason
        assert job.status is (JobStatus.FINISHED if i % 2 == 0 else JobStatus.FAILED)
        assert await read_text(job.stdout_path) == f"out {i}\n"  # read back into the folder
        assert await read_text(job.stderr_path) == f"err {i}\n"
        assert job.dir == str(local / f"{i}-j{i}")
    stored = await objects(gcloud, prefix)
    for i in range(3):
        folder = f"{i}-j{i}"
        assert {n.split("/", 1)[1] for n in stored if n.startswith(f"{folder}/")} == {
            "job.1.sh",
            "job.1.started",
            "job.1.stdout",
            "job.1.stderr",
            "job.1.rc",
        }
        assert stored[f"{folder}/job.1.rc"] == f"{i % 2}\n".encode()
        assert stored[f"{folder}/job.1.stdout"] == f"out {i}\n".encode()
    # The journal and the specs are copied (at the end of the run at the latest); a
    # job's spec has no object of its own; lock and events stay local.
    for name in ("journal.jsonl", "specs.jsonl"):
        assert stored[name] == await anyio.Path(local / name).read_bytes()
    assert [json.loads(line)["dir"] for line in stored["specs.jsonl"].splitlines()] == [
        f"{i}-j{i}" for i in range(3)
    ]
    assert set(stored) - {n for n in stored if "/" in n} == {"journal.jsonl", "specs.jsonl"}
    assert await anyio.Path(local / "events.jsonl").exists()
    # Each Batch job mounts its job's folder under the prefix.
    assert jobs[0].jid
    volume = (await batch_job(gcloud, jobs[0].jid)).task_groups[0].task_spec.volumes[-1]
    assert volume.gcs.remote_path == f"{BUCKET}/{prefix}/0-j0"


async def test_a_resume_from_an_empty_local_folder_runs_nothing_again(
    gcloud: Gcloud, project: str, prefix: str, tmp_path: Path
) -> None:
    marker, flaky = tmp_path / "ran", tmp_path / "flaky"
    cmds = [f"echo {i} >> {marker}; echo out {i}" for i in range(3)]
    cmds.append(f"echo 3 >> {marker}; test -e {flaky} || {{ touch {flaky}; exit 3; }}")
    first = gs_queue(gcloud, project, prefix, tmp_path / "a", forks=4, error_strategy="ignore")
    for c in cmds:
        await first.feed(c)
    with anyio.fail_after(60):
        await first.run_until_complete()
    assert [j.status for j in first.jobs] == [JobStatus.FINISHED] * 3 + [JobStatus.FAILED]
    # What says which job each folder holds is the bucket's specs.jsonl, not a file per job.
    stored = await objects(gcloud, prefix)
    specs = stored["specs.jsonl"]
    assert [json.loads(line)["spec"]["command"] for line in specs.splitlines()] == cmds
    assert not [n for n in stored if n.endswith("job.json")]

    # Another machine: the same URL, a local folder that does not exist yet.
    second = gs_queue(gcloud, project, prefix, tmp_path / "b", forks=4, error_strategy="ignore")
    jobs = [await second.feed(c) for c in cmds]
    # The specs came from the bucket (the first feed pulled them): the jobs are known.
    assert (await anyio.Path(tmp_path / "b" / "specs.jsonl").read_bytes()).startswith(specs)
    with anyio.fail_after(60):
        await second.run_until_complete()
    for i, job in enumerate(jobs[:3]):
        assert job.status is JobStatus.FINISHED and job.rc == 0
        assert job.reason == "succeeded in an earlier run"
        assert await read_text(job.stdout_path) == f"out {i}\n"  # its output came along
    assert jobs[3].status is JobStatus.FINISHED and jobs[3].rc == 0, jobs[3].reason
    assert sorted((await read_text(marker)).split()) == ["0", "1", "2", "3", "3"]
    assert second.statistics().submit_calls == 1
    assert (await calls(gcloud, project))["CreateJob"] == 5
    # The failed job ran again as attempt 2, after its last: both codes stay in the bucket.
    stored = await objects(gcloud, prefix)
    assert jobs[3].attempt == 2
    assert stored[f"{Path(jobs[3].dir).name}/job.1.rc"] == b"3\n"
    assert stored[f"{Path(jobs[3].dir).name}/job.2.rc"] == b"0\n"


async def _submit_and_die(
    gcloud: Gcloud, project: str, prefix: str, local: Path, jobs: list[Job], recorded: int
) -> list[str]:
    """A controller that submits ``jobs`` (journalling the names of the first ``recorded``)
    and stops before any checkpoint copies its journal to the bucket."""
    sched = GbatchScheduler(**gs_options(gcloud, project, local))
    wd = make_workdir(f"gs://{BUCKET}/{prefix}", sched, None)
    await anyio.to_thread.run_sync(wd.lock)
    await sched.open(wd)
    try:
        for job in jobs:
            await anyio.to_thread.run_sync(lambda job=job: wd.prepare(job, make=True))
            job.attempt = max(job.attempt, 0) + 1
            job.status = JobStatus.SUBMITTING
        wd.record_many(jobs)
        ids = await sched.submit_jobs(jobs)
        for job, jid in zip(jobs[:recorded], ids[:recorded]):
            job.jid, job.status = str(jid), JobStatus.SUBMITTED
            wd.record(job)
        assert all(isinstance(i, str) for i in ids), ids
    finally:
        assert isinstance(wd, RemoteWorkdir)
        sched._remote = None  # the copy of the journal aclose() would make: never made
        await sched.aclose()
        wd.unlock()
    return [str(i) for i in ids]


async def test_a_controller_lost_before_its_first_checkpoint_is_resumed_elsewhere(
    gcloud: Gcloud, project: str, prefix: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    cmds = [f"echo {i} >> {marker}; sleep 1; echo done {i}" for i in range(4)]
    lost = [Job(i, c) for i, c in enumerate(cmds)]
    ids = await _submit_and_die(gcloud, project, prefix, tmp_path / "a", lost, 2)
    stored = await objects(gcloud, prefix)
    assert "journal.jsonl" not in stored
    # The specs went up before the jobs were created: the resume knows what they are.
    assert [json.loads(line)["dir"] for line in stored["specs.jsonl"].splitlines()] == [
        Path(job.dir).name for job in lost
    ]

    q = gs_queue(gcloud, project, prefix, tmp_path / "b", forks=4)
    jobs = [await q.feed(c) for c in cmds]
    with anyio.fail_after(60):
        await q.run_until_complete()
    for i, job in enumerate(jobs):
        assert job.status is JobStatus.FINISHED and job.rc == 0, job.reason
        assert await read_text(job.stdout_path) == f"done {i}\n"
    assert sorted(str(j.jid) for j in jobs) == sorted(ids)  # found by their labels
    assert sorted((await read_text(marker)).split()) == ["0", "1", "2", "3"]  # each ran once
    assert q.statistics().submit_calls == 0
    assert (await calls(gcloud, project))["CreateJob"] == 4


async def test_an_attempt_newer_than_the_journal_copy_is_not_run_again(
    gcloud: Gcloud, project: str, prefix: str, tmp_path: Path
) -> None:
    """The bucket's journal says the job failed; a later controller ran it again (from
    attempt 1) and died before copying its journal: the resume must find that attempt."""
    marker, flaky = tmp_path / "ran", tmp_path / "flaky"
    cmd = f"echo x >> {marker}; test -e {flaky} || {{ touch {flaky}; exit 3; }}; sleep 1"
    first = gs_queue(gcloud, project, prefix, tmp_path / "a", error_strategy="ignore")
    await first.feed(cmd)
    with anyio.fail_after(30):
        await first.run_until_complete()
    assert first.jobs[0].status is JobStatus.FAILED
    copy = (await objects(gcloud, prefix))["journal.jsonl"]
    assert b'"failed"' in copy

    await _submit_and_die(gcloud, project, prefix, tmp_path / "a", [Job(0, cmd)], 0)
    assert (await objects(gcloud, prefix))["journal.jsonl"] == copy  # the copy is stale

    q = gs_queue(gcloud, project, prefix, tmp_path / "b")
    job = await q.feed(cmd)
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED and job.rc == 0, job.reason
    assert (await read_text(marker)).split() == ["x", "x"]  # once failed, once re-adopted
    assert q.statistics().submit_calls == 0


async def test_a_folder_made_here_but_never_submitted_yields_to_a_run_elsewhere(
    gcloud: Gcloud, project: str, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The local specs.jsonl and the bucket's can go different ways with one controller
    at a time: this machine made a folder and died before submitting it (its spec never
    went up), then a run elsewhere went on. The bucket's specs win, and nothing runs twice."""
    first = gs_queue(gcloud, project, prefix, tmp_path / "a")
    await first.feed(["echo", "zero"])
    with anyio.fail_after(30):
        await first.run_until_complete()
    sched = GbatchScheduler(**gs_options(gcloud, project, tmp_path / "a"))
    wd = make_workdir(f"gs://{BUCKET}/{prefix}", sched, None)
    await anyio.to_thread.run_sync(wd.lock)
    try:  # job 1's folder and spec, here only
        await anyio.to_thread.run_sync(lambda: wd.prepare(Job(1, ["echo", "never"]), make=True))
    finally:
        wd.unlock()

    second = gs_queue(gcloud, project, prefix, tmp_path / "b")
    await second.feed(["echo", "zero"])
    other = await second.feed(["echo", "one"])  # job 1 is another job there
    with anyio.fail_after(30):
        await second.run_until_complete()
    assert other.status is JobStatus.FINISHED, other.reason
    bucket_specs = (await objects(gcloud, prefix))["specs.jsonl"]

    third = gs_queue(gcloud, project, prefix, tmp_path / "a")
    jobs = [await third.feed(["echo", "zero"]), await third.feed(["echo", "one"])]
    with anyio.fail_after(30):
        await third.run_until_complete()
    for job in jobs:
        assert job.status is JobStatus.FINISHED and job.reason == "succeeded in an earlier run"
    assert await read_text(jobs[1].stdout_path) == "one\n"
    assert third.statistics().submit_calls == 0
    assert await anyio.Path(tmp_path / "a" / "specs.jsonl").read_bytes() == bucket_specs
    aside = [p async for p in anyio.Path(tmp_path / "a").glob("specs.jsonl.diverged-*")]
    assert len(aside) == 1 and b"never" in await aside[0].read_bytes()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_hostile_names_and_planted_objects_stay_in_their_place(
    gcloud: Gcloud, project: str, prefix: str, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    name = f"../../Ünïcode\n$(touch {pwned}); `touch {pwned}` ' \" /etc/passwd {'x' * 200}"
    argv = ["printf", "%s|", f"a b'c\"d;$(touch {pwned})", "$HOME", "line\nbreak", "*", ""]
    q = gs_queue(gcloud, project, prefix, tmp_path / "a")
    job = await q.feed(argv, name=name, envs={"HOSTILE": f"'; touch {pwned}; echo '"})
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED, job.reason
    assert await read_text(job.stdout_path) == "|".join(argv[2:]) + "|"
    stored = await objects(gcloud, prefix)
    folder = Path(job.dir).name
    assert re.fullmatch(r"0-[a-z0-9-]+", folder)
    assert set(stored) == {"journal.jsonl", "specs.jsonl"} | {
        f"{folder}/job.1.{k}" for k in "sh started stdout stderr rc".split()
    }
    # Objects planted under the prefix that are no job file of a job folder are ignored.
    # (The emulator cannot store names with ".." segments; the filter is tested below.)
    planted = [
        f"{prefix}/9-x/sub/job.1.rc",
        f"{prefix}/9-X/job.1.rc",
        f"{prefix}/9-x/job.json",
        f"{prefix}/9-x/job.1.rc.tmp",
        f"{prefix}/.lock",
        f"{prefix}/planted",
    ]

    def plant() -> None:
        bucket = gcloud.storage_client().bucket(BUCKET)
        for object_name in planted:
            bucket.blob(object_name).upload_from_string(b"planted", retry=None)

    await anyio.to_thread.run_sync(plant)
    second = gs_queue(gcloud, project, prefix, tmp_path / "b")
    job2 = await second.feed(argv, name=name, envs={"HOSTILE": f"'; touch {pwned}; echo '"})
    with anyio.fail_after(30):
        await second.run_until_complete()
    assert job2.status is JobStatus.FINISHED and job2.reason == "succeeded in an earlier run"
    b_files = await anyio.to_thread.run_sync(
        lambda: sorted(str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*"))
    )
    assert [f for f in b_files if f.startswith(("9-", "planted"))] == []
    assert (await read_text(tmp_path / "b" / ".lock")) != "planted"
    assert not await anyio.Path(pwned).exists()


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("..", "job.1.rc"),
        ("0-x", ".."),
        ("0-x/..", "job.1.rc"),
        ("0-x", "job.1.rc/../../escape"),
        ("../0-x", "job.1.rc"),
        ("0-X", "job.1.rc"),
        ("0-x", "job.1.sh\n"),
        ("-x", "job.1.rc"),
        ("0-x", "job.-1.rc"),
        ("0-x", "job.json"),  # a spec is a line of specs.jsonl, never a job file
    ],
)
def test_only_job_files_of_job_folders_are_downloaded(folder: str, name: str) -> None:
    from xqueue.remote_workdir import _FOLDER, JOB_FILE

    assert not (_FOLDER.fullmatch(folder) and JOB_FILE.fullmatch(name))
    assert _FOLDER.fullmatch("12-a-b-0") and JOB_FILE.fullmatch("job.12.stdout")


# -- errors ------------------------------------------------------------------------------------
def test_a_scheduler_that_cannot_use_a_gs_workdir_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        Xqueue("local", workdir="gs://my-bucket/runs")
    message = str(info.value)
    assert "\n" not in message
    assert "gs://my-bucket/runs" in message and "'local'" in message and "gbatch" in message


# The command line with Google's packages missing, as an install without the gbatch extra.
WITHOUT_GOOGLE = """
import sys
sys.modules["google"] = None  # any import of google.* fails as a missing package does
from xqueue.cli import console_main
sys.argv[1:] = sys.argv[2:]
sys.exit(console_main())
"""


@pytest.mark.parametrize(
    "command",
    [["status"], ["status", "--follow"], ["logs", "0"], ["cancel"]],
    ids=" ".join,
)
def test_a_gs_workdir_without_the_gbatch_extra_is_one_line_and_exit_2(command: list[str]) -> None:
    """``status``, ``logs`` and ``cancel`` of a ``gs://`` workdir where Google's client
    libraries are not installed: they crashed with ModuleNotFoundError's traceback (exit
    1, "a job failed") from inside the store, past the check that the store's own
    module imports. Nothing is contacted first."""
    url = "gs://my-bucket/runs"
    argv = [sys.executable, "-c", WITHOUT_GOOGLE, "xqueue", command[0], url, *command[1:]]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert out.stderr.startswith(
        f"error: reading {url} needs the gbatch extra: pip install '.[gbatch]' in xqueue's "
        "source folder (No module named 'google"
    ), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://", "does not name a Cloud Storage bucket"),
        ("gs://Bad_Bucket/x", "does not name a Cloud Storage bucket"),
        ("gs://bucket-1/a/../b", "dot segment"),
        ("gs://bucket-1/a//b", "empty or dot segment"),
        ("gs://bucket-1/a\nb", "unprintable"),
        ("s3://bucket-1/x", "s3:// workdirs are not supported"),
    ],
)
def test_a_bad_url_is_refused_when_the_queue_is_made(url: str, message: str) -> None:
    opts = {"project": "p", "location": "l"}
    with pytest.raises(ConfigError, match=re.escape(message)):
        Xqueue("gbatch", workdir=url, scheduler_opts=opts)


def test_staging_bucket_and_a_gs_workdir_are_not_both_given() -> None:
    opts = {"project": "p", "location": "l", "staging_bucket": "gs://other/x"}
    with pytest.raises(SchedulerOptionError, match="leave out staging_bucket"):
        Xqueue("gbatch", workdir="gs://bucket-1/runs", scheduler_opts=opts)


async def test_unreachable_storage_is_a_clear_error_at_the_first_feed(
    gcloud: Gcloud, project: str, prefix: str, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    q = gs_queue(
        gcloud,
        project,
        prefix,
        tmp_path / "a",
        {"storage_endpoint": f"http://127.0.0.1:{port}", "rpc_timeout": 1.0},
    )
    with anyio.fail_after(30), pytest.raises(WorkdirError) as info:
        await q.feed(["true"])
    assert str(info.value).startswith(f"cannot read workdir gs://{BUCKET}/{prefix}: ")
    assert "Connection refused" in str(info.value) or "connect" in str(info.value).lower()
    await q.aclose()


async def test_a_missing_bucket_is_a_clear_error_at_the_first_feed(
    gcloud: Gcloud, project: str, tmp_path: Path
) -> None:
    q = Xqueue(
        "gbatch",
        workdir="gs://no-such-bkt/runs",
        scheduler_opts=gs_options(gcloud, project, tmp_path / "a"),
    )
    with anyio.fail_after(30), pytest.raises(ConfigError, match="gs://no-such-bkt does not exist"):
        await q.feed(["true"])
    await q.aclose()


async def test_a_local_workdir_still_needs_a_staging_bucket(
    gcloud: Gcloud, project: str, workdir: Path
) -> None:
    opts = options(gcloud, project)
    del opts["staging_bucket"]
    q = Xqueue("gbatch", workdir=workdir, scheduler_opts=opts)
    job = await q.feed(["true"])
    with anyio.fail_after(30), pytest.raises(SchedulerOptionError, match="'staging_bucket' is"):
        await q.run_until_complete()
    assert job.status is not JobStatus.FINISHED
    assert "CreateJob" not in await calls(gcloud, project)


def test_the_default_local_folder_is_in_the_user_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("XQUEUE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    one, two = parse("gs://bucket-1/runs/a"), parse("gs://bucket-1/runs/a/")
    assert one == two and one.text == "gs://bucket-1/runs/a"
    path = default_local_dir(one)
    assert path.parent == tmp_path / "xqueue" / "workdirs" / "gs"
    assert path.name.startswith("bucket-1-runs-a-") and path.name.endswith(one.tag)
    assert default_local_dir(parse("gs://bucket-1/runs-a")) != path
    monkeypatch.setenv("XQUEUE_CACHE_DIR", str(tmp_path / "c"))
    assert default_local_dir(one).parent == tmp_path / "c" / "workdirs" / "gs"


# -- xqueue status / logs -----------------------------------------------------------------------
async def test_status_and_logs_read_a_gs_workdir_back_from_the_bucket(
    gcloud: Gcloud, project: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xqueue.cli.commands import main

    q = gs_queue(gcloud, project, prefix, tmp_path / "a", error_strategy="ignore")
    await q.feed(["sh", "-c", "echo hello from the bucket"], name="hello")
    await q.feed(["sh", "-c", "echo oops >&2; exit 5"], name="broken")
    with anyio.fail_after(30):
        await q.run_until_complete()
    # Another machine: an empty cache, the emulator named as the client reads it.
    monkeypatch.setenv("XQUEUE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcloud.storage)
    url = f"gs://{BUCKET}/{prefix}"

    def cli(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        with redirect_stdout(out):
            code = main(list(argv))
        return code, out.getvalue()

    code, text = await anyio.to_thread.run_sync(cli, "status", url, "--json")
    assert code == 0
    rows = {r["name"]: r for r in map(json.loads, text.splitlines())}
    assert rows["hello"]["status"] == "finished" and rows["hello"]["state"]["rc"] == 0
    assert rows["broken"]["status"] == "failed" and rows["broken"]["state"]["rc"] == 5
    assert await anyio.Path(tmp_path / "cache" / "workdirs" / "gs").is_dir()

    def logs(*argv: str) -> tuple[int, bytes]:
        import sys

        out = io.BytesIO()
        wrapper = io.TextIOWrapper(out)
        saved, sys.stdout = sys.stdout, wrapper
        try:
            code = main(list(argv))
            wrapper.flush()
        finally:
            sys.stdout = saved
        return code, out.getvalue()

    assert await anyio.to_thread.run_sync(logs, "logs", url, "0") == (
        0,
        b"hello from the bucket\n",
    )
    assert await anyio.to_thread.run_sync(logs, "logs", url, "1", "--stderr") == (0, b"oops\n")
    code, _ = await anyio.to_thread.run_sync(cli, "status", "gs://no-such-bkt/runs")
    assert code == 2  # the error is printed (on stderr), not a traceback
    with pytest.raises(ConfigError, match="bucket gs://no-such-bkt does not exist"):
        await anyio.to_thread.run_sync(local_folder, "gs://no-such-bkt/runs")


# -- xqueue cancel ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gs", "local", "gs-unreadable"])
async def test_cancel_kills_what_a_dead_controller_left_running(
    gcloud: Gcloud,
    project: str,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """``xqueue cancel`` with no controller alive, on a ``gs://`` workdir and on a local
    one with a staging bucket: the jobs the records call active are killed on Batch.
    With a gs:// workdir it failed with "staging_bucket is required" (the scheduler was
    opened on the plain local folder). A job that ended meanwhile is recorded by the
    exit code it left in the bucket; it was recorded failed, "no exit code", when only
    the local folder was read. If the bucket cannot be read first, cancel goes by the
    records here and does not copy them back over the bucket's, which may be newer."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from xqueue.cli.commands import main

    monkeypatch.setenv("XQUEUE_CACHE_DIR", str(tmp_path / "cache"))
    pidfile = tmp_path / "pid"
    if kind.startswith("gs"):
        target = f"gs://{BUCKET}/{prefix}"
        opts = gs_options(gcloud, project, tmp_path, kill_grace=1)
        del opts["local_dir"]  # the default folder, which `xqueue cancel URL` finds
        folder = default_local_dir(parse(target))
    else:
        folder = tmp_path / "wd"
        target = str(folder)
        opts = options(gcloud, project, kill_grace=1)
    argv = [sys.executable, "-m", "xqueue", "run", "-s", "gbatch", "-w", target, "-f", "2"]
    for key, value in opts.items():
        argv += ["-o", f"{key}={value}"]
    env = {**os.environ, "XQUEUE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    journal = anyio.Path(folder / "journal.jsonl")
    journal_path = folder / "journal.jsonl"

    def run_and_kill() -> None:
        """The controller, SIGKILLed once both jobs run with a Batch name journalled."""
        with subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
            try:
                assert proc.stdin and proc.stderr
                proc.stdin.write(f"echo $$ > {pidfile}; exec sleep 60\nsleep 2\n".encode())
                proc.stdin.close()
                deadline = time.monotonic() + 30
                while (
                    not (pidfile.exists() and pidfile.read_text().strip())
                    or (journal_path.exists() and journal_path.read_bytes()).count(b'"jid": "') < 2
                ):
                    assert proc.poll() is None, proc.stderr.read()
                    assert time.monotonic() < deadline, "the job never ran"
                    time.sleep(0.05)
            finally:
                proc.send_signal(signal.SIGKILL)

    await anyio.to_thread.run_sync(run_and_kill)
    pid = int(await read_text(pidfile))
    assert await anyio.to_thread.run_sync(pid_alive, pid)  # it outlived its controller
    records = [json.loads(line) for line in (await journal.read_text()).splitlines()]
    jids = {r["dir"][0]: r["jid"] for r in records if r.get("jid")}
    with anyio.fail_after(30):  # job 1 ends unwatched, its exit code in the bucket only
        while (await batch_job(gcloud, jids["1"])).status.state.name != "SUCCEEDED":
            await anyio.sleep(0.2)

    out = io.StringIO()
    before = (await objects(gcloud, prefix)).get("journal.jsonl")
    if kind == "gs-unreadable":

        def unreadable(self: RemoteWorkdir) -> None:
            raise WorkdirError("cannot read workdir: the network is down")

        monkeypatch.setattr(RemoteWorkdir, "pull", unreadable)

    def cancel() -> int:
        with redirect_stdout(out):
            return main(["cancel", target])

    code = await anyio.to_thread.run_sync(cancel)
    assert code == 0, out.getvalue()
    said = [line for line in out.getvalue().splitlines() if line.startswith("job ")]
    assert said[0].startswith("job 0") and ": killed (" in said[0], said
    assert said[1].startswith("job 1") and "recorded finished (exit code 0)" in said[1], said
    with anyio.fail_after(20):
        while await anyio.to_thread.run_sync(pid_alive, pid):
            await anyio.sleep(0.1)
    assert (await batch_job(gcloud, jids["0"])).status.state.name == "CANCELLED"
    last = {r["dir"][0]: r for r in map(json.loads, (await journal.read_text()).splitlines())}
    assert last["0"]["status"] == "killed"
    assert (last["1"]["status"], last["1"]["rc"]) == ("finished", 0)
    if kind == "gs-unreadable":
        assert "which are not copied back" in out.getvalue()
        assert (await objects(gcloud, prefix)).get("journal.jsonl") == before
    if kind == "gs":
        copy = (await objects(gcloud, prefix))["journal.jsonl"]  # for a resume elsewhere
        assert {r["dir"][0]: r["status"] for r in map(json.loads, copy.splitlines())} == {
            "0": "killed",
            "1": "finished",
        }


async def test_status_of_a_prefix_with_nothing_in_it_is_an_error_that_leaves_nothing(
    gcloud: Gcloud, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped prefix in an existing bucket: "not an xqueue workdir", exit 2, as for a
    local folder no run has used; it showed an empty run (exit 0) and left a cache folder."""
    from xqueue.cli.commands import main

    monkeypatch.setenv("XQUEUE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcloud.storage)
    url = f"gs://{BUCKET}/{prefix}-typo"
    for command in (["status", url], ["logs", url, "0"], ["cancel", url]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = await anyio.to_thread.run_sync(main, command)
        assert code == 2, (command, err.getvalue())
        said = " ".join(err.getvalue().split())
        assert f"{url} is not an xqueue workdir" in said, said
        if command[0] == "cancel":  # which acts on the records of a run on this machine
            assert "no run on this machine has used it" in said, said
        else:
            assert "nothing under it in Cloud Storage" in said, said
    assert not await anyio.Path(tmp_path / "cache" / "workdirs" / "gs").exists() or not [
        p async for p in anyio.Path(tmp_path / "cache" / "workdirs" / "gs").iterdir()
    ]


def test_status_of_an_empty_prefix_never_touches_a_run_starting_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`xqueue status` on a prefix with nothing in it, while a run starts on that URL:
    status made the folder, found the bucket empty, then removed the folder and its lock
    file, which the run had just locked; a second run then locked a new one beside it."""
    import threading
    import time

    from xqueue.schedulers import _gcs_store

    class SlowEmptyStore:
        def __init__(self, url: Any) -> None:
            self.url, self.local_dir = url, ""

        def read_copy(self, name: str) -> None:
            return None

        def write_copy(self, name: str, data: bytes) -> None:
            pass

        def list_files(self) -> list[Any]:
            time.sleep(0.2)  # a listing takes a round trip: the run locks meanwhile
            return []

        def download(self, file: Any, target: str) -> None:
            pass

    monkeypatch.setenv("XQUEUE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(
        _gcs_store.GcsStore, "from_environment", classmethod(lambda cls, url: SlowEmptyStore(url))
    )
    url = "gs://bkt/fresh"
    said: list[str] = []

    def status() -> None:
        try:
            local_folder(url)
        except ConfigError as exc:
            said.append(str(exc))

    watcher = threading.Thread(target=status)
    watcher.start()
    time.sleep(0.05)
    run = RemoteWorkdir(SlowEmptyStore(parse(url)))  # type: ignore[arg-type]
    run.lock()
    try:
        watcher.join()
        assert said and "there is nothing under it in Cloud Storage" in said[0]
        assert (run.path / ".lock").is_file()  # the run's folder and lock are its own
        other = RemoteWorkdir(SlowEmptyStore(parse(url)))  # type: ignore[arg-type]
        with pytest.raises(WorkdirError, match="taken by another Xqueue"):
            other.lock()
    finally:
        run.unlock()
