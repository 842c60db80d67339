"""Verbs of the reconcile loop: once, watch, plan, status, stage, submit, retry, adopt, monitor.

Each verb is thin: load desired state from git, open the production's adapters, and hand
over to the engine. Exit codes: 0 ok (plan: nothing to do), 1 plan has work, 2 invalid input,
3 locked by another reconciler, 4 transient scheduler/filesystem failure.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import (
    EXIT_CHANGES,
    EXIT_OK,
    EXIT_TRANSIENT,
    LockHeld,
    ReconcilerError,
    TransientError,
)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


@dataclass
class Session:
    """One production opened for a pass: desired state and its adapters."""

    loaded: Any
    repo: Any
    engine: Any
    ledger: Any
    tag: str | None


@contextmanager
def open_production(args: argparse.Namespace, name: str, *, write: bool, init: bool | None = None) -> Iterator[Session]:
    """Load ``name`` at the ref and open its ledger.

    ``write``: take the production's lock and record what is observed (refuses uncommitted
    desired state). ``init`` (default: ``write``): also create the directory tree and the
    provenance tag, and rebuild a lost ledger from the manifests in logs/. Read-only opens
    use an in-memory ledger when the production has none yet, so they create nothing.
    """
    from reconciler.cli import load_desired
    from reconciler.engine import Engine, rebuild_from_manifests
    from reconciler.gitops import ensure_tag, latest_tag, version_info
    from reconciler.ledger import Ledger, default_path
    from reconciler.lock import ProductionLock
    from reconciler.production_dir import init_production_dir
    from reconciler.scheduler import make_scheduler

    init = write if init is None else init
    loaded, repo, dirt = load_desired(args, name, read_only=not init)
    pdir: Path = loaded.production_dir
    scheduler = make_scheduler(loaded.machine, getattr(args, "scheduler", None))
    lock = None
    if write:
        lock = ProductionLock(pdir / "metadata" / "reconcile.lock").acquire()
    try:
        if init:
            tag, created = ensure_tag(repo, loaded, loaded.spec.production.version, dirt)
            if created or not (pdir / "metadata" / "version_info.json").exists():
                init_production_dir(loaded, version_info(loaded, repo, tag, dirt))
            if lock and lock.previous:
                _warn(f"took over the lock of a dead reconciler (pid {lock.previous.get('pid')} on {lock.previous.get('host')})")
        else:
            tag = latest_tag(repo, loaded.name)
        path = default_path(pdir)
        existed = path.exists()
        if not init and not existed:
            ledger = Ledger(Path(":memory:"))
        else:
            ledger = Ledger(path)
            if ledger.network_fs:
                _warn(f"the ledger {path} is on a network file system ({ledger.network_fs}); using rollback journal mode, not WAL")
        try:
            if init and not existed and (pdir / "logs").is_dir() and any((pdir / "logs").glob("batch_*.json")):
                n = rebuild_from_manifests(ledger, pdir, scheduler.name, time.time())
                _warn(f"ledger {path} was missing: rebuilt {n} submission(s) from the manifests in logs/; "
                      "retry counts restart at what the markers and logs show")
            engine = Engine(loaded, scheduler, ledger)
            yield Session(loaded, repo, engine, ledger, tag)
        finally:
            ledger.close()
    finally:
        if lock:
            lock.release()


# ---------------------------------------------------------------- rendering


def _counts_line(summary: dict[str, Any]) -> str:
    c = summary["counts"]
    parts = [f"{c['complete'] + c['adopted']}/{summary['total']} complete"]
    for k in ("adopted", "running", "queued", "retrying", "failed", "stale"):
        if c.get(k):
            parts.append(f"{c[k]} {k}")
    if summary.get("staged"):
        parts.append(f"{summary['staged']} staged")
    return ", ".join(parts)


def _applied_line(applied: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(applied.items())) or "nothing to do"


def _status_text(name: str, summary: dict[str, Any], verbose: bool, pdir: Path, tag: str | None) -> str:
    lines = [f"production {name}: {_counts_line(summary)}"]
    rate = summary["success_rate"]
    lines.append(f"  progress {summary['progress']:.1%}" + (f", success rate {rate:.1%}" if rate is not None else "") + (" (done)" if summary["done"] else ""))
    lines.append(f"  directory {pdir}" + (f"; desired state tag {tag}" if tag else ""))
    if summary["failures"]:
        lines.append("  failures:")
        for f in summary["failures"] if verbose else summary["failures"][:20]:
            lines.append(f"    {f['key']:<20} {f['state']:<8} {f['failures']} failure(s): {f['reason']}  log: {f['log'] or '-'}")
        if not verbose and len(summary["failures"]) > 20:
            lines.append(f"    ... {len(summary['failures']) - 20} more (--verbose)")
    if summary["retried"]:
        lines.append(f"  retried and then completed: {len(summary['retried'])}")
        for r in summary["retried"] if verbose else summary["retried"][:10]:
            lines.append(f"    {r['key']:<20} after {r['failures']} failure(s): {r['last_reason']}")
    stale = [k for k, s in summary["states"].items() if s == "stale"]
    if stale:
        lines.append(f"  stale (made with another configuration): {len(stale)}: {', '.join(stale[:10])}{' ...' if len(stale) > 10 else ''}")
    if summary["excluded"]:
        lines.append(f"  excluded: {len(summary['excluded'])}")
        for e in summary["excluded"]:
            lines.append(f"    {e['key']:<20} {e['reason']}")
    if verbose:
        lines.append("  tasks:")
        for key, st in summary["states"].items():
            lines.append(f"    {key:<20} {st}")
    return "\n".join(lines)


def _public(summary: dict[str, Any], verbose: bool) -> dict[str, Any]:
    return summary if verbose else {k: v for k, v in summary.items() if k != "states"}


# ---------------------------------------------------------------- verbs


def _names(args: argparse.Namespace) -> list[str]:
    if args.names:
        return list(args.names)
    from reconciler.gitops import GitTree, open_repo
    from reconciler.spec.load import list_names

    return list_names(GitTree(open_repo(args.repo), args.ref))


def _one_pass(args: argparse.Namespace, name: str, *, stage: bool = False, before: Callable[[Session], None] | None = None) -> dict[str, Any]:
    with open_production(args, name, write=True) as s:
        if before:
            before(s)
        result = s.engine.run_pass(apply=True, stage=stage)
        for e in result.events:
            print(f"{name}: {e}", file=sys.stderr)
        for n in result.plan.notes:
            print(f"{name}: note: {n}", file=sys.stderr)
        if not getattr(args, "no_status", True):
            try:
                commit = publish_status(args, s, result)
            except TransientError as exc:
                _warn(f"{name}: status not published: {exc}")
            else:
                if commit:
                    print(f"{name}: status committed to {args.status_branch} ({commit[:10]})", file=sys.stderr)
        return {"production": name, "applied": result.applied, "summary": result.summary, "tag": s.tag, "directory": str(s.loaded.production_dir)}


_COMPARE_IGNORED = ("updated", "plots")


def publish_status(args: argparse.Namespace, s: Session, result: Any) -> str | None:
    """Commit this pass's status to the results branch, when it differs from what is there.

    A pass that changed nothing (same counts, same per-task states, same tag) commits
    nothing: the document is compared with the branch's without its timestamp.
    """
    from reconciler.results.branch import publish, read_branch_file
    from reconciler.results.document import build_status, history_line, parse_history
    from reconciler.results.layout import HISTORY_FILE, builder, status_path
    from reconciler.results.plots import plots_bytes

    name = s.loaded.name
    repo_root = Path(s.repo.working_tree_dir or ".")
    latest = s.ledger.latest_attempts()
    attempts = {k: a.attempt for k, a in latest.items()}
    runtimes = {k: a.end - a.start for k, a in latest.items() if a.start is not None and a.end is not None}
    now = time.time()
    doc = build_status(
        result.summary,
        production=name,
        version=s.loaded.spec.production.version,
        tag=s.tag,
        commit=s.repo.commit(args.ref).hexsha,
        ref=args.ref,
        machine=s.loaded.machine.machine.name,
        now=now,
        keys=[t.key for t in s.engine.expansion.tasks],
        attempts=attempts,
        runtimes=runtimes,
    )
    branch = args.status_branch
    prev = read_branch_file(repo_root, status_path(name), branch)
    if prev is not None:
        try:
            old = json.loads(prev)
        except ValueError:
            old = {}
        strip = lambda d: {k: v for k, v in d.items() if k not in _COMPARE_IGNORED}  # noqa: E731
        if strip(old) == strip(doc):
            return None
    history = parse_history(read_branch_file(repo_root, status_path(name, HISTORY_FILE), branch))
    line = history_line(result.summary, result.applied, now)
    try:
        plots = plots_bytes(doc, [*history, line])
    except ReconcilerError as exc:  # matplotlib missing: status without pictures
        _warn(f"{name}: no pictures on the status branch: {exc}")
        plots = {}
    counts = _counts_line(result.summary)
    return publish(
        repo_root,
        builder(doc, line, plots),
        f"status: {name}: {_applied_line(result.applied)} | {counts}",
        branch=branch,
        remote=args.push,
    )


def fetch_desired(args: argparse.Namespace) -> None:
    """`--fetch REMOTE`: bring the checked-out branch up to the remote's (fast-forward only).

    This is how a change merged on the forge reaches a login node's watch loop. A diverged or
    dirty checkout is reported and left alone: the loop keeps reconciling what it has.
    """
    from reconciler.gitops import open_repo

    repo = open_repo(args.repo)
    try:
        repo.git.fetch(args.fetch, "--quiet")
        branch = repo.active_branch.name
        repo.git.merge("--ff-only", "--quiet", f"refs/remotes/{args.fetch}/{branch}")
    except Exception as exc:  # noqa: BLE001 - git's many failure modes all mean "not this tick"
        _warn(f"--fetch {args.fetch}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}")


def cmd_once(args: argparse.Namespace) -> int:
    if getattr(args, "fetch", None):
        fetch_desired(args)
    results = []
    for name in _names(args):
        r = _one_pass(args, name)
        results.append(r)
        if not args.json:
            print(f"{name}: {_applied_line(r['applied'])} | {_counts_line(r['summary'])}", flush=True)
    if args.json:
        print(json.dumps([{**r, "summary": _public(r["summary"], False)} for r in results], indent=2, sort_keys=True))
    return EXIT_OK


def cmd_stage(args: argparse.Namespace) -> int:
    r = _one_pass(args, args.name, stage=True)
    logs = Path(r["directory"]) / "logs"
    staged = sorted(logs.glob("batch_*.sh"), key=lambda p: p.stat().st_mtime)
    n = r["applied"].get("stage", 0)
    if args.json:
        print(json.dumps({"staged_tasks": n, "scripts": [str(p) for p in staged[-50:]]}, indent=2))
    else:
        print(f"{args.name}: staged {n} task(s); scripts and manifests in {logs} (nothing submitted; `reconcile submit {args.name}` sends them)")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    args.names = [args.name]
    return cmd_once(args)


def cmd_retry(args: argparse.Namespace) -> int:
    """Retry failed tasks now: backoff waived, and tasks that gave up get one more attempt."""

    def reset(s: Session) -> None:
        n = s.ledger.reset_for_retry(s.engine.policy.max_retries, time.time())
        print(f"{args.name}: {n} failed task(s) made eligible for an immediate retry", file=sys.stderr)

    r = _one_pass(args, args.name, before=reset)
    print(f"{args.name}: {_applied_line(r['applied'])} | {_counts_line(r['summary'])}")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    with open_production(args, args.name, write=False) as s:
        obs = s.engine.observe(record=False)
        p = s.engine.plan(obs)
    if args.json:
        print(p.dumps())
    else:
        if p.is_empty:
            print(f"{args.name}: nothing to do")
        for a in p.actions:
            where = f" batch {a.batch:04d} array {_short_array(a.array_indices)}" if a.batch is not None else ""
            until = f" until {time.strftime('%H:%M:%S', time.localtime(a.until))}" if a.until else ""
            print(f"{a.kind.value:<9} {len(a.keys):>6} task(s){where}{until}: {a.reason}")
        for n in p.notes:
            print(f"note: {n}")
    return EXIT_OK if p.is_empty else EXIT_CHANGES


def _short_array(idx: tuple[int, ...]) -> str:
    from reconciler.scheduler.script import array_spec

    s = array_spec(idx) if idx else "-"
    return s if len(s) <= 40 else s[:37] + "..."


def _read_status(args: argparse.Namespace, name: str) -> tuple[dict[str, Any], Path, str | None]:
    """Observe and summarise; record what was seen only when no other reconciler is at work."""
    try:
        with open_production(args, name, write=True, init=False) as s:
            obs = s.engine.observe(record=True)
            return s.engine.summary(obs), s.loaded.production_dir, s.tag
    except LockHeld:
        with open_production(args, name, write=False) as s:
            obs = s.engine.observe(record=False)
            return s.engine.summary(obs), s.loaded.production_dir, s.tag


def cmd_status(args: argparse.Namespace) -> int:
    summary, pdir, tag = _read_status(args, args.name)
    if args.json:
        print(json.dumps({"production": args.name, "directory": str(pdir), "tag": tag, **_public(summary, args.verbose)}, indent=2, sort_keys=True))
    else:
        print(_status_text(args.name, summary, args.verbose, pdir, tag))
    return EXIT_OK


def cmd_adopt(args: argparse.Namespace) -> int:
    """Write markers for valid outputs this reconciler never produced, so later passes are cheap."""
    from reconciler import markers, outputs
    from reconciler.core.states import OutputState

    with open_production(args, args.name, write=True) as s:
        eng = s.engine
        hist = s.ledger.history()
        ours = {k for k, h in hist.items() if h.submissions > 0}
        candidates = [t for t in eng.expansion.tasks if t.key not in ours]
        states = outputs.observe_outputs(eng.production_dir, candidates, eng.spec.task.validator, deep=True)
        adopted = []
        invalid = []
        now = time.time()
        for t in candidates:
            st = states.get(t.key)
            if st is OutputState.UNMARKED:
                markers.write_marker(eng.production_dir, t, attempt=0, exit_code=0, start=now, end=now, adopted=True)
                adopted.append(t.key)
            elif st is OutputState.INVALID:
                invalid.append(t.key)
        if adopted:
            s.ledger.event("adopt", f"adopted {len(adopted)} task(s) with valid outputs and no marker", now)
    data = {"production": args.name, "adopted": len(adopted), "invalid": invalid}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"{args.name}: adopted {len(adopted)} task(s) (markers written); {len(invalid)} invalid output(s) left for the reconciler to rerun")
    return EXIT_OK


class _Stop:
    """SIGINT/SIGTERM ask the loop to stop between steps, never in the middle of one."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True
        print(f"received signal {signum}: stopping after the current step", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.requested and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))


def cmd_watch(args: argparse.Namespace) -> int:
    rc = EXIT_OK
    with _Stop() as stop:
        while not stop.requested:
            all_done = True
            if args.fetch:
                fetch_desired(args)
            for name in _names(args):
                if stop.requested:
                    break
                try:
                    r = _one_pass(args, name)
                except TransientError as exc:
                    _warn(f"{name}: {exc} (will retry next tick)")
                    all_done = False
                    rc = EXIT_TRANSIENT
                    continue
                except LockHeld as exc:
                    _warn(f"{name}: {exc}")
                    all_done = False
                    continue
                rc = EXIT_OK
                stamp = time.strftime("%H:%M:%S")
                print(f"[{stamp}] {name}: {_applied_line(r['applied'])} | {_counts_line(r['summary'])}", flush=True)
                all_done = all_done and r["summary"]["done"]
            if args.until_done and all_done:
                print("every task is complete or has given up", flush=True)
                return EXIT_OK
            stop.sleep(args.interval * (1 + random.uniform(-args.jitter, args.jitter)))
    return rc


def cmd_monitor(args: argparse.Namespace) -> int:
    """A live, read-only view: observes without the lock and never writes."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    console = Console()
    with _Stop() as stop:
        while True:
            with open_production(args, args.name, write=False) as s:
                summary = s.engine.summary(s.engine.observe(record=False))
            if not console.is_terminal or args.count == 1:
                print(f"[{time.strftime('%H:%M:%S')}] {args.name}: {_counts_line(summary)}", flush=True)
            else:
                console.clear()
                c = summary["counts"]
                with Progress(TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), console=console, auto_refresh=False) as prog:
                    for label in ("complete", "running", "queued", "failed"):
                        prog.add_task(label, total=summary["total"], completed=c[label] + (c["adopted"] if label == "complete" else 0))
                    prog.refresh()
                console.print(f"{args.name}: {_counts_line(summary)}  (every {args.interval:g}s; Ctrl-C to leave)")
            args.count -= 1
            if args.count == 0 or stop.requested or (args.until_done and summary["done"]):
                return EXIT_OK
            stop.sleep(args.interval)


# ---------------------------------------------------------------- registration

EXAMPLES = {
    "once": "reconcile once demo                     # one pass: observe, plan, apply, record",
    "watch": "reconcile watch demo --until-done --interval 2",
    "plan": "reconcile plan demo --json               # exit 0: nothing to do, 1: work to do",
    "status": "reconcile status demo --verbose",
    "stage": "reconcile stage demo                    # write scripts + manifests to logs/, submit nothing",
    "submit": "reconcile submit demo                   # send what stage wrote, and anything else missing",
    "retry": "reconcile retry demo                    # retry failed tasks now (backoff waived)",
    "adopt": "reconcile adopt alpha --machine nersc   # mark valid outputs made by the old tool",
    "monitor": "reconcile monitor demo --interval 5",
}


def register(add: Callable[..., Any], common: Callable[..., None]) -> None:
    def verb(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = add(name, handler, help_)
        p.epilog = f"example:\n  {EXAMPLES[name]}"
        return p

    def sched(p: argparse.ArgumentParser) -> None:
        p.add_argument("--scheduler", choices=["local", "slurm", "pyslurm", "auto"], default=None, help="override the machine's scheduler backend")

    def gitops(p: argparse.ArgumentParser) -> None:
        p.add_argument("--status-branch", default="reconciler/status", help="results branch for status.json, history and STATUS.md (default reconciler/status)")
        p.add_argument("--no-status", action="store_true", help="do not commit status to the results branch")
        p.add_argument("--push", metavar="REMOTE", default=None, help="push the results branch to REMOTE after committing (never forced)")
        p.add_argument("--fetch", metavar="REMOTE", default=None, help="fetch REMOTE and fast-forward the checkout before reading desired state")

    p = verb("once", cmd_once, "one reconcile pass over productions (default: all in productions/)")
    p.add_argument("names", nargs="*", help="production names (default: every production)")
    common(p)
    sched(p)
    gitops(p)
    p = verb("watch", cmd_watch, "reconcile every --interval seconds until stopped (SIGINT/SIGTERM stop between steps)")
    p.add_argument("names", nargs="*", help="production names (default: every production)")
    p.add_argument("--interval", type=float, default=300.0, help="seconds between passes (default 300, with jitter)")
    p.add_argument("--jitter", type=float, default=0.1, help="fraction of the interval to vary by (default 0.1)")
    p.add_argument("--until-done", action="store_true", help="exit once every task is complete or has given up")
    common(p)
    sched(p)
    gitops(p)
    for name, handler, help_ in (
        ("plan", cmd_plan, "show what a pass would do, without doing it (exit 0 nothing to do, 1 work to do)"),
        ("status", cmd_status, "counts by state, success rate, failures with reasons and logs, stale and excluded tasks"),
        ("stage", cmd_stage, "write the sbatch scripts and manifests a pass would submit, into logs/; submit nothing"),
        ("submit", cmd_submit, "submit staged scripts and anything else missing (one pass)"),
        ("retry", cmd_retry, "retry failed tasks now: backoff waived, given-up tasks get one more attempt"),
        ("adopt", cmd_adopt, "write completion markers for valid outputs this reconciler did not produce"),
        ("monitor", cmd_monitor, "live read-only view of a production's progress"),
    ):
        p = verb(name, handler, help_)
        p.add_argument("name")
        common(p)
        sched(p)
        if name in ("submit", "retry"):
            gitops(p)
        if name == "status":
            p.add_argument("--verbose", action="store_true", help="every failure and every task's state")
        if name == "monitor":
            p.add_argument("--interval", type=float, default=10.0, help="seconds between refreshes")
            p.add_argument("--count", type=int, default=0, help="stop after this many refreshes (0: until Ctrl-C)")
            p.add_argument("--until-done", action="store_true", help="stop when the production is done")


__all__ = ["register", "ReconcilerError"]
