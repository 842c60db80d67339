"""Pool mode on the local backend, end to end: a production's tasks run inside a few worker
jobs (reconciler.pool.worker) that claim them from the pool, instead of one array element each.

Real processes, real files, real git. Each task runs `step.py`, which records in its output
when it started and ended, on which worker (the claim's owner) and in which attempt, so the
tests check from the outputs themselves that no two runs of a task overlapped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import git
from .test_loop_local import env_for, reconcile, watched_to_the_end

STEP = '''\
import json, os, pathlib, sys, time
start = time.time()
out = pathlib.Path(sys.argv[-1])
key = os.environ["RECONCILER_TASK_KEY"]
pdir = pathlib.Path(os.environ["RECONCILER_PRODUCTION_DIR"])
name = key.replace("/", "_")
hold = pdir / "hold" / f"{name}.{os.environ['RECONCILER_ATTEMPT']}"
if hold.exists():
    (pdir / "holding").mkdir(exist_ok=True)
    (pdir / "holding" / name).write_text(os.environ["RECONCILER_POOL_CLAIM"])
while hold.exists() and time.time() - start < 60:
    time.sleep(0.1)
time.sleep(float(sys.argv[1]))
runs = pdir / "runs"
runs.mkdir(exist_ok=True)
record = {"key": key, "start": start, "end": time.time(), "attempt": os.environ["RECONCILER_ATTEMPT"],
          "owner": os.environ.get("RECONCILER_POOL_OWNER"), "token": os.environ["RECONCILER_TOKEN"]}
with open(runs / (key.replace("/", "_") + ".jsonl"), "a") as fh:
    fh.write(json.dumps(record) + "\\n")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(record))
'''

POOLED = """\
production: {{name: pooled, version: v1}}
science:
  redshifts: [0.5, 1.0, 1.5]
  realizations: {{start: 0, count: {count}}}
execution:
  mode: pool
  batch_size: 10
  timeout_hours: {timeout}
  retry_policy: {{max_retries: 2, initial_delay_minutes: 0.01}}
  pool: {{workers: {workers}, walltime_minutes: {walltime}, margin_minutes: {margin}, lease_seconds: {lease}, idle_seconds: 3}}
task:
  command: ["{{python}}", "{step}", "{sleep}", "{{output}}"]
  outputs: ["out/r{{realization:04d}}/z{{redshift:.3f}}.json"]
"""


def pooled(
    repo: Path, tmp: Path, *, count: int = 4, workers: int = 3, walltime: float = 5, margin: float = 0, lease: float = 4, sleep: float = 0.1, timeout: float = 0.05,
) -> None:
    step = tmp / "step.py"
    step.write_text(STEP)
    text = POOLED.format(step=step, count=count, workers=workers, walltime=walltime, margin=margin, lease=lease, sleep=sleep, timeout=timeout)
    (repo / "productions" / "pooled.yaml").write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pooled")


def pdir(repo: Path) -> Path:
    return repo / "work" / "productions" / "pooled"


def runs(repo: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in (pdir(repo) / "runs").glob("*.jsonl"):
        recs = [json.loads(line) for line in f.read_text().splitlines()]
        out[recs[0]["key"]] = recs
    return out


def worker_jobs(spool: Path) -> list[dict[str, Any]]:
    """The jobs the local scheduler received: (name, array size)."""
    return [json.loads(p.read_text()) for p in sorted((spool / "jobs").glob("[0-9]*/job.json"))]


def test_a_pool_production_converges_in_a_few_worker_jobs(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    pooled(repo, tmp_path)
    plan = json.loads(reconcile(repo, env, "plan", "pooled", "--json").stdout)
    kinds = [a["kind"] for a in plan["actions"]]
    assert kinds.count("start_workers") == 1 and "submit" in kinds, plan
    start = next(a for a in plan["actions"] if a["kind"] == "start_workers")
    assert len(start["array_indices"]) == 3, start
    r = reconcile(repo, env, "watch", "pooled", "--until-done", "--interval", "0.5", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    st = json.loads(reconcile(repo, env, "status", "pooled", "--json").stdout)
    assert st["counts"]["complete"] == 12, st["counts"]
    jobs = worker_jobs(tmp_path / "spool")
    assert all(".pool." in j["name"] for j in jobs), [j["name"] for j in jobs]
    assert sum(len(j["array_indices"]) for j in jobs) <= 6, jobs
    got = runs(repo)
    assert len(got) == 12 and all(len(v) == 1 for v in got.values()), got
    assert {r["owner"] for v in got.values() for r in v} <= {f"{j['job_id']}_{i}" for j in jobs for i in j["array_indices"]}
    pool = st["pool"]
    ran = sum(r["end"] - r["start"] for v in got.values() for r in v) / 3600
    assert ran <= pool["used"] <= pool["node_hours"] and pool["used"] + pool["wasted"] == pytest.approx(pool["node_hours"], abs=1e-3), pool
    assert pool["workers_started"] >= 1 and set(pool["stages"]) == {""}, pool
    text = reconcile(repo, env, "status", "pooled").stdout
    assert "node-hours" in text and "used by tasks" in text, text


def descendants(pid: int) -> list[int]:
    """``pid`` and every process under it (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def hold_and_wait(repo: Path, env: dict[str, str], key: str, timeout: float = 60) -> dict[str, Any]:
    """Hold ``key``'s first attempt, run passes until a worker runs it; that worker's claim."""
    name = key.replace("/", "_")
    (pdir(repo) / "hold").mkdir(parents=True, exist_ok=True)
    (pdir(repo) / "hold" / f"{name}.1").touch()
    end = time.monotonic() + timeout
    while not (pdir(repo) / "holding" / name).exists():
        assert time.monotonic() < end, "the held task never started"
        assert reconcile(repo, env, "once", "pooled").returncode == 0
        time.sleep(0.3)
    claim = Path((pdir(repo) / "holding" / name).read_text())
    return {"path": claim, **json.loads(claim.read_text())}


def no_overlap(got: dict[str, list[dict[str, Any]]]) -> None:
    for key, recs in got.items():
        spans = sorted((r["start"], r["end"]) for r in recs)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), (key, spans)


@pytest.mark.parametrize("whole_tree", [True, False], ids=["worker-and-tasks", "worker-alone"])
def test_a_worker_killed_mid_task_is_reaped_and_its_task_runs_once_more(repo: Path, tmp_path: Path, whole_tree: bool) -> None:
    """A worker killed outright mid-task, with its tasks (as Slurm kills a job's processes on a
    node failure) or alone (its task is told to stop when it dies: no run outlives its
    worker): the claim stays behind, the scheduler says the worker ended, the task is a failed
    attempt with that cause and reruns once; the killed run wrote nothing."""
    env = env_for(tmp_path)
    pooled(repo, tmp_path, count=2, workers=2)
    key = "r0000/z0.500"
    claim = hold_and_wait(repo, env, key)
    for pid in descendants(int(claim["pid"])) if whole_tree else [int(claim["pid"])]:
        os.kill(pid, signal.SIGKILL)
    st = watched_to_the_end(repo, env, "pooled")
    assert st["counts"]["complete"] == 6
    got = runs(repo)
    assert [r["attempt"] for r in got[key]] == ["2"], got[key]
    assert all(len(v) == 1 for v in got.values()), got
    retried = {x["key"]: x for x in st["retried"]}
    assert key in retried, st["retried"]
    assert claim["owner"] in json.dumps(retried[key]), retried[key]
    assert claim["path"].exists(), "a claim is never removed: the retry is a new submission, with a claim of its own"


def test_a_frozen_worker_loses_its_claim_when_the_lease_expires_and_cannot_mark_the_task(repo: Path, tmp_path: Path) -> None:
    """A worker stopped (SIGSTOP) mid-task stops renewing its claim: once the lease has expired
    the task is a failed attempt ("lease expired"), the worker, which the scheduler still says
    runs, is cancelled as hung and replaced, and the task runs again. Woken up, the old run is
    stopped before it writes anything."""
    env = env_for(tmp_path)
    pooled(repo, tmp_path, count=2, workers=2, lease=3)
    key = "r0000/z0.500"
    claim = hold_and_wait(repo, env, key)
    frozen = descendants(int(claim["pid"]))
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        r = reconcile(repo, env, "watch", "pooled", "--until-done", "--interval", "0.5", timeout=180)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert r.returncode == 0 and "every task is complete" in r.stdout, r.stderr
    assert "stop_workers" in r.stdout and "frozen or stuck" in r.stderr, r.stderr  # the hung worker, cancelled
    st = json.loads(reconcile(repo, env, "status", "pooled", "--json").stdout)
    assert st["counts"]["complete"] == 6
    retried = {x["key"]: x for x in st["retried"]}
    assert "lease expired" in json.dumps(retried[key]), retried[key]
    end = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() and "Z" not in (Path(f"/proc/{pid}/stat").read_text().split()[2:3] or ["Z"]) for pid in frozen):
        assert time.monotonic() < end, "the frozen run is still there after it was woken"
        time.sleep(0.3)
    got = runs(repo)
    assert [r["attempt"] for r in got[key]] == ["2"], got[key]  # the frozen run wrote nothing
    no_overlap(got)


def test_a_worker_stops_claiming_at_its_margin_exits_and_is_replaced(repo: Path, tmp_path: Path) -> None:
    """One worker at a time, 12 s of walltime each, 1.8 s of margin, tasks of ~1 s: a worker
    claims only while a task fits (its timeout, 5.4 s, until 3 have run; then their 90th
    percentile), exits at its margin, and the pass starts another while work remains."""
    env = env_for(tmp_path)
    pooled(repo, tmp_path, count=4, workers=1, walltime=0.2, margin=0.03, sleep=0.6, timeout=0.0015)
    st = watched_to_the_end(repo, env, "pooled")
    assert st["counts"]["complete"] == 12
    got = runs(repo)
    assert all(len(v) == 1 for v in got.values()), got
    by_owner: dict[str, list[dict[str, Any]]] = {}
    for recs in got.values():
        by_owner.setdefault(recs[0]["owner"], []).append(recs[0])
    assert len(by_owner) >= 2, by_owner.keys()
    for owner, recs in by_owner.items():
        assert max(r["end"] for r in recs) - min(r["start"] for r in recs) < 12, owner
    logs = [p.read_text() for p in (pdir(repo) / "logs" / "pool").glob("*.err")]
    assert sum("margin reached" in t for t in logs) >= 1, logs
    plan = json.loads(reconcile(repo, env, "plan", "pooled", "--json").stdout)
    assert not [a for a in plan["actions"] if a["kind"] == "start_workers"], plan  # nothing left: no worker wanted


def test_sigkill_of_the_reconciler_at_failpoints_and_at_random_loses_nothing_and_runs_nothing_twice(repo: Path, tmp_path: Path) -> None:
    """Killed between journal and queue, between queue and recording the answer, between
    journaling workers and sbatch, then at random while watching: every task runs exactly once
    (its own record of each run), never two runs of a task at a time, and the pool ends empty."""
    env = env_for(tmp_path)
    pooled(repo, tmp_path, count=4, workers=2, sleep=0.3)
    for point in ("after_record", "after_submit", "workers_recorded"):  # each pass gets one further
        killed = reconcile(repo, {**env, "RECONCILER_FAILPOINT": point}, "once", "pooled")
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
    for delay in (0.3, 0.8, 0.5, 1.1, 0.2, 0.7):
        p = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "watch", "pooled", "--interval", "0.1"], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
    st = watched_to_the_end(repo, env, "pooled")
    assert st["counts"]["complete"] == 12
    got = runs(repo)
    assert len(got) == 12 and all(len(v) == 1 for v in got.values()), {k: len(v) for k, v in got.items()}
    jobs = worker_jobs(tmp_path / "spool")
    assert sum(len(j["array_indices"]) for j in jobs) <= 12, [j["array_indices"] for j in jobs]


def test_tasks_pruned_from_a_pool_production_are_cancelled_queued_or_running(repo: Path, tmp_path: Path) -> None:
    """With prune: true, tasks removed from the production are cancelled in the pool: a queued
    one is never claimed, a running one is stopped at its worker's next heartbeat; neither runs
    to its end, and what stays desired completes."""
    env = env_for(tmp_path)
    pooled(repo, tmp_path, count=2, workers=1)
    claim = hold_and_wait(repo, env, "r0001/z0.500")
    path = repo / "productions" / "pooled.yaml"
    path.write_text(path.read_text().replace("count: 2", "count: 1").replace("  mode: pool\n", "  mode: pool\n  prune: true\n"))
    git(repo, "commit", "-qam", "drop realization 1")
    plan = json.loads(reconcile(repo, env, "plan", "pooled", "--json").stdout)
    cancel = [a for a in plan["actions"] if a["kind"] == "cancel"]
    assert cancel and "r0001/z0.500" in cancel[0]["keys"], plan
    st = watched_to_the_end(repo, env, "pooled")
    assert st["counts"]["complete"] == 3 and st["total"] == 3, st["counts"]
    end = time.monotonic() + 20
    ended = pdir(repo) / "pool" / "ended" / claim["path"].parent.name / claim["path"].name
    while not ended.exists():  # the cancelled run is stopped and its end recorded (its claim stays: never taken again)
        assert time.monotonic() < end, "the cancelled task's end was never recorded"
        time.sleep(0.3)
    assert json.loads(ended.read_text())["killed"] == "cancelled"
    assert {k for k in runs(repo)} == {"r0000/z0.500", "r0000/z1.000", "r0000/z1.500"}, runs(repo)
    logs = "".join(p.read_text() for p in (pdir(repo) / "logs" / "pool").glob("*.err"))
    assert "cancelled, stopping it" in logs, logs
