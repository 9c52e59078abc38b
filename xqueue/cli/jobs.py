"""Naming a workdir and a job on the command line: a job by index, by name, or by its
folder's name."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..control import RUN_FILE
from ..errors import XqueueError
from ..events import EVENTS_FILE
from ..records import (
    EXITS_FILE,
    JOURNAL_FILE,
    LOCK_FILE,
    SPECS_FILE,
    WorkdirReader,
    file_error,
    job_index,
)
from .text import printable

# What a run leaves in its workdir before or with its first job: one of them is there.
_MARKS = (LOCK_FILE, JOURNAL_FILE, SPECS_FILE, EVENTS_FILE, EXITS_FILE, RUN_FILE)


def check_workdir(workdir: str) -> None:
    """Refuse a folder no run has used: ``xqueue cancel .`` said "no run is in progress"
    (and left a lock file) while a run went on in ``./.xqueue``, the default workdir."""
    if not os.path.isdir(workdir):
        raise XqueueError(f"no workdir at {workdir!r}")
    try:
        names = os.listdir(workdir)
    except OSError as exc:
        raise file_error(workdir, exc, "list") from None
    if any(mark in names for mark in _MARKS) or any(job_index(n) is not None for n in names):
        return
    hint = ""
    if ".xqueue" in names:
        hint = f"; the default workdir is ./.xqueue: {os.path.join(workdir, '.xqueue')!r}"
    raise XqueueError(f"{workdir!r} is not an xqueue workdir: no run has used it{hint}")


_SHOWN = 10  # matches listed for an ambiguous name


def resolve(reader: WorkdirReader, refs: Sequence[str]) -> list[str]:
    """The folder of each job named in ``refs``, in order.

    A reference made of digits is an index; else it is a job's folder name, or its name
    (from its spec in ``specs.jsonl``). A name that several jobs share is refused with the list of
    their indices: an index is unambiguous. An index or a folder name is looked up
    without listing the workdir's folders, which a million jobs make slow; only a name
    needs them all.
    """
    folders: list[str] | None = None
    by_name: dict[str, list[str]] | None = None
    found = []
    for ref in refs:
        if ref.isascii() and ref.isdigit():
            folder = reader.folder_of(int(ref))
            if folder is None:
                raise XqueueError(f"no job {ref} in {reader.path} ({_extent(reader.folders())})")
            found.append(folder)
            continue
        if reader.is_folder(ref):
            found.append(ref)
            continue
        if folders is None or by_name is None:
            folders, by_name = reader.folders(), {}
            for folder, spec in zip(folders, reader.specs(folders), strict=True):
                name = (spec or {}).get("name")
                if isinstance(name, str):
                    by_name.setdefault(name, []).append(folder)
        matches = by_name.get(ref, [])
        if not matches:
            raise XqueueError(f"no job named {ref!r} in {reader.path} ({_extent(folders)})")
        if len(matches) > 1:
            listed = ", ".join(str(job_index(f)) for f in matches[:_SHOWN])
            more = f" and {len(matches) - _SHOWN} more" if len(matches) > _SHOWN else ""
            raise XqueueError(
                f"{len(matches)} jobs are named {ref!r}: jobs {listed}{more}; name one by its index"
            )
        found.append(matches[0])
    return found


def _extent(folders: Sequence[str]) -> str:
    if not folders:
        return "it has no jobs"
    return f"its jobs are {job_index(folders[0])} to {job_index(folders[-1])}"


def label(reader: WorkdirReader, folder: str) -> str:
    """``job 3 (its name)``, escaped, for messages."""
    spec = reader.spec(folder) or {}
    name = spec.get("name")
    shown = f" ({name})" if isinstance(name, str) else ""
    return printable(f"job {job_index(folder)}{shown}")
