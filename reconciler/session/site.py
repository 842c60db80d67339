"""Verbs about where productions live rather than what they do: adopting the outputs of an
earlier tool, reading a production's status back from the results branch, its lease, and the
doctor's checks of this site."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler import gitops, markers, outputs
from reconciler.core.outcome import adoptable
from reconciler.core.states import OutputState
from reconciler.doctor.judge import Check
from reconciler.errors import ConfigError, UsageError
from reconciler.lease import Lease
from reconciler.session.desired import Options, load_desired
from reconciler.session.production import open_production
from reconciler.spec.load import (
    DEFAULTS_DIR,
    Loaded,
    list_names,
    load,
    parse_set,
)
from reconciler.spec.models import NAME_PATTERN


def adopt(opts: Options, name: str) -> tuple[list[str], list[str]]:
    """Write `.adopted` markers for valid outputs this reconciler never produced, so later passes
    answer them from a directory listing. Returns (adopted keys, keys whose outputs are invalid)."""
    with open_production(opts, name, write=True) as prod:
        history = prod.ledger.history()
        candidates = [t for t in prod.engine.expansion.tasks if t.key not in history or history[t.key].submissions == 0]
        validators = {s.name: s.spec.the_task.validator for s in prod.engine.expansion.stages}
        states = outputs.observe_stages(prod.directory, candidates, validators, deep=True)
        now = time.time()
        adopted, invalid = [], []
        for t in candidates:
            if adoptable(states[t.key], 0):
                markers.write_marker(prod.directory, t, attempt=0, exit_code=0, start=now, end=now, adopted=True)
                adopted.append(t.key)
            elif states[t.key] is OutputState.INVALID:
                invalid.append(t.key)
        if adopted:
            prod.ledger.event("adopt", f"adopted {len(adopted)} task(s) with valid outputs and no marker", now)
    return adopted, invalid


def load_report_inputs(opts: Options, name: str, branch: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(status.json, history lines) of production ``name`` from the results branch."""
    from reconciler.results.branch import read_branch_file
    from reconciler.results.document import parse_history
    from reconciler.results.layout import HISTORY_FILE, status_path

    if not re.match(NAME_PATTERN, name):
        raise UsageError(f"{name!r} is not a production name")
    repo = gitops.open_repo(opts.repo)
    root = Path(repo.working_tree_dir or ".")
    repo.close()
    raw = read_branch_file(root, status_path(name), branch)
    if raw is None:
        raise UsageError(
            f"no status of production {name!r} on branch {branch!r}: a reconcile pass publishes it "
            f"(run `reconcile once {name}`), or pass --branch"
        )
    try:
        status = json.loads(raw)
    except ValueError:
        raise UsageError(f"{branch}:{status_path(name)} is not valid JSON") from None
    return status, parse_history(read_branch_file(root, status_path(name, HISTORY_FILE), branch))


def lease_of(opts: Options, name: str) -> Lease:
    """The lease of production ``name`` (its directory from desired state at the ref, or at its
    last good revision when the ref's does not load), not taken: `info()` only reads (and writes a probe file for the file server's clock where it can)."""
    try:
        desired = load_desired(opts, name)
    except ConfigError:
        good = gitops.last_good(gitops.open_repo(opts.repo), name)
        if good is None:
            raise
        desired = load_desired(replace(opts, ref=good, allow_dirty=False), name)
    return Lease(desired.loaded.production_dir / "metadata", opts.lease_ttl)


def doctor(opts: Options) -> list[Check]:
    """`reconcile doctor`: the machine defaults and every production at the ref, checked against
    this site (doctor.checkup). A production that does not load is one WARN line, not an error:
    the doctor is what a user runs when things do not work."""
    from reconciler.doctor import checkup
    from reconciler.errors import ConfigError
    from reconciler.spec.load import load_defaults

    repo = gitops.open_repo(opts.repo)
    tree = gitops.GitTree(repo, opts.ref)
    root = Path(repo.working_tree_dir or ".")
    machine, _doc = load_defaults(tree, opts.machine_name)  # a machine that does not load: exit 2, as everywhere
    overrides = parse_set(opts.overrides)
    loaded: list[Loaded] = []
    problems: list[tuple[str, str]] = []
    for name in list_names(tree):
        try:
            loaded.append(load(tree, name, opts.machine_name, overrides, repo_root=root, check_tasks=False))
        except ConfigError as exc:
            problems.append((name, str(exc.problems[0]) + (f" (+{len(exc.problems) - 1} more)" if len(exc.problems) > 1 else "")))
    return checkup(
        machine=machine, defaults_file=f"{DEFAULTS_DIR}/{opts.machine_name}.yaml", scheduler=opts.scheduler or machine.machine.scheduler,
        productions=loaded, problems=problems, repo_root=root, status_branch=opts.status_branch,
    )
