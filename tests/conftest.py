"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.blocking import no_blocking  # noqa: F401 - autouse: no blocking call in a loop
from tests.helpers import ROOTFS, container_engine

# Tests must not pick up hook plugins installed in the environment.
os.environ["XQUEUE_DISABLE_PLUGIN_AUTOLOAD"] = "1"
# Nor profiles from the user's config file (xqueue/profiles.py): a user's default
# profile would change every queue the tests make. This folder does not exist.
os.environ["XDG_CONFIG_HOME"] = str(Path(__file__).parent / "no-user-config")

pytestmark = pytest.mark.anyio

# The signal tests expect what a terminal gives a program. Started from a script in the
# background (`nox &`, no job control) the suite inherits SIGINT ignored, under `nohup`
# SIGHUP ignored, and so would every controller it starts; a run rightly leaves an
# ignored signal ignored (tested on its own), so put the defaults back first.
signal.signal(signal.SIGINT, signal.default_int_handler)
for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, signal.SIG_DFL)


# -- parallel runs: pytest-xdist, `-n N --dist loadgroup` (noxfile.py) ----------------------
# Most tests wait (a cluster's poll, a sleeping job, an ssh round trip), so CI spreads them
# over worker processes. The tests of one real service run one after another on a single
# worker, because they share it in ways that interfere: the outage tests stop slurmctld or
# sge_qmaster; the 200-job tests fill the Slurm node and SGE's slots, and the limit tests
# time jobs that would otherwise queue behind others'; test_ssh.py restarts the sshd on
# port 2223 and fills its sessions. Tests of no service spread freely (each has its own
# tmp_path). The Batch stand-in is a session fixture: grouping its tests starts it once
# per run instead of once per worker (the PanDA plugin's conftest does so for its own).
# The harnesses that SIGKILL controllers at many points or signal them through a pty
# each spawn process after process and bound how long a stop may take: one at a time,
# they keep the CPU load of a run near what those bounds were measured under.
# Grouping cannot help a test whose time bound the other workers' load stretches (the
# controller outages, a few SSH and Slurm tests): those are marked ``serial``, and nox
# runs them first, one at a time, before the workers start.
SERVICE_MARKS = ("slurm", "sge", "ssh", "htcondor", "docker", "podman", "apptainer")
STANDIN_FIXTURES = {"gcloud": "gcloud"}
HARNESS_MODULES = ("test_exactly_once.py", "test_shutdown.py", "test_signals.py", "test_resume.py")


def xdist_group_of(item: pytest.Item) -> str | None:
    """The one group an item runs in, None for no group; a test of two services fails."""
    services = [m for m in SERVICE_MARKS if item.get_closest_marker(m)]
    if len(services) > 1:  # one worker cannot hold two exclusive groups: say so, loudly
        raise pytest.UsageError(f"{item.nodeid} is marked with two services {services}")
    if services:
        return services[0]
    fixtures = getattr(item, "fixturenames", ())
    standin = next((g for f, g in STANDIN_FIXTURES.items() if f in fixtures), None)
    if standin is None and item.path.name in HARNESS_MODULES:
        return "harness"
    return standin


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return  # the marker is xdist's (and --strict-markers would refuse it without)
    for item in items:
        group = xdist_group_of(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "wd"


def zombie_children() -> list[int]:
    """Exited children of this process that nobody reaped."""
    me, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and fields[1].decode() == me:
            found.append(int(entry))
    return found


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    """A run takes SIGINT, SIGTERM and SIGHUP for itself; it must give them all back."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {sig: signal.getsignal(sig) for sig in sigs}
    yield
    changed = {sig.name for sig in sigs if signal.getsignal(sig) is not before[sig]}
    assert not changed, f"the test left signal handlers changed: {sorted(changed)}"


@pytest.fixture(autouse=True)
def _no_unreaped_jobs() -> Iterator[None]:
    """Every run must reap what it spawns: a zombie left behind means a job was forgotten."""
    before = set(zombie_children())
    yield
    left = set(zombie_children()) - before
    assert not left, f"the test left unreaped child processes {sorted(left)}"


# -- real services -------------------------------------------------------------------------
# ci/services.sh starts them. Where it could not run (no root, no apt) the tests that need
# them skip with the reason; where it did (CI sets XQUEUE_REQUIRE_SERVICES=1), a service
# that is down fails the test instead, so a broken setup can never pass as a skip.

import shutil  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402


def _service_missing(reason: str) -> None:
    if os.environ.get("XQUEUE_REQUIRE_SERVICES"):
        pytest.fail(f"required service is not available: {reason}")
    pytest.skip(f"{reason} (run `bash ci/services.sh` as root to start it)")


def _ok(*argv: str) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The single-node Slurm of ci/slurm.sh; returns the node's state."""
    state = _ok("sinfo", "-h", "-o", "%T")
    if not state or not state.strip():
        _service_missing("no Slurm controller answers sinfo")
    return (state or "").strip()


@pytest.fixture(scope="session")
def sge_cluster() -> None:
    if _ok("qstat", "-f") is None:
        _service_missing("no SGE qmaster answers qstat")


@pytest.fixture(scope="session")
def chrun() -> str:
    """charliecloud's ch-run, from ci/charliecloud.sh (it needs $USER even for --version)."""
    user = os.environ.get("USER") or ("root" if os.getuid() == 0 else str(os.getuid()))
    if _ok("env", f"USER={user}", "ch-run", "--version") is None:
        _service_missing("ch-run (charliecloud-runtime) is not installed or does not run")
    return str(shutil.which("ch-run"))


@pytest.fixture(scope="session")
def ssh_env() -> dict[str, str]:
    """Host, ports, user, key and known_hosts of the two sshd instances of ci/ssh.sh."""
    path = "/tmp/xqueue-sshd/env"
    if not os.path.exists(path):
        _service_missing(f"no sshd environment file at {path}")
    env: dict[str, str] = {}
    with open(path) as fh:
        for line in fh:
            key, sep, value = line.strip().partition("=")
            if sep:
                env[key.removeprefix("export ").strip()] = value.strip().strip("'\"")
    return env


def _socket(path: str, what: str) -> str:
    if not os.path.exists(path):
        _service_missing(f"no {what} API socket at {path}")
    return f"unix://{path}"


@pytest.fixture(scope="session")
def podman_socket() -> str:
    return _socket("/run/podman/podman.sock", "podman")


@pytest.fixture(scope="session")
def docker_socket() -> str:
    return _socket("/run/docker.sock", "dockerd")


@pytest.fixture(scope="session")
def rootfs() -> Path:
    """The busybox root filesystem tarball of ci/images.sh."""
    if not ROOTFS.is_file():
        _service_missing(f"no image tarball at {ROOTFS}")
    return ROOTFS


@pytest.fixture(
    params=[
        pytest.param("docker", marks=pytest.mark.docker),
        pytest.param("podman", marks=pytest.mark.podman),
    ]
)
def engine(request: pytest.FixtureRequest) -> dict[str, str]:
    """Each API engine in turn: bin, url and the test image (``container_engine``)."""
    return container_engine(request, str(request.param))


@pytest.fixture(scope="session")
def chrun_image(
    chrun: str, rootfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The busybox tarball unpacked for charliecloud's ch-run (from ci/charliecloud.sh)."""
    image = tmp_path_factory.mktemp("chrun") / "busybox"
    image.mkdir()
    with tarfile.open(rootfs) as tar:
        tar.extractall(image, filter="fully_trusted")
    yield str(image)


# -- HTCondor and apptainer (ci/htcondor.sh, ci/apptainer.sh) --------------------------------
# Both run inside a Debian trixie chroot; only the shared folder is seen at the same path
# inside and outside, so these tests' workdirs live under it (``shared_workdir``).
CONDOR_ENV = "/var/tmp/xqueue-condor/env"


def _condor_env() -> dict[str, str]:
    env: dict[str, str] = {}
    if os.path.exists(CONDOR_ENV):
        with open(CONDOR_ENV) as fh:
            env = dict(ln.strip().split("=", 1) for ln in fh if "=" in ln)
    return env


@pytest.fixture(scope="session")
def htcondor_pool() -> dict[str, object]:
    """The personal pool of ci/htcondor.sh: scheduler_opts that reach it from this host.

    The bindings read no host configuration (``CONDOR_CONFIG=/dev/null``) and claim to be
    the pool's job user (CLAIMTOBE): HTCondor refuses jobs owned by root.
    """
    env = _condor_env()
    if not env:
        _service_missing(f"no HTCondor pool environment file at {CONDOR_ENV}")
    os.environ.setdefault("CONDOR_CONFIG", "/dev/null")
    config = {
        "SEC_CLIENT_AUTHENTICATION_METHODS": "CLAIMTOBE",
        "SEC_CLAIMTOBE_USER": env["XQ_CONDOR_USER"],
    }
    opts: dict[str, object] = {"collector": env["XQ_CONDOR_COLLECTOR"], "config": config}
    try:
        import htcondor2

        for key, value in config.items():
            htcondor2.param[key] = value
        coll = htcondor2.Collector(env["XQ_CONDOR_COLLECTOR"])
        kinds = {str(ad.get("MyType")) for ad in coll.query(projection=["MyType"])}
    except Exception as exc:  # ImportError, or HTCondorException: nobody answers
        kinds = set()
        why = str(exc)
    else:
        why = f"ads: {sorted(kinds)}"
    if not {"Scheduler", "Machine"} <= kinds:
        _service_missing(f"the HTCondor pool at {env['XQ_CONDOR_COLLECTOR']} is not up ({why})")
    return opts


def _shared_folder() -> Path:
    return Path(_condor_env().get("XQ_CONDOR_SHARED", "/var/tmp/xqueue-condor-shared"))


@pytest.fixture
def shared_workdir() -> Iterator[Path]:
    """A workdir under the folder ci/htcondor.sh shares with its chroot (same path inside).

    The folder's default ACL lets the pool's job user write into whatever is made below
    it; ``os.mkdir`` keeps that (``mkdtemp``'s 0700 would mask it out).
    """
    shared = _shared_folder()
    if not shared.is_dir():
        _service_missing(f"no shared folder {shared} (ci/htcondor.sh makes it)")
    import secrets

    base = shared / f"test-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(base)
    yield base / "wd"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def apptainer() -> dict[str, str]:
    """bin and image for the container scheduler's apptainer engine (ci/apptainer.sh).

    ``bin`` is the host command that runs apptainer inside the chroot (see there)."""
    binary = os.environ.get("XQ_APPTAINER_BIN", "/usr/local/lib/xqueue-ci/bin/apptainer")
    image = str(ROOTFS.parent / "busybox.sif")
    if _ok(binary, "--version") is None:
        _service_missing(f"apptainer does not run through {binary}")
    if not os.path.isfile(image):
        _service_missing(f"no apptainer image at {image}")
    return {"bin": binary, "image": image}
