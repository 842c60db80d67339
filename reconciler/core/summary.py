"""Summarise a production's state for people and machines. Pure: inputs in, a dict out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from reconciler.core.model import Desired, TaskHistory, TaskObs
from reconciler.core.outcome import adoptable, cannot_retry, gave_up, rerun_failed
from reconciler.core.readiness import Readiness
from reconciler.core.reasons import Reason
from reconciler.core.states import OutputState, SchedState, TaskState

_COMPLETE, _ADOPTED, _RUNNING, _QUEUED, _STAGED, _WAITING, _RETRYING, _FAILED, _BLOCKED, _STALE, _MISSING = (s.value for s in (
    TaskState.COMPLETE, TaskState.ADOPTED, TaskState.RUNNING, TaskState.QUEUED, TaskState.STAGED, TaskState.WAITING,
    TaskState.RETRYING, TaskState.FAILED, TaskState.BLOCKED, TaskState.STALE, TaskState.MISSING,
))
"""TaskState's values as plain strings: hashing an enum member runs Python code (Enum.__hash__),
and the summary of 10^6 tasks counts each one."""


def task_state(obs: TaskObs, hist: TaskHistory, max_retries: int, adopt: bool, rerun: bool = False) -> str:
    """One state per task (a TaskState value), in the order a person asks: done? running? broken?"""
    if obs.output is OutputState.COMPLETE:
        return _COMPLETE
    if obs.output is OutputState.ADOPTED or (adopt and adoptable(obs.output, hist.submissions)):
        return _ADOPTED
    if obs.sched is SchedState.RUNNING:
        return _RUNNING
    if obs.sched is SchedState.PENDING:
        return _QUEUED
    if obs.output is OutputState.STALE and not (rerun and rerun_failed(obs.sched)):  # as the planner reads it
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
    partial: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """Counts, progress, failures and each task's state; states as plain strings (TaskState values).

    ``staged``: keys in submissions `reconcile stage` wrote and nothing sent; they are their
    own state (the planner holds them as queued, so nothing submits them twice, but no
    scheduler has them yet). ``waiting``: keys whose input is missing (World.missing_inputs),
    which the planner does not send; a task that failed before and now waits says so too.

    A task of a stage with ``needs`` that the planner would send is held by core.readiness,
    the planner's own rule over the same views: waiting (a member pending) or blocked (a
    member gave up and the stage requires it; finished, like failed). ``partial``
    (World.partial): complete tasks that ran on a partial set; one whose missing member is
    done now is stale. Each task's state follows its stage's policy (retries, adoption)."""
    empty_obs, empty_hist = TaskObs(), TaskHistory()
    ready = Readiness(desired, observation, history)
    partial = partial or {}
    per_stage: list[tuple[str, int, Counter[str]]] = []
    states: dict[str, str] = {}
    failures: list[dict[str, Any]] = []
    retried: list[dict[str, Any]] = []
    examples: dict[str, tuple[str, TaskHistory]] = {}  # cause -> its first task, in index order
    campaign = ready.campaign  # one stage has no needs to ask about
    for stage in desired.stage_list:
        pol = stage.policy
        counts: Counter[str] = Counter()
        per_stage.append((stage.name, len(stage.tasks), counts))
        for task in stage.tasks:
            key = task.key
            hist = history.get(key, empty_hist)
            st = task_state(observation.get(key, empty_obs), hist, pol.max_retries, pol.adopt_existing, pol.rerun_on_change)
            if st == _COMPLETE and partial and key in partial and ready.completed(task, partial[key]):
                st = _STALE  # ran on a partial set, and a member it lacked is done now
            if staged and key in staged and st in (_QUEUED, _MISSING, _RETRYING):
                st = _STAGED
            elif waiting and key in waiting and st in (_MISSING, _RETRYING):
                st = _WAITING
            elif campaign and task.needs and (st == _MISSING or st == _RETRYING or (st == _STALE and pol.rerun_on_change)):
                v = ready.of(task, stage.min_fraction)
                if v is not None and not v.ready:
                    st = _WAITING if v.reason is Reason.WAITING_MEMBERS else _BLOCKED
            counts[st] += 1
            states[key] = st
            if hist.failures or st == _FAILED:
                _record(key, st, hist, failures, retried, examples, logs)
    counts = sum((c for _, _, c in per_stage), Counter())
    total = len(desired.tasks)
    done = counts[_COMPLETE] + counts[_ADOPTED]
    finished = done + counts[_FAILED] + counts[_BLOCKED]
    return {
        "total": total,
        "counts": {s.value: counts[s.value] for s in TaskState},
        "progress": (done / total) if total else 1.0,
        "success_rate": (done / (done + counts[_FAILED])) if done + counts[_FAILED] else None,
        "done": finished + sum(c[_STALE] for (_, _, c), st in zip(per_stage, desired.stage_list, strict=True) if not st.policy.rerun_on_change) == total,
        "all_complete": done == total,
        "failures": failures,
        "causes": _causes(failures, examples),
        "retried": retried,
        "excluded": [{"key": k, "reason": r} for k, r in excluded],
        "states": states,
        "stages": [{"name": name, "total": n, "counts": {s.value: c[s.value] for s in TaskState}} for name, n, c in per_stage],
    }


def _record(
    key: str, st: str, hist: TaskHistory, failures: list[dict[str, Any]], retried: list[dict[str, Any]],
    examples: dict[str, tuple[str, TaskHistory]], logs: Mapping[str, str] | None,
) -> None:
    """A task's line in ``failures`` (failed, or retrying after a failure) or ``retried``."""
    if st == _FAILED or (st == _RETRYING and hist.failures):
        cause = hist.cause.group if hist.cause is not None else hist.last_reason or "unknown"
        failures.append({"key": key, "state": st, "failures": hist.failures, "reason": hist.last_reason, "cause": cause, "log": (logs or {}).get(key, "")})
        if cause not in examples:
            examples[cause] = (key, hist)
    if hist.failures and st == _COMPLETE:
        retried.append({"key": key, "failures": hist.failures, "last_reason": hist.last_reason})


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
    if c.get(_BLOCKED):
        parts.append(f"{c[_BLOCKED]} task(s) blocked by a given-up member")
    if c.get(_STALE):
        parts.append(f"{c[_STALE]} stale task(s) not rerun (execution.rerun_on_change is off)")
    return ", ".join(parts) or f"{summary['total'] - c.get(_COMPLETE, 0) - c.get(_ADOPTED, 0)} task(s) not complete"
