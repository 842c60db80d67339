"""Load desired state: parse, merge machine defaults, validate, and remember where each value came from.

Precedence, lowest first: machine defaults < the job type's override < the production's
own values < command-line ``--set``. (The seed tool applied job-type overrides last and so
silently dropped a production's own ``memory_gb``.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from pydantic import ValidationError

from reconciler.errors import ConfigError, Problem
from reconciler.spec import environment
from reconciler.spec.expand import Expansion, TemplateError, expand
from reconciler.spec.models import EXECUTION_KEYS, NAME_PATTERN, MachineDefaults, Production
from reconciler.spec.yamlsrc import Document, Mark, dotted, parse

PRODUCTIONS_DIR = "productions"
DEFAULTS_DIR = "defaults"
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
            self._expansion.append(expand(self.spec))
        return self._expansion[0]


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


def _pydantic_problems(exc: ValidationError, marks: Mapping[tuple, Mark], default_file: str) -> list[Problem]:
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
            hint = "remove it or fix its spelling; `reconcile schema` lists every field"
        elif kind == "missing":
            msg = "required field is missing"
            hint = "add it"
        elif kind == "string_pattern_mismatch":
            hint = "no spaces, quotes, newlines or shell characters"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        m = marks.get(path) or Mark(default_file, 0, 0)
        key = dotted(data_path)
        prob = Problem(m.file, m.line, m.col, key, msg, hint)
        # a union reports one error per branch; keep the most telling one
        if key not in out or out[key].message.startswith(("Input should be a valid", "Input should be")):
            out[key] = prob
    return list(out.values())


def load_defaults(tree: Tree, machine: str) -> tuple[MachineDefaults, Document]:
    if not _NAME.match(machine):
        raise ConfigError(Problem("<command line>", 0, 0, "--machine", f"{machine!r} is not a machine name"))
    path = f"{DEFAULTS_DIR}/{machine}.yaml"
    text = tree.read(path)
    if text is None:
        known = ", ".join(PurePosixPath(p).stem for p in tree.list(DEFAULTS_DIR)) or "none"
        raise ConfigError(Problem(path, 0, 0, "", f"no machine defaults for {machine!r}", f"known machines: {known}; choose with --machine or RECONCILER_MACHINE"))
    doc = parse(text, path)
    try:
        model = MachineDefaults.model_validate(doc.data if isinstance(doc.data, dict) else {})
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(exc, doc.marks, path)) from None
    return model, doc


def _leaves(data: Any, path: tuple = ()) -> Iterable[tuple[tuple, Any]]:
    if isinstance(data, dict) and data:
        for k, v in data.items():
            yield from _leaves(v, path + (k,))
    else:
        yield path, data


def _set(target: dict, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[path[-1]] = value


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


def load_file(
    tree: Tree,
    path: str,
    machine: str = "local",
    overrides: Iterable[tuple[tuple[str, ...], Any]] = (),
    repo_root: Path | None = None,
    check_tasks: bool = True,
) -> Loaded:
    text = _must_read(tree, path)
    doc = parse(text, path)
    if not isinstance(doc.data, dict):
        raise ConfigError(Problem(path, 1, 1, "", "a production file is a mapping of sections", "start with `production:`"))
    defaults, ddoc = load_defaults(tree, machine)
    problems: list[Problem] = []

    merged: dict[str, Any] = {}
    marks: dict[tuple, Mark] = {(): doc.marks.get((), Mark(path, 1, 1))}
    sources: dict[str, str] = {}

    def put(layer: Any, src_doc: Document | None, src_path: tuple, dst: tuple, label: str | None = None) -> None:
        for sub, value in _leaves(layer):
            full = dst + sub
            _set(merged, full, value)
            mark = src_doc.mark(src_path + sub) if src_doc else Mark("<command line>", 0, 0)
            for i in range(1, len(full) + 1):
                marks.setdefault(full[:i], mark)
            marks[full] = mark
            sources[dotted(full)] = label or str(mark)

    dd = ddoc.data if isinstance(ddoc.data, dict) else {}
    for section in ("resources", "execution", "outputs"):
        if section in dd:
            put(dd[section], ddoc, (section,), (section,))
    job_type = None
    pexec = doc.data.get("execution")
    if isinstance(pexec, dict) and pexec.get("job_type") is not None:
        job_type = pexec.get("job_type")
    elif defaults.execution.job_type:
        job_type = defaults.execution.job_type
    for key_path, value in overrides:
        if key_path == ("execution", "job_type"):
            job_type = value
    if job_type is not None:
        ov = defaults.job_type_overrides.get(str(job_type))
        if ov is None:
            known = ", ".join(defaults.job_type_overrides) or "none"
            m = doc.mark(("execution", "job_type"))
            problems.append(Problem(m.file, m.line, m.col, "execution.job_type", f"unknown job type {job_type!r} on machine {defaults.machine.name!r}", f"known: {known}"))
        else:
            raw_ov = dd.get("job_type_overrides", {}).get(str(job_type), {})
            for k, v in raw_ov.items():
                if k in environment.JOB_TYPE_KEYS:
                    continue  # merged with the other layers' environment below
                section = "execution" if k in EXECUTION_KEYS else "resources"
                put({k: v}, ddoc, ("job_type_overrides", str(job_type)), (section,))
    for section, value in doc.data.items():
        if isinstance(value, dict):
            put(value, doc, (section,), (section,))
        else:
            _set(merged, (section,), value)
            marks[(section,)] = doc.mark((section,))
            sources[section] = str(doc.mark((section,)))
    # environment: lists that add up across the layers, not replaced (spec/environment.py)
    environment.merge_into(merged, sources, defaults, ddoc, None if job_type is None else str(job_type), doc)
    for key_path, value in overrides:
        put({key_path[-1]: value}, None, (), key_path[:-1], "command line")
        marks[key_path] = Mark("<command line>", 0, 0)

    spec: Production | None = None
    try:
        spec = Production.model_validate(merged)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, marks, path))
    if spec is not None:
        expected = PurePosixPath(path).stem
        if spec.production.name != expected:
            m = doc.mark(("production", "name"))
            problems.append(Problem(m.file, m.line, m.col, "production.name", f"name {spec.production.name!r} does not match the file name {expected!r}", f"rename the file to productions/{spec.production.name}.yaml or fix the name"))
        if spec.execution.batch_size > defaults.machine.max_array_size:
            m = marks.get(("execution", "batch_size"), Mark(path, 0, 0))
            problems.append(Problem(m.file, m.line, m.col, "execution.batch_size", f"{spec.execution.batch_size} exceeds the machine's max_array_size {defaults.machine.max_array_size}", "array indices are batch-local; lower batch_size"))
    loaded = None
    if spec is not None and not problems:
        loaded = Loaded(spec, defaults, path, ddoc.file, sources, text, repo_root or Path.cwd(), tree.label)
        if any(c.isspace() for c in str(loaded.production_dir)):
            # Slurm splits `#SBATCH --output=...` at whitespace: such a path cannot be sent.
            m = marks.get(("outputs", "base_path"), Mark(path, 0, 0))
            problems.append(Problem(
                m.file, m.line, m.col, "outputs.base_path", f"the production directory {str(loaded.production_dir)!r} contains whitespace",
                "sbatch cannot take it in #SBATCH --output; choose a base_path (or clone the repository) without spaces",
            ))
        if check_tasks:
            try:
                loaded.expansion()
            except TemplateError as exc:
                m = doc.mark(tuple(exc.field.split(".")))
                problems.append(Problem(m.file, m.line, m.col, exc.field, str(exc), exc.hint))
    if problems:
        raise ConfigError(problems)
    assert loaded is not None
    return loaded


def provenance(loaded: Loaded) -> list[tuple[str, Any, str]]:
    """(dotted path, effective value, source) for every leaf of the effective configuration."""
    rows = []
    for path, value in _leaves(loaded.spec.model_dump(mode="json")):
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

