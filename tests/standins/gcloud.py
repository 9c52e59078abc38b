"""Start the Cloud Storage emulator and the Batch stand-in on loopback, for tests.

    python -m tests.standins.gcloud DIR     # both, until Ctrl-C; prints their endpoints

The storage emulator is ``gcp-storage-emulator`` (PyPI, pure Python, in memory), the
real client's endpoint for tests; the Batch stand-in is ``gbatch_server``. Each runs as
its own process, so the jobs it runs are its children, not the test process's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Gcloud:
    batch: str  # host:port of the Batch stand-in (plaintext gRPC)
    storage: str  # http://host:port of the storage emulator
    vm_root: str  # where the stand-in's "VMs" mount their volumes

    def control(self, rpc: str, **payload: Any) -> Any:
        """Call the stand-in's control service (blocking: from a worker thread in tests)."""
        import grpc

        with grpc.insecure_channel(self.batch) as channel:
            call = channel.unary_unary(
                f"/xqueue.standin.Control/{rpc}",
                request_serializer=lambda d: json.dumps(d).encode(),
                response_deserializer=json.loads,
            )
            return call(payload, timeout=30)

    def calls(self, parent: str) -> dict[str, int]:
        """How many times each Batch method was called for ``parent`` so far."""
        return dict(self.control("Stats", parent=parent)["calls"])

    def storage_client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.storage},
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Any, what: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready after {timeout} s")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running(base: Path, step: float = 0.05) -> Iterator[Gcloud]:
    """Both services, stopped on exit; ``base`` holds their logs and the VM root."""
    base.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    emulator_log = open(base / "storage.log", "wb")
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            "--in-memory",
            "-q",
        ],
        stdout=emulator_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    batch: subprocess.Popen[bytes] | None = None
    batch_log = open(base / "batch.log", "wb")
    try:
        _wait(lambda: _answers(port), "gcp-storage-emulator", emulator)
        ready = base / "batch.port"
        ready.unlink(missing_ok=True)
        vm_root = base / "vms"
        batch = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.standins.gbatch_server",
                f"--storage=http://127.0.0.1:{port}",
                f"--vm-root={vm_root}",
                f"--step={step}",
                "--kill-grace=1",
                f"--ready={ready}",
            ],
            cwd=ROOT,
            stdout=batch_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        batch_port = _wait(lambda: ready.exists() and ready.read_text(), "gbatch stand-in", batch)
        yield Gcloud(f"127.0.0.1:{batch_port}", f"http://127.0.0.1:{port}", str(vm_root))
    finally:
        if batch is not None:
            _stop(batch)
        _stop(emulator)
        emulator_log.close()
        batch_log.close()


def main() -> None:
    base = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/xqueue-gcloud")
    with running(base) as gcloud:
        print(json.dumps(gcloud.__dict__), flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
