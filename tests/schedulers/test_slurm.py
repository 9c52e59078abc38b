"""The Slurm scheduler against the real single-node Slurm of ci/slurm.sh.

Every test reads back what Slurm itself recorded (``scontrol show job``, ``squeue``,
``sacct``) rather than trusting xqueue's view, and cancels whatever it left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import SLURM_FAST as FAST
from tests.helpers import (
    cluster_queue,
    kill_as_it_ends,
    kill_once_exited,
    read_text,
    remove_after,
    run_watching_peak,
)
from tests.schedulers.fakes import calls, garbling, submitted_ids, submitting_then
from xqueue import Job, JobStatus, Xqueue
from xqueue.engine import MAX_UNKNOWN_SUBMISSIONS
from xqueue.errors import SchedulerOptionError, SubmissionUnknownError
from xqueue.failures import FailureClass
from xqueue.schedulers.batch import Submission
from xqueue.schedulers.slurm import SlurmScheduler, sbatch_options
from xqueue.workdir import Workdir

pytestmark = [pytest.mark.anyio, pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


async def sh(*argv: str) -> str:
    """A command's output (the cluster's own CLI, the witness independent of xqueue)."""
    with anyio.fail_after(30):
        return (await anyio.run_process(argv, check=False)).stdout.decode()


async def show_job(jid: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (it keeps ended jobs for MinJobAge)."""
    fields: dict[str, str] = {}
    for word in (await sh("scontrol", "show", "job", "-o", jid)).split():
        key, sep, value = word.partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields


async def slurm_ended(jid: str) -> dict[str, str]:
    """``show_job`` once Slurm itself has the job as ended."""
    with anyio.fail_after(30):
        while (info := await show_job(jid)).get("JobState") in ("PENDING", "RUNNING", "COMPLETING"):
            await anyio.sleep(0.1)
    return info


@pytest.fixture
def cancel_after() -> Iterator[list[Job]]:
    yield from remove_after("scancel")


def queue(workdir: Path, **kw: Any) -> Xqueue:
    return cluster_queue("slurm", FAST, workdir, **kw)


def test_seed_document_options_render_as_sbatch_flags() -> None:
    # The seed document's example, as the argv it becomes (this cluster has no gpu partition).
    opts = {"partition": "gpu", "time": "24:00:00", "mem": "8G", "gres": "gpu:1"}
    job = Job(0, ["true"], resources={"cpus": 4, "memory": "1G", "walltime": "1h"})
    flags = sbatch_options(job, {**opts, "exclusive": True, "requeue": False, "J": "x"})
    assert flags == {
        "cpus-per-task": 4,
        "mem": "8G",  # the raw option wins over the mapped one
        "time": "24:00:00",
        "partition": "gpu",
        "gres": "gpu:1",
        "exclusive": True,
        "requeue": False,
        "job-name": "x",
    }
    scheduler = SlurmScheduler(**opts, exclusive=True, requeue=False)
    scheduler.run_tag, scheduler.batch_dir = "t", "/w/.xqueue-slurm"
    raw = ["--partition=gpu", "--time=24:00:00", "--mem=8G", "--gres=gpu:1", "--exclusive"]
    one, two = Job(0, ["true"], dir="/w/0-true"), Job(1, ["true"], dir="/w/1-true")
    single = Submission((one,), "/w/0-true/job.1.sh", scheduler.tag(one))
    assert scheduler.submit_argv(single) == [
        "sbatch",
        "--parsable",
        "--job-name=true",
        "--output=/w/0-true/slurm.log",
        "--comment=xqueue:t:0.1",  # the tag recovery looks for
        "--kill-on-invalid-dep=yes",
        *raw,
        "/w/0-true/job.1.sh",
    ]
    # An array that waits for another (a lane: see _forks) adds to the user's dependency.
    scheduler = SlurmScheduler(**opts, exclusive=True, requeue=False, d="afterok:5")
    scheduler.run_tag, scheduler.batch_dir = "t", "/w/.xqueue-slurm"
    array = Submission((one, two), "/w/b.sh", scheduler.array_tag("b"), 2, "17", "b", range(2))
    assert scheduler.submit_argv(array) == [
        "sbatch",
        "--parsable",
        "--job-name=xqueue-true",
        "--output=/w/.xqueue-slurm/b-%a.log",
        "--array=0-1%2",
        "--comment=xqueue:t:@b",
        "--kill-on-invalid-dep=yes",
        *raw,
        "--dependency=afterok:5,afterany:17",
        "/w/b.sh",
    ]


async def test_a_failed_job_run_again_by_a_later_run_is_not_settled_by_its_old_rc(
    workdir: Path, tmp_path: Path
) -> None:
    """A later run starts a failed job again from attempt 1: the first run's job.1.rc
    must not end the new attempt before it ran."""
    flag = tmp_path / "ready"
    command = f"sleep 1; test -e {flag} || exit 3"
    first = queue(workdir, error_strategy="ignore")
    job = await first.feed(command)
    with anyio.fail_after(60):
        await first.run_until_complete()
    assert job.status is JobStatus.FAILED and job.rc == 3
    await anyio.Path(flag).write_text("")
    second = queue(workdir, error_strategy="ignore")
    again = await second.feed(command)
    with anyio.fail_after(60):
        await second.run_until_complete()
    assert again.status is JobStatus.FINISHED and again.rc == 0, again.reason


async def test_a_kill_of_a_job_that_already_exited_0_leaves_it_finished(workdir: Path) -> None:
    """Its wrapper had recorded rc 0, the run had not polled since: the kill was sent all
    the same, and the job was recorded KILLED, rc 0, and run again by the next run. A
    stop did that to every job that ended in its last poll interval."""
    async with queue(workdir, scheduler_opts={"poll_interval": 10}) as q:
        job, killed = await kill_once_exited(q)
    assert not killed  # nothing to kill: it had ended
    assert (job.status, job.rc, job.reason) == (JobStatus.FINISHED, 0, "")


async def test_a_job_that_ends_as_scancel_runs_keeps_its_own_end(
    workdir: Path, tmp_path: Path
) -> None:
    """The job's script exited 0 while the kill was on its way: scancel found it done
    and said so only with -v, and the job was recorded KILLED, rc 0, and run again by
    the next run. The scancel here lets the job end and waits for Slurm to see it."""
    go, slow = tmp_path / "go", tmp_path / "scancel"
    await anyio.Path(slow).write_text(
        f"#!/bin/sh\ntouch {go}\n"
        'for id; do case $id in -*) ;; *) n=0; while [ $n -lt 600 ] && squeue -h -j "$id" '
        "-o %T 2>/dev/null | grep -qv COMPLET; do n=$((n+1)); sleep 0.1; done;; esac; done\n"
        'exec scancel "$@"\n'
    )
    await anyio.Path(slow).chmod(0o755)
    async with queue(workdir, scheduler_opts={"scancel": str(slow)}) as q:
        job, killed = await kill_as_it_ends(q, go)
    assert not killed  # it ended before scancel reached it
    assert (job.status, job.rc, job.reason) == (JobStatus.FINISHED, 0, "")


async def test_resources_and_options_reach_slurm(workdir: Path) -> None:
    q = queue(workdir, scheduler_opts={"job-name": "xq-res-test", "mem": "300M", "nice": 5})
    job = await q.feed(["true"], resources={"cpus": 2, "memory": "200M", "walltime": "7m"})
    other = await q.feed(["true"], resources={"cpus": 3, "walltime": 3600})
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert job.jid and other.jid
    info = await show_job(job.jid)
    assert info["JobName"] == "xq-res-test"
    assert info["NumCPUs"] == "2" and info["TimeLimit"] == "00:07:00"
    assert info["MinMemoryNode"] == "300M"  # scheduler_opts mem wins over resources memory
    assert info["Nice"] == "5"
    assert info["Comment"] == f"xqueue:{q.scheduler.run_tag}:0.1"  # type: ignore[attr-defined]
    info = await show_job(other.jid)
    assert info["NumCPUs"] == "3" and info["TimeLimit"] == "01:00:00"


@pytest.mark.slow
async def test_200_jobs_with_status_calls_proportional_to_ticks(
    workdir: Path, anyio_backend: str
) -> None:
    # One event loop submits 200 single jobs, the other one array: each mode once,
    # to keep the cluster tests short. Either way, one status command per tick.
    arrays = anyio_backend == "trio"
    opts = {"arrays": arrays, "submit_concurrency": 16}
    q = queue(workdir, forks=200, scheduler_opts=opts)
    jobs = [await q.feed(["true"]) for _ in range(200)]
    peak = await run_watching_peak(q, 110)
    assert all(j.status is JobStatus.FINISHED for j in jobs)
    stats = q.statistics()
    # Many jobs were active at once (the node runs a few at a time), and yet one status
    # command per tick, however many ticks the run took on a loaded machine.
    assert peak > 20
    assert stats.submit_calls == (1 if arrays else 200)
    # one squeue per tick; a sacct only for jobs Slurm reports ended before their rc file
    assert stats.ticks <= stats.status_calls <= stats.ticks + 3


@pytest.mark.timeout(300)  # over the suite's 120 s: the bound below is the test's
async def test_array_of_100_retries_only_the_failing_element(workdir: Path, tmp_path: Path) -> None:
    flag = tmp_path / "failed-once"
    q = queue(workdir, forks=100, error_strategy="retry", num_retries=2)
    # Homogeneous jobs; the one with index 37 fails on its first attempt only.
    cmd = (
        f'echo "$XQUEUE_JOB_INDEX"; [ "$XQUEUE_JOB_INDEX" != 37 ] || [ -e {flag} ] || '
        f"{{ touch {flag}; exit 9; }}"
    )
    jobs = [await q.feed(cmd) for _ in range(100)]
    # Only a bound against a hang, as SGE's twin: 15 s alone.
    with anyio.fail_after(240):
        await q.run_until_complete()
    assert all(j.status is JobStatus.FINISHED for j in jobs)
    assert [j.index for j in jobs if j.attempt > 1] == [37]
    first_array = jobs[0].jid.split("_")[0] if jobs[0].jid else ""
    assert all(j.jid == f"{first_array}_{j.index}" for j in jobs if j.index != 37)
    assert jobs[37].jid and not jobs[37].jid.startswith(f"{first_array}_")
    assert (await show_job(f"{first_array}_37"))["ExitCode"] == "9:0"
    assert q.statistics().submit_calls == 2  # the array, then the one element again
    assert (await read_text(jobs[37].stdout_path)) == "37\n"


async def test_a_workdir_path_with_a_backslash_is_refused_when_the_run_opens(
    workdir: Path,
) -> None:
    """In ``--output`` a backslash is dropped and turns the %-replacements off: every job
    failed with "the wrapper wrote none". Refused before anything is submitted."""
    q = queue(workdir / "back\\slash")
    await q.feed(["true"])
    with pytest.raises(SchedulerOptionError, match="holds a backslash"):
        await q.run_until_complete()
    await q.aclose()
    assert q.statistics().submit_calls == 0


async def test_unknown_partition_fails_with_slurms_message(workdir: Path) -> None:
    q = queue(workdir, error_strategy="retry", num_retries=3, scheduler_opts={"partition": "nope"})
    jobs = [await q.feed(["true"]) for _ in range(3)]
    with anyio.fail_after(30):
        await q.run_until_complete()
    for job in jobs:
        assert job.status is JobStatus.FAILED
        assert "invalid partition specified: nope" in job.reason
        assert job.attempt == 1  # not retryable: it would fail the same way
        assert "invalid partition specified" in (await read_text(job.stderr_path))


async def test_an_sbatch_that_never_prints_an_id_fails_the_job_instead_of_looping(
    workdir: Path,
) -> None:
    """An sbatch that exits 0 and prints no id is looked up, found nowhere and submitted
    again, a few times in a row at most: it went on every second, for ever."""
    q = queue(
        workdir, error_strategy="retry", num_retries=5, scheduler_opts={"sbatch": "/bin/true"}
    )
    job = await q.feed(["true"])
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED and job.failure is FailureClass.SUBMIT_FAILED
    assert "printed no job id" in job.reason and "not submitted again" in job.reason
    assert q.statistics().submit_calls == MAX_UNKNOWN_SUBMISSIONS + 1


async def test_invalid_memory_fails_only_the_jobs_it_carries(workdir: Path) -> None:
    q = queue(workdir, error_strategy="ignore", scheduler_opts={"mem": "lots"})
    jobs = [await q.feed(["true"]) for _ in range(2)]
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert all("Invalid --mem specification" in j.reason for j in jobs)

    q = queue(workdir / "2", error_strategy="ignore")
    good = [await q.feed(["echo", str(i)]) for i in range(3)]
    huge = await q.feed(["true"], resources={"memory": "100T"})
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert huge.status is JobStatus.FAILED and huge.jid is None
    assert "Memory specification can not be satisfied" in huge.reason
    assert [j.status for j in good] == [JobStatus.FINISHED] * 3
    assert [(await read_text(j.stdout_path)) for j in good] == ["0\n", "1\n", "2\n"]


async def test_dependency_that_can_never_be_satisfied_ends_the_job(workdir: Path) -> None:
    failed = (await sh("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "exit 1")).strip()
    for _ in range(100):
        if (await show_job(failed)).get("JobState") == "FAILED":
            break
        await anyio.sleep(0.2)
    q = queue(workdir, error_strategy="retry", scheduler_opts={"dependency": f"afterok:{failed}"})
    job = await q.feed(["true"])
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED and job.attempt == 1
    assert "dependency can never be satisfied" in job.reason
    assert job.jid and (await show_job(job.jid))["JobState"] == "CANCELLED"


async def test_a_job_slurm_keeps_pending_for_its_request_is_said_once(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """More CPUs than the node has: this Slurm (EnforcePartLimits=NO) takes the job and
    keeps it pending for PartitionConfig, and the run waited for ever without a word."""
    q = queue(workdir)
    job = await q.feed(["true"], resources={"cpus": 64})
    said = "is pending for PartitionConfig: Slurm will not start it"
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(q.run_until_complete)
            while said not in caplog.text:
                await anyio.sleep(0.1)
            await anyio.sleep(FAST["poll_interval"] * 3)  # more polls: still said once
            tg.cancel_scope.cancel()
    assert caplog.text.count(said) == 1
    assert job.jid and f"Slurm job {job.jid} " in caplog.text
    assert job.status is JobStatus.KILLED
    assert (await slurm_ended(job.jid))["JobState"] == "CANCELLED"


async def test_ended_job_without_rc_file_is_resolved_by_sacct_or_vanishes(workdir: Path) -> None:
    q = queue(workdir)
    job = await q.feed(["sh", "-c", "exit 4"])
    with pytest.raises(Exception, match="return code 4"):
        await q.run_until_complete()
    # The rc file settles a job before Slurm has finished it (COMPLETING): wait until
    # Slurm itself has it as ended, which is what this test is about.
    with anyio.fail_after(60):
        while (await sh("squeue", "-h", "-t", "all", "-j", str(job.jid), "-o", "%T")).strip() in (
            "RUNNING",
            "COMPLETING",
            "PENDING",
        ):
            await anyio.sleep(0.2)
    # Accounting may show the end a moment later still, and its exit code after that: a
    # poll then holds the job, or fails it with no code (test_cluster_parsing); what is
    # tested here is the verdict once accounting has it all.
    with anyio.fail_after(60):
        while (
            await sh("sacct", "-n", "-P", "-X", "-o", "State,ExitCode", "-j", job.jid)
        ).strip() != "FAILED|4:0":
            await anyio.sleep(0.2)
    await anyio.Path(job.attempt_path("rc")).unlink()  # as if the file system lost it
    job.status = JobStatus.RUNNING

    scheduler = SlurmScheduler(**FAST)
    await scheduler.open(Workdir(workdir))
    # slurmdbd records a job's end a moment after squeue shows it (CI failed on that
    # lag): until accounting has the end, a poll holds the job, as the engine's next
    # tick would ask again. Each poll is one squeue and one sacct, never more.
    polls = 0
    with anyio.fail_after(30):
        while True:
            states = await scheduler.poll_jobs([job])
            polls += 1
            if states[job].status is not JobStatus.RUNNING:
                break
            await anyio.sleep(0.2)
    assert states[job].status is JobStatus.FAILED and states[job].rc == 4
    assert "sacct" in states[job].reason
    assert scheduler.stats.status_calls == 2 * polls  # one squeue, one sacct a poll

    blind = SlurmScheduler(accounting=False, vanish_grace=0)
    await blind.open(Workdir(workdir))
    state = (await blind.poll_jobs([job]))[job]
    assert state.status is JobStatus.FAILED and state.reason.startswith("vanished")
    assert blind.stats.status_calls == 1

    # An id Slurm has never heard of (or long purged) is not "running forever" either.
    job.jid = "99999999"
    state = (await blind.poll_jobs([job]))[job]
    assert state.status is JobStatus.FAILED and state.reason.startswith("vanished")


async def test_a_run_past_max_array_size_takes_one_sbatch_per_array(
    workdir: Path, cancel_after: list[Job]
) -> None:
    # An idle backend gets every queued job: 10 jobs where arrays hold 4 are 3 arrays
    # sharing forks=3, not one array with the rest trickling out behind it one sbatch per
    # tick as its slow element leaves slots free (issue 11: 10,000 jobs in ten sbatch calls).
    class SmallArrays(SlurmScheduler):
        async def open(self, workdir: Any) -> None:
            await super().open(workdir)
            self.array_limit = 4  # as on a cluster with MaxArraySize=4

    q = Xqueue(SmallArrays(**FAST), forks=3, workdir=workdir)
    jobs = [await q.feed(["sleep", "2"] if i % 4 == 3 else ["true"]) for i in range(10)]
    cancel_after.extend(jobs)
    with anyio.fail_after(90):
        await q.run_until_complete()
    assert [j.status for j in jobs] == [JobStatus.FINISHED] * 10
    assert q.statistics().submit_calls == 3
    arrays = [str(j.jid).split("_")[0] for j in jobs]
    assert arrays == [arrays[0]] * 4 + [arrays[4]] * 4 + [arrays[8]] * 2
    for base in dict.fromkeys(arrays):  # Slurm's own record: forks shared by the throttles
        assert (await show_job(f"{base}_0"))["ArrayTaskThrottle"] == "1"


async def test_arrays_split_at_max_array_size(workdir: Path, cancel_after: list[Job]) -> None:
    wd = Workdir(workdir)
    scheduler = SlurmScheduler(**FAST)
    scheduler.forks = 2
    await scheduler.open(wd)
    assert scheduler.array_limit == 1001  # read from the cluster's own configuration
    scheduler.array_limit = 4  # as on a cluster with MaxArraySize=4
    jobs = [Job(i, ["sleep", "60"], resources={"cpus": 1 + i // 9}) for i in range(10)]
    for job in jobs:
        wd.prepare(job, make=True)
    ids = [str(jid) for jid in await scheduler.submit_jobs(jobs)]
    for job, jid in zip(jobs, ids):
        job.jid = jid
    cancel_after.extend(jobs)
    # cpus=1 for jobs 0-8: arrays of 4, 4 and 1 (a lone job goes without --array); job 9 alone
    bases = [jid.split("_")[0] for jid in ids]
    assert len(set(bases[0:4])) == len(set(bases[4:8])) == 1 and bases[0] != bases[4]
    assert [jid.partition("_")[2] for jid in ids[:8]] == ["0", "1", "2", "3"] * 2
    assert "_" not in ids[8] and "_" not in ids[9]
    assert scheduler.stats.submit_calls == 4
    # forks=2 is shared: the two single jobs take both slots, so each array gets the
    # minimum throttle of 1 (the engine itself never hands over more than max_batch).
    assert (await show_job(ids[0]))["ArrayTaskThrottle"] == "1"
    assert (await show_job(ids[9]))["NumCPUs"] == "2"
    await scheduler.kill_jobs(jobs)
    assert scheduler.stats.kill_calls == 1
    with anyio.fail_after(30):
        while True:  # running elements go through COMPLETING first
            states = await scheduler.poll_jobs(jobs)
            if all(s.status.is_final for s in states.values()):
                break
            await anyio.sleep(0.2)
    assert {(s.status, s.rc, s.reason) for s in states.values()} == {
        (JobStatus.KILLED, None, "cancelled in Slurm")
    }


def max_overlap(jobs: list[Job]) -> int:
    """Most jobs running at once, from the start/end times the jobs wrote themselves."""
    events = []
    for job in jobs:
        start, end = (float(x) for x in Path(job.stdout_path).read_text().split())
        events += [(start, 1), (end, -1)]
    now = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        now += step
        peak = max(peak, now)
    return peak


async def test_forks_bounds_running_jobs_across_arrays(
    workdir: Path, cancel_after: list[Job]
) -> None:
    # Two resource shapes fed together become two arrays; their throttles share forks.
    q = queue(workdir, forks=4)
    cmd = "date +%s.%N; sleep 1.5; date +%s.%N"
    cancel_after.extend([await q.feed(cmd, resources={"cpus": 1 + i % 2}) for i in range(12)])
    with anyio.fail_after(120):
        await q.run_until_complete()
    assert q.statistics().counts == {"finished": 12}
    assert q.statistics().submit_calls == 2  # one array per shape
    throttles = sorted(
        [(await show_job(j.jid or "")).get("ArrayTaskThrottle", "?") for j in q.jobs[:2]]
    )
    assert throttles == ["2", "2"]
    assert await anyio.to_thread.run_sync(max_overlap, list(q.jobs)) <= 4


async def test_garbled_squeue_answer_mid_run_is_survived(
    workdir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Without accounting and with no grace, a garbled answer read as "no jobs" would
    # fail every job as vanished; it must count as a failed query instead.
    fake = await garbling(tmp_path, "squeue", "<html>502 Bad Gateway</html>\n", {3})
    opts = {"squeue": fake, "accounting": False, "vanish_grace": 0}
    q = queue(workdir, forks=3, scheduler_opts=opts)
    jobs = [await q.feed(["sleep", "2"]) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="xqueue"), anyio.fail_after(60):
        await q.run_until_complete()
    assert [j.status for j in jobs] == [JobStatus.FINISHED] * 3
    assert await calls(fake) > 3  # the garbled answer came mid-run, and polling went on
    assert "cannot read the output of" in caplog.text and "502 Bad Gateway" in caplog.text


async def scheduler_with(workdir: Path, forks: int, **opts: Any) -> SlurmScheduler:
    scheduler = SlurmScheduler(**{**FAST, **opts})
    scheduler.forks = forks
    await scheduler.open(Workdir(workdir))
    return scheduler


def new_jobs(workdir: Path, commands: list[str]) -> list[Job]:
    """Jobs prepared in the workdir as the engine would, at their first attempt."""
    wd = Workdir(workdir)
    jobs = [Job(i, c) for i, c in enumerate(commands)]
    for job in jobs:
        wd.prepare(job, make=True)
        job.attempt = 1
    return jobs


async def until_ended(scheduler: SlurmScheduler, jobs: list[Job]) -> None:
    with anyio.fail_after(60):
        while not all(s.status.is_final for s in (await scheduler.poll_jobs(jobs)).values()):
            await anyio.sleep(0.2)


async def tagged(comment: str) -> list[str]:
    """Every job Slurm has (ended ones too) whose comment is exactly ``comment``."""
    out = await sh("squeue", "-h", "-r", "-t", "all", "-o", "%i|%k")
    return [line.split("|")[0] for line in out.split() if line.split("|", 1)[1] == comment]


async def test_sbatch_that_times_out_is_unknown_and_found_by_its_tag(
    workdir: Path, tmp_path: Path, cancel_after: list[Job], go: Path
) -> None:
    # The controller took the job, but sbatch's answer came too late.
    fake = await submitting_then(tmp_path, "sbatch", "sleep 5")
    scheduler = await scheduler_with(workdir, 2, sbatch=fake, submit_timeout=1)
    marker = tmp_path / "ran"
    (job,) = new_jobs(workdir, [f"echo once >> {marker}; while [ ! -e {go} ]; do sleep 0.1; done"])
    cancel_after.append(job)
    (result,) = await scheduler.submit_jobs([job])
    assert isinstance(result, SubmissionUnknownError) and "timed out" in str(result)
    assert await calls(fake) == 1  # never submitted again on its own
    (real,) = await submitted_ids(fake)

    assert job.jid is None and await scheduler.recover_job(job)  # held: queued or running
    assert job.jid == real
    await anyio.Path(go).touch()
    await until_ended(scheduler, [job])
    assert (await read_text(marker)) == "once\n"
    comment = f"xqueue:{scheduler.run_tag}:0.1"
    assert await tagged(comment) == [real]  # one cluster job for the attempt: it ran once

    # A later run finds it too, ended (the engine then reads its return code file);
    # the next attempt of the same job is another submission, not this one.
    await slurm_ended(real)  # the rc file settles it before Slurm lets it go (COMPLETING)
    later = await scheduler_with(workdir, 2)
    job.jid = None
    assert not await later.recover_job(job) and job.jid == real
    job.jid, job.attempt = None, 2
    assert not await later.recover_job(job) and job.jid is None


async def test_array_whose_sbatch_answer_was_lost_is_found_element_by_element(
    workdir: Path, tmp_path: Path, cancel_after: list[Job]
) -> None:
    lost = (
        "echo 'sbatch: error: Batch job submission failed: Socket timed out on send/recv "
        "operation' >&2; exit 1"
    )
    fake = await submitting_then(tmp_path, "sbatch", lost)
    scheduler = await scheduler_with(workdir, 3, sbatch=fake)
    jobs = new_jobs(workdir, ["echo 0", "echo 1", "echo 2"])
    cancel_after.extend(jobs)
    results = await scheduler.submit_jobs(jobs)
    assert all(isinstance(r, SubmissionUnknownError) for r in results), results
    assert await calls(fake) == 1  # one sbatch for the array, not retried
    (base,) = await submitted_ids(fake)
    for job in jobs:
        await scheduler.recover_job(job)
    assert [j.jid for j in jobs] == [f"{base}_{i}" for i in range(3)]
    await until_ended(scheduler, jobs)
    assert [(await read_text(j.stdout_path)) for j in jobs] == ["0\n", "1\n", "2\n"]
