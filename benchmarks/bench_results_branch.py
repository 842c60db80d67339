"""How big does the results branch grow? A month of 5-minute passes, published for real.

Builds a scratch git repository with one synthetic production (``--tasks``: N/20
realizations x 20 redshifts), then simulates ``--passes`` passes ``--interval`` seconds apart
(default 8,640 x 300 s: thirty days) of a production whose counts change on every pass:
tasks queue, run, complete (a few fail and are retried, a few give up), and the last pass
completes the production. Each pass's summary (``core.summary.summarize``, as a real pass
makes it) is published with ``results.publish.publish_status`` at the simulated time, so a
month runs in minutes, with pictures, history and STATUS.md exactly as ``watch`` makes them.

It reports: commits on the results branch, the branch's size, bytes per commit (mean), and
the time taken. The size is that of a bare repository holding **only** the results branch
(fetched into it), after ``git gc --aggressive --prune=now``: the sum of its pack files
(what a clone of the branch costs; ``git count-objects -v``'s size-pack, which also counts
the pack index, is reported too). The loose
size before any gc is reported too: what the objects take between two auto-gcs.

    python benchmarks/bench_results_branch.py                  # a month: 8,640 passes
    python benchmarks/bench_results_branch.py --passes 300     # a day and a bit
    python benchmarks/bench_results_branch.py --json

``simulate`` and ``branch_size`` are also used by tests/test_results_branch.py.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

REDSHIFTS = 20
BRANCH = "reconciler/status"
T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z: passes start on the hour
_ENV = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}


def build_repo(root: Path, tasks: int) -> Any:
    """A git repository with production ``bench`` of ``tasks`` tasks; returns its Loaded."""
    from reconciler.spec.load import WorkTree, load

    realizations = max(1, tasks // REDSHIFTS)
    (root / "productions").mkdir(parents=True)
    (root / "defaults").mkdir()
    (root / "defaults/local.yaml").write_text((HERE / "defaults/local.yaml").read_text())
    zs = ", ".join(f"{0.1 + 0.1 * i:.1f}" for i in range(REDSHIFTS))
    (root / "productions/bench.yaml").write_text(
        "production: {name: bench, version: v1.0}\n"
        f"science:\n  redshifts: [{zs}]\n  realizations: {{start: 0, count: {realizations}}}\n"
        "execution: {batch_size: 100}\n"
        "task:\n  command: gen --realization {realization} --redshift {redshift:.3f} --output {output}\n"
        "  outputs: ['catalogs/r{realization:05d}/mock_z{redshift:.3f}.hdf5']\n"
    )
    env = {**os.environ, **_ENV}
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *cmd], cwd=root, check=True, env=env)
    return load(WorkTree(root), "bench", "local", repo_root=root, check_tasks=False)


@dataclass
class Simulation:
    """A production that completes ~tasks/passes tasks per pass and finishes on the last pass.

    At any time up to ``running`` tasks run and ``queued`` wait; ``fail`` of the attempts
    fail (retried two passes later, with a longer backoff each time), and a task that fails
    more than ``max_retries`` times gives up. Deterministic for a given seed.
    """

    keys: list[str]
    passes: int
    seed: int = 12
    running: int = 40
    queued: int = 160
    fail: float = 0.03
    max_retries: int = 3
    phase: list[str] = field(default_factory=list)  # missing queued running complete retrying failed
    failures: list[int] = field(default_factory=list)
    submissions: list[int] = field(default_factory=list)
    runtime: dict[int, float] = field(default_factory=dict)
    wait_until: dict[int, int] = field(default_factory=dict)
    next_new: int = 0

    def __post_init__(self) -> None:
        n = len(self.keys)
        self.phase = ["missing"] * n
        self.failures = [0] * n
        self.submissions = [0] * n
        self.rng = random.Random(self.seed)

    def step(self, p: int) -> dict[str, int]:
        """Advance to pass ``p`` (0-based); returns the actions a pass would have taken."""
        n, rng = len(self.keys), self.rng
        last = p == self.passes - 1
        target = n if last else max(1, round(n * (p + 1) / self.passes))
        done = sum(1 for ph in self.phase if ph in ("complete", "failed"))
        applied = {"submit": 0, "resubmit": 0}
        running = [i for i, ph in enumerate(self.phase) if ph == "running"]
        for i in running:  # finish the oldest runs first, until this pass's target
            if done >= target and not last:
                break
            if not last and rng.random() < self.fail:
                self.failures[i] += 1
                if self.failures[i] > self.max_retries:
                    self.phase[i] = "failed"
                    done += 1
                else:
                    self.phase[i] = "retrying"
                    self.wait_until[i] = p + 2 * self.failures[i]
                continue
            self.phase[i] = "complete"
            self.runtime[i] = rng.uniform(600, 7200)
            done += 1
        n_running = sum(1 for x in self.phase if x == "running")
        n_active = n_running + sum(1 for x in self.phase if x == "queued")
        for i, ph in enumerate(self.phase):  # queued -> running, retried -> queued
            if last and ph in ("queued", "running", "retrying"):
                self.phase[i] = "complete"
                self.runtime[i] = rng.uniform(600, 7200)
            elif ph == "queued" and n_running < self.running:
                self.phase[i] = "running"
                n_running += 1
            elif ph == "retrying" and self.wait_until.get(i, 0) <= p:
                self.phase[i] = "queued"
                self.submissions[i] += 1
                applied["resubmit"] += 1
                n_active += 1
        want = n if last else self.queued + self.running
        while self.next_new < n and n_active < want:
            i = self.next_new
            self.next_new += 1
            self.submissions[i] += 1
            applied["submit"] += 1
            n_active += 1
            self.phase[i] = "queued"
            if last:
                self.phase[i] = "complete"
                self.runtime[i] = rng.uniform(600, 7200)
        return {k: v for k, v in applied.items() if v}

    def summary(self, tasks: list[Any]) -> dict[str, Any]:
        from reconciler.core.model import Desired, Policy, TaskHistory, TaskObs
        from reconciler.core.states import OutputState, SchedState
        from reconciler.core.summary import summarize

        obs_of = {
            "queued": TaskObs(OutputState.MISSING, SchedState.PENDING),
            "running": TaskObs(OutputState.MISSING, SchedState.RUNNING),
            "complete": TaskObs(OutputState.COMPLETE, SchedState.COMPLETED),
        }
        obs, hist = {}, {}
        for i, t in enumerate(tasks):
            if self.phase[i] in obs_of:
                obs[t.key] = obs_of[self.phase[i]]
            if self.submissions[i] or self.failures[i]:
                hist[t.key] = TaskHistory(submissions=self.submissions[i], failures=self.failures[i], last_reason="exit 1" if self.failures[i] else "")
        return summarize(Desired(tasks, Policy(max_retries=self.max_retries)), obs, hist)


@dataclass
class Outcome:
    summary: dict[str, Any]
    applied: dict[str, int]


@contextmanager
def _clock(now: list[float]) -> Iterator[None]:
    """Make publish_status see the simulated time even where it has no ``now`` parameter
    (so this script can measure the code before that parameter existed, unchanged)."""
    import reconciler.results.publish as pub

    real = pub.time

    class Clock:
        @staticmethod
        def time() -> float:
            return now[0]

    pub.time = Clock  # type: ignore[assignment]
    try:
        yield
    finally:
        pub.time = real


def simulate(root: Path, passes: int, tasks: int, interval: float = 300.0, seed: int = 12,
             on_pass: Callable[[int, str | None], None] | None = None, **publish_kw: Any) -> list[str]:
    """Build the scratch repository in ``root`` and publish ``passes`` passes; returns the commits made."""
    from reconciler.results.publish import publish_status

    loaded = build_repo(root, tasks)
    desired = list(loaded.expansion().tasks)
    sim = Simulation([t.key for t in desired], passes, seed=seed)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True).stdout.strip()
    takes_now = "now" in inspect.signature(publish_status).parameters
    made: list[str] = []
    now = [T0]
    with _clock(now):
        for p in range(passes):
            now[0] = T0 + p * interval
            applied = sim.step(p)
            summary = sim.summary(desired)
            keys = [t.key for t in desired]
            attempts = {keys[i]: s for i, s in enumerate(sim.submissions) if s}
            runtimes = {keys[i]: r for i, r in sim.runtime.items()}
            kw = {"now": now[0]} if takes_now else {}
            sha = publish_status(root, loaded=loaded, commit=commit, ref="HEAD", tag=None, result=Outcome(summary, applied),
                                 attempts=attempts, runtimes=runtimes, error=None, branch=BRANCH, remote=None,
                                 on_warning=lambda m: print(m, file=sys.stderr), **kw, **publish_kw)
            if sha:
                made.append(sha)
            if on_pass:
                on_pass(p, sha)
    return made


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def branch_size(root: Path, branch: str = BRANCH, aggressive: bool = True) -> dict[str, int]:
    """Bytes of the objects reachable from ``branch`` alone: fetched into an empty bare
    repository, then ``git gc [--aggressive] --prune=now``; the sum of its pack files."""
    with tempfile.TemporaryDirectory(prefix="results-size-") as tmp:
        bare = Path(tmp) / "only.git"
        env = {**os.environ, **_ENV}
        subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True, env=env)
        subprocess.run(["git", "-C", str(bare), "fetch", "-q", "--no-tags", str(root), f"+refs/heads/{branch}:refs/heads/{branch}"], check=True, env=env)
        gc = ["gc", "-q", "--prune=now"] + (["--aggressive"] if aggressive else [])
        subprocess.run(["git", "-C", str(bare), *gc], check=True, env=env)
        packs = sum(f.stat().st_size for f in (bare / "objects" / "pack").glob("*.pack"))
        counts = subprocess.run(["git", "-C", str(bare), "count-objects", "-v"], check=True, capture_output=True, text=True).stdout
        kib = dict(line.split(": ") for line in counts.splitlines())
        return {"pack_bytes": packs, "size_pack_kib": int(kib["size-pack"]), "objects": int(kib["in-pack"])}


def loose_bytes(root: Path) -> int:
    """Bytes of every loose object in the scratch repository (before any gc)."""
    return sum(_dir_bytes(d) for d in (root / ".git" / "objects").iterdir() if len(d.name) == 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=8640, help="passes to simulate (default 8640: 30 days of 5-minute passes)")
    ap.add_argument("--tasks", type=int, default=20000, help="tasks in the production (default 20000: 1000 realizations x 20 redshifts)")
    ap.add_argument("--interval", type=float, default=300.0, help="seconds between passes (default 300)")
    ap.add_argument("--checkpoints", type=int, default=4, help="measure the branch size this many times along the way (the trend)")
    ap.add_argument("--keep", type=Path, default=None, help="build the scratch repository here (must not exist) and keep it")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.tasks < args.passes:
        print(f"note: {args.tasks} tasks < {args.passes} passes: some passes complete nothing", file=sys.stderr)
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="bench-results-")
    root = args.keep or Path(tmp.name) / "repo"  # type: ignore[union-attr]
    root.mkdir(parents=True)
    marks = {max(1, round(args.passes * (k + 1) / args.checkpoints)) - 1 for k in range(max(0, args.checkpoints - 1))}
    trend: list[dict[str, Any]] = []
    commits = [0]
    t_start = time.perf_counter()
    spent = [0.0]  # seconds spent measuring along the way, not publishing

    def on_pass(p: int, sha: str | None) -> None:
        commits[0] += bool(sha)
        if p in marks:
            t = time.perf_counter()
            size = branch_size(root)["pack_bytes"]
            spent[0] += time.perf_counter() - t
            trend.append({"passes": p + 1, "commits": commits[0], "pack_bytes": size, "bytes_per_commit": round(size / max(1, commits[0]))})
            if not args.json:
                print(f"  after {p + 1} passes: {commits[0]} commits, {size} B, {size / max(1, commits[0]):.0f} B/commit", file=sys.stderr, flush=True)

    made = simulate(root, args.passes, args.tasks, args.interval, on_pass=on_pass)
    publish_s = time.perf_counter() - t_start - spent[0]
    loose = loose_bytes(root)
    t = time.perf_counter()
    agg = branch_size(root)
    gc_s = time.perf_counter() - t
    plain = branch_size(root, aggressive=False)
    result = {
        "passes": args.passes,
        "tasks": args.tasks,
        "interval_s": args.interval,
        "commits": len(made),
        "pack_bytes_aggressive": agg["pack_bytes"],
        "size_pack_kib": agg["size_pack_kib"],
        "bytes_per_commit": round(agg["pack_bytes"] / max(1, len(made))),
        "pack_bytes_plain_gc": plain["pack_bytes"],
        "bytes_per_commit_plain_gc": round(plain["pack_bytes"] / max(1, len(made))),
        "loose_bytes_before_gc": loose,
        "publish_seconds": round(publish_s, 1),
        "seconds_per_pass": round(publish_s / max(1, args.passes), 4),
        "gc_aggressive_seconds": round(gc_s, 1),
        "trend": trend,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.passes} passes of {args.tasks} tasks every {args.interval:g} s -> {len(made)} commits on {BRANCH}")
        print(f"branch alone, git gc --aggressive: {agg['pack_bytes']} B ({agg['size_pack_kib']} KiB size-pack, {agg['objects']} objects)")
        print(f"bytes per commit (mean): {result['bytes_per_commit']}  (plain git gc: {result['bytes_per_commit_plain_gc']})")
        print(f"loose objects before gc: {loose} B")
        print(f"time: {publish_s:.1f} s publishing ({result['seconds_per_pass']} s/pass), {gc_s:.1f} s gc --aggressive")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
