"""The ``xqueue`` command line.

Nothing is imported here until the command runs: the console script imports this
package first, and the command (with the engine under it) takes 50-70 ms to load. A
Ctrl-C in that time is then the command's to handle (``console_main``), not a traceback
out of an import.
"""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xqueue`` with ``argv`` (``sys.argv[1:]`` if None) and return its exit
    status, in a process that goes on (a test, another program)."""
    from .commands import main as command

    return command(argv)


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
    try:
        from .commands import main as command
    except KeyboardInterrupt:
        # Ctrl-C before the command began: nothing has started, so there is nothing to
        # stop or to report; the status of a command a Ctrl-C stopped (EXIT_SIGINT).
        code = 130
    else:
        gc.freeze()
        code = command(sys.argv[1:])
    # The command is over: a Ctrl-C now (a second one, soon after the one that stopped
    # the run) has nothing left to stop. Python's own handler would raise it inside the
    # exit's cleanup ("Exception ignored in: <atexit ...> KeyboardInterrupt"); the
    # default action ends the process quietly, as the signal's.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return code


__all__ = ["console_main", "main"]
