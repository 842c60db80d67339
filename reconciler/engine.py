"""One pass of the loop: observe -> plan -> apply (journal what was seen, then the plan's actions).

The engine decides nothing: ``observe`` only reads (ledger, scheduler, output tree) into a
``core.model.World``; ``core.planner.plan`` decides; ``apply`` journals what was seen and
performs exactly the plan's actions, in the plan's order. What the engine owns is the order
of side effects within an action, because that order is what makes a pass safe to kill at
any point:

1. a submission's token, script and manifest are written and the ledger row committed
   *before* the scheduler is called; a pass that dies after sbatch but before recording the
   job id finds the token in the scheduler next time (RECOVER), never submits again;
2. the scheduler is observed *before* the output tree, so a task that finishes between the
   two reads is seen complete rather than failed;
3. partial outputs are moved aside (QUARANTINE, ``qa/partial/``), never deleted, before a rerun.

Adapters (scheduler, output tree, ledger) are passed in; constructing an Engine does no I/O.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from reconciler import outputs as output_tree
from reconciler.atomic import atomic_write
from reconciler.core.model import (
    EMPTY_HISTORY,
    AttemptObs,
    Desired,
    Limits,
    Policy,
    SubmissionObs,
    TaskObs,
    World,
)
from reconciler.core.outcome import failure_text, validate_deeply
from reconciler.core.plan import SENDS, Action, ActionKind, Plan
from reconciler.core.planner import Overlay, plan, settle
from reconciler.core.states import OutputState, SchedState, SubmissionKind, SubmissionState
from reconciler.core.status import summarize
from reconciler.errors import NotSubmitted, SubmitRejected
from reconciler.ledger import Attempt, Ledger, Seen, Submission
from reconciler.scheduler.base import ArrayJob, JobRef, Scheduler, SchedulerView, TaskSched
from reconciler.scheduler.script import (
    ManifestTask,
    job_name,
    log_patterns,
    render_manifest,
    render_script,
)
from reconciler.spec.expand import SYMBOLIC_DIR, Renderer, Task
from reconciler.spec.load import Loaded

CRASH_ENV = "RECONCILER_FAILPOINT"
SITE_PROBE_KEY = "site_max_array_size"
SITE_PROBE_EVERY_S = 86400.0
VANISHED = "vanished: the scheduler has no record of it"


def failpoint(name: str) -> None:
    """Die here, as SIGKILL would, when the test suite asks for it (``RECONCILER_FAILPOINT=name``).

    Failpoints let the crash tests hit the narrow windows (between journal and sbatch, between
    sbatch and recording the job id) that random kills would rarely land in.
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class OutputTree(Protocol):
    """What the engine needs of the output tree (reconciler.outputs on disk; a dict in property tests)."""

    def observe(self, tasks: Sequence[Task], deep: Callable[[Task], bool]) -> dict[str, OutputState]: ...

    def move_partial(self, task: Task, label: str) -> list[Path]: ...


class DiskOutputs:
    """The production directory on a (possibly parallel) filesystem: one listing per directory."""

    def __init__(self, production_dir: Path, validator: Any) -> None:
        self.production_dir = production_dir
        self.validator = validator

    def observe(self, tasks: Sequence[Task], deep: Callable[[Task], bool]) -> dict[str, OutputState]:
        return output_tree.observe_outputs(self.production_dir, tasks, self.validator, deep=deep)  # type: ignore[arg-type]

    def move_partial(self, task: Task, label: str) -> list[Path]:
        return output_tree.move_partial(self.production_dir, task, label=label)


def policy_of(loaded: Loaded) -> Policy:
    ex = loaded.spec.execution
    rp = ex.retry_policy
    return Policy(
        batch_size=ex.batch_size,
        max_retries=rp.max_retries,
        initial_delay_s=rp.initial_delay_minutes * 60.0,
        backoff_multiplier=rp.backoff_multiplier,
        max_delay_s=rp.max_delay_minutes * 60.0,
        prune=ex.prune,
        rerun_on_change=ex.rerun_on_change,
        adopt_existing=ex.adopt_existing,
    )


@dataclass
class Observed:
    """One pass's observation: the planner's ``world``, plus what apply needs to act on it."""

    desired: Desired
    world: World
    latest: dict[str, Attempt]  # each task's latest attempt, as journaled
    subs: dict[str, Submission]  # open submissions by token
    seen: list[Seen] = field(default_factory=list)  # scheduler answers that differ from the journal
    finished: list[str] = field(default_factory=list)  # submissions whose every attempt has now ended
    probed: bool = False  # the site limit was asked of the scheduler this pass

    def submission(self, token: str) -> SubmissionObs:
        return next(s for s in self.world.submissions if s.token == token)


@dataclass
class PassResult:
    plan: Plan
    applied: dict[str, int]
    summary: dict[str, Any]
    events: list[str]


class Engine:
    """One production's pass, with its adapters."""

    def __init__(
        self,
        loaded: Loaded,
        scheduler: Scheduler,
        ledger: Ledger,
        outputs: OutputTree | None = None,
        clock: Callable[[], float] = time.time,
        python: str | None = None,
    ) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.scheduler = scheduler
        self.ledger = ledger
        self.production_dir = loaded.production_dir
        self.outputs = outputs or DiskOutputs(self.production_dir, loaded.spec.task.validator)
        self.clock = clock
        self.python = python or sys.executable
        self.expansion = loaded.expansion()
        self.by_key = {t.key: t for t in self.expansion.tasks}
        self.desired = Desired(self.expansion.tasks, policy_of(loaded))
        machine = loaded.machine.machine
        self.limits = Limits(machine.max_array_size, machine.max_queued_tasks, scheduler.lookup_grace_s)

    # ------------------------------------------------------------------ observe

    def observe(self) -> Observed:
        """Read the ledger, ask the scheduler, then list the output tree. Writes nothing."""
        now = self.clock()
        open_subs = self.ledger.submissions()
        attempts = self.ledger.attempts_of([s.token for s in open_subs])
        by_token: dict[str, list[Attempt]] = {}
        for a in attempts:
            by_token.setdefault(a.token, []).append(a)
        sent = [s for s in open_subs if s.state is not SubmissionState.STAGED]
        refs = [
            JobRef(s.token, s.job_id, s.submitted or s.created, tuple(sorted(a.array_index for a in by_token.get(s.token, []))))
            for s in sent
        ]
        view = self.scheduler.observe(refs) if refs else SchedulerView()
        site, probed = self._site_max_array_size(now)

        seen: list[Seen] = []
        current: dict[tuple[str, int], TaskSched] = {}
        for s in sent:
            job_id = s.job_id or view.found.get(s.token)
            if job_id is None:
                continue
            answers = view.tasks.get(job_id, {})
            for a in by_token.get(s.token, []):
                ts = answers.get(a.array_index)
                if ts is None and job_id in view.gone:
                    ts = TaskSched(SchedState.UNKNOWN, reason=VANISHED)
                if ts is None:
                    continue
                current[(a.token, a.array_index)] = ts
                if a.sched_state != ts.state.value or a.exit_code != ts.exit_code:
                    seen.append(Seen(a.token, a.array_index, ts.state, ts.exit_code, ts.reason or ts.state.value, ts.start, ts.end))

        # outputs after the scheduler: a task that ends between the two reads is seen complete
        history = self.ledger.history()
        latest = self.ledger.latest_attempts()
        unresolved = {a.key for s in open_subs if s.job_id is None and s.token not in view.found for a in by_token.get(s.token, [])}
        pol, kind = self.desired.policy, self.spec.task.validator.kind

        def deep(t: Task) -> bool:
            return validate_deeply(kind, history.get(t.key, EMPTY_HISTORY).submissions, pol.adopt_existing, t.key in unresolved)

        out = self.outputs.observe(self.expansion.tasks, deep)

        tasks: dict[str, TaskObs] = {}
        open_tokens = {s.token for s in open_subs}
        for key, att in latest.items():
            ts = current.get((att.token, att.array_index))
            if ts is not None:
                state: SchedState | None = ts.state
            elif att.token in open_tokens and att.sched_state is None:
                state = None  # staged, or no answer yet: the planner decides what that means
            else:
                state = SchedState(att.sched_state) if att.sched_state else None
            tasks[key] = TaskObs(out.get(key, OutputState.MISSING), state)
        unsubmitted = {st: TaskObs(st, None) for st in OutputState}  # shared: 1M tasks, a handful of values
        for key, st in out.items():
            if key not in tasks:
                tasks[key] = unsubmitted[st]

        submissions = [self._submission_obs(s, by_token.get(s.token, []), view, current, latest) for s in open_subs]
        finished = [s.token for s in sent if _all_ended(by_token.get(s.token, []), current)]
        staged = sum(len(by_token.get(s.token, [])) for s in open_subs if s.state is SubmissionState.STAGED)
        world = World(tasks, history, tuple(submissions), site, staged)
        return Observed(self.desired, world, latest, {s.token: s for s in open_subs}, seen, finished, probed)

    def _submission_obs(
        self,
        s: Submission,
        atts: Sequence[Attempt],
        view: SchedulerView,
        current: dict[tuple[str, int], TaskSched],
        latest: dict[str, Attempt],
    ) -> SubmissionObs:
        found = view.found.get(s.token) if s.job_id is None else None
        may_abandon = s.state is SubmissionState.STAGED or (s.job_id is None and found is None)
        previous = self.ledger.previous_states(s.token) if may_abandon else {}
        obs = []
        for a in atts:
            ts = current.get((a.token, a.array_index))
            sched = ts.state if ts is not None else (SchedState(a.sched_state) if a.sched_state else None)
            reason = ts.reason if ts is not None and ts.reason else a.reason
            end = ts.end if ts is not None and ts.end is not None else a.end
            is_latest = (lt := latest.get(a.key)) is not None and lt.token == a.token
            obs.append(AttemptObs(a.key, a.array_index, sched, reason, end, a.failure_recorded, is_latest, previous.get(a.key)))
        current_fp = self._staged_current(s) if s.state is SubmissionState.STAGED else True
        return SubmissionObs(s.token, s.batch, s.kind, s.state, s.created, s.job_id, found, current_fp, tuple(obs))

    def _staged_current(self, s: Submission) -> bool:
        """Whether every task of a staged submission still has the fingerprint it was staged with."""
        try:
            doc = json.loads(Path(s.manifest).read_text(encoding="utf-8"))
            staged = [(t["key"], t["fingerprint"]) for t in doc["tasks"].values()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return all(k in self.by_key and self.by_key[k].fingerprint == fp for k, fp in staged)

    def _site_max_array_size(self, now: float) -> tuple[int | None, bool]:
        """The cluster's MaxArraySize, asked at most once a day (the answer is journaled), so a
        pass stays at two scheduler reads. (value, asked this pass)."""
        cached = self.ledger.get_meta(SITE_PROBE_KEY)
        if cached:
            stamp, _, raw = cached.partition(":")
            if now - float(stamp) < SITE_PROBE_EVERY_S:
                return (int(raw) if raw else None), False
        return self.scheduler.max_array_size(), True

    # ------------------------------------------------------------------ plan

    def plan(self, obs: Observed, *, stage: bool = False, retry: bool = False) -> Plan:
        return plan(obs.desired, obs.world, self.clock(), self.limits, stage=stage, retry=retry)

    # ------------------------------------------------------------------ apply

    def apply(self, p: Plan, obs: Observed) -> tuple[dict[str, int], list[str]]:
        """Journal what ``obs`` saw, then perform exactly ``p``'s actions, in order.

        Returns (tasks per action kind, events for the person watching). Scheduler errors
        stop the pass (TransientError) and lose nothing.
        """
        now = self.clock()
        self.ledger.journal(obs.seen, obs.finished)
        if obs.probed and obs.world.site_max_array_size is not None:  # unknown (slurmctld down): ask again next pass
            self.ledger.set_meta(SITE_PROBE_KEY, f"{now}:{obs.world.site_max_array_size}")
        applied: dict[str, int] = {}
        events: list[str] = []
        for a in p.actions:
            if a.kind is ActionKind.WAIT:
                continue
            event = self._act(a, obs)
            if event:
                events.append(event)
            applied[a.kind.value] = applied.get(a.kind.value, 0) + len(a.keys)
        if applied:
            self.ledger.event("pass", json.dumps(applied, sort_keys=True), self.clock())
        return applied, events

    def _act(self, a: Action, obs: Observed) -> str | None:
        now = self.clock()
        if a.kind is ActionKind.RECOVER:
            job = obs.submission(_token(a)).found
            assert job is not None
            self.ledger.set_submitted(_token(a), job, now)
            return f"adopted submission {a.token} as job {job} (its sbatch answer was lost)"
        if a.kind is ActionKind.RECORD_FAILURE:
            atts = {x.array_index: x for x in obs.submission(_token(a)).attempts}
            rows = []
            for key, i in zip(a.keys, a.array_indices, strict=True):
                end = atts[i].end
                rows.append((_token(a), i, key, failure_text(atts[i], a.reason), now if end is None else end))
            self.ledger.record_failures(rows, now)
        elif a.kind is ActionKind.ABANDON:
            self.ledger.abandon(_token(a), a.message, now)
            return f"submission {a.token} abandoned: {a.message}"
        elif a.kind is ActionKind.GIVE_UP:
            self.ledger.give_up(a.keys, a.message, now)
        elif a.kind is ActionKind.CANCEL:
            self._cancel(a, obs)
        elif a.kind is ActionKind.QUARANTINE:
            self._quarantine(a, obs)
        elif a.kind is ActionKind.SEND:
            sub = obs.subs[_token(a)]
            self.ledger.set_state(sub.token, SubmissionState.RECORDED)
            self._send(replace(sub, state=SubmissionState.RECORDED), a.array_indices)
        elif a.kind in SENDS:
            self._submit(a, obs)
        return None

    def _cancel(self, a: Action, obs: Observed) -> None:
        per_job: dict[str, list[int]] = {}
        jobs = {t: s.job_id for t, s in obs.subs.items()}
        for key in a.keys:
            att = obs.latest.get(key)
            job = jobs.get(att.token) if att else None
            if att and job:
                per_job.setdefault(job, []).append(att.array_index)
        for job, idx in sorted(per_job.items()):
            self.scheduler.cancel(job, sorted(idx))
        self.ledger.event("cancel", f"cancelled {len(a.keys)} task(s): {a.message}", self.clock())

    def _quarantine(self, a: Action, obs: Observed) -> None:
        now = self.clock()
        for key in a.keys:
            submissions = obs.world.history[key].submissions if key in obs.world.history else 0
            moved = self.outputs.move_partial(self.by_key[key], f"attempt{submissions:02d}-{now:.0f}")
            if moved:
                self.ledger.event("partial", f"moved {len(moved)} partial output(s) aside before rerun: {moved[0]}", now, key)

    def _submit(self, a: Action, obs: Observed) -> None:
        assert a.batch is not None
        now = self.clock()
        token = f"{now:.0f}-{secrets.token_hex(6)}"
        renderer = Renderer(self.spec)
        tasks: dict[int, ManifestTask] = {}
        history = obs.world.history
        for key, idx in zip(a.keys, a.array_indices, strict=True):
            t = self.by_key[key]
            done = history[key].submissions if key in history else 0
            argv = renderer.argv(t.params, t.index, t.key, SYMBOLIC_DIR, t.outputs)
            tasks[idx] = ManifestTask(t.key, t.index, argv, t.outputs, t.fingerprint, done + 1)
        base = self.production_dir / "logs" / f"batch_{a.batch:04d}_{token}"
        script_path, manifest_path = base.with_suffix(".sh"), base.with_suffix(".json")
        manifest = render_manifest(self.spec, batch=a.batch, token=token, production_dir=self.production_dir, tasks=tasks)
        script = render_script(
            self.spec, batch=a.batch, token=token, array_indices=sorted(tasks), manifest=manifest_path,
            production_dir=self.production_dir, python=self.python,
        )
        atomic_write(manifest_path, manifest)
        atomic_write(script_path, script)
        kind = SubmissionKind.RESUBMIT if a.kind is ActionKind.RESUBMIT else SubmissionKind.SUBMIT
        state = SubmissionState.STAGED if a.kind is ActionKind.STAGE else SubmissionState.RECORDED
        sub = Submission(token, a.batch, kind, state, None, self.scheduler.name, str(script_path), str(manifest_path), now, None)
        failpoint("before_record")
        self.ledger.record_submission(sub, [(i, t.key) for i, t in sorted(tasks.items())])
        if state is SubmissionState.RECORDED:
            self._send(sub, sorted(tasks))

    def _send(self, sub: Submission, indices: Sequence[int]) -> str:
        out, err = log_patterns(self.production_dir, sub.batch)
        job = ArrayJob(
            token=sub.token,
            name=job_name(self.loaded.name, sub.batch),
            script_path=Path(sub.script),
            script=Path(sub.script).read_text(encoding="utf-8"),
            array_indices=tuple(indices),
            throttle=self.spec.execution.array_throttle,
            workdir=self.production_dir,
            log_out=out,
            log_err=err,
        )
        failpoint("after_record")
        try:
            job_id = self.scheduler.submit(job)
        except (NotSubmitted, SubmitRejected) as exc:
            # the scheduler's own answer that no job exists: journal it, so the next pass plans
            # these tasks again instead of looking for a token that can never appear
            self.ledger.abandon(sub.token, str(exc), self.clock())
            raise
        failpoint("after_submit")
        self.ledger.set_submitted(sub.token, job_id, self.clock())
        return job_id

    # ------------------------------------------------------------------ status

    def summary(self, obs: Observed, applied: Plan | None = None) -> dict[str, Any]:
        """Counts by task state, failures with their logs: the world as this pass leaves it.

        Read-only callers (status, plan) see the plan's journal decisions already applied
        (a failure this pass would record is counted); after ``apply``, pass the applied plan
        and the ledger is read back instead.
        """
        world = obs.world
        tasks, history = settle(obs.desired, world, self.clock(), self.limits).views(world)
        latest, staged = obs.latest, world.staged
        if applied is not None:
            sent = {k for a in applied.actions if a.kind in SENDS or a.kind is ActionKind.SEND for k in a.keys}
            tasks = Overlay({k: TaskObs(tasks[k].output if k in tasks else OutputState.MISSING, SchedState.PENDING) for k in sent}, tasks)
            history = self.ledger.history()
            latest = self.ledger.latest_attempts()
            staged += applied.count(ActionKind.STAGE) - applied.count(ActionKind.SEND)
        subs = self.ledger.all_submissions() if latest else []
        jobs, batches = {s.token: s.job_id for s in subs}, {s.token: s.batch for s in subs}
        logs: dict[str, str] = {}
        base = f"{self.production_dir}/logs/batch_"
        for key, att in latest.items():
            job = jobs.get(att.token)
            batch = batches.get(att.token)
            if job and batch is not None:
                logs[key] = f"{base}{batch:04d}_{job}_{att.array_index}.out"
        excluded = [(e.key, e.reason) for e in self.expansion.excluded]
        s = summarize(obs.desired, tasks, history, excluded, logs)
        s["staged"] = staged
        return s

    # ------------------------------------------------------------------ one pass

    def run_pass(self, *, apply: bool = True, stage: bool = False, retry: bool = False) -> PassResult:
        obs = self.observe()
        p = self.plan(obs, stage=stage, retry=retry)
        if not apply:
            return PassResult(p, {}, self.summary(obs), [])
        applied, events = self.apply(p, obs)
        return PassResult(p, applied, self.summary(obs, p if applied else None), events)


def _all_ended(atts: Sequence[Attempt], current: dict[tuple[str, int], TaskSched]) -> bool:
    """Whether every attempt of a submission has ended, by this pass's answers or the journal's."""
    if not atts:
        return False
    for a in atts:
        ts = current.get((a.token, a.array_index))
        state = ts.state if ts is not None else (SchedState(a.sched_state) if a.sched_state else None)
        if state is None or state.in_flight:
            return False
    return True


def _token(a: Action) -> str:
    assert a.token is not None, f"{a.kind} acts on a submission"
    return a.token
