"""Summarise a production's state for people and machines. Pure: inputs in, a dict out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.core.model import Desired, TaskHistory, TaskObs
from reconciler.core.states import OutputState, SchedState

STATES = ("complete", "adopted", "running", "queued", "retrying", "failed", "stale", "missing")


def task_state(obs: TaskObs, hist: TaskHistory, max_retries: int, adopt: bool) -> str:
    """One word per task, in the order a person asks: done? running? broken?"""
    if obs.output is OutputState.COMPLETE:
        return "complete"
    if obs.output is OutputState.ADOPTED or (obs.output is OutputState.UNMARKED and hist.submissions == 0 and adopt):
        return "adopted"
    if obs.sched is SchedState.RUNNING:
        return "running"
    if obs.sched is SchedState.PENDING:
        return "queued"
    if obs.output is OutputState.STALE:
        return "stale"
    if hist.failures > max_retries:
        return "failed"
    if hist.failures > 0:
        return "retrying"
    return "missing"


def summarize(
    desired: Desired,
    observation: Mapping[str, TaskObs],
    history: Mapping[str, TaskHistory],
    excluded: Sequence[tuple[str, str]] = (),
    logs: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    pol = desired.policy
    empty_obs, empty_hist = TaskObs(), TaskHistory()
    counts: Counter[str] = Counter()
    states: dict[str, str] = {}
    failures = []
    retried = []
    for task in desired.tasks:
        hist = history.get(task.key, empty_hist)
        st = task_state(observation.get(task.key, empty_obs), hist, pol.max_retries, pol.adopt_existing)
        counts[st] += 1
        states[task.key] = st
        if st == "failed" or (st == "retrying" and hist.failures):
            failures.append({"key": task.key, "state": st, "failures": hist.failures, "reason": hist.last_reason, "log": (logs or {}).get(task.key, "")})
        if hist.failures and st == "complete":
            retried.append({"key": task.key, "failures": hist.failures, "last_reason": hist.last_reason})
    total = len(desired.tasks)
    done = counts["complete"] + counts["adopted"]
    finished = done + counts["failed"]
    return {
        "total": total,
        "counts": {s: counts[s] for s in STATES},
        "progress": (done / total) if total else 1.0,
        "success_rate": (done / finished) if finished else None,
        "done": finished + (0 if pol.rerun_on_change else counts["stale"]) == total,
        "failures": failures,
        "retried": retried,
        "excluded": [{"key": k, "reason": r} for k, r in excluded],
        "states": states,
    }
