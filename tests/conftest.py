"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests must not pick up hook plugins installed in the environment.
os.environ["XQUEUE_DISABLE_PLUGIN_AUTOLOAD"] = "1"

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "wd"


def zombie_children() -> list[int]:
    """Exited children of this process that nobody reaped."""
    me, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and fields[1].decode() == me:
            found.append(int(entry))
    return found


@pytest.fixture(autouse=True)
def _no_unreaped_jobs() -> Iterator[None]:
    """Every run must reap what it spawns: a zombie left behind means a job was forgotten."""
    before = set(zombie_children())
    yield
    left = set(zombie_children()) - before
    assert not left, f"the test left unreaped child processes {sorted(left)}"
