"""Hooks and plugins: order, async and sync implementations, vetoes, failures."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from tests.helpers import Recorder, reap_lingering_shepherds
from tests.procs import job_processes
from xqueue import ConfigError, Job, JobStatus, PluginError, Xqueue, hookimpl
from xqueue.engine import KillOutcome

pytestmark = pytest.mark.anyio

LIFECYCLE = [
    "on_job_init",
    "on_job_queued",
    "on_job_submitting",
    "on_job_submitted",
    "on_job_started",
]


async def test_hooks_fire_in_lifecycle_order(workdir: Path) -> None:
    rec = Recorder()
    q = Xqueue(workdir=workdir, plugins=[rec], error_strategy="ignore")
    await q.feed(["true"])
    await q.feed("exit 2")
    await q.run_until_complete()
    assert rec.calls[0] == ("on_job_init", 0)
    assert ("on_init", None) in rec.calls
    assert rec.calls[-1] == ("on_shutdown:complete", None)
    assert rec.for_job(0) == [*LIFECYCLE, "on_job_succeeded"]
    assert rec.for_job(1) == [*LIFECYCLE, "on_job_failed"]


async def test_retrying_hook_and_requeue(workdir: Path) -> None:
    rec = Recorder()
    q = Xqueue(workdir=workdir, plugins=[rec], error_strategy="retry", num_retries=1)
    await q.feed("exit 2")
    await q.run_until_complete()
    assert rec.for_job(0) == [
        *LIFECYCLE,
        "on_job_retrying",
        *LIFECYCLE[1:],
        "on_job_failed",
    ]


async def test_module_style_plugin_with_async_hooks(workdir: Path) -> None:
    seen: list[tuple[str, Any]] = []

    class Plugin:
        @hookimpl
        async def on_job_succeeded(self, job: Job, xqueue: Xqueue) -> None:
            await anyio.lowlevel.checkpoint()
            seen.append((job.name, xqueue.forks))

    q = Xqueue(workdir=workdir, plugins=[Plugin()], forks=2)
    await q.feed(["true"], name="a")
    await q.run_until_complete()
    assert seen == [("a", 2)]


async def test_submission_veto_skips_the_job_without_hanging(workdir: Path) -> None:
    class Veto:
        @hookimpl
        def on_job_submitting(self, job: Job) -> bool:
            return job.index != 1

    q = Xqueue(workdir=workdir, plugins=[Veto()])
    jobs = [await q.feed(["true"]) for _ in range(3)]
    with anyio.fail_after(10):
        await q.run_until_complete()
    assert [j.status for j in jobs] == [JobStatus.FINISHED, JobStatus.SKIPPED, JobStatus.FINISHED]
    assert "vetoed by plugin" in jobs[1].reason


async def test_kill_veto_leaves_job_running_to_completion(workdir: Path) -> None:
    class NoKill:
        @hookimpl
        def on_job_killing(self) -> bool:
            return False

    # The job runs until the test lets it end: a fixed sleep would let a slow machine
    # ask the kill while the job is still queued (killed, no veto asked) or already over.
    go = workdir.parent / "go"
    async with Xqueue(workdir=workdir, plugins=[NoKill()]) as q:
        job = await q.feed(["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done"])
        with anyio.fail_after(10):
            while job.status is not JobStatus.RUNNING:
                await anyio.sleep(0.02)
        assert await q.kill(job) is False
        # Why, as `xqueue cancel` says it: the veto, not "a kill is under way".
        assert await q._engine.kill_outcome(job) is KillOutcome.VETOED
        await anyio.sleep(0.2)  # a kill let through would have ended it by now
        assert job.status is JobStatus.RUNNING
        await anyio.Path(go).touch()
        with anyio.fail_after(10):
            await job.wait()
    assert job.status is JobStatus.FINISHED


async def test_failing_plugin_is_named_and_does_not_hang(workdir: Path) -> None:
    class Broken:
        @hookimpl
        def on_job_submitted(self, job: Job) -> None:
            raise RuntimeError("boom")

    q = Xqueue(workdir=workdir, plugins=[Broken()])
    job = await q.feed(["sleep", "30"])
    with anyio.fail_after(10), pytest.raises(PluginError) as info:
        await q.run_until_complete()
    assert info.value.hook == "on_job_submitted"
    assert "Broken" in info.value.plugin
    assert "boom" in str(info.value)
    assert job.status is JobStatus.KILLED


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() tells them apart")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio's Cancelled cannot be raised so
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_cancellation_a_hook_raises_of_its_own_is_its_error(
    workdir: Path, kind: str
) -> None:
    """A hook that awaits a future someone else cancelled (a closed client's) raises
    CancelledError while nothing cancels the run: it ended run_until_complete() with a
    bare CancelledError naming no plugin, which the caller took for its own task's
    cancellation. It is the plugin's error, as any other it raises."""
    import asyncio

    class Notifier:
        @hookimpl
        def on_job_succeeded(self, job: Job) -> Any:
            if kind == "sync":
                raise asyncio.CancelledError
            return self.notify()

        async def notify(self) -> None:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future

    q = Xqueue(workdir=workdir, plugins=[Notifier()])
    await q.feed(["true"])
    with anyio.fail_after(10), pytest.raises(PluginError) as info:
        await q.run_until_complete()
    assert info.value.hook == "on_job_succeeded" and "Notifier" in info.value.plugin
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_hook_that_exits_or_is_interrupted_stops_the_run_cleanly(
    workdir: Path, raised: type[BaseException], kind: str
) -> None:
    """sys.exit() in a hook (or Ctrl-C landing in a slow one) escaped the engine's
    handling of plugin errors: its stop was cut short, the jobs ran on, recorded
    running for good, and job.wait() hung. The run now stops as for any plugin error,
    then raises the plugin's own SystemExit or KeyboardInterrupt."""

    class Exits:
        @hookimpl
        def on_job_started(self, job: Job) -> None:
            if job.index == 0:
                raise raised("leave")

    class ExitsAsync:
        @hookimpl
        async def on_job_started(self, job: Job) -> None:
            await anyio.lowlevel.checkpoint()
            if job.index == 0:
                raise raised("leave")

    q = Xqueue(workdir=workdir, forks=3, plugins=[Exits() if kind == "sync" else ExitsAsync()])
    jobs = [await q.feed(["sleep", "30"]) for _ in range(3)]
    with anyio.fail_after(20), pytest.raises(raised):
        await q.run_until_complete()
    assert [j.status for j in jobs] == [JobStatus.KILLED] * 3
    assert not await anyio.to_thread.run_sync(job_processes, workdir)
    with anyio.fail_after(5):
        await jobs[0].wait()  # it ended: nothing waits for ever


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_failing_plugin_does_not_keep_the_others_from_the_event(
    workdir: Path, kind: str
) -> None:
    """The first plugin's error stops the run, but every other plugin still hears that
    event and the ones the stop brings (the event stream records the job killed and the
    run stopped): the next plugin, and the built-in event stream, used to miss them."""
    heard: list[str] = []

    class Broken:
        if kind == "sync":

            @hookimpl
            def on_job_started(self, job: Job) -> None:
                raise RuntimeError("boom")

            @hookimpl
            def on_shutdown(self) -> None:
                raise RuntimeError("boom again")

        else:

            @hookimpl
            async def on_job_started(self, job: Job) -> None:
                raise RuntimeError("boom")

            @hookimpl
            async def on_shutdown(self) -> None:
                raise RuntimeError("boom again")

    class Listener:
        @hookimpl
        def on_job_started(self, job: Job) -> None:
            heard.append("started")

        @hookimpl
        def on_job_killed(self, job: Job) -> None:
            heard.append("killed")

        @hookimpl
        async def on_shutdown(self) -> None:
            heard.append("shutdown")

    q = Xqueue(workdir=workdir, plugins=[Listener(), Broken()])  # Broken is called first
    job = await q.feed(["sleep", "30"])
    with anyio.fail_after(20), pytest.raises(PluginError, match="boom") as info:
        await q.run_until_complete()
    assert info.value.hook == "on_job_started"
    assert job.status is JobStatus.KILLED
    assert heard == ["started", "killed", "shutdown"]
    events = (await anyio.Path(workdir / "events.jsonl").read_text()).splitlines()
    assert '"event": "job_killed"' in events[-2] and '"event": "run_stopped"' in events[-1]


@pytest.mark.parametrize("live", [False, True], ids=["before-the-run", "in-the-run"])
async def test_a_failing_on_job_init_stops_the_run_and_nothing_waits(
    workdir: Path, live: bool
) -> None:
    """``feed()`` raised the hook's error, but the job stayed listed, in INIT, handed to
    no one: the run then waited for it for ever."""

    class Broken:
        @hookimpl
        def on_job_init(self, job: Job) -> None:
            if job.index == 1:
                raise RuntimeError("init boom")

    q = Xqueue(workdir=workdir, plugins=[Broken()])
    with anyio.fail_after(20):
        if live:
            with pytest.raises(PluginError, match="init boom"):  # the run's, at the end
                async with q:
                    await q.feed(["sleep", "30"])
                    with pytest.raises(PluginError, match="init boom"):
                        await q.feed(["true"])
                    await q.stop_feeding()
        else:
            await q.feed(["sleep", "30"])
            with pytest.raises(PluginError, match="init boom"):
                await q.feed(["true"])
            with pytest.raises(PluginError, match="init boom"):
                await q.run_until_complete()
    assert [job.status for job in q.jobs] == [JobStatus.KILLED] * 2


async def test_a_feed_cancelled_in_its_hooks_leaves_a_job_the_run_runs(workdir: Path) -> None:
    """Cancelled while an async ``on_job_init`` ran, ``feed()`` left its job in INIT and
    the run waited for it for ever; the job is listed, so it is run."""

    class Slow:
        @hookimpl
        async def on_job_init(self, job: Job) -> None:
            if job.index == 1:
                await anyio.sleep(30)

    q = Xqueue(workdir=workdir, plugins=[Slow()])
    await q.feed(["true"])
    with anyio.move_on_after(0.2):
        await q.feed(["true"])
    assert len(q.jobs) == 2
    with anyio.fail_after(20):
        await q.run_until_complete()
    assert [job.status for job in q.jobs] == [JobStatus.FINISHED] * 2


async def test_on_job_submitting_finds_the_job_folder_made(workdir: Path) -> None:
    """A plugin that writes into ``job.dir`` at submission (as xqute-based frameworks
    do) failed the job: folders were made after that hook."""

    class Meta:
        @hookimpl
        async def on_job_submitting(self, job: Job) -> None:
            await anyio.Path(job.dir, "meta.json").write_text(f'{{"index": {job.index}}}')

    q = Xqueue(workdir=workdir, plugins=[Meta()], forks=2)
    jobs = [await q.feed(["true"]) for _ in range(3)]
    await q.run_until_complete()
    assert [job.status for job in jobs] == [JobStatus.FINISHED] * 3
    for job in jobs:
        assert await anyio.Path(job.dir, "meta.json").read_text() == f'{{"index": {job.index}}}'


@pytest.mark.parametrize("strategy", ["halt", "ignore"])
async def test_a_raising_on_job_submitting_stops_the_run_with_its_error(
    workdir: Path, strategy: str
) -> None:
    """Under halt, the job's failure came first and the run raised JobFailedError, naming
    a stderr file that does not exist; the plugin's error was only logged."""

    class Broken:
        @hookimpl
        def on_job_submitting(self, job: Job) -> None:
            raise RuntimeError("submit boom")

    q = Xqueue(workdir=workdir, plugins=[Broken()], error_strategy=strategy)
    await q.feed(["true"])
    with anyio.fail_after(20), pytest.raises(PluginError, match="submit boom"):
        await q.run_until_complete()


async def test_no_job_of_a_batch_starts_once_on_job_submitting_raised(
    workdir: Path, tmp_path: Path
) -> None:
    """One batch: job 0 vetoed, job 1 allowed, job 2's hook raises. Job 1 was both
    failed with the plugin's error and submitted: it ran, untracked, recorded killed."""
    ran = tmp_path / "ran"

    class Mixed:
        @hookimpl
        def on_job_submitting(self, job: Job) -> bool | None:
            if job.index == 2:
                raise RuntimeError("submit boom")
            return job.index != 0

    q = Xqueue(workdir=workdir, plugins=[Mixed()], forks=3, error_strategy="ignore")
    jobs = [await q.feed(f"echo {i} >> {ran}") for i in range(3)]
    with anyio.fail_after(20), pytest.raises(PluginError, match="submit boom"):
        await q.run_until_complete()
    assert not await anyio.Path(ran).exists()
    assert jobs[0].status is JobStatus.SKIPPED
    assert [job.status for job in jobs[1:]] == [JobStatus.KILLED] * 2, jobs


@pytest.mark.parametrize("hook", ["on_job_submitting", "on_jobcmd_init"])
async def test_a_hook_raising_for_one_job_of_a_batch_blames_that_job_only(
    workdir: Path, hook: str
) -> None:
    """Every job of the batch was said to have failed its submission with the plugin's
    error (a warning and a note in its stderr each): those allowed before it, and those
    whose hook was never called. They are cancelled, as the stop cancels any job not
    submitted yet."""

    def raise_for_job_1(self: object, job: Job) -> None:
        if job.index == 1:
            raise RuntimeError("boom for 1")

    Raising = type("Raising", (), {hook: hookimpl(raise_for_job_1)})
    q = Xqueue(workdir=workdir, plugins=[Raising()], forks=4, error_strategy="ignore")
    jobs = [await q.feed(["sleep", "5"]) for _ in range(4)]
    with anyio.fail_after(20), pytest.raises(PluginError, match="boom for 1"):
        await q.run_until_complete()
    assert [job.status for job in jobs] == [JobStatus.KILLED] * 4
    assert "submission failed: plugin" in jobs[1].reason
    cancelled = "cancelled before it was submitted: the run stopped (error)"
    assert [jobs[i].reason for i in (0, 2, 3)] == [cancelled] * 3
    assert not [i for i in (0, 2, 3) if await anyio.Path(jobs[i].stderr_path).exists()]


async def test_plugin_with_unknown_argument_is_rejected(workdir: Path) -> None:
    class Bad:
        @hookimpl
        def on_job_queued(self, nonsense: int) -> None: ...

    with pytest.raises(ConfigError, match="cannot be registered"):
        Xqueue(workdir=workdir, plugins=[Bad()])


async def test_a_misspelt_hook_is_refused_with_the_hook_it_meant(workdir: Path) -> None:
    """A hook that names no xqueue hook would never be called, and nothing said so."""

    class Typo:
        @hookimpl
        def on_job_succeded(self, job: Job) -> None: ...

    class Own:
        @hookimpl(optionalhook=True)
        def on_my_event(self, job: Job) -> None: ...

    with pytest.raises(ConfigError, match="did you mean 'on_job_succeeded'"):
        Xqueue(workdir=workdir, plugins=[Typo()])
    assert any(n.endswith(".Own") for n in Xqueue(workdir=workdir, plugins=[Own()]).hooks.names())


async def test_a_plugin_class_given_for_its_instance_is_refused_at_once(workdir: Path) -> None:
    """Accepted, its hooks failed at the first submission with "missing 1 required
    positional argument: 'job'"; a class of static hooks is a plugin as it is."""

    class Counter:
        @hookimpl
        def on_job_submitting(self, job: Job) -> None: ...

    class Static:
        @staticmethod
        @hookimpl
        def on_job_submitting(job: Job) -> None: ...

    class Inherits(Counter):
        pass

    for given in (Counter, Inherits):
        with pytest.raises(ConfigError, match=r"is a class: give an instance of it"):
            Xqueue(workdir=workdir, plugins=[given])
    q = Xqueue(workdir=workdir, plugins=[Static, Counter()])
    await q.feed(["true"])
    await q.run_until_complete()


async def test_an_installed_plugin_with_an_unknown_hook_only_warns(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Loaded because it is installed (made for a newer xqueue, say), it must not stop
    every queue in that environment; named by the caller, it is refused."""
    import xqueue.hooks

    class Newer:
        @hookimpl
        def on_job_teleported(self, job: Job) -> None: ...

    class EntryPoint:
        def load(self) -> Any:
            return Newer()

    monkeypatch.delenv("XQUEUE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setattr(xqueue.hooks, "_entry_points", lambda: {"newer": EntryPoint()})
    assert "newer" in Xqueue(workdir=workdir).hooks.names()
    assert "plugin 'newer' implements 'on_job_teleported', which is no xqueue hook" in caplog.text
    with pytest.raises(ConfigError, match="'on_job_teleported', which is no xqueue hook"):
        Xqueue(workdir=workdir, plugins=["newer"])


class _NewWrapper:
    @hookimpl(wrapper=True)
    def on_job_succeeded(self, job: Job) -> Any:
        return (yield)


class _OldWrapper:
    @hookimpl(hookwrapper=True)
    def on_job_submitting(self, job: Job) -> Any:
        yield


class _AsyncGenerator:
    @hookimpl
    async def on_job_started(self, job: Job) -> Any:
        yield


@pytest.mark.parametrize(
    ("plugin", "why"),
    [
        (_NewWrapper(), "'on_job_succeeded' as a hook wrapper"),
        (_OldWrapper(), "'on_job_submitting' as a hook wrapper"),
        (_AsyncGenerator(), "'on_job_started' as a generator"),
    ],
)
async def test_a_hook_that_would_never_run_is_refused(
    workdir: Path, plugin: object, why: str
) -> None:
    """pluggy's wrapper forms and generators were registered without a word: xqueue
    calls a hook and awaits what it returns, so their bodies never ran."""
    with pytest.raises(ConfigError, match=f"implements {why}, which xqueue never runs"):
        Xqueue(workdir=workdir, plugins=[plugin])


async def test_an_installed_plugin_with_a_generator_hook_is_left_out(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Loaded because it is installed, it was only warned about, and its generator hook
    was still called: its answer, a generator, failed every job's check."""
    import xqueue.hooks

    class Checks:
        @hookimpl
        def on_job_checking(self, job: Job) -> Any:
            yield

    class EntryPoint:
        def load(self) -> Any:
            return Checks()

    monkeypatch.delenv("XQUEUE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setattr(xqueue.hooks, "_entry_points", lambda: {"checks": EntryPoint()})
    q = Xqueue(workdir=workdir)
    assert "checks" not in q.hooks.names()
    assert "'on_job_checking' as a generator, which xqueue never runs; the plugin is left" in (
        " ".join(caplog.text.split())
    )
    job = await q.feed(["true"])
    await q.run_until_complete()
    assert job.status is JobStatus.FINISHED


async def test_unknown_entry_point_plugin_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown plugin 'nope'"):
        Xqueue(workdir=tmp_path / "wd", plugins=["nope"])
    assert not await anyio.Path(tmp_path / "wd").exists()  # refused before it was made


async def test_blocking_a_plugin_blocks_it_or_says_why_not(workdir: Path) -> None:
    """``-name`` of a built-in left it on, and of a plugin nobody has was accepted: both
    silently did nothing."""
    q = Xqueue(workdir=workdir, plugins=["-xqueue-events"])
    await q.feed("true")
    await q.run_until_complete()
    assert not await anyio.Path(workdir / "events.jsonl").exists()
    with pytest.raises(ConfigError, match=r"unknown plugin 'nope'.*built in: xqueue-control"):
        Xqueue(workdir=workdir, plugins=["-nope"])
    with pytest.raises(ConfigError, match="'xqueue-control' cannot be blocked"):
        Xqueue(workdir=workdir, plugins=["-xqueue-control"])
    on = Xqueue(workdir=workdir, plugins=["xqueue-events"])  # on already: nothing to add
    assert on.hooks.names().count("xqueue-events") == 1


async def test_two_queues_have_separate_plugins(workdir: Path, tmp_path: Path) -> None:
    a, b = Recorder(), Recorder()
    qa = Xqueue(workdir=tmp_path / "a", plugins=[a])
    qb = Xqueue(workdir=tmp_path / "b", plugins=[b])
    await qa.feed(["true"])
    await qa.run_until_complete()
    assert a.calls and not b.calls
    assert qb.statistics().total == 0


async def test_retrying_hook_sees_the_failed_attempts_rc_and_reason(workdir: Path) -> None:
    seen: list[tuple[int, int | None, str]] = []

    class Watch:
        @hookimpl
        def on_job_retrying(self, job: Job) -> None:
            seen.append((job.attempt, job.rc, job.status.value))

    q = Xqueue(workdir=workdir, plugins=[Watch()], error_strategy="retry", num_retries=1)
    job = await q.feed("exit 7")
    await q.run_until_complete()
    assert [(a, rc) for a, rc, _ in seen] == [(1, 7)]
    assert job.rc == 7 and job.attempt == 2 and job.status is JobStatus.FAILED


def _hung_in(hook: str) -> object:
    """A plugin whose ``hook`` never returns."""

    async def never(self: object, **kwargs: Any) -> None:
        await anyio.sleep_forever()

    if hook == "on_init":

        async def impl(self: object, xqueue: Any) -> None:
            await never(self)
    else:

        async def impl(self: object, job: Job) -> Any:
            await never(self)

    impl.__name__ = hook
    return type("Hung", (), {hook: hookimpl(impl)})()


@pytest.mark.parametrize("hook", ["on_init", "on_job_init", "on_job_submitting"])
async def test_hook_timeout_bounds_every_awaited_hook(workdir: Path, hook: str) -> None:
    """``hook_timeout`` bounds each awaited implementation "instead of hanging the run
    for ever": these three hung the feed or the run whatever it said."""
    q = Xqueue(workdir=workdir, plugins=[_hung_in(hook)], hook_timeout=0.5)
    with anyio.fail_after(10), pytest.raises(PluginError, match=rf"in hook {hook}.*within 0\.5 s"):
        await q.feed(["true"])
        await q.run_until_complete()


async def test_a_kill_asked_by_the_caller_is_bounded_and_stops_the_run_if_its_veto_hangs(
    workdir: Path,
) -> None:
    """``q.kill`` asked every on_job_killing with no bound (a hung veto hung the caller),
    and a veto that failed left the run going with the job running: now the caller
    gets the plugin's error and the run stops, as for any hook's error."""
    q = Xqueue(workdir=workdir, plugins=[_hung_in("on_job_killing")], hook_timeout=0.5)
    job = await q.feed(["sleep", "30"])

    async def run() -> None:
        with pytest.raises(PluginError, match=r"on_job_killing"):  # stopped by the error
            await q.run_until_complete()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while job.status is not JobStatus.RUNNING:
                await anyio.sleep(0.05)
            with pytest.raises(PluginError, match=r"on_job_killing.*within 0\.5 s"):
                await q.kill(job)
    assert job.status is JobStatus.KILLED


async def test_a_job_left_running_by_a_veto_does_not_hold_up_the_stopping_run(
    workdir: Path, tmp_path: Path
) -> None:
    """A halted run whose kill of a job was vetoed leaves it running and returns; it
    waited for the job's end (or 5 s) first, the backend not told to let it go."""
    import contextlib
    import os
    import signal

    from tests.helpers import is_alive, read_text, reap_lingering_shepherds
    from xqueue import JobFailedError

    class Keep:
        @hookimpl
        def on_job_killing(self, job: Job) -> bool:
            return False

    pidfile = tmp_path / "pid"
    q = Xqueue(workdir=workdir, forks=2, plugins=[Keep()])
    left = await q.feed(f"echo $$ > {pidfile}; exec sleep 4")
    await q.feed("sleep 0.5; exit 2")  # fails: the run halts
    with anyio.fail_after(20), pytest.raises(JobFailedError):
        await q.run_until_complete()
    pid = int(await read_text(pidfile))
    try:
        assert await is_alive(pid)  # returned without waiting for it
        assert left.reason.startswith("left running: plugin") and "Keep" in left.reason
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await reap_lingering_shepherds()


async def test_a_vetoed_kill_at_the_time_limit_leaves_the_job_running_with_its_gpu(
    workdir: Path, tmp_path: Path
) -> None:
    """A job past its time limit whose kill a plugin vetoed was settled FAILED at once
    while it ran on: its GPU went to the next job, which ran beside it, and its final
    record made the next run start it again beside itself. It now runs on, holding its
    GPU, and its end settles it: the limit's verdict if it fails (not retried), its own
    success if it exits 0."""
    from xqueue import FailureClass

    class Keep:
        @hookimpl
        def on_job_killing(self, job: Job) -> bool:
            return False

    ledger = tmp_path / "ledger"

    def job(name: str, rc: int) -> str:
        return f"echo {name} start >> {ledger}; sleep 2.5; echo {name} end >> {ledger}; exit {rc}"

    opts = {"gpus": 1}
    kw: dict[str, Any] = {"error_strategy": "retry", "num_retries": 2}
    q = Xqueue(workdir=workdir, forks=4, scheduler_opts=opts, plugins=[Keep()], **kw)
    over = await q.feed(job("A", 1), resources={"gpus": 1, "walltime": 1})
    done = await q.feed(job("B", 0), resources={"gpus": 1, "walltime": 1})
    last = await q.feed(f"echo C start >> {ledger}", resources={"gpus": 1})
    with anyio.fail_after(30):
        await q.run_until_complete()
    lines = (await anyio.Path(ledger).read_text()).split("\n")
    assert lines == ["A start", "A end", "B start", "B end", "C start", ""]  # one GPU at a time
    assert over.status is JobStatus.FAILED and over.attempt == 1
    assert over.failure is FailureClass.TIMEOUT
    assert "timed out" in over.reason and "vetoed the kill" in over.reason
    assert done.status is JobStatus.FINISHED and done.rc == 0
    assert last.status is JobStatus.FINISHED
    # The journal never had A ended while it ran: a resume finds it failed, B done.
    again = Xqueue(workdir=workdir, forks=4, scheduler_opts=opts, num_retries=0)
    fed = [await again.feed(job("A", 1), resources={"gpus": 1, "walltime": 1})]
    fed.append(await again.feed(job("B", 0), resources={"gpus": 1, "walltime": 1}))
    assert fed[1].status is JobStatus.FINISHED  # settled as it was fed


async def test_a_job_left_past_its_limit_killed_by_name_or_by_the_stop_says_so(
    workdir: Path,
) -> None:
    """After a vetoed kill at its time limit, a kill asked for by name ended the job
    KILLED with the limit's reason, and a stop that was vetoed too said the plugin's
    veto twice."""
    vetoes: list[int] = []

    class FirstOnly:  # vetoes each job's first kill only
        @hookimpl
        def on_job_killing(self, job: Job) -> bool:
            vetoes.append(job.index)
            return vetoes.count(job.index) > 1 if job.index == 0 else False

    q = Xqueue(workdir=workdir, forks=3, plugins=[FirstOnly()], error_strategy="halt")
    by_name = await q.feed(["sleep", "20"], resources={"walltime": 1})
    by_stop = await q.feed(["sleep", "20"], resources={"walltime": 1})
    await q.feed("sleep 3; exit 3")  # halts the run: the stop's kill of by_stop is vetoed
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                from xqueue import JobFailedError

                with pytest.raises(JobFailedError):
                    await q.run_until_complete()

            tg.start_soon(run)
            while vetoes.count(0) < 1 or vetoes.count(1) < 1:  # both past their limits
                await anyio.sleep(0.05)
            assert await q.kill(by_name)
            while by_name.status is not JobStatus.KILLED:
                await anyio.sleep(0.05)
    assert by_name.reason == "killed on request"
    assert by_stop.reason.count("vetoed the kill") == 1, by_stop.reason
    assert "timed out" in by_stop.reason
    os.killpg(int(str(by_stop.jid).partition("@")[0]), signal.SIGKILL)
    await reap_lingering_shepherds()


def installed_only(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """The environment's installed plugins are this one entry point, auto-loaded."""
    from importlib.metadata import EntryPoint

    import xqueue.hooks

    entry = EntryPoint(name, value, "xqueue.plugins")
    monkeypatch.delenv("XQUEUE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setattr(xqueue.hooks, "_entry_points", lambda: {name: entry})


@pytest.mark.parametrize(
    ("source", "said"),
    [
        (None, "ModuleNotFoundError"),
        # It ended `xqueue run` with its own exit code and not a word.
        ("import sys\nsys.exit(7)\n", "SystemExit: 7"),
    ],
)
async def test_an_installed_plugin_that_cannot_load_is_named_and_left_out(
    workdir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    source: str | None,
    said: str,
) -> None:
    """A broken installed plugin (its module missing) made every Xqueue(), and so every
    `xqueue run`, fail with a bare ModuleNotFoundError that named no plugin: now one
    loaded because it is installed is left out with a warning naming it, and one the
    caller names is refused with a ConfigError saying which and why."""
    if source is not None:
        await anyio.Path(tmp_path / "xq_broken_plugin.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
    installed_only(monkeypatch, "broken", "xq_broken_plugin:Plugin")
    q = Xqueue(workdir=workdir)
    assert "broken" not in q.hooks.names()
    assert "plugin 'broken' (entry point 'xq_broken_plugin:Plugin') cannot be loaded" in (
        caplog.text
    )
    assert said in caplog.text and "left out" in caplog.text and "-p no:broken" in caplog.text
    await q.feed(["true"])
    await q.run_until_complete()
    with pytest.raises(ConfigError, match=r"plugin 'broken' \(entry point .*cannot be loaded"):
        Xqueue(workdir=workdir, plugins=["broken"])


@pytest.mark.parametrize("hook", ["on_job_submitting", "on_job_started", "on_job_succeeded"])
async def test_a_hook_may_kill_a_job_and_stop_the_feeding(workdir: Path, hook: str) -> None:
    """A hook the run awaits that awaited ``q.kill()`` (or ``stop_feeding()``) waited for
    an answer the run gives only after the hook: the queue froze until hook_timeout, then
    failed with the plugin's TimeoutError. Now the kill is asked for (True) and carried
    out when the hook returns, and feeding is closed."""
    said: list[bool] = []

    async def act(self: object, job: Job) -> None:
        if job.index == 1 and not said:
            said.append(await q.kill(q.jobs[0]))
            await q.stop_feeding()

    act.__name__ = hook
    plugin = type("Killer", (), {hook: hookimpl(act)})()
    q = Xqueue(workdir=workdir, forks=2, plugins=[plugin], hook_timeout=30)
    with anyio.fail_after(20):
        async with q:
            await q.feed(["sleep", "30"])
            await q.feed(["sleep", "0.3"])
    assert said == [True]
    assert [j.status for j in q.jobs] == [JobStatus.KILLED, JobStatus.FINISHED]


async def test_the_run_s_first_and_last_hooks_may_act_on_the_queue(workdir: Path) -> None:
    """on_init and on_shutdown are awaited by the run's own task, outside its loop: a
    kill or stop_feeding there waited for itself as well."""
    said: list[object] = []

    class Acts:
        @hookimpl
        async def on_init(self) -> None:
            said.append(await q.kill(q.jobs[0]))

        @hookimpl
        async def on_shutdown(self) -> None:
            await q.stop_feeding()
            said.append("stopped")

    q = Xqueue(workdir=workdir, plugins=[Acts()], hook_timeout=30)
    await q.feed(["sleep", "30"])
    with anyio.fail_after(20):
        async with q:
            pass
    assert said == [True, "stopped"]
    assert q.jobs[0].status is JobStatus.KILLED


async def test_a_failed_veto_between_runs_does_not_stop_the_next_run(
    workdir: Path, tmp_path: Path
) -> None:
    """``q.kill`` between runs whose on_job_killing raised left a "stop" for the next
    run, which then stopped at once with that old error and killed its jobs."""
    from tests.helpers import reap_lingering_shepherds
    from xqueue import JobFailedError

    calls: list[int] = []

    class Veto:
        @hookimpl
        def on_job_killing(self, job: Job) -> bool | None:
            calls.append(job.index)
            if len(calls) == 1:
                return False  # left running by the halted run
            if len(calls) == 2:
                raise RuntimeError("veto plugin broken once")
            return None

    q = Xqueue(workdir=workdir, forks=2, plugins=[Veto()])
    left = await q.feed(["sleep", "30"])
    await q.feed("sleep 0.3; exit 2")
    with anyio.fail_after(20), pytest.raises(JobFailedError):
        await q.run_until_complete()
    with pytest.raises(PluginError, match="veto plugin broken once"):
        await q.kill(left)
    later = await q.feed(["true"])
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(q.run_until_complete)
            while later.status is not JobStatus.FINISHED:
                assert not left.status.is_final, left.reason  # not stopped by the old error
                await anyio.sleep(0.05)
            assert await q.kill(left)
    assert left.status is JobStatus.KILLED
    await reap_lingering_shepherds()  # the first run's, kept alive by the job it left
