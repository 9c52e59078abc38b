"""The stand-in PanDA service of the plugin's tests: a server speaking PanDA's HTTP API
(``server.py``), a pilot that runs the payloads on this machine (``pilot.py``), and
``Panda``, the handle a test gets: one queue of its own on the session's server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio

from .server import FINAL, PandaStandIn


@dataclass
class Panda:
    server: PandaStandIn
    queue: str

    def opts(self, **kw: Any) -> dict[str, Any]:
        return {"queue": self.queue, "poll_interval": 0.2, "vanish_grace": 2.0, **kw}

    async def record(self, pid: str | None) -> dict[str, Any]:
        assert pid is not None
        found = await anyio.to_thread.run_sync(self.server.record, pid)
        assert found is not None, f"the server has no job {pid}"
        return found

    async def ended(self, pid: str | None) -> dict[str, Any]:
        """The record once PanDA itself has the job in a final state: the rc file
        settles a job while the server may still hold it (``holding``)."""
        with anyio.fail_after(10):
            while (found := await self.record(pid))["jobStatus"] not in FINAL:
                await anyio.sleep(0.05)
        return found

    async def named(self, prefix: str) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(self.server.named, prefix)
