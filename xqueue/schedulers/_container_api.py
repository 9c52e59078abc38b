"""docker and podman through their (Docker-compatible) API, with aiodocker.

aiodocker runs on asyncio only: every call goes through ``AsyncioBridge``, and all
aiodocker and aiohttp errors are mapped to xqueue's errors here, in ``_mapped``.
The HTTP connection pool is unbounded: each running job holds one long-poll request on
the wait endpoint, and aiohttp's default cap of 100 connections would otherwise stall
creates and kills behind the waits once more than 100 jobs run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiodocker
import aiohttp

from ..errors import SchedulerError, SchedulerOptionError, SubmissionError
from ..job import Job
from ._aio import AsyncioBridge

if TYPE_CHECKING:
    from .container import ContainerOptions

log = logging.getLogger("xqueue.container")
T = TypeVar("T")

LABEL_JOBDIR = "xqueue.jobdir"
LABEL_WORKDIR = "xqueue.workdir"
_WAIT_RETRIES = 5
_NO_CONNECTION = 900  # aiodocker's status for "could not connect to the socket"


class ApiRuntime:
    """Containers created, started, awaited, stopped and removed over the API socket."""

    def __init__(
        self,
        options: ContainerOptions,
        url: str,
        extra_config: dict[str, Any],
        extra_host: dict[str, Any],
    ) -> None:
        self.options = options
        self.url = url
        self.bin = options.backend
        self._extra_config = extra_config
        self._extra_host = extra_host
        self._bridge = AsyncioBridge()
        self._docker: Any = None
        self._root = ""

    # -- error mapping -------------------------------------------------------------------
    def _unreachable(self, exc: object) -> SchedulerError:
        return SchedulerError(
            f"cannot reach the {self.bin} API at {self.url} ({exc}); is the "
            f"{'podman system service' if self.bin == 'podman' else 'docker daemon'} running?"
        )

    def _missing_image(self) -> SubmissionError:
        image = self.options.image
        return SubmissionError(
            f"image {image!r} is not present in {self.bin} at {self.url}; get it first with "
            f"`{self.bin} pull {image}`, or without a registry `{self.bin} import "
            f"rootfs.tar {image}` (or `{self.bin} load -i image.tar`)",
            retryable=False,
        )

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn`` in the asyncio loop; connection failures become SchedulerError."""
        try:
            return await self._bridge.call(fn, *args)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        except aiodocker.DockerError as exc:
            if exc.status == _NO_CONNECTION:
                raise self._unreachable(exc.message) from exc
            raise SchedulerError(f"{self.bin} API at {self.url}: {exc}") from exc

    # -- lifecycle -----------------------------------------------------------------------
    async def open(self, workdir_root: str) -> None:
        paths = [workdir_root, *(p for h, c, _ in self.options.volumes for p in (h, c))]
        colon = next((p for p in paths if ":" in p), None)
        if self.bin == "podman" and colon is not None:
            raise SchedulerOptionError(
                f"podman cannot mount {colon!r}: its API reads a mount as src:dst:mode "
                "(and a structured mount as CSV); choose a workdir and volumes without ':'"
            )
        self._root = workdir_root
        self._bridge.start()
        try:
            await self._call(self._connect)
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> None:
        if self.url.startswith("unix://"):
            connector = aiohttp.UnixConnector(self.url[len("unix://") :], limit=0)
            docker = aiodocker.Docker(url=self.url, connector=connector)
            docker.docker_host = "unix://localhost"  # as aiodocker does for its own connector
        else:
            docker = aiodocker.Docker(url=self.url)
        self._docker = docker
        try:
            await docker.version()
        except aiodocker.DockerError as exc:
            if exc.status == _NO_CONNECTION:
                raise
            raise SchedulerError(f"the {self.bin} API at {self.url} answered: {exc}") from exc

    async def close(self) -> None:
        docker, self._docker = self._docker, None
        if docker is not None:
            try:
                await self._bridge.call(self._close, docker)
            finally:
                self._bridge.stop()
        else:
            self._bridge.stop()

    @staticmethod
    async def _close(docker: Any) -> None:
        connector = docker.session.connector
        await docker.close()
        if connector is not None and not connector.closed:
            await connector.close()

    # -- jobs ----------------------------------------------------------------------------
    def _config(self, job: Job, script: str) -> dict[str, Any]:
        opts = self.options
        volumes = [(self._root, self._root, "rw"), *opts.volumes]
        if self.bin == "podman":
            # podman's compatible API turns structured mounts into a CSV string, which a
            # path with ',' or '"' breaks; "src:dst:mode" carries any path without ':'.
            mounts: dict[str, Any] = {"Binds": [f"{h}:{c}:{m}" for h, c, m in volumes]}
        else:  # docker takes any path in a structured mount
            mounts = {
                "Mounts": [
                    {"Type": "bind", "Source": h, "Target": c, "ReadOnly": m == "ro"}
                    for h, c, m in volumes
                ]
            }
        return {
            "Image": opts.image,
            "Entrypoint": list(opts.entrypoint),
            "Cmd": [script],
            "Env": [f"{k}={v}" for k, v in opts.envs.items()],
            "Labels": {LABEL_JOBDIR: job.dir, LABEL_WORKDIR: self._root},
            "User": opts.user or f"{os.getuid()}:{os.getgid()}",
            "WorkingDir": opts.cwd or job.dir,
            **self._extra_config,
            "HostConfig": {**mounts, "AutoRemove": False, **self._extra_host},
        }

    async def submit(self, job: Job, script: str) -> str:
        return await self._call(self._start, self._config(job, script))

    async def _start(self, config: dict[str, Any]) -> str:
        try:
            container = await self._docker.containers.create(config)
        except aiodocker.DockerError as exc:
            if exc.status == _NO_CONNECTION:
                raise
            if exc.status == 404 and "image" in exc.message.lower():
                raise self._missing_image() from exc
            raise SubmissionError(
                f"{self.bin} refused to create the container: {exc.message}"
            ) from exc
        try:
            await container.start()
        except aiodocker.DockerError as exc:
            await self._remove(container.id)
            raise SubmissionError(
                f"{self.bin} could not start the container: {exc.message}", retryable=False
            ) from exc
        return str(container.id)

    async def wait(self, job: Job) -> int | None:
        assert job.jid is not None
        return await self._call(self._wait, job.jid, self.options.remove)

    async def _wait(self, cid: str, remove: bool) -> int | None:
        """The wait result's exit code; the container is removed only after it is read."""
        container = self._docker.containers.container(cid)
        last = _WAIT_RETRIES - 1
        for attempt in range(_WAIT_RETRIES):
            try:
                result = await container.wait()
                break
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return None
                if exc.status != _NO_CONNECTION or attempt == last:
                    raise
                why = exc.message
            except (aiohttp.ClientError, OSError) as exc:  # the daemon restarted, say
                if attempt == last:
                    raise
                why = str(exc)
            log.warning("%s: wait for %s interrupted (%s); retrying", self.bin, cid[:12], why)
            await asyncio.sleep(2**attempt)
        code = result.get("StatusCode")
        if remove:
            await self._remove(cid)
        return int(code) if isinstance(code, int) and code >= 0 else None

    async def _remove(self, cid: str) -> None:
        try:
            await self._docker.containers.container(cid).delete(force=True)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                log.warning("%s: could not remove container %s: %s", self.bin, cid[:12], exc)

    async def kill(self, job: Job) -> None:
        if job.jid is not None:
            grace = max(int(self.options.kill_grace + 0.999), 0)
            await self._call(self._stop, job.jid, grace, self.options.remove)

    async def _stop(self, cid: str, grace: int, remove: bool) -> None:
        """SIGTERM, SIGKILL after ``grace`` seconds, check it stopped, remove it if asked.

        Removing here, not only after the wait, matters when the run is stopping: its
        waits are already cancelled, and nobody else would remove the container.
        """
        container = self._docker.containers.container(cid)
        try:
            await container.stop(t=grace)
            state = (await container.show())["State"]
        except aiodocker.DockerError as exc:
            if exc.status in (304, 404):  # already stopped, or gone
                return
            if exc.status == _NO_CONNECTION:
                raise
            raise SchedulerError(f"{self.bin}: could not stop container {cid[:12]}: {exc}") from exc
        if state.get("Running"):
            await container.kill(signal="SIGKILL")
        if remove:
            await self._remove(cid)

    async def exists(self, job: Job) -> bool:
        if job.jid is None:
            return False
        return await self._call(self._exists, job.jid)

    async def _exists(self, cid: str) -> bool:
        try:
            await self._docker.containers.container(cid).show()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            if exc.status == _NO_CONNECTION:
                raise
            raise SchedulerError(f"{self.bin}: inspecting {cid[:12]} failed: {exc}") from exc
        return True

    async def find(self, job: Job) -> str | None:
        return await self._call(self._find, job.dir)

    async def _find(self, jobdir: str) -> str | None:
        """The newest container labelled with the job's folder, running or not."""
        filters = json.dumps({"label": [f"{LABEL_JOBDIR}={jobdir}"]})
        found = await self._docker.containers.list(all=True, filters=filters)
        if not found:
            return None
        newest = max(found, key=lambda c: c._container.get("Created", 0))
        return str(newest.id)

    def forget(self, job: Job) -> None:
        pass
