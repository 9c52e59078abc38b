"""Real processes for the fault and shutdown harnesses: find, signal, reap, clean up.

A job process carries ``XQUEUE_JOB_DIR`` (its folder) in its environment, so the jobs of
one workdir can be found in /proc whatever the controller recorded, and killed when a
test ends, pass or fail. Only processes whose environment names a folder under the
test's own workdir are touched, each by its pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "fault_driver.py"
JOB_DIR_VAR = b"XQUEUE_JOB_DIR="


def _state(pid: int) -> bytes | None:
    """The state letter of a process (b"Z" for a zombie), None if there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            line = fh.read()
    except OSError:
        return None
    return line[line.rindex(b")") + 2 :].split()[0]


def _job_dir_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(JOB_DIR_VAR):
            return os.fsdecode(item[len(JOB_DIR_VAR) :])
    return None


def job_processes(root: Path) -> list[int]:
    """Live (not zombie) processes started for a job whose folder is under ``root``."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        jobdir = _job_dir_of(pid)
        if jobdir is None or not (jobdir + "/").startswith(prefix):
            continue
        state = _state(pid)
        if state is not None and state != b"Z":
            found.append(pid)
    return sorted(found)


def wait_no_job_processes(root: Path, settle: float) -> list[int]:
    """The job processes still alive after waiting up to ``settle`` seconds for them to go."""
    deadline = time.monotonic() + settle
    while True:
        left = job_processes(root)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def kill_job_processes(root: Path) -> list[int]:
    """SIGKILL every job process under ``root`` (and its process group); return the pids."""
    mine = os.getpgid(0)
    found = job_processes(root)
    for pid in found:
        try:
            group = os.getpgid(pid)
            if group != mine:
                os.killpg(group, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return found


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL a process this test started (if it still runs) and reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed process always ends
        pass
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def driver_argv(*args: str) -> list[str]:
    return [sys.executable, str(DRIVER), *args]


# -- a controller on a terminal --------------------------------------------------------
# The launcher makes the pty its controlling terminal, then becomes the controller
# (exec keeps the pid): the controller is the terminal's foreground process group, so a
# Ctrl-C typed on the terminal reaches it, as it would from an interactive shell.
_LAUNCH = (
    "import fcntl, os, sys, termios\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def spawn_on_pty(
    argv: Sequence[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """``python argv`` in a new session whose controlling terminal is a fresh pty; the
    process and the master side, which the caller closes."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            env=env,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return proc, master


class PtyProcess:
    """A process whose controlling terminal is a fresh pty we hold the master side of."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.proc, master = spawn_on_pty(["-c", _LAUNCH, *argv], env)
        self.master = master
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        # The terminal's buffer is small: read it all the time, or the controller blocks
        # on a write to its progress view.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every slave side is closed
                return
            if not data:
                return
            with self._lock:
                self._chunks.append(data)

    def output(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode(errors="replace")

    def type(self, data: bytes) -> None:
        """Type on the terminal (b"\\x03" is Ctrl-C: SIGINT to the foreground group)."""
        os.write(self.master, data)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the process is still running after ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        stop(self.proc)
        self._reader.join(timeout=5)
        try:
            os.close(self.master)
        except OSError:
            pass
