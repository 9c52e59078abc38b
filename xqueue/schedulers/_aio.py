"""Call asyncio-only client libraries (asyncssh, aiodocker) from any anyio backend.

Under asyncio the coroutines are simply awaited in the caller's loop. Under trio they
run in a private asyncio loop on a daemon thread, and the trio task sleeps on an event
that the loop thread sets through the trio token when the result is ready: no worker
thread is held per call, so hundreds of jobs waiting at once cost nothing but futures.
Every object a library creates (connections, HTTP sessions) lives in the loop that
created it, so a scheduler sends all of its work through one bridge.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def _in_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class AsyncioBridge:
    """Runs coroutine functions in an asyncio loop, whatever loop the caller runs."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.native = True

    async def start(self) -> None:
        """Pick the mode from the running backend; start the loop thread if it is not asyncio."""
        self.native = _in_asyncio()
        if self.native or self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="xqueue-asyncio", daemon=True)
        self._loop = loop
        self._thread.start()
        await anyio.to_thread.run_sync(ready.wait)  # not on the event loop

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self.native:
            return await fn(*args, **kwargs)
        assert self._loop is not None, "AsyncioBridge.start() was not called"
        import trio  # the only other anyio backend

        token = trio.lowlevel.current_trio_token()
        done = anyio.Event()

        async def coro() -> T:
            return await fn(*args, **kwargs)

        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro(), self._loop)

        def wake(_: Future[T]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        fut.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            fut.cancel()
            raise
        return fut.result()

    async def stop(self) -> None:
        """Stop the loop thread (after the caller closed what lives in it)."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            await anyio.to_thread.run_sync(thread.join, 10)  # not on the event loop
