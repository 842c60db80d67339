"""Shared fixtures: a scratch git repository holding copies of the shipped productions."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh git repository with productions/ and defaults/ committed; outputs go to tmp."""
    r = tmp_path / "repo"
    r.mkdir()
    shutil.copytree(ROOT / "productions", r / "productions")
    shutil.copytree(ROOT / "defaults", r / "defaults")
    (r / ".gitignore").write_text("work/\n")
    git(r, "init", "-q", "-b", "main")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "initial")
    return r
