"""Expand a production into its tasks: the canonical cross product of its axes.

Canonical order: realizations ascending, then redshifts ascending, then each extra axis in
name order with its values as listed. A task's ``index`` is its position in the *full*
product, exclusions included, so excluding a task never renumbers the others and reordering
YAML keys never changes anything. A task's ``key`` (``r3001/z0.500``) is stable even when an
axis grows; durable state (markers, ledger) is keyed by key, while batches are slices of
indices.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import product
from operator import itemgetter
from typing import Any, NamedTuple

from reconciler.core.model import Need
from reconciler.spec.campaign import Edge, Shape, edge, exclusions, key_of, need_paths, shapes
from reconciler.spec.compiled import compile_renderer
from reconciler.spec.environment import fingerprint_parts
from reconciler.spec.models import BUILTIN_AXES, Production
from reconciler.spec.shell import QUOTING, command_templates
from reconciler.spec.symbols import SYMBOLIC_DIR, SYMBOLIC_PYTHON
from reconciler.spec.templates import Params as _Params
from reconciler.spec.templates import TemplateError, TemplateErrors
from reconciler.spec.templates import fields as _fields
from reconciler.spec.templates import root as _root

__all__ = ["TemplateError", "TemplateErrors"]  # where callers have always found them

BUILTIN_PLACEHOLDERS = ("realization", "redshift", "index", "key", "name", "version", "production_dir", "output", "catalog_params", "python", "compression")


class Task(NamedTuple):
    """One point of the parameter space (a named tuple: 10^5 are made a pass, each in a third
    of a frozen dataclass's time)."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, which nothing calls on a Task
    key: str
    params: tuple[Any, ...]  # one value per axis, in Expansion.axes order
    outputs: tuple[str, ...]  # relative to the production directory
    fingerprint: str
    inputs: tuple[str, ...] = ()  # task.inputs: absolute, or relative to the production directory
    stage: str = ""  # its stage's name; "" for a production written with one `task:`
    needs: tuple[Need, ...] = ()  # the upstream members it waits for, per needed stage


@dataclass(frozen=True, slots=True)
class Excluded:
    index: int
    key: str
    reason: str


@dataclass(frozen=True)
class StageExpansion:
    """One stage's tasks (a one-stage production has one, named "")."""

    name: str
    spec: Production  # the effective production its tasks run by (Loaded.stage_spec)
    axes: tuple[str, ...]  # Task.params order
    tasks: tuple[Task, ...]
    excluded: tuple[Excluded, ...]
    total: int  # size of its full product, exclusions included
    batch_size: int
    min_fraction: float = 1.0  # require.min_fraction
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Expansion:
    """All tasks of a production, stage by stage, plus what was left out and why."""

    name: str
    axes: tuple[str, ...]  # the first stage's
    tasks: tuple[Task, ...]  # every stage's, in stage order
    excluded: tuple[Excluded, ...]
    total: int  # size of the full products, exclusions included
    batch_size: int  # the first stage's
    stages: tuple[StageExpansion, ...] = ()

    @cached_property
    def by_key(self) -> dict[str, Task]:
        """Tasks by key, built once per expansion (the engine's observe and apply share it)."""
        return {t.key: t for t in self.tasks}


class Renderer:
    """Renders a production's (or one stage's) command and output templates for one task's parameters.

    ``prod`` is a production with one task section: a one-stage production, or a stage's
    effective production (``Loaded.stage_spec``), whose templates are reported at ``where``
    (``stages.<name>``) and which runs over ``over`` of science's axes and may name the stages
    it ``needs`` (``{needs.S}``).
    """

    def __init__(self, prod: Production, *, where: str = "task", over: Sequence[str] = BUILTIN_AXES, needs: Sequence[str] = ()) -> None:
        self.prod = prod
        self.where = where
        task = prod.the_task
        self.axes: tuple[str, ...] = (*(a for a in BUILTIN_AXES if a in over), *sorted(task.axes))
        self.needs = tuple(needs)
        self.catalog = _Params(prod.science.catalog_params)
        self.shell = task.shell  # then every substituted value is shell-quoted (spec/shell.py)
        self.argv_templates, self._refused = command_templates(task.command, task.shell)
        self.output_templates = tuple(task.outputs)
        self.input_templates = tuple(task.inputs)
        self._check()
        # A template without placeholders renders to the same text for every task: render it
        # once ("{{" -> "{"). None marks a template that needs the task's values.
        self._static = {"name": prod.production.name, "version": prod.production.version, "python": SYMBOLIC_PYTHON, "catalog_params": self.catalog, "compression": prod.outputs.compression}
        self._argv_const = tuple(None if any(True for _ in _fields(t)) else t.format_map({}) for t in self.argv_templates)
        static = json.dumps(
            {
                "outputs": self.output_templates,
                **({"inputs": self.input_templates} if self.input_templates else {}),  # fingerprints without inputs unchanged
                "env": sorted(task.env.items()),
                "validator": task.validator.model_dump(mode="json"),
                "version": prod.production.version,
                **fingerprint_parts(prod),
            },
            sort_keys=True,
        )
        self._hash_base = hashlib.blake2b(static.encode(), digest_size=12)

    def _check(self) -> None:
        allowed = (set(BUILTIN_PLACEHOLDERS) - (set(BUILTIN_AXES) - set(self.axes))) | set(self.axes) | ({"needs"} if self.needs else set())
        if self._refused is not None:
            raise TemplateError(f"{self.where}.command", *self._refused)
        if not self.argv_templates:
            raise TemplateError(f"{self.where}.command", "command is empty")
        found: list[TemplateError] = []
        for where, templates, extra_forbidden in (
            (f"{self.where}.command", self.argv_templates, ()),
            (f"{self.where}.outputs", self.output_templates, ("output", "production_dir", "python", "needs")),
            (f"{self.where}.inputs", self.input_templates, ("output", "production_dir", "python", "needs")),
        ):
            for tpl in templates:
                try:
                    fields = list(_fields(tpl))
                except ValueError as exc:
                    found.append(TemplateError(where, f"bad template {tpl!r}: {exc}", "braces must pair; write {{ for a literal brace"))
                    continue
                for field, _spec in fields:
                    root, sub = _root(field)
                    if root == "" or root not in allowed or root in extra_forbidden:
                        known = ", ".join(sorted(allowed - set(extra_forbidden)))
                        found.append(TemplateError(where, f"unknown placeholder {{{field}}}", f"known placeholders: {known}"))
                    elif root == "needs" and (sub is None or sub not in self.needs):
                        found.append(TemplateError(where, f"unknown placeholder {{{field}}}", f"this stage needs: {', '.join(self.needs)}"))
                    elif root == "catalog_params" and (sub is None or sub not in self.prod.science.catalog_params):
                        known = ", ".join(sorted(self.prod.science.catalog_params)) or "none defined"
                        found.append(TemplateError(where, f"unknown placeholder {{{field}}}", f"science.catalog_params has: {known}"))
        if len(found) == 1:
            raise found[0]
        if found:
            raise TemplateErrors(found)

    def _values(self, params: tuple[Any, ...], index: int, key: str, production_dir: str, needs: Mapping[str, str] | None = None) -> dict[str, Any]:
        values = dict(zip(self.axes, params, strict=True))
        values.update(self._static)
        values["index"] = index
        values["key"] = key
        values["production_dir"] = production_dir
        if needs is not None:
            values["needs"] = _Params(needs)
        return values

    def _outputs(self, values: dict[str, Any], key: str) -> tuple[str, ...]:
        try:
            return tuple([t.format_map(values) for t in self.output_templates])
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise TemplateError(f"{self.where}.outputs", f"cannot render for task {key}: {exc}", "check the format spec, e.g. {redshift:.3f}, {realization:04d}") from None

    def inputs(self, params: tuple[Any, ...], index: int, key: str) -> tuple[str, ...]:
        values = self._values(params, index, key, SYMBOLIC_DIR)
        try:
            return tuple([t.format_map(values) for t in self.input_templates])
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise TemplateError(f"{self.where}.inputs", f"cannot render for task {key}: {exc}", "check the format spec, e.g. {realization:04d}") from None

    def argv(self, params: tuple[Any, ...], index: int, key: str, production_dir: str, outputs: tuple[str, ...], needs: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """The task's argv; ``needs``: what ``{needs.S}`` names, with ``production_dir`` in it (campaign.need_paths)."""
        return self._argv(self._values(params, index, key, production_dir, needs), key, production_dir, outputs)

    def _argv(self, values: dict[str, Any], key: str, production_dir: str, outputs: tuple[str, ...]) -> tuple[str, ...]:
        values["output"] = f"{production_dir}/{outputs[0]}"
        try:
            render = (lambda t: QUOTING.vformat(t, (), values)) if self.shell else (lambda t: t.format_map(values))
            return tuple([render(t) if c is None else c for t, c in zip(self.argv_templates, self._argv_const, strict=True)])
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise TemplateError(f"{self.where}.command", f"cannot render for task {key}: {exc}", "check the format spec, e.g. {redshift:.3f}, {realization:04d}") from None

    def compiled(self) -> Callable[..., tuple[tuple[str, ...], tuple[str, ...]]] | None:
        """A fast renderer of (outputs, symbolic argv), or None (spec.compiled)."""
        return compile_renderer(self)


_BAD_CHARS = re.compile(r"[\\\x00-\x1f]")
_DOT_SLASH = ("", ".", "/")


def check_output_path(rel: str) -> str | None:
    """Why a rendered output path would escape the production directory, or None.

    String operations with PurePosixPath's meaning (runs once per task and output): empty
    and "." components do not count, a leading "/" makes the path absolute.
    """
    if _BAD_CHARS.search(rel):
        return "contains a backslash or control character"
    if rel[:1] == "/":
        return "is absolute"
    parts = [p for p in rel.split("/") if p and p != "."]
    if ".." in parts:
        return "contains '..'"
    if not parts:
        return "is empty"
    return None


def count_tasks(prod: Production) -> int | None:
    """How many tasks ``expand(prod)`` makes, without making them: `reconcile list` over a
    2,000,000-task production in milliseconds instead of seconds. Agrees with ``expand`` on
    every production ``expand`` accepts (tests/test_spec.py holds it); what ``expand`` would
    refuse is for ``validate`` to say. None for a campaign of stages (exclusions propagate along
    `needs`: only the expansion knows)."""
    if prod.stages:
        return None
    sci = prod.science
    realizations = set(sci.realizations.values())
    redshifts = set(sci.redshifts)
    whole = {ex.realization for ex in sci.realizations.exclude if ex.redshift is None} & realizations
    pairs = {
        (ex.realization, ex.redshift) for ex in sci.realizations.exclude
        if ex.redshift is not None and ex.realization in realizations and ex.realization not in whole and ex.redshift in redshifts
    }
    per_pair = math.prod(len(values) for values in prod.the_task.axes.values())
    return ((len(realizations) - len(whole)) * len(redshifts) - len(pairs)) * per_pair


def _collision(tasks: Sequence[Task], key: str, outputs: Sequence[str], where: str = "task") -> None:
    """Raise for the output of task ``key`` another task (or ``key`` itself, twice) also writes.
    Only called once a collision is known, so the search costs nothing on valid productions."""
    mine: set[str] = set()
    for rel in outputs:
        if rel in mine:
            raise TemplateError(f"{where}.outputs", f"task {key} lists the output {rel!r} twice", "each entry of task.outputs must render to its own path")
        mine.add(rel)
    for other in tasks:
        for rel in other.outputs:
            if rel in mine:
                raise TemplateError(
                    f"{where}.outputs", f"tasks {other.key} and {key} both write {rel!r}, so one would overwrite the other",
                    "put every axis in each output path, e.g. catalogs/r{realization:04d}/mock_z{redshift:.3f}.hdf5",
                )
    raise AssertionError(f"a collision of {key}'s outputs that no task explains")  # pragma: no cover


def expand(prod: Production, stage_specs: Mapping[str, Production] | None = None) -> Expansion:
    """All tasks of ``prod``, stage by stage (``stage_specs``: each stage's effective production,
    from spec.load); raises TemplateError on the first template or path problem."""
    # The cyclic GC would walk the growing task list again and again (10^6 tasks: seconds);
    # nothing made here forms a cycle, so it is paused for the expansion and then restored.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        stages: list[StageExpansion] = []
        done: dict[str, tuple[Shape, tuple[Task, ...], int]] = {}
        written: set[str] = set()  # every output path so far, of every stage: two tasks writing one path overwrite each other
        for shape in shapes(prod, stage_specs or {}):
            edges = [edge(shape, done[u][0], done[u][1], done[u][2]) for u in shape.needs]
            upstream = {t.key: t for u in shape.needs for t in done[u][1]}
            st = _expand_stage(prod, shape, edges, upstream, written, [t for s in stages for t in s.tasks])
            stages.append(st)
            done[shape.name] = (shape, st.tasks, st.total)
        return Expansion(
            prod.production.name, stages[0].axes, tuple(t for s in stages for t in s.tasks), tuple(e for s in stages for e in s.excluded),
            sum(s.total for s in stages), stages[0].batch_size, tuple(stages),
        )
    finally:
        if was_enabled:
            gc.enable()


def _expand_stage(
    prod: Production, shape: Shape, edges: Sequence[Edge], upstream: Mapping[str, Task], written: set[str], earlier: Sequence[Task],
) -> StageExpansion:
    """One stage's tasks; ``written``: the output paths of the stages before (then its own too)."""
    spec = shape.spec
    renderer = Renderer(spec, where=shape.where, over=shape.axes, needs=shape.needs)
    sci = prod.science
    values_of: dict[str, list[Any]] = {"realization": sci.realizations.values(), "redshift": sorted(sci.redshifts), **{a: list(v) for a, v in spec.the_task.axes.items()}}
    axes = renderer.axes
    whole, pairs = exclusions(prod)
    r_at = axes.index("realization") if "realization" in axes else None
    z_at = axes.index("redshift") if "redshift" in axes else None

    tasks: list[Task] = []
    excluded: list[Excluded] = []
    seen: set[str] = set()
    index = -1
    stage = shape.name
    prefix = f"{stage}/" if stage else ""
    # Keys by string pieces rendered once per value (same text as campaign.key_of; 10^6 tasks a pass).
    rtext: dict[Any, str] = {r: f"r{r:04d}" for r in values_of["realization"]}
    ztext: dict[Any, str] = {z: f"z{z:.3f}" for z in values_of["redshift"]}
    fast_key = axes == BUILTIN_AXES
    fast = renderer.compiled()
    has_inputs = bool(renderer.input_templates)
    hash_base = renderer._hash_base
    bad_chars = _BAD_CHARS.search
    # Task.params are in canonical axes order; the grid runs in the stage's task order (campaign.shapes)
    perm = None if shape.order == axes else itemgetter(*(shape.order.index(a) for a in axes))
    grid: Iterator[tuple[Any, ...]] = product(*(values_of[a] for a in shape.order))
    need_of = [e.needs() for e in edges]
    up_first = (lambda m: upstream[m].outputs[0]) if edges else None
    single_map = edges[0].aligned if len(edges) == 1 else None
    up_name = edges[0].upstream if edges else ""
    up_bytes = up_name.encode()
    member_bytes = b""
    for params in grid:
        index += 1
        if perm is not None:
            params = perm(params)
        key = f"{prefix}{rtext[params[0]]}/{ztext[params[1]]}" if fast_key else key_of(stage, axes, params)
        if key in seen:
            raise TemplateError("science.redshifts", f"two tasks share the key {key}", "redshifts must differ in their first 3 decimals")
        seen.add(key)
        reason = None
        if r_at is not None:
            reason = whole.get(params[r_at]) or (pairs.get((params[r_at], params[z_at])) if z_at is not None else None)
        needs: tuple[Need, ...] = ()
        paths = None
        if reason is None and single_map is not None:  # the common map: its member by index
            m = single_map[index]
            if m is None:
                reason = f"every member of it in {up_name} is excluded"
            else:
                needs = (Need(up_name, (m.key,), False),)
                paths = {up_name: f"{SYMBOLIC_DIR}/{m.outputs[0]}"}
                member_bytes = up_bytes + m.fingerprint.encode()
        elif need_of and reason is None:
            got = [f(params, index) for f in need_of]
            if None in got:
                reason = f"every member of it in {edges[got.index(None)].upstream} is excluded"
            else:
                needs = tuple(got)  # type: ignore[arg-type]
                paths = need_paths(needs, key, up_first, SYMBOLIC_DIR)  # type: ignore[arg-type]
                member_bytes = b"".join(n.stage.encode() + b"".join(upstream[m].fingerprint.encode() for m in n.members) for n in needs)
        if reason is not None:
            excluded.append(Excluded(index, key, reason))
            continue
        if fast is not None:
            outputs, argv = fast(params[0], params[1], paths)
        else:
            values = renderer._values(params, index, key, SYMBOLIC_DIR, paths)
            outputs = renderer._outputs(values, key)
        for rel in outputs:
            # common case inline: no component starts with "." (so no "." or ".."), not absolute
            if rel[:1] in _DOT_SLASH or "/." in rel or bad_chars(rel):
                why = check_output_path(rel)
                if why:
                    raise TemplateError(f"{shape.where}.outputs", f"output path {rel!r} of task {key} {why}", "outputs are relative to the production directory and stay inside it")
        before = len(written)
        written.update(outputs)
        if len(written) != before + len(outputs):
            _collision([*earlier, *tasks], key, outputs, shape.where)
        if fast is None:
            argv = renderer._argv(values, key, SYMBOLIC_DIR, outputs)
        h = hash_base.copy()  # fingerprint: hash of the static parts, of the symbolic argv, then of the members'
        h.update("\0".join(argv).encode())
        if needs:  # each need's stage, then its members' fingerprints: a change upstream makes exactly the tasks downstream of it stale
            h.update(member_bytes)
        tasks.append(Task(index, key, params, outputs, h.hexdigest(), renderer.inputs(params, index, key) if has_inputs else (), stage, needs))
    return StageExpansion(stage, spec, axes, tuple(tasks), tuple(excluded), index + 1, spec.execution.batch_size, shape.min_fraction, shape.needs)
