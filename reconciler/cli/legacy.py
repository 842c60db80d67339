"""`reconcile import-legacy`: bring the old production manager's database over (session.import_legacy)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from reconciler.cli.options import add_scheduler, add_source, options
from reconciler.errors import EXIT_OK
from reconciler.session import ImportReport, import_legacy

EXAMPLE = "reconcile import-legacy alpha --machine nersc --dry-run   # then without --dry-run"


def report_text(r: ImportReport) -> str:
    s = r.summary
    watched: dict[str, int] = s.get("watched", {})  # type: ignore[assignment]
    failed: dict[str, int] = s.get("failed", {})  # type: ignore[assignment]
    missing: list[str] = s.get("missing_input", [])  # type: ignore[assignment]
    unmatched: list[str] = s.get("unmatched", [])  # type: ignore[assignment]
    head = (
        f"{r.name}: already imported from {r.source}" if r.already
        else f"{r.name}: {'would import' if r.dry_run else 'imported'} the old production manager's {r.source}"
    )
    lines = [
        head,
        f"  adopted:       {s.get('adopted', 0)} completed task(s) with valid outputs (.adopted markers)"
        + (f"; {s['already_complete']} already complete" if s.get("already_complete") else ""),
        f"  watched:       {sum(watched.values())} task(s) in Slurm job(s) {', '.join(watched) or '-'}: never submitted again while queued or running",
        f"  failed:        {failed.get('tasks', 0)} task(s), {failed.get('attempts', 0)} attempt(s) counted against max_retries",
        f"  planned again: {s.get('replanned', 0)} completed task(s) whose outputs are missing or invalid",
        f"  missing_input: {len(missing)} task(s){': ' + ', '.join(missing[:10]) if missing else ''}{' ...' if len(missing) > 10 else ''}",
        f"  unmatched:     {len(unmatched)} job(s) of the old tool",
    ]
    lines += [f"    {u}" for u in unmatched[:20]]
    if missing:
        lines.append(f"  note: missing_input: {r.note}")
    if r.dry_run:
        lines.append("  (dry run: nothing was written)")
    elif not r.already:
        lines.append(f"  the old database is kept, unmodified, at {r.source}")
    return "\n".join(lines)


def cmd_import_legacy(args: argparse.Namespace) -> int:
    r = import_legacy(options(args), args.name, db=args.db, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"production": r.name, "source": str(r.source), "dry_run": r.dry_run, "already": r.already, **r.summary}, indent=2, sort_keys=True))
    else:
        print(report_text(r))
    return EXIT_OK


def register(add: Any) -> None:
    p = add(
        "import-legacy", cmd_import_legacy,
        "bring the old production manager's metadata/production.db over: adopt its completed tasks, watch its queued "
        "and running Slurm jobs, keep its failure counts",
        EXAMPLE,
    )
    p.add_argument("name")
    p.add_argument("--db", type=Path, default=None, help="the old tool's production.db (default: metadata/production.db or production.db of the production directory)")
    p.add_argument("--dry-run", action="store_true", help="say what the import would do; write nothing")
    add_source(p)
    add_scheduler(p)
