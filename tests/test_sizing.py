"""Retries that fix what failed, on the pure planner: what an attempt ran out of, what its
retry asks, and how the plan says it (core.sizing, core.settle, core.planner)."""

from __future__ import annotations

from pathlib import Path

from reconciler import logs
from reconciler.core.advice import Run, advise, run_of
from reconciler.core.causes import Cause, CauseKind
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
from reconciler.core.reasons import Reason
from reconciler.core.sizing import (
    Growth,
    Request,
    Short,
    Usage,
    at_ceiling,
    retry_request,
    shortfall,
)
from reconciler.core.states import OutputState, SchedState, SubmissionKind, SubmissionState
from reconciler.scheduler.slurm_sacct import parse_sacct
from reconciler.scheduler.slurm_view import task_sched

from .test_planner import T

GB = 1024.0
BASE = Request(16 * GB, 3600.0)
F, M = SchedState.FAILED, OutputState.MISSING


def test_out_of_memory_is_what_the_scheduler_says_or_a_sigkill_at_the_request_and_a_timeout_is_either_side_s() -> None:
    assert shortfall(SchedState.OUT_OF_MEMORY, None, None, None, BASE) is Short.MEMORY  # cgroups
    # OverMemoryKill: FAILED, signal 9, the sampled peak at (or just under) the request
    assert shortfall(F, 137, None, Usage(40.0, 16.2 * GB, 30.0), BASE) is Short.MEMORY
    assert shortfall(F, 137, None, Usage(40.0, 15.5 * GB, 30.0), BASE) is Short.MEMORY
    assert shortfall(F, 137, None, Usage(40.0, 2 * GB, 30.0), BASE) is None  # killed, but not for memory
    assert shortfall(F, 137, None, None, BASE) is None  # no measure: no guess
    # ... unless Slurm said so in the task's stderr (accounting records the peak a little later)
    said = logs.scheduler_lines(Path(__file__).parent / "data" / "slurm" / "over_memory_task.stderr")
    assert said and shortfall(F, 137, None, None, BASE, said) is Short.MEMORY
    assert shortfall(F, 137, None, None, BASE, ("slurmstepd: error: *** JOB 5 ON vm CANCELLED AT 2026-11-25T02:47:12 ***",)) is None
    killed = Cause(CauseKind.SIGNAL, "SIGKILL", 137)
    assert shortfall(F, 137, killed, Usage(1.0, 17 * GB), BASE) is Short.MEMORY
    assert shortfall(SchedState.TIMEOUT, None, None, None, BASE) is Short.TIME
    assert shortfall(F, 124, Cause(CauseKind.TIMEOUT, "3600", 124), None, BASE) is Short.TIME  # the wrapper's own
    for other in (SchedState.NODE_FAIL, SchedState.PREEMPTED, SchedState.CANCELLED):
        assert shortfall(other, None, None, Usage(9.0, 20 * GB), BASE) is None
    assert shortfall(F, 3, Cause(CauseKind.EXIT, "", 3), Usage(9.0, 20 * GB), BASE) is None


def test_a_retry_grows_only_what_ran_short_by_its_factor_capped_at_the_site_and_otherwise_asks_what_its_last_attempt_did() -> None:
    g = Growth(1.5, 2.0, node_memory_mb=30 * GB, max_time_s=3 * 3600.0)
    assert retry_request(BASE, BASE, Short.MEMORY, None, g) == Request(24 * GB, 3600.0)
    assert retry_request(BASE, Request(24 * GB, 3600.0), Short.MEMORY, None, g) == Request(30 * GB, 3600.0)  # the node's
    assert retry_request(BASE, Request(30 * GB, 3600.0), Short.MEMORY, None, g) == Request(30 * GB, 3600.0)
    assert retry_request(BASE, BASE, Short.TIME, None, g) == Request(16 * GB, 7200.0)
    assert retry_request(BASE, Request(16 * GB, 7200.0), Short.TIME, None, g) == Request(16 * GB, 3 * 3600.0)  # the partition's
    grown = Request(24 * GB, 3600.0)
    assert retry_request(BASE, grown, None, None, g) == grown  # a node failure after a memory retry: the same request
    assert retry_request(Request(32 * GB, 3600.0), grown, None, None, g).memory_mb == 32 * GB  # the production raised since wins
    assert retry_request(Request(32 * GB, 3600.0), BASE, Short.MEMORY, None, g).memory_mb == 32 * GB  # ... and is not grown again (not 48)
    assert retry_request(BASE, Request(40 * GB, 3600.0), Short.MEMORY, None, g).memory_mb == 40 * GB  # never below what failed, ceiling or not
    assert retry_request(BASE, Request(16 * GB, 4 * 3600.0), Short.TIME, None, g).time_s == 4 * 3600.0
    assert at_ceiling(Request(30 * GB, 3600.0), Short.MEMORY, g) and at_ceiling(Request(16 * GB, 3 * 3600.0), Short.TIME, g)
    assert not at_ceiling(Request(24 * GB, 3600.0), Short.MEMORY, g) and not at_ceiling(Request(30 * GB, 3600.0), Short.TIME, g)
    assert not at_ceiling(Request(None, 60.0), Short.MEMORY, g)  # no --mem asked: not known to be the most
    assert not at_ceiling(Request(30 * GB, 3600.0), Short.MEMORY, Growth(1.5, 1.5))  # no ceiling known
    assert not at_ceiling(Request(16 * GB, 3600.0), Short.TIME, Growth(1.0, 1.0, 30 * GB, 3 * 3600.0))  # factor 1: same request, by choice
    # the SIGKILL rule is for runs the scheduler says FAILED: a cancelled run killed at the end of its grace is not out of memory
    assert shortfall(SchedState.CANCELLED, 137, None, Usage(9.0, 16 * GB), BASE) is None
    assert retry_request(Request(None, 60.0), Request(None, 60.0), Short.MEMORY, 900.0, g) == Request(1350.0, 60.0)  # no --mem: from the peak
    assert retry_request(Request(None, 60.0), None, Short.MEMORY, None, g) == Request(None, 60.0)  # nothing to grow from


def _world(failed: dict[str, tuple[SchedState, int | None, Cause | None, Usage | None]], request: Request) -> World:
    """One ended submission (batch 0) whose tasks failed as given, not yet counted."""
    atts = tuple(AttemptObs(k, i, st, st.value, 100.0, False, True, None, cause, code, used) for i, (k, (st, code, cause, used)) in enumerate(failed.items()))
    sub = SubmissionObs("tok", 0, SubmissionKind.SUBMIT, SubmissionState.SUBMITTED, 0.0, "7", None, True, atts, False, request)
    return World({k: TaskObs(M, st) for k, (st, _, _, _) in failed.items()}, {k: TaskHistory(1) for k in failed}, (sub,))


def test_the_plan_resubmits_each_kind_of_failure_of_one_batch_as_its_own_array_saying_what_it_asks_and_why() -> None:
    tasks = [T(f"t{i}", i) for i in range(5)]
    stage = Stage("", tasks, Policy(batch_size=10, initial_delay_s=0.0), 5, request=BASE)
    desired = Desired(tasks, Policy(), (stage,))
    world = _world({
        "t0": (SchedState.OUT_OF_MEMORY, None, None, Usage(50.0, 16 * GB)),
        "t1": (F, 137, None, Usage(50.0, 16.1 * GB)),  # OverMemoryKill
        "t2": (F, 124, Cause(CauseKind.TIMEOUT, "3600", 124), Usage(3600.0, 3 * GB)),
        "t3": (SchedState.NODE_FAIL, None, None, None),
        "t4": (F, 1, Cause(CauseKind.EXIT, "", 1), Usage(5.0, 1 * GB)),
    }, BASE)
    # first pass: the failures are recorded (backoff 0 s), with what each ran out of
    p1 = plan(desired, world, 200.0, Limits(node_memory_mb=64 * GB))
    assert {k for a in p1.of(ActionKind.RECORD_FAILURE) for k in a.keys} == {"t0", "t1", "t2", "t3", "t4"}
    history = {
        "t0": TaskHistory(1, 1, 100.0, short=Short.MEMORY, request=BASE, peak_mb=16 * GB),
        "t1": TaskHistory(1, 1, 100.0, short=Short.MEMORY, request=BASE, peak_mb=16.1 * GB),
        "t2": TaskHistory(1, 1, 100.0, short=Short.TIME, request=BASE, peak_mb=3 * GB),
        "t3": TaskHistory(1, 1, 100.0, request=BASE),
        "t4": TaskHistory(1, 1, 100.0, request=BASE, peak_mb=1 * GB),
    }
    after = World({k: TaskObs(M, st) for k, st in world.tasks.items() for st in [st.sched]}, history)
    p2 = plan(desired, after, 200.0, Limits(node_memory_mb=64 * GB))
    sends = p2.of(ActionKind.RESUBMIT)
    assert {(a.keys, a.batch, a.request) for a in sends} == {
        (("t0", "t1"), 0, Request(24 * GB, 3600.0)),
        (("t2",), 0, Request(16 * GB, 5400.0)),
        (("t3", "t4"), 0, None),  # the stage's own request: one array with any other task of the batch
    }
    by_keys = {a.keys: a for a in sends}
    assert by_keys[("t0", "t1")].message == "failed; backoff elapsed, retries left (with 24 GB memory: out of memory at 16 GB)"
    assert by_keys[("t2",)].note == "with 90 min: timed out at 60 min"
    assert all(a.reason is Reason.BACKOFF_ELAPSED for a in sends)
    assert by_keys[("t0", "t1")].to_json()["request"] == {"memory_mb": 24 * GB, "time_s": 3600.0}


def test_the_settled_history_says_what_ran_short_so_the_same_pass_that_records_a_failure_can_resize_its_retry() -> None:
    tasks = [T("t0", 0)]
    stage = Stage("", tasks, Policy(batch_size=10, initial_delay_s=0.0), 1, request=BASE)
    world = _world({"t0": (SchedState.OUT_OF_MEMORY, None, None, Usage(50.0, 16 * GB))}, BASE)
    p = plan(Desired(tasks, Policy(), (stage,)), world, 200.0, Limits())
    (send,) = p.of(ActionKind.RESUBMIT)
    assert send.request == Request(24 * GB, 3600.0)


def test_a_task_that_ran_short_at_the_site_s_most_is_given_up_at_once_and_a_pool_stage_s_retries_ask_nothing_of_their_own() -> None:
    tasks = [T("t0", 0)]
    hist = {"t0": TaskHistory(1, 1, 0.0, short=Short.MEMORY, request=Request(64 * GB, 3600.0))}
    world = World({"t0": TaskObs(M, SchedState.OUT_OF_MEMORY)}, hist)
    stage = Stage("", tasks, Policy(batch_size=10, initial_delay_s=0.0), 1, request=BASE)
    p = plan(Desired(tasks, Policy(), (stage,)), world, 10.0, Limits(node_memory_mb=64 * GB))
    assert not p.of(ActionKind.RESUBMIT)
    (gave_up,) = p.of(ActionKind.GIVE_UP)
    assert (gave_up.reason, gave_up.keys, gave_up.note) == (Reason.AT_CEILING, ("t0",), "")
    given_up = World(world.tasks, {"t0": TaskHistory(1, 1, 0.0, given_up=True, short=Short.MEMORY, request=Request(64 * GB, 3600.0))})
    assert plan(Desired(tasks, Policy(), (stage,)), given_up, 10.0, Limits(node_memory_mb=64 * GB)).is_empty  # once
    assert plan(Desired(tasks, Policy(), (stage,)), world, 10.0, Limits()).of(ActionKind.RESUBMIT)[0].request == Request(96 * GB, 3600.0)  # no ceiling known
    pooled = Stage("", tasks, Policy(batch_size=10, initial_delay_s=0.0), 1, pool=True, request=BASE)
    (send,) = plan(Desired(tasks, Policy(), (pooled,)), world, 10.0, Limits()).of(ActionKind.RESUBMIT)
    assert send.request is None


def test_advice_on_recorded_sacct_data_counts_the_killed_runs_as_lower_bounds() -> None:
    """tests/data/slurm/sacct_usage_final.txt (an array under --mem=100M --time=1, see its README),
    through the real parser: the run killed over its memory and the one that timed out are lower
    bounds, the exit 3 is ignored, and the advice covers what they needed (usage_task.sh)."""
    request = Request(100.0, 60.0)
    runs = []
    for rec in parse_sacct((Path(__file__).parent / "data" / "slurm" / "sacct_usage_final.txt").read_text()):
        if rec.token != "tok-usage":
            continue
        ts = task_sched(rec)
        assert ts.usage is not None
        failed = ts.state is not SchedState.COMPLETED
        short = shortfall(ts.state, ts.exit_code, None, ts.usage, request) if failed else None  # what settle would record
        runs.append(run_of(ts.state, failed, short, ts.usage, request))
    assert [(r.succeeded, r.short) for r in runs] == [(True, None), (False, Short.MEMORY), (False, None), (False, Short.TIME)]
    a = advise("", runs, request, quantile=0.99, margin=0.2)
    assert (a.completed, a.out_of_memory, a.timed_out, a.ignored) == (1, 1, 1, 1)
    # memory: the killed run needed more than its 416 MB peak: p99 unknown, at least that (the only sample is 46 MB)
    assert a.memory.p99.at_least and a.memory.p99.value is not None and a.memory.p99.value > 400
    assert a.memory_gb is not None and a.memory_gb * 1024 >= 1.2 * a.memory.p99.value and a.memory_at_least
    # time: the timed-out run needed more than its 88 s; the completed one took 2 s
    assert a.time.p99.at_least and a.time.p99.value == 88.0 and a.timeout_hours is not None and a.timeout_hours * 3600 >= 1.2 * 88
    assert a.time.p50.value == 2.0 and not a.time.p50.at_least


def test_a_task_is_one_observation_its_success_where_measured_else_what_its_killed_runs_say() -> None:
    killed = Run(50.0, 16.2 * GB, False, Short.MEMORY, BASE, "t0")
    measured = [killed, Run(60.0, 20 * GB, True, None, Request(24 * GB, 3600.0), "t0")]
    a = advise("", measured, BASE)
    assert (a.memory.samples, a.memory.bounds, a.out_of_memory, a.completed) == (1, 0, 1, 1)  # the success, not both
    unmeasured = [killed, Run(60.0, None, True, None, Request(24 * GB, 3600.0), "t0")]  # its peak never reached accounting
    b = advise("", unmeasured, BASE)
    assert (b.memory.samples, b.memory.bounds) == (0, 1) and b.memory_gb is not None and b.memory_gb * 1024 >= 1.2 * 16.2 * GB
