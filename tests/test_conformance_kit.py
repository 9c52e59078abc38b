"""The conformance kit catches a backend that breaks the contract (a kit that could not
fail would prove nothing about the backends that pass it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import DetachedScheduler
from xqueue.testing import Backend, SchedulerConformance

pytestmark = pytest.mark.anyio


async def test_a_backend_asking_about_each_job_fails_the_batched_status_check(
    tmp_path: Path,
) -> None:
    # DetachedScheduler is polled through the default jobs_are_running: one call per job.
    backend = Backend(DetachedScheduler, {"poll_interval": 0.1})
    kit = SchedulerConformance()
    with pytest.raises(AssertionError, match=r"\)\.status_calls"):
        await kit.test_jobs_run_with_their_codes_outputs_and_environment(backend, tmp_path, [])


async def test_a_backend_that_does_not_pack_fails_when_it_says_it_does(tmp_path: Path) -> None:
    # Caught where every job is fed at once with room for all: one submission is expected.
    # (The forks test hands a backend that keeps no forks of its own only the free slots,
    # two jobs of different shapes at a time, so packing cannot show there.)
    backend = Backend(DetachedScheduler, {"poll_interval": 0.1}, packs=True)
    kit = SchedulerConformance()
    with pytest.raises(AssertionError, match=r"\)\.submit_calls"):
        await kit.test_jobs_run_with_their_codes_outputs_and_environment(backend, tmp_path, [])
