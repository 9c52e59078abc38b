"""Running a blocking call off the event loop in a thread that cannot hold up exit.

anyio's worker threads are not daemons: a run whose event loop is abandoned (stopped
under it, never cancelled, as in the xqute-style misuse the queue warns about) would
keep its process from exiting while an idle worker waits for more work. The calls a
run makes at its start (writing run.json) go through here instead: a daemon thread
per call, its outcome handed back to the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

T = TypeVar("T")


async def run_in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append((True, fn(*args)))
        except BaseException as exc:
            outcome.append((False, exc))
        try:
            anyio.from_thread.run_sync(done.set, token=token)
        except RuntimeError:  # the loop is gone: nobody waits any more
            pass

    threading.Thread(target=target, name="xqueue-io", daemon=True).start()
    await done.wait()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]
