"""settle(): what becomes of each open submission, before the planner decides per task.

Pure, like the planner (core.planner calls it first, and the engine's summary calls it to
see the world as a pass's decisions leave it).

Each open submission (staged, in flight, or with a lost answer) is settled by one rule:
  staged, desired state unchanged   -> SEND (kept staged by `reconcile stage`); its tasks count as queued
  staged, desired state moved       -> ABANDON; its tasks are planned again
  no job id, token found            -> RECOVER the job id (a lost sbatch answer)
  no job id, within the lookup grace-> WAIT (never resend blindly: the job may exist)
  no job id, past the grace         -> ABANDON; its tasks are planned again at once
  an attempt ended, not yet counted -> RECORD_FAILURE when core.outcome.classify says it failed,
                                       with what it ran short of (core.sizing.shortfall), its request and peak
  the old tool's attempt completed  -> ADOPT its valid outputs (it writes no marker; see
                                       `reconcile import-legacy`); failed ones as above
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from reconciler.core.model import (
    EMPTY_HISTORY,
    EMPTY_OBS,
    AttemptObs,
    Desired,
    Limits,
    SubmissionObs,
    TaskHistory,
    TaskObs,
    World,
)
from reconciler.core.outcome import classify, failure_text
from reconciler.core.overlay import Overlay
from reconciler.core.plan import Action, ActionKind, Note
from reconciler.core.reasons import Reason
from reconciler.core.sizing import shortfall
from reconciler.core.states import Outcome, OutputState, SchedState, SubmissionKind, SubmissionState


@dataclass
class Settled:
    """The open submissions settled: their actions, and the per-task views as those leave them."""

    actions: list[Action] = field(default_factory=list)
    tasks: dict[str, TaskObs] = field(default_factory=dict)  # overrides of World.tasks
    history: dict[str, TaskHistory] = field(default_factory=dict)  # overrides of World.history
    held: set[str] = field(default_factory=set)  # keys a submission-level WAIT covers
    limits: Limits = field(default_factory=Limits)
    notes: list[Note] = field(default_factory=list)

    def views(self, world: World) -> tuple[Mapping[str, TaskObs], Mapping[str, TaskHistory]]:
        """World.tasks and World.history as this pass's decisions leave them (for status)."""
        tasks = Overlay(self.tasks, world.tasks) if self.tasks else world.tasks
        history = Overlay(self.history, world.history) if self.history else world.history
        return tasks, history


def effective_limits(limits: Limits, site_max_array_size: int | None, ceilings: tuple[float | None, float | None] = (None, None)) -> tuple[Limits, list[Note]]:
    """The smaller of the configured and the cluster's MaxArraySize wins: Slurm rejects an
    index >= MaxArraySize whatever the machine defaults say. A retry's ceilings (node memory,
    time limit) are the machine defaults' where they say, else what the cluster reports."""
    mem, time_s = ceilings
    limits = replace(
        limits, node_memory_mb=limits.node_memory_mb if limits.node_memory_mb is not None else mem,
        max_time_s=limits.max_time_s if limits.max_time_s is not None else time_s,
    )
    if site_max_array_size and site_max_array_size < limits.max_array_size:
        note = Note(Reason.SITE_LIMIT, (), f"max_array_size {limits.max_array_size} -> {site_max_array_size}")
        return replace(limits, max_array_size=site_max_array_size), [note]
    return limits, []


def settle(desired: Desired, world: World, now: float, limits: Limits, *, stage: bool = False) -> Settled:
    """Decide what becomes of every open submission; see the module docstring for the rules."""
    s = Settled()
    s.limits, s.notes = effective_limits(limits, world.site_max_array_size, world.site_ceilings)
    for sub in world.submissions:
        if sub.state is SubmissionState.STAGED:
            if not sub.current:
                _abandon(s, world, sub, Reason.STAGED_OUTDATED)
                continue
            for att in sub.attempts:
                if att.latest:
                    s.tasks[att.key] = TaskObs(_obs(world, att.key).output, SchedState.PENDING)
            if not stage:
                s.actions.append(_of(ActionKind.SEND, Reason.STAGED_CURRENT, sub, sub.attempts))
            continue
        job = sub.job_id or sub.found
        if job is None:
            if now - sub.created < limits.lookup_grace_s:
                s.actions.append(_of(ActionKind.WAIT, Reason.LOOKUP_GRACE, sub, sub.attempts, until=sub.created + limits.lookup_grace_s))
                s.held.update(a.key for a in sub.attempts)
            else:
                _abandon(s, world, sub, Reason.REBUILT_UNKNOWN if sub.kind is SubmissionKind.REBUILT else Reason.NEVER_RECEIVED)
            continue
        if sub.job_id is None:
            s.actions.append(_of(ActionKind.RECOVER, Reason.TOKEN_FOUND, sub, sub.attempts, note=f"job {job}"))
        _record_failures(s, world, sub, now)
    return s


def _obs(world: World, key: str) -> TaskObs:
    return world.tasks.get(key, EMPTY_OBS)


def history_of(s: Settled, world: World, key: str) -> TaskHistory:
    """A task's history as the settled submissions leave it."""
    got = s.history.get(key)
    return got if got is not None else world.history.get(key, EMPTY_HISTORY)


def _of(kind: ActionKind, reason: Reason, sub: SubmissionObs, atts: Iterable[AttemptObs], *, until: float | None = None, note: str = "") -> Action:
    ordered = sorted(atts, key=lambda a: a.array_index)
    return Action(kind, reason, tuple(a.key for a in ordered), sub.batch, tuple(a.array_index for a in ordered), sub.token, until, note)


def _abandon(s: Settled, world: World, sub: SubmissionObs, reason: Reason) -> None:
    """Give a submission up: it never ran, so it never counts as an attempt; each task's latest
    attempt becomes the one before it."""
    s.actions.append(_of(ActionKind.ABANDON, reason, sub, sub.attempts))
    for att in sub.attempts:
        h = history_of(s, world, att.key)
        s.history[att.key] = replace(h, submissions=max(h.submissions - 1, 0))
        if att.latest:
            s.tasks[att.key] = TaskObs(_obs(world, att.key).output, att.previous)


def _record_failures(s: Settled, world: World, sub: SubmissionObs, now: float) -> None:
    """Count the attempts that ended in failure; adopt the old tool's that succeeded (it writes
    no marker, so without ADOPT a completed task of the old tool would read unmarked forever)."""
    by_reason: dict[Reason, list[AttemptObs]] = {}
    legacy = sub.kind.old_tool
    adopted: list[AttemptObs] = []
    for att in sub.attempts:
        if att.failure_recorded:
            continue
        output = _obs(world, att.key).output
        outcome, why = classify(att.sched, output, legacy=legacy)
        if legacy and outcome is Outcome.SUCCEEDED and output is OutputState.UNMARKED:
            adopted.append(att)
            if att.latest:
                s.tasks[att.key] = TaskObs(OutputState.ADOPTED, att.sched)
            continue
        if outcome is not Outcome.FAILED or why is None:
            continue
        by_reason.setdefault(why, []).append(att)
        h = history_of(s, world, att.key)
        end = att.end if att.end is not None else now
        short = shortfall(att.sched, att.exit_code, att.cause, att.usage, sub.request, att.scheduler_said)
        peak = att.usage.max_rss_mb if att.usage is not None else None
        s.history[att.key] = replace(
            h, failures=h.failures + 1, last_end=end, last_reason=failure_text(att, why), cause=att.cause, short=short, request=sub.request, peak_mb=peak,
        )
    for why, atts in by_reason.items():  # plan() orders every action by kind, batch, token, reason
        s.actions.append(_of(ActionKind.RECORD_FAILURE, why, sub, atts))
    if adopted:
        s.actions.append(_of(ActionKind.ADOPT, Reason.LEGACY_COMPLETED, sub, adopted, note=f"job {sub.job_id}"))
