"""Pydantic's validation errors as located problems (file:line:col: field: message (hint)),
one per field, with an example of what goes where a required section is missing."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from reconciler.errors import Problem
from reconciler.spec.expand import Renderer, TemplateError
from reconciler.spec.models import MachineDefaults, Production
from reconciler.spec.yamlsrc import Document, Mark, dotted

EXAMPLES = {
    "production": "    production:\n      name: alpha          # the file's name: productions/alpha.yaml",
    "production.name": "    name: alpha          # the file's name: productions/alpha.yaml",
    "science": "    science:\n      redshifts: [0.5, 1.0]\n      realizations: {start: 0, count: 100}",
    "science.redshifts": "    redshifts: [0.5, 1.0, 1.5]",
    "science.realizations": "    realizations: {start: 0, count: 100, step: 1}",
    "task": "    task:\n      command: \"{python} -m mypackage.generate --realization {realization} --redshift {redshift} --output {output}\"\n    (or `stages:`, for a campaign of several stages)",
    "task.command": "    command: \"{python} -m mypackage.generate --realization {realization} --output {output}\"",
    "task.outputs": "    outputs: [\"catalogs/r{realization:04d}/mock_z{redshift:.3f}.hdf5\"]",
}
"""What a missing required section or field looks like, shown in the error's hint."""


def pydantic_problems(exc: ValidationError, marks: Mapping[tuple, Mark], default_file: str) -> list[Problem]:
    """Turn pydantic errors into located problems, one per field."""
    out: dict[str, Problem] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        # pydantic appends union branch names to loc; keep the part that names the data
        path = loc
        while path and path not in marks:
            path = path[:-1]
        while path != loc and len(path) < len(loc) and not isinstance(loc[len(path)], str | int):
            break
        data_path = tuple(p for p in loc if isinstance(p, int) or not any(c in str(p) for c in "[]()'"))
        kind = err["type"]
        msg = err["msg"]
        hint = ""
        if kind == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}"
            hint = "remove it or fix its spelling; every field is in schemas/production.schema.json and schemas/defaults.schema.json (`reconcile schema` writes them)"
        elif kind == "missing":
            key = dotted(data_path)
            msg = f"required {'section' if len(data_path) == 1 else 'field'} is missing"
            hint = f"add it, e.g.\n{EXAMPLES[key]}" if key in EXAMPLES else "add it"
        elif kind == "string_pattern_mismatch":
            hint = "no spaces, quotes, newlines or shell characters"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
            named, sep, rest = msg.partition(": ")
            if sep and not data_path and named.split(".")[0] in ("task", "stages"):
                # a whole-production rule names its field first ("stages.cov.needs: ..."): located there
                data_path = path = tuple(named.split("."))
                while path and path not in marks:
                    path = path[:-1]
                msg = rest
                if rest.startswith("required section is missing") and named in EXAMPLES:
                    hint = f"add it, e.g.\n{EXAMPLES[named]}"
        m = marks.get(path) or Mark(default_file, 0, 0)
        key = dotted(data_path)
        prob = Problem(m.file, m.line, m.col, key, msg, hint)
        # a union reports one error per branch; keep the most telling one
        if key not in out or out[key].message.startswith(("Input should be a valid", "Input should be")):
            out[key] = prob
    return list(out.values())


def located(doc: Document, exc: TemplateError) -> list[Problem]:
    out = []
    for err in exc.errors:
        m = doc.mark(tuple(err.field.split(".")))
        out.append(Problem(m.file, m.line, m.col, err.field, str(err), err.hint))
    return out


def salvage(merged: dict[str, Any], exc: ValidationError) -> Production | None:
    """The production with every field pydantic refused left out, when that still validates
    (and no refused field is one the templates read), so that its templates are checked in the
    same round as an unknown field elsewhere; None otherwise."""
    data = copy.deepcopy(merged)
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if isinstance(p, str | int)]
        if not loc or err["type"] == "missing" or loc[:1] == ["task"] or loc[:2] == ["science", "catalog_params"]:
            return None
        parent: Any = data
        for part in loc[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(loc[-1], None)
    try:
        return Production.model_validate(data)
    except ValidationError:
        return None


def renderer_problems(doc: Document, spec: Production | None) -> list[Problem]:
    if spec is None:
        return []
    try:
        if spec.task is not None:
            Renderer(spec)
    except TemplateError as exc:
        return located(doc, exc)
    return []


def execution_problems(spec: Production, marks: dict[tuple, Mark], path: str, where: str, defaults: MachineDefaults, *, pool: bool) -> list[Problem]:
    """What the execution section asks that cannot work: an array index past MaxArraySize, or
    (``pool``: for the tasks' own stage) a pool whose workers could never claim a task."""
    out = []
    ex = spec.execution
    if ex.batch_size > defaults.machine.max_array_size:
        m = marks.get(("execution", "batch_size"), Mark(path, 0, 0))
        out.append(Problem(m.file, m.line, m.col, f"{where}execution.batch_size", f"{ex.batch_size} exceeds the machine's max_array_size {defaults.machine.max_array_size}", "array indices are batch-local; lower batch_size"))
    needed = ex.timeout_hours * 60 + ex.pool.margin_minutes
    if pool and ex.mode == "pool" and needed > ex.pool.walltime_minutes:
        m = marks.get(("execution", "pool", "walltime_minutes"), marks.get(("execution", "mode"), Mark(path, 0, 0)))
        out.append(Problem(
            m.file, m.line, m.col, f"{where}execution.pool.walltime_minutes",
            f"a worker of {ex.pool.walltime_minutes:g} min never claims a task that may take its timeout ({ex.timeout_hours * 60:g} min) plus the margin ({ex.pool.margin_minutes:g} min)",
            f"raise execution.pool.walltime_minutes to {needed:g} or more, or lower execution.timeout_hours or execution.pool.margin_minutes",
        ))
    return out


def pool_stage_problems(name: str, stage: Production, production: Production, doc: Document) -> list[Problem]:
    """A stage in pool mode runs in the production's workers, which are sized and timed by the
    production's ``execution.pool`` and ``resources``: a stage's own (or its job type's) would
    be silently ignored, so they are refused."""
    if stage.execution.mode != "pool":
        return []
    differs = [f for f, mine, theirs in (("execution.pool", stage.execution.pool, production.execution.pool), ("resources", stage.resources, production.resources)) if mine != theirs]
    if not differs:
        return []
    m = doc.mark(("stages", name))
    return [Problem(
        m.file, m.line, m.col, f"stages.{name}", f"a stage in pool mode runs in the production's workers, but sets its own {' and '.join(differs)}",
        f"set {' and '.join(differs)} at the production (one pool serves every pool-mode stage), or run this stage as arrays (execution.mode: array)",
    )]
