"""The pool's decisions on the pure planner: expected run times, how many workers, and the
pool's sends outside the queue cap (core.pool, core.planner)."""

from __future__ import annotations

from reconciler.core.model import (
    AttemptObs,
    Desired,
    Limits,
    Policy,
    Stage,
    SubmissionObs,
    TaskHistory,
    TaskObs,
    World,
)
from reconciler.core.plan import ActionKind
from reconciler.core.planner import plan
from reconciler.core.pool import (
    PoolPolicy,
    WorkerObs,
    expected_runtime,
    judge_claim,
    plan_workers,
    usage,
)
from reconciler.core.reasons import Reason
from reconciler.core.sizing import Request
from reconciler.core.states import SchedState, SubmissionKind, SubmissionState

from .test_planner import T

P, R = SchedState.PENDING, SchedState.RUNNING


def test_a_stage_is_expected_to_take_its_timeout_until_three_tasks_have_run_then_their_90th_percentile() -> None:
    assert expected_runtime([], 600.0) == 600.0
    assert expected_runtime([10.0, 12.0], 600.0) == 600.0
    assert expected_runtime([float(s) for s in range(1, 11)], 600.0) == 10.0
    assert expected_runtime([float(s) for s in range(1, 101)], 600.0) == 91.0
    assert expected_runtime([900.0, 900.0, 900.0], 600.0) == 600.0  # never beyond the timeout


def test_workers_are_started_up_to_what_the_work_needs_within_the_maximum_and_the_queue_cap() -> None:
    pool = PoolPolicy(workers=3, side_by_side=2)
    starts = lambda acts: sum(len(a.array_indices) for a in acts if a.kind is ActionKind.START_WORKERS)  # noqa: E731
    assert starts(plan_workers(pool, [], 60, 0, 100, 0.0, 0.0)) == 3
    assert starts(plan_workers(pool, [], 3, 0, 100, 0.0, 0.0)) == 2  # ceil(3 tasks / 2 side by side)
    assert starts(plan_workers(pool, [], 60, 0, 1, 0.0, 0.0)) == 1  # the queue cap
    assert plan_workers(pool, [], 0, 0, 100, 0.0, 0.0) == []
    live = [WorkerObs("w1", 0.0, "7", None, (R, P))]
    assert starts(plan_workers(pool, live, 60, 0, 100, 0.0, 0.0)) == 1
    ended = [WorkerObs("w1", 0.0, "7", None, (SchedState.COMPLETED, SchedState.TIMEOUT))]
    assert starts(plan_workers(pool, ended, 60, 0, 100, 0.0, 0.0)) == 3  # replaced while work remains


def test_queued_workers_are_cancelled_only_when_the_pool_has_nothing_now_or_coming_running_ones_never() -> None:
    pool = PoolPolicy(workers=4)
    ws = [WorkerObs("w1", 0.0, "7", None, (R, R, P, P))]
    assert plan_workers(pool, ws, 3, 0, 100, 0.0, 0.0) == []  # more live than wanted: the queued ones keep their place
    assert plan_workers(pool, ws, 0, 5, 100, 0.0, 0.0) == []  # 5 tasks of pool stages in backoff or waiting
    acts = plan_workers(pool, ws, 0, 0, 100, 0.0, 0.0)
    assert [(a.kind, a.token, a.array_indices, a.reason) for a in acts] == [(ActionKind.STOP_WORKERS, "w1", (2, 3), Reason.POOL_SURPLUS)]
    assert plan_workers(pool, [WorkerObs("w1", 0.0, "7", None, (R, R))], 0, 0, 100, 0.0, 0.0) == []


def test_a_pool_that_wants_workers_and_has_no_room_says_so() -> None:
    acts = plan_workers(PoolPolicy(workers=2), [], 10, 0, 0, 0.0, 0.0)
    assert [(a.kind, a.reason) for a in acts] == [(ActionKind.WAIT, Reason.QUEUE_CAP)] and "2 wanted" in acts[0].note


def test_a_lost_worker_answer_is_recovered_by_token_waited_for_or_abandoned_never_sent_twice() -> None:
    pool = PoolPolicy(workers=2)
    lost = WorkerObs("w1", 100.0, None, None, (None, None))
    assert plan_workers(pool, [lost], 10, 0, 100, 110.0, 60.0) == []  # within the grace: counted live
    acts = plan_workers(pool, [lost], 10, 0, 100, 200.0, 60.0)
    assert [(a.kind, a.reason) for a in acts] == [(ActionKind.ABANDON, Reason.WORKER_NEVER_RECEIVED), (ActionKind.START_WORKERS, Reason.POOL_SHORT)]
    found = WorkerObs("w1", 100.0, None, "42", (P, P))
    acts = plan_workers(pool, [found], 10, 0, 100, 200.0, 60.0)
    assert [(a.kind, a.note) for a in acts] == [(ActionKind.RECOVER, "job 42")]


def test_pool_sends_are_outside_the_queue_cap_carry_the_expected_run_time_and_bring_workers() -> None:
    tasks = [T(f"k{i}", i) for i in range(50)]
    stage = Stage("", tasks, Policy(batch_size=10), 50, pool=True, request=Request(None, 120.0))
    desired = Desired(tasks, Policy(batch_size=10), [stage], PoolPolicy(workers=3))
    p = plan(desired, World({}, {}), 0.0, Limits(max_queued_tasks=5))
    sends = p.of(ActionKind.SUBMIT)
    assert sum(len(a.keys) for a in sends) == 50 and all(a.expect_s == 120.0 for a in sends)
    assert [len(a.array_indices) for a in p.of(ActionKind.START_WORKERS)] == [3]
    world = World({}, {}, runtimes={"": [5.0, 6.0, 7.0, 8.0]})
    assert {a.expect_s for a in plan(desired, world, 0.0, Limits()).of(ActionKind.SUBMIT)} == {8.0}


def test_node_hours_used_are_the_tasks_share_of_their_workers_and_the_rest_is_wasted() -> None:
    got = usage({"a": 3600.0, "b": 1800.0}, worker_node_s=2 * 3 * 3600.0, nodes=2, side_by_side=2)
    assert got == {"node_hours": 6.0, "used": 1.5, "wasted": 4.5, "stages": {"a": {"used": 1.0, "wasted": 3.0}, "b": {"used": 0.5, "wasted": 1.5}}}


def test_the_pools_work_is_counted_by_submission_so_a_stage_moved_out_of_pool_mode_still_gets_workers() -> None:
    tasks = [T(f"k{i}", i) for i in range(4)]
    stage = Stage("", tasks, Policy(batch_size=10), 4)  # array mode now
    desired = Desired(tasks, Policy(batch_size=10), [stage], PoolPolicy(workers=2))
    atts = tuple(AttemptObs(t.key, t.index, P) for t in tasks)
    sub = SubmissionObs("tok", 0, SubmissionKind.SUBMIT, SubmissionState.SUBMITTED, 0.0, "pool:tok", None, True, atts, pool=True)
    world = World({t.key: TaskObs(sched=P) for t in tasks}, {t.key: TaskHistory(submissions=1) for t in tasks}, (sub,))
    p = plan(desired, world, 0.0, Limits(max_queued_tasks=1))
    assert [len(a.array_indices) for a in p.of(ActionKind.START_WORKERS)] == [1]  # 4 pool tasks do not fill the cap of 1
    assert not p.of(ActionKind.SUBMIT, ActionKind.RESUBMIT)


def test_live_workers_count_against_the_queue_cap_and_a_place_is_kept_for_one_while_the_pool_has_work() -> None:
    arr = [T(f"a{i}", i) for i in range(20)]
    pooled = [T(f"p{i}", i) for i in range(4)]
    stages = [Stage("arr", arr, Policy(batch_size=100), 20), Stage("pool", pooled, Policy(batch_size=100), 4, pool=True, request=Request(None, 60.0))]
    desired = Desired([*arr, *pooled], Policy(batch_size=100), stages, PoolPolicy(workers=2))
    workers = (WorkerObs("w", 0.0, "9", None, (R, R, R, R)),)
    p = plan(desired, World({}, {}, workers=workers), 0.0, Limits(max_queued_tasks=10))
    assert sum(len(a.keys) for a in p.of(ActionKind.SUBMIT) if a.keys[0].startswith("a")) == 6  # 10 - 4 live workers
    p = plan(desired, World({}, {}), 0.0, Limits(max_queued_tasks=10))
    assert sum(len(a.keys) for a in p.of(ActionKind.SUBMIT) if a.keys[0].startswith("a")) == 9  # one place kept
    assert [len(a.array_indices) for a in p.of(ActionKind.START_WORKERS)] == [1]


def test_tasks_pruned_from_the_pool_are_neither_pool_work_nor_array_queue() -> None:
    arr = [T(f"a{i}", i) for i in range(20)]
    stage = Stage("", arr, Policy(batch_size=100, prune=True), 20)
    desired = Desired(arr, Policy(batch_size=100, prune=True), [stage], PoolPolicy(workers=2))
    gone = tuple(AttemptObs(f"gone{i}", i, P) for i in range(4))
    sub = SubmissionObs("tok", 0, SubmissionKind.SUBMIT, SubmissionState.SUBMITTED, 0.0, "pool:tok", None, True, gone, pool=True)
    flying = {f"a{i}": TaskObs(sched=P) for i in range(6)}
    world = World({**flying, **{a.key: TaskObs(sched=P) for a in gone}}, {k: TaskHistory(submissions=1) for k in flying}, (sub,))
    p = plan(desired, world, 0.0, Limits(max_queued_tasks=10))
    assert sum(len(a.keys) for a in p.of(ActionKind.SUBMIT)) == 4  # 10 - 6 array tasks in flight
    assert p.of(ActionKind.CANCEL) and not p.of(ActionKind.START_WORKERS)


def test_a_claim_is_dead_half_a_lease_after_the_fence_and_its_cause_is_its_workers_end() -> None:
    lease = 100.0
    assert judge_claim(R, False, 149.0, lease) == (R, "")  # alive until 1.5 leases
    assert judge_claim(SchedState.CANCELLED, False, 149.0, lease) == (R, "")  # ended, but its run may still be stopping
    assert judge_claim(R, False, 151.0, lease)[0] is SchedState.NODE_FAIL and "lease expired" in judge_claim(R, False, 151.0, lease)[1]
    assert judge_claim(SchedState.CANCELLED, False, 151.0, lease) == (SchedState.CANCELLED, "ended")
    assert judge_claim(SchedState.TIMEOUT, False, 151.0, lease) == (SchedState.TIMEOUT, "ended")
    assert judge_claim(SchedState.COMPLETED, False, 151.0, lease)[0] is SchedState.NODE_FAIL  # ended leaving its claim behind
    assert judge_claim(None, True, 151.0, lease)[0] is SchedState.NODE_FAIL  # vanished
    assert "lease expired" in judge_claim(None, False, 151.0, lease)[1]  # no word of it: the lease says


def test_a_hung_worker_is_cancelled_and_not_counted_so_the_pool_gets_another() -> None:
    pool = PoolPolicy(workers=1)
    hung = WorkerObs("w1", 0.0, "7", None, (R,), hung=(0,))
    acts = plan_workers(pool, [hung], 1, 0, 100, 0.0, 0.0)
    assert [(a.kind, a.reason, a.array_indices) for a in acts] == [
        (ActionKind.STOP_WORKERS, Reason.WORKER_HUNG, (0,)), (ActionKind.START_WORKERS, Reason.POOL_SHORT, (0,)),
    ]
