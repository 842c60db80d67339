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
    """One PRUNE_LOGS per submission that finished ``keep_logs_s`` ago or more, in finish order;
    its note says whether the logs are archived first."""
    how = "archived to logs/archive/, then removed" if policy.archive_logs else "removed"
    days = f"{policy.keep_logs_s / 86400:g} day(s)"
    return [
        Action(ActionKind.PRUNE_LOGS, Reason.LOGS_EXPIRED, (), batch=sub.batch, token=sub.token, note=f"finished over {days} ago; {how}")
        for sub in sorted(kept, key=lambda s: (s.finished, s.token))
        if now - sub.finished >= policy.keep_logs_s
    ]
