"""The ``xqueue`` command as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import plugin_distribution

XQ = [sys.executable, "-m", "xqueue"]


def xqueue(
    *args: str, input: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*XQ, *args], input=input, capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_run_from_stdin_success(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    out = xqueue("run", "-w", str(wd), "-f", "4", input="echo one\n# comment\n\necho two\n")
    assert out.returncode == 0, out.stderr
    assert "2 job(s) in" in out.stderr and "2 finished" in out.stderr
    assert "earlier run" not in out.stderr
    assert sorted(p.read_text() for p in wd.glob("*/job.1.stdout")) == ["one\n", "two\n"]
    # Run again with one job more: the summary says which were not run again.
    out = xqueue("run", "-w", str(wd), input="echo one\necho two\necho three\n")
    assert out.returncode == 0, out.stderr
    assert "3 job(s) in" in out.stderr and "3 finished (2 in an earlier run)" in out.stderr


def test_the_summary_counts_the_jobs_an_earlier_run_ran_and_this_one_followed(
    tmp_path: Path,
) -> None:
    """A run killed while two jobs ran: the next run follows them to their end (it starts
    nothing), and its summary must say so, not read as if it had run them."""
    wd, marks = tmp_path / "wd", tmp_path / "marks"
    marks.mkdir()
    jobs = "".join(f"touch {marks}/{i}; sleep {2 if i else 0}\n" for i in range(3))
    first = subprocess.Popen(
        [*XQ, "run", "-w", str(wd), "-f", "3", "--no-progress"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert first.stdin is not None
    first.stdin.write(jobs)
    first.stdin.close()
    deadline = time.monotonic() + 30
    while len(list(marks.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # job 0 has ended and is journalled; 1 and 2 sleep on
    first.kill()
    first.wait()
    out = xqueue("run", "-w", str(wd), "-f", "3", input=jobs)
    assert out.returncode == 0, out.stderr
    assert "3 job(s) in" in out.stderr and "3 finished (3 in an earlier run)" in out.stderr
    assert sorted(p.name for p in marks.iterdir()) == ["0", "1", "2"]


def test_a_job_list_has_a_job_a_line_ending_at_newlines(tmp_path: Path) -> None:
    """\\r\\n ends a line too; a bare \\r inside a line is the command's own, not the start
    of another job (a text-mode read took it for a line end: two broken jobs)."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_bytes(b"echo one > one.txt\r\nprintf 'a\rb' > cr.txt\r\n")
    out = xqueue("run", "-w", str(tmp_path / "wd"), str(jobs), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 job(s) in" in out.stderr and "2 finished" in out.stderr
    assert (tmp_path / "one.txt").read_bytes() == b"one\n"
    assert (tmp_path / "cr.txt").read_bytes() == b"a\rb"


@pytest.mark.parametrize("via", ["file", "stdin"])
@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"echo ok\necho caf\xe9\n", "line 2: not UTF-8 text (byte 0xe9 at column 9)"),
        (b"echo ok\necho a\x00b\n", "line 2: a NUL byte at column 7, which no command"),
    ],
)
def test_a_job_list_that_is_not_text_is_refused_before_anything_is_made(
    tmp_path: Path, via: str, data: bytes, said: str
) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_bytes(data)
    wd = tmp_path / "wd"
    args = [*XQ, "run", "-w", str(wd), *([str(jobs)] if via == "file" else [])]
    out = subprocess.run(args, input=data, capture_output=True, timeout=60)
    stderr = out.stderr.decode()
    assert out.returncode == 2, stderr
    assert "Traceback" not in stderr
    where = f"job list {str(jobs)!r}" if via == "file" else "the job list on stdin"
    assert f"{where}, {said}" in " ".join(stderr.split())
    assert not wd.exists()  # refused before the workdir was made


def _limited_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_an_endless_job_list_that_is_not_text_is_refused_as_it_is_read(tmp_path: Path) -> None:
    """``< /dev/zero`` was read whole before a line was looked at: a MemoryError
    traceback under a memory limit, the OOM killer without one."""
    wd = tmp_path / "wd"
    with open("/dev/zero", "rb") as zeros:
        out = subprocess.run(
            [*XQ, "run", "-w", str(wd)],
            stdin=zeros,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=_limited_memory,
        )
    assert out.returncode == 2, out.stderr
    assert "line 1: a NUL byte at column 1" in out.stderr and "Traceback" not in out.stderr
    assert not wd.exists()


def test_a_closed_stdin_is_no_job_list(tmp_path: Path) -> None:
    # sys.stdin is None then: an AttributeError traceback.
    shell = 'exec "$@" <&-'
    out = subprocess.run(
        ["sh", "-c", shell, "sh", *XQ, "run", "-w", str(tmp_path / "wd")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "no job list" in out.stderr and "Traceback" not in out.stderr


def test_a_byte_order_mark_is_not_part_of_the_first_command(tmp_path: Path) -> None:
    """Some editors start a UTF-8 file with U+FEFF: it made the first job fail with
    ``\ufeffecho: not found``."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_bytes(b"\xef\xbb\xbfecho first\necho second\n")
    out = xqueue("run", "-w", str(tmp_path / "wd"), str(jobs))
    assert out.returncode == 0 and "2 finished" in out.stderr, out.stderr


def test_a_line_that_starts_like_an_option_is_a_command(tmp_path: Path) -> None:
    """``/bin/sh -c -rf`` read the line as the shell's options: "Illegal option", rc 2."""
    wd = tmp_path / "wd"
    out = xqueue("run", "-w", str(wd), "-e", "ignore", input="-rf\n+e\n-x; echo ran\n")
    assert out.returncode == 1, out.stderr
    rcs = sorted((p.parent.name, p.read_text()) for p in wd.glob("*/job.1.stderr"))
    assert all("not found" in text and "Illegal option" not in text for _, text in rcs), rcs
    assert [p.read_text() for p in wd.glob("2-*/job.1.stdout")] == ["ran\n"]
    status = xqueue("status", str(wd), "--json")
    assert [json.loads(line)["state"]["rc"] for line in status.stdout.splitlines()] == [127, 127, 0]


def test_run_file_with_failures_exits_nonzero_with_table(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("true\necho oops >&2; exit 3\n")
    out = xqueue("run", str(jobs), "-w", str(tmp_path / "wd"))
    assert out.returncode == 1
    assert "1 job(s) did not succeed" in out.stderr
    assert "oops" in out.stderr  # last stderr line shown as the reason
    assert "job.1.stderr" in out.stderr.replace("\n", "").replace(" ", "").replace("│", "")


def test_retry_strategy_from_cli(tmp_path: Path) -> None:
    counter = tmp_path / "n"
    cmd = f"echo x >> {counter}; [ $(wc -l < {counter}) -ge 2 ]\n"
    out = xqueue("run", "-w", str(tmp_path / "wd"), "-e", "retry", "-r", "2", input=cmd)
    assert out.returncode == 0, out.stderr
    assert counter.read_text().count("x") == 2


COUNTED = "echo x >> {counter}; exit 1\n"  # each attempt leaves a line, then fails


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_retries_without_a_strategy_mean_retry(tmp_path: Path, command: str) -> None:
    """``-r 3`` alone was silently ignored: the default strategy is ignore, so the job
    made one attempt. A user who asks for retries wants them."""
    counter = tmp_path / "n"
    job = COUNTED.format(counter=counter)
    wd = str(tmp_path / "wd")
    if command == "run":
        out = xqueue("run", "-w", wd, "-r", "2", "--no-progress", input=job)
    else:
        sweep = tmp_path / "sweep.toml"
        sweep.write_text(f"[[section]]\n[[section.group]]\ncommand = {job.strip()!r}\n")
        out = xqueue("sweep", str(sweep), "-w", wd, "--retries", "2", "--no-progress")
    assert out.returncode == 1, out.stderr
    assert counter.read_text().count("x") == 3  # the first attempt and 2 retries


@pytest.mark.parametrize("command", ["run", "sweep"])
@pytest.mark.parametrize("strategy", ["halt", "ignore"])
def test_retries_with_a_strategy_that_never_retries_are_a_usage_error(
    tmp_path: Path, command: str, strategy: str
) -> None:
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('[[section]]\n[[section.group]]\ncommand = "true"\n')
    what = [] if command == "run" else [str(sweep)]
    wd = tmp_path / "wd"
    out = xqueue(command, *what, "-w", str(wd), "-e", strategy, "-r", "2", input="true\n")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"-r/--retries 2 does nothing with -e/--error-strategy {strategy}" in lines[0]
    assert not wd.exists()  # refused before anything was made


def test_retries_give_the_count_of_retry_policy_rules_whatever_the_strategy(
    tmp_path: Path,
) -> None:
    """With ``--retry-policy``, ``-r`` is the count of its rules that give none, under
    any strategy; the classes it does not name follow ``-e`` (default ignore) as before."""
    counter = tmp_path / "n"
    job = COUNTED.format(counter=counter)
    retried = '{"NONZERO_EXIT": "retry"}'
    for strategy in (["-e", "ignore"], ["-e", "halt"], []):
        counter.unlink(missing_ok=True)
        wd = str(tmp_path / f"wd{len(strategy)}{strategy[-1:]}")
        args = ["-w", wd, *strategy, "-r", "1", "--retry-policy", retried, "--no-progress"]
        out = xqueue("run", *args, input=job)
        assert out.returncode == 1, out.stderr
        assert counter.read_text().count("x") == 2, strategy  # the rule's one retry
    counter.unlink()
    other = '{"TIMEOUT": "retry"}'  # NONZERO_EXIT is not named: it follows -e, ignore
    out = xqueue("run", "-w", str(tmp_path / "wd"), "-r", "4", "--retry-policy", other, input=job)
    assert out.returncode == 1, out.stderr
    assert counter.read_text().count("x") == 1
    own = '{"TIMEOUT": {"retries": 2}}'  # counts its own retries: -r would change nothing
    wd = str(tmp_path / "refused")
    refused = xqueue("run", "-w", wd, "-e", "halt", "-r", "1", "--retry-policy", own, input=job)
    assert refused.returncode == 2
    assert "no --retry-policy rule takes its count from it" in refused.stderr


def test_halt_strategy_names_the_job(tmp_path: Path) -> None:
    out = xqueue("run", "-w", str(tmp_path / "wd"), "-e", "halt", input="exit 9\n")
    assert out.returncode == 1
    assert "halted:" in out.stderr and "return code 9" in out.stderr


def test_the_failures_table_gives_no_stderr_file_for_a_job_that_never_started(
    tmp_path: Path,
) -> None:
    wd = tmp_path / "wd"
    argv = [*XQ, "run", "-w", str(wd), "-f", "1", "-e", "halt", "--no-progress"]
    out = subprocess.run(
        argv,
        input="exit 9\necho never\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},  # a wide table: no path folded in two
    )
    assert out.returncode == 1, out.stderr
    row = next(line for line in out.stderr.splitlines() if "echo never" in line)
    assert "cancelled before it was submitted" in row
    assert [cell.strip() for cell in row.strip("│ ").split("│")][-1] == "-"
    assert "stderr" not in row  # no path to a file that was never written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s", "nosuch"], "unknown scheduler 'nosuch'; available schedulers:"),
        (["-f", "0"], "forks must be >= 1"),
        (["-o", "partition=debug"], "does not accept option 'partition'"),
        (["-o", "justakey"], "is not KEY=VALUE"),
        (["-o", "kill_grace=x"], "expects seconds"),
        (["/no/such/list.txt"], "cannot read job list '/no/such/list.txt'"),
        (["--frobnicate"], "usage: xqueue run [-h]"),  # run's own usage, not the top level's
        (["--frobnicate"], "xqueue run: error: unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_input_exits_2_with_message(tmp_path: Path, args: list[str], message: str) -> None:
    out = xqueue("run", "-w", str(tmp_path / "wd"), *args, input="true\n")
    assert out.returncode == 2
    assert message in " ".join(out.stderr.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stauts", "wd"], "invalid choice: 'stauts'"),
        (["stauts", "wd"], "(did you mean 'status'?)"),
        (["run", "-e", "hlt"], "(did you mean 'halt'?)"),
    ],
)
def test_a_mistyped_choice_is_answered_with_the_closest_one(args: list[str], message: str) -> None:
    out = xqueue(*args, input="")
    assert out.returncode == 2
    assert message in " ".join(out.stderr.split())


def test_a_choice_far_from_any_gets_no_guess() -> None:
    out = xqueue("frobnicate")
    assert out.returncode == 2
    assert "invalid choice: 'frobnicate'" in out.stderr and "did you mean" not in out.stderr


def test_status_of_a_finished_workdir(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    xqueue("run", "-w", str(wd), input="true\nexit 4\n")
    out = xqueue("status", str(wd), "--json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["command"], r["state"]["status"], r["state"]["rc"]) for r in rows] == [
        ("true", "finished", 0),
        ("exit 4", "failed", 4),
    ]
    table = xqueue("status", str(wd))
    assert "1 failed, 1 finished" in table.stdout


def test_status_shows_running_jobs_and_sigterm_stops_the_run(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    proc = subprocess.Popen(
        [*XQ, "run", "-w", str(wd), "-f", "2"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin
    proc.stdin.write("sleep 60\nsleep 60\nsleep 60\n")
    proc.stdin.close()
    proc.stdin = None
    deadline = time.monotonic() + 20
    while True:
        out = xqueue("status", str(wd), "--json")
        states = [json.loads(line)["state"] for line in out.stdout.splitlines()]
        if sum(1 for s in states if s and s["status"] == "running") == 2:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert "interrupted" in err
    final = [
        json.loads(line)["state"]
        for line in xqueue("status", str(wd), "--json").stdout.splitlines()
    ]
    assert [s["status"] if s else None for s in final] == ["killed", "killed", None]
    for s in final[:2]:
        pid = int(s["jid"].split("@")[0])
        assert (
            not os.path.exists(f"/proc/{pid}")
            or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        )


def test_version_says_which_xqueue_this_is() -> None:
    import xqueue as package

    out = xqueue("--version")
    assert (out.returncode, out.stdout) == (0, f"xqueue {package.__version__}\n"), out


def test_schedulers_lists_builtins() -> None:
    out = xqueue("schedulers")
    assert {"local", "slurm", "sge", "ssh", "container"} <= set(out.stdout.split())


def test_progress_view_renders(tmp_path: Path) -> None:
    out = xqueue("run", "--progress", "-w", str(tmp_path / "wd"), input="true\ntrue\n")
    assert out.returncode == 0
    assert "2/2" in out.stderr and "jobs/s" in out.stderr
    # Not a terminal: the view's last line ends, and the summary has a line of its own.
    assert re.search(r"^2 job\(s\) in [0-9.]+s: 2 finished$", out.stderr, re.M), out.stderr


def test_run_without_a_job_list_on_a_terminal_says_what_to_do(tmp_path: Path) -> None:
    import pty

    _, terminal = pty.openpty()
    out = subprocess.run(
        [*XQ, "run", "-w", str(tmp_path / "wd")],
        stdin=terminal,
        capture_output=True,
        text=True,
        timeout=30,
    )
    os.close(terminal)
    assert out.returncode == 2
    assert "no job list: give a file" in out.stderr


def stderr_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``xqueue ARGS 2>&1 | head -0`` with one job, ``true``: standard error is a pipe
    whose reader is gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [*XQ, *args], input=b"true\n", stdout=subprocess.DEVNULL, stderr=write, timeout=60
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("view", ["--no-progress", "--progress"])
def test_a_closed_pipe_on_stderr_exits_141_not_as_a_failed_job(tmp_path: Path, view: str) -> None:
    """``xqueue run jobs 2>&1 | head -0``: rich exits 1 on a broken pipe, which says a
    job failed; a closed pipe is 141, as on standard output. The live view (asked for)
    meets it first, and must neither stop the run nor keep the event stream's last
    event from being written (the run ended with exit code 2 and no run_stopped)."""
    out = stderr_into_closed_pipe("run", "-w", str(tmp_path / "wd"), view)
    assert out.returncode == 141
    assert (tmp_path / "wd" / "journal.jsonl").read_text().count('"finished"') == 1
    events = (tmp_path / "wd" / "events.jsonl").read_text().splitlines()
    assert json.loads(events[-1])["event"] == "run_stopped", events[-1:]


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["logs", "0"]])
def test_an_output_that_refuses_writes_is_an_error_line_not_a_traceback(
    tmp_path: Path, command: list[str]
) -> None:
    """``xqueue logs WD 3 > out.txt`` on a full disk or quota, or with standard output
    closed (``>&-``), ended in an OSError or AttributeError traceback."""
    wd = tmp_path / "wd"
    assert xqueue("run", "-w", str(wd), input="echo hello\n").returncode == 0
    argv = [*XQ, command[0], str(wd), *command[1:]]
    with open("/dev/full", "w") as full:
        out = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == "error: could not write the output: No space left on device\n"
    closed = subprocess.run(
        argv, stderr=subprocess.PIPE, text=True, timeout=60, preexec_fn=lambda: os.close(1)
    )
    assert closed.returncode == 2
    assert closed.stderr.startswith("error: standard output is closed:"), closed.stderr


def test_a_ctrl_c_while_the_summary_prints_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """A second Ctrl-C soon after the first came once the run had stopped, while its end
    was printed with Python's own SIGINT handling back: a KeyboardInterrupt traceback.
    The Ctrl-C is raised where the summary is made, in a process of its own."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("true\n")
    script = (
        "import sys\n"
        "from xqueue.cli import commands\n"
        "def interrupted(*args):\n"
        "    raise KeyboardInterrupt\n"
        "commands.summary_line = interrupted\n"
        "sys.exit(commands.main(sys.argv[1:]))\n"
    )
    argv = ["run", str(jobs), "-w", str(tmp_path / "wd"), "--no-progress"]
    out = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 130 and "Traceback" not in out.stderr, out.stderr


def test_a_scheduler_option_given_twice_is_refused_not_dropped(tmp_path: Path) -> None:
    """``-o l=h_rt=2 -o l=h_vmem=1G`` kept only the last value, silently."""
    out = xqueue(
        "run", "-w", str(tmp_path / "wd"), "-o", "l=h_rt=2", "-o", "l=h_vmem=1G", input="true\n"
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    said = " ".join(out.stderr.split())
    assert "scheduler option 'l' is given twice ('h_rt=2' and 'h_vmem=1G')" in said
    assert not (tmp_path / "wd").exists()


def run_script(
    script: str, wd: Path, jobs: str = "true\n", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``script`` (Python that runs the command) given ``run -w WD --no-progress``, the
    job list ``jobs`` on its standard input."""
    return subprocess.run(
        [sys.executable, "-c", script, "run", "-w", str(wd), "--no-progress"],
        input=jobs,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(("env", "rich"), [({}, False), ({"FORCE_COLOR": "1"}, True)])
def test_a_run_without_a_terminal_prints_plain_lines_without_loading_rich(
    tmp_path: Path, env: dict[str, str], rich: bool
) -> None:
    """Loading rich was a fifth of a run's start-up; a run whose standard error is no
    terminal prints only plain lines, so it does without. rich comes back where it
    styles what is printed (FORCE_COLOR) and for a table of failures."""
    script = (
        "import sys\n"
        "from xqueue.cli import commands\n"
        "code = commands.main(sys.argv[1:])\n"
        "print('rich' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    plain_env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    out = run_script(script, tmp_path / "wd", env={**plain_env, **env})
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{rich}\n"
    assert re.fullmatch(r"1 job\(s\) in \d+\.\ds: 1 finished\n", out.stderr), out.stderr
    failed = run_script(script, tmp_path / "failed", "exit 3\n", env=plain_env)
    assert failed.returncode == 1 and failed.stdout == "True\n"
    assert "1 job(s) did not succeed" in failed.stderr, failed.stderr


def run_with_plugin(
    tmp_path: Path, entry: str, source: str, jobs: str, command: list[str] = XQ
) -> subprocess.CompletedProcess[str]:
    """``xqueue run`` of ``jobs`` in ``tmp_path/wd`` with one plugin loaded, ``entry``
    (``name = module[:attr]``) of a distribution made for it whose module is ``source``."""
    name, module = (part.strip() for part in entry.split("="))
    dist = f"xq-{module.split(':')[0]}"
    path = plugin_distribution(tmp_path / "site", dist, "xqueue.plugins", entry, source)
    return subprocess.run(
        [*command, "run", "-w", str(tmp_path / "wd"), "-p", name, "--no-progress"],
        input=jobs,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path, "XQUEUE_DISABLE_PLUGIN_AUTOLOAD": "1"},
        timeout=60,
    )


BUFFERED = """
from xqueue import hookimpl


class Plugin:
    @hookimpl
    def on_init(self, xqueue):
        self.xqueue = xqueue  # a cycle: only the collector frees it, and closes the file
        self.log = open(xqueue.workdir.path / "plugin.log", "a")
        self.log.write("init\\n")

    @hookimpl
    def on_job_succeeded(self, job):
        self.log.write(f"ok {job.index}\\n")


plugin = Plugin()
"""


@pytest.mark.parametrize("how", ["module", "script"])
def test_a_plugin_file_left_to_the_collector_is_flushed_at_exit(tmp_path: Path, how: str) -> None:
    """What the command made is still collected as its process exits (only what its
    imports made is frozen, for a faster exit): a plugin that leaves its file to be
    closed by the collection of the run's objects lost everything it wrote when the
    whole heap was frozen after the command."""
    command = XQ if how == "module" else [os.path.join(os.path.dirname(sys.executable), "xqueue")]
    entry = "buffered = xq_buffered:plugin"
    out = run_with_plugin(tmp_path, entry, BUFFERED, "true\ntrue\n", command)
    assert out.returncode == 0, out.stderr
    # Both lines, in the order the two jobs happened to end (they run at once).
    first, *rest = (tmp_path / "wd" / "plugin.log").read_text().splitlines()
    assert first == "init" and sorted(rest) == ["ok 0", "ok 1"], rest


def test_an_error_line_into_a_closed_pipe_exits_141(tmp_path: Path) -> None:
    """``xqueue run -o bogus=1 2>&1 | head -0``: the error line met the closed pipe and
    its BrokenPipeError left ``main``: exit code 1, as for a failed job, not 141."""
    out = stderr_into_closed_pipe("run", "-w", str(tmp_path / "wd"), "-o", "bogus=1")
    assert out.returncode == 141


def test_the_summary_wraps_between_words_where_rich_prints_it(tmp_path: Path) -> None:
    """Through rich (a terminal; FORCE_COLOR here) the summary keeps rich's wrapping at
    the width, between words, as before plain lines came; a plain line is never cut."""
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "20"}
    argv = [*XQ, "run", "-w", str(tmp_path / "wd"), "--no-progress"]
    out = subprocess.run(argv, input="true\n", capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"1 job\(s\) in \d+\.\ds: 1 \nfinished\n", out.stderr), repr(out.stderr)
    del env["FORCE_COLOR"]
    argv[-2] = str(tmp_path / "plain")
    out = subprocess.run(argv, input="true\n", capture_output=True, text=True, env=env, timeout=60)
    assert re.fullmatch(r"1 job\(s\) in \d+\.\ds: 1 finished\n", out.stderr), repr(out.stderr)


CTRL_C_AT_EXIT = """
import atexit, os, signal, time
from xqueue import hookimpl


def second_ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)


@hookimpl
def on_init():
    atexit.register(second_ctrl_c)  # it runs as the process exits, after the command
"""


def test_a_ctrl_c_as_the_process_exits_ends_it_without_a_message(tmp_path: Path) -> None:
    """A second Ctrl-C soon after the first one came once the command had returned, in
    the interpreter's exit: Python's handler raised it inside the cleanup, which printed
    "Exception ignored in: <atexit ...> KeyboardInterrupt" and went on. The signal's
    default action ends the process at once, without a word."""
    out = run_with_plugin(tmp_path, "late = xq_late", CTRL_C_AT_EXIT, "true\n")
    assert out.returncode == -signal.SIGINT, (out.returncode, out.stderr)
    assert "Exception ignored" not in out.stderr and "KeyboardInterrupt" not in out.stderr
    assert out.stderr.endswith("1 finished\n"), out.stderr


def test_a_ctrl_c_while_the_command_loads_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """Loading the command (the engine, anyio, pluggy) takes 50-70 ms, and much longer
    from a cold or network file system; a Ctrl-C then came out of the console script's
    own import as a KeyboardInterrupt traceback. The Ctrl-C is sent as the command's
    module is found, through ``python -m xqueue``'s own path."""
    script = (
        "import os, runpy, signal, sys\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'xqueue.cli.commands':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        return None\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        "sys.argv[0] = 'xqueue'\n"
        "runpy.run_module('xqueue', run_name='__main__', alter_sys=True)\n"
    )
    out = run_script(script, tmp_path / "wd")
    assert (out.returncode, out.stderr) == (130, ""), (out.returncode, out.stderr)
    assert not (tmp_path / "wd").exists()
