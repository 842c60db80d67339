"""Publish status to a git results branch with plumbing, never touching the work tree.

The reconciler runs inside the repository people edit, often with their branch checked out
and uncommitted changes around. Checking out ``reconciler/status`` (or even staging into
the real index) would fight them. So a commit is built object by object: blobs with
``hash-object -w``, the tree in a *temporary* index (``GIT_INDEX_FILE``) seeded from the
branch's current tree, ``commit-tree``, and finally ``update-ref`` with the old value as a
compare-and-swap, so that two publishers in one repository can never lose each other's
commit: the loser re-reads the branch and rebuilds on top.

With a remote, the remote branch is the truth: when it is ahead (or diverged) our files are
rebuilt on top of its tree, and the push is a plain fast-forward push (never forced). A
rejected push means someone else published in between: fetch, rebuild, retry with backoff.

Every git call is ``subprocess.run`` with an argument list (no shell), waited for, so no
git process outlives a call (GitPython's persistent ``cat-file`` helpers are avoided here).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from reconciler.errors import TransientError, UsageError
from reconciler.git_identity import fallback_identity
from reconciler.results import DEFAULT_BRANCH

ZERO = "0" * 40
FETCH_NS = "refs/reconciler/fetched/"
"""Private namespace the remote branch is fetched into (not refs/remotes: ``remote`` may be a URL)."""

Files = Mapping[str, bytes | None]
"""Branch-relative path -> content; ``None`` removes the path."""


class _Retry(Exception):
    """A lost race (update-ref or push): re-read the branch and rebuild."""


@dataclass
class _Git:
    """Runs git in one repository with a fixed environment."""

    repo: Path
    env: dict[str, str]

    def run(self, *args: str, input: bytes | None = None, check: bool = True, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            ["git", "-C", str(self.repo), *args],
            input=input,
            capture_output=True,
            env={**self.env, **(env or {})},
            check=False,
        )
        if check and proc.returncode != 0:
            raise _GitFailed(args, proc)
        return proc

    def out(self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None) -> str:
        return self.run(*args, input=input, env=env).stdout.decode().strip()

    def sha(self, ref: str) -> str | None:
        """The commit ``ref`` names, or None (also for a sha whose object we do not have)."""
        proc = self.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        if proc.returncode != 0:
            return None
        return proc.stdout.decode().strip() or None

    def tree_of(self, commit: str | None) -> str | None:
        return self.out("rev-parse", f"{commit}^{{tree}}") if commit else None

    def is_ancestor(self, a: str, b: str) -> bool:
        return self.run("merge-base", "--is-ancestor", a, b, check=False).returncode == 0


class _GitFailed(TransientError):
    def __init__(self, args: tuple[str, ...], proc: subprocess.CompletedProcess[bytes]) -> None:
        err = proc.stderr.decode(errors="replace").strip()
        super().__init__(f"git {' '.join(args[:2])} failed (exit {proc.returncode}): {err}")
        self.proc = proc


class BranchView:
    """Read access to one commit's tree (a ``layout.BranchReader``); empty when ``commit`` is None."""

    def __init__(self, g: _Git, commit: str | None) -> None:
        self._g = g
        self.commit = commit

    def read(self, path: str) -> bytes | None:
        if self.commit is None:
            return None
        proc = self._g.run("cat-file", "blob", f"{self.commit}:{path}", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def list(self, directory: str) -> list[str]:
        """Names directly under ``directory`` (files and directories)."""
        if self.commit is None:
            return []
        proc = self._g.run("ls-tree", "-z", "--name-only", f"{self.commit}:{directory}", check=False)
        if proc.returncode != 0:
            return []
        return sorted(n for n in proc.stdout.decode().split("\0") if n)


def read_branch_file(repo_path: Path, path: str, branch: str = DEFAULT_BRANCH) -> bytes | None:
    """``git show <branch>:<path>``, or None when the branch or the file does not exist."""
    check_branch(repo_path, branch)
    g = _Git(Path(repo_path), dict(os.environ))
    return BranchView(g, g.sha(f"refs/heads/{branch}")).read(check_path(path))


def check_branch(repo_path: Path, branch: str) -> str:
    """``branch`` if it is a valid branch name (git check-ref-format), else UsageError."""
    if not branch or branch.startswith("-") or branch.startswith("refs/"):
        raise UsageError(f"{branch!r} is not a branch name (give it without refs/heads/)")
    proc = subprocess.run(["git", "check-ref-format", f"refs/heads/{branch}"], capture_output=True, cwd=repo_path, check=False)
    if proc.returncode != 0:
        raise UsageError(f"{branch!r} is not a valid git branch name")
    return branch


_BAD_PATH = re.compile(r"[\x00-\x1f\x7f\\]")


def check_path(path: str) -> str:
    """A branch-relative file path that cannot escape the tree or name git's own files."""
    p = PurePosixPath(path)
    if not path or _BAD_PATH.search(path) or p.is_absolute() or any(part in ("", ".", "..", ".git") for part in path.split("/")):
        raise UsageError(f"{path!r} is not a safe path on the results branch")
    return path


def _environment(repo: Path) -> dict[str, str]:
    """os.environ plus a default identity when neither the repo config nor the environment has one."""
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_INDEX_FILE", "GIT_DIR", "GIT_WORK_TREE")}
    env.update(fallback_identity(repo, env))
    return env


def _build(g: _Git, base: str | None, files: Files, message: str) -> str | None:
    """A commit of ``files`` over ``base``'s tree (parent ``base``), or None when the tree would not change."""
    if base is None and all(data is None for data in files.values()):
        return None  # nothing to put on a branch that does not exist yet
    with tempfile.TemporaryDirectory(prefix="reconciler-index-") as tmp:
        idx = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if base:
            g.run("read-tree", base, env=idx)
        else:
            g.run("read-tree", "--empty", env=idx)
        lines = []
        for path, data in sorted(files.items()):
            check_path(path)
            if data is None:
                lines.append(f"0 {ZERO}\t{path}")
            else:
                blob = g.out("hash-object", "-w", "--stdin", input=data)
                lines.append(f"100644 {blob}\t{path}")
        if lines:
            g.run("update-index", "-z", "--index-info", input="".join(ln + "\0" for ln in lines).encode(), env=idx)
        tree = g.out("write-tree", env=idx)
    if tree == g.tree_of(base):
        return None
    parents = ["-p", base] if base else []
    return g.out("commit-tree", tree, *parents, input=message.encode())


def _resolve(files: Files | Callable[[BranchView], Files], view: BranchView) -> Files:
    return files(view) if callable(files) else files


def _remote_sha(g: _Git, remote: str, branch: str) -> str | None:
    out = g.out("ls-remote", "--heads", "--", remote, f"refs/heads/{branch}")
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref == f"refs/heads/{branch}":
            return sha
    return None


def _fetch(g: _Git, remote: str, branch: str) -> str | None:
    """The remote branch's commit, fetched into a private ref; None when the remote has no such branch."""
    want = _remote_sha(g, remote, branch)
    if want is None:
        return None
    if g.sha(want) is None:
        g.run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", remote, f"+refs/heads/{branch}:{FETCH_NS}{branch}")
        if g.sha(want) is None:  # the remote moved between ls-remote and fetch
            raise _Retry(f"{remote} moved while fetching")
    return want


def publish(
    repo_path: Path,
    files: Files | Callable[[BranchView], Files],
    message: str,
    *,
    branch: str = DEFAULT_BRANCH,
    remote: str | None = None,
    retries: int = 5,
    backoff: float = 0.25,
) -> str | None:
    """Commit ``files`` on top of ``branch``'s tree without touching the work tree, index or HEAD.

    ``files`` maps branch-relative paths to contents (None deletes), or is a function of the
    tree being built on (a ``BranchView``) returning that mapping; a function is called again
    after every lost race, so derived files (a shared summary, an appended history) are
    always computed from what is really on the branch. Paths not in ``files`` are kept.

    With ``remote`` the branch is first brought up to the remote's (fast-forward, or rebuilt
    on the remote's tree when they diverged) and pushed without force; a rejected push is
    retried after re-fetching, up to ``retries`` attempts with randomized exponential backoff.

    Returns the new commit, or None when the branch already held exactly these files.
    Raises TransientError when git or the remote keeps failing (nothing is half-written).
    """
    repo_path = Path(repo_path)
    check_branch(repo_path, branch)
    if remote is not None and (not remote or remote.startswith("-")):
        raise UsageError(f"{remote!r} is not a git remote")
    g = _Git(repo_path, _environment(repo_path))
    ref = f"refs/heads/{branch}"

    def attempt() -> str | None:
        local = g.sha(ref)
        base = local
        theirs = None
        if remote is not None:
            theirs = _fetch(g, remote, branch)
            if theirs is not None and (local is None or (theirs != local and not g.is_ancestor(theirs, local))):
                # remote ahead: fast-forward; diverged: our unpushed commits are rebuilt on theirs
                base = theirs
        new = _build(g, base, _resolve(files, BranchView(g, base)), message)
        head = new or base
        if head is not None and head != local:
            if g.run("update-ref", "-m", "reconciler: publish status", ref, head, local or ZERO, check=False).returncode != 0:
                raise _Retry(f"{ref} moved while publishing")
            # plumbing never triggers git's automatic gc: without this a month of 5-minute
            # passes leaves ~0.4 GB of loose objects in the config repository; a no-op below
            # git's threshold (gc.auto), a repack of a few seconds when it is crossed
            g.run("gc", "--auto", "--quiet", check=False)
        if remote is not None and head is not None and head != theirs:
            push = g.run("push", "--quiet", "--porcelain", "--", remote, f"{ref}:{ref}", check=False)
            if push.returncode != 0:
                raise _Retry(push.stderr.decode(errors="replace").strip() or push.stdout.decode(errors="replace").strip())
        return new

    try:
        for trial in Retrying(
            stop=stop_after_attempt(max(1, retries)),
            wait=wait_random_exponential(multiplier=backoff, max=max(backoff, 30 * backoff)),
            retry=retry_if_exception_type((_Retry, _GitFailed)),
            reraise=True,
        ):
            with trial:
                return attempt()
    except (_Retry, _GitFailed) as exc:
        where = f"{remote} " if remote else ""
        raise TransientError(f"could not publish to {where}{ref} after {retries} attempts: {exc}") from None
    raise AssertionError("unreachable")  # pragma: no cover
