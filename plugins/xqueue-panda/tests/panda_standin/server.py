"""A stand-in PanDA server on loopback that speaks the HTTP API panda-client 2.x uses.

Why a stand-in: a real PanDA server needs PostgreSQL with pg_cron and pg_partman, a
database schema that no package registry carries, Apache/WSGI glue and a configured
queue: it cannot be set up from the registries. So the tests run the REAL client library
against this server, which implements what the client sends, as read in panda-client
2.2's ``Client.py`` and panda-server's ``pandaserver/api/v1``:

- every call is ``<method> /api/v1/<endpoint>``, JSON in (the body of a POST, the query
  of a GET), and the answer is ``{"success", "message", "data"}``;
- ``POST job/submit`` ``{"jobs": "<JSON string>"}``: each job is the list of JobSpec
  attribute values in slot order (``"NULL"`` for unset), then a list of FileSpec slot
  lists; datetimes are ``{"_datetime_object": "%Y-%m-%d %H:%M:%S.%f"}``. The answer is
  ``[[PandaID, jobDefinitionID, {"jobsetID": n}], ...]``; a refusal is ``success: false``
  with panda-server's own messages (a production label without a production role, an
  invalid ``job_label``, no jobs);
- ``POST job/get_description`` ``{"job_ids": [...]}``: one dict per id (attributes plus
  ``Files``), ``None`` for an id the server does not know, datetimes as
  ``{"__datetime__": iso}``;
- ``POST job/kill`` ``{"job_ids": [...]}``: one boolean per id. A job no pilot has taken
  is cancelled at once; a taken one gets ``commandToPilot = "tobekilled"``, which its
  pilot reads in the answer to its next heartbeat;
- ``GET task/get_job_ids?task_id=N``: the PandaIDs of the jobs filed under jediTaskID N;
- ``POST pilot/acquire_jobs`` and ``POST pilot/update_job``: the pilot's side
  (``pilot.py``), with panda-server's parameter names and valid states.

Jobs walk PanDA's real states: ``defined`` when stored, ``activated`` on the server's
next cycle (as its Setupper would), ``sent`` when a pilot acquires it, ``starting`` and
``running`` as the pilot reports, ``holding`` when the pilot reports it ``finished`` or
``failed``, then that final state on the next cycle (as the Adder would), or
``cancelled`` if it had been told to kill it. Each job keeps the list of states it went
through (``history``), which the tests compare with PanDA's walk.

Two liberties, both only about speed: a cycle is 50 ms, and ``acquire_jobs`` waits up to
half a second for a job to appear before it answers "No jobs in PanDA", so idle pilots
do not spin. The JobSpec slot order is the installed client's (``JobSpec._attributes``),
which is panda-server's: the two share PanDA's job table.

Test hooks (Python methods, not HTTP): ``record``, ``forget`` (the server loses a job),
``drop_submit_answers`` (store the jobs, then close the connection unanswered: a lost
answer), ``delay_submits`` (a busy server: it stores the jobs, only seconds later) and
``calls`` (how many requests each endpoint got, ids per description).
"""

from __future__ import annotations

import copy
import datetime
import itertools
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from pandaclient.JobSpec import JobSpec

ATTRIBUTES: tuple[str, ...] = JobSpec._attributes
USER = "/DC=org/DC=xqueue/CN=standin-user"
CYCLE = 0.05
ACQUIRE_WAIT = 0.5
VALID_PILOT_STATES = ("running", "failed", "finished", "holding", "starting", "transferring")
TAKEN = ("sent", "starting", "running", "holding", "transferring")
FINAL = ("finished", "failed", "cancelled", "closed")
EC_KILL = 100  # panda-server's taskbuffer ErrorCode.EC_Kill


def _from_client(obj: dict[str, Any]) -> Any:
    if "_datetime_object" in obj:
        return datetime.datetime.strptime(obj["_datetime_object"], "%Y-%m-%d %H:%M:%S.%f")
    return obj


def _to_client(obj: Any) -> Any:
    if isinstance(obj, datetime.datetime):
        return {"__datetime__": obj.isoformat()}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class PandaStandIn:
    """The job table, the endpoints and the server's cycle."""

    def __init__(self) -> None:
        self.jobs: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(4_300_000_001)  # PandaIDs beyond 2**32, like ATLAS's
        self._defs = itertools.count(1)
        self._lock = threading.Condition()
        self._drop_submits = 0
        self._submit_delays: list[float] = []
        self.counts: Counter[str] = Counter()
        self.described: list[list[int]] = []
        self._closing = threading.Event()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self._threads = [
            threading.Thread(target=self._http.serve_forever, daemon=True),
            threading.Thread(target=self._cycle, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}/server/panda"

    def close(self) -> None:
        self._closing.set()
        self._http.shutdown()
        self._http.server_close()
        for thread in self._threads:
            thread.join(5)

    # -- test hooks --------------------------------------------------------------------
    def record(self, pid: int | str) -> dict[str, Any] | None:
        with self._lock:
            job = self.jobs.get(int(pid))
            return copy.deepcopy(job) if job is not None else None

    def named(self, prefix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(j)
                for j in self.jobs.values()
                if str(j["jobName"] or "").startswith(prefix)
            ]

    def forget(self, pid: int | str) -> None:
        with self._lock:
            del self.jobs[int(pid)]

    def drop_submit_answers(self, n: int) -> None:
        with self._lock:
            self._drop_submits = n

    def delay_submits(self, *seconds: float) -> None:
        """The next submissions are each taken that many seconds after they arrive."""
        with self._lock:
            self._submit_delays = list(seconds)

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.described.clear()

    def calls(self) -> tuple[Counter[str], list[list[int]]]:
        with self._lock:
            return Counter(self.counts), [list(ids) for ids in self.described]

    # -- the server's cycle ------------------------------------------------------------
    def _move(self, job: dict[str, Any], status: str) -> None:
        job["jobStatus"] = status
        job["stateChangeTime"] = job["modificationTime"] = _now()
        job["history"].append(status)
        if status in ("activated", "cancelled"):
            self._lock.notify_all()

    def _cycle(self) -> None:
        """Setupper and Adder, in miniature: defined -> activated, holding -> final."""
        while not self._closing.wait(CYCLE):
            with self._lock:
                for job in self.jobs.values():
                    if job["jobStatus"] == "defined":
                        self._move(job, "activated")
                    elif job["jobStatus"] == "holding" and job.get("_reported"):
                        killed = job["commandToPilot"] == "tobekilled"
                        self._move(job, "cancelled" if killed else job.pop("_reported"))

    # -- endpoints ---------------------------------------------------------------------
    def handle(self, endpoint: str, args: dict[str, Any]) -> tuple[bool, str, Any] | None:
        """(success, message, data) of one call; None to close the connection unanswered."""
        if endpoint == "job/submit":
            with self._lock:
                delay = self._submit_delays.pop(0) if self._submit_delays else 0.0
            time.sleep(delay)  # in this request's thread: the server answers others
        with self._lock:
            self.counts[endpoint] += 1
            method = getattr(self, "_" + endpoint.replace("/", "_"), None)
            if method is None:
                return False, f"unknown endpoint {endpoint}", None
            result: tuple[bool, str, Any] | None = method(**args)
            return result

    def _job_submit(self, jobs: str) -> tuple[bool, str, Any] | None:
        try:
            states = json.loads(jobs, object_hook=_from_client)
            specs = [dict(zip(ATTRIBUTES, state[: len(ATTRIBUTES)])) for state in states]
        except (ValueError, TypeError) as exc:
            return False, f"Failed to deserialize jobs: {exc}", None
        if not specs:
            return False, "No jobs were submitted", None
        for spec in specs:
            for key, value in spec.items():
                spec[key] = None if value == "NULL" else value
            if spec["prodSourceLabel"] in ("managed",):
                label = spec["prodSourceLabel"]
                return (
                    False,
                    f"{USER} is missing production for prodSourceLabel={label} submission",
                    None,
                )
            if spec["job_label"] not in (None, "") and spec["job_label"] not in ("user", "managed"):
                return False, f"job_label={spec['job_label']} is not valid", None
        answer = []
        jobset = next(self._defs)
        for spec in specs:
            pid = next(self._ids)
            spec.update(
                PandaID=pid,
                jobDefinitionID=jobset,
                jobsetID=jobset,
                prodUserID=USER,
                prodUserName="standin-user",
                creationTime=_now(),
                commandToPilot=None,
                history=[],
            )
            self.jobs[pid] = spec
            self._move(spec, "defined")
            answer.append([pid, jobset, {"jobsetID": jobset}])
        if self._drop_submits:
            self._drop_submits -= 1
            return None
        return True, "", answer

    def _job_get_description(self, job_ids: list[int]) -> tuple[bool, str, Any]:
        self.described.append(list(job_ids))
        data = []
        for pid in job_ids[:5500]:
            job = self.jobs.get(int(pid))
            if job is None:
                data.append(None)
                continue
            public = {k: v for k, v in job.items() if k in ATTRIBUTES}
            data.append({**public, "Files": []})
        return True, "", data

    def _job_kill(self, job_ids: list[int], **_: Any) -> tuple[bool, str, Any]:
        done = []
        for pid in job_ids:
            job = self.jobs.get(int(pid))
            if job is None or job["jobStatus"] in FINAL or job["commandToPilot"] == "tobekilled":
                done.append(False)
                continue
            job["taskBufferErrorCode"], job["taskBufferErrorDiag"] = EC_KILL, f"killed by {USER}"
            if job["jobStatus"] in TAKEN:
                job["commandToPilot"] = "tobekilled"
            else:
                self._move(job, "cancelled")
            done.append(True)
        return True, "", done

    def _task_get_job_ids(self, task_id: Any) -> tuple[bool, str, Any]:
        wanted = int(task_id[0] if isinstance(task_id, list) else task_id)
        return True, "", [pid for pid, j in self.jobs.items() if j["jediTaskID"] == wanted]

    def _pilot_acquire_jobs(
        self, site_name: str, prod_source_label: str | None = None, node: str = "", **_: Any
    ) -> tuple[bool, str, Any]:
        if prod_source_label not in ("user",):
            return False, "no production/pilot role in VOMS FQANs or non pilot owner", None
        job = self._next_waiting(site_name)
        if job is None:
            return False, "No jobs in PanDA", None
        job["modificationHost"] = node
        self._move(job, "sent")
        keys = ("PandaID", "transformation", "coreCount", "maxWalltime", "container_name")
        return True, "", {"jobs": [{**{k: job[k] for k in keys}, "jobPars": job["jobParameters"]}]}

    def _next_waiting(self, site: str) -> dict[str, Any] | None:
        """The next activated job of ``site``, waiting up to ACQUIRE_WAIT for one."""
        deadline = time.monotonic() + ACQUIRE_WAIT
        while not self._closing.is_set():
            for job in self.jobs.values():
                if job["jobStatus"] == "activated" and job["computingSite"] == site:
                    return job
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._lock.wait(left)
        return None

    def _pilot_update_job(
        self, job_id: int, job_status: str, **fields: Any
    ) -> tuple[bool, str, Any]:
        job = self.jobs.get(int(job_id))
        if job is None:
            return False, "Database error", None
        if job_status not in VALID_PILOT_STATES:
            return False, f"Invalid job status: {job_status}", None
        names = {
            "trans_exit_code": "transExitCode",
            "pilot_error_code": "pilotErrorCode",
            "pilot_error_diag": "pilotErrorDiag",
            "exe_error_code": "exeErrorCode",
            "exe_error_diag": "exeErrorDiag",
            "node": "modificationHost",
        }
        for arg, value in fields.items():
            if arg in names and value not in (None, ""):
                job[names[arg]] = value
        if job["jobStatus"] in FINAL or job.get("_reported"):
            return True, "", {"StatusCode": 0, "command": "alreadydone"}
        if job_status in ("finished", "failed"):
            job["_reported"] = job_status
            self._move(job, "holding")
        elif job["jobStatus"] != job_status:
            self._move(job, job_status)
        return True, "", {"StatusCode": 0, "command": job["commandToPilot"]}


def _handler(server: PandaStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the tests read the job table, not the access log

        def do_GET(self) -> None:
            url = urlparse(self.path)
            args = {k: v[0] if len(v) == 1 else v for k, v in parse_qs(url.query).items()}
            self._answer(url.path, args)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b"{}"
            self._answer(urlparse(self.path).path, json.loads(body or b"{}"))

        def _answer(self, path: str, args: dict[str, Any]) -> None:
            endpoint = path.removeprefix("/api/v1/")
            try:
                result = server.handle(endpoint, args)
            except TypeError as exc:  # arguments the endpoint does not take
                result = False, f"bad request: {exc}", None
            if result is None:
                self.close_connection = True
                return
            success, message, data = result
            body = json.dumps(
                {"success": success, "message": message, "data": data}, default=_to_client
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
