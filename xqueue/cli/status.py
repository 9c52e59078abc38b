"""``xqueue status``: what a workdir's jobs are doing, read without writing anything.

It goes through ``records.WorkdirReader``, so it works on a read-only or someone else's
workdir. The summary costs one read of the journal plus one small read per job (its
``job.status``); a job's spec (``specs.jsonl``) is parsed only when its row is shown. Rows are plain
aligned columns, not a rich table: rich measured a 100,000-row table for minutes, and
plain columns are what ``grep`` and ``sort`` want. ``--json`` is the format for scripts.

A job recorded as being submitted, submitted or running is only being watched while a
run holds the workdir's lock; without one it is shown as ``orphaned`` (or as it ended, when
it left a return code). The next run on the workdir looks it up first: it re-adopts it if
it still runs, and runs it again if not. A job recorded as ``retrying`` without a run is
shown ``failed``: its attempt failed, and the run that was to retry it is gone; the next
run runs it again, as it does a failed job.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .._suggest import did_you_mean
from ..errors import XqueueError
from ..failures import FailureClass
from ..params import matches, parse_filters
from ..records import WorkdirReader, job_index, read_json
from ..states import JobStatus
from .jobs import check_workdir
from .text import MAX_ROWS, clip, pad, printable, rc_text, status_text, width

ORPHANED, NOT_SUBMITTED = "orphaned", "not submitted"
ATTENTION = ("failed", "killed", "skipped", ORPHANED)  # as a run's own summary lists them
STATES = (*(s.value for s in JobStatus), ORPHANED, NOT_SUBMITTED)
SUBMITTED, RUNNING = JobStatus.SUBMITTED.value, JobStatus.RUNNING.value  # enum lookups are
RETRYING, FAILED = JobStatus.RETRYING.value, JobStatus.FAILED.value  # slow enough to show
# What a run that is gone may have left with the backend: a resumed run looks each of these
# up before running it again (engine ``_on_fed``), so without a run they are orphaned.
_ACTIVE = (JobStatus.SUBMITTING.value, SUBMITTED, RUNNING)  # in a 100,000-job summary
_WAITING = (JobStatus.WAITING.value, JobStatus.QUEUED.value)
_NAME_WIDTH = 48


@dataclass(slots=True)
class Row:
    folder: str  # the folder's name in the workdir
    record: dict[str, Any] | None  # as recorded (journal or job.status)
    status: str  # what to show: a JobStatus value, ORPHANED or NOT_SUBMITTED


def parse_states(values: Iterable[str]) -> set[str]:
    """``--state`` values (repeatable, comma-separated) as states; unknown ones refused."""
    chosen = set()
    for value in values:
        for part in value.split(","):
            state = part.strip().lower().replace("-", " ").replace("_", " ")
            if state not in STATES:
                names = [s.replace(" ", "-") for s in STATES]
                raise XqueueError(
                    f"unknown state {part.strip()!r} for --state"
                    f"{did_you_mean(state.replace(' ', '-'), names)}; choose from "
                    + ", ".join(names)
                )
            chosen.add(state)
    return chosen


def collect(reader: WorkdirReader) -> tuple[list[Row], str | None]:
    """Every job folder's row, and the pid of the run holding the workdir (None if none)."""
    holder = reader.controller()
    rows = []
    folders = reader.folders()
    for folder, record in zip(folders, reader.last_records(folders), strict=True):
        if record is None:
            status = NOT_SUBMITTED
        elif holder is None and record["status"] in _ACTIVE:
            status = ORPHANED
        elif holder is None and record["status"] == RETRYING:
            status = FAILED  # nothing will retry it: the next run runs it again, as if failed
        elif holder is None and record["status"] in _WAITING:
            # A dependent whose earlier success no longer stands, journalled as its run
            # held it: that run is gone, and the job never ran since.
            status = NOT_SUBMITTED
        elif record["status"] == SUBMITTED and _started(reader, folder, record):
            status = RUNNING
        else:
            status = record["status"]
        rows.append(Row(folder, record, status))
    if holder is None:
        _settle_orphans(reader, [row for row in rows if row.status == ORPHANED])
    return rows, holder


def _settle_orphans(reader: WorkdirReader, orphans: Sequence[Row]) -> None:
    """Show how the jobs of a run that is gone ended, where they left a return code.

    The journal says "running" (or "submitting": the intent, written before the job was
    handed to the backend, which may have started it), but the job may have ended after
    its controller died: its wrapper's rc file, or the local shepherd's line in
    ``exits.jsonl`` (written after the attempt's submission, by its pid if known), says
    how. Such a row shows as finished or failed with that code, marked ``ended_unwatched``:
    the journal does not have it yet, and the next run on the workdir records it as it
    re-adopts the job. One its run was killing when it died (``"kill"``) shows as killed:
    the next run runs it again. Only where the run's scheduler says a return code file is
    always the job's own end (SGE, SSH) does a 0 show as finished: the next run keeps it.
    """
    wanted = dict(reader.attempt_asked(row.folder, row.record or {}) for row in orphans)
    codes = reader.attempt_codes(wanted)
    kept: Callable[[int | None], bool] | None = None  # loaded only if a row needs it
    for row, key in zip(orphans, wanted, strict=True):
        rc = codes.get(key)
        if rc is not None:
            failure = None
            killed = bool((row.record or {}).get("kill"))
            if killed and rc == 0:  # the scheduler's word is wanted for a 0 only
                kept = kept or _ended_before_kill(reader)
                killed = not kept(rc)
            if killed:
                row.status = JobStatus.KILLED.value
            else:
                row.status = JobStatus.FINISHED.value if rc == 0 else JobStatus.FAILED.value
                failure = FailureClass.NONZERO_EXIT.value if rc else None  # as the run records it
            row.record = {
                **(row.record or {}),
                "rc": rc,
                "failure": failure,
                "ended_unwatched": True,
            }


def _ended_before_kill(reader: WorkdirReader) -> Callable[[int | None], bool]:
    """``ended_before_kill`` of the scheduler the workdir's last run used (``run.json``);
    the base class's if that cannot be told, which shows the job killed."""
    from .. import registry
    from ..control import RUN_FILE
    from ..scheduler import Scheduler

    info = read_json(os.path.join(reader.path, RUN_FILE))
    name = (info or {}).get("scheduler")
    try:
        if isinstance(name, str):
            return registry.scheduler_class(name).ended_before_kill
    except Exception:  # not installed here, or a broken plugin: the rule elsewhere
        pass
    return Scheduler.ended_before_kill


def _started(reader: WorkdirReader, folder: str, record: dict[str, Any]) -> bool:
    """Whether a job recorded as submitted has started (the run only journals submission)."""
    from ..schedulers.local import live_local_jid

    if os.path.exists(os.path.join(reader.path, folder, "job.started")):
        return True
    return bool(record["jid"]) and live_local_jid(record["jid"])


def show(
    reader: WorkdirReader,
    states: set[str],
    every: bool,
    as_json: bool,
    out: TextIO,
    params: Mapping[str, list[str]] | None = None,
) -> None:
    rows, holder = collect(reader)
    everyone, total = rows, len(rows)
    if states:
        rows = [r for r in rows if r.status in states]
    if params:  # parameters are in the specs: parsed only for a filter or a row shown
        specs = reader.specs([row.folder for row in rows])
        rows = [r for r, spec in zip(rows, specs, strict=True) if matches(_params(spec), params)]
        if not rows:
            # Every job's parameters, not only those of the --state chosen: with no job in
            # that state, each name given was said to be a typo.
            _say_unknown(params, reader.specs([row.folder for row in everyone]))
    if as_json:
        root = str(reader.path)
        for start in range(0, len(rows), 1000):  # bounded memory, few writes
            chunk = rows[start : start + 1000]
            specs = reader.specs([row.folder for row in chunk])
            out.write("".join(_json_line(root, *pair) for pair in zip(chunk, specs, strict=True)))
        return
    _summary(reader, rows, holder, out, total)
    if every or states or params:
        _columns(reader, rows, out)
        return
    attention = [r for r in rows if r.status in ATTENTION]
    _columns(reader, attention[:MAX_ROWS], out)
    if len(attention) > MAX_ROWS:
        out.write(
            f"... and {len(attention) - MAX_ROWS:,} more: "
            f"xqueue status {printable(str(reader.path))} --state {','.join(ATTENTION)}\n"
        )


def _say_unknown(params: Mapping[str, list[str]], specs: Sequence[dict[str, Any] | None]) -> None:
    """Nothing matched: say which names no job has (a typo matches nothing, silently)."""
    given = [_params(spec) for spec in specs]
    known = sorted({name for p in given if isinstance(p, Mapping) for name in p})
    unknown = [name for name in params if name not in known]
    if unknown:
        have = ", ".join(known) if known else "none: no job was fed params"
        sys.stderr.write(
            f"xqueue: no job has the parameter(s) {', '.join(map(repr, unknown))}"
            f"{did_you_mean(unknown[0], known)}; "
            f"the parameters are: {have}\n"
        )


def _summary(
    reader: WorkdirReader, rows: Sequence[Row], holder: str | None, out: TextIO, total: int
) -> None:
    """The header and the counts of ``rows``: those ``--state``/``--param`` chose, of the
    ``total`` in the workdir."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    run = f"a run is in progress (pid {holder})" if holder else "no run in progress"
    shown = f"{len(rows):,} job(s)" if len(rows) == total else f"{len(rows):,} of {total:,} jobs"
    out.write(f"{printable(str(reader.path))}: {shown}, {run}\n")
    tally = ", ".join(f"{n:,} {s}" for s, n in sorted(counts.items()))
    out.write(printable(tally) or "no jobs")  # a state is whatever a record says
    out.write("\n")
    unwatched = sum(1 for row in rows if row.record and row.record.get("ended_unwatched"))
    unretried = sum(  # failed, as recorded retrying: their run is gone
        1 for row in rows if row.status == FAILED and (row.record or {}).get("status") == RETRYING
    )
    if unwatched:
        out.write(
            f"{unwatched:,} job(s) ended after their run was gone (their return codes are "
            "counted above): the next run on this workdir records them\n"
        )
    if unretried:
        out.write(
            f"{unretried:,} failed job(s) were to be retried by a run that is gone (counted "
            "as failed above): a new run on this workdir runs them again\n"
        )
    if counts.get(ORPHANED):
        out.write(
            f"{counts[ORPHANED]:,} job(s) were left submitting, submitted or running by a run "
            "that is gone: a new run on this workdir re-adopts those still running and reruns "
            "the rest\n"
        )


def _cells(row: Row, spec: dict[str, Any] | None) -> tuple[str, ...]:
    spec, record = spec or {}, row.record or {}
    name = clip(printable(str(spec.get("name", row.folder))), _NAME_WIDTH)
    return (
        str(job_index(row.folder)),
        name,
        printable(status_text(row.status, _text_or_none(record.get("failure")))),
        str(record.get("attempt") or "-"),
        rc_text(record.get("rc")),
        printable(record.get("jid") or "-"),
        printable(record.get("reason") or ""),
    )


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _columns(reader: WorkdirReader, rows: Sequence[Row], out: TextIO) -> None:
    if not rows:
        return
    table: list[tuple[str, ...]] = [("#", "job", "status", "attempt", "rc", "id", "reason")]
    specs = reader.specs([row.folder for row in rows])
    table += [_cells(row, spec) for row, spec in zip(rows, specs, strict=True)]
    if any(_params(spec) for spec in specs):  # a column of their own only when fed some
        cells = [printable(_params_text(_params(spec))) for spec in specs]
        table = [(*line[:-1], param, line[-1]) for line, param in zip(table, ["params", *cells])]
    widths = [max(width(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        padded = [pad(cell, w) for cell, w in zip(line, widths, strict=False)]
        out.write("  ".join([*padded, line[-1]]).rstrip() + "\n")


def _params(spec: dict[str, Any] | None) -> Any:
    return (spec or {}).get("params")


def _params_text(params: Any) -> str:
    if not isinstance(params, Mapping):
        return "-" if params is None else json.dumps(params)
    return " ".join(
        f"{k}={v}" if isinstance(v, str) else f"{k}={json.dumps(v)}" for k, v in params.items()
    )


def _json_line(root: str, row: Row, spec: dict[str, Any] | None) -> str:
    """One job for scripts: its spec, the derived ``status``, and ``state``, the record
    (its status says running once a submitted job has started, as a live run knows)."""
    state = row.record
    if state is not None and row.status == RUNNING:
        state = {**state, "status": row.status}
    line = {**(spec or {}), "folder": f"{root}/{row.folder}", "status": row.status, "state": state}
    return json.dumps(line) + "\n"


def run(
    workdir: str, states: Sequence[str], every: bool, as_json: bool, params: Sequence[str] = ()
) -> None:
    """The command: raises XqueueError for what the user must fix."""
    check_workdir(workdir)
    wanted = parse_filters(params)
    show(WorkdirReader(workdir), parse_states(states), every, as_json, sys.stdout, wanted)
    sys.stdout.flush()  # inside the caller's BrokenPipeError handling, not at exit
