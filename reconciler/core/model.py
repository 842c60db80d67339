"""Observation, history and limits: the planner's inputs, as plain immutable values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reconciler.core.states import OutputState, SchedState


@dataclass(frozen=True, slots=True)
class TaskObs:
    """What the world says about one task right now."""

    output: OutputState = OutputState.MISSING
    sched: SchedState | None = None  # state in its latest submission; None if never submitted


@dataclass(frozen=True, slots=True)
class TaskHistory:
    """What the ledger remembers about one task."""

    submissions: int = 0  # how many times we submitted it
    failures: int = 0  # attempts that ended in failure
    last_end: float | None = None  # when the latest failure was seen to end (epoch seconds)
    last_reason: str = ""
    given_up: bool = False  # a give-up was already recorded for the current failure count


@dataclass(frozen=True, slots=True)
class Limits:
    max_array_size: int = 1001
    max_queued_tasks: int = 5000


@dataclass(frozen=True, slots=True)
class Policy:
    """The execution settings the planner needs, in seconds."""

    batch_size: int = 100
    max_retries: int = 3
    initial_delay_s: float = 600.0
    backoff_multiplier: float = 2.0
    max_delay_s: float = 86400.0
    prune: bool = False
    rerun_on_change: bool = False
    adopt_existing: bool = True

    def delay(self, failures: int) -> float:
        """Backoff before retrying after ``failures`` failures: initial * multiplier**(failures-1), capped."""
        if failures <= 0:
            return 0.0
        return min(self.initial_delay_s * self.backoff_multiplier ** min(failures - 1, 60), self.max_delay_s)


class DesiredTask(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def index(self) -> int: ...


@dataclass(frozen=True)
class Desired:
    """Tasks in canonical order (ascending index) and the policy to run them by."""

    tasks: Sequence[DesiredTask]
    policy: Policy
