"""xqueue's conformance kit on the PanDA plugin: all a third-party scheduler's suite
needs is this class, a ``backend`` fixture over its own service; the tests come from
``xqueue.testing``."""

from __future__ import annotations

import anyio
import pytest
from panda_standin import Panda

from xqueue import Job
from xqueue.testing import Backend, SchedulerConformance


class TestPanda(SchedulerConformance):
    @pytest.fixture
    def backend(self, panda: Panda) -> Backend:
        async def forget(job: Job) -> None:
            await anyio.to_thread.run_sync(panda.server.forget, str(job.jid))

        return Backend("panda", panda.opts(), packs=True, forget=forget)
