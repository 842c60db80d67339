"""The reconcile loop end to end on the local backend: real processes, real files, real git.

`reconcile` runs as a subprocess (so it can be SIGKILLed); tasks run detached under the
local backend's dispatcher and outlive it, as jobs outlive a login-node process on Slurm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import git

FAIL_ONCE = {"r0004/z1.500", "r0005/z0.500"}  # (1000 r + 1000 z) % 11 == 0 in the demo production


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(
        RECONCILER_LOCAL_SPOOL=str(tmp / "spool"),
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org",
    )
    env.update(extra)
    return env


def reconcile(repo: Path, env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)


def sent_to_scheduler(spool: Path) -> Counter[str]:
    """How many times each task key reached the local scheduler (the scheduler's own record)."""
    sent: Counter[str] = Counter()
    for job in sorted((spool / "jobs").glob("[0-9]*/job.json")):
        doc = json.loads(job.read_text())
        manifest = json.loads(Path(doc["script_path"]).with_suffix(".json").read_text())
        for i in doc["array_indices"]:
            sent[manifest["tasks"][str(i)]["key"]] += 1
    return sent


def wait_quiet(spool: Path, timeout: float = 60) -> None:
    """Until no task of the spool is pending or running (so a test leaves nothing behind)."""
    end = time.time() + timeout
    while time.time() < end:
        states = [json.loads(p.read_text()).get("state") for p in spool.glob("jobs/*/tasks/*.json")]
        if not any(s in ("PENDING", "RUNNING") for s in states):
            return
        time.sleep(0.2)


def shrink_demo(repo: Path) -> int:
    """Commit a demo of 2 realizations (8 tasks) that still holds both fail-once tasks.

    The crash tests need a retry and a few batches, not the whole 32-task demo: this keeps
    each of them a few seconds instead of ~20 on 2 cores. Returns the number of tasks.
    """
    path = repo / "productions" / "demo.yaml"
    text = path.read_text()
    assert "    start: 0\n    count: 8\n" in text and "batch_size: 16" in text
    path.write_text(text.replace("    start: 0\n    count: 8\n", "    start: 4\n    count: 2\n").replace("batch_size: 16", "batch_size: 3"))
    git(repo, "commit", "-qam", "a smaller demo")
    return 8


def watched_to_the_end(repo: Path, env: dict[str, str], name: str, timeout: float = 180) -> dict:
    """`reconcile watch NAME --until-done` (which must end 0, every task complete), then its status."""
    r = reconcile(repo, env, "watch", name, "--until-done", "--interval", "0.5", timeout=timeout)
    assert r.returncode == 0, r.stderr
    assert "every task is complete" in r.stdout
    st = reconcile(repo, env, "status", name, "--json")
    assert st.returncode == 0, st.stderr
    return json.loads(st.stdout)


def test_demo_runs_to_completion_with_a_visible_retry(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    status = watched_to_the_end(repo, env, "demo")
    assert status["counts"]["complete"] == 32 and status["done"]
    assert {x["key"] for x in status["retried"]} == FAIL_ONCE
    assert all("exit" in x["last_reason"] or "FAILED" in x["last_reason"] for x in status["retried"]), status["retried"]
    text = reconcile(repo, env, "status", "demo").stdout
    assert "retried and then completed: 2" in text and "work/productions/demo" in text
    # every output is a valid catalog and carries its marker
    from reconciler import markers, validators
    from reconciler.spec.load import WorkTree, load

    loaded = load(WorkTree(repo), "demo", repo_root=repo)
    tasks = loaded.expansion().tasks
    assert all(validators.validate(loaded.production_dir, t.outputs, loaded.spec.task.validator) is None for t in tasks)
    assert all(markers.read_marker(loaded.production_dir, t) for t in tasks)
    assert sent_to_scheduler(tmp_path / "spool") == Counter({t.key: 2 if t.key in FAIL_ONCE else 1 for t in tasks})
    # a pass over the finished production does nothing
    plan = reconcile(repo, env, "plan", "demo")
    assert plan.returncode == 0 and "nothing to do" in plan.stdout
    # the working tree is untouched apart from ignored outputs
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize("point", ["before_record", "after_record", "after_submit"])
def test_killed_at_a_failpoint_never_submits_twice(repo: Path, tmp_path: Path, point: str) -> None:
    env = env_for(tmp_path)
    n = shrink_demo(repo)
    killed = reconcile(repo, {**env, "RECONCILER_FAILPOINT": point}, "once", "demo")
    assert killed.returncode == -signal.SIGKILL
    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    if point == "after_submit":
        assert "recovered submission" in r.stderr  # found by its token, not sent again
    counts = sent_to_scheduler(tmp_path / "spool")
    assert counts == Counter({k: 2 if k in FAIL_ONCE else 1 for k in counts}) and len(counts) == n
    wait_quiet(tmp_path / "spool")


def test_sigkill_of_watch_at_many_points_never_submits_twice(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    for delay in (0.4, 0.7, 1.0, 1.3, 1.6, 2.0, 2.5, 3.0, 0.2, 0.9):
        p = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "watch", "demo", "--interval", "0.1"], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    counts = sent_to_scheduler(tmp_path / "spool")
    assert len(counts) == 32
    assert counts == Counter({k: 2 if k in FAIL_ONCE else 1 for k in counts})
    wait_quiet(tmp_path / "spool")


def test_lease_held_exits_3_and_names_the_holder(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    assert reconcile(repo, env, "init", "demo").returncode == 0
    from reconciler.lease import Lease

    lease = Lease(repo / "work/productions/demo/metadata").acquire()
    try:
        r = reconcile(repo, env, "once", "demo")
        assert r.returncode == 3
        assert f"pid {os.getpid()}" in r.stderr
    finally:
        lease.release()


def test_plan_exit_codes_and_json(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    r = reconcile(repo, env, "plan", "demo", "--json")
    assert r.returncode == 1
    plan = json.loads(r.stdout)
    assert [(a["kind"], a["batch"], len(a["keys"])) for a in plan["actions"]] == [("submit", 0, 16), ("submit", 1, 16)]
    assert not (repo / "work").exists()  # plan has no side effects
    bad = repo / "productions/demo.yaml"
    bad.write_text(bad.read_text().replace("batch_size: 16", "batch_size: -1"))
    git(repo, "commit", "-qam", "break demo")
    r = reconcile(repo, env, "plan", "demo")
    assert r.returncode == 2 and "execution.batch_size" in r.stderr


def test_deleted_ledger_is_rebuilt_without_resubmitting(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    n = shrink_demo(repo)
    assert reconcile(repo, env, "once", "demo").returncode == 0
    (repo / "work/productions/demo/metadata/production.db").unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{repo}/work/productions/demo/metadata/production.db{suffix}").unlink(missing_ok=True)
    # `plan` shows what `once` will do: the jobs found again by their tokens, nothing sent as
    # new (a fail-once task past its 3 s backoff may be resubmitted: that is a retry); and,
    # being read-only, it rebuilds in memory and writes no ledger
    r = reconcile(repo, env, "plan", "demo", "--json")
    assert r.returncode == 1, r.stderr
    kinds = {a["kind"] for a in json.loads(r.stdout)["actions"]}
    assert "recover" in kinds and not kinds & {"submit", "abandon"}, r.stdout
    assert not (repo / "work/productions/demo/metadata/production.db").exists()
    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    assert "rebuilt" in r.stderr
    counts = sent_to_scheduler(tmp_path / "spool")
    assert counts == Counter({k: 2 if k in FAIL_ONCE else 1 for k in counts}) and len(counts) == n


def test_until_done_ends_nonzero_when_tasks_gave_up_and_says_why(repo: Path, tmp_path: Path) -> None:
    """Honest endings: nothing left to do is not success when tasks gave up."""
    demo = repo / "productions" / "demo.yaml"
    text = demo.read_text().replace("    start: 0\n    count: 8\n", "    start: 0\n    count: 1\n").replace("redshifts: [0.5, 1.0, 1.5, 2.0]", "redshifts: [0.5, 1.0]")
    text = text.replace("max_retries: 2", "max_retries: 0").replace("{python} -m reconciler.demo_generator", "{python} -c 'import sys; sys.exit(3)' {python} -m reconciler.demo_generator")
    demo.write_text(text)
    git(repo, "commit", "-qam", "a command that always fails")
    env = env_for(tmp_path)
    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5", "--no-status")
    assert r.returncode == 5, r.stdout + r.stderr
    assert "demo: nothing left to do, but 2 task(s) gave up: exit 3 (2)" in r.stdout, r.stdout
    assert "every task is complete" not in r.stdout
    st = reconcile(repo, env, "status", "demo")
    assert "(ended: 2 task(s) gave up: exit 3 (2))" in st.stdout and "(done)" not in st.stdout, st.stdout
    wait_quiet(tmp_path / "spool")


def test_a_deleted_finished_output_is_rerun_and_until_done_ends_0(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    shrink_demo(repo)
    assert reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5", "--no-status").returncode == 0
    out = repo / "work/productions/demo/catalogs/r0004/mock_z0.500.hdf5"
    out.unlink()
    r = reconcile(repo, env, "plan", "demo", "--json")
    assert r.returncode == 1
    (a,) = json.loads(r.stdout)["actions"]
    assert (a["kind"], a["reason"], a["keys"]) == ("resubmit", "output_lost", ["r0004/z0.500"])
    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5", "--no-status")
    assert r.returncode == 0 and "every task is complete" in r.stdout, r.stdout + r.stderr
    assert out.exists()
    wait_quiet(tmp_path / "spool")


def small_demo(repo: Path, command: str, retries: int, why: str) -> None:
    """Commit a 2-task demo whose command is ``command`` (in place of the generator's program)."""
    demo = repo / "productions" / "demo.yaml"
    text = demo.read_text().replace("    start: 0\n    count: 8\n", "    start: 0\n    count: 1\n").replace("redshifts: [0.5, 1.0, 1.5, 2.0]", "redshifts: [0.5, 1.0]")
    text = text.replace("max_retries: 2", f"max_retries: {retries}").replace("{python} -m reconciler.demo_generator", command)
    demo.write_text(text)
    git(repo, "commit", "-qam", why)


def test_a_command_that_does_not_exist_gives_up_at_once_and_status_says_why(repo: Path, tmp_path: Path) -> None:
    """Failure causes: no backoff and no retry for what no retry can fix; the cause, not "exit 127"."""
    small_demo(repo, "no-such-generator", 2, "a command that does not exist")
    env = env_for(tmp_path)
    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5")
    assert r.returncode == 5, r.stdout + r.stderr
    assert "demo: nothing left to do, but 2 task(s) gave up: command not found: no-such-generator (2)" in r.stdout, r.stdout
    assert sent_to_scheduler(tmp_path / "spool") == Counter({"r0000/z0.500": 1, "r0000/z1.000": 1})  # max_retries 2, yet once
    st = reconcile(repo, env, "status", "demo")
    assert "2 task(s): command not found: no-such-generator (gave up at once: retrying cannot fix it)" in st.stdout, st.stdout
    log = next(line for line in st.stdout.splitlines() if "e.g. r0000/z0.500" in line).rpartition("log: ")[2]
    assert log.endswith(".err") and "command not found: no-such-generator" in Path(log).read_text(), st.stdout
    status = json.loads(reconcile(repo, env, "status", "demo", "--json").stdout)
    assert status["counts"]["failed"] == 2 and status["done"] and not status["all_complete"]
    assert {f["reason"] for f in status["failures"]} == {"command not found: no-such-generator"}
    # the results branch says it too, in status.json and STATUS.md
    published = json.loads(git(repo, "show", "reconciler/status:productions/demo/status.json"))
    assert [(c["cause"], c["tasks"], c["retry_cannot_fix"]) for c in published["causes"]] == [("command not found: no-such-generator", 2, True)]
    assert "2 task(s): command not found: no-such-generator (gave up: retrying cannot fix it)" in git(repo, "show", "reconciler/status:STATUS.md")
    # `reconcile retry` gives one more attempt (the command may have been installed since)
    r = reconcile(repo, env, "retry", "demo", "--no-status")
    assert "2 failed task(s) given one more attempt, 2 resubmitted now" in r.stderr, r.stderr
    wait_quiet(tmp_path / "spool")


def test_the_validators_message_is_the_cause(repo: Path, tmp_path: Path) -> None:
    small_demo(repo, "{python} -c pass", 0, "a command that writes nothing")
    env = env_for(tmp_path)
    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5", "--no-status")
    assert r.returncode == 5 and "2 task(s) gave up: outputs invalid (2)" in r.stdout, r.stdout + r.stderr
    st = reconcile(repo, env, "status", "demo").stdout
    assert "2 task(s): outputs invalid (2 gave up)" in st, st
    assert "e.g. r0000/z0.500: outputs invalid: missing catalogs/r0000/mock_z0.500.hdf5" in st, st
    wait_quiet(tmp_path / "spool")


def test_a_stale_rerun_that_fails_is_retried_with_backoff_then_given_up_never_resent_every_pass(repo: Path, tmp_path: Path) -> None:
    """rerun_on_change reruns stale tasks once; a rerun that fails is a failed task like any other:
    backoff, max_retries, then given up, and status says failed (not stale), so watch ends."""
    env = env_for(tmp_path)
    prod = repo / "productions" / "rerun.yaml"
    prod.write_text(
        "production: {name: rerun, version: v1}\n"
        "science: {redshifts: [0.5], realizations: {start: 0, count: 2}}\n"
        "execution: {rerun_on_change: true, retry_policy: {max_retries: 1, initial_delay_minutes: 0.01}}\n"
        "task:\n  shell: true\n  command: echo ok > {output}\n  outputs: ['o/r{realization:04d}.txt']\n"
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "rerun")
    assert watched_to_the_end(repo, env, "rerun")["counts"]["complete"] == 2
    prod.write_text(prod.read_text().replace("echo ok > {output}", "echo failing >&2; exit 3"))
    git(repo, "commit", "-qam", "a command that fails")
    r = reconcile(repo, env, "watch", "rerun", "--until-done", "--interval", "0.3", timeout=120)
    assert r.returncode != 0 or "every task is complete" not in r.stdout
    st = json.loads(reconcile(repo, env, "status", "rerun", "--json").stdout)
    assert st["counts"]["failed"] == 2 and st["done"], st["counts"]
    assert sent_to_scheduler(tmp_path / "spool") == Counter({"r0000/z0.500": 3, "r0001/z0.500": 3})  # the first run, the rerun, one retry
    wait_quiet(tmp_path / "spool")
