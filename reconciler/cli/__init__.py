"""The `reconcile` command line: one module per family of verbs, each going through session.

Exit codes: 0 ok / nothing to do, 1 something to do (plan, diff), 2 invalid input,
3 another reconciler holds the lock, 4 transient scheduler/filesystem failure, 5 `watch
--until-done` ended with tasks that gave up or are stale.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from reconciler import __version__
from reconciler.cli import (
    advise,
    desired,
    doctor,
    gitops,
    initrepo,
    inspect,
    lease,
    legacy,
    loop,
    verify,
)
from reconciler.errors import EXIT_INVALID, ConfigError, ReconcilerError

Handler = Callable[[argparse.Namespace], int]
VERBS = (initrepo, desired, loop, verify, inspect, advise, legacy, lease, gitops, doctor)
"""Verb modules in the order `reconcile --help` lists them; a new verb goes in one of them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconcile",
        description="Make a SLURM cluster (or this machine) converge to the productions committed in git.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes: 0 ok, 1 changes pending (plan/diff), 2 invalid input, 3 another reconciler holds the lease, 4 transient failure, 5 ended incomplete (watch --until-done).",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, handler: Handler, help_: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=handler)
        return p

    for module in VERBS:
        module.register(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_INVALID
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        for p in exc.problems:
            print(str(p), file=sys.stderr)
        print(f"{len(exc.problems)} problem(s); nothing was changed.", file=sys.stderr)
        return exc.exit_code
    except ReconcilerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
