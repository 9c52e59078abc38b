"""Stand-ins for a cluster's client commands that misbehave on purpose, around the real ones.

Each is a small sh script in the test's folder, given to the backend through its option
for the command's path (``squeue=``, ``qstat=``, ``sbatch=``). It runs the real command,
except where it has been told to misbehave, and counts its calls in a file so a test
can check that the misbehaviour really happened.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import threading
from pathlib import Path

import anyio


async def _write(path: Path, body: str) -> str:
    script = anyio.Path(path)
    await script.write_text("#!/bin/sh\n" + body)
    await script.chmod(0o755)
    return str(path)


async def calls(fake: str) -> int:
    """How many times a fake command has been run."""
    counter = anyio.Path(f"{fake}.calls")
    return len((await counter.read_text()).splitlines()) if await counter.exists() else 0


async def garbling(folder: Path, command: str, garbage: str, on_calls: set[int]) -> str:
    """``command`` that prints ``garbage`` (exit 0) on the given calls (1-based), else runs."""
    real = await anyio.to_thread.run_sync(shutil.which, command)
    assert real, f"{command} is not installed"
    path = folder / f"fake-{command}"
    cases = "|".join(str(n) for n in sorted(on_calls))
    return await _write(
        path,
        f"""echo x >> {path}.calls
n=$(wc -l < {path}.calls)
case "$n" in {cases}) printf '%s' {shlex.quote(garbage)}; exit 0 ;; esac
exec {real} "$@"
""",
    )


async def submitting_then(folder: Path, command: str, after: str) -> str:
    """``command`` that submits for real, keeps what it printed, then runs ``after``.

    ``after`` is what makes the outcome unknown to the backend: ``sleep 5`` outlasts a
    short submit timeout, ``echo 'Socket timed out on send/recv operation' >&2; exit 1``
    is Slurm's answer when the controller took the job but its reply was lost.
    """
    real = await anyio.to_thread.run_sync(shutil.which, command)
    assert real, f"{command} is not installed"
    path = folder / f"fake-{command}"
    return await _write(
        path,
        f"""echo x >> {path}.calls
{real} "$@" >> {path}.out || exit $?
{after}
""",
    )


async def submitted_ids(fake: str) -> list[str]:
    """What the real command printed through ``submitting_then``, one line per submission."""
    out = anyio.Path(f"{fake}.out")
    return (await out.read_text()).split() if await out.exists() else []


class DroppingProxy:
    """A Unix socket in front of a real API socket that loses one answer on purpose.

    Bytes are relayed both ways, unchanged, until a request whose first line contains
    ``marker`` has been passed on: the engine acts on it, but its answer is swallowed
    and the client's connection closed, as when a connection drops mid-request.
    """

    def __init__(self, upstream: str, path: Path, marker: bytes) -> None:
        self.upstream, self.path, self.marker = upstream, str(path), marker
        self.dropped = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(16)
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(self.upstream)
            doomed = threading.Event()
            for args in ((client, engine, doomed, True), (engine, client, doomed, False)):
                thread = threading.Thread(target=self._relay, args=args, daemon=True)
                thread.start()
                self._threads.append(thread)

    def _relay(
        self, src: socket.socket, dst: socket.socket, doomed: threading.Event, request: bool
    ) -> None:
        try:
            while data := src.recv(65536):
                if not request and doomed.is_set():
                    break  # the answer to the marked request: lost
                if request and not self.dropped and self.marker in data.split(b"\r\n", 1)[0]:
                    self.dropped += 1
                    doomed.set()
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._closing = True
        self._server.close()
        for thread in self._threads:
            thread.join(timeout=5)
