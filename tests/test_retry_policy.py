"""Retry policies: validated at construction, and what they do to real local jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from xqueue import (
    ConfigError,
    FailureClass,
    JobFailedError,
    JobStatus,
    Resources,
    RetryPolicy,
    RetryRule,
    Xqueue,
    hookimpl,
)
from xqueue.records import WorkdirReader

pytestmark = pytest.mark.anyio

F = FailureClass


# -- validation: every mistake is refused when the queue is made, naming the bad key ------
@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            {"OMM": "retry"},
            "unknown failure class 'OMM' (did you mean 'OOM'?); choose from OOM, TIMEOUT",
        ),
        (
            {"OOM": {"memroy": 2}},
            "retry_policy['OOM']: unknown key 'memroy' (did you mean 'memory'?); accepted: action",
        ),
        ({"OOM": "again"}, "retry_policy['OOM']: unknown action 'again'"),
        ({"OOM": "retyr"}, "unknown action 'retyr' (did you mean 'retry'?); choose one of"),
        ({"OOM": {"memory": 1}}, "retry_policy['OOM']['memory'] must be a number > 1"),
        ({"OOM": {"memory": "2x"}}, "retry_policy['OOM']['memory'] must be a number > 1"),
        ({"OOM": {"memory": True}}, "retry_policy['OOM']['memory'] must be a number > 1"),
        ({"TIMEOUT": {"walltime": float("inf")}}, "['walltime'] must be a number > 1"),
        ({"OOM": {"max_memory": "4G"}}, "retry_policy['OOM']: 'max_memory' without 'memory'"),
        ({"OOM": {"memory": 2, "max_memory": "lots"}}, "['max_memory']: invalid memory 'lots'"),
        ({"TIMEOUT": {"walltime": 2, "max_walltime": "1x"}}, "['max_walltime']: invalid walltime"),
        ({"OOM": {"memory": 2, "action": "stop"}}, "growing memory or walltime needs the action"),
        ({"TIMEOUT": {"retries": -1}}, "retry_policy['TIMEOUT']['retries'] must be an integer"),
        ({"TIMEOUT": {"retries": 1.5}}, "retry_policy['TIMEOUT']['retries'] must be an integer"),
        ({"TIMEOUT": 3}, "retry_policy['TIMEOUT'] must be one of 'retry', 'requeue', 'stop'"),
        ({"oom": "retry", "OOM": "stop"}, "retry_policy: OOM is given twice ('OOM')"),
        (["OOM"], "retry_policy must be a dict of failure classes to rules"),
    ],
)
def test_bad_policies_are_refused_naming_the_key(policy: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Xqueue(workdir=tmp_path / "wd", retry_policy=policy)
    assert message in str(info.value)
    assert not (tmp_path / "wd").exists()  # refused before anything was made


def test_a_policy_parses_into_typed_rules() -> None:
    policy = RetryPolicy.parse(
        {
            "oom": {"memory": 1.5, "max_memory": "64G"},
            "TIMEOUT": {"walltime": 2, "max_walltime": "2h", "retries": 4},
            "PREEMPTED": "requeue",
            FailureClass.NONZERO_EXIT: "STOP",
        }
    )
    assert policy is not None
    assert policy.rules == {
        F.OOM: RetryRule("retry", None, 1.5, 64 * 1024),
        F.TIMEOUT: RetryRule("retry", 4, None, None, 2.0, 7200),
        F.PREEMPTED: RetryRule("requeue"),
        F.NONZERO_EXIT: RetryRule("stop"),
    }
    assert RetryPolicy.parse(policy) is policy and RetryPolicy.parse(None) is None
    with pytest.raises(ConfigError, match=r"RetryRule\.action: unknown action 'again'"):
        RetryRule("again")
    with pytest.raises(ConfigError, match=r"RetryRule\.memory must be a number > 1"):
        RetryRule(memory=0.5)


def test_a_policy_or_rule_made_directly_is_read_as_a_parsed_one() -> None:
    """RetryRule("STOP") was taken for "retry"; a policy made directly with a class
    name as its key never matched (its rule ignored), and one with a rule as a string
    crashed the run at the first failure."""
    assert RetryRule("STOP") == RetryRule("stop") and RetryRule(" Requeue ").own_budget
    assert RetryRule("stop", retries=0).action == "stop"  # says the same: still read
    direct = RetryPolicy({"nonzero_exit": RetryRule("stop"), F.OOM: "requeue"})
    assert direct.rules == {F.NONZERO_EXIT: RetryRule("stop"), F.OOM: RetryRule("requeue")}
    for bad, message in (
        (lambda: RetryPolicy({"NOPE": "stop"}), "unknown failure class 'NOPE'"),
        (lambda: RetryPolicy({F.OOM: 3}), r"retry_policy\[<FailureClass.OOM"),
        (lambda: RetryPolicy(["OOM"]), "must be a dict of failure classes"),  # type: ignore[arg-type]
        (lambda: RetryRule(max_memory_mb=4096), "'max_memory_mb' without the factor"),
        (lambda: RetryRule(memory=2, max_memory_mb=0), "max_memory_mb must be a whole number"),
        (lambda: RetryRule(walltime=2, max_walltime_s=-5), "max_walltime_s must be a whole"),
        (lambda: RetryRule("stop", retries=3), "'retries' with the action 'stop'"),
        (lambda: RetryPolicy.parse({"OOM": {"action": "stop", "retries": 1}}), "'retries' with"),
    ):
        with pytest.raises(ConfigError, match=message):
            bad()


async def test_a_direct_rule_with_a_capitalised_action_stops(tmp_path: Path) -> None:
    q = Xqueue(
        workdir=tmp_path / "wd",
        error_strategy="retry",
        num_retries=3,
        retry_policy={"NONZERO_EXIT": RetryRule(action="STOP")},
    )
    job = await q.feed("exit 3")
    await q.run_until_complete()
    assert (job.status, job.attempt) == (JobStatus.FAILED, 1)


# -- decisions, one failed attempt at a time ---------------------------------------------
def decide(
    policy: dict[str, Any],
    failure: FailureClass,
    failures: dict[FailureClass, int] | None = None,
    *,
    attempts: int = 1,
    num_retries: int = 3,
    strategy: str = "retry",
    resources: Resources | None = None,
    walltime: float | None = None,
) -> Any:
    parsed = RetryPolicy.parse(policy)
    assert parsed is not None
    return parsed.decide(
        failure,
        failures=failures or {failure: attempts},
        attempts=attempts,
        num_retries=num_retries,
        error_strategy=strategy,
        resources=resources,
        walltime=walltime,
    )


def test_memory_grows_by_its_factor_up_to_its_cap_then_stops() -> None:
    rule = {"OOM": {"memory": 1.5, "max_memory": "1G"}}
    first = decide(rule, F.OOM, resources=Resources(cpus=2, memory_mb=500))
    assert first.retry and first.resources == Resources(cpus=2, memory_mb=750)
    capped = decide(rule, F.OOM, attempts=2, resources=Resources(memory_mb=750))
    assert capped.retry and capped.resources == Resources(memory_mb=1024)
    at_cap = decide(rule, F.OOM, attempts=3, resources=Resources(memory_mb=1024))
    assert not at_cap.retry
    assert at_cap.note == "not retried: memory is already at its cap of 1024 MiB"


def test_walltime_grows_from_the_scheduler_timeout_when_the_job_has_none() -> None:
    rule = {"TIMEOUT": {"walltime": 2}}
    grown = decide(rule, F.TIMEOUT, walltime=1.5)
    assert grown.retry and grown.resources == Resources(walltime_s=4)  # ceil(1.5) * 2
    nothing = decide(rule, F.TIMEOUT)  # no limit at all: nothing to grow, run it again
    assert nothing.retry and nothing.resources is None


def test_a_shared_budget_counts_every_class_an_own_budget_only_its_own() -> None:
    policy = {"TIMEOUT": {"retries": 5}, "PREEMPTED": "requeue"}
    # NONZERO_EXIT is not named: "retry" gives it num_retries, shared.
    assert decide(policy, F.NONZERO_EXIT, attempts=3, num_retries=2).retry is False
    # Three attempts, two of them preempted (their own budget): one shared retry used.
    counts = {F.PREEMPTED: 2, F.NONZERO_EXIT: 1}
    assert decide(policy, F.NONZERO_EXIT, counts, attempts=3, num_retries=1).retry
    assert decide(policy, F.TIMEOUT, {F.TIMEOUT: 5}, attempts=9, num_retries=0).retry
    spent = decide(policy, F.TIMEOUT, {F.TIMEOUT: 6}, attempts=9, num_retries=9)
    assert not spent.retry and spent.note == "TIMEOUT retried 5 time(s) already"
    assert decide(policy, F.PREEMPTED, {F.PREEMPTED: 3}, attempts=3, num_retries=3).retry
    assert not decide(policy, F.PREEMPTED, {F.PREEMPTED: 4}, attempts=4, num_retries=3).retry


def test_classes_not_named_follow_the_error_strategy() -> None:
    assert decide({"OOM": "retry"}, F.NONZERO_EXIT, strategy="retry").retry
    assert not decide({"OOM": "retry"}, F.NONZERO_EXIT, strategy="halt").retry
    assert decide({"OOM": "retry"}, F.OOM, strategy="ignore").retry
    assert not decide({"NONZERO_EXIT": "stop"}, F.NONZERO_EXIT, strategy="retry").retry


# -- with real local jobs ----------------------------------------------------------------
async def journal(workdir: Path) -> list[dict[str, Any]]:
    text = await anyio.Path(workdir / "journal.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


async def last_record(workdir: Path, jobdir: str) -> dict[str, Any] | None:
    return await anyio.to_thread.run_sync(WorkdirReader(workdir).last_record, jobdir)


class Retried:
    """Records what each failed attempt looked like when its retry was announced."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, FailureClass | None, int | None]] = []

    @hookimpl
    def on_job_retrying(self, job: Any) -> None:
        walltime = job.resources.walltime_s if job.resources else None
        self.seen.append((job.attempt, job.failure, walltime))


async def test_nonzero_exit_stops_under_stop(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, error_strategy="retry", retry_policy={"NONZERO_EXIT": "stop"})
    job = await q.feed(["sh", "-c", "exit 3"])
    other = await q.feed([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"])
    await q.run_until_complete()
    assert job.status is JobStatus.FAILED and job.attempt == 1 and job.rc == 3
    assert job.failure is F.NONZERO_EXIT
    # A local SIGKILL with no evidence of why (the OOM killer, or anyone): NONZERO_EXIT.
    assert other.status is JobStatus.FAILED and other.rc == 137 and other.attempt == 1
    assert other.failure is F.NONZERO_EXIT
    record = await last_record(workdir, job.dir)
    assert record is not None and record["failure"] == "NONZERO_EXIT"


async def test_timeout_retried_with_doubled_walltime_succeeds(workdir: Path) -> None:
    spy = Retried()
    q = Xqueue(
        workdir=workdir,
        error_strategy="halt",  # the policy's retries do not halt the run
        # x4, not x2: attempt 2's 1.5 s must fit its limit on a loaded machine too.
        retry_policy={"TIMEOUT": {"walltime": 4, "max_walltime": 8}},
        plugins=[spy],
        scheduler_opts={"kill_grace": 0.5},
    )
    job = await q.feed(["sh", "-c", "sleep 1.5; echo done"], resources={"walltime": 1})
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED and job.attempt == 2
    assert job.failure is None and job.resources == Resources(walltime_s=4)
    assert spy.seen == [(1, F.TIMEOUT, 4)]  # the class of attempt 1, the limit of attempt 2
    assert await anyio.Path(job.dir, "job.2.stdout").read_text() == "done\n"
    lines = [r for r in await journal(workdir) if r["dir"] == Path(job.dir).name]
    retrying = next(r for r in lines if r["status"] == "retrying")
    assert retrying["failure"] == "TIMEOUT" and retrying["reason"] == "timed out after 1 s"
    # The grown request is in every record of attempt 2, the intent to submit included.
    assert all(r["resources"] == {"walltime_s": 4} for r in lines if r["attempt"] == 2)
    spec = await anyio.to_thread.run_sync(WorkdirReader(workdir).spec, Path(job.dir).name)
    assert spec is not None and spec["resources"] == {"walltime_s": 1}  # as fed: unchanged


async def test_a_request_at_its_cap_is_not_retried_and_halts(workdir: Path) -> None:
    q = Xqueue(
        workdir=workdir,
        error_strategy="halt",
        retry_policy={"TIMEOUT": {"walltime": 2, "max_walltime": 1}},
        scheduler_opts={"kill_grace": 0.5},
    )
    job = await q.feed(["sleep", "10"], resources={"walltime": 1})
    with anyio.fail_after(30), pytest.raises(JobFailedError):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED and job.attempt == 1
    assert job.failure is F.TIMEOUT
    assert job.reason == ("timed out after 1 s; not retried: walltime is already at its cap of 1 s")


async def test_a_resumed_run_goes_on_from_the_grown_request(workdir: Path) -> None:
    policy = {"TIMEOUT": {"walltime": 3}}
    cmd = ["sh", "-c", "sleep 1.5"]
    q = Xqueue(workdir=workdir, error_strategy="retry", retry_policy=policy)
    async with q:
        job = await q.feed(cmd, resources={"walltime": 1})
        with anyio.fail_after(30):
            while not (job.attempt == 2 and job.status is JobStatus.RUNNING):
                await anyio.sleep(0.02)
        assert job.resources == Resources(walltime_s=3)
        await q.kill(job)  # the run ends in attempt 2; its grown request is recorded
    assert job.status is JobStatus.KILLED and job.failure is None
    record = await last_record(workdir, job.dir)
    assert record is not None and record["resources"] == {"walltime_s": 3}

    again = Xqueue(workdir=workdir, error_strategy="retry", retry_policy=policy)
    rerun = await again.feed(cmd, resources={"walltime": 1})
    assert rerun.resources == Resources(walltime_s=3)  # known before it runs
    with anyio.fail_after(30):
        await again.run_until_complete()
    # One attempt, after the earlier run's two: no timeout this time.
    assert rerun.status is JobStatus.FINISHED and rerun.attempt == 3


def test_the_command_line_takes_a_policy_and_shows_the_class(tmp_path: Path) -> None:
    import subprocess

    policy = '{"TIMEOUT": {"walltime": 4}, "NONZERO_EXIT": "stop"}'
    argv = [sys.executable, "-m", "xqueue", "run", "-w", str(tmp_path / "wd"), "--no-progress"]
    argv += ["-o", "timeout=1", "-o", "kill_grace=0.5", "-e", "retry", "--retry-policy", policy]
    out = subprocess.run(
        argv, input="sleep 1.5\nexit 4\n", capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1, out.stderr
    assert "1 finished" in out.stderr and "1 failed" in out.stderr  # the sleep, at 4 s
    assert "(NONZERO_EXIT)" in out.stderr  # the table's status column
    bad = subprocess.run(
        [*argv[:-1], '{"TIMEOUT": {"walltme": 2}}'],
        input="true\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "retry_policy['TIMEOUT']: unknown key 'walltme'" in " ".join(bad.stderr.split())


def test_a_request_above_its_cap_names_the_cap_not_the_request() -> None:
    rule = {"OOM": {"memory": 2, "max_memory": "1G"}}
    over = decide(rule, F.OOM, resources=Resources(memory_mb=4096))
    assert not over.retry
    assert over.note == "not retried: memory is already at its cap of 1024 MiB"  # was 4096


def test_a_growth_past_what_a_float_holds_is_not_retried() -> None:
    """ceil() of an infinite product raised in the run's loop, which died with it."""
    over = decide({"OOM": {"memory": 1e308}}, F.OOM, resources=Resources(memory_mb=4096))
    assert not over.retry
    assert over.note == "not retried: memory cannot grow 1e+308 times from 4096 MiB"
    capped = decide(
        {"OOM": {"memory": 1e308, "max_memory": "8G"}}, F.OOM, resources=Resources(memory_mb=4096)
    )
    assert capped.retry and capped.resources == Resources(memory_mb=8192)


async def test_a_factor_past_a_float_fails_its_job_and_the_run_goes_on(workdir: Path) -> None:
    q = Xqueue(
        workdir=workdir,
        forks=2,
        error_strategy="ignore",
        retry_policy={"NONZERO_EXIT": {"memory": 1e308}},
    )
    failing = await q.feed("exit 1", resources={"memory": "4G"})
    other = await q.feed("sleep 0.5")
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert failing.status is JobStatus.FAILED and failing.attempt == 1
    assert "memory cannot grow" in failing.reason
    assert other.status is JobStatus.FINISHED


@pytest.mark.parametrize("gpus", [None, 0])
async def test_a_grown_request_is_resumed_whatever_count_was_asked(
    workdir: Path, gpus: int | None
) -> None:
    """A request with ``gpus=0`` (or ``cpus=0``) was no request to ``from_record``: the
    resume dropped the grown memory and started again from the fed one."""
    asked = {"memory": "1G"} if gpus is None else {"memory": "1G", "gpus": gpus}
    policy = {"NONZERO_EXIT": {"memory": 2}}
    for attempts, memory in ((2, 2048), (4, 4096)):
        q = Xqueue(workdir=workdir, error_strategy="retry", num_retries=1, retry_policy=policy)
        job = await q.feed("exit 1", resources=asked)
        with anyio.fail_after(30):
            await q.run_until_complete()
        assert (job.attempt, job.resources and job.resources.memory_mb) == (attempts, memory)
    assert Resources.from_record({"memory_mb": 2048, "gpus": 0, "cpus": 0}) == Resources(
        cpus=0, memory_mb=2048, gpus=0
    )
    assert Resources.from_record({"memory_mb": 0}) is None


async def test_a_job_waiting_for_its_retry_when_the_run_stops_is_recorded_killed(
    workdir: Path,
) -> None:
    """Its journal kept "retrying" (`xqueue status`: "a failed job to be retried by a run
    that is gone") while the run said killed, with the failed attempt's rc as its own."""
    q = Xqueue(workdir=workdir, forks=2, error_strategy="retry", num_retries=2)
    failing = await q.feed("exit 4")
    others = [await q.feed("sleep 30") for _ in range(2)]
    with anyio.move_on_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(q.run_until_complete)
            while failing.status is not JobStatus.QUEUED or failing.attempt < 1:
                await anyio.sleep(0.02)  # failed once; its retry waits behind job 2
            tg.cancel_scope.cancel()
    assert [j.status for j in others] == [JobStatus.KILLED] * 2
    assert (failing.status, failing.rc) == (JobStatus.KILLED, None)
    assert failing.reason.startswith("cancelled before it was submitted again")
    record = await last_record(workdir, failing.dir)
    assert record is not None and (record["status"], record["rc"]) == ("killed", None)
