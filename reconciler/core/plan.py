"""A plan is a value: an ordered tuple of actions from a closed set, each with a reason.

Every write a pass makes to the world (the scheduler, the output tree) and every decision it
journals (a failure counted, a submission given up) is an action here, so `reconcile plan`
shows all of it before `reconcile once` does it. What a pass writes besides its plan is only
the journal of what it saw (scheduler answers per attempt; see ARCHITECTURE.md).

Actions are ordered by kind (the order below is the order they are applied in) and then by
batch and submission token, never by text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler.core.reasons import Reason, message
from reconciler.core.sizing import Request


class ActionKind(StrEnum):
    """In application order: journal decisions first, then what touches the world."""

    RECOVER = "recover"  # a lost sbatch answer found by token: take the job as this submission's
    RECORD_FAILURE = "record_failure"  # attempts that ended without a valid output count against retries
    ABANDON = "abandon"  # a journaled submission that will never run: its tasks are planned again
    WAIVE = "waive"  # `reconcile retry`: failed tasks' backoff is over and each gets one more attempt
    GIVE_UP = "give_up"  # retries exhausted: the tasks stay FAILED
    CANCEL = "cancel"  # in-flight tasks that left the desired state (prune: true)
    ADOPT = "adopt"  # an old-tool job ended COMPLETED with valid outputs: write their .adopted markers
    QUARANTINE = "quarantine"  # move partial outputs to qa/partial/ before their rerun
    SEND = "send"  # submit what `reconcile stage` wrote
    RESUBMIT = "resubmit"  # retry of failed tasks of one batch, as a sparse array
    SUBMIT = "submit"  # first attempt of tasks of one batch
    STAGE = "stage"  # write script + manifest for inspection, submit nothing
    STOP_WORKERS = "stop_workers"  # cancel pool workers still queued that the remaining work does not need
    START_WORKERS = "start_workers"  # submit pool workers (one array of them), up to what the ready work needs
    PRUNE_LOGS = "prune_logs"  # remove a finished submission's logs (packed into logs/archive/ first, with archive_completed)
    WAIT = "wait"  # nothing to do for these tasks until `until` (backoff, queue cap, lookup)

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {kind: i for i, kind in enumerate(ActionKind)}
_REASON_RANK = {reason: i for i, reason in enumerate(Reason)}
SENDS = frozenset({ActionKind.SUBMIT, ActionKind.RESUBMIT, ActionKind.STAGE})
"""Kinds that write a new submission (script, manifest, ledger rows)."""


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    reason: Reason
    keys: tuple[str, ...]
    batch: int | None = None
    array_indices: tuple[int, ...] = ()  # batch-local, parallel to keys (submit/resubmit/stage/send)
    token: str | None = None  # the journaled submission acted on (recover, record_failure, abandon, send)
    until: float | None = None  # wait: earliest time something may change
    note: str = ""  # specifics for the message: a limit's value, a job id
    partial: tuple[tuple[str, tuple[str, ...]], ...] = ()  # fan-in tasks sent on a partial set: (key, members missing)
    expect_s: float | None = None  # sent to the pool: how long each task is expected to run (core.pool.expected_runtime)
    request: Request | None = None  # a retry that asks other than its stage (core.sizing.retry_request); None: the stage's

    @property
    def message(self) -> str:
        return message(self.reason, self.note)

    @property
    def order(self) -> tuple[int, int, str, int]:
        """Kind, then batch, then token, then reason: a total order that never reads prose."""
        return (self.kind.rank, -1 if self.batch is None else self.batch, self.token or "", _REASON_RANK[self.reason])

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "reason": self.reason.value,
            "message": self.message,
            "keys": list(self.keys),
            "batch": self.batch,
            "array_indices": list(self.array_indices),
            "token": self.token,
            "until": self.until,
            "note": self.note,
            **({"partial": {k: list(m) for k, m in self.partial}} if self.partial else {}),
            **({"expect_s": self.expect_s} if self.expect_s is not None else {}),
            **({"request": {"memory_mb": self.request.memory_mb, "time_s": self.request.time_s}} if self.request is not None else {}),
        }


@dataclass(frozen=True, slots=True)
class Note:
    """Something reported but not acted on (stale tasks, removed tasks still running, a site limit)."""

    reason: Reason
    keys: tuple[str, ...] = ()
    note: str = ""

    @property
    def message(self) -> str:
        count = f"{len(self.keys)} task(s): " if self.keys else ""
        return count + message(self.reason, self.note)

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason.value, "message": self.message, "keys": list(self.keys)}


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    notes: tuple[Note, ...] = field(default=())

    @property
    def actionable(self) -> tuple[Action, ...]:
        """Actions that change the world or the journal (everything but WAIT)."""
        return tuple(a for a in self.actions if a.kind is not ActionKind.WAIT)

    @property
    def is_empty(self) -> bool:
        return not self.actionable

    def count(self, kind: ActionKind) -> int:
        return sum(len(a.keys) for a in self.actions if a.kind is kind)

    def of(self, *kinds: ActionKind) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind in kinds)

    def to_json(self) -> dict[str, Any]:
        return {"actions": [a.to_json() for a in self.actions], "notes": [n.to_json() for n in self.notes]}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)
