"""How the results branch stays small over months of passes: when to redraw, what history keeps.

A ``watch`` loop at a 5-minute interval commits to the results branch ~8,640 times a month,
and nothing on a git branch is ever forgotten: every blob a commit introduces is kept. The
status text is cheap (git stores a changed status.json or an appended history line as a
delta of a few hundred bytes once packed), but a PNG is compressed data that deltas
nothing, so redrawing three pictures every pass cost ~100 KB per commit (~0.9 GB a month).
The rules here keep the mean under ~12 KB per commit without losing what people read:

- **Pictures at most every ``PLOTS_EVERY_S``** (an hour), and at once whenever the
  production's *phase* changes (``phase``: running, failing, ended, done): the picture of
  the finish, or of the first task that gave up, is never an hour late. A pass that does
  not redraw keeps the pictures already on the branch and says when they were drawn
  (status.json ``plots_updated``). ``plots.py`` makes PNGs that are deterministic (no
  time in their metadata) and palette-quantized (~3x smaller), so a picture that did not
  change is the same blob and costs nothing.
- **History is compacted, never dropped.** ``history.jsonl`` keeps every pass of the last
  ``RECENT_S`` (a day), one line per hour (the hour's last pass, its actions summed,
  ``passes``: how many it stands for) up to ``HOURLY_S`` (90 days), and one per day
  before that. Compaction happens once per finished hour, so each commit changes the file by
  one appended line (plus, once an hour, a dozen lines folded into one): a small delta, and
  the file grows by ~24 lines a day for three months, then by one a day: bounded for any
  production people would still be running.

Pure functions of the documents and the time: the publisher passes the time of the pass,
so a simulation runs a month in minutes (``benchmarks/bench_results_branch.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

PLOTS_EVERY_S = 3600.0
"""Pictures are redrawn at most this often (seconds), unless the production's phase changes."""
RECENT_S = 86_400.0
"""history.jsonl keeps every pass this recent (seconds)."""
HOURLY_S = 90 * 86_400.0
"""Older passes are kept one per hour up to this age (seconds), then one per day."""


def phase(doc: Mapping[str, Any]) -> str:
    """The production's phase as pictures show it: ``done`` (every task complete), ``ended``
    (nothing left to do, some tasks gave up or are stale), ``failing`` (some gave up, others
    still go on) or ``running``."""
    counts = doc.get("counts") or {}
    bad = int(counts.get("failed", 0)) + int(counts.get("stale", 0))
    if doc.get("done"):
        return "ended" if bad else "done"
    return "failing" if int(counts.get("failed", 0)) else "running"


def _epoch(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def plots_due(prev: Mapping[str, Any] | None, doc: Mapping[str, Any], now: float, every: float = PLOTS_EVERY_S) -> bool:
    """Should this pass redraw the pictures? ``prev`` is the status.json on the branch (None
    when there is none). Yes when the branch has no pictures or does not say when they were
    drawn, when the phase changed, or when they are ``every`` seconds old."""
    if not prev or not prev.get("plots"):
        return True
    if phase(prev) != phase(doc):
        return True
    drawn = _epoch(prev.get("plots_updated"))
    return drawn is None or now - drawn >= every or now < drawn


def _t(line: Mapping[str, Any]) -> float | None:
    t = line.get("t")
    if isinstance(t, int | float) and not isinstance(t, bool):
        return float(t)
    return _epoch(line.get("time"))


def _merge(lines: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One line standing for ``lines`` (in time order): the last one's state, every action summed."""
    out = dict(lines[-1])
    actions: dict[str, int] = {}
    for line in lines:
        for k, v in (line.get("actions") or {}).items():
            if isinstance(v, int):
                actions[k] = actions.get(k, 0) + v
    out["actions"] = dict(sorted(actions.items()))
    out["passes"] = sum(int(line.get("passes", 1)) for line in lines)
    return out


def compact_history(lines: Sequence[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """History lines (oldest first) with old passes folded: every pass of the last
    ``RECENT_S``, one line per hour until ``HOURLY_S``, one per day before that.

    Only *finished* buckets are folded (an hour whose end is older than ``RECENT_S``), so
    a bucket is folded once, and a line already standing for a bucket is left as it is:
    compacting twice gives the same lines. Lines without a time are kept where they are.
    """
    out: list[dict[str, Any]] = []
    bucket: list[dict[str, Any]] = []
    key: tuple[float, float] | None = None

    def flush() -> None:
        if bucket:
            out.append(bucket[0] if len(bucket) == 1 else _merge(bucket))
            bucket.clear()

    for line in lines:
        t = _t(line)
        if t is None:
            flush()
            key = None
            out.append(line)
            continue
        age = now - t
        size = 86_400.0 if age > HOURLY_S else 3600.0
        start = t - t % size
        if start + size > now - RECENT_S:  # its bucket is not over yet: kept as it is
            flush()
            key = None
            out.append(line)
            continue
        if key != (start, size):
            flush()
            key = (start, size)
        bucket.append(line)
    flush()
    return out
