"""``xqueue sweep`` and ``xqueue status --param`` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .test_cli import XQ, xqueue

SWEEP = """
[[section]]
name = "grid"
[[section.group]]
name = "fit"
command = ["printf", "%s %s", "{decay}", "{name}"]
params.decay = [0.1, 0.01]
params.name = ["a b", "c"]

[[section]]
name = "after"
[[section.group]]
name = "report"
command = "echo done"
"""


def made(tmp_path: Path) -> tuple[Path, Path]:
    """A sweep file, and the workdir of a run of it through the CLI."""
    path, wd = tmp_path / "sweep.toml", tmp_path / "wd"
    path.write_text(SWEEP)
    out = xqueue("sweep", str(path), "-w", str(wd), "-f", "2", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "5 job(s) in" in out.stderr and "5 finished" in out.stderr
    return path, wd


def status_json(wd: Path, *params: str) -> list[dict[str, object]]:
    out = xqueue("status", str(wd), "--json", *(f"--param={p}" for p in params))
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_sweep_runs_the_file_and_status_filters_on_parameters(tmp_path: Path) -> None:
    path, wd = made(tmp_path)
    outputs = sorted(p.read_text() for p in wd.glob("*/job.1.stdout"))
    assert outputs == ["0.01 a b", "0.01 c", "0.1 a b", "0.1 c", "done\n"]

    tenth = status_json(wd, "decay=0.1")
    assert [job["params"] for job in tenth] == [
        {"decay": 0.1, "name": "a b"},
        {"decay": 0.1, "name": "c"},
    ]
    assert {job["status"] for job in tenth} == {"finished"}
    assert status_json(wd, "decay=1e-1") == tenth  # compared as numbers
    assert len(status_json(wd, "decay=0.1", "decay=0.01")) == 4  # one name: any of its values
    assert [j["params"] for j in status_json(wd, "decay=0.01", "name=a b")] == [
        {"decay": 0.01, "name": "a b"}
    ]
    assert status_json(wd, "colour=red") == []

    table = xqueue("status", str(wd), "--param", "name=c")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "2 of 5 jobs" in lines[0]  # those chosen, of all
    assert lines[2].split() == ["#", "job", "status", "attempt", "rc", "id", "params", "reason"]
    assert [line.split()[-2:] for line in lines[3:]] == [
        ["decay=0.1", "name=c"],
        ["decay=0.01", "name=c"],
    ]

    bad = xqueue("status", str(wd), "--param", "decay")
    assert bad.returncode == 2 and "not NAME=VALUE" in bad.stderr
    typo = xqueue("status", str(wd), "--param", "decya=0.1")  # matched nothing, silently
    assert typo.returncode == 0 and "0 of 5 jobs" in typo.stdout
    said = (
        "no job has the parameter(s) 'decya' (did you mean 'decay'?); "
        "the parameters are: decay, name"
    )
    assert said in typo.stderr
    none = xqueue("status", str(wd), "--param", "decay=7")  # a value no job has: no note
    assert none.returncode == 0 and none.stderr == ""
    # No job in that state: every job has the name all the same (it was called a typo).
    failed = xqueue("status", str(wd), "--param", "decay=0.1", "--state", "failed")
    assert failed.returncode == 0 and failed.stderr == "", failed.stderr

    # Run again: every point had succeeded, nothing runs and the outputs stay.
    before = {p: p.stat().st_mtime_ns for p in wd.glob("*/job.1.stdout")}
    again = xqueue("sweep", str(path), "-w", str(wd), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "5 job(s) in" in again.stderr and "5 finished (5 in an earlier run)" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in wd.glob("*/job.1.stdout")} == before
    assert not list(wd.glob("*/job.2.*"))


def test_dry_run_lists_the_jobs_and_runs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    out = xqueue("sweep", str(path), "--dry-run", "-w", str(tmp_path / "wd"))
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert rows[0] == ["0", "grid", "fit decay=0.1 name=a b", "printf '%s %s' 0.1 'a b'"]
    assert [r[2] for r in rows] == [
        "fit decay=0.1 name=a b",
        "fit decay=0.1 name=c",
        "fit decay=0.01 name=a b",
        "fit decay=0.01 name=c",
        "report",
    ]
    assert not (tmp_path / "wd").exists()


def test_a_bad_sweep_file_exits_2_naming_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text('[[section]]\n[[section.group]]\ncommand = "echo {typo}"\n')
    out = xqueue("sweep", str(path), "-w", str(tmp_path / "wd"))
    assert out.returncode == 2
    assert "{typo} names no parameter or slot axis" in out.stderr
    assert not (tmp_path / "wd").exists()
    missing = xqueue("sweep", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "cannot read sweep file" in missing.stderr


def test_what_feeding_would_refuse_is_refused_before_the_workdir(tmp_path: Path) -> None:
    """Slot axes the file's [slots] table lacks, and a call that cannot be loaded, were
    refused only at feed: after the workdir was taken (its lock, event stream and exit
    file made), in the Python API's words, naming neither file nor section."""
    path, wd = tmp_path / "sweep.toml", tmp_path / "wd"
    group = '[[section]]\nname = "s"\n[[section.group]]\nname = "g"\n'
    for body, said in [
        ('command = "echo x"\nslots = ["gpu"]\n', "slot axes ['gpu'] must be in a [slots] table"),
        ('call = "nosuchmod:f"\n', "cannot load 'nosuchmod:f': No module named 'nosuchmod'"),
        # what the template makes of a point: found at feed, after earlier sections ran
        ("command = ['{p}', 'hi']\nparams.p = ['echo', '']\n", "empty command: give a"),
        ('command = ["echo", "a\\u0000b"]\n', "argument 1 of the command"),
    ]:
        path.write_text(group + body)
        for dry in ([], ["--dry-run"]):  # a dry run listed what the run then refused
            out = xqueue("sweep", str(path), "-w", str(wd), *dry)
            assert out.returncode == 2, out.stderr
            assert f"{path}: group 'g' of section 's': {said}" in " ".join(out.stderr.split())
            assert not wd.exists()
    path.write_text(
        '[[section]]\nname = "s"\n[[section.group]]\nname = "a\\u0000b"\ncommand = "t"\n'
    )
    out = xqueue("sweep", str(path), "-w", str(wd))
    assert out.returncode == 2 and "the job name" in out.stderr and "section 's'" in out.stderr
    assert not wd.exists()


TOLERANT = """
[[section]]
name = "first"
continue_on_failure = true
[[section.group]]
name = "g"
command = "{cmd}"
params.i = [1, 2]

[[section]]
name = "next"
[[section.group]]
name = "n"
command = "echo next"
"""


@pytest.mark.parametrize(
    ("cmd", "args", "code", "said"),
    [
        ("sleep 30", [], 143, "interrupted"),  # SIGTERM, sent once both have started
        ("exit 3", ["-e", "halt"], 1, "halted"),
    ],
)
def test_a_run_stopped_in_a_tolerant_section_ends_as_the_stop_says(
    tmp_path: Path, cmd: str, args: list[str], code: int, said: str
) -> None:
    """After the barrier of a ``continue_on_failure`` section, the next section was fed to
    a run that had stopped: "takes no more jobs" and exit 2, with no summary, instead of
    the signal's code or the halt's."""
    path, wd = tmp_path / "sweep.toml", tmp_path / "wd"
    path.write_text(TOLERANT.replace("{cmd}", cmd))
    proc = subprocess.Popen(
        [*XQ, "sweep", str(path), "-w", str(wd), "--no-progress", *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if cmd.startswith("sleep"):
            deadline = time.monotonic() + 30
            events = wd / "events.jsonl"
            while not events.exists() or events.read_text().count('"job_started"') < 2:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code, err
    assert "takes no more jobs" not in err and f"{said}:" in err
    assert "job(s) in" in err and "next" not in err.split("job(s) in")[1].split("\n")[0]


@pytest.mark.parametrize(
    ("module", "said"),
    [
        ("import sys\nsys.exit(0)\n", "importing 'side' called sys.exit(0)"),
        ("raise RuntimeError('no GPU here')\n", "importing 'side' raised RuntimeError: no GPU"),
        ("def f(:\n", "importing 'side' raised SyntaxError"),
    ],
)
def test_a_call_module_that_fails_as_it_is_imported_is_one_line_exit_2(
    tmp_path: Path, module: str, said: str
) -> None:
    """A module whose import exits (a script's sys.exit, argparse) made the sweep exit 0
    having run nothing; one that raised printed a traceback, exit 1."""
    (tmp_path / "side.py").write_text(module)
    path = tmp_path / "sweep.toml"
    path.write_text('[[section]]\n[[section.group]]\nname = "g"\ncall = "side:f"\n')
    out = xqueue("sweep", str(path), "-w", str(tmp_path / "wd"))
    assert out.returncode == 2, out.stderr
    assert said in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1


def test_a_module_beside_the_sweep_file_does_not_replace_one_the_controller_imports(
    tmp_path: Path,
) -> None:
    """The sweep file's folder went first on the path, even for a sweep with no call: a
    `random.py` or `queue.py` beside it was imported by the controller itself (its code
    ran there, then a traceback). It goes last, and only for a sweep with calls."""
    for name in ("random", "queue", "subprocess", "tempfile"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('the controller imported me')\n")
    (tmp_path / "model.py").write_text("def fit(x):\n    return x * 2\n")
    path = tmp_path / "sweep.toml"
    for body in ('command = ["echo", "{x}"]\n', 'call = "model:fit"\n'):
        path.write_text(f'[[section]]\n[[section.group]]\nname = "g"\n{body}params.x = [1, 2]\n')
        wd = tmp_path / f"wd{len(body)}"
        out = xqueue("sweep", str(path), "-w", str(wd), "--no-progress")
        assert out.returncode == 0, out.stderr
        assert "2 finished" in out.stderr and "imported me" not in out.stderr
