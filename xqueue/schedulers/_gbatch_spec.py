"""What the Google Cloud Batch backend sends and reads, as plain data: no client, no I/O.

A Batch job is built as the JSON the Batch API documents (field names as in the proto,
``task_groups``/``taskGroups`` both read), merged from three sources in this order of
precedence: the Batch fields given in ``scheduler_opts`` (xqute's ``taskGroups``,
``allocationPolicy``, ``labels``...), the job's portable resources, and what xqueue itself
needs (its runnable, its volume, its labels, one task). Keeping it data makes the merge
testable without a service, and the client library turns it into a ``Job`` message at
the last moment (``google.protobuf.json_format`` rejects unknown fields there).

Names: a Batch job id must match ``JOB_ID``; no user text ever reaches one. The id is
made of the job prefix, the workdir's run tag, the run's nonce, the job's index and its
attempt. Label values are sanitised the same way, so a hostile job name ends up as a
harmless label and nowhere else.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .._suggest import did_you_mean
from ..errors import SchedulerOptionError
from ..failures import FailureClass
from ..job import SCRIPT
from ..resources import Resources
from ..scheduler import JobState
from ..states import JobStatus
from ._gcs import KILL_MARK

JOB_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
_LABEL_UNSAFE = re.compile(r"[^a-z0-9_-]+")

# The labels xqueue puts on every job (keys use "_": a "-" reads as an operator in a filter).
RUN_LABEL = "xqueue_run"
INDEX_LABEL = "xqueue_job"
ATTEMPT_LABEL = "xqueue_attempt"
NAME_LABEL = "xqueue_name"
ARRAY_LABEL = "xqueue_array"  # on an array's Batch job: its task count
OWN_LABELS = (RUN_LABEL, INDEX_LABEL, ATTEMPT_LABEL, NAME_LABEL, ARRAY_LABEL)

# Batch job fields a user may set through scheduler_opts; the rest are the service's.
SETTABLE = (
    "task_groups",
    "allocation_policy",
    "labels",
    "logs_policy",
    "priority",
    "notifications",
)
_CAMEL = {
    "taskGroups": "task_groups",
    "allocationPolicy": "allocation_policy",
    "logsPolicy": "logs_policy",
}

# Batch's reserved task exit codes (its troubleshooting guide): the runnable never said.
RESERVED_CLASS = {
    50001: FailureClass.PREEMPTED,
    50002: FailureClass.NODE_FAIL,
    50003: FailureClass.NODE_FAIL,
    50004: FailureClass.NODE_FAIL,
    50005: FailureClass.TIMEOUT,
    50006: FailureClass.NODE_FAIL,
}
RESERVED_EXIT = {
    50001: "the VM was preempted",
    50002: "the VM stopped reporting to Batch",
    50003: "the VM was rebooted while the task ran",
    50004: "the task stopped responding",
    50005: "the task ran past its maximum run duration (walltime)",
    50006: "the VM was recreated while the task ran",
}

# Batch job state name -> what xqueue reports while Batch still holds the job.
HELD = {
    "STATE_UNSPECIFIED": JobStatus.SUBMITTED,
    "QUEUED": JobStatus.SUBMITTED,
    "SCHEDULED": JobStatus.SUBMITTED,
    "RUNNING": JobStatus.RUNNING,
    "CANCELLATION_IN_PROGRESS": JobStatus.RUNNING,
}
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED", "DELETION_IN_PROGRESS")
# Batch task state name -> what xqueue reports while the task has not ended.
TASK_HELD = {
    "STATE_UNSPECIFIED": JobStatus.SUBMITTED,
    "PENDING": JobStatus.SUBMITTED,
    "ASSIGNED": JobStatus.SUBMITTED,
    "RUNNING": JobStatus.RUNNING,
}
# What an array task skipped by its kill marker exits with (128 + SIGTERM, as a shell).
KILLED_EXIT = 143
_ENTRY = re.compile(r"^(\d+)\) d='([^']*)' a=(\d+) j=(\d+) ;;$")
_EXIT_CODE = re.compile(r"exit code (-?\d+)")


def job_id(prefix: str, tag: str, nonce: str, index: int, attempt: int) -> str:
    """The Batch id of one attempt of one job: unique per workdir, run, job and attempt.

    Deterministic within a run, so a create retried after a lost answer meets the first
    one (ALREADY_EXISTS) instead of starting the job twice.
    """
    jid = f"{prefix}-{tag}-{nonce}-{index}-{max(attempt, 1)}"
    if not JOB_ID.match(jid):  # every part is checked or made here: a bug if it happens
        raise ValueError(f"not a valid Batch job id: {jid!r}")
    return jid


def array_id(prefix: str, tag: str, nonce: str, serial: int) -> str:
    """The Batch id of one array of this run (deterministic within it, as ``job_id``)."""
    jid = f"{prefix}-{tag}-{nonce}-a{serial}"
    if not JOB_ID.match(jid):
        raise ValueError(f"not a valid Batch job id: {jid!r}")
    return jid


def selector(entries: Sequence[tuple[str, int, int]], entrypoint: str) -> str:
    """The script every task of an array runs: it picks its job by ``BATCH_TASK_INDEX``.

    ``entries[i]`` is (the job's folder on the VM, its attempt, its xqueue index) for
    task ``i``. A task whose kill marker is in its folder when it starts exits at once
    (``KILLED_EXIT``): Batch cannot cancel one task of a job. The text is also what a
    later run reads back (``parse_selector``) to find which task ran which job.
    """
    from .._text import quote

    lines = ['case "$BATCH_TASK_INDEX" in']
    for task, (folder, attempt, index) in enumerate(entries):
        if "'" in folder:  # folders are made of ids and slugs: a bug if it happens
            raise ValueError(f"unquotable job folder {folder!r}")
        lines.append(f"{task}) d='{folder}' a={attempt} j={index} ;;")
    lines += [
        '*) echo "xqueue: no job for task $BATCH_TASK_INDEX" >&2; exit 70 ;;',
        "esac",
        f'if [ -e "$d/job.$a.{KILL_MARK}" ]; then exit {KILLED_EXIT}; fi',
        f'exec {quote(entrypoint)} "$d/job.$a.{SCRIPT}"',
        "",
    ]
    return "\n".join(lines)


def parse_selector(text: str) -> list[tuple[int, str, int, int]]:
    """(task, folder, attempt, xqueue index) of each task of a ``selector`` text."""
    out = []
    for line in text.splitlines():
        found = _ENTRY.match(line)
        if found:
            task, folder, attempt, index = found.groups()
            out.append((int(task), folder, int(attempt), int(index)))
    return out


def label_value(text: str) -> str:
    """``text`` as a Batch label value: lowercase letters, digits, ``_`` and ``-``, <= 63."""
    return _LABEL_UNSAFE.sub("_", text.lower()).strip("_")[:63]


def parse_staging(url: str) -> tuple[str, str]:
    """``gs://bucket[/prefix]`` (or ``bucket[/prefix]``) -> (bucket, prefix ending in "/")."""
    rest = url.removeprefix("gs://").strip("/")
    bucket, _, prefix = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", bucket):
        raise SchedulerOptionError(
            f"gbatch: staging_bucket {url!r} does not name a Cloud Storage bucket "
            "(e.g. gs://my-bucket/xqueue)"
        )
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise SchedulerOptionError(f"gbatch: staging_bucket {url!r} has an empty or dot segment")
    return bucket, f"{prefix}/" if prefix else ""


def template(scheduler: str, extra: Mapping[str, Any], own: Sequence[str] = ()) -> dict[str, Any]:
    """The Batch fields of ``scheduler_opts`` as one job dict (proto field names).

    A value may be given as JSON text (the CLI's ``-o taskGroups='[...]'``). Unknown
    keys, and a task count other than 1 (one xqueue job is one Batch task), are refused
    here, before any job is submitted; the closest of a Batch field and ``own`` (the
    scheduler's own options: a typo of one of them arrives here) is suggested.
    """
    import json

    out: dict[str, Any] = {}
    for key, value in extra.items():
        name = _CAMEL.get(key, key)
        if name not in SETTABLE:
            accepted = ", ".join(sorted({*_CAMEL, *SETTABLE}))
            raise SchedulerOptionError(
                f"scheduler {scheduler!r} does not accept option {key!r}"
                f"{did_you_mean(key, (*_CAMEL, *SETTABLE, *own))}; Batch job fields "
                f"accepted: {accepted} (and the options listed in the docs)"
            )
        if isinstance(value, str) and name != "priority":
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise SchedulerOptionError(
                    f"scheduler {scheduler!r}: option {key!r} is not valid JSON: {exc}"
                ) from exc
        out[name] = copy.deepcopy(value)
    groups = out.get("task_groups")
    if groups is not None:
        if isinstance(groups, Mapping):
            groups = [groups]
        if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)):
            raise SchedulerOptionError(
                f"scheduler {scheduler!r}: taskGroups must be one task group (a dict, or a "
                "list of one): Batch runs a single task group per job"
            )
        out["task_groups"] = groups
        group = _snake(groups[0])
        groups[0] = group
        count = group.pop("task_count", 1)
        if str(count) != "1" or group.pop("task_environments", None):
            raise SchedulerOptionError(
                f"scheduler {scheduler!r}: each xqueue job is one Batch task; leave out "
                "taskCount and taskEnvironments (feed one job per task instead)"
            )
    if "labels" in out and not isinstance(out["labels"], Mapping):
        raise SchedulerOptionError(f"scheduler {scheduler!r}: labels must be a mapping")
    return out


def _snake(group: dict[str, Any]) -> dict[str, Any]:
    """The task group keys xqueue merges into, in their proto names (others as given)."""
    names = {
        "taskSpec": "task_spec",
        "taskCount": "task_count",
        "taskEnvironments": "task_environments",
        "computeResource": "compute_resource",
        "maxRunDuration": "max_run_duration",
        "cpuMilli": "cpu_milli",
        "memoryMib": "memory_mib",
        "installGpuDrivers": "install_gpu_drivers",
    }

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {names.get(k, k): walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    result: dict[str, Any] = walk(group)
    return result


def build_job(
    base: Mapping[str, Any],
    *,
    runnable: dict[str, Any],
    volume: dict[str, Any],
    labels: Mapping[str, str],
    resources: Resources | None,
    gpu_type: str | None,
) -> dict[str, Any]:
    """One Batch job (as JSON data): ``base`` from the options, merged with the rest.

    The user's runnables run first (set-up steps), then the job's wrapper; the user's
    volumes are kept and the job's own folder is added. A Batch field given in the
    options wins over the mapped resource (as ``scheduler_opts`` win for Slurm);
    xqueue's own labels win over the user's.
    """
    job: dict[str, Any] = copy.deepcopy(dict(base))
    groups = job.get("task_groups") or [{}]
    group = _snake(groups[0])
    job["task_groups"] = [group]
    group["task_count"] = 1
    group["parallelism"] = 1
    spec = group.setdefault("task_spec", {})
    spec["runnables"] = [*spec.get("runnables", []), runnable]
    spec["volumes"] = [*spec.get("volumes", []), volume]
    compute = spec.setdefault("compute_resource", {})
    res = resources or Resources()
    if res.cpus:
        compute.setdefault("cpu_milli", res.cpus * 1000)
    if res.memory_mb:
        compute.setdefault("memory_mib", res.memory_mb)
    if not compute:
        del spec["compute_resource"]
    if res.walltime_s:
        spec.setdefault("max_run_duration", f"{res.walltime_s}s")
    if res.gpus:
        _accelerators(job, res.gpus, gpu_type)
    job["labels"] = {**dict(job.get("labels") or {}), **labels}
    return job


def _accelerators(job: dict[str, Any], gpus: int, gpu_type: str | None) -> None:
    policy_root = job.setdefault("allocation_policy", {})
    instances = policy_root.setdefault("instances", [{}])
    if not instances:
        instances.append({})
    instance = instances[0]
    if "instance_template" in instance or "instanceTemplate" in instance:
        return  # the template names the machine, GPUs included
    policy = instance.setdefault("policy", {})
    if policy.get("accelerators"):
        return
    if not gpu_type:
        raise SchedulerOptionError(
            f"gbatch: the job asks for {gpus} GPU(s) but Batch needs their type: set the "
            "option gpu_type (e.g. 'nvidia-tesla-t4') or accelerators in allocationPolicy"
        )
    policy["accelerators"] = [{"type": gpu_type, "count": gpus}]
    instance.setdefault("install_gpu_drivers", True)


def exit_code(events: Sequence[Any]) -> int | None:
    """The task exit code that Batch's status events report, the latest first.

    A task-level event carries it in ``task_execution.exit_code``; a job-level event
    quotes its task's event in the description ("... with exit code 3.").
    """
    for event in reversed(events):
        execution = getattr(event, "task_execution", None)
        code = getattr(execution, "exit_code", 0) if execution is not None else 0
        if code:
            return int(code)
        found = _EXIT_CODE.search(str(getattr(event, "description", "")))
        if found:
            return int(found.group(1))
    return None


def ended_state(state: str, events: Sequence[Any]) -> JobState:
    """What a Batch job that ended tells of its xqueue job, when it left no return code file.

    The wrapper's return code file always wins over this (``Scheduler.reconcile``); this
    answers for a wrapper that never ran or was cut short (a VM preempted, the walltime).
    """
    code = exit_code(events)
    if state == "SUCCEEDED":
        return JobState(
            JobStatus.FINISHED, 0, "Batch reports success; the job left no return code file"
        )
    if state == "CANCELLED":
        return JobState(JobStatus.KILLED, None, "cancelled in Batch, outside xqueue")
    if state == "DELETION_IN_PROGRESS":
        return JobState(JobStatus.KILLED, None, "deleted in Batch, outside xqueue")
    if code is not None and code in RESERVED_EXIT:
        return JobState(
            JobStatus.FAILED,
            None,
            f"{RESERVED_EXIT[code]} (Batch exit code {code})",
            failure=RESERVED_CLASS[code],
        )
    if code is not None and code != 50000:
        return JobState(
            JobStatus.FAILED,
            code,
            f"exit code {code} from Batch's status events (the job left no return code file)",
        )
    last = str(getattr(events[-1], "description", "")) if events else ""
    return JobState(JobStatus.FAILED, None, f"Batch reports the job failed: {last or state}")
