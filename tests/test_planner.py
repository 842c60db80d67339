"""The planner's invariants (DESIGN.md), with hypothesis.

Two levels: the pure planner on random observations, and the whole engine (real ledger on
disk, real planner) against an in-memory simulated scheduler and output tree -- the one
place a fake belongs -- with random failures and random crash points.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import markers
from reconciler.core.causes import Cause, CauseKind
from reconciler.core.model import (
    AttemptObs,
    Desired,
    Limits,
    Need,
    Policy,
    SubmissionObs,
    TaskHistory,
    TaskObs,
    World,
)
from reconciler.core.plan import ActionKind
from reconciler.core.planner import plan
from reconciler.core.reasons import Reason
from reconciler.core.sizing import Request, Short
from reconciler.core.states import OutputState, SchedState, SubmissionKind, SubmissionState
from reconciler.engine import Engine
from reconciler.ledger import Ledger
from reconciler.scheduler.base import ArrayJob, JobRef, SchedulerView, TaskSched
from reconciler.spec.expand import Task
from reconciler.spec.load import WorkTree, load

from .conftest import ROOT


@dataclass(frozen=True)
class T:
    key: str
    index: int
    needs: tuple[Need, ...] = ()


SCHED = [None, *SchedState]
REQUESTS = [Request(None, 3600.0), Request(2048.0, 3600.0), Request(16384.0, 7200.0), Request(32768.0, 600.0)]
OUT = list(OutputState)
CAUSES = [None, Cause(CauseKind.EXIT, "", 1), Cause(CauseKind.NOT_FOUND, "gen", 127), Cause(CauseKind.NOT_EXECUTABLE, "gen", 126), Cause(CauseKind.LAUNCH_FAILED, "gen: Resource temporarily unavailable", 75)]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Desired, World, float, Limits]:
    n = draw(st.integers(0, 60))
    tasks = [T(f"t{i:03d}", i) for i in range(n)]
    policy = Policy(
        batch_size=draw(st.integers(1, 20)),
        max_retries=draw(st.integers(0, 3)),
        initial_delay_s=draw(st.sampled_from([0.0, 5.0, 60.0])),
        backoff_multiplier=draw(st.sampled_from([1.0, 2.0])),
        max_delay_s=100.0,
        prune=draw(st.booleans()),
        rerun_on_change=draw(st.booleans()),
        adopt_existing=draw(st.booleans()),
    )
    obs: dict[str, TaskObs] = {}
    hist: dict[str, TaskHistory] = {}
    for t in tasks:
        sched = draw(st.sampled_from(SCHED))
        subs = 0 if sched is None and draw(st.booleans()) else draw(st.integers(1, 5))
        obs[t.key] = TaskObs(draw(st.sampled_from(OUT)), sched)
        fails = draw(st.integers(0, subs)) if subs else 0
        short = draw(st.sampled_from([None, Short.MEMORY, Short.TIME])) if fails else None
        asked = draw(st.sampled_from(REQUESTS)) if fails else None
        hist[t.key] = TaskHistory(
            subs, fails, draw(st.sampled_from([None, 0.0, 50.0, 99.0])), "x", draw(st.booleans()), draw(st.sampled_from(CAUSES)),
            short, asked, draw(st.sampled_from([None, 500.0])),
        )
    for i in range(draw(st.integers(0, 3))):  # tasks removed from the production
        obs[f"gone{i}"] = TaskObs(OutputState.MISSING, draw(st.sampled_from(SCHED)))
    limits = Limits(
        max_array_size=draw(st.integers(1, 30)), max_queued_tasks=draw(st.integers(1, 80)),
        node_memory_mb=draw(st.sampled_from([None, 4096.0, 16384.0])), max_time_s=draw(st.sampled_from([None, 3600.0, 7200.0])),
    )
    # deep verification failed for some tasks (read by the planner only where outputs are complete)
    corrupt = {k: "sha256 mismatch" for k in obs if draw(st.integers(0, 4)) == 0}
    return Desired(tasks, policy), World(obs, hist, corrupt=corrupt), draw(st.sampled_from([0.0, 60.0, 1000.0])), limits


TASK_KINDS = (ActionKind.SUBMIT, ActionKind.RESUBMIT, ActionKind.CANCEL, ActionKind.GIVE_UP, ActionKind.WAIT, ActionKind.SEND)


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_planner_invariants(drawn: tuple[Desired, World, float, Limits]) -> None:
    desired, world, now, limits = drawn
    obs, hist = world.tasks, world.history
    pol = desired.policy
    p = plan(desired, world, now, limits)
    assert p == plan(desired, world, now, limits)  # deterministic
    assert list(p.actions) == sorted(p.actions, key=lambda a: a.order)  # by kind and batch, never by text
    seen: list[str] = []
    for a in p.actions:
        if a.kind in TASK_KINDS:
            seen.extend(a.keys)
    assert len(seen) == len(set(seen)), "a task appears in two actions"
    by_key = {t.key: t for t in desired.tasks}
    queued = sum(1 for o in obs.values() if o.sched is not None and o.sched.in_flight)
    sent = 0
    for a in p.actions:
        if a.kind in (ActionKind.SUBMIT, ActionKind.RESUBMIT):
            sent += len(a.keys)
            assert list(a.keys) == sorted(a.keys, key=lambda k: by_key[k].index)
            for k, i in zip(a.keys, a.array_indices, strict=True):
                t, o, h = by_key[k], obs[k], hist[k]
                assert i < limits.max_array_size  # invariant 4
                assert t.index // max(1, min(pol.batch_size, limits.max_array_size)) == a.batch
                if a.reason is Reason.OUTPUT_CORRUPT:  # a complete task is rerun only when verification failed
                    assert k in world.corrupt and o.output.done
                    continue
                assert o.output not in (OutputState.COMPLETE, OutputState.ADOPTED)  # invariant 2
                assert not (o.sched is not None and o.sched.in_flight)
                if o.output is OutputState.UNMARKED and h.submissions == 0:
                    assert not pol.adopt_existing
                if o.output is OutputState.STALE:
                    assert pol.rerun_on_change
                if a.kind is ActionKind.RESUBMIT:  # invariant 3
                    assert h.failures <= pol.max_retries and o.sched is not None
                    assert not (h.failures and h.cause is not None and h.cause.kind.permanent), "retried what retrying cannot fix"
                    if a.reason is Reason.OUTPUT_LOST:
                        assert h.failures == 0  # nothing failed: no backoff to wait for
                    else:
                        assert now >= (h.last_end if h.last_end is not None else 0.0) + pol.delay(max(h.failures, 1))
                    if a.request is not None and h.request is not None:  # a retry never asks less than what failed
                        assert a.request.time_s >= h.request.time_s
                        assert h.request.memory_mb is None or (a.request.memory_mb or 0) >= h.request.memory_mb
                        if h.short is not None:  # ... and asks more of what ran short (else it was given up: at_ceiling)
                            grew = a.request.memory_mb != h.request.memory_mb if h.short is Short.MEMORY else a.request.time_s != h.request.time_s
                            assert grew or h.request.memory_mb is None
        if a.kind is ActionKind.CANCEL:
            assert pol.prune and all(k not in by_key for k in a.keys)
        if a.kind is ActionKind.GIVE_UP:
            assert all(not hist[k].given_up and hist[k].failures for k in a.keys)
            permanent = [bool(hist[k].cause and hist[k].cause.kind.permanent) for k in a.keys]  # type: ignore[union-attr]
            if a.reason is Reason.CANNOT_RUN:
                assert all(permanent)
            elif a.reason is Reason.AT_CEILING:  # given up only when the site really has no more to give
                for k in a.keys:
                    h = hist[k]
                    assert h.short is not None and h.request is not None and h.failures <= pol.max_retries
                    if h.short is Short.MEMORY:
                        assert limits.node_memory_mb is not None and h.request.memory_mb is not None and h.request.memory_mb >= limits.node_memory_mb
                    else:
                        assert limits.max_time_s is not None and h.request.time_s >= limits.max_time_s
            else:
                assert a.reason is Reason.RETRIES_EXHAUSTED and not any(permanent)
                assert all(hist[k].failures > pol.max_retries for k in a.keys)
        if a.kind is ActionKind.QUARANTINE and a.reason is Reason.OUTPUT_CORRUPT:
            assert all(k in world.corrupt and obs[k].output.done and not (obs[k].sched and obs[k].sched.in_flight) for k in a.keys)
    moved = {k for a in p.of(ActionKind.QUARANTINE) if a.reason is Reason.OUTPUT_CORRUPT for k in a.keys}
    rerun = {k for a in p.of(ActionKind.SUBMIT, ActionKind.RESUBMIT, ActionKind.WAIT) if a.reason in (Reason.OUTPUT_CORRUPT, Reason.QUEUE_CAP) for k in a.keys}
    assert moved <= rerun, "a corrupt output moved aside is rerun now, or waits for the queue cap"
    cancelled = sum(len(a.keys) for a in p.actions if a.kind is ActionKind.CANCEL)
    if queued <= limits.max_queued_tasks:
        assert queued - cancelled + sent <= limits.max_queued_tasks  # invariant 4


def test_batches_are_batch_local_and_retries_sparse() -> None:
    tasks = [T(f"t{i}", i) for i in range(10)]
    desired = Desired(tasks, Policy(batch_size=4, max_retries=2, initial_delay_s=10.0))
    obs = {t.key: TaskObs(OutputState.COMPLETE, SchedState.COMPLETED) for t in tasks}
    hist = {t.key: TaskHistory(1) for t in tasks}
    obs["t5"] = TaskObs(OutputState.MISSING, SchedState.FAILED)
    obs["t7"] = TaskObs(OutputState.MISSING, SchedState.TIMEOUT)
    hist["t5"] = hist["t7"] = TaskHistory(1, 1, 100.0, "exit 1")
    p = plan(desired, World(obs, hist), 105.0, Limits())
    assert [a.kind for a in p.actions] == [ActionKind.WAIT] and p.actions[0].until == 110.0
    p = plan(desired, World(obs, hist), 110.0, Limits())
    (a,) = p.actions
    assert (a.kind, a.batch, a.keys, a.array_indices) == (ActionKind.RESUBMIT, 1, ("t5", "t7"), (1, 3))


# ------------------------------------------------------------------ the engine, simulated


class Crash(Exception):
    """A reconciler killed at this point (the simulation raises it where SIGKILL could land)."""


@dataclass
class SimScheduler:
    """An in-memory scheduler: accepts arrays, runs them when told, forgets nothing."""

    rng: random.Random
    crash_before: float = 0.0
    crash_after: float = 0.0
    name: str = "sim"
    lookup_grace_s: float = 0.0
    jobs: dict[str, dict[int, TaskSched]] = field(default_factory=dict)
    keys: dict[str, dict[int, str]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, Path] = field(default_factory=dict)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    violations: list[str] = field(default_factory=list)

    def submit(self, job: ArrayJob) -> str:
        if self.rng.random() < self.crash_before:
            raise Crash("before sbatch")
        if job.token in self.tokens:
            self.violations.append(f"token {job.token} sent twice")
        manifest = __import__("json").loads(Path(job.script_path).with_suffix(".json").read_text())
        live = {k for jid, ks in self.keys.items() for i, k in ks.items() if self.jobs[jid][i].state.in_flight}
        job_id = str(next(self.ids))
        self.jobs[job_id] = {}
        self.keys[job_id] = {}
        for i in job.array_indices:
            key = manifest["tasks"][str(i)]["key"]
            if key in live:
                self.violations.append(f"{key} submitted while in flight")
            self.jobs[job_id][i] = TaskSched(SchedState.PENDING)
            self.keys[job_id][i] = key
        self.tokens[job.token] = job_id
        self.manifests[job_id] = Path(job.script_path).with_suffix(".json")
        if self.rng.random() < self.crash_after:
            raise Crash("after sbatch, before the job id was recorded")
        return job_id

    def observe(self, refs: Sequence[JobRef]) -> SchedulerView:
        view = SchedulerView()
        for r in refs:
            jid = r.job_id or self.tokens.get(r.token)
            if r.job_id is None and jid:
                view.found[r.token] = jid
            if jid in self.jobs:
                view.tasks[jid] = dict(self.jobs[jid])
            elif r.job_id:
                view.gone.add(r.job_id)
        return view

    def max_array_size(self) -> int | None:
        return None

    def site_ceilings(self, partition: str | None) -> tuple[float | None, float | None]:
        return None, None

    def cancel(self, job_id: str, array_indices: Sequence[int] | None = None) -> None:
        for i in array_indices or list(self.jobs[job_id]):
            if self.jobs[job_id][i].state.in_flight:
                self.jobs[job_id][i] = TaskSched(SchedState.CANCELLED)

    def step(self, outputs: SimOutputs, fingerprints: dict[str, str], p_fail: float, now: float) -> None:
        """Time passes: every queued task runs and ends, some fail."""
        for jid, tasks in self.jobs.items():
            for i, ts in tasks.items():
                if not ts.state.in_flight:
                    continue
                key = self.keys[jid][i]
                if self.rng.random() < p_fail:
                    tasks[i] = TaskSched(self.rng.choice([SchedState.FAILED, SchedState.TIMEOUT, SchedState.NODE_FAIL]), 1, "boom", now, now)
                    if tasks[i].state is SchedState.FAILED and self.rng.random() < 0.5:  # the wrapper says why
                        cause = self.rng.choice([Cause(CauseKind.NOT_FOUND, "gen", 127), Cause(CauseKind.EXIT, "", 1)])
                        markers.write_cause(self.manifests[jid], i, cause.to_doc())
                    if self.rng.random() < 0.5:
                        outputs.state[key] = OutputState.UNMARKED  # a partial write
                else:
                    tasks[i] = TaskSched(SchedState.COMPLETED, 0, "", now, now)
                    outputs.state[key] = OutputState.COMPLETE
                    outputs.fp[key] = fingerprints[key]


@dataclass
class SimOutputs:
    state: dict[str, OutputState] = field(default_factory=dict)
    fp: dict[str, str] = field(default_factory=dict)

    def observe(self, tasks: Sequence[Task], deep: object) -> dict[str, OutputState]:
        out = {}
        for t in tasks:
            st_ = self.state.get(t.key, OutputState.MISSING)
            if st_ is OutputState.COMPLETE and self.fp.get(t.key) != t.fingerprint:
                st_ = OutputState.STALE
            out[t.key] = st_
        return out

    def move_partial(self, task: Task, label: str) -> list[Path]:
        self.state.pop(task.key, None)
        return []


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _production(tmp: Path, realizations: int, redshifts: int, batch: int, retries: int) -> object:
    root = tmp / "repo"
    (root / "productions").mkdir(parents=True, exist_ok=True)
    (root / "defaults").mkdir(exist_ok=True)
    (root / "defaults/local.yaml").write_text((ROOT / "defaults/local.yaml").read_text())
    zs = ", ".join(str(0.5 + 0.25 * i) for i in range(redshifts))
    (root / "productions/sim.yaml").write_text(
        f"production: {{name: sim}}\nscience:\n  redshifts: [{zs}]\n  realizations: {{count: {realizations}}}\n"
        f"execution:\n  batch_size: {batch}\n  retry_policy: {{max_retries: {retries}, initial_delay_minutes: 1, max_delay_minutes: 10}}\n"
        f"outputs: {{base_path: {tmp / 'out'}}}\n"
        "task:\n  command: gen {realization} {redshift} {output}\n  outputs: ['r{realization}/z{redshift:.3f}.h5']\n"
    )
    return load(WorkTree(root), "sim", repo_root=root)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    realizations=st.integers(1, 6),
    redshifts=st.integers(1, 4),
    batch=st.integers(1, 7),
    retries=st.integers(0, 2),
    p_fail=st.sampled_from([0.0, 0.2, 0.5]),
    crash=st.sampled_from([0.0, 0.2, 0.4]),
)
def test_engine_converges_under_failures_and_crashes(
    tmp_path_factory: pytest.TempPathFactory, seed: int, realizations: int, redshifts: int, batch: int, retries: int, p_fail: float, crash: float
) -> None:
    tmp = tmp_path_factory.mktemp("sim")
    loaded = _production(tmp, realizations, redshifts, batch, retries)
    rng = random.Random(seed)
    sched = SimScheduler(rng, crash_before=crash / 2, crash_after=crash / 2)
    outs = SimOutputs()
    clock = Clock()
    ledger_path = tmp / "ledger.db"
    fps = {t.key: t.fingerprint for t in loaded.expansion().tasks}  # type: ignore[attr-defined]
    for _ in range(200):
        with Ledger(ledger_path) as ledger:
            eng = Engine(loaded, sched, ledger, outs, clock=clock)  # type: ignore[arg-type]
            try:
                result = eng.run_pass()
            except Crash:
                continue  # killed: a fresh reconciler picks up next tick
            # idempotence: a fresh plan of the unchanged world does nothing
            again = eng.plan(eng.observe())
            assert again.is_empty, again.dumps()
            if result.summary["done"]:
                break
        clock.t += rng.choice([1.0, 30.0, 700.0])
        sched.step(outs, fps, p_fail, clock.t)
    assert sched.violations == []
    assert sched.jobs, "nothing was ever submitted"
    assert result.summary["done"], result.summary["counts"]
    counts = result.summary["counts"]
    assert counts["complete"] + counts["failed"] == len(fps)
    with Ledger(ledger_path) as ledger:
        for _key, h in ledger.history().items():
            assert h.failures <= retries + 1  # invariant 3: at most max_retries retries
            assert h.submissions <= retries + 1
            if h.cause is not None and h.cause.kind.permanent:  # no retry after a command that cannot run
                assert h.failures == h.submissions and h.given_up and result.summary["states"][_key] == "failed"


def test_a_completed_task_whose_output_vanished_is_planned_again_at_once() -> None:
    """Its history has no failure and no end: it must not wait for a backoff that never ends."""
    tasks = [T("t0", 0), T("t1", 1)]
    desired = Desired(tasks, Policy(batch_size=10, max_retries=0, initial_delay_s=600.0))
    world = World(
        {"t0": TaskObs(OutputState.MISSING, SchedState.COMPLETED), "t1": TaskObs(OutputState.COMPLETE, SchedState.COMPLETED)},
        {"t0": TaskHistory(1), "t1": TaskHistory(1)},
    )
    (a,) = plan(desired, world, 1000.0, Limits()).actions
    assert (a.kind, a.reason, a.keys, a.array_indices) == (ActionKind.RESUBMIT, Reason.OUTPUT_LOST, ("t0",), (0,))


# ------------------------------------------------------------------ failure causes


def _failed_attempt(cause: Cause | None, *, retries: int = 3) -> tuple[Desired, World]:
    """One task whose first attempt just ended FAILED (exit 127, say), its failure not yet counted."""
    desired = Desired([T("t0", 0)], Policy(batch_size=10, max_retries=retries, initial_delay_s=600.0))
    att = AttemptObs("t0", 0, SchedState.FAILED, "exit 127", 100.0, cause=cause)
    sub = SubmissionObs("tok", 0, SubmissionKind.SUBMIT, SubmissionState.SUBMITTED, 50.0, job_id="7", attempts=(att,))
    world = World({"t0": TaskObs(OutputState.MISSING, SchedState.FAILED)}, {"t0": TaskHistory(1)}, (sub,))
    return desired, world


@pytest.mark.parametrize("kind", [CauseKind.NOT_FOUND, CauseKind.NOT_EXECUTABLE])
def test_a_command_that_cannot_run_gives_up_on_its_first_failure(kind: CauseKind) -> None:
    desired, world = _failed_attempt(Cause(kind, "no-such-generator", 127))
    p = plan(desired, world, 110.0, Limits())
    record, give_up = p.actions
    assert (record.kind, record.keys) == (ActionKind.RECORD_FAILURE, ("t0",))
    assert (give_up.kind, give_up.reason, give_up.keys) == (ActionKind.GIVE_UP, Reason.CANNOT_RUN, ("t0",))
    assert give_up.note == f"command {'not found' if kind is CauseKind.NOT_FOUND else 'not executable'}: no-such-generator"
    assert "retrying cannot fix" in give_up.message


@pytest.mark.parametrize("cause", [None, Cause(CauseKind.EXIT, "", 127), Cause(CauseKind.TIMEOUT, "60", 124), Cause(CauseKind.INVALID_OUTPUT, "empty x.h5", 65), Cause(CauseKind.LAUNCH_FAILED, "gen: Resource temporarily unavailable", 75)])
def test_any_other_cause_backs_off_as_before(cause: Cause | None) -> None:
    desired, world = _failed_attempt(cause)
    record, wait = plan(desired, world, 110.0, Limits()).actions
    assert record.kind is ActionKind.RECORD_FAILURE
    assert (wait.kind, wait.reason, wait.until) == (ActionKind.WAIT, Reason.BACKOFF, 700.0)


def test_a_given_up_command_stays_given_up_until_retry_waives_it() -> None:
    desired = Desired([T("t0", 0)], Policy(batch_size=10, max_retries=3, initial_delay_s=600.0))
    cause = Cause(CauseKind.NOT_FOUND, "gen", 127)
    obs = {"t0": TaskObs(OutputState.MISSING, SchedState.FAILED)}
    given_up = World(obs, {"t0": TaskHistory(1, 1, 100.0, cause.text, True, cause)})
    assert plan(desired, given_up, 1e9, Limits()).is_empty  # no backoff ever ends it
    waived = plan(desired, given_up, 110.0, Limits(), retry=True)
    assert [(a.kind, a.reason) for a in waived.actions] == [(ActionKind.WAIVE, Reason.MANUAL_RETRY), (ActionKind.RESUBMIT, Reason.MANUAL_RETRY)]
    # the pass that records the failure did not give up yet (a killed pass): the next one does
    not_yet = World(obs, {"t0": TaskHistory(1, 1, 100.0, cause.text, False, cause)})
    (a,) = plan(desired, not_yet, 110.0, Limits()).actions
    assert (a.kind, a.reason) == (ActionKind.GIVE_UP, Reason.CANNOT_RUN)


def test_the_cause_is_what_the_history_says_of_the_failure() -> None:
    """The wrapper's words replace "exit 127"; a cancelled wrapper defers to the scheduler's."""
    from reconciler.core.outcome import failure_text

    cause = Cause(CauseKind.NOT_FOUND, "no-such-generator", 127)
    assert failure_text(AttemptObs("t0", 0, SchedState.FAILED, "exit 127", cause=cause), Reason.ATTEMPT_FAILED) == "command not found: no-such-generator"
    cancelled = Cause(CauseKind.CANCELLED, "SIGTERM", 143)
    assert failure_text(AttemptObs("t0", 0, SchedState.TIMEOUT, "TIMEOUT", cause=cancelled), Reason.ATTEMPT_FAILED) == "TIMEOUT"
    tail = Cause(CauseKind.EXIT, "", 1, ("Traceback (most recent call last):", "ValueError: bad seed"))
    assert (tail.group, tail.text) == ("exit 1", "exit 1: ValueError: bad seed")
    invalid = Cause(CauseKind.INVALID_OUTPUT, "dataset galaxies/ra missing in r1/z0.5.h5", 65)
    assert (invalid.group, invalid.text) == ("outputs invalid", "outputs invalid: dataset galaxies/ra missing in r1/z0.5.h5")


def test_summary_groups_failures_by_cause_and_counts_a_command_that_cannot_run_as_failed() -> None:
    from reconciler.core.summary import shortfall, summarize

    tasks = [T(f"t{i}", i) for i in range(5)]
    desired = Desired(tasks, Policy(max_retries=3))
    missing = Cause(CauseKind.NOT_FOUND, "no-such-generator", 127, ("exec: no-such-generator",))
    obs = {t.key: TaskObs(OutputState.MISSING, SchedState.FAILED) for t in tasks}
    hist = {t.key: TaskHistory(1, 1, 100.0, missing.text, False, missing) for t in tasks[:3]}
    hist["t3"] = TaskHistory(1, 1, 100.0, "exit 3", False, Cause(CauseKind.EXIT, "", 3))
    hist["t4"] = TaskHistory(1, 1, 100.0, "OUT_OF_MEMORY")  # killed: the wrapper could not say
    s = summarize(desired, obs, hist, logs={"t0": "/p/logs/batch_0000_7_0.err"})
    assert s["counts"]["failed"] == 3 and s["counts"]["retrying"] == 2  # 1 failure of 3 allowed, yet given up
    assert [(c["cause"], c["tasks"], c["gave_up"], c["retry_cannot_fix"]) for c in s["causes"]] == [
        ("command not found: no-such-generator", 3, 3, True), ("OUT_OF_MEMORY", 1, 0, False), ("exit 3", 1, 0, False),
    ]
    assert s["causes"][0]["log"].endswith(".err") and s["causes"][0]["stderr"] == ["exec: no-such-generator"]
    assert shortfall({**s, "done": True}) == "3 task(s) gave up: command not found: no-such-generator (3)"


# ------------------------------------------------------------------ campaigns: stages and readiness


@st.composite
def campaigns(draw: st.DrawFn) -> tuple[Desired, World, float, Limits]:
    """generate (n) -> measure (a map; some members excluded) -> covariance (a fan-in per group)."""
    from reconciler.core.model import Stage

    n, groups = draw(st.integers(1, 12)), draw(st.integers(1, 3))
    gen = [T(f"generate/{i}", i) for i in range(n)]
    excluded = {i for i in range(n) if draw(st.integers(0, 5)) == 0}
    measure = [T(f"measure/{i}", i, (Need("generate", (f"generate/{i}",)),)) for i in range(n) if i not in excluded]
    cov = [T(f"covariance/{j}", j, (Need("measure", tuple(f"measure/{i}" for i in range(n) if i % groups == j and i not in excluded)),)) for j in range(groups)]

    def policy() -> Policy:
        return Policy(
            batch_size=draw(st.integers(1, 5)), max_retries=draw(st.integers(0, 2)), initial_delay_s=draw(st.sampled_from([0.0, 60.0])),
            rerun_on_change=draw(st.booleans()), adopt_existing=draw(st.booleans()),
        )

    stages = (
        Stage("generate", gen, policy(), n),
        Stage("measure", measure, policy(), n),
        Stage("covariance", cov, policy(), groups, draw(st.sampled_from([1.0, 0.5, 0.0]))),
    )
    obs: dict[str, TaskObs] = {}
    hist: dict[str, TaskHistory] = {}
    for t in [*gen, *measure, *cov]:
        sched = draw(st.sampled_from(SCHED))
        subs = 0 if sched is None and draw(st.booleans()) else draw(st.integers(1, 4))
        obs[t.key] = TaskObs(draw(st.sampled_from(OUT)), sched)
        fails = draw(st.integers(0, subs)) if subs else 0
        hist[t.key] = TaskHistory(subs, fails, draw(st.sampled_from([None, 0.0, 99.0])), "x", draw(st.booleans()), draw(st.sampled_from(CAUSES)))
    keys = sorted(obs)
    missing = {k: "/ic/" + k for k in keys if draw(st.integers(0, 6)) == 0}
    corrupt = {k: "sha256 mismatch" for k in keys if draw(st.integers(0, 8)) == 0}
    partial = {t.key: t.needs[0].members[:1] for t in cov if t.needs[0].members and draw(st.booleans())}
    limits = Limits(max_array_size=draw(st.integers(1, 6)), max_queued_tasks=draw(st.integers(1, 40)))
    desired = Desired([*gen, *measure, *cov], Policy(prune=draw(st.booleans())), stages)
    return desired, World(obs, hist, corrupt=corrupt, missing_inputs=missing, partial=partial), draw(st.sampled_from([0.0, 1000.0])), limits


@settings(max_examples=300, deadline=None)
@given(campaigns(), st.booleans())
def test_no_task_is_sent_before_its_members_are_done(drawn: tuple[Desired, World, float, Limits], retry: bool) -> None:
    """A send's members are all done, or it runs on a partial set that names every member not
    done, none of them pending; batches never mix stages; the planner's invariants hold."""
    from reconciler.core.outcome import adoptable, gave_up
    from reconciler.core.summary import summarize

    desired, world, now, limits = drawn
    obs, hist = world.tasks, world.history
    p = plan(desired, world, now, limits, retry=retry)
    assert p == plan(desired, world, now, limits, retry=retry)
    assert list(p.actions) == sorted(p.actions, key=lambda a: a.order)
    stage_of = {t.key: s for s in desired.stage_list for t in s.tasks}
    base, bases = 0, {}
    for s in desired.stage_list:
        bs = max(1, min(s.policy.batch_size, limits.max_array_size))
        bases[s.name] = (base, bs)
        base += -(-s.total // bs)
    seen = [k for a in p.actions if a.kind in TASK_KINDS for k in a.keys]
    assert len(seen) == len(set(seen)), "a task appears in two actions"

    tasks_by_key = {t.key: (t, s) for s in desired.stage_list for t in s.tasks}

    def state(key: str, pol: Policy) -> str:  # the rule, restated (core/readiness.py's docstring)
        o, h = obs[key], hist[key]
        if o.sched is not None and o.sched.in_flight:
            return "pending"
        if o.output.done and key not in world.corrupt or pol.adopt_existing and adoptable(o.output, h.submissions):
            return "done"
        if o.output is OutputState.STALE and not pol.rerun_on_change:
            return "lost"  # nothing reruns it
        if h.failures and not retry:
            return "lost" if gave_up(h, pol.max_retries) else "pending"
        if not h.failures and key in tasks_by_key:  # blocked itself: its own members are lost
            t, st = tasks_by_key[key]
            got = [state(m, policies[n.stage]) for n in t.needs for m in n.members]
            if got and "pending" not in got and "lost" in got and got.count("done") < st.min_fraction * len(got) - 1e-9:
                return "lost"
        return "pending"

    policies = {s.name: s.policy for s in desired.stage_list}
    sent = 0
    for a in p.actions:
        if a.kind in (ActionKind.SUBMIT, ActionKind.RESUBMIT):
            sent += len(a.keys)
            (name,) = {stage_of[k].name for k in a.keys}  # never two stages in one submission
            stage = stage_of[a.keys[0]]
            b0, bs = bases[name]
            missing_of = dict(a.partial)
            assert set(missing_of) <= set(a.keys) and (a.reason is Reason.PARTIAL_MEMBERS) == bool(a.partial)
            for k, i in zip(a.keys, a.array_indices, strict=True):
                t = next(t for t in stage.tasks if t.key == k)
                assert a.batch == b0 + t.index // bs and i == t.index % bs < limits.max_array_size
                assert k not in world.missing_inputs
                assert not (obs[k].sched is not None and obs[k].sched.in_flight)
                if obs[k].output.done:
                    assert k in world.corrupt or (a.reason is Reason.MEMBERS_COMPLETED and k in world.partial)
                policies = {s.name: s.policy for s in desired.stage_list}
                members = [(m, state(m, policies[n.stage])) for n in t.needs for m in n.members]
                not_done = {m for m, s in members if s != "done"}
                assert not_done == set(missing_of.get(k, ())), (k, members, a)
                assert all(s == "lost" for m, s in members if m in not_done)
                if not_done:
                    assert len(members) - len(not_done) >= stage.min_fraction * len(members) - 1e-9
    queued = sum(1 for o in obs.values() if o.sched is not None and o.sched.in_flight)
    cancelled = sum(len(a.keys) for a in p.of(ActionKind.CANCEL))
    if queued <= limits.max_queued_tasks:
        assert queued - cancelled + sent <= limits.max_queued_tasks
    waits: dict[tuple[Reason, str], int] = {}
    for a in p.of(ActionKind.WAIT):
        for name in {stage_of[k].name for k in a.keys if k in stage_of}:
            waits[a.reason, name] = waits.get((a.reason, name), 0) + 1
    assert all(n == 1 for (reason, _), n in waits.items() if reason is not Reason.LOOKUP_GRACE), "one WAIT per reason and stage"
    # the summary reads the same rule: what the planner holds, it shows held
    if not world.corrupt and not retry:
        s = summarize(desired, obs, hist, waiting=world.missing_inputs, partial=world.partial)
        for a in p.of(ActionKind.WAIT):
            want = {Reason.WAITING_MEMBERS: "waiting", Reason.BLOCKED_BY_MEMBER: "blocked"}.get(a.reason)
            if want:
                assert {s["states"][k] for k in a.keys} == {want}, a
