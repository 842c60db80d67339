"""One pass of the loop: observe -> plan -> apply -> record. Plus the watch loop.

The engine owns the order of side effects, because that order is what makes a pass safe to
kill at any point:

1. a submission's token, script and manifest are written and the ledger row committed
   *before* the scheduler is called; a pass that dies after sbatch but before recording the
   job id finds the token in the scheduler next time (adopt), never submits again;
2. the scheduler is observed *before* the output tree, so a task that finishes between the
   two reads is seen complete rather than failed;
3. partial outputs are moved aside (``qa/partial/``), never deleted, before a rerun.

Adapters (scheduler, output tree, ledger) are passed in; the planner is pure.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from reconciler.atomic import atomic_write
from reconciler.core.model import (
    Desired,
    Limits,
    Policy,
    TaskHistory,
    TaskObs,
)
from reconciler.core.plan import Action, ActionKind, Plan
from reconciler.core.planner import plan as make_plan
from reconciler.core.planner import stage_only
from reconciler.core.states import OutputState, SchedState
from reconciler.core.summary import summarize
from reconciler.errors import NotSubmitted, SubmitRejected
from reconciler.ledger import Attempt, Ledger, Submission
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

FINISHED_SUBMISSION = "finished"
CRASH_ENV = "RECONCILER_FAILPOINT"


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
        from reconciler import outputs

        return outputs.observe_outputs(self.production_dir, tasks, self.validator, deep=deep)

    def move_partial(self, task: Task, label: str) -> list[Path]:
        from reconciler import outputs

        return outputs.move_partial(self.production_dir, task, label=label)


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


def limits_of(loaded: Loaded) -> Limits:
    m = loaded.machine.machine
    return Limits(max_array_size=m.max_array_size, max_queued_tasks=m.max_queued_tasks)


@dataclass
class Observed:
    """Everything one pass saw, ready for the planner and for status."""

    desired: Desired
    observation: dict[str, TaskObs]
    history: dict[str, TaskHistory]
    outputs: dict[str, OutputState]
    latest: dict[str, Attempt]
    jobs: dict[str, str | None]  # token -> job id
    batches: dict[str, int]  # token -> batch
    staged: int = 0
    events: list[str] = field(default_factory=list)


@dataclass
class PassResult:
    plan: Plan
    applied: dict[str, int]
    summary: dict[str, Any]
    events: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.applied) or bool(self.events)


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
        self.policy = policy_of(loaded)
        self.limits = limits_of(loaded)
        self.lookup_grace = float(getattr(scheduler, "lookup_grace_s", 0.0))
        self.warnings: list[str] = []
        self._check_site_limits()

    def _check_site_limits(self) -> None:
        """The machine defaults' max_array_size, checked against the cluster's MaxArraySize.

        Asked once a day at most (cached in the ledger), so a pass stays at two Slurm reads.
        The smaller of the two wins: Slurm rejects an index >= MaxArraySize.
        """
        probe = getattr(self.scheduler, "max_array_size", None)
        if probe is None:
            return
        now = self.clock()
        cached = self.ledger.get_meta("site_max_array_size")
        value: int | None = None
        if cached:
            stamp, _, raw = cached.partition(":")
            if now - float(stamp) < 86400:
                value = int(raw) if raw else None
        if value is None and (not cached or now - float(cached.partition(":")[0]) >= 86400):
            value = probe()
            if value is not None:  # unknown (slurmctld down): ask again next pass, do not cache
                self.ledger.set_meta("site_max_array_size", f"{now}:{value}")
        if value and value < self.limits.max_array_size:
            self.warnings.append(
                f"machine defaults say max_array_size {self.limits.max_array_size} but the cluster's MaxArraySize is {value}; using {value}"
            )
            self.limits = Limits(max_array_size=value, max_queued_tasks=self.limits.max_queued_tasks)

    # ------------------------------------------------------------------ observe

    def observe(self, record: bool = True) -> Observed:
        """Ask the scheduler, then the output tree; fold what changed into the ledger."""
        now = self.clock()
        events: list[str] = []
        open_subs = self.ledger.submissions()
        sent = [s for s in open_subs if s.state != "staged"]
        attempts = self.ledger.attempts_of([s.token for s in sent])
        by_token: dict[str, list[Attempt]] = {}
        for a in attempts:
            by_token.setdefault(a.token, []).append(a)
        refs = [
            JobRef(s.token, s.job_id, s.submitted or s.created, tuple(sorted(a.array_index for a in by_token.get(s.token, []))))
            for s in sent
        ]
        view = self.scheduler.observe(refs) if refs else SchedulerView()

        updates: list[tuple[Attempt, TaskSched]] = []
        closing: list[str] = []
        for s in sent:
            job_id = s.job_id
            if job_id is None:
                found = view.found.get(s.token)
                if found is not None:
                    if record:
                        self.ledger.set_submitted(s.token, found, now)
                    events.append(f"adopted submission {s.token} as job {found} (its sbatch answer was lost)")
                    job_id = found
                elif s.kind == "rebuilt":
                    for a in by_token.get(s.token, []):
                        updates.append((a, TaskSched(SchedState.UNKNOWN, reason="rebuilt ledger: the scheduler no longer knows this submission")))
                    closing.append(s.token)
                    continue
                elif now - s.created >= self.lookup_grace:
                    if record:
                        self.ledger.abandon(s.token, "the scheduler never received it", now)
                    events.append(f"submission {s.token} never reached the scheduler; its tasks will be planned again")
                    continue
                else:
                    continue
            tasks_view = view.tasks.get(job_id, {})
            gone = job_id in view.gone
            for a in by_token.get(s.token, []):
                ts = tasks_view.get(a.array_index)
                if ts is None:
                    if not gone:
                        continue
                    ts = TaskSched(SchedState.UNKNOWN, reason="vanished: the scheduler has no record of it")
                if a.sched_state != ts.state.value or a.exit_code != ts.exit_code:
                    updates.append((a, ts))

        # outputs after the scheduler: a task that ends between the two reads is seen complete
        history = self.ledger.history()
        adopt = self.policy.adopt_existing
        deep_kind = self.spec.task.validator.kind != "exists"
        empty = TaskHistory()

        def deep(t: Task) -> bool:
            return deep_kind and (history.get(t.key, empty).submissions == 0 or not adopt)

        out = self.outputs.observe(self.expansion.tasks, deep)

        rows = []
        for a, ts in updates:
            failed = ts.state.finished and (
                ts.state is not SchedState.COMPLETED
                or out.get(a.key) in (OutputState.MISSING, OutputState.UNMARKED, OutputState.INVALID)
            )
            reason = ts.reason or ts.state.value
            if ts.state is SchedState.COMPLETED and failed:
                reason = "exited 0 but its outputs are missing or invalid (no completion marker)"
            rows.append((a, ts.state, ts.exit_code, reason, ts.start, ts.end, failed, now))
        if record and rows:
            self.ledger.update_attempts(rows)
        if record:
            self._close_finished(sent, by_token, {(a.token, a.array_index): ts for a, ts in updates}, closing)

        history = self.ledger.history() if record else history
        latest = self.ledger.latest_attempts()
        subs = {s.token: s for s in self.ledger.all_submissions()} if latest else {}
        pending_update = {(a.token, a.array_index): ts.state for a, ts in updates}
        observation: dict[str, TaskObs] = {}
        staged = 0
        for key, att in latest.items():
            sub = subs.get(att.token)
            state: SchedState | None = None
            if sub is not None and sub.state == "staged":
                state = SchedState.PENDING
                staged += 1
            elif (att.token, att.array_index) in pending_update:
                state = pending_update[(att.token, att.array_index)]
            elif att.sched_state:
                state = SchedState(att.sched_state)
            if sub is not None and sub.state == "abandoned":
                state = None
            observation[key] = TaskObs(out.get(key, OutputState.MISSING), state)
        unsubmitted = {st: TaskObs(st, None) for st in OutputState}  # shared: 1M tasks, a handful of values
        for key, st in out.items():
            if key not in observation:
                observation[key] = unsubmitted[st]
        desired = Desired(self.expansion.tasks, self.policy)
        return Observed(
            desired,
            observation,
            history,
            out,
            latest,
            {t: s.job_id for t, s in subs.items()},
            {t: s.batch for t, s in subs.items()},
            staged,
            events,
        )

    def _close_finished(
        self,
        sent: Sequence[Submission],
        by_token: Mapping[str, Sequence[Attempt]],
        new: Mapping[tuple[str, int], TaskSched],
        closing: Iterable[str],
    ) -> None:
        done = set(closing)
        for s in sent:
            atts = by_token.get(s.token, [])
            states = [new[(a.token, a.array_index)].state if (a.token, a.array_index) in new else (SchedState(a.sched_state) if a.sched_state else None) for a in atts]
            if atts and all(st is not None and st.finished for st in states):
                done.add(s.token)
        for token in sorted(done):
            self.ledger.set_state(token, FINISHED_SUBMISSION)

    # ------------------------------------------------------------------ plan

    def plan(self, obs: Observed) -> Plan:
        return make_plan(obs.desired, obs.observation, obs.history, self.clock(), self.limits)

    # ------------------------------------------------------------------ apply

    def apply(self, p: Plan, obs: Observed, *, stage: bool = False) -> dict[str, int]:
        """Carry out ``p``. Scheduler errors stop the pass (TransientError) and lose nothing."""
        now = self.clock()
        applied: dict[str, int] = {}
        if not stage:
            applied.update(self.send_staged(obs))
        for a in p.actions:
            if a.kind is ActionKind.GIVE_UP:
                self.ledger.give_up(a.keys, a.reason, now)
            elif a.kind is ActionKind.CANCEL:
                self._cancel(a, obs)
            elif a.kind in (ActionKind.SUBMIT, ActionKind.RESUBMIT, ActionKind.STAGE):
                self._submit(a, obs, stage=stage or a.kind is ActionKind.STAGE)
            else:
                continue
            kind = "stage" if stage and a.kind in (ActionKind.SUBMIT, ActionKind.RESUBMIT) else a.kind.value
            applied[kind] = applied.get(kind, 0) + len(a.keys)
        return applied

    def _cancel(self, a: Action, obs: Observed) -> None:
        per_job: dict[str, list[int]] = {}
        for key in a.keys:
            att = obs.latest.get(key)
            job = obs.jobs.get(att.token) if att else None
            if att and job:
                per_job.setdefault(job, []).append(att.array_index)
        for job, idx in sorted(per_job.items()):
            self.scheduler.cancel(job, sorted(idx))
        self.ledger.event("cancel", f"cancelled {len(a.keys)} task(s): {a.reason}", self.clock())

    def _submit(self, a: Action, obs: Observed, *, stage: bool) -> None:
        assert a.batch is not None
        now = self.clock()
        token = f"{now:.0f}-{secrets.token_hex(6)}"
        renderer = Renderer(self.spec)
        tasks: dict[int, ManifestTask] = {}
        for key, idx in zip(a.keys, a.array_indices, strict=True):
            t = self.by_key[key]
            hist = obs.history.get(key, TaskHistory())
            if obs.outputs.get(key) in (OutputState.UNMARKED, OutputState.INVALID):
                moved = self.outputs.move_partial(t, f"attempt{hist.submissions:02d}-{token}")
                if moved:
                    self.ledger.event("partial", f"moved {len(moved)} partial output(s) aside before rerun: {moved[0]}", now, key)
            argv = renderer.argv(t.params, t.index, t.key, SYMBOLIC_DIR, t.outputs)
            tasks[idx] = ManifestTask(t.key, t.index, argv, t.outputs, t.fingerprint, hist.submissions + 1)
        logs = self.production_dir / "logs"
        base = logs / f"batch_{a.batch:04d}_{token}"
        script_path, manifest_path = base.with_suffix(".sh"), base.with_suffix(".json")
        manifest = render_manifest(self.spec, batch=a.batch, token=token, production_dir=self.production_dir, tasks=tasks)
        script = render_script(
            self.spec, batch=a.batch, token=token, array_indices=sorted(tasks), manifest=manifest_path,
            production_dir=self.production_dir, python=self.python,
        )
        atomic_write(manifest_path, manifest)
        atomic_write(script_path, script)
        kind = "resubmit" if a.kind is ActionKind.RESUBMIT else "submit"
        sub = Submission(token, a.batch, kind, "staged" if stage else "recorded", None, self.scheduler.name, str(script_path), str(manifest_path), now, None)
        failpoint("before_record")
        self.ledger.record_submission(sub, [(i, t.key) for i, t in sorted(tasks.items())])
        if not stage:
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
        if sub.state == "staged":
            self.ledger.set_state(sub.token, "recorded")
        failpoint("after_record")
        try:
            job_id = self.scheduler.submit(job)
        except (NotSubmitted, SubmitRejected) as exc:
            self.ledger.abandon(sub.token, str(exc), self.clock())
            raise
        failpoint("after_submit")
        self.ledger.set_submitted(sub.token, job_id, self.clock())
        return job_id

    def send_staged(self, obs: Observed) -> dict[str, int]:
        """Submit what `reconcile stage` wrote, if the desired state has not moved since."""
        sent = 0
        for sub in self.ledger.submissions(("staged",)):
            doc = json.loads(Path(sub.manifest).read_text(encoding="utf-8")) if Path(sub.manifest).exists() else None
            tasks = (doc or {}).get("tasks", {})
            current = all(
                k in self.by_key and self.by_key[k].fingerprint == t["fingerprint"]
                for k, t in ((t["key"], t) for t in tasks.values())
            )
            if doc is None or not current:
                self.ledger.abandon(sub.token, "desired state changed since it was staged", self.clock())
                continue
            self._send(sub, sorted(int(i) for i in tasks))
            sent += len(tasks)
        return {"submit": sent} if sent else {}

    # ------------------------------------------------------------------ status

    def summary(self, obs: Observed) -> dict[str, Any]:
        logs: dict[str, str] = {}
        base = f"{self.production_dir}/logs/batch_"
        for key, att in obs.latest.items():
            job = obs.jobs.get(att.token)
            batch = obs.batches.get(att.token)
            if job and batch is not None:
                logs[key] = f"{base}{batch:04d}_{job}_{att.array_index}.out"
        excluded = [(e.key, e.reason) for e in self.expansion.excluded]
        s = summarize(obs.desired, obs.observation, obs.history, excluded, logs)
        s["staged"] = obs.staged
        return s

    # ------------------------------------------------------------------ one pass

    def run_pass(self, *, apply: bool = True, stage: bool = False) -> PassResult:
        obs = self.observe(record=True)
        events = self.warnings + list(obs.events)
        p = self.plan(obs)
        if stage:
            p = stage_only(p)
        applied: dict[str, int] = {}
        if apply:
            applied = self.apply(p, obs, stage=stage)
        if applied:
            self.ledger.event("pass", json.dumps(applied, sort_keys=True), self.clock())
            obs = self._after_apply(obs, p)
        return PassResult(p, applied, self.summary(obs), events)

    def _after_apply(self, obs: Observed, p: Plan) -> Observed:
        """The observation as the applied plan left it, without asking the scheduler again
        (a pass stays at two scheduler reads): what was sent is queued, the rest as seen."""
        sent = {k for a in p.actions if a.kind in (ActionKind.SUBMIT, ActionKind.RESUBMIT, ActionKind.STAGE) for k in a.keys}
        observation = dict(obs.observation)
        for key in sent:
            observation[key] = TaskObs(observation.get(key, TaskObs()).output, SchedState.PENDING)
        latest = self.ledger.latest_attempts()
        subs = self.ledger.all_submissions()
        return Observed(
            obs.desired, observation, self.ledger.history(), obs.outputs, latest,
            {s.token: s.job_id for s in subs}, {s.token: s.batch for s in subs},
            obs.staged + sum(len(a.keys) for a in p.actions if a.kind is ActionKind.STAGE), obs.events,
        )


def rebuild_from_manifests(ledger: Ledger, production_dir: Path, backend: str, now: float) -> int:
    """A lost ledger is rebuilt from the manifests in logs/: each becomes a submission whose job
    id is looked up by token next pass; unknown ones count as vanished attempts (failed unless
    their outputs are complete). Returns the number of submissions recovered."""
    logs = production_dir / "logs"
    manifests = sorted(logs.glob("batch_*.json"), key=lambda p: (p.stat().st_mtime, p.name)) if logs.is_dir() else []
    n = 0
    for path in manifests:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            token = str(doc["token"])
            tasks = [(int(i), str(t["key"])) for i, t in doc["tasks"].items()]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        script = path.with_suffix(".sh")
        created = path.stat().st_mtime
        sub = Submission(token, int(doc.get("batch", 0)), "rebuilt", "recorded", None, backend, str(script), str(path), created, None)
        try:
            ledger.record_submission(sub, sorted(tasks))
        except Exception:  # noqa: BLE001 - a duplicate token: already recovered
            continue
        n += 1
    ledger.set_meta("rebuilt_at", str(now))
    if n:
        ledger.event("rebuild", f"ledger was missing; recovered {n} submission(s) from {logs}", now)
    return n
