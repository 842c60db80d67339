"""plan(): the difference between desired and observed state, as a value.

Pure: no I/O, no clock (``now`` is an argument), no randomness. Same inputs, same plan, in
the same order. The engine applies plans; the planner never acts.

Per task, in this order of precedence:
  complete                      -> nothing
  queued or running             -> nothing (never submitted twice)
  valid, unmarked, never ours   -> adopted: nothing (unless adopt_existing is off)
  stale and not rerun_on_change -> reported in the notes
  never submitted               -> SUBMIT
  submitted, outcome unknown    -> WAIT (a lost sbatch answer is resolved by token, not resent)
  failed, retries left          -> RESUBMIT after initial * multiplier**(failures-1), else WAIT
  failed, retries exhausted     -> GIVE_UP once, then nothing
Submissions are grouped by batch (index // batch_size) with batch-local array indices, and
the number of queued tasks never exceeds ``limits.max_queued_tasks``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from reconciler.core.model import (
    Desired,
    DesiredTask,
    Limits,
    TaskHistory,
    TaskObs,
)
from reconciler.core.plan import Action, ActionKind, Plan
from reconciler.core.states import OutputState

_EMPTY_OBS = TaskObs()
_EMPTY_HIST = TaskHistory()


def _batches(kind: ActionKind, reason: str, tasks: Iterable[DesiredTask], batch_size: int) -> list[Action]:
    """One action per batch, tasks in index order, array indices batch-local."""
    by_batch: dict[int, list[DesiredTask]] = {}
    for t in tasks:
        by_batch.setdefault(t.index // batch_size, []).append(t)
    return [
        Action(kind, reason, tuple(t.key for t in ts), batch=b, array_indices=tuple(t.index % batch_size for t in ts))
        for b, ts in sorted(by_batch.items())
    ]


def _cap(actions: list[Action], budget: int) -> tuple[list[Action], list[str]]:
    """Keep actions within the queue budget; split the one that crosses it. Returns (kept, deferred keys)."""
    kept: list[Action] = []
    deferred: list[str] = []
    for a in actions:
        if budget <= 0:
            deferred.extend(a.keys)
        elif len(a.keys) <= budget:
            kept.append(a)
            budget -= len(a.keys)
        else:
            kept.append(replace(a, keys=a.keys[:budget], array_indices=a.array_indices[:budget]))
            deferred.extend(a.keys[budget:])
            budget = 0
    return kept, deferred


def plan(
    desired: Desired,
    observation: Mapping[str, TaskObs],
    history: Mapping[str, TaskHistory],
    now: float,
    limits: Limits,
) -> Plan:
    """The actions that move the world towards ``desired``; see the module docstring for the rules.

    ``observation`` may hold keys that are no longer desired (tasks removed from the
    production): in-flight ones are cancelled only with ``policy.prune``.
    """
    pol = desired.policy
    batch_size = max(1, min(pol.batch_size, limits.max_array_size))
    desired_keys = {t.key for t in desired.tasks}

    submit: list[DesiredTask] = []
    resubmit: list[DesiredTask] = []
    rerun: list[DesiredTask] = []
    give_up: list[str] = []
    backoff: list[str] = []
    backoff_until: float | None = None
    unknown: list[str] = []
    stale: list[str] = []
    queued = 0

    for task in desired.tasks:
        obs = observation.get(task.key, _EMPTY_OBS)
        hist = history.get(task.key, _EMPTY_HIST)
        if obs.sched is not None and obs.sched.in_flight:
            queued += 1  # counts against the queue cap even if its outputs are already there
            continue
        if obs.output in (OutputState.COMPLETE, OutputState.ADOPTED):
            continue
        if obs.output is OutputState.UNMARKED and hist.submissions == 0 and pol.adopt_existing:
            continue  # adopted: valid outputs this reconciler never produced
        if obs.output is OutputState.STALE:
            if pol.rerun_on_change:
                rerun.append(task)
            else:
                stale.append(task.key)
            continue
        if hist.submissions == 0:
            submit.append(task)
            continue
        if obs.sched is None:
            unknown.append(task.key)  # submitted, but no scheduler answer yet: never resend blindly
            continue
        failures = max(hist.failures, 1)
        if failures > pol.max_retries:
            if not hist.given_up:
                give_up.append(task.key)
            continue
        deadline = (hist.last_end if hist.last_end is not None else now) + pol.delay(failures)
        if now < deadline:
            backoff.append(task.key)
            backoff_until = deadline if backoff_until is None else min(backoff_until, deadline)
            continue
        resubmit.append(task)

    removed_in_flight = sorted(
        k for k, o in observation.items() if k not in desired_keys and o.sched is not None and o.sched.in_flight
    )
    queued += len(removed_in_flight)

    actions: list[Action] = []
    notes: list[str] = []
    if give_up:
        actions.append(Action(ActionKind.GIVE_UP, f"failed {pol.max_retries + 1} times (max_retries={pol.max_retries})", tuple(give_up)))
    if removed_in_flight:
        if pol.prune:
            actions.append(Action(ActionKind.CANCEL, "removed from the production (execution.prune: true)", tuple(removed_in_flight)))
            queued -= len(removed_in_flight)
        else:
            notes.append(
                f"{len(removed_in_flight)} task(s) removed from the production are still queued or running; "
                "set execution.prune: true to cancel them"
            )
    wanted = (
        _batches(ActionKind.RESUBMIT, "failed; backoff elapsed, retries left", resubmit, batch_size)
        + _batches(ActionKind.SUBMIT, "stale: fingerprint changed (execution.rerun_on_change: true)", rerun, batch_size)
        + _batches(ActionKind.SUBMIT, "missing: never submitted", submit, batch_size)
    )
    wanted.sort(key=lambda a: (a.batch if a.batch is not None else -1, a.kind is ActionKind.SUBMIT, a.reason))
    kept, deferred = _cap(wanted, limits.max_queued_tasks - queued)
    actions.extend(kept)
    if deferred:
        actions.append(Action(ActionKind.WAIT, f"queue cap: max_queued_tasks={limits.max_queued_tasks} reached", tuple(deferred)))
    if backoff:
        actions.append(Action(ActionKind.WAIT, "failed; waiting for backoff before retrying", tuple(backoff), until=backoff_until))
    if unknown:
        actions.append(Action(ActionKind.WAIT, "submitted; waiting for the scheduler to report the outcome", tuple(unknown)))
    if stale:
        notes.append(
            f"{len(stale)} task(s) are stale (outputs made with another fingerprint); "
            "set execution.rerun_on_change: true to rerun them"
        )
    return Plan(tuple(actions), tuple(notes))


def stage_only(p: Plan) -> Plan:
    """The same plan with submissions turned into STAGE actions (write, do not send)."""
    return replace(
        p,
        actions=tuple(
            replace(a, kind=ActionKind.STAGE) if a.kind in (ActionKind.SUBMIT, ActionKind.RESUBMIT) else a
            for a in p.actions
        ),
    )

