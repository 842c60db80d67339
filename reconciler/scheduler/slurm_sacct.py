"""sacct's output, read: one record per array task, with what the task used.

The pass reads accounting once anyway (:mod:`~reconciler.scheduler.slurm_query`); asking it
for ``ElapsedRaw``, ``MaxRSS`` and ``TotalCPU`` too costs no extra Slurm call, and is how the
planner learns what a task used (right-sizing, :mod:`reconciler.core.sizing`). MaxRSS is only
on the *step* lines (``5_6.batch``, ``5_6.extern``, ``5_6.0``), never on the task's own
allocation line, so sacct is read without ``--allocations`` and each task's step lines are
folded into its one record: steps contribute usage, never a task of their own.

Pure, like :mod:`~reconciler.scheduler.slurm_parse`, and tested on output captured from the
test cluster (``tests/data/slurm``, see its README).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from reconciler.core.sizing import Usage
from reconciler.scheduler.slurm_parse import (
    SlurmRecord,
    make_record,
    parse_exit_code,
    parse_time,
    split_fields,
)

SACCT_FIELDS: tuple[str, ...] = (
    "JobID",
    "JobIDRaw",
    "State",
    "ExitCode",
    "Start",
    "End",
    "JobName",
    "ElapsedRaw",
    "MaxRSS",
    "TotalCPU",
    "Comment",
)
"""The ``sacct --format`` fields the backend asks for. Comment is last: it is free text and
may hold the separator, so the line is split at most ``len(fields) - 1`` times."""

_ALIASES = {"JobName": "Name", "Start": "StartTime", "End": "EndTime"}

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)$", re.IGNORECASE)
_MB_PER_UNIT = {"": 1.0 / 2**20, "K": 1.0 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2, "P": 1024.0**3}
"""Slurm's units are binary (K is KiB, M is MiB, like ``--mem``); a bare number is bytes (what
``sacct --noconvert`` prints; observed with 22.05)."""


def parse_size_mb(text: str | None) -> float | None:
    """sacct's MaxRSS (``425932K``, ``1.5G``, ``0``, empty) -> MiB; None when absent or unreadable.

    Unreadable is None rather than an error: a size is evidence for sizing, not for a task's
    state, and a new spelling must not cost the record it came with.
    """
    m = _SIZE_RE.match((text or "").strip())
    if not m:
        return None
    return float(m.group(1)) * _MB_PER_UNIT[m.group(2).upper()]


def parse_cpu_time(text: str | None) -> float | None:
    """sacct's TotalCPU (``00:01.939``, ``01:02:03``, ``2-01:02:03``) -> seconds; None when absent.

    sacct prints ``MM:SS.mmm`` under an hour, ``HH:MM:SS`` above, ``D-HH:MM:SS`` above a day.
    """
    t = (text or "").strip()
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        if not d.isdigit():
            return None
        days = int(d)
    parts = t.split(":")
    if not 1 <= len(parts) <= 3:
        return None
    try:
        *whole, seconds = parts
        values = [int(p) for p in whole]
        total = float(seconds)
    except ValueError:
        return None
    for v, scale in zip(reversed(values), (60, 3600), strict=False):
        total += v * scale
    return days * 86400 + total


def _raw_int(text: str | None) -> float | None:
    t = (text or "").strip()
    return float(t) if t.isdigit() else None


def task_usage(alloc: Mapping[str, str], steps: Iterable[Mapping[str, str]]) -> Usage | None:
    """What one task used, from its allocation line and its step lines.

    ``max_rss_mb``: the largest MaxRSS of its steps. Each step's is the peak of its own
    processes, and our tasks do their work in the batch step (the ``extern`` step holds
    nothing), so this is the task's peak; for a script that runs ``srun`` steps beside work
    of its own it is a lower bound. ``cpu_s``: the allocation's TotalCPU, which sacct
    sums over the steps, or that sum when the allocation's is empty. ``elapsed_s``:
    the allocation's ElapsedRaw. None when the line has none of them (a capture without
    these fields).
    """
    steps = list(steps)
    rss = [v for v in (parse_size_mb(r.get("MaxRSS")) for r in (alloc, *steps)) if v is not None]
    cpu = parse_cpu_time(alloc.get("TotalCPU"))
    if cpu is None:
        step_cpu = [v for v in (parse_cpu_time(r.get("TotalCPU")) for r in steps) if v is not None]
        cpu = sum(step_cpu) if step_cpu else None
    elapsed = _raw_int(alloc.get("ElapsedRaw"))
    if not rss and cpu is None and elapsed is None:
        return None
    return Usage(elapsed_s=elapsed, max_rss_mb=max(rss) if rss else None, cpu_s=cpu)


def parse_sacct(text: str, fields: Sequence[str] = SACCT_FIELDS) -> list[SlurmRecord]:
    """``sacct -P -n --format=<fields>`` output -> records, one per array task, with usage.

    The array task is read from JobID (``5_6``), never from JobIDRaw: the last task of an
    array keeps the array's own id as its raw id. A step line (``5_6.batch``) belongs to the
    task whose JobID is its own up to the dot, and only adds to that task's usage
    (:func:`task_usage`); a heterogeneous component (``7+0``) is never one of our tasks.
    With ``--duplicates`` a requeued task's runs share one JobID, so their steps would be
    pooled: the backend does not ask for duplicates. The text ExitCode is used because
    sacct's JSON exit codes are wrong in 22.05 (see tests/data/slurm/README.md).
    """
    names = [_ALIASES.get(f, f) for f in fields]
    allocations: list[tuple[str, dict[str, str]]] = []
    steps: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        row = split_fields(line, names)
        if row is None or "JobID" not in row:
            continue
        job_text = row["JobID"].strip()
        if "+" in job_text:
            continue
        task, dot, _step = job_text.partition(".")
        if dot:
            steps.setdefault(task, []).append(row)
        else:
            allocations.append((job_text, row))
    out: list[SlurmRecord] = []
    for job_text, row in allocations:
        code, sig = parse_exit_code(row.get("ExitCode"))
        try:
            out.append(
                make_record(
                    job_text,
                    raw_state=row.get("State", ""),
                    exit_code=code,
                    signal=sig,
                    start=parse_time(row.get("StartTime")),
                    end=parse_time(row.get("EndTime")),
                    name=row.get("Name", ""),
                    comment=row.get("Comment", ""),
                    usage=task_usage(row, steps.get(job_text, ())),
                )
            )
        except ValueError:
            continue  # an id we cannot read is not one of ours
    return out
