"""Fixtures of the scheduler tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def go(tmp_path: Path) -> Iterator[Path]:
    """A file the test's jobs wait for (``while [ ! -e go ]``).

    It is created when the test ends, however it ends, so that no job of a failed test
    keeps waiting on a cluster or server that other tests share.
    """
    path = tmp_path / "go"
    yield path
    path.touch()
