"""Git adapter: read desired state at a ref, detect uncommitted changes, create provenance tags.

Desired state is read from the object store (``git show REF:path`` semantics), never from
the working tree, so what runs is exactly what was committed. Ref and tag names are built
only from validated names, and every git call passes them as arguments after ``--`` or as
full ref names, so nothing from a config can become a git option.
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import git

from reconciler import __version__
from reconciler.errors import ConfigError, Problem, UsageError
from reconciler.git_identity import fallback_identity
from reconciler.spec.load import DEFAULTS_DIR, PRODUCTIONS_DIR, Loaded, WorkTree

TAG_PREFIX = "production/"


def open_repo(path: Path | None) -> git.Repo:
    """The git repository around ``path`` (default: the current directory)."""
    start = Path(path) if path else Path.cwd()
    try:
        return git.Repo(start, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UsageError(
            f"{start} is not inside a git repository: desired state is read from git "
            "(run `git init && git add productions defaults && git commit`, or pass --repo)"
        ) from None


@dataclass
class GitTree:
    """Files of ``productions/`` and ``defaults/`` as committed at ``ref``."""

    repo: git.Repo
    ref: str = "HEAD"
    label: str = ""
    _commit: git.Commit | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.ref.startswith("-"):
            raise UsageError(f"--ref {self.ref!r} is not a git ref")
        try:
            self._commit = self.repo.commit(self.ref)
        except (git.BadName, ValueError, git.GitCommandError):
            raise UsageError(f"git ref {self.ref!r} does not exist in {self.repo.working_tree_dir} (is anything committed yet?)") from None
        self.label = f"git {self.ref} ({self.commit.hexsha[:10]})"

    @property
    def commit(self) -> git.Commit:
        assert self._commit is not None
        return self._commit

    def read(self, path: str) -> str | None:
        try:
            blob = self.commit.tree / path
        except KeyError:
            return None
        try:
            return blob.data_stream.read().decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(Problem(path, 1, 1, "", "file is not UTF-8 text")) from None

    def list(self, directory: str) -> list[str]:
        try:
            tree = self.commit.tree / directory
        except KeyError:
            return []
        return sorted(f"{directory}/{b.name}" for b in tree.blobs)


def dirty_files(repo: git.Repo, paths: list[str]) -> list[str]:
    """Uncommitted (modified, staged or untracked) files among ``paths`` (relative to the repo root)."""
    if not paths:
        return []
    out = repo.git.status("--porcelain", "--untracked-files=all", "--", *paths)
    return sorted(line[3:] for line in out.splitlines() if line.strip())


def desired_tree(repo_path: Path | None, ref: str, allow_dirty: bool, names: list[str] | None = None) -> tuple[GitTree | WorkTree, git.Repo, list[str]]:
    """The tree to read desired state from: the commit of ``ref`` (desired state is what is in
    git), or with ``allow_dirty`` the working tree. Also returns the uncommitted changes to
    productions/ and defaults/ (at HEAD), which callers report: ignored, or used."""
    repo = open_repo(repo_path)
    root = Path(repo.working_tree_dir or ".")
    watched = [PRODUCTIONS_DIR, DEFAULTS_DIR] if not names else [f"{PRODUCTIONS_DIR}/{n}.yaml" for n in names] + [DEFAULTS_DIR]
    dirt = dirty_files(repo, watched) if ref == "HEAD" else []
    if allow_dirty:
        return WorkTree(root, "working tree (--allow-dirty)"), repo, dirt
    return GitTree(repo, ref), repo, dirt


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "reconciler": __version__}
    for pkg in ("pydantic", "ruamel.yaml", "GitPython", "tenacity", "h5py", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def tag_message(loaded: Loaded, commit: str, dirty: list[str], version: str) -> str:
    meta = {
        "production": loaded.name,
        "version": version,
        "config_hash": loaded.config_hash,
        "commit": commit,
        "working_tree": "dirty" if dirty else "clean",
        "dirty_files": dirty,
        "machine": loaded.machine.machine.name,
        "versions": _versions(),
    }
    return f"reconciler production {loaded.name} {version}\n\n" + json.dumps(meta, indent=2, sort_keys=True) + "\n"


def tag_metadata(tag: git.TagReference) -> dict:
    obj = tag.tag
    if obj is None:
        return {}
    msg = obj.message
    start = msg.find("{")
    try:
        return json.loads(msg[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}


def production_tags(repo: git.Repo, name: str) -> list[git.TagReference]:
    """Tags of production ``name``, oldest first (the timestamp sorts)."""
    prefix = f"{TAG_PREFIX}{name}_"
    return sorted((t for t in repo.tags if t.name.startswith(prefix)), key=lambda t: t.name)


def latest_tag(repo: git.Repo, name: str) -> str | None:
    tags = production_tags(repo, name)
    return tags[-1].name if tags else None


_TAG_OK = re.compile(r"^production/[A-Za-z0-9._+-]+$")


def ensure_tag(repo: git.Repo, loaded: Loaded, version: str, dirty: list[str], *, commit: str, now: datetime | None = None) -> tuple[str, bool]:
    """Tag ``commit`` (the one desired state was read at) with the desired state of ``loaded``;
    reuse an existing tag with the same config hash. Returns (tag name, created?).

    Tag names carry the time to the second; a second tag in the same second (two productions
    of one commit, two quick edits) gets a ``_2``, ``_3``... suffix instead of failing.
    """
    for tag in reversed(production_tags(repo, loaded.name)):
        meta = tag_metadata(tag)
        if meta.get("config_hash") == loaded.config_hash and meta.get("version") == version and bool(meta.get("dirty_files")) == bool(dirty):
            return tag.name, False
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d_%H%M%S")
    base = f"{TAG_PREFIX}{loaded.name}_{version}_{'allow_dirty_' if dirty else ''}{stamp}"
    if not _TAG_OK.match(base):
        raise UsageError(f"cannot build a safe tag name from {base!r}")
    taken = {t.name for t in repo.tags}
    name = next(n for n in (base if i == 1 else f"{base}_{i}" for i in range(1, len(taken) + 2)) if n not in taken)
    root = Path(repo.working_tree_dir or repo.git_dir)
    with repo.git.custom_environment(**fallback_identity(root, os.environ)):
        repo.create_tag(name, ref=commit, message=tag_message(loaded, commit, dirty, version))
    return name, True


def version_info(loaded: Loaded, commit: str, tag: str, dirty: list[str]) -> dict:
    return {
        "production": loaded.name,
        "version": loaded.spec.production.version,
        "tag": tag,
        "commit": commit,
        "config_hash": loaded.config_hash,
        "dirty_files": dirty,
        "machine": loaded.machine.machine.name,
        "source": loaded.source_label,
        "versions": _versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


LAST_GOOD_PREFIX = "refs/reconciler/last-good/"


def last_good(repo: git.Repo, name: str) -> str | None:
    """The last commit at which production ``name``'s desired state loaded for a pass, or None.

    A ref per production in the config repository (``refs/reconciler/last-good/NAME``): when a
    later commit makes the production invalid, the loop reconciles this revision instead (as
    Argo CD and Flux keep applying the last good one), and a fixing commit moves it on.
    """
    try:
        return git.Reference(repo, LAST_GOOD_PREFIX + name).commit.hexsha
    except (ValueError, OSError, git.BadName):
        return None


def set_last_good(repo: git.Repo, name: str, commit: str) -> None:
    """Record ``commit`` as production ``name``'s last good revision (no-op when it already is)."""
    if last_good(repo, name) != commit:
        git.Reference.create(repo, LAST_GOOD_PREFIX + name, commit, force=True, logmsg="reconciler: desired state loaded")
