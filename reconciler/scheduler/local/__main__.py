"""``python -m reconciler.scheduler.local dispatch SPOOL SLOTS``: the dispatcher daemon.

How :meth:`LocalScheduler.ensure_dispatcher` starts it: a fresh interpreter, detached from
the reconciler that asked, so the tasks outlive it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reconciler.scheduler.local.dispatcher import dispatch


def main(argv: list[str] | None = None) -> int:
    """Run the dispatcher (exit 0 once idle), or print the usage (exit 2)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "dispatch":
        return dispatch(Path(args[1]), max(1, int(args[2])))
    print("usage: python -m reconciler.scheduler.local dispatch SPOOL SLOTS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
