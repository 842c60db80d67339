"""`reconcile verify`: a pass that opens and validates every completed output again.

A task is complete by its marker, read from a directory listing; the bytes the wrapper
validated can still change afterwards (a truncated copy, an overwrite, bit rot). This verb
runs one ordinary pass (lease, observe, plan, apply, publish: session.run_pass) in which the
observation also deep-validates completed outputs; the planner moves the corrupt ones to
qa/corrupt/ and plans them again, and this prints what was checked and what was found.
Its own module: it is the one verb whose report is about verification, not about the plan.

What it says was moved is read from the plan, never from the verdicts: the planner leaves
a verdict on a task in flight (a rerun rewriting it) or still awaiting the scheduler's answer
for a later pass, and a report that said "moved" for those would be false.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.cli.loop import report_pass
from reconciler.cli.options import add_lease, add_publishing, add_scheduler, add_source, options
from reconciler.cli.render import applied_line, counts_line, public
from reconciler.core.plan import ActionKind, Plan
from reconciler.core.reasons import MESSAGES, Reason
from reconciler.errors import EXIT_CHANGES, EXIT_OK
from reconciler.outputs import CORRUPT_DIR, REASON_FILE

EXAMPLE = "reconcile verify demo                   # re-validate every completed output; exit 1 if any was moved aside"


@dataclass(frozen=True)
class Verdicts:
    """The pass's corruption verdicts, split by what the applied plan did with them."""

    moved: dict[str, str]  # key -> what failed: moved to qa/corrupt/ by this pass
    left: dict[str, str]  # found corrupt, not acted on (in flight, or no scheduler answer yet)


def split_verdicts(plan: Plan, corrupt: Mapping[str, str], applied: Mapping[str, int]) -> Verdicts:
    """Moved: the keys of the plan's QUARANTINE actions for ``output_corrupt``, if the plan was
    applied (``applied`` names the kinds apply did); every other verdict was left for later."""
    done = ActionKind.QUARANTINE.value in applied
    quarantined = {k for a in plan.actions if done and a.kind is ActionKind.QUARANTINE and a.reason is Reason.OUTPUT_CORRUPT for k in a.keys}
    moved = {k: why for k, why in corrupt.items() if k in quarantined}
    return Verdicts(moved, {k: why for k, why in corrupt.items() if k not in quarantined})


def verdict_lines(name: str, v: Verdicts) -> list[str]:
    """One line per verdict: where it went, or that a later pass verifies it again."""
    lines = [f"{name}: corrupt {k}: output failed verification: {why} (moved to {_aside(k)}, see {REASON_FILE})" for k, why in sorted(v.moved.items())]
    lines += [f"{name}: found corrupt {k}: output failed verification: {why} (left for a later pass: in flight or awaiting the scheduler's answer; nothing moved)" for k, why in sorted(v.left.items())]
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    """Deep-verify completed tasks (all, or the keys given); corrupt ones go aside and run again.

    Exit 0 when nothing was moved, 1 when some corrupt outputs were moved aside and planned
    again (like fsck, "errors found and corrected"), 2 for a key the production lacks. A
    verdict the planner left for a later pass is reported, but corrected nothing yet.
    """
    keys = frozenset(args.keys)
    r = report_pass(options(args), args.name, verify=keys or "all")  # the pass `once` runs, and says what it did the same way
    res = r.result
    v = split_verdicts(res.plan, res.corrupt, res.applied)
    asked = f" of the {len(keys)} task(s) named" if keys else ""
    skipped = sorted(keys - set(res.verified)) if keys else []
    if args.json:
        doc: dict[str, Any] = {
            "production": r.name,
            "applied": res.applied,
            "summary": public(res.summary, False),
            "verified": len(res.verified),
            "corrupt": [{"key": k, "problem": why, "moved_to": _aside(k) if k in v.moved else None} for k, why in sorted(res.corrupt.items())],
            "not_complete": skipped,
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        later = f" ({len(v.moved)} moved, {len(v.left)} left for a later pass)" if v.left else ""
        print(f"{args.name}: verified {len(res.verified)} completed task(s){asked}: {len(res.verified) - len(res.corrupt)} sound, {len(res.corrupt)} corrupt{later}")
        for line in verdict_lines(args.name, v):
            print(line)
        if skipped:
            print(f"{args.name}: not verified, not complete: {', '.join(skipped[:10])}" + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""))
        if v.moved:
            print(f"{args.name}: {MESSAGES[Reason.OUTPUT_CORRUPT]}", file=sys.stderr)
        print(f"{args.name}: {applied_line(res.applied)} | {counts_line(res.summary)}")
    return EXIT_CHANGES if v.moved else EXIT_OK


def _aside(key: str) -> str:
    return f"{CORRUPT_DIR}/{key.replace('/', '__')}/"


def register(add: Any) -> None:
    p = add("verify", cmd_verify, "open and validate completed outputs again (hdf5, sha256); move corrupt ones to qa/corrupt/ and rerun them", EXAMPLE)
    p.add_argument("name")
    p.add_argument("keys", nargs="*", metavar="KEY", help="verify only these tasks (e.g. r0004/z0.500); default: every completed task")
    add_source(p)
    add_scheduler(p)
    add_lease(p)
    add_publishing(p)
