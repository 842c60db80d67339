"""The ``execution.pool`` section: how a production's tasks are packed into a few long jobs.

In ``execution.mode: pool`` no task is an array element: the pass puts ready tasks in the
production's pool (``reconciler.pool``), and a few worker jobs (``reconciler.pool.worker``) claim
and run them one after another. Sites that charge every array element up front, or count
every array task against a queued-job cap, pay for the workers only.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Pool(BaseModel):
    """A pool's workers: how many at most, how long each lives, how big it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(default=4, ge=1, le=10_000, description="Worker jobs at most; the pass keeps as many as the ready work needs (each counts once against max_queued_tasks).")
    walltime_minutes: float = Field(default=240.0, gt=0, le=60 * 24 * 30, description="Each worker job's --time.")
    nodes: int = Field(default=1, ge=1, le=100_000, description="Nodes per worker job (a task sees them through the job's environment).")
    tasks_side_by_side: int = Field(default=1, ge=1, le=1024, description="Tasks one worker runs at the same time; a worker asks for their CPUs and memory (resources.cpus_per_task, memory_gb) times this.")
    margin_minutes: float = Field(default=7.0, ge=0, description=(
        "A worker stops claiming when its remaining walltime is less than a task's expected run time "
        "(the 90th percentile of its stage's finished run times, else its timeout) plus this."
    ))
    lease_seconds: float = Field(default=300.0, ge=2, le=86_400, description=(
        "A worker renews its claims every fifth of this. A claim not renewed for this long is no longer held: "
        "its run is stopped and not marked complete; the task is a failed attempt, retried with backoff, "
        "1.5 leases without a heartbeat. Hosts' clocks must agree to within 0.4 of it minus 5 s: keep it in minutes."
    ))
    idle_seconds: float = Field(default=120.0, ge=0, le=86_400, description="A worker with nothing to claim for this long exits.")
