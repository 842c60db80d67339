"""Right-sizing on the REAL Slurm test cluster (#16's done-when): tasks that exceed their memory
are killed (OverMemoryKill: FAILED, signal 9, MaxRSS over the request), retried with more and
complete; tasks that run past their time limit time out, are retried with a longer one and
complete; a node failure is retried with the same request; `advise` then proposes a time and
memory that cover the chosen quantile plus margin, as a patch that applies and validates."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import git
from .test_loop_slurm import MACHINE, Prod, make_prod, queued, slurm  # noqa: F401 - make_prod is a fixture

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

STEP = """\
import pathlib, sys, time
mode, out = sys.argv[1].split(",")[int(sys.argv[2])], pathlib.Path(sys.argv[3])
if mode == "memory":
    hog = bytearray(120 * 2**20)  # with the wrapper's own ~40 MB: over 103 MB, under twice that
    time.sleep(3)  # long enough for the accounting sampler (every second) to see it, twice
elif mode == "time":
    time.sleep(5)  # past the 3.6 s timeout, within twice it
elif mode == "node":
    held = out.parent / "first-run"
    if not held.exists():
        held.parent.mkdir(parents=True, exist_ok=True)
        held.write_text("")
        time.sleep(30)  # the test fails the node under it
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(mode)
"""

SIZED = """\
production: {{name: {name}, version: v1}}
science:
  redshifts: [0.5]
  realizations: {{start: 0, count: {count}}}
outputs: {{base_path: {base}}}
execution:
  batch_size: 10
  timeout_hours: {hours}
  retry_policy: {{max_retries: 3, initial_delay_minutes: 0.01, memory_factor: 2, time_factor: 2}}
task:
  command: ["{{python}}", "{step}", "{modes}", "{{realization}}", "{{output}}"]
  outputs: ["out/r{{realization:04d}}.txt"]
"""


def commit(p: Prod, step: Path, modes: list[str], hours: float) -> None:
    """The production: realization i runs the step in ``modes[i]`` (memory, time, node, ok)."""
    text = SIZED.format(name=p.name, base=p.directory.parent, step=step, count=len(modes), hours=hours, modes=",".join(modes))
    (p.repo / "productions" / f"{p.name}.yaml").write_text(text)
    git(p.repo, "commit", "-qam", f"production {p.name}")


def attempts(p: Prod) -> dict[str, list[tuple[str, float | None, float | None, float | None]]]:
    """key -> [(state, memory asked MB, time asked s, peak MB)] in attempt order, from the ledger."""
    db = sqlite3.connect(p.directory / "metadata" / "production.db")
    rows = db.execute(
        "SELECT a.key, a.sched_state, s.mem_mb, s.time_s, a.max_rss_mb FROM attempts a JOIN submissions s ON s.token = a.token "
        "WHERE s.state != 'abandoned' ORDER BY a.key, a.attempt"
    ).fetchall()
    db.close()
    out: dict[str, list[tuple[str, float | None, float | None, float | None]]] = {}
    for key, state, mem, time_s, peak in rows:
        out.setdefault(key, []).append((state, mem, time_s, peak))
    return out


def passes_until_done(p: Prod, timeout: float, between: Callable[[], None] = lambda: None, ok: tuple[int, ...] = (0,)) -> str:
    """`plan`, then `once`, until every task is complete; everything the plans and passes said.
    ``ok``: the exit codes a pass may have (4: the scheduler did not answer, while a node is down)."""
    said = []
    end = time.monotonic() + timeout
    while True:
        said.append(p.run("plan", p.name, "--machine", MACHINE).stdout)
        r = p.once()
        assert r.returncode in ok, r.stderr
        said.append(r.stderr)
        if p.status()["all_complete"]:  # outputs complete; the last ends are journaled once Slurm says so
            while queued(p.name) and time.monotonic() < end:
                time.sleep(0.5)
            assert p.once().returncode == 0
            return "\n".join(said)
        assert time.monotonic() < end, f"not done after {timeout} s: {p.status()['counts']}"
        between()
        time.sleep(1)


def test_out_of_memory_and_timeouts_are_retried_with_more_a_node_failure_with_the_same_and_advise_covers_them(
    make_prod: Callable[..., Prod], tmp_path: Path,  # noqa: F811
) -> None:
    step = tmp_path / "step.py"
    step.write_text(STEP)
    p = make_prod("sized", realizations=1, redshifts=[0.5], batch_size=10, light=True)
    commit(p, step, ["memory", "memory", "time", "time", "ok"], 0.001)  # 3.6 s; defaults/slurmtest.yaml asks 0.1 GB (103 MB)
    said = passes_until_done(p, 150)
    runs = attempts(p)
    for key in ("r0000/z0.500", "r0001/z0.500"):  # killed over 0.1 GB (FAILED, signal 9: OverMemoryKill), then twice that
        (first, second) = runs[key]
        assert first[:3] == ("FAILED", 102.4, 3.6), runs[key]
        assert second[:3] == ("COMPLETED", 205.0, 3.6), runs[key]
    for key in ("r0002/z0.500", "r0003/z0.500"):  # the wrapper's timeout at 3.6 s, then 7.2 s
        assert [r[:3] for r in runs[key]] == [("FAILED", 102.4, 3.6), ("COMPLETED", 102.4, 7.2)], runs[key]
    assert [r[:3] for r in runs["r0004/z0.500"]] == [("COMPLETED", 102.4, 3.6)]
    # the pass says it (`reconcile plan` shows it too, when it runs between the backoff's end and the pass)
    for why in ("with 205 MB memory: out of memory at 102 MB", "with 7.2 s: timed out at 3.6 s"):  # both tasks at once, or one by one
        assert re.search(rf"{p.name}: resubmit [12] task\(s\) of batch 0000 {re.escape(why)}", said), said
    assert "--mem=205M" in "".join(f.read_text() for f in (p.directory / "logs").glob("batch_*.sh"))
    status = p.status()
    eff = status["efficiency"][""]
    assert eff["runs"] == 5 and eff["memory_runs"] >= 1 and eff["memory_used_share"] is not None  # a peak slurmdbd had not yet
    # recorded when the submission's last task ended is never read (README: a task may have no peak)

    # advise: every run's time and peak covered at p99 + 20%; the killed ones as lower bounds
    r = p.run("advise", p.name, "--machine", MACHINE, "--json")
    assert r.returncode == 0, r.stderr
    (advice,) = json.loads(r.stdout)["stages"]
    assert advice["counts"] == {**advice["counts"], "completed": 5, "out_of_memory": 2, "timed_out": 2, "ignored": 0}
    peaks = [run[3] for key in runs for run in runs[key] if run[0] == "COMPLETED" and run[3] is not None]  # measured ones
    assert peaks
    assert advice["recommended"]["memory_gb"] * 1024 >= 1.2 * max(peaks)  # p99 of 5 runs is the largest
    assert advice["recommended"]["memory_gb"] * 1024 >= 1.2 * 102.4  # ... and above the request the killed runs had
    assert advice["recommended"]["timeout_hours"] * 3600 >= 1.2 * 5.0  # the slowest run slept 5 s
    patch = p.run("advise", p.name, "--machine", MACHINE, "--patch").stdout
    (p.repo / "advice.patch").write_text(patch)
    git(p.repo, "apply", "--check", "advice.patch")
    git(p.repo, "apply", "advice.patch")
    git(p.repo, "commit", "-qam", "advice")
    v = p.run("validate", f"productions/{p.name}.yaml", "--machine", MACHINE)
    assert v.returncode == 0, v.stdout + v.stderr
    values = {x["path"]: x["value"] for x in json.loads(p.run("show", p.name, "--machine", MACHINE, "--json").stdout)["values"]}
    assert (values["resources.memory_gb"], values["execution.timeout_hours"]) == (advice["recommended"]["memory_gb"], advice["recommended"]["timeout_hours"])

    # a node failure: retried with the request of the attempt that failed
    q = make_prod("nodefail", realizations=1, redshifts=[0.5], batch_size=10, light=True)
    commit(q, step, ["node"], 0.01)  # 36 s
    node = slurm("sinfo", "-h", "-o", "%N").split()[0]
    held = q.directory / "out" / "first-run"

    def fail_the_node() -> None:
        if held.exists() and not (q.directory / "node-failed").exists():
            (job,) = [line.split("|")[0] for line in slurm("squeue", "-h", "-o", "%i|%j|%T").splitlines() if f"|{q.name}." in line and line.endswith("|RUNNING")]
            slurm("scontrol", "update", f"jobid={job}", "requeue=0")  # else Slurm requeues it itself, and no one sees a node failure
            slurm("scontrol", "update", f"nodename={node}", "state=down", "reason=reconciler test: node failure")
            (q.directory / "node-failed").write_text(job)

    passes_until_done(q, 120, fail_the_node, ok=(0, 4))
    assert (q.directory / "node-failed").exists()
    assert [r[:3] for r in attempts(q)["r0000/z0.500"]] == [("NODE_FAIL", 102.4, 36.0), ("COMPLETED", 102.4, 36.0)]
