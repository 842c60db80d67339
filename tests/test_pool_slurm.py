"""Pool mode on the REAL Slurm test cluster (#15's done-when): 60 tasks run inside a handful
of worker jobs, not 60 array elements; a worker cancelled mid-task (gracefully, and killed
outright) costs that task one more attempt and nothing else; workers stop at their margin and
are replaced while work remains; SIGKILL of the reconciler loses nothing; status reports the
node-hours used and wasted."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import git
from .test_loop_slurm import MACHINE, Prod, make_prod, slurm  # noqa: F401 - make_prod is a fixture
from .test_pool_local import STEP, no_overlap

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

POOLED = """\
production: {{name: {name}, version: v1}}
science:
  redshifts: [0.5, 1.0, 1.5]
  realizations: {{start: 0, count: 20}}
outputs: {{base_path: {base}}}
execution:
  mode: pool
  batch_size: 30
  timeout_hours: 0.003
  retry_policy: {{max_retries: 2, initial_delay_minutes: 0.02}}
  pool: {{workers: 3, walltime_minutes: 0.5, margin_minutes: 0.1, lease_seconds: 5, idle_seconds: 5}}
task:
  command: ["{{python}}", "{step}", "0.8", "{{output}}"]
  outputs: ["out/r{{realization:04d}}/z{{redshift:.3f}}.json"]
"""


def runs_of(directory: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in (directory / "runs").glob("*.jsonl"):
        recs = [json.loads(line) for line in f.read_text().splitlines()]
        out[recs[0]["key"]] = recs
    return out


def wait_holding(p: Prod, name: str, timeout: float = 90) -> dict:
    """Passes until the held task runs; its claim (owner: the worker's Slurm id, <job>_<index>)."""
    end = time.monotonic() + timeout
    while not (p.directory / "holding" / name).exists():
        assert time.monotonic() < end, "the held task never started"
        assert p.once().returncode == 0
        time.sleep(1)
    return json.loads(Path((p.directory / "holding" / name).read_text()).read_text())


def test_sixty_tasks_run_in_a_handful_of_worker_jobs_through_cancels_margins_and_kills(make_prod: Callable[..., Prod]) -> None:  # noqa: F811
    p = make_prod("pool", realizations=1, redshifts=[0.5], batch_size=10, light=True)
    step = p.repo.parent / "step.py"
    step.write_text(STEP)
    (p.repo / "productions" / f"{p.name}.yaml").write_text(POOLED.format(name=p.name, base=p.directory.parent, step=step))
    git(p.repo, "commit", "-qam", "a production in pool mode")
    gentle, hard = "r0001_z0.500", "r0002_z0.500"
    (p.directory / "hold").mkdir(parents=True)
    for name in (gentle, hard):
        (p.directory / "hold" / f"{name}.1").touch()  # their first attempts wait for the test

    t0 = time.monotonic()
    claim = wait_holding(p, gentle)
    slurm("scancel", claim["owner"])  # SIGTERM: the worker stops its task, which records the cancellation
    claim2 = wait_holding(p, hard)
    slurm("scancel", "--signal=KILL", "--full", claim2["owner"])  # everything dies at once: the claim stays behind
    for _ in range(3):  # the reconciler itself killed at random points while it watches
        w = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "watch", p.name, "--machine", MACHINE, "--interval", "0.5"],
                             cwd=p.repo, env=p.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(random.uniform(0.5, 3.0))
        w.send_signal(signal.SIGKILL)
        w.wait()
    passes = p.converge(timeout=300)
    st = p.status()
    print(f"60 tasks in pool mode converged in {time.monotonic() - t0:.0f} s; last {len(passes)} passes; pool: {st['pool']}")
    assert st["all_complete"] and st["total"] == 60, st["counts"]

    got = runs_of(p.directory)
    assert len(got) == 60 and all(len(v) == 1 for v in got.values()), {k: len(v) for k, v in got.items() if len(v) != 1}
    no_overlap(got)
    for key in ("r0001/z0.500", "r0002/z0.500"):
        assert [r["attempt"] for r in got[key]] == ["2"], got[key]  # the killed first attempt wrote nothing
    retried = {x["key"]: x["last_reason"] for x in st["retried"]}
    assert "exit 143" in retried["r0001/z0.500"] or "cancelled" in retried["r0001/z0.500"], retried
    assert claim2["owner"] in retried["r0002/z0.500"], retried  # the worker ended with the task claimed

    # what Slurm ran: worker arrays only, a handful of workers, some stopped at their margin
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(p.started))
    acct = slurm("sacct", "-X", "-P", "-n", f"--starttime={since}", "--endtime=now", "--format=JobID,JobName,State")
    rows = [line.split("|") for line in acct.splitlines() if line.split("|")[1].startswith(p.name + ".")]
    assert rows and all(r[1].startswith(f"{p.name}.pool.") for r in rows), acct
    assert 3 < len(rows) <= 15, acct  # replaced as they stopped, never one per task
    logs = [f.read_text() for f in (p.directory / "logs" / "pool").glob("worker_*.err")]
    assert any("margin reached" in t for t in logs), logs
    pool = st["pool"]
    assert pool["workers_started"] >= 4, pool
    assert 0 < pool["used"] < pool["node_hours"] and pool["wasted"] > 0, pool
    text = p.run("status", p.name, "--machine", MACHINE).stdout
    assert "node-hours" in text, text
