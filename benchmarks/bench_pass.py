"""Time each stage of a no-op reconcile pass, and of a pass that submits everything.

Builds, in a temporary directory, a git repository with one synthetic production of N tasks
(N/20 realizations x 20 redshifts) and, for the no-op pass, a complete output tree: every
output file and its completion marker (or, with --adopted, outputs only, no markers). Then
runs the real engine stage by stage (the stages of Engine.run_pass), each run in a fresh
Python process so that its peak memory is the pass's own (not the tree builder's), and
reports medians and the largest peak resident set size.

    python benchmarks/bench_pass.py                       # 40,000 tasks, no-op, marked tree
    python benchmarks/bench_pass.py --adopted             # 40,000 tasks, no-op, unmarked tree
    python benchmarks/bench_pass.py --submit              # a pass that submits 40,000 tasks
    python benchmarks/bench_pass.py --tasks 1000000 --repeat 3
    python benchmarks/bench_pass.py --campaign            # 40,000 + 40,000 + 20 tasks in three stages, no-op
    python benchmarks/bench_pass.py --campaign --warm     # the same, as each pass of `reconcile watch` after its first
    python benchmarks/bench_pass.py --pool                # 40,000 tasks in pool mode, no-op

The submit mode uses a scheduler that only counts calls, to time the pass's own work
outside the scheduler (the budget in the issue: <= 1 s for 40,000 tasks).
Stage timings exclude interpreter start-up and imports; benchmarks/bench_cli.py times the
command line end to end.
"""

from __future__ import annotations

import argparse
import json
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
HERE = Path(__file__).resolve().parent.parent


CAMPAIGN = """stages:
  generate:
    command: gen --realization {realization} --redshift {redshift:.3f} --output {output}
    outputs: ['catalogs/r{realization:05d}/mock_z{redshift:.3f}.hdf5']
  measure:
    needs: [generate]
    command: pk {needs.generate} --output {output}
    outputs: ['pk/r{realization:05d}/pk_z{redshift:.3f}.npy']
  covariance:
    over: [redshift]
    needs: [measure]
    command: cov --list {needs.measure} --output {output}
    outputs: ['cov/cov_z{redshift:.3f}.npy']
"""
"""--campaign: N catalogs -> N statistics (a map) -> one covariance per redshift (a fan-in)."""


def build_repo(root: Path, tasks: int, batch: int, campaign: bool = False, pool: bool = False) -> None:
    realizations = max(1, tasks // REDSHIFTS)
    (root / "productions").mkdir(parents=True)
    (root / "defaults").mkdir()
    local = (HERE / "defaults/local.yaml").read_text().replace("max_queued_tasks: 10000", "max_queued_tasks: 10000000")
    (root / "defaults/local.yaml").write_text(local)
    zs = ", ".join(f"{0.1 + 0.1 * i:.1f}" for i in range(REDSHIFTS))
    (root / "productions/bench.yaml").write_text(
        "production: {name: bench, version: v1.0}\n"
        f"science:\n  redshifts: [{zs}]\n  realizations: {{start: 0, count: {realizations}}}\n"
        f"execution: {{batch_size: {batch}{', mode: pool' if pool else ''}}}\n"
        f"outputs: {{base_path: {root / 'out'}}}\n"
        + (CAMPAIGN if campaign else (
            "task:\n  command: gen --realization {realization} --redshift {redshift:.3f} --output {output}\n"
            "  outputs: ['catalogs/r{realization:05d}/mock_z{redshift:.3f}.hdf5']\n"
        ))
    )
    (root / ".gitignore").write_text("out/\nspool/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *cmd], cwd=root, check=True, env=env)


def load_bench(root: Path) -> Any:
    from reconciler.gitops import GitTree, open_repo
    from reconciler.spec.load import load

    return load(GitTree(open_repo(root), "HEAD"), "bench", "local", repo_root=root, check_tasks=False)


_BUILD: list[Any] = []  # (production_dir, tasks, adopted), inherited by the forked workers


def _build_part(part: int, parts: int) -> int:
    from reconciler import markers

    pdir, tasks, adopted = _BUILD[0]
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    n = 0
    for t in tasks[part::parts]:
        fd = os.open(pdir / t.outputs[0], flags, 0o644)
        os.write(fd, b"x")
        os.close(fd)
        n += 1
        if not adopted:
            doc = {"key": t.key, "index": t.index, "fingerprint": t.fingerprint, "attempt": 1, "exit_code": 0,
                   "start": 0.0, "end": 0.0, "host": "bench", "token": "", "adopted": False}
            fd = os.open(markers.marker_path(pdir, t), flags, 0o644)
            os.write(fd, (json.dumps(doc, sort_keys=True) + "\n").encode())
            os.close(fd)
            n += 1
    return n


def build_tree(loaded: Any, adopted: bool) -> None:
    """Every output present and (unless adopted) marked: the tree of a finished production.

    Markers get the names and content markers.write_marker gives them, but without its
    per-file fsync and rename (which made a 1,000,000-task tree take ~12 min): the pass
    reads marker *names* only. One forked worker per core (creating files is CPU-bound).
    """
    import multiprocessing

    from reconciler import outputs

    pdir = loaded.production_dir
    tasks = loaded.expansion().tasks
    for d in outputs.output_dirs(tasks):
        (pdir / d).mkdir(parents=True, exist_ok=True)
    _BUILD[:] = [(pdir, tasks, adopted)]
    parts = max(1, os.cpu_count() or 1)
    with multiprocessing.get_context("fork").Pool(parts) as pool:
        pool.starmap(_build_part, [(i, parts) for i in range(parts)])


class CountingScheduler:
    """Accepts every submission at once and counts the calls (submit mode only)."""

    name = "counting"
    lookup_grace_s = 0.0

    def __init__(self) -> None:
        self.submits = 0
        self.observes = 0
        self.seconds = 0.0

    def submit(self, job: Any) -> str:
        t = time.perf_counter()
        self.submits += 1
        self.seconds += time.perf_counter() - t
        return str(self.submits)

    def observe(self, refs: Sequence[Any]) -> Any:
        from reconciler.scheduler.base import SchedulerView

        t = time.perf_counter()
        self.observes += 1
        view = SchedulerView()
        self.seconds += time.perf_counter() - t
        return view

    def cancel(self, job_id: str, array_indices: Sequence[int] | None = None) -> None:
        pass

    def max_array_size(self) -> int | None:
        return None


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def one_pass(root: Path, submit: bool) -> dict[str, float]:
    """One pass with the real adapters, stage by stage, as Engine.run_pass does it."""
    from reconciler.engine import Engine
    from reconciler.ledger import Ledger
    from reconciler.scheduler.local import LocalScheduler

    times: dict[str, float] = {}
    times["load"], loaded = timed(lambda: load_bench(root))
    times["expand"], _ = timed(loaded.expansion)
    meta = loaded.production_dir / "metadata"

    def init() -> tuple[Any, Any, Any]:
        if submit:
            sched: Any = CountingScheduler()
            led = Ledger(meta / f"submit-{time.time_ns()}.db")  # every run starts from an empty ledger
        else:
            sched = LocalScheduler(spool=root / "spool", slots=2)
            led = Ledger(meta / "production.db")
        return sched, led, Engine(loaded, sched, led)

    times["engine init"], (sched, ledger, eng) = timed(init)
    times["observe"], obs = timed(eng.observe)
    times["plan"], p = timed(lambda: eng.plan(obs))
    if submit:
        times["apply (submit)"], (applied, _events) = timed(lambda: eng.apply(p, obs))
        assert applied.get("submit") == len(eng.expansion.stages[0].tasks), applied  # later stages wait for it
    else:
        assert p.is_empty, p.actions[:1]
        times["apply (nothing)"], (applied, _events) = timed(lambda: eng.apply(p, obs))
        assert not applied, applied
    times["summary"], s = timed(lambda: eng.summary(obs, p if applied else None))
    times["total pass"] = sum(times.values())
    if submit:
        times["scheduler calls"] = float(sched.submits + sched.observes)
        times["own time (outside scheduler)"] = times["total pass"] - sched.seconds
    else:
        assert s["done"], s["counts"]
    # a breakdown of observe: the output tree alone (listing per directory)
    times["(observe: output tree only)"], _ = timed(lambda: eng.outputs.observe(eng.expansion.tasks, lambda t: False))
    ledger.close()
    return times


def child(root: Path, submit: bool, warm: bool = False) -> int:
    """Run one pass in this (fresh) process; print its stage times and peak memory as JSON.
    ``warm``: a pass after a first one in the same process, as `reconcile watch` makes them
    (the desired state is loaded and expanded once while its files do not change)."""
    if warm:
        one_pass(root, submit)
    times = one_pass(root, submit)
    times["peak RSS (MB)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(times))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=40_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--adopted", action="store_true", help="outputs without markers (a tree to adopt)")
    ap.add_argument("--submit", action="store_true", help="time a pass that submits every task")
    ap.add_argument("--campaign", action="store_true", help="three stages: N catalogs -> N statistics -> one covariance per redshift")
    ap.add_argument("--pool", action="store_true", help="the production in pool mode (execution.mode: pool)")
    ap.add_argument("--warm", action="store_true", help="time the second pass of one process (what each pass of `reconcile watch` costs)")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--keep", type=Path, default=None, help="build (or reuse) the repository and tree here and keep them")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    if args.child is not None:
        return child(args.child, args.submit, args.warm)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = args.keep if args.keep is not None else Path(tmp) / "repo"
        build = not (root / "productions").exists()
        if build:
            build_repo(root, args.tasks, args.batch, args.campaign, args.pool)
        if not args.submit and build:
            t, _ = timed(lambda: build_tree(load_bench(root), args.adopted))
            files = len(load_bench(root).expansion().tasks) * (1 if args.adopted else 2)
            print(f"built a complete tree of {args.tasks} tasks ({files} files) in {t:.1f} s ({files / t:,.0f} files/s)", file=sys.stderr)
        runs: list[dict[str, float]] = []
        for i in range(args.repeat):
            cmd = [sys.executable, __file__, "--child", str(root)] + (["--submit"] if args.submit else []) + (["--warm"] if args.warm else [])
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                print(r.stdout, r.stderr, file=sys.stderr)
                return 1
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"run {i + 1}: total pass {runs[-1]['total pass']:.3f} s, peak {runs[-1]['peak RSS (MB)']:.0f} MB", file=sys.stderr)
    if not runs:
        return 0  # --repeat 0: build only (with --keep)
    kind = "submit" if args.submit else ("no-op, adopted (unmarked) tree" if args.adopted else "no-op, marked tree")
    if args.warm:
        kind += ", second pass of one process (watch)"
    if args.pool:
        kind += ", pool mode"
    if args.campaign:
        kind += f", campaign of 3 stages ({args.tasks} + {args.tasks} + {REDSHIFTS} tasks)"
    print(f"\n{args.tasks} tasks, {kind}, median of {args.repeat} runs, each in a fresh process (python {sys.version.split()[0]}, {os.cpu_count()} cores)\n")
    print("| stage | median (s) | min | max |\n|---|---|---|---|")
    for key in runs[0]:
        vals = [r[key] for r in runs]
        fmt = ".0f" if key in ("scheduler calls", "peak RSS (MB)") else ".3f"
        print(f"| {key} | {statistics.median(vals):{fmt}} | {min(vals):{fmt}} | {max(vals):{fmt}} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
