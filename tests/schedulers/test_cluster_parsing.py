"""Slurm and SGE parsers on output captured from the real clusters of ci/ (see outputs/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xqueue.schedulers import _sge_parse as sge
from xqueue.schedulers import _slurm_parse as slurm
from xqueue.schedulers._cluster import hms, long_options, short_options
from xqueue.states import JobStatus

OUT = Path(__file__).parent / "outputs"


def read(name: str) -> str:
    return (OUT / name).read_text()


def test_sbatch_parsable_id() -> None:
    assert slurm.parse_jobid("13\n") == "13"
    assert slurm.parse_jobid("13;cluster\n") == "13"


def test_squeue_lists_array_elements_and_pending_reasons() -> None:
    rows = slurm.parse_squeue(read("slurm_squeue_pending.txt"))
    assert rows["1330_0"] == slurm.SlurmRow("RUNNING", "None")
    assert rows["1330_3"] == slurm.SlurmRow("PENDING", "JobArrayTaskLimit")
    assert rows["1328"].state in slurm.ENDED
    never = slurm.terminal_state(rows["1329"])
    assert never is not None and never.status is JobStatus.FAILED and not never.retryable
    assert slurm.terminal_state(rows["1330_3"]) is None


def test_squeue_all_states_of_ended_jobs() -> None:
    rows = slurm.parse_squeue(read("slurm_squeue_all.txt"))
    cancelled = slurm.terminal_state(rows["4"])
    assert cancelled is not None and cancelled.status is JobStatus.KILLED
    never = slurm.terminal_state(rows["8"])  # cancelled by --kill-on-invalid-dep
    assert never is not None and never.status is JobStatus.FAILED
    assert "dependency can never be satisfied" in never.reason
    assert slurm.terminal_state(rows["13"]) is None  # COMPLETED: the rc file decides


def test_sacct_states_and_exit_codes() -> None:
    rows = slurm.parse_sacct(read("slurm_sacct.txt"))
    assert rows["4"] == slurm.SlurmRow("CANCELLED", "by 0", "0:0")
    failed = slurm.accounting_state(rows["14_2"])
    assert failed is not None and failed.status is JobStatus.FAILED and failed.rc == 3
    ok = slurm.accounting_state(rows["14_0"])
    assert ok is not None and ok.status is JobStatus.FINISHED and ok.rc == 0
    killed = slurm.accounting_state(rows["14_5"])
    assert killed is not None and killed.status is JobStatus.KILLED
    assert slurm.exit_status("0:15") == 143


def test_scontrol_show_config() -> None:
    config = slurm.parse_config(read("slurm_show_config.txt"))
    assert config["MaxArraySize"] == "1001"
    assert config["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert config["MinJobAge"] == "600 sec"


def test_qsub_terse_ids() -> None:
    assert sge.parse_qsub("9\n") == "9"
    assert sge.parse_qsub("10.1-4:1\n") == "10"


def test_qstat_xml_running_and_pending_tasks() -> None:
    states = sge.parse_qstat_xml(read("sge_qstat_array.xml"))
    assert states == {"9": "t", "10.1": "t", "10.2": "t", "10.3": "qw", "10.4": "qw"}
    assert all(sge.held(s) for s in states.values())
    names = sge.parse_qstat_names(read("sge_qstat_array.xml"))
    assert names["10.4"] == "s.sh"
    assert sge.parse_qstat_xml(read("sge_qstat_empty.xml")) == {}
    assert sge.expand_tasks("3,5-9:2") == [3, 5, 7, 9]


def test_qstat_error_state_and_its_reason() -> None:
    states = sge.parse_qstat_xml(read("sge_qstat_eqw.xml"))
    assert "Eqw" in states.values() and not sge.held("Eqw")
    reason = sge.parse_error_reason(read("sge_qstat_j_eqw.txt"))
    assert 'can\'t open output file "/nonexistent/dir/x.log"' in reason


def test_qacct_array_records() -> None:
    records = sge.parse_qacct(read("sge_qacct_array.txt"))
    assert records["14.2"].exit_status == 3
    state = sge.accounting_state(records["14.2"])
    assert state.status is JobStatus.FAILED and state.rc == 3
    assert sge.accounting_state(records["14.1"]).status is JobStatus.FINISHED
    killed = sge.accounting_state(sge.QacctRecord(137, "100 : assumedly after job"))
    assert killed.status is JobStatus.KILLED


def test_option_rendering() -> None:
    opts = {"exclusive": True, "requeue": False, "x": None, "constraint": ["a", "b"], "n": 2}
    assert long_options(opts) == ["--exclusive", "--constraint=a", "--constraint=b", "--n=2"]
    assert short_options({"cwd": True, "l": ["a=1", "b=2"], "q": "all.q"}) == [
        "-cwd", "-l", "a=1", "-l", "b=2", "-q", "all.q",
    ]  # fmt: skip
    assert hms(90061) == "1-01:01:01" and hms(420) == "00:07:00"


def test_array_elements_cancelled_before_they_were_split_off() -> None:
    # squeue -r lists them under the array's own record; sacct as a bracketed range.
    rows = slurm.parse_squeue(read("slurm_squeue_cancelled_array.txt"))
    element = slurm.lookup(rows, "4678_3")
    assert element is not None and element.state == "CANCELLED"
    state = slurm.terminal_state(element)
    assert state is not None and state.reason == "cancelled in Slurm"  # no stale reason
    acct = slurm.parse_sacct(read("slurm_sacct_cancelled_array.txt"))
    assert sorted(acct) == ["4678_0", "4678_1", "4678_2", "4678_3"]
    state = slurm.accounting_state(acct["4678_2"])
    assert state is not None and state.reason == "cancelled in Slurm (by 0)"
    assert slurm.expand_ids("7_[1,3-4%2]") == ["7_1", "7_3", "7_4"]
    assert slurm.lookup(rows, "999_1") is None


@pytest.mark.parametrize(
    ("sizes", "budget", "expected"),
    [
        ([1000], 100, [100]),
        ([500, 500], 100, [50, 50]),
        ([900, 100], 100, [89, 11]),  # each gets 1, the rest in proportion to what is left
        ([3, 3, 3], 5, [2, 2, 1]),
        ([10, 4], 100, [10, 4]),  # fits: no throttle needed
        ([50, 50, 50], 3, [1, 1, 1]),
    ],
)
def test_array_throttles_share_forks(sizes: list[int], budget: int, expected: list[int]) -> None:
    from xqueue.schedulers._forks import split_throttle

    assert split_throttle(sizes, budget) == expected
    assert sum(expected) <= max(budget, len(sizes))
