"""Verbs of the GitOps surface (diff, report), registered on the CLI parser.

They live apart from cli.py because they read git history and the results branch rather
than one production's desired state, and because ``report`` needs the optional matplotlib.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.errors import EXIT_OK, UsageError

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
    from reconciler import diff
    from reconciler.gitops import open_repo
    from reconciler.spec.load import machine_name

    repo = open_repo(args.repo)
    try:
        diffs = diff.diff_refs(repo, args.base, args.head, args.names, machine_name(args.machine))
    finally:
        repo.close()  # GitPython keeps cat-file helpers alive otherwise
    if args.json:
        print(json.dumps(diff.to_json(diffs, args.base, args.head), indent=2, sort_keys=True))
    elif args.format == "markdown":
        print(diff.render_markdown(diffs, args.base, args.head))
    else:
        print(diff.render_text(diffs, args.base, args.head))
    return diff.exit_code(diffs)


def load_report_inputs(repo_path: Path | None, name: str, branch: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(status.json, history lines) of production ``name`` from the results branch."""
    from reconciler.gitops import open_repo
    from reconciler.results.branch import read_branch_file
    from reconciler.results.document import parse_history
    from reconciler.results.layout import HISTORY_FILE, status_path
    from reconciler.spec.models import NAME_PATTERN

    if not re.match(NAME_PATTERN, name):
        raise UsageError(f"{name!r} is not a production name")
    repo = open_repo(repo_path)
    root = Path(repo.working_tree_dir or ".")
    repo.close()
    raw = read_branch_file(root, status_path(name), branch)
    if raw is None:
        raise UsageError(
            f"no status of production {name!r} on branch {branch!r}: a reconcile pass publishes it "
            f"(run `reconcile once {name}`), or pass --branch"
        )
    try:
        status = json.loads(raw)
    except ValueError:
        raise UsageError(f"{branch}:{status_path(name)} is not valid JSON") from None
    return status, parse_history(read_branch_file(root, status_path(name, HISTORY_FILE), branch))


def cmd_report(args: argparse.Namespace) -> int:
    """Draw the progress pictures of a production from its status on the results branch."""
    from reconciler.results.plots import write_plots

    status, history = load_report_inputs(args.repo, args.name, args.branch)
    if args.output:
        out = Path(args.output)
    else:
        from reconciler.cli import load_desired

        loaded, repo, _dirt = load_desired(args, args.name, read_only=True)
        repo.close()
        out = loaded.production_dir / "qa" / "summary_plots"
    written = write_plots(out, status, history)
    data = {"production": args.name, "branch": args.branch, "passes": len(history), "plots": {k: str(v) for k, v in written.items()}}
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print("\n".join(f"wrote {p}" for p in written.values()))
    return EXIT_OK


def register(add: Callable[..., Any], common: Callable[..., None]) -> None:
    """Add ``diff`` and ``report`` to the parser (``add`` and ``common`` come from cli.build_parser)."""
    from reconciler.results.branch import DEFAULT_BRANCH

    p = add("diff", cmd_diff, "what a change to desired state would do between two git refs (exit 1 if anything changes)")
    p.epilog = f"example:\n  {DIFF_EXAMPLE}"
    p.add_argument("base", help="git ref before the change, e.g. origin/main")
    p.add_argument("head", help="git ref after the change, e.g. HEAD")
    p.add_argument("names", nargs="*", metavar="NAME", help="productions to compare (default: all at either ref)")
    p.add_argument("--format", choices=("text", "markdown"), default="text", help="text for a terminal, markdown for a pull-request comment")
    p.add_argument("--json", action="store_true", help="machine-readable output with every task key")
    p.add_argument("--machine", default=None, help="machine defaults to use (default: $RECONCILER_MACHINE or 'local')")
    p.add_argument("--repo", type=Path, default=None, help="git repository (default: the one around the current directory)")

    p = add("report", cmd_report, "draw progress pictures of a production from its status on the results branch")
    p.epilog = f"example:\n  {REPORT_EXAMPLE}"
    p.add_argument("name")
    p.add_argument("--branch", default=DEFAULT_BRANCH, help=f"results branch to read status from (default: {DEFAULT_BRANCH})")
    p.add_argument("--output", type=Path, default=None, help="directory for the pictures (default: <production dir>/qa/summary_plots)")
    common(p)
