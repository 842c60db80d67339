"""The read strategy both Slurm backends share: the queue, then accounting only if needed.

Reads are plain callables here, recording what they were asked: no cluster, no pyslurm.
"""

from __future__ import annotations

import pytest

from reconciler.core.sizing import Usage
from reconciler.core.states import SchedState
from reconciler.errors import TransientError
from reconciler.scheduler.base import JobRef
from reconciler.scheduler.script import job_name
from reconciler.scheduler.slurm_parse import COMMENT_PREFIX, SlurmRecord
from reconciler.scheduler.slurm_query import (
    SACCT_MARGIN_S,
    _Unanswered,
    observe_in_two_reads,
    until_answered,
)

S = SchedState


def rec(
    job_id: str,
    indices: tuple[int, ...],
    state: str,
    token: str = "t",
    exit_code: int | None = None,
    start: float | None = None,
    usage: Usage | None = None,
) -> SlurmRecord:
    return SlurmRecord(job_id, indices, True, state, exit_code, 0, "", start, None, "p.0000", COMMENT_PREFIX + token, usage)


class Reads:
    """A queue and an accounting that answer with fixed records and remember each call."""

    def __init__(self, queue: list[SlurmRecord], accounting: list[SlurmRecord]) -> None:
        self.queue, self.accounting = queue, accounting
        self.calls: list[tuple[str, list[str], float | None]] = []

    def read_queue(self, job_ids: list[str]) -> list[SlurmRecord]:
        self.calls.append(("queue", job_ids, None))
        return self.queue

    def read_accounting(self, job_ids: list[str], since: float) -> list[SlurmRecord]:
        self.calls.append(("accounting", job_ids, since))
        return self.accounting


def test_no_refs_no_read() -> None:
    reads = Reads([], [])
    view = observe_in_two_reads([], reads.read_queue, reads.read_accounting)
    assert view.tasks == {} and view.found == {} and view.gone == set() and reads.calls == []


def test_queue_alone_when_it_knows_every_submitted_index_and_none_ended() -> None:
    reads = Reads([rec("10", (0,), "RUNNING"), rec("10", (1, 2), "PENDING"), rec("9", (0,), "RUNNING")], [])
    view = observe_in_two_reads(
        [JobRef("t", "10", 100.0, (0, 1, 2)), JobRef("t", "9", 50.0, (0,))], reads.read_queue, reads.read_accounting
    )
    assert reads.calls == [("queue", ["9", "10"], None)]  # job ids in numeric order
    assert {i: t.state for i, t in view.tasks["10"].items()} == {0: S.RUNNING, 1: S.PENDING, 2: S.PENDING}
    assert view.tasks["9"][0].state is S.RUNNING


def test_accounting_once_for_the_usage_of_tasks_the_queue_shows_ended() -> None:
    """A task seen ended in the queue (within MinJobAge) is journaled in this pass and never
    asked about again: this pass's accounting read is the one that can say what it used.
    The queue's state stands; accounting's usage is attached to the same run (same start)."""
    used = Usage(elapsed_s=2.0, max_rss_mb=46.0, cpu_s=1.9)
    queue = [rec("10", (0,), "COMPLETED", exit_code=0, start=1000.0), rec("10", (1,), "RUNNING"), rec("9", (0,), "RUNNING")]
    accounting = [rec("10", (0,), "COMPLETED", exit_code=0, start=1000.0, usage=used), rec("10", (1,), "RUNNING", usage=Usage(5.0, None, 0.0))]
    reads = Reads(queue, accounting)
    view = observe_in_two_reads(
        [JobRef("t", "10", 100.0, (0, 1)), JobRef("t", "9", 50.0, (0,))], reads.read_queue, reads.read_accounting
    )
    assert reads.calls == [("queue", ["9", "10"], None), ("accounting", ["10"], 50.0 - SACCT_MARGIN_S)]  # job 9: none ended
    assert (view.tasks["10"][0].state, view.tasks["10"][0].usage) == (S.COMPLETED, used)
    assert (view.tasks["10"][1].state, view.tasks["10"][1].usage) == (S.RUNNING, None)  # running: no usage


def test_accounting_once_for_the_jobs_the_queue_cannot_answer() -> None:
    """Job 10's index 1 left the queue (MinJobAge); job 11 is gone from it entirely."""
    queue = [rec("10", (0,), "RUNNING"), rec("12", (0,), "RUNNING")]
    accounting = [rec("10", (0, 1), "COMPLETED", exit_code=0), rec("11", (0,), "FAILED", exit_code=3)]
    reads = Reads(queue, accounting)
    refs = [JobRef("t", "10", 500.0, (0, 1)), JobRef("t", "11", 200.0, (0,)), JobRef("t", "12", 900.0, (0,))]
    view = observe_in_two_reads(refs, reads.read_queue, reads.read_accounting)
    assert reads.calls == [("queue", ["10", "11", "12"], None), ("accounting", ["10", "11"], 200.0 - SACCT_MARGIN_S)]
    assert view.tasks["10"][0].state is S.RUNNING  # the queue is fresher: it wins
    assert view.tasks["10"][1].state is S.COMPLETED  # accounting fills in what the queue purged
    assert (view.tasks["11"][0].state, view.tasks["11"][0].exit_code) == (S.FAILED, 3)


def test_a_lost_token_found_in_the_queue_needs_no_accounting() -> None:
    reads = Reads([rec("42", (0, 1), "PENDING", token="lost")], [])
    view = observe_in_two_reads([JobRef("lost", None, 100.0, (0, 1))], reads.read_queue, reads.read_accounting)
    assert reads.calls == [("queue", [], None)]  # a ref without id: all of the user's jobs
    assert view.found == {"lost": "42"} and set(view.tasks["42"]) == {0, 1}


def test_a_lost_token_not_in_the_queue_is_looked_up_in_all_accounting() -> None:
    reads = Reads([rec("10", (0,), "RUNNING")], [rec("42", (0,), "COMPLETED", token="lost", exit_code=0)])
    refs = [JobRef("t", "10", 300.0, (0, 1)), JobRef("lost", None, 100.0, (0,))]
    view = observe_in_two_reads(refs, reads.read_queue, reads.read_accounting)
    assert reads.calls == [("queue", [], None), ("accounting", [], 100.0 - SACCT_MARGIN_S)]
    assert view.found == {"lost": "42"} and view.tasks["42"][0].state is S.COMPLETED


def test_a_lost_token_is_found_by_job_name_in_accounting_that_keeps_no_comments() -> None:
    """A site without AccountingStoreFlags=job_comment: the finished job's record has its
    name but no comment; still one accounting read, and the job is found, not resubmitted."""
    name = job_name("p", 0, "1761000000-3f9c0a17b2e4")
    bare = SlurmRecord("42", (0, 1), True, "COMPLETED", 0, 0, "", None, None, name, "")
    look_alike = SlurmRecord("43", (0, 1), True, "COMPLETED", 0, 0, "", None, None, "p.0000.aaaaaaaa", "")
    reads = Reads([], [look_alike, bare])
    view = observe_in_two_reads(
        [JobRef("1761000000-3f9c0a17b2e4", None, 100.0, (0, 1), name)], reads.read_queue, reads.read_accounting
    )
    assert reads.calls == [("queue", [], None), ("accounting", [], 100.0 - SACCT_MARGIN_S)]
    assert view.found == {"1761000000-3f9c0a17b2e4": "42"} and set(view.tasks) == {"42"}


def test_a_job_nobody_knows_is_gone_after_both_reads() -> None:
    reads = Reads([], [])
    view = observe_in_two_reads([JobRef("t", "77", 0.0, (0,))], reads.read_queue, reads.read_accounting)
    assert [c[0] for c in reads.calls] == ["queue", "accounting"] and view.gone == {"77"}


# ---------------------------------------------------------------- retries


def test_until_answered_retries_until_an_answer() -> None:
    attempts: list[int] = []

    def attempt() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise _Unanswered("no answer")
        return "ok"

    assert until_answered(attempt, 30.0, lambda: "") == "ok" and len(attempts) == 3


def test_until_answered_gives_up_within_its_time_naming_the_last_failure() -> None:
    def attempt() -> str:
        raise _Unanswered("still down")

    with pytest.raises(TransientError, match=r"did not answer: squeue exited 1.*gave up after 0\.3 s.*nothing was marked failed"):
        until_answered(attempt, 0.3, lambda: "squeue exited 1")


def test_until_answered_does_not_retry_a_real_error() -> None:
    attempts: list[int] = []

    def attempt() -> str:
        attempts.append(1)
        raise TransientError("squeue failed: Invalid user")

    with pytest.raises(TransientError, match="Invalid user"):
        until_answered(attempt, 30.0, lambda: "")
    assert len(attempts) == 1
