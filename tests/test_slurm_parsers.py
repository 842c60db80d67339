"""Parsers of Slurm's output (slurm_parse, slurm_view) and the CLI backend, on tables of output captured from a real cluster.

Pure: no cluster, no subprocess. The captures and the commands that made them are in
tests/data/slurm (see its README.md); job ids are those of the capture runs.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.core.states import SchedState
from reconciler.errors import NotSubmitted, SubmitRejected, TransientError
from reconciler.scheduler.base import ArrayJob, JobRef, TaskSched
from reconciler.scheduler.script import job_name
from reconciler.scheduler.slurm_cli import SlurmCLI
from reconciler.scheduler.slurm_parse import (
    SQUEUE_FIELDS,
    SlurmRecord,
    expand_array,
    parse_exit_code,
    parse_job_id,
    parse_max_array_size,
    parse_sbatch_parsable,
    parse_scontrol_config,
    parse_squeue,
    parse_squeue_json,
    parse_squeue_text,
    parse_time,
    sacct_time,
    split_wait_status,
)
from reconciler.scheduler.slurm_query import is_transient
from reconciler.scheduler.slurm_sacct import (
    SACCT_FIELDS,
    parse_cpu_time,
    parse_sacct,
    parse_size_mb,
)
from reconciler.scheduler.slurm_site import parse_node_memory, parse_partitions
from reconciler.scheduler.slurm_view import (
    CANCELLED_UNRECORDED,
    STATE_MAP,
    lost_by_name,
    map_state,
    merge_view,
    needs_accounting,
    record_token,
    task_sched,
)

DATA = Path(__file__).parent / "data" / "slurm"
OLD_SACCT_FIELDS = ("JobID", "JobIDRaw", "JobName", "State", "ExitCode", "Comment", "Start", "End")
V1_SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Start", "End", "JobName", "Comment")
"""The backend's field list before usage was read: the captures of jobs 15, 24, 33 and 3/4."""
OLD_SQUEUE_FIELDS = ("%i", "%j", "%T", "%r", "%k")

S = SchedState


def read(name: str) -> str:
    return (DATA / name).read_text()


def states(view_tasks: dict[int, TaskSched]) -> dict[int, tuple[SchedState, int | None, str]]:
    return {i: (t.state, t.exit_code, t.reason) for i, t in sorted(view_tasks.items())}


# ---------------------------------------------------------------- states


ALL_STATES = [
    ("PENDING", S.PENDING),
    ("CONFIGURING", S.PENDING),
    ("REQUEUED", S.PENDING),
    ("REQUEUE_HOLD", S.PENDING),
    ("REQUEUE_FED", S.PENDING),
    ("RESV_DEL_HOLD", S.PENDING),
    ("RUNNING", S.RUNNING),
    ("COMPLETING", S.RUNNING),
    ("SUSPENDED", S.RUNNING),
    ("STOPPED", S.RUNNING),
    ("SIGNALING", S.RUNNING),
    ("STAGE_OUT", S.RUNNING),
    ("RESIZING", S.RUNNING),
    ("COMPLETED", S.COMPLETED),
    ("FAILED", S.FAILED),
    ("TIMEOUT", S.TIMEOUT),
    ("DEADLINE", S.TIMEOUT),
    ("OUT_OF_MEMORY", S.OUT_OF_MEMORY),
    ("NODE_FAIL", S.NODE_FAIL),
    ("BOOT_FAIL", S.NODE_FAIL),
    ("PREEMPTED", S.PREEMPTED),
    ("CANCELLED", S.CANCELLED),
    ("CANCELLED by 0", S.CANCELLED),
    ("CANCELLED by 1234", S.CANCELLED),
    ("REVOKED", S.FAILED),
    ("SPECIAL_EXIT", S.FAILED),
    ("SOMETHING_NEW", S.UNKNOWN),
    ("", S.UNKNOWN),
]


@pytest.mark.parametrize(("raw", "expected"), ALL_STATES)
def test_every_slurm_state_maps(raw: str, expected: SchedState) -> None:
    assert map_state(raw) is expected


def test_state_table_covers_every_listed_state() -> None:
    listed = {raw.split(" ")[0] for raw, _ in ALL_STATES if raw and raw != "SOMETHING_NEW"}
    assert listed == set(STATE_MAP)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("PD", S.PENDING),
        ("R", S.RUNNING),
        ("CG", S.RUNNING),
        ("CD", S.COMPLETED),
        ("F", S.FAILED),
        ("TO", S.TIMEOUT),
        ("OOM", S.OUT_OF_MEMORY),
        ("NF", S.NODE_FAIL),
        ("CA", S.CANCELLED),
        (["RUNNING", "COMPLETING"], S.RUNNING),  # newer --json: a list of flags
        ("running", S.RUNNING),
        ("FAILED+", S.FAILED),
        (None, S.UNKNOWN),
    ],
)
def test_state_spellings(raw: str | list[str] | None, expected: SchedState) -> None:
    assert map_state(raw) is expected


@pytest.mark.parametrize("raw", [r for r, _ in ALL_STATES])
def test_task_sched_of_every_state_is_consistent(raw: str) -> None:
    rec = SlurmRecord("1", (0,), True, raw, 0, 0, "", 10.0, 20.0, "n.0000", "")
    ts = task_sched(rec)
    assert ts.state is map_state(raw)
    if ts.state.in_flight:
        assert ts.exit_code is None and ts.end is None
    if ts.state is S.FAILED:
        assert "exit 0" in ts.reason


# ---------------------------------------------------------------- small pieces


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4\n", "4"),
        (read("sbatch_parsable.txt"), "4"),
        ("123;reconciler\n", "123"),
        ("site banner\n77\n", "77"),
    ],
)
def test_parse_sbatch_parsable(text: str, expected: str) -> None:
    assert parse_sbatch_parsable(text) == expected


@pytest.mark.parametrize("text", ["", "\n", "Submitted batch job\n", "abc;cluster"])
def test_parse_sbatch_parsable_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_sbatch_parsable(text)


@pytest.mark.parametrize(
    ("text", "job", "indices"),
    [
        ("4", "4", None),
        ("5_3", "5", (3,)),
        ("1_[2-19%2]", "1", tuple(range(2, 20))),
        ("5_[1,3-7]", "5", (1, 3, 4, 5, 6, 7)),
        ("15_[5,8-9]", "15", (5, 8, 9)),
        ("15_[7-9%2]", "15", (7, 8, 9)),
        ("8_[0-2]", "8", (0, 1, 2)),
        ("9_[0-6:3]", "9", (0, 3, 6)),
    ],
)
def test_parse_job_id(text: str, job: str, indices: tuple[int, ...] | None) -> None:
    assert parse_job_id(text) == (job, indices)


@pytest.mark.parametrize(
    ("text", "indices"),
    [("1_[2-19%2]", tuple(range(2, 20))), ("5_[1,3-7]", (1, 3, 4, 5, 6, 7)), ("[0-2]", (0, 1, 2)), ("2-5%2", (2, 3, 4, 5))],
)
def test_expand_array(text: str, indices: tuple[int, ...]) -> None:
    assert expand_array(text) == indices


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0:0", (0, 0)), ("1:0", (1, 0)), ("0:9", (0, 9)), ("0:15", (0, 15)), ("", (None, None)), ("x:y", (None, None))],
)
def test_parse_exit_code(text: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_exit_code(text) == expected


@pytest.mark.parametrize(("status", "expected"), [(0, (0, 0)), (512, (2, 0)), (9, (0, 9)), (15, (0, 15)), (None, (None, None))])
def test_split_wait_status(status: int | None, expected: tuple[int | None, int | None]) -> None:
    assert split_wait_status(status) == expected


@pytest.mark.parametrize("text", ["N/A", "NONE", "Unknown", "", None, 0, "0", "(null)", {"set": False, "number": 5}])
def test_parse_time_none(text: object) -> None:
    assert parse_time(text) is None  # type: ignore[arg-type]


def test_parse_time_values() -> None:
    assert parse_time(1795427021) == 1795427021.0
    assert parse_time({"set": True, "infinite": False, "number": 7}) == 7.0
    t = parse_time("2026-11-23T09:43:41")
    assert t is not None and sacct_time(t) == "2026-11-23T09:43:41"


@pytest.mark.parametrize("name", ["squeue_ctld_down.stderr", "sbatch_ctld_down.stderr", "scontrol_ctld_down.stderr", "sacct_dbd_down.stderr"])
def test_unreachable_daemons_are_transient(name: str) -> None:
    assert is_transient(read(name))


@pytest.mark.parametrize(
    "text",
    [
        "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
        "sbatch: error: Batch job submission failed: Resource temporarily unavailable",
        "squeue: error: slurm_receive_msg: Transport endpoint is not connected",
        "sacct: error: slurmdbd: Getting response to message type: DBD_GET_JOBS_COND",
    ],
)
def test_transient_messages(text: str) -> None:
    assert is_transient(text)


@pytest.mark.parametrize(
    "text",
    [
        read("sbatch_invalid_partition.stderr"),
        read("sbatch_array_too_big.stderr"),
        read("squeue_invalid_job.stderr"),
        "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
    ],
)
def test_permanent_messages(text: str) -> None:
    assert not is_transient(text)


def test_scontrol_config() -> None:
    text = read("scontrol_show_config.txt")
    cfg = parse_scontrol_config(text)
    assert cfg["MinJobAge"].startswith("2")
    assert cfg["AccountingStoreFlags"] == "job_comment"
    assert parse_max_array_size(text) == 1001
    assert parse_max_array_size("ClusterName = x\n") is None


# ---------------------------------------------------------------- squeue


def test_squeue_old_capture_folded_and_expanded_agree() -> None:
    ref = [JobRef("tok-pend", "1", 0.0)]
    folded = merge_view(ref, parse_squeue(read("squeue_pending_array.txt"), OLD_SQUEUE_FIELDS), None)
    expanded = merge_view(ref, parse_squeue(read("squeue_pending_array_expanded.txt"), OLD_SQUEUE_FIELDS), None)
    as_json = merge_view(ref, parse_squeue(read("squeue_pending_array.json")), None)
    want = {0: S.RUNNING, 1: S.RUNNING} | {i: S.PENDING for i in range(2, 20)}
    for view in (folded, expanded, as_json):
        assert {i: t.state for i, t in view.tasks["1"].items()} == want
        assert view.tasks["1"][5].reason == "JobArrayTaskLimit"
        assert view.gone == set()
    assert as_json.tasks["1"][0].start == 1795368055.0


MIXED = {
    0: (S.COMPLETED, 0, ""),
    1: (S.COMPLETED, 0, ""),
    2: (S.FAILED, 2, "exit 2 (NonZeroExitCode)"),
    3: (S.FAILED, 137, "signal 9 (JobLaunchFailure)"),
    4: (S.CANCELLED, None, "CANCELLED"),
    5: (S.PENDING, None, "JobArrayTaskLimit"),  # requeued: same index, back to pending
    6: (S.RUNNING, None, ""),
    7: (S.RUNNING, None, ""),
    8: (S.PENDING, None, "JobArrayTaskLimit"),
    9: (S.PENDING, None, "JobArrayTaskLimit"),
}


@pytest.mark.parametrize("name", ["squeue_mixed.txt", "squeue_mixed_expanded.txt", "squeue_mixed.json"])
def test_squeue_mixed(name: str) -> None:
    view = merge_view([JobRef("tok-mixed", "15", 0.0)], parse_squeue(read(name)), None)
    assert states(view.tasks["15"]) == MIXED
    assert view.tasks["15"][6].start is not None and view.tasks["15"][6].end is None
    assert view.tasks["15"][5].start is None  # a pending task's StartTime is only an estimate
    assert view.tasks["15"][2].end is not None
    assert "24" not in view.tasks  # not asked for


def test_squeue_text_records() -> None:
    recs = parse_squeue_text(read("squeue_mixed.txt"), SQUEUE_FIELDS)
    folded = [r for r in recs if len(r.indices) > 1]
    assert [(r.job_id, r.indices, r.raw_state) for r in folded] == [("15", (5, 8, 9), "PENDING")]
    single = [r for r in recs if r.job_id == "24"]
    assert single[0].is_array is False and single[0].indices == (0,)
    assert all(r.token in ("tok-mixed", "tok-timeout") for r in recs)


def test_squeue_json_ignores_filters_so_records_are_filtered() -> None:
    recs = parse_squeue_json(read("squeue_mixed.json"))
    assert {r.job_id for r in recs} == {"15", "24"}
    view = merge_view([JobRef("tok-timeout", "24", 0.0)], recs, None)
    assert set(view.tasks) == {"24"}


def test_token_lookup_in_squeue() -> None:
    refs = [JobRef("tok-timeout", None, 0.0), JobRef("tok-nowhere", None, 0.0)]
    view = merge_view(refs, parse_squeue(read("squeue_mixed.txt")), None)
    assert view.found == {"tok-timeout": "24"}
    assert view.tasks["24"][0].state is S.PENDING
    assert "15" not in view.tasks and view.gone == set()


def test_comment_with_separator_is_kept_whole() -> None:
    line = "7_1|RUNNING|0|None|2026-11-23T09:43:44|NONE|x.0001|reconciler:a|b\n"
    (rec,) = parse_squeue_text(line)
    assert rec.comment == "reconciler:a|b" and rec.job_id == "7" and rec.indices == (1,)


def test_squeue_skips_garbage_lines() -> None:
    assert parse_squeue_text("garbage\n\nonly|two\n") == []


# ---------------------------------------------------------------- sacct


FINAL = {
    0: (S.COMPLETED, 0, ""),
    1: (S.COMPLETED, 0, ""),
    2: (S.FAILED, 2, "exit 2"),
    3: (S.FAILED, 137, "signal 9"),
    4: (S.CANCELLED, None, "CANCELLED by 0"),
    5: (S.COMPLETED, 0, ""),  # requeued once, then ran to completion as the same task
    6: (S.COMPLETED, 0, ""),
    7: (S.COMPLETED, 0, ""),
    8: (S.COMPLETED, 0, ""),
    9: (S.COMPLETED, 0, ""),  # the last task: JobIDRaw is the array's own id (15)
}


@pytest.mark.parametrize("name", ["sacct_final.txt", "sacct_final_duplicates.txt"])
def test_sacct_final(name: str) -> None:
    refs = [JobRef("tok-mixed", "15", 0.0), JobRef("tok-timeout", "24", 0.0)]
    view = merge_view(refs, [], parse_sacct(read(name), V1_SACCT_FIELDS))
    assert states(view.tasks["15"]) == FINAL
    assert states(view.tasks["24"]) == {0: (S.TIMEOUT, None, "TIMEOUT")}
    assert view.gone == set()


def test_sacct_old_capture_with_steps() -> None:
    refs = [JobRef("a", "4", 0.0), JobRef("b", "5", 0.0), JobRef("c", "6", 0.0), JobRef("d", "999", 0.0)]
    for name in ("sacct_mixed.txt", "sacct_mixed_steps.txt"):
        view = merge_view(refs, [], parse_sacct(read(name), OLD_SACCT_FIELDS))
        assert states(view.tasks["5"]) == {
            0: (S.COMPLETED, 0, ""),
            1: (S.COMPLETED, 0, ""),
            2: (S.FAILED, 1, "exit 1"),
            3: (S.FAILED, 1, "exit 1"),
            4: (S.CANCELLED, None, "CANCELLED by 0"),
            5: (S.TIMEOUT, None, "TIMEOUT"),
            6: (S.FAILED, 3, "exit 3"),
        }
        assert states(view.tasks["4"]) == {0: (S.COMPLETED, 0, "")}
        assert states(view.tasks["6"]) == {0: (S.CANCELLED, None, "CANCELLED by 0")}
        assert view.gone == {"999"}


def test_sacct_records_carry_comment_and_times() -> None:
    recs = parse_sacct(read("sacct_mixed.txt"), OLD_SACCT_FIELDS)
    by = {(r.job_id, r.indices): r for r in recs}
    assert by[("5", (6,))].comment == "tok-mixed"
    assert by[("5", (6,))].token is None  # not "reconciler:<token>": never taken for ours
    assert by[("5", (5,))].end is not None and by[("5", (5,))].start is not None


def test_sacct_token_lookup_by_comment() -> None:
    view = merge_view([JobRef("tok-timeout", None, 0.0)], [], parse_sacct(read("sacct_final.txt"), V1_SACCT_FIELDS))
    assert view.found == {"tok-timeout": "24"}
    assert view.tasks["24"][0].state is S.TIMEOUT


def test_squeue_wins_over_stale_sacct() -> None:
    """sacct_running.txt was taken a second after squeue_mixed.txt and is behind it."""
    stale = parse_sacct(read("sacct_running.txt"), V1_SACCT_FIELDS)
    assert {r.indices: r.raw_state for r in stale}[(7, 8, 9)] == "PENDING"
    view = merge_view([JobRef("tok-mixed", "15", 0.0)], parse_squeue(read("squeue_mixed.txt")), stale)
    assert states(view.tasks["15"]) == MIXED


def test_sacct_fills_tasks_purged_from_squeue() -> None:
    """An array whose first tasks left squeue (MinJobAge) while the others still run."""
    squeue = [r for r in parse_squeue(read("squeue_mixed.txt")) if r.indices not in ((0,), (1,), (2,))]
    view = merge_view([JobRef("tok-mixed", "15", 0.0)], squeue, parse_sacct(read("sacct_running.txt"), V1_SACCT_FIELDS))
    assert states(view.tasks["15"]) == MIXED | {2: (S.FAILED, 2, "exit 2")}  # sacct has no Reason


def test_job_known_to_nobody_is_gone() -> None:
    view = merge_view([JobRef("t", "12345", 0.0)], parse_squeue(read("squeue_mixed.txt")), [])
    assert view.gone == {"12345"} and view.tasks == {}


# ---------------------------------------------------------------- tasks cancelled while pending


def test_tasks_cancelled_while_pending_leave_no_record() -> None:
    """scancel 33_[1,3] on a pending 33_[0-3]: only 33_[0,2] is ever listed again."""
    ref = JobRef("tok-holes", "33", 0.0, (0, 1, 2, 3))
    queued = parse_squeue(read("squeue_cancelled_pending_tasks.txt"))
    view = merge_view([ref], queued, None)
    assert {i: t.state for i, t in view.tasks["33"].items()} == {0: S.PENDING, 2: S.PENDING}
    # once the rest was cancelled and the job left squeue, sacct fills in 0 and 2 and the
    # unrecorded 1 and 3 are reported cancelled
    view = merge_view([ref], [], parse_sacct(read("sacct_cancelled_pending_tasks.txt"), V1_SACCT_FIELDS))
    assert states(view.tasks["33"]) == {
        0: (S.CANCELLED, None, "CANCELLED by 0"),
        1: (S.CANCELLED, None, CANCELLED_UNRECORDED),
        2: (S.CANCELLED, None, "CANCELLED by 0"),
        3: (S.CANCELLED, None, CANCELLED_UNRECORDED),
    }
    # without the submitted indices nothing is inferred
    view = merge_view([JobRef("tok-holes", "33", 0.0)], [], parse_sacct(read("sacct_cancelled_pending_tasks.txt"), V1_SACCT_FIELDS))
    assert set(view.tasks["33"]) == {0, 2}


def test_stale_plain_accounting_record_of_an_array() -> None:
    """slurmdbd briefly shows the array as plain job 33 named "allocation"."""
    ref = JobRef("tok-holes", "33", 0.0, (0, 1, 2, 3))
    view = merge_view([ref], [], parse_sacct(read("sacct_cancelled_pending_tasks_early.txt"), V1_SACCT_FIELDS))
    assert view.gone == set()  # it exists...
    assert view.tasks.get("33", {}) == {}  # ...but says nothing about its tasks yet
    found = merge_view([JobRef("tok-holes", None, 0.0, (0, 1))], [], parse_sacct(read("sacct_cancelled_pending_tasks_early.txt"), V1_SACCT_FIELDS))
    assert found.found == {"tok-holes": "33"} and found.tasks.get("33", {}) == {}


def in_flight_lines(name: str) -> str:
    """The lines of a squeue capture whose task is pending or running."""
    return "".join(ln for ln in read(name).splitlines(keepends=True) if ln.split("|")[1] in ("PENDING", "RUNNING"))


def test_needs_accounting() -> None:
    """sacct is read when squeue cannot answer for a job, or shows one of its tasks ended
    (for what it used: the one chance, the engine will not ask about it again)."""
    waiting = parse_squeue(in_flight_lines("squeue_mixed.txt"))  # 15_[5,8-9] pending, 15_6/15_7 running, 24 pending
    assert not needs_accounting(JobRef("t", "15", 0.0, (5, 6, 7, 8, 9)), "15", waiting)
    assert needs_accounting(JobRef("t", "15", 0.0, tuple(range(10))), "15", waiting)  # 15_0-15_4 left the queue
    assert needs_accounting(JobRef("t", "15", 0.0), "15", waiting)  # indices unknown: maybe purged
    assert not needs_accounting(JobRef("t", "24", 0.0), "24", waiting)  # plain job in the queue
    assert needs_accounting(JobRef("t", "99", 0.0, (0,)), "99", waiting)
    queued = parse_squeue(read("squeue_mixed.txt"))  # the same, with 15_0-15_4 ended and still listed
    assert needs_accounting(JobRef("t", "15", 0.0, tuple(range(10))), "15", queued)
    assert needs_accounting(JobRef("t", "15", 0.0, (4, 5)), "15", queued)  # 15_4 was cancelled
    assert not needs_accounting(JobRef("t", "15", 0.0, (5, 6, 7, 8, 9)), "15", queued)  # the ended ones are not this ref's


# ---------------------------------------------------------------- usage (MaxRSS, CPU time, elapsed)
# Job 1: an array under --mem=100M --time=1 whose task 0 completed, 1 was killed over its
# memory (OverMemoryKill), 2 exited 3, 3 timed out; job 2: a plain job (README.md).

USAGE_FINAL = {
    0: (S.COMPLETED, 0, ""),
    1: (S.FAILED, 137, "signal 9"),  # killed over memory without cgroups: FAILED, not OUT_OF_MEMORY
    2: (S.FAILED, 3, "exit 3"),
    3: (S.TIMEOUT, None, "TIMEOUT"),
}


def usage_of(view_tasks: dict[int, TaskSched]) -> dict[int, tuple[float | None, float | None, float | None]]:
    return {i: (t.usage.elapsed_s, t.usage.max_rss_mb, t.usage.cpu_s) if t.usage else (None, None, None) for i, t in sorted(view_tasks.items())}


def test_sacct_usage_folds_step_lines_into_their_task() -> None:
    recs = parse_sacct(read("sacct_usage_final.txt"))
    assert sorted((r.job_id, r.indices) for r in recs) == [("1", (0,)), ("1", (1,)), ("1", (2,)), ("1", (3,)), ("2", (0,))]  # no step of its own
    view = merge_view([JobRef("tok-usage", "1", 0.0, (0, 1, 2, 3)), JobRef("tok-plain", "2", 0.0)], [], recs)
    assert states(view.tasks["1"]) == USAGE_FINAL
    assert usage_of(view.tasks["1"]) == {
        0: (2.0, 47072 / 1024, 1.939),  # 2 s of CPU in 2 s, 30 MiB and the interpreter
        1: (1.0, 425932 / 1024, 0.002),  # killed at its first sample, a second in
        2: (1.0, 16508 / 1024, 0.975),
        3: (88.0, 4556 / 1024, 0.002),  # 60 s limit, then slurmctld's next time-limit check
    }
    assert usage_of(view.tasks["2"]) == {0: (2.0, 66028 / 1024, 0.131)}  # a plain job: its steps are N.batch


def test_the_task_killed_over_memory_peaked_above_its_request() -> None:
    """What core.sizing.shortfall reads as out of memory where no cgroup enforces it:
    killed by signal 9, its peak above the 100 MiB it asked for."""
    rec = next(r for r in parse_sacct(read("sacct_usage_final.txt")) if r.indices == (1,))
    assert (rec.raw_state, rec.exit_code, rec.signal) == ("FAILED", 0, 9)
    assert rec.usage is not None and rec.usage.max_rss_mb is not None and rec.usage.max_rss_mb > 100
    assert "Exceeded job memory limit" in read("over_memory_task.stderr")


def test_sacct_usage_of_a_running_task_is_not_reported() -> None:
    """sacct_usage_running.txt: 1_3 still running (no MaxRSS yet); a running task carries no usage."""
    recs = parse_sacct(read("sacct_usage_running.txt"))
    running = next(r for r in recs if r.indices == (3,))
    assert running.raw_state == "RUNNING" and running.usage is not None and running.usage.max_rss_mb is None
    view = merge_view([JobRef("tok-usage", "1", 0.0, (0, 1, 2, 3))], [], recs)
    assert view.tasks["1"][3].state is S.RUNNING and view.tasks["1"][3].usage is None
    assert usage_of(view.tasks["1"])[1] == (1.0, 425932 / 1024, 0.002)


def test_squeue_ended_tasks_get_sacct_usage_and_keep_squeue_state() -> None:
    """squeue_usage_ended.txt lists 1_0-1_2 ended (within MinJobAge) and 1_3 running; sacct,
    read in the same pass, has their usage. squeue's state and reason stand."""
    squeue = parse_squeue(read("squeue_usage_ended.txt"))
    assert needs_accounting(JobRef("tok-usage", "1", 0.0, (0, 1, 2, 3)), "1", squeue)
    view = merge_view([JobRef("tok-usage", "1", 0.0, (0, 1, 2, 3))], squeue, parse_sacct(read("sacct_usage_running.txt")))
    assert states(view.tasks["1"]) == {
        0: (S.COMPLETED, 0, ""),
        1: (S.FAILED, 137, "signal 9 (JobLaunchFailure)"),  # squeue's reason for the kill
        2: (S.FAILED, 3, "exit 3 (NonZeroExitCode)"),
        3: (S.RUNNING, None, ""),
    }
    assert usage_of(view.tasks["1"]) == {
        0: (2.0, 47072 / 1024, 1.939),
        1: (1.0, 425932 / 1024, 0.002),
        2: (1.0, 16508 / 1024, 0.975),
        3: (None, None, None),
    }


def test_squeue_ended_task_without_sacct_usage_yet_has_none() -> None:
    """sacct lags: when it does not have the run ended yet, or has another run of the index
    (a requeue: another start), the task's usage stays None rather than borrowing it."""
    squeue = parse_squeue(read("squeue_usage_ended.txt"))
    sacct = parse_sacct(read("sacct_usage_running.txt"))
    lagging = [replace(r, raw_state="RUNNING") if r.indices == (0,) else r for r in sacct]
    other_run = [replace(r, start=(r.start or 0) - 60) if r.indices == (2,) else r for r in sacct]
    ref = JobRef("tok-usage", "1", 0.0, (0, 1, 2, 3))
    assert merge_view([ref], squeue, lagging).tasks["1"][0].usage is None
    assert merge_view([ref], squeue, other_run).tasks["1"][2].usage is None
    assert merge_view([ref], squeue, None).tasks["1"][1].usage is None  # squeue alone says nothing of usage


def test_a_task_that_ended_before_the_first_sample_has_no_peak() -> None:
    """sacct_usage_unsampled.txt: 6_1 and 6_2 ended within a second; MaxRSS is empty, not 0."""
    view = merge_view([JobRef("tok-live", "6", 0.0, (0, 1, 2, 3))], [], parse_sacct(read("sacct_usage_unsampled.txt")))
    assert usage_of(view.tasks["6"]) == {
        0: (2.0, 424388 / 1024, 0.001),
        1: (1.0, None, 0.001),
        2: (1.0, None, 0.122),
        3: (21.0, 3144 / 1024, 0.003),
    }


@pytest.mark.parametrize(
    ("text", "mb"),
    [("425932K", 425932 / 1024), ("66028K", 66028 / 1024), ("1.5G", 1536.0), ("100M", 100.0), ("2T", 2 * 1024.0**2),
     ("0", 0.0), ("3215360", 3215360 / 2**20), ("", None), ("  ", None), ("n/a", None), ("12Q", None)],
)
def test_parse_size_mb(text: str, mb: float | None) -> None:
    """K is KiB; a bare number is bytes (``sacct --noconvert``, tests/data/slurm/README.md)."""
    assert parse_size_mb(text) == mb


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:01.939", 1.939), ("00:00:00", 0.0), ("01:02:03", 3723.0), ("2-01:02:03", 2 * 86400 + 3723.0),
     ("12:34.500", 754.5), ("", None), ("INVALID", None), ("x-01:00:00", None), ("1:2:3:4", None)],
)
def test_parse_cpu_time(text: str, seconds: float | None) -> None:
    got = parse_cpu_time(text)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


def test_old_captures_without_usage_fields_parse_without_usage() -> None:
    recs = parse_sacct(read("sacct_final.txt"), V1_SACCT_FIELDS)
    assert recs and all(r.usage is None for r in recs)
    assert parse_sacct(read("sacct_final.txt")) == []  # the new field list does not fit those lines: nothing is guessed


# ---------------------------------------------------------------- observe() on canned output


class CannedCLI(SlurmCLI):
    """SlurmCLI whose commands answer from captured files: counts calls, no cluster."""

    def __init__(self, answers: dict[str, tuple[int, str, str]], **kw: object) -> None:
        super().__init__(user="root", **kw)  # type: ignore[arg-type]
        self.answers = answers

    def _exec(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        rc, out, err = self.answers[argv[0]]
        return subprocess.CompletedProcess(argv, rc, out, err)


def test_observe_squeue_alone_when_it_knows_every_index_and_none_ended() -> None:
    cli = CannedCLI({"squeue": (0, in_flight_lines("squeue_mixed.txt"), "")})
    view = cli.observe([JobRef("tok-mixed", "15", 0.0, (5, 6, 7, 8, 9)), JobRef("tok-timeout", "24", 0.0)])
    assert [c[0] for c in cli.calls] == ["squeue"]
    assert "--jobs=15,24" in cli.calls[0] and "--user=root" in cli.calls[0] and "--states=all" in cli.calls[0]
    assert states(view.tasks["15"]) == {i: MIXED[i] for i in (5, 6, 7, 8, 9)}


def test_observe_reads_sacct_once_when_squeue_shows_tasks_ended() -> None:
    """squeue_mixed.txt lists 15_0-15_4 ended: their usage is only in sacct, read once;
    squeue still says what their state is."""
    # sacct's answer is canned from another capture: this test is about when sacct is read
    cli = CannedCLI({"squeue": (0, read("squeue_mixed.txt"), ""), "sacct": (0, read("sacct_usage_final.txt"), "")})
    view = cli.observe([JobRef("tok-mixed", "15", 0.0, tuple(range(10))), JobRef("tok-timeout", "24", 0.0)])
    assert [c[0] for c in cli.calls] == ["squeue", "sacct"]
    assert "--jobs=15" in cli.calls[1]  # job 24 is answered by squeue alone
    assert states(view.tasks["15"]) == MIXED


def test_observe_one_sacct_for_purged_and_gone_jobs() -> None:
    cli = CannedCLI({"squeue": (1, "", read("squeue_invalid_job.stderr")), "sacct": (0, read("sacct_usage_final.txt"), "")})
    refs = [JobRef("tok-usage", "1", 1795427000.0, (0, 1, 2, 3)), JobRef("tok-plain", "2", 1795427080.0), JobRef("x", "77", 0.0, (0,))]
    view = cli.observe(refs)
    assert [c[0] for c in cli.calls] == ["squeue", "sacct"]
    sacct_argv = cli.calls[1]
    assert "--jobs=1,2,77" in sacct_argv
    assert f"--starttime={sacct_time(0.0 - 3600.0)}" in sacct_argv
    assert f"--format={','.join(SACCT_FIELDS)}" in sacct_argv
    assert "--allocations" not in sacct_argv and "-X" not in sacct_argv  # MaxRSS is on the step lines
    assert states(view.tasks["1"]) == USAGE_FINAL and view.gone == {"77"}
    assert all(t.usage is not None for t in view.tasks["1"].values())


def test_observe_token_lookup_uses_one_user_wide_sacct() -> None:
    cli = CannedCLI({"squeue": (0, "", ""), "sacct": (0, read("sacct_usage_final.txt"), "")})
    view = cli.observe([JobRef("tok-plain", None, 1795427080.0), JobRef("tok-usage", "1", 1795427000.0, (0, 1, 2, 3))])
    assert [c[0] for c in cli.calls] == ["squeue", "sacct"]
    assert not any(a.startswith("--jobs") for c in cli.calls for a in c)  # a lost id: no job filter
    assert view.found == {"tok-plain": "2"} and states(view.tasks["1"]) == USAGE_FINAL


def test_observe_transient_failure_is_retried_then_raised() -> None:
    cli = CannedCLI({"squeue": (1, "", read("squeue_ctld_down.stderr"))}, retry_seconds=0.3)
    with pytest.raises(TransientError, match="slurmctld did not answer.*nothing was marked failed"):
        cli.observe([JobRef("t", "15", 0.0, (0,))])
    assert len(cli.calls) >= 2 and all(c[0] == "squeue" for c in cli.calls)


def test_observe_unexpected_error_stops_without_states() -> None:
    cli = CannedCLI({"squeue": (1, "", "squeue: error: Invalid user: nobody")})
    with pytest.raises(TransientError, match="Invalid user"):
        cli.observe([JobRef("t", "15", 0.0, (0,))])
    assert len(cli.calls) == 1


def test_observe_nothing_makes_no_call() -> None:
    cli = CannedCLI({})
    assert cli.observe([]).tasks == {} and cli.calls == []


def _job(tmp_path: Path) -> ArrayJob:
    return ArrayJob("tokS", "p.0000", tmp_path / "s.sbatch", "", (0,), None, tmp_path, "o", "e")


def test_submit_parses_the_id(tmp_path: Path) -> None:
    cli = CannedCLI({"sbatch": (0, "42;reconciler\n", "")})
    assert cli.submit(_job(tmp_path)) == "42"
    assert cli.calls == [["sbatch", "--parsable", f"--chdir={tmp_path}", str(tmp_path / "s.sbatch")]]


def test_submit_timeout_is_unknown_and_not_retried(tmp_path: Path) -> None:
    err = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n"
    cli = CannedCLI({"sbatch": (1, "", err)})
    with pytest.raises(TransientError, match="outcome unknown.*token tokS") as info:
        cli.submit(_job(tmp_path))
    assert not isinstance(info.value, NotSubmitted)
    assert len(cli.calls) == 1


def test_submit_to_an_unreachable_controller_is_certainly_not_submitted(tmp_path: Path) -> None:
    cli = CannedCLI({"sbatch": (1, "", read("sbatch_ctld_down.stderr"))})
    with pytest.raises(NotSubmitted, match="nothing was submitted"):
        cli.submit(_job(tmp_path))
    assert len(cli.calls) == 1


def test_submit_garbled_answer_is_unknown(tmp_path: Path) -> None:
    cli = CannedCLI({"sbatch": (0, "", "")})
    with pytest.raises(TransientError, match="outcome unknown"):
        cli.submit(_job(tmp_path))


@pytest.mark.parametrize("name", ["sbatch_invalid_partition.stderr", "sbatch_array_too_big.stderr"])
def test_submit_rejected(tmp_path: Path, name: str) -> None:
    cli = CannedCLI({"sbatch": (1, "", read(name))})
    with pytest.raises(SubmitRejected) as err:
        cli.submit(_job(tmp_path))
    assert err.value.exit_code == 2 and "Batch job submission failed" in str(err.value)


def test_cancel_builds_one_call() -> None:
    cli = CannedCLI({"scancel": (0, "", "")})
    cli.cancel("15", [1, 3, 5, 6, 7])
    cli.cancel("16")
    assert cli.calls == [["scancel", "15_[1,3,5-7]"], ["scancel", "16"]]


def test_cancel_of_a_forgotten_job_is_fine() -> None:
    cli = CannedCLI({"scancel": (1, "", "scancel: error: Kill job error on job id 9: Invalid job id specified")})
    cli.cancel("9")


def test_max_array_size_from_scontrol() -> None:
    assert CannedCLI({"scontrol": (0, read("scontrol_show_config.txt"), "")}).max_array_size() == 1001
    down = CannedCLI({"scontrol": (1, "", read("scontrol_ctld_down.stderr"))}, retry_seconds=0.2)
    assert down.max_array_size() is None


def test_plain_record_of_a_known_array_says_only_that_it_exists() -> None:
    """Our submissions are always arrays: a record without an index is a stale one."""
    recs = parse_sacct(read("sacct_final.txt"), V1_SACCT_FIELDS)
    as_array = merge_view([JobRef("tok-timeout", "24", 0.0, (0,))], [], recs)
    assert as_array.tasks.get("24", {}) == {} and as_array.gone == set()
    plain = merge_view([JobRef("tok-timeout", "24", 0.0)], [], recs)
    assert plain.tasks["24"][0].state is S.TIMEOUT


# ---------------------------------------------------------------- tokens in job names (no comments in accounting)
# sacct_no_comment.txt: two arrays of one batch submitted while the cluster did not store
# comments (`scripts/slurm-test-cluster comments off`), named as script.job_name names
# them; squeue_name_tagged.txt: the same jobs running (squeue shows comments regardless).

LOST = "1761000000-3f9c0a17b2e4"  # job 3, named cap.0004.3f9c0a17
OTHER = "1761000001-aaaaaaaa0000"  # job 4, named cap.0004.aaaaaaaa: same production and batch


def test_sacct_without_comments_shows_none() -> None:
    recs = parse_sacct(read("sacct_no_comment.txt"), V1_SACCT_FIELDS)
    assert {r.job_id for r in recs} == {"3", "4"}
    assert all(r.comment == "" and r.token is None for r in recs)
    assert {r.name for r in recs} == {job_name("cap", 4, LOST), job_name("cap", 4, OTHER)}


def test_lost_token_found_in_sacct_by_job_name_when_comments_are_not_stored() -> None:
    refs = [JobRef(LOST, None, 0.0, (0, 1, 2, 3), job_name("cap", 4, LOST))]
    view = merge_view(refs, [], parse_sacct(read("sacct_no_comment.txt"), V1_SACCT_FIELDS))
    assert view.found == {LOST: "3"}  # not job 4, whose name differs only in the tag
    assert {i: t.state for i, t in view.tasks["3"].items()} == {i: S.COMPLETED for i in range(4)}
    assert "4" not in view.tasks


def test_without_the_name_a_lost_token_is_not_found_where_comments_are_not_stored() -> None:
    """What the name is for: before it, this lookup came back empty and the tasks ran twice."""
    view = merge_view([JobRef(LOST, None, 0.0, (0, 1, 2, 3))], [], parse_sacct(read("sacct_no_comment.txt"), V1_SACCT_FIELDS))
    assert view.found == {} and view.tasks == {}


def test_two_lost_tokens_of_one_batch_each_find_their_own_job() -> None:
    refs = [JobRef(t, None, 0.0, (), job_name("cap", 4, t)) for t in (LOST, OTHER)]
    view = merge_view(refs, [], parse_sacct(read("sacct_no_comment.txt"), V1_SACCT_FIELDS))
    assert view.found == {LOST: "3", OTHER: "4"}


def test_squeue_shows_the_tagged_name_whole_and_the_comment_wins() -> None:
    recs = parse_squeue(read("squeue_name_tagged.txt"))
    assert {r.name for r in recs if r.job_id == "3"} == {"cap.0004.3f9c0a17"}
    assert record_token(recs[0], lost_by_name([JobRef(OTHER, None, 0.0, (), recs[0].name)])) == LOST
    view = merge_view([JobRef(LOST, None, 0.0, (0, 1, 2, 3), job_name("cap", 4, LOST))], recs, None)
    assert view.found == {LOST: "3"} and {i: t.state for i, t in view.tasks["3"].items()} == {i: S.RUNNING for i in range(4)}


def test_names_are_matched_only_for_lost_answers() -> None:
    """A ref with a job id is matched by id; its name does not pull in look-alike jobs."""
    refs = [JobRef(LOST, "3", 0.0, (0, 1, 2, 3), job_name("cap", 4, LOST))]
    assert lost_by_name(refs) == {}
    view = merge_view(refs, [], parse_sacct(read("sacct_no_comment.txt"), V1_SACCT_FIELDS))
    assert set(view.tasks) == {"3"} and view.found == {}


# ---------------------------------------------------------------- site ceilings: node memory, partition MaxTime
# scontrol_show_node.txt: the one node (RealMemory=24005, in debug, short and long);
# scontrol_show_partition_limits.txt: debug (UNLIMITED, default), short (30 min), long (2-12:00:00).


def test_parse_node_memory() -> None:
    text = read("scontrol_show_node.txt")
    assert parse_node_memory(text) == 24005
    assert parse_node_memory(text, "short") == 24005
    assert parse_node_memory(text, "gpu") is None  # no node of that partition listed
    assert parse_node_memory("") is None


def test_parse_node_memory_takes_the_largest_node_less_its_reserved_memory() -> None:
    """More nodes, made from the captured line: what a job may have is the largest (Slurm places
    a job on a node big enough), less the memory the node keeps for the system."""
    line = read("scontrol_show_node.txt").strip()
    small = line.replace("NodeName=vm", "NodeName=small").replace("RealMemory=24005", "RealMemory=16000 MemSpecLimit=1000")
    big = line.replace("NodeName=vm", "NodeName=big").replace("RealMemory=24005", "RealMemory=64000 MemSpecLimit=2000")
    unset = line.replace("NodeName=vm", "NodeName=unset").replace("RealMemory=24005", "RealMemory=1")  # Slurm's default: unknown
    other = big.replace("Partitions=debug,short,long", "Partitions=gpu")
    assert parse_node_memory("\n".join([line, small, big, unset])) == 62000
    assert parse_node_memory("\n".join([line, small, other, unset]), "debug") == 24005
    assert parse_node_memory(unset) is None


def test_parse_partitions_gives_max_time_in_minutes() -> None:
    parts = parse_partitions(read("scontrol_show_partition_limits.txt"))
    assert parts.max_minutes == {"debug": None, "short": 30.0, "long": (2 * 24 + 12) * 60.0}
    assert parts.default == "debug" and parts.max_mem_mb == {"debug": None, "short": None, "long": None}
    assert parse_partitions(read("scontrol_show_partition_short.txt")).max_minutes == {"short": 30.0}


class ScontrolCLI(SlurmCLI):
    """SlurmCLI whose ``scontrol show partition|node`` answer from captures."""

    def __init__(self, partition: tuple[int, str, str], node: tuple[int, str, str], **kw: object) -> None:
        super().__init__(user="root", **kw)  # type: ignore[arg-type]
        self.answers = {"partition": partition, "node": node}

    def _exec(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        rc, out, err = self.answers[argv[3]]
        return subprocess.CompletedProcess(argv, rc, out, err)


def test_site_ceilings() -> None:
    nodes = (0, read("scontrol_show_node.txt"), "")
    short = ScontrolCLI((0, read("scontrol_show_partition_short.txt"), ""), nodes)
    assert short.site_ceilings("short") == (24005.0, 1800.0 - 120.0)  # MaxTime 30 min less the 2 min --time adds to a timeout
    assert short.calls == [["scontrol", "-o", "show", "partition", "short"], ["scontrol", "-o", "show", "node"]]
    default = ScontrolCLI((0, read("scontrol_show_partition_limits.txt"), ""), nodes)
    assert default.site_ceilings(None) == (24005.0, None)  # debug, the default: MaxTime=UNLIMITED
    assert default.calls[0] == ["scontrol", "-o", "show", "partition"]


def test_site_ceilings_are_capped_by_the_partitions_max_mem_per_node() -> None:
    capped = read("scontrol_show_partition_short.txt").replace("MaxMemPerNode=UNLIMITED", "MaxMemPerNode=8000")
    cli = ScontrolCLI((0, capped, ""), (0, read("scontrol_show_node.txt"), ""))
    assert cli.site_ceilings("short") == (8000.0, 1680.0)


def test_site_ceilings_unknown_when_slurm_does_not_answer() -> None:
    nodes = (0, read("scontrol_show_node.txt"), "")
    down = ScontrolCLI((1, "", read("scontrol_ctld_down.stderr")), nodes, retry_seconds=0.2)
    assert down.site_ceilings("short") == (None, None)
    assert all(c[3] == "partition" for c in down.calls)  # no node read after a failed partition read
    nope = ScontrolCLI((1, "", read("scontrol_partition_invalid.stderr")), nodes, retry_seconds=0.2)
    assert nope.site_ceilings("nope") == (None, None)
    garbled = ScontrolCLI((0, "PartitionName=x MaxTime=soon\n", ""), nodes)
    assert garbled.site_ceilings("x") == (None, None)
