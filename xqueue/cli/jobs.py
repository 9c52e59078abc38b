"""Naming a workdir and a job on the command line: a job by index, by name, or by its
folder's name."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from typing import Any

from .._files import file_error
from ..control import RUN_FILE
from ..errors import XqueueError
from ..events import EVENTS_FILE
from ..job import default_name
from ..records import EXITS_FILE, JOURNAL_FILE, LOCK_FILE, SPECS_FILE, WorkdirReader, job_index
from .text import printable

# What a run leaves in its workdir before or with its first job: one of them is there.
_MARKS = (LOCK_FILE, JOURNAL_FILE, SPECS_FILE, EVENTS_FILE, EXITS_FILE, RUN_FILE)


def no_workdir(workdir: str) -> str:
    """Why ``workdir`` is not a folder, said as it is: a job list given for a workdir
    (``xqueue status jobs.txt``) was told "no workdir at", as if nothing were there."""
    if os.path.islink(workdir):
        return f"no workdir at {workdir!r}: a link to {os.readlink(workdir)!r}, which is not one"
    if os.path.lexists(workdir):
        return f"{workdir!r} is a file, not a workdir (a folder a run used: `xqueue run -w`)"
    return f"no workdir at {workdir!r}"


def check_workdir(workdir: str) -> None:
    """Refuse a folder no run has used: ``xqueue cancel .`` said "no run is in progress"
    (and left a lock file) while a run went on in ``./.xqueue``, the default workdir."""
    if not os.path.isdir(workdir):
        raise XqueueError(no_workdir(workdir))
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
# A command's default name is the command cut to this many characters (job.default_name).
NAME_LIMIT = len(default_name("x" * 1000))


class _Jobs:
    """The workdir's jobs by name and by command, read once for all the refs given."""

    def __init__(self, reader: WorkdirReader) -> None:
        self.folders = reader.folders()
        self.specs = reader.specs(self.folders)
        self.by_name: dict[str, list[str]] = {}
        for folder, spec in zip(self.folders, self.specs, strict=True):
            name = (spec or {}).get("name")
            if isinstance(name, str):
                self.by_name.setdefault(name, []).append(folder)
        self._by_command: dict[str, list[str]] | None = None

    def by_command(self, command: str) -> list[str]:
        """The jobs whose command is ``command``: a shell line as it was given (ends
        stripped), or an argument list as ``shlex.join`` writes it (as ``xqueue sweep
        --dry-run`` shows it). Made only when a ref names no job: most never need it."""
        if self._by_command is None:
            self._by_command = {}
            for folder, spec in zip(self.folders, self.specs, strict=True):
                text = _command_text((spec or {}).get("command"))
                if text is not None:
                    self._by_command.setdefault(text, []).append(folder)
        return self._by_command.get(command.strip(), [])


def _command_text(command: Any) -> str | None:
    if isinstance(command, str):
        return command.strip()
    if isinstance(command, list) and command and all(isinstance(a, str) for a in command):
        return shlex.join(command)
    return None


def resolve(reader: WorkdirReader, refs: Sequence[str]) -> list[str]:
    """The folder of each job named in ``refs``, in order.

    A reference made of digits is an index; else it is a job's folder name, or its name
    (from its spec in ``specs.jsonl``). A name that several jobs share is refused with the list of
    their indices: an index is unambiguous. An index or a folder name is looked up
    without listing the workdir's folders, which a million jobs make slow; only a name
    needs them all.

    A ref that is no job's name may be a job's whole command: a job's name is its
    command cut to ``NAME_LIMIT`` characters, so ``xqueue cancel WD "<a long command>"``
    named nothing. It names the job whose command, as ``specs.jsonl`` records it, is
    exactly that (several: refused as a shared name is). Never a job whose name is only
    its first ``NAME_LIMIT`` characters: the rest may differ (``--seed=1`` and
    ``--seed=2`` cut alike), and ``cancel`` must not kill by a guess; the error names
    that job, and why, instead.
    """
    jobs: _Jobs | None = None
    found = []
    for ref in refs:
        if ref.isascii() and ref.isdigit():
            folder = reader.folder_of(int(ref))
            if folder is None:
                raise XqueueError(_no_folder(reader, int(ref)))
            found.append(folder)
            continue
        if jobs is None:
            jobs = _Jobs(reader)
        if reader.is_folder(ref):
            # Unless another job is named so: then which one is meant is a guess.
            named = [f for f in jobs.by_name.get(ref, []) if f != ref]
            if named:
                raise XqueueError(
                    f"{ref!r} is job {job_index(ref)}'s folder and the name of job(s) "
                    f"{_listed(named)}; name the one you mean by its index"
                )
            found.append(ref)
            continue
        matches, what = jobs.by_name.get(ref, []), "are named"
        if not matches:
            matches, what = jobs.by_command(ref), "have the command"
        if not matches:
            raise XqueueError(_unknown(reader, jobs, ref))
        if len(matches) > 1:
            raise XqueueError(
                f"{len(matches)} jobs {what} {ref!r}: jobs {_listed(matches)}; "
                "name one by its index"
            )
        found.append(matches[0])
    return found


def _no_folder(reader: WorkdirReader, index: int) -> str:
    """Why job ``index`` has no folder; one replaced by a link (or a file) is named, since
    "no job 0 (it has no jobs)" beside a journal that has it contradicted itself."""
    said = f"no job {index} in {reader.path} ({_extent(reader.folders())})"
    try:
        names = sorted(n for n in os.listdir(reader.path) if job_index(n) == index)
    except OSError:
        return said
    if not names:
        return said
    kind = "a symbolic link" if (reader.path / names[0]).is_symlink() else "not a folder"
    return (
        f"{said}; {printable(names[0])!r} there, the name of job {index}'s folder, is {kind}: "
        "xqueue never follows links in a workdir (nor reads what someone put in a "
        "folder's place); put the job's folder back under that name"
    )


def _unknown(reader: WorkdirReader, jobs: _Jobs, ref: str) -> str:
    """Why ``ref`` names no job; for a long ref whose first ``NAME_LIMIT`` characters
    are a job's name, which job that is and why it is not taken for it."""
    said = f"no job named {ref!r} in {reader.path} ({_extent(jobs.folders)})"
    cut = default_name(ref)
    if len(ref.strip()) <= NAME_LIMIT or cut not in jobs.by_name:
        return said
    matches = jobs.by_name[cut]
    why = f"a job's name is its command cut to {NAME_LIMIT} characters, and its first {NAME_LIMIT}"
    if len(matches) > 1:
        return (
            f"{said}; {why}, {cut!r}, are the name of jobs {_listed(matches)}, whose commands "
            "are others: name one by its index"
        )
    (folder,) = matches
    index = job_index(folder)
    command = _command_text((jobs.specs[jobs.folders.index(folder)] or {}).get("command"))
    if command is None:  # a spec without a command: nothing to tell them apart by
        return f"{said}; {why}, {cut!r}, are the name of job {index}: name it by its index"
    shown = command if len(command) <= 200 else f"{command[:200]}..."
    return (
        f"{said}; {why}, {cut!r}, are the name of job {index}, whose command is another, "
        f"{shown!r}: name it by its index, {index}, if it is the one"
    )


def _listed(folders: Sequence[str]) -> str:
    listed = ", ".join(str(job_index(f)) for f in folders[:_SHOWN])
    more = f" and {len(folders) - _SHOWN} more" if len(folders) > _SHOWN else ""
    return listed + more


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
