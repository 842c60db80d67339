"""Corrupted outputs after completion, end to end on the local backend (#12 item 2).

The demo runs to completion; one finished catalog is then truncated (the hdf5 validator can
no longer open it, as after a copy cut short). `reconcile verify` finds it, moves it and its
marker to qa/corrupt/ with a REASON.json, and the next pass reruns it; with
`execution.verify_per_pass` an ordinary `once` finds it within ceil(tasks / per_pass) passes.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from reconciler import validators
from reconciler.spec.load import WorkTree, load

from .conftest import git
from .test_loop_local import (
    FAIL_ONCE,
    env_for,
    reconcile,
    sent_to_scheduler,
    shrink_demo,
    wait_quiet,
)

VICTIM = "r0004/z1.000"
VICTIM_FILE = "work/productions/demo/catalogs/r0004/mock_z1.000.hdf5"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_verify_moves_a_corrupt_output_aside_and_the_next_pass_reruns_it(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    n = shrink_demo(repo)
    assert reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5", "--no-status").returncode == 0
    out = repo / VICTIM_FILE
    truncate(out)
    # the cheap check cannot see it: the marker is still there
    assert reconcile(repo, env, "plan", "demo").returncode == 0
    r = reconcile(repo, env, "verify", "demo", "--no-status")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"demo: verified {n} completed task(s): {n - 1} sound, 1 corrupt" in r.stdout, r.stdout
    assert f"demo: corrupt {VICTIM}: output failed verification: not a readable HDF5 file: catalogs/r0004/mock_z1.000.hdf5" in r.stdout
    assert f"quarantine 1, resubmit 1 | {n - 1}/{n} complete, 1 queued" in r.stdout, r.stdout
    # moved aside with its marker and a reason; nothing deleted
    (aside,) = (repo / "work/productions/demo/qa/corrupt/r0004__z1.000").iterdir()
    reason = json.loads((aside / "REASON.json").read_text())
    assert reason["key"] == VICTIM and reason["check"] == "hdf5" and "not a readable HDF5 file" in reason["problem"]
    assert reason["verified_at_utc"].endswith("Z")
    assert (aside / "catalogs/r0004/mock_z1.000.hdf5").stat().st_size > 0
    assert len(list((aside / "catalogs/r0004").glob(".mock_z1.000.hdf5.*.done"))) == 1
    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5", "--no-status")
    assert r.returncode == 0 and "every task is complete" in r.stdout, r.stdout + r.stderr
    loaded = load(WorkTree(repo), "demo", repo_root=repo)
    assert validators.validate(loaded.production_dir, (VICTIM_FILE.split("demo/", 1)[1],), loaded.spec.task.validator) is None
    counts = sent_to_scheduler(tmp_path / "spool")
    assert counts == Counter({k: (2 if k in FAIL_ONCE else 1) + (k == VICTIM) for k in counts}) and len(counts) == n
    # verified again, all sound: exit 0; a key the production lacks: exit 2, named
    r = reconcile(repo, env, "verify", "demo", VICTIM, "--json", "--no-status")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["verified"], doc["corrupt"], doc["not_complete"]) == (1, [], [])
    r = reconcile(repo, env, "verify", "demo", "r9999/z0.500", "--no-status")
    assert r.returncode == 2 and "r9999/z0.500" in r.stderr
    wait_quiet(tmp_path / "spool")


def test_verify_per_pass_catches_a_corrupt_output_within_its_rotation(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    n = shrink_demo(repo)
    per_pass = 3
    demo = repo / "productions/demo.yaml"
    demo.write_text(demo.read_text().replace("  array_throttle: 4\n", f"  array_throttle: 4\n  verify_per_pass: {per_pass}\n"))
    git(repo, "commit", "-qam", "verify 3 completed tasks per pass")
    assert reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5", "--no-status").returncode == 0
    truncate(repo / VICTIM_FILE)
    bound = math.ceil(n / per_pass)
    caught = []
    for i in range(1, bound + 1):
        r = reconcile(repo, env, "once", "demo", "--no-status")
        assert r.returncode == 0, r.stderr
        if "moved to qa/corrupt/" in r.stderr:
            caught.append(i)
            assert VICTIM in r.stderr and "resubmit 1" in r.stdout, r.stdout + r.stderr
    assert len(caught) == 1, f"caught on passes {caught}; at most {bound} passes expected"
    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5", "--no-status")
    assert r.returncode == 0 and "every task is complete" in r.stdout, r.stdout + r.stderr
    assert sent_to_scheduler(tmp_path / "spool")[VICTIM] == 2
    wait_quiet(tmp_path / "spool")
