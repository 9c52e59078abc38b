"""Run each job in a container: docker or podman through their API, or charliecloud's ch-run.

The workdir is bind-mounted at the same path inside the container, so the wrapper script
``write_script`` writes is found at the path the engine knows, and the job's stdout,
stderr and return code land where the engine reads them. The container runs the wrapper
with the image's shell (``entrypoint``, default ``sh``); ``envs`` go through the API,
never through a command line.

docker and podman are driven with aiodocker over the engine's API socket: create, start,
wait, stop, remove. Completion is *awaited* on the wait endpoint, one long-poll request
per running job, which reports the exit code the moment the container ends (podman's
``run --rm`` reports 0 for every exit code, so the code always comes from the wait
result, and the container is removed only after it has been read). A kill stops the
container through the API: SIGTERM, then SIGKILL after ``kill_grace`` (killing a client
process would leave the container running). Containers carry labels naming their job
folder, so a later controller finds and re-adopts them, exit code included.

``bin="ch-run"`` runs the same wrapper under charliecloud, and ``bin="apptainer"`` (or
``singularity``) under apptainer, the runner HPC sites allow instead of docker; neither
has a daemon or an API: see ``_container_cli``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Protocol

import anyio

from .._text import check_envs
from ..errors import ConfigError, SchedulerOptionError, SchedulerOutputError
from ..job import Job
from ..options import SchedulerOptions
from ..scheduler import JobState, Scheduler
from ..states import JobStatus
from ..workdir import read_rc

log = logging.getLogger("xqueue.container")

API_BINS = ("docker", "podman")
CLI_BINS = ("ch-run", "apptainer", "singularity")

REMOVED_OUTSIDE = (
    "the container disappeared before its exit code was read (removed outside xqueue?)"
)


@dataclasses.dataclass
class ContainerOptions(SchedulerOptions):
    image: str = ""
    """Image to run (docker/podman), the unpacked image directory (ch-run), or a ``.sif``
    file, sandbox directory or ``docker://`` URI (apptainer/singularity)."""
    entrypoint: Any = "sh"
    """Program (str or list) that runs the wrapper script inside the image."""
    bin: str = "docker"
    """docker, podman (through their API socket), ch-run (charliecloud's CLI) or
    apptainer/singularity (their CLI); a path to one of them is read by its name."""
    url: str | None = None
    """The API socket; default DOCKER_HOST / CONTAINER_HOST, else the engine's usual socket."""
    volumes: Any = dataclasses.field(default_factory=list)
    """Extra mounts: "host:container[:ro]", or "path" for the same path inside."""
    envs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Environment of every container (the job's own envs are set by its wrapper)."""
    remove: bool = True
    """Remove each container once its exit code is read."""
    user: str | None = None
    """uid:gid the job runs as (default: the controller's, so its files stay yours)."""
    bin_args: list[str] = dataclasses.field(default_factory=list)
    """Extra arguments: ch-run or ``apptainer exec`` options, or for the API the flags
    listed in the docs."""
    cwd: str | None = None
    """Working directory inside the container (default: the job's folder)."""

    def validate(self, scheduler: str) -> None:
        super().validate(scheduler)
        if not self.image:
            raise SchedulerOptionError(
                f"{scheduler}: option 'image' is required (e.g. image='busybox:latest')"
            )
        name = os.path.basename(self.bin)
        if name not in API_BINS + CLI_BINS:
            raise SchedulerOptionError(
                f"{scheduler}: bin {self.bin!r} is not supported; use one of "
                f"{', '.join(API_BINS + CLI_BINS)}"
            )
        if isinstance(self.entrypoint, str):
            self.entrypoint = [self.entrypoint]
        if not self.entrypoint or not all(isinstance(a, str) for a in self.entrypoint):
            raise SchedulerOptionError(f"{scheduler}: entrypoint must be a string or strings")
        if isinstance(self.volumes, str):
            self.volumes = [self.volumes]
        self.volumes = [_parse_volume(scheduler, v) for v in self.volumes]
        if isinstance(self.bin_args, str):
            raise SchedulerOptionError(f"{scheduler}: bin_args must be a list of arguments")
        if not isinstance(self.envs, dict):
            raise SchedulerOptionError(f"{scheduler}: envs must be a mapping")
        try:  # the same names and value rule as a job's envs
            self.envs = check_envs(self.envs)
        except ConfigError as exc:
            raise SchedulerOptionError(f"{scheduler}: envs: {exc}") from None
        if name in CLI_BINS:
            self._check_cli(scheduler, name)

    def _check_cli(self, scheduler: str, name: str) -> None:
        """What ch-run and apptainer cannot do, refused before any job: found at each
        submission, every job failed; ignored, a job ran as root, or without its HOME."""
        from ._container_cli import ApptainerRuntime, ChRunRuntime

        runtime = ChRunRuntime if name == "ch-run" else ApptainerRuntime
        if self.user is not None:
            raise SchedulerOptionError(
                f"{scheduler}: option 'user' is for docker and podman; {name} runs each job "
                "as the user that runs xqueue"
            )
        for host, inside, mode in self.volumes:
            bad = [c for c in runtime.bad_path_chars if c in host + inside]
            if bad:
                raise SchedulerOptionError(
                    f"{scheduler}: {name} cannot bind volume {host}:{inside}: a {bad[0]!r} "
                    "in a path"
                )
            if name == "ch-run" and mode != "rw":
                raise SchedulerOptionError(
                    f"{scheduler}: volume {host}:{inside}:{mode}: ch-run binds are read-write only"
                )
        if name != "ch-run" and "HOME" in self.envs:
            raise SchedulerOptionError(
                f"{scheduler}: {name} does not let envs set HOME; give bin_args=['--home', DIR]"
            )

    @property
    def backend(self) -> str:
        return os.path.basename(self.bin)


def _parse_volume(scheduler: str, spec: Any) -> tuple[str, str, str]:
    """(host path, container path, mode) from "host[:container[:mode]]"."""
    parts = str(spec).split(":")
    if len(parts) > 3 or not parts[0]:
        raise SchedulerOptionError(f"{scheduler}: volume {spec!r} is not host[:container[:ro]]")
    host = os.path.abspath(os.path.expanduser(parts[0]))
    inside = parts[1] if len(parts) > 1 and parts[1] else host
    mode = parts[2] if len(parts) > 2 else "rw"
    if not os.path.exists(host):
        raise SchedulerOptionError(f"{scheduler}: volume {spec!r}: {host} does not exist")
    if not inside.startswith("/") or mode not in ("rw", "ro"):
        raise SchedulerOptionError(
            f"{scheduler}: volume {spec!r}: the container path must be absolute and the "
            "mode rw or ro"
        )
    return host, inside, mode


# Flags of `docker run` that bin_args may carry with the API backend, and where they go.
_HOST_FLAGS = {"--network": "NetworkMode", "--net": "NetworkMode", "--shm-size": "ShmSize"}
_BOOL_FLAGS = {"--privileged": "Privileged", "--init": "Init", "--read-only": "ReadonlyRootfs"}
_CONFIG_FLAGS = {
    "--hostname": "Hostname",
    "--user": "User",
    "-u": "User",
    "--workdir": "WorkingDir",
    "-w": "WorkingDir",
}


def _translate_bin_args(args: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, host config) entries from `docker run` flags; anything else is refused."""
    config: dict[str, Any] = {}
    host: dict[str, Any] = {}
    i = 0
    while i < len(args):
        flag, _, value = args[i].partition("=")
        if flag in _BOOL_FLAGS:
            host[_BOOL_FLAGS[flag]] = value.lower() not in ("false", "0") if value else True
            i += 1
            continue
        if flag in _HOST_FLAGS or flag in _CONFIG_FLAGS or flag == "--cap-add":
            if not value:
                if i + 1 >= len(args):
                    raise SchedulerOptionError(f"container: bin_args: {flag} needs a value")
                value = args[i + 1]
                i += 1
            if flag == "--cap-add":
                host.setdefault("CapAdd", []).append(value)
            elif flag == "--shm-size":
                host["ShmSize"] = _bytes(value)
            elif flag in _HOST_FLAGS:
                host[_HOST_FLAGS[flag]] = value
            else:
                config[_CONFIG_FLAGS[flag]] = value
            i += 1
            continue
        known = sorted({*_HOST_FLAGS, *_BOOL_FLAGS, *_CONFIG_FLAGS, "--cap-add"})
        raise SchedulerOptionError(
            f"container: bin_args {args[i]!r} cannot be passed to the docker/podman API; "
            f"supported: {', '.join(known)}"
        )
    return config, host


def _bytes(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise SchedulerOptionError(f"container: bin_args: {text!r} is not a size") from None


def default_url(backend: str) -> str:
    """The API socket the engine's own CLI would use."""
    if backend == "podman":
        if os.environ.get("CONTAINER_HOST"):
            return os.environ["CONTAINER_HOST"]
        if os.getuid() != 0 and os.environ.get("XDG_RUNTIME_DIR"):
            return f"unix://{os.environ['XDG_RUNTIME_DIR']}/podman/podman.sock"
        return "unix:///run/podman/podman.sock"
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    for path in ("/var/run/docker.sock", "/run/docker.sock"):
        if os.path.exists(path):
            return f"unix://{path}"
    return "unix:///var/run/docker.sock"


class Runtime(Protocol):
    """What the scheduler needs from a container runtime; ids are the runtime's own."""

    async def open(self, workdir_root: str) -> None: ...
    async def close(self) -> None: ...
    async def submit(self, job: Job, script: str) -> str: ...
    async def wait(self, job: Job) -> int | None:
        """The exit code once the container ends; None if it can no longer be read."""
        ...

    async def kill(self, job: Job) -> None: ...
    async def exists(self, job: Job) -> bool: ...
    async def find(self, job: Job) -> str | None: ...
    def forget(self, job: Job) -> None: ...


class ContainerScheduler(Scheduler):
    """One container per job, awaited until it exits."""

    name = "container"
    Options = ContainerOptions
    awaits_completion = True
    running_on_submit = True
    options: ContainerOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.runtime: Runtime
        if self.options.backend in API_BINS:
            from ._container_api import ApiRuntime

            url = self.options.url or default_url(self.options.backend)
            self.runtime = ApiRuntime(
                self.options, url, *_translate_bin_args(self.options.bin_args)
            )
        elif self.options.backend == "ch-run":
            from ._container_cli import ChRunRuntime

            self.runtime = ChRunRuntime(self.options)
        else:
            from ._container_cli import ApptainerRuntime

            self.runtime = ApptainerRuntime(self.options)

    async def open(self, workdir: Any) -> None:
        await super().open(workdir)
        await self.runtime.open(str(workdir.path))

    async def aclose(self) -> None:
        await self.runtime.close()

    async def submit_job(self, job: Job) -> str:
        script = await anyio.to_thread.run_sync(self.write_script, job)
        return await self.runtime.submit(job, script)

    async def wait_job(self, job: Job) -> JobState:
        unreadable: SchedulerOutputError | None = None
        try:
            rc = await self.runtime.wait(job)
        except SchedulerOutputError as exc:  # the wrapper's rc file may still tell
            log.warning("job %s: %s", job.index, exc)
            rc, unreadable = None, exc
        if rc is None:
            # The wrapper's own word, if it got that far.
            rc = await anyio.to_thread.run_sync(read_rc, job)
        if rc is None:
            if job.kill_requested:
                return JobState(JobStatus.KILLED, None, "killed")
            if unreadable is not None:
                return JobState(JobStatus.FAILED, None, f"lost: {unreadable}")
            return JobState(JobStatus.FAILED, None, REMOVED_OUTSIDE)
        return JobState(JobStatus.FINISHED if rc == 0 else JobStatus.FAILED, rc)

    async def kill_job(self, job: Job) -> None:
        await self.runtime.kill(job)

    async def job_is_running(self, job: Job) -> bool:
        return await self.runtime.exists(job)

    async def recover_job(self, job: Job) -> bool:
        """Adopt the job's container, running or exited: its exit code is still readable."""
        if job.jid is None:
            job.jid = await self.runtime.find(job)
            if job.jid is None:
                return False
        return await self.runtime.exists(job)

    def forget(self, job: Job) -> None:
        super().forget(job)
        self.runtime.forget(job)
