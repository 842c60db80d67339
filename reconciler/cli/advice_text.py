"""Advice as people read it: a table per stage for a terminal, markdown for a pull request."""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.core.advice import StageAdvice


def _label(stage: str) -> str:
    return stage or "(task)"


def _rows(a: StageAdvice) -> list[tuple[str, str, str, str, str, str]]:
    """(axis, p50, p95, p99, current, recommended) as people read them."""
    cur_h = a.current.time_s / 3600.0
    rec_t = "-" if a.timeout_hours is None else _flagged(f"{a.timeout_hours:g} h", a.timeout_at_least, a.timeout_capped)
    cur_m = "site default" if a.current.memory_mb is None else f"{a.current.memory_mb / 1024.0:g} GB"
    if a.pool:
        rec_m = "(pool: the worker's)"
    else:
        rec_m = "-" if a.memory_gb is None else _flagged(f"{a.memory_gb:g} GB", a.memory_at_least, a.memory_capped)
    return [
        ("time", a.time.p50.describe("s"), a.time.p95.describe("s"), a.time.p99.describe("s"), f"{cur_h:g} h", rec_t),
        ("peak memory", a.memory.p50.describe("MB"), a.memory.p95.describe("MB"), a.memory.p99.describe("MB"), cur_m, rec_m),
    ]


def _flagged(text: str, at_least: bool, capped: bool) -> str:
    return ("≥ " if at_least else "") + text + (" (capped)" if capped else "")


def _runs_line(a: StageAdvice) -> str:
    return (
        f"{a.runs} runs: {a.completed} completed, {a.out_of_memory} out of memory, {a.timed_out} out of time "
        f"(lower bounds), {a.ignored} other failures ignored"
    )


def _waste_line(a: StageAdvice) -> str:
    text = f"node-hours: {a.lost_node_hours:.2f} lost to runs the request killed"
    if a.unused_node_hours is not None:
        text += f"; {a.unused_node_hours:.2f} requested but unused by completed runs"
        if a.unused_node_hours_advised is not None:
            text += f" ({a.unused_node_hours_advised:.2f} with the recommended timeout)"
    return text


def _head(a: StageAdvice) -> str:
    return f"p{a.quantile * 100:g} + {a.margin * 100:g}%"


def render_text(advice: Sequence[StageAdvice]) -> str:
    """A table per stage, for a terminal; ``≥``: a lower bound (the runs that set it were killed)."""
    out: list[str] = []
    for a in advice:
        rows = [("", "p50", "p95", "p99", "current", f"recommended ({_head(a)})"), *_rows(a)]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        out.append(f"stage {_label(a.stage)}: {_runs_line(a)}")
        out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[5] for r in rows]
        out.append("  " + _waste_line(a))
        out.append("")
    return "\n".join(out)


def render_markdown(advice: Sequence[StageAdvice]) -> str:
    """The same for a pull request's description, with a sentence on the method."""
    if not advice:
        return "No runs to advise on.\n"
    first = advice[0]
    out = [
        f"Resource advice from this production's own runs: each recommendation is the p{first.quantile * 100:g} "
        f"of the stage's run time and peak memory plus a {first.margin * 100:g}% margin, rounded up, never below "
        "a request that already failed plus the margin, and capped at the site's limits. The quantiles are Kaplan-Meier "
        "estimates: runs killed for want of memory or time count as lower bounds, not as samples; "
        "other failures are ignored. `≥` marks a lower bound (the largest runs were killed, so the "
        "quantile itself is not known yet).",
        "",
    ]
    for a in advice:
        out += [f"#### Stage `{_label(a.stage)}`", "", _runs_line(a) + ".", ""]
        out += ["| | p50 | p95 | p99 | current | recommended |", "|---|---|---|---|---|---|"]
        out += ["| " + " | ".join(r) + " |" for r in _rows(a)]
        out += ["", _waste_line(a)[0].upper() + _waste_line(a)[1:] + ".", ""]
    return "\n".join(out)
