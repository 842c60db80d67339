"""The status document a pass publishes on the results branch, and its history lines.

``productions/<name>/status.json`` (``reconciler.results.layout`` says where everything goes)
is this module's StatusDoc, rewritten every pass; ``history.jsonl`` gets one
``history_line`` per pass.

Why a document of its own instead of dumping ``summarize()``: the status of a 40,000-task
production is read by people (STATUS.md), by scripts (JSON Schema in schemas/) and by the
pictures (``reconciler.results.plots``), and it is committed every pass, so it must be stable,
versioned and small. Per-task data therefore travels as compact parallel arrays (one
character per task state, keys factored into their axes) rather than as 40,000 objects.
Nothing from the environment and no credential ever goes into it: only the summary, the
desired-state identity and the machine name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from reconciler import __version__
from reconciler.core.states import UNKNOWN_CODE, TaskState
from reconciler.results.keys import encode_keys, task_keys

__all__ = ["encode_keys", "task_keys"]  # the key encoding lives in results.keys; readers import it from here too

SCHEMA_VERSION = 1

UNKNOWN = "unknown"
"""The state of a task whose code a reader does not know (written by a newer reconciler)."""
LEGEND: dict[str, str] = {s.code: s.value for s in TaskState} | {UNKNOWN_CODE: UNKNOWN}
"""State code -> state, as every status.json carries it (TaskState.code: one character per task)."""
_CODE = {s.value: s.code for s in TaskState}

MAX_LISTED = 1000
MAX_CAUSES = 20
"""Cause groups listed at most: one line each in STATUS.md's reading, the rest are in failures."""
"""Failures and stale keys listed by name at most; the per-task codes hold the rest."""


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Failure(_Doc):
    """A task that failed at least once and is not complete."""

    key: str
    state: str
    failures: int
    reason: str = ""
    cause: str = Field(default="", description="what failures are grouped by: the wrapper's cause, else the scheduler's words")
    log: str = Field(default="", description="the latest attempt's stderr log (.err)")


class CauseGroup(_Doc):
    """Failures that share a cause, with one example to start from."""

    cause: str = Field(description='e.g. "command not found: no-such-generator", "exit 3", "outputs invalid"')
    tasks: int
    gave_up: int = Field(default=0, description="of these, tasks given up (no attempt left without `reconcile retry`)")
    retry_cannot_fix: bool = Field(default=False, description="the command cannot run: given up at once")
    example: str = Field(description="the first such task, in task order")
    detail: str = Field(default="", description="the example's whole cause (the validator's message, the last stderr line)")
    stderr: list[str] = Field(default_factory=list, description="the example's last stderr lines")
    log: str = ""


class Retried(_Doc):
    """A task that completed after failing: worth a look even though it is done."""

    key: str
    failures: int
    last_reason: str = ""


class ExcludedTask(_Doc):
    key: str
    reason: str


class StageStatus(_Doc):
    """One stage of a campaign: how far it got (the chain STATUS.md shows under the production)."""

    name: str
    total: int
    counts: dict[str, int] = Field(description="the stage's tasks per state")
    progress: float = Field(description="(complete + adopted) / total")
    done: bool = Field(description="nothing left to do in the stage: every task complete, adopted, failed or blocked (or the production is done)")


class KeyRun(_Doc):
    """Consecutive task keys (a campaign's stage): a grid nested in ``order``, or plain ``keys``."""

    keys: list[str] | None = Field(default=None, description="the run's keys, when they are not a grid")
    grid: list[list[str]] | None = Field(default=None, description="distinct key parts per position")
    holes: list[int] = Field(default_factory=list, description="positions in the grid product (nested in order) that are not tasks")
    order: list[int] | None = Field(default=None, description="key positions from outermost to innermost (null: 0, 1, ...): a stage numbered redshift-major is [0, 2, 1]")


class TaskTable(_Doc):
    """Per-task data in task order, as parallel arrays.

    Keys are factored into their parts (``reconciler.results.keys``): ``grid``: the distinct
    parts per position, plus ``holes``: positions of their product that are not tasks (the
    excluded ones), when the keys are one product (one stage); ``runs``: one such grid per
    stage of a campaign, each nested in its own ``order``; ``keys``: the plain list when they
    are no product. ``task_keys()`` decodes each.
    """

    legend: dict[str, str] = Field(default_factory=lambda: dict(LEGEND), description="state code -> state")
    states: str = Field(description="one legend code per task, in task index order")
    keys: list[str] | None = Field(default=None, description="task keys, when they are not a grid")
    grid: list[list[str]] | None = Field(default=None, description="distinct key parts per position; keys are their product minus holes")
    holes: list[int] = Field(default_factory=list, description="positions in the grid product that are not tasks")
    runs: list[KeyRun] | None = Field(default=None, description="consecutive runs of keys (a campaign's stages), each a grid or a list")
    attempts: list[int | None] = Field(default_factory=list, description="submissions per task; null when unknown")
    runtime_s: list[int | float | None] = Field(default_factory=list, description="run time of the latest attempt in seconds; null when unknown")


class StageUsage(_Doc):
    used: float = Field(description="node-hours its tasks ran in the pool's workers")
    wasted: float = Field(description="its share (by use) of the workers' node-hours that ran no task")


class PoolUsage(_Doc):
    """A production in pool mode (execution.mode: pool): its workers and their node time."""

    node_hours: float = Field(description="node-hours the pool's workers held, so far")
    used: float = Field(description="of which tasks ran")
    wasted: float = Field(description="of which no task ran: start-up, idle tails, margins")
    stages: dict[str, StageUsage] = Field(default_factory=dict, description="by stage (\"\" for a production of one stage)")
    workers_live: int = Field(description="workers queued or running now")
    workers_started: int = Field(description="workers that have started, ever")


class StageEfficiency(_Doc):
    """A stage's completed runs: what they asked against what they used (`reconcile advise` says what to ask)."""

    runs: int = Field(description="completed runs counted (those that recorded their request)")
    time_requested_hours: float = Field(description="their timeouts, summed")
    time_used_hours: float = Field(description="their run times, summed")
    time_used_share: float | None = Field(description="used / requested time")
    memory_runs: int = Field(description="of them, with a memory request and a measured peak")
    memory_requested_gb: float | None = Field(description="their memory request, per run")
    memory_peak_gb: float | None = Field(description="their peak memory, per run")
    memory_used_share: float | None = Field(description="peak / requested memory")


class StatusDoc(_Doc):
    """``productions/<name>/status.json`` on the results branch."""

    schema_version: int = SCHEMA_VERSION
    production: str
    version: str
    tag: str | None = None
    commit: str
    ref: str
    machine: str
    reconciler_version: str
    updated: str = Field(description="ISO 8601 time of the pass, UTC")
    counts: dict[str, int] = Field(description="tasks per state")
    total: int
    progress: float = Field(description="(complete + adopted) / total")
    success_rate: float | None = Field(default=None, description="done / (done + failed); null before anything finished")
    done: bool
    failures: list[Failure] = Field(default_factory=list)
    failures_omitted: int = 0
    causes: list[CauseGroup] = Field(default_factory=list, description="failures grouped by cause, most tasks first")
    retried: list[Retried] = Field(default_factory=list)
    excluded: list[ExcludedTask] = Field(default_factory=list)
    stale: list[str] = Field(default_factory=list, description="keys whose outputs have another fingerprint")
    stale_omitted: int = 0
    adopted: int = 0
    plots: list[str] = Field(default_factory=list, description="picture files next to this one, e.g. progress.png")
    plots_updated: str | None = Field(default=None, description="ISO 8601 time (UTC) of the pass that drew the pictures: they are redrawn at most hourly, and when the production's phase changes")
    stages: list[StageStatus] = Field(default_factory=list, description="a campaign's stages in chain order, each with its counts; empty for a production of one stage")
    pool: PoolUsage | None = Field(default=None, description="pool mode: workers and node-hours used and wasted; null in array mode")
    efficiency: dict[str, StageEfficiency] = Field(default_factory=dict, description="requested vs used, by stage (\"\" for a production of one stage)")
    error: str | None = Field(default=None, description="why the latest pass failed, the counts being those of the last pass that did not; null when it succeeded")
    tasks: TaskTable


# ---------------------------------------------------------------- keys


def task_states(tasks: Mapping[str, Any]) -> list[str]:
    """Per-task state names, in task order."""
    legend = tasks.get("legend") or LEGEND
    return [legend.get(c, UNKNOWN) for c in tasks.get("states", "")]


# ---------------------------------------------------------------- building


def iso_time(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")


def _runtime(value: float | None) -> int | float | None:
    """Seconds, 0.1 s precision below 100 s and whole seconds above (the array is 40,000 long)."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return round(value, 1) if value < 100 else int(round(value))


def build_status(
    summary: Mapping[str, Any],
    *,
    production: str,
    version: str,
    tag: str | None,
    commit: str,
    ref: str,
    machine: str,
    now: float,
    keys: Sequence[str] | None = None,
    attempts: Mapping[str, int] | None = None,
    runtimes: Mapping[str, float] | None = None,
    plots: Sequence[str] = (),
) -> dict[str, Any]:
    """The status.json document (validated, as a JSON-ready dict) from ``summarize()``'s output.

    ``keys`` are the desired task keys in index order (default: the order of
    ``summary["states"]``); ``attempts`` and ``runtimes`` come from the ledger and may miss
    tasks. ``plots`` names the picture files published next to the document.
    """
    states: Mapping[str, str] = summary.get("states", {})
    order = list(keys) if keys is not None else list(states)
    attempts = attempts or {}
    runtimes = runtimes or {}
    counts = {s: int(n) for s, n in summary.get("counts", {}).items()}
    failures = list(summary.get("failures", []))
    stale_word = TaskState.STALE.value
    stale = [k for k in order if states.get(k) == stale_word]
    table = {
        "legend": dict(LEGEND),
        "states": "".join(_CODE.get(states.get(k, UNKNOWN), UNKNOWN_CODE) for k in order),
        **encode_keys(order),
        "attempts": [attempts.get(k) for k in order],
        "runtime_s": [_runtime(runtimes.get(k)) for k in order],
    }
    doc = StatusDoc(
        production=production,
        version=version,
        tag=tag,
        commit=commit,
        ref=ref,
        machine=machine,
        reconciler_version=__version__,
        updated=iso_time(now),
        counts=counts,
        total=int(summary.get("total", len(order))),
        progress=float(summary.get("progress", 0.0)),
        success_rate=summary.get("success_rate"),
        done=bool(summary.get("done", False)),
        failures=[
            Failure(key=f["key"], state=f.get("state", ""), failures=int(f.get("failures", 0)), reason=f.get("reason") or "", cause=f.get("cause") or "", log=f.get("log") or "")
            for f in failures[:MAX_LISTED]
        ],
        failures_omitted=max(0, len(failures) - MAX_LISTED),
        causes=[CauseGroup(**c) for c in summary.get("causes", [])[:MAX_CAUSES]],
        retried=[Retried(**r) for r in summary.get("retried", [])[:MAX_LISTED]],
        excluded=[ExcludedTask(**e) for e in summary.get("excluded", [])],
        stale=stale[:MAX_LISTED],
        stale_omitted=max(0, len(stale) - MAX_LISTED),
        adopted=counts.get(TaskState.ADOPTED, 0),
        plots=list(plots),
        stages=_stages(summary),
        pool=PoolUsage(**summary["pool"]) if summary.get("pool") else None,
        efficiency={st: StageEfficiency(**e) for st, e in (summary.get("efficiency") or {}).items()},
        tasks=TaskTable(**table),
    )
    return doc.model_dump(mode="json", exclude_none=False)


def _stages(summary: Mapping[str, Any]) -> list[StageStatus]:
    """``summary["stages"]`` (core.summary, in chain order) for a campaign; [] for one stage (its
    counts are the production's). A stage is done when none of its tasks can still change,
    which a finished production says of every stage (stale tasks left alone included)."""
    stages = list(summary.get("stages") or ())
    if len(stages) == 1 and not stages[0].get("name"):
        return []
    finished = (TaskState.COMPLETE, TaskState.ADOPTED, TaskState.FAILED, TaskState.BLOCKED)
    out = []
    for st in stages:
        counts = {s: int(n) for s, n in (st.get("counts") or {}).items()}
        total = int(st.get("total", 0))
        done = counts.get(TaskState.COMPLETE, 0) + counts.get(TaskState.ADOPTED, 0)
        out.append(StageStatus(
            name=str(st.get("name", "")), total=total, counts=counts, progress=(done / total) if total else 1.0,
            done=bool(summary.get("done")) or sum(counts.get(s, 0) for s in finished) == total,
        ))
    return out


def history_line(summary: Mapping[str, Any], actions: Mapping[str, int], now: float) -> dict[str, Any]:
    """One line of history.jsonl: when, how many tasks in each state, what the pass did."""
    return {
        "time": iso_time(now),
        "t": round(now, 3),
        "total": int(summary.get("total", 0)),
        "counts": {s: int(n) for s, n in summary.get("counts", {}).items()},
        "progress": float(summary.get("progress", 0.0)),
        "actions": {k: int(v) for k, v in actions.items() if v},
    }


def dumps_status(doc: Mapping[str, Any]) -> bytes:
    """status.json text: readable top level, one line per per-task array (so 40,000 tasks stay ~40 lines)."""
    body = {k: v for k, v in doc.items() if k != "tasks"}
    text = json.dumps(body, indent=2, sort_keys=True)
    tasks = doc.get("tasks") or {}
    inner = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in tasks.items())
    tail = f'  "tasks": {{\n{inner}\n  }}\n}}\n'
    return (text[:-2] + ",\n" + tail).encode() if body else ('{\n' + tail).encode()


def parse_history(data: bytes | None) -> list[dict[str, Any]]:
    """History lines from history.jsonl; a damaged line is skipped rather than losing the rest."""
    out = []
    for raw in (data or b"").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            out.append(line)
    return out
