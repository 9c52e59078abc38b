"""What the Slurm and SGE backends share: option rendering, array packing, submit errors.

Both submit the job's wrapper script (written once by ``Scheduler.write_script``) and
put every directive on the command line, so a single job and an array element run the
very same wrapper and the argv in an error message shows exactly what was asked for.
An array is a small batch script that maps the element's task id to the wrapper of one
job (a ``case`` statement, so nothing is parsed at run time), with a ``.jobs`` file next
to it listing the attempt and folder of each element in index order, which a later run
(or the same run, after a submission whose outcome is unknown) reads to find the
elements of an array whose id it never recorded.

A submission either returns ids, fails for sure (``SubmissionError``: nothing was
queued), or fails with an unknown outcome (``SubmissionUnknownError``: the job may be
queued); only the second kind is looked up by its tag before anything is resubmitted.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from .._files import atomic_write
from .._text import quote
from ..errors import SubmissionError, SubmissionUnknownError
from ..job import SCRIPT, Job
from ..scheduler import SchedulerStats, gather_bounded
from ._forks import Slot, plan
from ._process import SchedulerCommandError, describe, run_command

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

_counter = itertools.count()


def long_options(opts: Mapping[str, Any]) -> list[str]:
    """``--key=value`` per option; True is a bare flag, False/None are dropped, lists repeat."""
    argv: list[str] = []
    for key, value in opts.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is None or v is False:
                continue
            argv.append(f"--{key}" if v is True else f"--{key}={v}")
    return argv


def short_options(opts: Mapping[str, Any]) -> list[str]:
    """``-key value`` for each option (the SGE style); True is a bare flag, lists repeat."""
    argv: list[str] = []
    for key, value in opts.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is None or v is False:
                continue
            argv.extend([f"-{key}"] if v is True else [f"-{key}", str(v)])
    return argv


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.+-]+")


def job_name(text: str, limit: int = 64) -> str:
    """A job's name as a cluster may carry it: letters, digits and ``_.+-`` only.

    A name is free text, yet Slurm and SGE print job names in line- and space-separated
    listings (``squeue``, ``qstat``, ``sacct -P``) and SGE refuses whitespace, ``/``,
    ``:`` and ``@`` outright. Every other run of characters becomes one ``_``, a leading
    ``-`` or ``.`` is dropped (it would read as an option or a hidden file), and the
    result is cut to ``limit``; an empty result is ``xqueue``.
    """
    safe = _UNSAFE_NAME.sub("_", text).lstrip("-.")[:limit]
    return safe or "xqueue"


def group_by(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """Items grouped by ``key``, groups and items in first-seen order."""
    groups: dict[K, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + size]


def run_tag(workdir: str) -> str:
    """A short tag naming one workdir, put on every job so a later run can find its jobs."""
    return hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:10]


def hms(seconds: int) -> str:
    """``[D-]HH:MM:SS``, the walltime format Slurm and SGE both read."""
    days, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{days}-{h:02d}:{m:02d}:{s:02d}" if days else f"{h:02d}:{m:02d}:{s:02d}"


def attempt_of(job: Job) -> int:
    """The attempt a submission is for (1 before the engine has counted any)."""
    return max(job.attempt, 1)


async def run_submit(
    argv: Sequence[str],
    timeout: float,
    stats: SchedulerStats,
    parse: Callable[[str], str],
    *,
    input: str | None = None,
) -> str:
    """Run one sbatch/qsub (``input`` on its stdin) and return the id ``parse`` reads.

    A refusal that proves nothing was queued ("try again", a controller that cannot be
    contacted) is retried twice after a pause. A failure that leaves open whether the
    job was queued (we timed the command out; the controller's answer timed out; it
    exited 0 but printed no id we can read) raises ``SubmissionUnknownError``: submitting
    again could run the job twice, so the caller looks for it by its tag first.
    """
    for attempt in range(3):
        stats.submit_calls += 1
        try:
            stdout = (await run_command(argv, timeout=timeout, input=input)).stdout
        except SchedulerCommandError as exc:
            if exc.ambiguous:
                raise SubmissionUnknownError(
                    f"{exc}; the job may have been queued all the same"
                ) from exc
            if not (exc.transient and attempt < 2):
                raise submission_error(exc) from exc
            await anyio.sleep(1.0 + attempt)
            continue
        try:
            return parse(stdout)
        except ValueError as exc:
            raise SubmissionUnknownError(
                f"{describe(argv)} exited 0 but printed no job id we can read: {stdout[:200]!r}"
            ) from exc
    raise AssertionError("unreachable")


# One submission: the jobs it carries, the throttle of an array (None for a single job),
# and the id of the unit it must wait for (None when it may start at once). It returns
# the id a dependency names (an array's own id) and one id per job.
Submit = Callable[[Sequence[Job], int | None, str | None], Awaitable[tuple[str, list[str]]]]


async def submit_grouped(
    jobs: Sequence[Job],
    *,
    arrays: bool,
    max_array: int,
    forks: int,
    concurrency: int,
    submit: Submit,
) -> list[str | BaseException]:
    """Submit jobs with the same resources as arrays (of at most ``max_array``), others alone.

    ``forks`` is shared between the submissions of the batch (``_forks.plan``): the
    throttles of those that may run at once add up to at most ``forks``, and the others
    wait in a lane for the one before them. Lanes are submitted concurrently, at most
    ``concurrency`` at once, each in order (a unit needs its predecessor's id). A failed
    submission fails only the jobs it carried, and the next unit of its lane waits for
    the last one that was submitted: one id or exception per job, in order.
    """
    units: list[Sequence[Job]] = []
    if arrays:
        for group in group_by(jobs, lambda j: j.resources).values():
            units.extend(chunks(group, max_array))
        # Queue order, so the first jobs fed are the first to start.
        units.sort(key=lambda part: min(j.index for j in part))
    else:
        units = [[job] for job in jobs]
    slots = plan([len(u) for u in units], forks) if arrays else [Slot(1, None)] * len(units)
    lanes: list[list[int]] = []
    for i, slot in enumerate(slots):
        lane = [i] if slot.after is None else next(ln for ln in lanes if ln[-1] == slot.after)
        if slot.after is None:
            lanes.append(lane)
        else:
            lane.append(i)
    outcome: list[tuple[str, list[str]] | BaseException] = [RuntimeError("not run")] * len(units)

    async def run_lane(lane: list[int]) -> None:
        after: str | None = None
        for i in lane:
            part = units[i]
            throttle = slots[i].throttle if len(part) > 1 else None
            try:
                base, ids = await submit(part, throttle, after)
            except Exception as exc:
                outcome[i] = exc
                continue
            outcome[i] = (base, ids)
            after = base

    await gather_bounded(lanes, run_lane, concurrency)
    results: dict[Job, str | BaseException] = {}
    for part, done in zip(units, outcome):
        for k, job in enumerate(part):
            results[job] = done if isinstance(done, BaseException) else done[1][k]
    return [results[job] for job in jobs]


def submission_error(exc: SchedulerCommandError) -> SubmissionError:
    """The scheduler's own message, retryable only when the failure looked transient.

    A refused option (unknown partition or queue, a bad memory value, an invalid array
    spec) fails the same way every time, so retrying it would only burn attempts. A
    transient refusal that reaches here proved nothing was queued (an ambiguous one is
    raised as SubmissionUnknownError first), so the engine submits it again after a pause
    without spending an attempt, for as long as its outage tolerance allows.
    """
    return SubmissionError(str(exc), retryable=exc.transient, transient=exc.transient)


def write_array(
    folder: str, jobs: Sequence[Job], task_var: str, first_index: int, *, jobdirs: bool = True
) -> tuple[str, str]:
    """Write the batch script of one array; return (its name, its path).

    Element ``first_index + i`` runs the wrapper of ``jobs[i]``'s current attempt.
    ``exec`` keeps the wrapper's exit status as the element's, and a task id with no job
    fails loudly. The ``.jobs`` file beside it names the attempt and folder of each
    element, so an element is found again for the attempt it ran.
    """
    os.makedirs(folder, exist_ok=True)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_counter)}"
    lines = [
        "#!/bin/sh",
        "# xqueue array: each element runs the wrapper of one job",
        f'case "${task_var}" in',
        *(
            f"{first_index + i}) exec /bin/sh {quote(job.attempt_path(SCRIPT))} ;;"
            for i, job in enumerate(jobs)
        ),
        "esac",
        f'echo "xqueue: no job for array task ${task_var}" >&2',
        "exit 127",
        "",
    ]
    path = os.path.join(folder, f"{name}.sh")
    atomic_write(path, "\n".join(lines))
    os.chmod(path, 0o755)
    if jobdirs:
        # One JSON array per line: a folder whose name holds a newline stays one element.
        elements = "".join(json.dumps([attempt_of(j), j.dir]) + "\n" for j in jobs)
        atomic_write(os.path.join(folder, f"{name}.jobs"), elements)
    return name, path


def array_jobdirs(folder: str, name: str) -> list[tuple[str, int]]:
    """(job folder, attempt) of each element of an array written by ``write_array``.

    A line with a folder only (written before attempts were recorded) is attempt 1.
    """
    try:
        with open(os.path.join(folder, f"{name}.jobs"), encoding="utf-8") as fh:
            lines = [line.rstrip("\n") for line in fh]
    except OSError:
        return []
    elements = []
    for line in lines:
        if line.startswith("["):
            try:
                attempt_no, folder_name = json.loads(line)
                elements.append((str(folder_name), int(attempt_no)))
                continue
            except (ValueError, TypeError):
                pass
        attempt, sep, jobdir = line.partition(" ")
        if sep and attempt.isdigit():
            elements.append((jobdir, int(attempt)))
        else:
            elements.append((line, 1))
    return elements


def matches(job: Job, attempt: int) -> bool:
    """Whether a submission tagged for ``job`` with ``attempt`` is the one looked for.

    A job whose attempt the engine does not know yet (0: an earlier run died before it
    recorded anything) takes any attempt; ``best_match`` then keeps the latest.
    """
    return job.attempt < 1 or attempt == job.attempt


def best_match(job: Job, found: Iterable[tuple[str, int]]) -> str | None:
    """The id among (id, attempt) pairs tagged for ``job``: its latest attempt, newest id.

    Sets ``job.attempt`` when it was unknown, so the engine reads that attempt's files.
    """

    def newest(item: tuple[str, int]) -> tuple[int, list[int]]:
        return item[1], [int(p) for p in re.split(r"[._]", item[0]) if p.isdigit()]

    best = max(found, key=newest, default=None)
    if best is None:
        return None
    if job.attempt < 1:
        job.attempt = best[1]
    return best[0]
