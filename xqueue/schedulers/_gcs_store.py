"""A ``gs://`` workdir's storage side (``remote_workdir.RemoteStore`` on Cloud Storage).

Blocking, like ``_gcs``: called from worker threads. The client is made on first use,
so that a queue can be made (and its URL checked) without credentials or a network,
and so that the scheduler and its workdir share one client. Every call is bounded by
``timeout``, retries included: an unreachable endpoint is an error after that long,
not after the library's default two minutes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError
from ..remote_workdir import COPIED, JOB_FILE, RemoteFile, WorkdirURL
from ._gcs import download, make_client


class GcsStore:
    """The job files and the record copies (journal, specs) of one ``gs://bucket/prefix``."""

    def __init__(
        self,
        url: WorkdirURL,
        *,
        project: str | None,
        endpoint: str,
        credentials: Callable[[], Any] | None,
        timeout: float,
        local_dir: str = "",
    ) -> None:
        self.url = url
        self.local_dir = local_dir
        self.timeout = timeout
        self._project = project
        self._endpoint = endpoint
        self._credentials = credentials
        self._client: Any = None
        self._making = threading.Lock()

    @classmethod
    def from_environment(cls, url: WorkdirURL) -> GcsStore:
        """For ``xqueue status`` / ``logs``: the application default credentials, or the
        emulator ``STORAGE_EMULATOR_HOST`` names (the client reads it itself)."""
        import os

        from .gbatch import _default_credentials

        emulator = bool(os.environ.get("STORAGE_EMULATOR_HOST"))
        return cls(
            url,
            project=None,
            endpoint="",
            credentials=None if emulator else _default_credentials,
            timeout=60.0,
        )

    def client(self) -> Any:
        with self._making:
            if self._client is None:
                credentials = self._credentials() if self._credentials else None
                self._client = make_client(self._project or "", self._endpoint, credentials)
            return self._client

    def _calls(self) -> dict[str, Any]:
        from google.cloud.storage.retry import DEFAULT_RETRY

        return {"timeout": self.timeout, "retry": DEFAULT_RETRY.with_timeout(self.timeout)}

    def _bucket(self) -> Any:
        return self.client().bucket(self.url.bucket)

    def check(self) -> None:
        """Fail with the reason if the bucket cannot be reached or does not exist."""
        if not self._bucket().exists(**self._calls()):
            raise ConfigError(
                f"workdir {self.url.text}: bucket gs://{self.url.bucket} does not exist; "
                "create it (in the Batch jobs' region) or name another one"
            )

    def read_copy(self, name: str) -> tuple[bytes, float] | None:
        assert name in COPIED
        blob = self._bucket().get_blob(self.url.prefix + name, **self._calls())
        if blob is None:
            self.check()  # no copy yet, or no bucket: say which
            return None
        data: bytes = blob.download_as_bytes(**self._calls())
        return data, blob.updated.timestamp()

    def write_copy(self, name: str, data: bytes) -> None:
        assert name in COPIED
        blob = self._bucket().blob(self.url.prefix + name)
        blob.upload_from_string(data, content_type="application/jsonl", **self._calls())

    def list_files(self) -> Sequence[RemoteFile]:
        prefix = self.url.prefix
        found = []
        blobs = self.client().list_blobs(self.url.bucket, prefix=prefix, **self._calls())
        for blob in blobs:
            folder, _, name = blob.name[len(prefix) :].partition("/")
            if "/" in name or not JOB_FILE.fullmatch(name):
                continue
            updated = blob.updated.timestamp() if blob.updated else 0.0
            found.append(RemoteFile(folder, name, blob.md5_hash, updated))
        return found

    def download(self, file: RemoteFile, target: str) -> None:
        download(self._bucket().blob(f"{self.url.prefix}{file.folder}/{file.name}"), target)
