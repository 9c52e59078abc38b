"""Pure parsers for SGE's output, tested on output captured from a real qmaster.

An answer that is not what was asked for raises (ValueError, or the XML parser's own
``ParseError``) rather than being read as "no jobs": the backend turns that into
``SchedulerOutputError`` at its boundary (``_process.read_output``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError
from ..failures import FailureClass, timed_out
from ..resources import parse_memory, parse_walltime
from ..scheduler import JobState
from ..states import JobStatus


@dataclass(frozen=True)
class QacctRecord:
    exit_status: int | None
    failed: str
    wallclock: float | None = None
    """Seconds it ran (``ru_wallclock``)."""
    maxvmem_mb: float | None = None
    """The most virtual memory it used, MiB (``maxvmem``)."""
    category: str = ""
    """What it asked for (``-l h_rt=5,h_vmem=1G ...``)."""


def parse_qsub(stdout: str) -> str:
    """The job id ``qsub -terse`` printed: ``7``, or ``7.1-4:1`` for an array (gives ``7``)."""
    for line in reversed(stdout.strip().splitlines()):
        head = line.strip().split(".", 1)[0]
        if head.isdigit():
            return head
    raise ValueError(f"no job id in qsub output {stdout!r}")


def _job_lists(text: str) -> list[ET.Element]:
    """The ``job_list`` entries of ``qstat -xml``; each must carry a numeric job id.

    Empty output is not an empty queue: ``qstat -xml`` answers a user with no jobs with a
    ``<job_info>`` document all the same, and nothing at all (a wrapper that failed, a
    broken pipe) would fail every running job as vanished.
    """
    if not text.strip():
        raise ValueError("no output: qstat -xml prints a <job_info> document even for no jobs")
    root = ET.fromstring(text)
    if root.tag != "job_info":
        raise ValueError(f"not a qstat -xml answer: root element <{root.tag}>")
    entries = list(root.iter("job_list"))
    for entry in entries:
        number = (entry.findtext("JB_job_number") or "").strip()
        if not number.isdigit():
            raise ValueError(f"job_list without a job number: {number!r}")
    return entries


def parse_qstat_xml(text: str) -> dict[str, str]:
    """``qstat -xml -g d``: id (``7``, or ``7.3`` for an array task) -> state letters (``qw``).

    With ``-g d`` every task of an array is listed on its own, pending ones included.
    A task range (``1-4:1``), which appears without ``-g d``, is expanded.
    """
    states: dict[str, str] = {}
    for entry in _job_lists(text):
        number = (entry.findtext("JB_job_number") or "").strip()
        state = (entry.findtext("state") or "").strip()
        tasks = (entry.findtext("tasks") or "").strip()
        if not tasks:
            states[number] = state
            continue
        for task in expand_tasks(tasks):
            states[f"{number}.{task}"] = state
    return states


def parse_qstat_names(text: str) -> dict[str, str]:
    """``qstat -xml -g d``: id (as in ``parse_qstat_xml``) -> job name (``-N``)."""
    names: dict[str, str] = {}
    for entry in _job_lists(text):
        number = (entry.findtext("JB_job_number") or "").strip()
        name = (entry.findtext("JB_name") or "").strip()
        tasks = (entry.findtext("tasks") or "").strip()
        for task in expand_tasks(tasks) if tasks else [None]:
            names[number if task is None else f"{number}.{task}"] = name
    return names


def expand_tasks(spec: str) -> list[int]:
    """``3``, ``1-4:1`` or ``3,5-6:1`` as task numbers."""
    tasks: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if not m:
            continue
        first = int(m.group(1))
        last = int(m.group(2) or first)
        tasks.extend(range(first, last + 1, int(m.group(3) or 1)))
    return tasks


def parse_qacct(text: str) -> dict[str, QacctRecord]:
    """``qacct -j ID`` records: id (``7`` or ``7.3``) -> exit status and ``failed`` field."""
    records: dict[str, QacctRecord] = {}
    for block in re.split(r"^=+\s*$", text, flags=re.MULTILINE):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.strip().partition(" ")
            if key:
                fields[key] = value.strip()
        number = fields.get("jobnumber", "")
        if not number:
            continue
        task = fields.get("taskid", "undefined")
        jid = f"{number}.{task}" if task.isdigit() else number
        status = fields.get("exit_status", "").split(" ", 1)[0]
        records[jid] = QacctRecord(
            int(status) if status.isdigit() else None,
            fields.get("failed", "0"),
            _number(fields.get("ru_wallclock", "")),
            _size_mb(fields.get("maxvmem", "")),
            fields.get("category", ""),
        )
    if text.strip() and not records:
        raise ValueError("no accounting record (no jobnumber line)")
    return records


def _number(text: str) -> float | None:
    """``5s``, ``5`` or ``5.000`` (qacct versions differ) as a number."""
    m = re.match(r"(\d+(?:\.\d+)?)", text.strip())
    return float(m.group(1)) if m else None


_MIB = 1 << 20
_SIZE_UNITS = {"": 1 / _MIB, "B": 1 / _MIB, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1 << 20}


def _size_mb(text: str) -> float | None:
    """``3.367MB``, ``1.2GB``, ``0.000B`` as MiB."""
    m = re.match(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", text.strip(), re.IGNORECASE)
    return float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()] if m else None


def requested(category: str, resource: str) -> str | None:
    """The value of one ``-l`` resource in a qacct ``category`` (``h_rt`` -> ``5``)."""
    m = re.search(rf"(?:^|[\s,]){resource}=([^\s,]+)", category)
    return m.group(1) if m else None


def parse_error_reason(text: str) -> str:
    """The ``error reason`` lines of ``qstat -j ID`` for a job in error state (Eqw)."""
    reasons = [
        line.split(":", 1)[1].strip() if ":" in line else line
        for line in text.splitlines()
        if line.startswith("error reason")
    ]
    return "; ".join(reasons)


def held(state: str) -> bool:
    """Whether SGE still holds a job in this state (queued, running, suspended, held,
    or being deleted). A job in deletion (``dt``, ``dr``) is held until ``qstat`` lists it
    no more: a task being sent to its host when ``qdel`` registered its deletion still
    starts and runs to its end (taken for ended, it was recorded killed and run again,
    while it ran on after its run had exited). One in error state (``Eqw``) never runs."""
    return bool(state) and ("E" not in state or "d" in state)


def accounting_state(record: QacctRecord) -> JobState:
    """A verdict from ``qacct`` for a job whose wrapper left no return code."""
    failed = record.failed.split(" ", 1)[0]
    if failed == "37":
        return _limit_state(record)
    if failed == "100" or record.exit_status == 137:
        return JobState(JobStatus.KILLED, record.exit_status, f"killed in SGE (failed {failed})")
    if failed not in ("", "0"):
        return JobState(
            JobStatus.FAILED,
            record.exit_status,
            f"SGE could not run the job: failed {record.failed}",
        )
    rc = record.exit_status
    status = JobStatus.FINISHED if rc == 0 else JobStatus.FAILED
    return JobState(status, rc, "return code from qacct; the wrapper wrote none")


def _limit_state(record: QacctRecord) -> JobState:
    """``failed 37``: qmaster killed it at a limit, one of h_rt, h_cpu and h_vmem (it
    does not say which): the one its run reached, by the record's own numbers."""
    rt = _limit(requested(record.category, "h_rt"), parse_walltime)
    vmem = _limit(requested(record.category, "h_vmem"), parse_memory)
    if rt is not None and record.wallclock is not None and record.wallclock >= rt:
        why = timed_out(rt, "SGE h_rt")
        return JobState(JobStatus.FAILED, record.exit_status, why, failure=FailureClass.TIMEOUT)
    if vmem is not None and record.maxvmem_mb is not None and record.maxvmem_mb >= vmem:
        why = f"out of memory: SGE killed it for using more than its h_vmem of {vmem} MiB"
        return JobState(JobStatus.FAILED, record.exit_status, why, failure=FailureClass.OOM)
    why = f"killed by SGE at a limit (failed {record.failed})"
    return JobState(JobStatus.FAILED, record.exit_status, why, failure=FailureClass.KILLED)


def _limit(value: str | None, parse: Callable[[str], int]) -> int | None:
    if value is None:
        return None
    try:
        return parse(value)
    except ConfigError:
        return None
