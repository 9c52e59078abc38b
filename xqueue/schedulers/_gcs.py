"""Staging a job's files through a Cloud Storage bucket, for backends with no shared disk.

The controller keeps its workdir local. Before a job is submitted, its wrapper script
(and a call's pickle) is uploaded to the job's own folder in the bucket; the job sees
that folder as a directory (Batch mounts it with gcsfuse) and its wrapper writes
``job.<n>.started``, ``.stdout``, ``.stderr``, ``.rc`` (and a call's ``.result``) there.
Once the backend reports the job ended, those objects are downloaded into the job's
local folder, so everything that reads a workdir (the engine, ``xqueue status``,
``CallJob.result()``) reads local files as with any other backend.

The client is ``google-cloud-storage``, which is synchronous: every function here
blocks and is called from a worker thread, which suits both anyio backends equally
(``gcloud-aio-storage`` would have needed the asyncio bridge under trio, for transfers
that end in blocking file writes anyway).

Only objects named like one of the attempt's own files are downloaded, each through a
fresh temporary file renamed into place: an object name can never choose where in the
workdir something is written, nor write through a link planted in the job's folder.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any

from ..calls import RESULT
from ..errors import SchedulerError
from ..job import RC, STARTED, STDERR, STDOUT

OUTPUTS = (STARTED, STDOUT, STDERR, RESULT, RC)  # rc last: it is what ends the job
KILL_MARK = "kill"  # an array task that finds job.<n>.kill when it starts exits at once
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def make_client(project: str, endpoint: str | None, credentials: Any) -> Any:
    """A storage client (blocking: it may read credentials); ``endpoint`` for an emulator."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.storage import Client

    options: dict[str, Any] = {}
    if endpoint:
        options["api_endpoint"] = endpoint
        if endpoint.startswith("http://"):  # a plaintext endpoint is an emulator
            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    return Client(project=project, credentials=credentials, client_options=options)


class Staging:
    """One bucket and prefix; each Batch job gets the folder ``<prefix><job id>/``."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket_name = bucket
        self.prefix = prefix
        self._bucket = client.bucket(bucket)

    def folder(self, batch_id: str) -> str:
        return f"{self.prefix}{batch_id}/"

    def remote_path(self, batch_id: str) -> str:
        """The folder as a Batch GCS volume names it: ``bucket/prefix/id``."""
        return f"{self.bucket_name}/{self.prefix}{batch_id}"

    def root_path(self) -> str:
        """The whole prefix as a Batch GCS volume names it (an array's tasks share it)."""
        return f"{self.bucket_name}/{self.prefix}".rstrip("/")

    def put(self, key: str, name: str, data: str) -> None:
        """Write one small object (a kill marker) into a job's folder."""
        try:
            self._bucket.blob(self.folder(key) + name).upload_from_string(data)
        except Exception as exc:
            raise SchedulerError(f"gbatch: cannot write {self.url(key)}{name}: {exc}") from exc

    def url(self, batch_id: str) -> str:
        return f"gs://{self.bucket_name}/{self.folder(batch_id)}"

    def check(self) -> None:
        """Fail early, with the reason, if the bucket cannot be reached or does not exist."""
        try:
            found = self._bucket.exists()
        except Exception as exc:
            raise SchedulerError(
                f"gbatch: cannot reach staging bucket gs://{self.bucket_name}: {exc}"
            ) from exc
        if not found:
            raise SchedulerError(
                f"gbatch: staging bucket gs://{self.bucket_name} does not exist; create it "
                "in the project (in the Batch jobs' region) or name another one"
            )

    def upload(self, batch_id: str, files: Mapping[str, str]) -> None:
        """Upload local files (name in the folder -> local path) into the job's folder."""
        folder = self.folder(batch_id)
        for name, path in files.items():
            try:
                self._bucket.blob(folder + name).upload_from_filename(path)
            except Exception as exc:
                raise SchedulerError(
                    f"gbatch: cannot upload {path} to {self.url(batch_id)}: {exc}"
                ) from exc

    def clear(self, key: str, attempt: int) -> None:
        """Delete what an earlier run left as this attempt's outputs in a job's folder.

        In a gs:// workdir the folder is the job's, not one attempt's: a job run again
        from attempt 1 must not be settled by the files of an earlier run's attempt 1.
        """
        folder = self.folder(key)
        stale = {f"job.{attempt}.{kind}" for kind in (*OUTPUTS, KILL_MARK)}
        try:
            for blob in self.client.list_blobs(self.bucket_name, prefix=f"{folder}job.{attempt}."):
                if blob.name[len(folder) :] in stale:
                    blob.delete()
        except Exception as exc:
            raise SchedulerError(f"gbatch: cannot clear {self.url(key)}: {exc}") from exc

    def fetch(self, batch_id: str, attempt: int, jobdir: str) -> list[str]:
        """Download the attempt's outputs that exist into ``jobdir``; return their names."""
        folder = self.folder(batch_id)
        names = [f"job.{attempt}.{kind}" for kind in OUTPUTS]  # in OUTPUTS' order
        try:
            present = {
                blob.name[len(folder) :]: blob
                for blob in self.client.list_blobs(self.bucket_name, prefix=folder)
            }
        except Exception as exc:
            raise SchedulerError(f"gbatch: cannot list {self.url(batch_id)}: {exc}") from exc
        fetched = []
        for name in names:
            blob = present.get(name)
            if blob is None:
                continue
            download(blob, os.path.join(jobdir, name))
            fetched.append(name)
        return fetched


def download(blob: Any, target: str) -> None:
    """Download ``blob`` to ``target`` through a new temporary file renamed into place."""
    tmp = f"{target}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, _CREATE, 0o644)
    except OSError as exc:
        raise SchedulerError(f"gbatch: cannot create {tmp}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            blob.download_to_file(fh)
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, Exception):
            raise SchedulerError(f"gbatch: cannot download {blob.name}: {exc}") from exc
        raise
