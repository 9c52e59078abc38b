"""What the Slurm and SGE backends share: option rendering, array packing, submit errors.

Both submit the job's wrapper script (written once by ``Scheduler.write_script``) and
put every directive on the command line, so a single job and an array element run the
very same wrapper and the argv in an error message shows exactly what was asked for.
An array is a small batch script that maps the element's task id to the wrapper of one
job (a ``case`` statement, so nothing is parsed at run time), with a ``.jobs`` file next
to it listing the job folders in index order, which a later run reads to re-adopt the
elements of an array whose id it never recorded.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from .._text import quote
from ..errors import SubmissionError
from ..job import SCRIPT, Job
from ..scheduler import SchedulerStats, gather_bounded
from ..workdir import atomic_write
from ._process import SchedulerCommandError, run_command

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


async def run_submit(argv: Sequence[str], timeout: float, stats: SchedulerStats) -> str:
    """Run one sbatch/qsub and return its stdout; count it; retry only transient refusals.

    A controller under load answers "socket timed out" or "try again": that is retried
    twice after a pause. A command that we timed out ourselves is not retried, since it
    may have submitted the job already.
    """
    for attempt in range(3):
        stats.submit_calls += 1
        try:
            return (await run_command(argv, timeout=timeout)).stdout
        except SchedulerCommandError as exc:
            if not (exc.transient and exc.returncode is not None and attempt < 2):
                raise submission_error(exc) from exc
        await anyio.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def split_throttle(sizes: Sequence[int], budget: int) -> list[int]:
    """Throttles for arrays submitted together, adding up to at most ``budget``.

    Each array gets a share of ``budget`` in proportion to its size (largest remainder
    first), at least 1 and never more than its size, so the arrays of one batch together
    never run more than ``forks`` elements at once. (Only when there are more arrays than
    ``budget`` can the minimum of 1 each exceed it.)
    """
    total = sum(sizes)
    if total <= budget:
        return list(sizes)
    exact = [budget * n / total for n in sizes]
    shares = [max(1, min(n, int(e))) for n, e in zip(sizes, exact)]
    spare = budget - sum(shares)
    by_remainder = sorted(range(len(sizes)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    for i in by_remainder:
        if spare <= 0:
            break
        if shares[i] < sizes[i]:
            shares[i] += 1
            spare -= 1
    return shares


async def submit_grouped(
    jobs: Sequence[Job],
    *,
    arrays: bool,
    max_array: int,
    forks: int,
    concurrency: int,
    one: Callable[[Job], Awaitable[str]],
    array: Callable[[Sequence[Job], int], Awaitable[list[str]]],
) -> list[str | BaseException]:
    """Submit jobs with the same resources as arrays (of at most ``max_array``), others alone.

    ``forks`` is shared: single jobs take one slot each and the arrays split the rest
    between their throttles (``split_throttle``). Submissions run concurrently, at most
    ``concurrency`` at once. A failed submission fails only the jobs it carried: one id
    or exception per job, in order.
    """
    singles: list[Job] = []
    batches: list[Sequence[Job]] = []
    if arrays:
        for group in group_by(jobs, lambda j: j.resources).values():
            for part in chunks(group, max_array):
                if len(part) == 1:
                    singles.extend(part)
                else:
                    batches.append(part)
    else:
        singles = list(jobs)
    throttles = split_throttle([len(b) for b in batches], max(forks - len(singles), 1))
    # One unit per submission: an array with its throttle, or a single job (no throttle).
    units: list[tuple[Sequence[Job], int | None]] = [
        *zip(batches, throttles),
        *(([job], None) for job in singles),
    ]

    async def submit(unit: tuple[Sequence[Job], int | None]) -> list[str]:
        part, throttle = unit
        return await array(part, throttle) if throttle is not None else [await one(part[0])]

    results: dict[Job, str | BaseException] = {}
    for (part, _), ids in zip(units, await gather_bounded(units, submit, concurrency)):
        for i, job in enumerate(part):
            results[job] = ids if isinstance(ids, BaseException) else ids[i]
    return [results[job] for job in jobs]


def submission_error(exc: SchedulerCommandError) -> SubmissionError:
    """The scheduler's own message, retryable only when the failure looked transient.

    A refused option (unknown partition or queue, a bad memory value, an invalid array
    spec) fails the same way every time, so retrying it would only burn attempts.
    """
    return SubmissionError(str(exc), retryable=exc.transient)


def write_array(
    folder: str, jobs: Sequence[Job], task_var: str, first_index: int, *, jobdirs: bool = True
) -> tuple[str, str]:
    """Write the batch script of one array; return (its name, its path).

    Element ``first_index + i`` runs the wrapper of ``jobs[i]``. ``exec`` keeps the
    wrapper's exit status as the element's, and a task id with no job fails loudly.
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
        atomic_write(os.path.join(folder, f"{name}.jobs"), "".join(f"{j.dir}\n" for j in jobs))
    return name, path


def array_jobdirs(folder: str, name: str) -> list[str]:
    """The job folders of an array written by ``write_array``, in element order."""
    try:
        with open(os.path.join(folder, f"{name}.jobs"), encoding="utf-8") as fh:
            return [line.rstrip("\n") for line in fh]
    except OSError:
        return []
