"""The scheduler interface every backend implements (local, Slurm CLI, pyslurm)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from reconciler.core.sizing import Usage
from reconciler.core.states import SchedState


@dataclass(frozen=True)
class ArrayJob:
    """One submission: a (possibly sparse) array of batch-local indices of one batch.

    ``script`` is the exact sbatch script text (also what ``reconcile stage`` writes);
    ``token`` is unique per submission and travels in the job's comment and (its tag) in
    the job's name, so that a lost sbatch answer can be recovered by looking the token up
    instead of submitting again, also where accounting keeps no comments.
    """

    token: str
    name: str  # "<production>.<batch:04d>.<token tag>" (script.job_name)
    script_path: Path
    script: str
    array_indices: tuple[int, ...]
    throttle: int | None
    workdir: Path
    log_out: str  # path pattern with %A (job id) and %a (array index)
    log_err: str
    pool_expect_s: float | None = None  # into the production's pool (scheduler.pool), each task expected to take this long; None: a job array


@dataclass(frozen=True, slots=True)
class TaskSched:
    """One array task as a backend observed it."""

    state: SchedState
    exit_code: int | None = None
    reason: str = ""  # scheduler's words: "exit 1", "TIMEOUT", "NODE_FAIL"...
    start: float | None = None
    end: float | None = None
    usage: Usage | None = None  # ended: what it used (sacct's batch step, the local process's rusage); None: not measured


@dataclass(frozen=True)
class JobRef:
    """What the ledger knows of a submission when asking the scheduler about it."""

    token: str
    job_id: str | None  # None when sbatch's answer was lost
    submitted_at: float
    array_indices: tuple[int, ...] = ()  # what was submitted: lets a backend see which tasks left the queue
    name: str = ""  # the job name it was given (script.job_name): found by it where comments are not stored


@dataclass
class SchedulerView:
    """The answer to one observe(): states by job id and array index, and tokens found."""

    tasks: dict[str, dict[int, TaskSched]] = field(default_factory=dict)  # job_id -> index -> state
    found: dict[str, str] = field(default_factory=dict)  # token -> job_id, for refs without job_id
    gone: set[str] = field(default_factory=set)  # job ids the scheduler has no record of at all
    hung: set[str] = field(default_factory=set)  # pool workers ("<job>_<index>") running with a claim whose lease expired


class Scheduler(Protocol):
    """What the engine asks of a backend, all of it. Backends observe and act; they never decide.

    Transient failures raise TransientError; they never look like task failures. A
    constructor does no I/O: the first call that needs the scheduler is the first to reach it.
    """

    name: str
    lookup_grace_s: float
    """How long a token whose sbatch answer was lost is looked for before the planner gives the
    submission up (0 where a submission cannot be lost between the call and its answer)."""

    def submit(self, job: ArrayJob) -> str:
        """Submit and return the job id; raise TransientError if the outcome is unknown."""
        ...

    def observe(self, refs: Sequence[JobRef]) -> SchedulerView:
        """States of every array task of these submissions, in O(1) scheduler calls."""
        ...

    def cancel(self, job_id: str, array_indices: Sequence[int] | None = None) -> None:
        """Cancel a whole job or some of its array tasks."""
        ...

    def max_array_size(self) -> int | None:
        """The site's MaxArraySize, or None when the backend has no such limit or cannot tell now."""
        ...

    def site_ceilings(self, partition: str | None) -> tuple[float | None, float | None]:
        """(a node's memory in MB, the partition's time limit in s): the most a retry may ask;
        None for what the backend does not limit or cannot tell now (never raises)."""
        ...
