"""Summarise a production's state for people and machines. Pure: inputs in, a dict out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.core.model import Desired, TaskHistory, TaskObs
from reconciler.core.outcome import adoptable
from reconciler.core.states import OutputState, SchedState, TaskState


def task_state(obs: TaskObs, hist: TaskHistory, max_retries: int, adopt: bool) -> TaskState:
    """One state per task, in the order a person asks: done? running? broken?"""
    if obs.output is OutputState.COMPLETE:
        return TaskState.COMPLETE
    if obs.output is OutputState.ADOPTED or (adopt and adoptable(obs.output, hist.submissions)):
        return TaskState.ADOPTED
    if obs.sched is SchedState.RUNNING:
        return TaskState.RUNNING
    if obs.sched is SchedState.PENDING:
        return TaskState.QUEUED
    if obs.output is OutputState.STALE:
        return TaskState.STALE
    if hist.failures > max_retries:
        return TaskState.FAILED
    if hist.failures > 0:
        return TaskState.RETRYING
    return TaskState.MISSING


def summarize(
    desired: Desired,
    observation: Mapping[str, TaskObs],
    history: Mapping[str, TaskHistory],
    excluded: Sequence[tuple[str, str]] = (),
    logs: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Counts, progress, failures and each task's state; states as plain strings (TaskState values)."""
    pol = desired.policy
    empty_obs, empty_hist = TaskObs(), TaskHistory()
    counts: Counter[TaskState] = Counter()
    states: dict[str, str] = {}
    failures = []
    retried = []
    word = {s: s.value for s in TaskState}  # plain strings out; looked up once per task
    complete, failed, retrying = TaskState.COMPLETE, TaskState.FAILED, TaskState.RETRYING
    for task in desired.tasks:
        hist = history.get(task.key, empty_hist)
        st = task_state(observation.get(task.key, empty_obs), hist, pol.max_retries, pol.adopt_existing)
        counts[st] += 1
        states[task.key] = word[st]
        if st is failed or (st is retrying and hist.failures):
            failures.append({"key": task.key, "state": word[st], "failures": hist.failures, "reason": hist.last_reason, "log": (logs or {}).get(task.key, "")})
        if hist.failures and st is complete:
            retried.append({"key": task.key, "failures": hist.failures, "last_reason": hist.last_reason})
    total = len(desired.tasks)
    done = counts[TaskState.COMPLETE] + counts[TaskState.ADOPTED]
    finished = done + counts[TaskState.FAILED]
    return {
        "total": total,
        "counts": {s.value: counts[s] for s in TaskState},
        "progress": (done / total) if total else 1.0,
        "success_rate": (done / finished) if finished else None,
        "done": finished + (0 if pol.rerun_on_change else counts[TaskState.STALE]) == total,
        "failures": failures,
        "retried": retried,
        "excluded": [{"key": k, "reason": r} for k, r in excluded],
        "states": states,
    }
