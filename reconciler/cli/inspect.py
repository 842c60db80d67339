"""Verbs that look without running a pass: plan, status, monitor; and adopt, which marks outputs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from reconciler.cli.loop import Stop
from reconciler.cli.options import add_scheduler, add_source, options
from reconciler.cli.render import counts_line, plan_text, public, status_text
from reconciler.errors import EXIT_CHANGES, EXIT_OK
from reconciler.session import adopt, read_plan, read_status

EXAMPLES = {
    "plan": "reconcile plan demo --json               # exit 0: nothing to do, 1: work to do",
    "status": "reconcile status demo --verbose",
    "adopt": "reconcile adopt alpha --machine nersc   # mark valid outputs made by the old tool",
    "monitor": "reconcile monitor demo --interval 5",
}


def cmd_plan(args: argparse.Namespace) -> int:
    p = read_plan(options(args), args.name)
    print(p.dumps() if args.json else plan_text(args.name, p))
    return EXIT_OK if p.is_empty else EXIT_CHANGES


def cmd_status(args: argparse.Namespace) -> int:
    summary, pdir, tag = read_status(options(args), args.name)
    if args.json:
        doc = {"production": args.name, "directory": str(pdir), "tag": tag, **public(summary, args.verbose or args.tasks)}
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(status_text(args.name, summary, args.verbose, pdir, tag))
    return EXIT_OK


def cmd_adopt(args: argparse.Namespace) -> int:
    """Write markers for valid outputs this reconciler never produced, so later passes are cheap."""
    adopted, invalid = adopt(options(args), args.name)
    if args.json:
        print(json.dumps({"production": args.name, "adopted": len(adopted), "invalid": invalid}, indent=2))
    else:
        print(f"{args.name}: adopted {len(adopted)} task(s) (markers written); {len(invalid)} invalid output(s) left for the reconciler to rerun")
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace) -> int:
    """A live, read-only view: observes without the lock and never writes."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    opts = options(args)
    console = Console()
    with Stop() as stop:
        while True:
            summary, _pdir, _tag = read_status(opts, args.name)
            if args.json:  # one JSON object per line and tick, for scripts (JSON Lines)
                line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "production": args.name, **public(summary, False)}
                print(json.dumps(line, sort_keys=True), flush=True)
            elif not console.is_terminal or args.count == 1:
                print(f"[{time.strftime('%H:%M:%S')}] {args.name}: {counts_line(summary)}", flush=True)
            else:
                console.clear()
                c = summary["counts"]
                with Progress(TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), console=console, auto_refresh=False) as prog:
                    for label in ("complete", "running", "queued", "failed"):
                        prog.add_task(label, total=summary["total"], completed=c[label] + (c["adopted"] if label == "complete" else 0))
                    prog.refresh()
                console.print(f"{args.name}: {counts_line(summary)}  (every {args.interval:g}s; Ctrl-C to leave)")
            args.count -= 1
            if args.count == 0 or stop.requested or (args.until_done and summary["done"]):
                return EXIT_OK
            stop.sleep(args.interval)


def register(add: Any) -> None:
    for name, handler, help_ in (
        ("plan", cmd_plan, "show what a pass would do, without doing it (exit 0 nothing to do, 1 work to do)"),
        ("status", cmd_status, "counts by state, success rate, failures with reasons and logs, stale and excluded tasks"),
        ("adopt", cmd_adopt, "write completion markers for valid outputs this reconciler did not produce"),
        ("monitor", cmd_monitor, "live read-only view of a production's progress"),
    ):
        p = add(name, handler, help_, EXAMPLES[name])
        p.add_argument("name")
        add_source(p)
        add_scheduler(p)
        if name == "status":
            p.add_argument("--verbose", action="store_true", help="every failure and every task's state")
            p.add_argument("--tasks", action="store_true", help="with --json: every task's state (`states`: key -> state)")
        if name == "monitor":
            p.add_argument("--interval", type=float, default=10.0, help="seconds between refreshes")
            p.add_argument("--count", type=int, default=0, help="stop after this many refreshes (0: until Ctrl-C)")
            p.add_argument("--until-done", action="store_true", help="stop when the production is done")
