"""Test helpers: real schedulers and plugins used by several test modules."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from xqueue import Job, JobState, JobStatus, Scheduler, Xqueue, hookimpl


async def wait_running(job: Job, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while job.status is not JobStatus.RUNNING:
            await anyio.sleep(0.1)


SLURM_FAST = {"poll_interval": 0.2, "vanish_grace": 2.0}
"""Slurm options for tests: short intervals."""
SGE_FAST = {"poll_interval": 0.3, "vanish_grace": 3.0}


async def run_watching_peak(q: Xqueue, timeout: float) -> int:
    """Run ``q`` to its end within ``timeout``; return the most jobs it had active at
    once (sampled every 50 ms). A test of "one status call per tick" needs it: the call
    is batched only if many jobs were active at a tick, however long the run took."""
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, q.statistics().active)
            await anyio.sleep(0.05)

    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await q.run_until_complete()
            tg.cancel_scope.cancel()
    return peak


def cluster_queue(scheduler: str, fast: dict[str, Any], workdir: Path, **kw: Any) -> Xqueue:
    """A queue on a real cluster with short test intervals; ``scheduler_opts`` add to them."""
    opts = {**fast, **kw.pop("scheduler_opts", {})}
    return Xqueue(scheduler, workdir=workdir, scheduler_opts=opts, **kw)


def remove_after(command: str) -> Iterator[list[Job]]:
    """Jobs to remove from a cluster with ``command`` (scancel, qdel) when a test ends."""
    jobs: list[Job] = []
    yield jobs
    ids = [j.jid for j in jobs if j.jid]
    if ids:
        subprocess.run([command, *ids], capture_output=True, timeout=30)


def ssh_server(env: dict[str, str], port: str, **extra: Any) -> dict[str, Any]:
    """One entry of the SSH scheduler's ``servers`` for an sshd of ci/ssh.sh, as root
    (pytest's tmp_path is root's, mode 0700)."""
    return {
        "host": env["XQ_SSH_HOST"],
        "port": int(port),
        "user": "root",
        "keyfile": env["XQ_SSH_KEY"],
        "known_hosts": env["XQ_SSH_KNOWN_HOSTS"],
        **extra,
    }


# -- container engines ---------------------------------------------------------------------
ROOTFS = Path(os.environ.get("XQ_IMAGE_DIR", "/var/tmp/xqueue-images")) / "busybox-rootfs.tar"
IMAGE = "localhost/xqueue-test-busybox:latest"


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self._path)
        self.sock = sock


def api(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """One synchronous request to an engine's API (the witness, independent of aiodocker)."""
    conn = _UnixHTTP(url.removeprefix("unix://"))
    try:
        headers = {"Content-Type": "application/x-tar"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data) if data else None
    except ValueError:
        return resp.status, data


async def call_api(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """``api`` for async tests: the request is made in a worker thread."""
    return await anyio.to_thread.run_sync(api, url, method, path, body)


_imported: set[str] = set()


def container_engine(request: pytest.FixtureRequest, name: str) -> dict[str, str]:
    """bin, url and an image imported from the ci/images.sh tarball through that engine's
    API (once per engine and session), for ``scheduler_opts`` of the container scheduler.

    The import is tagged with the tarball's digest and skipped when that tag exists:
    podman's API keeps each upload as /var/tmp/api_load.tar*, 2 MB left by every session
    that imported again. ``IMAGE`` (``latest``) is tagged onto it each time."""
    url = str(request.getfixturevalue(f"{name}_socket"))
    rootfs: Path = request.getfixturevalue("rootfs")
    if url not in _imported:
        data = rootfs.read_bytes()
        repo, digest = IMAGE.rpartition(":")[0], hashlib.sha256(data).hexdigest()[:16]
        status, answer = api(url, "GET", f"/images/{repo}:{digest}/json")
        if status == 404:
            status, answer = api(
                url, "POST", f"/images/create?fromSrc=-&repo={repo}:{digest}", data
            )
        assert status == 200, answer
        status, answer = api(url, "POST", f"/images/{repo}:{digest}/tag?repo={repo}&tag=latest")
        assert status in (200, 201), answer
        _imported.add(url)
    return {"bin": name, "url": url, "image": IMAGE}


class EndsAtOnce(Scheduler):
    """Ends each job as soon as it is submitted, as ``ending`` says (rc 0 by default): no
    process, nothing to clean up, and jobs submitted together end in one tick, which real
    processes do only now and then."""

    name = "ends-at-once"
    awaits_completion = True
    running_on_submit = True
    ending = JobState(JobStatus.FINISHED, 0)

    async def submit_job(self, job: Job) -> str:
        return str(job.index)

    async def kill_job(self, job: Job) -> None:
        pass

    async def job_is_running(self, job: Job) -> bool:
        return False

    async def wait_job(self, job: Job) -> JobState:
        return self.ending


class DetachedScheduler(Scheduler):
    """A custom scheduler written the xqute way: only the three single-job methods.

    It starts each job's wrapper script as a detached process and is *polled*, so it
    exercises the base class's batched defaults and the rc-file reconciliation.
    """

    name = "detached"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.procs: dict[str, Process] = {}
        self.poll_sizes: list[int] = []

    async def submit_job(self, job: Job) -> str:
        script = await anyio.to_thread.run_sync(self.write_script, job)
        proc = await anyio.open_process(
            ["/bin/sh", script],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs[str(proc.pid)] = proc
        return str(proc.pid)

    async def kill_job(self, job: Job) -> None:
        assert job.jid
        try:
            os.killpg(int(job.jid), signal.SIGKILL)
        except ProcessLookupError:
            pass
        await self.procs[job.jid].wait()

    async def job_is_running(self, job: Job) -> bool:
        assert job.jid
        return self.procs[job.jid].returncode is None

    async def aclose(self) -> None:
        # The rc file can settle a job before its wrapper shell has exited: every wrapper
        # is reaped here, at the end of the run.
        while self.procs:
            _, proc = self.procs.popitem()
            with anyio.fail_after(10):
                await proc.wait()
            await proc.aclose()

    async def poll_jobs(self, jobs: Any) -> Any:
        self.poll_sizes.append(len(jobs))
        return await super().poll_jobs(jobs)


class Recorder:
    """A plugin that records every hook call as (hook, job index or None)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []

    def _add(self, hook: str, job: Job | None = None) -> None:
        self.calls.append((hook, None if job is None else job.index))

    @hookimpl
    def on_init(self) -> None:
        self._add("on_init")

    @hookimpl
    async def on_shutdown(self, reason: str) -> None:
        self._add(f"on_shutdown:{reason}")

    @hookimpl
    def on_job_init(self, job: Job) -> None:
        self._add("on_job_init", job)

    @hookimpl
    async def on_job_queued(self, job: Job) -> None:
        self._add("on_job_queued", job)

    @hookimpl
    def on_job_submitting(self, job: Job) -> None:
        self._add("on_job_submitting", job)

    @hookimpl
    async def on_job_submitted(self, job: Job) -> None:
        self._add("on_job_submitted", job)

    @hookimpl
    def on_job_started(self, job: Job) -> None:
        self._add("on_job_started", job)

    @hookimpl
    def on_job_killing(self, job: Job) -> None:
        self._add("on_job_killing", job)

    @hookimpl
    def on_job_killed(self, job: Job) -> None:
        self._add("on_job_killed", job)

    @hookimpl
    def on_job_failed(self, job: Job) -> None:
        self._add("on_job_failed", job)

    @hookimpl
    async def on_job_succeeded(self, job: Job) -> None:
        self._add("on_job_succeeded", job)

    @hookimpl
    def on_job_retrying(self, job: Job) -> None:
        self._add("on_job_retrying", job)

    @hookimpl
    def on_job_skipped(self, job: Job) -> None:
        self._add("on_job_skipped", job)

    def for_job(self, index: int) -> list[str]:
        return [hook for hook, i in self.calls if i == index]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process; a zombie (exited, not yet reaped) is dead."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


async def is_alive(pid: int) -> bool:
    """``process_alive`` for async tests: /proc is read in a worker thread (tests/blocking.py)."""
    return await anyio.to_thread.run_sync(process_alive, pid)


async def reap_lingering_shepherds(timeout: float = 10) -> None:
    """Wait until the shepherds a run left with jobs running (a vetoed kill) have exited,
    and reap them: a test that lets a job go must not leave a zombie to the next one."""
    from xqueue.schedulers import local

    with anyio.fail_after(timeout):
        while local._LINGERING:
            local.reap()
            await anyio.sleep(0.05)


async def read_text(path: str | os.PathLike[str]) -> str:
    """A file's text, for async tests: read without blocking the event loop."""
    return await anyio.Path(path).read_text()


async def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes, for async tests: read without blocking the event loop."""
    return await anyio.Path(path).read_bytes()


def cancellable_run(q: Xqueue) -> tuple[anyio.CancelScope, Callable[[], Awaitable[None]]]:
    """A run of ``q`` for a test to start in its task group, and a scope to cancel it
    with when the test chooses (a controller cancelled at that moment)."""
    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            await q.run_until_complete()

    return scope, run


async def kill_once_exited(q: Xqueue) -> tuple[Job, bool]:
    """``true`` fed to a run that polls seldom, killed once its wrapper has written rc 0,
    before the run heard of it: the job once it ended, and what ``kill()`` said."""
    from xqueue.job import RC

    job = await q.feed("true")
    rc_file = anyio.Path(job.attempt_path(RC))
    with anyio.fail_after(60):
        while not await rc_file.exists():
            await anyio.sleep(0.02)
    killed = await q.kill(job)
    with anyio.fail_after(60):
        await job.wait()
    return job, killed


async def kill_as_it_ends(q: Xqueue, go: Path) -> tuple[Job, bool]:
    """A job that ends once ``go`` exists, killed once it runs (the run's kill command
    makes ``go`` and lets it end first): the job once it ended, and what ``kill()`` said."""
    job = await q.feed(f"until [ -e {go} ]; do sleep 0.05; done")
    with anyio.fail_after(60):
        while job.status is not JobStatus.RUNNING:
            await anyio.sleep(0.05)
    killed = await q.kill(job)
    with anyio.fail_after(60):
        await job.wait()
    return job, killed


def plugin_distribution(site: Path, name: str, group: str, entry: str, source: str) -> str:
    """``site`` made a folder to put on ``sys.path`` (``PYTHONPATH``) holding a real
    installed distribution ``name``: a dist-info whose entry point ``entry`` (``key =
    module:attr``) is in ``group`` (``xqueue.plugins``, ``xqueue.schedulers``), and the
    module, whose source is ``source``; ``PYTHONPATH`` with it first."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    module = entry.split("=", 1)[1].strip().split(":")[0]
    (site / f"{module}.py").write_text(source)
    return os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
