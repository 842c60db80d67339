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
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import git

from reconciler import gitops, markers, outputs
from reconciler.core.outcome import adoptable
from reconciler.core.plan import Plan
from reconciler.core.states import OutputState
from reconciler.engine import Engine, PassResult
from reconciler.engine.apply import UNFENCED
from reconciler.engine.observe import Verify
from reconciler.errors import ConfigError, Deposed, DirectoryUnusable, UsageError
from reconciler.lease import DEFAULT_TTL_S, Lease, Leases
from reconciler.ledger import Ledger, default_path
from reconciler.production_dir import init_production_dir
from reconciler.recovery import rebuild
from reconciler.results import DEFAULT_BRANCH
from reconciler.scheduler import make_scheduler
from reconciler.spec.load import (
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
    lease_ttl: float = DEFAULT_TTL_S  # seconds after its last renewal that our lease may be taken over

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


def load_desired(opts: Options, name: str, *, on_warning: Warn = warn) -> DesiredState:
    """Load production ``name`` at ``opts.ref`` (or from the working tree with ``allow_dirty``).

    Uncommitted changes never stop anything: desired state is what is in git, so they are
    ignored, and said so (a loop says it once).
    """
    overrides = parse_set(opts.overrides)
    tree, repo, dirt = gitops.desired_tree(opts.repo, opts.ref, opts.allow_dirty, [name])
    if dirt:
        how = "--allow-dirty: using" if opts.allow_dirty else f"reading committed state at {opts.ref}; ignored"
        on_warning(f"{how} uncommitted changes: {', '.join(dirt)}")
    commit = tree.commit.hexsha if isinstance(tree, gitops.GitTree) else repo.head.commit.hexsha
    root = Path(repo.working_tree_dir or ".")
    return DesiredState(load(tree, name, opts.machine_name, overrides, repo_root=root), repo, commit, dirt if opts.allow_dirty else [])


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
def open_production(
    opts: Options, name: str, *, write: bool, init: bool | None = None, on_warning: Warn = warn, leases: Leases | None = None,
    desired: DesiredState | None = None,
) -> Iterator[Production]:
    """Load ``name`` at the ref and open its ledger and scheduler.

    ``write``: hold the production's lease (refusing uncommitted desired state): taken from
    ``leases`` (a loop's, held across passes and renewed here) or for this call alone.
    ``init`` (default: ``write``): also create the directory tree and the provenance tag,
    and rebuild a lost ledger from the manifests in logs/. Read-only opens use an in-memory
    ledger when the production has none yet, so they create nothing. ``desired``: already
    loaded (at the last good revision, say) instead of at ``opts.ref``.
    """
    init = write if init is None else init
    desired = desired or load_desired(opts, name, on_warning=on_warning)
    loaded, pdir = desired.loaded, desired.loaded.production_dir
    scheduler = make_scheduler(loaded.machine, opts.scheduler)
    keeper = leases if leases is not None else Leases(opts.lease_ttl)
    lease = keeper.of(pdir / "metadata") if write else None
    tag: str | None
    try:
        if lease is not None:
            if lease.held:
                lease.renew()
            else:
                lease.acquire()
                if lease.took_over:
                    on_warning(f"took over the lease of {name} from {lease.took_over}")
        if init:
            tag, created = gitops.ensure_tag(desired.repo, loaded, loaded.spec.production.version, desired.dirty, commit=desired.commit)
            if created or not (pdir / "metadata" / "version_info.json").exists():
                init_production_dir(loaded, gitops.version_info(loaded, desired.commit, tag, desired.dirty))
        else:
            tag = gitops.latest_tag(desired.repo, loaded.name)
        path = default_path(pdir)
        existed = path.exists()
        ledger = Ledger(path if init or existed else Path(":memory:"), read_only=not init)
        try:
            if ledger.network_fs:
                on_warning(f"the ledger {path} is on a network file system ({ledger.network_fs}); using rollback journal mode, not WAL")
            if not existed and any((pdir / "logs").glob("batch_*.json")):
                if lease is not None:
                    lease.check()  # the fence, before this ledger write as before every other
                # a read-only open rebuilds in memory, so `plan` shows what `once` would do
                n = rebuild(ledger, pdir, scheduler.name, time.time())
                on_warning(f"ledger {path} was missing: {'rebuilt' if init else 'read (in memory)'} {n} submission(s) "
                           "from the manifests in logs/; their jobs are looked up by token, and retry counts restart")
            yield Production(desired, Engine(loaded, scheduler, ledger, fence=lease or UNFENCED), ledger, tag)
        finally:
            ledger.close()
    finally:
        if leases is None and lease is not None:
            lease.release()


@dataclass
class PassReport:
    """What one pass of one production did, for the command line to print."""

    name: str
    directory: Path
    tag: str | None
    result: PassResult
    status_commit: str | None = None
    problem: str | None = None  # desired state at the ref did not load: the last good revision was reconciled


def run_pass(
    opts: Options, name: str, *, stage: bool = False, retry: bool = False, verify: Verify = "sample", on_warning: Warn = warn,
    leases: Leases | None = None,
) -> PassReport:
    """One pass: hold the lease, observe, plan, apply; then publish status, even when the pass
    failed (but not when this reconciler was deposed: the production is another's now).

    Isolation: a production whose desired state does not load at ``opts.ref`` is reconciled
    at its last good revision (``report.problem`` says why), or, if it never loaded, raises
    its ConfigError after saying so on the results branch; an unusable production directory
    raises DirectoryUnusable. Either way the caller goes on with the other productions.

    ``verify``: which completed tasks the pass opens and validates again (by default the
    production's ``execution.verify_per_pass``; see ``engine.observe.Verify``).
    """
    desired, problem = _desired_or_last_good(opts, name, on_warning)
    try:
        with open_production(opts, name, write=True, on_warning=on_warning, leases=leases, desired=desired) as prod:
            if isinstance(verify, frozenset):
                _known_keys(name, verify, prod.engine.expansion.by_key.keys())
            result: PassResult | None = None
            error: str | None = None
            deposed = False
            try:
                result = prod.engine.run_pass(stage=stage, retry=retry, verify=verify)
            except Deposed:
                deposed = True
                raise
            except BaseException as exc:  # whatever stopped the pass is what status must say
                error = str(exc) or type(exc).__name__
                raise
            finally:
                if opts.publish and not deposed:
                    commit = _publish(opts, prod, result, "; ".join(e for e in (problem, error) if e) or None, on_warning)
                else:
                    commit = None
            return PassReport(name, prod.directory, prod.tag, result, commit, problem)
    except (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError, OSError) as exc:
        pdir = desired.loaded.production_dir
        unusable = DirectoryUnusable(
            f"production directory {pdir} cannot be used: {exc.strerror or exc}"
            f"{f' ({exc.filename})' if getattr(exc, 'filename', None) else ''}; check that its file system is mounted "
            "and that this user can write it (outputs.base_path in the production or machine defaults says where it is)"
        )
        _publish_problem(opts, name, desired.commit, str(unusable), on_warning)
        raise unusable from None


def _desired_or_last_good(opts: Options, name: str, on_warning: Warn) -> tuple[DesiredState, str | None]:
    """``name``'s desired state at ``opts.ref``, recorded as its last good revision; or, when
    that does not load, at its last good revision, with the problem (file:line: field:
    message) to report. A production that never loaded raises its ConfigError (paused)."""
    try:
        desired = load_desired(opts, name, on_warning=on_warning)
    except ConfigError as exc:
        repo = gitops.open_repo(opts.repo)
        head = gitops.GitTree(repo, opts.ref).commit.hexsha if not opts.allow_dirty else "working tree"
        good = gitops.last_good(repo, name)
        where = f"desired state of {name} at {opts.ref} ({head[:10]}) does not load: {'; '.join(str(p) for p in exc.problems)}"
        if good is None or opts.allow_dirty:
            problem = f"{where}; paused: it never loaded before, so there is no last good revision to reconcile"
            _publish_problem(opts, name, head, problem, on_warning)
            raise ConfigError([*exc.problems]) from None
        return load_desired(replace(opts, ref=good, allow_dirty=False), name, on_warning=on_warning), (
            f"{where}; reconciling its last good revision {good[:10]} until a commit fixes it"
        )
    if not opts.allow_dirty:
        gitops.set_last_good(desired.repo, name, desired.commit)
    return desired, None


def _publish_problem(opts: Options, name: str, commit: str, problem: str, on_warning: Warn) -> None:
    if not opts.publish:
        return
    from reconciler.results.publish import publish_problem

    try:
        root = Path(gitops.open_repo(opts.repo).working_tree_dir or ".")
        publish_problem(
            root, name=name, commit=commit, ref=opts.ref, machine=opts.machine_name, error=problem,
            branch=opts.status_branch, remote=opts.push,
        )
    except Exception as exc:  # noqa: BLE001 - publishing is reporting; it must never stop the loop
        on_warning(f"{name}: status not published: {exc}")


def _known_keys(name: str, keys: frozenset[str], known: Collection[str]) -> None:
    """Refuse task keys the production does not have, before the pass does anything."""
    unknown = sorted(k for k in keys if k not in known)
    if unknown:
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        example = next(iter(known), "")
        raise UsageError(f"production {name} has no task {', '.join(unknown[:5])}{more}; its task keys look like {example!r}")


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



def lease_of(opts: Options, name: str) -> Lease:
    """The lease of production ``name`` (its directory from desired state at the ref, or at its
    last good revision when the ref's does not load), neither taken nor changed."""
    try:
        desired = load_desired(opts, name)
    except ConfigError:
        good = gitops.last_good(gitops.open_repo(opts.repo), name)
        if good is None:
            raise
        desired = load_desired(replace(opts, ref=good, allow_dirty=False), name)
    return Lease(desired.loaded.production_dir / "metadata", opts.lease_ttl)
