"""Fixtures of the scheduler tests: the stand-in services (Batch and storage) that several
modules use (each backend's own tests and the conformance kit's). PanDA's are in its
plugin's tests (plugins/xqueue-panda/tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.standins.gcloud import Gcloud, running

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
