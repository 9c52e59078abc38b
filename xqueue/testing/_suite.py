"""``SchedulerConformance``: the tests every scheduler must pass on its real backend.

Each test is one short run (a few jobs, a few seconds) that checks what the engine relies
on, through the jobs' own word where it can (their stdout, the files they write) rather
than the scheduler's. The jobs are shell commands for a POSIX ``sh`` with ``printf``,
``date`` and ``sleep``, so they also run in a busybox container. A test that needs the
job folder to be shared (a file the job writes there) checks that part only when the
scheduler's ``shared_fs`` says the controller sees it.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from ..failures import FailureClass
from ..job import Job
from ..states import JobStatus
from ..workdir import Workdir
from ._backend import Backend

# Arguments that a shell would act on, were any writer to let them out of their quotes:
# each must reach the program byte for byte.
HOSTILE_ARGS = [
    "a  b",
    "'q'",
    '"dq"',
    "$(echo PWNED)",
    "`echo PWNED`",
    "${HOME}",
    "x\ny",
    "cr\rlf",
    "; echo PWNED #",
    "*",
    "",
    "-n",
    "\\",
    "%s%n",
    "ünïcødé ✓",
]
HOSTILE_NAME = "kit $(echo PWNED) `x` 'q' \"dq\"\n#SBATCH --wrap=x\n#$ -N pwned ; *"
HOSTILE_ENV = "value 'q' \"dq\" $(echo PWNED) `x`\nsecond line"

# A timestamp: the wall clock where date has nanoseconds, else the kernel's uptime (a
# busybox date has no %N; a container shares its host's kernel).
NOW = 'd=$(date +%s.%N); case $d in *N) cut -d" " -f1 /proc/uptime ;; *) echo "$d" ;; esac'


async def _wait_for(job: Job, status: JobStatus, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while job.status is not status:
            if job.status.is_final:
                raise AssertionError(f"job {job.index} ended ({job.status}) before {status}")
            await anyio.sleep(0.05)


async def _text(path: str) -> str:
    """A file's text exactly: no newline translation, so a carriage return stays one."""
    return (await anyio.Path(path).read_bytes()).decode()


async def _attempt_rcs(q: Any, job: Job) -> dict[int, int]:
    """Each attempt's return code as the workdir's journal recorded it."""
    folder = os.path.basename(job.dir)
    text = await anyio.Path(q.workdir.path, "journal.jsonl").read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {
        r["attempt"]: r["rc"] for r in records if r.get("dir") == folder and r.get("rc") is not None
    }


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans that overlap at any moment (an end before a start at a tie)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


class SchedulerConformance:
    """Subclass it, provide the ``backend`` fixture, and the tests below run on it."""

    pytestmark: ClassVar[Any] = pytest.mark.anyio

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        if request.param == "trio":
            pytest.importorskip("trio")
        return str(request.param)

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError("a SchedulerConformance subclass provides the backend fixture")

    @pytest.fixture
    def root(self, backend: Backend, tmp_path: Path) -> Iterator[Path]:
        """The folder the test's workdir goes in: ``Backend.root`` (a fresh folder in it,
        removed afterwards), else ``tmp_path``."""
        if backend.root is None:
            yield tmp_path
            return
        # Plain mkdir: the shared folder's default ACL then reaches the system's user.
        path = backend.root / f"kit-{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(path)
        yield path
        shutil.rmtree(path, ignore_errors=True)

    @pytest.fixture
    def left(self, backend: Backend) -> Iterator[list[Job]]:
        """Jobs to hand to ``Backend.cleanup`` when the test ends, however it ends."""
        jobs: list[Job] = []
        yield jobs
        if backend.cleanup is not None and jobs:
            backend.cleanup(jobs)

    # -- the tests ------------------------------------------------------------------------
    async def test_jobs_run_with_their_codes_outputs_and_environment(
        self, backend: Backend, root: Path, left: list[Job]
    ) -> None:
        """Exit codes, stdout and stderr come back per job; hostile arguments, a hostile
        name and environment values arrive untouched; one status query serves a tick."""
        q = backend.queue(root / "wd", forks=8, error_strategy="ignore")
        codes = [0, 1, 3, 0]
        jobs = [
            await q.feed(["sh", "-c", f"echo out {i}; echo err {i} >&2; exit {rc}"])
            for i, rc in enumerate(codes)
        ]
        argv = await q.feed(["printf", "[%s]\\n", *HOSTILE_ARGS], name=HOSTILE_NAME)
        env = await q.feed(
            'printf "%s|%s|%s|%s" "$XQ_KIT" "$XQ_EMPTY" "$XQUEUE_JOB_INDEX" "$XQUEUE_JOB_ATTEMPT"',
            envs={"XQ_KIT": HOSTILE_ENV, "XQ_EMPTY": ""},
        )
        # A line that starts like an option is a command, not the shell's options.
        dash = await q.feed("-xq-kit-no-such-command 2>/dev/null; echo ran")
        left.extend([*jobs, argv, env, dash])
        with anyio.fail_after(backend.timeout):
            await q.run_until_complete()

        for i, (job, rc) in enumerate(zip(jobs, codes)):
            assert (job.status, job.rc) == (
                JobStatus.FINISHED if rc == 0 else JobStatus.FAILED,
                rc,
            ), job.reason
            assert await _text(job.stdout_path) == f"out {i}\n"
            assert await _text(job.stderr_path) == f"err {i}\n"
        assert argv.status is JobStatus.FINISHED, argv.reason
        assert await _text(argv.stdout_path) == "".join(f"[{a}]\n" for a in HOSTILE_ARGS)
        assert env.status is JobStatus.FINISHED, env.reason
        assert await _text(env.stdout_path) == f"{HOSTILE_ENV}||{env.index}|1"
        assert (dash.status, await _text(dash.stdout_path)) == (JobStatus.FINISHED, "ran\n")

        stats = q.statistics()
        assert stats.submit_calls == (1 if backend.packs else len(q.jobs))
        if not backend.cls.awaits_completion:
            # A backend asking per job would make len(jobs) queries in a tick; two more
            # allow for an accounting lookup of jobs that ended between two queries.
            assert stats.ticks >= 1
            assert stats.status_calls <= stats.ticks * backend.status_calls_per_tick + 2

    async def test_a_failed_attempt_is_retried_alone(
        self, backend: Backend, root: Path, left: list[Job]
    ) -> None:
        """Only failed jobs are submitted again; each attempt keeps its own return code."""
        q = backend.queue(root / "wd", forks=4, error_strategy="retry", num_retries=2)
        flaky = await q.feed(
            'echo "attempt $XQUEUE_JOB_ATTEMPT"; [ "$XQUEUE_JOB_ATTEMPT" -ge 2 ] || exit 3'
        )
        bad = await q.feed("echo try; exit 5")
        good = await q.feed(["echo", "once"])
        left.extend([flaky, bad, good])
        with anyio.fail_after(backend.timeout):
            await q.run_until_complete()
        assert (flaky.status, flaky.rc, flaky.attempt) == (JobStatus.FINISHED, 0, 2)
        assert await _text(flaky.stdout_path) == "attempt 2\n"
        assert (await _attempt_rcs(q, flaky)) == {1: 3, 2: 0}
        assert (bad.status, bad.rc, bad.attempt) == (JobStatus.FAILED, 5, 3)
        assert (await _attempt_rcs(q, bad)) == {1: 5, 2: 5, 3: 5}
        assert (good.status, good.attempt) == (JobStatus.FINISHED, 1)
        assert await _text(good.stdout_path) == "once\n"
        submits = q.statistics().submit_calls
        if backend.packs:  # the batch, then the failed ones (together or not)
            assert 3 <= submits <= 5
        else:
            assert submits == 6

    async def test_a_running_job_is_killed(
        self, backend: Backend, root: Path, left: list[Job]
    ) -> None:
        """A kill ends the job as KILLED with one kill call, and the job stops running."""
        beat = 'while :; do echo x >> "$XQUEUE_JOB_DIR/beat"; sleep 0.1; done'
        async with backend.queue(root / "wd", forks=2) as q:
            job = await q.feed(beat)
            left.append(job)
            await _wait_for(job, JobStatus.RUNNING, backend.timeout)
            if backend.cls.shared_fs:
                with anyio.fail_after(backend.timeout):
                    while not await anyio.Path(job.path("beat")).exists():
                        await anyio.sleep(0.05)
            assert await q.kill(job)
            with anyio.fail_after(backend.timeout):
                await job.wait()
        assert job.status is JobStatus.KILLED, job.reason
        assert q.statistics().kill_calls == 1
        if backend.cls.shared_fs:  # the job's own heartbeat stops, for good
            with anyio.fail_after(backend.timeout):
                size = -1
                while size != (size := (await anyio.Path(job.path("beat")).stat()).st_size):
                    await anyio.sleep(0.6)

    async def test_a_job_the_backend_forgets_vanishes(
        self, backend: Backend, root: Path, left: list[Job]
    ) -> None:
        """A job the backend no longer knows, with no return code, fails as vanished."""
        if backend.forget is None:
            pytest.skip("the backend cannot be made to forget a job (Backend.forget)")
        forget = backend.forget
        q = backend.queue(
            root / "wd", error_strategy="ignore", scheduler_opts={"vanish_grace": 0.5}
        )
        job = await q.feed("sleep 8")
        left.append(job)

        async def forget_when_running() -> None:
            await _wait_for(job, JobStatus.RUNNING, backend.timeout)
            await forget(job)

        with anyio.fail_after(backend.timeout):
            async with anyio.create_task_group() as tg:
                tg.start_soon(forget_when_running)
                await q.run_until_complete()
        assert job.status is JobStatus.FAILED
        assert job.failure is FailureClass.VANISHED
        assert job.reason.startswith("vanished"), job.reason

    async def test_jobs_of_an_earlier_controller_are_readopted(
        self, backend: Backend, root: Path, left: list[Job]
    ) -> None:
        """A controller that submitted and died: the next run adopts its jobs (by their
        recorded id, or by their tag when none was recorded) and runs none of them again."""
        workdir = root / "wd"
        marker = workdir / "ran"
        shared = backend.cls.shared_fs  # then each job also leaves its mark in the workdir
        ran = f"echo {{}} >> {shlex.quote(str(marker))}; " if shared else ""
        commands = [f"{ran.format(i)}sleep 1; echo done {i}" for i in range(3)]
        wd = Workdir(workdir)
        first = backend.make_scheduler()
        first.forks = len(commands)
        await first.open(wd)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.serve)  # as the earlier controller's run did
                early = [Job(i, c) for i, c in enumerate(commands)]
                for job in early:
                    wd.prepare(job, make=True)
                    job.attempt = 1
                left.extend(early)
                ids = await first.submit_jobs(early)
                assert all(isinstance(jid, str) for jid in ids), ids
                for job, jid in zip(early, ids):
                    job.jid = str(jid)
                # The others: the controller died before it recorded their ids.
                for job in early if not backend.recovers_by_tag else early[:1]:
                    job.status = JobStatus.SUBMITTED
                    wd.record(job)
                wd.unlock()

                q = backend.queue(workdir, forks=len(commands))
                jobs = [await q.feed(c) for c in commands]
                with anyio.fail_after(backend.timeout):
                    await q.run_until_complete()
                tg.cancel_scope.cancel()
        finally:
            await first.aclose()
        # The recorded id is kept; the others were found (their spelling is the
        # backend's: a local id's start time may be read back to another precision).
        assert jobs[0].jid == ids[0] and all(j.jid for j in jobs)
        for i, job in enumerate(jobs):
            assert (job.status, job.rc, job.attempt) == (JobStatus.FINISHED, 0, 1), job.reason
            assert await _text(job.stdout_path) == f"done {i}\n"
        assert q.statistics().submit_calls == 0
        if shared:  # each ran once
            assert sorted((await _text(str(marker))).split()) == ["0", "1", "2"]

    async def test_forks_bounds_the_jobs_running_at_once(
        self, backend: Backend, root: Path, left: list[Job]
    ) -> None:
        """Three resource shapes, two forks: never more than two jobs run at once, by the
        times the jobs report themselves (arrays, if any, share forks)."""
        forks, shapes = 2, 3
        q = backend.queue(root / "wd", forks=forks)
        command = f"{NOW}; sleep 0.5; {NOW}"
        jobs = [await q.feed(command, resources={"walltime": 600 + i % shapes}) for i in range(6)]
        left.extend(jobs)
        with anyio.fail_after(backend.timeout):
            await q.run_until_complete()
        assert [j.status for j in jobs] == [JobStatus.FINISHED] * len(jobs)
        spans = []
        for job in jobs:
            start, end = (float(x) for x in (await _text(job.stdout_path)).split())
            spans.append((start, end))
        assert _max_overlap(spans) <= forks, spans
        submits = q.statistics().submit_calls
        if not backend.packs:
            assert submits == len(jobs)
        elif q.scheduler.enforces_forks:  # handed the whole batch: one submission a shape
            assert submits == shapes
        else:
            # It keeps no forks of its own: the engine hands it only as many jobs as
            # there are free slots (at most forks), and how many come together depends
            # on when the others end.
            assert -(-len(jobs) // forks) <= submits <= len(jobs)
