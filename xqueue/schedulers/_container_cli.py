"""Container runners with no daemon and no API: charliecloud's ``ch-run`` and apptainer.

Both unshare namespaces and then exec the command, so the container *is* the child
process: it runs in its own session (a kill reaches the whole group), its exit code is
the runner's, and it is awaited like a local process. What the runner itself prints (a
missing image, a bad bind) goes to ``job.runtime.log`` in the job folder, and its last
line becomes the job's reason when the wrapper never ran.

- ``ch-run`` takes an unpacked image directory (``ch-convert image.tar DIR``, or any root
  filesystem tarball unpacked); as root it needs ``$USER`` set.
- ``apptainer`` (or ``singularity``) runs ``apptainer exec --no-privs --containall
  --cleanenv --no-eval`` on an image (a ``.sif`` file, a sandbox directory or a
  ``docker://`` reference): nothing of the controller's environment leaks in, root gives
  up its privileges inside, and the ``envs`` option reaches the container through
  ``APPTAINERENV_*`` variables, which ``--no-eval`` keeps from being shell-evaluated
  (without it ``$X`` and ``$(...)`` in a value would be expanded inside).

The id is ``pid:start time``. A later controller re-adopts a job that is still running
by that id and reads the return code its wrapper wrote once it ends; one whose id was
never recorded is found by the runtime log it holds open as its output.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import time
from typing import TYPE_CHECKING

import anyio
from anyio.abc import Process

from ..errors import SchedulerError, SchedulerOptionError, SubmissionError
from ..job import Job
from ..workdir import open_output, read_rc
from ._proc import end_groups, files_of_session_leaders, live_groups, start_ticks, wait_exit

if TYPE_CHECKING:
    from .container import ContainerOptions

log = logging.getLogger("xqueue.container")

RUNTIME_LOG = "job.runtime.log"


def _start_time(pid: int) -> str | None:
    """Start time of a live (non-zombie) process as recorded in a job id; None if gone."""
    ticks = start_ticks(pid)
    return None if ticks is None else str(ticks)


def _end_leftovers(pgid: int) -> None:
    """SIGKILL what a runner that ended by itself left in its process group (``cmd &``
    in the job, under a runner with no process namespace of its own: ch-run), as the
    local shepherd does. The group's id is still the job's while anything is in it."""
    if live_groups({pgid}):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def _open_log(image: str, log: str, engine: str) -> int:
    """The descriptor the runner's own output goes to, once the image is known to exist.

    Blocking (a stat and an open): called in a worker thread.
    """
    if engine == "ch-run" and not os.path.isdir(image):
        raise SubmissionError(
            f"image directory {image!r} does not exist; ch-run needs an unpacked image: "
            f"`ch-convert image.tar {image}`, or unpack a root filesystem tarball there",
            retryable=False,
        )
    if engine != "ch-run" and "://" not in image and not os.path.exists(image):
        raise SubmissionError(
            f"image {image!r} does not exist; {engine} needs a .sif file, a sandbox directory "
            f"or a URI such as docker://busybox (`{engine} build busybox.sif docker://busybox`)",
            retryable=False,
        )
    return open_output(log)


def set_env_value(value: str) -> str:
    """``value`` as ``--set-env=NAME=VALUE`` must spell it to arrive unchanged.

    ch-run strips one pair of single quotes around a value (``'x'`` arrives as ``x``), and
    ``--env-no-expand`` keeps it from expanding ``$``: so a value that starts and ends
    with a quote gets one more pair, which ch-run strips again. Nothing else is touched.
    """
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return f"'{value}'"
    return value


def _parse(jid: str | None) -> tuple[int, str] | None:
    pid, _, start = (jid or "").partition(":")
    return (int(pid), start) if pid.isdigit() else None


class CliRuntime:
    """Each job is one runner child process; subclasses say how to start it."""

    engine = ""
    bad_path_chars = ""
    """Characters the runner's bind syntax has no way to spell in a path."""
    install_hint = ""

    def __init__(self, options: ContainerOptions) -> None:
        self.options = options
        self._procs: dict[Job, Process] = {}
        self._stopping: set[Job] = set()  # being killed: its group is the kill's to end
        self._root = ""
        self._bin = options.bin
        self._held: tuple[float, dict[tuple[int, int], int]] | None = None

    async def open(self, workdir_root: str) -> None:
        bad = [c for c in self.bad_path_chars if c in workdir_root]
        if bad:
            raise SchedulerOptionError(
                f"{self.engine} cannot bind the workdir {workdir_root!r}: its bind syntax has "
                f"no way to spell {bad[0]!r} in a path; choose a workdir without one"
            )
        self._root = workdir_root
        found = await anyio.to_thread.run_sync(shutil.which, self._bin)
        if found is None:
            raise SchedulerError(
                f"{self._bin!r} not found: {self.install_hint} or give its path as bin"
            )
        self._bin = found

    async def close(self) -> None:
        for proc in list(self._procs.values()):
            await proc.aclose()
        self._procs.clear()

    def _argv(self, job: Job, script: str) -> list[str]:
        raise NotImplementedError

    def _env(self, job: Job) -> dict[str, str]:
        raise NotImplementedError

    async def submit(self, job: Job, script: str) -> str:
        out = await anyio.to_thread.run_sync(
            _open_log, self.options.image, job.path(RUNTIME_LOG), self.engine
        )
        try:
            with anyio.CancelScope(shield=True):  # as run_command's: no half-started runner
                proc = await anyio.open_process(
                    self._argv(job, script),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=self._env(job),
                    start_new_session=True,
                )
        finally:
            os.close(out)
        self._procs[job] = proc
        return f"{proc.pid}:{await anyio.to_thread.run_sync(_start_time, proc.pid) or ''}"

    async def wait(self, job: Job) -> int | None:
        proc = self._procs.get(job)
        if proc is None:  # adopted from an earlier run: not our child, await its pid
            parsed = _parse(job.jid)
            if parsed is not None:
                pid, start = parsed
                await wait_exit(pid, int(start) if start.isdigit() else None)
            return None
        rc = await proc.wait()
        await proc.aclose()
        if job not in self._stopping:
            await anyio.to_thread.run_sync(_end_leftovers, proc.pid)
        if rc < 0:  # killed by a signal: report it the way a shell would
            return 128 - rc
        await anyio.to_thread.run_sync(self._explain, job, rc)
        return rc

    def _explain(self, job: Job, rc: int) -> None:
        """The runner failed before the wrapper ran: put its own words in the job's stderr.

        Blocking (it reads and appends files): called in a worker thread.
        """
        if read_rc(job) is not None:
            return  # the wrapper ran and recorded its exit status
        try:
            with open(job.path(RUNTIME_LOG), encoding="utf-8", errors="replace") as fh:
                lines = [ln.strip() for ln in fh if ln.strip()]
        except OSError:
            return
        if lines:
            with open(job.stderr_path, "a", encoding="utf-8") as fh:
                fh.write(f"xqueue: {self.engine} exited {rc}: {lines[-1]}\n")

    async def kill(self, job: Job) -> None:
        """SIGTERM the job's group, SIGKILL what is left of it after kill_grace."""
        parsed = _parse(job.jid)
        if parsed is None:
            return
        pid, start = parsed
        proc = self._procs.get(job)
        # Unless we hold the unreaped child, the pid may have been reused since the job
        # ended: signal the group only if its leader is still the job's process.
        if (proc is None or proc.returncode is not None) and (
            not start or await anyio.to_thread.run_sync(_start_time, pid) != start
        ):
            return
        self._stopping.add(job)
        await end_groups({job: pid}, self.options.kill_grace, 10)
        if proc is not None:  # reap it now: a stopping run no longer awaits it
            with anyio.move_on_after(10):
                await proc.wait()

    async def exists(self, job: Job) -> bool:
        parsed = _parse(job.jid)
        if parsed is None:
            return False
        start = await anyio.to_thread.run_sync(_start_time, parsed[0])
        return start is not None and (not parsed[1] or start == parsed[1])

    async def find(self, job: Job) -> str | None:
        """The runner of a job whose id was never recorded (its controller died right
        after starting it): the session leader that holds the job's runtime log open. Not
        found, it never started; found, it is adopted, never started a second time.
        (Not XQUEUE_JOB_DIR in its environment: apptainer execs its starter without it.)
        """
        return await anyio.to_thread.run_sync(self._find_by_log, job)

    def _find_by_log(self, job: Job) -> str | None:
        """Blocking: /proc is scanned once, and the map reused for the jobs looked up in
        the same second (a resume may look up a whole batch)."""
        try:
            st = os.lstat(job.path(RUNTIME_LOG))
        except OSError:
            return None  # never submitted: the log is opened before the runner starts
        if not stat.S_ISREG(st.st_mode):
            return None  # a link planted at the name would name whatever holds its target
        now = time.monotonic()
        if self._held is None or now - self._held[0] > 1.0:
            self._held = (now, files_of_session_leaders())
        pid = self._held[1].get((st.st_dev, st.st_ino))
        start = None if pid is None else _start_time(pid)
        return None if start is None else f"{pid}:{start}"

    def forget(self, job: Job) -> None:
        self._procs.pop(job, None)
        self._stopping.discard(job)


class ChRunRuntime(CliRuntime):
    """Each job is a ``ch-run IMAGE -- sh job.sh`` child process."""

    engine = "ch-run"
    bad_path_chars = ":"  # -b SRC:DST
    install_hint = "install charliecloud (Debian: `apt-get install charliecloud-runtime`)"

    def _argv(self, job: Job, script: str) -> list[str]:
        opts = self.options
        argv = [self._bin, *opts.bin_args, "--env-no-expand", "-b", f"{self._root}:{self._root}"]
        argv += [f"--set-env={k}={set_env_value(v)}" for k, v in opts.envs.items()]
        for host, inside, _ in opts.volumes:  # read-write only: refused otherwise (validate)
            argv += ["-b", f"{host}:{inside}"]
        argv += ["-c", opts.cwd or job.dir, opts.image, "--", *opts.entrypoint, script]
        return argv

    def _env(self, job: Job) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("USER", "root" if os.getuid() == 0 else str(os.getuid()))
        return env


class ApptainerRuntime(CliRuntime):
    """Each job is an ``apptainer exec ... IMAGE sh job.sh`` child process."""

    engine = "apptainer"
    bad_path_chars = ":,"  # --bind SRC:DST[:ro], and a comma separates binds
    install_hint = "install apptainer (https://apptainer.org/docs/admin/main/installation.html)"

    def __init__(self, options: ContainerOptions) -> None:
        super().__init__(options)
        self.engine = options.backend

    def _argv(self, job: Job, script: str) -> list[str]:
        opts = self.options
        argv = [self._bin, "exec", "--no-privs", "--containall", "--cleanenv", "--no-eval"]
        argv += [*opts.bin_args, "--bind", f"{self._root}:{self._root}"]
        for host, inside, mode in opts.volumes:  # paths checked when the options were
            argv += ["--bind", f"{host}:{inside}:{mode}"]
        argv += ["--pwd", opts.cwd or job.dir, opts.image, *opts.entrypoint, script]
        return argv

    def _env(self, job: Job) -> dict[str, str]:
        """The runner's environment: ``--cleanenv`` passes none of it in but the
        ``APPTAINERENV_`` (and ``SINGULARITYENV_``) variables, which carry ``envs``."""
        env = {k: v for k, v in os.environ.items() if not _container_env(k)}
        env.update({f"APPTAINERENV_{k}": v for k, v in self.options.envs.items()})
        return env


def _container_env(name: str) -> bool:
    """A variable of the controller's own that would reach inside the container."""
    return name.startswith(("APPTAINERENV_", "SINGULARITYENV_"))
