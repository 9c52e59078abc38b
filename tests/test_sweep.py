"""Parameter sweeps (``xqueue.sweep``): real local processes, on asyncio and trio.

What the jobs did is read back from what they wrote themselves (their stdout: values,
slot values, wall-clock times), never from what the sweep meant to give them.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import read_bytes, read_text
from xqueue import CallJob, ConfigError, JobFailedError, JobStatus, Xqueue
from xqueue.errors import QueueStateError
from xqueue.records import WorkdirReader
from xqueue.sweep import Sweep, SweepJob, run_sweep

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).parent.parent / "examples" / "sweep.toml"
_FIT = re.compile(
    r"start (\S+) machine=(\S+) gpu=(\S+) decay=(\S+) epoch=(\S+) dataset_size=(\S+)\n"
    r"end (\S+)\n"
)


def by_group(done: list[SweepJob], group: str) -> list[SweepJob]:
    return [d for d in done if d.point.group.name == group]


async def ended_at(workdir: Path, done: SweepJob) -> float:
    """When the run recorded the job's end: after its process was gone, before any job
    that waits for it was queued."""
    reader = WorkdirReader(workdir)
    record = await anyio.to_thread.run_sync(reader.last_record, done.job.dir)
    assert record is not None
    return float(record["time"])


# -- the reference case: examples/sweep.toml ---------------------------------------------------
async def test_reference_sweep_each_point_once_on_free_slots_sections_in_order(
    workdir: Path,
) -> None:
    sweep = await anyio.to_thread.run_sync(Sweep.from_file, EXAMPLE)
    done = await run_sweep(sweep, workdir=workdir, forks=5)

    assert [d.job.index for d in done] == list(range(31))
    assert all(d.job.status is JobStatus.FINISHED for d in done), [
        (d.job, d.job.reason) for d in done if d.job.status is not JobStatus.FINISHED
    ]
    fits, listings = by_group(done, "fit"), by_group(done, "listing")
    (summary,) = by_group(done, "summary")

    # Every point of the 3 x 3 x 3 grid ran exactly once, with the values it was fed.
    runs = []
    for d in fits:
        m = _FIT.fullmatch(await read_text(d.job.stdout_path))
        assert m, await read_text(d.job.stdout_path)
        start, machine, gpu, decay, epoch, size, end = m.groups()
        assert (decay, epoch, size) == tuple(str(d.point.params[k]) for k in d.point.params)
        assert (machine, gpu) == (str(d.job.slots["machine"]), str(d.job.slots["gpu"]))
        runs.append(((machine, gpu), float(start), float(end), (decay, epoch, size)))
    grid = itertools.product(
        ["0.1", "0.01", "0.001"], ["10", "20", "30"], ["1000", "10000", "100000"]
    )
    assert Counter(r[3] for r in runs) == Counter(grid)

    # Never two at once on one (machine, gpu) pair; every pair used; pairs used at once.
    for pair, group in itertools.groupby(sorted(runs), key=lambda r: r[0]):
        spans = [(start, end) for _, start, end, _ in group]
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start > end, f"two jobs on {pair} at once: {spans}"
    assert {r[0] for r in runs} == {(m, g) for m in "01" for g in "01"}
    edges = sorted([(start, 1) for _, start, _, _ in runs] + [(end, -1) for _, _, end, _ in runs])
    most = max(itertools.accumulate(step for _, step in edges))
    assert 2 <= most <= 4

    # The listing group ran beside the grid, not after it.
    assert sorted(str(d.point.params["flags"]) for d in listings) == ["-a", "-l", "-la"]
    listed = [await ended_at(workdir, d) for d in listings]
    assert max(listed) < max(start for _, start, _, _ in runs)

    # The second section started after every job of the first had ended.
    assert set(summary.job.after) == {d.job for d in fits + listings}
    started = float((await read_text(summary.job.stdout_path)).split()[1])
    assert started > max([end for _, _, end, _ in runs] + listed)

    # Run again on the same workdir: every point had succeeded, so nothing runs.
    q = Xqueue(workdir=workdir, forks=5, slots=sweep.slots)
    again = await run_sweep(sweep, q)
    assert q.statistics().submit_calls == 0
    assert [d.job.status for d in again] == [JobStatus.FINISHED] * 31
    assert [d.point for d in again] == [d.point for d in done]
    assert [d.job.dir for d in again] == [d.job.dir for d in done]


# -- values never become code --------------------------------------------------------------------
HOSTILE = [
    "a b",
    "it's",
    'say "hi"',
    "$(touch MARK)",
    "`touch MARK`",
    "x\ny",
    "cr\rlf",
    "; touch MARK #",
    "*",
    "-n",
    "${HOME}",
    "\\",
    "'",
    "",
    "{v}",
    "%s",
]


async def test_hostile_values_reach_the_job_exactly_and_run_nothing(
    workdir: Path, tmp_path: Path
) -> None:
    mark = tmp_path / "PWNED"
    values = [v.replace("MARK", str(mark)) for v in HOSTILE]
    exact = [
        ("argv", ["printf", "[%s]", "{v}"], []),
        ("shell", "printf '[%s]' {v}", []),
        ("argv_slot", ["printf", "[%s]@%s", "{v}", "{gpu}"], ["gpu"]),
        ("shell_slot", "printf '[%s]@%s' {v} {gpu}", ["gpu"]),
    ]
    groups: list[dict[str, Any]] = [
        {"name": name, "command": command, "slots": slots, "params": {"v": values}}
        for name, command, slots in exact
    ]
    # Fields written inside quotes or a here-document: not the exact value, still inert.
    quoted = "printf '[%s]' \"{v}\" '{v}'; cat <<EOF\n{v}\nEOF\n"
    groups.append({"name": "quoted", "command": quoted, "params": {"v": values}})
    groups.append({"name": "call", "call": "tests.sweeptargets:echo", "params": {"v": values}})
    sweep = Sweep.from_dict({"slots": {"gpu": [0, 1]}, "section": [{"group": groups}]})

    done = await run_sweep(sweep, workdir=workdir, forks=8)

    assert not await anyio.Path(mark).exists(), "a parameter value was run as shell code"
    assert all(d.job.status is JobStatus.FINISHED for d in done), [
        (d.job, d.job.reason) for d in done if d.job.status is not JobStatus.FINISHED
    ]
    for d in done:
        value, group = d.point.params["v"], d.point.group.name
        assert d.job.params == {"v": value}
        if group == "call":
            assert isinstance(d.job, CallJob)
            assert await d.job.result() == value
        elif group != "quoted":
            out = (await read_bytes(d.job.stdout_path)).decode()  # a \r kept as it is
            slot = f"@{d.job.slots['gpu']}" if "slot" in group else ""
            assert out == f"[{value}]{slot}", (group, value)
    argv = by_group(done, "argv")
    assert all(isinstance(d.job.command, tuple) for d in argv), "an argv without slots ran a shell"


# -- Python calls ---------------------------------------------------------------------------------
async def test_a_python_call_group_gets_its_point_and_slot_values_as_keywords(
    workdir: Path,
) -> None:
    sweep = Sweep.from_dict(
        {
            "slots": {"gpu": [0, 1]},
            "section": [
                {
                    "group": [
                        {
                            "name": "train",
                            "call": "tests.sweeptargets:train",
                            "slots": "gpu",
                            "params": {"lr": [0.1, 0.01], "layers": [[8, 8], [16]]},
                        }
                    ]
                }
            ],
        }
    )
    done = await run_sweep(sweep, workdir=workdir, forks=4)
    seen = []
    for d in done:
        assert isinstance(d.job, CallJob) and d.job.status is JobStatus.FINISHED, d.job.reason
        got = (await d.job.result())["point"]
        assert got == {**d.point.params, "gpu": d.job.slots["gpu"]}
        assert isinstance(got["gpu"], int)  # the [slots] table's value, not its text
        seen.append((got["lr"], tuple(got["layers"])))
    assert sorted(seen) == sorted(itertools.product([0.1, 0.01], [(8, 8), (16,)]))

    q = Xqueue(workdir=workdir, forks=4, slots=sweep.slots)
    again = await run_sweep(sweep, q)
    assert q.statistics().submit_calls == 0, "a call that succeeded ran again"
    assert [(await d.job.result())["point"]["lr"] for d in again] == [
        d.point.params["lr"] for d in done
    ]


# -- sections and failures ------------------------------------------------------------------------
def three_sections(log: Path, first: dict[str, Any]) -> Sweep:
    """Section a runs ``first`` (x=bad exits 3), then b, then c; each job logs its name."""
    echo = f"echo $XQUEUE_PARAM_X >> {shlex.quote(str(log))}"
    return Sweep.from_dict(
        {
            "section": [
                {
                    "name": "a",
                    "group": [
                        {
                            "name": "g",
                            "command": f"{echo}; s=0; [ {{x}} != bad ] || s=3; sleep {{nap}}; "
                            'date +%s.%N; exit "$s"',
                            "params": {"x": ["ok", "bad"], "nap": [0.3]},
                        }
                    ],
                    **first,
                },
                {"name": "b", "group": [{"command": f"{echo}; date +%s.%N", "params": {"x": "b"}}]},
                {"name": "c", "group": [{"command": f"{echo}", "params": {"x": "c"}}]},
            ]
        }
    )


async def test_a_failed_job_skips_the_sections_after_it(workdir: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    done = await run_sweep(three_sections(log, {}), workdir=workdir, forks=4)
    assert [(d.point.name, d.job.status) for d in done] == [
        ("g x=ok", JobStatus.FINISHED),
        ("g x=bad", JobStatus.FAILED),
        ("group1", JobStatus.SKIPPED),
        ("group1", JobStatus.SKIPPED),
    ]
    b, c = done[2].job, done[3].job
    assert "job 1 (g x=bad)" in b.reason and "failed with rc 3" in b.reason
    assert c.status is JobStatus.SKIPPED
    assert sorted((await read_text(log)).split()) == ["bad", "ok"]


async def test_continue_on_failure_starts_the_next_section_once_all_have_ended(
    workdir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    sweep = three_sections(log, {"continue_on_failure": True})
    done = await run_sweep(sweep, workdir=workdir, forks=4)
    assert [d.job.status for d in done] == [
        JobStatus.FINISHED,
        JobStatus.FAILED,
        JobStatus.FINISHED,
        JobStatus.FINISHED,
    ]
    ended = [float(await read_text(d.job.stdout_path)) for d in done[:2]]
    started = float(await read_text(done[2].job.stdout_path))
    assert started > max(ended), "section b started before section a had ended"
    assert done[2].job.after == ()  # the barrier is the controller's, not after=
    assert done[3].job.after == (done[2].job,)
    assert sorted((await read_text(log)).split()) == ["b", "bad", "c", "ok"]


async def test_a_sweep_on_a_callers_queue_whose_run_stopped_raises_not_returns_a_part(
    workdir: Path, tmp_path: Path
) -> None:
    """A halt in a ``continue_on_failure`` section: the sweep's later sections cannot be
    fed. Into the caller's own block, ``run_sweep`` must not return as if it had run."""
    sweep = three_sections(tmp_path / "log", {"continue_on_failure": True})
    returned: list[SweepJob] | None = None
    with pytest.raises((QueueStateError, JobFailedError)) as raised:
        async with Xqueue(workdir=workdir, forks=4, error_strategy="halt") as q:
            returned = await run_sweep(sweep, q)
    assert returned is None, f"run_sweep returned {len(returned)} of 4 jobs"
    if isinstance(raised.value, QueueStateError):
        assert "stopped before section 'b'" in str(raised.value)


async def test_run_again_reruns_only_what_did_not_succeed(workdir: Path, tmp_path: Path) -> None:
    log, fixed = tmp_path / "log", tmp_path / "fixed"
    command = (
        f"echo $XQUEUE_PARAM_X >> {shlex.quote(str(log))}; "
        f"[ -e {shlex.quote(str(fixed))} ] || [ {{x}} != bad ]"
    )
    sweep = Sweep.from_dict(
        {
            "section": [
                {"group": [{"command": command, "params": {"x": ["one", "bad", "two"]}}]},
                {"group": [{"command": command, "params": {"x": "after"}}]},
            ]
        }
    )
    first = await run_sweep(sweep, workdir=workdir, forks=3)
    assert [d.job.status for d in first] == [
        JobStatus.FINISHED,
        JobStatus.FAILED,
        JobStatus.FINISHED,
        JobStatus.SKIPPED,
    ]
    await anyio.Path(fixed).touch()
    again = await run_sweep(sweep, workdir=workdir, forks=3)
    assert [d.job.status for d in again] == [JobStatus.FINISHED] * 4
    assert Counter((await read_text(log)).split()) == {"one": 1, "two": 1, "bad": 2, "after": 1}


# -- params recorded with a job --------------------------------------------------------------------
async def test_params_are_part_of_the_spec_and_of_resume_identity(workdir: Path) -> None:
    async with Xqueue(workdir=workdir) as q:
        job = await q.feed(["true"], params={"decay": 0.1, "tags": ["a", "b"]})
    reader = WorkdirReader(workdir)
    (folder,) = await anyio.to_thread.run_sync(reader.folders)
    spec = await anyio.to_thread.run_sync(reader.spec, folder)
    assert spec is not None and spec["params"] == {"decay": 0.1, "tags": ["a", "b"]}
    assert job.status is JobStatus.FINISHED

    q = Xqueue(workdir=workdir)
    same = await q.feed(["true"], params={"decay": 0.1, "tags": ["a", "b"]})
    assert same.status is JobStatus.FINISHED  # resumed: same spec
    await q.aclose()
    q = Xqueue(workdir=workdir)
    other = await q.feed(["true"], params={"decay": 0.2, "tags": ["a", "b"]})
    assert other.status is JobStatus.QUEUED  # another point: it runs
    await q.aclose()


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"a-b": 1}, "must be a word"),
        ({"x": float("nan")}, "cannot hold"),
        ({"x": object()}, "parameters are strings, numbers"),
        ({"x": "nul\0"}, "NUL"),
        (["x"], "must map names"),
    ],
)
async def test_bad_params_are_refused_at_feed(workdir: Path, params: Any, words: str) -> None:
    q = Xqueue(workdir=workdir)
    with pytest.raises(ConfigError, match=words):
        await q.feed(["true"], params=params)
    assert q.jobs == []
    await q.aclose()
