"""Folders for benchmark runs, removed only when the benchmark ends.

Removing a run's thousands of files right before the next run is timed made that next
run slow on this project's test machines: their ext4 disk has no journal, and ext4
without one will not reuse an inode freed in the last minute (five while its table block
is unwritten), so each file created then scans past every freed one
(``find_inode_bit``/``recently_deleted`` filled a kernel profile). The run that followed
a removal paid for it: ``xqueue run`` of 2,000 jobs took 1.96 s just after one and 1.32 s
with the earlier folder kept, and the file-less ``xargs`` never did. Kept until the end,
every run creates its files the same way. The same holds between benchmarks: on such a
disk, measure five minutes after the last big removal (a test run's, another
benchmark's), or the first runs pay for it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def kept_folders(where: str) -> Iterator[Callable[[str], str]]:
    """``new(prefix)`` makes a fresh folder under ``where``; all go when the block ends."""
    made: list[str] = []

    def new(prefix: str) -> str:
        made.append(tempfile.mkdtemp(prefix=prefix, dir=where))
        return made[-1]

    try:
        yield new
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
