"""Desired state as the session reads it: at a git ref (never the working tree, unless
``allow_dirty``), per production, with the last good revision when a new one does not load."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import git

from reconciler import gitops
from reconciler.errors import ConfigError
from reconciler.lease import DEFAULT_TTL_S
from reconciler.results import DEFAULT_BRANCH
from reconciler.spec.load import (
    DEFAULTS_DIR,
    PRODUCTIONS_DIR,
    Loaded,
    list_names,
    load,
    machine_name,
    parse_set,
)

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
    loaded = load(tree, name, opts.machine_name, overrides, repo_root=root)
    for w in loaded.warnings:
        on_warning(str(w))
    return DesiredState(loaded, repo, commit, dirt if opts.allow_dirty else [])


def production_names(opts: Options, names: Sequence[str] = ()) -> list[str]:
    """``names``, or every production at ``opts.ref``."""
    if names:
        return list(names)
    return list_names(gitops.GitTree(gitops.open_repo(opts.repo), opts.ref))


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


def desired_or_last_good(opts: Options, name: str, on_warning: Warn) -> tuple[DesiredState, str | None]:
    """``name``'s desired state at ``opts.ref``, recorded as its last good revision; or, when
    that does not load, at its last good revision, with the problem (file:line: field:
    message) to report. A production that never loaded raises its ConfigError (paused)."""
    try:
        desired = load_desired(opts, name, on_warning=on_warning)
    except ConfigError as exc:
        repo = gitops.open_repo(opts.repo)
        tree = gitops.GitTree(repo, opts.ref)
        if opts.allow_dirty or name not in list_names(tree) or not all(_in_desired_state(p.file) for p in exc.problems):
            raise  # removed at the ref, or the command line's own mistake (--set, --machine): not a bad commit
        head = tree.commit.hexsha
        good = gitops.last_good(repo, name)
        where = f"desired state of {name} at {opts.ref} ({head[:10]}) does not load: {'; '.join(str(p) for p in exc.problems)}"
        if good is None:
            problem = f"{where}; paused: it never loaded before, so there is no last good revision to reconcile"
            report_problem(opts, name, head, problem, on_warning)
            raise ConfigError([*exc.problems]) from None
        return load_desired(replace(opts, ref=good, allow_dirty=False), name, on_warning=on_warning), (
            f"{where}; reconciling its last good revision {good[:10]} until a commit fixes it"
        )
    if not opts.allow_dirty:
        gitops.set_last_good(desired.repo, name, desired.commit)
    return desired, None


def _in_desired_state(file: str) -> bool:
    """Whether a problem is located in a committed file of desired state (productions/ or defaults/)."""
    return file.startswith((f"{PRODUCTIONS_DIR}/", f"{DEFAULTS_DIR}/"))


def report_problem(opts: Options, name: str, commit: str, problem: str, on_warning: Warn) -> None:
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
