"""Recovery of a lost ledger from what a production directory still holds.

The ledger is a journal and a cache: a submission's manifest (``logs/batch_*.json``) is
written before the scheduler is ever called, so the manifests say every submission that may
exist. Each becomes a submission with no job id, which the planner recovers by its token in
the scheduler (or abandons after the lookup grace, so its tasks are planned again).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from reconciler.core.sizing import Request
from reconciler.core.states import SubmissionKind, SubmissionState
from reconciler.ledger import Ledger, Submission


def rebuild(ledger: Ledger, production_dir: Path, backend: str, now: float) -> int:
    """Refill a lost ledger from the manifests in logs/: each becomes a submission with no job
    id, which the planner recovers by its token in the scheduler next pass (or abandons after
    the lookup grace, so its tasks are planned again). Returns the submissions recovered."""
    logs = production_dir / "logs"
    manifests = sorted(logs.glob("batch_*.json"), key=lambda p: (p.stat().st_mtime, p.name)) if logs.is_dir() else []
    n = 0
    for path in manifests:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            token = str(doc["token"])
            tasks = [(int(i), str(t["key"])) for i, t in doc["tasks"].items()]
            memory = doc.get("memory_mb")
            request = Request(None if memory is None else float(memory), float(doc["timeout_s"])) if "timeout_s" in doc else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        sub = Submission(  # with what its tasks asked: a retry grown for memory or time stays grown
            token, int(doc.get("batch", 0)), SubmissionKind.REBUILT, SubmissionState.RECORDED, None, backend,
            str(path.with_suffix(".sh")), str(path), path.stat().st_mtime, None, request,
        )
        try:
            ledger.record_submission(sub, sorted(tasks))
        except sqlite3.IntegrityError:  # a duplicate token: already recovered
            continue
        n += 1
    if n:
        ledger.event("rebuild", f"ledger was missing; recovered {n} submission(s) from {logs}", now)
    return n
