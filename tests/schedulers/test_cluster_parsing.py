"""Slurm and SGE parsers on output captured from the real clusters of ci/ (see outputs/)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from xqueue import Job
from xqueue.errors import SchedulerOutputError, SubmissionError, SubmissionUnknownError
from xqueue.scheduler import SchedulerStats
from xqueue.schedulers import _sge_parse as sge
from xqueue.schedulers import _slurm_parse as slurm
from xqueue.schedulers._cluster import (
    array_jobdirs,
    hms,
    long_options,
    run_submit,
    short_options,
    write_array,
)
from xqueue.schedulers._forks import Slot, plan
from xqueue.schedulers._process import SchedulerCommandError, read_output
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


def test_a_dependency_that_failed_is_never_satisfied_whatever_the_stale_reason() -> None:
    # 11662: Slurm cancelled it as it was submitted (its dependency had failed) and kept
    # the pending reason "Resources"; it was taken for a cancel and retried.
    rows = slurm.parse_squeue(read("slurm_squeue_dependency.txt"))
    assert (rows["11662"].state, rows["11662"].reason) == ("CANCELLED", "Resources")
    for jid in ("11662", "11663", "11873", "11874"):  # cancelled, or still pending
        never = slurm.terminal_state(rows[jid])
        assert never is not None and never.status is JobStatus.FAILED, jid
        assert not never.retryable and "dependency can never be satisfied" in never.reason
    # Cancelled while its dependency could still be met: a cancel, not a dependency.
    for jid in ("11871", "11872"):
        cancelled = slurm.terminal_state(rows[jid])
        assert cancelled is not None and cancelled.status is JobStatus.KILLED, jid
    assert slurm.terminal_state(rows["11869"]) is None  # FAILED: the rc file decides
    # Any of a?b will do: one failed, the other may still be met (Slurm ran such a job).
    either = "afterok:14417(failed)?afterok:14418(unfulfilled)"
    assert slurm.terminal_state(slurm.SlurmRow("PENDING", "Dependency", "", either)) is None
    both = "afterok:14417(failed)?afterok:14418(failed)"
    never = slurm.terminal_state(slurm.SlurmRow("CANCELLED", "Resources", "", both))
    assert never is not None and "dependency can never be satisfied" in never.reason


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
    # FAILED without an exit code (a CI run saw one, before accounting had the job's
    # code): a failure whose code is unknown, never a success.
    unknown = slurm.accounting_state(slurm.SlurmRow("FAILED", "", "0:0"))
    assert unknown is not None and unknown.status is JobStatus.FAILED and unknown.rc is None
    assert "FAILED with exit code 0:0" in unknown.reason


def test_scancel_verbose_names_the_jobs_that_had_ended() -> None:
    """Recorded from this Slurm: 6591 and 6592_1 ran and were signalled; 6590 and 6592_0
    had exited, 99999999 was never issued. Only -v prints these errors."""
    assert slurm.already_ended(read("slurm_scancel_v.txt")) == {"6590", "6592_0", "99999999"}


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


def test_a_job_in_deletion_counts_as_running_for_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held while SGE may still start it; taken for ended (its rc file or qacct tells
    how) once it has been in deletion far longer than a kill takes: its host is down,
    and it would hold a run for ever."""
    from xqueue.schedulers.sge import SgeScheduler

    monkeypatch.setattr(sge, "parse_qstat_xml", lambda text: {"7": "dr", "8.1": "dt"})
    sched = SgeScheduler(poll_interval=1, kill_grace=5)
    states = sched.parse_status("")
    assert states["7"].status is JobStatus.RUNNING and states["8.1"].status is JobStatus.RUNNING
    sched._deleting["7"] -= 32  # within its 30 s and three polls
    assert "7" in sched.parse_status("")
    sched._deleting["7"] -= 2
    assert set(sched.parse_status("")) == {"8.1"}


def test_qstat_error_state_and_its_reason() -> None:
    states = sge.parse_qstat_xml(read("sge_qstat_eqw.xml"))
    assert "Eqw" in states.values() and not sge.held("Eqw")
    # Being deleted is still held until qstat lists it no more: a task in transfer when
    # qdel registered its deletion still starts and runs to its end.
    assert all(sge.held(s) for s in ("dt", "dr", "dRr", "dEqw"))
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


# -- answers that cannot be read ----------------------------------------------------------
def garbled(parse: Callable[[str], object], output: str, command: str = "cmd -x") -> str:
    """The message of the SchedulerOutputError that reading ``output`` raises."""
    with pytest.raises(SchedulerOutputError) as info:
        read_output(command.split(), output, parse)
    assert info.value.command == command and info.value.output == output
    return str(info.value)


def test_garbled_slurm_answers_are_output_errors_not_empty_queues() -> None:
    good = read("slurm_squeue_pending.txt")
    message = garbled(slurm.parse_squeue, "<html>502 Bad Gateway</html>\n", "squeue -h")
    assert message.startswith("cannot read the output of squeue -h (not a job line")
    assert "502 Bad Gateway" in message
    # One bad line among good ones spoils the answer: the rest may be cut short too.
    garbled(slurm.parse_squeue, good + "squeue: error: slurm_receive_msg: Zero Bytes\n")
    garbled(slurm.parse_squeue, "12|running|None\n")  # not a Slurm state
    garbled(slurm.parse_sacct, "12|COMPLETED|done\n")  # not an exit code
    garbled(slurm.parse_sacct, read("slurm_sacct.txt")[:-30])  # cut mid-line
    garbled(slurm.parse_my_jobs, "JOBID|STATE|REASON|COMMENT\n")  # a header, not a job
    garbled(slurm.parse_config, "slurm_load_ctl_conf error: Unable to contact\n")
    assert read_output(["squeue"], "", slurm.parse_squeue) == {}  # no jobs: a real answer
    # A comment may itself hold the separator.
    mine = slurm.parse_my_jobs("7_[1-2]|PENDING|JobArrayTaskLimit|xqueue:ab:@x|y\n")
    assert mine["7_2"] == (slurm.SlurmRow("PENDING", "JobArrayTaskLimit"), "xqueue:ab:@x|y")


def test_garbled_sge_answers_are_output_errors() -> None:
    whole = read("sge_qstat_array.xml")
    message = garbled(sge.parse_qstat_xml, whole[: len(whole) // 2], "qstat -xml")
    assert "cannot read the output of qstat -xml" in message and "<job_info" in message
    garbled(sge.parse_qstat_xml, "<html><body>error</body></html>")
    garbled(sge.parse_qstat_names, whole.replace("<JB_job_number>9<", "<JB_job_number>x<"))
    garbled(sge.parse_qacct, "error: ending connection before all data received\n")
    long = "x" * 500
    assert garbled(sge.parse_qstat_xml, long).endswith("x...'")  # only the start is shown
    # Nothing at all is not an empty queue (it failed a running job as vanished): the
    # real qstat -xml answers a user with no jobs with a document (sge_qstat_empty.xml).
    garbled(sge.parse_qstat_xml, "")
    garbled(sge.parse_qstat_names, "\n")


def test_submission_failures_that_may_have_queued_the_job_are_told_apart() -> None:
    def error(stderr: str, rc: int | None = 1) -> SchedulerCommandError:
        return SchedulerCommandError(["sbatch", "x.sh"], rc, stderr)

    lost = error("sbatch: error: Batch job submission failed: Socket timed out on send/recv")
    assert lost.ambiguous and lost.transient
    gdi = error("error: failed receiving gdi request response for mid=1 (got syncron message)")
    assert gdi.ambiguous
    assert error("", None).ambiguous  # we timed it out ourselves
    refused = error("sbatch: error: Unable to contact slurm controller (connect failure)")
    assert refused.transient and not refused.ambiguous
    busy = error("sbatch: error: Batch job submission failed: Resource temporarily unavailable")
    assert busy.transient and not busy.ambiguous
    bad = error("sbatch: error: invalid partition specified: nope")
    assert not bad.transient and not bad.ambiguous


@pytest.mark.anyio
async def test_run_submit_retries_only_what_proves_nothing_was_queued(tmp_path: Path) -> None:
    def command(stderr: str, rc: int, stdout: str = "") -> list[str]:
        return [
            "sh",
            "-c",
            f"echo x >> {tmp_path}/calls; printf '{stdout}'; echo '{stderr}' >&2; exit {rc}",
        ]

    async def count() -> int:
        return len((await anyio.Path(tmp_path / "calls").read_text()).split())

    stats = SchedulerStats()
    with pytest.raises(SubmissionUnknownError, match="may have been queued"):
        await run_submit(
            command("Socket timed out on send/recv operation", 1), 10, stats, slurm.parse_jobid
        )
    assert await count() == 1 and stats.submit_calls == 1
    with pytest.raises(SubmissionUnknownError, match="no job id we can read: 'Submitted'"):
        await run_submit(command("", 0, "Submitted"), 10, stats, slurm.parse_jobid)
    with pytest.raises(SubmissionUnknownError, match="timed out"):
        await run_submit(["sleep", "5"], 0.2, stats, slurm.parse_jobid)
    await anyio.Path(tmp_path / "calls").unlink()
    with pytest.raises(SubmissionError, match="invalid partition") as refused:
        await run_submit(command("invalid partition specified", 1), 10, stats, slurm.parse_jobid)
    assert not refused.value.retryable and await count() == 1
    assert await run_submit(command("", 0, "42;cluster\\n"), 10, stats, slurm.parse_jobid) == "42"
    # Refused by a controller that could not be reached: retried, once here.
    await anyio.Path(tmp_path / "calls").unlink()
    flaky = [
        "sh",
        "-c",
        f"echo x >> {tmp_path}/calls; [ $(wc -l < {tmp_path}/calls) -gt 1 ] && echo 43 && "
        "exit 0; echo 'Unable to contact slurm controller (connect failure)' >&2; exit 1",
    ]
    assert await run_submit(flaky, 10, stats, slurm.parse_jobid) == "43" and await count() == 2


def test_array_element_files_name_folder_and_attempt(tmp_path: Path) -> None:
    jobs = [Job(i, ["true"], dir=str(tmp_path / f"{i} job")) for i in range(3)]
    jobs[1].attempt = 3
    name, _ = write_array(str(tmp_path), jobs, "SLURM_ARRAY_TASK_ID", 0)
    assert array_jobdirs(str(tmp_path), name) == [
        (jobs[0].dir, 1),
        (jobs[1].dir, 3),
        (jobs[2].dir, 1),
    ]
    (tmp_path / "old.jobs").write_text("/w/0-a\n/w/1 b\n")  # written before attempts were
    assert array_jobdirs(str(tmp_path), "old") == [("/w/0-a", 1), ("/w/1 b", 1)]


def running_at_once(sizes: list[int], slots: list[Slot]) -> int:
    """The most jobs that can run at once: one unit per lane runs, at its throttle."""
    lane_of: list[int] = []
    for i, slot in enumerate(slots):
        lane_of.append(i if slot.after is None else lane_of[slot.after])
    widest: dict[int, int] = {}
    for i, slot in enumerate(slots):
        widest[lane_of[i]] = max(widest.get(lane_of[i], 0), min(slot.throttle, sizes[i]))
    return sum(widest.values())


@pytest.mark.parametrize(
    ("sizes", "forks"),
    [
        ([6, 6, 6], 2),  # three shapes, forks=2: the case that ran three at once
        ([1000, 1, 1, 1, 1], 4),
        ([1] * 50, 3),  # 50 jobs of distinct resources
        ([4, 4, 1, 1], 2),
        ([10, 3], 8),
        ([500, 300, 200, 7, 7, 7, 7], 5),
    ],
)
def test_lanes_keep_running_jobs_within_forks(sizes: list[int], forks: int) -> None:
    slots = plan(sizes, forks)
    assert len(slots) == len(sizes)
    assert running_at_once(sizes, slots) <= forks
    assert all(s.after is None or s.after < i for i, s in enumerate(slots))  # queue order
    assert all(1 <= s.throttle for s in slots)
    if len(sizes) <= forks:
        assert all(s.after is None for s in slots)  # nothing needs to wait


def test_one_lane_at_full_width_beats_many_narrow_ones() -> None:
    # A big array and a few singles with forks=4: the big one runs 4 wide, the singles
    # after it, rather than the big one 1 wide beside three singles.
    slots = plan([1000, 1, 1, 1, 1], 4)
    assert slots[0] == Slot(4, None)
