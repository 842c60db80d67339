"""A production's run history, read from its ledger: every attempt that ended, with what it
asked for and what it used (ledger v5), for `reconcile advise` and the efficiency status shows.

A reader, like ``workers.py``: it decides nothing. Which runs are samples and which are lower
bounds is ``core.advice.run_of``'s rule (with what each counted failure ran out of, as
journaled when it was counted: the rule its retry was sized by).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from reconciler.core.advice import Run, run_of
from reconciler.core.sizing import Request, Short, Usage
from reconciler.core.states import SchedState
from reconciler.ledger import Ledger

_ENDED = (
    "SELECT a.key, a.sched_state, a.failure_recorded, a.short, a.start, a.end, a.max_rss_mb, a.cpu_s, s.mem_mb, s.time_s "
    "FROM attempts a JOIN submissions s ON s.token = a.token "
    "WHERE s.state != 'abandoned' AND a.sched_state IS NOT NULL AND a.sched_state NOT IN ('PENDING', 'RUNNING') "
    "ORDER BY a.key, a.attempt"
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
    for key, state, counted, short, start, end, rss, cpu, mem, time_s in ledger.db.execute(_ENDED):
        elapsed = end - start if end is not None and start is not None else None
        request = None if time_s is None else Request(mem, time_s)
        run = run_of(SchedState(state), bool(counted), Short(short) if short else None, Usage(elapsed, rss, cpu), request, key)
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


_USED = (
    "SELECT MIN(a.key), COUNT(*), SUM(a.end - a.start), SUM(s.time_s), "
    "SUM(CASE WHEN a.max_rss_mb IS NOT NULL AND s.mem_mb IS NOT NULL THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN a.max_rss_mb IS NOT NULL AND s.mem_mb IS NOT NULL THEN a.max_rss_mb END), "
    "SUM(CASE WHEN a.max_rss_mb IS NOT NULL AND s.mem_mb IS NOT NULL THEN s.mem_mb END) "
    "FROM attempts a JOIN submissions s ON s.token = a.token "
    "WHERE a.sched_state = 'COMPLETED' AND a.failure_recorded = 0 AND a.start IS NOT NULL AND a.end IS NOT NULL "
    "AND s.time_s IS NOT NULL AND s.state != 'abandoned' GROUP BY s.token"
)
"""Completed runs (core.advice.run_of's samples) summed per submission, whose tasks share one
stage and one request: a status pass reads one row per submission, not one per attempt."""


@dataclass
class Efficiency:
    """Requested against used, over one stage's completed runs that recorded a request."""

    runs: int = 0
    time_requested_s: float = 0.0
    time_used_s: float = 0.0
    memory_runs: int = 0  # of those, with a memory request and a measured peak
    memory_requested_mb: float = 0.0
    memory_peak_mb: float = 0.0

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "runs": self.runs,
            "time_requested_hours": round(self.time_requested_s / 3600.0, 4),
            "time_used_hours": round(self.time_used_s / 3600.0, 4),
            "time_used_share": round(self.time_used_s / self.time_requested_s, 4) if self.time_requested_s else None,
            "memory_runs": self.memory_runs,
            "memory_requested_gb": round(self.memory_requested_mb / self.memory_runs / 1024.0, 3) if self.memory_runs else None,
            "memory_peak_gb": round(self.memory_peak_mb / self.memory_runs / 1024.0, 3) if self.memory_runs else None,
            "memory_used_share": round(self.memory_peak_mb / self.memory_requested_mb, 4) if self.memory_requested_mb else None,
        }


def efficiency(ledger: Ledger, stage_of: Callable[[str], str | None]) -> dict[str, Efficiency]:
    """Each stage's requested time and memory against what its completed runs used (means per
    run for memory: the peak a task reached against what it asked)."""
    out: dict[str, Efficiency] = {}
    for key, n, used, requested, mem_n, peak, mem_requested in ledger.db.execute(_USED):
        stage = stage_of(key)
        if stage is None:
            continue
        e = out.setdefault(stage, Efficiency())
        e.runs += n
        e.time_used_s += used or 0.0
        e.time_requested_s += requested or 0.0
        e.memory_runs += mem_n or 0
        e.memory_peak_mb += peak or 0.0
        e.memory_requested_mb += mem_requested or 0.0
    return out
