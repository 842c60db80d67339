"""A plan is a value: an ordered tuple of actions from a closed set, each with a reason."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class ActionKind(StrEnum):
    STAGE = "stage"  # write script + manifest for inspection, submit nothing
    SUBMIT = "submit"  # first attempt of tasks of one batch
    RESUBMIT = "resubmit"  # retry of failed tasks of one batch, as a sparse array
    CANCEL = "cancel"  # in-flight tasks that left the desired state (prune: true)
    WAIT = "wait"  # nothing to do for these tasks until `until` (backoff, queue cap)
    GIVE_UP = "give_up"  # retries exhausted: the tasks stay FAILED


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    reason: str
    keys: tuple[str, ...]
    batch: int | None = None
    array_indices: tuple[int, ...] = ()  # batch-local, parallel to keys (submit/resubmit/stage)
    until: float | None = None  # wait: earliest time something may change

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        d["keys"] = list(self.keys)
        d["array_indices"] = list(self.array_indices)
        return d


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    notes: tuple[str, ...] = field(default=())  # things reported but not acted on (stale, removed)

    @property
    def actionable(self) -> tuple[Action, ...]:
        """Actions that change the world (everything but WAIT)."""
        return tuple(a for a in self.actions if a.kind is not ActionKind.WAIT)

    @property
    def is_empty(self) -> bool:
        return not self.actionable

    def count(self, kind: ActionKind) -> int:
        return sum(len(a.keys) for a in self.actions if a.kind is kind)

    def to_json(self) -> dict[str, Any]:
        return {"actions": [a.to_json() for a in self.actions], "notes": list(self.notes)}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)
