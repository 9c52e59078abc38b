"""Tables printed after a run and by ``xqueue status``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

from ..job import Job
from ..states import JobStatus

MAX_ROWS = 50


def failures_table(jobs: Iterable[Job]) -> Table | None:
    bad = [j for j in jobs if j.status in (JobStatus.FAILED, JobStatus.KILLED)]
    if not bad:
        return None
    table = Table(title=f"{len(bad)} job(s) did not succeed", title_style="bold red")
    for col in ("#", "job", "status", "rc", "reason", "stderr"):
        table.add_column(col, overflow="fold")
    for job in bad[:MAX_ROWS]:
        table.add_row(
            str(job.index),
            job.name,
            job.status.value,
            "-" if job.rc is None else str(job.rc),
            job.reason or _last_line(job.stderr_path),
            job.stderr_path,
        )
    if len(bad) > MAX_ROWS:
        table.caption = f"... and {len(bad) - MAX_ROWS} more"
    return table


def _last_line(path: str, limit: int = 120) -> str:
    """The last line of a job's stderr: usually the reason it failed."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 4096))
            lines = fh.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""


def summary_line(counts: dict[str, int], total: int, elapsed: float) -> str:
    parts = ", ".join(f"{n:,} {state}" for state, n in sorted(counts.items()))
    return f"{total:,} job(s) in {elapsed:,.1f}s: {parts or 'nothing to do'}"


def status_table(rows: Iterable[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]) -> Table:
    table = Table()
    for col in ("#", "job", "status", "attempt", "rc", "id", "reason"):
        table.add_column(col, overflow="fold")
    for folder, spec, record in rows:
        spec, record = spec or {}, record or {}
        table.add_row(
            str(spec.get("index", "?")),
            str(spec.get("name", folder)),
            str(record.get("status", "not submitted")),
            str(record.get("attempt") or "-"),
            "-" if record.get("rc") is None else str(record["rc"]),
            str(record.get("jid") or "-"),
            str(record.get("reason") or ""),
        )
    return table


def print_table(console: Console, table: Table | None) -> None:
    if table is not None:
        console.print(table)
