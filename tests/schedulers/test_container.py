"""The container scheduler against real dockerd and podman (API) and charliecloud (CLI).

The image is imported by the test setup from the busybox root filesystem tarball that
ci/images.sh builds, through each engine's own API, under a name no other test uses.
What the scheduler claims (exit codes, removal, a stopped container) is read back from
the engine's API.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiodocker
import anyio
import pytest

from tests.helpers import IMAGE, call_api, process_alive, read_text
from tests.schedulers.fakes import DroppingProxy
from xqueue import FailureClass, Job, JobFailedError, JobStatus, SchedulerError, Xqueue
from xqueue.errors import SchedulerOptionError, SchedulerOutputError, SubmissionUnknownError
from xqueue.schedulers import _container_api
from xqueue.schedulers._container_api import _exit_code, _gone, _state
from xqueue.schedulers.container import ContainerScheduler
from xqueue.workdir import Workdir

pytestmark = pytest.mark.anyio


async def containers_of(url: str, workdir: Path) -> list[dict[str, Any]]:
    # The workdirs here are absolute (under tmp_path), as the label records them.
    filters = quote(json.dumps({"label": [f"xqueue.workdir={workdir}"]}))
    status, found = await call_api(url, "GET", f"/containers/json?all=1&filters={filters}")
    assert status == 200, found
    return list(found)


def queue(engine: dict[str, str], workdir: Path, **opts: Any) -> Xqueue:
    forks = opts.pop("forks", 4)
    strategy = opts.pop("error_strategy", "ignore")
    return Xqueue(
        "container",
        forks=forks,
        workdir=workdir,
        error_strategy=strategy,
        scheduler_opts={**engine, **opts},
    )


async def test_exit_codes_stdout_and_env(engine: dict[str, str], workdir: Path) -> None:
    q = queue(engine, workdir, envs={"FROM_OPTS": "opt $X"})
    args = ["a  b", "$HOME", "'q'", "", "*"]
    try:
        codes = [await q.feed(["sh", "-c", f"exit {rc}"]) for rc in (0, 3, 7, 130)]
        argv = await q.feed(["printf", "[%s]\\n", *args])
        env = await q.feed(
            "echo $FROM_OPTS/$FROM_JOB/$XQUEUE_JOB_INDEX; pwd", envs={"FROM_JOB": "j"}
        )
        err = await q.feed("echo oops >&2; exit 2")
        with anyio.fail_after(60):
            await q.run_until_complete()
    finally:
        await q.aclose()
    assert [j.rc for j in codes] == [0, 3, 7, 130]
    assert [j.status for j in codes] == [JobStatus.FINISHED] + [JobStatus.FAILED] * 3
    assert (await read_text(argv.stdout_path)) == "".join(f"[{a}]\n" for a in args)
    assert (await read_text(env.stdout_path)) == f"opt $X/j/{env.index}\n{env.dir}\n"
    assert (await read_text(err.stderr_path)) == "oops\n" and err.rc == 2
    # remove=True (the default): every container is gone once its code was read.
    assert await containers_of(engine["url"], workdir) == []


async def test_kept_containers_report_the_same_exit_code(
    engine: dict[str, str], workdir: Path
) -> None:
    q = queue(engine, workdir, remove=False)
    try:
        job = await q.feed(["sh", "-c", "exit 5"])
        await q.run_until_complete()
    finally:
        await q.aclose()
    found = await containers_of(engine["url"], workdir)
    try:
        assert [c["Id"] for c in found] == [job.jid]
        status, info = await call_api(engine["url"], "GET", f"/containers/{job.jid}/json")
        assert status == 200
        assert info["State"]["ExitCode"] == 5 == job.rc
        assert info["Config"]["Labels"]["xqueue.jobdir"] == job.dir
    finally:
        for c in found:
            await call_api(engine["url"], "DELETE", f"/containers/{c['Id']}?force=1")


async def test_volumes_are_mounted(engine: dict[str, str], workdir: Path, tmp_path: Path) -> None:
    data = anyio.Path(tmp_path / "data")
    await data.mkdir()
    await (data / "in.txt").write_text("from the host\n")
    same = anyio.Path(tmp_path / "same")
    await same.mkdir()
    q = queue(engine, workdir, volumes=[f"{data}:/data:ro", str(same)])
    try:
        read = await q.feed(["cat", "/data/in.txt"])
        write_ro = await q.feed(["sh", "-c", "echo x > /data/new"])
        write_rw = await q.feed(["sh", "-c", f"echo written > {same}/out.txt"])
        await q.run_until_complete()
    finally:
        await q.aclose()
    assert (await read_text(read.stdout_path)) == "from the host\n"
    assert write_ro.rc != 0 and not await (data / "new").exists()
    assert write_rw.rc == 0 and await (same / "out.txt").read_text() == "written\n"


async def test_kill_stops_the_container_not_a_client(engine: dict[str, str], workdir: Path) -> None:
    q = queue(engine, workdir, remove=False, kill_grace=1)
    try:
        async with q:
            job = await q.feed(["sleep", "300"])
            with anyio.fail_after(30):
                while job.status is not JobStatus.RUNNING:
                    await anyio.sleep(0.05)
            status, info = await call_api(engine["url"], "GET", f"/containers/{job.jid}/json")
            assert info["State"]["Running"] is True
            assert await q.kill(job)
            with anyio.fail_after(30):
                await job.wait()
        await q.aclose()
        assert job.status.name == "KILLED"
        status, info = await call_api(engine["url"], "GET", f"/containers/{job.jid}/json")
        assert status == 200 and info["State"]["Running"] is False
        assert info["State"]["ExitCode"] == 137
    finally:
        for c in await containers_of(engine["url"], workdir):
            await call_api(engine["url"], "DELETE", f"/containers/{c['Id']}?force=1")


async def test_missing_image_is_reported_clearly_and_not_retried(
    engine: dict[str, str], workdir: Path
) -> None:
    missing = {**engine, "image": "localhost/xqueue-no-such-image:latest"}
    q = Xqueue(
        "container", workdir=workdir, error_strategy="retry", num_retries=3, scheduler_opts=missing
    )
    try:
        job = await q.feed(["true"])
        await q.run_until_complete()
    finally:
        await q.aclose()
    assert job.status is JobStatus.FAILED
    assert job.attempt == 1
    assert "image 'localhost/xqueue-no-such-image:latest' is not present" in job.reason
    assert f"{engine['bin']} pull" in job.reason and f"{engine['bin']} import" in job.reason


async def test_a_controller_restart_readopts_the_container(
    engine: dict[str, str], tmp_path: Path
) -> None:
    wd = Workdir(tmp_path / "wd")
    opts = {**engine, "remove": False}
    first = ContainerScheduler(**opts)
    await first.open(wd)
    job = Job(0, ["sh", "-c", "sleep 1; exit 6"])
    wd.prepare(job, make=True)
    try:
        await first.submit_job(job)  # the controller dies before recording the id
        await first.aclose()
        second = ContainerScheduler(**opts)
        await second.open(wd)
        try:
            job.jid = None
            assert await second.recover_job(job)
            with anyio.fail_after(30):
                state = await second.wait_job(job)
        finally:
            await second.aclose()
        assert state.rc == 6
    finally:
        for c in await containers_of(engine["url"], tmp_path / "wd"):
            await call_api(engine["url"], "DELETE", f"/containers/{c['Id']}?force=1")


@pytest.mark.docker
async def test_unreachable_api_is_reported(workdir: Path) -> None:
    q = Xqueue(
        "container",
        workdir=workdir,
        scheduler_opts={"image": IMAGE, "url": "unix:///tmp/xqueue-no-such.sock"},
    )
    await q.feed(["true"])
    with pytest.raises(SchedulerError, match=r"cannot reach the docker API at unix:///tmp/xq"):
        await q.run_until_complete()
    await q.aclose()


async def test_an_api_that_never_answers_is_reported_in_time(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that accepts the connection and never answers (a hung daemon) held the
    run's open() for ever, deaf to SIGTERM and Ctrl-C."""
    monkeypatch.setattr(_container_api, "API_ANSWER_TIMEOUT", 2.0)
    path = str(tmp_path / "silent.sock")
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(path)
    silent.listen(8)  # the kernel takes connections; nobody reads or answers them
    try:
        q = Xqueue(
            "container", workdir=workdir, scheduler_opts={"image": IMAGE, "url": f"unix://{path}"}
        )
        await q.feed(["true"])
        with (
            anyio.fail_after(20),
            pytest.raises(SchedulerError, match=r"did not answer within 2 s"),
        ):
            await q.run_until_complete()
        await q.aclose()
    finally:
        silent.close()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SchedulerOptionError, match="option 'image' is required"):
        ContainerScheduler()
    with pytest.raises(SchedulerOptionError, match="bin 'lxc' is not supported; use one of"):
        ContainerScheduler(image="x", bin="lxc")
    with pytest.raises(SchedulerOptionError, match="does not accept option 'mount'"):
        ContainerScheduler(image="x", mount="/a")
    with pytest.raises(SchedulerOptionError, match="'--gpus' cannot be passed to the docker"):
        ContainerScheduler(image="x", bin_args=["--gpus", "all"])
    with pytest.raises(SchedulerOptionError, match="does not exist"):
        ContainerScheduler(image="x", volumes=["/no/such/dir:/x"])
    # What ch-run and apptainer cannot do: each job failed at submission, or it was
    # ignored (a job ran as root; HOME stayed the image's), before.
    comma = tmp_path / "a,b"
    comma.mkdir()
    for opts, said in [
        ({"bin": "ch-run", "user": "1000:1000"}, "option 'user' is for docker and podman"),
        ({"bin": "apptainer", "user": "1000"}, "apptainer runs each job as the user"),
        ({"bin": "ch-run", "volumes": [f"{tmp_path}:/v:ro"]}, "ch-run binds are read-write"),
        ({"bin": "apptainer", "volumes": [f"{comma}:/v"]}, "a ',' in a path"),
        ({"bin": "apptainer", "envs": {"HOME": "/h"}}, "does not let envs set HOME"),
    ]:
        with pytest.raises(SchedulerOptionError, match=said):
            ContainerScheduler(image="x", **opts)
    # Several volumes from the command line: a JSON list, as list options take; it
    # was one volume named '["/a", "/b"]'. A path that begins with "[" is a path.
    both = tmp_path / "[both"
    both.mkdir()
    given = json.dumps([f"{tmp_path}:/v:ro", str(both)])
    volumes = ContainerScheduler(image="x", volumes=given).options
    assert volumes.volumes == [(str(tmp_path), "/v", "ro"), (str(both), str(both), "rw")]
    one = ContainerScheduler(image="x", volumes=str(both)).options
    assert one.volumes == [(str(both), str(both), "rw")]
    sched = ContainerScheduler(image="x", bin_args=["--network", "host", "--init"])
    assert sched.runtime._extra_host == {"NetworkMode": "host", "Init": True}  # type: ignore[attr-defined]


# -- charliecloud (CLI backend) ----------------------------------------------------------


async def test_chrun_exit_codes_env_and_kill(chrun_image: str, workdir: Path) -> None:
    q = Xqueue(
        "container",
        forks=4,
        workdir=workdir,
        error_strategy="ignore",
        scheduler_opts={
            "bin": "ch-run",
            "image": chrun_image,
            "envs": {"A": "x $Y"},
            "kill_grace": 1,
        },
    )
    async with q:
        codes = [await q.feed(["sh", "-c", f"exit {rc}"]) for rc in (0, 4)]
        env = await q.feed(["sh", "-c", "echo $A; [ -x /bin/busybox ] && echo in the image"])
        slow = await q.feed(["sh", "-c", "sleep 300 & sleep 300"])
        with anyio.fail_after(30):
            started = Path(slow.attempt_path("started"))
            while slow.status is not JobStatus.RUNNING or not await anyio.Path(started).exists():
                await anyio.sleep(0.05)
        pgid = int(str(slow.jid).split(":")[0])
        assert await q.kill(slow)
        with anyio.fail_after(30):
            await slow.wait()
    await q.aclose()
    assert [j.rc for j in codes] == [0, 4]
    assert (await read_text(env.stdout_path)) == "x $Y\nin the image\n"
    assert slow.status.name == "KILLED"

    async def group_alive() -> list[str]:
        out = await anyio.run_process(["ps", "-o", "pid=,stat=", "-g", str(pgid)], check=False)
        return [ln for ln in out.stdout.decode().splitlines() if "Z" not in ln.split()[-1]]

    # Signalled with its group; the kernel takes each member down a moment later under load.
    with anyio.fail_after(5):
        while await group_alive():
            await anyio.sleep(0.05)


async def test_chrun_job_that_ends_leaves_nothing_running(chrun_image: str, workdir: Path) -> None:
    """ch-run has no process namespace: what a job left running (``cmd &``) ran on after
    it ended, writing into its folder while a later attempt ran."""
    q = Xqueue("container", workdir=workdir, scheduler_opts={"bin": "ch-run", "image": chrun_image})
    job = await q.feed(["sh", "-c", "sleep 300 & echo $! > bg.pid; echo done"])  # in its folder
    with anyio.fail_after(60):
        await q.run_until_complete()
    await q.aclose()
    assert job.status is JobStatus.FINISHED
    pid = int(await read_text(Path(job.dir) / "bg.pid"))
    with anyio.fail_after(5):
        while await anyio.to_thread.run_sync(process_alive, pid):
            await anyio.sleep(0.05)


async def runner_whose_id_was_not_recorded_is_found(opts: dict[str, Any], workdir: Path) -> None:
    """A controller that died between starting a runner and recording its id: the next
    run must find the runner, or it starts the job a second time beside the first. The
    lookup is made once the job's wrapper runs inside the container: by then apptainer's
    starter has replaced the runner, with none of the controller's environment (a lookup
    by XQUEUE_JOB_DIR found nothing)."""
    q = Xqueue("container", workdir=workdir, scheduler_opts={**opts, "kill_grace": 1})
    async with q:
        job = await q.feed(["sleep", "300"])
        with anyio.fail_after(30):
            started = anyio.Path(job.attempt_path("started"))
            while job.status is not JobStatus.RUNNING or not await started.exists():
                await anyio.sleep(0.05)
        other = ContainerScheduler(**opts)
        await other.open(q.workdir)
        try:
            lost = Job(job.index, job.command)
            lost.dir, lost.attempt = job.dir, job.attempt
            assert await other.recover_job(lost)
            assert lost.jid == job.jid
            # Another job's log names no runner: it never started.
            never = Job(job.index + 1, job.command)
            never.dir = str(Path(job.dir).parent / "never")
            await anyio.Path(never.dir).mkdir()
            await anyio.Path(never.path("job.runtime.log")).write_text("")
            assert not await other.recover_job(never) and never.jid is None
            # A link planted at a log's name, to the running job's: not followed.
            planted = Job(job.index + 2, job.command)
            planted.dir = str(Path(job.dir).parent / "planted")
            await anyio.Path(planted.dir).mkdir()
            log = anyio.Path(planted.path("job.runtime.log"))
            await log.symlink_to(job.path("job.runtime.log"))
            assert not await other.recover_job(planted) and planted.jid is None
        finally:
            await other.aclose()
        assert await q.kill(job)


async def test_chrun_job_whose_id_was_not_recorded_is_found_by_its_output(
    chrun_image: str, workdir: Path
) -> None:
    await runner_whose_id_was_not_recorded_is_found(
        {"bin": "ch-run", "image": chrun_image}, workdir
    )


async def test_chrun_missing_image_directory(workdir: Path, chrun_image: str) -> None:
    q = Xqueue(
        "container",
        workdir=workdir,
        error_strategy="ignore",
        scheduler_opts={"bin": "ch-run", "image": chrun_image + "-missing"},
    )
    job = await q.feed(["true"])
    await q.run_until_complete()
    await q.aclose()
    assert job.status is JobStatus.FAILED
    assert "does not exist; ch-run needs an unpacked image" in job.reason


async def test_a_halted_run_leaves_no_container_behind(
    engine: dict[str, str], workdir: Path
) -> None:
    q = queue(engine, workdir, error_strategy="halt", kill_grace=1)
    try:
        slow = await q.feed(["sleep", "300"])
        bad = await q.feed(["sh", "-c", "sleep 1; exit 3"])
        with anyio.fail_after(60), pytest.raises(JobFailedError):
            await q.run_until_complete()
    finally:
        await q.aclose()
    assert bad.rc == 3
    assert slow.status.name == "KILLED"
    assert await containers_of(engine["url"], workdir) == []


async def test_chrun_halted_run_kills_and_reaps(chrun_image: str, workdir: Path) -> None:
    q = Xqueue(
        "container",
        workdir=workdir,
        forks=2,
        error_strategy="halt",
        scheduler_opts={"bin": "ch-run", "image": chrun_image, "kill_grace": 1},
    )
    slow = await q.feed(["sleep", "300"])
    await q.feed(["sh", "-c", "sleep 1; exit 3"])
    with anyio.fail_after(60), pytest.raises(JobFailedError):
        await q.run_until_complete()
    await q.aclose()
    assert slow.status is JobStatus.KILLED  # and the autouse fixture finds no zombie


@pytest.mark.parametrize("lost", ["create", "start"])
async def test_lost_answer_is_unknown_and_the_container_found_by_its_labels(
    engine: dict[str, str], workdir: Path, tmp_path: Path, lost: str
) -> None:
    # The engine acted on the request, but its answer never came back.
    upstream = engine["url"].removeprefix("unix://")
    proxy = DroppingProxy(upstream, tmp_path / "api.sock", f"/{lost}".encode())
    scheduler = ContainerScheduler(**{**engine, "url": proxy.url, "remove": False})
    wd = Workdir(workdir)
    await scheduler.open(wd)
    job = Job(0, ["sh", "-c", "echo ran; exit 4"])
    wd.prepare(job, make=True)
    job.attempt = 1
    try:
        with pytest.raises(SubmissionUnknownError, match="may have been created"):
            await scheduler.submit_job(job)
        assert proxy.dropped == 1
        job.jid = None
        if lost == "create":
            # Created, never started: nothing ran in it, so it is removed, not adopted.
            assert not await scheduler.recover_job(job) and job.jid is None
            assert await containers_of(engine["url"], workdir) == []
        else:
            assert await scheduler.recover_job(job)
            (found,) = await containers_of(engine["url"], workdir)
            assert job.jid == found["Id"] and found["Labels"]["xqueue.attempt"] == "1"
            with anyio.fail_after(30):
                state = await scheduler.wait_job(job)
            assert state.rc == 4 and (await read_text(job.stdout_path)) == "ran\n"
            job.jid, job.attempt = None, 2  # another attempt is not this container
            assert not await scheduler.recover_job(job) and job.jid is None
    finally:
        await scheduler.aclose()
        await anyio.to_thread.run_sync(proxy.close)
        for c in await containers_of(engine["url"], workdir):
            await call_api(engine["url"], "DELETE", f"/containers/{c['Id']}?force=1")


@pytest.mark.docker
async def test_answers_not_in_the_documented_shape_are_output_errors(
    docker_socket: str, workdir: Path
) -> None:
    scheduler = ContainerScheduler(image=IMAGE, url=docker_socket)
    await scheduler.open(Workdir(workdir))
    runtime: Any = scheduler.runtime

    async def wait_answer() -> Any:
        return _exit_code({"Error": {"Message": "busy"}})  # a wait answer with no code

    async def inspect_answer() -> Any:
        return _state({"Id": "x"})

    try:
        for fn, what in ((wait_answer, "StatusCode"), (inspect_answer, "State")):
            with pytest.raises(SchedulerOutputError, match=f"no {what}"):
                await runtime._call(fn)
    finally:
        await scheduler.aclose()


# -- apptainer (CLI backend; ci/apptainer.sh runs it inside a chroot, see there) ---------------


def apptainer_queue(apptainer: dict[str, str], workdir: Path, **opts: Any) -> Xqueue:
    forks = opts.pop("forks", 4)
    return Xqueue(
        "container",
        forks=forks,
        workdir=workdir,
        error_strategy="ignore",
        scheduler_opts={**apptainer, **opts},
    )


@pytest.mark.apptainer
async def test_apptainer_exit_codes_env_and_workdir(
    apptainer: dict[str, str], shared_workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XQ_LEAK", "the controller's")  # --cleanenv: not inside
    hostile = {"A": "x $Y", "B": "'q'", "C": "$(echo no)`id`;\nz", "D": "a,b=c"}
    data = shared_workdir.parent / "data"
    await anyio.Path(data).mkdir()
    await anyio.Path(data / "in.txt").write_text("from the host\n")
    q = apptainer_queue(apptainer, shared_workdir, envs=hostile, volumes=[f"{data}:/data:ro"])
    try:
        codes = [await q.feed(["sh", "-c", f"exit {rc}"]) for rc in (0, 5, 130)]
        env = await q.feed(
            ["sh", "-c", 'printf "[%s]" "$A" "$B" "$C" "$D" "${XQ_LEAK-unset}"; pwd'],
        )
        files = await q.feed(
            ["sh", "-c", "cat /data/in.txt; echo made > here.txt; echo x > /data/y"]
        )
        with anyio.fail_after(60):
            await q.run_until_complete()
    finally:
        await q.aclose()
    assert [j.rc for j in codes] == [0, 5, 130]
    assert [j.status for j in codes] == [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.FAILED]
    want = "".join(f"[{v}]" for v in hostile.values()) + f"[unset]{env.dir}\n"
    assert await read_text(env.stdout_path) == want
    # The workdir is bound read-write at its own path; /data read-only.
    assert files.rc != 0 and await read_text(files.stdout_path) == "from the host\n"
    assert await read_text(Path(files.dir) / "here.txt") == "made\n"
    assert not await anyio.Path(data / "y").exists()


@pytest.mark.apptainer
async def test_apptainer_kill_takes_the_container_down(
    apptainer: dict[str, str], shared_workdir: Path
) -> None:
    q = apptainer_queue(apptainer, shared_workdir, kill_grace=1)
    async with q:
        slow = await q.feed(["sh", "-c", "sleep 300 & sleep 300"])
        with anyio.fail_after(30):
            started = anyio.Path(slow.attempt_path("started"))
            while slow.status is not JobStatus.RUNNING or not await started.exists():
                await anyio.sleep(0.05)
        pgid = int(str(slow.jid).split(":")[0])
        assert await q.kill(slow)
        with anyio.fail_after(30):
            await slow.wait()
    await q.aclose()
    assert slow.status is JobStatus.KILLED

    async def group_alive() -> list[str]:
        out = await anyio.run_process(["ps", "-o", "pid=,stat=", "-g", str(pgid)], check=False)
        return [ln for ln in out.stdout.decode().splitlines() if "Z" not in ln.split()[-1]]

    with anyio.fail_after(5):
        while await group_alive():
            await anyio.sleep(0.05)


@pytest.mark.apptainer
async def test_apptainer_job_whose_id_was_not_recorded_is_found_by_its_output(
    apptainer: dict[str, str], shared_workdir: Path
) -> None:
    await runner_whose_id_was_not_recorded_is_found(apptainer, shared_workdir)


@pytest.mark.apptainer
async def test_apptainer_missing_image_is_not_retried(
    apptainer: dict[str, str], shared_workdir: Path
) -> None:
    q = Xqueue(
        "container",
        workdir=shared_workdir,
        error_strategy="retry",
        num_retries=3,
        scheduler_opts={**apptainer, "image": apptainer["image"] + "-missing"},
    )
    job = await q.feed(["true"])
    await q.run_until_complete()
    await q.aclose()
    assert job.status is JobStatus.FAILED and job.attempt == 1
    assert "does not exist; apptainer needs a .sif file" in job.reason


@pytest.mark.apptainer
async def test_apptainer_walltime_kills_the_container(
    apptainer: dict[str, str], shared_workdir: Path
) -> None:
    q = apptainer_queue(apptainer, shared_workdir, kill_grace=0.5)
    try:
        job = await q.feed(["sleep", "300"], resources={"walltime": 1})
        with anyio.fail_after(30):
            await q.run_until_complete()
    finally:
        await q.aclose()
    assert job.status is JobStatus.FAILED and job.failure is FailureClass.TIMEOUT


def test_podmans_500_no_such_container_counts_as_gone() -> None:
    # Podman answered a stop that raced the wait's removal with this 500 in CI; the kill
    # then failed the run although the container had ended. Both answers mean "gone".
    raced = aiodocker.DockerError(
        500,
        "container 943eb06eb5630acd20bd2b774d14a1505a2397d9ee0357db911c869f8600c6af"
        " does not exist in database: no such container",
    )
    assert _gone(raced)
    assert _gone(aiodocker.DockerError(404, "no such container"))
    assert not _gone(aiodocker.DockerError(500, "runtime error: cgroup busy"))
    assert not _gone(aiodocker.DockerError(409, "removal in progress"))
