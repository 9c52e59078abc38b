"""The on-disk layout of a run: one folder per job, every state file written atomically.

A job folder, ``<workdir>/<index>-<slug>/``, holds only what the job itself writes:

- ``job.<n>.stdout`` / ``job.<n>.stderr``  attempt n's output (every attempt keeps its own)
- ``job.<n>.sh``  attempt n's wrapper script, for schedulers that need one
- ``job.<n>.started`` / ``job.<n>.rc``  written by that wrapper on the compute side
- ``call.pkl`` / ``job.<n>.result``  a Python call's pickle and attempt n's outcome (``calls``)

The controller's own records go to append-only files of the workdir, written a batch at
a time, so a job costs the controller no file of its own (creating a file on a disk, let
alone NFS, costs far more than appending a line):

- ``journal.jsonl``: every state worth keeping (the submission's intent and scheduler id,
  the final status, return code and reason): a later run skips, re-adopts or reruns
  each job from it;
- ``specs.jsonl``: what each job is (command, envs, resources), a line per folder made,
  written with the folder by the workdir's thread (older versions wrote ``job.json``
  into the folder, still read);
- ``exits.jsonl``: the return codes the local scheduler's shepherd reaped (older
  versions wrote ``job.<n>.rc``), the word of a job whose controller was gone.

``<workdir>/.lock`` is held during a run and names its controller (``pid@start``, see
``_identity``). A run also writes its event stream, ``events.jsonl`` (``events``), and
``run.json`` and takes kill requests in ``.control/`` (``control``), for ``xqueue status
--follow`` and ``xqueue cancel``.

A journal line is one ``write()`` to a file opened ``O_APPEND``, so concurrent writers
never interleave within a line and a crash leaves at most a torn last line, which readers
skip. (No fsync: we guard against a crashed controller, not against power loss.)

A workdir must not be usable against its user. Files are created without following
links (``O_NOFOLLOW``; temporary names are unpredictable and ``O_EXCL``), and a workdir
that another user owns or that every user can write to is refused unless the caller
opts in (``Workdir(path, trust=True)`` or ``XQUEUE_TRUST_WORKDIR=1``). Reading lives in
``records``: a read-only ``WorkdirReader`` that ``xqueue status`` uses without writing.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from json.encoder import encode_basestring_ascii as _quote
from pathlib import Path
from typing import Any

import anyio

from . import successes
from ._files import CREATE_FLAGS, file_error, unlink_quietly, write_new
from ._identity import own_identity, read_claim
from .errors import WorkdirError, XqueueError
from .job import RC, SPEC_FILE, Job
from .records import (
    DIR_TAIL,
    EXITS_FILE,
    JOURNAL_FILE,
    LOCK_FILE,
    SPEC_HEAD,
    SPECS_FILE,
    WorkdirReader,
    digest,
    job_index,
    read_code,
    read_json,
    read_text,
)
from .states import ACTIVE, ACTIVE_RECORDS, FINISHED_RECORD, JobStatus

__all__ = [
    "JOURNAL_FILE",
    "LOCK_FILE",
    "Workdir",
    "WorkdirReader",
    "open_output",
    "read_json",
    "read_rc",
    "read_text",
]

log = logging.getLogger("xqueue.workdir")

_SLUG_MAX = 40
# json.dumps(spec, sort_keys=True), without building an encoder per call (the same text).
_SPEC_ENCODER = json.JSONEncoder(sort_keys=True)
# Text that python-slugify only lowercases and splits at non-alphanumerics: no quote,
# no "&" (entities), no comma (between digits it is dropped), nothing beyond ASCII. It
# turns each run of the other characters into "-", then each run of dashes into one; so
# in one pass, each run of anything but a letter or digit becomes one "-". One
# ``translate`` does it (str.split then collapses the runs): letters to lower case, those
# characters to spaces, and any other character to a NUL, which sends the text to
# python-slugify itself.
_SPLIT_AT = " \t./:=_+@%^*()[]{}<>|;!?~#$-"
_SLUG_TABLE = str.maketrans(
    {
        i: chr(i).lower() if chr(i).isalnum() else " " if chr(i) in _SPLIT_AT else "\0"
        for i in range(128)
    }
)
_MAKER_DELAY = 0.05  # seconds the folder thread lets submissions go first
_MAKER_IDLE = 10.0  # seconds without work after which it ends
_MAKE_BATCH = 256  # folders made under one hold of the lock, and one specs.jsonl write
_FAILED = (JobStatus.FAILED, JobStatus.RETRYING)
# states.ACTIVE as a tuple: each record asks, and a tuple finds an enum member by its
# identity where a set calls Enum.__hash__, a Python function.
_ACTIVE = tuple(ACTIVE)
TRUST_ENV = "XQUEUE_TRUST_WORKDIR"


def slug(text: str) -> str:
    """A folder-name slug of a job's name: python-slugify's, always, since folders of
    earlier runs are found again by it. Plain ASCII names (the common case: commands
    and their arguments) skip its transliteration and entity passes, which leave such a
    name as it is; the tests compare the two on random text."""
    folded = text.translate(_SLUG_TABLE) if text.isascii() else "\0"
    if "\0" not in folded:
        plain = "-".join(folded.split())
        if len(plain) < _SLUG_MAX:
            return plain or "job"  # smart_truncate leaves it as it is
        from slugify import smart_truncate

        return smart_truncate(plain, _SLUG_MAX, True, "-") or "job"
    from slugify import slugify  # imported lazily: it pulls in unidecode tables

    return slugify(text, max_length=_SLUG_MAX, word_boundary=True) or "job"


_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # no room for a write


def _cannot_write(path: str | os.PathLike[str], exc: OSError) -> WorkdirError:
    fix = "make room" if exc.errno in _FULL else "fix the file system"
    return WorkdirError(
        f"cannot write {os.fspath(path)!r} ({exc.strerror or exc}): the run stops, leaving "
        f"its running jobs running, since their ends could not be recorded; {fix}, then "
        "run again on this workdir to pick them up"
    )


def open_plain(
    path: str | os.PathLike[str], flags: int, mode: int = 0o644, *, dir_fd: int | None = None
) -> int:
    """Open (creating) a file xqueue owns, refusing anything but a plain file of its own.

    Refused: a link (``O_NOFOLLOW``), a FIFO or device, and a file with a second hard
    link (whoever made it could read or damage the other name). Nothing is truncated
    before these checks pass; pass ``O_TRUNC`` in ``flags`` to have it emptied after.
    ``dir_fd``: ``path`` is a name in that folder (opened without following a link).
    """
    trunc = flags & os.O_TRUNC
    try:
        fd = os.open(path, (flags & ~os.O_TRUNC) | CREATE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        raise file_error(path, exc, "open") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refusal(path, NOT_PLAIN)
        if info.st_nlink > 1:
            raise refusal(path, HARD_LINK)
        if trunc and info.st_size:
            os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
    except OSError as exc:
        os.close(fd)
        raise file_error(path, exc, "open") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


# Why a file xqueue would write was refused, besides an errno (the shepherd's codes too).
HARD_LINK, NOT_PLAIN = -1, -2


def refusal(path: str | os.PathLike[str], code: int) -> WorkdirError:
    """The error for a file refused by ``open_plain``'s checks (or the local shepherd's,
    which makes each job's output files): ``code`` is an errno, ``HARD_LINK`` or
    ``NOT_PLAIN``."""
    if code in (HARD_LINK, NOT_PLAIN):
        kind = "a hard link to another file" if code == HARD_LINK else "not a plain file"
        return WorkdirError(
            f"{os.fspath(path)!r} is {kind}, which xqueue never makes: someone else put "
            "it there; remove it and check who can write to the workdir"
        )
    return file_error(path, OSError(code, os.strerror(code)), "open")


def open_output(path: str | os.PathLike[str]) -> int:
    """A descriptor for a job's stdout or stderr, emptied; the caller closes it.

    For a scheduler that hands the file to a child (``Popen(stdout=fd)``): a link or a
    hard link planted at the name cannot redirect the output into someone else's file.
    """
    return open_plain(path, os.O_WRONLY | os.O_TRUNC)


def check_trust(path: Path, trust: bool | None = None) -> None:
    """Refuse a workdir that another user can write to, unless the caller opts in.

    Whoever can write to the workdir can plant files and links in it. xqueue opens its
    own files without following links, but job scripts and compute-side wrappers write
    with the shell, and a planted spec decides what a resuming run executes.
    """
    if trust is None:
        trust = os.environ.get(TRUST_ENV, "") not in ("", "0")
    if trust:
        return
    info = path.stat()
    me = os.geteuid()
    if info.st_uid != me:
        why = f"it belongs to {_user(info.st_uid)}, not to you ({_user(me)})"
    elif info.st_mode & stat.S_IWOTH:
        mode = stat.S_IMODE(info.st_mode)
        why = f"every user can write to it (mode {mode:o}; chmod o-w fixes that)"
    else:
        return
    raise WorkdirError(
        f"workdir {str(path)!r} is not safe to run in: {why}, so someone else could plant "
        f"files there that redirect or replace the jobs'. Use a folder of your own, or set "
        f"{TRUST_ENV}=1 if you trust everyone who can write there"
    )


def _user(uid: int) -> str:
    import pwd

    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def read_rc(job: Job, attempt: int | None = None) -> int | None:
    """The return code a wrapper script recorded, if it finished (``Workdir.exit_code``
    also reads what the local shepherd recorded)."""
    return read_code(job.attempt_path(RC, attempt))


def recorded_exits(jobs: Iterable[Job]) -> set[Job]:
    """The jobs whose current attempt's wrapper has written its return code: ended on
    their own, whatever the backend still lists (a kill now would be recorded as their
    end). Blocking: a file read each."""
    return {job for job in jobs if job.dir and _rc_or_none(job) is not None}


def _rc_or_none(job: Job) -> int | None:
    """``read_rc``, with a file that cannot be read (a folder in its place, EACCES, a
    stale NFS handle) taken for none: one such job must not keep the others' kills."""
    try:
        return read_rc(job)
    except (OSError, WorkdirError):
        return None


def job_record(job: Job) -> dict[str, Any]:
    """A job's durable state as one record (a journal line; the older job.status file).

    ``after`` lists the indices of the jobs it runs after, only when there are some: it
    is what ``xqueue status`` can tell of the graph (a resumed run rebuilds the graph
    from its own feeds, not from here). ``failure`` is the class of a failed attempt;
    ``resources`` the request a retry policy grew (the spec keeps the one fed), so a
    resumed run goes on from it."""
    record: dict[str, Any] = {
        "status": job.status.value,
        "attempt": job.attempt,
        "jid": job.jid,
        "rc": job.rc,
        "reason": job.reason,
        "time": time.time(),
    }
    if job.after:
        record["after"] = [dep.index for dep in job.after]
    if job.failure is not None and job.status in _FAILED:
        record["failure"] = job.failure.value
    if job._grown and job.resources is not None:
        record["resources"] = job.resources.to_dict()
    if job.cache_key is not None:
        record["cache_key"] = job.cache_key
    if job.status in _ACTIVE and job._since:
        # When this attempt's submission was journaled, carried by every later record of
        # it: a run re-adopting it tells the attempt's exit line from an earlier start's.
        record["since"] = job._since
    return _with_claim(job, record)


def _with_claim(job: Job, record: dict[str, Any]) -> dict[str, Any]:
    """``claim``: the host, GPU ids and slot values the job's latest start was given, so
    ``xqueue status`` shows them and a run that re-adopts the job holds them again."""
    claim = job.claim.record() if job.claim is not None else None
    if claim is not None:
        record["claim"] = claim
    return record


def job_spec(job: Job) -> str:
    """What the job is, as the JSON text (keys sorted) its folder is known by: a resumed
    run compares it, so these bytes never change. A job with nothing but a command, the
    usual one, is put together by hand: the encoder costs four times more, and a resume
    pays it once a job (the tests compare the two on random jobs)."""
    command = job.command
    if job.envs is None and job.resources is None and not job.params:
        argv = _quote(command) if type(command) is str else f"[{', '.join(map(_quote, command))}]"
        return (
            f'{{"command": {argv}, "envs": null, "index": {job.index}, '
            f'"name": {_quote(job.name)}, "resources": null}}'
        )
    spec = {
        "index": job.index,
        "name": job.name,
        "command": job.command if isinstance(job.command, str) else list(job.command),
        "envs": job.envs,
        "resources": job.resources.to_dict() if job.resources else None,
    }
    if job.params:  # only when given: the spec, so the identity, of other jobs is unchanged
        spec["params"] = job.params
    return _SPEC_ENCODER.encode(spec)


def open_appending(path: str | os.PathLike[str]) -> int:
    """A workdir file opened for appending records, a line torn by a crash (or by a full
    disk) ended first: the next record starts on a line of its own. Glued to the torn
    one, it was lost with it: a spec that no longer matched ran a finished job again,
    an exit code the shepherd appended made a job that succeeded run again."""
    fd = open_plain(path, os.O_RDWR | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")
    except OSError as exc:
        os.close(fd)
        raise file_error(path, exc, "append to") from None
    return fd


class ReadsWanted(Exception):
    """``prepare(defer_reads=True)`` needs the listing and the records read first."""


class Workdir:
    """The folder that holds every job's files for one queue."""

    def __init__(self, path: str | os.PathLike[str], *, trust: bool | None = None) -> None:
        """Create (if needed) and check the folder; ``trust=True`` (or the environment
        variable ``XQUEUE_TRUST_WORKDIR=1``) accepts one that other users can write to."""
        if not os.fspath(path):  # Path("") is the current folder: not what anyone meant
            raise WorkdirError(
                "the workdir is an empty path; give a folder (workdir= in Python, -w on the "
                "command line)"
            )
        self.path = Path(path).absolute()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise self._not_a_folder() from None
        except OSError as exc:
            raise self._not_writable(exc) from exc
        check_trust(self.path, trust)
        try:  # an unpredictable O_EXCL name: a planted link cannot turn the probe into a write
            probe = self.path / f".xqueue-write-test-{os.urandom(6).hex()}"
            os.close(os.open(probe, os.O_WRONLY | os.O_EXCL | CREATE_FLAGS, 0o600))
            os.unlink(probe)
        except OSError as exc:
            raise self._not_writable(exc) from exc

        self.reader = WorkdirReader(self.path)
        self._root = str(self.path)
        self._journal_fd: int | None = None
        # The error of a write the workdir refused for want of room (a full disk, a quota)
        # or that the journal refused: from then on no submission may be journalled, and
        # other records are dropped (see ``_append_journal``).
        self.broken: WorkdirError | None = None
        # Records held back by ``hold_records`` until ``flush_records`` writes them.
        self._held: list[str] | None = None
        # Folder names in the workdir, listed once (under the lock, nobody else adds any),
        # so feeding a job that has no folder yet costs no file-system call at all.
        self._names: dict[str, None] | None = None
        # The listing the index's check made, kept for ``_names`` until that is made (the
        # first job the index does not vouch for) or this hold of the workdir ends.
        self._listed: list[tuple[str, ...]] = []
        # The index of succeeded jobs an earlier run left (``successes``), read at the
        # first feed; None if there is none that is current.
        self._successes: successes.Successes | None = None
        self._successes_read = False
        # Those names by job index, made only if a job is fed whose folder is not there.
        self._by_index: dict[int, list[str]] | None = None
        # Jobs fed without a folder yet, with their staged files. A thread of the
        # workdir's own makes them in the background, soon after feeding (so `xqueue
        # status`, `logs` and `cancel` see a fed job), and a submission makes whatever
        # of its batch is still missing first; the lock keeps the two apart. Before a
        # run (not ``making_ahead``) the thread waits for a pause in the feeding: a burst
        # of feeds would otherwise share the interpreter with it.
        self._unmade: dict[Job, Mapping[str, str] | None] = {}
        self._ahead = False
        self._making = threading.Lock()
        self._halted = False  # a stop: no more folders until the workdir is taken again
        self._maker: threading.Thread | None = None
        self._maker_lock = threading.Lock()
        self._wake = threading.Event()
        self._reuse: set[Job] = set()  # folders left without a spec: made, never used
        self._specs_fd: int | None = None
        self._lock_fd: int | None = None
        self._locking: anyio.Lock | None = None
        # Times the lock was taken: what a run learned before the current hold may be
        # stale (another controller may have used the workdir in between).
        self.lock_serial = 0

    def _not_a_folder(self) -> WorkdirError:
        """Something that is not a folder is where the workdir (or a folder above it) is."""
        path = self.path
        while not os.path.lexists(path) and path != path.parent:
            path = path.parent
        if path.is_symlink() and not path.exists():
            what = "is a symbolic link to nothing"
        else:
            what = "is a file, not a folder"
        where = "" if path == self.path else f" (on the way to workdir {str(self.path)!r})"
        return WorkdirError(
            f"{str(path)!r}{where} {what}; use another workdir (workdir= in Python, -w on the "
            "command line) or move it away"
        )

    def _not_writable(self, exc: OSError) -> WorkdirError:
        return WorkdirError(
            f"workdir {str(self.path)!r} is not writable ({exc.strerror or exc}); "
            "use a folder you can write to (workdir= in Python, -w on the command line)"
        )

    # -- the run lock ---------------------------------------------------------------------
    def lock(self, role: str = "") -> None:
        """Take the workdir for this queue; a second controller on it would corrupt both.

        Taken by the first ``feed()`` (before any folder is touched, so a refused
        controller changes nothing) and held until the run ends; idempotent. ``role``
        follows the identity in the lock file when the holder is not a run
        (``_identity.CANCELLING``).
        """
        if self._lock_fd is not None:
            return
        self._halted = False
        fd = open_plain(self.path / LOCK_FILE, os.O_RDWR)
        if not _flock_exclusive(fd):
            identity, cancel = read_claim(os.read(fd, 64).decode(errors="replace"))
            holder = identity.partition("@")[0]
            os.close(fd)
            # pid and start time: another host's or container's pid 1 is not this process.
            if identity == own_identity():
                raise WorkdirError(
                    f"workdir {str(self.path)!r} is taken by another Xqueue of this process "
                    "(one fed jobs holds it until its run ends or it is closed): wait for "
                    "its run, or `await q.aclose()` the one you no longer use (`async with "
                    "Xqueue(...)` closes it), before feeding another on the same workdir"
                ) from None
            if cancel:
                raise WorkdirError(
                    f"workdir {str(self.path)!r} is held by `xqueue cancel` (pid "
                    f"{holder or 'unknown'}), which is killing its jobs; try again when it ends"
                ) from None
            raise WorkdirError(
                f"workdir {str(self.path)!r} is in use by another xqueue run "
                f"(pid {holder or 'unknown'}); wait for it to end or use another workdir"
            ) from None
        os.ftruncate(fd, 0)
        # pid@start-time: `xqueue cancel` signals the controller only once it has made
        # sure that this is the process holding the lock (see _identity).
        os.write(fd, (f"{own_identity()} {role}" if role else own_identity()).encode())
        self._lock_fd = fd
        self.lock_serial += 1

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    async def lock_async(self) -> None:
        """``lock`` for async callers: in a worker thread, since a refusal is retried for a
        moment (``_flock_exclusive``) and the event loop must not sleep through it."""
        if self._lock_fd is not None:
            return
        if self._locking is None:
            self._locking = anyio.Lock()
        async with self._locking:  # two tasks feeding at once must not both open the file
            if self._lock_fd is None:
                await anyio.to_thread.run_sync(self._lock_and_read)

    def _lock_and_read(self) -> None:
        self.lock()
        self.read_ahead()

    def read_ahead(self) -> None:
        """Read, in the worker thread that took the lock, what the first ``prepare`` of a
        resume would otherwise read on the event loop (a million jobs' journal and specs
        took seconds there, with every other task of the loop waiting): the index of
        successes and, if it is not current, the listing and the records' indexes. With
        a current index, a job it does not vouch for still reads them at its feed: read
        ahead, they would be held for a resume that needs none of them. Blocking."""
        if self._successes_read:
            return
        self._successes_read = True
        self._successes = successes.load(self._root, self._listed)
        if self._successes is None:
            self.read_records()

    def read_records(self) -> None:
        """The workdir's listing and its records' indexes, which a job the index of
        successes does not vouch for needs (``prepare``), read once. Blocking: in a worker
        thread (``read_ahead``, or ``read_wanted`` when ``prepare`` raises ``ReadsWanted``),
        but for a tool's or test's ``prepare`` of its own."""
        if self._names is None:
            # A dict, not a set: a dict of strings is left out of the cycle collector's
            # walks, a set never is, and each full collection of a million-job resume
            # walked a million names.
            self._names = dict.fromkeys(
                self._listed.pop() if self._listed else os.listdir(self.path)
            )
        try:
            self.reader.read_for_resume()  # of files that may not be there: nothing read
        except (OSError, XqueueError):
            # A planted or unreadable record: the job whose feed reads it fails with it.
            self.reader = WorkdirReader(self.path)

    def read_wanted(self) -> None:
        """The read a ``prepare(defer_reads=True)`` that raised ``ReadsWanted`` waits for:
        the index of successes, then (for a job it does not vouch for) the records.
        Blocking: in a worker thread."""
        if self._successes_read:
            self.read_records()
        else:
            self.read_ahead()

    def save_successes(self, count: int, fresh: Sequence[Job], unvouched: Set[Job]) -> None:
        """A run's end, its records all written: the index of succeeded jobs the next
        resume reads instead of the journal (``successes.save``). Blocking: a worker
        thread."""
        if self.broken is None and not self._held:  # else some record is not written
            successes.save(self._root, count, fresh, unvouched, self._successes)

    def forget_reads(self) -> None:
        """Drop what was read of the workdir (its listing, its records, its index of
        successes): the workdir may have changed since (another controller, a pull)."""
        self._successes, self._successes_read = None, False
        self._names, self._by_index = None, None
        self._listed.clear()
        self.reader = WorkdirReader(self.path)

    def unlock(self) -> None:
        """The run's end: the lock released, the files closed. A refused write (``broken``)
        is forgotten: the next run tries again (the user may have made room), and opens
        the journal anew, ending a line the refused write tore. Another controller may
        change the workdir once it is unlocked: what was read of it is read again."""
        self.forget_reads()
        self.broken = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        with self._making:
            if self._specs_fd is not None:
                os.close(self._specs_fd)
                self._specs_fd = None

    # -- the journal ------------------------------------------------------------------------
    def _append_journal(self, lines: str) -> None:
        """One write() for the lines: O_APPEND keeps concurrent lines whole, and a torn
        last line left by a crash is skipped when the journal is read.

        A write the journal refuses (ENOSPC, EDQUOT, EIO) is a ``WorkdirError``, once: the
        engine then stops without killing the running jobs, whose kills it could not
        record (a later run would take their SIGTERM for their own failure); a later
        run picks them up as it does a dead controller's. Later records of this run are
        dropped: they would only be lines after a torn one, and the next run finds
        those ends as it finds a crashed run's."""
        if self.broken is not None:
            return
        if self._journal_fd is None:
            self._journal_fd = self._open_journal()
        view = memoryview(lines.encode())
        try:
            while view:  # a regular file takes it all at once, short of a full disk
                view = view[os.write(self._journal_fd, view) :]
        except OSError as exc:
            raise self._full(self.path / JOURNAL_FILE, exc) from exc

    def _full(self, path: str | os.PathLike[str], exc: OSError) -> WorkdirError:
        """The workdir's first refused write (``broken``), kept: one error for the run."""
        if self.broken is None:
            self.broken = _cannot_write(path, exc)
        return self.broken

    def hold_records(self) -> None:
        """Keep the records of ``record`` in memory until ``flush_records``.

        The engine holds them while it handles the events that came in together, and
        writes them in one write() before it awaits anything: each job's two or three
        records of a run cost a write() each otherwise, a metadata update on a disk and
        a round trip on NFS. A crash loses at most that burst's lines, as if it had come
        a moment sooner; the next run finds those jobs' ends as it finds any it missed.
        """
        if self._held is None:
            self._held = []

    def flush_records(self) -> None:
        """Write the records held back by ``hold_records``, and hold no more."""
        held, self._held = self._held, None
        if held:
            self._append_journal("".join(held))

    def _open_journal(self) -> int:
        return open_appending(self.path / JOURNAL_FILE)

    def journal_records(self) -> dict[str, dict[str, Any]]:
        """The last journal record of each job folder (by folder name)."""
        return self.reader.journal()

    def last_record(self, folder: str) -> dict[str, Any] | None:
        """The newer of a folder's status file and its last journal record."""
        return self.reader.last_record(folder)

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
        return f"{self._root}/{job.index}-{slug(job.name)}"

    def stage(self, data: bytes) -> str:
        """Write a file meant for a job folder not made yet; ``prepare`` renames it in.

        For inputs too large to write in the event loop (a call's pickle): the caller
        writes them here in a worker thread, and ``prepare`` only renames. The name is
        unpredictable and created with ``O_EXCL``; the caller removes it if the job is
        never prepared (``discard``).
        """
        path = str(self.path / f".staged-{os.urandom(8).hex()}.tmp")
        write_new(path, data)
        return path

    @staticmethod
    def discard(staged: Mapping[str, str]) -> None:
        for path in staged.values():
            unlink_quietly(path)

    def prepare(
        self,
        job: Job,
        staged: Mapping[str, str] | None = None,
        *,
        make: bool = False,
        defer_reads: bool = False,
    ) -> dict[str, Any] | None:
        """Name the job's folder and return the last status record of an earlier run.

        None means a job with no folder yet: it costs the caller nothing (no file-system
        call on the event loop, so feeding 100,000 jobs takes a fraction of the time); the
        workdir's own thread makes the folder soon after, and a submission makes any of
        its batch still missing first (``make_folders``). A folder left by an earlier run of the
        *same* job (same spec) is kept, so the engine can skip or re-adopt it; its
        record is ``{}`` when that run died before recording anything (it may still have
        started the job). A folder whose spec differs belongs to another job that used
        this index: it is moved aside rather than overwritten.

        ``staged`` maps file names to files written by ``stage``: they are renamed into
        the folder when it is made, or now into a kept one (its spec names the same
        content, so a file a crash lost is restored, and a running earlier attempt keeps
        the inode it opened). ``make``: make a new folder now (a tool or test that hands
        the job straight to a backend, without the engine). ``defer_reads``: a caller on
        the event loop is told ``ReadsWanted`` (before anything is changed) instead of the
        listing and the records being read here: it has ``read_records`` run in a worker
        thread, then calls again.
        """
        folder = f"{job.index}-{slug(job.name)}"
        job.dir = f"{self._root}/{folder}"
        if not self._successes_read:
            if defer_reads:
                raise ReadsWanted
            self.read_ahead()
        if self._successes is not None:
            attempt = self._successes.attempt(job, job_spec(job))
            if attempt:  # what the journal says, without reading it
                self._move_in(job, staged)
                return {"status": FINISHED_RECORD, "attempt": attempt, "rc": 0}
        if self._names is None:  # not listed yet: neither are the records read
            if defer_reads:
                raise ReadsWanted
            self.read_records()
            assert self._names is not None
        if folder not in self._names:
            left = None
            if self._names:
                self._move_aside_others(job.index, folder)
                left = self._left_running(job, folder)
            self._unmade[job] = staged
            if make:
                self._make_now(job)
            elif not self._wake.is_set():
                self._start_maker()
            return left
        spec = job_spec(job)
        known = self.reader.spec_digest(folder)
        if known is None:  # an older workdir's folder has its job.json
            text = read_text(f"{job.dir}/{SPEC_FILE}")
            known = None if text is None else digest(text.encode())
        if known is None and not self.reader.has_journal_record(folder):
            # Made, but the run died before the spec was written (or it was never
            # submitted): no attempt ever started there, so it is this job's, fresh.
            self._unmade[job] = staged
            self._names.pop(folder, None)
            self._reuse.add(job)
            if make:
                self._make_now(job)
            elif not self._wake.is_set():
                self._start_maker()
            return None
        if known is not None and known == digest(spec.encode()):
            self._move_in(job, staged)
            return self.reader.take_record(folder) or {}
        if known is None:
            # Attempts were journaled there, but their spec line is gone (specs.jsonl torn
            # or removed): what ran cannot be told to be this job. Taken for a fresh
            # folder, the job ran beside an attempt still running, into its files.
            self._check_ended(job.index, folder, "has no spec line in specs.jsonl any more")
            log.warning(
                "job %s: folder %r has records but no spec line in %s (torn or removed): "
                "it cannot be told to be this job, so it is moved aside and the job runs "
                "again",
                job.index,
                folder,
                SPECS_FILE,
            )
        else:
            self._check_ended(job.index, folder, "is now another command")
        try:
            os.replace(job.dir, f"{job.dir}.replaced-{time.time_ns()}")
        except OSError as exc:
            raise WorkdirError(f"cannot move job folder {job.dir!r} aside: {exc}") from exc
        self._names.pop(folder, None)
        self._unmade[job] = staged
        if make:
            self._make_now(job)
        elif not self._wake.is_set():
            self._start_maker()
        return None

    def _left_running(self, job: Job, folder: str) -> dict[str, Any] | None:
        """The record of an attempt an earlier run left running in a folder removed since
        (by hand, to run the job afresh), marked ``gone``: the engine stops that attempt
        before the job runs again in a new folder. Taken for a new job, it ran a second
        time beside the first. None if the journal has no such attempt. The journal
        alone is asked: no file-system call per new job (``job.status`` was in the
        folder). An attempt of another job under the folder's name (its command changed
        too) is stopped all the same, by its id, but what its record says of its own
        resources is not this job's (refused instead, as a folder moved aside is, the
        job could never run again: ``xqueue cancel`` lists folders, and sees none)."""
        record = self.reader.take_journal_record(folder)
        if not record or record.get("status") not in ACTIVE_RECORDS:
            return None
        known = self.reader.spec_digest(folder)
        if known is not None and known != digest(job_spec(job).encode()):
            record = {k: v for k, v in record.items() if k not in ("resources", "cache_key")}
        return {**record, "gone": True}

    def _move_aside_others(self, index: int, folder: str) -> None:
        """Move aside an earlier run's folder of job ``index`` under another name (the
        job's command, so its name, changed since): it holds another job, which
        ``xqueue status`` would count and ``logs`` and ``cancel`` take for this one. The
        folders are looked up by index once, and only if a fed job finds none of its own
        name (a resumed run that changed nothing never pays for it)."""
        assert self._names is not None
        if self._by_index is None:
            self._by_index = {}
            for name in self._names:
                found = job_index(name)
                if found is not None:
                    self._by_index.setdefault(found, []).append(name)
        for name in self._by_index.get(index, ()):
            if name != folder:  # each checked before any moves: a refusal holds next time
                self._check_ended(index, name, "is now another command")
        for name in self._by_index.pop(index, ()):
            path = f"{self._root}/{name}"
            try:
                if name == folder or not stat.S_ISDIR(os.lstat(path).st_mode):
                    continue  # a link or a file planted under a job folder's name: not ours
                os.replace(path, f"{path}.replaced-{time.time_ns()}")
            except FileNotFoundError:
                pass  # removed by hand since the listing: nothing to move
            except OSError as exc:
                raise WorkdirError(f"cannot move job folder {path!r} aside: {exc}") from exc
            self._names.pop(name, None)

    def _check_ended(self, index: int, folder: str, change: str) -> None:
        """Refuse to move aside a folder whose job an earlier run left running: moved, it
        ran on unseen by ``status`` and ``cancel``, and the list changed back ran it a
        second time beside itself. Its end, if an exit line or rc file has it, will do."""
        record = self.reader.record_of(folder)  # not taken: a refused feed may come again
        if not record or record.get("status") not in ACTIVE_RECORDS:
            return
        attempt = record.get("attempt")
        if type(attempt) is int and attempt > 0:  # else no attempt to ask about
            if self.reader.attempt_codes(dict([self.reader.attempt_asked(folder, record)])):
                return
        raise WorkdirError(
            f"job {index} {change}, but its earlier one (folder {folder!r}) "
            f"was {record['status']} when its run stopped and may be running still; "
            f"`xqueue cancel {self.path}` kills what that run left running and records "
            "the end of what is not running any more; then run again"
        )

    def making_ahead(self, on: bool) -> None:
        """Make fed jobs' folders soon after they are fed, without waiting for a pause
        in the feeding (a run is on: its submissions need them), or no longer. A run
        that begins drops the listing kept for a job the index would not vouch for: the
        jobs fed before it did not need it, and a million names are worth their memory
        only while feeding."""
        self._ahead = on
        if on:
            self._listed.clear()

    def _start_maker(self) -> None:
        """Wake the workdir's folder thread (started on first use)."""
        with self._maker_lock:
            self._wake.set()
            if self._maker is None:
                self._maker = threading.Thread(
                    target=self._make_in_background, name="xqueue-folders", daemon=True
                )
                self._maker.start()

    def _make_in_background(self) -> None:
        """Make the folders of fed jobs, a batch at a time, until none is left; then wait
        for more, and end after a while without any. An error is left for the job's
        submission to report (it tries again, and says why).

        It starts a moment after it is woken: a job submitted at once gets its folder
        from its submission, which would otherwise wait for this thread (the lock) and
        compete with it for the interpreter, so a lone job's latency does not pay for
        a thread it does not need. Before a run, it waits until no job was fed for that
        long: then the feeding is over, or paused.
        """
        failed: set[Job] = set()
        while True:
            if not self._wake.wait(_MAKER_IDLE):
                with self._maker_lock:
                    if not self._wake.is_set():
                        self._maker = None
                        return
            time.sleep(_MAKER_DELAY)
            self._wake.clear()
            fed = -1
            while not self._ahead and fed != (fed := len(self._unmade)):
                time.sleep(_MAKER_DELAY)
            self.make_remaining(failed, report=False)

    def _make_now(self, job: Job) -> None:
        error = self.make_folders([job]).get(job)
        if error is not None:
            raise error

    def has_folder(self, job: Job) -> bool:
        return job not in self._unmade

    def make_folders(self, jobs: Sequence[Job]) -> dict[Job, WorkdirError]:
        """Make the folders of jobs about to be submitted: the folder, its staged files,
        then the batch's ``specs.jsonl`` lines; return the jobs whose folder could not be
        made, with why. Blocking: called in a worker thread, a batch at a time."""
        errors: dict[Job, WorkdirError] = {}
        with self._making:
            if self.broken is not None:  # full: not one more folder (and one error for all)
                return dict.fromkeys([job for job in jobs if job in self._unmade], self.broken)
            made = [job for job in jobs if job in self._unmade]
            lines = "".join([self._make_one(job, errors) for job in made])
            if lines:
                try:
                    self._append_specs(lines)
                except (OSError, WorkdirError) as exc:
                    if isinstance(exc, WorkdirError):
                        error = exc
                    elif exc.errno in _FULL:  # the same for every job: the run stops
                        error = self._full(self.path / SPECS_FILE, exc)
                    else:
                        error = file_error(self.path / SPECS_FILE, exc, "append to")
                    # Not made after all: a job with no spec must not run (a later run
                    # could not tell its folder from one nobody used, and run it again).
                    for job in made:
                        if job not in errors:
                            errors[job] = error
                            self._unmade[job] = None  # its staged files are in the folder
                            self._reuse.add(job)
                    return errors
            # Only now does a job count as having a folder (``has_folder``): a job
            # submitted before its spec is written could run again after a crash.
            for job in made:
                if job not in errors:
                    del self._unmade[job]
        return errors

    def _make_one(self, job: Job, errors: dict[Job, WorkdirError]) -> str:
        """Make one folder; its ``specs.jsonl`` line, written by the caller with the batch's."""
        try:
            if job in self._reuse:
                self._reuse.discard(job)
                if not os.path.isdir(job.dir) or os.path.islink(job.dir):
                    os.mkdir(job.dir)
            else:
                os.mkdir(job.dir)
            self._move_in(job, self._unmade[job])
        except OSError as exc:
            if exc.errno in _FULL:  # the same for every job: the run stops
                errors[job] = self._full(job.dir, exc)
            else:
                errors[job] = WorkdirError(f"cannot create job folder {job.dir!r}: {exc}")
        except WorkdirError as exc:
            errors[job] = exc
        else:
            # Not added to ``_names``: that is the listing of earlier runs' folders
            # (each index is fed once), and a million names would be a million strings.
            folder = os.path.basename(job.dir)
            return f'{SPEC_HEAD}{job_spec(job)}{DIR_TAIL}{folder}"}}\n'
        return ""

    def _append_specs(self, lines: str) -> None:
        """One write for a batch of folders. A spec torn by a crash only fails to match
        next time: that job runs afresh, in a new folder."""
        if self._specs_fd is None:
            self._specs_fd = open_appending(self.path / SPECS_FILE)
        view = memoryview(lines.encode())
        while view:  # all of it before any of these jobs counts as made
            view = view[os.write(self._specs_fd, view) :]

    def exits_fd(self) -> int:
        """A new descriptor appending to ``exits.jsonl``, for the local shepherd; the
        caller closes it."""
        return open_appending(self.path / EXITS_FILE)

    def exit_code(self, job: Job, attempt: int | None = None) -> int | None:
        """How an attempt ended, by the job's own word: the ``job.<n>.rc`` its wrapper
        wrote, or the line the shepherd appended to ``exits.jsonl``. Blocking."""
        return self.exit_codes([job], attempt).get(job)

    def exit_codes(self, jobs: Sequence[Job], attempt: int | None = None) -> dict[Job, int]:
        """``exit_code`` of many jobs (their current attempts), reading ``exits.jsonl``
        once for all of them. Blocking: call it in a worker thread."""
        wanted: dict[tuple[str, int], Job] = {}
        for job in jobs:
            if job.dir:
                n = max(job.attempt, 1) if attempt is None else attempt
                wanted[os.path.basename(job.dir), n] = job
        starts = {key: (job.jid, job._since) for key, job in wanted.items()}
        return {wanted[key]: rc for key, rc in self.reader.attempt_codes(starts).items()}

    def make_remaining(self, failed: set[Job] | None = None, *, report: bool = True) -> None:
        """Make every folder still missing, a batch at a time, skipping (and adding to
        ``failed``) those that could not be made. ``report``: log each failure (a run's
        end: its job has ended, and its record is journaled); the workdir's thread
        leaves them to the job's submission, which tries again and says why."""
        failed = set() if failed is None else failed
        if self.broken is not None or self._halted:  # full (said once), or stopped
            return
        # A copy of the dict each round (taken at once, under the GIL: the loop adds to it
        # meanwhile), not each batch: a million unmade jobs cost one pass, not 4,000.
        while todo := [job for job in list(self._unmade) if job not in failed]:
            for start in range(0, len(todo), _MAKE_BATCH):
                for job, error in self.make_folders(todo[start : start + _MAKE_BATCH]).items():
                    failed.add(job)
                    if report and error is not self.broken:
                        log.warning("job %s: %s", job.index, error)
                if self.broken is not None or self._halted:
                    return

    def halt_making(self) -> None:
        """Make no more folders in this hold of the workdir: a run stops (a signal, a
        cancellation), and the jobs it never submitted need none. Making 100,000 of them
        kept a Ctrl-C waiting for half a minute. Returns once the folder thread's batch
        under way is written (no folder is made once the lock is released). Blocking."""
        self._halted = True
        with self._making:
            pass

    def has_unmade(self) -> bool:
        return bool(self._unmade)

    def forget_unmade(self) -> None:
        """Drop the staged files of jobs whose folder was never made (the queue closes)."""
        with self._making:
            for staged in self._unmade.values():
                if staged:
                    self.discard(staged)
            self._unmade.clear()

    @staticmethod
    def _move_in(job: Job, staged: Mapping[str, str] | None) -> None:
        for name, path in (staged or {}).items():
            try:  # a rename replaces a link planted at the name, never follows it
                os.replace(path, job.path(name))
            except OSError as exc:
                raise file_error(job.path(name), exc, "write") from None

    def record(self, job: Job) -> None:
        """Persist the job's durable state.

        Every record, active (the scheduler id) or final (return code, reason), is one
        line appended to the workdir's journal: no new file per job, and a reader (the
        next run, ``xqueue status``) learns the state of 100,000 jobs from one file. A
        job's last line wins. ``job.status`` files of older workdirs are still read.
        Written now, or with the others the engine holds (``hold_records``).
        """
        line = self._journal_line(job, job_record(job))
        if self._held is not None:
            self._held.append(line)
        else:
            self._append_journal(line)

    def record_many(self, jobs: list[Job]) -> None:
        """Journal the state of many active jobs in one write (the submission intents),
        now, after the records held back: a job's intent must follow its earlier lines
        and be in the journal before the job is submitted."""
        if self.broken is not None:  # nothing may start unrecorded
            raise self.broken
        if jobs:
            now = time.time()
            self._write_now(
                [self._journal_line(job, _with_claim(job, _intent(job, now))) for job in jobs]
            )

    def record_kills(self, jobs: list[Job]) -> None:
        """Journal, now, that the run is about to kill these jobs (``"kill": true`` on
        each one's current record). A run that dies before its kills are confirmed (a
        SIGKILL during its stop) leaves that line newest: the next run takes the
        attempt's end (SIGTERM's 143, a backend's CANCELLED) for the kill it was, not for
        the job's own failure, and ends the attempt and runs the job again; where a
        return code file is always the job's own (``Scheduler.rc_file_is_own_end``), a
        0 in it is kept: the job succeeded before the kill reached it."""
        lines = []
        for job in jobs:
            record = job_record(job)
            record["kill"] = True
            lines.append(self._journal_line(job, record))
        self._write_now(lines)

    def _write_now(self, lines: list[str]) -> None:
        """Append ``lines`` at once, after the records held back (a job's later line must
        follow its earlier ones)."""
        if self._held:
            lines[:0] = self._held
            self._held.clear()
        self._append_journal("".join(lines))

    @staticmethod
    def _journal_line(job: Job, record: dict[str, Any]) -> str:
        record["dir"] = os.path.basename(job.dir)
        return json.dumps(record) + "\n"

    def iter_records(self) -> Iterator[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
        """(folder, spec, status record) for every job folder, in index order."""
        return self.reader.iter_records()


def _intent(job: Job, now: float) -> dict[str, Any]:
    """A submission's intent record; a grown request goes with it, as a resume needs it."""
    record: dict[str, Any] = {"status": job.status.value, "attempt": job.attempt, "time": now}
    job._since = now
    if job._grown and job.resources is not None:
        record["resources"] = job.resources.to_dict()
    if job.cache_key is not None:
        record["cache_key"] = job.cache_key  # a later run tells a stale attempt by it
    return record


def _flock_exclusive(fd: int, tries: int = 20) -> bool:
    """Lock for a run. ``xqueue status`` probes the lock with a shared flock held for
    microseconds, so a refusal is retried for a moment before it means another run."""
    import fcntl

    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.01)
    return False
