"""The old production manager's queued jobs on the REAL Slurm test cluster (#13's done-when):
watched to their end, adopted, never submitted again.

Jobs are submitted as the old tool submitted them, with plain `sbatch`: a batch of several
jobs as an array whose index is the job's position in the batch, a batch of one as a job
without --array. Its database is written with its own schema (tests/test_legacy.py), those
jobs QUEUED with their Slurm ids; then `reconcile import-legacy` and passes until done.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .test_legacy import write_old_db
from .test_loop_slurm import MACHINE, Prod, make_prod, slurm  # noqa: F401 - make_prod is a fixture

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

REDSHIFTS = [0.1, 0.2, 0.3, 0.4]


def old_tool_script(name: str, pdir: Path, outputs: list[Path], *, array: bool) -> str:
    """The old tool's script, cut to what matters: its own job name, bash arrays of parameters
    indexed by SLURM_ARRAY_TASK_ID, a few seconds of work, then the output file."""
    paths = " ".join(f'"{p}"' for p in outputs)
    index = "$SLURM_ARRAY_TASK_ID" if array else "0"
    return f"""#!/bin/bash
#SBATCH --job-name={name}.legacy
#SBATCH --partition=debug
#SBATCH --account=reconciler
#SBATCH --mem=100M
#SBATCH --time=5
{f"#SBATCH --array=0-{len(outputs) - 1}" if array else ""}
#SBATCH --output={pdir}/logs/old_%A_%a.out
declare -a OUTPUT_PATHS=({paths})
OUT="${{OUTPUT_PATHS[{index}]}}"
sleep 3
mkdir -p "$(dirname "$OUT")"
echo mock > "$OUT"
"""


def sbatch(script: Path, env: dict[str, str]) -> str:
    r = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def test_queued_jobs_of_the_old_tool_are_watched_to_their_end_and_never_resubmitted(make_prod: Callable[..., Prod]) -> None:  # noqa: F811 - the fixture imported above
    p = make_prod("legacy", realizations=1, redshifts=REDSHIFTS, batch_size=10, light=True)
    pdir = p.directory
    (pdir / "logs").mkdir(parents=True)
    out = [pdir / "catalogs" / "r0000" / f"mock_z{z:.3f}.hdf5" for z in REDSHIFTS]
    (pdir / "logs" / "old_array.sh").write_text(old_tool_script(p.name, pdir, out[:3], array=True))
    (pdir / "logs" / "old_single.sh").write_text(old_tool_script(p.name, pdir, out[3:], array=False))
    array_id = sbatch(pdir / "logs" / "old_array.sh", p.env)
    single_id = sbatch(pdir / "logs" / "old_single.sh", p.env)
    write_old_db(
        pdir / "metadata" / "production.db", pdir,
        [(0, z, "QUEUED", 1, int(array_id) if i < 3 else int(single_id)) for i, z in enumerate(REDSHIFTS)],
        [("batch_0000_1", [f"r0000_z{z:.3f}" for z in REDSHIFTS[:3]], int(array_id), "queued"), ("batch_0001_1", ["r0000_z0.400"], int(single_id), "queued")],
    )
    refused = p.once()
    assert refused.returncode == 2 and "written by the old production manager (4 jobs)" in refused.stderr, refused.stderr

    imp = p.run("import-legacy", p.name, "--machine", MACHINE)
    assert imp.returncode == 0, imp.stderr
    assert f"watched:       4 task(s) in Slurm job(s) {array_id}, {single_id}" in imp.stdout, imp.stdout

    # while the old tool's jobs are queued or running, the plan submits nothing and status shows them in flight
    plan = p.run("plan", p.name, "--machine", MACHINE, "--json")
    assert plan.returncode in (0, 1), plan.stderr
    assert '"submit"' not in plan.stdout and '"resubmit"' not in plan.stdout, plan.stdout
    st = p.status()
    assert st["counts"]["queued"] + st["counts"]["running"] + st["counts"]["adopted"] == 4, st["counts"]

    t0 = time.monotonic()
    passes = p.converge(timeout=180)
    kinds = {k for x in passes for k in x.applied}
    assert kinds <= {"adopt"}, [x.applied for x in passes]  # only markers written: nothing submitted
    assert sum(x.applied.get("adopt", 0) for x in passes) == 4
    st = p.status()
    assert st["done"] and st["counts"]["adopted"] == 4 and not st["failures"], st
    print(f"4 tasks of the old tool watched to their end in {time.monotonic() - t0:.0f} s over {len(passes)} passes")

    # the ledger holds the old tool's submissions only; reconciler wrote no sbatch script
    with sqlite3.connect(pdir / "metadata" / "production.db") as db:
        subs = sorted(db.execute("SELECT kind, job_id, state FROM submissions"))
    db.close()
    assert subs == sorted([("legacy", array_id, "finished"), ("legacy_single", single_id, "finished")]), subs
    assert not list((pdir / "logs").glob("batch_*.sh"))
    # what Slurm ran under this production: the old tool's two jobs, nothing else
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(p.started))
    deadline = time.monotonic() + 60  # slurmdbd records a job a moment after it ends
    while True:
        acct = slurm("sacct", "-X", "-P", "-n", f"--starttime={since}", "--endtime=now", "--format=JobID,JobName,State")
        ours = [line.split("|") for line in acct.splitlines() if line.split("|")[1].startswith(p.name)]
        if {row[0].split("_")[0] for row in ours} >= {array_id, single_id} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert ours and {row[0].split("_")[0] for row in ours} == {array_id, single_id}, acct
    assert {row[2] for row in ours} == {"COMPLETED"}, ours
