"""The workdir's index of succeeded jobs (``successes.idx``): a resume's shortcut.

A resumed run must tell, for every job fed, whether an earlier run of the same job
succeeded. The journal and ``specs.jsonl`` say so, but reading them means parsing each
job's newest record and hashing each spec line: for a million jobs, seconds of work
spread over every ``feed()``. A run that ends writes this index instead, so the next one
looks each job up by its index in one file read beforehand:

- a header line, JSON: the format, the number of entries, and what the index was made
  from: the identity, size and modification time of ``journal.jsonl`` and
  ``specs.jsonl``, and a fingerprint of the job folders' names (their count and a
  checksum of each name);
- then one 20-byte entry per job index: the digest of the job's spec (``records.digest``,
  as a resume compares specs) and the attempt that succeeded (little-endian, 0 for an
  index the index does not vouch for).

It vouches only for a job whose newest journal record is a success with nothing else a
resume reads in it (no cache key, no grown resources) and whose folder was there. It is
used only while every input it was made from is exactly as it was: the journal and
``specs.jsonl`` are append-only, so any record written since changes their size, and
any folder made, removed or renamed (by a run, or by hand to run a job again) changes
the fingerprint. Otherwise, or if the file is torn or unreadable, it is ignored and the
resume reads the journal as it always did, so a stale index can cost time, never a job.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import zlib
from collections.abc import Sequence, Set
from typing import TYPE_CHECKING, Any

from ._files import READ_FLAGS
from .records import JOURNAL_FILE, SPECS_FILE, digest
from .states import JobStatus

if TYPE_CHECKING:
    from .job import Job

log = logging.getLogger("xqueue.workdir")

SUCCESSES_FILE = "successes.idx"
FORMAT = 1
_DIGEST = 16
_ENTRY = _DIGEST + 4
_MAX_HEADER = 4096
_NONE = bytes(4)


def _file_id(path: str) -> list[int]:
    """Opened, not just looked at: on NFS an open fetches the file's current attributes
    (close-to-open), where a stat may answer from the client's cache."""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return []
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def fingerprint(names: Sequence[str]) -> list[int]:
    """The count and a checksum of the job folders' names (those that start with a digit:
    every other name xqueue keeps at the top of a workdir starts with a letter or dot)."""
    folders = [name.encode("utf-8", "surrogateescape") for name in names if name[:1].isdigit()]
    return [len(folders), sum(map(zlib.crc32, folders))]


def _records(root: str) -> dict[str, Any]:
    journal, specs = f"{root}/{JOURNAL_FILE}", f"{root}/{SPECS_FILE}"
    return {"journal": _file_id(journal), "specs": _file_id(specs)}


class Successes:
    """A loaded, current index: ``attempt`` answers a job's lookup."""

    def __init__(self, entries: bytes, made_from: dict[str, Any]) -> None:
        self._entries = entries
        self._count = len(entries) // _ENTRY
        self.made_from = made_from  # the header's inputs: journal, specs, folders
        self.hits = 0  # jobs it vouched for

    def attempt(self, job: Job, spec: str) -> int:
        """The attempt of ``job`` (with spec text ``spec``) that succeeded, or 0 if the
        index does not vouch for that job."""
        index = job.index
        if index >= self._count:
            return 0
        # Compared in place (startswith at an offset): a resume asks this of every job,
        # and each slice was a new bytes object.
        at = index * _ENTRY
        entries = self._entries
        if entries.startswith(_NONE, at + _DIGEST):
            return 0
        if not entries.startswith(digest(spec.encode()), at):
            return 0
        self.hits += 1
        return int.from_bytes(entries[at + _DIGEST : at + _ENTRY], "little")

    @property
    def entries(self) -> bytes:
        return self._entries


def load(root: str, listed: list[tuple[str, ...]] | None = None) -> Successes | None:
    """The workdir's index if it is current, else None (no file, torn, or made from other
    inputs than the workdir has now). Blocking: it lists the workdir. The listing, if
    it made one, is appended to ``listed``: a caller that needs the workdir's names too
    (a job the index does not vouch for) then makes no second pass over a million."""
    path = f"{root}/{SUCCESSES_FILE}"
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                return None
            header = file.readline(_MAX_HEADER)
            entries = file.read()
        meta = json.loads(header)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            return None
        if len(entries) != meta["jobs"] * _ENTRY:
            return None
        if {"journal": meta["journal"], "specs": meta["specs"]} != _records(root):
            return None  # a record written since (or the files replaced)
        names = tuple(os.listdir(root))  # a tuple of strings: left out of the GC's walks
        if listed is not None:
            listed.append(names)
        if meta["folders"] != fingerprint(names):
            return None  # a folder made, removed or renamed since
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Successes(entries, {k: meta[k] for k in ("journal", "specs", "folders")})


def vouched(job: Job) -> bool:
    """Whether a job's newest record, as this run leaves it, is a plain success: what a
    resume would skip with nothing else from the record."""
    return (
        job.status is JobStatus.FINISHED
        and job.rc == 0
        and job.attempt > 0
        and job.cache_key is None
        and not job._grown
        and bool(job.dir)
    )


def save(
    root: str, count: int, fresh: Sequence[Job], unvouched: Set[Job], previous: Successes | None
) -> None:
    """Write the index of a workdir whose queue has ``count`` jobs, as a run ends, its
    records all in the journal.

    ``fresh``: the jobs whose state the run knows to be current, those fed or ended
    while it held the workdir (a job of an earlier run of the same queue may have been
    run again since by another controller); ``unvouched``: those of them whose newest
    record has more than a plain success (settled from a success under a cache key).
    Entries of the other indices are those of ``previous``, the index read under this
    hold, if no folder changed meanwhile; none otherwise. Nothing is written if
    ``previous`` is still current and vouched for every fresh success. Written through
    a file of another name, renamed over the old one, so a reader finds the old index
    or the new one whole."""
    try:
        _save(root, count, fresh, unvouched, previous)
    except OSError as exc:  # the run's outcome stands; the next resume reads the journal
        log.info("could not write %s/%s: %s", root, SUCCESSES_FILE, exc)


def _save(
    root: str, count: int, fresh: Sequence[Job], unvouched: Set[Job], previous: Successes | None
) -> None:
    def plain(job: Job) -> bool:
        return vouched(job) and job not in unvouched

    records = _records(root)
    if (
        previous is not None
        and all(previous.made_from[k] == v for k, v in records.items())
        and (previous.hits == len(fresh) or previous.hits == sum(map(plain, fresh)))
    ):
        # Nothing recorded since it was read, and no success it did not vouch for: it is
        # as good as a new one, or, if a folder changed meanwhile, the next run sees that.
        return
    names = os.listdir(root)
    made_from = {**records, "folders": fingerprint(names)}
    if previous is not None and previous.made_from["folders"] == made_from["folders"]:
        entries = bytearray(previous.entries)  # untouched since it was read
    else:
        entries = bytearray()
    if len(entries) < count * _ENTRY:
        entries += bytes(count * _ENTRY - len(entries))
    present = set(names)
    from .workdir import job_spec  # imported here: workdir imports this module

    for job in fresh:
        at = job.index * _ENTRY
        if plain(job) and os.path.basename(job.dir) in present:
            entries[at : at + _DIGEST] = digest(job_spec(job).encode())
            entries[at + _DIGEST : at + _ENTRY] = min(job.attempt, 0xFFFFFFFF).to_bytes(4, "little")
        else:
            entries[at : at + _ENTRY] = bytes(_ENTRY)
    meta = {"format": FORMAT, "jobs": len(entries) // _ENTRY, **made_from}
    # One name, under the run's lock: a run killed while writing leaves one file, which
    # the next one's overwrites (O_NOFOLLOW: never through a link planted there).
    temp = f"{root}/.{SUCCESSES_FILE}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
    fd = os.open(temp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(json.dumps(meta).encode() + b"\n")
            file.write(entries)
        os.replace(temp, f"{root}/{SUCCESSES_FILE}")
    except BaseException:
        os.unlink(temp)
        raise
