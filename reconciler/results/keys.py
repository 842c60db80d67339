"""Task keys on the results branch, factored into their parts, so that 80,000 keys cost bytes.

status.json is committed to the results branch every pass, and the branch keeps every
blob, so its per-task table must not spell out each key (80,020 keys of a campaign are
~2 MB). Keys are a product of axes minus exclusions (``spec.expand`` makes them so):

- a one-stage production's keys (``r0001/z0.500``) are one product in position order:
  ``{"grid": [[parts of position 0], ...], "holes": [...]}``, the form every status.json
  has had;
- a campaign's are one product per stage (``generate/r0001/z0.500`` ... ``covariance/z0.500``:
  the widths differ), and a stage whose downstream fans in by redshift is numbered
  redshift-major (``generate/r0000/z0.500``, ``generate/r0001/z0.500``, ...): a product
  nested in another order. Such keys are ``{"runs": [...]}``: consecutive runs of keys
  (one per stage), each a grid with its holes and ``order``, the nesting of its positions,
  outermost first (absent: position order), or, when a run is no product, its ``keys``.

Every encoding is checked by walking it against the keys it stands for, so it is lossless
whatever the keys look like; keys that are no product at all stay a plain ``{"keys": [...]}``.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Mapping, Sequence
from itertools import product
from operator import ne
from typing import Any

MAX_RUNS = 64
"""Runs at most (a campaign has a few stages); keys that split into more are listed plainly."""


def encode_keys(keys: Sequence[str]) -> dict[str, Any]:
    """``{"grid", "holes"}``, ``{"runs"}`` or ``{"keys"}`` (module docstring), the smallest that fits."""
    if not keys:
        return {"keys": []}
    whole = _encode_run(keys) if len({k.count("/") for k in keys}) == 1 else None  # a campaign's widths differ
    if whole is not None and "order" not in whole:
        return whole
    runs = [whole] if whole is not None else [_encode_run(seg) or {"keys": list(seg)} for seg in _segments(keys)]
    if len(runs) > MAX_RUNS or len(json.dumps(runs)) >= sum(len(k) + 4 for k in keys):
        return {"keys": list(keys)}  # no product, or too small a one to be worth it
    return {"runs": runs}


def task_keys(tasks: Mapping[str, Any]) -> list[str]:
    """The task keys of a ``tasks`` table, in task order (any encoding, old documents' too)."""
    if tasks.get("keys") is not None:
        return list(tasks["keys"])
    if tasks.get("runs") is not None:
        return [k for run in tasks["runs"] for k in _run_keys(run)]
    return _run_keys(tasks)


def _run_keys(run: Mapping[str, Any]) -> list[str]:
    if run.get("keys") is not None:
        return list(run["keys"])
    grid: list[list[str]] = run.get("grid") or []
    if not grid:
        return []
    holes = set(run.get("holes") or ())
    order: list[int] = run.get("order") or list(range(len(grid)))
    if order == list(range(len(grid))):
        return ["/".join(c) for pos, c in enumerate(product(*grid)) if pos not in holes]
    where = [order.index(p) for p in range(len(grid))]  # position -> its place in the nesting
    return ["/".join(c[i] for i in where) for pos, c in enumerate(product(*(grid[p] for p in order))) if pos not in holes]


def _segments(keys: Sequence[str]) -> list[Sequence[str]]:
    """Consecutive keys with the same width and first part: a campaign's stages."""
    out: list[Sequence[str]] = []
    start, prev = 0, None
    for i, k in enumerate(keys):
        head = (k.count("/"), k[: k.find("/")])
        if head != prev and prev is not None:
            out.append(keys[start:i])
            start = i
            if len(out) > MAX_RUNS:
                break
        prev = head
    out.append(keys[start:])
    return out


def _encode_run(keys: Sequence[str]) -> dict[str, Any] | None:
    """One run as a grid nested in the order its positions change (outermost: least often), or None."""
    width = keys[0].count("/") + 1
    split = [k.split("/") for k in keys]
    if any(len(s) != width for s in split):
        return None
    columns = [list(c) for c in zip(*split, strict=True)]
    changes = [sum(map(ne, col, col[1:])) for col in columns]
    natural = list(range(width))
    nesting = sorted(natural, key=lambda p: (changes[p], p))
    if [p for p in nesting if changes[p]] == [p for p in natural if changes[p]]:
        nesting = natural  # a position with one part nests anywhere: keep the form of a one-stage table
    return _as_grid(columns, nesting)


def _as_grid(columns: list[list[str]], order: list[int]) -> dict[str, Any] | None:
    """Keys (as their ``columns`` of parts) as the product of the positions nested in
    ``order``, minus holes; None if they are not one. Lossless: each key's place in the
    product is computed from its own parts, and the places must strictly increase."""
    grid = _part_orders(columns, order)
    if grid is None:
        return None
    size = math.prod(len(g) for g in grid)
    n = len(columns[0])
    if size > 4 * n + 1000:  # sparse: the holes would cost more than the keys
        return None
    places = [0] * n
    for p in order:
        index = {part: i for i, part in enumerate(grid[p])}
        radix = len(grid[p])
        places = [place * radix + index[part] for place, part in zip(places, columns[p], strict=True)]
    if any(a >= b for a, b in zip(places, places[1:], strict=False)):
        return None
    holes = sorted(set(range(size)).difference(places)) if size != n else []
    out: dict[str, Any] = {"grid": grid, "holes": holes}
    if order != list(range(len(grid))):
        out["order"] = order
    return out


def _part_orders(columns: list[list[str]], order: list[int]) -> list[list[str]] | None:
    """Each position's distinct parts in an order the keys follow (lexicographically, nested in
    ``order``), first seen first where they do not say; None when no order fits (a cycle, a
    repeated key). A part missing at the start of one group (an exclusion) still sorts right."""
    after: dict[int, set[tuple[str, str]]] = {}
    same = [True] * (len(columns[0]) - 1)  # consecutive keys equal on every position so far
    for p in order:
        col = columns[p]
        after[p] = {(a, b) for s, a, b in zip(same, col, col[1:], strict=False) if s and a != b}
        same = [s and a == b for s, a, b in zip(same, col, col[1:], strict=False)]
    if any(same):
        return None  # the same key twice
    grid = []
    for p, col in enumerate(columns):
        seen = {part: i for i, part in enumerate(dict.fromkeys(col))}
        nexts: dict[str, list[str]] = {}
        indegree = dict.fromkeys(seen, 0)
        for a, b in after[p]:
            nexts.setdefault(a, []).append(b)
            indegree[b] += 1
        ready = [(i, part) for part, i in seen.items() if not indegree[part]]
        heapq.heapify(ready)
        parts = []
        while ready:
            _, part = heapq.heappop(ready)
            parts.append(part)
            for b in nexts.get(part, ()):
                indegree[b] -= 1
                if not indegree[b]:
                    heapq.heappush(ready, (seen[b], b))
        if len(parts) != len(seen):
            return None
        grid.append(parts)
    return grid
