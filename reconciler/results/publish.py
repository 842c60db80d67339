"""Publish one pass's status to the results branch: the last step of every pass, run once.

A pass that changed nothing (same counts, same per-task states, same tag, same error)
commits nothing: the document is compared with the branch's without its timestamp. A pass
that failed (the scheduler did not answer, say) republishes the last good counts with the
error, so the people reading STATUS.md see that the loop is stuck, and why.

Pictures are redrawn only when ``retention.plots_due`` says so (hourly, and when the
production's phase changes); other passes keep the branch's pictures and their
``plots_updated``. The time of the pass is a parameter, so a simulation can publish a
month of passes in minutes (benchmarks/bench_results_branch.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from reconciler.errors import ReconcilerError
from reconciler.results.branch import publish, read_branch_file
from reconciler.results.document import build_status, history_line, iso_time, parse_history
from reconciler.results.layout import HISTORY_FILE, builder, status_path
from reconciler.results.plots import plots_bytes
from reconciler.results.retention import PLOTS_EVERY_S, compact_history, plots_due
from reconciler.spec.load import Loaded

COMPARE_IGNORED = ("updated", "plots", "plots_updated")


class PassOutcome(Protocol):
    summary: dict[str, Any]
    applied: dict[str, int]


def publish_status(
    repo_root: Path,
    *,
    loaded: Loaded,
    commit: str,
    ref: str,
    tag: str | None,
    result: PassOutcome | None,
    attempts: Mapping[str, int],
    runtimes: Mapping[str, float],
    error: str | None,
    branch: str,
    remote: str | None,
    on_warning: Callable[[str], None],
    now: float | None = None,
    plots_every: float = PLOTS_EVERY_S,
) -> str | None:
    """Commit this pass's status (or, when the pass failed before it had one, the previous
    status with ``error``) when it differs from the branch's. ``attempts`` and ``runtimes``
    are per task, from the ledger's latest attempts; ``now`` is the time of the pass
    (default: the clock); pictures are redrawn at most every ``plots_every`` seconds, and
    when the production's phase changes. Returns the commit, or None."""
    name = loaded.name
    prev_raw = read_branch_file(repo_root, status_path(name), branch)
    try:
        prev = json.loads(prev_raw) if prev_raw is not None else None
    except ValueError:
        prev = None
    now = time.time() if now is None else now
    if result is None:
        if not isinstance(prev, dict) or prev.get("error") == error:
            return None
        doc = {**prev, "error": error, "updated": iso_time(now)}
        return publish(repo_root, builder(doc, None, {}), f"status: {name}: pass failed: {error}", branch=branch, remote=remote)
    doc = build_status(
        result.summary,
        production=name,
        version=loaded.spec.production.version,
        tag=tag,
        commit=commit,
        ref=ref,
        machine=loaded.machine.machine.name,
        now=now,
        keys=[t.key for t in loaded.expansion().tasks],
        attempts=attempts,
        runtimes=runtimes,
    )
    doc["error"] = error
    if isinstance(prev, dict) and _comparable(prev) == _comparable(doc):
        return None
    previous = prev if isinstance(prev, dict) else None
    if previous is not None:  # the pictures on the branch stay until they are redrawn
        doc["plots"] = list(previous.get("plots") or [])
        doc["plots_updated"] = previous.get("plots_updated")
    line = history_line(result.summary, result.applied, now)
    plots: dict[str, bytes] = {}
    if plots_due(previous, doc, now, plots_every):
        history = parse_history(read_branch_file(repo_root, status_path(name, HISTORY_FILE), branch))
        try:
            plots = plots_bytes(doc, compact_history([*history, line], now))
            doc["plots_updated"] = iso_time(now)
        except ReconcilerError as exc:  # matplotlib missing: status without pictures
            on_warning(f"{name}: no pictures on the status branch: {exc}")
    applied = ", ".join(f"{k} {v}" for k, v in sorted(result.applied.items())) or "nothing to do"
    c = result.summary["counts"]
    message = f"status: {name}: {applied} | {c['complete'] + c['adopted']}/{result.summary['total']} complete"
    return publish(repo_root, builder(doc, line, plots), message, branch=branch, remote=remote)


def _comparable(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in COMPARE_IGNORED and not (k == "error" and v is None)}


def publish_problem(
    repo_root: Path, *, name: str, commit: str, ref: str, machine: str, error: str, branch: str, remote: str | None,
) -> str | None:
    """Say on the results branch why production ``name`` could not be reconciled at all: its
    desired state never loaded, or its directory cannot be used. The previous status keeps its
    counts and gets ``error``; a production with no status yet gets one with no counts."""
    prev_raw = read_branch_file(repo_root, status_path(name), branch)
    try:
        prev = json.loads(prev_raw) if prev_raw is not None else None
    except ValueError:
        prev = None
    now = time.time()
    if isinstance(prev, dict):
        if prev.get("error") == error:
            return None
        doc = {**prev, "error": error, "updated": iso_time(now)}
    else:
        empty = {"total": 0, "counts": {}, "progress": 0.0, "success_rate": None, "done": False, "states": {}}
        doc = build_status(empty, production=name, version="", tag=None, commit=commit, ref=ref, machine=machine, now=now, keys=[])
        doc["error"] = error
    return publish(repo_root, builder(doc, None, {}), f"status: {name}: not reconciled: {error.splitlines()[0]}", branch=branch, remote=remote)
