"""Python callables as jobs (``Xqueue.submit``): real interpreters on every backend.

Each call runs in a fresh ``python -m xqueue._callrun`` started by the backend, so what
is asserted here crossed a process (and for SSH and the clusters, a login or a batch
system) both ways: arguments and function there, value or exception back.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from tests import calltargets as t
from tests.helpers import (
    SGE_FAST,
    SLURM_FAST,
    cluster_queue,
    read_bytes,
    read_text,
    remove_after,
    wait_running,
)
from tests.helpers import ssh_server as server
from xqueue import CallError, ConfigError, Job, JobStatus, RemoteTraceback, Xqueue

pytestmark = pytest.mark.anyio


@pytest.fixture
def outside_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A module found only through an import path entry this test adds: not under the
    project (which its editable install puts on every interpreter's path), nor the cwd."""
    src = tmp_path / "elsewhere"
    src.mkdir()
    (src / "xq_elsewhere.py").write_text("import os\n\ndef where():\n    return os.getcwd()\n")
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.delitem(sys.modules, "xq_elsewhere", raising=False)
    return importlib.import_module("xq_elsewhere")


def remote_text(exc: BaseException) -> str:
    cause = exc.__cause__
    assert isinstance(cause, RemoteTraceback), f"no remote traceback on {exc!r}"
    return cause.text


async def test_values_and_arguments_cross_both_ways(workdir: Path) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: not a toy payload
    async with Xqueue(forks=4, workdir=workdir) as q:
        summed = await q.submit(t.combine, 1, 2, 3, 4, scale=10, colour="red")
        point = await q.submit(t.make_point, 7, "a", "b")
        raw = await q.submit(t.echo, big)
        nested = await q.submit(t.echo, {"set": {1, 2}, "none": None, "tuple": (1.5, "x")})
        offset = 5
        closure = await q.submit(lambda n: [n + offset, sys.version_info[:2]], 3)
        called = await q.submit_call(t.combine, [1], {"b": 2}, name="by submit_call")
        results = [await j.result() for j in (summed, point, raw, nested, closure, called)]
    assert results[0] == {"sum": 100, "extra": {"colour": "red"}}
    assert isinstance(results[1], t.Point) and results[1] == t.Point(7, ["a", "b"])
    assert results[2] == big
    assert results[3] == {"set": {1, 2}, "none": None, "tuple": (1.5, "x")}
    assert results[4] == [8, sys.version_info[:2]]
    assert results[5] == {"sum": 3, "extra": {}}
    assert called.name == "by submit_call" and summed.name == "combine"
    # Each ran in a process of its own, through the backend: the runner's return code.
    assert all(j.status is JobStatus.FINISHED and j.rc == 0 for j in q.jobs)
    assert summed.command[1:3] == ("-m", "xqueue._callrun")
    assert await read_text(summed.stderr_path) == ""  # the runner says nothing of its own


async def test_raised_exception_keeps_its_type_fields_and_remote_traceback(
    workdir: Path,
) -> None:
    async with Xqueue(workdir=workdir, error_strategy="ignore") as q:
        job = await q.submit(t.refuse, 42)
        with pytest.raises(t.Refused) as info:
            await job.result()
    exc = info.value
    assert exc.args == ("no way", 42) and exc.code == 42
    text = remote_text(exc)
    # The frames where it was raised, the chained cause, and nothing of the runner.
    assert "in refuse" in text and "in inner_helper_that_raises" in text
    assert 'raise Refused("no way", code) from exc' in text
    assert "KeyError: 'missing'" in text and "Refused: ('no way', 42)" in text
    assert "_callrun" not in text
    # A raising call is a failed job: exit 1, and the traceback is in its stderr too.
    assert job.status is JobStatus.FAILED and job.rc == 1
    assert "Refused: ('no way', 42)" in await read_text(job.stderr_path)


async def test_exception_that_cannot_be_rebuilt_becomes_call_error(workdir: Path) -> None:
    async with Xqueue(workdir=workdir, error_strategy="ignore") as q:
        stubborn = await q.submit(t.stubborn)
        exits = await q.submit(t.exit_with, 3)
        with pytest.raises(CallError) as info:
            await stubborn.result()
        with pytest.raises(CallError) as exited:
            await exits.result()
    message = str(info.value)
    assert "job 0 (stubborn)" in message and "tests.calltargets.Stubborn: x/y" in message
    assert "cannot be rebuilt here" in message and "missing 1 required" in message
    assert 'raise Stubborn("x", "y")' in remote_text(info.value)
    # SystemExit raised by a call must not stop the controller: it is reported instead.
    assert "the call raised builtins.SystemExit: 3" in str(exited.value)
    assert exits.status is JobStatus.FAILED


async def test_unpicklable_call_is_refused_at_submit_with_the_reason(workdir: Path) -> None:
    lock = threading.Lock()
    async with Xqueue(workdir=workdir) as q:
        with pytest.raises(ConfigError, match=r"cannot pickle '_thread\.lock' object"):
            await q.submit(t.echo, lock)
        with pytest.raises(ConfigError, match=r"<lambda>': the call cannot be pickled.*lock"):
            await q.submit(lambda: lock)
        with pytest.raises(ConfigError, match="invalid environment variable name"):
            await q.submit_call(t.square, [1], envs={"not a name": "x"})
        with pytest.raises(ConfigError, match="needs a callable"):
            await q.submit("print")  # type: ignore[arg-type]
        assert q.jobs == []
    # Nothing of the refused calls was left: no staged pickle, no job folder.
    left = [p.name async for p in anyio.Path(workdir).iterdir()]
    assert [name for name in left if name.startswith(".staged") or name[0].isdigit()] == []


async def test_unpicklable_return_value_fails_the_job_with_the_reason(workdir: Path) -> None:
    async with Xqueue(workdir=workdir, error_strategy="ignore") as q:
        job = await q.submit(t.returns_a_lock)
        with pytest.raises(TypeError, match=r"the return value \(lock\) cannot be pickled"):
            await job.result()
    assert job.status is JobStatus.FAILED and job.rc == 1


async def test_a_call_by_name_with_a_plain_value_loads_no_cloudpickle_where_it_runs(
    workdir: Path,
) -> None:
    """Importing cloudpickle (and, through the package, the engine) took each call's job
    about 40 ms of CPU before and after a call, three times an interpreter's start: a
    call named by reference whose value plain pickle can send needs neither."""
    async with Xqueue(workdir=workdir) as q:
        job = await q.submit(t.modules_loaded, "cloudpickle", "anyio", "xqueue.engine")
        assert await job.result() == []


async def test_what_plain_pickle_cannot_name_comes_back_by_value(workdir: Path) -> None:
    """The runner pickles a call's outcome with plain pickle when it can. A lambda, a
    class the call put in its job's ``__main__`` (which plain pickle would name, to be
    looked for in the controller's ``__main__``), and bound methods reached by another
    name than their function's (plain pickle names them by that) still come back whole."""
    async with Xqueue(forks=3, workdir=workdir, error_strategy="ignore") as q:
        doubler = await q.submit(t.make_doubler)
        made = await q.submit(t.main_class_instance)
        raised = await q.submit(t.raise_main_error)
        methods = await q.submit(t.bound_methods, "w")
        assert (await doubler.result())(21) == 42
        assert [m() for m in await methods.result()] == [
            "greet of w",
            "shout of w",
            "another method",
        ]
        value = await made.result()
        assert (type(value).__name__, value.value) == ("Made", 7)
        with pytest.raises(Exception, match="raised by a class of the job's __main__") as caught:
            await raised.result()
    assert (type(caught.value).__name__, caught.value.value) == ("MainError", 7)


async def test_many_calls_submitted_and_awaited_concurrently(workdir: Path) -> None:
    n = 30
    results: dict[int, int] = {}
    async with Xqueue(forks=6, workdir=workdir) as q:

        async def one(i: int) -> None:
            job = await q.submit(t.square, i)
            results[i] = await job.result()

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    assert results == {i: i * i for i in range(n)}
    # Submitted from 30 tasks at once, each still got a position and a folder of its own.
    assert sorted(j.index for j in q.jobs) == list(range(n))
    assert len({j.dir for j in q.jobs}) == n


async def test_each_attempt_keeps_its_outcome_and_result_is_the_last(workdir: Path) -> None:
    async with Xqueue(workdir=workdir, error_strategy="retry", num_retries=2) as q:
        job = await q.submit(t.fail_first_attempt)
        assert await job.result() == 2
    assert job.attempt == 2
    first = pickle.loads(await read_bytes(job.attempt_path("result", 1)))
    assert first["ok"] is False and "first attempt fails" in first["traceback"]


async def test_succeeded_call_is_not_run_again_and_still_gives_its_result(
    workdir: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    async with Xqueue(workdir=workdir) as q:
        job = await q.submit(t.count_and_return, str(runs), {"answer": 42})
        assert await job.result() == {"answer": 42}
    async with Xqueue(workdir=workdir) as q:
        again = await q.submit(t.count_and_return, str(runs), {"answer": 42})
        assert await again.result() == {"answer": 42}
        assert again.reason == "succeeded in an earlier run"
        assert await read_text(runs) == "ran\n"  # not run a second time
        # Other arguments at the same position: another call, which runs.
        changed = await q.submit(t.count_and_return, str(runs), {"answer": 43})
        assert await changed.result() == {"answer": 43}
    assert await read_text(runs) == "ran\nran\n"


async def test_outcome_of_an_earlier_run_never_passes_for_a_later_attempt(
    workdir: Path, tmp_path: Path
) -> None:
    die = tmp_path / "die"
    async with Xqueue(workdir=workdir, error_strategy="ignore") as q:
        first = await q.submit(t.raise_unless, str(die))
        with pytest.raises(ValueError, match="raised in the first run"):
            await first.result()
    await anyio.Path(die).touch()
    async with Xqueue(workdir=workdir, error_strategy="ignore") as q:
        # It failed before, so it runs again, as attempt 2 (after the first run's one),
        # and is killed: the first run's outcome, an exception, is not its.
        again = await q.submit(t.raise_unless, str(die))
        with pytest.raises(CallError, match=r"job 0 \(raise_unless\) failed .* left no result"):
            await again.result()
    assert again.attempt == 2 and again.status is JobStatus.FAILED


async def test_a_call_file_that_is_not_the_submitted_call_is_refused(workdir: Path) -> None:
    q = Xqueue(workdir=workdir, error_strategy="ignore")
    try:
        job = await q.submit(t.square, 3)
        other = await q.submit(t.square, 4)
        with anyio.fail_after(10):  # the folders are made in the background, soon after
            while not (q.workdir.has_folder(job) and q.workdir.has_folder(other)):
                await anyio.sleep(0.01)
        # Someone swaps the pickle: the command names the call's digest, so it won't run.
        await anyio.Path(job.path("call.pkl")).write_bytes(await read_bytes(other.path("call.pkl")))
        await q.run_until_complete()
    finally:
        await q.aclose()
    with pytest.raises(CallError, match="is not the call this job was submitted with"):
        await job.result()  # a CallError: the call never ran, it raised nothing
    assert job.rc == 2 and await other.result() == 16


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"format": 99, "xqueue": "9.9"}, r"by xqueue 9\.9 \(call format 99\), which the xqueue"),
        ({"call": b"other", "xqueue": "9.9"}, r"the controller runs xqueue 9\.9 and this host"),
    ],
)
async def test_a_call_file_of_another_xqueue_is_refused_naming_both_versions(
    workdir: Path, change: dict[str, Any], expected: str
) -> None:
    """A worker with another xqueue installed: a newer call format is named as such, and a
    digest that differs says the versions differ, instead of only "not the call"."""
    q = Xqueue(workdir=workdir, error_strategy="ignore")
    try:
        job = await q.submit(t.square, 3)
        with anyio.fail_after(10):  # the folder is made in the background, soon after
            while not q.workdir.has_folder(job):
                await anyio.sleep(0.01)
        path = anyio.Path(job.path("call.pkl"))
        envelope = pickle.loads(await path.read_bytes())
        await path.write_bytes(pickle.dumps({**envelope, **change}))
        await q.run_until_complete()
    finally:
        await q.aclose()
    with pytest.raises(CallError, match=expected):
        await job.result()
    assert job.rc == 2


async def test_killed_call_raises_call_error_naming_the_job(workdir: Path) -> None:
    async with Xqueue(workdir=workdir) as q:
        job = await q.submit(t.sleep, 60)
        await wait_running(job)
        assert await q.kill(job)
        with pytest.raises(CallError, match=r"job 0 \(sleep\) was killed"):
            await job.result()


async def test_call_whose_interpreter_leaves_no_result_says_so(workdir: Path) -> None:
    async with Xqueue(workdir=workdir, error_strategy="ignore") as q:
        job = await q.submit_call(t.square, [2], python="/bin/false")
        with pytest.raises(CallError) as info:
            await job.result()
    message = str(info.value)
    assert "job 0 (square) failed with return code 1" in message
    assert "left no result" in message and job.stderr_path in message


async def test_interpreter_comes_from_the_option_or_the_call(workdir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "used"
    wrapper = tmp_path / "python-wrapper"
    await anyio.Path(wrapper).write_text(
        f'#!/bin/sh\necho "$3" >> {marker}\nexec {sys.executable} "$@"\n'
    )
    await anyio.Path(wrapper).chmod(0o755)
    async with Xqueue(workdir=workdir, scheduler_opts={"python": str(wrapper)}) as q:
        through_option = await q.submit(t.square, 5)
        direct = await q.submit_call(t.square, [6], python=sys.executable)
        assert (await through_option.result(), await direct.result()) == (25, 36)
    assert through_option.command[0] == str(wrapper) and direct.command[0] == sys.executable
    assert await read_text(marker) == through_option.command[3] + "\n"  # only that one used it


async def test_function_of_a_module_on_our_import_path_is_found_where_it_runs(
    workdir: Path, outside_module: ModuleType
) -> None:
    # Pickled by reference (its module is importable here), it is imported by the
    # runner through the import path the call carries.
    async with Xqueue(workdir=workdir) as q:
        job = await q.submit(outside_module.where)
        assert await job.result() == await anyio.to_thread.run_sync(os.getcwd)


async def test_commands_and_calls_share_a_queue(workdir: Path) -> None:
    async with Xqueue(forks=2, workdir=workdir) as q:
        command = await q.feed(["sh", "-c", "echo hi"])
        call = await q.submit(t.square, 9)
        assert await call.result() == 81
    assert command.status is JobStatus.FINISHED and not hasattr(command, "result")


# -- the real SSH servers and clusters ---------------------------------------------------------


async def _run_remote_calls(q: Xqueue, names: tuple[str, ...]) -> tuple[Any, ...]:
    value = await q.submit(t.make_point, 3, "remote")
    env = await q.submit(t.environment, *names)
    raised = await q.submit(t.refuse, 7)
    with pytest.raises(t.Refused) as info:
        await raised.result()
    assert info.value.code == 7 and "in inner_helper_that_raises" in remote_text(info.value)
    assert raised.rc == 1
    return await value.result(), await env.result(), env


@pytest.mark.ssh
async def test_calls_over_ssh(
    ssh_env: dict[str, str], workdir: Path, outside_module: ModuleType
) -> None:
    servers = {"big": server(ssh_env, ssh_env["XQ_SSH_PORT"])}
    opts = {"servers": servers, "poll_interval": 0.2}
    async with Xqueue(
        "ssh", forks=3, workdir=workdir, error_strategy="ignore", scheduler_opts=opts
    ) as q:
        point, env, _ = await _run_remote_calls(q, ("SSH_CONNECTION",))
        where = await (await q.submit(outside_module.where)).result()
    assert point == t.Point(3, ["remote"])
    # It ran in an SSH session (sshd sets SSH_CONNECTION), in a login whose working
    # directory is not ours: a module found only on our import path was found there too.
    assert env["SSH_CONNECTION"] and env["SSH_CONNECTION"].split()[2] == ssh_env["XQ_SSH_HOST"]
    assert where != await anyio.to_thread.run_sync(os.getcwd)


@pytest.fixture
def scancel_after() -> Iterator[list[Job]]:
    yield from remove_after("scancel")


@pytest.fixture
def qdel_after() -> Iterator[list[Job]]:
    yield from remove_after("qdel")


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
async def test_calls_on_slurm(workdir: Path, scancel_after: list[Job]) -> None:
    q = cluster_queue("slurm", SLURM_FAST, workdir, forks=3, error_strategy="ignore")
    try:
        async with q:
            point, env, job = await _run_remote_calls(q, ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"))
    finally:
        scancel_after.extend(q.jobs)
    assert point == t.Point(3, ["remote"])
    # It ran as a Slurm job: the environment slurmd gives it names the job xqueue submitted.
    assert job.jid and job.jid.split("_")[0] in (env["SLURM_JOB_ID"], env["SLURM_ARRAY_JOB_ID"])


@pytest.mark.sge
@pytest.mark.usefixtures("sge_cluster")
async def test_calls_on_sge(workdir: Path, qdel_after: list[Job]) -> None:
    q = cluster_queue("sge", SGE_FAST, workdir, forks=3, error_strategy="ignore")
    try:
        async with q:
            point, env, job = await _run_remote_calls(q, ("JOB_ID",))
    finally:
        qdel_after.extend(q.jobs)
    assert point == t.Point(3, ["remote"])
    assert job.jid and job.jid.split(".")[0] == env["JOB_ID"]


def test_importing_xqueue_does_not_import_cloudpickle() -> None:
    import subprocess

    code = "import sys, xqueue; print('cloudpickle' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_a_call_runs_after_its_dependencies_and_is_skipped_when_one_fails(
    workdir: Path,
) -> None:
    q = Xqueue(workdir=workdir, error_strategy="ignore")
    first = await q.submit(t.sleep, 0.3)
    then = await q.submit_call(t.square, (4,), after=[first])
    bad = await q.submit(t.refuse, 3)
    never = await q.submit_call(t.square, (5,), after=[bad])
    await q.run_until_complete()
    assert await then.result() == 16
    assert first.status is JobStatus.FINISHED and then.status is JobStatus.FINISHED
    assert never.status is JobStatus.SKIPPED and f"job {bad.index}" in never.reason


MAIN_CLASSES = """
import dataclasses, enum, sys, typing
import anyio
from xqueue import Xqueue

@dataclasses.dataclass
class Cfg:
    x: int

class Mode(enum.Enum):
    FAST = 1

class Pair(typing.NamedTuple):
    a: int
    b: str

def step(cfg: Cfg, mode: Mode, pair: Pair, path: str) -> int:
    with open(path, "a") as ledger:
        ledger.write("ran\\n")
    return cfg.x + mode.value + pair.a

async def main() -> None:
    q = Xqueue(workdir=sys.argv[1])
    job = await q.submit(step, Cfg(1), Mode.FAST, Pair(2, "b"), sys.argv[2])
    await q.run_until_complete()
    print(job.reason or "ran", await job.result())

anyio.run(main)
"""


RUN: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 60}


def test_a_call_with_classes_of_main_resumes_in_a_later_process(tmp_path: Path) -> None:
    """cloudpickle sends a ``__main__`` class by value with an id it draws once a
    process: in the digest, it gave the same call another name in every run of the
    script, so the call ran again each time and its folder was moved aside. And lines
    added above its function named it anew."""
    import subprocess

    script, ledger = tmp_path / "main_classes.py", tmp_path / "ledger"
    script.write_text(MAIN_CLASSES)
    argv = [sys.executable, str(script), str(tmp_path / "wd"), str(ledger)]
    outs = [subprocess.run(argv, capture_output=True, text=True, timeout=60) for _ in range(2)]
    assert [o.stdout for o in outs] == ["ran 4\n", "succeeded in an earlier run 4\n"], outs
    assert ledger.read_text() == "ran\n"
    assert not list((tmp_path / "wd").glob("*.replaced-*"))
    # Lines added above the function: the same code, at another line. Its first line
    # number was in the pickle that named the call, and every call ran again.
    script.write_text("# a comment\n\n" + MAIN_CLASSES)
    shifted = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert shifted.stdout == "succeeded in an earlier run 4\n", shifted
    # The script by another path, or renamed: cloudpickle sends its __file__ (as typed)
    # with the function's module name, and every call ran again.
    renamed = tmp_path / "renamed.py"
    renamed.write_bytes(script.read_bytes())
    for path in (f"./{script.name}", renamed.name):
        moved = subprocess.run([sys.executable, path, *argv[2:]], **RUN, cwd=tmp_path)
        assert moved.stdout == "succeeded in an earlier run 4\n", (path, moved)
    # Its code changed: run again.
    script.write_text(MAIN_CLASSES.replace("+ pair.a", "+ pair.a * 10"))
    changed = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert changed.stdout == "ran 22\n", changed
    assert ledger.read_text() == "ran\nran\n"


async def test_a_call_that_cannot_be_loaded_where_it_runs_is_a_call_error(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function of a module loaded from a file by hand (in sys.modules, but not on any
    import path) is pickled by reference and cannot be imported by the runner. result()
    raised the runner's ModuleNotFoundError as if the function had raised it."""
    source = tmp_path / "xq_by_hand.py"
    await anyio.Path(source).write_text("def task(x):\n    return x\n")
    spec = importlib.util.spec_from_file_location("xq_by_hand", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "xq_by_hand", module)
    await anyio.to_thread.run_sync(spec.loader.exec_module, module)
    async with Xqueue(workdir=workdir, error_strategy="ignore") as q:
        job = await q.submit(module.task, 1)
    with pytest.raises(CallError, match="could not be loaded where it ran") as info:
        await job.result()
    assert "ModuleNotFoundError" in str(info.value)
    assert "xq_by_hand" in remote_text(info.value)


def returns_what_cannot_load() -> Any:
    class Unloadable:
        def __reduce__(self) -> Any:
            return (int, ("not a number",))  # pickled fine; int("not a number") on load

    return Unloadable()


async def test_a_return_value_that_cannot_be_loaded_is_not_named_by_the_load_error(
    workdir: Path,
) -> None:
    """The message said "the call returned a ValueError": the loading's error, named as
    if it were what the call returned."""
    async with Xqueue(workdir=workdir, error_strategy="ignore") as q:
        job = await q.submit(returns_what_cannot_load)
    with pytest.raises(CallError, match="return value cannot be loaded here") as info:
        await job.result()
    assert "returned a ValueError" not in str(info.value)
    assert "ValueError: invalid literal for int()" in str(info.value)


async def test_an_async_function_is_refused_at_submit(workdir: Path) -> None:
    """It was accepted, run, and failed: its coroutine came back unrun and unpicklable."""

    async def fetch() -> int:
        return 1

    class Handler:
        async def __call__(self) -> int:
            return 2

    def numbers() -> Any:
        yield 1

    async def later() -> Any:
        yield 2

    q = Xqueue(workdir=workdir)
    for fn in (fetch, Handler()):
        with pytest.raises(ConfigError, match="is an async function"):
            await q.submit(fn)
    # Accepted, run, and failed in the job: "the return value (generator) cannot be pickled"
    for gen in (numbers, later):
        with pytest.raises(ConfigError, match="is a generator function"):
            await q.submit(gen)
    assert q.jobs == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # its tasks start in order
async def test_calls_submitted_at_once_are_numbered_in_the_order_submitted(
    workdir: Path,
) -> None:
    # Numbered once their pickle was staged (in a worker thread), a big argument made a
    # call come later; the order changed from run to run, so a resumed run took calls
    # for other ones and ran them again, moving their folders aside.
    async def each_run() -> tuple[list[int], int]:
        jobs: dict[int, Job] = {}
        async with Xqueue(workdir=workdir, forks=4, handle_signals=False) as q:

            async def submit(i: int) -> None:
                jobs[i] = await q.submit(t.combine, i, extra=bytes(4_000_000 if i % 3 == 0 else 8))

            async with anyio.create_task_group() as tg:
                for i in range(9):
                    tg.start_soon(submit, i)
        ran = sum(job.reason != "succeeded in an earlier run" for job in jobs.values())
        return [jobs[i].index for i in range(9)], ran

    assert await each_run() == (list(range(9)), 9)
    assert await each_run() == (list(range(9)), 0)
    assert not [p async for p in anyio.Path(workdir).glob("*.replaced-*")]


async def test_a_changed_function_of_a_module_runs_again_on_resume(
    workdir: Path, outside_module: ModuleType
) -> None:
    # cloudpickle sends a module's function by name: its fixed body left the call's
    # digest as it was, and a resumed run handed back the result of the old code.
    source = anyio.Path(outside_module.__file__ or "")
    base = "import os\n\ndef where():\n    return os.getcwd()\n\ndef compute(x):\n"

    async def each_run(body: str) -> tuple[Any, str]:
        await source.write_text(base + body)
        importlib.invalidate_caches()
        module = importlib.reload(outside_module)
        async with Xqueue(workdir=workdir, handle_signals=False) as q:
            job = await q.submit(module.compute, 10)
        return await job.result(), job.reason

    assert await each_run("    return x + 1\n") == (11, "")
    assert await each_run("    return x * 100\n") == (1000, "")
    assert await each_run("    return x * 100\n") == (1000, "succeeded in an earlier run")
    # Its line numbers are not its code: a line added above it changes nothing.
    base = "# a comment\n" + base
    assert await each_run("    return x * 100\n") == (1000, "succeeded in an earlier run")
