"""Which finished submissions' logs a pass removes (``outputs.cleanup_policy``).

A production of 40,000 tasks leaves 80,000 log files behind, and sites count inodes: the
seed tool's ``keep_logs_days`` said how long to keep them and did nothing. Here it is a
decision like any other, so `reconcile plan` shows it before `reconcile once` does it.
Manifests and scripts are never pruned: a lost ledger is rebuilt from them (recovery.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.core.model import FinishedSubmission, Policy
from reconciler.core.plan import Action, ActionKind
from reconciler.core.reasons import Reason


def prune_logs(kept: Sequence[FinishedSubmission], now: float, policy: Policy) -> list[Action]:
    """One PRUNE_LOGS per submission of ours that finished ``keep_logs_s`` ago or more, in
    finish order; its reason says whether the logs are archived first (LOGS_ARCHIVED) or only
    removed (LOGS_EXPIRED). The old tool's submissions (import-legacy) left no logs of ours."""
    reason = Reason.LOGS_ARCHIVED if policy.archive_logs else Reason.LOGS_EXPIRED
    days = f"finished over {policy.keep_logs_s / 86400:g} day(s) ago"
    return [
        Action(ActionKind.PRUNE_LOGS, reason, (), batch=sub.batch, token=sub.token, note=days)
        for sub in sorted(kept, key=lambda s: (s.finished, s.token))
        if now - sub.finished >= policy.keep_logs_s and not sub.kind.old_tool
    ]
