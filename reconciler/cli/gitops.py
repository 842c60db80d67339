"""Verbs over git history and the results branch: diff (what a change would do), report (pictures)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from reconciler import diff, gitops
from reconciler.cli.options import DEFAULT_STATUS_BRANCH, add_source, options
from reconciler.errors import EXIT_OK
from reconciler.session import load_desired, load_report_inputs

DIFF_EXAMPLE = (
    'reconcile diff origin/main HEAD                   # what merging this branch would do\n'
    '  reconcile diff main HEAD demo --format markdown  # a pull-request comment for one production\n'
    "exit codes: 0 no change, 1 changes, 2 invalid desired state at either ref"
)
REPORT_EXAMPLE = (
    "reconcile report demo                            # pictures into <production dir>/qa/summary_plots/\n"
    "  reconcile report demo --output /tmp/plots --branch reconciler/status"
)


def cmd_diff(args: argparse.Namespace) -> int:
    """Compare desired state at two refs; exit 1 when anything would change."""
    opts = options(args)
    repo = gitops.open_repo(opts.repo)
    try:
        diffs = diff.diff_refs(repo, args.base, args.head, args.names, opts.machine_name)
    finally:
        repo.close()  # GitPython keeps cat-file helpers alive otherwise
    if args.json:
        print(json.dumps(diff.to_json(diffs, args.base, args.head), indent=2, sort_keys=True))
    elif args.format == "markdown":
        print(diff.render_markdown(diffs, args.base, args.head))
    else:
        print(diff.render_text(diffs, args.base, args.head))
    return diff.exit_code(diffs)


def cmd_report(args: argparse.Namespace) -> int:
    """Draw the progress pictures of a production from its status on the results branch."""
    from reconciler.results.plots import write_plots  # matplotlib: only this verb pays for it

    opts = options(args)
    status, history = load_report_inputs(opts, args.name, args.branch)
    if args.output:
        out = Path(args.output)
    else:
        desired = load_desired(opts, args.name)
        desired.repo.close()
        out = desired.loaded.production_dir / "qa" / "summary_plots"
    written = write_plots(out, status, history)
    data = {"production": args.name, "branch": args.branch, "passes": len(history), "plots": {k: str(v) for k, v in written.items()}}
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print("\n".join(f"wrote {p}" for p in written.values()))
    return EXIT_OK


def register(add: Any) -> None:
    p = add("diff", cmd_diff, "what a change to desired state would do between two git refs (exit 1 if anything changes)", DIFF_EXAMPLE)
    p.add_argument("base", help="git ref before the change, e.g. origin/main")
    p.add_argument("head", help="git ref after the change, e.g. HEAD")
    p.add_argument("names", nargs="*", metavar="NAME", help="productions to compare (default: all at either ref)")
    p.add_argument("--format", choices=("text", "markdown"), default="text", help="text for a terminal, markdown for a pull-request comment")
    p.add_argument("--json", action="store_true", help="machine-readable output with every task key")
    p.add_argument("--machine", default=None, help="machine defaults to use (default: $RECONCILER_MACHINE or 'local')")
    p.add_argument("--repo", type=Path, default=None, help="git repository (default: the one around the current directory)")
    p = add("report", cmd_report, "draw progress pictures of a production from its status on the results branch", REPORT_EXAMPLE)
    p.add_argument("name")
    p.add_argument("--branch", default=DEFAULT_STATUS_BRANCH, help=f"results branch to read status from (default: {DEFAULT_STATUS_BRANCH})")
    p.add_argument("--output", type=Path, default=None, help="directory for the pictures (default: <production dir>/qa/summary_plots)")
    add_source(p)
