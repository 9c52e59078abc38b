"""docker and podman through their (Docker-compatible) API, with aiodocker.

aiodocker runs on asyncio only: every call goes through ``AsyncioBridge``, and all
aiodocker and aiohttp errors are mapped to xqueue's errors here, in ``_call``: an answer
whose JSON is not what the API documents (a missing key, a wrong type) becomes
``SchedulerOutputError``. A creation whose request may have reached the engine but whose
answer was lost is ``SubmissionUnknownError``: the container is then looked up by its
labels (job folder and attempt) before anything is created again.
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

from ..errors import (
    SchedulerError,
    SchedulerOptionError,
    SchedulerOutputError,
    SubmissionError,
    SubmissionUnknownError,
)
from ..job import Job
from ._aio import AsyncioBridge

if TYPE_CHECKING:
    from .container import ContainerOptions

log = logging.getLogger("xqueue.container")
T = TypeVar("T")

LABEL_JOBDIR = "xqueue.jobdir"
LABEL_WORKDIR = "xqueue.workdir"
LABEL_ATTEMPT = "xqueue.attempt"
_WAIT_RETRIES = 5
_NO_CONNECTION = 900  # aiodocker's status for "could not connect to the socket"
# How long the engine's API may take to answer its first request (its version): a socket
# that takes the connection and never answers held open() for ever, signals unheard.
API_ANSWER_TIMEOUT = 30.0


def _gone(exc: aiodocker.DockerError) -> bool:
    """Whether the daemon says the container no longer exists.

    Docker answers 404. Podman's compatible API answers 500 "no such container" when the
    container is removed while the request is in flight (a kill racing the wait that
    removes it), so both count: the container is gone either way.
    """
    return exc.status == 404 or (exc.status == 500 and "no such container" in exc.message.lower())


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
        """Run ``fn`` in the asyncio loop; every failure becomes one of our errors."""
        try:
            return await self._bridge.call(fn, *args)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        except aiodocker.DockerError as exc:
            if exc.status == _NO_CONNECTION:
                raise self._unreachable(exc.message) from exc
            raise SchedulerError(f"{self.bin} API at {self.url}: {exc}") from exc
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            # JSON that does not decode, or not in the documented shape (aiodocker reads
            # data["Id"] itself); a SchedulerError raised by our own code passes as is.
            raise SchedulerOutputError(
                f"the {self.bin} API at {self.url} ({getattr(fn, '__name__', 'call')})",
                repr(exc),
                type(exc).__name__,
            ) from exc

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
        await self._bridge.start()
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
            await asyncio.wait_for(docker.version(), API_ANSWER_TIMEOUT)
        except asyncio.TimeoutError:
            raise SchedulerError(
                f"the {self.bin} API at {self.url} took the connection but did not answer "
                f"within {API_ANSWER_TIMEOUT:.0f} s; is the daemon hung? (check "
                f"`{self.bin} version`)"
            ) from None
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
                await self._bridge.stop()
        else:
            await self._bridge.stop()

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
            "Labels": {
                LABEL_JOBDIR: job.dir,
                LABEL_WORKDIR: self._root,
                LABEL_ATTEMPT: str(max(job.attempt, 1)),
            },
            "User": opts.user or f"{os.getuid()}:{os.getgid()}",
            "WorkingDir": opts.cwd or job.dir,
            **self._extra_config,
            "HostConfig": {**mounts, "AutoRemove": False, **self._extra_host},
        }

    async def submit(self, job: Job, script: str) -> str:
        """Create and start the job's container; unknown if the answer may have been lost."""
        try:
            return await self._call(self._start, self._config(job, script))
        except (SubmissionError, SubmissionUnknownError):
            raise
        except SchedulerError as exc:
            if isinstance(exc, SchedulerOutputError) or _maybe_received(exc.__cause__):
                raise SubmissionUnknownError(
                    f"{exc}; the container may have been created (it is looked up by its "
                    "labels before another one is)"
                ) from exc
            raise

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
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._start_unknown(exc) from exc
        except aiodocker.DockerError as exc:
            if exc.status == _NO_CONNECTION:
                # The container exists and may be running the job: never remove it here.
                raise self._start_unknown(exc.__context__ or exc) from exc
            await self._remove(container.id)
            raise SubmissionError(
                f"{self.bin} could not start the container: {exc.message}", retryable=False
            ) from exc
        return str(container.id)

    def _start_unknown(self, exc: BaseException) -> SubmissionUnknownError:
        return SubmissionUnknownError(
            f"{self.bin} API at {self.url}: the connection dropped while the container was "
            f"started ({exc}); it may have been created and started (it is looked up by its "
            "labels before another one is)"
        )

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
                if _gone(exc):
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
        code = _exit_code(result)
        if remove:
            await self._remove(cid)
        return code

    async def _remove(self, cid: str) -> None:
        """Remove a container; both the kill and the wait that sees it end may ask."""
        container = self._docker.containers.container(cid)
        try:
            await container.delete(force=True)
            return
        except aiodocker.DockerError as exc:
            if _gone(exc):
                return
            if exc.status != 409:  # 409: a removal already in progress; wait for it
                log.warning("%s: could not remove container %s: %s", self.bin, cid[:12], exc)
                return
        for _ in range(50):
            try:
                await container.show()
            except aiodocker.DockerError as exc:
                if _gone(exc):
                    return
            await asyncio.sleep(0.1)
        log.warning("%s: container %s is still being removed", self.bin, cid[:12])

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
            state = _state(await container.show())
        except aiodocker.DockerError as exc:
            if exc.status == 304 or _gone(exc):  # already stopped, or gone
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
            if _gone(exc):
                return False
            if exc.status == _NO_CONNECTION:
                raise
            raise SchedulerError(f"{self.bin}: inspecting {cid[:12]} failed: {exc}") from exc
        return True

    async def find(self, job: Job) -> str | None:
        """The container of the job's attempt (its latest one if the attempt is unknown)."""
        found = await self._call(self._find, job.dir, job.attempt)
        if found is None:
            return None
        cid, attempt = found
        if job.attempt < 1:
            job.attempt = attempt
        return cid

    async def _find(self, jobdir: str, attempt: int) -> tuple[str, int] | None:
        """The newest container labelled with the job's folder (and attempt), if started.

        One that was created but never started (the connection dropped in between) is
        removed: nothing ran in it, and the job can be started afresh.
        """
        labels = [f"{LABEL_JOBDIR}={jobdir}"]
        if attempt >= 1:
            labels.append(f"{LABEL_ATTEMPT}={attempt}")
        found = await self._docker.containers.list(all=True, filters=json.dumps({"label": labels}))
        for newest in sorted(found, key=_created, reverse=True):
            info = newest._container
            if str(info.get("State", "")).lower() == "created":
                await self._remove(str(newest.id))
                continue
            label = _labels(info).get(LABEL_ATTEMPT, "1")
            return str(newest.id), int(label) if label.isdigit() else 1
        return None

    def forget(self, job: Job) -> None:
        pass


def _maybe_received(cause: BaseException | None) -> bool:
    """Whether a failed request may have reached the engine: not if the connect failed."""
    if isinstance(cause, aiodocker.DockerError):
        cause = cause.__context__  # aiodocker turns every connection error into status 900
    connect_failed = (aiohttp.ClientConnectorError, ConnectionRefusedError, FileNotFoundError)
    return cause is not None and not isinstance(cause, connect_failed)


def _exit_code(result: Any) -> int | None:
    """The exit code of a wait answer (None for a negative one: the engine lost it)."""
    if not isinstance(result, dict) or not isinstance(result.get("StatusCode"), int):
        raise ValueError(f"no StatusCode in the wait answer {result!r:.200}")
    code = int(result["StatusCode"])
    return code if code >= 0 else None


def _state(info: Any) -> dict[str, Any]:
    """The ``State`` object of an inspect answer."""
    state = info.get("State") if isinstance(info, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"no State object in the inspect answer {info!r:.200}")
    return state


def _created(container: Any) -> float:
    created = container._container.get("Created", 0)
    if not isinstance(created, (int, float)):
        raise ValueError(f"a container listed with Created={created!r}")
    return float(created)


def _labels(info: dict[str, Any]) -> dict[str, str]:
    labels = info.get("Labels") or {}
    if not isinstance(labels, dict):
        raise ValueError(f"a container listed with Labels={labels!r:.200}")
    return {str(k): str(v) for k, v in labels.items()}
