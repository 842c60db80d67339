"""Verbs that run passes: once, watch, stage, submit, retry. Each pass goes through session.run_pass."""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
import traceback
from typing import Any

from reconciler.cli.options import add_lease, add_publishing, add_scheduler, add_source, options
from reconciler.cli.render import applied_line, counts_line, public
from reconciler.core.plan import ActionKind
from reconciler.core.reasons import Reason
from reconciler.core.summary import shortfall
from reconciler.errors import (
    EXIT_INCOMPLETE,
    EXIT_INVALID,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_TRANSIENT,
    ConfigError,
    Deposed,
    LeaseHeld,
    LegacyDatabase,
    ReconcilerError,
    TransientError,
)
from reconciler.lease import Leases
from reconciler.session import (
    Options,
    PassReport,
    Warn,
    fetch_desired,
    production_names,
    run_pass,
    warn,
)

EXAMPLES = {
    "once": "reconcile once demo                     # one pass: observe, plan, apply, record",
    "watch": "reconcile watch demo --until-done --interval 2",
    "stage": "reconcile stage demo                    # write scripts + manifests to logs/, submit nothing",
    "submit": "reconcile submit demo                   # send what stage wrote, and anything else missing",
    "retry": "reconcile retry demo                    # retry failed tasks now (backoff waived)",
}


def report_pass(opts: Options, name: str, on_warning: Warn = warn, **kw: Any) -> PassReport:
    """One pass (session.run_pass), and what it did said on stderr: the problem, events, notes, the status commit."""
    report = run_pass(opts, name, on_warning=on_warning, **kw)
    if report.problem:
        on_warning(f"{name}: {report.problem}")
    for e in report.result.events:
        print(f"{name}: {e}", file=sys.stderr)
    for n in report.result.plan.notes:
        print(f"{name}: note: {n.message}", file=sys.stderr)
    if report.status_commit:
        print(f"{name}: status committed to {opts.status_branch} ({report.status_commit[:10]})", file=sys.stderr)
    return report


def _as_json(r: PassReport) -> dict[str, Any]:
    return {"production": r.name, "applied": r.result.applied, "summary": public(r.result.summary, False), "tag": r.tag, "directory": str(r.directory)}


def cmd_once(args: argparse.Namespace) -> int:
    """One pass over each production. One production's trouble does not stop the others; the
    exit code says what went wrong once all of them are done (2 if any is invalid)."""
    opts = options(args)
    if getattr(args, "fetch", None):
        fetch_desired(opts, args.fetch)
    reports = []
    codes: list[int] = []
    for name in production_names(opts, args.names):
        try:
            r = report_pass(opts, name)
        except ConfigError as exc:
            print(f"{name}: not reconciled: its desired state does not load and never did:\n{exc}", file=sys.stderr)
            codes.append(EXIT_INVALID)
            continue
        except ReconcilerError as exc:
            print(f"{name}: not reconciled: {exc}", file=sys.stderr)
            codes.append(exc.exit_code)
            continue
        reports.append(r)
        if r.problem:
            codes.append(EXIT_INVALID)
        if not args.json:
            print(f"{name}: {applied_line(r.result.applied)} | {counts_line(r.result.summary)}", flush=True)
    if args.json:
        print(json.dumps([_as_json(r) for r in reports], indent=2, sort_keys=True))
    return EXIT_INVALID if EXIT_INVALID in codes else codes[0] if codes else EXIT_OK


def cmd_stage(args: argparse.Namespace) -> int:
    r = report_pass(options(args), args.name, stage=True)
    logs = r.directory / "logs"
    staged = sorted(logs.glob("batch_*.sh"), key=lambda p: p.stat().st_mtime)
    n = r.result.applied.get(ActionKind.STAGE.value, 0)
    if args.json:
        print(json.dumps({"staged_tasks": n, "scripts": [str(p) for p in staged[-50:]]}, indent=2))
    else:
        print(f"{args.name}: staged {n} task(s); scripts and manifests in {logs} (nothing submitted; `reconcile submit {args.name}` sends them)")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    """One pass, which sends what `reconcile stage` wrote; then says what became of it."""
    r = report_pass(options(args), args.name)
    p = r.result.plan
    sent = p.of(ActionKind.SEND)
    outdated = [a for a in p.of(ActionKind.ABANDON) if a.reason is Reason.STAGED_OUTDATED]
    if sent:
        n = sum(len(a.keys) for a in sent)
        print(f"{args.name}: sent {n} staged task(s) in {len(sent)} submission(s): {', '.join(a.token or '' for a in sent)}", file=sys.stderr)
    for a in outdated:
        print(f"{args.name}: staged submission {a.token} not sent: {a.message}; its {len(a.keys)} task(s) were planned again", file=sys.stderr)
    if not sent and not outdated:
        print(f"{args.name}: nothing was staged (`reconcile stage {args.name}` writes scripts without sending them); this pass did what `once` does", file=sys.stderr)
    if args.json:
        print(json.dumps([_as_json(r)], indent=2, sort_keys=True))
    else:
        print(f"{args.name}: {applied_line(r.result.applied)} | {counts_line(r.result.summary)}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """Retry failed tasks now: backoff waived, and tasks that gave up get one more attempt."""
    r = report_pass(options(args), args.name, retry=True)
    waived = r.result.plan.count(ActionKind.WAIVE)
    now = sum(len(a.keys) for a in r.result.plan.of(ActionKind.RESUBMIT) if a.reason is Reason.MANUAL_RETRY)
    later = f" ({waived - now} when the queue cap allows)" if waived > now else ""
    print(f"{args.name}: {waived} failed task(s) given one more attempt, {now} resubmitted now{later}", file=sys.stderr)
    print(f"{args.name}: {applied_line(r.result.applied)} | {counts_line(r.result.summary)}")
    return EXIT_OK


class Stop:
    """SIGINT/SIGTERM ask a loop to stop between steps, never in the middle of one."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Stop:
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


class SaidOnce:
    """A loop's warnings: each text once per loop (an uncommitted edit, a held lease, a
    production reconciled at its last good revision), not once every interval for a month."""

    def __init__(self) -> None:
        self.said: set[str] = set()

    def __call__(self, msg: str) -> None:
        if msg not in self.said:
            self.said.add(msg)
            warn(msg)


def cmd_watch(args: argparse.Namespace) -> int:
    """Reconcile every --interval seconds. One production's trouble (invalid desired state, an
    unusable directory, a held lease, a scheduler that does not answer) is that production's:
    it is said, and the loop goes on with the others."""
    opts = options(args)
    say = SaidOnce()
    leases = Leases(opts.lease_ttl)  # held across passes: one loop per production, across hosts
    rc = EXIT_OK
    try:
        with Stop() as stop:
            while not stop.requested:
                rc = EXIT_OK  # this tick's: 4 if any production's pass failed
                all_done = True
                deposed: set[str] = set()  # productions another loop took from this one: not ours to finish
                blocked: set[str] = set()  # productions holding the old tool's database: paused until imported
                short: dict[str, str] = {}  # production -> why it ended incomplete
                if args.fetch:
                    fetch_desired(opts, args.fetch)
                for name in production_names(opts, args.names):
                    if stop.requested:
                        break
                    try:
                        r = report_pass(opts, name, on_warning=say, leases=leases)
                    except TransientError as exc:
                        warn(f"{name}: {exc} (will retry next tick)")
                        all_done = False
                        rc = EXIT_TRANSIENT
                        continue
                    except Deposed as exc:  # another loop took it from us: leave it to that one
                        say(f"{name}: {exc}")
                        deposed.add(name)
                        continue
                    except LeaseHeld as exc:  # another loop has it: wait, and take over if it goes quiet
                        say(f"{name}: {exc}")
                        all_done = False
                        continue
                    except LegacyDatabase as exc:  # `reconcile import-legacy` (which this loop does not block) resumes it
                        say(f"{name}: paused: {exc}")
                        blocked.add(name)
                        rc = EXIT_INVALID
                        continue
                    except ConfigError as exc:
                        say(f"{name}: paused: its desired state does not load and never did:\n{exc}")
                        all_done = False
                        continue
                    except Exception as exc:  # noqa: BLE001 - one production's bug or surprise must not stop the others
                        say(f"{name}: pass failed ({type(exc).__name__}: {exc}); the loop goes on with the others\n{traceback.format_exc()}")
                        all_done = False
                        rc = EXIT_TRANSIENT
                        continue
                    stamp = time.strftime("%H:%M:%S")
                    print(f"[{stamp}] {name}: {applied_line(r.result.applied)} | {counts_line(r.result.summary)}", flush=True)
                    all_done = all_done and r.result.summary["done"] and not r.problem
                    if r.result.summary["done"] and not r.result.summary["all_complete"]:
                        short[name] = shortfall(r.result.summary)
                if args.until_done and all_done and blocked:
                    print(f"paused until `reconcile import-legacy` brings the old tool's state over: {', '.join(sorted(blocked))} (exit {EXIT_INVALID})", flush=True)
                    return EXIT_INVALID
                if args.until_done and all_done and deposed:
                    print(f"left to the loops that took them over: {', '.join(sorted(deposed))} (exit {EXIT_LOCKED})", flush=True)
                    return EXIT_LOCKED
                if args.until_done and all_done:
                    if not short:
                        print("every task is complete", flush=True)
                        return EXIT_OK
                    for name, why in short.items():
                        print(f"{name}: nothing left to do, but {why}", flush=True)
                    print(f"ended incomplete (exit {EXIT_INCOMPLETE}): `reconcile status NAME` shows each failure and its log", flush=True)
                    return EXIT_INCOMPLETE
                stop.sleep(args.interval * (1 + random.uniform(-args.jitter, args.jitter)))
    finally:
        leases.release_all()
    return rc


def register(add: Any) -> None:
    for name, handler, help_ in (
        ("once", cmd_once, "one reconcile pass over productions (default: all in productions/)"),
        ("watch", cmd_watch, "reconcile every --interval seconds until stopped (SIGINT/SIGTERM stop between steps)"),
    ):
        p = add(name, handler, help_, EXAMPLES[name])
        p.add_argument("names", nargs="*", help="production names (default: every production)")
        if name == "watch":
            p.add_argument("--interval", type=float, default=300.0, help="seconds between passes (default 300, with jitter)")
            p.add_argument("--jitter", type=float, default=0.1, help="fraction of the interval to vary by (default 0.1)")
            p.add_argument("--until-done", action="store_true", help=f"exit once nothing is left to do: 0 if every task is complete, {EXIT_INCOMPLETE} if some gave up or are stale")
        add_source(p)
        add_scheduler(p)
        add_lease(p)
        add_publishing(p)
    for name, handler, help_ in (
        ("stage", cmd_stage, "write the sbatch scripts and manifests a pass would submit, into logs/; submit nothing"),
        ("submit", cmd_submit, "submit staged scripts and anything else missing (one pass)"),
        ("retry", cmd_retry, "retry failed tasks now: backoff waived, given-up tasks get one more attempt"),
    ):
        p = add(name, handler, help_, EXAMPLES[name])
        p.add_argument("name")
        add_source(p)
        add_scheduler(p)
        add_lease(p)
        if name != "stage":
            add_publishing(p)

