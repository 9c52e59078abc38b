"""Fixtures of the PanDA plugin's tests: the stand-in server for the session and, per
test, a queue of its own with a pilot serving it.

These tests are the plugin's, as a third-party scheduler's would be: they need only
xqueue, the plugin, panda-client and pytest (nothing of xqueue's own test tree).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from panda_standin import Panda
from panda_standin.pilot import StandInPilot
from panda_standin.server import PandaStandIn


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``), the tests of one session server stay
    on one worker, so it is started once rather than on every worker."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.xdist_group("panda"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "wd"


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
