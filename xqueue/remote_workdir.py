"""A workdir in cloud storage (``gs://bucket/prefix``): job files there, records here.

A run keeps everything only its controller touches in a local folder: the journal and
``specs.jsonl``, the lock, the event stream, ``run.json`` and kill requests, and a copy
of each job's files. Those are local on purpose: the lock is a ``flock`` and the
journal and specs are appended a write at a time, which an object store cannot offer,
and ``xqueue cancel`` signals a process on this machine. The jobs' own files (the
wrapper, what the wrapper writes) live in the bucket under ``<prefix>/<index>-<slug>/``,
the same layout as a local workdir; the scheduler puts them there and reads them back
(the scheduler is the only party that knows how its jobs reach storage, so a scheduler
that cannot is refused up front: ``UsesRemoteWorkdir``).

The local folder is a cache of the bucket, by default under the user's cache folder
(``default_local_dir``): private to the user, kept across reboots (unlike ``/tmp``) and
safe to delete, since the bucket holds everything a later run needs:

- ``specs.jsonl`` (what each job folder's job is) is copied to ``<prefix>/specs.jsonl``
  before a job's wrapper goes up (``RemoteWorkdir.push_specs``, once for all the
  jobs submitted meanwhile), so the bucket always names every attempt that may have
  started, and which job it is: a folder with no spec counts as never used;
- both it and the journal are copied to ``<prefix>/`` at checkpoints and at the end of
  a run (``RemoteWorkdir.push``).

A job's spec has no file of its own in the bucket: only a resume reads it, and the
wrapper carries the command already.

When a run first locks the local folder, it brings it up to date from the bucket
(``RemoteWorkdir.pull``): the bucket's journal and specs replace local ones that are a
prefix of them (another machine went on from here), job files are downloaded, and an
attempt whose wrapper reached the bucket after the journal's last copy (a controller
that died between checkpoints) is journalled as "being submitted". The engine then looks such a
job up with the backend (by its labels) before it would run it again, exactly as after
a crash on one machine. So a run resumed elsewhere, with an empty cache, skips what
succeeded and re-adopts what may still run, and a job never runs twice.

Only one controller at a time may run on a given URL; the local lock cannot see a
controller on another machine.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ._files import atomic_write, read_bytes
from .errors import ConfigError, WorkdirError
from .job import Job
from .records import JOURNAL_FILE, SPECS_FILE, WorkdirReader
from .states import JobStatus
from .workdir import Workdir, slug

log = logging.getLogger("xqueue")

CACHE_ENV = "XQUEUE_CACHE_DIR"
SCHEMES = {"gs": "Cloud Storage"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# The files of a job folder that exist in the bucket, by name; anything else is ignored.
# Always fullmatch(): "$" would let a name end with a line break.
JOB_FILE = re.compile(
    r"job\.status|call\.pkl|job\.[0-9]{1,9}\.(sh|started|stdout|stderr|rc|result)"
)
_FOLDER = re.compile(r"[0-9]{1,18}-[a-z0-9-]{1,80}")  # <index>-<slug>, as Workdir names them
_SCRIPT = re.compile(r"job\.([0-9]{1,9})\.sh")
# The workdir's own records copied to ``<prefix>/<name>``: what a resume elsewhere reads.
COPIED = (JOURNAL_FILE, SPECS_FILE)
_IN_FLIGHT = {JobStatus.SUBMITTING.value, JobStatus.SUBMITTED.value, JobStatus.RUNNING.value}


def is_url(workdir: object) -> bool:
    """Whether ``workdir`` is written as a URL (``scheme://...``) rather than a path."""
    return isinstance(workdir, str) and _URL.match(workdir) is not None


@dataclass(frozen=True)
class WorkdirURL:
    """A parsed remote workdir: ``prefix`` is empty or ends with ``/``."""

    scheme: str
    bucket: str
    prefix: str

    @property
    def text(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def tag(self) -> str:
        """A short name of the URL, the same on every machine (labels, run tags)."""
        return hashlib.sha1(self.text.encode()).hexdigest()[:10]


def parse(url: str) -> WorkdirURL:
    """``gs://bucket[/prefix]`` -> WorkdirURL; anything else is a ConfigError saying why."""
    found = _URL.match(url)
    if found is None:
        raise ConfigError(f"workdir {url!r} is not a URL (gs://bucket/prefix)")
    scheme, rest = found.group(1).lower(), found.group(2)
    if scheme not in SCHEMES:
        raise ConfigError(
            f"workdir {url!r}: {scheme}:// workdirs are not supported; "
            "use gs://bucket/prefix (Cloud Storage) or a local folder"
        )
    bucket, _, prefix = rest.strip("/").partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(
            f"workdir {url!r} does not name a Cloud Storage bucket (e.g. gs://my-bucket/runs)"
        )
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts) or not prefix.isprintable():
        raise ConfigError(
            f"workdir {url!r}: the prefix has an empty or dot segment, or unprintable characters"
        )
    return WorkdirURL(scheme, bucket, f"{prefix}/" if prefix else "")


def default_local_dir(url: WorkdirURL) -> Path:
    """Where a URL's records are kept when no ``local_dir`` is given.

    ``$XQUEUE_CACHE_DIR``, else ``$XDG_CACHE_HOME/xqueue``, else ``~/.cache/xqueue``, then
    ``workdirs/<scheme>/<bucket-prefix>-<tag>``: readable, and unique per URL.
    """
    base = os.environ.get(CACHE_ENV)
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        base = os.path.join(xdg, "xqueue")
    name = f"{slug(f'{url.bucket} {url.prefix}')[:60]}-{url.tag}"
    return Path(base) / "workdirs" / url.scheme / name


class RemoteFile(NamedTuple):
    """One job file in the bucket: ``<prefix><folder>/<name>``."""

    folder: str
    name: str
    md5: str | None  # base64, as the store reports it
    updated: float  # the store's own clock


class RemoteStore(Protocol):
    """What a remote workdir needs of its storage. Every method blocks (worker threads)."""

    url: WorkdirURL
    local_dir: str  # empty: default_local_dir(url)

    def read_copy(self, name: str) -> tuple[bytes, float] | None:
        """The last copy of a record file (``COPIED``) and when it was written (the
        store's clock); None if there is none."""

    def write_copy(self, name: str, data: bytes) -> None:
        """Replace the copy of a record file (``COPIED``) with ``data``."""

    def list_files(self) -> Sequence[RemoteFile]:
        """Every job file under the prefix whose folder and name ``JOB_FILE`` accepts."""

    def download(self, file: RemoteFile, target: str) -> None:
        """Download to ``target`` through a new temporary file renamed into place."""


@runtime_checkable
class UsesRemoteWorkdir(Protocol):
    """A scheduler whose jobs read and write their files in a remote workdir."""

    def remote_store(self, url: WorkdirURL) -> RemoteStore: ...


def make_workdir(workdir: str | os.PathLike[str], scheduler: Any, trust: bool | None) -> Workdir:
    """The workdir of a queue: a local folder, or a URL its scheduler can use."""
    if not is_url(workdir):
        return Workdir(workdir, trust=trust)
    url = parse(str(workdir))
    if not isinstance(scheduler, UsesRemoteWorkdir):
        name = getattr(scheduler, "name", type(scheduler).__name__)
        raise ConfigError(
            f"workdir {url.text!r} is in {SCHEMES[url.scheme]}, which scheduler {name!r} "
            "cannot use (its jobs would not see it): use scheduler 'gbatch', or a local workdir"
        )
    return RemoteWorkdir(scheduler.remote_store(url), trust=trust)


class RemoteWorkdir(Workdir):
    """A local folder of records for a remote workdir; brought up to date when locked."""

    def __init__(self, store: RemoteStore, *, trust: bool | None = None) -> None:
        self.url = store.url
        self.store = store
        super().__init__(store.local_dir or default_local_dir(store.url), trust=trust)
        self._pulled = False
        # Per copied file: the length of the bucket's copy (-1: unknown, copy it) and
        # of the local file when last read (unchanged: nothing to copy, nothing to read).
        self._pushed = dict.fromkeys(COPIED, -1)
        self._seen = dict.fromkeys(COPIED, -1)
        self._pushing = {name: threading.Lock() for name in COPIED}
        # Records that could not be brought up to date (``xqueue cancel`` when the bucket
        # could not be read): copying them could replace newer ones there.
        self.stale = False

    def lock(self, role: str = "") -> None:
        """Take the local lock, then, once per queue, bring the folder up to date."""
        super().lock(role)
        if not self._pulled:
            self.pull()
            self._pulled = True

    def pull(self) -> None:
        """Bring the local folder up to date from the bucket (blocking; under the lock)."""
        with _reading(self.url):
            _pull(self)
        self.forget_reads()  # what was read before the pull (nothing, normally) is stale

    def push(self) -> bool:
        """Copy the specs and the journal to the bucket where they grew since the last
        copy (blocking); whether anything was copied. Specs first: a journal copy then
        never names a folder whose job the bucket does not know."""
        specs = self._push_copy(SPECS_FILE)
        return self._push_copy(JOURNAL_FILE) or specs

    def push_specs(self) -> None:
        """Make sure the bucket's ``specs.jsonl`` names every job folder made so far
        (blocking). Called before a job's wrapper goes up; jobs submitted at the same
        time wait for one copy, which names them all."""
        self._push_copy(SPECS_FILE)

    def _push_copy(self, name: str) -> bool:
        if self.stale:
            return False
        path = self.path / name
        with self._pushing[name]:
            try:
                size = os.stat(path, follow_symlinks=False).st_size
            except FileNotFoundError:
                size = 0
            if size == self._seen[name]:
                return False
            data = read_bytes(path, regular=True) or b""
            self._seen[name] = len(data)
            data = data[: data.rfind(b"\n") + 1]  # whole lines: a batch may be half written
            if len(data) == self._pushed[name]:
                return False
            self.store.write_copy(name, data)
            self._pushed[name] = len(data)
            return True


def _pull(wd: RemoteWorkdir) -> None:
    copy = wd.store.read_copy(JOURNAL_FILE)
    newer = _adopt(wd, JOURNAL_FILE, copy)
    _adopt(wd, SPECS_FILE, wd.store.read_copy(SPECS_FILE))
    files = wd.store.list_files()
    for file in files:
        _fetch(wd, file, overwrite=newer)
    if newer:
        _journal_unrecorded(wd, files, copy[1] if copy is not None else None)


def _adopt(wd: RemoteWorkdir, name: str, copy: tuple[bytes, float] | None) -> bool:
    """Bring one append-only record file up to date from its copy in the bucket; whether
    the bucket's copy was the newer (then the local file is that copy now).

    Appended to on one machine at a time, the two differ only by one having gone on
    from the other. When both went on, the bucket's is used and the local file kept
    aside. For the journal that means two controllers ran from the same copy (warned).
    For the specs it also happens in turn: folders made here and never submitted
    (their specs were never copied), then a run elsewhere; the bucket's copy names
    every folder that was submitted, so nothing is lost (the local folders without a
    spec there count as never used).
    """
    path = wd.path / name
    local = read_bytes(path, regular=True) or b""
    remote = copy[0] if copy is not None else b""
    if remote.startswith(local):
        newer = True  # the bucket's copy is this one, or went on from it
    elif local.startswith(remote):
        newer = False  # this machine's run ended before its last checkpoint
    else:
        aside = f"{path}.diverged-{time.time_ns()}"
        os.replace(path, aside)
        (log.warning if name == JOURNAL_FILE else log.info)(
            "%s in %s and the one of %s went different ways; the bucket's is used, "
            "this one is kept as %s",
            name,
            wd.path,
            wd.url.text,
            aside,
        )
        newer, local = True, b""
    if newer and len(remote) > len(local):
        atomic_write(str(path), remote)
    wd._pushed[name] = len(remote) if newer else -1
    wd._seen[name] = -1
    return newer


def _fetch(wd: RemoteWorkdir, file: RemoteFile, overwrite: bool) -> None:
    """Download one job file unless the local copy is the same (or is kept as newer)."""
    if not (_FOLDER.fullmatch(file.folder) and JOB_FILE.fullmatch(file.name)):
        return  # a store that lists more than it should: never a path of its choosing
    folder = wd.path / file.folder
    target = folder / file.name
    try:
        os.mkdir(folder)
    except FileExistsError:
        if folder.is_symlink() or not folder.is_dir():
            raise WorkdirError(f"{str(folder)!r} is not a folder xqueue made") from None
    if target.exists() or target.is_symlink():
        if not overwrite or (file.md5 is not None and _md5(target) == file.md5):
            return
    wd.store.download(file, str(target))


def _md5(path: Path) -> str | None:
    digest = hashlib.md5()
    try:
        with open(path, "rb", opener=_no_follow) as fh:
            for chunk in iter(lambda: fh.read(1 << 16), b""):
                digest.update(chunk)
    except OSError:
        return None
    return base64.b64encode(digest.digest()).decode()


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def _journal_unrecorded(
    wd: RemoteWorkdir, files: Sequence[RemoteFile], since: float | None
) -> None:
    """Journal the attempts whose wrapper reached the bucket after the journal's last copy.

    Their controller stopped before a checkpoint, so the journal may say nothing of them
    (or that the job failed, for an attempt that ran it again). Journalled as "being
    submitted", they are looked up with the backend before anything runs again. An
    attempt the journal already follows keeps its record (and its recorded id).
    """
    newest: dict[str, tuple[float, int]] = {}
    for file in files:
        found = _SCRIPT.fullmatch(file.name)
        if found is None or (since is not None and file.updated < since):
            continue
        seen = (file.updated, int(found.group(1)))
        if seen > newest.get(file.folder, (0.0, 0)):
            newest[file.folder] = seen
    if not newest:
        return
    reader = WorkdirReader(wd.path)  # a reader of its own: read after the pull
    records = reader.journal()
    jobs = []
    for folder, (_, attempt) in sorted(newest.items()):
        record = records.get(folder)
        if record and record.get("attempt") == attempt and record.get("status") in _IN_FLIGHT:
            continue
        if reader.spec_text(folder) is None:
            continue  # not a submission of ours (a spec goes up before its wrapper)
        job = Job(int(folder.partition("-")[0]), ["true"])
        job.dir = str(wd.path / folder)
        job.status = JobStatus.SUBMITTING
        job.attempt = attempt
        jobs.append(job)
    if jobs:
        log.info("%d job(s) of %s were submitted after its last checkpoint", len(jobs), wd.url)
        wd.record_many(jobs)


def local_folder(text: str, *, pull: bool = True) -> str:
    """For ``xqueue status``, ``logs`` and ``cancel`` given a URL: its local folder (the
    default one), brought up to date from the bucket first when ``pull`` and no run on
    this machine holds it (a run's own folder is the live one). Credentials are the
    application default ones; ``STORAGE_EMULATOR_HOST`` points at an emulator."""
    url = parse(text)
    try:  # both: the store's module imports google only as it is made
        from .schedulers._gcs_store import GcsStore

        store = GcsStore.from_environment(url)
    except ImportError as exc:
        raise ConfigError(
            f"reading {url.text} needs the gbatch extra: pip install '.[gbatch]' in "
            f"xqueue's source folder ({exc})"
        ) from exc
    path = Path(store.local_dir or default_local_dir(url))
    if not path.is_dir():
        if not pull:
            raise ConfigError(
                f"{url.text} is not an xqueue workdir here: no run on this machine has used "
                f"it (its records would be in {str(path)!r}); cancel from the machine that "
                "ran it, or name the folder the run kept its records in (its local_dir option)"
            )
        # Asked before the folder is made: one made and removed again could be the
        # folder a run starting meanwhile had just locked.
        if not _holds_anything(store):  # a mistyped prefix
            raise ConfigError(
                f"{url.text} is not an xqueue workdir: there is nothing under it in Cloud Storage"
            )
    wd = RemoteWorkdir(store)
    if not pull:
        return str(wd.path)
    try:
        Workdir.lock(wd)  # the local lock only: the pull is done here, below
    except WorkdirError:
        return str(wd.path)  # a run on this machine holds it
    try:
        wd.pull()
    finally:
        wd.unlock()
    return str(wd.path)


def _holds_anything(store: RemoteStore) -> bool:
    """Whether the bucket has a record copy or a job file under the store's prefix."""
    with _reading(store.url):
        return (
            store.read_copy(JOURNAL_FILE) is not None
            or store.read_copy(SPECS_FILE) is not None
            or bool(store.list_files())
        )


@contextlib.contextmanager
def _reading(url: WorkdirURL) -> Iterator[None]:
    """The store's own errors (network, permission) as a WorkdirError naming the URL."""
    try:
        yield
    except (OSError, WorkdirError):
        raise
    except Exception as exc:
        raise WorkdirError(f"cannot read workdir {url.text}: {exc}") from exc
