"""Shared fixtures: a scratch git repository holding copies of the shipped productions."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
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


# ---------------------------------------------------------------- Slurm test cluster
# A real single-node Slurm cluster (scripts/slurm-test-cluster) for tests marked
# @pytest.mark.slurm. Brought up at most once per session; skipped where it cannot run,
# except in CI, where a missing cluster is a failure rather than a silent skip.

SLURM_CLUSTER_SCRIPT = ROOT / "scripts" / "slurm-test-cluster"
SLURM_SKIP_REASON = (
    "no Slurm test cluster: run scripts/slurm-test-cluster up as root "
    "(needs Debian packages munge slurmctld slurmd slurm-client slurmdbd mariadb-server)"
)


def _slurm_cluster_cmd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [str(SLURM_CLUSTER_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess([str(SLURM_CLUSTER_SCRIPT), *args], 1, "", str(e))


@pytest.fixture(scope="session")
def slurm_cluster() -> dict[str, str]:
    """Ensure the test cluster is up; export its SLURM_CONF; return {"SLURM_CONF": path}."""
    problem = ""
    if _slurm_cluster_cmd("status").returncode != 0:
        if os.geteuid() == 0:
            up = _slurm_cluster_cmd("up", timeout=900)
            if up.returncode != 0:
                problem = (up.stderr or up.stdout).strip()[-2000:]
        else:
            problem = "not root, and the cluster is not up"
    if not problem and _slurm_cluster_cmd("status").returncode != 0:
        problem = "scripts/slurm-test-cluster status still reports the cluster down"
    conf = ""
    if not problem:
        env = _slurm_cluster_cmd("env")
        for line in env.stdout.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            if key.strip() == "SLURM_CONF":
                conf = value.strip().strip("'\"")
        if not conf:
            problem = f"no SLURM_CONF in the cluster's env file: {env.stderr.strip()}"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Slurm test cluster unavailable in CI: {problem}")
        pytest.skip(f"{SLURM_SKIP_REASON} ({problem})")
    os.environ["SLURM_CONF"] = conf
    return {"SLURM_CONF": conf}


@pytest.fixture
def slurm_without_comments(slurm_cluster: dict[str, str]) -> Iterator[None]:
    """The test cluster as a site that does not store job comments in accounting (no
    ``AccountingStoreFlags=job_comment``: sacct shows no comment), restored after the test.

    ``scripts/slurm-test-cluster comments off|on`` rewrites slurm.conf and reconfigures
    slurmctld (a few ms), so each test that needs it pays only for itself.
    """
    off = _slurm_cluster_cmd("comments", "off")
    assert off.returncode == 0, off.stderr
    try:
        yield
    finally:
        on = _slurm_cluster_cmd("comments", "on")
        assert on.returncode == 0, on.stderr
