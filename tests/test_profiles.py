"""Named profiles from real xqueue.toml files: the project's in the current directory and
the user's under $XDG_CONFIG_HOME, with their precedence and their error messages."""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import SLURM_FAST, remove_after
from xqueue import Job, JobStatus, Resources, Xqueue
from xqueue.errors import ConfigError, SchedulerOptionError
from xqueue.scheduler import Scheduler
from xqueue.schedulers.local import LocalScheduler
from xqueue.schedulers.slurm import sbatch_options

pytestmark = pytest.mark.anyio


@dataclass
class Config:
    """The two config files of a test, in tmp dirs: the current directory is the project."""

    project: Path
    user: Path
    root: Path

    def write(self, path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return Config(project / "xqueue.toml", tmp_path / "xdg" / "xqueue" / "xqueue.toml", tmp_path)


def slurm_flags(q: Xqueue) -> dict[str, object]:
    """The sbatch long options the queue's Slurm scheduler would submit with."""
    return sbatch_options(None, q.scheduler.options.extra)


def make(
    config: Config, scheduler: str | type[Scheduler] | Scheduler = "slurm", **kw: Any
) -> Xqueue:
    return Xqueue(scheduler, workdir=config.root / "wd", **kw)


def test_default_profile_applies_when_none_is_named(config: Config) -> None:
    config.write(
        config.project,
        """
        [profiles.local.default]
        kill_grace = 1.5
        [profiles.local.other]
        kill_grace = 9
        """,
    )
    assert make(config, "local").scheduler.options.kill_grace == 1.5
    assert make(config, "local", profile="default").scheduler.options.kill_grace == 1.5
    # profiles are per scheduler: Slurm has none here and keeps its own defaults
    assert make(config).scheduler.options.kill_grace == 5.0


def test_profile_over_default_and_explicit_options_over_both(config: Config) -> None:
    config.write(
        config.project,
        """
        [profiles.slurm.default]
        partition = "debug"
        time = "00:05:00"
        mem = "1G"
        poll_interval = 0.5
        [profiles.slurm.gpu]
        time = "00:10:00"
        gres = "gpu:1"
        exclusive = true
        poll_interval = 0.25
        """,
    )
    q = make(config, profile="gpu", scheduler_opts={"mem": "2G", "poll_interval": "0.1"})
    assert slurm_flags(q) == {
        "partition": "debug",  # from default
        "time": "00:10:00",  # the profile over default
        "mem": "2G",  # explicit over default
        "gres": "gpu:1",
        "exclusive": True,  # a TOML boolean is a bare flag
    }
    assert q.scheduler.options.poll_interval == 0.1  # xqueue's own knobs layer the same way
    assert make(config, profile="gpu").scheduler.options.poll_interval == 0.25
    assert slurm_flags(make(config))["time"] == "00:05:00"


def test_a_later_layer_wins_under_another_spelling_of_the_option(config: Config) -> None:
    # Slurm reads ``t`` as ``time``: the layer that comes last must win whatever it writes.
    config.write(
        config.project,
        """
        [profiles.slurm.default]
        time = "00:01:00"
        [profiles.slurm.short]
        t = "00:02:00"
        """,
    )
    assert slurm_flags(make(config, profile="short"))["time"] == "00:02:00"
    q = make(config, profile="short", scheduler_opts={"time": "00:03:00"})
    assert slurm_flags(q)["time"] == "00:03:00"


def test_project_profile_replaces_the_users_whole(config: Config) -> None:
    config.write(
        config.user,
        """
        [profiles.slurm.gpu]
        partition = "a"
        time = "00:01:00"
        [profiles.slurm.cpu]
        partition = "c"
        """,
    )
    config.write(config.project, '[profiles.slurm.gpu]\npartition = "b"\n')
    assert slurm_flags(make(config, profile="gpu")) == {"partition": "b"}  # no user `time`
    assert slurm_flags(make(config, profile="cpu")) == {"partition": "c"}


def test_user_file_defaults_to_dot_config_in_home(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = config.root / "home"
    config.write(home / ".config" / "xqueue" / "xqueue.toml", '[profiles.slurm.p]\nqos = "x"\n')
    monkeypatch.setenv("HOME", str(home))
    for xdg in (None, "", "relative/path"):  # the XDG spec: unset, empty or relative is ignored
        if xdg is None:
            monkeypatch.delenv("XDG_CONFIG_HOME")
        else:
            monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
        assert slurm_flags(make(config, profile="p")) == {"qos": "x"}


def test_unknown_profile_lists_the_known_ones_and_their_files(config: Config) -> None:
    config.write(config.user, '[profiles.slurm.cpu]\npartition = "c"\n')
    config.write(config.project, '[profiles.slurm.gpu]\npartition = "g"\n')
    with pytest.raises(ConfigError) as info:
        make(config, profile="gpux")
    assert str(info.value) == (
        f"unknown profile 'gpux' for scheduler 'slurm' (did you mean 'gpu'?); known profiles: "
        f"cpu ({config.user}), gpu ({config.project})"
    )
    with pytest.raises(ConfigError, match=r"no profiles for scheduler 'local' in .*project"):
        make(config, "local", profile="gpu")


def test_a_table_naming_no_scheduler_is_warned_of_once_with_the_closest_name(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    """``[profiles.slrum.default]`` was ignored without a word: Slurm ran without it."""
    config.write(config.project, '[profiles.slrum.default]\npartition = "g"\n')
    with caplog.at_level(logging.WARNING, logger="xqueue"):
        make(config)
        make(config, "local")
    warned = [r.getMessage() for r in caplog.records if "names no installed" in r.getMessage()]
    assert warned == [
        f"{config.project}: profiles.slrum names no installed scheduler (did you mean "
        "'slurm'?); its profiles are not used"
    ]
    caplog.clear()
    config.write(config.project, '[profiles."\\u001b]0;owned\\u0007"]\nx = {}\n')
    with caplog.at_level(logging.WARNING, logger="xqueue"):
        make(config)
    (line,) = [r.getMessage() for r in caplog.records if "names no installed" in r.getMessage()]
    assert "\x1b" not in line and "\\x1b]0;owned\\x07" in line


def test_unknown_profile_without_a_config_file_says_where_it_looked(config: Config) -> None:
    with pytest.raises(ConfigError) as info:
        make(config, profile="gpu")
    assert str(info.value) == (
        f"unknown profile 'gpu': no config file found ({config.project} or {config.user})"
    )
    make(config)  # no file and no profile named: nothing to complain about


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[profiles.local.fast\n", "invalid TOML: Expected ']' at the end of a table declaration"),
        ("[profiles.local]\nfast = 3\n", "profiles.local.fast must be a profile"),
        ("profiles = 1\n", "profiles must be a table"),
        ("[profiles]\nlocal = 'x'\n", "profiles.local must be a table of profiles"),
        ("[profile.local.fast]\n", "unknown key profile; this file holds only"),
        (
            "[profiles.local.fast]\ncwdd = '/'\n",
            "profiles.local.fast.cwdd: scheduler 'local' does not accept option 'cwdd' "
            "(did you mean 'cwd'?); "
            "accepted: cpus, cwd, gpu_env, gpus, kill_grace,",
        ),
        (
            "[profiles.local.fast]\npoll_interval = 'soon'\n",
            "profiles.local.fast.poll_interval: scheduler 'local': option 'poll_interval' "
            "expects seconds (a number, or with a unit: 500ms, 90s, 5m, 2h, or [D-]HH:MM:SS), "
            "got 'soon'",
        ),
        (
            '[profiles.local."my fast"]\nbad = 1\n',
            "profiles.local.\"my fast\".bad: scheduler 'local' does not accept option 'bad'",
        ),
        (
            "[profiles.local.fast.resources]\nmemory = 'lots'\n",
            "profiles.local.fast.resources: invalid memory 'lots'",
        ),
        ("[profiles.local.fast]\nresources = 3\n", "profiles.local.fast.resources must be a table"),
    ],
)
def test_malformed_file_is_one_line_naming_the_file_and_key(
    config: Config, text: str, expected: str
) -> None:
    # A broken profile fails the run even when it is not the one named: a typo shows at once.
    config.write(config.project, text)
    with pytest.raises(ConfigError) as info:
        make(config, "local")
    message = str(info.value)
    assert message.startswith(f"{config.project}: ")
    assert expected in message
    assert "\n" not in message


def test_malformed_user_file_names_it(config: Config) -> None:
    config.write(config.project, "[profiles.local.default]\n")
    config.write(config.user, "[profiles.local.x]\nkill_grace = [1]\n")
    with pytest.raises(SchedulerOptionError, match=f"^{config.user}: profiles.local.x.kill_grace"):
        make(config, "local")


def test_checks_across_options_name_the_profiles_used(config: Config) -> None:
    config.write(config.project, "[profiles.local.there]\ncwd = '/no/such/dir'\n")
    make(config, "local")  # cwd is checked only for the options a run ends up with
    with pytest.raises(SchedulerOptionError) as info:
        make(config, "local", profile="there")
    assert str(info.value) == (
        "local: cwd '/no/such/dir' is not a directory "
        f"(with options from {config.project}: profiles.local.there)"
    )
    q = make(config, "local", profile="there", scheduler_opts={"cwd": str(config.root)})
    assert isinstance(q.scheduler, LocalScheduler) and q.scheduler.options.cwd == str(
        config.root
    )  # explicit wins before any check


def test_config_file_another_user_could_write_is_refused(config: Config) -> None:
    path = config.write(config.project, "[profiles.local.default]\n")
    path.chmod(0o666)
    with pytest.raises(ConfigError, match="every user can write to it"):
        make(config, "local")
    path.chmod(0o644)
    make(config, "local")
    if os.geteuid() == 0:  # only root can give a file away
        os.chown(path, 65534, 65534)
        with pytest.raises(ConfigError, match=f"^{path}: not read, it belongs to uid 65534"):
            make(config, "local")


def test_unreadable_config_file(config: Config) -> None:
    config.project.mkdir()
    with pytest.raises(ConfigError, match=f"^cannot read {config.project}: Is a directory$"):
        make(config, "local")


def test_profile_with_a_scheduler_class_or_instance(config: Config) -> None:
    config.write(config.project, "[profiles.local.p]\nkill_grace = 2\n")
    assert make(config, LocalScheduler, profile="p").scheduler.options.kill_grace == 2
    with pytest.raises(ConfigError, match="profile cannot be combined with a scheduler instance"):
        make(config, LocalScheduler(), profile="p")
    # an instance has its options already: the default profile does not reach it
    config.write(config.project, "[profiles.local.default]\nkill_grace = 2\n")
    assert make(config, LocalScheduler()).scheduler.options.kill_grace == 5.0


async def test_profile_resources_are_each_jobs_defaults(config: Config) -> None:
    await anyio.to_thread.run_sync(
        config.write,
        config.project,
        """
        [profiles.local.default.resources]
        walltime = "1h"
        memory = "1G"
        [profiles.local.big]  # room for its jobs, whatever this machine has
        cpus = 8
        gpus = 2
        [profiles.local.big.resources]
        cpus = 4
        memory = "2G"
        """,
    )
    q = make(config, "local", profile="big")
    plain = await q.feed(["true"])
    own = await q.feed(["true"], resources={"cpus": 2, "gpus": 1})
    await q.aclose()
    assert plain.resources == Resources(cpus=4, memory_mb=2048, walltime_s=3600)
    assert own.resources == Resources(cpus=2, memory_mb=2048, gpus=1, walltime_s=3600)
    q = make(config, "local")
    assert (await q.feed(["true"])).resources == Resources(memory_mb=1024, walltime_s=3600)
    await q.aclose()


@pytest.fixture
def cancel_after() -> Iterator[list[Job]]:
    yield from remove_after("scancel")


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
async def test_profile_options_reach_sbatch(config: Config, cancel_after: list[Job]) -> None:
    await anyio.to_thread.run_sync(
        config.write,
        config.project,
        """
        [profiles.slurm.default]
        time = "00:03:00"
        job-name = "xq-profile-default"
        [profiles.slurm.short]
        partition = "debug"
        time = "00:07:00"
        [profiles.slurm.short.resources]
        cpus = 2
        """,
    )
    q = make(config, profile="short", scheduler_opts=dict(SLURM_FAST))
    job = await q.feed(["true"])
    cancel_after.append(job)
    with anyio.fail_after(60):
        await q.run_until_complete()
    assert job.status is JobStatus.FINISHED and job.jid
    result = await anyio.run_process(["scontrol", "show", "job", "-o", job.jid], check=False)
    fields = dict(w.partition("=")[::2] for w in result.stdout.decode().split() if "=" in w)
    assert fields["Partition"] == "debug"
    assert fields["TimeLimit"] == "00:07:00"  # the profile over default
    assert fields["JobName"] == "xq-profile-default"
    assert fields["NumCPUs"] == "2"
