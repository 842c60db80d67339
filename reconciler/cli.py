"""The `reconcile` command line: verbs over desired state, the loop and its status.

Exit codes: 0 ok / nothing to do, 1 something to do (plan, diff), 2 invalid input,
3 another reconciler holds the lock, 4 transient scheduler/filesystem failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.errors import EXIT_INVALID, EXIT_OK, ConfigError, ReconcilerError
from reconciler.spec.load import (
    DEFAULTS_DIR,
    PRODUCTIONS_DIR,
    Loaded,
    WorkTree,
    list_names,
    load,
    load_defaults,
    load_file,
    machine_name,
    parse_set,
    provenance,
)

Handler = Callable[[argparse.Namespace], int]


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _root(args: argparse.Namespace) -> Path:
    from reconciler.gitops import open_repo

    repo = open_repo(args.repo)
    return Path(repo.working_tree_dir or ".")


def load_desired(args: argparse.Namespace, name: str, *, read_only: bool) -> tuple[Loaded, Any, list[str]]:
    """Load production ``name`` from the git ref (or the working tree with --allow-dirty).

    Read-only verbs show the committed state and warn about uncommitted changes; verbs that
    act refuse them unless --allow-dirty.
    """
    from reconciler.gitops import GitTree, desired_tree, dirty_files, open_repo

    overrides = parse_set(getattr(args, "set", None) or [])
    machine = machine_name(args.machine)
    if read_only and not args.allow_dirty:
        repo = open_repo(args.repo)
        tree: Any = GitTree(repo, args.ref)
        dirt = dirty_files(repo, [f"{PRODUCTIONS_DIR}/{name}.yaml", DEFAULTS_DIR]) if args.ref == "HEAD" else []
        if dirt:
            _warn(f"reading committed state at {args.ref}; uncommitted changes ignored: {', '.join(dirt)}")
    else:
        tree, repo, dirt = desired_tree(args.repo, args.ref, args.allow_dirty, [name])
        if dirt:
            _warn(f"--allow-dirty: using uncommitted changes: {', '.join(dirt)}")
    root = Path(repo.working_tree_dir or ".")
    return load(tree, name, machine, overrides, repo_root=root), repo, dirt


# ---------------------------------------------------------------- desired-state verbs


def cmd_validate(args: argparse.Namespace) -> int:
    root = Path(args.repo).resolve() if args.repo else Path.cwd()
    tree = WorkTree(root)
    paths = [str(p) for p in args.paths] or (tree.list(PRODUCTIONS_DIR) + tree.list(DEFAULTS_DIR))
    paths = [p for p in paths if p.endswith((".yaml", ".yml"))]
    machines = [machine_name(args.machine)]
    if args.all_machines:
        machines = [Path(p).stem for p in tree.list(DEFAULTS_DIR) if p.endswith(".yaml")]
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
                    results.append({"file": path, "ok": True, "kind": "production", "machine": machine, "tasks": len(loaded.expansion().tasks)})
            except ConfigError as exc:
                failed = True
                results.append({"file": path, "ok": False, "machine": machine, "problems": [str(p) for p in exc.problems]})
            if is_defaults:
                break
    if args.json:
        print(json.dumps({"ok": not failed, "files": results}, indent=2))
    else:
        for r in results:
            if r["ok"]:
                extra = f" ({r['tasks']} tasks on {r['machine']})" if r["kind"] == "production" else " (machine defaults)"
                print(f"ok      {r['file']}{extra}")
            else:
                print(f"INVALID {r['file']} (machine {r['machine']})")
                for p in r["problems"]:
                    print(f"  {p}", file=sys.stderr)
    if not paths:
        print(f"no production or defaults files under {root}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_INVALID if failed else EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from reconciler.gitops import GitTree, latest_tag, open_repo

    repo = open_repo(args.repo)
    tree = GitTree(repo, args.ref)
    rows = []
    for name in list_names(tree):
        row: dict[str, Any] = {"name": name, "file": f"{PRODUCTIONS_DIR}/{name}.yaml", "latest_tag": latest_tag(repo, name)}
        try:
            loaded = load(tree, name, machine_name(args.machine), repo_root=Path(repo.working_tree_dir or "."))
            row.update(version=loaded.spec.production.version, tasks=len(loaded.expansion().tasks))
        except ConfigError as exc:
            row.update(error=f"invalid: {len(exc.problems)} problem(s); run `reconcile validate`")
        rows.append(row)
    lines = []
    for r in rows:
        detail = r.get("error") or f"{r['version']:<8} {r['tasks']:>8} tasks  tag: {r['latest_tag'] or '-'}"
        lines.append(f"{r['name']:<20} -> {r['file']:<32} {detail}")
    _out(args, rows, "\n".join(lines) or f"no productions in {PRODUCTIONS_DIR}/ at {args.ref}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    loaded, _repo, _dirt = load_desired(args, args.name, read_only=True)
    rows = provenance(loaded)
    exp = loaded.expansion()
    data = {
        "name": loaded.name,
        "machine": loaded.machine.machine.name,
        "source": loaded.source_label,
        "production_dir": str(loaded.production_dir),
        "config_hash": loaded.config_hash,
        "tasks": len(exp.tasks),
        "excluded": [{"key": e.key, "reason": e.reason} for e in exp.excluded],
        "values": [{"path": p, "value": v, "source": s} for p, v, s in rows],
    }
    width = max(len(p) for p, _, _ in rows)
    lines = [
        f"production {loaded.name} on machine {loaded.machine.machine.name} (from {loaded.source_label})",
        f"production directory: {loaded.production_dir}",
        f"tasks: {len(exp.tasks)} of {exp.total} ({len(exp.excluded)} excluded); config hash {loaded.config_hash[:12]}",
        "",
    ]
    for p, v, s in rows:
        lines.append(f"{p:<{width}}  {json.dumps(v):<30} # {s}")
    if exp.excluded:
        lines += ["", "excluded:"] + [f"  {e.key}: {e.reason}" for e in exp.excluded]
    _out(args, data, "\n".join(lines))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from reconciler.schema import write_schemas

    out = Path(args.output) if args.output else _root(args) / "schemas"
    for path in write_schemas(out):
        print(f"wrote {path}")
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from reconciler.gitops import ensure_tag, version_info
    from reconciler.production_dir import init_production_dir

    loaded, repo, dirt = load_desired(args, args.name, read_only=False)
    version = args.version or loaded.spec.production.version
    tag, created = ensure_tag(repo, loaded, version, dirt)
    pdir = init_production_dir(loaded, version_info(loaded, repo, tag, dirt))
    data = {"production": loaded.name, "directory": str(pdir), "tag": tag, "tag_created": created}
    _out(args, data, f"production {loaded.name}: directory {pdir}\n{'created' if created else 'unchanged, reusing'} tag {tag}")
    return EXIT_OK


# ---------------------------------------------------------------- parser


EXAMPLES = {
    "validate": "reconcile validate                      # every production and defaults file\n  reconcile validate productions/alpha.yaml --machine nersc",
    "list": "reconcile list --machine nersc",
    "show": "reconcile show alpha --machine nersc   # effective values and where each came from",
    "schema": "reconcile schema                        # writes schemas/*.schema.json",
    "init": "reconcile init demo                     # directory tree + tag production/demo_v1.0_<time>",
}


def _common(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    p.add_argument("--repo", type=Path, default=None, help="git repository holding productions/ (default: the one around the current directory)")
    p.add_argument("--ref", default="HEAD", help="git ref to read desired state from (default: HEAD)")
    p.add_argument("--machine", default=None, help="machine defaults to use (default: $RECONCILER_MACHINE or 'local')")
    p.add_argument("--allow-dirty", action="store_true", help="use uncommitted changes of the working tree (development only)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value, e.g. --set resources.memory_gb=64 (highest precedence)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconcile",
        description="Make a SLURM cluster (or this machine) converge to the productions committed in git.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes: 0 ok, 1 changes pending (plan/diff), 2 invalid input, 3 locked, 4 transient failure.",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {EXAMPLES.get(name, '')}", formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=handler)
        return p

    p = add("validate", cmd_validate, "validate production and machine-defaults files (exit 2 if any is invalid)")
    p.add_argument("paths", nargs="*", type=Path, help="files to check (default: productions/*.yaml and defaults/*.yaml)")
    p.add_argument("--all-machines", action="store_true", help="validate each production against every machine in defaults/")
    _common(p)
    p = add("list", cmd_list, "list productions: name -> file, version, task count, latest tag")
    _common(p)
    p = add("show", cmd_show, "show a production's effective configuration and where each value came from")
    p.add_argument("name")
    _common(p)
    p = add("schema", cmd_schema, "write JSON Schemas of production and defaults files")
    p.add_argument("--output", default=None, help="directory (default: schemas/ of the repository)")
    _common(p, json_flag=False)
    p = add("init", cmd_init, "create the production directory and a provenance tag")
    p.add_argument("name")
    p.add_argument("--version", dest="version", default=None, help="version for the tag (default: production.version)")
    _common(p)

    from reconciler import commands, gitops_commands

    commands.register(add, _common)
    gitops_commands.register(add, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_INVALID
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        for p in exc.problems:
            print(str(p), file=sys.stderr)
        print(f"{len(exc.problems)} problem(s); nothing was changed.", file=sys.stderr)
        return exc.exit_code
    except ReconcilerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
