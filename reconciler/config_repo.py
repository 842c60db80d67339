"""Write a new config repository: the files a team's own repository of productions starts with.

Teams keep their productions apart from the tool, in a repository of their own, and install
reconciler with pip; this writes what such a repository needs to work at once (an example
production, machine defaults from a packaged site template, the CI workflow with a pinned
reconciler, ``.gitignore``, a README) and, when the directory is not in a repository yet,
makes it one with a first commit, since desired state is read from git.

It never overwrites: every file that exists already is named and nothing at all is written.
A write that fails half-way removes what it wrote. The files' text is package data
(``reconciler/sites``); only the pin, the site's machine name and a README paragraph are
filled in, by plain replacement of ``@NAME@`` tokens (the workflow's own ``${{ }}`` stays).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.errors import UsageError
from reconciler.git_identity import fallback_identity
from reconciler.sites import FALLBACK_MACHINE, SITES, repo_template, site_text

WORKFLOW = ".github/workflows/validate.yml"
EXAMPLE = "productions/example.yaml"
BRANCH = "main"
_PIN = re.compile(r"^[^\x00-\x1f\x7f\"\\]{1,500}$")
"""A pip requirement (or a path or URL): one line, nothing a YAML double-quoted string escapes."""

_CLUSTER_LOCAL = (
    "This repository runs on this machine (`defaults/local.yaml`). To run on a Slurm cluster, add\n"
    "`defaults/<machine>.yaml`: `reconcile init-repo --site slurm` (or `--site nersc`) in an empty\n"
    "directory writes a commented template to start from. Then `reconcile doctor --machine <machine>`."
)
_CLUSTER_SITE = (
    "On the cluster, add `--machine {machine}` (or set `RECONCILER_MACHINE={machine}`), fill in\n"
    "`defaults/{machine}.yaml` (what is commented there: account, paths), and run\n"
    "`reconcile doctor --machine {machine}` first: it checks that file against what the site\n"
    "really allows. Without `--machine`, the commands use the `local` machine reconciler ships with."
)


@dataclass(frozen=True)
class Written:
    """What ``write_config_repo`` did: the files, and whether it committed them."""

    root: Path
    site: str
    files: tuple[str, ...]  # relative to root, in the order written
    commit: str | None  # the first commit, when it made the repository
    enclosing: Path | None  # the repository the files were left uncommitted in, if any


def version_pin() -> str:
    return f"reconciler=={__version__}"


def pin_from_direct_url(direct_url: Mapping[str, Any] | None) -> str | None:
    """The requirement that reinstalls a reconciler installed from a URL (PEP 610's
    ``direct_url.json``): a git commit or a remote archive. None for a local directory or
    file (CI cannot reach those) and for an install from an index (no such file)."""
    if not direct_url:
        return None
    url = str(direct_url.get("url", ""))
    vcs = direct_url.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs") == "git" and vcs.get("commit_id") and not url.startswith("file:"):
        return f"reconciler @ git+{url}@{vcs['commit_id']}"
    if "archive_info" in direct_url and url.startswith("https://"):
        return f"reconciler @ {url}"
    return None


def default_pin() -> tuple[str, bool]:
    """The requirement CI installs: exactly the reconciler that writes the repository, and
    whether it is only a version (then the team's package index must serve that version
    under this name: on PyPI, ``reconciler`` is another project's)."""
    try:
        raw = metadata.distribution("reconciler").read_text("direct_url.json")
        found = pin_from_direct_url(json.loads(raw)) if raw else None
    except (metadata.PackageNotFoundError, ValueError):
        found = None
    return (found, False) if found else (version_pin(), True)


def repo_files(site: str, pin: str) -> dict[str, str]:
    """Relative path -> text of every file of a new config repository for ``site``."""
    if site not in SITES:
        raise UsageError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    if not _PIN.match(pin):
        raise UsageError(f"--pin {pin!r} is not a one-line pip requirement (no quotes, backslashes or control characters)")
    cluster = _CLUSTER_LOCAL if site == FALLBACK_MACHINE else _CLUSTER_SITE.format(machine=site)
    readme = repo_template("README.md").replace("@RECONCILER_PIN@", pin).replace("@CLUSTER@", cluster)
    return {
        EXAMPLE: repo_template("example.yaml"),
        f"defaults/{site}.yaml": site_text(site),
        WORKFLOW: repo_template("validate.yml").replace("@RECONCILER_PIN@", pin),
        ".gitignore": repo_template("gitignore"),
        "README.md": readme,
    }


def enclosing_repository(directory: Path, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The top of the git repository ``directory`` is in (or would be in once created), if any."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    proc = _run(["git", "-C", str(probe), "rev-parse", "--show-toplevel"], environ)
    if proc.returncode == 0 and proc.stdout.strip():
        return Path(proc.stdout.strip()).resolve()
    if "not a git repository" not in proc.stderr:
        # e.g. "dubious ownership" (a repository of another user, common on shared HPC
        # directories): a repository we must not treat as absent, let alone git-init over
        raise UsageError(f"git cannot tell whether {probe} is in a repository: {proc.stderr.strip()} (nothing was written)")
    return None


def write_config_repo(directory: Path, site: str = FALLBACK_MACHINE, pin: str | None = None, environ: Mapping[str, str] | None = None) -> Written:
    """Write a config repository into ``directory``; ``git init`` and commit it when it is in none.

    Refused (UsageError, exit 2, nothing written) when any of its files exists, or when the
    directory is inside a repository but not at its top: reconcile reads ``productions/`` and
    GitHub reads ``.github/`` at a repository's top only.
    """
    root = directory.resolve()
    env = dict(os.environ if environ is None else environ)
    files = repo_files(site, pin or default_pin()[0])
    present = [rel for rel in files if (root / rel).exists() or (root / rel).is_symlink()]
    if present:
        listing = "\n".join(f"  {root / rel}" for rel in present)
        raise UsageError(
            f"{len(present)} file(s) exist already; init-repo never overwrites, and wrote nothing:\n{listing}\n"
            "(move them aside, or choose another directory)"
        )
    top = enclosing_repository(root, env)
    if top is not None and top != root:
        raise UsageError(
            f"{root} is inside the git repository {top}, below its top: reconcile reads productions/ and defaults/ "
            f"at a repository's top; run init-repo in {top}, or in a directory outside any repository (nothing was written)"
        )
    had_git = (root / ".git").exists() or (root / ".git").is_symlink()
    written, made = _write_all(root, files)
    if top is not None:
        return Written(root, site, tuple(written), None, top)
    try:
        commit = _first_commit(root, written, site, env)
    except UsageError:
        if not had_git:  # only a .git this call created is removed, never one that was there
            shutil.rmtree(root / ".git", ignore_errors=True)
        _remove(root, written, made)
        raise
    return Written(root, site, tuple(written), commit, None)


def _write_all(root: Path, files: Mapping[str, str]) -> tuple[list[str], list[Path]]:
    """Create every file (never replacing one: O_EXCL), or, on any error, none of them.
    Returns (the files written, the directories created for them, root included)."""
    written: list[str] = []
    made: list[Path] = []
    try:
        for rel, text in files.items():
            path = root / rel
            made += [d for d in reversed(path.parents) if (d == root or root in d.parents) and not d.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "x", encoding="utf-8") as fh:
                written.append(rel)
                fh.write(text)
    except OSError as exc:
        _remove(root, written, made)
        raise UsageError(f"cannot write the config repository in {root}: {exc} (nothing was left behind)") from None
    return written, made


def _remove(root: Path, written: list[str], made: list[Path]) -> None:
    """Undo ``_write_all``: its files, then the directories it created (never one that was there)."""
    for rel in reversed(written):
        (root / rel).unlink(missing_ok=True)
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            pass  # something else is in it now


def _run(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, env=dict(env), check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot run git ({exc}): reconcile reads desired state from git; install it") from None


def _first_commit(root: Path, written: list[str], site: str, environ: dict[str, str]) -> str:
    """``git init`` on branch main and commit the written files (the fallback identity where git has none)."""

    def git(*args: str, env: Mapping[str, str] = environ) -> str:
        proc = _run(["git", "-C", str(root), *args], env)
        if proc.returncode != 0:
            raise UsageError(f"git {args[0]} failed in {root}: {(proc.stderr or proc.stdout).strip()}")
        return proc.stdout.strip()

    git("init", "-q", "-b", BRANCH)
    git("add", "--", *written)
    identity = {**environ, **fallback_identity(root, environ)}
    git("commit", "-q", "--no-verify", "-m", f"Config repository from `reconcile init-repo --site {site}` (reconciler {__version__})", env=identity)
    return git("rev-parse", "HEAD")
