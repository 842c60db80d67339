"""A campaign of three stages on the local backend, end to end: catalogs -> a statistic per
catalog (a map) -> one covariance per redshift (a fan-in). Real processes, real files, real git.

Each task runs `step.py` (written by the test), which records in its output when it started and
ended, and what it read: so the test checks from the outputs themselves that no fan-in task
started before its members ended, and that each task ran once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .conftest import git
from .test_loop_local import env_for, reconcile, sent_to_scheduler, wait_quiet

STEP = '''\
import json, os, pathlib, sys, time
start = time.time()
mode, out = sys.argv[1], pathlib.Path(sys.argv[-1])
key = os.environ["RECONCILER_TASK_KEY"]
pdir = pathlib.Path(os.environ["RECONCILER_PRODUCTION_DIR"])
if (pdir / "fail" / key.replace("/", "_")).exists():
    sys.exit(3)
read = sys.argv[2:-1]
members = pathlib.Path(read[0]).read_text().split() if mode == "cov" else []
for m in members + ([read[0]] if mode == "measure" else []):
    json.loads(pathlib.Path(m).read_text())  # every member's output is there, whole
time.sleep(0.05)
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"key": key, "start": start, "end": time.time(), "read": read, "members": members}))
'''

CAMPAIGN = """\
production: {{name: camp, version: v1}}
science:
  redshifts: [0.5, 1.0]
  realizations: {{start: 0, count: 3{exclude}}}
execution:
  batch_size: 4
  timeout_hours: 0.05
  rerun_on_change: {rerun}
  retry_policy: {{max_retries: 0, initial_delay_minutes: 0.01}}
stages:
  generate:
    command: ["{{python}}", "{step}", "gen", "{{output}}"]
    outputs: ["catalogs/r{{realization:04d}}/mock_z{{redshift:.3f}}.json"]{inputs}
  measure:
    needs: [generate]
    command: ["{{python}}", "{step}", "measure", "{{needs.generate}}", "{{output}}"]
    outputs: ["pk/r{{realization:04d}}/pk_z{{redshift:.3f}}.json"]
  covariance:
    over: [redshift]
    needs: [measure]{require}
    command: ["{{python}}", "{step}", "cov", "{{needs.measure}}", "{{output}}"]
    outputs: ["cov/cov_z{{redshift:.3f}}.json"]
"""


def campaign_text(step: Path, *, exclude: str = "", inputs: str = "", require: str = "", rerun: bool = False) -> str:
    """The campaign over 3 realizations x 2 redshifts; ``inputs``: generate's input template."""
    return CAMPAIGN.format(
        step=step, exclude=f", exclude: [{exclude}]" if exclude else "", inputs=f"\n    inputs: [\"{inputs}\"]" if inputs else "",
        require=f"\n    require: {{min_fraction: {require}}}" if require else "", rerun="true" if rerun else "false",
    )


def campaign(repo: Path, tmp: Path, *, exclude: str = "", inputs: str = "", require: str = "", rerun: bool = False, message: str = "campaign") -> None:
    step = tmp / "step.py"
    step.write_text(STEP)
    text = campaign_text(step, exclude=exclude, inputs=inputs, require=require, rerun=rerun)
    (repo / "productions" / "camp.yaml").write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


def run_until_quiet(repo: Path, env: dict[str, str], tmp: Path, timeout: float = 90) -> dict[str, Any]:
    """Passes of `once` until one applies nothing while nothing is queued or running; the last status."""
    end = time.monotonic() + timeout
    while True:
        r = reconcile(repo, env, "once", "camp", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)[0]
        counts = doc["summary"]["counts"]
        if not doc["applied"] and not counts["running"] and not counts["queued"]:
            break
        assert time.monotonic() < end, counts
        time.sleep(0.3)
    return json.loads(reconcile(repo, env, "status", "camp", "--json", "--tasks").stdout)


def _keys() -> set[str]:
    pairs = [(r, z) for r in range(3) for z in ("0.500", "1.000")]
    return {f"{s}/r{r:04d}/z{z}" for s in ("generate", "measure") for r, z in pairs} | {"covariance/z0.500", "covariance/z1.000"}


def out(repo: Path, rel: str) -> dict[str, Any]:
    return json.loads((repo / "work" / "productions" / "camp" / rel).read_text())


def plan_of(repo: Path, env: dict[str, str]) -> dict[str, Any]:
    return json.loads(reconcile(repo, env, "plan", "camp", "--json").stdout)


def test_a_campaign_converges_each_task_once_and_no_fan_in_starts_before_its_members_end(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    campaign(repo, tmp_path)
    first = plan_of(repo, env)
    sent = {k for a in first["actions"] if a["kind"] == "submit" for k in a["keys"]}
    assert sent == {f"generate/r{r:04d}/z{z}" for r in range(3) for z in ("0.500", "1.000")}, first
    waiting = {k for a in first["actions"] if a["reason"] == "waiting_members" for k in a["keys"]}
    assert waiting == {k for k in _keys() if not k.startswith("generate/")}, first

    st = run_until_quiet(repo, env, tmp_path)
    assert st["all_complete"] and st["total"] == 14, st["counts"]
    assert set(sent_to_scheduler(tmp_path / "spool").values()) == {1}, "a task ran twice"
    for z in ("0.500", "1.000"):
        cov = out(repo, f"cov/cov_z{z}.json")
        pks = [f"pk/r{r:04d}/pk_z{z}.json" for r in range(3)]
        assert cov["members"] == [str(repo / "work/productions/camp" / p) for p in pks]  # the list file, in order
        assert cov["start"] > max(out(repo, p)["end"] for p in pks)
    for r in range(3):
        m = out(repo, f"pk/r{r:04d}/pk_z0.500.json")
        assert m["start"] > out(repo, f"catalogs/r{r:04d}/mock_z0.500.json")["end"]
        assert m["read"] == [str(repo / f"work/productions/camp/catalogs/r{r:04d}/mock_z0.500.json")]
    text = reconcile(repo, env, "status", "camp").stdout
    assert "generate" in text and "covariance" in text, text


def test_a_missing_input_holds_its_tasks_and_their_downstream_until_it_appears(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    ic = tmp_path / "ic"
    ic.mkdir()
    campaign(repo, tmp_path, inputs=str(ic) + "/ic_r{realization:04d}.txt")
    for r in (0, 1):
        (ic / f"ic_r{r:04d}.txt").write_text("ic")
    st = run_until_quiet(repo, env, tmp_path)
    held = {k for k, s in st["states"].items() if s != "complete"}
    assert held == {f"{s}/r0002/z{z}" for s in ("generate", "measure") for z in ("0.500", "1.000")} | {"covariance/z0.500", "covariance/z1.000"}, st["states"]
    p = plan_of(repo, env)
    reasons: dict[str, set[str]] = {}
    for a in p["actions"]:
        if a["kind"] == "wait":
            reasons.setdefault(a["reason"], set()).update(a["keys"])
    assert reasons["waiting_input"] == {"generate/r0002/z0.500", "generate/r0002/z1.000"}, p
    assert reasons["waiting_members"] >= {"measure/r0002/z0.500", "covariance/z0.500"}, p
    assert not any(k.startswith(("measure/r0002", "covariance")) for k in sent_to_scheduler(tmp_path / "spool"))

    (ic / "ic_r0002.txt").write_text("ic")
    st = run_until_quiet(repo, env, tmp_path)
    assert st["all_complete"], st["counts"]
    assert set(sent_to_scheduler(tmp_path / "spool").values()) == {1}


def _fail(repo: Path, key: str) -> Path:
    flag = repo / "work/productions/camp/fail" / key.replace("/", "_")
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.write_text("")
    return flag


def test_a_member_that_gives_up_blocks_its_aggregate_with_the_reason_in_plan(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    campaign(repo, tmp_path)
    _fail(repo, "measure/r0001/z0.500")
    st = run_until_quiet(repo, env, tmp_path)
    assert st["states"]["measure/r0001/z0.500"] == "failed" and st["states"]["covariance/z1.000"] == "complete", st["states"]
    assert st["states"]["covariance/z0.500"] == "blocked" and st["done"], st
    p = plan_of(repo, env)
    blocked = [a for a in p["actions"] if a["reason"] == "blocked_by_member"]
    assert blocked and blocked[0]["keys"] == ["covariance/z0.500"] and "measure/r0001/z0.500" in blocked[0]["note"], p
    assert "covariance/z0.500" not in sent_to_scheduler(tmp_path / "spool")


def test_a_partial_fan_in_records_its_missing_members_and_is_stale_when_one_completes(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    campaign(repo, tmp_path, require="0.5")
    flag = _fail(repo, "measure/r0001/z0.500")
    st = run_until_quiet(repo, env, tmp_path)
    assert st["states"]["covariance/z0.500"] == "complete", st["states"]
    cov = out(repo, "cov/cov_z0.500.json")
    assert [Path(m).parent.name for m in cov["members"]] == ["r0000", "r0002"]  # ran without the member that gave up
    marker = next((repo / "work/productions/camp/cov").glob(".cov_z0.500.json.*.partial"))
    assert json.loads(marker.read_text())["missing"] == ["measure/r0001/z0.500"]

    flag.unlink()  # the member is fixed and retried: its aggregate is stale, and rerun only with rerun_on_change
    assert reconcile(repo, env, "retry", "camp").returncode == 0
    wait_quiet(tmp_path / "spool")
    st = run_until_quiet(repo, env, tmp_path)
    assert st["states"]["measure/r0001/z0.500"] == "complete" and st["states"]["covariance/z0.500"] == "stale", st["states"]
    campaign(repo, tmp_path, require="0.5", rerun=True, message="rerun what is stale")
    st = run_until_quiet(repo, env, tmp_path)
    assert st["all_complete"], st["counts"]
    assert len(out(repo, "cov/cov_z0.500.json")["members"]) == 3


def test_an_exclusion_removes_a_member_from_its_fan_in_without_blocking_it(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    campaign(repo, tmp_path, exclude="{realization: 1, redshift: 0.5, reason: bad initial conditions}")
    st = run_until_quiet(repo, env, tmp_path)
    assert st["all_complete"] and st["total"] == 12, st["counts"]
    assert [Path(m).parent.name for m in out(repo, "cov/cov_z0.500.json")["members"]] == ["r0000", "r0002"]


def test_changing_the_measure_command_makes_measure_and_covariance_stale_and_reruns_them_in_order(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    campaign(repo, tmp_path)
    assert run_until_quiet(repo, env, tmp_path)["all_complete"]
    before = {z: out(repo, f"cov/cov_z{z}.json")["start"] for z in ("0.500", "1.000")}
    text = (repo / "productions/camp.yaml").read_text().replace('"measure", "{needs.generate}"', '"measure", "{needs.generate}", "--v2"')
    (repo / "productions/camp.yaml").write_text(text.replace("rerun_on_change: false", "rerun_on_change: true"))
    git(repo, "commit", "-qam", "measure v2")
    p = plan_of(repo, env)
    sent = {k.split("/")[0] for a in p["actions"] if a["kind"] == "submit" for k in a["keys"]}
    assert sent == {"measure"}, p  # the covariance waits for the new statistics
    diff = reconcile(repo, env, "diff", "HEAD~1", "HEAD")
    assert "per stage: generate +0 -0 ~0; measure +0 -0 ~6; covariance +0 -0 ~2" in diff.stdout, diff.stdout
    st = run_until_quiet(repo, env, tmp_path)
    assert st["all_complete"], st["counts"]
    for z in ("0.500", "1.000"):
        cov = out(repo, f"cov/cov_z{z}.json")
        assert cov["start"] > before[z] and cov["start"] > max(out(repo, f"pk/r{r:04d}/pk_z{z}.json")["end"] for r in range(3))
    runs = sent_to_scheduler(tmp_path / "spool")
    assert {k for k, n in runs.items() if n == 2} == {k for k in runs if not k.startswith("generate/")}, runs
