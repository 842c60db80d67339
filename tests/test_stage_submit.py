"""`stage` then `submit` on the local backend: staged tasks are their own state, the plan
shows the send, and `submit` says what it sent, or why it sent nothing."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import git
from .test_loop_local import env_for, reconcile, sent_to_scheduler, shrink_demo, wait_quiet


def test_staged_tasks_are_their_own_state_and_submit_says_what_it_sent(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    n = shrink_demo(repo)
    assert reconcile(repo, env, "stage", "demo").returncode == 0
    status = json.loads(reconcile(repo, env, "status", "demo", "--json").stdout)
    assert status["counts"]["staged"] == n and status["counts"]["queued"] == 0
    plan = json.loads(reconcile(repo, env, "plan", "demo", "--json").stdout)
    assert {a["kind"] for a in plan["actions"]} == {"send"}
    assert sum(len(a["keys"]) for a in plan["actions"]) == n
    assert not sent_to_scheduler(tmp_path / "spool")  # staging sent nothing

    r = reconcile(repo, env, "submit", "demo")
    assert r.returncode == 0, r.stderr
    assert f"sent {n} staged task(s)" in r.stderr
    status = json.loads(reconcile(repo, env, "status", "demo", "--json").stdout)
    assert status["counts"]["staged"] == 0
    again = reconcile(repo, env, "submit", "demo")
    assert again.returncode == 0 and "nothing was staged" in again.stderr
    assert sum(sent_to_scheduler(tmp_path / "spool").values()) == n
    wait_quiet(tmp_path / "spool")


def test_submit_says_why_a_staged_submission_was_not_sent(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    shrink_demo(repo)
    assert reconcile(repo, env, "stage", "demo").returncode == 0
    path = repo / "productions" / "demo.yaml"
    text = path.read_text()
    assert "n_galaxies: 2000" in text
    path.write_text(text.replace("n_galaxies: 2000", "n_galaxies: 3000"))
    git(repo, "commit", "-qam", "change the physics after staging")
    r = reconcile(repo, env, "submit", "demo")
    assert r.returncode == 0, r.stderr
    assert "not sent: desired state changed since it was staged" in r.stderr
    wait_quiet(tmp_path / "spool")
