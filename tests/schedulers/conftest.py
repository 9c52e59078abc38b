"""Fixtures of the scheduler tests: the stand-in services (Batch and storage, PanDA) that
several modules use (each backend's own tests and the conformance kit's)."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.standins.gcloud import Gcloud, running
from tests.standins.panda_pilot import StandInPilot
from tests.standins.panda_server import FINAL, PandaStandIn

BUCKET = "xq-stage"
LOCATION = "us-central1"


@pytest.fixture
def go(tmp_path: Path) -> Iterator[Path]:
    """A file the test's jobs wait for (``while [ ! -e go ]``).

    It is created when the test ends, however it ends, so that no job of a failed test
    keeps waiting on a cluster or server that other tests share.
    """
    path = tmp_path / "go"
    yield path
    path.touch()


# -- Google Cloud Batch: the stand-in and a real storage emulator -----------------------------
@pytest.fixture(scope="session")
def gcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gcloud]:
    with running(tmp_path_factory.mktemp("gcloud")) as services:
        services.storage_client().create_bucket(BUCKET)
        yield services


# -- PanDA: the stand-in server and its pilot ---------------------------------------------------
@pytest.fixture(scope="session")
def panda_server() -> Iterator[PandaStandIn]:
    """One stand-in server for the session: panda-client reads its address from the
    environment once, when it is first imported."""
    server = PandaStandIn()
    if "pandaclient.Client" in sys.modules:
        server.close()
        pytest.fail("pandaclient.Client was imported before the stand-in server started")
    os.environ["PANDA_URL_SSL"] = os.environ["PANDA_URL"] = server.url
    os.environ["PANDA_BEHIND_REAL_LB"] = "1"  # else import resolves a CERN host name
    # Plain http to loopback needs no credential; naming a proxy file only keeps the
    # client from printing "No valid grid proxy certificate found" on every call.
    os.environ["X509_USER_PROXY"] = "/nonexistent/xqueue-test-proxy"
    yield server
    server.close()


_queues = itertools.count()


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


@pytest.fixture
def panda(panda_server: PandaStandIn, tmp_path: Path) -> Iterator[Panda]:
    """A queue of its own, with four pilot slots serving it, for one test."""
    queue = f"XQ_TEST_{next(_queues)}"
    panda_server.reset_counts()
    pilot = StandInPilot(panda_server.url, queue, tmp_path / "pilot")
    try:
        yield Panda(panda_server, queue)
    finally:
        pilot.stop()
