"""Summarise a production's state for people and machines. Pure: inputs in, a dict out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from reconciler.core.model import Desired, TaskHistory, TaskObs
from reconciler.core.outcome import adoptable, cannot_retry, gave_up
from reconciler.core.states import OutputState, SchedState, TaskState

_COMPLETE, _ADOPTED, _RUNNING, _QUEUED, _STAGED, _WAITING, _RETRYING, _FAILED, _STALE, _MISSING = (s.value for s in (
    TaskState.COMPLETE, TaskState.ADOPTED, TaskState.RUNNING, TaskState.QUEUED, TaskState.STAGED, TaskState.WAITING,
    TaskState.RETRYING, TaskState.FAILED, TaskState.STALE, TaskState.MISSING,
))
"""TaskState's values as plain strings: hashing an enum member runs Python code (Enum.__hash__),
and the summary of 10^6 tasks counts each one."""


def task_state(obs: TaskObs, hist: TaskHistory, max_retries: int, adopt: bool) -> str:
    """One state per task (a TaskState value), in the order a person asks: done? running? broken?"""
    if obs.output is OutputState.COMPLETE:
        return _COMPLETE
    if obs.output is OutputState.ADOPTED or (adopt and adoptable(obs.output, hist.submissions)):
        return _ADOPTED
    if obs.sched is SchedState.RUNNING:
        return _RUNNING
    if obs.sched is SchedState.PENDING:
        return _QUEUED
    if obs.output is OutputState.STALE:
        return _STALE
    if gave_up(hist, max_retries):
        return _FAILED
    if hist.failures > 0:
        return _RETRYING
    return _MISSING


def summarize(
    desired: Desired,
    observation: Mapping[str, TaskObs],
    history: Mapping[str, TaskHistory],
    excluded: Sequence[tuple[str, str]] = (),
    logs: Mapping[str, str] | None = None,
    staged: Collection[str] = (),
    waiting: Collection[str] = (),
) -> dict[str, Any]:
    """Counts, progress, failures and each task's state; states as plain strings (TaskState values).

    ``staged``: keys in submissions `reconcile stage` wrote and nothing sent; they are their
    own state (the planner holds them as queued, so nothing submits them twice, but no
    scheduler has them yet). ``waiting``: keys whose input is missing (World.missing_inputs),
    which the planner does not send; a task that failed before and now waits says so too."""
    pol = desired.policy
    empty_obs, empty_hist = TaskObs(), TaskHistory()
    counts: Counter[str] = Counter()
    states: dict[str, str] = {}
    failures = []
    retried = []
    examples: dict[str, tuple[str, TaskHistory]] = {}  # cause -> its first task, in index order
    for task in desired.tasks:
        hist = history.get(task.key, empty_hist)
        st = task_state(observation.get(task.key, empty_obs), hist, pol.max_retries, pol.adopt_existing)
        if staged and task.key in staged and st in (_QUEUED, _MISSING, _RETRYING):
            st = _STAGED
        elif waiting and task.key in waiting and st in (_MISSING, _RETRYING):
            st = _WAITING
        counts[st] += 1
        states[task.key] = st
        if st == _FAILED or (st == _RETRYING and hist.failures):
            cause = hist.cause.group if hist.cause is not None else hist.last_reason or "unknown"
            failures.append({"key": task.key, "state": st, "failures": hist.failures, "reason": hist.last_reason, "cause": cause, "log": (logs or {}).get(task.key, "")})
            if cause not in examples:
                examples[cause] = (task.key, hist)
        if hist.failures and st == _COMPLETE:
            retried.append({"key": task.key, "failures": hist.failures, "last_reason": hist.last_reason})
    total = len(desired.tasks)
    done = counts[_COMPLETE] + counts[_ADOPTED]
    finished = done + counts[_FAILED]
    return {
        "total": total,
        "counts": {s.value: counts[s.value] for s in TaskState},
        "progress": (done / total) if total else 1.0,
        "success_rate": (done / finished) if finished else None,
        "done": finished + (0 if pol.rerun_on_change else counts[_STALE]) == total,
        "all_complete": done == total,
        "failures": failures,
        "causes": _causes(failures, examples),
        "retried": retried,
        "excluded": [{"key": k, "reason": r} for k, r in excluded],
        "states": states,
    }


def _causes(failures: Sequence[Mapping[str, Any]], examples: Mapping[str, tuple[str, TaskHistory]]) -> list[dict[str, Any]]:
    """Failures grouped by cause, most tasks first: 12,000 tasks that fail one way are one line
    ("12000 tasks: command not found: gen"), with one example's log and last stderr lines."""
    tasks: Counter[str] = Counter(f["cause"] for f in failures)
    gave: Counter[str] = Counter(f["cause"] for f in failures if f["state"] == _FAILED)
    logs = {f["key"]: f["log"] for f in failures}
    out = []
    for cause, n in sorted(tasks.items(), key=lambda kv: (-kv[1], kv[0])):
        key, hist = examples[cause]
        out.append({
            "cause": cause,
            "tasks": n,
            "gave_up": gave[cause],
            "retry_cannot_fix": cannot_retry(hist),
            "example": key,
            "detail": hist.cause.text if hist.cause is not None else hist.last_reason,
            "stderr": list(hist.cause.tail[-3:]) if hist.cause is not None else [],
            "log": logs.get(key, ""),
        })
    return out


def shortfall(summary: Mapping[str, Any]) -> str:
    """Why a production with nothing left to do is not complete, for people: the tasks that
    gave up, grouped by their last failure, and the stale ones left alone. "" when complete."""
    if summary.get("all_complete", False):
        return ""
    c = summary["counts"]
    parts = []
    if c.get(_FAILED):
        reasons = Counter(f.get("cause") or f["reason"] or "unknown" for f in summary["failures"] if f["state"] == _FAILED)
        causes = "; ".join(f"{why} ({n})" for why, n in reasons.most_common(3))
        parts.append(f"{c[_FAILED]} task(s) gave up: {causes}")
    if c.get(_STALE):
        parts.append(f"{c[_STALE]} stale task(s) not rerun (execution.rerun_on_change is off)")
    return ", ".join(parts) or f"{summary['total'] - c.get(_COMPLETE, 0) - c.get(_ADOPTED, 0)} task(s) not complete"
