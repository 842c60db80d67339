"""The planner's inputs, as plain immutable values: desired tasks, the observed world, limits.

The engine fills these from its adapters (ledger, scheduler, output tree) without deciding
anything; the planner turns them into a plan. Everything here is cheap to build for 10^6
tasks: per-task values are small, shared where equal, and only *open* submissions (staged,
in flight, or with a lost answer) are described attempt by attempt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from reconciler.core.causes import Cause
from reconciler.core.pool import PoolPolicy, WorkerObs
from reconciler.core.sizing import Request, Short, Usage
from reconciler.core.states import OutputState, SchedState, SubmissionKind, SubmissionState


@dataclass(frozen=True, slots=True)
class TaskObs:
    """What the world says about one task right now."""

    output: OutputState = OutputState.MISSING
    sched: SchedState | None = None  # state in its latest submission; None if never submitted or no answer yet


@dataclass(frozen=True, slots=True)
class TaskHistory:
    """What the ledger remembers about one task."""

    submissions: int = 0  # how many times we submitted it
    failures: int = 0  # attempts that ended in failure
    last_end: float | None = None  # when the latest failure was seen to end (epoch seconds)
    last_reason: str = ""
    given_up: bool = False  # a give-up was already recorded for the current failure count
    cause: Cause | None = None  # the latest failure's cause, as the task wrapper recorded it (None: it could not)
    short: Short | None = None  # the latest failure ran out of memory or time (core.sizing.shortfall)
    request: Request | None = None  # what the latest failed attempt asked for (None: recorded before requests were)
    peak_mb: float | None = None  # its peak memory, when measured


@dataclass(frozen=True, slots=True)
class AttemptObs:
    """One array task of an open submission: the scheduler's latest word on it, and the journal's."""

    key: str
    array_index: int
    sched: SchedState | None = None  # this pass's answer, else the last journaled one; None: never answered
    reason: str = ""  # the scheduler's words for how it ended ("exit 1", "TIMEOUT", "vanished: ...")
    end: float | None = None
    failure_recorded: bool = False  # its failure is already counted in the task's history
    latest: bool = True  # it is the task's latest attempt, so its state is the task's
    previous: SchedState | None = None  # latest and open: the journaled state of the task's attempt before it
    cause: Cause | None = None  # failed: why, in the wrapper's words (read only for attempts that failed)
    exit_code: int | None = None  # the scheduler's exit status (128+S when killed by signal S)
    usage: Usage | None = None  # ended: what it used, when the scheduler measured it
    scheduler_said: tuple[str, ...] = ()  # killed without a cause: Slurm's own lines in its stderr (logs.scheduler_lines)


@dataclass(frozen=True, slots=True)
class SubmissionObs:
    """One open submission as the ledger journaled it and the scheduler answered this pass."""

    token: str
    batch: int
    kind: SubmissionKind
    state: SubmissionState
    created: float
    job_id: str | None = None  # the recorded job id; None while sbatch's answer is missing
    found: str | None = None  # job id found by token this pass (the answer was lost)
    current: bool = True  # staged: every task still has the fingerprint it was staged with
    attempts: tuple[AttemptObs, ...] = ()
    pool: bool = False  # sent to the production's pool (scheduler.pool), not to the scheduler as an array
    request: Request | None = None  # what its tasks asked for (None: recorded before requests were)


@dataclass(frozen=True)
class World:
    """Everything one pass observed, for the planner and for status."""

    tasks: Mapping[str, TaskObs]  # every task with outputs or a submission, desired or not
    history: Mapping[str, TaskHistory]
    submissions: Sequence[SubmissionObs] = ()  # open ones only
    site_max_array_size: int | None = None  # what the scheduler reports, when it was asked
    corrupt: Mapping[str, str] = field(default_factory=dict)  # complete tasks whose outputs failed deep verification this pass: key -> the check that failed
    logs_kept: Sequence[FinishedSubmission] = ()  # finished submissions whose logs are still in logs/
    missing_inputs: Mapping[str, str] = field(default_factory=dict)  # task.inputs absent: key -> the first absent path
    partial: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # complete fan-in tasks that ran on a partial set: key -> the members missing then
    workers: Sequence[WorkerObs] = ()  # the pool's worker arrays still open (core.pool)
    runtimes: Mapping[str, Sequence[float]] = field(default_factory=dict)  # pool-mode stages: their finished tasks' run times, seconds
    site_ceilings: tuple[float | None, float | None] = (None, None)  # the cluster's node memory (MB) and partition time limit (s), when known


@dataclass(frozen=True, slots=True)
class FinishedSubmission:
    """A submission whose attempts all ended, and when (its logs are pruned from then on)."""

    token: str
    batch: int
    finished: float
    kind: SubmissionKind = SubmissionKind.SUBMIT  # the old tool's (legacy) have no logs of ours


@dataclass(frozen=True, slots=True)
class Limits:
    """What the site and its scheduler impose."""

    max_array_size: int = 1001
    max_queued_tasks: int = 5000
    lookup_grace_s: float = 0.0  # how long a lost sbatch answer is looked for before it is given up
    node_memory_mb: float | None = None  # the most memory a retry may ask (machine.node_memory_gb, else the cluster's nodes)
    max_time_s: float | None = None  # the longest timeout a retry may ask (machine.max_time_hours, else the partition's MaxTime)


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
    keep_logs_s: float = 90 * 86400.0  # outputs.cleanup_policy.keep_logs_days
    archive_logs: bool = False  # outputs.cleanup_policy.archive_completed: pack them before removing
    verify_per_pass: int = 0  # completed tasks deep-verified per pass (core.verification.sample); 0: none
    memory_factor: float = 1.5  # a retry after out-of-memory asks this much more memory (core.sizing)
    time_factor: float = 1.5  # a retry after a timeout asks this much more time

    def delay(self, failures: int) -> float:
        """Backoff before retrying after ``failures`` failures: initial * multiplier**(failures-1), capped."""
        if failures <= 0:
            return 0.0
        return min(self.initial_delay_s * self.backoff_multiplier ** min(failures - 1, 60), self.max_delay_s)


class Need(NamedTuple):
    """One upstream stage a task needs, and its members there: the upstream tasks that share
    the task's values on the axes both stages have (one for a map or a fan-out edge, a group
    for a fan-in), excluded ones left out, in the upstream stage's order. A named tuple: the
    expansion makes one per task of a map (40,000 a pass), at a third of a dataclass's cost."""

    stage: str
    members: tuple[str, ...]
    fan_in: bool = False  # a group (its members are listed in a file for the command), not one upstream task


class DesiredTask(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def index(self) -> int: ...  # position in its stage's full product: batch = index // batch_size

    @property
    def needs(self) -> tuple[Need, ...]: ...  # () for a task of a stage without `needs`


@dataclass(frozen=True)
class Stage:
    """One stage of a campaign: its tasks (ascending index) and the policy they run by.

    ``total`` is the size of the stage's full product (exclusions included): batches of
    later stages are numbered after this stage's, so a batch never mixes two stages.
    ``min_fraction`` is the stage's ``require.min_fraction``: the share of a fan-in's members
    that must be complete for it to run on a partial set once the others gave up.
    """

    name: str  # "" for a production written with one `task:`
    tasks: Sequence[DesiredTask]
    policy: Policy
    total: int = 0
    min_fraction: float = 1.0
    pool: bool = False  # execution.mode: pool: its sends go to the production's pool, outside the queue cap
    request: Request = Request(None, 3600.0)  # what each task asks (resources.memory_gb, execution.timeout_hours)

    @property
    def timeout_s(self) -> float:
        """A task's timeout: what a pool expects of it before it has run times."""
        return self.request.time_s


@dataclass(frozen=True)
class Desired:
    """Tasks in canonical order (stage by stage, ascending index) and the policy to run them by.

    ``stages`` is empty for a one-stage production built by hand (property tests): it is then
    one stage of ``tasks`` run by ``policy`` (``Desired.stage_list``). ``policy`` holds what is
    production-wide (prune, logs, verification); each stage's retries and batch size are its own.
    ``pool``: the production's pool (``execution.pool``), for its stages in pool mode.
    """

    tasks: Sequence[DesiredTask]
    policy: Policy
    stages: Sequence[Stage] = ()
    pool: PoolPolicy = field(default_factory=PoolPolicy)

    @property
    def stage_list(self) -> Sequence[Stage]:
        if self.stages:
            return self.stages
        total = max((t.index for t in self.tasks), default=-1) + 1
        return (Stage("", self.tasks, self.policy, total),)


EMPTY_OBS = TaskObs()
EMPTY_HISTORY = TaskHistory()
