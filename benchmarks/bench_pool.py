"""Time what pool mode adds to a pass and to a worker, at campaign scale.

Builds a production directory's pool with N queued tasks (in submissions of --batch tasks),
a share of them ended and a few claimed, then times, each a median of --repeat runs:

- observe: ``PoolScheduler.observe`` of every open pool submission (what a pass reads of the
  pool: two listings, two per submission asked about, then one small read per ended or claimed
  task), first with every ended
  task new (the pass that sees them end), then as later passes ask (only what is not journaled);
- claim: a worker's ``claim_next`` on a fresh worker (listings, reading the queue entries
  once, one ``link``), the cost of each task a worker starts.

    python benchmarks/bench_pool.py                    # 40,000 tasks, 10% ended, 8 claimed
    python benchmarks/bench_pool.py --tasks 200000 --ended 0.5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.pool import files  # noqa: E402
from reconciler.pool.worker import Worker  # noqa: E402
from reconciler.scheduler.base import ArrayJob, JobRef, SchedulerView  # noqa: E402
from reconciler.scheduler.pool import PoolScheduler  # noqa: E402


class NoScheduler:
    name = "none"
    lookup_grace_s = 0.0

    def observe(self, refs: object) -> SchedulerView:
        return SchedulerView()


def build(pdir: Path, tasks: int, batch: int, ended: float, claimed: int) -> tuple[PoolScheduler, list[JobRef]]:
    sched = PoolScheduler(NoScheduler(), pdir)  # type: ignore[arg-type]
    refs = []
    n_ended = int(tasks * ended)
    done = 0
    for b in range(0, tasks, batch):
        token = f"{1795560000 + b}-{b:012x}"
        idx = tuple(range(min(batch, tasks - b)))
        job = ArrayJob(token, f"bench.{b:04d}", pdir / "s.sh", "", idx, None, pdir, "o_%A_%a", "e_%A_%a", pool_expect_s=60.0)
        refs.append(JobRef(token, sched.submit(job), 0.0, idx))
        for i in idx:
            if done < n_ended:
                files.take(sched.pool, token, i, {"owner": "1_0", "host": "h", "pid": 1, "lease_s": 300})  # its claim stays
                files.release(sched.pool, token, i, {"owner": "1_0", "host": "h", "exit": 0, "start": 0.0, "end": 1.0})
                done += 1
    for r in refs[-1:]:
        for i in r.array_indices[:claimed]:
            files.take(sched.pool, r.token, i, {"owner": f"2_{i}", "host": "h", "pid": 1, "lease_s": 300})
    return sched, refs


def median_of(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=40_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--ended", type=float, default=0.1, help="share of the tasks whose run has ended (not yet journaled)")
    ap.add_argument("--claimed", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pdir = Path(tmp)
        t0 = time.perf_counter()
        sched, refs = build(pdir, a.tasks, a.batch, a.ended, a.claimed)
        print(f"built a pool of {a.tasks} tasks in {len(refs)} submissions ({a.ended:.0%} ended, {a.claimed} claimed) in {time.perf_counter() - t0:.1f} s")
        obs = median_of(lambda: sched.observe(refs), a.repeat)
        print(f"observe, every ended task new to the journal: {obs * 1000:.1f} ms (median of {a.repeat})")
        open_refs = [replace(r, array_indices=tuple(i for i in r.array_indices if i not in sched.pool.done(r.token))) for r in refs]
        open_refs = [r for r in open_refs if r.array_indices]  # as the engine asks: only what it has not journaled ended
        steady = median_of(lambda: sched.observe(open_refs), a.repeat)
        print(f"observe, those ends journaled (each later pass): {steady * 1000:.1f} ms (median of {a.repeat})")

        def claim() -> None:
            w = Worker(pdir, 3600.0, 60.0, 1, 300.0, 10.0)
            w.start = lambda *args: None  # type: ignore[method-assign]  # claim without running anything
            assert w.claim_next(time.time())

        first = median_of(claim, a.repeat)
        print(f"a fresh worker's first claim (reads every queue entry): {first * 1000:.1f} ms (median of {a.repeat})")
        w = Worker(pdir, 3600.0, 60.0, 1, 300.0, 10.0)
        w.start = lambda *args: None  # type: ignore[method-assign]
        w.claim_next(time.time())
        later = median_of(lambda: w.claim_next(time.time()), a.repeat)
        print(f"each later claim of that worker: {later * 1000:.1f} ms (median of {a.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
