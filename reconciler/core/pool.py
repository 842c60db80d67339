"""A pool's decisions: how many workers to keep, when a claim is dead, how long a task is
expected to run, and what the workers' node time went to.

Pure, like the planner that calls it (core.planner.plan, after the sends: the pool's work is
what is queued or running in it plus what this plan sends to it). A worker job is one element
of a worker array (one sbatch of ``START_WORKERS``); the ledger journals each array as the
planner journals a submission, so a lost sbatch answer is found by its token, never sent twice:

  no job id, token found            -> RECOVER it (reason worker_found)
  no job id, within the lookup grace-> counted live (it may well exist)
  no job id, past the grace         -> ABANDON it; the pool is topped up again
  fewer live workers than wanted    -> START_WORKERS (wanted - live), within the queue cap, else
                                       WAIT (queue_cap)
  running, but a claim of its died   -> STOP_WORKERS it (worker_hung): it holds nodes and serves
                                       nothing; not counted live, so it is replaced
  no work now and none coming       -> STOP_WORKERS the queued ones (running ones exit on their
                                       own once idle); while tasks of pool stages are in backoff
                                       or waiting for members, queued workers keep their place

wanted = ceil(pool work / tasks side by side), at most ``execution.pool.workers``. Each live
worker counts once against ``max_queued_tasks`` (the pool's tasks not at all), which is the
point of a pool; the planner keeps a place for one while the pool has work and none is live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.core.plan import Action, ActionKind
from reconciler.core.reasons import Reason
from reconciler.core.states import SchedState

DEAD_AFTER = 1.5
"""A claim is dead once its heartbeat is older than this many leases, whatever the scheduler
says of its worker (which says only what the cause is). The wrapper's guard stops a run whose
claim is older than one lease, looking every tenth of one, then kills it 5 s later: by
1.5 leases its run has stopped, with 0.4 lease - 5 s to spare for clocks that disagree."""
_WORKER_END = {
    SchedState.CANCELLED: SchedState.CANCELLED,
    SchedState.TIMEOUT: SchedState.TIMEOUT,
    SchedState.OUT_OF_MEMORY: SchedState.OUT_OF_MEMORY,
    SchedState.PREEMPTED: SchedState.PREEMPTED,
}

PERCENTILE = 0.9
MIN_SAMPLES = 3
"""A stage's expected run time is the 90th percentile of its finished run times once it has
this many; before, its timeout (a worker never starts a task it cannot finish)."""


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    """``execution.pool``, in seconds."""

    workers: int = 4
    side_by_side: int = 1  # tasks one worker runs at a time (execution.pool.tasks_side_by_side)
    nodes: int = 1
    walltime_s: float = 4 * 3600.0
    margin_s: float = 420.0


@dataclass(frozen=True, slots=True)
class WorkerObs:
    """One journaled worker array and each of its workers' latest state (None: no answer yet)."""

    token: str
    created: float
    job_id: str | None = None
    found: str | None = None  # job id found by token this pass (the answer was lost)
    states: tuple[SchedState | None, ...] = ()
    hung: tuple[int, ...] = ()  # running for the scheduler, yet a claim of theirs died this pass: frozen or stuck


def judge_claim(worker: SchedState | None, gone: bool, silent_s: float, lease_s: float) -> tuple[SchedState, str]:
    """A claimed task's state: RUNNING while its claim is alive, else a failed attempt with the
    worker's end as its cause (its job CANCELLED, TIMEOUT...; ended otherwise or vanished:
    NODE_FAIL) or, with no word of its worker, NODE_FAIL ("lease expired").

    ``worker``: the claiming worker's state this pass (None: not asked or not known);
    ``gone``: the scheduler has no record of it; ``silent_s``: the claim's heartbeat age."""
    if silent_s <= DEAD_AFTER * lease_s:
        return SchedState.RUNNING, ""
    if gone:
        return SchedState.NODE_FAIL, "vanished (the scheduler has no record of it)"
    if worker is not None and worker.finished:
        return _WORKER_END.get(worker, SchedState.NODE_FAIL), "ended"
    return SchedState.NODE_FAIL, f"lease expired: no heartbeat for {silent_s:.0f} s"


def expected_runtime(durations: Sequence[float], timeout_s: float) -> float:
    """The run time a worker must have left (plus its margin) to claim a task of this stage."""
    if len(durations) < MIN_SAMPLES:
        return timeout_s
    ranked = sorted(durations)
    return min(ranked[min(len(ranked) - 1, int(PERCENTILE * len(ranked)))], timeout_s)


def live(workers: Sequence[WorkerObs], now: float, grace_s: float) -> int:
    """Workers that hold a place in the queue and may serve the pool: queued, running (not hung),
    or sent with no answer yet and still within the lookup grace."""
    n = 0
    for w in workers:
        if w.job_id or w.found:
            n += sum(1 for i, st in enumerate(w.states) if (st is None or st.in_flight) and i not in w.hung)
        elif now - w.created < grace_s:
            n += len(w.states)
    return n


def plan_workers(pool: PoolPolicy, workers: Sequence[WorkerObs], work: int, pending: int, room: int, now: float, grace_s: float) -> list[Action]:
    """The pool's actions; see the module docstring. ``work``: tasks queued or running in the
    pool after this plan's sends; ``pending``: tasks of pool stages that will come to it
    (in backoff, waiting for members); ``room``: jobs the queue cap allows beyond the live ones."""
    actions: list[Action] = []
    alive = live(workers, now, grace_s)
    queued: list[tuple[str, int]] = []  # (token, index) of workers not started yet
    for w in workers:
        job = w.job_id or w.found
        if job is None:
            if now - w.created >= grace_s:
                actions.append(Action(ActionKind.ABANDON, Reason.WORKER_NEVER_RECEIVED, (), token=w.token, array_indices=tuple(range(len(w.states)))))
            continue
        if w.job_id is None:
            actions.append(Action(ActionKind.RECOVER, Reason.WORKER_FOUND, (), token=w.token, note=f"job {job}"))
        if w.hung:  # they hold nodes and serve nothing: cancelled, and replaced below if work remains
            actions.append(Action(ActionKind.STOP_WORKERS, Reason.WORKER_HUNG, (), token=w.token, array_indices=w.hung, note=f"job {job}"))
        for i, st in enumerate(w.states):
            if st is SchedState.PENDING and i not in w.hung:
                queued.append((w.token, i))
    wanted = min(pool.workers, -(-work // max(1, pool.side_by_side)))
    note = f"{work} task(s) in the pool, {alive} live worker(s), {wanted} wanted"
    if wanted > alive and room > 0:
        n = min(wanted - alive, room)
        actions.append(Action(ActionKind.START_WORKERS, Reason.POOL_SHORT, (), array_indices=tuple(range(n)), note=note))
    elif wanted > alive:
        actions.append(Action(ActionKind.WAIT, Reason.QUEUE_CAP, (), note=f"pool: {note}"))
    elif not work and not pending and queued:  # nothing now, nothing coming: free their places
        by_token: dict[str, list[int]] = {}
        for token, i in queued:
            by_token.setdefault(token, []).append(i)
        for token, idx in sorted(by_token.items()):
            actions.append(Action(ActionKind.STOP_WORKERS, Reason.POOL_SURPLUS, (), token=token, array_indices=tuple(idx), note=note))
    return actions


def usage(task_s: Mapping[str, float], worker_node_s: float, nodes: int, side_by_side: int) -> dict[str, object]:
    """Node-hours, in total and per stage: used (its tasks' run time, a task holding
    nodes/side_by_side of a worker) and wasted (the rest of the workers' node time: idle tails,
    margins, start-up), a stage's share of the waste in proportion to its use; stages in the
    order of ``task_s``."""
    used = {stage: s * nodes / max(1, side_by_side) / 3600.0 for stage, s in task_s.items()}
    total_used = sum(used.values())
    wasted = max(0.0, worker_node_s / 3600.0 - total_used)
    return {
        "node_hours": round(worker_node_s / 3600.0, 4),
        "used": round(total_used, 4),
        "wasted": round(wasted, 4),
        "stages": {
            stage: {"used": round(u, 4), "wasted": round(wasted * (u / total_used) if total_used else 0.0, 4)}
            for stage, u in used.items()
        },
    }
