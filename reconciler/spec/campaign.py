"""A campaign's stages as a graph: their order, the axes each runs over, the order its tasks
are numbered in, and which upstream tasks (members) each task needs.

- **Stage order** is the order of ``stages:`` in the file, moved only as far as ``needs``
  requires (every stage after the stages it needs); a cycle is an error.
- **Axes**: a stage runs over ``over`` of science's axes (default: realization and redshift)
  plus its own ``axes``; two stages that name the same own axis must give it the same values
  (it is then one axis they share).
- **Members**: a task of stage D needs, in each upstream stage U, the tasks that have its
  values on the axes D and U share: one (a *map*, or a *fan-out* when D has more axes), or a
  group (a *fan-in*, when U has axes D does not). ``{needs.U}`` names the member's first
  output, or for a fan-in a list file (``lists/<key>/<U>.txt``, one member output per line, in
  U's order) that the task wrapper writes before the command runs.
- **Task order**: a stage's tasks are numbered with the axes of its first downstream stage
  outermost (in that stage's order), so that batches complete whole groups of a fan-in one
  after another: the first covariance matrix can start long before the last catalog is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.core.model import Need
from reconciler.spec.models import BUILTIN_AXES, Production
from reconciler.spec.templates import TemplateError

LISTS_DIR = "lists"


@dataclass(frozen=True)
class Shape:
    """One stage as the expansion needs it."""

    name: str  # "" for a production with one `task:`
    spec: Production  # its effective production (task = its task section)
    axes: tuple[str, ...]  # canonical: science's axes in `over`, then its own axes by name
    order: tuple[str, ...]  # the same axes, outermost first, as its tasks are numbered
    needs: tuple[str, ...]
    min_fraction: float = 1.0

    @property
    def where(self) -> str:
        """Where its templates are in the production file."""
        return f"stages.{self.name}" if self.name else "task"


def shapes(prod: Production, stage_specs: Mapping[str, Production]) -> list[Shape]:
    """The stages of ``prod`` in stage order; one shape named "" for a production with one `task:`."""
    if not prod.stages:
        axes = (*BUILTIN_AXES, *sorted(prod.the_task.axes))
        return [Shape("", prod, axes, axes, ())]
    ordered = _stage_order(prod)
    own: dict[str, tuple[str, list[Any]]] = {}
    out: dict[str, Shape] = {}
    for name in ordered:
        st = prod.stages[name]
        for axis, values in st.axes.items():
            first = own.setdefault(axis, (name, list(values)))
            if first[1] != list(values):
                raise TemplateError(f"stages.{name}.axes", f"axis {axis!r} has other values than in stage {first[0]!r}", "a shared axis has one list of values; rename one of them")
        over = st.over if st.over is not None else list(BUILTIN_AXES)
        axes = (*(a for a in BUILTIN_AXES if a in over), *sorted(st.axes))
        out[name] = Shape(name, stage_specs[name], axes, axes, tuple(st.needs), st.require.min_fraction)
    for name in reversed(ordered):  # downstream first: a stage takes the order of its first downstream stage
        downstream = next((out[d] for d in ordered if name in out[d].needs), None)
        if downstream is None:
            continue
        mine = out[name].axes
        outer = tuple(a for a in downstream.order if a in mine)
        out[name] = Shape(name, out[name].spec, mine, outer + tuple(a for a in mine if a not in outer), out[name].needs, out[name].min_fraction)
    return [out[n] for n in ordered]


def _stage_order(prod: Production) -> list[str]:
    declared = list(prod.stages)
    placed: list[str] = []
    while len(placed) < len(declared):
        ready = next((n for n in declared if n not in placed and all(u in placed for u in prod.stages[n].needs)), None)
        if ready is None:
            left = [n for n in declared if n not in placed]
            raise TemplateError(f"stages.{left[0]}.needs", f"the needs of {', '.join(left)} form a cycle", "a stage can only need stages that do not need it, directly or not")
        placed.append(ready)
    return placed


def key_of(stage: str, axes: Sequence[str], params: Sequence[Any]) -> str:
    """``measure/r3001/z0.500``; ``covariance/z0.500``; ``r3001/z0.500`` in a one-stage production."""
    parts = []
    for name, value in zip(axes, params, strict=True):
        if name == "realization":
            parts.append(f"r{value:04d}")
        elif name == "redshift":
            parts.append(f"z{value:.3f}")
        else:
            parts.append(f"{name}={value}")
    body = "/".join(parts)
    if not stage:
        return body
    return f"{stage}/{body}" if body else stage


def need_paths(needs: Sequence[Need], key: str, first_output: Callable[[str], str], production_dir: str) -> dict[str, str]:
    """What ``{needs.U}`` names for task ``key``: its member's first output, or for a fan-in its list file."""
    return {
        n.stage: f"{production_dir}/{list_path(key, n.stage) if n.fan_in else first_output(n.members[0])}"
        for n in needs
    }


def list_path(key: str, upstream: str) -> str:
    """The list file of a fan-in task's members in ``upstream``, relative to the production directory."""
    return f"{LISTS_DIR}/{key}/{upstream}.txt"


@dataclass(frozen=True)
class Edge:
    """How the tasks of one stage find their members in one upstream stage."""

    upstream: str
    shared: tuple[int, ...]  # positions, in the downstream task's params, of the axes both stages have
    fan_in: bool  # the upstream stage has axes the downstream one does not: members are a group
    members: Mapping[tuple[Any, ...], tuple[str, ...]]  # shared values -> upstream keys, in its task order
    aligned: Sequence[Any] | None = None  # a map over the same product in the same order: upstream tasks by index (None: excluded)

    def needs(self) -> Callable[[tuple[Any, ...], int], Need | None]:
        """A task's Need in this edge from its params and index (None: no member left), made
        once per member set: a fan-in's tasks share few, a map's are one per task (40,000 a
        pass; an aligned map finds its member by index, without building a key)."""
        made: dict[tuple[str, ...], Need] = {}
        get, shared, up, fan_in, aligned = self.members.get, self.shared, self.upstream, self.fan_in, self.aligned
        at = shared[0] if len(shared) == 1 else None
        prefix = len(shared) if shared == tuple(range(len(shared))) else None
        if aligned is not None:

            def by_index(params: tuple[Any, ...], index: int) -> Need | None:
                t = aligned[index]
                return None if t is None else Need(up, (t.key,), False)

            return by_index

        def need(params: tuple[Any, ...], index: int) -> Need | None:
            k = (params[at],) if at is not None else params[:prefix] if prefix is not None else tuple([params[i] for i in shared])
            members = get(k)
            if members is None:
                return None
            n = made.get(members) if fan_in else None
            if n is None:
                n = Need(up, members, fan_in)
                if fan_in:
                    made[members] = n
            return n

        return need


def edge(down: Shape, up: Shape, up_tasks: Sequence[Any], up_total: int) -> Edge:
    """Index ``up``'s (non-excluded) tasks by the values of the axes ``down`` shares with it;
    for a map over the same product in the same order, by index (``up_total``: its size)."""
    shared_names = [a for a in down.axes if a in up.axes]
    if up.axes == down.axes and up.order == down.order:
        aligned: list[Any] = [None] * up_total
        for t in up_tasks:
            aligned[t.index] = t
        return Edge(up.name, tuple(range(len(down.axes))), False, {}, aligned)
    at_up = [up.axes.index(a) for a in shared_names]
    groups: dict[tuple[Any, ...], list[str]] = {}
    for t in up_tasks:
        groups.setdefault(tuple(t.params[i] for i in at_up), []).append(t.key)
    return Edge(
        up.name, tuple(down.axes.index(a) for a in shared_names), not set(up.axes) <= set(down.axes),
        {k: tuple(v) for k, v in groups.items()},
    )


def exclusions(prod: Production) -> tuple[dict[int, str], dict[tuple[int, float], str]]:
    """science.realizations.exclude as (whole realizations, realization x redshift pairs) -> reason:
    an exclusion applies in every stage that has its axes."""
    sci = prod.science
    whole: dict[int, str] = {}
    pairs: dict[tuple[int, float], str] = {}
    known_r = set(sci.realizations.values())
    for ex in sci.realizations.exclude:
        if ex.realization not in known_r:
            raise TemplateError("science.realizations.exclude", f"excludes realization {ex.realization}, which is not in the production", "remove the exclusion or fix the number")
        if ex.redshift is None:
            whole[ex.realization] = ex.reason
        else:
            if ex.redshift not in sci.redshifts:
                raise TemplateError("science.realizations.exclude", f"excludes redshift {ex.redshift}, which is not in science.redshifts", "fix the redshift")
            pairs[(ex.realization, ex.redshift)] = ex.reason
    return whole, pairs
