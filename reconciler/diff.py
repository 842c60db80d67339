"""What a change to desired state would do: compare the productions at two git refs, task by task.

A pull request that edits ``productions/*.yaml`` is a plan in waiting, and a reviewer needs
to see its consequences rather than the YAML diff: which tasks appear, which disappear (and
whether they would be cancelled), which finished tasks become stale, which resources change.
Tasks are compared by key (stable when an axis grows), so adding a redshift shows exactly the
new tasks and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import git

from reconciler.errors import ConfigError, Problem
from reconciler.gitops import GitTree
from reconciler.spec.load import Loaded, list_names, load

SHOWN = 20
"""Keys listed per category in text and markdown (all of them with --json)."""

_TASK_PATHS = ("production.version", "science.redshifts", "science.realizations")
"""Paths whose changes are reported as task changes (or as the version), not as settings."""
_SETTINGS = ("resources", "execution", "outputs")


@dataclass
class Change:
    """One effective value that differs between the refs."""

    path: str
    old: Any
    new: Any


@dataclass
class ProductionDiff:
    """The consequences of the change for one production."""

    name: str
    status: str  # added, removed, changed, unchanged
    tasks_base: int = 0
    tasks_head: int = 0
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # newly excluded keys (a subset of removed) -> reason
    stale: list[str] = field(default_factory=list)
    version: tuple[str, str] | None = None
    resources: list[Change] = field(default_factory=list)
    other: list[Change] = field(default_factory=list)
    prune: bool = False
    rerun_on_change: bool = False
    stages: dict[str, dict[str, int]] = field(default_factory=dict)  # a campaign's: stage -> added/removed/stale counts, in stage order

    @property
    def changed(self) -> bool:
        return self.status != "unchanged"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = {"old": self.version[0], "new": self.version[1]} if self.version else None
        data["counts"] = {"added": len(self.added), "removed": len(self.removed), "stale": len(self.stale), "resources": len(self.resources)}
        data["notes"] = notes(self)
        return data


def _flatten(data: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict) and data:
        for k, v in data.items():
            yield from _flatten(v, path + (str(k),))
    else:
        yield ".".join(path), data


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _value_changes(old: Loaded, new: Loaded) -> tuple[list[Change], list[Change]]:
    """(settings changes: resources/execution/outputs, other changes not visible in tasks)."""
    a = dict(_flatten(old.spec.model_dump(mode="json")))
    b = dict(_flatten(new.spec.model_dump(mode="json")))
    settings: list[Change] = []
    other: list[Change] = []
    for path in sorted(set(a) | set(b)):
        if a.get(path) == b.get(path) or _under(path, _TASK_PATHS):
            continue
        setting = _under(path, _SETTINGS) or (path.startswith("stages.") and _under(path.split(".", 2)[-1], _SETTINGS))
        (settings if setting else other).append(Change(path, a.get(path), b.get(path)))
    return settings, other


def _per_stage(d: ProductionDiff, old: Loaded | None, new: Loaded | None) -> dict[str, dict[str, int]]:
    """Added, removed and stale tasks counted per stage of a campaign (in the head's stage order)."""
    order = [s.name for x in (new, old) if x is not None for s in x.expansion().stages]
    if not any(order):
        return {}
    stage_of = {t.key: t.stage for x in (old, new) if x is not None for t in x.expansion().tasks}
    out = {name: {"added": 0, "removed": 0, "stale": 0} for name in dict.fromkeys(order)}
    for label, keys in (("added", d.added), ("removed", d.removed), ("stale", d.stale)):
        for k in keys:
            out[stage_of[k]][label] += 1
    return out


def compare(name: str, old: Loaded | None, new: Loaded | None) -> ProductionDiff:
    """The task-level difference of one production between two loaded states (None: absent)."""
    if old is None and new is None:
        raise ValueError(f"production {name} exists at neither ref")
    before = old.expansion().by_key if old else {}
    after = new.expansion().by_key if new else {}
    status = "added" if old is None else "removed" if new is None else "changed"
    d = ProductionDiff(name, status, len(before), len(after))
    d.added = [k for k in after if k not in before]
    d.removed = [k for k in before if k not in after]
    d.stale = [k for k, t in after.items() if k in before and before[k].fingerprint != t.fingerprint]
    policy = (new or old).spec.execution  # type: ignore[union-attr]
    d.prune, d.rerun_on_change = policy.prune, policy.rerun_on_change
    d.stages = _per_stage(d, old, new)
    if new is not None:
        gone = set(d.removed)
        d.excluded = {e.key: e.reason for e in new.expansion().excluded if e.key in gone}
    if old is not None and new is not None:
        va, vb = old.spec.production.version, new.spec.production.version
        d.version = (va, vb) if va != vb else None
        d.resources, d.other = _value_changes(old, new)
        if not (d.added or d.removed or d.stale or d.version or d.resources or d.other):
            d.status = "unchanged"
    return d


def notes(d: ProductionDiff) -> list[str]:
    """What the reconciler will do about the changes, given the head's execution settings."""
    out = []
    if d.removed:
        what = "the production is removed: all" if d.status == "removed" else ""
        out.append(f"{what} {len(d.removed)} task(s) leave desired state: ".lstrip() + ("queued or running ones are cancelled (execution.prune: true)" if d.prune else "nothing is cancelled (cancelled only with execution.prune: true; this production has prune: false)"))
    if d.stale:
        out.append(f"{len(d.stale)} task(s) change fingerprint: " + ("finished ones are rerun (execution.rerun_on_change: true)" if d.rerun_on_change else "finished ones are reported stale, not rerun (rerun only with execution.rerun_on_change: true)"))
    if any(c.path == "outputs.base_path" for c in d.resources):
        out.append("outputs.base_path changes the production directory: outputs already made are not found there")
    return out


def diff_refs(repo: git.Repo, base: str, head: str, names: Sequence[str] = (), machine: str = "local") -> list[ProductionDiff]:
    """Per production (all at either ref, or ``names``), what changes from ``base`` to ``head``.

    Raises ConfigError listing the problems of every invalid production at either ref, each
    located as ``REF:file:line:col``.
    """
    root = Path(repo.working_tree_dir or ".")
    trees = {ref: GitTree(repo, ref) for ref in (base, head)}
    present = {ref: set(list_names(t)) for ref, t in trees.items()}
    wanted = list(names) or sorted(present[base] | present[head])
    problems: list[Problem] = []
    for n in wanted:
        if n not in present[base] and n not in present[head]:
            problems.append(Problem("<command line>", 0, 0, "NAME", f"no production {n!r} at {base} or at {head}"))
    loaded: dict[tuple[str, str], Loaded | None] = {}
    for n in wanted:
        for ref, tree in trees.items():
            if n not in present[ref]:
                loaded[(ref, n)] = None
                continue
            try:
                loaded[(ref, n)] = load(tree, n, machine, repo_root=root)
            except ConfigError as exc:
                problems += [Problem(f"{ref}:{p.file}", p.line, p.col, p.field, p.message, p.hint) for p in exc.problems]
    if problems:
        raise ConfigError(problems)
    return [compare(n, loaded[(base, n)], loaded[(head, n)]) for n in wanted if loaded[(base, n)] or loaded[(head, n)]]


# ---------------------------------------------------------------- rendering


def _v(value: Any) -> str:
    return "unset" if value is None else str(value)


def _keys(keys: Sequence[str], limit: int = SHOWN) -> str:
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def render_text(diffs: Sequence[ProductionDiff], base: str, head: str) -> str:
    """A terminal report: one block per production, the first keys of each list."""
    lines = [f"desired-state diff {base} -> {head}"]
    for d in diffs:
        head_line = f"{d.name}: {d.status}"
        if d.version:
            head_line += f" (version {d.version[0]} -> {d.version[1]})"
        lines += ["", head_line]
        if not d.changed:
            continue
        lines.append(f"  tasks: {d.tasks_base} -> {d.tasks_head}; +{len(d.added)} added, -{len(d.removed)} removed, ~{len(d.stale)} stale")
        if d.stages:
            lines.append("  per stage: " + "; ".join(f"{n} +{c['added']} -{c['removed']} ~{c['stale']}" for n, c in d.stages.items()))
        for label, keys in (("added", d.added), ("removed", d.removed), ("stale", d.stale)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): {_keys(keys)}")
        for key, reason in list(d.excluded.items())[:SHOWN]:
            lines.append(f"    excluded {key}: {reason}")
        for c in d.resources:
            lines.append(f"  setting {c.path}: {_v(c.old)} -> {_v(c.new)}")
        for c in d.other:
            lines.append(f"  other {c.path}: {_v(c.old)} -> {_v(c.new)}")
        for note in notes(d):
            lines.append(f"  note: {note}")
    if not diffs:
        lines.append("no productions")
    elif not any(d.changed for d in diffs):
        lines.append("\nno changes")
    return "\n".join(lines)


def _code(text: Any) -> str:
    return "`" + str(text).replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"


def render_markdown(diffs: Sequence[ProductionDiff], base: str, head: str) -> str:
    """A pull-request comment: a heading and a table of counts per production, keys in <details>."""
    changed = [d for d in diffs if d.changed]
    lines = [f"### Desired-state plan: {_code(base)} → {_code(head)}", ""]
    if not changed:
        return "\n".join(lines + ["No production changes: nothing would be submitted, cancelled or rerun.", ""])
    unchanged = [d.name for d in diffs if not d.changed]
    for d in changed:
        title = f"#### {_code(d.name)}: {d.status}"
        if d.version:
            title += f" (version {_code(d.version[0])} → {_code(d.version[1])})"
        blocks = [
            [title],
            [
                "| tasks at base | tasks at head | added | removed | stale | settings changed |",
                "|---:|---:|---:|---:|---:|---:|",
                f"| {d.tasks_base} | {d.tasks_head} | {len(d.added)} | {len(d.removed)} | {len(d.stale)} | {len(d.resources)} |",
            ],
        ]
        if d.stages:
            blocks.append(["| stage | added | removed | stale |", "|---|---:|---:|---:|"] + [
                f"| {_code(n)} | {c['added']} | {c['removed']} | {c['stale']} |" for n, c in d.stages.items()
            ])
        if notes(d):
            blocks.append([f"- {note}" for note in notes(d)])
        if d.resources or d.other:
            blocks.append(["| setting | base | head |", "|---|---|---|"] + [f"| {_code(c.path)} | {_code(_v(c.old))} | {_code(_v(c.new))} |" for c in d.resources + d.other])
        for label, keys in (("added", d.added), ("removed", d.removed), ("stale", d.stale)):
            if keys:
                shown = " ".join(_code(k) for k in keys[:SHOWN])
                more = f" … and {len(keys) - SHOWN} more (`reconcile diff --json` lists all)" if len(keys) > SHOWN else ""
                blocks.append([f"<details><summary>{len(keys)} {label} task(s)</summary>", "", shown + more, "", "</details>"])
        for block in blocks:
            lines += block + [""]
    if unchanged:
        lines += [f"Unchanged: {', '.join(_code(n) for n in unchanged)}", ""]
    return "\n".join(lines)


def to_json(diffs: Sequence[ProductionDiff], base: str, head: str) -> dict[str, Any]:
    """The whole report with every key (for scripts and bots)."""
    return {"base": base, "head": head, "changed": any(d.changed for d in diffs), "totals": summary_counts(diffs), "productions": [d.to_json() for d in diffs]}


def exit_code(diffs: Sequence[ProductionDiff]) -> int:
    """0 when nothing changes, 1 when something does (as ``reconcile plan``)."""
    return 1 if any(d.changed for d in diffs) else 0


def summary_counts(diffs: Sequence[ProductionDiff]) -> Mapping[str, int]:
    """Totals over all productions."""
    return {
        "added": sum(len(d.added) for d in diffs),
        "removed": sum(len(d.removed) for d in diffs),
        "stale": sum(len(d.stale) for d in diffs),
        "productions_changed": sum(d.changed for d in diffs),
    }
