"""The one way through the code: load desired state at a ref, open a production, run a pass.

Every verb of the command line goes through here, so a pass means the same thing whoever
asks for it: the desired state read from git (never from the working tree, unless
``allow_dirty``), the production's lock, its ledger (rebuilt from logs/ if lost), its
scheduler, the engine's observe -> plan -> apply, and publishing status to the results
branch as the last step, once, whether the pass succeeded or not.

Imports run one way: cli -> session -> engine -> core; the adapters (git, ledger, lock,
scheduler, results branch) are opened here and handed to the engine.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import git

from reconciler import gitops, markers, outputs
from reconciler.core.outcome import adoptable
from reconciler.core.plan import Plan
from reconciler.core.states import OutputState
from reconciler.doctor.judge import Check
from reconciler.engine import Engine, PassResult
from reconciler.errors import UsageError
from reconciler.ledger import Ledger, default_path
from reconciler.lock import ProductionLock
from reconciler.production_dir import init_production_dir
from reconciler.recovery import rebuild
from reconciler.results import DEFAULT_BRANCH
from reconciler.scheduler import make_scheduler
from reconciler.spec.load import (
    DEFAULTS_DIR,
    PRODUCTIONS_DIR,
    Loaded,
    list_names,
    load,
    machine_name,
    parse_set,
)
from reconciler.spec.models import NAME_PATTERN

Warn = Callable[[str], None]


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    """What every verb needs to know about where desired state comes from and where status goes.

    Built once at the command-line boundary (``cli.options``), so no argparse namespace travels
    further in.
    """

    repo: Path | None = None
    ref: str = "HEAD"
    machine: str | None = None
    allow_dirty: bool = False
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE
    scheduler: str | None = None  # --scheduler: overrides the machine defaults' backend
    status_branch: str = DEFAULT_BRANCH
    publish: bool = False  # commit status to the results branch after each pass
    push: str | None = None  # remote to push the results branch to

    @property
    def machine_name(self) -> str:
        return machine_name(self.machine)


@dataclass(frozen=True)
class DesiredState:
    """One production's desired state as read at a ref, with the commit it was read at."""

    loaded: Loaded
    repo: git.Repo
    commit: str  # the commit of --ref (HEAD's when reading the working tree)
    dirty: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return Path(self.repo.working_tree_dir or ".")


def load_desired(opts: Options, name: str, *, read_only: bool, on_warning: Warn = warn) -> DesiredState:
    """Load production ``name`` at ``opts.ref`` (or from the working tree with ``allow_dirty``).

    Read-only verbs show the committed state and warn about uncommitted changes; verbs that
    act refuse them unless ``allow_dirty``.
    """
    overrides = parse_set(opts.overrides)
    if read_only and not opts.allow_dirty:
        repo = gitops.open_repo(opts.repo)
        tree: gitops.GitTree | Any = gitops.GitTree(repo, opts.ref)
        dirt = gitops.dirty_files(repo, [f"{PRODUCTIONS_DIR}/{name}.yaml", DEFAULTS_DIR]) if opts.ref == "HEAD" else []
        if dirt:
            on_warning(f"reading committed state at {opts.ref}; uncommitted changes ignored: {', '.join(dirt)}")
    else:
        tree, repo, dirt = gitops.desired_tree(opts.repo, opts.ref, opts.allow_dirty, [name])
        if dirt:
            on_warning(f"--allow-dirty: using uncommitted changes: {', '.join(dirt)}")
    commit = tree.commit.hexsha if isinstance(tree, gitops.GitTree) else repo.head.commit.hexsha
    root = Path(repo.working_tree_dir or ".")
    return DesiredState(load(tree, name, opts.machine_name, overrides, repo_root=root), repo, commit, dirt)


def production_names(opts: Options, names: Sequence[str] = ()) -> list[str]:
    """``names``, or every production at ``opts.ref``."""
    if names:
        return list(names)
    return list_names(gitops.GitTree(gitops.open_repo(opts.repo), opts.ref))


@dataclass
class Production:
    """One production opened for a pass: its desired state and its adapters, behind the engine."""

    desired: DesiredState
    engine: Engine
    ledger: Ledger
    tag: str | None

    @property
    def name(self) -> str:
        return self.desired.loaded.name

    @property
    def directory(self) -> Path:
        return self.desired.loaded.production_dir


@contextmanager
def open_production(opts: Options, name: str, *, write: bool, init: bool | None = None, on_warning: Warn = warn) -> Iterator[Production]:
    """Load ``name`` at the ref and open its ledger and scheduler.

    ``write``: take the production's lock (refusing uncommitted desired state). ``init``
    (default: ``write``): also create the directory tree and the provenance tag, and rebuild
    a lost ledger from the manifests in logs/. Read-only opens use an in-memory ledger when
    the production has none yet, so they create nothing.
    """
    init = write if init is None else init
    desired = load_desired(opts, name, read_only=not init, on_warning=on_warning)
    loaded, pdir = desired.loaded, desired.loaded.production_dir
    scheduler = make_scheduler(loaded.machine, opts.scheduler)
    lock = ProductionLock(pdir / "metadata" / "reconcile.lock").acquire() if write else None
    tag: str | None
    try:
        if init:
            tag, created = gitops.ensure_tag(desired.repo, loaded, loaded.spec.production.version, desired.dirty, commit=desired.commit)
            if created or not (pdir / "metadata" / "version_info.json").exists():
                init_production_dir(loaded, gitops.version_info(loaded, desired.commit, tag, desired.dirty))
            if lock and lock.previous:
                on_warning(f"took over the lock of a dead reconciler (pid {lock.previous.get('pid')} on {lock.previous.get('host')})")
        else:
            tag = gitops.latest_tag(desired.repo, loaded.name)
        path = default_path(pdir)
        existed = path.exists()
        ledger = Ledger(path if init or existed else Path(":memory:"), read_only=not init)
        try:
            if ledger.network_fs:
                on_warning(f"the ledger {path} is on a network file system ({ledger.network_fs}); using rollback journal mode, not WAL")
            if not existed and any((pdir / "logs").glob("batch_*.json")):
                # a read-only open rebuilds in memory, so `plan` shows what `once` would do
                n = rebuild(ledger, pdir, scheduler.name, time.time())
                on_warning(f"ledger {path} was missing: {'rebuilt' if init else 'read (in memory)'} {n} submission(s) "
                           "from the manifests in logs/; their jobs are looked up by token, and retry counts restart")
            yield Production(desired, Engine(loaded, scheduler, ledger), ledger, tag)
        finally:
            ledger.close()
    finally:
        if lock:
            lock.release()


@dataclass
class PassReport:
    """What one pass of one production did, for the command line to print."""

    name: str
    directory: Path
    tag: str | None
    result: PassResult
    status_commit: str | None = None


def run_pass(opts: Options, name: str, *, stage: bool = False, retry: bool = False, on_warning: Warn = warn) -> PassReport:
    """One pass: lock, observe, plan, apply; then publish status, even when the pass failed."""
    with open_production(opts, name, write=True, on_warning=on_warning) as prod:
        result: PassResult | None = None
        error: str | None = None
        try:
            result = prod.engine.run_pass(stage=stage, retry=retry)
        except BaseException as exc:  # whatever stopped the pass is what status must say
            error = str(exc) or type(exc).__name__
            raise
        finally:
            commit = _publish(opts, prod, result, error, on_warning) if opts.publish else None
        return PassReport(name, prod.directory, prod.tag, result, commit)


def _publish(opts: Options, prod: Production, result: PassResult | None, error: str | None, on_warning: Warn) -> str | None:
    """Publish this pass's status; a failure to publish is reported, never fatal to the pass
    (nor does it hide the error that stopped the pass: it runs in that error's ``finally``)."""
    from reconciler.results.publish import publish_status  # only passes that publish pay for it

    try:
        latest = prod.ledger.latest_attempts()
        return publish_status(
            prod.desired.root,
            loaded=prod.desired.loaded,
            commit=prod.desired.commit,
            ref=opts.ref,
            tag=prod.tag,
            result=result,
            attempts={k: a.attempt for k, a in latest.items()},
            runtimes={k: a.end - a.start for k, a in latest.items() if a.start is not None and a.end is not None},
            error=error,
            branch=opts.status_branch,
            remote=opts.push,
            on_warning=on_warning,
        )
    except Exception as exc:  # noqa: BLE001 - publishing is reporting; it must never stop or mask a pass
        on_warning(f"{prod.name}: status not published: {exc}")
        return None


def read_plan(opts: Options, name: str) -> Plan:
    """The plan the next pass would carry out; writes nothing."""
    with open_production(opts, name, write=False) as prod:
        return prod.engine.plan(prod.engine.observe())


def read_status(opts: Options, name: str) -> tuple[dict[str, Any], Path, str | None]:
    """Observe and summarise, read-only: (summary, production directory, latest tag)."""
    with open_production(opts, name, write=False) as prod:
        return prod.engine.summary(prod.engine.observe()), prod.directory, prod.tag


def fetch_desired(opts: Options, remote: str, on_warning: Warn = warn) -> None:
    """Bring the checked-out branch up to ``remote``'s (fast-forward only).

    This is how a change merged on the forge reaches a login node's watch loop. A diverged or
    dirty checkout is reported and left alone: the loop keeps reconciling what it has.
    """
    repo = gitops.open_repo(opts.repo)
    try:
        repo.git.fetch(remote, "--quiet")
        branch = repo.active_branch.name
        repo.git.merge("--ff-only", "--quiet", f"refs/remotes/{remote}/{branch}")
    except Exception as exc:  # noqa: BLE001 - git's many failure modes all mean "not this tick"
        text = str(exc).strip()
        on_warning(f"--fetch {remote}: {text.splitlines()[-1] if text else exc}")


def adopt(opts: Options, name: str) -> tuple[list[str], list[str]]:
    """Write `.adopted` markers for valid outputs this reconciler never produced, so later passes
    answer them from a directory listing. Returns (adopted keys, keys whose outputs are invalid)."""
    with open_production(opts, name, write=True) as prod:
        history = prod.ledger.history()
        candidates = [t for t in prod.engine.expansion.tasks if t.key not in history or history[t.key].submissions == 0]
        validator = prod.desired.loaded.spec.task.validator
        states = outputs.observe_outputs(prod.directory, candidates, validator, deep=True)
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
