"""Time the `reconcile` command line end to end (interpreter start-up, imports, git, the pass).

Builds the synthetic production of bench_pass.py with a complete output tree, then runs

    python -m reconciler.cli plan bench --repo ROOT     # must exit 0: nothing to do
    python -m reconciler.cli once bench --repo ROOT     # a no-op pass (lock, tag, ledger, observe, plan,
                                                        # status committed to the results branch)
    python -m reconciler.cli once bench --repo ROOT --no-status

as subprocesses and reports the median wall time of --repeat runs (hyperfine is not
installed here; this is its loop). `once` gets one untimed warm-up run first, which creates
the production's directory tree, ledger and provenance tag, as the first pass on a real
production does. For reference it also times the interpreter importing the CLI
(`python -c "import reconciler.cli"`), the floor under every verb.

    python benchmarks/bench_cli.py                         # 40,000 tasks, unmarked (adopted) tree: plan
    python benchmarks/bench_cli.py --marked --verb once --verb once-no-status
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pass  # noqa: E402


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    return time.perf_counter() - t, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=40_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--marked", action="store_true", help="markers for every task (default: outputs only, to adopt)")
    ap.add_argument("--verb", action="append", choices=["plan", "once", "once-no-status", "status"], help="verbs to time (default: plan)")
    ap.add_argument("--keep", type=Path, default=None, help="build (or reuse) the repository and tree here")
    args = ap.parse_args()
    verbs = args.verb or ["plan"]
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep if args.keep is not None else Path(tmp) / "repo"
        if not (root / "productions").exists():
            bench_pass.build_repo(root, args.tasks, 1000)
            sys.path.insert(0, str(here))
            t = time.perf_counter()
            bench_pass.build_tree(bench_pass.load_bench(root), adopted=not args.marked)
            print(f"built the tree of {args.tasks} tasks in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
        env["RECONCILER_LOCAL_SPOOL"] = str(root / "spool")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here), env.get("PYTHONPATH")]))
        rows: list[tuple[str, list[float]]] = []
        times = []
        for _ in range(args.repeat):
            dt, r = run([sys.executable, "-c", "import reconciler.cli"], env, root)
            assert r.returncode == 0, r.stderr
            times.append(dt)
        rows.append(("python -c 'import reconciler.cli'", times))
        for verb in verbs:
            cmd = [sys.executable, "-m", "reconciler.cli", verb.split("-")[0], "bench", "--repo", str(root)]
            if verb == "once-no-status":
                cmd.append("--no-status")  # skip committing the status document to the results branch
            if verb.startswith("once"):
                _, r = run(cmd, env, root)  # warm-up: directory tree, ledger, tag
                assert r.returncode == 0, r.stderr
            times = []
            for _ in range(args.repeat):
                dt, r = run(cmd, env, root)
                if r.returncode != 0:
                    print(f"`reconcile {verb} bench` exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}", file=sys.stderr)
                    return 1
                times.append(dt)
            rows.append((" ".join(["reconcile", *cmd[3:5], *cmd[7:]]) + (" (exit 0)" if verb == "plan" else ""), times))
            print(f"{verb}: {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ''}", file=sys.stderr)
    tree = "marked" if args.marked else "unmarked (adopted)"
    print(f"\n{args.tasks} tasks, {tree} tree, wall time of {args.repeat} runs (python {sys.version.split()[0]}, {os.cpu_count()} cores)\n")
    print("| command | median (s) | min | max |\n|---|---|---|---|")
    for label, ts in rows:
        print(f"| `{label}` | {statistics.median(ts):.3f} | {min(ts):.3f} | {max(ts):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
