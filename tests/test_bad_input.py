"""Every bad input fails early with a message that names the problem."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers import plugin_distribution, read_text
from xqueue import (
    ConfigError,
    FailureClass,
    Job,
    JobFailedError,
    JobStatus,
    Resources,
    SchedulerError,
    SchedulerOptionError,
    UnknownSchedulerError,
    WorkdirError,
    Xqueue,
    hookimpl,
)
from xqueue.schedulers.local import LocalScheduler

pytestmark = pytest.mark.anyio


class _Twice:
    @hookimpl
    def on_job_failed(self, job: Job) -> None: ...


_TWICE = _Twice()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"scheduler": "slurmm"},
            UnknownSchedulerError,
            r"unknown scheduler 'slurmm' \(did you mean 'slurm'\?\); available schedulers: "
            r".*local.*slurm",
        ),
        ({"forks": 0}, ConfigError, "forks must be >= 1, got 0"),
        # Each was an AttributeError or TypeError from deep inside, a letter-by-letter
        # plugin name, or a truthy string taken for True.
        ({"scheduler_opts": "x"}, ConfigError, "scheduler_opts is a dict of option names"),
        # a key that is no name: a bare TypeError ("keywords must be strings") from deep inside
        ({"scheduler_opts": {1: 2}}, ConfigError, "scheduler_opts is a dict of option names"),
        ({"workdir": 123}, ConfigError, r"workdir is a folder \(a str or a path\), not 123"),
        ({"workdir": None}, ConfigError, r"workdir is a folder \(a str or a path\), not None"),
        ({"plugins": "abc"}, ConfigError, r"not a string: plugins=\['abc'\]"),
        ({"plugins": [object()]}, ConfigError, "implements no xqueue hook"),
        # pluggy's assert (gone under python -O), a bare TypeError, and pluggy's words
        # with a name made up here ("P-2")
        ({"plugins": [None]}, ConfigError, r"plugins lists None: \[None\]"),
        ({"plugins": 5}, ConfigError, "plugins is a list of plugins, not 5"),
        (
            {"plugins": [_TWICE, _TWICE]},
            ConfigError,
            "plugin '_Twice' is registered already, as '_Twice': give each plugin once",
        ),
        ({"events": "no"}, ConfigError, "events must be True or False, got 'no'"),
        ({"handle_signals": "no"}, ConfigError, "handle_signals must be True or False"),
        ({"trust_workdir": "x"}, ConfigError, "trust_workdir must be True or False, got 'x'"),
        ({"forks": "4"}, ConfigError, "forks must be an integer, got '4'"),
        ({"num_retries": -1}, ConfigError, "num_retries must be >= 0"),
        (
            {"error_strategy": "stop"},
            ConfigError,
            "invalid error_strategy 'stop'; choose one of 'halt', 'retry', 'ignore'",
        ),
        (
            {"error_strategy": "hlat"},
            ConfigError,
            r"invalid error_strategy 'hlat' \(did you mean 'halt'\?\); choose one of",
        ),
        (  # the type is what is wrong: no suggestion that echoes the value
            {"error_strategy": ["halt"]},
            ConfigError,
            r"invalid error_strategy \['halt'\]; choose one of",
        ),
        (  # case does not count
            {"scheduler": "SLURM"},
            UnknownSchedulerError,
            r"unknown scheduler 'SLURM' \(did you mean 'slurm'\?\)",
        ),
        (
            {"scheduler_opts": {"partition": "x"}},
            SchedulerOptionError,
            "scheduler 'local' does not accept option 'partition'; accepted: .*cwd",
        ),
        (
            {"scheduler_opts": {"kill_grace": "soon"}},
            SchedulerOptionError,
            r"option 'kill_grace' expects seconds \(a number, or with a unit: 500ms, 90s, 5m, "
            r"2h, or \[D-\]HH:MM:SS\), got 'soon'",
        ),
        (
            {"scheduler_opts": {"cwd": "/no/such/dir"}},
            SchedulerOptionError,
            "cwd '/no/such/dir' is not a directory",
        ),
        (  # a list (a TOML profile's) for a text option: str() of it named no directory
            {"scheduler_opts": {"cwd": ["/", "/tmp"]}},
            SchedulerOptionError,
            r"option 'cwd' expects str, got \['/', '/tmp'\]",
        ),
        (
            {"scheduler": 42},
            ConfigError,
            "scheduler must be a name, a Scheduler subclass or instance",
        ),
    ],
)
def test_bad_queue_arguments(
    workdir: Path, kwargs: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        Xqueue(**{"workdir": workdir, **kwargs})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1.5", 1.5),
        ("90s", 90.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("500ms", 0.5),
        (" 1 D ", 86400.0),
        ("1e3s", 1000.0),
        ("2.5E-1", 0.25),
        ("01:30", 90.0),
        ("01:30:00", 5400.0),
        ("1-12", 129600.0),
        ("1-12:30", 131400.0),
        ("1-02:03:04", 93784.0),
    ],
)
def test_a_duration_option_given_as_text_may_carry_a_unit(text: str, seconds: float) -> None:
    """``-o timeout=1m`` was refused ("expects float"): every float option is a duration,
    read as a job's walltime is (``timeout=01:30:00`` and ``1e3s`` were refused)."""
    opts = LocalScheduler(timeout=text, kill_grace=text, poll_interval=text).options
    assert (opts.timeout, opts.kill_grace, opts.poll_interval) == (seconds, seconds, seconds)
    walltime = Resources.from_value({"walltime": text}).walltime_s if seconds >= 1 else None
    assert walltime in (None, int(seconds))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1500ms", 1),
        ("1e3", 1000),
        ("1-12", 129600),
        ("1-12:30", 131400),
        ("1-00:30", 88200),
        ("1-2h", 93600),
        ("12:30", 750),
    ],
)
def test_a_walltime_reads_every_duration_form(text: str, seconds: int) -> None:
    """After days, hours come first (Slurm's D-HH[:MM[:SS]]): ``1-12:30`` was 1 day and
    12.5 minutes, and ``1-12`` a day and 12 seconds."""
    assert Resources.from_value({"walltime": text}).walltime_s == seconds


@pytest.mark.parametrize(
    "value", ["1x", "m", "5 m s", "1h30m", "", 10**400, "1:2:3:4", "1-", "1:60", "1-1:60", "1:²"]
)
def test_a_duration_that_is_not_one_is_refused(value: object) -> None:
    # 10**400 (a TOML integer): float() of it raised a bare OverflowError, a traceback.
    with pytest.raises(SchedulerOptionError, match=r"option 'timeout' expects seconds \(a number"):
        LocalScheduler(timeout=value)


async def test_a_timeout_with_a_unit_limits_each_job(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, scheduler_opts={"timeout": "1s"}, error_strategy="ignore")
    job = await q.feed(["sleep", "30"])
    with anyio.fail_after(20):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED and job.failure is FailureClass.TIMEOUT, job.reason


def test_a_plugin_scheduler_not_installed_names_its_distribution() -> None:
    # PanDA is a plugin distribution (plugins/xqueue-panda); without it, the name alone
    # must tell the user what to install, not only that it is unknown.
    message = str(UnknownSchedulerError("panda", ["local", "slurm"]))
    assert "unknown scheduler 'panda'; available schedulers: local, slurm" in message
    assert "pip install ./plugins/xqueue-panda" in message


def with_plugin_distribution(tmp_path: Path, name: str, scheduler: str, module: str) -> str:
    """A folder to put on sys.path holding a real distribution: a dist-info that
    registers ``scheduler`` to a module whose source is ``module``."""
    plugin_distribution(tmp_path, name, "xqueue.schedulers", f"{scheduler} = xq_mod:Plugin", module)
    return str(tmp_path)


def run_python(script: str, path: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=path,  # a queue's default workdir goes there
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_plugin_whose_import_fails_says_to_reinstall_it(tmp_path: Path) -> None:
    # A real distribution on sys.path whose entry point's module needs a missing package:
    # the fix is to reinstall that distribution, not an xqueue extra of the same name.
    path = with_plugin_distribution(
        tmp_path, "xq-broken", "broken", "import xq_no_such_client_library\n"
    )
    script = (
        "from xqueue import Xqueue\n"
        "try:\n"
        "    Xqueue(scheduler='broken')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = run_python(script, path)
    assert out.startswith("ConfigError scheduler 'broken' needs a package that is not installed")
    assert "(xq_no_such_client_library); reinstall xq-broken" in out
    assert "extra" not in out and "xqueue[" not in out


def test_the_built_in_schedulers_are_those_the_pyproject_registers() -> None:
    # registry.BUILT_IN resolves them without reading every distribution's entry points;
    # the two lists must not drift apart (the wheel's metadata is the pyproject's).
    from importlib.metadata import distribution

    from xqueue import registry

    registered = {
        ep.name: ep.value
        for ep in distribution("xqueue").entry_points
        if ep.group == registry.ENTRY_POINT_GROUP
    }
    assert registered == registry.BUILT_IN
    for name in registry.BUILT_IN:  # each also resolves through its entry point
        assert registry._entry_points()[name].load() is registry.scheduler_class(name)


def test_a_plugin_cannot_take_a_built_in_name(tmp_path: Path) -> None:
    path = with_plugin_distribution(
        tmp_path, "xq-hijack", "local", "raise SystemExit('the plugin was imported')\n"
    )
    script = "from xqueue import Xqueue\nprint(type(Xqueue(scheduler='local').scheduler).__name__)"
    assert run_python(script, path) == "LocalScheduler\n"


@pytest.mark.parametrize(("backend", "option"), [("slurm", "sbatch"), ("sge", "qstat")])
async def test_a_missing_client_command_is_refused_when_the_run_opens(
    tmp_path: Path, backend: str, option: str
) -> None:
    """Reported once, naming the command and the option for its path, before anything is
    submitted; it used to fail every job, one by one, with "not found"."""
    missing = str(tmp_path / "bin" / option)
    q = Xqueue(backend, workdir=tmp_path / "wd", scheduler_opts={option: missing})
    job = await q.feed(["true"])
    message = f"{backend}: '{missing}' not found (no executable of that name on PATH)"
    with pytest.raises(SchedulerError, match=re.escape(message)):
        await q.run_until_complete()
    assert job.status is JobStatus.KILLED and job.attempt == 0  # never submitted


def test_workdir_not_writable(tmp_path: Path) -> None:
    why = r"is not writable .*use a folder you can write to \(workdir= in Python, -w on"
    with pytest.raises(WorkdirError, match=why):
        Xqueue(workdir="/sys/xqueue-wd")  # no one may make a folder there, root included


def test_a_workdir_that_is_not_a_folder_is_named_for_what_it_is(tmp_path: Path) -> None:
    """A file or a dangling link where the workdir (or a folder above it) would be was
    "not writable (File exists)"; an empty path was the current folder."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    cases = [
        ("a-file", "'{t}/a-file' is a file, not a folder; use another workdir"),
        ("a-file/wd", "'{t}/a-file' (on the way to workdir '{t}/a-file/wd') is a file, not"),
        ("dangling", "'{t}/dangling' is a symbolic link to nothing; use another workdir"),
        ("dangling/wd", "'{t}/dangling' (on the way to workdir '{t}/dangling/wd') is a symbolic"),
    ]
    for workdir, message in cases:
        with pytest.raises(WorkdirError) as caught:
            Xqueue(workdir=tmp_path / workdir)
        assert message.format(t=tmp_path) in str(caught.value)
    with pytest.raises(WorkdirError, match="the workdir is an empty path; give a folder"):
        Xqueue(workdir="")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    ("cmd", "kwargs", "message"),
    [
        ([], {}, "empty command"),
        ("  ", {}, "empty command"),
        ([""], {}, "empty command"),
        (b"ls", {}, "a command is a string or a list of arguments, not bytes"),
        (
            ["true"],
            {"envs": {"BAD-NAME": "1"}},
            r"invalid environment variable name\(s\) \['BAD-NAME'\]",
        ),
        # walked through as names: "invalid environment variable name(s) ['=', '1']"
        (["true"], {"envs": "A=1"}, "envs is a dict of variable names to values, not 'A=1'"),
        (["true"], {"envs": [("A", "1")]}, r"envs is a dict .*, not \[\('A', '1'\)\]"),
        (["true"], {"envs": ""}, "envs is a dict of variable names to values, not ''"),
        (["true"], {"envs": []}, r"envs is a dict of variable names to values, not \[\]"),
        (["true"], {"resources": {"memory": "lots"}}, "invalid memory 'lots'"),
        (["true"], {"resources": {"walltime": "1:xx"}}, "invalid walltime '1:xx'"),
        # 0.5 s is 0 whole seconds: it was refused as not "positive"
        (["true"], {"resources": {"walltime": 0.5}}, "walltime must be at least 1 second"),
        (
            ["true"],
            {"resources": {"walltime": "-1-00:00"}},
            r"'-1-00:00': use a number, .* or \[D-\]HH:MM:SS",
        ),
        # int(inf) raised OverflowError (nan ValueError): a traceback, from a TOML `inf`
        (["true"], {"resources": {"walltime": float("inf")}}, "walltime must be a finite"),
        (["true"], {"resources": {"walltime": float("nan")}}, "walltime must be a finite"),
        (["true"], {"resources": {"memory": "1k"}}, "memory '1k' is under 1 MiB"),
        (["true"], {"resources": {"walltime": "9" * 400 + "h"}}, "walltime '9+h' is too large"),
        (["true"], {"resources": {"memory": "9" * 400 + "G"}}, "memory '9+G' is too large"),
        # An int past a float's range passed feed() and crashed the run as the job started
        (["true"], {"resources": {"walltime": 10**309}}, r"walltime 1000+\.\.\. is too large"),
        (["true"], {"resources": {"memory": 10**30}}, r"memory 1000+ is too large"),
        # "²" is a digit to str.isdigit, not to int(): a bare ValueError
        (["true"], {"resources": {"walltime": "1:\u00b2"}}, "invalid walltime '1:\u00b2'"),
        (["true"], {"resources": {"walltime": "1:99:99"}}, "minutes and seconds after another"),
        (["true"], {"resources": {"walltime": "1:60"}}, "minutes and seconds after another"),
        # A bare B is bytes: "4096B" was 4096 MiB
        (["true"], {"resources": {"memory": "4096B"}}, "memory '4096B' is under 1 MiB"),
        (["true"], {"resources": {"cores": 2}}, r"unknown resource\(s\) \['cores'\]; accepted"),
        (  # a typo: the closest accepted name is suggested
            ["true"],
            {"resources": {"memroy": "1G"}},
            r"unknown resource\(s\) \['memroy'\] \(did you mean 'memory'\?\); accepted",
        ),
        (  # what is no slip of the keyboard away gets no guess: difflib's likeness, used
            # before, offered 'gpus' for 'bogus' (two letters in common)
            ["true"],
            {"resources": {"bogus": 1}},
            r"unknown resource\(s\) \['bogus'\]; accepted",
        ),
        (  # a name cut short is one
            ["true"],
            {"resources": {"mem": "1G"}},
            r"unknown resource\(s\) \['mem'\] \(did you mean 'memory'\?\); accepted",
        ),
        (  # and Slurm's word for it, which one name holds
            ["true"],
            {"resources": {"time": "1h"}},
            r"unknown resource\(s\) \['time'\] \(did you mean 'walltime'\?\); accepted",
        ),
        (  # keys of several types: sorted() of them raised a bare TypeError
            ["true"],
            {"resources": {1: 2, "cpuz": 1}},
            r"unknown resource\(s\) \['cpuz', 1\] \(did you mean 'cpus'\?\); accepted",
        ),
        # exec refuses it everywhere, and each backend failed the job its own way (local
        # without naming it, Slurm with "no return code", SSH as vanished)
        (
            ["true"],
            {"envs": {"BIG": "é" * 65536}},
            r"environment variable 'BIG' is 131077 bytes with its name: no program",
        ),
    ],
)
async def test_bad_job_arguments(
    workdir: Path, cmd: Any, kwargs: dict[str, Any], message: str
) -> None:
    q = Xqueue(workdir=workdir)
    with pytest.raises(ConfigError, match=message):
        await q.feed(cmd, **kwargs)
    assert q.statistics().total == 0


async def test_command_not_found_names_the_command(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, error_strategy="retry", num_retries=3)
    job = await q.feed(["no-such-command-xq", "arg"])
    ok = await q.feed(["true"])
    await q.run_until_complete()
    assert job.status is JobStatus.FAILED
    assert job.attempt == 1  # not retried: it cannot succeed
    assert "command not found: 'no-such-command-xq'" in job.reason
    assert "command not found" in (await read_text(job.stderr_path))
    assert ok.status is JobStatus.FINISHED


async def test_command_not_found_under_halt_raises(workdir: Path) -> None:
    q = Xqueue(workdir=workdir)
    await q.feed(["no-such-command-xq"])
    with pytest.raises(JobFailedError, match=r"job 0 .*command not found: 'no-such-command-xq'"):
        await q.run_until_complete()


def test_resources_are_normalised() -> None:
    r = Resources.from_value({"cpus": 2, "memory": "1.5G", "gpus": 1, "walltime": "1-02:03:04"})
    assert r == Resources(cpus=2, memory_mb=1536, gpus=1, walltime_s=93784)
    assert Resources.from_value({"walltime": "90m", "memory": 512}) == Resources(
        memory_mb=512, walltime_s=5400
    )


@pytest.mark.parametrize("value", ["nan", "inf", float("inf"), 1e400, -1])
@pytest.mark.parametrize("name", ["command_timeout", "submit_timeout", "down_retry"])
def test_every_backends_seconds_are_finite_and_not_negative(name: str, value: object) -> None:
    """The base options refused nan and inf; the SSH scheduler's own did not, and every
    wait on them misbehaved (wait_for(nan) timed out at once, fail_after(nan) raised)."""
    from xqueue.schedulers.ssh import SshScheduler

    with pytest.raises(SchedulerOptionError, match=f"{name} must be a finite number of seconds"):
        SshScheduler(servers={"a": {"host": "h"}}, **{name: value})


@pytest.mark.parametrize(
    ("scheduler", "name", "opts"),
    [
        ("ssh", "command_timeout", {"servers": {"a": {"host": "h"}}}),
        ("slurm", "submit_timeout", {}),
        ("sge", "status_timeout", {}),
        (
            "gbatch",
            "rpc_timeout",
            {"project": "p", "location": "l", "staging_bucket": "gs://my-bucket/x"},
        ),
        (
            "gbatch",
            "journal_interval",
            {"project": "p", "location": "l", "staging_bucket": "gs://my-bucket/x"},
        ),
    ],
)
def test_a_time_limit_of_0_is_refused_where_0_breaks_it(
    tmp_path: Path, scheduler: str, name: str, opts: dict[str, Any]
) -> None:
    """SSH took command_timeout=0, and the run then failed with "no server is
    reachable: ... timed out" against a server that was fine; Slurm and SGE refused
    theirs. Every backend's time limits are now refused at 0, by name."""
    with pytest.raises(
        SchedulerOptionError, match=f"{name} must be a finite number of seconds > 0, got 0.0"
    ):
        Xqueue(scheduler, workdir=tmp_path, scheduler_opts={**opts, name: "0"})
    Xqueue(scheduler, workdir=tmp_path, scheduler_opts={**opts, name: "90s"})  # one above 0


@pytest.mark.parametrize("value", ["nan", -1, 0, "x", 1e400])
def test_an_ssh_servers_connect_timeout_is_a_duration(value: object) -> None:
    from xqueue.schedulers.ssh import SshScheduler

    with pytest.raises(SchedulerOptionError, match="'connect_timeout' must be a finite number"):
        SshScheduler(servers={"a": {"host": "h", "connect_timeout": value}})
    good = SshScheduler(servers={"a": {"host": "h", "connect_timeout": "90s"}})
    assert good.options.server_configs("ssh")[0].connect_timeout == 90.0


def test_a_suggestion_is_no_guess_for_a_word_longer_than_any_name() -> None:
    """The comparison is quadratic in the word's length: a 200,000-letter key against a
    choice as long took twenty minutes to get no suggestion."""
    from xqueue._suggest import did_you_mean

    assert did_you_mean("a" * 200_000, ["a" * 199_990, "memory"]) == ""
    assert did_you_mean("memroy", ["a" * 199_990, "memory"]) == " (did you mean 'memory'?)"
