"""Expand a production into its tasks: the canonical cross product of its axes.

Canonical order: realizations ascending, then redshifts ascending, then each extra axis in
name order with its values as listed. A task's ``index`` is its position in the *full*
product, exclusions included, so excluding a task never renumbers the others and reordering
YAML keys never changes anything. A task's ``key`` (``r3001/z0.500``) is stable even when an
axis grows; durable state (markers, ledger) is keyed by key, while batches are slices of
indices.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import product
from pathlib import PurePosixPath
from typing import Any

from reconciler.spec.models import Production

SYMBOLIC_DIR = "${PRODUCTION_DIR}"
SYMBOLIC_PYTHON = "${PYTHON}"
BUILTIN_PLACEHOLDERS = ("realization", "redshift", "index", "key", "name", "version", "production_dir", "output", "catalog_params", "python")


@dataclass(frozen=True, slots=True)
class Task:
    """One point of the parameter space."""

    index: int
    key: str
    params: tuple[Any, ...]  # one value per axis, in Expansion.axes order
    outputs: tuple[str, ...]  # relative to the production directory
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Excluded:
    index: int
    key: str
    reason: str


@dataclass(frozen=True)
class Expansion:
    """All tasks of a production, plus what was left out and why."""

    name: str
    axes: tuple[str, ...]
    tasks: tuple[Task, ...]
    excluded: tuple[Excluded, ...]
    total: int  # size of the full product, exclusions included
    batch_size: int

    def by_key(self) -> dict[str, Task]:
        return {t.key: t for t in self.tasks}

    def batch_of(self, task: Task) -> int:
        return task.index // self.batch_size


class TemplateError(ValueError):
    """A template problem; ``field`` says which template."""

    def __init__(self, field: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.hint = hint


class _Params:
    """``{catalog_params.x}`` and ``{catalog_params[x]}`` both work in templates."""

    __slots__ = ("_d",)

    def __init__(self, d: Mapping[str, Any]) -> None:
        self._d = dict(d)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._d[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._d[name]


def _fields(template: str) -> Iterator[tuple[str, str | None]]:
    for _lit, field, spec, _conv in string.Formatter().parse(template):
        if field is not None:
            yield field, spec


def _root(field: str) -> tuple[str, str | None]:
    for i, ch in enumerate(field):
        if ch in ".[":
            rest = field[i + 1 :].rstrip("]")
            return field[:i], rest
    return field, None


class Renderer:
    """Renders a production's command and output templates for one task's parameters."""

    def __init__(self, prod: Production) -> None:
        self.prod = prod
        self.axes: tuple[str, ...] = ("realization", "redshift", *sorted(prod.task.axes))
        self.catalog = _Params(prod.science.catalog_params)
        self.argv_templates = tuple(shlex.split(prod.task.command))
        self.output_templates = tuple(prod.task.outputs)
        self._check()
        static = json.dumps(
            {
                "outputs": self.output_templates,
                "env": sorted(prod.task.env.items()),
                "validator": prod.task.validator.model_dump(mode="json"),
                "version": prod.production.version,
            },
            sort_keys=True,
        )
        self._hash_base = hashlib.blake2b(static.encode(), digest_size=12)

    def _check(self) -> None:
        allowed = set(BUILTIN_PLACEHOLDERS) | set(self.axes)
        if not self.argv_templates:
            raise TemplateError("task.command", "command is empty")
        for where, templates, extra_forbidden in (
            ("task.command", self.argv_templates, ()),
            ("task.outputs", self.output_templates, ("output", "production_dir", "python")),
        ):
            for tpl in templates:
                try:
                    fields = list(_fields(tpl))
                except ValueError as exc:
                    raise TemplateError(where, f"bad template {tpl!r}: {exc}", "braces must pair; write {{ for a literal brace") from None
                for field, _spec in fields:
                    root, sub = _root(field)
                    if root == "" or root not in allowed or root in extra_forbidden:
                        known = ", ".join(sorted(allowed - set(extra_forbidden)))
                        raise TemplateError(where, f"unknown placeholder {{{field}}}", f"known placeholders: {known}")
                    if root == "catalog_params" and (sub is None or sub not in self.prod.science.catalog_params):
                        known = ", ".join(sorted(self.prod.science.catalog_params)) or "none defined"
                        raise TemplateError(where, f"unknown placeholder {{{field}}}", f"science.catalog_params has: {known}")

    def _values(self, params: tuple[Any, ...], index: int, key: str, production_dir: str) -> dict[str, Any]:
        values = dict(zip(self.axes, params, strict=True))
        values.update(
            index=index,
            key=key,
            name=self.prod.production.name,
            version=self.prod.production.version,
            production_dir=production_dir,
            python=SYMBOLIC_PYTHON,
            catalog_params=self.catalog,
        )
        return values

    def outputs(self, params: tuple[Any, ...], index: int, key: str) -> tuple[str, ...]:
        values = self._values(params, index, key, SYMBOLIC_DIR)
        try:
            return tuple(t.format_map(values) for t in self.output_templates)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise TemplateError("task.outputs", f"cannot render for task {key}: {exc}", "check the format spec, e.g. {redshift:.3f}, {realization:04d}") from None

    def argv(self, params: tuple[Any, ...], index: int, key: str, production_dir: str, outputs: tuple[str, ...]) -> tuple[str, ...]:
        values = self._values(params, index, key, production_dir)
        values["output"] = f"{production_dir}/{outputs[0]}"
        try:
            return tuple(t.format_map(values) for t in self.argv_templates)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise TemplateError("task.command", f"cannot render for task {key}: {exc}", "check the format spec, e.g. {redshift:.3f}, {realization:04d}") from None

    def fingerprint(self, argv_symbolic: tuple[str, ...]) -> str:
        h = self._hash_base.copy()
        h.update("\0".join(argv_symbolic).encode())
        return h.hexdigest()


def task_key(axes: tuple[str, ...], params: tuple[Any, ...]) -> str:
    parts = [f"r{params[0]:04d}", f"z{params[1]:.3f}"]
    parts += [f"{name}={value}" for name, value in zip(axes[2:], params[2:], strict=True)]
    return "/".join(parts)


def check_output_path(rel: str) -> str | None:
    """Why a rendered output path would escape the production directory, or None."""
    if "\\" in rel or any(ord(c) < 32 for c in rel):
        return "contains a backslash or control character"
    p = PurePosixPath(rel)
    if p.is_absolute():
        return "is absolute"
    if ".." in p.parts:
        return "contains '..'"
    if str(p) in ("", "."):
        return "is empty"
    return None


def expand(prod: Production) -> Expansion:
    """All tasks of ``prod``; raises TemplateError on the first template or path problem."""
    renderer = Renderer(prod)
    sci = prod.science
    realizations = sci.realizations.values()
    redshifts = sorted(sci.redshifts)
    extra = [prod.task.axes[a] for a in renderer.axes[2:]]
    whole: dict[int, str] = {}
    pairs: dict[tuple[int, float], str] = {}
    known_r = set(realizations)
    for ex in sci.realizations.exclude:
        if ex.realization not in known_r:
            raise TemplateError("science.realizations.exclude", f"excludes realization {ex.realization}, which is not in the production", "remove the exclusion or fix the number")
        if ex.redshift is None:
            whole[ex.realization] = ex.reason
        else:
            if ex.redshift not in sci.redshifts:
                raise TemplateError("science.realizations.exclude", f"excludes redshift {ex.redshift}, which is not in science.redshifts", "fix the redshift")
            pairs[(ex.realization, ex.redshift)] = ex.reason

    tasks: list[Task] = []
    excluded: list[Excluded] = []
    seen: set[str] = set()
    axes = renderer.axes
    index = -1
    for params in product(realizations, redshifts, *extra):
        index += 1
        key = task_key(axes, params)
        if key in seen:
            raise TemplateError("science.redshifts", f"two tasks share the key {key}", "redshifts must differ in their first 3 decimals")
        seen.add(key)
        reason = whole.get(params[0]) or pairs.get((params[0], params[1]))
        if reason is not None:
            excluded.append(Excluded(index, key, reason))
            continue
        outputs = renderer.outputs(params, index, key)
        for rel in outputs:
            why = check_output_path(rel)
            if why:
                raise TemplateError("task.outputs", f"output path {rel!r} of task {key} {why}", "outputs are relative to the production directory and stay inside it")
        argv = renderer.argv(params, index, key, SYMBOLIC_DIR, outputs)
        tasks.append(Task(index, key, params, outputs, renderer.fingerprint(argv)))
    return Expansion(prod.production.name, axes, tuple(tasks), tuple(excluded), index + 1, prod.execution.batch_size)
