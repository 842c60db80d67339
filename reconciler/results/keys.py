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

Every encoding is checked: each key's place in its grid is computed from its own parts, and
the places must strictly increase, so decoding gives back exactly the keys, in their order,
whatever they look like; keys that are no product (or too few to gain from one) stay a plain
``{"keys": [...]}``. Encoding 80,020 keys costs about what splitting them does (~0.1 s).
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Mapping, Sequence
from itertools import compress, pairwise, product, repeat
from operator import lt, ne
from typing import Any

MAX_RUNS = 64
"""Runs at most (a campaign has a few stages); keys that split into more are listed plainly."""


def encode_keys(keys: Sequence[str]) -> dict[str, Any]:
    """``{"grid", "holes"}``, ``{"runs"}`` or ``{"keys"}`` (module docstring), the smallest that fits."""
    if not keys:
        return {"keys": []}
    widths = list(map(str.count, keys, repeat("/")))
    blocks = _cuts(widths)  # a campaign's stages differ in width...
    whole = _encode_run(_columns(keys, widths[0] + 1)) if len(blocks) == 1 else None
    if whole is not None and "order" not in whole:
        return whole
    runs = [whole] if whole is not None else []
    for i, j in blocks if whole is None else ():
        columns = _columns(keys[i:j], widths[i] + 1)
        for a, b in _cuts(columns[0]):  # ...or in their first part, the stage's name
            runs.append(_encode_run([c[a:b] for c in columns]) or {"keys": list(keys[i + a : i + b])})
            if len(runs) > MAX_RUNS:
                return {"keys": list(keys)}
    if len(json.dumps(runs)) >= sum(len(k) + 4 for k in keys):
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


def _cuts(values: Sequence[Any]) -> list[tuple[int, int]]:
    """(start, end) of each run of equal consecutive values."""
    return list(pairwise([0, *compress(range(1, len(values)), map(ne, values, values[1:])), len(values)]))


def _columns(keys: Sequence[str], width: int) -> list[list[str]]:
    """Keys of ``width`` parts each, as one list of parts per position (one split for all of them)."""
    flat = "/".join(keys).split("/")
    return [flat[p::width] for p in range(width)]


def _encode_run(columns: list[list[str]]) -> dict[str, Any] | None:
    """One run (its keys' parts, per position) as a grid nested in the order its positions
    change in (outermost: least often), or None."""
    changes = [sum(map(ne, col, col[1:])) for col in columns]
    natural = list(range(len(columns)))
    nesting = sorted(natural, key=lambda p: (changes[p], p))
    if [p for p in nesting if changes[p]] == [p for p in natural if changes[p]]:
        nesting = natural  # a position with one part nests anywhere: keep the form of a one-stage table
    return _as_grid(columns, nesting)


def _as_grid(columns: list[list[str]], order: list[int]) -> dict[str, Any] | None:
    """Keys (as their ``columns`` of parts) as the product of the positions nested in
    ``order``, minus holes; None if they are not one. Each position's parts are first taken
    in the order first seen (right unless an exclusion hides a part at the start of a group),
    else in an order all the keys agree on (``_part_orders``). The check that makes it
    lossless: each key's place in the product, computed from its own parts, strictly increases."""
    n = len(columns[0])
    for grid in ([list(dict.fromkeys(col)) for col in columns], None):
        grid = grid or _part_orders(columns, order)
        if grid is None:
            return None
        size = math.prod(len(g) for g in grid)
        if size > 4 * n + 1000:  # sparse: the holes would cost more than the keys
            return None
        places = _places(columns, grid, order)
        if all(map(lt, places, places[1:])):
            holes = sorted(set(range(size)).difference(places)) if size != n else []
            out: dict[str, Any] = {"grid": grid, "holes": holes}
            if order != list(range(len(grid))):
                out["order"] = order
            return out
    return None


def _places(columns: list[list[str]], grid: list[list[str]], order: list[int]) -> list[int]:
    """Each key's position in the product of ``grid`` nested in ``order``."""
    places = [0] * len(columns[0])
    for p in order:
        index = {part: i for i, part in enumerate(grid[p])}
        radix = len(grid[p])
        places = [place * radix + i for place, i in zip(places, map(index.__getitem__, columns[p]), strict=True)]
    return places


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
