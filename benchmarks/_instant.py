"""A scheduler that ends every job with rc 0 as soon as it is submitted, for benchmarks
that measure the engine alone: no process, no polling, nothing to clean up."""

from __future__ import annotations

from xqueue import Job, JobState, JobStatus, Scheduler


class Instant(Scheduler):
    name = "instant"
    awaits_completion = True
    running_on_submit = True

    async def submit_job(self, job: Job) -> str:
        return str(job.index)

    async def kill_job(self, job: Job) -> None:
        pass

    async def job_is_running(self, job: Job) -> bool:
        return False

    async def wait_job(self, job: Job) -> JobState:
        return JobState(JobStatus.FINISHED, 0)
