"""Reading a workdir's files without trusting them.

What is in a workdir may have been torn by a crash, edited by hand or planted by another
user, and ``xqueue status`` reads workdirs it did not write. So every reader here:

- opens with ``O_NOFOLLOW``: a link where xqueue keeps a plain file is refused, never
  followed (xqueue never makes one, so someone planted it);
- never writes, so a read-only workdir, or someone else's, can be inspected;
- treats garbage *content* (invalid UTF-8, JSON that is not an object, fields of the
  wrong type) as no record, with a logged warning: the job then counts as not finished
  and a new run runs it again, which is safe;
- turns a file that cannot be read at all (a directory, a link, no permission) into a
  one-line ``WorkdirError`` that names it and says what to do: guessing there could
  hide a real problem.

A job's records come from two places: the append-only ``journal.jsonl`` (one JSON object
per line; a folder's newest line wins) and the job's own ``job.status`` (its final
record). The newer of the two by ``time`` wins. A *final* record found in the journal is
trusted without opening ``job.status``: once final records are journaled, that makes a
summary one file read instead of one per job.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import WorkdirError
from .job import SPEC_FILE, STATUS_FILE

log = logging.getLogger("xqueue.workdir")

LOCK_FILE = ".lock"
JOURNAL_FILE = "journal.jsonl"
FINAL_STATES = frozenset({"finished", "failed", "killed", "skipped"})

# O_NONBLOCK: opening a planted FIFO must not hang the reader (it reads as empty).
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CHUNK = 1 << 16


def file_error(path: str | os.PathLike[str], exc: OSError, doing: str = "read") -> WorkdirError:
    """A one-line error for a workdir file xqueue cannot use, saying what to do about it."""
    if exc.errno == errno.ELOOP:
        return WorkdirError(
            f"{os.fspath(path)!r} is a symbolic link, where xqueue only ever writes plain "
            "files: someone else put it there; remove it and check who can write to the workdir"
        )
    if exc.errno == errno.EISDIR:
        return WorkdirError(
            f"{os.fspath(path)!r} is a directory where xqueue keeps a file; move it away"
        )
    return WorkdirError(
        f"cannot {doing} {os.fspath(path)!r}: {exc.strerror or exc}; "
        "fix its permissions or use another workdir"
    )


def read_bytes(path: str | os.PathLike[str]) -> bytes | None:
    """The content of a file in the workdir; None if there is none."""
    try:
        fd = os.open(path, READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise file_error(path, exc) from None
    try:
        data = os.read(fd, _CHUNK)
        if len(data) == _CHUNK:  # rare: state files are a few hundred bytes
            parts = [data]
            while chunk := os.read(fd, _CHUNK):
                parts.append(chunk)
            data = b"".join(parts)
        return data
    except OSError as exc:
        raise file_error(path, exc) from None
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike[str]) -> str | None:
    """A file's text; bytes that are not UTF-8 become U+FFFD, so a torn file never
    matches what xqueue would write (and is rewritten) instead of raising."""
    data = read_bytes(path)
    return None if data is None else data.decode("utf-8", errors="replace")


def parse_object(data: bytes) -> dict[str, Any] | None:
    """A JSON object, or None for anything else (torn, not UTF-8, a list, absurdly deep)."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    data = read_bytes(path)
    return None if not data else parse_object(data)


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def clean_record(value: dict[str, Any]) -> dict[str, Any] | None:
    """The record with every field the engine reads of the type it expects, or None
    without a status. Unknown fields are kept: a newer xqueue may have written them."""
    status = value.get("status")
    if not isinstance(status, str) or not status:
        return None
    when, jid, reason = value.get("time"), value.get("jid"), value.get("reason")
    record = dict(value)
    record["attempt"] = _int(value.get("attempt"))
    record["rc"] = _int(value.get("rc"))
    record["jid"] = str(jid) if isinstance(jid, (str, int)) and not isinstance(jid, bool) else None
    record["reason"] = reason if isinstance(reason, str) else ""
    record["time"] = (
        float(when)
        if isinstance(when, (int, float)) and not isinstance(when, bool) and math.isfinite(when)
        else 0.0
    )
    return record


def read_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A job's ``job.status``: its record, or None (missing, or garbage with a warning)."""
    data = read_bytes(path)
    if data is None:
        return None
    value = parse_object(data)
    record = None if value is None else clean_record(value)
    if record is None:
        log.warning(
            "ignoring %s: not an xqueue record (torn or edited); the job counts as not finished",
            os.fspath(path),
        )
    return record


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


def parse_journal(data: bytes, path: str) -> dict[str, dict[str, Any]]:
    """The newest record of each job folder in a journal's lines.

    A line that is not a record is skipped with one warning for the file; a torn last
    line (no newline: a crash mid-write) is expected and only logged at info level.
    """
    records: dict[str, dict[str, Any]] = {}
    lines = data.split(b"\n")
    last = lines.pop()  # empty unless the last line was torn
    bad = [n for n, line in enumerate(lines, 1) if line.strip() and not _take(records, line)]
    if last.strip() and not _take(records, last):
        log.info("%s: ignoring its torn last line (a run stopped mid-write)", path)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        log.warning(
            "%s: ignoring %d line(s) that are not xqueue records (line %s); "
            "those jobs fall back to their job.status files",
            path,
            len(bad),
            shown,
        )
    return records


def _take(records: dict[str, dict[str, Any]], line: bytes) -> bool:
    entry = parse_object(line)
    if entry is None:
        return False
    folder = entry.pop("dir", None)
    if not isinstance(folder, str) or not _plain_name(folder):
        return False
    record = clean_record(entry)
    if record is None:
        return False
    old = records.get(folder)
    if old is None or record["time"] >= old["time"]:
        records[folder] = record
    return True


def job_index(name: str) -> int | None:
    """The index in a job folder's name (``<index>-<slug>``), None for other entries."""
    head, sep, _ = name.partition("-")
    if sep and head.isascii() and head.isdigit() and ".replaced-" not in name:
        return int(head)
    return None


class WorkdirReader:
    """A read-only view of a workdir: what ``xqueue status`` and a resuming run read.

    It never creates, writes or locks anything for longer than a probe, so it works on a
    read-only mount and on another user's workdir.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self._journal: dict[str, dict[str, Any]] | None = None

    def journal(self) -> dict[str, dict[str, Any]]:
        """The newest journal record of each job folder, by folder name (read once)."""
        if self._journal is None:
            path = self.path / JOURNAL_FILE
            data = _read_regular(path)
            self._journal = {} if data is None else parse_journal(data, str(path))
        return self._journal

    def last_record(self, folder: str) -> dict[str, Any] | None:
        """The newer of a folder's journal record and its ``job.status``."""
        logged = self.journal().get(os.path.basename(folder))
        if logged is not None and logged["status"] in FINAL_STATES:
            return logged
        final = read_record(os.path.join(self.path, folder, STATUS_FILE))
        if final is None or (logged is not None and logged["time"] > final["time"]):
            return logged
        return final

    def folders(self) -> list[str]:
        """The names of the job folders, in index order (links and stray entries left out)."""
        found = []
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    index = job_index(entry.name)
                    if index is not None and entry.is_dir(follow_symlinks=False):
                        found.append((index, entry.name))
        except OSError as exc:
            raise file_error(self.path, exc, "list") from None
        found.sort()
        return [name for _, name in found]

    def spec(self, folder: str) -> dict[str, Any] | None:
        """What the job is (``job.json``); None when missing or unreadable as JSON."""
        return read_json(os.path.join(self.path, folder, SPEC_FILE))

    def iter_records(self) -> Iterator[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
        """(folder path, spec, record) for every job folder, in index order."""
        for name in self.folders():
            yield str(self.path / name), self.spec(name), self.last_record(name)

    def controller(self) -> str | None:
        """The pid (as recorded) of the run holding the workdir's lock, None if no run does.

        A shared, non-blocking flock on a read-only descriptor tests the lock without
        needing write access; the run's own lock attempt retries briefly, so this probe
        never makes a starting run fail.
        """
        try:
            fd = os.open(self.path / LOCK_FILE, READ_FLAGS)
        except OSError:
            return None  # no lock file, or one no run could have locked (a link)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", errors="replace").strip()
                return holder if holder.isdigit() else "unknown"
            except OSError:
                return None
            return None  # closing the descriptor releases the probe's lock
        finally:
            os.close(fd)


def _read_regular(path: Path) -> bytes | None:
    """A whole file that must be a regular file (the journal): anything else is an error."""
    try:
        fd = os.open(path, READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise file_error(path, exc) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise file_error(path, IsADirectoryError(errno.EISDIR, "Is a directory"))
        if not stat.S_ISREG(info.st_mode):
            raise WorkdirError(f"{str(path)!r} is not a regular file; move it away")
        parts = []
        while chunk := os.read(fd, max(info.st_size, _CHUNK)):
            parts.append(chunk)
        return b"".join(parts)
    except OSError as exc:
        raise file_error(path, exc) from None
    finally:
        os.close(fd)
