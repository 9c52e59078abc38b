"""xqueue's own options and a batch system's native flags share ``scheduler_opts``:
``xq_<option>`` is always xqueue's, ``native`` / ``native.<flag>`` always the system's,
a bare key xqueue's when it names one of its options (as before), else native."""

from __future__ import annotations

import textwrap
from pathlib import Path

import anyio
import pytest

from tests.helpers import SGE_FAST, cluster_queue
from xqueue import JobStatus, SchedulerOptionError, Xqueue
from xqueue.cli.commands import parse_options
from xqueue.schedulers.local import LocalScheduler
from xqueue.schedulers.sge import SgeScheduler, _argv_flags, qsub_options
from xqueue.schedulers.slurm import SlurmScheduler, sbatch_options


def test_a_bare_key_is_xqueues_when_it_names_an_option_else_native() -> None:
    sge = SgeScheduler(pe="smp", q="all.q", poll_interval=0.5)
    assert (sge.options.pe, sge.options.poll_interval) == ("smp", 0.5)
    assert sge.options.extra == {"q": "all.q"}


def test_native_flags_reach_the_system_under_a_name_xqueue_also_uses() -> None:
    # SGE's own -pe, which the bare key "pe" (xqueue's parallel environment) cannot give.
    sge = SgeScheduler(pe="mpi", native={"pe": "smp 4", "q": "all.q"})
    assert sge.options.pe == "mpi" and sge.options.extra == {"pe": "smp 4", "q": "all.q"}
    flags = _argv_flags(qsub_options(None, sge.options.pe, sge.options.extra))
    assert flags == ["-pe", "smp", "4", "-q", "all.q"]
    # The CLI's and TOML's spelling: native.<flag>, or the mapping as JSON.
    for opts in ({"native.pe": "smp 4"}, parse_options(['native={"pe": "smp 4"}'])):
        assert SgeScheduler(**opts).options.extra == {"pe": "smp 4"}
    # A later native value for a flag wins, as any later option does.
    later = SgeScheduler(**{"native": {"pe": "smp 1", "q": "a"}, "native.pe": "smp 2"})
    assert later.options.extra == {"pe": "smp 2", "q": "a"}


def test_xq_prefix_is_always_xqueues_own() -> None:
    slurm = SlurmScheduler(xq_poll_interval="0.25", **{"xq-vanish-grace": 3}, partition="p")
    assert (slurm.options.poll_interval, slurm.options.vanish_grace) == (0.25, 3.0)
    assert sbatch_options(None, slurm.options.extra) == {"partition": "p"}
    # Never passed through: a typo is caught even where unknown keys are native flags.
    with pytest.raises(SchedulerOptionError, match="does not accept option 'xq_partition'"):
        SlurmScheduler(xq_partition="p")


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"native": {"x": 1}}, "takes no native flags"),
        ({"native.x": 1}, "takes no native flags"),
    ],
)
def test_a_scheduler_without_native_flags_refuses_them(
    opts: dict[str, object], message: str
) -> None:
    with pytest.raises(SchedulerOptionError, match=message):
        LocalScheduler(**opts)


@pytest.mark.parametrize("value", [["pe"], "not json", '["pe"]', 7])
def test_native_must_be_a_mapping(value: object) -> None:
    with pytest.raises(SchedulerOptionError, match="must map flags to values"):
        SgeScheduler(native=value)


def test_native_dot_must_name_a_flag() -> None:
    with pytest.raises(SchedulerOptionError, match="names no flag"):
        SgeScheduler(**{"native.": "x"})


def test_native_tables_of_profiles_add_up_flag_by_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "xqueue.toml").write_text(
        textwrap.dedent(
            """
            [profiles.sge.default.native]
            pe = "smp 2"
            q = "all.q"
            [profiles.sge.big]
            xq_poll_interval = 0.5
            native = {pe = "smp 8"}
            """
        )
    )
    q = Xqueue("sge", workdir=tmp_path / "wd", profile="big", scheduler_opts={"native.p": -5})
    options = q.scheduler.options
    assert options.extra == {"pe": "smp 8", "q": "all.q", "p": -5}
    assert options.poll_interval == 0.5


@pytest.mark.anyio
@pytest.mark.sge
@pytest.mark.usefixtures("sge_cluster")
async def test_sge_gets_its_own_pe_flag_through_native(workdir: Path) -> None:
    # This SGE has no parallel environment: qsub's refusal names the one it was given,
    # proof that the native -pe reached it rather than xqueue's pe option.
    opts = {"pe": "mpi", "native": {"pe": "xqnative 2"}}
    q = cluster_queue("sge", SGE_FAST, workdir, error_strategy="ignore", scheduler_opts=opts)
    job = await q.feed(["true"], resources={"cpus": 2})
    with anyio.fail_after(30):
        await q.run_until_complete()
    assert job.status is JobStatus.FAILED and job.jid is None
    assert "xqnative" in job.reason and "mpi" not in job.reason, job.reason
