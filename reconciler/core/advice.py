"""Right-sizing advice: what a stage should ask for, read from its own runs.

A request too small kills tasks (each retry is allocation spent again); a request too large is
charged where sites charge by request and waits longer for backfill. The runs this production
already made say how much its tasks use, but not all of them say it fully: a run killed for
want of memory or time shows only that it needed *more* than it was given. Counting such a run
as a sample would teach that the request that killed it was enough; dropping it would hide the
largest tasks, the very ones that set a high quantile. So each axis (run time, peak memory) is
estimated as right-censored data, with the Kaplan-Meier product-limit estimator: completed
runs are samples, killed runs are lower bounds.

The recommendation is the chosen quantile plus a margin, rounded up to what a production file
says (0.1 GB, 4 decimals of an hour), never below a request that already failed plus the margin
(asking just what failed would fail again), and capped at
the site's ceiling. When the quantile lies beyond every sample (the largest runs were all
killed), it is not known: advice then says "at least" the largest bound plus the margin, and
flags it, rather than inventing a number.

Pure, standard library only. ``run_of`` is the one rule for what an ended attempt tells
(a sample, a lower bound, nothing); the rendering is ``reconciler.cli.advice_text``'s.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from reconciler.core.sizing import Growth, Request, Short, Usage, duration, gb
from reconciler.core.states import SchedState

REPORTED = (0.5, 0.95, 0.99)
"""The quantiles every advice shows, whatever the chosen one."""
UNCAPPED = Growth()
"""No ceiling known (advise's default): nothing is capped."""


@dataclass(frozen=True, slots=True)
class Run:
    """One attempt that ended, as advice reads it."""

    elapsed_s: float | None
    max_rss_mb: float | None
    succeeded: bool  # completed with its outputs certified: a sample on both axes
    short: Short | None  # failed for want of memory or time: a lower bound (censored), not a sample
    request: Request | None  # what it asked for (None: unknown, recorded before requests were)
    task: str = ""  # its task's key: a task is one observation, however many attempts it took ("": a task of its own)


def run_of(state: SchedState, counted_failure: bool, short: Short | None, usage: Usage, request: Request | None, task: str = "") -> Run:
    """What one ended attempt tells: completed with its outputs certified (its failure not
    counted: COMPLETED without a marker is a failure) is a sample; a counted failure that ran
    short of memory or time (``short``: what core.sizing.shortfall read when it was counted,
    the rule its retry was sized by) is a lower bound; anything else, nothing."""
    succeeded = state is SchedState.COMPLETED and not counted_failure
    return Run(usage.elapsed_s, usage.max_rss_mb, succeeded, short if counted_failure else None, request, task)


@dataclass(frozen=True, slots=True)
class Estimate:
    """A quantile: its value (None: no data at all), or with ``at_least`` only a lower bound."""

    value: float | None
    at_least: bool = False

    def describe(self, unit: str) -> str:
        """``12 min``, ``≥ 16 GB``, ``-``; ``unit`` is ``"s"`` or ``"MB"``."""
        if self.value is None:
            return "-"
        text = duration(self.value) if unit == "s" else gb(self.value)
        return f"≥ {text}" if self.at_least else text

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "at_least": self.at_least}


def quantile(samples: Sequence[float], bounds: Sequence[float], q: float) -> Estimate:
    """The ``q`` quantile of a distribution seen as ``samples`` and right-censored ``bounds``.

    Kaplan-Meier: at each distinct sample value t, the survival S falls by the share of the
    values still at risk (those >= t, bounds included) that end at t; a bound equal to a sample
    is still at risk there (samples first, the usual convention). The quantile is the smallest
    sample t with F(t) = 1 - S(t) >= q; without bounds this is the plain empirical quantile
    ("inverted CDF"). When F never reaches q the mass above is unknown: the largest bound is
    returned, flagged ``at_least``.

    Until the first bound leaves the risk set S is the exact share still at risk, compared with
    q as written (0.9 is 9/10), so a quantile never moves by a rounding error (0.99 of 100 runs is
    the 99th, not the 100th); after it, a float product (``_EPS``).
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile {q} is not in (0, 1]")
    return _product_limit(samples, bounds, q)


def _product_limit(samples: Sequence[float], bounds: Sequence[float], q: float) -> Estimate:
    if not samples and not bounds:
        return Estimate(None)
    ends, censored = Counter(samples), Counter(bounds)
    at_risk = len(samples) + len(bounds)
    exact_q = Fraction(repr(q))  # 0.9 is nine tenths, as a person means it, not its binary value (a hair above)
    qa, qb = exact_q.numerator, exact_q.denominator
    survival = 1.0  # S, once a bound has left the risk set (before: exactly at_risk / n)
    exact = True
    n = at_risk
    for t in sorted(ends.keys() | censored.keys()):
        d = ends.get(t, 0)
        if d:
            if exact:  # no bound below t yet: F = 1 - (at_risk - d) / n, compared exactly
                if (n - at_risk + d) * qb >= qa * n:
                    return Estimate(t)
                survival = (at_risk - d) / n
            else:
                survival *= (at_risk - d) / at_risk
                if 1.0 - survival >= q - _EPS:
                    return Estimate(t)
        c = censored.get(t, 0)
        exact = exact and not c
        at_risk -= d + c
    return Estimate(max(bounds) if bounds else max(samples), at_least=bool(bounds))


_EPS = 1e-12
"""Once a bound has left the risk set, S is a product of ratios kept as a float (exact fractions
grow without limit: 40,000 runs took seconds); this absorbs its rounding at the comparison."""


@dataclass(frozen=True, slots=True)
class Axis:
    """One resource of one stage (run time in seconds, or peak memory in MB), as estimated."""

    samples: int
    bounds: int
    largest_bound: float | None  # the most a killed run is known to have needed
    p50: Estimate
    p95: Estimate
    p99: Estimate
    chosen: Estimate  # at the advice's quantile

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples, "lower_bounds": self.bounds, "largest_bound": self.largest_bound,
            "p50": self.p50.to_json(), "p95": self.p95.to_json(), "p99": self.p99.to_json(), "chosen": self.chosen.to_json(),
        }


def _axis(samples: Sequence[float], bounds: Sequence[float], q: float) -> Axis:
    p50, p95, p99 = (_product_limit(samples, bounds, p) for p in REPORTED)
    return Axis(len(samples), len(bounds), max(bounds) if bounds else None, p50, p95, p99, _product_limit(samples, bounds, q))


@dataclass(frozen=True, slots=True)
class StageAdvice:
    """What one stage's runs say about its request, and what it should ask instead.

    Node-hours: ``lost`` is the run time of the attempts the current request killed (out of
    memory, out of time); ``unused`` is walltime the completed runs held but did not use
    (the current timeout minus their run time: what backfill sees and what sites that charge
    by request charge), and ``unused_advised`` the same had the recommended timeout been
    asked. A pool stage's tasks hold no walltime of their own (its workers do, and
    core.pool.usage counts their waste): its unused figures are None.
    """

    stage: str
    runs: int
    completed: int
    out_of_memory: int
    timed_out: int
    ignored: int  # failed for another reason (node failure, exit code, cancelled): no information on size
    quantile: float
    margin: float
    pool: bool
    time: Axis
    memory: Axis
    current: Request
    timeout_hours: float | None
    timeout_at_least: bool
    timeout_capped: bool
    memory_gb: float | None
    memory_at_least: bool
    memory_capped: bool
    lost_node_hours: float
    unused_node_hours: float | None
    unused_node_hours_advised: float | None

    def to_json(self) -> dict[str, Any]:
        def hours(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "stage": self.stage,
            "runs": self.runs,
            "counts": {
                "completed": self.completed, "out_of_memory": self.out_of_memory, "timed_out": self.timed_out, "ignored": self.ignored,
                "time_samples": self.time.samples, "time_lower_bounds": self.time.bounds,
                "memory_samples": self.memory.samples, "memory_lower_bounds": self.memory.bounds,
            },
            "method": {"quantile": self.quantile, "margin": self.margin, "estimator": "kaplan-meier"},
            "pool": self.pool,
            "time_s": self.time.to_json(),
            "memory_mb": self.memory.to_json(),
            "current": {
                "timeout_hours": self.current.time_s / 3600.0,
                "memory_gb": None if self.current.memory_mb is None else self.current.memory_mb / 1024.0,
            },
            "recommended": {
                "timeout_hours": self.timeout_hours, "timeout_at_least": self.timeout_at_least, "timeout_capped": self.timeout_capped,
                "memory_gb": self.memory_gb, "memory_at_least": self.memory_at_least, "memory_capped": self.memory_capped,
            },
            "node_hours": {
                "lost": hours(self.lost_node_hours),
                "unused": hours(self.unused_node_hours),
                "unused_advised": hours(self.unused_node_hours_advised),
            },
        }


def advise(
    stage: str, runs: Sequence[Run], current: Request, *, quantile: float = 0.99, margin: float = 0.2,
    nodes: int = 1, growth: Growth = UNCAPPED, pool: bool = False,
) -> StageAdvice:
    """The advice for one stage from its ended attempts (see the module docstring).

    ``current`` is the stage's request now; ``nodes`` the nodes each task holds (node-hours);
    ``growth`` carries the site's ceilings (node memory, partition time limit); ``pool``: the
    stage runs in pool mode, where memory is the worker's and gets no advice.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile {quantile} is not in (0, 1]")
    if margin < 0.0:
        raise ValueError(f"margin {margin} is negative")
    if nodes < 1:
        raise ValueError(f"nodes {nodes} is below 1")
    t_samples: list[float] = []
    t_bounds: list[float] = []
    m_samples: list[float] = []
    m_bounds: list[float] = []
    completed = oom = timeout = ignored = 0
    lost_s = 0.0
    ran: list[float] = []  # completed runs' elapsed times
    by_task: dict[str, list[Run]] = {}
    for i, run in enumerate(runs):
        by_task.setdefault(run.task or f"#{i}", []).append(run)
        if run.succeeded:
            completed += 1
            if run.elapsed_s is not None:
                ran.append(run.elapsed_s)
        elif run.short is not None:
            oom += run.short is Short.MEMORY
            timeout += run.short is Short.TIME
            lost_s += run.elapsed_s or 0.0
        else:
            ignored += 1
    for attempts in by_task.values():  # one observation per task: a task that ran out, then completed, is its success
        done = [r for r in attempts if r.succeeded]
        t_bound = m_bound = None
        for r in attempts:
            asked = r.request
            if r.short is Short.MEMORY:
                m_bound = _larger(m_bound, _larger(r.max_rss_mb, asked.memory_mb if asked else None))
                t_bound = _larger(t_bound, r.elapsed_s)
            elif r.short is Short.TIME:
                t_bound = _larger(t_bound, _larger(r.elapsed_s, asked.time_s if asked else None))
                m_bound = _larger(m_bound, r.max_rss_mb)
        last = done[-1] if done else None  # its success is a sample where measured; where not, its bound still holds
        _add(t_samples if last is not None and last.elapsed_s is not None else t_bounds, last.elapsed_s if last is not None and last.elapsed_s is not None else t_bound)
        _add(m_samples if last is not None and last.max_rss_mb is not None else m_bounds, last.max_rss_mb if last is not None and last.max_rss_mb is not None else m_bound)
    time = _axis(t_samples, t_bounds, quantile)
    memory = _axis(m_samples, m_bounds, quantile)
    hours, hours_least, hours_capped = _timeout(time, margin, current.time_s, growth.max_time_s)
    mem: float | None = None
    mem_least = mem_capped = False
    if not pool:
        mem, mem_least, mem_capped = _memory(memory, margin, current.memory_mb, growth.node_memory_mb)
    unused = advised = None
    if not pool:
        unused = sum(max(0.0, current.time_s - e) for e in ran) * nodes / 3600.0
        if hours is not None:
            advised = sum(max(0.0, hours * 3600.0 - e) for e in ran) * nodes / 3600.0
    return StageAdvice(
        stage=stage, runs=len(runs), completed=completed, out_of_memory=oom, timed_out=timeout, ignored=ignored,
        quantile=quantile, margin=margin, pool=pool, time=time, memory=memory, current=current,
        timeout_hours=hours, timeout_at_least=hours_least, timeout_capped=hours_capped,
        memory_gb=mem, memory_at_least=mem_least, memory_capped=mem_capped,
        lost_node_hours=lost_s * nodes / 3600.0, unused_node_hours=unused, unused_node_hours_advised=advised,
    )


def _add(values: list[float], value: float | None) -> None:
    if value is not None:
        values.append(value)


def _larger(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _target(axis: Axis, margin: float, current: float | None) -> tuple[float, bool] | None:
    """The chosen quantile plus the margin, never below the largest bound plus the margin (a
    request that already failed, plus what any estimate gets: asking just that would fail
    again); ``at_least`` when a bound set it. A lower bound never lowers the ``current``
    request: it says how much more is needed, not that less would do (runs killed early for
    memory say little of their run time)."""
    est = axis.chosen
    if est.value is None:
        return None
    value, at_least = est.value * (1.0 + margin), est.at_least
    floor = axis.largest_bound * (1.0 + margin) if axis.largest_bound is not None else None
    if floor is not None and value < floor:
        value, at_least = floor, True
    if at_least and current is not None:
        value = max(value, current)
    return value, at_least


def _up(x: float, digits: int) -> float:
    """``x`` rounded up to ``digits`` decimals, blind to float noise (24.000000000000004 is 24)."""
    scale = 10**digits
    return math.ceil(round(x * scale, 6)) / scale


def _down(x: float, digits: int) -> float:
    scale = 10**digits
    return math.floor(round(x * scale, 6)) / scale


def _timeout(axis: Axis, margin: float, current_s: float, ceiling_s: float | None) -> tuple[float | None, bool, bool]:
    """Hours (4 decimals, up from whole seconds, at least one second), lower bound?, capped?"""
    target = _target(axis, margin, current_s)
    if target is None:
        return None, False, False
    seconds = max(1, math.ceil(round(target[0], 6)))
    hours = _up(seconds / 3600.0, 4)
    if ceiling_s is not None and hours * 3600.0 > ceiling_s:
        return max(_down(ceiling_s / 3600.0, 4), 0.0001), target[1], True
    return hours, target[1], False


def _memory(axis: Axis, margin: float, current_mb: float | None, ceiling_mb: float | None) -> tuple[float | None, bool, bool]:
    """GB (up to 0.1 GB, at least 0.1), lower bound?, capped?"""
    target = _target(axis, margin, current_mb)
    if target is None:
        return None, False, False
    memory = max(0.1, _up(target[0] / 1024.0, 1))
    if ceiling_mb is not None and memory * 1024.0 > ceiling_mb:
        return max(_down(ceiling_mb / 1024.0, 1), 0.1), target[1], True
    return memory, target[1], False
