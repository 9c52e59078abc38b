"""The conformance kit: one pytest suite that every scheduler runs against its real backend.

A scheduler, built in or a plugin's, subclasses ``SchedulerConformance`` in its own test
suite and provides one fixture, ``backend``, returning a ``Backend``: the scheduler,
the options that reach the test system, and what the backend can do. The class brings
the tests: jobs run with their exit codes, stdout, stderr and environment, hostile names
and arguments stay data, one status query per tick, a retried attempt, a kill, a job
the backend forgets (if the backend can be made to), re-adoption of jobs a previous
controller submitted (by recorded id and by tag), and ``forks`` as a bound::

    import pytest
    from xqueue.testing import Backend, SchedulerConformance

    class TestMine(SchedulerConformance):
        @pytest.fixture
        def backend(self) -> Backend:
            return Backend("mine", {"queue": "test", "poll_interval": 0.2}, packs=True)

Every test is async and runs on asyncio and on trio (trio when it is installed), each
bounded by ``Backend.timeout``. pytest and anyio's pytest plugin are needed (xqueue's
``test`` extra has them); this module is never imported by ``import xqueue``.
"""

import pytest

# The kit's asserts explain themselves as a test module's do (it is imported as a library).
pytest.register_assert_rewrite("xqueue.testing._suite")

from ._backend import Backend  # noqa: E402
from ._suite import SchedulerConformance  # noqa: E402

__all__ = ["Backend", "SchedulerConformance"]
