"""Pool mode in desired state: `execution.mode` and `execution.pool` merged like every other
setting (machine < job type < production < stage < --set), a pool that could never claim a
task refused with its line, and the worker array's script."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from reconciler.errors import ConfigError
from reconciler.scheduler.script import render_worker_script
from reconciler.spec.load import Loaded, WorkTree, load

PROD = """\
production: {name: pp, version: v1}
science:
  redshifts: [0.5]
  realizations: {start: 0, count: 2}
execution:
  job_type: big
  mode: pool
  timeout_hours: 0.5
  pool: {workers: 2, margin_minutes: 5}
task:
  command: "gen --r {realization} --out {output}"
  outputs: ["c/r{realization:04d}.h5"]
"""

MACHINE = """\
resources: {account: m1, partition: regular, memory_gb: 2}
execution:
  pool: {workers: 16, walltime_minutes: 720, nodes: 1, lease_seconds: 600}
job_type_overrides:
  big: {memory_gb: 64, pool: {walltime_minutes: 240, nodes: 4}}
"""


def _load(tmp: Path, text: str = PROD, overrides: list = []) -> Loaded:  # noqa: B006 - never mutated
    for d in ("productions", "defaults"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    (tmp / "productions" / "pp.yaml").write_text(text)
    (tmp / "defaults" / "local.yaml").write_text(MACHINE)
    return load(WorkTree(tmp), "pp", "local", overrides, repo_root=tmp)


def test_pool_settings_merge_field_by_field_machine_job_type_production_command_line(tmp_path: Path) -> None:
    pool = _load(tmp_path, overrides=[(("execution", "pool", "tasks_side_by_side"), 4)]).spec.execution.pool
    assert (pool.workers, pool.walltime_minutes, pool.nodes, pool.lease_seconds, pool.margin_minutes, pool.tasks_side_by_side) == (2, 240, 4, 600, 5, 4)


def test_a_stage_may_run_in_the_pool_while_another_runs_as_arrays(tmp_path: Path) -> None:
    text = PROD.replace("  mode: pool\n", "").replace(
        'task:\n  command: "gen --r {realization} --out {output}"\n  outputs: ["c/r{realization:04d}.h5"]\n',
        'stages:\n  gen:\n    command: "gen --r {realization} --out {output}"\n    outputs: ["c/r{realization:04d}.h5"]\n'
        '  stat:\n    needs: [gen]\n    execution: {mode: pool}\n    command: "stat {needs.gen} --out {output}"\n    outputs: ["s/r{realization:04d}.npy"]\n',
    )
    loaded = _load(tmp_path, text)
    assert [loaded.stage_spec(s).execution.mode for s in ("gen", "stat")] == ["array", "pool"]


def test_a_pool_whose_workers_could_never_claim_a_task_is_refused_at_its_line(tmp_path: Path) -> None:
    text = PROD.replace("pool: {workers: 2, margin_minutes: 5}", "pool: {workers: 2, margin_minutes: 5, walltime_minutes: 30}")
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    msg = str(info.value)
    assert "productions/pp.yaml:9:" in msg and "execution.pool.walltime_minutes" in msg and "35" in msg, msg
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, PROD.replace("mode: pool", "mode: pools"))
    assert "execution.mode" in str(info.value) and "productions/pp.yaml:7" in str(info.value), str(info.value)


def test_the_worker_array_script_asks_for_the_pools_nodes_and_walltime_and_quotes_what_it_runs(tmp_path: Path) -> None:
    loaded = _load(tmp_path)
    pdir = tmp_path / "it's-a-dir"
    script = render_worker_script(loaded.spec, name="pp.pool.0123abcd", token="1-0123abcdef01", count=3, production_dir=pdir, python="/opt/py thon")
    lines = script.splitlines()
    assert "#SBATCH --array=0-2" in lines and "#SBATCH --nodes=4" in lines and "#SBATCH --time=04:00:00" in lines, script
    assert "#SBATCH --mem=65536M" in lines and "#SBATCH --job-name=pp.pool.0123abcd" in lines, script
    argv = shlex.split(lines[-1].removeprefix("exec "))
    assert argv[:4] == ["/opt/py thon", "-m", "reconciler.pool.worker", str(pdir)], argv
    assert argv[argv.index("--walltime-s") + 1] == "14400" and argv[argv.index("--margin-s") + 1] == "300", argv
    assert subprocess.run(["bash", "-n", "-c", script], capture_output=True).returncode == 0
    side = _load(tmp_path, PROD.replace("margin_minutes: 5}", "margin_minutes: 5, tasks_side_by_side: 3}"))
    lines = render_worker_script(side.spec, name="pp.pool.0123abcd", token="t", count=1, production_dir=pdir).splitlines()
    assert "#SBATCH --mem=196608M" in lines and "--side-by-side 3" in lines[-1], lines  # 3 tasks' memory in one worker
    exported = render_worker_script(loaded.spec, name="pp.pool.0123abcd", token="t", count=1, production_dir=pdir, export=["MY_VAR", "PATH"])
    assert [ln for ln in exported.splitlines() if ln.startswith("#SBATCH --export=")] == [
        "#SBATCH --export=PATH,HOME,USER,LOGNAME,LANG,LC_ALL,TZ,TMPDIR,SLURM_CONF,MY_VAR"
    ]  # a pool stage's export_env reaches the workers, each name once
    with pytest.raises(ValueError, match="whitespace"):
        render_worker_script(loaded.spec, name="pp.pool.0123abcd", token="t", count=1, production_dir=tmp_path / "a b")


def test_a_pool_mode_stage_with_its_own_pool_or_resources_is_refused_one_pool_serves_them_all(tmp_path: Path) -> None:
    base = PROD.replace("  mode: pool\n", "").replace(
        'task:\n  command: "gen --r {realization} --out {output}"\n  outputs: ["c/r{realization:04d}.h5"]\n',
        'stages:\n  gen:\n    command: "gen --r {realization} --out {output}"\n    outputs: ["c/r{realization:04d}.h5"]\n'
        '  stat:\n    needs: [gen]\n    execution: {mode: pool%s}\n%s    command: "stat {needs.gen} --out {output}"\n    outputs: ["s/r{realization:04d}.npy"]\n',
    )
    _load(tmp_path / "ok", base % ("", ""))  # the production's pool and resources: fine
    for own, resources in ((", pool: {walltime_minutes: 400}", ""), ("", "    resources: {memory_gb: 128}\n")):
        with pytest.raises(ConfigError) as info:
            _load(tmp_path / "bad", base % (own, resources))
        msg = str(info.value)
        assert "stages.stat" in msg and "runs in the production's workers" in msg and ("execution.pool" in msg or "resources" in msg), msg


def test_pool_settings_with_nothing_in_pool_mode_are_accepted_with_a_warning(tmp_path: Path) -> None:
    loaded = _load(tmp_path, PROD.replace("  mode: pool\n", ""))
    assert [w.field for w in loaded.warnings] == ["execution.pool"] and "no stage runs in pool mode" in str(loaded.warnings[0])
    assert not _load(tmp_path / "on", PROD).warnings
