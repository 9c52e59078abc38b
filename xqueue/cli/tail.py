"""Following a file another process appends to, as ``tail -F`` does, but in lines.

The file may be replaced (a new run renames the old event stream away and starts a new
one), truncated, or end in half a line (its writer is mid-write, or died there). A
``Tail`` hands out only whole lines, says when the file it follows started over, and
reads through the workdir's reader rules: no link followed, a FIFO never waited on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from .._files import file_error, open_to_read
from ..errors import WorkdirError

CHUNK = 1 << 20


class Restart:
    """Marks where the file was replaced or truncated: what follows is a new file."""


RESTART = Restart()


@dataclass
class Tail:
    path: str
    offset: int = 0
    _fd: int | None = None
    _inode: int = 0
    _partial: bytes = b""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def exists(self) -> bool:
        return self._fd is not None

    def poll(self, limit: int = 64 * CHUNK) -> Iterator[bytes | Restart]:
        """The whole lines appended since the last poll (``RESTART`` before those of a
        file that started over), up to about ``limit`` bytes: call again for the rest."""
        if self._fd is None and not self._open():
            return
        current = self._current_inode()
        if current is not None and current != self._inode:
            # Replaced: the old file's last lines first, then the new file from its start.
            yield from self._read(limit)
            self.close()
            if not self._open():
                return
            yield RESTART
        elif os.fstat(self._fd_or_raise()).st_size < self.offset:
            self.offset, self._partial = 0, b""  # truncated: what is there now is new
            yield RESTART
        yield from self._read(limit)

    def caught_up(self) -> bool:
        """Whether every byte of the file was read (only half a line may be pending)."""
        if self._fd is None:
            return True
        return os.fstat(self._fd).st_size <= self.offset

    def _fd_or_raise(self) -> int:
        assert self._fd is not None
        return self._fd

    def _current_inode(self) -> int | None:
        try:
            return os.stat(self.path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            return None  # renamed away, the new one not made yet: finish the old one
        except OSError as exc:
            raise file_error(self.path, exc) from None

    def _open(self) -> bool:
        fd = open_to_read(self.path)
        if fd is None:
            return False
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise WorkdirError(f"{self.path!r} is not a regular file; move it away")
        self._fd, self._inode = fd, info.st_ino
        self.offset, self._partial = 0, b""
        return True

    def _read(self, limit: int) -> Iterator[bytes]:
        fd = self._fd_or_raise()
        read = 0
        while read < limit:
            try:
                data = os.pread(fd, CHUNK, self.offset)
            except OSError as exc:
                raise file_error(self.path, exc) from None
            if not data:
                return
            self.offset += len(data)
            read += len(data)
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()  # b"" after a newline; else a line being written
            yield from lines
