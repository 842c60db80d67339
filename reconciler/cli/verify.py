"""`reconcile verify`: a pass that opens and validates every completed output again.

A task is complete by its marker, read from a directory listing; the bytes the wrapper
validated can still change afterwards (a truncated copy, an overwrite, bit rot). This verb
runs one ordinary pass (lease, observe, plan, apply, publish: session.run_pass) in which the
observation also deep-validates completed outputs; the planner moves the corrupt ones to
qa/corrupt/ and plans them again, and this prints what was checked and what was found.
Its own module: it is the one verb whose report is about verification, not about the plan.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from reconciler.cli.loop import _pass
from reconciler.cli.options import add_lease, add_publishing, add_scheduler, add_source, options
from reconciler.cli.render import applied_line, counts_line, public
from reconciler.core.reasons import MESSAGES, Reason
from reconciler.errors import EXIT_CHANGES, EXIT_OK
from reconciler.outputs import CORRUPT_DIR, REASON_FILE

EXAMPLE = "reconcile verify demo                   # re-validate every completed output; exit 1 if any was corrupt"


def cmd_verify(args: argparse.Namespace) -> int:
    """Deep-verify completed tasks (all, or the keys given); corrupt ones go aside and run again.

    Exit 0 when every output checked is sound, 1 when some were corrupt (moved aside and
    planned again: like fsck, "errors found and corrected"), 2 for a key the production lacks.
    """
    keys = frozenset(args.keys)
    r = _pass(options(args), args.name, verify=keys or "all")  # the pass `once` runs, and says what it did the same way
    res = r.result
    asked = f" of the {len(keys)} task(s) named" if keys else ""
    skipped = sorted(keys - set(res.verified)) if keys else []
    if args.json:
        doc: dict[str, Any] = {
            "production": r.name,
            "applied": res.applied,
            "summary": public(res.summary, False),
            "verified": len(res.verified),
            "corrupt": [{"key": k, "problem": why, "moved_to": _aside(k)} for k, why in sorted(res.corrupt.items())],
            "not_complete": skipped,
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"{args.name}: verified {len(res.verified)} completed task(s){asked}: {len(res.verified) - len(res.corrupt)} sound, {len(res.corrupt)} corrupt")
        for k, why in sorted(res.corrupt.items()):
            print(f"{args.name}: corrupt {k}: output failed verification: {why} (moved to {_aside(k)}, see {REASON_FILE})")
        if skipped:
            print(f"{args.name}: not verified, not complete: {', '.join(skipped[:10])}" + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""))
        if res.corrupt:
            print(f"{args.name}: {MESSAGES[Reason.OUTPUT_CORRUPT]}", file=sys.stderr)
        print(f"{args.name}: {applied_line(res.applied)} | {counts_line(res.summary)}")
    return EXIT_CHANGES if res.corrupt else EXIT_OK


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
