"""The ``xqueue`` command line."""

from __future__ import annotations

import gc
import signal
import sys

from .commands import main


def console_main() -> int:
    """The ``xqueue`` command as a process of its own (the console script, ``python -m
    xqueue``): ``main``, with what its imports made frozen out of the cycle collector's
    reach first.

    The collector's passes over those objects (modules, classes, functions: never
    garbage) took 20-25 ms of the interpreter's exit, about a fifth of a command's
    start-up on this project's machines. What the command itself makes is not frozen,
    so the exit still collects and finalizes it (a plugin's file left to be closed by
    its collection is flushed). ``main`` is for a process that goes on.
    """
    gc.freeze()
    code = main(sys.argv[1:])
    # The command is over: a Ctrl-C now (a second one, soon after the one that stopped
    # the run) has nothing left to stop. Python's own handler would raise it inside the
    # exit's cleanup ("Exception ignored in: <atexit ...> KeyboardInterrupt"); the
    # default action ends the process quietly, as the signal's.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return code


__all__ = ["console_main", "main"]
