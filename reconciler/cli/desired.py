"""Verbs over desired state: validate, list, show, schema, init. None of them runs a pass."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from reconciler import gitops
from reconciler.cli.options import add_source, options
from reconciler.cli.render import emit
from reconciler.errors import EXIT_INVALID, EXIT_OK, ConfigError
from reconciler.production_dir import init_production_dir
from reconciler.schema import write_schemas
from reconciler.session import load_desired
from reconciler.sites import FALLBACK_MACHINE
from reconciler.spec.expand import count_tasks
from reconciler.spec.load import (
    DEFAULTS_DIR,
    PRODUCTIONS_DIR,
    Loaded,
    WorkTree,
    list_names,
    load,
    load_defaults,
    load_file,
    provenance,
)

EXAMPLES = {
    "validate": "reconcile validate                      # every production and defaults file\n  reconcile validate productions/alpha.yaml --machine nersc",
    "list": "reconcile list --machine nersc",
    "show": "reconcile show alpha --machine nersc   # effective values and where each came from",
    "schema": "reconcile schema                        # writes schemas/*.schema.json",
    "init": "reconcile init demo                     # directory tree + tag production/demo_v1.0_<time>",
}


def cmd_validate(args: argparse.Namespace) -> int:
    opts = options(args)
    root = Path(opts.repo).resolve() if opts.repo else Path.cwd()
    tree = WorkTree(root)
    paths = [str(p) for p in args.paths] or (tree.list(PRODUCTIONS_DIR) + tree.list(DEFAULTS_DIR))
    paths = [p for p in paths if p.endswith((".yaml", ".yml"))]
    machines = [opts.machine_name]
    if args.all_machines:
        # every machine of defaults/; without any, the one that needs none (packaged local)
        machines = [Path(p).stem for p in tree.list(DEFAULTS_DIR) if p.endswith(".yaml")] or [FALLBACK_MACHINE]
    results: list[dict[str, Any]] = []
    failed = False
    for path in paths:
        is_defaults = Path(path).parent.name == DEFAULTS_DIR and not Path(path).is_absolute()
        for machine in ([Path(path).stem] if is_defaults else machines):
            try:
                if is_defaults:
                    load_defaults(tree, machine)
                    results.append({"file": path, "ok": True, "kind": "defaults"})
                else:
                    loaded = load_file(tree, path, machine, repo_root=root)
                    results.append({
                        "file": path, "ok": True, "kind": "production", "machine": machine, "tasks": len(loaded.expansion().tasks),
                        **_stage_counts(loaded),
                        "warnings": [str(w) for w in loaded.warnings],
                    })
            except ConfigError as exc:
                failed = True
                results.append({"file": path, "ok": False, "machine": machine, "problems": [str(p) for p in exc.problems]})
            if is_defaults:
                break
    if args.json:
        print(json.dumps({"ok": not failed, "files": results}, indent=2))
    else:
        said: set[str] = set()  # a broken machine file is one problem, not one per production
        for r in results:
            if r["ok"]:
                extra = f" ({r['tasks']} tasks on {r['machine']}{_stages_text(r)})" if r["kind"] == "production" else " (machine defaults)"
                print(f"ok      {r['file']}{extra}")
            else:
                print(f"INVALID {r['file']} (machine {r['machine']})")
            repeated = [p for p in r.get("problems", []) if p in said]
            for p in r.get("problems", []):
                if p not in said:
                    print(f"  {p}", file=sys.stderr)
                    said.add(p)
            if repeated:
                print(f"  ({len(repeated)} problem(s) as above)", file=sys.stderr)
            for w in r.get("warnings", []):
                if w not in said:
                    print(f"  warning: {w}", file=sys.stderr)
                    said.add(w)
    if not paths:
        print(f"no production or defaults files under {root}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_INVALID if failed else EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    opts = options(args)
    repo = gitops.open_repo(opts.repo)
    tree = gitops.GitTree(repo, opts.ref)
    rows = []
    for name in list_names(tree):
        row: dict[str, Any] = {"name": name, "file": f"{PRODUCTIONS_DIR}/{name}.yaml", "latest_tag": gitops.latest_tag(repo, name)}
        try:
            loaded = load(tree, name, opts.machine_name, repo_root=Path(repo.working_tree_dir or "."), check_tasks=False)
            row.update(version=loaded.spec.production.version, tasks=_count(loaded))  # counted, not expanded
        except ConfigError as exc:
            row.update(error=f"invalid: {len(exc.problems)} problem(s); run `reconcile validate`")
        rows.append(row)
    lines = []
    for r in rows:
        detail = r.get("error") or f"{r['version']:<8} {r['tasks']:>8} tasks  tag: {r['latest_tag'] or '-'}"
        lines.append(f"{r['name']:<20} -> {r['file']:<32} {detail}")
    emit(args.json, rows, "\n".join(lines) or f"no productions in {PRODUCTIONS_DIR}/ at {opts.ref}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    loaded = load_desired(options(args), args.name).loaded
    rows = provenance(loaded)
    exp = loaded.expansion()
    data = {
        "name": loaded.name,
        "machine": loaded.machine.machine.name,
        "source": loaded.source_label,
        "production_dir": str(loaded.production_dir),
        "config_hash": loaded.config_hash,
        "tasks": len(exp.tasks),
        **_stage_counts(loaded),
        "excluded": [{"key": e.key, "reason": e.reason} for e in exp.excluded],
        "values": [{"path": p, "value": v, "source": s} for p, v, s in rows],
    }
    width = max(len(p) for p, _, _ in rows)
    lines = [
        f"production {loaded.name} on machine {loaded.machine.machine.name} (from {loaded.source_label})",
        f"production directory: {loaded.production_dir}",
        f"tasks: {len(exp.tasks)} of {exp.total} ({len(exp.excluded)} excluded){_stages_text(_stage_counts(loaded))}; config hash {loaded.config_hash[:12]}",
        "",
    ]
    for p, v, s in rows:
        lines.append(f"{p:<{width}}  {json.dumps(v):<30} # {s}")
    if exp.excluded:
        lines += ["", "excluded:"] + [f"  {e.key}: {e.reason}" for e in exp.excluded]
    emit(args.json, data, "\n".join(lines))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    repo = gitops.open_repo(options(args).repo)
    out = Path(args.output) if args.output else Path(repo.working_tree_dir or ".") / "schemas"
    for path in write_schemas(out):
        print(f"wrote {path}")
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    desired = load_desired(options(args), args.name)
    loaded = desired.loaded
    version = args.version or loaded.spec.production.version
    tag, created = gitops.ensure_tag(desired.repo, loaded, version, desired.dirty, commit=desired.commit)
    pdir = init_production_dir(loaded, gitops.version_info(loaded, desired.commit, tag, desired.dirty))
    data = {"production": loaded.name, "directory": str(pdir), "tag": tag, "tag_created": created, "commit": desired.commit}
    emit(args.json, data, f"production {loaded.name}: directory {pdir}\n{'created' if created else 'unchanged, reusing'} tag {tag} on {desired.commit[:10]}")
    return EXIT_OK


def register(add: Any) -> None:
    p = add("validate", cmd_validate, "validate production and machine-defaults files (exit 2 if any is invalid)", EXAMPLES["validate"])
    p.add_argument("paths", nargs="*", type=Path, help="files to check (default: productions/*.yaml and defaults/*.yaml)")
    p.add_argument("--all-machines", action="store_true", help="validate each production against every machine in defaults/")
    add_source(p)
    add_source(add("list", cmd_list, "list productions: name -> file, version, task count, latest tag", EXAMPLES["list"]))
    p = add("show", cmd_show, "show a production's effective configuration and where each value came from", EXAMPLES["show"])
    p.add_argument("name")
    add_source(p)
    p = add("schema", cmd_schema, "write JSON Schemas of production and defaults files", EXAMPLES["schema"])
    p.add_argument("--output", default=None, help="directory (default: schemas/ of the repository)")
    add_source(p, json_flag=False)
    p = add("init", cmd_init, "create the production directory and a provenance tag", EXAMPLES["init"])
    p.add_argument("name")
    p.add_argument("--version", dest="version", default=None, help="version for the tag (default: production.version)")
    add_source(p)



def _count(loaded: Loaded) -> int:
    counted = count_tasks(loaded.spec)
    return counted if counted is not None else len(loaded.expansion().tasks)


def _stage_counts(loaded: Loaded) -> dict[str, Any]:
    """A campaign's tasks per stage, in stage order ({} for a production with one `task:`)."""
    stages = loaded.expansion().stages
    return {"stages": {s.name: len(s.tasks) for s in stages}} if loaded.spec.stages else {}


def _stages_text(row: dict[str, Any]) -> str:
    stages = row.get("stages")
    return ": " + ", ".join(f"{name} {n}" for name, n in stages.items()) if stages else ""
