"""The pool as a scheduler: submissions of pool-mode stages go to the pool's queue.

``PoolScheduler`` wraps the site's backend (Slurm or local) and keeps its protocol, so the
engine sends, observes and cancels a pool's submissions exactly as it does job arrays. A
submission sent to the pool gets the job id ``pool:<token>``; everything else (array jobs and
the worker jobs themselves) goes to the site's backend, in the same one observe call, so a
pass still asks the scheduler at most twice.

Each task of a pool submission is observed from the pool's files (``reconciler.pool.files``)
and the state of the worker that claimed it (two listings, then two per submission asked
about, then one small read per task ended or claimed; the engine asks only about tasks whose
end it has not journaled yet):

    ended record          -> COMPLETED (exit 0), FAILED with its exit code, or CANCELLED
    claim, no end         -> core.pool.judge_claim: RUNNING while alive; dead (no heartbeat
                             for 1.5 leases) -> the worker's end (CANCELLED, TIMEOUT...; else
                             NODE_FAIL), a failed attempt; a worker still running then is hung
    cancelled, unclaimed  -> CANCELLED
    otherwise             -> PENDING (in the queue)

These are observations, like Slurm's own NODE_FAIL: the planner records the failure and
retries with the usual backoff and limits, as a new submission (a new claim name).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler.core.pool import judge_claim
from reconciler.core.states import SchedState
from reconciler.errors import TransientError
from reconciler.pool import files
from reconciler.pool.files import PoolDir
from reconciler.scheduler.base import ArrayJob, JobRef, Scheduler, SchedulerView, TaskSched

PREFIX = "pool:"
QUEUED = TaskSched(SchedState.PENDING, None, "in the pool's queue")
DEFAULT_LEASE_S = 300.0  # spec.pool's default lease_seconds


def is_pool_job(job_id: str | None) -> bool:
    return bool(job_id) and str(job_id).startswith(PREFIX)


class PoolScheduler:
    """The Scheduler protocol over the site's backend, with a production's pool beside it."""

    def __init__(self, inner: Scheduler, production_dir: Path, clock: Callable[[], float] = time.time, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.inner = inner
        self.lease_s = lease_s  # the production's execution.pool.lease_seconds: judges a claim that cannot be read
        self.name = inner.name
        self.lookup_grace_s = inner.lookup_grace_s
        self.pool = PoolDir(production_dir)
        self.clock = clock

    def max_array_size(self) -> int | None:
        return self.inner.max_array_size()

    def site_ceilings(self, partition: str | None) -> tuple[float | None, float | None]:
        return self.inner.site_ceilings(partition)

    def submit(self, job: ArrayJob) -> str:
        if job.pool_expect_s is None:
            return self.inner.submit(job)
        job_id = PREFIX + job.token
        try:
            self.pool.make()
            files.write_json(self.pool.entry(job.token), {
                "token": job.token, "job_id": job_id, "name": job.name, "script": str(job.script_path),
                "log_out": job.log_out, "log_err": job.log_err, "indices": sorted(set(job.array_indices)),
                "expect_s": job.pool_expect_s, "queued": self.clock(),
            })
        except OSError as exc:
            raise TransientError(f"pool: cannot queue {job.token} in {self.pool.root}: {exc}") from exc
        return job_id

    def cancel(self, job_id: str, array_indices: Sequence[int] | None = None) -> None:
        if not is_pool_job(job_id):
            self.inner.cancel(job_id, array_indices)
            return
        if array_indices is not None and not array_indices:
            return
        token = job_id.removeprefix(PREFIX)
        before = files.cancelled(self.pool, token)
        indices = set() if array_indices is None or before == set() else set(array_indices) | (before or set())
        try:
            self.pool.make()
            files.write_json(self.pool.cancelled / token, {"indices": sorted(indices)})
        except OSError as exc:
            raise TransientError(f"pool: cannot cancel {job_id}: {exc}") from exc

    def observe(self, refs: Sequence[JobRef]) -> SchedulerView:
        mine = [r for r in refs if is_pool_job(r.job_id) or (r.job_id is None and self.pool.entry(r.token).exists())]
        ours = {r.token for r in mine}
        others = [r for r in refs if r.token not in ours]
        view = self.inner.observe(others) if others else SchedulerView()
        if mine:
            try:
                self._observe_pool(mine, view)
            except OSError as exc:
                raise TransientError(f"pool: cannot read {self.pool.root}: {exc}") from exc
        return view

    def _observe_pool(self, refs: Sequence[JobRef], view: SchedulerView) -> None:
        now = self.clock()
        queued, cancels = files.listing(self.pool.queue), files.listing(self.pool.cancelled)
        for ref in refs:
            job_id = ref.job_id or PREFIX + ref.token
            if ref.job_id is None:
                view.found[ref.token] = job_id
            if f"{ref.token}.json" not in queued:
                view.gone.add(job_id)
                continue
            cancelled = files.cancelled(self.pool, ref.token) if ref.token in cancels else None
            running = self.pool.taken(ref.token)
            done = self.pool.done(ref.token)  # after the claims: a task claimed and ended between the two reads is seen ended
            touched = done | running if cancelled is None else set(ref.array_indices)
            states = dict.fromkeys(ref.array_indices, QUEUED)  # one shared answer: 40,000 queued tasks cost a dict
            for i in touched.intersection(ref.array_indices):
                ts = self._ended(ref.token, i) if i in done else None  # an end wins over its claim, which stays
                if ts is None and i in running:
                    ts = self._claimed(ref.token, i, view, now)
                if ts is None and cancelled is not None and (not cancelled or i in cancelled):
                    ts = TaskSched(SchedState.CANCELLED, None, "cancelled in the pool before a worker claimed it", None, now)
                if ts is not None:
                    states[i] = ts
            view.tasks[job_id] = states

    def _ended(self, token: str, index: int) -> TaskSched | None:
        doc = files.read_json(self.pool.end(token, index))
        if doc is None:
            return None
        where = f" (worker {doc.get('owner')} on {doc.get('host')})"
        if doc.get("killed") == "cancelled" or doc.get("exit") is None:
            return TaskSched(SchedState.CANCELLED, None, f"cancelled in the pool{where}", doc.get("start"), doc.get("end"))
        code = int(doc["exit"])
        state = SchedState.COMPLETED if code == 0 else SchedState.FAILED
        return TaskSched(state, code, "" if code == 0 else f"exit {code}{where}", doc.get("start"), doc.get("end"))

    def _claimed(self, token: str, index: int, view: SchedulerView, now: float) -> TaskSched:
        """A claim with no end: alive, or dead by core.pool.judge_claim (judged by its heartbeat's
        age even when it cannot be read, e.g. empty after a node crashed while writing it)."""
        path = self.pool.claim(token, index)
        try:
            beat = os.stat(path).st_mtime
        except FileNotFoundError:  # gone: someone cleaned the pool by hand
            return TaskSched(SchedState.NODE_FAIL, None, "its claim file vanished", None, now)
        doc = files.read_json(path) or {}
        owner = str(doc.get("owner", "?"))
        job, _, idx = owner.rpartition("_")
        if not (job and idx.isdigit()):
            job, idx = owner, "0"
        worker = view.tasks.get(job, {}).get(int(idx))
        lease_s = float(doc.get("lease_s", 0.0)) or self.lease_s
        state, why = judge_claim(worker.state if worker else None, job in view.gone, now - beat, lease_s)
        start = doc.get("claimed")
        if state is SchedState.RUNNING:
            return TaskSched(state, None, f"worker {owner}", start, None)
        if worker is not None and worker.state.in_flight:
            view.hung.add(f"{job}_{idx}")  # alive for the scheduler, silent for the pool: frozen or stuck
        if why == "ended" and worker is not None:
            why = f"ended {worker.reason or worker.state.value}"
        return TaskSched(state, None, f"worker {owner} {why} with the task claimed", start, (worker.end if worker else None) or now)
