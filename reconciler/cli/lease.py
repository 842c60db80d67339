"""`reconcile lease NAME [--steal]`: who holds a production, and taking it from a holder that
is gone (a login node that died without the lease going stale yet, a hung loop)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from reconciler.cli.options import add_lease, add_source, options
from reconciler.cli.render import emit
from reconciler.errors import EXIT_OK
from reconciler.session import lease_of

EXAMPLE = "reconcile lease demo            # who holds it; --steal takes it from a holder that is gone"


def cmd_lease(args: argparse.Namespace) -> int:
    lease = lease_of(options(args), args.name)
    if args.steal:
        before = lease.info()
        lease.acquire(steal=True)
        taken = lease.took_over or "nobody (it was free)"
        lease.release()  # released: the next loop takes it at once; the deposed holder stops acting
        print(f"{args.name}: lease taken from {taken}; released for the next `reconcile watch {args.name}` to hold", file=sys.stderr)
        if before.holder is not None and before.state == "held":
            print(f"{args.name}: the holder was alive by its heartbeat; if it still runs, it stops acting at its next check", file=sys.stderr)
    info = lease.info()
    h = info.holder
    data: dict[str, Any] = {
        "production": args.name, "directory": str(info.directory), "state": info.state,
        "holder": h.to_json() if h else None, "last_renewal_age_s": info.beat_age_s,
    }
    if h is None:
        text = f"{args.name}: the lease in {info.directory} is free (no reconciler has held it)"
    else:
        age = f"last renewed {info.beat_age_s:.0f} s ago" if info.beat_age_s is not None else "never renewed"
        text = (
            f"{args.name}: the lease in {info.directory}: {info.state}\n"
            f"  holder {h.describe()}, boot id {h.boot_id or '?'}\n"
            f"  {age} (file server's clock); ttl {h.ttl_s:.0f} s"
            + (f"\n  stolen from {h.stolen_from}" if h.stolen_from else "")
        )
    emit(args.json, data, text)
    return EXIT_OK


def register(add: Any) -> None:
    p = add("lease", cmd_lease, "show who holds a production's lease; --steal takes it from a holder that is gone", EXAMPLE)
    p.add_argument("name")
    p.add_argument("--steal", action="store_true", help="take the lease now, whoever holds it (recorded in its claim file and lease.log)")
    add_source(p)
    add_lease(p)
