"""The plan is the whole truth: apply performs the plan's actions and nothing else.

Random worlds are grown by running the real engine (real ledger on disk, real planner)
against the in-memory scheduler and output tree of test_planner, with failures, partial
writes, lost sbatch answers, submissions that never arrived, and staged passes. At a random
moment the next pass is observed and planned, then applied through *recording* adapters;
every call they saw, and every change to the ledger, must be one the plan listed.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.plan import ActionKind, Plan
from reconciler.core.reasons import Reason
from reconciler.core.states import OutputState, SchedState, SubmissionState
from reconciler.engine import Engine
from reconciler.errors import TransientError
from reconciler.ledger import Ledger
from reconciler.scheduler.base import ArrayJob, JobRef, SchedulerView, TaskSched
from reconciler.spec.expand import Task

from .test_planner import Clock, Crash, SimOutputs, SimScheduler, _production


@dataclass
class RecordingScheduler:
    inner: SimScheduler
    calls: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def lookup_grace_s(self) -> float:
        return self.inner.lookup_grace_s

    def submit(self, job: ArrayJob) -> str:
        manifest = json.loads(Path(job.script_path).with_suffix(".json").read_text())
        keys = tuple(manifest["tasks"][str(i)]["key"] for i in job.array_indices)
        self.calls.append(("submit", (job.token, keys)))
        return self.inner.submit(job)

    def observe(self, refs: Sequence[JobRef]) -> SchedulerView:
        self.calls.append(("observe", len(refs)))
        return self.inner.observe(refs)

    def cancel(self, job_id: str, array_indices: Sequence[int] | None = None) -> None:
        self.calls.append(("cancel", (job_id, tuple(array_indices or ()))))
        self.inner.cancel(job_id, array_indices)

    def max_array_size(self) -> int | None:
        self.calls.append(("max_array_size", None))
        return None

    def site_ceilings(self, partition: str | None) -> tuple[float | None, float | None]:
        self.calls.append(("site_ceilings", partition))
        return None, None


@dataclass
class RecordingOutputs:
    inner: SimOutputs
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def observe(self, tasks: Sequence[Task], deep: object) -> dict[str, OutputState]:
        self.calls.append(("observe", len(tasks)))
        return self.inner.observe(tasks, deep)

    def move_partial(self, task: Task, label: str) -> list[Path]:
        self.calls.append(("move_partial", task.key))
        return self.inner.move_partial(task, label)


def ledger_rows(path: Path) -> dict[str, dict[Any, tuple]]:
    db = sqlite3.connect(path)
    try:
        return {
            "tasks": {r[0]: r[1:] for r in db.execute("SELECT key, submissions, failures, last_end, last_reason, given_up, latest_token FROM tasks")},
            "submissions": {r[0]: r[1:] for r in db.execute("SELECT token, state, job_id FROM submissions")},
            "attempts": {(r[0], r[1]): r[2:] for r in db.execute("SELECT token, array_index, sched_state, failure_recorded FROM attempts")},
        }
    finally:
        db.close()


def keys_of(p: Plan, *kinds: ActionKind) -> Counter[str]:
    return Counter(k for a in p.of(*kinds) for k in a.keys)


def tokens_of(p: Plan, kind: ActionKind) -> set[str]:
    return {a.token for a in p.of(kind) if a.token}


def check_apply(eng: Engine, sched: RecordingScheduler, outs: RecordingOutputs, ledger_path: Path) -> Plan:
    obs = eng.observe()
    p = eng.plan(obs)
    sched.calls.clear()
    outs.calls.clear()
    before = ledger_rows(ledger_path)
    applied, _events = eng.apply(p, obs)
    after = ledger_rows(ledger_path)

    # the scheduler: one submit per SUBMIT/RESUBMIT/SEND action, of exactly its tasks; no reads
    submits = [c[1] for c in sched.calls if c[0] == "submit"]
    assert Counter(k for _tok, ks in submits for k in ks) == keys_of(p, ActionKind.SUBMIT, ActionKind.RESUBMIT, ActionKind.SEND)
    assert len(submits) == len(p.of(ActionKind.SUBMIT, ActionKind.RESUBMIT, ActionKind.SEND))
    assert {tok for tok, _ks in submits} >= tokens_of(p, ActionKind.SEND)
    assert not [c for c in sched.calls if c[0] in ("observe", "max_array_size", "site_ceilings")], sched.calls
    cancelled = [c for c in sched.calls if c[0] == "cancel"]
    assert bool(cancelled) <= bool(p.of(ActionKind.CANCEL))
    # the output tree: moves are exactly the QUARANTINE keys; no reads
    assert Counter(c[1] for c in outs.calls if c[0] == "move_partial") == keys_of(p, ActionKind.QUARANTINE)
    assert not [c for c in outs.calls if c[0] == "observe"]

    # the ledger: every change is one the plan (or the journal of what was seen) names
    failed = keys_of(p, ActionKind.RECORD_FAILURE)
    sent = keys_of(p, ActionKind.SUBMIT, ActionKind.RESUBMIT, ActionKind.STAGE)
    abandoned = keys_of(p, ActionKind.ABANDON)
    for key in before["tasks"].keys() | after["tasks"].keys():
        old = before["tasks"].get(key, (0, 0, None, "", 0, None))
        new = after["tasks"][key]
        assert new[0] - old[0] == sent[key] - abandoned[key], (key, old, new, p.dumps())
        assert new[1] - old[1] == failed[key], (key, old, new, p.dumps())
        if new[4] and not old[4]:
            assert key in keys_of(p, ActionKind.GIVE_UP), key
        if old[4] and not new[4]:
            assert sent[key], key  # a new attempt resets the give-up
    new_tokens = set(after["submissions"]) - set(before["submissions"])
    assert len(new_tokens) == len(p.of(ActionKind.SUBMIT, ActionKind.RESUBMIT, ActionKind.STAGE))  # one per action
    for token, (state, job) in after["submissions"].items():
        old = before["submissions"].get(token)
        if old is None:
            continue
        if state == "abandoned" and old[0] != "abandoned":
            assert token in tokens_of(p, ActionKind.ABANDON), (token, p.dumps())
        if job != old[1]:
            assert token in tokens_of(p, ActionKind.RECOVER) | tokens_of(p, ActionKind.SEND) | {t for t, _ in submits}, token
    newly_counted = {k for k, v in after["attempts"].items() if v[1] and not before["attempts"].get(k, (None, 0))[1]}
    planned = {(a.token, i) for a in p.of(ActionKind.RECORD_FAILURE) for i in a.array_indices}
    assert newly_counted == planned, (newly_counted, planned)
    assert set(applied) <= {k.value for k in ActionKind} - {ActionKind.WAIT.value}
    return p


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    realizations=st.integers(1, 5),
    redshifts=st.integers(1, 3),
    batch=st.integers(1, 5),
    retries=st.integers(0, 2),
    steps=st.integers(1, 12),
    grace=st.sampled_from([0.0, 50.0]),
)
def test_apply_performs_the_plan_and_nothing_else(
    tmp_path_factory: pytest.TempPathFactory, seed: int, realizations: int, redshifts: int, batch: int, retries: int, steps: int, grace: float
) -> None:
    tmp = tmp_path_factory.mktemp("apply")
    loaded = _production(tmp, realizations, redshifts, batch, retries)
    rng = random.Random(seed)
    sim = SimScheduler(rng, crash_before=0.2, crash_after=0.2, lookup_grace_s=grace)
    outs = SimOutputs()
    clock = Clock()
    ledger_path = tmp / "ledger.db"
    fps = {t.key: t.fingerprint for t in loaded.expansion().tasks}  # type: ignore[attr-defined]
    kinds: Counter[str] = Counter()
    for _ in range(steps):
        with Ledger(ledger_path) as ledger:
            eng = Engine(loaded, sim, ledger, outs, clock=clock)  # type: ignore[arg-type]
            try:
                eng.run_pass(stage=rng.random() < 0.2)
            except Crash:
                pass
        clock.t += rng.choice([1.0, 30.0, 700.0])
        sim.step(outs, fps, 0.4, clock.t)
    sim.crash_before = sim.crash_after = 0.0
    rec_sched, rec_outs = RecordingScheduler(sim), RecordingOutputs(outs)
    with Ledger(ledger_path) as ledger:
        eng = Engine(loaded, rec_sched, ledger, rec_outs, clock=clock)  # type: ignore[arg-type]
        p = check_apply(eng, rec_sched, rec_outs, ledger_path)
        kinds.update(a.kind.value for a in p.actions)
        again = eng.plan(eng.observe())
        assert again.is_empty, again.dumps()  # idempotence: applied, the next plan has nothing to do
    assert sim.violations == []


def test_a_plan_lists_the_abandon_the_send_and_the_quarantine(tmp_path: Path) -> None:
    """The issue's example: a lost token past its grace, a staged submission and a partial
    output of a killed task are each an action with its reason, listed before anything is done."""
    loaded = _production(tmp_path, 3, 1, 1, 2)  # 3 tasks, one per batch
    sim = SimScheduler(random.Random(1), lookup_grace_s=60.0)
    outs = SimOutputs()
    clock = Clock()
    ledger_path = tmp_path / "ledger.db"
    keys = [t.key for t in loaded.expansion().tasks]  # type: ignore[attr-defined]
    with Ledger(ledger_path) as ledger:
        Engine(loaded, sim, ledger, outs, clock=clock).run_pass(stage=True)  # type: ignore[arg-type]
        tokens = {s.batch: s.token for s in ledger.all_submissions()}
        # batch 0 was sent and its node died mid-write; batch 2's sbatch never answered
        ledger.set_submitted(tokens[0], "7", clock.t)
        ledger.unstage(tokens[2], clock.t)
    sim.jobs["7"] = {0: TaskSched(SchedState.NODE_FAIL, None, "NODE_FAIL", clock.t, clock.t)}
    sim.keys["7"] = {0: keys[0]}
    sim.tokens[tokens[0]] = "7"
    outs.state[keys[0]] = OutputState.UNMARKED  # the killed task's partial write
    clock.t += 600.0  # past the lookup grace and the first backoff
    with Ledger(ledger_path) as ledger:
        eng = Engine(loaded, sim, ledger, outs, clock=clock)  # type: ignore[arg-type]
        p = eng.plan(eng.observe())
    doc = json.loads(p.dumps())
    by_kind = {a["kind"]: a for a in doc["actions"]}
    assert (by_kind["abandon"]["token"], by_kind["abandon"]["reason"]) == (tokens[2], "never_received"), doc
    assert (by_kind["send"]["token"], by_kind["send"]["keys"]) == (tokens[1], [keys[1]])
    assert by_kind["send"]["reason"] == "staged_current"
    assert (by_kind["record_failure"]["keys"], by_kind["record_failure"]["reason"]) == ([keys[0]], "attempt_failed")
    assert (by_kind["quarantine"]["keys"], by_kind["quarantine"]["reason"]) == ([keys[0]], "partial_output")
    assert "qa/partial/" in by_kind["quarantine"]["message"]
    assert (by_kind["resubmit"]["keys"], by_kind["submit"]["keys"]) == ([keys[0]], [keys[2]])  # planned again at once
    order = [a["kind"] for a in doc["actions"]]
    assert order == ["record_failure", "abandon", "quarantine", "send", "resubmit", "submit"], order


def _world_with_one_failed_attempt(tmp: Path, retries: int = 2) -> tuple[Any, SimScheduler, SimOutputs, Clock, Path]:
    loaded = _production(tmp, 1, 1, 1, retries)
    sim, outs, clock = SimScheduler(random.Random(3)), SimOutputs(), Clock()
    ledger_path = tmp / "ledger.db"
    with Ledger(ledger_path) as ledger:
        Engine(loaded, sim, ledger, outs, clock=clock).run_pass()  # type: ignore[arg-type]
    sim.step(outs, {}, 1.0, clock.t)  # every task fails
    return loaded, sim, outs, clock, ledger_path


def test_a_pass_killed_after_its_journal_still_counts_the_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The submission is closed only after the failure is counted: a pass that dies between
    the journal and the plan's actions leaves it open, and the next pass counts it."""
    loaded, sim, outs, clock, ledger_path = _world_with_one_failed_attempt(tmp_path)

    def die(*_args: object) -> None:
        raise Crash("killed between the journal and record_failure")

    with Ledger(ledger_path) as ledger:
        eng = Engine(loaded, sim, ledger, outs, clock=clock)  # type: ignore[arg-type]
        monkeypatch.setattr(ledger, "record_failures", die)
        with pytest.raises(Crash):
            eng.run_pass()
    monkeypatch.undo()
    with Ledger(ledger_path) as ledger:
        assert [s.state for s in ledger.all_submissions()] == [SubmissionState.SUBMITTED]  # still open
        eng = Engine(loaded, sim, ledger, outs, clock=clock)  # type: ignore[arg-type]
        p = eng.plan(eng.observe())
        assert [a.kind for a in p.actions] == [ActionKind.RECORD_FAILURE, ActionKind.WAIT], p.dumps()
        eng.apply(p, eng.observe())
        (h,) = ledger.history().values()
        assert h.failures == 1 and h.last_end is not None
        clock.t += 3600.0  # past the backoff: retried, not waiting forever
        kinds = [a.kind for a in eng.plan(eng.observe()).actions]
        assert kinds[-1] is ActionKind.RESUBMIT and ActionKind.WAIT not in kinds, kinds


def test_a_sent_staged_submission_gets_its_lookup_grace_from_the_send(tmp_path: Path) -> None:
    """Staged yesterday, sent today, sbatch's answer lost: the token is looked for during the
    grace that starts at the send, not abandoned (and sent twice) at once."""

    class LostAnswer(SimScheduler):
        def submit(self, job: ArrayJob) -> str:
            raise TransientError("sbatch outcome unknown (no answer within 30 s)")

    loaded = _production(tmp_path, 1, 1, 1, 2)
    sim, outs, clock = LostAnswer(random.Random(0), lookup_grace_s=300.0), SimOutputs(), Clock()
    with Ledger(tmp_path / "ledger.db") as ledger:
        Engine(loaded, sim, ledger, outs, clock=clock).run_pass(stage=True)  # type: ignore[arg-type]
        clock.t += 86400.0
        with pytest.raises(TransientError):
            Engine(loaded, sim, ledger, outs, clock=clock).run_pass()  # type: ignore[arg-type]
        clock.t += 5.0
        eng = Engine(loaded, sim, ledger, outs, clock=clock)  # type: ignore[arg-type]
        p = eng.plan(eng.observe())
        assert [(a.kind, a.reason) for a in p.actions] == [(ActionKind.WAIT, Reason.LOOKUP_GRACE)], p.dumps()
        clock.t += 300.0
        assert [a.kind for a in eng.plan(eng.observe()).actions] == [ActionKind.ABANDON, ActionKind.SUBMIT]


def test_retry_waives_every_failed_task_even_those_the_queue_cap_defers(tmp_path: Path) -> None:
    loaded = _production(tmp_path, 3, 1, 1, 0)  # three tasks, no retries: each gives up at once
    sim, outs, clock = SimScheduler(random.Random(0)), SimOutputs(), Clock()
    with Ledger(tmp_path / "ledger.db") as ledger:
        Engine(loaded, sim, ledger, outs, clock=clock).run_pass()  # type: ignore[arg-type]
        sim.step(outs, {}, 1.0, clock.t)
        Engine(loaded, sim, ledger, outs, clock=clock).run_pass()  # type: ignore[arg-type]
        assert all(h.given_up for h in ledger.history().values())
        eng = Engine(loaded, sim, ledger, outs, clock=clock)  # type: ignore[arg-type]
        eng.limits = replace(eng.limits, max_queued_tasks=1)
        result = eng.run_pass(retry=True)
        assert [(a.kind, len(a.keys)) for a in result.plan.actions] == [(ActionKind.WAIVE, 3), (ActionKind.RESUBMIT, 1), (ActionKind.WAIT, 2)]
        sim.step(outs, {t.key: t.fingerprint for t in loaded.expansion().tasks}, 0.0, clock.t)  # type: ignore[attr-defined]
        nxt = eng.run_pass()  # an ordinary pass: the waiver was journaled, the deferred two go now
        assert nxt.plan.count(ActionKind.RESUBMIT) == 1 and nxt.plan.count(ActionKind.WAIT) == 1
        assert not nxt.plan.of(ActionKind.GIVE_UP)
