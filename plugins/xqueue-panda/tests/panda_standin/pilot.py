"""A stand-in PanDA pilot: pulls jobs of one queue from the server and really runs them.

Each slot is a thread that does what a pilot does, over the server's HTTP API
(``pilot/acquire_jobs``, ``pilot/update_job``), on this machine: it takes a job (``sent``),
reports ``starting``, runs the payload as a pilot does, ``<transformation> <jobPars>``
through ``/bin/sh -c`` in a folder of its own and in a session of its own, reports
``running`` and heartbeats every ``HEARTBEAT`` seconds until the payload exits, then
reports ``finished`` (exit 0) or ``failed`` with the exit code as ``trans_exit_code``.

It enforces what a real pilot enforces, with the real pilot's error codes
(``pilot/common/errorcodes.py``), so that PanDA's diagnostics can be tested:

- a heartbeat answered ``tobekilled``: the payload's process group gets SIGTERM, then
  SIGKILL, and the job is reported failed with 1144 ("This job was killed by panda
  server"); the server records it ``cancelled``;
- a payload that outlives the job's ``maxWalltime``: killed the same way, 1213
  ("Reached batch system time limit");
- a job that asks for a container image on this queue, which has no container runtime:
  failed before it runs, 1384 ("Queue is not set up for containers").

Every payload is waited for (``Popen.wait``): ``stop`` kills what still runs and joins
the slots, so no test leaves a process or a zombie behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HEARTBEAT = 0.2
PANDAKILL = (1144, "This job was killed by panda server")
REACHEDMAXTIME = (1213, "Reached batch system time limit")
NOCONTAINERS = (1384, "Queue is not set up for containers")


class StandInPilot:
    """``slots`` pilots of queue ``site`` against the server at ``url``."""

    def __init__(self, url: str, site: str, folder: Path, slots: int = 4) -> None:
        self.api = url.split("/server/")[0] + "/api/v1"
        self.site, self.folder = site, folder
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._slot, args=(f"{site}-slot{i}",), daemon=True)
            for i in range(slots)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(30)

    def _post(self, endpoint: str, **args: Any) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.api}/{endpoint}",
            data=json.dumps(args).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            result: dict[str, Any] = json.loads(answer.read())
        return result

    def _slot(self, node: str) -> None:
        while not self._stopping.is_set():
            try:
                answer = self._post(
                    "pilot/acquire_jobs", site_name=self.site, prod_source_label="user", node=node
                )
            except OSError:  # the server is gone (the session ends): wait, as a pilot does
                self._stopping.wait(HEARTBEAT)
                continue
            if answer["success"]:
                for job in answer["data"]["jobs"]:
                    self._run(job, node)

    def _update(self, job: dict[str, Any], status: str, **fields: Any) -> str | None:
        answer = self._post("pilot/update_job", job_id=job["PandaID"], job_status=status, **fields)
        command: str | None = (answer.get("data") or {}).get("command")
        return command

    def _run(self, job: dict[str, Any], node: str) -> None:
        if job.get("container_name"):
            self._update(
                job,
                "failed",
                pilot_error_code=NOCONTAINERS[0],
                pilot_error_diag=NOCONTAINERS[1],
                node=node,
            )
            return
        self._update(job, "starting", node=node)
        workdir = self.folder / f"PanDA_Pilot-{job['PandaID']}"
        workdir.mkdir(parents=True)
        command = f"{job['transformation']} {job['jobPars']}"
        with (
            open(workdir / "payload.stdout", "wb") as out,
            open(workdir / "payload.stderr", "wb") as err,
        ):
            payload = subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        started = time.monotonic()
        said = self._update(job, "running", node=node)
        walltime = job.get("maxWalltime") or 0
        while True:
            try:
                rc = payload.wait(HEARTBEAT)
                break
            except subprocess.TimeoutExpired:
                pass
            error = None
            if said == "tobekilled" or self._stopping.is_set():
                error = PANDAKILL
            elif walltime and time.monotonic() - started > walltime:
                error = REACHEDMAXTIME
            if error is not None:
                _kill(payload)
                self._update(job, "failed", pilot_error_code=error[0], pilot_error_diag=error[1])
                return
            said = self._update(job, "running", node=node)
        if rc == 0:
            self._update(job, "finished", trans_exit_code=0)
        else:
            self._update(job, "failed", trans_exit_code=rc, exe_error_code=rc)


def _kill(payload: subprocess.Popen[bytes]) -> None:
    """SIGTERM the payload's whole session, SIGKILL what is left after 2 s; reap it."""
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(payload.pid, sig)
        except ProcessLookupError:
            pass
        try:
            payload.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue
