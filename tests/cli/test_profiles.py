"""``xqueue run --profile`` as a user runs it: a real subprocess in a project folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

XQ = [sys.executable, "-m", "xqueue"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder (the command's current directory) and an empty user config."""
    (tmp_path / "project").mkdir()
    return tmp_path / "project"


def xqueue(project: Path, *args: str, input: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(project.parent / "xdg")}
    return subprocess.run(
        [*XQ, *args], input=input, capture_output=True, text=True, cwd=project, env=env, timeout=60
    )


def ran_in(workdir: Path) -> list[str]:
    """The directory each job ran in (the jobs are ``pwd``)."""
    return [p.read_text().strip() for p in sorted(workdir.glob("*/job.1.stdout"))]


def test_profile_sets_where_local_jobs_run(project: Path) -> None:
    there, default, flag = (project.parent / d for d in ("there", "default", "flag"))
    for d in (there, default, flag):
        d.mkdir()
    (project / "xqueue.toml").write_text(
        f"[profiles.local.default]\ncwd = '{default}'\n[profiles.local.there]\ncwd = '{there}'\n"
    )
    out = xqueue(project, "run", "--profile", "there", "-w", "wd1", input="pwd\npwd\n")
    assert out.returncode == 0, out.stderr
    assert ran_in(project / "wd1") == [str(there), str(there)]
    out = xqueue(project, "run", "-w", "wd2", input="pwd\n")  # no profile named: default
    assert out.returncode == 0, out.stderr
    assert ran_in(project / "wd2") == [str(default)]
    out = xqueue(
        project, "run", "--profile", "there", "-o", f"cwd={flag}", "-w", "wd3", input="pwd\n"
    )
    assert out.returncode == 0, out.stderr
    assert ran_in(project / "wd3") == [str(flag)]  # -o wins over the profile


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[profiles.local.fast]\nkill_grace = 1\n",
            "error: unknown profile 'nope' for scheduler 'local'; known profiles: fast ({})",
        ),
        ("[profiles.local.fast\n", "error: {}: invalid TOML: "),
        (
            "[profiles.local.nope]\ncwdd = 'x'\n",
            "error: {}: profiles.local.nope.cwdd: scheduler 'local' does not accept option 'cwdd'",
        ),
    ],
)
def test_bad_profile_is_one_line_and_exit_2(project: Path, toml: str, message: str) -> None:
    config = project / "xqueue.toml"
    config.write_text(toml)
    out = xqueue(project, "run", "--profile", "nope", "-w", "wd", input="true\n")
    assert out.returncode == 2
    assert out.stderr.startswith(message.format(config)), out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not (project / "wd").exists()  # refused before anything was made
