"""A production's run history, read from its ledger: every attempt that ended, with what it
asked for and what it used (ledger v5), for `reconcile advise` and the efficiency status shows.

A reader, like ``workers.py``: it decides nothing. Which runs are samples and which are lower
bounds is ``core.advice.run_of``'s rule; requested against used is ``core.advice.efficiency``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.core import causes
from reconciler.core.advice import Run, run_of
from reconciler.core.sizing import Request, Usage
from reconciler.core.states import SchedState
from reconciler.ledger import Ledger

_ENDED = (
    "SELECT a.key, a.sched_state, a.failure_recorded, a.exit_code, a.cause, a.start, a.end, a.max_rss_mb, a.cpu_s, s.mem_mb, s.time_s "
    "FROM attempts a JOIN submissions s ON s.token = a.token "
    "WHERE s.state != 'abandoned' AND a.sched_state IS NOT NULL AND a.sched_state NOT IN ('PENDING', 'RUNNING')"
)


@dataclass(frozen=True, slots=True)
class Ended:
    """One attempt that ended, as the ledger journaled it."""

    key: str
    run: Run
    cpu_s: float | None


def ended(ledger: Ledger) -> list[Ended]:
    """Every attempt of the production that ended (abandoned submissions never ran: left out)."""
    out: list[Ended] = []
    for key, state, counted, code, cause, start, end, rss, cpu, mem, time_s in ledger.db.execute(_ENDED):
        elapsed = end - start if end is not None and start is not None else None
        request = None if time_s is None else Request(mem, time_s)
        usage = Usage(elapsed, rss, cpu)
        run = run_of(SchedState(state), bool(counted), code, causes.loads(cause), usage, request)
        out.append(Ended(key, run, cpu))
    return out


def by_stage(runs: list[Ended], stage_of: Mapping[str, str]) -> dict[str, list[Ended]]:
    """The runs of each stage (tasks no longer in the production are left out)."""
    out: dict[str, list[Ended]] = {}
    for r in runs:
        stage = stage_of.get(r.key)
        if stage is not None:
            out.setdefault(stage, []).append(r)
    return out
