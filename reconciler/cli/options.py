"""The command line's boundary: argparse arguments in, a typed ``session.Options`` out.

Nothing past this module sees an ``argparse.Namespace``: verbs turn it into ``Options`` (and
their own few flags) at once, so session, engine and adapters take typed values only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reconciler.session import Options

DEFAULT_STATUS_BRANCH = Options().status_branch


def add_source(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """Where desired state comes from: --repo, --ref, --machine, --allow-dirty, --set (and --json)."""
    p.add_argument("--repo", type=Path, default=None, help="git repository holding productions/ (default: the one around the current directory)")
    p.add_argument("--ref", default="HEAD", help="git ref to read desired state from (default: HEAD)")
    p.add_argument("--machine", default=None, help="machine defaults to use (default: $RECONCILER_MACHINE or 'local')")
    p.add_argument("--allow-dirty", action="store_true", help="use uncommitted changes of the working tree (development only)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value, e.g. --set resources.memory_gb=64 (highest precedence)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")


def add_scheduler(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", choices=["local", "slurm", "pyslurm", "auto"], default=None, help="override the machine's scheduler backend")


MIN_LEASE_TTL_S = 2.0


def _lease_ttl(text: str) -> float:
    """--lease-ttl: a TTL too short to renew in (or zero) would let two loops take the lease
    from each other every pass."""
    try:
        ttl = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not ttl >= MIN_LEASE_TTL_S:
        raise argparse.ArgumentTypeError(f"{text} s is too short: at least {MIN_LEASE_TTL_S:.0f} s (the default is {Options().lease_ttl:.0f})")
    return ttl


def add_lease(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lease-ttl", type=_lease_ttl, default=Options().lease_ttl, metavar="SECONDS",
        help="how long after this reconciler's last renewal another may take the production over "
        f"(default {Options().lease_ttl:.0f}; renewed every third of it)",
    )


def add_publishing(p: argparse.ArgumentParser) -> None:
    """Where status goes: the results branch, and a remote to push it to."""
    p.add_argument("--status-branch", default=DEFAULT_STATUS_BRANCH, help=f"results branch for status.json, history and STATUS.md (default {DEFAULT_STATUS_BRANCH})")
    p.add_argument("--no-status", action="store_true", help="do not commit status to the results branch")
    p.add_argument("--push", metavar="REMOTE", default=None, help="push the results branch to REMOTE after committing (never forced)")
    p.add_argument("--fetch", metavar="REMOTE", default=None, help="fetch REMOTE and fast-forward the checkout before reading desired state")


def options(args: argparse.Namespace) -> Options:
    """The typed options of a parsed command line (flags a verb lacks take their defaults)."""
    return Options(
        repo=getattr(args, "repo", None),
        ref=getattr(args, "ref", "HEAD"),
        machine=getattr(args, "machine", None),
        allow_dirty=bool(getattr(args, "allow_dirty", False)),
        overrides=tuple(getattr(args, "set", None) or ()),
        scheduler=getattr(args, "scheduler", None),
        status_branch=getattr(args, "status_branch", DEFAULT_STATUS_BRANCH),
        publish=hasattr(args, "no_status") and not args.no_status,
        push=getattr(args, "push", None),
        lease_ttl=float(getattr(args, "lease_ttl", Options().lease_ttl)),
    )
