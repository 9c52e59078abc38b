"""What the cluster benchmarks share: one xqueue run of N ``true`` jobs and its counts, and
the baselines (the backend's own client submitting the same jobs one by one, in a loop).

A baseline's wall time runs from its first submission until every job it submitted has
ended, as xqueue's does, and it watches the jobs with one status call per second (it
records nothing; xqueue writes every job's folder, script, outputs and return code).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from xqueue import JobStatus, Xqueue


async def xqueue_run(
    scheduler: str, n: int, forks: int, workdir: str, opts: dict[str, Any]
) -> dict[str, float]:
    """N ``true`` jobs fed before the run, then run to the end; wall time and counts."""
    q = Xqueue(
        scheduler,
        forks=forks,
        workdir=workdir,
        error_strategy="ignore",
        handle_signals=False,
        scheduler_opts=opts,
    )
    start = time.perf_counter()
    for _ in range(n):
        await q.feed(["true"])
    await q.run_until_complete()
    wall = time.perf_counter() - start
    await q.aclose()
    stats = q.statistics()
    ok = sum(j.status is JobStatus.FINISHED for j in q.jobs)
    return {
        "jobs": n,
        "finished": ok,
        "wall_s": wall,
        "submit": stats.submit_calls,
        "status": stats.status_calls,
        "ticks": stats.ticks,
        "status_per_tick": stats.status_calls / max(stats.ticks, 1),
    }


def show(label: str, r: dict[str, float], baseline: dict[str, float] | None = None) -> None:
    line = (
        f"{label:<26} jobs={r['jobs']:.0f} finished={r['finished']:.0f} "
        f"wall={r['wall_s']:.1f}s ({r['jobs'] / r['wall_s']:.1f} jobs/s) "
        f"submit={r['submit']:.0f} status={r['status']:.0f}"
    )
    if "ticks" in r:
        line += f" ticks={r['ticks']:.0f} status/tick={r['status_per_tick']:.2f}"
    if baseline is not None and r is not baseline:
        # Rates, so that runs of different N compare.
        rate = r["jobs"] / r["wall_s"]
        base = baseline["jobs"] / baseline["wall_s"]
        line += f"  rate x{rate / base:.2f} of the loop"
    print(line, flush=True)


def loop_and_wait(
    n: int,
    submit: Callable[[int], str],
    still_held: Callable[[list[str]], int],
    poll: float = 1.0,
) -> dict[str, float]:
    """Submit N jobs one call each, then poll once a second until none is held."""
    start = time.perf_counter()
    ids = [submit(i) for i in range(n)]
    status = 0
    while True:
        status += 1
        if still_held(ids) == 0:
            break
        time.sleep(poll)
    wall = time.perf_counter() - start
    return {"jobs": n, "finished": n, "wall_s": wall, "submit": n, "status": status}


def run(argv: list[str], **kw: Any) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


# -- Slurm ------------------------------------------------------------------------------
NICE = 100_000
"""sbatch ``--nice`` of the benchmarks' jobs: the Slurm of ci/slurm.sh is shared with test
runs, whose jobs (a few, each with a deadline) would otherwise wait behind thousands of
queued benchmark jobs (priority/basic is first come, first served)."""


def slurm_loop(n: int, nice: int = 0) -> dict[str, float]:
    """``sbatch --wrap true`` N times in a shell loop, then ``squeue`` until all have ended.

    ``nice``: sbatch's ``--nice``, as for xqueue's jobs (see ``NICE``)."""
    with tempfile.TemporaryDirectory(prefix="xq-bench-sbatch-") as tmp:
        script = os.path.join(tmp, "loop.sh")
        with open(script, "w") as fh:
            fh.write(
                'for i in $(seq "$1"); do sbatch --parsable --nice="$2" -o /dev/null '
                "--wrap true || exit 1; done\n"
            )
        start = time.perf_counter()
        ids = run(["sh", script, str(n), str(nice)], cwd=tmp).split()
        status = 0
        while True:
            status += 1
            states = run(["squeue", "-h", "-t", "all", "-o", "%T", "-j", ",".join(ids)])
            if not any(
                s in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING") for s in states.split()
            ):
                break
            time.sleep(1.0)
        wall = time.perf_counter() - start
    return {"jobs": n, "finished": n, "wall_s": wall, "submit": n, "status": status}


# -- HTCondor ---------------------------------------------------------------------------
CONDOR_ENV = "/var/tmp/xqueue-condor/env"


def condor_env() -> dict[str, str]:
    with open(CONDOR_ENV) as fh:
        return dict(line.strip().split("=", 1) for line in fh if "=" in line)


def condor_opts() -> dict[str, Any]:
    """scheduler_opts that reach ci/htcondor.sh's pool from this host (as the tests do)."""
    env = condor_env()
    config = {
        "SEC_CLIENT_AUTHENTICATION_METHODS": "CLAIMTOBE",
        "SEC_CLAIMTOBE_USER": env["XQ_CONDOR_USER"],
    }
    os.environ.setdefault("CONDOR_CONFIG", "/dev/null")
    return {"collector": env["XQ_CONDOR_COLLECTOR"], "config": config}


@contextmanager
def condor_folder() -> Iterator[str]:
    """A folder under the pool's shared folder (plain mkdir: see ci/README.md)."""
    shared = condor_env().get("XQ_CONDOR_SHARED", "/var/tmp/xqueue-condor-shared")
    path = os.path.join(shared, f"bench-{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def condor_loop(n: int) -> dict[str, float]:
    """``condor_submit`` N times in a shell loop (inside the pool's chroot, as its job
    user), then one ``condor_q`` a second until none of them is in the queue. Both run as
    root (the chroot needs it) except the clients themselves."""
    env = condor_env()
    root, user = env["XQ_TRIXIE_ROOT"], env["XQ_CONDOR_USER"]
    shared = env.get("XQ_CONDOR_SHARED", "/var/tmp/xqueue-condor-shared")
    with condor_folder() as folder:
        os.chmod(folder, 0o777)
        sub = os.path.join(folder, "true.sub")
        with open(sub, "w") as fh:
            fh.write(
                f"executable = /bin/true\ninitialdir = {folder}\n"
                "should_transfer_files = NO\nqueue\n"
            )
        loop = os.path.join(folder, "loop.sh")
        with open(loop, "w") as fh:
            fh.write(f'for i in $(seq "$1"); do condor_submit -terse {sub} || exit 1; done\n')
        chroot = ["chroot", f"--userspec={user}:{user}", root, "env", "HOME=/tmp"]
        # The shared folder is seen inside the tree only in a mount namespace that binds it
        # there (as ci/htcondor.sh does for the pool).
        bind = 'mount --bind "$1" "$2$1" && shift 2 && exec "$@"'
        unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", bind, "_"]
        start = time.perf_counter()
        out = run([*unshare, shared, root, *chroot, "sh", loop, str(n)])
        clusters = {line.split(".")[0] for line in out.split() if "." in line}
        status = 0
        while True:
            status += 1
            left = run([*chroot, "condor_q", "-af", "ClusterId", *sorted(clusters)])
            if not left.split():
                break
            time.sleep(1.0)
        wall = time.perf_counter() - start
    return {"jobs": n, "finished": n, "wall_s": wall, "submit": n, "status": status}


# -- Google Batch (the stand-in of tests/standins) ----------------------------------------
GBATCH_LOCATION = "us-central1"
GBATCH_BUCKET = "xq-bench"


def gbatch_opts(gcloud: Any, project: str, poll: float) -> dict[str, Any]:
    """scheduler_opts that reach the stand-in (as tests/schedulers/test_gbatch.py does)."""
    return {
        "project": project,
        "location": GBATCH_LOCATION,
        "staging_bucket": f"gs://{GBATCH_BUCKET}/runs",
        "endpoint": gcloud.batch,
        "insecure": True,
        "storage_endpoint": gcloud.storage,
        "mount_root": f"{gcloud.vm_root}/mnt",
        "poll_interval": poll,
    }


def gbatch_loop(gcloud: Any, project: str, n: int, staged: bool = False) -> dict[str, float]:
    """One CreateJob per job from one client, one after the other (what a shell loop of
    ``gcloud batch jobs submit`` sends, without starting gcloud each time), then one
    ListJobs a second until every job has ended.

    ``staged``: each job as xqueue runs it, its files through the bucket: a script
    uploaded to the job's own folder, mounted as the job's GCS volume, which the job
    runs, leaving its stdout, stderr and exit status there, downloaded once it has ended
    (``gsutil cp`` and a ``gcloud`` submission per job, then ``gsutil cp`` back).
    """
    import grpc
    from google.cloud import batch_v1
    from google.cloud.batch_v1.services.batch_service.transports import (
        BatchServiceGrpcTransport,
    )

    channel = grpc.insecure_channel(gcloud.batch)
    client = batch_v1.BatchServiceClient(transport=BatchServiceGrpcTransport(channel=channel))
    bucket = gcloud.storage_client().bucket(GBATCH_BUCKET)
    parent = f"projects/{project}/locations/{GBATCH_LOCATION}"
    script = "true >stdout 2>stderr; echo $? >rc\n"
    try:
        start = time.perf_counter()
        for i in range(n):
            body: dict[str, Any] = {"runnables": [{"script": {"text": "true"}}]}
            if staged:
                bucket.blob(f"loop/{i}/run.sh").upload_from_string(script)
                mount = f"{gcloud.vm_root}/mnt/loop-{i}"
                body = {
                    "runnables": [{"script": {"text": f"cd {mount} && sh run.sh"}}],
                    "volumes": [
                        {"gcs": {"remote_path": f"{GBATCH_BUCKET}/loop/{i}"}, "mount_path": mount}
                    ],
                }
            job = batch_v1.Job({"task_groups": [{"task_spec": body}]}, labels={"bench": "loop"})
            client.create_job(parent=parent, job=job, job_id=f"loop-{i}", timeout=30)
        status = 0
        ended = {"SUCCEEDED", "FAILED"}
        while True:
            status += 1
            listed = client.list_jobs(
                request={"parent": parent, "filter": 'labels.bench="loop"', "page_size": 1000}
            )
            states = [j.status.state.name for j in listed]
            if len(states) == n and all(s in ended for s in states):
                break
            time.sleep(1.0)
        if staged:
            with tempfile.TemporaryDirectory(prefix="xq-bench-gcs-") as out:
                for i in range(n):
                    for name in ("stdout", "stderr", "rc"):
                        local = os.path.join(out, f"{i}.{name}")
                        bucket.blob(f"loop/{i}/{name}").download_to_filename(local)
        wall = time.perf_counter() - start
    finally:
        client.transport.close()
    return {"jobs": n, "finished": n, "wall_s": wall, "submit": n, "status": status}
