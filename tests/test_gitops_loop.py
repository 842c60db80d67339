"""The GitOps surface end to end: a real pass publishes status to a results branch on a bare remote."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .conftest import git
from .test_loop_local import env_for, reconcile, wait_quiet

BRANCH = "reconciler/status"


def branch_file(repo: Path, path: str, ref: str = f"origin/{BRANCH}") -> bytes:
    return subprocess.run(["git", "show", f"{ref}:{path}"], cwd=repo, capture_output=True, check=True).stdout


def test_once_push_publishes_status_and_an_unchanged_pass_commits_nothing(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "origin", "main")
    env = env_for(tmp_path)
    head, before = git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain")

    r = reconcile(repo, env, "once", "demo", "--push", "origin")
    assert r.returncode == 0, r.stderr
    files = set(git(repo, "ls-tree", "-r", "--name-only", f"origin/{BRANCH}").split())
    assert {"STATUS.md", "productions/demo/status.json", "productions/demo/history.jsonl", "productions/demo/progress.png"} <= files
    status = json.loads(branch_file(repo, "productions/demo/status.json"))
    assert status["production"] == "demo" and status["total"] == 32
    assert status["tag"].startswith("production/demo_v1.0_") and status["commit"] == head.strip()
    assert "token" not in json.dumps(status).lower() and "PATH" not in json.dumps(status)
    assert "demo" in branch_file(repo, "STATUS.md").decode()
    # the work tree, index and checked-out branch are untouched
    assert git(repo, "status", "--porcelain") == before
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "branch", "--show-current").strip() == "main"

    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5", "--push", "origin")
    assert r.returncode == 0, r.stderr
    # --until-done stops once every output is certified; the scheduler may still be ending the
    # last task, whose end time the next pass journals (a real change: its run time)
    wait_quiet(tmp_path / "spool")
    assert reconcile(repo, env, "once", "demo", "--push", "origin").returncode == 0
    final = git(repo, "rev-parse", f"origin/{BRANCH}")
    status = json.loads(branch_file(repo, "productions/demo/status.json"))
    assert status["done"] and status["counts"]["complete"] == 32
    # the retry is visible: two tasks took two attempts, and the history saw them resubmitted
    assert sorted(a for a in status["tasks"]["attempts"] if a != 1) == [2, 2]
    history = [json.loads(x) for x in branch_file(repo, "productions/demo/history.jsonl").splitlines()]
    assert any(h["actions"].get("resubmit") for h in history)
    for png in ("progress.png", "heatmap.png", "runtimes.png"):
        assert branch_file(repo, f"productions/demo/{png}").startswith(b"\x89PNG\r\n\x1a\n")

    r = reconcile(repo, env, "once", "demo", "--push", "origin")
    assert r.returncode == 0, r.stderr
    assert git(repo, "rev-parse", f"origin/{BRANCH}") == final  # no change, no commit
    assert git(repo, "status", "--porcelain") == before

    out = tmp_path / "plots"
    r = reconcile(repo, env, "report", "demo", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert {p.name for p in out.glob("*.png")} >= {"progress.png", "heatmap.png", "runtimes.png"}


def test_watch_fetch_picks_up_a_merged_change(repo: Path, tmp_path: Path) -> None:
    """A desired-state change merged on the remote reaches the loop on its next tick."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "origin", "main")
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", "-b", "main", str(remote), str(other))
    demo = other / "productions/demo.yaml"
    demo.write_text(demo.read_text().replace("redshifts: [0.5, 1.0, 1.5, 2.0]", "redshifts: [0.5, 1.0, 1.5, 2.0, 2.5]"))
    git(other, "commit", "-qam", "add a redshift")
    git(other, "push", "-q", "origin", "main")
    env = env_for(tmp_path)
    r = reconcile(repo, env, "once", "demo", "--fetch", "origin", "--no-status")
    assert r.returncode == 0, r.stderr
    assert "/40 complete" in r.stdout  # 8 x 5 tasks: the merged change is what runs
    assert git(repo, "rev-parse", "HEAD") == git(other, "rev-parse", "HEAD")
    wait_quiet(tmp_path / "spool")


def test_a_failed_pass_publishes_its_error_and_the_next_good_one_clears_it(repo: Path, tmp_path: Path) -> None:
    """Publishing is the last step of every pass, even one that fails: people reading the
    results branch see the loop is stuck, and why, with the last counts it had."""
    env = env_for(tmp_path)
    r = reconcile(repo, env, "once", "demo")
    assert r.returncode == 0, r.stderr
    first = json.loads(branch_file(repo, "productions/demo/status.json", BRANCH))
    assert first["error"] is None and first["counts"]["queued"] + first["counts"]["running"] + first["counts"]["complete"] == 32
    wait_quiet(tmp_path / "spool")
    broken = tmp_path / "not-a-spool"
    broken.write_text("a file where the local scheduler's spool should be\n")
    r = reconcile(repo, {**env, "RECONCILER_LOCAL_SPOOL": str(broken)}, "once", "demo")
    assert r.returncode == 4, r.stderr  # transient: nothing was marked failed
    failed = json.loads(branch_file(repo, "productions/demo/status.json", BRANCH))
    assert "local scheduler" in failed["error"] and failed["counts"] == first["counts"]
    md = branch_file(repo, "STATUS.md", BRANCH).decode()
    assert "Passes that failed" in md and "**demo**" in md and "local scheduler" in md
    r = reconcile(repo, env, "once", "demo")
    assert r.returncode == 0, r.stderr
    assert json.loads(branch_file(repo, "productions/demo/status.json", BRANCH))["error"] is None
    assert "Passes that failed" not in branch_file(repo, "STATUS.md", BRANCH).decode()
    wait_quiet(tmp_path / "spool")
