"""Texts a resume puts together by hand for every job, each against its plain version.

A job's spec text is what a resumed run knows its folder by: whichever way it is put
together, it must be exactly ``json.dumps`` of the spec with sorted keys. The event line
of a job settled by an earlier success must be the one every other event's code writes."""

from __future__ import annotations

import json
import random

import pytest

from xqueue import Job
from xqueue.events import EventLog, _line
from xqueue.states import S
from xqueue.workdir import job_spec

# Quotes, backslashes, control characters, non-ASCII and characters outside the BMP:
# everything JSON escapes, and some of what it does not.
CHARS = "ab z09-_./ \"\\'\t\x01\x1f\x7fé€\u2028\U0001f600"


def text(rng: random.Random) -> str:
    return "".join(rng.choice(CHARS) for _ in range(rng.randint(1, 12)))


def reference(job: Job) -> str:
    spec = {
        "index": job.index,
        "name": job.name,
        "command": job.command if isinstance(job.command, str) else list(job.command),
        "envs": job.envs,
        "resources": job.resources.to_dict() if job.resources else None,
    }
    if job.params:
        spec["params"] = job.params
    return json.dumps(spec, sort_keys=True)


@pytest.mark.parametrize("seed", range(3))
def test_the_spec_text_is_json_dumps_of_the_spec(seed: int) -> None:
    rng = random.Random(seed)
    for index in range(2000):
        argv = ["prog" + text(rng)] + [text(rng) for _ in range(rng.randint(0, 3))]
        command: str | list[str] = " ".join(argv) if rng.random() < 0.3 else argv
        job = Job(
            index * rng.choice((1, 1000, 10**9)),
            command,
            name=text(rng) if rng.random() < 0.5 else None,
            envs={"X_A": text(rng)} if rng.random() < 0.2 else None,
            resources={"cpus": rng.randint(1, 4)} if rng.random() < 0.2 else None,
        )
        if rng.random() < 0.2:
            job.params = {"p": rng.random(), "q": text(rng)}
        assert job_spec(job) == reference(job), job


@pytest.mark.parametrize("seed", range(3))
def test_a_settled_jobs_event_line_is_the_generic_one(seed: int) -> None:
    """The event stream formats the line of a job an earlier success settled by a
    shortcut (a resume writes one per job): it must be the line ``_line`` writes, and
    valid JSON, whatever the name, index, attempt and reason."""
    rng = random.Random(seed)
    log = EventLog("/nowhere")
    for index in range(2000):
        argv = ["prog" + text(rng)] + [text(rng) for _ in range(rng.randint(0, 3))]
        job = Job(index * rng.choice((1, 1000, 10**9)), argv, name=text(rng) or None)
        job.status, job.rc, job.attempt = S.FINISHED, 0, rng.randint(1, 10**6)
        job.reason = rng.choice(("succeeded in an earlier run", text(rng)))
        line = log._settled_line(job)
        assert line == _line(log._stamped, "job_succeeded", job), job
        assert json.loads(line)["name"] == job.name
