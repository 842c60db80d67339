"""`reconcile doctor`: what the site gives the reconciler, one OK/WARN/FAIL line per check, each with its fix."""

from __future__ import annotations

import argparse
import json
from typing import Any

from reconciler.cli.options import add_scheduler, add_source, options
from reconciler.doctor.judge import Check, Level, exit_code
from reconciler.session import doctor

EXAMPLE = "reconcile doctor --machine nersc          # exit 1 when any check FAILs"


def render(checks: list[Check]) -> str:
    """One line per check, ``LEVEL  name: message``, and the fix indented under it."""
    lines = []
    for c in checks:
        lines.append(f"{c.level.value:<4}  {c.name}: {c.message}")
        if c.fix:
            lines.append(f"      fix: {c.fix}")
    counts = {lv: sum(c.level is lv for c in checks) for lv in Level}
    lines.append(", ".join(f"{n} {lv.value}" for lv, n in counts.items()))
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = doctor(options(args))
    if args.json:
        print(json.dumps({"checks": [c.as_dict() for c in checks], "exit": exit_code(checks)}, indent=2))
    else:
        print(render(checks))
    return exit_code(checks)


def register(add: Any) -> None:
    p = add("doctor", cmd_doctor, "check what this site gives the reconciler (Slurm, limits, filesystem, remote); exit 1 on FAIL", EXAMPLE)
    add_source(p)
    add_scheduler(p)
    p.add_argument("--status-branch", default=options(argparse.Namespace()).status_branch, help="results branch whose remote is checked")
