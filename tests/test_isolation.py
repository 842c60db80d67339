"""One production's trouble is that production's: a bad commit, an unusable directory, an
uncommitted edit never stop the loop for the others (the local backend, real git)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .conftest import git
from .test_loop_local import env_for, reconcile, shrink_demo, wait_quiet

BAD = "batch_size: -3"


def add_demo2(repo: Path) -> None:
    """A second small production beside the demo (both shrunk to 8 tasks)."""
    shrink_demo(repo)
    text = (repo / "productions" / "demo.yaml").read_text()
    (repo / "productions" / "demo2.yaml").write_text(text.replace("name: demo\n", "name: demo2\n"))
    for other in ("alpha", "rehearsal100", "test_basic"):  # machine-specific productions stay out of this loop
        (repo / "productions" / f"{other}.yaml").unlink(missing_ok=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "demo2")


def break_demo2(repo: Path) -> int:
    """Commit an invalid batch size; returns the line it is on."""
    path = repo / "productions" / "demo2.yaml"
    lines = path.read_text().splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.strip().startswith("batch_size:"))
    lines[i] = "  " + BAD
    path.write_text("\n".join(lines) + "\n")
    git(repo, "commit", "-qam", "a bad batch size")
    return i + 1


def branch_status(repo: Path, name: str) -> dict:
    return json.loads(git(repo, "show", f"reconciler/status:productions/{name}/status.json"))


def test_a_bad_commit_to_one_production_does_not_stop_the_loop_and_a_fix_resumes_it(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    add_demo2(repo)
    loop = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "watch", "demo", "demo2", "--interval", "0.5", "--jitter", "0", "--until-done"],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert loop.stdout is not None
        seen = {loop.stdout.readline().split("] ", 1)[-1].split(":")[0] for _ in range(2)}
        assert seen == {"demo", "demo2"}  # both had a pass at the good revision
        line = break_demo2(repo)
        deadline = time.time() + 90
        while time.time() < deadline:  # the loop goes on; demo converges; demo2's status names the file and field
            doc = branch_status(repo, "demo2")
            if doc.get("error") and branch_status(repo, "demo")["counts"]["complete"] == 8:
                break
            time.sleep(0.5)
        assert loop.poll() is None, "the loop stopped"
        assert f"productions/demo2.yaml:{line}" in doc["error"] and "execution.batch_size" in doc["error"], doc["error"]
        assert "reconciling its last good revision" in doc["error"]
        assert branch_status(repo, "demo")["counts"]["complete"] == 8 and not branch_status(repo, "demo").get("error")
        status_md = git(repo, "show", "reconciler/status:STATUS.md")
        assert "productions/demo2.yaml" in status_md and "execution.batch_size" in status_md
        # the fixing commit resumes it; both end complete
        path = repo / "productions" / "demo2.yaml"
        path.write_text(path.read_text().replace(BAD, "batch_size: 3"))
        git(repo, "commit", "-qam", "fix the batch size")
        out, err = loop.communicate(timeout=120)
    finally:
        if loop.poll() is None:
            loop.kill()
    assert loop.returncode == 0, err
    assert "every task is complete" in out
    assert err.count("does not load") == 1, err  # said once, not every pass
    assert not branch_status(repo, "demo2").get("error")
    wait_quiet(tmp_path / "spool")


def test_once_does_the_valid_ones_then_exits_2_and_a_never_valid_one_is_paused(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    add_demo2(repo)
    break_demo2(repo)  # never loaded before: no last good revision
    r = reconcile(repo, env, "once", "demo", "demo2")
    assert r.returncode == 2, r.stderr
    assert "demo: submit 8" in r.stdout  # the valid one was done
    assert "demo2: not reconciled" in r.stderr and "execution.batch_size" in r.stderr
    assert "Traceback" not in r.stderr
    doc = branch_status(repo, "demo2")
    assert "paused: it never loaded before" in doc["error"] and doc["total"] == 0
    wait_quiet(tmp_path / "spool")


def test_an_unusable_production_directory_is_its_error_never_a_traceback(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    add_demo2(repo)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the production directory's parent should be\n")
    path = repo / "productions" / "demo.yaml"
    path.write_text(path.read_text().replace("execution:\n", f"outputs:\n  base_path: {blocker}/productions\n\nexecution:\n", 1))
    git(repo, "commit", "-qam", "demo's outputs on a path that cannot be a directory")
    r = reconcile(repo, env, "once", "demo", "demo2")
    assert r.returncode == 4, r.stderr  # the file system may come back: transient, and says so
    assert "demo: not reconciled: production directory" in r.stderr and "cannot be used" in r.stderr
    assert "demo2: submit 8" in r.stdout and "Traceback" not in r.stderr
    # one loop over both: demo's trouble is said once, demo2 converges, the loop goes on
    loop = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "watch", "demo", "demo2", "--interval", "0.5", "--jitter", "0"],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline and branch_status(repo, "demo2")["counts"]["complete"] < 8:
            time.sleep(0.5)
        assert loop.poll() is None, "the loop stopped"
        assert branch_status(repo, "demo2")["counts"]["complete"] == 8
        assert "cannot be used" in branch_status(repo, "demo")["error"]
    finally:
        loop.terminate()
        _, err = loop.communicate(timeout=30)
    assert "Traceback" not in err and err.count("cannot be used") >= 1
    wait_quiet(tmp_path / "spool")


def test_uncommitted_edits_never_stop_a_verb_that_acts(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    shrink_demo(repo)
    path = repo / "productions" / "demo.yaml"
    path.write_text(path.read_text() + "\n# an edit in progress\n")
    r = reconcile(repo, env, "once", "demo")
    assert r.returncode == 0, r.stderr
    assert "ignored uncommitted changes: productions/demo.yaml" in r.stderr
    wait_quiet(tmp_path / "spool")
