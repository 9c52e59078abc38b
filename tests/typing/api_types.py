"""Code as users write it, checked by mypy (strict) in the typecheck session, never run:
each line fails to type-check if the API loses a type the user relies on."""

from __future__ import annotations

from xqueue import Job, Xqueue
from xqueue.calls import CallJob


def square(x: int) -> int:
    return x * x


class MyJob(Job):
    __slots__ = ("label",)
    label: str


async def uses(q: Xqueue, mine: MyJob) -> tuple[int, str]:
    call: CallJob[int] = await q.submit(square, 3)
    waited: CallJob[int] = await call.wait()  # wait() keeps the caller's own job class
    value: int = await waited.result()
    again: MyJob = await mine.wait()
    job: Job = await q.feed(["true"])
    return value, again.label + (await job.wait()).name
