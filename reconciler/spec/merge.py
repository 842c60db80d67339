"""The layers of desired state merged into one production's (or one stage's) raw mapping, with
the place each value came from.

Precedence, lowest first: machine defaults < the job type's override < the production's own
values < (for one stage of a campaign) the stage's job type and its own sections < command-line
``--set``. A stage's job type (``stages.S.job_type``) takes the production's job type's place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import Problem
from reconciler.spec import environment
from reconciler.spec.models import EXECUTION_KEYS, STAGE_ONLY_KEYS, MachineDefaults
from reconciler.spec.yamlsrc import Document, Mark, dotted

STAGE_SECTIONS = ("execution", "resources")
"""A stage's sections merged field by field over the production's (environment adds up: spec.environment)."""


def leaves(data: Any, path: tuple = ()) -> Iterable[tuple[tuple, Any]]:
    if isinstance(data, dict) and data:
        for k, v in data.items():
            yield from leaves(v, path + (k,))
    else:
        yield path, data


def set_path(target: dict, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[path[-1]] = value


@dataclass
class Merged:
    """A raw mapping being built layer by layer, with each leaf's mark and source label."""

    data: dict[str, Any] = field(default_factory=dict)
    marks: dict[tuple, Mark] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def put(self, layer: Any, src_doc: Document | None, src_path: tuple, dst: tuple, label: str | None = None) -> None:
        for sub, value in leaves(layer):
            full = dst + sub
            set_path(self.data, full, value)
            mark = src_doc.mark(src_path + sub) if src_doc else Mark("<command line>", 0, 0)
            for i in range(1, len(full) + 1):
                self.marks.setdefault(full[:i], mark)
            self.marks[full] = mark
            self.sources[dotted(full)] = label or str(mark)


def merge(
    doc: Document,
    ddoc: Document,
    defaults: MachineDefaults,
    machine_loaded: bool,
    overrides: Iterable[tuple[tuple[str, ...], Any]],
    problems: list[Problem],
    stage: str | None = None,
) -> Merged:
    """The production of ``doc`` over the machine of ``ddoc``: the whole production, or with
    ``stage`` the effective production of that stage (its task section as ``task``, its job
    type, execution, resources and environment over the production's; no ``stages``)."""
    path = doc.file
    m = Merged(marks={(): doc.marks.get((), Mark(path, 1, 1))})
    data = doc.data if isinstance(doc.data, dict) else {}
    raw_stage: dict[str, Any] = {}
    if stage is not None:
        stages = data.get("stages")
        raw_stage = stages.get(stage, {}) if isinstance(stages, dict) and isinstance(stages.get(stage), dict) else {}
    dd = ddoc.data if isinstance(ddoc.data, dict) else {}
    for section in ("resources", "execution", "outputs"):
        if section in dd:
            m.put(dd[section], ddoc, (section,), (section,))
    job_type: Any = None
    where: tuple[str, ...] = ("execution", "job_type")
    pexec = data.get("execution")
    if raw_stage.get("job_type") is not None:
        job_type, where = raw_stage["job_type"], ("stages", str(stage), "job_type")
    elif isinstance(pexec, dict) and pexec.get("job_type") is not None:
        job_type = pexec.get("job_type")
    elif defaults.execution.job_type:
        job_type = defaults.execution.job_type
    for key_path, value in overrides:
        if key_path == ("execution", "job_type"):
            job_type = value
    if job_type is not None and machine_loaded:
        ov = defaults.job_type_overrides.get(str(job_type))
        if ov is None:
            known = ", ".join(defaults.job_type_overrides) or "none"
            mk = doc.mark(where)
            problems.append(Problem(mk.file, mk.line, mk.col, dotted(where), f"unknown job type {job_type!r} on machine {defaults.machine.name!r}", f"known: {known}"))
        else:
            raw_ov = dd.get("job_type_overrides", {}).get(str(job_type), {})
            for k, v in raw_ov.items():
                if k in environment.JOB_TYPE_KEYS:
                    continue  # merged with the other layers' environment below
                section = "execution" if k in EXECUTION_KEYS else "resources"
                m.put({k: v}, ddoc, ("job_type_overrides", str(job_type)), (section,))
    for section, value in data.items():
        if stage is not None and section == "stages":
            continue
        if isinstance(value, dict):
            m.put(value, doc, (section,), (section,))
        else:
            set_path(m.data, (section,), value)
            m.marks[(section,)] = doc.mark((section,))
            m.sources[section] = str(doc.mark((section,)))
    if stage is not None:
        for section in STAGE_SECTIONS:
            if isinstance(raw_stage.get(section), dict):
                m.put(raw_stage[section], doc, ("stages", stage, section), (section,))
        if job_type is not None and raw_stage.get("job_type") is not None:
            m.put({"job_type": job_type}, doc, ("stages", stage, "job_type"), ("execution",))
        task = {k: v for k, v in raw_stage.items() if k not in STAGE_ONLY_KEYS}
        m.data["task"] = {}
        m.put(task, doc, ("stages", stage), ("task",))
    # environment: lists that add up across the layers, not replaced (spec/environment.py)
    environment.merge_into(m.data, m.sources, defaults, ddoc, None if job_type is None else str(job_type), doc, stage)
    for key_path, value in overrides:
        m.put({key_path[-1]: value}, None, (), key_path[:-1], "command line")
        m.marks[key_path] = Mark("<command line>", 0, 0)
    return m
