"""A user's first day with the old tool's files (issue #13, items 2 and 3): every error in one
round, and the seed tool's `nersc.yaml` and production files accepted as they are, with every
field they set doing what its name says or refused with a reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.errors import ConfigError
from reconciler.spec.load import WorkTree, load_defaults, load_file
from tests.conftest import ROOT, git

LEGACY = ROOT / "tests" / "data" / "legacy"
RECONCILE = [sys.executable, "-m", "reconciler.cli"]


def _tree(tmp_path: Path, productions: dict[str, str], defaults: dict[str, str]) -> WorkTree:
    for sub, files in (("productions", productions), ("defaults", defaults)):
        (tmp_path / sub).mkdir(exist_ok=True)
        for name, text in files.items():
            (tmp_path / sub / name).write_text(text)
    return WorkTree(tmp_path)


def _problems(tree: WorkTree, path: str, machine: str = "local") -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_file(tree, path, machine)
    return [str(p) for p in err.value.problems]


BAD = """\
production:
  name: other
  name: again
science:
  redshifts: [0.5]
  realizations: {start: 0, count: 2}
execution:
  batchsize: 3
task:
  command: "gen --a {nope} --b {catalog_params.missing} --out {output}"
  outputs: ["x/r{realization}_{zz}.h5"]
"""


def test_every_problem_of_a_file_and_of_its_machine_in_one_round(tmp_path: Path) -> None:
    """A duplicate key, a name that is not the file's, an unknown field, three unknown
    placeholders in two templates, and a machine file that does not exist: all in one error,
    in file order, each at its line."""
    tree = _tree(tmp_path, {"bad.yaml": BAD}, {})
    problems = _problems(tree, "productions/bad.yaml", machine="cori")
    joined = "\n".join(problems)
    assert "defaults/cori.yaml:0:0: no machine defaults for 'cori'" in joined
    assert "productions/bad.yaml:3:3: production.name: duplicate key 'name' (first defined at line 2)" in joined
    assert "productions/bad.yaml:2:3: production.name: name 'other' does not match the file name 'bad'" in joined
    assert "productions/bad.yaml:8:3: execution.batchsize: unknown field 'batchsize'" in joined
    assert "productions/bad.yaml:10:3: task.command: unknown placeholder {nope}" in joined
    assert "productions/bad.yaml:10:3: task.command: unknown placeholder {catalog_params.missing}" in joined
    assert "productions/bad.yaml:11:3: task.outputs: unknown placeholder {zz}" in joined
    assert len(problems) == 7, joined
    assert [p.split(":")[0] for p in problems] == sorted(p.split(":")[0] for p in problems)


def test_a_missing_section_says_what_goes_there(tmp_path: Path) -> None:
    text = "production:\n  name: bare\nscience:\n  redshifts: [0.5]\n  realizations: {start: 0, count: 2}\n"
    tree = _tree(tmp_path, {"bare.yaml": text}, {"local.yaml": (ROOT / "defaults" / "local.yaml").read_text()})
    (problem,) = _problems(tree, "productions/bare.yaml")
    assert problem.startswith("productions/bare.yaml:1:1: task: required section is missing (add it, e.g.\n    task:\n      command: ")


def test_the_old_tools_files_validate_unchanged_but_for_task(tmp_path: Path) -> None:
    """The seed's nersc.yaml has no machine: section: its name is the file's, its scheduler
    auto (never local). The seed's production has no task.outputs: outputs.structure names
    the layout, as in the old tool; every cleanup_policy field it sets is accepted."""
    tree = _tree(tmp_path, {"alpha.yaml": (LEGACY / "alpha.yaml").read_text()}, {"nersc.yaml": (LEGACY / "nersc.yaml").read_text()})
    machine, _doc = load_defaults(tree, "nersc")
    assert (machine.machine.name, machine.machine.scheduler) == ("nersc", "auto")
    loaded = load_file(tree, "productions/alpha.yaml", "nersc")
    assert loaded.spec.task.outputs == ["catalogs/r{realization:04d}/mock_z{redshift:.3f}.hdf5"]
    assert loaded.spec.resources.partition == "regular" and loaded.spec.execution.timeout_hours == 24.0
    assert loaded.spec.outputs.cleanup_policy.archive_completed is True
    exp = loaded.expansion()
    assert len(exp.tasks) == 8000
    assert exp.by_key["r0007/z1.500"].outputs == ("catalogs/r0007/mock_z1.500.hdf5",)
    assert loaded.warnings == ()
    flat = (LEGACY / "alpha.yaml").read_text().replace('structure: "hierarchical"', 'structure: "flat"')
    (tmp_path / "productions" / "alpha.yaml").write_text(flat)
    assert load_file(tree, "productions/alpha.yaml", "nersc").expansion().by_key["r0007/z1.500"].outputs == ("catalogs/mock_r0007_z1.500.hdf5",)


def test_settings_that_would_do_nothing_are_said_or_refused(tmp_path: Path) -> None:
    """A structure beside explicit task.outputs, and a production without version, are
    warnings; keep_intermediate: true (a production has no intermediate files) is refused."""
    text = (LEGACY / "alpha.yaml").read_text().replace('  version: "v1.0"\n', "")
    text += '  outputs: ["cat/r{realization:04d}_z{redshift:.2f}.h5"]\n'
    tree = _tree(tmp_path, {"alpha.yaml": text}, {"nersc.yaml": (LEGACY / "nersc.yaml").read_text()})
    warnings = [str(w) for w in load_file(tree, "productions/alpha.yaml", "nersc").warnings]
    assert any(w.startswith("productions/alpha.yaml:") and "outputs.structure: has no effect" in w for w in warnings), warnings
    assert any("production.version: not set" in w for w in warnings), warnings
    (tmp_path / "productions" / "alpha.yaml").write_text(text.replace("keep_intermediate: false", "keep_intermediate: true"))
    (problem,) = _problems(tree, "productions/alpha.yaml", "nersc")
    assert "outputs.cleanup_policy.keep_intermediate" in problem


def test_a_machine_file_must_be_named_as_it_says(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {}, {"perlmutter.yaml": "machine:\n  name: nersc\n"})
    with pytest.raises(ConfigError, match=r"defaults/perlmutter.yaml:2:3: machine.name: name 'nersc' does not match the file name 'perlmutter'"):
        load_defaults(tree, "perlmutter")


def _legacy_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "productions").mkdir(parents=True)
    (repo / "defaults").mkdir()
    shutil.copy(LEGACY / "alpha.yaml", repo / "productions" / "alpha.yaml")
    shutil.copy(LEGACY / "nersc.yaml", repo / "defaults" / "nersc.yaml")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the old tool's files")
    return repo


def test_a_slurm_machine_without_slurm_tools_is_a_clear_error_never_the_local_backend(tmp_path: Path) -> None:
    """`stage`/`plan --machine nersc` on a host without sbatch: exit 2 saying so, and nothing
    written (the seed recorded 24 two-node GPU submissions for the local backend)."""
    repo = _legacy_repo(tmp_path)
    bin_dir = tmp_path / "bin"  # git, and no Slurm tool
    bin_dir.mkdir()
    git_path = shutil.which("git")
    assert git_path
    os.symlink(git_path, bin_dir / "git")
    env = {**os.environ, "PATH": str(bin_dir)}
    base = tmp_path / "outputs"
    for verb in ("plan", "stage"):
        r = subprocess.run(
            [*RECONCILE, verb, "alpha", "--machine", "nersc", "--set", f"outputs.base_path={base}"],
            cwd=repo, env=env, capture_output=True, text=True, timeout=120,
        )
        assert r.returncode == 2, (verb, r.stdout, r.stderr)
        assert "machine 'nersc' (scheduler: auto) needs Slurm, and this host has no Slurm tools (sbatch is not on PATH)" in r.stderr, r.stderr
    assert not base.exists()


def test_a_config_repository_from_init_repo_takes_the_old_tools_files_and_its_ci_passes(tmp_path: Path) -> None:
    """The issue's first day: `init-repo`, then the seed's nersc.yaml and alpha.yaml (with only
    `task:` added) in a pull request; the generated workflow's steps validate both machines and
    put a plan per machine in the job summary."""
    from ruamel.yaml import YAML

    from reconciler.config_repo import WORKFLOW

    from .test_init_repo import _run_steps, _throwaway_venv, clean_env
    from .test_init_repo import reconcile as reconcile_in

    target = tmp_path / "team-productions"
    assert reconcile_in(tmp_path, "init-repo", str(target)).returncode == 0
    shutil.copy(LEGACY / "nersc.yaml", target / "defaults" / "nersc.yaml")  # the machine first, on main
    git(target, "add", "-A")
    git(target, "commit", "-qm", "our site, as the old tool had it")
    git(target, "checkout", "-qb", "alpha")
    shutil.copy(LEGACY / "alpha.yaml", target / "productions" / "alpha.yaml")
    git(target, "add", "-A")
    git(target, "commit", "-qm", "alpha, as the old tool had it")
    git(target, "update-ref", "refs/remotes/origin/main", "main")

    venv, source = _throwaway_venv(tmp_path)
    workflow = YAML(typ="safe").load((target / WORKFLOW).read_text())
    summary = tmp_path / "summary.md"
    path = os.pathsep.join([str(venv / "bin"), *(p for p in os.environ["PATH"].split(os.pathsep) if p and not p.startswith(sys.prefix))])
    env = {**clean_env(tmp_path), **workflow["env"], "PATH": path, "GITHUB_STEP_SUMMARY": str(summary)}
    env.pop("VIRTUAL_ENV", None)
    env.update(RECONCILER_PIN=str(source), PIP_NO_DEPS="1", PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")  # pip reads "0" as: no isolation
    results = _run_steps(workflow, target, env)
    assert [rc for _, rc, _ in results] == [0, 0, 0], results
    validated = results[1][2]
    assert "ok      productions/alpha.yaml (8000 tasks on local)" in validated, validated
    assert "ok      productions/alpha.yaml (8000 tasks on nersc)" in validated, validated
    assert "ok      defaults/nersc.yaml (machine defaults)" in validated, validated
    text = summary.read_text()
    for machine in ("local", "nersc"):
        assert f"## Machine `{machine}`" in text, text
    assert text.count("alpha") >= 2 and "8000" in text.replace(",", ""), text
