"""`reconcile init-repo` and the packaged site defaults (issue #13, item 1), with real parts only.

Every command runs as its own process (`python -m reconciler.cli`), in real git
repositories made by init-repo itself, with no git identity configured, as on a fresh login
node. The generated CI workflow is linted by actionlint and its `run:` steps are executed by
bash in a generated repository, the install step included: it pip-installs a copy of this
checkout (the pin pointed at it) into a throw-away venv, offline, whose `reconcile` the
later steps then use, so the wheel's package data is what they read.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib.resources import files
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler import __version__
from reconciler.config_repo import WORKFLOW, pin_from_direct_url
from reconciler.sites import SITES, site_label, site_text
from reconciler.spec.load import WorkTree, load_defaults, load_file

from .conftest import ROOT, git
from .test_workflows import require_actionlint

EXPECTED = ("productions/example.yaml", ".github/workflows/validate.yml", ".gitignore", "README.md")


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a user without a git identity (no global or system config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "RECONCILER_"))}
    env.update(HOME=str(home), GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    return env


def reconcile(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = env if env is not None else clean_env(cwd.parent)
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def committed_repo(root: Path, branch: str, notes: str) -> Path:
    """A repository at ``root`` on ``branch`` with one commit of notes.txt."""
    root.mkdir()
    git(root, "init", "-q", "-b", branch)
    (root / "notes.txt").write_text(notes)
    git(root, "add", "notes.txt")
    git(root, "commit", "-qm", "first")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------- packaged sites


def test_packaged_site_templates_are_package_data_and_valid_machine_defaults() -> None:
    pkg = files("reconciler.sites")
    for name in SITES:
        assert pkg.joinpath(f"{name}.yaml").is_file()
        text = site_text(name)
        assert text.lstrip().startswith("#"), f"{name}: a template teaches: it starts with comments"
        tree = _Tree({f"defaults/{name}.yaml": text, "productions/example.yaml": pkg.joinpath("repo", "example.yaml").read_text()})
        model, _ = load_defaults(tree, name)
        assert model.machine.name == name
        assert model.execution.batch_size < model.machine.max_array_size
        loaded = load_file(tree, "productions/example.yaml", name, repo_root=Path("/tmp"))
        assert len(loaded.expansion().tasks) == 8
    assert site_text("slurm").count("scheduler: slurm") == 1
    for name in ("example.yaml", "validate.yml", "gitignore", "README.md"):
        assert pkg.joinpath("repo", name).is_file()
    with pytest.raises(KeyError):
        site_text("nowhere")


class _Tree(WorkTree):
    """A tree held in memory (for the packaged files, before any repository exists)."""

    def __init__(self, texts: dict[str, str]) -> None:
        super().__init__(Path("/nonexistent"), "memory")
        self.texts = texts

    def read(self, path: str) -> str | None:
        return self.texts.get(path)

    def list(self, directory: str) -> list[str]:
        return sorted(p for p in self.texts if p.startswith(directory + "/"))


def test_local_machine_needs_no_defaults_directory_and_errors_name_the_packaged_file() -> None:
    example = files("reconciler.sites").joinpath("repo", "example.yaml").read_text()
    tree = _Tree({"productions/example.yaml": example})
    loaded = load_file(tree, "productions/example.yaml", "local", repo_root=Path("/tmp"))
    assert loaded.defaults_file == site_label("local") == "<reconciler>/sites/local.yaml"
    assert loaded.sources["execution.job_type"].startswith("<reconciler>/sites/local.yaml:")
    with pytest.raises(Exception) as exc:
        load_file(tree, "productions/example.yaml", "nersc")
    assert "defaults/nersc.yaml:0:0: no machine defaults for 'nersc' (known machines: local;" in str(exc.value)
    # a repository's own defaults/local.yaml wins over the packaged one
    mine = site_text("local").replace("batch_size: 100", "batch_size: 7")
    tree.texts["defaults/local.yaml"] = mine
    assert load_defaults(tree, "local")[0].execution.batch_size == 7


# ---------------------------------------------------------------- init-repo


@pytest.mark.parametrize("site", SITES)
def test_init_repo_makes_a_repository_that_validates_and_plans(tmp_path: Path, site: str) -> None:
    target = tmp_path / "prod-repo"
    proc = reconcile(tmp_path, "init-repo", str(target), "--site", site)
    assert proc.returncode == 0, proc.stderr
    for rel in (*EXPECTED, f"defaults/{site}.yaml"):
        assert rel in proc.stdout and (target / rel).is_file(), rel
    assert sorted(p.name for p in (target / "defaults").iterdir()) == [f"{site}.yaml"]
    assert (target / f"defaults/{site}.yaml").read_text() == site_text(site)
    assert "next:" in proc.stdout and "reconcile plan example" in proc.stdout
    # one commit, on main, by the fallback identity (this user has none), nothing left over
    assert git(target, "rev-list", "--count", "HEAD").strip() == "1"
    assert git(target, "branch", "--show-current").strip() == "main"
    assert git(target, "log", "-1", "--format=%an <%ae>").strip() == "reconciler <reconciler@localhost>"
    assert git(target, "status", "--porcelain").strip() == ""
    pin = f'RECONCILER_PIN: "reconciler=={__version__}"'  # this checkout is installed from a directory
    assert pin in (target / WORKFLOW).read_text()
    assert "note: CI installs" in proc.stdout and "another project's" in proc.stdout

    valid = reconcile(target, "validate", "--all-machines")
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert f"ok      productions/example.yaml (8 tasks on {site})" in valid.stdout
    plan = reconcile(target, "plan", "example")  # the local machine, packaged where defaults/ lacks it
    assert plan.returncode == 1, plan.stdout + plan.stderr
    assert re.search(r"submit\s+8 task\(s\) batch 0000", plan.stdout), plan.stdout
    if site != "local":
        show = reconcile(target, "show", "example", "--machine", site)
        assert show.returncode == 0, show.stderr
        assert f"defaults/{site}.yaml:" in show.stdout


def test_the_example_runs_to_completion_with_no_defaults_directory(tmp_path: Path) -> None:
    target = tmp_path / "prod-repo"
    assert reconcile(tmp_path, "init-repo", str(target)).returncode == 0
    git(target, "rm", "-rq", "defaults")
    git(target, "commit", "-qm", "no machine defaults: the packaged local ones")
    valid = reconcile(target, "validate", "--all-machines")
    assert valid.returncode == 0, valid.stderr
    assert "ok      productions/example.yaml (8 tasks on local)" in valid.stdout
    plan = reconcile(target, "plan", "example")
    assert plan.returncode == 1 and "submit" in plan.stdout, plan.stdout + plan.stderr
    show = reconcile(target, "show", "example")
    assert "# <reconciler>/sites/local.yaml:" in show.stdout
    run = reconcile(target, "watch", "example", "--until-done", "--interval", "1", "--no-status")
    assert run.returncode == 0, run.stdout + run.stderr
    outputs = sorted((target / "work/productions/example/catalogs").rglob("*.hdf5"))
    assert len(outputs) == 8
    assert git(target, "status", "--porcelain").strip() == "", "work/ is ignored"


def test_existing_files_are_listed_and_nothing_is_written(tmp_path: Path) -> None:
    target = tmp_path / "prod-repo"
    (target / "productions").mkdir(parents=True)
    (target / "productions/example.yaml").write_text("mine\n")
    (target / "README.md").write_text("my readme\n")
    (target / "notes.txt").write_text("unrelated\n")
    before = snapshot(target)
    proc = reconcile(tmp_path, "init-repo", str(target), "--site", "nersc")
    assert proc.returncode == 2
    assert "2 file(s) exist already" in proc.stderr and "wrote nothing" in proc.stderr
    assert str(target / "productions/example.yaml") in proc.stderr and str(target / "README.md") in proc.stderr
    assert snapshot(target) == before
    assert not (target / ".git").exists()


def test_inside_a_repository_files_are_written_but_not_committed(tmp_path: Path) -> None:
    target = committed_repo(tmp_path / "existing", "trunk", "already here\n")
    sub = target / "sub"
    refused = reconcile(tmp_path, "init-repo", str(sub))
    assert refused.returncode == 2 and "below its top" in refused.stderr
    assert not sub.exists()
    proc = reconcile(tmp_path, "init-repo", str(target), "--site", "slurm")
    assert proc.returncode == 0, proc.stderr
    assert "not committed" in proc.stdout and "git add -- productions/example.yaml" in proc.stdout
    assert git(target, "rev-list", "--count", "HEAD").strip() == "1"
    untracked = git(target, "status", "--porcelain", "--untracked-files=all").split("\n")
    assert sorted(line[3:] for line in untracked if line) == sorted((*EXPECTED, "defaults/slurm.yaml"))


def test_pin_is_one_line_requirement(tmp_path: Path) -> None:
    bad = reconcile(tmp_path, "init-repo", str(tmp_path / "a"), "--pin", 'reconciler"\nrun: evil')
    assert bad.returncode == 2 and "--pin" in bad.stderr
    assert not (tmp_path / "a").exists()
    url = "reconciler @ git+https://example.org/team/reconciler@v0.1.0"
    assert reconcile(tmp_path, "init-repo", str(tmp_path / "b"), "--pin", url).returncode == 0
    workflow = YAML(typ="safe").load((tmp_path / "b" / WORKFLOW).read_text())
    assert workflow["env"]["RECONCILER_PIN"] == url
    assert url in (tmp_path / "b/README.md").read_text()


def test_the_default_pin_reinstalls_what_runs_where_ci_can_reach_it() -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    git_install = {"url": "https://example.org/team/reconciler", "vcs_info": {"vcs": "git", "commit_id": commit, "requested_revision": "v0.1.0"}}
    assert pin_from_direct_url(git_install) == f"reconciler @ git+https://example.org/team/reconciler@{commit}"
    archive = {"url": "https://example.org/reconciler-0.1.0.tar.gz", "archive_info": {}}
    assert pin_from_direct_url(archive) == "reconciler @ https://example.org/reconciler-0.1.0.tar.gz"
    for unreachable in ({"url": "file:///home/me/reconciler", "dir_info": {"editable": True}}, {"url": "file:///tmp/r.whl", "archive_info": {}}, None):
        assert pin_from_direct_url(unreachable) is None


# ---------------------------------------------------------------- the generated workflow


def test_generated_workflow_passes_actionlint(tmp_path: Path) -> None:
    binary = require_actionlint()
    target = tmp_path / "prod-repo"
    assert reconcile(tmp_path, "init-repo", str(target), "--site", "nersc").returncode == 0
    proc = subprocess.run([binary, "-no-color", WORKFLOW], cwd=target, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _throwaway_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A venv that sees this test venv's packages (a .pth), and a copy of this checkout to install."""
    venv = tmp_path / "ci-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = tmp_path / "checkout"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "reconciler", source / "reconciler", ignore=shutil.ignore_patterns("__pycache__"))
    return venv, source


def _run_steps(workflow: dict, repo: Path, env: dict[str, str]) -> list[tuple[str, int, str]]:
    """Each `run:` step with bash as GitHub runs it (-eo pipefail), in order; `uses:` skipped."""
    results = []
    expressions = {"${{ github.base_ref }}": "main"}
    for step in workflow["jobs"]["validate"]["steps"]:
        if "uses" in step:
            continue
        assert "${{" not in step["run"], f"an expression spliced into a script: {step['run']}"
        step_env = dict(env)
        for key, value in (step.get("env") or {}).items():
            step_env[key] = expressions.get(str(value), str(value))
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=repo, env=step_env, capture_output=True, text=True, timeout=120, check=False)
        results.append((step.get("name", ""), proc.returncode, proc.stdout + proc.stderr))
        if proc.returncode != 0:
            break
    return results


def test_generated_workflow_steps_run_in_a_generated_repository(tmp_path: Path) -> None:
    target = tmp_path / "prod-repo"
    assert reconcile(tmp_path, "init-repo", str(target)).returncode == 0
    (target / "defaults/slurm.yaml").write_text(site_text("slurm"))
    git(target, "add", "defaults/slurm.yaml")
    git(target, "commit", "-qm", "a cluster")
    # the pull request: one more redshift (4 tasks more on every machine) and a new machine
    git(target, "checkout", "-qb", "more-redshifts")
    example = target / "productions/example.yaml"
    example.write_text(example.read_text().replace("redshifts: [0.5, 1.0]", "redshifts: [0.5, 1.0, 1.5]"))
    (target / "defaults/nersc.yaml").write_text(site_text("nersc"))
    git(target, "add", "-A")
    git(target, "commit", "-qm", "z=1.5, and nersc")
    git(target, "update-ref", "refs/remotes/origin/main", "main")

    venv, source = _throwaway_venv(tmp_path)
    workflow = YAML(typ="safe").load((target / WORKFLOW).read_text())
    assert workflow["env"]["RECONCILER_PIN"] == f"reconciler=={__version__}"
    summary = tmp_path / "summary.md"
    path = os.pathsep.join([str(venv / "bin"), *(p for p in os.environ["PATH"].split(os.pathsep) if p and not p.startswith(sys.prefix))])
    env = {**clean_env(tmp_path), **workflow["env"], "PATH": path, "GITHUB_STEP_SUMMARY": str(summary)}
    env.pop("VIRTUAL_ENV", None)
    env.update(RECONCILER_PIN=str(source), PIP_NO_DEPS="1", PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")

    results = _run_steps(workflow, target, env)
    assert [(name, rc) for name, rc, _ in results] == [
        ("Install the pinned reconciler", 0),
        ("Validate every production on every machine in defaults/", 0),
        ("Plan of this pull request, per machine", 0),
    ], results
    assert shutil.which("reconcile", path=path) == str(venv / "bin/reconcile")
    assert f"reconciler {__version__}" in results[0][2]
    for machine in ("local", "nersc", "slurm"):
        assert f"(12 tasks on {machine})" in results[1][2]
    text = summary.read_text()
    sections = dict(re.findall(r"^## Machine `(\w+)`\n(.*?)(?=^## Machine|\Z)", text, flags=re.M | re.S))
    assert sorted(sections) == ["local", "nersc", "slurm"], text
    for machine in ("local", "slurm"):
        assert "Desired-state plan: `origin/main` → `HEAD`" in sections[machine]
        assert "| 8 | 12 | 4 | 0 | 0 | 0 |" in sections[machine], sections[machine]
    assert "New in this pull request" in sections["nersc"]

    # the wheel carries the packaged sites: with no defaults/ at all, the installed reconciler
    # validates on its own local machine
    git(target, "rm", "-rq", "defaults")
    git(target, "commit", "-qm", "no defaults")
    summary.write_text("")
    results = _run_steps(workflow, target, env)
    assert [rc for _, rc, _ in results] == [0, 0, 0], results
    assert "(12 tasks on local)" in results[1][2]
    assert re.findall(r"^## Machine `(\w+)`", summary.read_text(), flags=re.M) == ["local"]
    where = subprocess.run(["python", "-c", "import reconciler.sites as s; print(s.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(venv)), where.stdout

    # an invalid production fails the job (validate: exit 2)
    example.write_text(example.read_text().replace("count: 4", "count: -1"))
    git(target, "commit", "-qam", "broken")
    results = _run_steps(workflow, target, env)
    assert [rc for _, rc, _ in results] == [0, 2], results
    assert "science.realizations.count" in results[1][2]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a repository to another user")
def test_a_repository_git_will_not_read_is_refused_and_left_alone(tmp_path: Path) -> None:
    """A repository of another user (git: "dubious ownership", common on shared directories)
    is not "no repository": init-repo refuses, and its .git with its history stays."""
    other = committed_repo(tmp_path / "theirs", "main", "history\n")
    before = snapshot(other)
    subprocess.run(["chown", "-R", "65534:65534", str(other)], check=True)
    r = reconcile(tmp_path, "init-repo", str(other))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "git cannot tell whether" in r.stderr and "nothing was written" in r.stderr, r.stderr
    assert snapshot(other) == before
