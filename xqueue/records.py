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
per line, appended in time order: a folder's last valid line is its newest) and the job's
own ``job.status`` (its final record, written by older versions). The newer of the two by
``time`` wins. A *final* record found in the journal is trusted without opening
``job.status``, so a summary is one file read instead of one per job.

Two more append-only files hold what used to be a file or two in every job folder:

- ``specs.jsonl``: what each job is (its ``job.json`` before), one line per folder made,
  ``{"spec": <the job's spec>, "dir": "<folder>"}``; the last line of a folder wins. A
  resumed run compares a job's spec *text* with it, so reading it costs no JSON parsing.
- ``exits.jsonl``: the return codes the local shepherd reaped (each attempt's ``job.<n>.rc``
  before), ``{"rc": <code>, "attempt": <n>, "dir": "<folder>"}``. The controller hears of
  an exit from the shepherd directly and journals its verdict; this file is read only
  to learn how a job ended while its controller was gone.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import math
import mmap
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._files import CHUNK, READ_FLAGS, check_regular, file_error, open_to_read, read_bytes
from ._identity import read_claim
from .job import RC, SPEC_FILE, STATUS_FILE, attempt_file

log = logging.getLogger("xqueue.workdir")

LOCK_FILE = ".lock"
JOURNAL_FILE = "journal.jsonl"
SPECS_FILE = "specs.jsonl"
EXITS_FILE = "exits.jsonl"
SPEC_HEAD = '{"spec": '
# How a line names its folder, last: the comma and space before the key make its quote
# open a key, where '"dir": "' alone could end another key (``"x\\"dir": ...``).
DIR_TAIL = ', "dir": "'
# Seconds an exits.jsonl line may seem older than a line before it (its shepherd read the
# wall clock when its job ended; clocks are stepped): the backward read looks this far
# past the oldest line it needs.
_CLOCK_SLACK = 600.0
FINAL_STATES = frozenset({"finished", "failed", "killed", "skipped"})

_BLOCK = 1 << 20  # read_line_blocks: about 5,000 journal lines


def read_recent_lines(
    path: str | os.PathLike[str], newer_than: Callable[[bytes], bool]
) -> list[bytes]:
    """The newest lines of an append-only workdir file, in file order: read backwards a
    block at a time, and no further back than the first block whose first whole line
    ``newer_than`` refuses. Blocking.

    For ``exits.jsonl``, whose lines come in the order their jobs ended: the lines an
    adopted job waits for are at its end, while a run of a million jobs makes the whole
    file about 100 MB, which every such job would otherwise read again.
    """
    fd = open_to_read(path)
    if fd is None:
        return []
    try:
        end = check_regular(path, fd)
        blocks: list[list[bytes]] = []
        carry = b""  # the start of a line whose beginning is in the block before
        while end > 0:
            start = max(0, end - CHUNK * 4)
            lines = (os.pread(fd, end - start, start) + carry).split(b"\n")
            carry = lines.pop(0) if start else b""
            blocks.append(lines)
            end = start
            if lines and not newer_than(lines[0]):
                break
        return [line for block in reversed(blocks) for line in block]
    except OSError as exc:
        raise file_error(path, exc) from None
    finally:
        os.close(fd)


def read_line_blocks(path: str | os.PathLike[str], torn: list[bytes]) -> Iterator[list[bytes]]:
    """The whole lines of an append-only workdir file, without their newlines, a block
    at a time: a million lines are never held at once, and a caller can split, slice and
    check a block with calls that each take all of it. A last line with no newline
    (torn by a crash, or cut just before its newline) is not in them: it goes to
    ``torn`` for the caller to judge as its careful reading does. Nothing if there is no
    such file. Blocking."""
    fd = open_to_read(path)
    if fd is None:
        return
    try:
        check_regular(path, fd)
        os.set_blocking(fd, True)
        carry = b""
        while chunk := os.read(fd, _BLOCK):
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()
            if lines:
                yield lines
    except OSError as exc:
        raise file_error(path, exc) from None
    finally:
        os.close(fd)
    if carry:
        torn.append(carry)


def read_text(path: str | os.PathLike[str]) -> str | None:
    """A file's text; bytes that are not UTF-8 become U+FFFD, so a torn file never
    matches what xqueue would write (and is rewritten) instead of raising."""
    data = read_bytes(path)
    return None if data is None else data.decode("utf-8", errors="replace")


_decode = json.JSONDecoder().raw_decode


def parse_object(data: bytes | str) -> dict[str, Any] | None:
    """A JSON object, or None for anything else (torn, not UTF-8, a list, absurdly deep).

    ``raw_decode`` on text skips ``json.loads``'s encoding sniffing and whitespace
    handling: this runs once or twice per job in ``xqueue status``, so its cost is the
    summary's.
    """
    try:
        text = data.decode() if isinstance(data, bytes) else data
        try:
            value, end = _decode(text)
        except ValueError:  # maybe only leading whitespace: xqueue writes none
            text = text.strip()
            value, end = _decode(text)
        if end != len(text) and text[end:].strip():
            return None
    except (ValueError, RecursionError):
        return None
    return value if type(value) is dict else None


def parse_objects(items: Sequence[bytes | str]) -> list[dict[str, Any] | None]:
    """``parse_object`` of each item, in one ``json.loads`` when every item is sound.

    Per call, the JSON decoder's setup costs as much as parsing a record, so a summary
    parses its 100,000 records as one array: an item that is not one whole JSON value
    makes the array invalid or changes its length, and then each item is parsed alone.
    (Items that together look like the right number of values could only shift records
    between files that are all the crafter's, who could write those records anyway.)
    """
    if not items:
        return []
    try:
        if isinstance(items[0], bytes):
            joined = b",".join(items).decode()  # type: ignore[arg-type]
        else:
            joined = ",".join(items)  # type: ignore[arg-type]
        values = json.loads(f"[{joined}]")
    except (ValueError, RecursionError, TypeError):
        values = None
    if type(values) is not list or len(values) != len(items):
        return [parse_object(item) for item in items]
    return [value if type(value) is dict else None for value in values]


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    data = read_bytes(path)
    return None if not data else parse_object(data)


_INT_OR_NONE = (int, type(None))


def clean_record(value: dict[str, Any]) -> dict[str, Any] | None:
    """The record with every field the engine reads of the type it expects, or None
    without a status. Unknown fields are kept: a newer xqueue may have written them."""
    status = value.get("status")
    if type(status) is not str or not status:
        return None
    attempt, rc, jid = value.get("attempt"), value.get("rc"), value.get("jid")
    reason, when = value.get("reason"), value.get("time")
    if (  # the common case, as xqueue writes it, costs no copy
        type(attempt) in _INT_OR_NONE
        and type(rc) in _INT_OR_NONE
        and type(jid) in (str, type(None))
        and type(reason) is str
        and type(when) is float
        and math.isfinite(when)
    ):
        return value
    record = dict(value)
    record["attempt"] = attempt if type(attempt) is int else None
    record["rc"] = rc if type(rc) is int else None
    record["jid"] = str(jid) if type(jid) in (str, int) else None
    record["reason"] = reason if type(reason) is str else ""
    record["time"] = record_time(when)
    return record


def read_code(path: str | os.PathLike[str]) -> int | None:
    """The return code in a ``job.<n>.rc`` file; None if there is none yet (or it is torn)."""
    text = read_text(path)
    try:
        return None if text is None else int(text.strip())
    except ValueError:
        return None


def local_pid(jid: str | None) -> str | None:
    """The pid in a local scheduler id (``pid@start``), else None. Only the pid: the
    start of a process found again in /proc is measured otherwise than the shepherd's."""
    pid, at, _ = (jid or "").partition("@")
    return pid if at and pid.isdigit() else None


def record_time(when: Any) -> float:
    """A time read from a record, in seconds; 0 (earlier than anything) if it is not one."""
    if isinstance(when, (int, float)) and not isinstance(when, bool) and math.isfinite(when):
        return float(when)
    return 0.0


def read_records(paths: Sequence[str]) -> list[dict[str, Any] | None]:
    """Each ``job.status``'s record, or None (missing, or garbage: with a warning), their
    JSON parsed together."""
    datas = [read_bytes(path) for path in paths]
    present = [i for i, data in enumerate(datas) if data is not None]
    values = parse_objects([datas[i] or b"" for i in present])
    found: list[dict[str, Any] | None] = [None] * len(paths)
    for i, value in zip(present, values, strict=True):
        record = None if value is None else clean_record(value)
        if record is None:
            log.warning(
                "ignoring %s: not an xqueue record (torn or edited); the job counts as "
                "not finished",
                paths[i],
            )
        found[i] = record
    return found


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


def parse_journal(data: bytes, path: str) -> dict[str, dict[str, Any]]:
    """The newest record of each job folder in a journal's lines.

    The journal is appended in time order, so a folder's last valid line is its newest
    record, and only that line needs parsing (a job has one line per submission, and
    will have more once final states are journaled too). Lines as xqueue writes them
    end ``"dir": "<folder>"}``, so they are grouped by folder with string methods, and
    only the winners are parsed, as one JSON array. Any other line is parsed on its own
    and wins if it is newer. Should a winner not parse, the journal is read again
    strictly line by line: the shortcut never changes the answer.

    A line that is not a record is skipped with one warning for the file; a torn last
    line (no newline: a crash mid-write) is expected and only logged at info level.
    """
    try:
        text = data.decode()
    except UnicodeDecodeError:  # some line is not UTF-8: each is decoded on its own
        return _parse_strictly(data.split(b"\n"), path)
    lines = text.split("\n")
    ended = lines[-1] == ""  # else the last line was torn by a crash
    if ended:
        lines.pop()
    others: dict[str, tuple[int, Any]] = {}
    bad: list[int] = []
    if text.count('"}\n') + text.endswith('"}') == len(lines):  # no line of another shape
        tails = {line.rpartition(DIR_TAIL)[2]: n for n, line in enumerate(lines)}
    else:
        tails = {
            line.rpartition(DIR_TAIL)[2]: n for n, line in enumerate(lines) if line[-2:] == '"}'
        }
        others, bad = _parse_others(lines, ended, path)
    fast = dict(zip([tail[:-2] for tail in tails], tails.values(), strict=True))
    everything = "\n".join(fast)  # one scan for what no folder name contains
    if any(c in everything for c in '"\\/\0') or {"", ".", ".."} & fast.keys():
        return _parse_strictly([*lines, ""] if ended else lines, path)  # lines of another shape
    names = [f for f in fast if f not in others or others[f][0] < fast[f]]
    records = {f: rec for f, (n, rec) in others.items() if f not in fast or fast[f] < n}
    for folder, value in zip(names, parse_objects([lines[fast[f]] for f in names]), strict=True):
        record = None if value is None else clean_record(value)
        if record is None or record.pop("dir", None) != folder:
            return _parse_strictly([*lines, ""] if ended else lines, path)
        records[folder] = record
    _warn_bad(bad, path)
    return records


_PARSE_AHEAD = 1024  # journal lines a resume parses in one json.loads


def _parse_others(
    lines: list[str], ended: bool, path: str
) -> tuple[dict[str, tuple[int, Any]], list[int]]:
    """The lines not ending in ``"}``, parsed one by one: (folder -> (line index, record)
    of the last valid one, numbers of the lines that are not records)."""
    found: dict[str, tuple[int, Any]] = {}
    bad = []
    for n in [n for n, line in enumerate(lines) if line[-2:] != '"}']:
        if not lines[n].strip():
            continue
        entry = _journal_entry(lines[n])
        if entry is not None:
            found[entry[0]] = (n, entry[1])
        elif ended or n < len(lines) - 1:
            bad.append(n + 1)
        else:
            log.info("%s: ignoring its torn last line (a run stopped mid-write)", path)
    return found, bad


def _journal_entry(line: str | bytes) -> tuple[str, dict[str, Any]] | None:
    """(folder, record) of one journal line, or None if it is not one."""
    return _entry_of(parse_object(line))


def _entry_of(entry: dict[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    """``_journal_entry`` of a line already parsed (``parse_object``)."""
    if entry is None:
        return None
    folder = entry.pop("dir", None)
    if type(folder) is not str or not _plain_name(folder):
        return None
    record = clean_record(entry)
    return None if record is None else (folder, record)


def _parse_strictly(lines: Sequence[str | bytes], path: str) -> dict[str, Any]:
    """Every line parsed on its own; the last line counts as torn unless it ends the file
    with a newline (then ``lines`` ends with an empty item, or was cut before it)."""
    records: dict[str, dict[str, Any]] = {}
    bad = []
    for n, line in enumerate(lines):
        entry = _journal_entry(line) if line.strip() else None
        if entry is not None:
            records[entry[0]] = entry[1]
        elif not line.strip():
            continue
        elif n < len(lines) - 1:
            bad.append(n + 1)
        else:
            log.info("%s: ignoring its torn last line (a run stopped mid-write)", path)
    _warn_bad(bad, path)
    return records


def _warn_bad(bad: list[int], path: str) -> None:
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        log.warning(
            "%s: ignoring %d line(s) that are not xqueue records (line %s); each job "
            "they were about keeps its newest valid record (none: it counts as never run)",
            path,
            len(bad),
            shown,
        )


def digest(spec: bytes) -> bytes:
    """What a resume compares specs by: 16 bytes instead of the text."""
    return hashlib.blake2b(spec, digest_size=16).digest()


def parse_specs(data: bytes) -> dict[str, str]:
    """Folder -> spec text of ``specs.jsonl``'s lines (the last line of a folder wins).

    Nothing is parsed as JSON: the text is compared with the spec a job would write, so
    a line that is torn or edited only fails to match, and that job runs again (safely,
    in a fresh folder). ``spec`` parses a text when someone wants to read it.
    """
    found: dict[str, str] = {}
    start = len(SPEC_HEAD)
    lines = data.decode(errors="replace").split("\n")
    if lines[-1] and parse_object(lines[-1]) is None:
        lines.pop()  # no newline, and torn: a cut can end like a line (a nested "dir")
    for line in lines:
        head, sep, tail = line.rpartition(DIR_TAIL)
        if sep and tail[-2:] == '"}' and head[:start] == SPEC_HEAD:
            found[tail[:-2]] = head[start:]
    return found


def job_index(name: str) -> int | None:
    """The index in a job folder's name (``<index>-<slug>``), None for other entries."""
    head, sep, _ = name.partition("-")
    if sep and head.isascii() and head.isdigit() and ".replaced-" not in name:
        return int(head)
    return None


def _folders_of(lines: list[bytes], key: bytes) -> list[str] | None:
    """The folder each line names after its last ``key``, if every line ends that way
    (``<key><folder>"}``), else None: then the caller reads the block line by line.

    The block is checked by counting, in calls over all of it, since this runs for every
    line of a million-job journal: a folder name holds no quote or backslash (its JSON
    would escape them), so each line's tail must hold exactly one quote, just before its
    closing brace, and no backslash.
    """
    tails = b"\n".join([line.rpartition(key)[2] for line in lines])
    n = len(lines)
    if (
        tails.count(b'"') != n
        or tails.count(b'"}\n') != n - 1
        or tails[-2:] != b'"}'
        or b"\\" in tails
    ):
        return None
    return tails.decode(errors="replace").replace('"}', "").split("\n")


_UNSURE: tuple[bool, None] = (False, None)  # _newest_line cannot tell: read carefully


def _newest_line(path: Path, folder: str) -> tuple[bool, dict[str, Any] | None]:
    """(True, the record of ``folder``'s newest journal line), found by searching the
    file's bytes backwards (mapped, so a huge journal is not copied); its record is None
    if no line names the folder.

    A line names its folder as ``"<folder>"`` (a plain folder name needs no escape), and
    no JSON string can hold that quote unescaped: the last place those bytes appear is
    the newest line of the folder, if that line's record is the folder's. Anything else
    is ``_UNSURE``: that place is another field (a reason equal to the folder's name),
    the line does not parse, the name would be escaped, or an escape after it
    could spell the name another way (``\\u`` sequences, which xqueue writes only for
    non-ASCII text).
    """
    if not (folder.isascii() and folder.isprintable()) or '"' in folder or "\\" in folder:
        return _UNSURE
    fd = open_to_read(path)
    if fd is None:
        return True, None
    try:
        size = check_regular(path, fd)
        if not size:
            return True, None
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as data:
            at = data.rfind(f'"{folder}"'.encode())
            if at < 0:
                return _UNSURE if data.find(b"\\u") >= 0 else (True, None)
            end = data.find(b"\n", at)
            end = size if end < 0 else end
            if data.find(b"\\u", end) >= 0:
                return _UNSURE
            line = data[data.rfind(b"\n", 0, at) + 1 : end]
    except (OSError, ValueError):  # a file system that cannot map files
        return _UNSURE
    finally:
        os.close(fd)
    entry = _journal_entry(line)
    return (True, entry[1]) if entry is not None and entry[0] == folder else _UNSURE


def _all_start_with(lines: list[bytes], head: bytes) -> bool:
    """Whether every line starts with ``head``, checked with calls over the whole block
    (no line holds a newline, so each later line's head follows one)."""
    return lines[0][: len(head)] == head and b"\n".join(lines).count(b"\n" + head) == len(lines) - 1


def _spec_lines(digests: dict[str, bytes], lines: list[bytes]) -> None:
    """``spec_digest``'s index of lines one by one (``parse_specs``' rule, on bytes)."""
    head, tail_key, start = SPEC_HEAD.encode(), DIR_TAIL.encode(), len(SPEC_HEAD)
    for line in lines:
        text, sep, tail = line.rpartition(tail_key)
        if sep and tail[-2:] == b'"}' and text[:start] == head:
            digests[tail[:-2].decode(errors="replace")] = digest(text[start:])


class WorkdirReader:
    """A read-only view of a workdir: what ``xqueue status`` and a resuming run read.

    It never creates, writes or locks anything for longer than a probe, so it works on a
    read-only mount and on another user's workdir.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self._journal: dict[str, dict[str, Any]] | None = None
        self._specs: dict[str, str] | None = None
        # What a resuming run reads once per folder and then drops (``take_record``,
        # ``spec_digest``): newest journal lines unparsed, digests of specs. A million
        # jobs' parsed records and spec texts would cost the run more than its jobs.
        self._winners: dict[str, bytes] | None = None
        self._digests: dict[str, bytes] | None = None
        # Newest lines parsed ahead of being asked for (``_parse_with_next``), and the
        # journal's order of the folders, which it walks.
        self._parsed: dict[str, dict[str, Any] | None] = {}
        self._order: Iterator[str] = iter(())

    def journal(self) -> dict[str, dict[str, Any]]:
        """The newest journal record of each job folder, by folder name (read once).

        A journal whose lines are all as xqueue writes them is indexed a block at a time
        and only each folder's newest line is parsed (``_index_winners``): a million jobs'
        journal is never held whole, nor split into three million strings. Any other line
        sends it to ``parse_journal``, so the answer is the same."""
        if self._journal is None:
            winners = self._index_winners()
            if self._journal is None:  # the index did not need the careful reading
                self._journal = self._parse_winners(winners)
        return self._journal

    def _careful_journal(self) -> dict[str, dict[str, Any]]:
        """``journal`` by ``parse_journal``, which reads lines of any shape."""
        path = self.path / JOURNAL_FILE
        data = read_bytes(path, regular=True)
        self._journal = {} if data is None else parse_journal(data, str(path))
        return self._journal

    def _parse_winners(self, winners: dict[str, bytes]) -> dict[str, dict[str, Any]]:
        """The records of the newest lines ``_index_winners`` found, parsed a batch at a
        time (each line dropped once parsed); one that is not its folder's record (torn,
        edited) sends the journal to the careful reading."""
        records: dict[str, dict[str, Any]] = {}
        names = list(winners)
        for start in range(0, len(names), _PARSE_AHEAD):
            batch = names[start : start + _PARSE_AHEAD]
            values = parse_objects([winners.pop(folder) for folder in batch])
            for folder, value in zip(batch, values, strict=True):
                entry = _entry_of(value)
                if entry is None or entry[0] != folder:
                    return self._careful_journal()
                records[folder] = entry[1]
        return records

    def last_record(self, folder: str) -> dict[str, Any] | None:
        """The newer of a folder's journal record and its ``job.status``."""
        return self.last_records([os.path.basename(folder)])[0]

    def last_records(self, folders: Sequence[str]) -> list[dict[str, Any] | None]:
        """``last_record`` of many folders (names in the workdir), in one pass."""
        journal = self.journal()
        return self._or_status_files(folders, [journal.get(folder) for folder in folders])

    def record_of(self, folder: str) -> dict[str, Any] | None:
        """``last_record`` of one folder, for a one-off question (``xqueue logs``).

        The journal's bytes are searched for the folder's newest line (``_newest_line``)
        instead of every line being parsed: a million jobs' journal costs a scan at
        memory speed, not ten seconds. Whenever that search cannot be sure, the careful
        reading answers, so the answer is always ``last_record``'s."""
        if self._journal is None:
            sure, found = _newest_line(self.path / JOURNAL_FILE, folder)
            if sure:
                return self._or_status_files([folder], [found])[0]
        return self.last_record(folder)

    def _or_status_files(
        self, folders: Sequence[str], found: list[dict[str, Any] | None]
    ) -> list[dict[str, Any] | None]:
        """Each journal record, or the folder's ``job.status`` where that is newer (read
        only for folders whose journal record is not final)."""
        root = str(self.path)
        unsure = [i for i, r in enumerate(found) if r is None or r["status"] not in FINAL_STATES]
        finals = read_records([f"{root}/{folders[i]}/{STATUS_FILE}" for i in unsure])
        for i, final in zip(unsure, finals, strict=True):
            logged = found[i]
            if final is not None and (logged is None or logged["time"] <= final["time"]):
                found[i] = final
        return found

    def folder_of(self, index: int) -> str | None:
        """The folder of job ``index`` (the last of ``folders()`` with it, should a hand
        have made two), found by its name's prefix without building that list."""
        prefix = f"{index}-"
        try:
            names = os.listdir(self.path)
        except OSError as exc:
            raise file_error(self.path, exc, "list") from None
        found = [name for name in names if name.startswith(prefix)]  # a few, of a million
        found = [name for name in found if job_index(name) == index and self.is_folder(name)]
        return max(found, default=None)

    def is_folder(self, name: str) -> bool:
        """Whether ``name`` is one of ``folders()``: a job folder's name, a folder there."""
        if job_index(name) is None or "/" in name or "\0" in name:
            return False
        try:
            return stat.S_ISDIR(os.lstat(self.path / name).st_mode)
        except (OSError, ValueError):
            return False

    def folders(self) -> list[str]:
        """The names of the job folders, in index order (links and stray entries left out)."""
        found: list[tuple[int, str]] = []
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

    def take_record(self, folder: str) -> dict[str, Any] | None:
        """``last_record`` for a run that asks once per folder (a resume): the journal is
        read line by line, keeping each folder's newest line unparsed until asked for, and
        dropping it then. Any line of a shape xqueue does not write sends every folder
        through ``last_record``'s careful reading instead."""
        record = self.take_journal_record(folder)
        if record is None or record["status"] not in FINAL_STATES:
            older = read_records([f"{self.path}/{folder}/{STATUS_FILE}"])[0]
            if older is not None and (record is None or record["time"] <= older["time"]):
                record = older
        return record

    def take_journal_record(self, folder: str) -> dict[str, Any] | None:
        """``take_record`` from the journal alone, with no file-system call once the
        journal is read: for a folder that is not there (``job.status`` was in it)."""
        self._index_once()
        assert self._winners is not None
        if self._journal is not None:
            return self._journal.get(folder)
        if folder in self._winners:
            self._parse_with_next(folder)
        if folder not in self._parsed:
            return None
        entry = _entry_of(self._parsed.pop(folder))
        if entry is None or entry[0] != folder:
            self._winners.clear()
            self._parsed.clear()
            return self._careful_journal().get(folder)  # a torn or edited newest line
        return entry[1]

    def has_journal_record(self, folder: str) -> bool:
        """Whether the journal has a line about ``folder``, not taking it (a feed refused
        may come again and ``take_record`` it)."""
        self._index_once()
        if self._journal is not None:
            return folder in self._journal
        assert self._winners is not None
        return folder in self._winners or folder in self._parsed

    def _index_once(self) -> None:
        """``_index_winners`` for ``take_journal_record``, on its first call."""
        if self._winners is None:
            self._winners = self._index_winners()
            # A tuple of strings, which the cycle collector stops walking (a list it walks
            # at every full collection: a million names, each time).
            self._order = iter(tuple(self._winners))

    def _parse_with_next(self, folder: str) -> None:
        """Parse a folder's newest line into ``_parsed``, with the next ones in the
        journal's order, in one ``json.loads`` (``parse_objects``): per call, the
        decoder's setup costs as much as a record, and a resume asks for the folders in
        about that order. Never more than ``_PARSE_AHEAD`` wait unasked, whatever the
        order."""
        assert self._winners is not None
        folders, lines = [folder], [self._winners.pop(folder)]
        if len(self._parsed) < _PARSE_AHEAD:
            for name in itertools.islice(self._order, _PARSE_AHEAD):
                line = self._winners.pop(name, None)
                if line is not None:
                    folders.append(name)
                    lines.append(line)
        self._parsed.update(zip(folders, parse_objects(lines), strict=True))

    def _index_winners(self) -> dict[str, bytes]:
        winners: dict[str, bytes] = {}
        key = DIR_TAIL.encode()
        torn: list[bytes] = []
        for lines in read_line_blocks(self.path / JOURNAL_FILE, torn):
            folders = _folders_of(lines, key)
            if folders is not None:
                winners.update(zip(folders, lines))
                continue
            for line in lines:  # a block with a line of another shape: line by line
                tail = line.rpartition(key)[2]
                # a folder's name holds no quote: one here is a line of another shape
                if tail[-2:] == b'"}' and b"\\" not in tail and tail.count(b'"') == 1:
                    winners[tail[:-2].decode(errors="replace")] = line
                elif line.strip():  # not a line xqueue writes: the careful reading, for all
                    winners.clear()
                    self._careful_journal()
                    return winners
        if torn and torn[0].strip():  # its newline, or more, lost: the careful reading judges
            winners.clear()
            self._careful_journal()
        return winners

    def spec_digest(self, folder: str) -> bytes | None:
        """A digest of the job's spec text, dropped once asked for (a resume compares
        each folder's once: ``digest(job_spec(job))``); None if there is no spec line
        (an older workdir's ``job.json`` is then read by ``spec_text``)."""
        self._digest_once()
        assert self._digests is not None
        return self._digests.pop(folder, None)

    def read_for_resume(self) -> None:
        """Read now what a resume's first ``take_record`` and ``spec_digest`` would read
        (the journal's newest lines, the specs' digests): in a worker thread, where a
        million jobs' records keep no event loop waiting. Blocking."""
        self._index_once()
        self._digest_once()

    def _digest_once(self) -> None:
        """``spec_digest``'s index of ``specs.jsonl``, on its first call. One that fails
        (a planted file) leaves none half made, to be taken for a file without a line."""
        if self._digests is not None:
            return
        digests: dict[str, bytes] = {}  # published whole, once read
        head, tail_key, start = SPEC_HEAD.encode(), DIR_TAIL.encode(), len(SPEC_HEAD)
        torn: list[bytes] = []
        for lines in read_line_blocks(self.path / SPECS_FILE, torn):
            folders = _folders_of(lines, tail_key)
            if folders is not None and _all_start_with(lines, head):  # the whole block
                specs = [line[start : line.rindex(tail_key)] for line in lines]
                digests.update(zip(folders, map(digest, specs)))
                continue
            _spec_lines(digests, lines)
        # A last line without its newline counts only whole, as in ``parse_specs``.
        _spec_lines(digests, [line for line in torn if parse_object(line) is not None])
        self._digests = digests

    def spec_text(self, folder: str) -> str | None:
        """What the job is, as the JSON text xqueue wrote (``specs.jsonl``, or the folder's
        ``job.json`` in an older workdir); None if there is none: the folder was made but
        its job never submitted."""
        text = self._spec_texts().get(folder)
        if text is None:
            text = read_text(os.path.join(self.path, folder, SPEC_FILE))
        return text

    def _spec_texts(self) -> dict[str, str]:
        if self._specs is None:
            path = self.path / SPECS_FILE
            data = read_bytes(path, regular=True)
            self._specs = {} if data is None else parse_specs(data)
        return self._specs

    def spec(self, folder: str) -> dict[str, Any] | None:
        """What the job is; None when missing or unreadable as JSON."""
        text = self.spec_text(folder)
        return None if text is None else parse_object(text)

    def specs(self, folders: Sequence[str]) -> list[dict[str, Any] | None]:
        """``spec`` of many folders, their JSON parsed together."""
        texts = [self.spec_text(folder) or "" for folder in folders]
        present = [i for i, text in enumerate(texts) if text]
        found: list[dict[str, Any] | None] = [None] * len(folders)
        for i, value in zip(present, parse_objects([texts[i] for i in present]), strict=True):
            found[i] = value
        return found

    @staticmethod
    def attempt_asked(
        folder: str, record: Mapping[str, Any]
    ) -> tuple[tuple[str, int], tuple[str | None, float]]:
        """What ``attempt_codes`` asks of a folder's journal record: (folder, attempt),
        the attempt 1 if the record names none, and (its id, when it was submitted)."""
        attempt, jid = record.get("attempt"), record.get("jid")
        since = record_time(record.get("since", record.get("time")))
        key = (folder, attempt if type(attempt) is int and attempt > 0 else 1)
        return key, (str(jid) if jid else None, since)

    def attempt_codes(
        self, wanted: Mapping[tuple[str, int], tuple[str | None, float]]
    ) -> dict[tuple[str, int], int]:
        """How these (folder, attempt) pairs ended, by the jobs' own word: the
        ``job.<n>.rc`` a wrapper wrote, else the line a local shepherd appended to
        ``exits.jsonl``. ``wanted`` maps each pair to the attempt's recorded id and
        when its submission was journaled (see ``exit_codes``). Both a resumed run and
        ``xqueue status`` ask this of jobs whose controller was gone when they ended."""
        found: dict[tuple[str, int], int] = {}
        rest: dict[tuple[str, int], tuple[str | None, float]] = {}
        for (folder, attempt), (jid, since) in wanted.items():
            rc = read_code(os.path.join(self.path, folder, attempt_file(RC, attempt)))
            if rc is None:  # none yet, or torn: the shepherd's line may have it
                rest[folder, attempt] = (local_pid(jid), since)
            else:
                found[folder, attempt] = rc
        found.update(self.exit_codes(rest))
        return found

    def exit_codes(
        self, wanted: Mapping[tuple[str, int], tuple[str | None, float]]
    ) -> dict[tuple[str, int], int]:
        """The return codes ``exits.jsonl`` holds for these (folder, attempt) pairs.

        ``wanted`` maps each pair to (pid, since): a later run may start a job again at
        the same attempt number, so a line counts only if it was written after ``since``
        (when the attempt's submission was journaled: an earlier start's line is older)
        and, where the pid is known, names it.
        Read afresh on every call (a job adopted while still running ends later, when
        its shepherd appends the line), but only back to the lines written before the
        earliest ``since``, less ``_CLOCK_SLACK``: older ones cannot count.
        """
        if not wanted:
            return {}
        oldest = min(since for _, since in wanted.values()) - _CLOCK_SLACK

        def recent(line: bytes) -> bool:
            value = parse_object(line.decode(errors="replace"))
            return value is None or record_time(value.get("time")) >= oldest

        folders = {folder for folder, _ in wanted}
        found: dict[tuple[str, int], int] = {}
        for raw in read_recent_lines(self.path / EXITS_FILE, recent):
            line = raw.decode(errors="replace")
            tail = line.rpartition(DIR_TAIL)[2]
            if tail[:-2] not in folders or tail[-2:] != '"}':
                continue
            value = parse_object(line)  # None for a line torn by a crash
            if value is None:
                continue
            rc, attempt = value.get("rc"), value.get("attempt")
            if type(rc) is not int or type(attempt) is not int:
                continue
            key = (tail[:-2], attempt)
            start = wanted.get(key)
            if start is None:
                continue
            pid, since = start
            if record_time(value.get("time")) >= since and (
                not pid or str(value.get("jid", "")).partition("@")[0] == pid
            ):
                found[key] = rc
        return found

    def iter_records(self) -> Iterator[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
        """(folder path, spec, record) for every job folder, in index order."""
        folders = self.folders()
        for name, record in zip(folders, self.last_records(folders), strict=True):
            yield str(self.path / name), self.spec(name), record

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
                identity, cancel = read_claim(os.read(fd, 64).decode("ascii", errors="replace"))
                if cancel:
                    return None  # an `xqueue cancel`, not a run
                holder = identity.partition("@")[0]  # pid@start-time
                return holder if holder.isdigit() else "unknown"
            except OSError:
                return None
            return None  # closing the descriptor releases the probe's lock
        finally:
            os.close(fd)
