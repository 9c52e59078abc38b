"""``xqueue logs WORKDIR JOB``: a job's output, as it was written, or as it is written.

The output is the job's own bytes, passed on unchanged like ``cat`` would (it is not
xqueue's to escape). The file is read with the workdir's reader rules: no link
followed, nothing but a plain file read. The attempt is the latest unless ``--attempt``
says which: every attempt keeps its own ``job.<n>.stdout`` and ``job.<n>.stderr``.

``--follow`` prints what comes while the attempt runs and stops once it has ended: its
return code file appears, or the journal records the job final (killed, say) or a later
attempt, or no run holds the workdir any more. A file emptied meanwhile is read again
from its start. Waiting costs a ``pread`` of the output and a ``stat`` of the return code
every ``POLL`` seconds, and a read of what was appended to the journal.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from typing import Any, BinaryIO

from .._files import file_error, open_to_read
from ..errors import XqueueError
from ..job import RC, STDERR, STDOUT, attempt_file
from ..records import FINAL_STATES, JOURNAL_FILE, WorkdirReader, parse_object
from .jobs import check_workdir, label, resolve
from .tail import Tail

POLL = 0.2
CONTROLLER_CHECK = 1.0
CHUNK = 1 << 20


def latest_attempt(reader: WorkdirReader, folder: str) -> int:
    """The job's last attempt: as recorded, or the highest with files (1 before any)."""
    record = reader.record_of(folder) or {}
    recorded = record.get("attempt")
    best: int = recorded if type(recorded) is int else 0
    try:
        names = os.listdir(reader.path / folder)
    except OSError as exc:
        raise file_error(reader.path / folder, exc, "list") from None
    for name in names:
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "job" and parts[1].isdigit():
            best = max(best, int(parts[1]))
    return max(best, 1)


def _open(path: str) -> int | None:
    fd = open_to_read(path)
    if fd is None:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise XqueueError(f"{path!r} is not a plain file; xqueue never makes anything else")
    return fd


class _Output:
    """The output file, read from where the last read stopped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.offset = 0

    def copy(self, out: BinaryIO) -> bool:
        """Write what is new to ``out``; True if anything was."""
        if self.fd is None:
            self.fd = _open(self.path)
            if self.fd is None:
                return False
        if os.fstat(self.fd).st_size < self.offset:
            self.offset = 0  # emptied (the attempt started over): from its start again
        wrote = False
        while data := os.pread(self.fd, CHUNK, self.offset):
            out.write(data)
            self.offset += len(data)
            wrote = True
        if wrote:
            out.flush()
        return wrote

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _AttemptEnd:
    """Whether an attempt has ended, from its rc file and the journal's new lines."""

    def __init__(self, reader: WorkdirReader, folder: str, attempt: int) -> None:
        self.reader = reader
        self.folder = folder
        self.attempt = attempt
        self.rc = str(reader.path / folder / attempt_file(RC, attempt))
        self.journal = Tail(str(reader.path / JOURNAL_FILE))
        self.tag = f'"dir": "{folder}"}}'.encode()
        self.ended = False
        self._checked = 0.0
        self.nobody = False  # no run holds the workdir: nothing will change it any more

    def check(self, now: float) -> bool:
        if os.path.exists(self.rc):
            self.ended = True
        for line in self.journal.poll():
            if isinstance(line, bytes) and line.endswith(self.tag):
                self._record(parse_object(line))
        if not self.ended and now - self._checked >= CONTROLLER_CHECK:
            self._checked = now
            self.nobody = self.reader.controller() is None
        return self.ended or self.nobody

    def _record(self, record: dict[str, Any] | None) -> None:
        if record is None:
            return
        attempt, status = record.get("attempt"), record.get("status")
        if type(attempt) is int and attempt > self.attempt:
            self.ended = True  # a later attempt began
        elif type(attempt) is int and attempt < self.attempt:
            return  # an earlier attempt's word (the journal is read from its start)
        elif status in FINAL_STATES or (status == "retrying" and attempt == self.attempt):
            self.ended = True


def run(workdir: str, job: str, stderr: bool, follow: bool, attempt: int | None) -> int:
    """The command; returns the exit code."""
    check_workdir(workdir)
    if attempt is not None and attempt < 1:
        raise XqueueError(f"--attempt counts from 1, not {attempt}")
    reader = WorkdirReader(workdir)
    (folder,) = resolve(reader, [job])
    n = attempt or latest_attempt(reader, folder)
    kind = STDERR if stderr else STDOUT
    output = _Output(str(reader.path / folder / attempt_file(kind, n)))
    out = sys.stdout.buffer
    try:
        if not follow:
            if not output.copy(out) and output.fd is None:
                raise XqueueError(
                    f"{label(reader, folder)} has no {kind} of attempt {n} "
                    "(not started yet, or no such attempt)"
                )
            return 0
        end = _AttemptEnd(reader, folder, n)
        while True:
            done = end.check(time.time())
            output.copy(out)
            if done:
                output.copy(out)  # the last words, written before the end was recorded
                break
            time.sleep(POLL)
        if end.nobody and not end.ended:
            # The attempt did not end, and nothing will end it: not a success, as for
            # ``status --follow`` of a run whose controller is gone.
            sys.stderr.write(f"xqueue: no run is in progress in {reader.path}; stopped following\n")
            return 1
        return 0
    finally:
        output.close()
        out.flush()
