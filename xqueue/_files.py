"""Reading and writing one file of a workdir safely: the primitives under ``records``
(reading) and ``workdir`` (writing), on their own so that a process which needs only
them, the job of a Python call (``_callrun``), loads nothing else of xqueue.

A workdir may be shared with others who can write to it, so nothing here follows a link
planted at a name, hangs on a FIFO or takes a directory for a file, and each failure is
a one-line ``WorkdirError`` that says what to do about it.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import WorkdirError

# O_NONBLOCK: opening a planted FIFO must not hang the reader (it reads as empty).
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
CHUNK = 1 << 16
# O_NOFOLLOW: a link planted where xqueue writes a file must not redirect the write.
# O_NONBLOCK: a planted FIFO must not hang the open (it is then refused as not a file).
CREATE_FLAGS = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def file_error(path: str | os.PathLike[str], exc: OSError, doing: str = "read") -> WorkdirError:
    """A one-line error for a workdir file xqueue cannot use, saying what to do about it."""
    if exc.errno == errno.ELOOP:
        return WorkdirError(
            f"{os.fspath(path)!r} is a symbolic link, where xqueue only ever writes plain "
            "files: someone else put it there; remove it and check who can write to the workdir"
        )
    if exc.errno == errno.ENXIO:  # a FIFO nobody reads, or a device: not xqueue's
        return WorkdirError(
            f"{os.fspath(path)!r} is not a plain file, which xqueue never makes: someone "
            "else put it there; remove it and check who can write to the workdir"
        )
    if exc.errno == errno.EISDIR:
        return WorkdirError(
            f"{os.fspath(path)!r} is a directory where xqueue keeps a file; move it away"
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # out of space or of inodes
        fix = "make room on its file system (space and inodes: df -h, df -i) and run again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "fix its permissions or use another workdir"
    else:
        fix = "use another workdir if it persists"
    return WorkdirError(f"cannot {doing} {os.fspath(path)!r}: {exc.strerror or exc}; {fix}")


def open_to_read(path: str | os.PathLike[str]) -> int | None:
    """A descriptor of a workdir file open for reading; None if there is none, and a
    one-line ``WorkdirError`` (``file_error``) for anything else in the way."""
    try:
        return os.open(path, READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise file_error(path, exc) from None


def read_bytes(path: str | os.PathLike[str], *, regular: bool = False) -> bytes | None:
    """The content of a file in the workdir; None if there is none.

    ``regular``: the file must be a regular file (the journal); a directory, FIFO or
    device there is an error rather than something to read.
    """
    fd = open_to_read(path)
    if fd is None:
        return None
    try:
        size = CHUNK
        if regular:
            size = max(check_regular(path, fd), CHUNK)
        data = os.read(fd, size)
        if len(data) == size:  # rare for state files (a few hundred bytes); a growing journal
            parts = [data]
            while chunk := os.read(fd, size):
                parts.append(chunk)
            data = b"".join(parts)
        return data
    except OSError as exc:
        raise file_error(path, exc) from None
    finally:
        os.close(fd)


def check_regular(path: str | os.PathLike[str], fd: int) -> int:
    """The size of the regular file open at ``fd``; a one-line error for anything else."""
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise file_error(path, IsADirectoryError(errno.EISDIR, "Is a directory"))
    if not stat.S_ISREG(info.st_mode):
        raise WorkdirError(f"{os.fspath(path)!r} is not a regular file; move it away")
    return info.st_size


def atomic_write(path: str, text: str | bytes, mode: int = 0o666) -> None:
    """Write a file whole or not at all, through a fresh temporary file.

    The temporary name is unpredictable and created with ``O_EXCL``, so nobody can have
    planted a link there; the rename replaces whatever is at ``path`` (even a link)
    without following it.
    """
    tmp = f"{path}.{os.urandom(6).hex()}.tmp"
    write_new(tmp, text.encode() if isinstance(text, str) else text, mode)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        unlink_quietly(tmp)
        raise file_error(path, exc, "write") from None


def _write_all(fd: int, data: bytes) -> None:
    """Write everything, then close the descriptor (even if a write fails)."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def write_new(path: str, data: bytes, mode: int = 0o666) -> None:
    """Create a file that must not exist yet (``O_EXCL``, no link followed) and write it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_EXCL | CREATE_FLAGS, mode)
    except OSError as exc:
        raise file_error(path, exc, "create") from None
    try:
        _write_all(fd, data)
    except OSError as exc:
        unlink_quietly(path)
        raise file_error(path, exc, "write") from None
    except BaseException:
        unlink_quietly(path)
        raise


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
