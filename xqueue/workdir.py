"""The on-disk layout of a run: one folder per job, every state file written atomically.

Layout of ``<workdir>/<index>-<slug>/``:

- ``job.json``    what the job is (command, envs, resources); written once when fed
- ``job.status``  the job's final record (status, return code, reason, scheduler id)
- ``job.<n>.stdout`` / ``job.<n>.stderr``  attempt n's output (every attempt keeps its own)
- ``job.<n>.sh``  attempt n's wrapper script, for schedulers that need one
- ``job.<n>.started`` / ``job.<n>.rc``  written by that wrapper on the compute side

and ``<workdir>/journal.jsonl``: one line per submission (the job's scheduler id), so a
later run can re-adopt jobs still running; ``<workdir>/.lock`` is held during a run.

Small files are written with plain blocking calls on purpose: each takes microseconds
on a local disk, and a thread hop per write would cost more than the write. Every
write goes to a temporary name and is renamed into place, so a crash leaves either the
old record or the new one, never half of one. (No fsync: we guard against a crashed
controller, not against power loss.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import WorkdirError
from .job import RC, SPEC_FILE, STATUS_FILE, Job

_SLUG_MAX = 40
LOCK_FILE = ".lock"
JOURNAL_FILE = "journal.jsonl"


def slug(text: str) -> str:
    from slugify import slugify  # imported lazily: it pulls in unidecode tables

    return slugify(text, max_length=_SLUG_MAX, word_boundary=True) or "job"


def atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def read_json(path: str) -> dict[str, Any] | None:
    text = read_text(path)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_rc(job: Job) -> int | None:
    """The return code a wrapper script recorded, if it finished."""
    text = read_text(job.attempt_path(RC))
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def job_spec(job: Job) -> str:
    spec = {
        "index": job.index,
        "name": job.name,
        "command": job.command if isinstance(job.command, str) else list(job.command),
        "envs": job.envs,
        "resources": job.resources.to_dict() if job.resources else None,
    }
    return json.dumps(spec, sort_keys=True)


class Workdir:
    """The folder that holds every job's files for one queue."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".xqueue-write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise WorkdirError(
                f"workdir {str(self.path)!r} is not writable ({exc.strerror or exc}); "
                "pass workdir= a folder you can write to"
            ) from exc

        self._journal_fd: int | None = None
        self._journal: dict[str, dict[str, Any]] | None = None
        self._lock_fd: int | None = None

    # -- the run lock ---------------------------------------------------------------------
    def lock(self) -> None:
        """Take the workdir for this queue; a second controller on it would corrupt both.

        Taken by the first ``feed()`` (before any folder is touched, so a refused
        controller changes nothing) and held until the run ends; idempotent.
        """
        import fcntl

        if self._lock_fd is not None:
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirError(
                f"workdir {str(self.path)!r} is in use by another xqueue run (pid {holder}); "
                "wait for it to end or use another workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    # -- the journal ------------------------------------------------------------------------
    def _append_journal(self, line: str) -> None:
        """One write() per record: O_APPEND keeps concurrent lines whole, and a torn last
        line left by a crash is skipped when the journal is read."""
        if self._journal_fd is None:
            self._journal_fd = os.open(
                self.path / JOURNAL_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            )
        os.write(self._journal_fd, line.encode())

    def journal_records(self) -> dict[str, dict[str, Any]]:
        """The last journal record of each job folder (by folder name)."""
        if self._journal is None:
            self._journal = {}
            text = read_text(str(self.path / JOURNAL_FILE)) or ""
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                    self._journal[entry.pop("dir")] = entry
                except (ValueError, KeyError, AttributeError):
                    continue  # a line torn by a crash
        return self._journal

    def last_record(self, folder: str) -> dict[str, Any] | None:
        """The newer of a folder's status file and its last journal record."""
        final = read_json(os.path.join(folder, STATUS_FILE))
        logged = self.journal_records().get(os.path.basename(folder))
        if final is None or (logged and logged.get("time", 0) > final.get("time", 0)):
            return logged
        return final

    def last_attempt(self, job: Job) -> int:
        """The highest attempt number whose files exist in the job's folder (0 if none)."""
        best = 0
        try:
            names = os.listdir(job.dir)
        except OSError:
            return 0
        for name in names:
            parts = name.split(".")
            if len(parts) == 3 and parts[0] == "job" and parts[1].isdigit():
                best = max(best, int(parts[1]))
        return best

    def job_dir(self, job: Job) -> str:
        return os.path.join(self.path, f"{job.index}-{slug(job.name)}")

    def prepare(self, job: Job) -> dict[str, Any] | None:
        """Create the job's folder and return the last status record of an earlier run.

        None means a fresh folder. A folder left by an earlier run of the *same* job
        (same spec) is kept, so the engine can skip or re-adopt it; its record is ``{}``
        when that run died before recording anything (it may still have started the
        job). A folder whose spec differs belongs to another job that used this index:
        it is moved aside rather than overwritten.
        """
        job.dir = self.job_dir(job)
        spec = job_spec(job)
        try:
            os.mkdir(job.dir)
        except FileExistsError:
            if read_text(job.path(SPEC_FILE)) == spec:
                return self.last_record(job.dir) or {}
            os.replace(job.dir, f"{job.dir}.replaced-{time.time_ns()}")
            os.mkdir(job.dir)
        except OSError as exc:
            raise WorkdirError(f"cannot create job folder {job.dir!r}: {exc}") from exc
        # A brand-new folder: nobody reads it yet, so no temporary name is needed. A spec
        # torn by a crash only fails to match next time, and the job then runs afresh.
        with open(job.path(SPEC_FILE), "w", encoding="utf-8") as fh:
            fh.write(spec)
        return None

    def record(self, job: Job) -> None:
        """Persist the job's durable state.

        While the job is active (its scheduler id) the record goes to the workdir's
        append-only journal: the hot path of a run, one write() and no new file. Its
        final result goes to the job's own ``job.status``, written atomically.
        """
        record = {
            "status": job.status.value,
            "attempt": job.attempt,
            "jid": job.jid,
            "rc": job.rc,
            "reason": job.reason,
            "time": time.time(),
        }
        if job.status.is_final:
            atomic_write(job.path(STATUS_FILE), json.dumps(record))
        else:
            self._append_journal(self._journal_line(job, record))

    def record_many(self, jobs: list[Job]) -> None:
        """Journal the state of many active jobs in one write (the submission intents)."""
        if jobs:
            now = time.time()
            self._append_journal(
                "".join(
                    self._journal_line(
                        job, {"status": job.status.value, "attempt": job.attempt, "time": now}
                    )
                    for job in jobs
                )
            )

    @staticmethod
    def _journal_line(job: Job, record: dict[str, Any]) -> str:
        record["dir"] = os.path.basename(job.dir)
        return json.dumps(record) + "\n"

    def iter_records(self) -> Iterator[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
        """(folder, spec, status record) for every job folder, in index order."""
        entries = []
        for entry in os.scandir(self.path):
            head = entry.name.split("-", 1)[0]
            if entry.is_dir() and head.isdigit() and ".replaced-" not in entry.name:
                entries.append((int(head), entry.path))
        for _, folder in sorted(entries):
            yield folder, read_json(os.path.join(folder, SPEC_FILE)), self.last_record(folder)
