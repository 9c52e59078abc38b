"""The plugin, installed as a distribution, loads through its entry point by itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xqueue import Xqueue

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XQUEUE_DISABLE_PLUGIN_AUTOLOAD", raising=False)


async def test_autoloaded_from_entry_point(tmp_path: Path) -> None:
    q = Xqueue(workdir=tmp_path, error_strategy="ignore")
    assert "jsonl-events" in q.hooks.names()
    await q.feed(["true"])
    bad = await q.feed("exit 3")
    await q.feed(["true"], after=[bad])
    await q.run_until_complete()
    lines = (tmp_path / "jsonl-events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    names = [e["event"] for e in events]
    assert names[:2] == ["job_queued", "job_queued"]  # at feed time, before the run
    started = names.index("run_started")
    assert events[started]["scheduler"] == "local"
    assert started < names.index("job_submitted")
    assert events[-1] == {**events[-1], "event": "run_stopped", "reason": "complete"}
    assert events[-1]["counts"] == {"finished": 1, "failed": 1, "skipped": 1}
    per_job = [(e["event"], e["job"]) for e in events if "job" in e]
    assert per_job.count(("job_succeeded", 0)) == 1
    failed = next(e for e in events if e["event"] == "job_failed")
    assert (failed["job"], failed["rc"], failed["status"]) == (1, 3, "failed")
    skipped = next(e for e in events if e["event"] == "job_skipped")
    assert (skipped["job"], skipped["status"]) == (2, "skipped")
    assert "job 1 (exit 3), which it runs after, failed with rc 3" in skipped["reason"]
    # xqueue's own stream went to its own file (it alone records job_init), not this one.
    assert "job_init" not in names
    assert '"event": "job_init"' in (tmp_path / "events.jsonl").read_text()


async def test_can_be_blocked_per_queue(tmp_path: Path) -> None:
    q = Xqueue(workdir=tmp_path, plugins=["-jsonl-events"])
    assert "jsonl-events" not in q.hooks.names()
    await q.feed(["true"])
    await q.run_until_complete()
    assert not (tmp_path / "jsonl-events.jsonl").exists()
    assert (tmp_path / "events.jsonl").exists()  # xqueue's own stream, another file
