"""Load desired state: parse, merge machine defaults, validate, and remember where each value came from.

Precedence, lowest first: machine defaults < the job type's override < the production's
own values < (a campaign's stage) its job type and sections < command-line ``--set``
(spec.merge). (The seed tool applied job-type overrides last and so silently dropped a
production's own ``memory_gb``.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from reconciler import sites
from reconciler.container import unbindable
from reconciler.errors import ConfigError, Problem
from reconciler.spec.expand import Expansion, TemplateError, expand
from reconciler.spec.merge import leaves, merge
from reconciler.spec.models import (
    NAME_PATTERN,
    STRUCTURE_OUTPUTS,
    Machine,
    MachineDefaults,
    Production,
)
from reconciler.spec.problems import (
    execution_problems,
    located,
    pool_stage_problems,
    pydantic_problems,
    renderer_problems,
    salvage,
)
from reconciler.spec.yamlsrc import Document, Mark, dotted, parse, parse_collecting

PRODUCTIONS_DIR = "productions"
DEFAULTS_DIR = "defaults"
LOCAL = "local"
_NAME = re.compile(NAME_PATTERN)


class Tree(Protocol):
    """Where desired state is read from: a git ref's tree or the working tree."""

    label: str

    def read(self, path: str) -> str | None: ...

    def list(self, directory: str) -> list[str]: ...


@dataclass
class WorkTree:
    """Files on disk under ``root`` (used with ``--allow-dirty`` and for plain directories)."""

    root: Path
    label: str = "working tree"

    def read(self, path: str) -> str | None:
        p = self.root / path
        try:
            return p.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise ConfigError(Problem(path, 1, 1, "", "file is not UTF-8 text")) from None

    def list(self, directory: str) -> list[str]:
        d = self.root / directory
        if not d.is_dir():
            return []
        return sorted(f"{directory}/{p.name}" for p in d.iterdir() if p.is_file())


@dataclass(frozen=True)
class Loaded:
    """One production's effective configuration, with provenance."""

    spec: Production
    machine: MachineDefaults
    file: str  # repo-relative path of the production file
    defaults_file: str
    sources: dict[str, str]  # dotted leaf path -> "file:line:col" or "default" / "command line"
    text: str  # the production file as read
    repo_root: Path
    source_label: str
    warnings: tuple[Problem, ...] = ()  # accepted, but worth a word: said by validate and by every pass
    stage_specs: dict[str, Production] = field(default_factory=dict)  # a campaign's stages, each its effective production; {} for one `task:`
    _expansion: list[Expansion] = field(default_factory=list, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.production.name

    @property
    def production_dir(self) -> Path:
        base = Path(os.path.expanduser(self.spec.outputs.base_path))
        if not base.is_absolute():
            base = self.repo_root / base
        return base / self.name

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.spec.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def expansion(self) -> Expansion:
        if not self._expansion:
            self._expansion.append(expand(self.spec, self.stage_specs))
        return self._expansion[0]

    def stage_spec(self, stage: str) -> Production:
        """The effective production a stage's tasks run by ("" : the production's one `task:`)."""
        return self.stage_specs[stage] if stage else self.spec


def machine_name(flag: str | None) -> str:
    """``--machine``, else ``RECONCILER_MACHINE``, else ``local``."""
    return flag or os.environ.get("RECONCILER_MACHINE") or "local"


def production_file(tree: Tree, name: str) -> str:
    """The file of production ``name``: ``productions/<name>.yaml`` (or ``.yml``)."""
    if not _NAME.match(name):
        raise ConfigError(Problem("<command line>", 0, 0, "NAME", f"{name!r} is not a production name", "names match [A-Za-z][A-Za-z0-9._-]{0,63}"))
    for ext in (".yaml", ".yml"):
        path = f"{PRODUCTIONS_DIR}/{name}{ext}"
        if tree.read(path) is not None:
            return path
    known = ", ".join(list_names(tree)) or "none"
    raise ConfigError(Problem("<command line>", 0, 0, "NAME", f"no production {name!r} in {PRODUCTIONS_DIR}/ ({tree.label})", f"known: {known}"))


def list_names(tree: Tree) -> list[str]:
    return [PurePosixPath(p).stem for p in tree.list(PRODUCTIONS_DIR) if p.endswith((".yaml", ".yml"))]


def _must_read(tree: Tree, path: str) -> str:
    text = tree.read(path)
    if text is None:
        raise ConfigError(Problem(path, 0, 0, "", f"file not found ({tree.label})", "check the name and that it is committed"))
    return text


def default_scheduler(machine: str) -> Literal["local", "auto"]:
    """A machine file that does not say: ``local`` only for the machine named local, ``auto``
    (Slurm where its tools are) for any other, so a site's file never runs GPU jobs on a login node."""
    return "local" if machine == LOCAL else "auto"


def load_defaults(tree: Tree, machine: str) -> tuple[MachineDefaults, Document]:
    """``defaults/<machine>.yaml``, validated; ConfigError lists every problem of the file."""
    model, doc, problems = read_defaults(tree, machine)
    if problems or model is None:
        raise ConfigError(problems)
    return model, doc


def read_defaults(tree: Tree, machine: str) -> tuple[MachineDefaults | None, Document, list[Problem]]:
    """``defaults/<machine>.yaml`` with its problems, not raised: a production loaded over a
    machine file that is missing or wrong still has its own problems found (in the same round).

    The ``machine:`` section is optional, as in the seed tool's files: its name is the file's,
    its scheduler ``default_scheduler(name)``.
    """
    if not _NAME.match(machine):
        raise ConfigError(Problem("<command line>", 0, 0, "--machine", f"{machine!r} is not a machine name"))
    path = f"{DEFAULTS_DIR}/{machine}.yaml"
    text = tree.read(path)
    if text is None and machine == sites.FALLBACK_MACHINE:
        # packaged defaults (issue #13): a repository without defaults/local.yaml runs on this machine
        path, text = sites.site_label(machine), sites.site_text(machine)
    if text is None:
        known = ", ".join(sorted({PurePosixPath(p).stem for p in tree.list(DEFAULTS_DIR)} | {sites.FALLBACK_MACHINE}))
        return None, Document(path, {}), [Problem(path, 0, 0, "", f"no machine defaults for {machine!r}", f"known machines: {known}; choose with --machine or RECONCILER_MACHINE")]
    try:
        doc = parse_collecting(text, path)
    except ConfigError as exc:
        return None, Document(path, {}), exc.problems
    problems = list(doc.problems)
    data = dict(doc.data) if isinstance(doc.data, dict) else {}
    if not isinstance(doc.data, dict):
        problems.append(Problem(path, 1, 1, "", "a machine defaults file is a mapping of sections", "start with `resources:`"))
    section = data.get("machine", {})
    if isinstance(section, dict):
        section = dict(section)
        name = section.setdefault("name", machine)
        if name != machine:
            m = doc.mark(("machine", "name"))
            problems.append(Problem(m.file, m.line, m.col, "machine.name", f"name {name!r} does not match the file name {machine!r}", f"rename the file to defaults/{name}.yaml, or fix the name (or leave it out)"))
        section.setdefault("scheduler", default_scheduler(machine))
        data["machine"] = section
    try:
        model: MachineDefaults | None = MachineDefaults.model_validate(data)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, doc.marks, path))
        model = None
    return model, doc, problems


def parse_set(assignments: Iterable[str]) -> list[tuple[tuple[str, ...], Any]]:
    """``--set resources.memory_gb=64`` -> ``[(('resources', 'memory_gb'), 64)]`` (YAML scalars)."""
    out = []
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(Problem("<command line>", 0, 0, "--set", f"{item!r} is not KEY=VALUE", "e.g. --set resources.memory_gb=64"))
        value = parse(raw, "<command line>").data if raw.strip() else ""
        if isinstance(value, dict | list):
            raise ConfigError(Problem("<command line>", 0, 0, "--set", f"{key}: only scalar values can be set"))
        out.append((tuple(key.split(".")), value))
    return out


def load(
    tree: Tree,
    name: str,
    machine: str = "local",
    overrides: Iterable[tuple[tuple[str, ...], Any]] = (),
    repo_root: Path | None = None,
    check_tasks: bool = True,
) -> Loaded:
    """Load production ``name`` merged over ``defaults/<machine>.yaml``; ConfigError lists every problem."""
    path = production_file(tree, name)
    return load_file(tree, path, machine, overrides, repo_root, check_tasks)


LOADED_KEPT = 16
"""Productions a process keeps loaded (spec.load.load_file's memo)."""
_loaded: OrderedDict[tuple[Any, ...], Loaded] = OrderedDict()


def load_file(
    tree: Tree,
    path: str,
    machine: str = "local",
    overrides: Iterable[tuple[tuple[str, ...], Any]] = (),
    repo_root: Path | None = None,
    check_tasks: bool = True,
) -> Loaded:
    """The production of ``path`` merged over the machine's defaults; ConfigError lists every problem.

    A process that loads the same files again (`reconcile watch`, pass after pass, until a
    commit changes them) gets the same ``Loaded`` back, its expansion made once: a no-op pass
    over a 80,000-task campaign then costs its observation and plan, not 0.3 s of expanding
    an unchanged desired state. The key is everything the result depends on: both files'
    text, the machine, the overrides, the tree (its label names the commit) and the root.
    """
    overrides = tuple(overrides)
    text = _must_read(tree, path)
    key = (tree.label, path, text, tree.read(f"{DEFAULTS_DIR}/{machine}.yaml"), machine, overrides, repo_root, check_tasks)
    got = _loaded.get(key)
    if got is not None:
        _loaded.move_to_end(key)
        return got
    loaded = _load_file(tree, path, text, machine, overrides, repo_root, check_tasks)
    _loaded[key] = loaded
    while len(_loaded) > LOADED_KEPT:
        _loaded.popitem(last=False)
    return loaded


def _load_file(
    tree: Tree, path: str, text: str, machine: str, overrides: Iterable[tuple[tuple[str, ...], Any]], repo_root: Path | None, check_tasks: bool,
) -> Loaded:
    doc = parse_collecting(text, path)
    problems: list[Problem] = list(doc.problems)
    if not isinstance(doc.data, dict):
        raise ConfigError([*problems, Problem(path, 1, 1, "", "a production file is a mapping of sections", "start with `production:`")])
    defaults_or_none, ddoc, machine_problems = read_defaults(tree, machine)
    problems += machine_problems
    # A machine file that does not load is that machine's problem; the production's own are still found.
    defaults = defaults_or_none or MachineDefaults(machine=Machine(name=machine, scheduler=default_scheduler(machine)))
    warnings: list[Problem] = []
    overrides = list(overrides)
    whole = merge(doc, ddoc, defaults, defaults_or_none is not None, overrides, problems)
    merged, marks, sources = whole.data, whole.marks, whole.sources
    _outputs_from_structure(doc, merged, marks, sources, warnings)
    production = doc.data.get("production")
    if isinstance(production, dict) and "version" not in production:
        m = doc.mark(("production",))
        warnings.append(Problem(m.file, m.line, m.col, "production.version", "not set: its tags and status say v1.0", "set it, e.g. `version: v1.0`, and raise it when the science changes"))

    spec: Production | None = None
    try:
        spec = Production.model_validate(merged)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, marks, path))
        if check_tasks:
            problems.extend(renderer_problems(doc, salvage(merged, exc)))
    expected = PurePosixPath(path).stem
    given = production.get("name") if isinstance(production, dict) else None
    if isinstance(given, str) and given != expected:
        m = doc.mark(("production", "name"))
        problems.append(Problem(m.file, m.line, m.col, "production.name", f"name {given!r} does not match the file name {expected!r}", f"rename the file to productions/{given}.yaml or fix the name"))
    if spec is not None:
        problems.extend(execution_problems(spec, marks, path, "", defaults, pool=spec.task is not None))
    stage_specs: dict[str, Production] = {}
    if spec is not None and spec.stages:
        stage_specs = _stage_specs(spec, doc, ddoc, defaults, defaults_or_none is not None, overrides, problems)
    loaded = None
    if spec is not None and (stage_specs or not spec.stages):
        raw_exec = doc.data.get("execution") if isinstance(doc.data, dict) else None
        if isinstance(raw_exec, dict) and "pool" in raw_exec and all(p.execution.mode != "pool" for p in (spec, *stage_specs.values())):
            m = doc.mark(("execution", "pool"))
            warnings.append(Problem(m.file, m.line, m.col, "execution.pool", "has no effect: no stage runs in pool mode", "set execution.mode: pool (or a stage's), or remove it"))
        loaded = Loaded(spec, defaults, path, ddoc.file, sources, text, repo_root or Path.cwd(), tree.label, tuple(warnings), stage_specs)
        if any(c.isspace() for c in str(loaded.production_dir)):
            # Slurm splits `#SBATCH --output=...` at whitespace: such a path cannot be sent.
            m = marks.get(("outputs", "base_path"), Mark(path, 0, 0))
            problems.append(Problem(
                m.file, m.line, m.col, "outputs.base_path", f"the production directory {str(loaded.production_dir)!r} contains whitespace",
                "sbatch cannot take it in #SBATCH --output; choose a base_path (or clone the repository) without spaces",
            ))
        box = loaded.spec.environment.container
        if box is not None and (why := unbindable(box.runtime, str(loaded.production_dir))):
            m = marks.get(("environment", "container"), Mark(path, 0, 0))
            problems.append(Problem(m.file, m.line, m.col, "environment.container", why, "choose a base_path without ':' or ','"))
        if check_tasks:  # templates are checked even when other fields are wrong: every error in one round
            try:
                loaded.expansion()
            except TemplateError as exc:
                problems.extend(located(doc, exc))
    if problems:
        raise ConfigError(sorted(set(problems), key=lambda p: (p.file, p.line, p.col, p.field, p.message)))
    assert loaded is not None
    return loaded


def _stage_specs(
    spec: Production, doc: Document, ddoc: Document, defaults: MachineDefaults, machine_loaded: bool,
    overrides: list[tuple[tuple[str, ...], Any]], problems: list[Problem],
) -> dict[str, Production]:
    """Each stage's effective production (spec.merge), validated: a stage's own job type,
    execution and resources over the production's. {} when one does not validate (its
    problems are added, located at the stage's lines)."""
    out: dict[str, Production] = {}
    for name in spec.stages:
        m = merge(doc, ddoc, defaults, machine_loaded, overrides, problems, stage=name)
        try:
            out[name] = Production.model_validate(m.data)
        except ValidationError as exc:
            problems.extend(pydantic_problems(exc, m.marks, doc.file))
            return {}
        problems.extend(execution_problems(out[name], m.marks, doc.file, f"stages.{name}.", defaults, pool=True))
        problems.extend(pool_stage_problems(name, out[name], spec, doc))
    return out


def _outputs_from_structure(doc: Document, merged: dict[str, Any], marks: dict[tuple, Mark], sources: dict[str, str], warnings: list[Problem]) -> None:
    """A task without ``outputs`` writes the seed tool's layout that ``outputs.structure`` names
    (its productions validate with only ``task:`` added); with ``outputs`` given, a structure the
    production file itself sets would do nothing, and is said to."""
    task = merged.get("task")
    section = merged.get("outputs")
    structure = section.get("structure", "hierarchical") if isinstance(section, dict) else "hierarchical"
    if not isinstance(task, dict):
        return
    if "outputs" not in task:
        if structure in STRUCTURE_OUTPUTS:
            task["outputs"] = [STRUCTURE_OUTPUTS[structure]]
            mark = marks.get(("outputs", "structure"), marks.get(("task",), Mark(doc.file, 0, 0)))
            marks[("task", "outputs")] = mark
            sources["task.outputs"] = f"outputs.structure {structure} ({mark})"
        return
    own = doc.data.get("outputs")
    if isinstance(own, dict) and "structure" in own:
        m = doc.mark(("outputs", "structure"))
        warnings.append(Problem(m.file, m.line, m.col, "outputs.structure", "has no effect: task.outputs says where this production's outputs go", "remove it, or remove task.outputs to use the layout it names"))




def provenance(loaded: Loaded) -> list[tuple[str, Any, str]]:
    """(dotted path, effective value, source) for every leaf of the effective configuration."""
    rows = []
    for path, value in leaves(loaded.spec.model_dump(mode="json")):
        key = dotted(path)
        src = loaded.sources.get(key)
        if src is None:
            # a list or mapping given as a whole has its source on the container
            for i in range(len(path) - 1, 0, -1):
                src = loaded.sources.get(dotted(path[:i]))
                if src:
                    break
        rows.append((key, value, src or "default"))
    return rows
