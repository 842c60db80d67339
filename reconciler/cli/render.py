"""Text for people: one-line pass summaries, status, plans. Pure functions of values."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.core.plan import Plan
from reconciler.core.summary import shortfall
from reconciler.scheduler.script import array_spec


def emit(as_json: bool, data: Any, text: str) -> None:
    """``data`` as JSON with --json, else ``text``."""
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)


def counts_line(summary: Mapping[str, Any]) -> str:
    c = summary["counts"]
    parts = [f"{c['complete'] + c['adopted']}/{summary['total']} complete"]
    for k in ("adopted", "running", "queued", "staged", "waiting", "retrying", "failed", "blocked", "stale"):
        if c.get(k):
            parts.append(f"{c[k]} {k}")
    return ", ".join(parts)


def applied_line(applied: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(applied.items())) or "nothing to do"


def public(summary: Mapping[str, Any], verbose: bool) -> dict[str, Any]:
    """The summary without the per-task states unless asked for (40,000 lines otherwise)."""
    return dict(summary) if verbose else {k: v for k, v in summary.items() if k != "states"}


def status_text(name: str, summary: Mapping[str, Any], verbose: bool, pdir: Path, tag: str | None) -> str:
    lines = [f"production {name}: {counts_line(summary)}"]
    rate = summary["success_rate"]
    ending = " (done)" if summary["all_complete"] else f" (ended: {shortfall(summary)})" if summary["done"] else ""
    lines.append(f"  progress {summary['progress']:.1%}" + (f", success rate {rate:.1%}" if rate is not None else "") + ending)
    lines.append(f"  directory {pdir}" + (f"; desired state tag {tag}" if tag else ""))
    stages = [st for st in summary.get("stages") or () if st["name"]]
    if stages:  # a campaign: the chain, with each stage's counts
        lines.append("  stages:")
        lines += [f"    {st['name']:<14} {counts_line(st)}" for st in stages]
    pool = summary.get("pool")
    if pool:
        lines.append(
            f"  pool: {pool['workers_live']} worker(s) live, {pool['workers_started']} started; "
            f"{pool['node_hours']:.3f} node-hours: {pool['used']:.3f} used by tasks, {pool['wasted']:.3f} wasted (idle, margins)"
        )
        lines += [f"    {st:<14} {u['used']:.3f} used, {u['wasted']:.3f} wasted" for st, u in pool["stages"].items() if st]
    lines += _efficiency_text(summary.get("efficiency") or {}, [st["name"] for st in stages])
    lines += _causes_text(summary.get("causes", []), verbose)
    if summary["failures"]:
        lines.append("  failures:")
        for f in summary["failures"] if verbose else summary["failures"][:20]:
            lines.append(f"    {f['key']:<20} {f['state']:<8} {f['failures']} failure(s): {f['reason']}  log: {f['log'] or '-'}")
        if not verbose and len(summary["failures"]) > 20:
            lines.append(f"    ... {len(summary['failures']) - 20} more (--verbose)")
    if summary["retried"]:
        lines.append(f"  retried and then completed: {len(summary['retried'])}")
        for r in summary["retried"] if verbose else summary["retried"][:10]:
            lines.append(f"    {r['key']:<20} after {r['failures']} failure(s): {r['last_reason']}")
    stale = [k for k, s in summary["states"].items() if s == "stale"]
    if stale:
        lines.append(f"  stale (made with another configuration): {len(stale)}: {', '.join(stale[:10])}{' ...' if len(stale) > 10 else ''}")
    if summary["excluded"]:
        lines.append(f"  excluded: {len(summary['excluded'])}")
        for e in summary["excluded"]:
            lines.append(f"    {e['key']:<20} {e['reason']}")
    if verbose:
        lines.append("  tasks:")
        for key, st in summary["states"].items():
            lines.append(f"    {key:<20} {st}")
    return "\n".join(lines)


def _causes_text(causes: list[Mapping[str, Any]], verbose: bool) -> list[str]:
    """Failures grouped by cause, each with one example's log (the .err, where the command's
    own words are) and its last stderr lines: what to fix, before the list of tasks."""
    if not causes:
        return []
    lines = ["  failures by cause:"]
    for c in causes if verbose else causes[:10]:
        ended = " (gave up at once: retrying cannot fix it)" if c.get("retry_cannot_fix") else f" ({c['gave_up']} gave up)" if c.get("gave_up") else ""
        lines.append(f"    {c['tasks']} task(s): {c['cause']}{ended}")
        detail = f": {c['detail']}" if c.get("detail") and c["detail"] != c["cause"] else ""
        lines.append(f"      e.g. {c['example']}{detail}; log: {c['log'] or '-'}")
        lines += [f"      | {line}" for line in c.get("stderr", [])]
    if not verbose and len(causes) > 10:
        lines.append(f"    ... {len(causes) - 10} more cause(s) (--verbose)")
    return lines


def _efficiency_text(efficiency: Mapping[str, Any], chain: list[str]) -> list[str]:
    """Requested against used, per stage in chain order (one line for a one-stage production)."""
    def share(x: float) -> str:
        return f"{x:.0%}" if x >= 0.01 else "<1%"

    rows = []
    for st in [*chain, *sorted(set(efficiency) - set(chain))]:
        e = efficiency.get(st)
        if e is None:
            continue
        parts = [f"time {share(e['time_used_share'])} of {e['time_requested_hours']:.3g} h"] if e["time_used_share"] is not None else []
        if e["memory_used_share"] is not None:
            parts.append(f"memory {share(e['memory_used_share'])} of {e['memory_requested_gb']:.3g} GB (peak {e['memory_peak_gb']:.3g} GB per run)")
        if parts:
            rows.append((st, f"{'; '.join(parts)}, {e['runs']} completed run(s)"))
    if not rows:
        return []
    hint = "`reconcile advise` says what to ask"
    if len(rows) == 1 and not rows[0][0]:
        return [f"  requested vs used: {rows[0][1]}; {hint}"]
    return [f"  requested vs used ({hint}):", *(f"    {st:<14} {text}" for st, text in rows)]


def _short_array(idx: tuple[int, ...]) -> str:
    s = array_spec(idx) if idx else "-"
    return s if len(s) <= 40 else s[:37] + "..."


def plan_text(name: str, p: Plan) -> str:
    lines = [f"{name}: nothing to do"] if p.is_empty else []
    for a in p.actions:
        where = f" batch {a.batch:04d}" if a.batch is not None else ""
        where += f" array {_short_array(a.array_indices)}" if a.array_indices else ""
        where += f" submission {a.token}" if a.token else ""
        until = f" until {time.strftime('%H:%M:%S', time.localtime(a.until))}" if a.until else ""
        what = f"{len(a.keys):>6} task(s)" if a.keys or not a.array_indices else f"{len(a.array_indices):>4} worker(s)"
        where += f" expected {a.expect_s:.0f} s each, in the pool" if a.expect_s is not None else ""
        lines.append(f"{a.kind.value:<14} {what}{where}{until}: {a.message}")
    lines += [f"note: {n.message}" for n in p.notes]
    return "\n".join(lines)
