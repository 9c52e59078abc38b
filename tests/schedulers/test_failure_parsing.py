"""Failure classes read from Slurm's and SGE's own words, captured from the clusters of
ci/ (outputs/): a job over its ``--time``, one Slurm killed for its ``--mem``
(``slurm_log_memory_kill.txt`` is that job's Slurm output), one SGE killed at ``h_rt``."""

from __future__ import annotations

from pathlib import Path

import pytest

from xqueue import FailureClass, Job
from xqueue.schedulers import _sge_parse as sge
from xqueue.schedulers import _slurm_parse as slurm
from xqueue.schedulers.slurm import SlurmScheduler
from xqueue.states import JobStatus

OUT = Path(__file__).parent / "outputs"


def read(name: str) -> str:
    return (OUT / name).read_text()


def test_slurm_timeout_and_memory_kill_as_squeue_and_sacct_report_them() -> None:
    rows = slurm.parse_squeue(read("slurm_squeue_limits.txt"))
    timeout = slurm.terminal_state(rows["14719"])
    assert timeout is not None and timeout.status is JobStatus.FAILED
    assert timeout.failure is FailureClass.TIMEOUT
    # Killed by the accounting poll: a plain FAILED, whose rc file (or sacct) decides.
    assert rows["14717"].state in slurm.ENDED and slurm.terminal_state(rows["14717"]) is None
    acct = slurm.parse_sacct(read("slurm_sacct_limits.txt"))
    killed = slurm.accounting_state(acct["14717"])
    assert killed is not None and killed.rc == 128 + 9 and killed.failure is None
    timeout = slurm.accounting_state(acct["14719"])
    assert timeout is not None and timeout.failure is FailureClass.TIMEOUT


def test_slurm_memory_kill_is_told_by_its_output() -> None:
    line = slurm.memory_kill(read("slurm_log_memory_kill.txt"))
    assert line is not None
    assert "StepId=14717.batch exceeded memory limit (329953280 > 104857600)" in line
    assert slurm.memory_kill(read("slurm_log_time_limit.txt")) is None
    assert slurm.memory_kill("slurmstepd: error: Detected 1 oom-kill event(s) in StepId=3")


@pytest.mark.parametrize(
    ("state", "failure"),
    [
        ("OUT_OF_MEMORY", FailureClass.OOM),
        ("PREEMPTED", FailureClass.PREEMPTED),
        ("NODE_FAIL", FailureClass.NODE_FAIL),
        ("BOOT_FAIL", FailureClass.NODE_FAIL),
        ("DEADLINE", FailureClass.KILLED),
        ("CANCELLED", FailureClass.KILLED),
    ],
)
def test_slurm_states_map_to_classes(state: str, failure: FailureClass) -> None:
    verdict = slurm.terminal_state(slurm.SlurmRow(state, "", "0:9"))
    assert verdict is not None and verdict.failure is failure


def test_a_return_code_slurm_explains_keeps_slurms_class(tmp_path: Path) -> None:
    # cgroups kill the step's program, the wrapper still writes 137; Slurm says why.
    job = Job(0, ["true"], dir=str(tmp_path))
    job.attempt = 1
    (tmp_path / "job.1.rc").write_text("137\n")
    scheduler = SlurmScheduler()
    oom = slurm.terminal_state(slurm.SlurmRow("OUT_OF_MEMORY", "", "0:9"))
    state = scheduler.reconcile(job, False, oom)
    assert state.status is JobStatus.FAILED and state.rc == 137
    assert state.failure is FailureClass.OOM and "OUT_OF_MEMORY" in state.reason
    # Cancelled from outside while its wrapper still wrote the code the SIGTERM left:
    # the cancel explains it (it was a plain NONZERO_EXIT, and retried).
    cancelled = slurm.terminal_state(slurm.SlurmRow("CANCELLED", "by 0", "0:15"))
    killed = scheduler.reconcile(job, False, cancelled)
    assert killed.rc == 137 and killed.failure is FailureClass.KILLED
    assert killed.reason.startswith("cancelled in Slurm")
    assert killed.retryable == cancelled.retryable
    (tmp_path / "job.1.rc").write_text("0\n")
    assert scheduler.reconcile(job, False, oom).status is JobStatus.FINISHED


def test_sge_h_rt_kill_is_a_timeout() -> None:
    record = sge.parse_qacct(read("sge_qacct_h_rt.txt"))["4246"]
    assert record.wallclock == 5 and record.category == "-l h_rt=5"
    assert record.maxvmem_mb == pytest.approx(3.367)
    state = sge.accounting_state(record)
    assert state.status is JobStatus.FAILED and state.rc == 137
    assert state.failure is FailureClass.TIMEOUT
    assert state.reason == "timed out after 5 s (SGE h_rt)"


def test_sge_failed_37_is_told_apart_by_the_records_numbers() -> None:
    failed = "37  : qmaster enforced h_rt, h_cpu, or h_vmem limit"
    memory = sge.QacctRecord(137, failed, 2, 150.0, "-l h_rt=60,h_vmem=100M")
    oom = sge.accounting_state(memory)
    assert oom.failure is FailureClass.OOM and "h_vmem of 100 MiB" in oom.reason
    cpu = sge.accounting_state(sge.QacctRecord(137, failed, 2, 5.0, "-l h_cpu=1,h_rt=60"))
    assert cpu.status is JobStatus.FAILED and cpu.failure is FailureClass.KILLED
    deleted = sge.accounting_state(sge.QacctRecord(137, "100 : assumedly after job"))
    assert deleted.status is JobStatus.KILLED  # qdel: the engine's KILLED class
