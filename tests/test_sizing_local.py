"""Right-sizing end to end on the local backend: a task that times out is retried with more
time and completes; what each attempt asked and used is journaled (core.sizing, ledger v5)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from reconciler import recovery
from reconciler.ledger import Ledger

from .conftest import git
from .test_loop_local import env_for, reconcile, wait_quiet, watched_to_the_end

TIMED = (
    "production: {name: timed, version: v1}\n"
    "science: {redshifts: [0.5], realizations: {start: 0, count: 3}}\n"
    "execution:\n"
    "  timeout_hours: 0.0005  # 1.8 s\n"
    "  retry_policy: {max_retries: 2, initial_delay_minutes: 0.005, time_factor: 2}\n"
    "task:\n"
    "  shell: true\n"
    "  command: sleep {realization} && echo ok > {output}  # r0002 needs 2 s\n"
    "  outputs: ['o/r{realization:04d}.txt']\n"
)


def test_a_task_that_times_out_is_retried_with_twice_the_time_and_completes(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    (repo / "productions" / "timed.yaml").write_text(TIMED)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a production whose last task needs more than its timeout")
    status = watched_to_the_end(repo, env, "timed")
    assert status["counts"]["complete"] == 3
    wait_quiet(tmp_path / "spool")
    reconcile(repo, env, "once", "timed", "--no-status")  # journals the last end (watch stops once the outputs are complete)
    prod_dir = repo / "work/productions/timed"
    db = sqlite3.connect(prod_dir / "metadata" / "production.db")
    rows = db.execute(
        "SELECT a.key, a.sched_state, s.time_s, s.mem_mb, a.cpu_s, a.max_rss_mb FROM attempts a JOIN submissions s ON s.token = a.token "
        "WHERE s.state != 'abandoned' ORDER BY a.key, a.attempt"
    ).fetchall()
    by_key: dict[str, list[tuple]] = {}
    for key, state, time_s, mem, cpu, rss in rows:
        by_key.setdefault(key, []).append((state, time_s, mem))
        assert cpu is not None and rss is not None and rss > 0, rows  # what each attempt used is journaled
    assert by_key["r0000/z0.500"] == [("COMPLETED", 1.8, 2048.0)]  # defaults/local.yaml asks 2 GB
    assert by_key["r0002/z0.500"] == [("TIMEOUT", 1.8, 2048.0), ("COMPLETED", 3.6, 2048.0)], rows  # twice the time, once
    assert db.execute("SELECT last_short, last_time_s FROM tasks WHERE key = 'r0002/z0.500'").fetchone() == ("time", 1.8)
    # the retry's own script and manifest carry the longer time (the wrapper's timeout; Slurm's --time, minutes up)
    manifests = sorted((prod_dir / "logs").glob("batch_*.json"), key=lambda p: p.stat().st_mtime)
    last = json.loads(manifests[-1].read_text())
    assert [t["key"] for t in last["tasks"].values()] == ["r0002/z0.500"] and last["timeout_s"] == 3.6
    wait_quiet(tmp_path / "spool")
    # a ledger rebuilt from logs/ keeps what each submission asked (the manifest says it)
    with Ledger(tmp_path / "rebuilt.db") as rebuilt:
        assert recovery.rebuild(rebuilt, prod_dir, "local", 0.0) == len(manifests)
        assert sorted(s.request.time_s for s in rebuilt.submissions() if s.request) == [1.8, 3.6]
    # status: requested vs used, over the completed runs (the timed-out one is not one)
    eff = json.loads(reconcile(repo, env, "status", "timed", "--json").stdout)["efficiency"][""]
    assert eff["runs"] == 3 and eff["time_requested_hours"] == round((1.8 + 1.8 + 3.6) / 3600, 4)
    assert 0.3 < eff["time_used_share"] < 0.9 and eff["memory_requested_gb"] == 2.0 and 0 < eff["memory_used_share"] < 0.1
    assert "requested vs used: time " in reconcile(repo, env, "status", "timed").stdout
    # advise: the runs say the timeout (1.8 s) is short; the patch applies and validates
    r = reconcile(repo, env, "advise", "timed", "--json")
    assert r.returncode == 0, r.stderr
    (advice,) = json.loads(r.stdout)["stages"]
    assert advice["counts"] == {**advice["counts"], "completed": 3, "timed_out": 1}
    p99 = advice["time_s"]["p99"]["value"]
    assert 2.0 <= p99 < 3.6 and not advice["time_s"]["p99"]["at_least"]  # r0002 slept 2 s
    assert advice["recommended"]["timeout_hours"] * 3600 >= 1.2 * p99
    md = reconcile(repo, env, "advise", "timed", "--markdown").stdout  # for the pull request's description
    assert "Kaplan-Meier" in md and "```diff\n--- a/productions/timed.yaml" in md, md
    patch = reconcile(repo, env, "advise", "timed", "--patch").stdout
    assert patch.startswith("--- a/productions/timed.yaml\n+++ b/productions/timed.yaml\n"), patch
    (repo / "advice.patch").write_text(patch)
    git(repo, "apply", "--check", "advice.patch")
    git(repo, "apply", "advice.patch")
    git(repo, "commit", "-qam", "advice: a longer timeout")
    v = reconcile(repo, env, "validate", "productions/timed.yaml")
    assert v.returncode == 0, v.stdout + v.stderr
    values = {v["path"]: v["value"] for v in json.loads(reconcile(repo, env, "show", "timed", "--json").stdout)["values"]}
    assert values["execution.timeout_hours"] == advice["recommended"]["timeout_hours"] > 0.0005
    assert "nothing to change" in reconcile(repo, env, "advise", "timed").stdout  # the file asks what the runs advise now

