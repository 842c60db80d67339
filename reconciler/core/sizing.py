"""Right-sizing: what an attempt asked for and used, why it ran short, and what its retry asks.

A task killed for want of memory or time fails again if it is retried with the same request:
every such retry is allocation spent for nothing. So the planner reads why the latest failure
happened (``shortfall``) and asks more of the one thing that ran short (``retry_request``):
memory times ``memory_factor`` after out-of-memory, time times ``time_factor`` after a
timeout, each capped at what the site has (the node's memory, the partition's time limit).
Every other failure (a node failure, a preemption, an exit code) is retried with the same
request as the attempt that failed: more of anything would not have saved it.

Out of memory is what the scheduler says (Slurm's OUT_OF_MEMORY, where cgroups enforce
memory; or its step daemon's words in the task's stderr, ``Exceeded job memory limit``) or
what it shows: killed by SIGKILL with a peak at or above the request (Slurm's
``JobAcctGatherParams=OverMemoryKill``, where no cgroup does; the job then reads FAILED with
signal 9, and accounting may record the peak only after the pass that sees the end). A
timeout is the scheduler's TIMEOUT or the task wrapper's own (core.causes).

Pure, standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from reconciler.core.causes import Cause, CauseKind
from reconciler.core.states import SchedState

SIGKILL = 9
OOM_SHARE = 0.95
"""A SIGKILLed run whose sampled peak reached this share of its memory request was killed for
it: the accounting sampler sees the peak up to one interval late, so it may read a little low."""


@dataclass(frozen=True, slots=True)
class Usage:
    """What one attempt used, as the scheduler (sacct, or the local process's rusage) measured it."""

    elapsed_s: float | None = None
    max_rss_mb: float | None = None  # peak resident memory of its biggest step
    cpu_s: float | None = None  # user + system


@dataclass(frozen=True, slots=True)
class Request:
    """What one attempt asked for: memory (None: no --mem, the site's default) and its timeout
    (the wrapper's; Slurm's --time is this plus a grace, core never sees the grace)."""

    memory_mb: float | None
    time_s: float

    def describe(self) -> str:
        mem = f"{gb(self.memory_mb)} memory, " if self.memory_mb is not None else ""
        return f"{mem}{duration(self.time_s)}"


class Short(StrEnum):
    """What an attempt ran out of."""

    MEMORY = "memory"
    TIME = "time"


@dataclass(frozen=True, slots=True)
class Growth:
    """How a retry grows a request, and the site's ceilings (None: unknown, uncapped)."""

    memory_factor: float = 1.5
    time_factor: float = 1.5
    node_memory_mb: float | None = None
    max_time_s: float | None = None


MEMORY_WORDS = ("exceeded job memory limit", "exceeded memory limit", "oom-kill", "out of memory")
"""What Slurm writes into a task's stderr when it kills it for memory (OverMemoryKill; cgroups)."""


def shortfall(
    sched: SchedState | None, exit_code: int | None, cause: Cause | None, usage: Usage | None, request: Request | None,
    scheduler_said: tuple[str, ...] = (),
) -> Short | None:
    """What a failed attempt ran out of, if that is why it failed (see the module docstring).
    ``scheduler_said``: Slurm's own lines in its stderr (``slurmstepd: ... Exceeded job memory
    limit``), which say it when accounting has not measured the peak yet."""
    if sched is SchedState.OUT_OF_MEMORY:
        return Short.MEMORY
    if sched is SchedState.TIMEOUT or (cause is not None and cause.kind is CauseKind.TIMEOUT):
        return Short.TIME
    if sched is not SchedState.FAILED:  # cancelled, preempted, a node failure: killed, but not for its size
        return None
    if any(w in line.lower() for line in scheduler_said for w in MEMORY_WORDS):
        return Short.MEMORY
    killed = exit_code == 128 + SIGKILL or (cause is not None and cause.kind is CauseKind.SIGNAL and cause.detail == "SIGKILL")
    peak = usage.max_rss_mb if usage is not None else None
    limit = request.memory_mb if request is not None else None
    if killed and peak is not None and limit is not None and peak >= OOM_SHARE * limit:
        return Short.MEMORY
    return None


def retry_request(base: Request, last: Request | None, short: Short | None, peak_mb: float | None, growth: Growth) -> Request:
    """The request of a failed task's next attempt.

    The latest attempt's request (else the stage's) with the dimension that ran short grown by
    its factor, capped at the site's ceiling but never below what already failed; then never
    below the stage's current request (a production raised since is obeyed, not grown again).
    Out of memory with no memory asked grows from the peak seen, when there is one.
    """
    prev = last if last is not None else base
    mem, time_s = prev.memory_mb, prev.time_s
    if short is Short.MEMORY:
        start = mem if mem is not None else peak_mb
        if start is not None:
            mem = max(start, _cap(math.ceil(start * growth.memory_factor), growth.node_memory_mb))
    elif short is Short.TIME:
        time_s = max(time_s, _cap(time_s * growth.time_factor, growth.max_time_s))
    return Request(_larger(mem, base.memory_mb), max(time_s, base.time_s))


def at_ceiling(last: Request | None, short: Short | None, growth: Growth) -> bool:
    """A task ran short while asking the site's most (the node's memory, the partition's time
    limit): no retry can ask more, so retrying cannot fix it (core.planner gives it up at once).
    A factor of 1 is a choice to retry with the same request, not a ceiling."""
    if last is None or short is None:
        return False
    if short is Short.MEMORY:
        return growth.node_memory_mb is not None and last.memory_mb is not None and last.memory_mb >= growth.node_memory_mb
    return growth.max_time_s is not None and last.time_s >= growth.max_time_s


def _larger(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _cap(value: float, ceiling: float | None) -> float:
    return value if ceiling is None else min(value, ceiling)


def gb(mb: float | None) -> str:
    """Megabytes as people read them: ``24 GB``, ``1.5 GB``, ``300 MB``."""
    if mb is None:
        return "?"
    if mb < 1024:
        return f"{mb:.0f} MB"
    return f"{mb / 1024:.3g} GB"


def duration(seconds: float) -> str:
    """Seconds as people read them: ``40 s``, ``12 min``, ``2.5 h``."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def explain(new: Request, last: Request | None, short: Short | None, peak_mb: float | None) -> str:
    """The note of a retry that asks other than its stage: what it asks, and why (the plan's
    words: "with 24 GB memory: out of memory at 16 GB")."""
    if short is Short.MEMORY:
        was = last.memory_mb if last is not None and last.memory_mb is not None else peak_mb
        if last is not None and new.memory_mb == last.memory_mb:
            return f"with {gb(new.memory_mb)} memory again: out of memory at the node's memory"
        return f"with {gb(new.memory_mb)} memory: out of memory at {gb(was)}"
    if short is Short.TIME:
        if last is not None and new.time_s == last.time_s:
            return f"with {duration(new.time_s)} again: timed out at the partition's time limit"
        return f"with {duration(new.time_s)}: timed out at {duration(last.time_s) if last is not None else 'its timeout'}"
    return f"with {new.describe()}, as its last attempt"
