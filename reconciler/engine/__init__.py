"""One pass of the loop: observe -> plan -> apply. The engine decides nothing.

``observe`` (engine.observe) only reads, into a ``core.model.World``; ``core.planner.plan``
decides; ``apply`` (engine.apply) journals what was seen and performs exactly the plan.
Adapters (scheduler, output tree, ledger) are passed in; constructing an Engine does no I/O.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from reconciler import run_history, workers
from reconciler.core.model import Desired, Limits, Policy, Stage, TaskObs, World
from reconciler.core.plan import SENDS, ActionKind, Plan
from reconciler.core.planner import plan
from reconciler.core.pool import PoolPolicy, usage
from reconciler.core.reasons import Reason
from reconciler.core.settle import settle
from reconciler.core.states import OutputState, SchedState, SubmissionState
from reconciler.core.summary import summarize
from reconciler.engine.apply import UNFENCED, Actor, Fence
from reconciler.engine.observe import DiskOutputs, Observed, Observer, OutputTree, Verify
from reconciler.ledger import Ledger
from reconciler.scheduler.base import Scheduler
from reconciler.scheduler.pool import PoolScheduler
from reconciler.scheduler.script import request_of
from reconciler.spec.load import Loaded


@contextmanager
def cycles_left_for_later() -> Iterator[None]:
    """Pause the cyclic garbage collector for one step of a pass.

    Allocating 10^5 small objects (observations, states) makes the collector walk every live
    object again and again, the desired tasks included: a third of a campaign's observe. Nothing
    a step makes forms a cycle that matters before the step ends, and reference counting frees
    the rest; the collector runs again afterwards (as spec.expand does for the expansion)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def policy_of(loaded: Loaded, stage: str = "") -> Policy:
    """The policy of ``stage``'s tasks (its own execution settings over the production's);
    with no stage, the production's (what is production-wide: prune, logs, verification)."""
    spec = loaded.stage_spec(stage)
    ex = spec.execution
    rp = ex.retry_policy
    return Policy(
        batch_size=ex.batch_size,
        max_retries=rp.max_retries,
        initial_delay_s=rp.initial_delay_minutes * 60.0,
        backoff_multiplier=rp.backoff_multiplier,
        max_delay_s=rp.max_delay_minutes * 60.0,
        prune=ex.prune,
        rerun_on_change=ex.rerun_on_change,
        adopt_existing=ex.adopt_existing,
        keep_logs_s=spec.outputs.cleanup_policy.keep_logs_days * 86400.0,
        archive_logs=spec.outputs.cleanup_policy.archive_completed,
        verify_per_pass=ex.verify_per_pass,
        memory_factor=rp.memory_factor,
        time_factor=rp.time_factor,
    )


def pool_of(loaded: Loaded) -> PoolPolicy:
    """The production's ``execution.pool``, in seconds (one pool serves every pool-mode stage)."""
    pool = loaded.spec.execution.pool
    return PoolPolicy(pool.workers, pool.tasks_side_by_side, pool.nodes, pool.walltime_minutes * 60.0, pool.margin_minutes * 60.0)


@dataclass
class PassResult:
    plan: Plan
    applied: dict[str, int]
    summary: dict[str, Any]
    events: list[str]
    verified: tuple[str, ...] = ()  # completed tasks deep-verified this pass
    corrupt: dict[str, str] = field(default_factory=dict)  # those that failed: key -> the check that failed


class Engine:
    """One production's pass, with its adapters."""

    def __init__(
        self,
        loaded: Loaded,
        scheduler: Scheduler,
        ledger: Ledger,
        outputs: OutputTree | None = None,
        clock: Callable[[], float] = time.time,
        python: str | None = None,
        fence: Fence = UNFENCED,
    ) -> None:
        self.loaded = loaded
        self.ledger = ledger
        self.production_dir = loaded.production_dir
        self.expansion = loaded.expansion()
        validators = {s.name: s.spec.the_task.validator for s in self.expansion.stages}
        self.outputs = outputs or DiskOutputs(self.production_dir, validators)
        self.clock = clock
        stages = [
            Stage(s.name, s.tasks, policy_of(loaded, s.name), s.total, s.min_fraction, s.spec.execution.mode == "pool", request_of(loaded.stage_spec(s.name)))
            for s in self.expansion.stages
        ]
        self.desired = Desired(self.expansion.tasks, policy_of(loaded), stages, pool_of(loaded))
        # pool-mode submissions to the pool, the rest to the site's
        scheduler = PoolScheduler(scheduler, self.production_dir, clock, loaded.spec.execution.pool.lease_seconds)
        machine = loaded.machine.machine
        self.limits = Limits(
            machine.max_array_size, machine.max_queued_tasks, scheduler.lookup_grace_s,
            None if machine.node_memory_gb is None else machine.node_memory_gb * 1024.0,
            None if machine.max_time_hours is None else machine.max_time_hours * 3600.0,
        )
        kinds = {name: v.kind for name, v in validators.items()}
        self.observer = Observer(self.desired, self.expansion, kinds, scheduler, ledger, self.outputs, clock)
        self.actor = Actor(loaded, scheduler, ledger, self.outputs, clock, python or sys.executable, fence)

    def observe(self, verify: Verify = None) -> Observed:
        with cycles_left_for_later():
            return self.observer.observe(verify)

    def plan(self, obs: Observed, *, stage: bool = False, retry: bool = False) -> Plan:
        with cycles_left_for_later():
            return plan(obs.desired, obs.world, self.clock(), self.limits, stage=stage, retry=retry)

    def apply(self, p: Plan, obs: Observed) -> tuple[dict[str, int], list[str]]:
        return self.actor.apply(p, obs)

    def summary(self, obs: Observed, applied: Plan | None = None) -> dict[str, Any]:
        """Counts by task state, failures with their logs: the world as this pass leaves it.

        Read-only callers (status, plan) see the plan's journal decisions already applied
        (a failure this pass would record is counted); after ``apply``, pass the applied plan
        and the ledger is read back instead.
        """
        with cycles_left_for_later():
            return self._summary(obs, applied)

    def _summary(self, obs: Observed, applied: Plan | None) -> dict[str, Any]:
        world = obs.world
        tasks, history = settle(obs.desired, world, self.clock(), self.limits).views(world)
        latest = obs.latest
        staged = {a.key for sub in world.submissions if sub.state is SubmissionState.STAGED and sub.current for a in sub.attempts if a.latest}
        if applied is not None:
            sent = {k for a in applied.actions if a.kind in SENDS or a.kind is ActionKind.SEND for k in a.keys}
            # outputs that failed verification are no longer where the task's marker was
            moved = {k: TaskObs(OutputState.MISSING, tasks[k].sched) for a in applied.of(ActionKind.QUARANTINE) if a.reason is Reason.OUTPUT_CORRUPT for k in a.keys}
            queued = {k: TaskObs(moved[k].output if k in moved else tasks[k].output if k in tasks else OutputState.MISSING, SchedState.PENDING) for k in sent}
            tasks = {**tasks, **moved, **queued}  # a copy is cheaper than an overlay when a pass sent 10^4 tasks
            history = self.ledger.history()
            latest = self.ledger.latest_attempts()
            staged = (staged - {k for a in applied.of(ActionKind.SEND) for k in a.keys}) | {k for a in applied.of(ActionKind.STAGE) for k in a.keys}
        subs = self.ledger.all_submissions() if latest else []
        jobs = {s.token: s.job_id for s in subs if not s.kind.old_tool}  # the old tool's logs are its own
        batches = {s.token: s.batch for s in subs}
        logs: dict[str, str] = {}
        base = f"{self.production_dir}/logs/batch_"
        for key, att in latest.items():
            job = jobs.get(att.token)
            batch = batches.get(att.token)
            if job and batch is not None:
                logs[key] = f"{base}{batch:04d}_{job}_{att.array_index}.err"  # the wrapper's and the command's stderr: why it failed
        excluded = [(e.key, e.reason) for e in self.expansion.excluded]
        out = summarize(obs.desired, tasks, history, excluded, logs, staged, world.missing_inputs, partial=world.partial)
        if self.observer.pooled or world.workers:
            out["pool"] = self._pool_usage(world)
        by_key = self.expansion.by_key
        used = run_history.efficiency(self.ledger, lambda k: t.stage if (t := by_key.get(k)) is not None else None) if latest else {}
        if used:
            out["efficiency"] = {stage: e.to_json() for stage, e in sorted(used.items())}
        return out

    def _pool_usage(self, world: World) -> dict[str, Any]:
        """Node-hours the pool's workers used for tasks and wasted (idle tails, margins), per stage."""
        ran = workers.pool_seconds_by_stage(self.ledger, campaign=bool(self.loaded.stage_specs))
        task_s = {st.name: ran.pop(st.name, 0.0) for st in self.desired.stage_list if st.pool}  # in chain order
        task_s.update(ran)  # stages that ran in the pool before they left pool mode
        pool = self.desired.pool
        live = sum(1 for w in world.workers for s in w.states if s is None or s.in_flight)
        return {**usage(task_s, workers.node_seconds(self.ledger, self.clock()), pool.nodes, pool.side_by_side), "workers_live": live, "workers_started": workers.started(self.ledger)}

    def run_pass(self, *, apply: bool = True, stage: bool = False, retry: bool = False, verify: Verify = "sample") -> PassResult:
        """One pass. ``verify``: which completed tasks to open and validate again (by default
        ``execution.verify_per_pass`` of them; "all" for `reconcile verify`)."""
        obs = self.observe(verify)
        p = self.plan(obs, stage=stage, retry=retry)
        found = dict(obs.world.corrupt)
        if not apply:
            return PassResult(p, {}, self.summary(obs), [], obs.verified, found)
        applied, events = self.apply(p, obs)
        return PassResult(p, applied, self.summary(obs, p if applied else None), events, obs.verified, found)


