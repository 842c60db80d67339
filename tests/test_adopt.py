"""Adopting a production that is already half done (end to end, local backend).

The rule:
- a task whose outputs pass the validator, carry no marker, and that this reconciler never
  submitted (no submission in the ledger) is ADOPTED: it counts as complete, `status` shows it
  as adopted, and `reconcile adopt NAME` writes its `.adopted` marker (attempt 0);
- a task this reconciler DID submit whose outputs exist but whose marker is missing is NOT
  complete: it is resubmitted like any failure, and its partial outputs are moved to
  `qa/partial/` (never deleted) before the rerun;
- `execution.adopt_existing: false` turns adoption off.

`reconcile` runs as a subprocess in the scratch repository of the `repo` fixture, with the
local backend's spool in tmp_path; outputs go under tmp_path, outside the repository.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import pytest

from reconciler import demo_generator, outputs, validators

from .conftest import git
from .test_loop_local import env_for, reconcile, sent_to_scheduler


def wait_quiet(spool: Path, timeout: float = 60) -> None:
    """Until no task of the spool is pending or running, as the local backend reports them
    (a task killed without an exit code stays RUNNING in its file but reads NODE_FAIL)."""
    from reconciler.scheduler.local import to_sched

    end = time.time() + timeout
    while time.time() < end:
        states = [to_sched(json.loads(p.read_text())).state for p in spool.glob("jobs/*/tasks/*.json")]
        if not any(s.in_flight for s in states):
            return
        time.sleep(0.2)

NAME = "seeds"
REDSHIFTS = (0.5, 1.0, 1.5)
REALIZATIONS = (3000, 3001)
ALL = [f"r{r:04d}/z{z:.3f}" for r in REALIZATIONS for z in REDSHIFTS]
# The seed tool's layout, as left by a production that stopped half way:
VALID = ["r3000/z0.500", "r3000/z1.000", "r3001/z0.500", "r3001/z1.500"]
TRUNCATED = ["r3000/z1.500"]  # a valid catalog cut to half its size
MISSING = ["r3001/z1.000"]
DATASETS = ("galaxies/ra", "galaxies/dec", "galaxies/mag")
DEMO_COMMAND = (
    "{python} -m reconciler.demo_generator --realization {realization} --redshift {redshift}"
    " --n-galaxies 10 --sleep 0 --output {output}"
)


def production_yaml(base: Path, *, command: str = DEMO_COMMAND, adopt: bool = True, name: str = NAME) -> str:
    """productions/alpha.yaml, brought to the local machine, with its outputs under ``base``."""
    zs = ", ".join(str(z) for z in REDSHIFTS)
    return f"""\
# alpha.yaml's layout (realizations from 3000, hdf5 catalogs), on the local machine.
production:
  name: {name}
  version: v1.0
  description: Half-done production left by the seed tool.
  tags: [test]

science:
  cosmology: AbacusSummit
  redshifts: [{zs}]
  realizations:
    start: {REALIZATIONS[0]}
    count: {len(REALIZATIONS)}
    step: 1

execution:
  job_type: gpu_intensive
  batch_size: 24
  timeout_hours: 0.05
  array_throttle: 4
  adopt_existing: {str(adopt).lower()}
  retry_policy:
    max_retries: 2
    backoff_multiplier: 2.0
    initial_delay_minutes: 0.01
    max_delay_minutes: 0.05

resources:
  memory_gb: 2

outputs:
  base_path: {base}
  structure: hierarchical

task:
  command: >-
    {command}
  outputs:
    - catalogs/r{{realization:04d}}/mock_z{{redshift:.3f}}.hdf5
  env:
    OMP_NUM_THREADS: "1"
  validator:
    kind: hdf5
    datasets: [{", ".join(DATASETS)}]
"""


def commit_production(repo: Path, text: str, name: str = NAME) -> None:
    (repo / "productions" / f"{name}.yaml").write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", f"add {name}")


def output_path(pdir: Path, key: str) -> Path:
    r, z = key.split("/")
    return pdir / "catalogs" / r / f"mock_{z}.hdf5"


def make_catalog(pdir: Path, key: str) -> Path:
    """A valid catalog, made by the demo generator's own code."""
    r, z = key.split("/")
    path = output_path(pdir, key)
    rc = demo_generator.main(
        ["--realization", r[1:], "--redshift", z[1:], "--n-galaxies", "10", "--sleep", "0", "--output", str(path)]
    )
    assert rc == 0 and path.stat().st_size > 0
    return path


def truncate_to_half(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return data[: len(data) // 2]


def markers(pdir: Path, kind: str) -> dict[str, Path]:
    """Marker files of the given kind (``done`` / ``adopted``) by task key."""
    found: dict[str, Path] = {}
    for p in (pdir / "catalogs").glob(f"r*/.mock_z*.hdf5.*.{kind}"):
        z = p.name.split(".hdf5.")[0].removeprefix(".mock_")
        found[f"{p.parent.name}/{z}"] = p
    return found


def plan_json(repo: Path, env: dict[str, str], name: str = NAME) -> tuple[int, dict]:
    r = reconcile(repo, env, "plan", name, "--json")
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def planned(plan: dict, kinds: tuple[str, ...] = ("submit", "resubmit")) -> list[str]:
    return sorted(k for a in plan["actions"] if a["kind"] in kinds for k in a["keys"])


def status_json(repo: Path, env: dict[str, str], name: str = NAME) -> dict:
    r = reconcile(repo, env, "status", name, "--json", "--verbose")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def partial_files(pdir: Path, key: str) -> list[Path]:
    root = pdir / outputs.PARTIAL_DIR / key.replace("/", "__")
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


@pytest.fixture
def seeds(repo: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, str], bytes]:
    """The half-done tree: valid unmarked catalogs, one truncated, one missing."""
    base = tmp_path / "out"
    commit_production(repo, production_yaml(base))
    pdir = base / NAME
    for key in VALID + TRUNCATED:
        make_catalog(pdir, key)
    truncated = truncate_to_half(output_path(pdir, TRUNCATED[0]))
    return repo, pdir, env_for(tmp_path), truncated


# ---------------------------------------------------------------- tests


def test_the_half_done_layout_is_what_the_seeds_left(seeds: tuple[Path, Path, dict[str, str], bytes]) -> None:
    """The fixture itself: valid files pass the validator, the truncated one does not."""
    _repo, pdir, _env, _ = seeds
    from reconciler.spec.models import Validator

    v = Validator(kind="hdf5", datasets=list(DATASETS))
    for key in VALID:
        assert validators.validate(pdir, [str(output_path(pdir, key).relative_to(pdir))], v) is None
    why = validators.validate(pdir, [str(output_path(pdir, TRUNCATED[0]).relative_to(pdir))], v)
    assert why is not None and "not a readable HDF5 file" in why
    for key in MISSING:
        assert not output_path(pdir, key).exists()


def test_plan_submits_exactly_the_missing_and_the_truncated(seeds: tuple[Path, Path, dict[str, str], bytes]) -> None:
    repo, pdir, env, _ = seeds
    rc, plan = plan_json(repo, env)
    assert rc == 1
    assert planned(plan) == sorted(MISSING + TRUNCATED)
    assert [a["kind"] for a in plan["actions"]] == ["quarantine", "submit"]
    # the truncated outputs are moved aside first, and the plan says so
    assert sorted(plan["actions"][0]["keys"]) == sorted(TRUNCATED) and plan["actions"][0]["reason"] == "partial_output"
    # nothing else is planned or waited for: the valid ones are adopted
    assert sorted(k for a in plan["actions"][1:] for k in a["keys"]) == sorted(MISSING + TRUNCATED)
    # before `adopt`, status already shows them as adopted (not as complete, not as missing)
    st = status_json(repo, env)
    assert st["counts"]["adopted"] == len(VALID)
    assert st["counts"]["complete"] == 0
    assert st["counts"]["missing"] == len(MISSING + TRUNCATED)
    assert {k for k, s in st["states"].items() if s == "adopted"} == set(VALID)
    # plan and status have no side effects on the outputs
    assert not markers(pdir, "adopted") and not markers(pdir, "done")
    assert not (pdir / outputs.PARTIAL_DIR).exists() or not any((pdir / outputs.PARTIAL_DIR).iterdir())


def test_adopt_writes_adopted_markers_for_the_valid_ones_only(seeds: tuple[Path, Path, dict[str, str], bytes]) -> None:
    repo, pdir, env, _ = seeds
    r = reconcile(repo, env, "adopt", NAME, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["adopted"] == len(VALID)
    assert report["invalid"] == TRUNCATED
    adopted = markers(pdir, "adopted")
    assert sorted(adopted) == sorted(VALID)
    assert not markers(pdir, "done")
    for key, path in adopted.items():
        doc = json.loads(path.read_text())
        assert doc["key"] == key and doc["attempt"] == 0 and doc["adopted"] is True and doc["exit_code"] == 0
    # adopting twice changes nothing
    again = reconcile(repo, env, "adopt", NAME, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["adopted"] == 0
    assert markers(pdir, "adopted") == adopted
    # the plan is unchanged by adoption
    rc, plan = plan_json(repo, env)
    assert rc == 1 and planned(plan) == sorted(MISSING + TRUNCATED)


def test_status_counts_adopted_markers_as_adopted(seeds: tuple[Path, Path, dict[str, str], bytes]) -> None:
    """After `reconcile adopt`, `status` still shows the adopted tasks separately."""
    repo, _pdir, env, _ = seeds
    assert reconcile(repo, env, "adopt", NAME).returncode == 0
    st = status_json(repo, env)
    assert st["counts"]["adopted"] == len(VALID), st["counts"]
    assert st["counts"]["complete"] == 0, st["counts"]
    assert {k for k, s in st["states"].items() if s == "adopted"} == set(VALID)
    text = reconcile(repo, env, "status", NAME).stdout
    assert f"{len(VALID)}/{len(ALL)} complete" in text and f"{len(VALID)} adopted" in text


def test_run_to_completion_reruns_only_the_missing_and_truncated(seeds: tuple[Path, Path, dict[str, str], bytes], tmp_path: Path) -> None:
    repo, pdir, env, truncated = seeds
    assert reconcile(repo, env, "adopt", NAME).returncode == 0
    before = {k: output_path(pdir, k).stat().st_mtime_ns for k in VALID}
    r = reconcile(repo, env, "watch", NAME, "--until-done", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    assert "every task is complete" in r.stdout
    spool = tmp_path / "spool"
    assert sent_to_scheduler(spool) == Counter({k: 1 for k in MISSING + TRUNCATED})
    # the adopted catalogs were not touched and keep their .adopted markers
    assert {k: output_path(pdir, k).stat().st_mtime_ns for k in VALID} == before
    assert sorted(markers(pdir, "adopted")) == sorted(VALID)
    assert sorted(markers(pdir, "done")) == sorted(MISSING + TRUNCATED)
    # the truncated file was moved aside, byte for byte, before the rerun; never deleted
    kept = partial_files(pdir, TRUNCATED[0])
    assert len(kept) == 1, kept
    assert kept[0].read_bytes() == truncated
    assert kept[0].name == output_path(pdir, TRUNCATED[0]).name
    assert all(not partial_files(pdir, k) for k in VALID + MISSING)
    # every output is now a valid catalog
    for key in ALL:
        with h5py.File(output_path(pdir, key), "r") as fh:
            assert all(d in fh for d in DATASETS)
    rc, plan = plan_json(repo, env)
    assert rc == 0 and plan["actions"] == []
    st = status_json(repo, env)
    assert st["done"] and st["counts"]["complete"] + st["counts"]["adopted"] == len(ALL)
    wait_quiet(spool)


def test_adopt_existing_false_submits_valid_unmarked_outputs(repo: Path, tmp_path: Path) -> None:
    base = tmp_path / "out"
    commit_production(repo, production_yaml(base, adopt=False))
    pdir = base / NAME
    for key in VALID:
        make_catalog(pdir, key)
    env = env_for(tmp_path)
    rc, plan = plan_json(repo, env)
    assert rc == 1
    assert planned(plan) == sorted(ALL)
    st = status_json(repo, env)
    assert st["counts"]["adopted"] == 0 and st["counts"]["complete"] == 0
    assert st["counts"]["missing"] == len(ALL)
    # a run to completion makes every catalog itself; the unmarked files it found are kept
    r = reconcile(repo, env, "watch", NAME, "--until-done", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    spool = tmp_path / "spool"
    assert sent_to_scheduler(spool) == Counter({k: 1 for k in ALL})
    assert sorted(markers(pdir, "done")) == sorted(ALL) and not markers(pdir, "adopted")
    for key in VALID:
        assert len(partial_files(pdir, key)) == 1, key  # moved aside, never deleted
    rc, plan = plan_json(repo, env)
    assert rc == 0
    wait_quiet(spool)


# ---------------------------------------------------------------- a killed task of ours

SLOW_TASK = '''\
"""First attempt: write part of the output, then hang (to be killed). Later attempts: a real catalog."""
import os
import sys
import time

out, realization, redshift = sys.argv[1], sys.argv[2], sys.argv[3]
if os.environ.get("RECONCILER_ATTEMPT") == "1":
    with open(out + ".tmp", "w") as fh:
        fh.write("partial catalog of pid %d\\n" % os.getpid())
    os.replace(out + ".tmp", out)  # the file appears with its content
    time.sleep(30)
    sys.exit(0)
from reconciler.demo_generator import main

sys.exit(main(["--realization", realization, "--redshift", redshift, "--n-galaxies", "10", "--sleep", "0", "--output", out]))
'''


def _task_doc(spool: Path) -> tuple[Path, dict]:
    docs = list(spool.glob("jobs/*/tasks/*.json"))
    assert len(docs) == 1, docs
    return docs[0], json.loads(docs[0].read_text())


def _wait_for(cond, timeout: float, what: str):  # noqa: ANN001, ANN202
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_task_of_ours_is_rerun_and_its_partial_output_kept(repo: Path, tmp_path: Path) -> None:
    base = tmp_path / "out"
    script = tmp_path / "slow_task.py"
    script.write_text(SLOW_TASK)
    commit_production(repo, production_yaml(base, command=f"{{python}} {script} {{output}} {{realization}} {{redshift}}"))
    text = (repo / "productions" / f"{NAME}.yaml").read_text()
    # one task only: realization 3000, redshift 0.5
    text = text.replace("redshifts: [0.5, 1.0, 1.5]", "redshifts: [0.5]").replace("count: 2", "count: 1")
    commit_production(repo, text)
    key = "r3000/z0.500"
    pdir = base / NAME
    out = output_path(pdir, key)
    env = env_for(tmp_path)
    spool = tmp_path / "spool"

    r = reconcile(repo, env, "once", NAME)
    assert r.returncode == 0, r.stderr
    content = _wait_for(lambda: out.exists() and out.read_text().strip(), 60, "the task to write its partial output")
    cmd_pid = int(content.split()[-1])
    path, doc = _wait_for(lambda: (lambda p, d: (p, d) if d.get("pid") else None)(*_task_doc(spool)), 30, "the task's pid")
    assert doc["state"] == "RUNNING"
    # Kill it as a node failure would: the supervisor first (so no exit code is recorded),
    # then the batch script's process group (bash + wrapper), then the command's own group.
    for pgid in (doc["sup_pid"], doc["pid"], cmd_pid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _wait_for(lambda: not any(Path(f"/proc/{p}").exists() and Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[0] != "Z" for p in (doc["pid"], cmd_pid)), 10, "the task's processes to die")
    assert json.loads(path.read_text())["state"] == "RUNNING"  # nobody recorded an end
    assert out.read_text() == content + "\n" or out.read_text().strip() == content
    assert not markers(pdir, "done")

    # A pass sees the vanished task, counts it failed, and (backoff not yet elapsed) waits.
    r = reconcile(repo, env, "once", NAME)
    assert r.returncode == 0, r.stderr
    st = status_json(repo, env)
    assert st["counts"]["adopted"] == 0 and st["counts"]["complete"] == 0, st["counts"]
    assert st["states"][key] == "retrying", st["states"]
    assert sent_to_scheduler(spool) == Counter({key: 1})  # waiting out its backoff, not resent yet
    fails = {f["key"]: f for f in st["failures"]}
    assert fails[key]["failures"] == 1 and "vanished" in fails[key]["reason"], fails
    assert out.exists() and not partial_files(pdir, key)  # moved aside only right before the rerun
    # it is never adopted, even though its output is present and unmarked
    rc, plan = plan_json(repo, env)
    # (resubmitted once its backoff elapsed, the partial output moved aside first: both planned)
    assert [(a["kind"], a["keys"]) for a in plan["actions"]] in ([("wait", [key])], [("quarantine", [key]), ("resubmit", [key])]), plan
    assert rc == (1 if plan["actions"][-1]["kind"] == "resubmit" else 0)

    r = reconcile(repo, env, "watch", NAME, "--until-done", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    assert sent_to_scheduler(spool) == Counter({key: 2})
    # the partial file of the killed attempt is kept in qa/partial, not deleted
    kept = partial_files(pdir, key)
    assert len(kept) == 1, kept
    assert kept[0].read_text().strip() == content
    assert "attempt01" in str(kept[0].relative_to(pdir))
    # and the rerun made a real catalog, marked done by attempt 2
    with h5py.File(out, "r") as fh:
        assert all(d in fh for d in DATASETS)
    done = markers(pdir, "done")
    assert list(done) == [key] and json.loads(done[key].read_text())["attempt"] == 2
    assert not markers(pdir, "adopted")
    st = status_json(repo, env)
    assert st["done"] and st["counts"]["complete"] == 1
    assert [x["key"] for x in st["retried"]] == [key]
    assert "vanished" in st["retried"][0]["last_reason"]
    wait_quiet(spool)


if sys.platform != "linux":  # the local backend's pid checks read /proc
    pytestmark = pytest.mark.skip(reason="needs Linux /proc")
