"""The ``xqueue`` command line."""

from __future__ import annotations

import gc
from collections.abc import Sequence

from . import commands


def main(argv: Sequence[str] | None = None) -> int:
    """The ``xqueue`` command (``commands.main``), as its process is about to exit.

    Every object left is frozen out of the cycle collector's reach first: the collector
    passes of the interpreter's exit took 20-25 ms of a command's time on this project's
    machines, about a fifth of its start-up, and 4 ms with them frozen. Python does not
    promise to finalize what is still alive at exit anyway, and the run has closed its
    workdir's files by then. Call ``commands.main`` to run a command in a process that
    goes on (a test's).
    """
    code = commands.main(argv)
    gc.freeze()
    return code


__all__ = ["main"]
