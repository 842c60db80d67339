"""The sbatch script and manifest as `reconcile stage` writes them: golden files, and no
config value ever reaching a shell.

`stage` writes exactly what `submit` sends (same code path, nothing submitted), so these
goldens are what Slurm receives. Machine-specific parts (the production directory, the
submission token, this interpreter) are replaced by placeholders before comparing.
Regenerate after an intended change with `RECONCILER_UPDATE_GOLDEN=1 make test` and review
the diff of tests/data/scripts/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.scheduler.script import job_name, render_script, token_tag
from reconciler.spec.load import WorkTree, load

from .conftest import git

GOLDEN = Path(__file__).parent / "data" / "scripts"
UPDATE = os.environ.get("RECONCILER_UPDATE_GOLDEN") == "1"


def stage(repo: Path, base: Path, name: str, *args: str) -> list[Path]:
    """`reconcile stage NAME ARGS` on the local backend with outputs under ``base``; the
    scripts it wrote, by batch."""
    env = {**os.environ, "RECONCILER_LOCAL_SPOOL": str(base.parent / "spool")}
    r = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "stage", name, "--scheduler", "local", "--set", f"outputs.base_path={base}", *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return sorted((base / name / "logs").glob("batch_*.sh"))


TOKEN_RE = re.compile(r"(?<![0-9])\d{10}-[0-9a-f]{12}(?![0-9a-f])")


def normalized(text: str, production_dir: Path) -> str:
    """Placeholders for what changes per run; a job name's tag becomes ``<TAG>`` only when it
    is the tag of the token in the same text, so a name that lost its token fails the golden."""
    text = text.replace(str(production_dir), "<PRODUCTION_DIR>").replace(sys.executable, "<PYTHON>")
    for token in set(TOKEN_RE.findall(text)):
        text = text.replace(f".{token_tag(token)}\n", ".<TAG>\n")
    return TOKEN_RE.sub("<TOKEN>", text)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with RECONCILER_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{name} differs from its golden file (RECONCILER_UPDATE_GOLDEN=1 to accept)"


def test_alpha_on_nersc_matches_the_golden_script_and_manifest(repo: Path, tmp_path: Path) -> None:
    # alpha: gpu_intensive on nersc (partition gpu, constraint gpu, 4 GPUs), memory 128 GB
    # from the production, timeout 4 h (+2 min so the wrapper's own timeout fires first)
    scripts = stage(repo, tmp_path / "out", "alpha", "--machine", "nersc")
    pdir = tmp_path / "out" / "alpha"
    assert len(scripts) == 1  # 24 tasks, batch_size 24
    check_golden("alpha_nersc_batch_0000.sh", normalized(scripts[0].read_text(), pdir))
    manifest = json.loads(scripts[0].with_suffix(".json").read_text())
    assert sorted(manifest["tasks"], key=int) == [str(i) for i in range(24)]
    manifest["tasks"] = {k: manifest["tasks"][k] for k in ("0", "23")}  # first and last suffice
    check_golden("alpha_nersc_batch_0000.json", normalized(json.dumps(manifest, indent=1, sort_keys=True) + "\n", pdir))


def test_demo_on_local_matches_the_golden_scripts(repo: Path, tmp_path: Path) -> None:
    # demo: two batches of 16 with the production's throttle (%4), no account or partition
    scripts = stage(repo, tmp_path / "out", "demo")
    pdir = tmp_path / "out" / "demo"
    assert [re.search(r"batch_(\d{4})_", p.name)[1] for p in scripts] == ["0000", "0001"]  # type: ignore[index]
    for p in scripts:
        check_golden(f"demo_local_{p.name[:10]}.sh", normalized(p.read_text(), pdir))


def test_job_environment_matches_the_golden_script_and_manifest(repo: Path, tmp_path: Path) -> None:
    # alpha on nersc with an environment: setup lines (machine, then job type, then the
    # production's), export_env added to --export once each, a container in the manifest
    nersc = repo / "defaults" / "nersc.yaml"
    nersc.write_text(
        nersc.read_text().replace("    gpus_per_node: 4\n", "    gpus_per_node: 4\n    setup: ['module load cudatoolkit']\n")
        + "\nenvironment:\n  setup: ['module load python', 'export HDF5_USE_FILE_LOCKING=FALSE']\n"
        + "  export_env: [LD_LIBRARY_PATH, PATH]\n  container: {image: 'docker:org/covmocks:1.2', runtime: shifter}\n"
    )
    alpha = repo / "productions" / "alpha.yaml"
    alpha.write_text(alpha.read_text() + "\nenvironment:\n  setup: ['conda activate covmocks']\n  export_env: [HDF5_PLUGIN_PATH, LD_LIBRARY_PATH]\n")
    git(repo, "commit", "-qam", "a job environment")
    scripts = stage(repo, tmp_path / "out", "alpha", "--machine", "nersc")
    pdir = tmp_path / "out" / "alpha"
    check_golden("alpha_env_nersc_batch_0000.sh", normalized(scripts[0].read_text(), pdir))
    manifest = json.loads(scripts[0].with_suffix(".json").read_text())
    manifest["tasks"] = {k: manifest["tasks"][k] for k in ("0",)}
    check_golden("alpha_env_nersc_batch_0000.json", normalized(json.dumps(manifest, indent=1, sort_keys=True) + "\n", pdir))


def test_a_shell_command_matches_the_golden_manifest(repo: Path, tmp_path: Path) -> None:
    # shell: true: bash -euo pipefail -c LINE, every value quoted, the directory a variable
    demo = repo / "productions" / "demo.yaml"
    text = demo.read_text()
    start, end = text.index("  command: >-"), text.index("  outputs:")
    line = "mkdir -p $(dirname {output}) && {python} -m reconciler.demo_generator --realization {realization} --redshift {redshift} --output {output} 2>&1 | tail -n 5"
    demo.write_text(text[:start] + f"  shell: true\n  command: {json.dumps(line)}\n" + text[end:])
    git(repo, "commit", "-qam", "a shell line")
    scripts = stage(repo, tmp_path / "out", "demo")
    pdir = tmp_path / "out" / "demo"
    check_golden("demo_shell_local_batch_0000.sh", normalized(scripts[0].read_text(), pdir))
    manifest = json.loads(scripts[0].with_suffix(".json").read_text())
    manifest["tasks"] = {k: manifest["tasks"][k] for k in ("0",)}
    check_golden("demo_shell_local_batch_0000.json", normalized(json.dumps(manifest, indent=1, sort_keys=True) + "\n", pdir))


def test_a_sparse_resubmission_renders_only_its_indices(repo: Path) -> None:
    loaded = load(WorkTree(repo), "alpha", "nersc", repo_root=repo)
    text = render_script(
        loaded.spec, batch=3, token="1234567890-abcdefabcdef", array_indices=[7, 0, 1, 2, 5, 8],
        manifest=Path("/p/alpha/logs/batch_0003_1234567890-abcdefabcdef.json"), production_dir=Path("/p/alpha"), python="/usr/bin/python3",
    )
    check_golden("alpha_nersc_resubmit_batch_0003.sh", text)
    assert "#SBATCH --array=0-2,5,7-8\n" in text and "#SBATCH --job-name=alpha.0003.abcdefab\n" in text


@pytest.mark.parametrize(
    ("token", "tag"),
    [
        ("1234567890-abcdefabcdef", "abcdefab"),  # what engine/apply.py makes: the random part's start
        ("1761000000-3f9c0a17b2e4", "3f9c0a17"),
        ("tok-pend", "903c6f85"),  # any other token: a digest, still 8 hex digits
    ],
)
def test_token_tag(token: str, tag: str) -> None:
    assert token_tag(token) == tag
    assert re.fullmatch(r"[0-9a-f]{8}", tag)
    assert token_tag(token) == token_tag(token)  # a pure function of the token


def test_job_name_carries_production_batch_and_token_tag_and_is_a_valid_slurm_name() -> None:
    longest = "p" + "x" * 63  # NAME_PATTERN allows 64 characters
    name = job_name(longest, 12345, "1234567890-abcdefabcdef")
    assert name == f"{longest}.12345.abcdefab"
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z0-9._-]+", name)  # no space, |, %, / or quote
    assert job_name("alpha", 3, "1234567890-abcdefabcdef") != job_name("alpha", 3, "1234567890-0bcdefabcdef")


def test_config_values_never_reach_a_shell(repo: Path, tmp_path: Path) -> None:
    """Shell metacharacters in the output path and in a task's env: the staged script, run by
    bash as Slurm would, creates no stray file, and the task gets its values literally."""
    evil = "$(touch PWNED-sub);touch PWNED-semi'\"`touch PWNED-tick`"
    base = tmp_path / ("out" + evil.replace(" ", "${IFS}"))  # a path may not hold whitespace
    demo = repo / "productions" / "demo.yaml"
    demo.write_text(demo.read_text().replace('OMP_NUM_THREADS: "1"', f'OMP_NUM_THREADS: "1"\n    EVIL: {json.dumps(evil)}'))
    git(repo, "commit", "-qam", "an evil env value")
    script = stage(repo, base, "demo")[0]  # batch 0000
    text = script.read_text()
    assert evil not in text.split("#SBATCH --export")[1]  # the env value is in the manifest only
    assert json.loads(script.with_suffix(".json").read_text())["env"]["EVIL"] == evil
    # run the script's body with bash, as slurmstepd would, for array index 0 (task r0000/z0.500)
    work = tmp_path / "cwd"
    work.mkdir()
    res = subprocess.run(["bash", str(script)], cwd=work, env={**os.environ, "SLURM_ARRAY_TASK_ID": "0"}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert not list(work.glob("PWNED*")) and not list(tmp_path.glob("PWNED*")) and not list(repo.glob("PWNED*"))
    assert (base / "demo" / "catalogs" / "r0000" / "mock_z0.500.hdf5").is_file()


@pytest.mark.parametrize("case", ["base_path with a space", "repository path with a space"])
def test_a_production_directory_with_whitespace_is_a_config_error(repo: Path, tmp_path: Path, case: str) -> None:
    args = ["--set", "outputs.base_path=/tmp/with space"]
    if case == "repository path with a space":  # the default, relative base_path lands there
        moved = tmp_path / "my repo"
        shutil.copytree(repo, moved)
        repo, args = moved, []
    r = subprocess.run([sys.executable, "-m", "reconciler.cli", "plan", "demo", *args], cwd=repo, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "outputs.base_path" in r.stderr and "whitespace" in r.stderr, r.stderr
