"""A three-stage campaign on the REAL Slurm test cluster (#14's done-when): it converges, each
task runs once, and every fan-in task starts only after its members ended. Readiness is the
planner's: no Slurm --dependency is ever used, so a finished job purged from slurmctld or a
sparse retry array can never leave a dependent stuck."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable

import pytest

from .conftest import git
from .test_campaign_local import STEP, campaign_text
from .test_loop_slurm import Prod, doctor_checks, make_prod, slurm  # noqa: F401 - make_prod is a fixture

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def test_a_campaign_converges_on_slurm_each_task_once_fan_in_after_its_members(make_prod: Callable[..., Prod]) -> None:  # noqa: F811 - the fixture imported above
    p = make_prod("camp", realizations=1, redshifts=[0.5], batch_size=10, light=True)
    step = p.repo.parent / "step.py"
    step.write_text(STEP)
    text = campaign_text(step).replace("name: camp", f"name: {p.name}")
    text = text.replace("count: 3", "count: 4").replace("stages:", f"outputs: {{base_path: {p.directory.parent}}}\nstages:")
    (p.repo / "productions" / f"{p.name}.yaml").write_text(text)
    git(p.repo, "commit", "-qam", "a campaign")

    plan = json.loads(p.run("plan", p.name, "--machine", "slurmtest", "--json").stdout)
    assert {k.split("/")[0] for a in plan["actions"] if a["kind"] == "submit" for k in a["keys"]} == {"generate"}, plan
    t0 = time.monotonic()
    passes = p.converge(timeout=240)
    st = p.status()
    assert st["all_complete"] and st["total"] == 18, st["counts"]
    print(f"18 tasks in 3 stages converged in {time.monotonic() - t0:.0f} s over {len(passes)} passes")

    out = p.directory
    for z in ("0.500", "1.000"):
        cov = json.loads((out / f"cov/cov_z{z}.json").read_text())
        ends = [json.loads((out / f"pk/r{r:04d}/pk_z{z}.json").read_text())["end"] for r in range(4)]
        assert len(cov["members"]) == 4 and cov["start"] > max(ends)
    for r in range(4):
        pk = json.loads((out / f"pk/r{r:04d}/pk_z0.500.json").read_text())
        assert pk["start"] > json.loads((out / f"catalogs/r{r:04d}/mock_z0.500.json").read_text())["end"]

    # what Slurm ran: one array task per task, each stage in arrays of its own, no dependency
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(p.started))
    deadline = time.monotonic() + 60  # slurmdbd records a job a moment after it ends
    while True:
        acct = slurm("sacct", "-X", "-P", "-n", f"--starttime={since}", "--endtime=now", "--format=JobID,JobName,State")
        rows = [line.split("|") for line in acct.splitlines() if line.split("|")[1].startswith(p.name + ".")]
        if len(rows) >= 18 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(rows) == 18 and {r[2] for r in rows} == {"COMPLETED"}, acct
    per_batch = Counter(int(r[1].split(".")[1]) for r in rows)  # job names: <production>.<batch>.<token tag>
    # batches of 4: generate 0-1, measure 2-3 (numbered after generate's), covariance 4
    assert per_batch == {0: 4, 1: 4, 2: 4, 3: 4, 4: 2}, per_batch
    assert not [s for s in (out / "logs").glob("batch_*.sh") if "dependency" in s.read_text()]
    # doctor checks each stage's partition and time limit (a stage may have its own)
    _code, checks = doctor_checks(p)
    assert {f"slurm.partition:{p.name}/{s}" for s in ("generate", "measure", "covariance")} <= set(checks), sorted(checks)


def test_on_slurm_a_missing_input_holds_its_chain_and_a_partial_fan_in_records_what_it_lacked(make_prod: Callable[..., Prod]) -> None:  # noqa: F811 - the fixture imported above
    p = make_prod("campi", realizations=1, redshifts=[0.5], batch_size=10, light=True)
    step = p.repo.parent / "step.py"
    step.write_text(STEP)
    ic = p.repo.parent / "ic"
    ic.mkdir()
    for r in range(3):
        (ic / f"ic_r{r:04d}.txt").write_text("ic")  # r0003's initial conditions are not there yet
    text = campaign_text(step, inputs=str(ic) + "/ic_r{realization:04d}.txt", require="0.5")
    text = text.replace("name: camp", f"name: {p.name}").replace("count: 3", "count: 4")
    text = text.replace("stages:", f"outputs: {{base_path: {p.directory.parent}}}\nstages:")
    (p.repo / "productions" / f"{p.name}.yaml").write_text(text)
    git(p.repo, "commit", "-qam", "a campaign waiting for an input, with a member that fails")
    flag = p.directory / "fail" / "measure_r0001_z0.500"
    flag.parent.mkdir(parents=True)
    flag.write_text("")

    def plan() -> dict:
        return json.loads(p.run("plan", p.name, "--machine", "slurmtest", "--json").stdout)

    deadline = time.monotonic() + 120
    while True:  # until only what waits for the input is left (measure/r0001/z0.500 gave up)
        assert p.once().returncode == 0
        st = p.status()
        if st["counts"]["complete"] == 11 and st["counts"]["failed"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(1)
    held = {k for a in plan()["actions"] if a["kind"] == "wait" for k in a["keys"]}
    assert held == {"generate/r0003/z0.500", "generate/r0003/z1.000", "measure/r0003/z0.500", "measure/r0003/z1.000", "covariance/z0.500", "covariance/z1.000"}, st["counts"]

    (ic / "ic_r0003.txt").write_text("ic")
    p.converge(timeout=180)
    st = p.status()
    assert st["counts"]["complete"] == 17 and st["counts"]["failed"] == 1 and st["done"], st["counts"]
    cov = json.loads((p.directory / "cov/cov_z0.500.json").read_text())
    assert [m.split("/")[-2] for m in cov["members"]] == ["r0000", "r0002", "r0003"]  # ran without the member that gave up
    marker = next((p.directory / "cov").glob(".cov_z0.500.json.*.partial"))
    assert json.loads(marker.read_text())["missing"] == ["measure/r0001/z0.500"]
    assert len(json.loads((p.directory / "cov/cov_z1.000.json").read_text())["members"]) == 4
