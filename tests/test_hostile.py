"""Hostile strings in job names, arguments and environment values, on every backend.

Each payload tries to run ``touch CANARY-<n>`` (inside the workdir, which every backend
shares, containers included) should any writer let it out of its quotes: through a
newline, ``$(...)``, backticks, a closing quote, ``;``, ``&&``, ``#``, ``\\``, a qsub or
sbatch directive on a line of its own. After a real run the canaries must not exist,
every job must have succeeded, and its stdout must show every argument and value
byte for byte. NULs and other text no script can carry are refused at ``feed``.

The unit tests at the end render the same strings into each script writer (wrapper,
array, SSH submit and kill) and run the scripts with ``sh`` here, for fast feedback.
Then the same arguments inside the shell lines a pipeline adds around each command
(``prescript``, ``postscript``, the jobcmd hooks), on local processes and the clusters.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import (
    SGE_FAST,
    SLURM_FAST,
    container_engine,
    read_bytes,
    read_text,
    ssh_server,
)
from xqueue import ConfigError, Job, JobStatus, Xqueue, hookimpl
from xqueue._text import LONGEST_EXEC_STRING
from xqueue.job import SCRIPT
from xqueue.scheduler import render_script
from xqueue.schedulers._cluster import job_name, write_array
from xqueue.schedulers._container_cli import set_env_value
from xqueue.schedulers._ssh_scripts import kill_script, submit_answer, submit_script
from xqueue.wrapping import Wrap

pytestmark = pytest.mark.anyio

CANARY = "CANARY-"
SAFE_NAME = r"[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,63}"


# Hostile arguments and environment values; "@T" is a command creating the canary of
# that payload (by its index), "@C" its path.
TEMPLATES = [
    "\n@T\n",
    "a\n@T\nb",
    "$(@T)",
    "`@T`",
    "'; @T; '",
    '"; @T; "',
    "'\"'\"'; @T; #",
    "; @T",
    "&& @T",
    "|| @T ||",
    "| @T",
    "# @T",
    "\\\n@T",
    "x\\'; @T; '\\",
    "${IFS}@T",
    "\r\n@T\r\n",
    ">@C <(true)",
    "\n#$ -v XQ_SMUGGLED=qsub\n#SBATCH --export=ALL,XQ_SMUGGLED=sbatch\n",
    "-n",
    "--help",
    "-",
    "",
    "  two  spaces ",
    "*",
    "~",
    "$HOME",
    "%s%n%%",
    "\\",
    "ünïcødé ✓ 日本語 🙂 \u2028 \u0085 \u202e",
    "@LONG",
]


def payloads(canary: Path) -> list[str]:
    """The templates with their canaries filled in (absolute paths in the shared workdir)."""
    found = []
    for i, template in enumerate(TEMPLATES):
        path = shlex.quote(f"{canary}{i}")
        text = template.replace("@T", f"touch {path}").replace("@C", path)
        found.append(text.replace("@LONG", long(f"$(touch {path});`touch {path}`;'\"\\\n", 90_000)))
    return found


def long(unit: str, size: int) -> str:
    """``unit`` repeated to about ``size`` characters (an argument may hold 128 KiB)."""
    return unit * (size // len(unit))


def leaks(*folders: Path) -> list[str]:
    """Canaries anywhere under ``folders``, or in the two places a relative one lands."""
    found = [p for folder in folders for p in folder.rglob(f"{CANARY}*")]
    for place in (Path.cwd(), Path.home()):
        found += place.glob(f"{CANARY}*")
    return sorted(str(p) for p in found)


def names(canary: Path) -> list[str]:
    """Job names: one job per name (they are comments, backend names and folder slugs)."""
    t = f"touch {shlex.quote(f'{canary}name')}"
    return [
        f"n\n{t}\n",
        f"$({t})",
        f"`{t}`",
        f"'; {t}; '",
        f'"; {t}; "',
        f"; {t} && {t} || {t} | {t} # \\",
        f"-n --help \\\n{t}",
        "\n#SBATCH --export=ALL,XQ_SMUGGLED=sbatch\n#$ -v XQ_SMUGGLED=qsub\n",
        "ünïcødé ✓ 日本語 🙂\r\u2028\u0085\u202ex",
        long(f"x\n{t}\n", 100_000),
    ]


# Options envs of the container backends (the API's Env, ch-run's --set-env).
OPTION_ENVS = {"XQ_O0": "'q'", "XQ_O1": "a\n$(touch CANARY-o)`touch CANARY-o`", "XQ_O2": '"dq"'}


def print_all(n_envs: int) -> str:
    """The job: print each argument, each env value, each option env, then the smuggle probe."""
    words = [
        '"$@"',
        *(f'"$XQ_E{i}"' for i in range(n_envs)),
        *(f'"${{{k}-}}"' for k in OPTION_ENVS),
        '"${XQ_SMUGGLED-unset}"',
    ]
    return f'printf "%s\\n" {" ".join(words)}'


def expected(args: list[str], envs: list[str], container: bool) -> bytes:
    options = list(OPTION_ENVS.values()) if container else [""] * len(OPTION_ENVS)
    return "".join(f"{v}\n" for v in [*args, *envs, *options, "unset"]).encode()


# -- the backends --------------------------------------------------------------------------
BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("slurm", id="slurm", marks=pytest.mark.slurm),
    pytest.param("sge", id="sge", marks=pytest.mark.sge),
    pytest.param("ssh", id="ssh", marks=pytest.mark.ssh),
    pytest.param("docker", id="docker", marks=pytest.mark.docker),
    pytest.param("podman", id="podman", marks=pytest.mark.podman),
    pytest.param("ch-run", id="ch-run"),
    pytest.param("htcondor", id="htcondor", marks=pytest.mark.htcondor),
    pytest.param("apptainer", id="apptainer", marks=pytest.mark.apptainer),
]
# Backends that run in the chroot of ci/htcondor.sh: their workdirs must be in its shared folder.
SHARED_FOLDER = ("htcondor", "apptainer")


# The workdir's own path reaches scripts, --output/-o patterns, mounts and binds. Each
# backend gets every character but the one it has no way to spell (and refuses: below).
WORKDIR = "wd\n$(touch CANARY-w) `x` 'q' \"dq\" ; # %j %a $TASK_ID :x ,y"
UNSPELLABLE = {"ch-run": ":", "podman": ":", "sge": "$,", "htcondor": "\n", "apptainer": ":,"}


def hostile_workdir(tmp_path: Path, backend: str) -> Path:
    return tmp_path / "".join(c for c in WORKDIR if c not in UNSPELLABLE.get(backend, ""))


@pytest.fixture
def base(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Path:
    """Where the test's workdir and canaries go: ``tmp_path``, or for the backends in the
    chroot of ci/htcondor.sh a folder under the one it shares."""
    if backend in SHARED_FOLDER:
        return Path(request.getfixturevalue("shared_workdir")).parent
    return tmp_path


@pytest.fixture
def cleanup() -> Iterator[list[tuple[str, list[Job]]]]:
    """Cluster jobs a failed test left behind are removed (scancel, qdel)."""
    pending: list[tuple[str, list[Job]]] = []
    yield pending
    for command, jobs in pending:
        ids = [j.jid for j in jobs if j.jid and not j.status.is_final]
        if ids:
            subprocess.run([command, *ids], capture_output=True, timeout=30)


def backend_queue(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path, workdir: Path
) -> tuple[str, dict[str, Any]]:
    """The scheduler and its options for one backend (a missing service skips or fails)."""
    if backend == "local":
        return "local", {}
    if backend == "slurm":
        request.getfixturevalue("slurm_cluster")
        return "slurm", dict(SLURM_FAST)
    if backend == "sge":
        request.getfixturevalue("sge_cluster")
        return "sge", dict(SGE_FAST)
    if backend == "ssh":
        env: dict[str, str] = request.getfixturevalue("ssh_env")
        # The server's name, its view of the workdir (a link) and the jobs' cwd are
        # hostile too: all of them reach the scripts run on the server.
        remote = tmp_path / "remote $(touch CANARY-r) 'q' `x`\nnl"
        remote.symlink_to(workdir, target_is_directory=True)
        cwd = tmp_path / 'cwd $(touch CANARY-c) "dq" ; #'
        cwd.mkdir()
        srv = ssh_server(env, env["XQ_SSH_PORT"], remote_workdir=str(remote))
        opts = {"servers": {"srv '$(touch CANARY-s)` \"x": srv}, "cwd": str(cwd)}
        return "ssh", {**opts, "poll_interval": 0.2}
    if backend in ("docker", "podman"):
        return "container", {**container_engine(request, backend), "envs": OPTION_ENVS}
    if backend == "htcondor":
        return "htcondor", {**request.getfixturevalue("htcondor_pool"), "poll_interval": 0.5}
    if backend == "apptainer":
        return "container", {**request.getfixturevalue("apptainer"), "envs": OPTION_ENVS}
    image: str = request.getfixturevalue("chrun_image")
    return "container", {"bin": "ch-run", "image": image, "envs": OPTION_ENVS}


@pytest.fixture
def backend_opts(
    request: pytest.FixtureRequest, backend: str, base: Path
) -> tuple[str, dict[str, Any]]:
    """``backend_queue`` as a fixture: its services' fixtures are set up before the test
    runs, not requested from inside its event loop."""
    return backend_queue(request, backend, base, hostile_workdir(base, backend))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_hostile_strings_run_as_data_on_every_backend(
    backend_opts: tuple[str, dict[str, Any]],
    backend: str,
    base: Path,
    cleanup: list[tuple[str, list[Job]]],
) -> None:
    workdir = hostile_workdir(base, backend)
    canary = workdir / CANARY
    args = payloads(canary)
    envs = {f"XQ_E{i}": v for i, v in enumerate(args)}
    job_names = names(canary)
    forks = len(job_names) + 1
    scheduler, opts = backend_opts
    q = Xqueue(
        scheduler, forks=forks, workdir=workdir, error_strategy="ignore", scheduler_opts=opts
    )
    jobs: list[Job] = []
    for i, name in enumerate(job_names):
        # The first half share their resources (a Slurm/SGE array), the rest are single
        # submissions (their own walltime), so both namings are exercised.
        resources = {"walltime": 3600 + i} if i >= len(job_names) // 2 else None
        argv = ["sh", "-c", print_all(len(envs)), "xq", *args]
        jobs.append(await q.feed(argv, envs, name=name, resources=resources))
    # A string command: its quoting in the wrapper is the second layer; its name is derived.
    command = f"printf '%s\\n' {' '.join(shlex.quote(a) for a in args)}"
    text_job = await q.feed(f'{command}; printf "%s\\n" "${{XQ_SMUGGLED-unset}}"')
    # Twice as long: over the 128 KiB exec passes in one argument (``sh -c`` failed).
    long_job = await q.feed(f"{command}; {command}")
    if scheduler in ("slurm", "sge"):
        cleanup.append(("scancel" if scheduler == "slurm" else "qdel", [*jobs, text_job, long_job]))
    with anyio.fail_after(110):
        await q.run_until_complete()

    for job in [*jobs, text_job, long_job]:
        stderr = await anyio.to_thread.run_sync(read, job.stderr_path)
        assert job.status is JobStatus.FINISHED, (job, job.reason, stderr)
    assert await anyio.to_thread.run_sync(leaks, base) == [], f"{backend}: payloads ran"
    container = scheduler == "container"
    for job in jobs:
        assert (await read_bytes(job.stdout_path)) == expected(args, list(envs.values()), container)
    want = "".join(f"{a}\n" for a in [*args, "unset"]).encode()
    assert (await read_bytes(text_job.stdout_path)) == want
    assert len(os.fsencode(long_job.command)) > LONGEST_EXEC_STRING
    assert (await read_bytes(long_job.stdout_path)) == "".join(f"{a}\n" for a in args * 2).encode()
    if scheduler == "slurm":
        await anyio.to_thread.run_sync(assert_slurm_names, jobs)


class WrapOdd:
    """Shell lines around the odd jobs only: one queue runs the same argv bare and
    wrapped (the local backend then starts it through ``/bin/sh -c``)."""

    @hookimpl
    def on_jobcmd_prep(self, job: Job) -> str | None:
        return ":" if job.index % 2 else None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_list_command_runs_its_program_never_a_shell_builtin(
    backend_opts: tuple[str, dict[str, Any]],
    backend: str,
    base: Path,
    cleanup: list[tuple[str, list[Job]]],
) -> None:
    """A list command is an argv run as is, its program found on PATH. A wrapper script
    (SSH, Slurm, SGE) or shell lines around it ran the shell's own builtin of that name
    instead: dash's ``echo`` made a tab of the ``\\t`` and stopped at the ``\\c``, so the
    same job printed something else on each backend, and finished."""
    scheduler, opts = backend_opts
    q = Xqueue(
        scheduler,
        forks=2,
        workdir=hostile_workdir(base, backend),
        error_strategy="ignore",
        scheduler_opts=opts,
        plugins=[WrapOdd()],
    )
    jobs = [await q.feed(["echo", "a\\tb\\c", "-e"], name=f"echo {i}") for i in range(2)]
    # First in a script line, quoting leaves this bare: it was an assignment, and the
    # job ran its second word. It names a program, which does not exist.
    touch = ["XQ_SET=/bin/echo", "touch", str(base / f"{CANARY}assigned")]
    named = [await q.feed(touch, name=f"assignment {i}") for i in range(2)]
    if scheduler in ("slurm", "sge"):
        cleanup.append(("scancel" if scheduler == "slurm" else "qdel", [*jobs, *named]))
    with anyio.fail_after(110):
        await q.run_until_complete()
    assert await anyio.to_thread.run_sync(leaks, base) == [], f"{backend}: the second word ran"
    assert [job.status for job in named] == [JobStatus.FAILED] * 2, named
    for job in jobs:
        stderr = await anyio.to_thread.run_sync(read, job.stderr_path)
        assert job.status is JobStatus.FINISHED, (job, job.reason, stderr)
        assert await read_bytes(job.stdout_path) == b"a\\tb\\c -e\n", job


def read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")[-2000:]
    except OSError:
        return ""


def assert_slurm_names(jobs: list[Job]) -> None:
    """What Slurm recorded as each job's name: the safe form, never the raw name."""
    first_of_array = next(j for j in jobs if "_" in str(j.jid))
    for job in jobs:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", str(job.jid)],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        recorded = re.search(r"\bJobName=(\S*)", out)
        assert recorded, out
        raw = f"xqueue-{first_of_array.name}" if "_" in str(job.jid) else job.name
        assert recorded.group(1) == job_name(raw)
        assert re.fullmatch(SAFE_NAME, recorded.group(1))


# -- refused at feed -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cmd", "kwargs", "message"),
    [
        (["echo", "a\0b"], {}, "argument 1 of the command contains a NUL"),
        (["echo\0", "a"], {}, "argument 0 of the command contains a NUL"),
        ("echo a\0b", {}, "the command contains a NUL"),
        (["echo"], {"envs": {"A": "x\0"}}, "environment variable 'A' contains a NUL"),
        (["echo"], {"envs": {"A\0": "x"}}, r"invalid environment variable name\(s\)"),
        (["echo"], {"name": "a\0b"}, "the job name contains a NUL"),
        (["echo", "\ud800"], {}, "argument 1 of the command is not valid Unicode"),
        (["echo"], {"name": "\udcff"}, "the job name is not valid Unicode"),
        (["echo", None], {}, "argument 1 of the command is NoneType"),
        (["echo", b"x"], {}, "argument 1 of the command is bytes"),
        (["echo"], {"name": 3}, "a job name is a string, not int"),
        (["echo"], {"envs": {"A\n": "x"}}, r"invalid environment variable name\(s\)"),
        (["echo"], {"envs": {"A": None}}, "'A' must be a string .* not NoneType .*leave"),
        (["echo"], {"envs": {"A": ["x"]}}, "'A' must be a string .* not list"),
        (["echo"], {"envs": {"A": b"x"}}, "'A' must be a string .* not bytes"),
        (["echo"], {"envs": {"XQUEUE_JOB_DIR": "/x"}}, "are set by xqueue for every job"),
    ],
)
async def test_unusable_text_is_refused_at_feed(
    workdir: Path, cmd: Any, kwargs: dict[str, Any], message: str
) -> None:
    q = Xqueue(workdir=workdir)
    with pytest.raises(ConfigError, match=message):
        await q.feed(cmd, **kwargs)
    assert q.statistics().total == 0  # nothing queued, so nothing to retry


async def test_env_values_are_converted_by_the_documented_rule(workdir: Path) -> None:
    envs = {"T": True, "F": False, "I": 7, "X": 0.5, "P": Path("/a b"), "S": "s"}
    q = Xqueue(workdir=workdir)
    job = await q.feed(["sh", "-c", 'printf "%s," "$T" "$F" "$I" "$X" "$P" "$S"'], envs)
    assert job.envs == {"T": "1", "F": "0", "I": "7", "X": "0.5", "P": "/a b", "S": "s"}
    await q.run_until_complete()
    assert (await read_text(job.stdout_path)) == "1,0,7,0.5,/a b,s,"


def test_container_envs_follow_the_same_rule() -> None:
    from xqueue.schedulers.container import ContainerScheduler

    sched = ContainerScheduler(image="x", envs={"A": True, "B": 2})
    assert sched.options.envs == {"A": "1", "B": "2"}
    with pytest.raises(ConfigError, match=r"envs: .*'A' contains a NUL"):
        ContainerScheduler(image="x", envs={"A": "\0"})
    with pytest.raises(ConfigError, match=r"envs: invalid environment variable name"):
        ContainerScheduler(image="x", envs={"A=B": "x"})


# -- the script writers, run here ---------------------------------------------------------
HOSTILE_DIR = "d $(touch CANARY-d) 'q' \"dq\" `x` ; # \\\nnl"


def hostile_job(folder: Path, index: int, canary: Path) -> Job:
    args = payloads(canary)
    job = Job(
        index,
        ["printf", "%s\\n", *args],
        envs={f"E{i}": v for i, v in enumerate(args)},
        name=names(canary)[index % len(names(canary))],
    )
    job.dir = str(folder / f"{HOSTILE_DIR}{index}")
    os.makedirs(job.dir)
    return job


def sh_n(text: str) -> None:
    """``sh -n``: the script parses as a whole (no quote left open)."""
    out = subprocess.run(["sh", "-n"], input=text.encode(), capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_rendered_wrapper_runs_the_argv_verbatim(tmp_path: Path) -> None:
    canary = tmp_path / CANARY
    job = hostile_job(tmp_path, 0, canary)
    for index in range(len(names(canary))):
        job.name = names(canary)[index]
        text = render_script(job, job.dir)
        sh_n(text)
        assert "\r" not in text  # sbatch refuses a script with "\r\n", even quoted
        # Before the exports: the shebang and two comments, the name on one line of them
        # (split as Python does, at any line or paragraph separator, not only at \n).
        header = text.split("\nexport ", 1)[0].splitlines()
        assert len(header) == 3 and all(line.startswith("#") for line in header), header
        assert header[1].startswith("# xqueue job 0: ")
    Path(job.attempt_path(SCRIPT)).write_text(text)
    subprocess.run(["sh", job.attempt_path(SCRIPT)], check=True, timeout=30, cwd=tmp_path)
    args = payloads(canary)
    assert Path(job.stdout_path).read_bytes() == "".join(f"{a}\n" for a in args).encode()
    assert Path(job.attempt_path("rc")).read_text() == "0\n"
    assert leaks(tmp_path) == []


@pytest.mark.parametrize("wrap", [None, Wrap(("echo pre",), ("echo post",))])
def test_rendered_wrapper_runs_a_shell_command_too_long_for_exec(
    tmp_path: Path, wrap: Wrap | None
) -> None:
    """Over 128 KiB, ``/bin/sh -c -- COMMAND`` failed with "Argument list too long" (rc
    126) on every backend that runs this wrapper; the script now writes the command to
    a file and runs that, exit status, environment and shell lines around it as before."""
    canary = tmp_path / CANARY
    word = f"$(touch {canary})'\"\\\n"
    job = Job(0, f"printf %s {shlex.quote(word * 20_000)} | wc -c; echo $XQUEUE_JOB_INDEX; exit 3")
    assert len(job.command) > LONGEST_EXEC_STRING
    job.dir, job._wrap = str(tmp_path / HOSTILE_DIR), wrap
    os.makedirs(job.dir)
    Path(job.attempt_path(SCRIPT)).write_text(render_script(job, job.dir))
    done = subprocess.run(["sh", job.attempt_path(SCRIPT)], timeout=30, cwd=tmp_path)
    assert done.returncode == 3, Path(job.stderr_path).read_text()
    pre, post = ("pre\n", "post\n") if wrap else ("", "")
    assert Path(job.stdout_path).read_text() == f"{pre}{len(word) * 20_000}\n0\n{post}"
    assert Path(job.attempt_path("rc")).read_text() == "3\n"
    assert leaks(tmp_path) == []
    # A command file that cannot be written: the job fails saying why, and nothing ran.
    for kind in ("rc", "stdout", "stderr", "cmd"):
        os.remove(job.attempt_path(kind))
    os.mkdir(job.attempt_path("cmd"))
    done = subprocess.run(["sh", job.attempt_path(SCRIPT)], timeout=30, cwd=tmp_path)
    assert done.returncode != 0 and Path(job.attempt_path("rc")).read_text() != "0\n"
    assert Path(job.stdout_path).read_text() == pre + post
    assert "cmd" in Path(job.stderr_path).read_text()


def test_rendered_wrapper_exports_values_verbatim(tmp_path: Path) -> None:
    canary = tmp_path / CANARY
    args = payloads(canary)
    envs = {f"E{i}": v for i, v in enumerate(args)}
    words = " ".join(f'"$E{i}"' for i in range(len(args)))
    job = Job(0, ["sh", "-c", f'printf "%s\\n" {words}'], envs=envs, name=names(canary)[0])
    job.dir = str(tmp_path / HOSTILE_DIR)
    os.makedirs(job.dir)
    Path(job.attempt_path(SCRIPT)).write_text(render_script(job, job.dir))
    subprocess.run(["sh", job.attempt_path(SCRIPT)], check=True, timeout=30, cwd=tmp_path)
    assert Path(job.stdout_path).read_bytes() == "".join(f"{a}\n" for a in args).encode()
    assert leaks(tmp_path) == []


def test_array_script_runs_each_hostile_wrapper(tmp_path: Path) -> None:
    canary = tmp_path / CANARY
    jobs = [hostile_job(tmp_path, i, canary) for i in range(3)]
    for job in jobs:
        Path(job.attempt_path(SCRIPT)).write_text(render_script(job, job.dir))
    _, path = write_array(str(tmp_path / f"batch {HOSTILE_DIR}"), jobs, "TASK", 1)
    sh_n(Path(path).read_text())
    want = "".join(f"{a}\n" for a in payloads(canary)).encode()
    for i, job in enumerate(jobs):
        env = {"PATH": os.environ["PATH"], "TASK": str(i + 1)}
        subprocess.run(["sh", path], check=True, timeout=30, env=env, cwd=tmp_path)
        assert Path(job.stdout_path).read_bytes() == want
    # A task id with no job fails, whatever it holds.
    bad = {"PATH": os.environ["PATH"], "TASK": "$(touch CANARY-t)"}
    failed = subprocess.run(["sh", path], timeout=30, env=bad, capture_output=True, cwd=tmp_path)
    assert failed.returncode == 127
    assert leaks(tmp_path) == []


def test_ssh_submit_script_with_hostile_server_paths_and_cwd(tmp_path: Path) -> None:
    canary = tmp_path / CANARY
    job = hostile_job(tmp_path, 0, canary)
    Path(job.attempt_path(SCRIPT)).write_text(render_script(job, job.dir))
    cwd = tmp_path / f"cwd {HOSTILE_DIR}"
    cwd.mkdir()
    server = "srv '$(touch CANARY-s)` \"x\nnl"
    script = submit_script(server, job.dir, 1, str(cwd))
    sh_n(script)
    out = subprocess.run(
        ["sh", "-s"], input=script.encode(), capture_output=True, timeout=30, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    answer = submit_answer(out.stdout.decode())
    assert answer is not None
    pid = int(answer[0].removeprefix("pid "))
    # "<server> <pid> <start time>": the name comes back whole, newline and all.
    recorded = Path(job.attempt_path("ssh")).read_text()
    assert recorded.startswith(f"{server} {pid} ") and recorded.endswith("\n")
    assert recorded.removeprefix(f"{server} {pid} ").strip().isdigit()
    rc = Path(job.attempt_path("rc"))
    deadline = time.monotonic() + 30
    while not rc.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rc.read_text() == "0\n"
    want = "".join(f"{a}\n" for a in payloads(canary)).encode()
    assert Path(job.stdout_path).read_bytes() == want
    assert leaks(tmp_path) == []


def test_ssh_kill_script_with_hostile_job_folders(tmp_path: Path) -> None:
    for jobdir in (f"/w/{HOSTILE_DIR}", "/w/'$(touch CANARY-k)'"):
        marker = f"XQUEUE_JOB_DIR={jobdir}"
        group = subprocess.Popen(
            ["sh", "-c", "sleep 60 & wait"],
            start_new_session=True,
            env={**os.environ, "XQUEUE_JOB_DIR": jobdir},
            cwd=tmp_path,
        )
        try:
            time.sleep(0.2)
            script = kill_script(group.pid, 0.2, "1", jobdir)
            sh_n(script)
            verdict = subprocess.run(
                ["sh", "-s"], input=script.encode(), capture_output=True, timeout=30, cwd=tmp_path
            ).stdout.decode()
            # A one-line folder is an exact marker: the job's group is killed. One with a
            # newline is no marker at all (grep would read it as two): with a wrong start
            # time the group is left alone rather than matched by half a path.
            assert verdict.strip() == ("gone" if "\n" in marker else "dead")
        finally:
            if group.poll() is None:
                os.killpg(group.pid, 9)
            group.wait()
    assert leaks(tmp_path) == []


def test_backend_job_names_are_safe() -> None:
    for name in [*names(Path("/w/C")), *payloads(Path("/w/C"))]:
        safe = job_name(name)
        assert re.fullmatch(SAFE_NAME, safe), safe
    assert job_name("--x y/z:1@h") == "x_y_z_1_h"
    assert job_name("align-reads.v2") == "align-reads.v2"
    assert job_name("日本") == "_"
    assert job_name("") == job_name("-.") == "xqueue"


def test_chrun_set_env_spelling() -> None:
    # ch-run strips one pair of single quotes around a --set-env value.
    assert set_env_value("'q'") == "''q''"
    assert set_env_value("'") == "'"
    assert set_env_value("a'b'") == "a'b'"
    assert set_env_value("$(x)") == "$(x)"


@pytest.mark.parametrize(
    ("backend", "opts", "message"),
    [
        ("sge", {}, r"holds one of the variables qsub expands .*\$HOME"),
        ("container", {"bin": "ch-run", "image": "/x"}, "ch-run cannot bind the workdir"),
        ("container", {"bin": "apptainer", "image": "/x"}, "apptainer cannot bind the workdir"),
        ("container", {"bin": "podman", "image": "x"}, "podman cannot mount .*without ':'"),
    ],
)
async def test_workdirs_a_backend_cannot_spell_are_refused(
    tmp_path: Path, backend: str, opts: dict[str, Any], message: str
) -> None:
    # Refused when the queue starts, before anything is submitted (no service needed).
    q = Xqueue(backend, workdir=tmp_path / "wd:$HOME", scheduler_opts=opts)
    await q.feed(["true"])
    with pytest.raises(ConfigError, match=message):
        await q.run_until_complete()


async def test_a_workdir_with_a_comma_is_refused_by_sge_naming_it(tmp_path: Path) -> None:
    """qsub reads -o and -e as a comma-separated list: every job failed to submit with
    "two files are specified for the same host", and the path was never named."""
    q = Xqueue("sge", workdir=tmp_path / "a,b" / "wd")
    await q.feed(["true"])
    with pytest.raises(ConfigError, match=r"'.*a,b/wd' holds a comma, which qsub reads"):
        await q.run_until_complete()


# -- shell lines around the command (prescript, postscript, jobcmd hooks) -----------------------
# The fragments are shell by design, so what must hold is that each runs exactly as
# written, that none can reach the command's arguments or another fragment, and that the
# wrapper around them stays whole. They hold quotes of every kind, what would be a
# substitution outside single quotes, a heredoc, a raw carriage return (sbatch refuses
# one in a script) and lines that only close constructs nobody opened.
def pre_printed(canary: Path) -> tuple[str, str]:
    """What the prescript prints with printf and with a heredoc: would-be substitutions."""
    c = shlex.quote(f"{canary}pre")
    return f'pre $(touch {c}) `touch {c}` "dq" ;# \\', f"heredoc $(touch {c})"


def pre_fragment(canary: Path) -> str:
    printed, heredoc = pre_printed(canary)
    return (
        f"printf '%s\\n' {shlex.quote(printed)}\n"
        f"cat <<'EOF'\n{heredoc}\nEOF\n"
        "printf '%s\\n' 'raw[\r]'"
    )


POST_FRAGMENT = 'printf "%s\\n" "post rc=$XQUEUE_JOB_RC" ")" "(" "\'" \'"\' "}" "fi"'


def pre_out(canary: Path) -> bytes:
    printed, heredoc = pre_printed(canary)
    return f"{printed}\n{heredoc}\nraw[\r]\n".encode()


POST_OUT = b"post rc=0\n)\n(\n'\n\"\n}\nfi\n"


class HostileCmdHooks:
    """jobcmd hooks whose text would break a wrapper that pasted it: each is evaluated
    as one quoted word, so the `set --` cannot reach the command's arguments."""

    @hookimpl
    def on_jobcmd_init(self) -> str:
        return "set -- hijacked; shift"

    @hookimpl
    def on_jobcmd_prep(self) -> str:
        return "printf '%s\\n' 'prep )}\"'"


WRAP_BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("slurm", id="slurm", marks=pytest.mark.slurm),
    pytest.param("sge", id="sge", marks=pytest.mark.sge),
    pytest.param("ssh", id="ssh", marks=pytest.mark.ssh),
]


@pytest.mark.parametrize("backend", WRAP_BACKENDS)
async def test_hostile_strings_stay_data_inside_shell_lines(
    backend_opts: tuple[str, dict[str, Any]],
    backend: str,
    base: Path,
    cleanup: list[tuple[str, list[Job]]],
) -> None:
    workdir = hostile_workdir(base, backend)
    canary = workdir / CANARY
    args = payloads(canary)
    scheduler, opts = backend_opts
    opts = {**opts, "prescript": pre_fragment(canary), "postscript": POST_FRAGMENT}
    q = Xqueue(
        scheduler,
        forks=3,
        workdir=workdir,
        error_strategy="ignore",
        scheduler_opts=opts,
        plugins=[HostileCmdHooks()],
    )
    argv_job = await q.feed(["printf", "%s\\n", *args], name=names(canary)[0])
    command = f"printf '%s\\n' {' '.join(shlex.quote(a) for a in args)}"
    text_job = await q.feed(command)
    if scheduler in ("slurm", "sge"):
        cleanup.append(("scancel" if scheduler == "slurm" else "qdel", [argv_job, text_job]))
    with anyio.fail_after(110):
        await q.run_until_complete()
    want = b"".join([pre_out(canary), b'prep )}"\n', *(f"{a}\n".encode() for a in args), POST_OUT])
    for job in (argv_job, text_job):
        stderr = await anyio.to_thread.run_sync(read, job.stderr_path)
        assert job.status is JobStatus.FINISHED, (job, job.reason, stderr)
        assert await read_bytes(job.stdout_path) == want
    assert await anyio.to_thread.run_sync(leaks, base) == [], f"{backend}: payloads ran"


BREAKERS = [")", "}", "fi", "done", "'", '"', "`", "$(", "<<", "case", "exit 5"]


def test_wrapped_wrapper_scripts_stay_whole(tmp_path: Path) -> None:
    canary = tmp_path / CANARY
    job = hostile_job(tmp_path, 0, canary)
    job._wrap = Wrap((pre_fragment(canary), "set -- hijacked; shift"), (POST_FRAGMENT,))
    text = render_script(job, job.dir)
    sh_n(text)
    assert "\r" not in text  # spelled by printf: sbatch would refuse the script
    Path(job.attempt_path(SCRIPT)).write_text(text)
    subprocess.run(["sh", job.attempt_path(SCRIPT)], check=True, timeout=30, cwd=tmp_path)
    args = "".join(f"{a}\n" for a in payloads(canary)).encode()
    assert Path(job.stdout_path).read_bytes() == pre_out(canary) + args + POST_OUT
    assert Path(job.attempt_path("rc")).read_text() == "0\n"
    # A fragment that is not whole shell fails the job (the shell's syntax error, 2), or
    # exits with its own status; the script around it parses and records a return code.
    for i, breaker in enumerate(BREAKERS):
        job.attempt = i + 2
        job._wrap = Wrap((breaker,), ("touch " + shlex.quote(f"{canary}after"),))
        text = render_script(job, job.dir)
        sh_n(text)
        Path(job.attempt_path(SCRIPT)).write_text(text)
        subprocess.run(["sh", job.attempt_path(SCRIPT)], timeout=30, cwd=tmp_path)
        rc = Path(job.attempt_path("rc")).read_text()
        assert rc == ("5\n" if breaker == "exit 5" else "2\n"), (breaker, rc)
    assert leaks(tmp_path) == []


def test_wrapped_local_argv_keeps_the_arguments_apart(tmp_path: Path) -> None:
    canary = tmp_path / CANARY
    args = payloads(canary)
    wrap = Wrap((pre_fragment(canary), "set -- hijacked; shift"), (POST_FRAGMENT,))
    argv = wrap.argv(["printf", "%s\\n", *args])
    assert argv[:2] == ("/bin/sh", "-c") and argv[4:] == ("printf", "%s\\n", *args)
    out = subprocess.run(argv, capture_output=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == pre_out(canary) + "".join(f"{a}\n" for a in args).encode() + POST_OUT
    for breaker in BREAKERS:
        argv = Wrap((breaker,), (f"touch {shlex.quote(f'{canary}after')}",)).argv(["true"])
        done = subprocess.run(argv, capture_output=True, timeout=30, cwd=tmp_path)
        assert done.returncode == (5 if breaker == "exit 5" else 2), (breaker, done)
    assert leaks(tmp_path) == []
