"""Resource-aware admission on real local processes: CPUs, GPUs, slot values, backfill.

What the engine handed out is read back from the jobs themselves: each job writes its
start and end times (``date``) and the variables it was given to a file, so overlaps and
shared devices are measured where they would matter, not in the engine's books.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path

import anyio
import pytest

from tests.timeline import Span, concurrent, depth, spans, timed
from xqueue import ConfigError, Job, JobStatus, Resources, Xqueue
from xqueue.admission import Backlog
from xqueue.capacity import Capacity, Need, Pool, fill_slots
from xqueue.cli import status
from xqueue.records import WorkdirReader
from xqueue.schedulers import _machine
from xqueue.schedulers.local import LocalScheduler

pytestmark = pytest.mark.anyio


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "log"
    path.mkdir()
    return path


# -- capacity ------------------------------------------------------------------------------
async def test_one_cpu_jobs_on_two_cpus_never_run_three_deep(workdir: Path, log: Path) -> None:
    q = Xqueue(forks=6, workdir=workdir, scheduler_opts={"cpus": 2})
    jobs = [await q.feed(timed(log, f"j{i}", 0.4), resources={"cpus": 1}) for i in range(6)]
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert all(j.status is JobStatus.FINISHED for j in jobs)
    # Two at once, never three, although forks would allow six.
    assert depth((await spans(log)).values()) == 2


async def test_forks_still_bounds_jobs_that_fit(workdir: Path, log: Path) -> None:
    q = Xqueue(forks=2, workdir=workdir, scheduler_opts={"cpus": 8})
    for i in range(6):
        await q.feed(timed(log, f"j{i}", 0.3), resources={"cpus": 1})
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert depth((await spans(log)).values()) == 2


async def test_jobs_that_ask_nothing_are_bounded_by_forks_alone(
    workdir: Path, tmp_path: Path
) -> None:
    # Only what a job asks for is counted: four plain jobs run at once on one CPU. Each
    # ends only once all four have started (a barrier, not overlapping sleeps, which a
    # loaded machine staggered): held to fewer at once, they would never end.
    q = Xqueue(forks=4, workdir=workdir, scheduler_opts={"cpus": 1})
    marks = [tmp_path / f"started.{i}" for i in range(4)]
    every = " && ".join(f"[ -e {m} ]" for m in marks)
    jobs = [await q.feed(f"touch {m}; until {every}; do sleep 0.02; done") for m in marks]
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert all(j.status is JobStatus.FINISHED for j in jobs)


async def test_a_job_that_can_never_fit_is_refused_when_fed(workdir: Path) -> None:
    q = Xqueue(
        workdir=workdir,
        scheduler_opts={"cpus": 2, "memory": "1G", "gpus": []},
        slots={"machine": [0, 1]},
    )
    cases = [
        ({"cpus": 3}, ["asks for 3 CPU(s)", "2 CPU(s), 1G memory, no GPU"]),
        ({"memory": "2G"}, ["asks for 2G memory", "1G memory"]),
        ({"gpus": 1}, ["asks for 1 GPU(s)", "no GPU"]),
        ({"slots": ["machine", "rack"]}, ["slot axes ['rack']", "its axes: machine"]),
    ]
    for resources, words in cases:
        with pytest.raises(ConfigError) as info:
            await q.feed(["true"], name="big", resources=resources)
        message = str(info.value)
        assert message.startswith("job 'big' can never start on local: ")
        assert all(w in message for w in words), message
    fits = await q.feed(["true"], resources={"cpus": 2, "memory": "1G", "slots": "machine"})
    assert fits.index == 0 and len(q.jobs) == 1  # the refused ones took no index or folder
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert fits.status is JobStatus.FINISHED
    folders = [p.name async for p in anyio.Path(workdir).iterdir() if await p.is_dir()]
    assert folders == [os.path.basename(fits.dir)]


# -- backfill and starvation ---------------------------------------------------------------
@pytest.mark.parametrize("backfill", [0, 3])
async def test_small_jobs_pass_a_big_one_a_bounded_number_of_times(
    workdir: Path, log: Path, backfill: int
) -> None:
    # One CPU is busy for a while; the big job wants both, the small ones one each.
    q = Xqueue(forks=10, workdir=workdir, scheduler_opts={"cpus": 2}, backfill=backfill)
    await q.feed(timed(log, "blocker", 2.0), resources={"cpus": 1})
    await q.feed(timed(log, "big", 0.3), resources={"cpus": 2})
    for i in range(8):
        await q.feed(timed(log, f"small{i}", 0.15), resources={"cpus": 1})
    with anyio.fail_after(60):
        await q.run_until_complete()
    seen = await spans(log)
    big = seen["big"]
    smalls = [s for name, s in seen.items() if name.startswith("small")]
    passed = [s for s in smalls if s.start < big.start]
    if backfill:
        assert 1 <= len(passed) <= backfill  # no head-of-line blocking, and a bound
    else:
        assert passed == []  # room was set aside at once: the free CPU waited for it
    assert any(s.start >= big.end for s in smalls)  # not starved: it ran before them
    assert depth(seen.values(), weight={"big": 2}) <= 2  # never more CPUs than there are


def test_a_reservation_outlasts_any_stream_of_small_jobs() -> None:
    # The policy alone, over many decisions: small jobs keep coming and ending, and the
    # big job still starts within `patience` passes, whatever their number.
    pool = Pool()
    pool.set_hosts({"h": Capacity(cpus=4)})
    backlog = Backlog(patience=5)
    big = _queued("big", cpus=4)
    backlog.push(big, Need(cpus=4))
    running = []
    started_before_big = 0
    for i in range(200):
        small = _queued(f"s{i}", cpus=1)
        backlog.push(small, Need(cpus=1))
        started, refused = backlog.pick(pool, 10, None)
        assert not refused
        for job, claim in started:
            job.status = JobStatus.SUBMITTING
            running.append(claim)
        if big.status is JobStatus.SUBMITTING:
            break
        started_before_big += len(started)
        pool.release(running.pop(0))  # the oldest small job ends
    assert big.status is JobStatus.SUBMITTING
    # Four were running when it first waited; five passed it before room was set aside.
    assert started_before_big <= 4 + 5


def _queued(name: str, cpus: int) -> Job:
    job = Job(0, ["true"], name=name, resources={"cpus": cpus})
    job.status = JobStatus.QUEUED
    return job


# -- devices -------------------------------------------------------------------------------
async def test_gpu_ids_of_running_jobs_are_disjoint(workdir: Path, log: Path) -> None:
    q = Xqueue(forks=6, workdir=workdir, scheduler_opts={"gpus": [0, 1, 2, 3]})
    jobs = [await q.feed(timed(log, f"j{i}", 0.4), resources={"gpus": 2}) for i in range(6)]
    with anyio.fail_after(30):
        await q.run_until_complete()
    seen = await spans(log)
    for job, span in zip(jobs, seen.values()):
        ids = span.env["CUDA_VISIBLE_DEVICES"].split(",")
        assert len(ids) == 2 and set(ids) <= {"0", "1", "2", "3"}
        assert span.env["XQUEUE_GPUS"] == span.env["CUDA_VISIBLE_DEVICES"]
        assert list(job.gpus) == ids
    pairs = concurrent(seen.values())
    assert pairs  # two jobs did run at once
    for a, b in pairs:
        mine, theirs = (set(s.env["CUDA_VISIBLE_DEVICES"].split(",")) for s in (a, b))
        assert not mine & theirs, (a, b)
    assert depth(seen.values()) == 2


async def test_jobs_given_no_gpu_on_a_gpu_host_see_none(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job asking for no GPU (or for 0) beside one given GPU 0 inherited the whole pool,
    the controller's CUDA_VISIBLE_DEVICES=0,1, and could run on the GPU the other held."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    q = Xqueue(forks=3, workdir=workdir)
    out = tmp_path / "seen"
    seen = 'echo "$0 ${CUDA_VISIBLE_DEVICES-unset} ${ROCR_VISIBLE_DEVICES-unset}" >> '
    jobs = [
        await q.feed(["sh", "-c", f"{seen}{out}; sleep 0.5", name], resources=asked)
        for name, asked in (("gpu", {"gpus": 1}), ("plain", None), ("zero", {"gpus": 0}))
    ]
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert all(job.status is JobStatus.FINISHED for job in jobs)
    lines = sorted((await anyio.Path(out).read_text()).splitlines())
    assert lines == ["gpu 0 unset", "plain  unset", "zero  unset"]


async def test_gpu_ids_come_back_after_refusal_failure_and_kill(
    workdir: Path, log: Path, tmp_path: Path
) -> None:
    # Each job wants both GPUs: each can only start once the one before gave them back.
    q = Xqueue(forks=4, workdir=workdir, error_strategy="ignore", scheduler_opts={"gpus": [0, 1]})
    gpus = {"gpus": 2}
    refused = await q.feed(["/nonexistent/program"], resources=gpus)
    failed = await q.feed(timed(log, "failed", 0, then="; exit 3"), resources=gpus)
    killed = await q.feed(timed(log, "killed", 60), resources=gpus)
    last = await q.feed(timed(log, "last", 0), resources=gpus)
    with anyio.fail_after(30):
        async with q:
            while "env" not in await _text(log / "killed"):  # it started, and told what it got
                await anyio.sleep(0.05)
            assert last.status is JobStatus.QUEUED  # no GPU for it while `killed` runs
            assert await q.kill(killed)
    assert refused.status is JobStatus.FAILED and "not executable" in refused.reason
    assert failed.status is JobStatus.FAILED and failed.rc == 3
    assert killed.status is JobStatus.KILLED
    assert last.status is JobStatus.FINISHED
    seen = await spans(log)
    given = {name: s.env["CUDA_VISIBLE_DEVICES"] for name, s in seen.items()}
    assert given == {"failed": "0,1", "killed": "0,1", "last": "0,1"}


async def _text(path: Path) -> str:
    try:
        return await anyio.Path(path).read_text()
    except FileNotFoundError:
        return ""


def test_gpus_are_detected_or_none_without_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # The same on every machine: no nvidia-smi on PATH (the /dev fallback is measured),
    # then one that answers `-L` in NVIDIA's format (its GPU indices are taken).
    monkeypatch.setenv("PATH", str(tmp_path))
    cap = _machine.measure()
    assert cap.cpus == len(os.sched_getaffinity(0))
    with open("/proc/meminfo") as fh:
        total = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    assert cap.memory_mb is not None and 0 < cap.memory_mb <= total // 1024
    devices = sorted(int(n[6:]) for n in os.listdir("/dev") if n[6:].isdigit() and "nvidia" in n)
    assert cap.gpus == tuple(str(n) for n in devices)  # () on a machine without GPUs
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'echo "GPU 0: Tesla T4 (UUID: GPU-8a1b)"\n'
        'echo "GPU 1: Tesla T4 (UUID: GPU-9c2d)"\n'
    )
    smi.chmod(0o755)
    assert _machine.measure().gpus == ("0", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert _machine.measure().gpus == ("2", "3")  # what the controller was given
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert _machine.measure().gpus == ()


async def test_options_override_what_is_measured() -> None:
    measured = (await LocalScheduler().capacity())["localhost"]
    assert measured.cpus == len(os.sched_getaffinity(0))
    given = LocalScheduler(cpus=64, memory="16G", gpus=3, gpu_env="ROCR_VISIBLE_DEVICES")
    cap = (await given.capacity())["localhost"]
    assert cap == Capacity(64, 16384, ("0", "1", "2"), ("ROCR_VISIBLE_DEVICES",))
    from_cli = LocalScheduler(cpus="2", gpus="[4, 7]")  # as -o key=value gives them
    assert (await from_cli.capacity())["localhost"].gpus == ("4", "7")


# -- named slots ---------------------------------------------------------------------------
async def test_slot_values_are_never_shared_by_running_jobs(workdir: Path, log: Path) -> None:
    q = Xqueue(forks=8, workdir=workdir, slots={"machine": [0, 1], "gpu": [0, 1]})
    names = [f"pair{i}" for i in range(6)] + ["whole0", "whole1"]
    jobs = [
        await q.feed(
            timed(log, n, 0.4),
            name=n,
            resources={"slots": "machine" if n.startswith("whole") else ["machine", "gpu"]},
        )
        for n in names
    ]
    with anyio.fail_after(30):
        await q.run_until_complete()
    seen = await spans(log)

    def held(span: Span) -> dict[str, str]:
        return {
            k.removeprefix("XQUEUE_SLOT_").lower(): v
            for k, v in span.env.items()
            if k.startswith("XQUEUE_SLOT_") and v
        }

    for job in jobs:
        assert held(seen[job.name]) == {axis: str(value) for axis, value in job.slots.items()}
    for a, b in concurrent(seen.values()):
        mine, theirs = held(a), held(b)
        shared = set(mine) & set(theirs)
        assert any(mine[x] != theirs[x] for x in shared), (a, b)
    assert depth(s for s in seen.values() if s.name.startswith("pair")) >= 2
    pair = jobs[0]
    assert fill_slots("node{machine}:{gpu} ${HOME} {other}", pair.slots) == (
        f"node{pair.slots['machine']}:{pair.slots['gpu']} ${{HOME}} {{other}}"
    )


def test_slot_rule_pairs_and_whole_axes() -> None:
    pool = Pool({"machine": [0, 1], "gpu": [0, 1]})
    pair = Need(axes=("machine", "gpu"))
    claims = [pool.claim(pair) for _ in range(4)]
    assert [c.slots for c in claims if c] == [
        {"machine": 0, "gpu": 0},
        {"machine": 0, "gpu": 1},
        {"machine": 1, "gpu": 0},
        {"machine": 1, "gpu": 1},
    ]
    assert pool.claim(pair) is None and pool.claim(Need(axes=("machine",))) is None
    for claim in claims[:2]:
        assert claim is not None
        pool.release(claim)
    whole = pool.claim(Need(axes=("machine",)))  # machine 0 is free again, all of it
    assert whole is not None and whole.slots == {"machine": 0}
    assert pool.claim(pair) is None


def test_bad_slot_axes_are_refused() -> None:
    for slots, words in [
        ({"my-axis": [1]}, "must be a word"),
        ({"gpu": []}, "has no value"),
        ({"gpu": "01"}, "must be a list"),
        ({"gpu": [0, "0"]}, "lists a value twice"),
        ({"gpu": [0.5]}, "strings or integers"),
        ({"gpu": [0], "GPU": [1]}, "differ only by case"),
    ]:
        with pytest.raises(ConfigError, match=words):
            Xqueue(slots=slots)
    with pytest.raises(ConfigError, match="backfill must be >= 0"):
        Xqueue(backfill=-1)
    with pytest.raises(ConfigError, match="slots must be an axis name or a list"):
        Resources.from_value({"slots": [1]})


BAD_COUNTS = ("1.5", "nan", " inf", "1e3")


def test_bad_capacity_options_are_refused() -> None:
    for options, words in [
        ({"cpus": 0}, "cpus must be an integer >= 1"),
        ({"memory": "lots"}, "invalid memory 'lots'"),
        ({"gpus": [0, "0"]}, "gpus must be a count or a list of distinct device ids"),
        ({"gpus": "a,,a"}, "distinct device ids"),
        # as the command line gives them: a count mistyped is not one device's id
        *[({"gpus": text}, "gpus must be a whole count or device ids") for text in BAD_COUNTS],
        ({"gpu_env": ["CUDA VISIBLE"]}, "gpu_env must be a list of variable names"),
    ]:
        with pytest.raises(ConfigError, match=words):
            LocalScheduler(**options)
    # ids that are not numbers stay ids, a count a count
    assert _machine.given("local", None, None, "GPU-5c1a, MIG-2", None).gpus == (
        "GPU-5c1a",
        "MIG-2",
    )
    assert _machine.given("local", None, None, "2", None).gpus == ("0", "1")


# -- the durable record --------------------------------------------------------------------
CONTROLLER = """
import sys
import anyio
from xqueue import Xqueue

async def main() -> None:
    q = Xqueue(workdir=sys.argv[1], scheduler_opts={"gpus": [0, 1]}, handle_signals=False)
    await q.feed(sys.argv[2], resources={"gpus": 1})
    await q.run_until_complete()

anyio.run(main)
"""


async def test_a_resumed_run_holds_the_ids_of_the_job_it_readopts(
    workdir: Path, tmp_path: Path
) -> None:
    go, first_ids, second_ids = (tmp_path / n for n in ("go", "first", "second"))
    waits = f'echo "$CUDA_VISIBLE_DEVICES" > {first_ids}; while [ ! -e {go} ]; do sleep 0.1; done'
    script = tmp_path / "controller.py"
    await anyio.Path(script).write_text(CONTROLLER)
    try:
        controller = await anyio.open_process(
            [sys.executable, str(script), str(workdir), waits], stdin=None, stdout=None, stderr=None
        )
        try:
            deadline = time.monotonic() + 30
            while not await anyio.Path(first_ids).exists():
                assert time.monotonic() < deadline, "the job never started"
                await anyio.sleep(0.05)
        finally:
            controller.send_signal(signal.SIGKILL)  # no goodbye: the job goes on running
            await controller.wait()
            await controller.aclose()

        out = io.StringIO()
        await anyio.to_thread.run_sync(
            lambda: status.show(WorkdirReader(workdir), set(), False, True, out)
        )
        (line,) = out.getvalue().splitlines()
        claim = json.loads(line)["state"]["claim"]
        assert claim["gpus"] == ["0"] and claim["host"] == "localhost"

        q = Xqueue(workdir=workdir, forks=2, scheduler_opts={"gpus": [0, 1]})
        adopted = await q.feed(waits, resources={"gpus": 1})
        other = await q.feed(
            f'echo "$CUDA_VISIBLE_DEVICES" > {second_ids}; touch {go}', resources={"gpus": 1}
        )
        with anyio.fail_after(30):
            await q.run_until_complete()
    finally:
        await anyio.Path(go).touch()  # whatever happened, the orphan job may end
    assert adopted.status is JobStatus.FINISHED and adopted.attempt == 1  # not run twice
    assert other.status is JobStatus.FINISHED
    assert (await anyio.Path(first_ids).read_text()).strip() == "0"
    # The re-adopted job still holds GPU 0: the new job got the other one.
    assert (await anyio.Path(second_ids).read_text()).strip() == "1"
    assert adopted.gpus == ("0",) and other.gpus == ("1",)


def test_a_device_listed_twice_is_one_gpu() -> None:
    """``CUDA_VISIBLE_DEVICES=0,0,1``: a job asking for two GPUs was given 0 and 0."""
    from xqueue.schedulers._machine import visible_devices

    assert visible_devices("0,0,1") == ("0", "1")
    assert visible_devices("2, 1,2,-1,3") == ("2", "1")
