"""Time each stage of a no-op reconcile pass, and of a pass that submits everything.

Builds, in a temporary directory, a git repository with one synthetic production of N tasks
(N/20 realizations x 20 redshifts) and, for the no-op pass, a complete output tree: every
output file and its completion marker (or, with --adopted, outputs only, no markers). Then
runs the real engine stage by stage, several times, and reports medians and peak memory.

    python benchmarks/bench_pass.py                       # 40,000 tasks
    python benchmarks/bench_pass.py --tasks 1000000 --repeat 3
    python benchmarks/bench_pass.py --submit              # a pass that submits 40,000 tasks

The submit mode uses a scheduler that only counts calls, to time the pass's own work
outside the scheduler (the budget in the issue: <= 1 s for 40,000 tasks).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REDSHIFTS = 20


def build_repo(root: Path, tasks: int, batch: int) -> None:
    realizations = max(1, tasks // REDSHIFTS)
    (root / "productions").mkdir(parents=True)
    (root / "defaults").mkdir()
    here = Path(__file__).resolve().parent.parent
    local = (here / "defaults/local.yaml").read_text().replace("max_queued_tasks: 10000", "max_queued_tasks: 10000000")
    (root / "defaults/local.yaml").write_text(local)
    zs = ", ".join(f"{0.1 + 0.1 * i:.1f}" for i in range(REDSHIFTS))
    (root / "productions/bench.yaml").write_text(
        "production: {name: bench, version: v1.0}\n"
        f"science:\n  redshifts: [{zs}]\n  realizations: {{start: 0, count: {realizations}}}\n"
        f"execution: {{batch_size: {batch}}}\n"
        f"outputs: {{base_path: {root / 'out'}}}\n"
        "task:\n  command: gen --realization {realization} --redshift {redshift:.3f} --output {output}\n"
        "  outputs: ['catalogs/r{realization:05d}/mock_z{redshift:.3f}.hdf5']\n"
    )
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *cmd], cwd=root, check=True, env=env)


def build_tree(loaded: Any, adopted: bool) -> None:
    """Every output present and (unless adopted) marked: the tree of a finished production."""
    from reconciler import outputs

    pdir = loaded.production_dir
    for d in outputs.output_dirs(loaded.expansion().tasks):
        (pdir / d).mkdir(parents=True, exist_ok=True)
    for t in loaded.expansion().tasks:
        (pdir / t.outputs[0]).write_bytes(b"x")
        if not adopted:
            outputs.write_marker(pdir, t, attempt=1, exit_code=0, start=0.0, end=0.0, host="bench")


class CountingScheduler:
    """Accepts every submission at once and counts the calls (submit mode only)."""

    name = "counting"
    lookup_grace_s = 0.0

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self.n = 0

    def submit(self, job: Any) -> str:
        t = time.perf_counter()
        self.calls += 1
        self.n += 1
        self.seconds += time.perf_counter() - t
        return str(self.n)

    def observe(self, refs: Sequence[Any]) -> Any:
        from reconciler.scheduler.base import SchedulerView

        self.calls += 1
        return SchedulerView()

    def cancel(self, job_id: str, array_indices: Sequence[int] | None = None) -> None:
        self.calls += 1


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def noop_pass(root: Path, adopted: bool) -> dict[str, float]:
    """One no-op pass, stage by stage, with the real adapters."""
    from reconciler.engine import Engine
    from reconciler.gitops import GitTree, open_repo
    from reconciler.ledger import Ledger
    from reconciler.scheduler.local import LocalScheduler
    from reconciler.spec.load import load

    times: dict[str, float] = {}
    repo = open_repo(root)
    times["load"], loaded = timed(lambda: load(GitTree(repo, "HEAD"), "bench", "local", repo_root=root, check_tasks=False))
    times["expand"], _ = timed(loaded.expansion)
    ledger = Ledger(loaded.production_dir / "metadata" / "production.db")
    sched = LocalScheduler(spool=root / "spool", slots=2)
    eng = Engine(loaded, sched, ledger)
    # observe = scheduler (nothing open: no call) + output tree + ledger reads
    t0 = time.perf_counter()
    out = eng.outputs.observe(eng.expansion.tasks, lambda t: False)
    times["observe outputs"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    obs = eng.observe(record=True)
    times["observe (all)"] = time.perf_counter() - t0
    times["observe scheduler+ledger"] = max(0.0, times["observe (all)"] - times["observe outputs"])
    del out
    times["plan"], p = timed(lambda: eng.plan(obs))
    assert p.is_empty, p.actions[:1]
    times["record"], _ = timed(lambda: eng.summary(obs))
    ledger.close()
    times["total pass"] = sum(times[k] for k in ("load", "expand", "observe (all)", "plan", "record"))
    return times


def submit_pass(root: Path) -> dict[str, float]:
    from reconciler.engine import Engine
    from reconciler.gitops import GitTree, open_repo
    from reconciler.ledger import Ledger
    from reconciler.spec.load import load

    repo = open_repo(root)
    t0 = time.perf_counter()
    loaded = load(GitTree(repo, "HEAD"), "bench", "local", repo_root=root, check_tasks=False)
    led = Ledger(loaded.production_dir / "metadata" / f"submit-{time.time_ns()}.db")
    sched = CountingScheduler()
    eng = Engine(loaded, sched, led)
    result = eng.run_pass()
    total = time.perf_counter() - t0
    led.close()
    n = result.applied.get("submit", 0)
    return {"tasks submitted": float(n), "sbatch calls": float(sched.calls - 2), "total pass": total, "own time (outside scheduler)": total - sched.seconds}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=40_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--adopted", action="store_true", help="outputs without markers (a tree to adopt)")
    ap.add_argument("--submit", action="store_true", help="time a pass that submits every task")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "repo"
        build_repo(root, args.tasks, args.batch)
        runs: list[dict[str, float]] = []
        if args.submit:
            for _ in range(args.repeat):
                runs.append(submit_pass(root))
        else:
            from reconciler.gitops import GitTree, open_repo
            from reconciler.spec.load import load

            t, _ = timed(lambda: build_tree(load(GitTree(open_repo(root), "HEAD"), "bench", "local", repo_root=root, check_tasks=False), args.adopted))
            print(f"built a complete tree of {args.tasks} tasks in {t:.1f} s", file=sys.stderr)
            for _ in range(args.repeat):
                gc.collect()
                runs.append(noop_pass(root, args.adopted))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kind = "submit" if args.submit else ("no-op, adopted (unmarked) tree" if args.adopted else "no-op, marked tree")
    print(f"\n{args.tasks} tasks, {kind}, median of {args.repeat} runs (python {sys.version.split()[0]}, {os.cpu_count()} cores)\n")
    print("| stage | median (s) |\n|---|---|")
    for key in runs[0]:
        print(f"| {key} | {statistics.median(r[key] for r in runs):.3f} |")
    print(f"| peak memory (MB, whole process) | {peak_mb:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
