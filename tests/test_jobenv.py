"""Shell lines done safely, list commands, job environments and compression (#13 items 5, 6, 3).

Unit checks on loading and rendering, then real passes on the local backend: bash runs the
batch script (setup lines included) and the task wrapper runs the command, as on Slurm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.container import container_argv
from reconciler.errors import ConfigError
from reconciler.spec.load import WorkTree, load, provenance
from reconciler.spec.shell import shell_syntax

from .conftest import git
from .test_loop_local import env_for, reconcile
from .test_wrapper import run_wrapper, write_manifest

SHELL_LINE = "mkdir -p $(dirname {output}) && gen --out {output} | tee log > {output}"


def set_command(repo: Path, command_yaml: str, extra_task: str = "") -> None:
    """Replace demo's task.command (a folded block) with ``command_yaml`` (one YAML value)."""
    demo = repo / "productions" / "demo.yaml"
    text = demo.read_text()
    start = text.index("\n  command: ") + 1
    end = text.index("  outputs:", start)
    demo.write_text(text[:start] + f"  command: {command_yaml}\n{extra_task}" + text[end:])


def command_line_of(repo: Path) -> int:
    return next(i for i, ln in enumerate((repo / "productions/demo.yaml").read_text().splitlines(), 1) if ln.startswith("  command:"))


@pytest.mark.parametrize(
    ("line", "found"),
    [
        ("a && b", "&&"), ("a; b", ";"), ("a | b", "|"), ("a > f", ">"), ("a < f", "<"), ("a &", "&"), ("a || b", "||"),
        ("a $(b)", "$("), ("a `b`", "`"), ("a $HOME", "$HOME"), ("a ${{HOME}}", "${HOME}"), ('a "$(b)"', "$("),
        ("a '$(b) | c > d'", None), ("a \\; b", None), ("a --x=1 {output} 'x&y'", None), ("a $ 5", None), ("a {output}>", ">"),
        ("a '{x}' \"{y}\"", None), ("a {{x}} $5", None),
    ],
)
def test_what_counts_as_shell_syntax(line: str, found: str | None) -> None:
    assert shell_syntax(line) == found


def test_a_shell_line_is_refused_at_validate_with_the_hint_at_task_command(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_command(repo, json.dumps(SHELL_LINE))
    assert main(["validate", "productions/demo.yaml", "--repo", str(repo)]) == 2
    err = capsys.readouterr().err
    assert f"productions/demo.yaml:{command_line_of(repo)}:3: task.command: '$(' is shell syntax" in err, err
    assert "add `shell: true` under task: to run it with bash (every substituted value is quoted)" in err
    assert "or write the command as a YAML list (one argument per item)" in err
    set_command(repo, json.dumps(SHELL_LINE), "  shell: true\n")  # the fix the hint names
    assert main(["validate", "productions/demo.yaml", "--repo", str(repo)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("line", ["gen \"{output}\"", "gen '{output}'", "gen \\{output}", "gen ${output}", "gen $'{output}'"])
def test_shell_refuses_a_placeholder_quoted_or_glued_to_a_backslash_or_dollar(repo: Path, capsys: pytest.CaptureFixture[str], line: str) -> None:
    """``\\{x}`` would eat the opening quote of the quoted value (``\\'a;touch p;#'`` runs
    touch), and ``${x}`` would have bash expand it: refused, as a placeholder in quotes is."""
    set_command(repo, json.dumps(line), "  shell: true\n")
    assert main(["validate", "productions/demo.yaml", "--repo", str(repo)]) == 2
    assert "task.command: a placeholder is inside quotes or right after a \\ or $" in capsys.readouterr().err


def test_shell_refuses_a_list(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_command(repo, '["gen", "{output}"]', "  shell: true\n")
    assert main(["validate", "productions/demo.yaml", "--repo", str(repo)]) == 2
    assert "shell: true runs one command line" in capsys.readouterr().err


def test_shell_values_are_quoted_and_the_directory_is_a_variable(repo: Path) -> None:
    set_command(repo, json.dumps("gen --n {catalog_params.n_galaxies} --at {production_dir} --py {python} {output} | cat"), "  shell: true\n")
    demo = repo / "productions/demo.yaml"
    demo.write_text(demo.read_text().replace("n_galaxies: 2000", "n_galaxies: \"$(touch x); 'q'\""))
    loaded = load(WorkTree(repo), "demo", repo_root=repo)
    task = loaded.expansion().tasks[0]
    from reconciler.spec.expand import Renderer
    from reconciler.spec.symbols import SYMBOLIC_DIR

    slow = Renderer(loaded.spec).argv(task.params, task.index, task.key, SYMBOLIC_DIR, task.outputs)
    assert slow[:4] == ("bash", "-euo", "pipefail", "-c")
    assert slow[4] == (
        "gen --n '$(touch x); '\"'\"'q'\"'\"'' --at \"${RECONCILER_PRODUCTION_DIR}\" --py \"${RECONCILER_PYTHON}\" "
        "\"${RECONCILER_PRODUCTION_DIR}\"/catalogs/r0000/mock_z0.500.hdf5 | cat"
    )
    # the fast (compiled) renderer and the slow one agree, so the fingerprint is the same either way
    fast = Renderer(loaded.spec).compiled()
    assert fast is not None and fast(0, 0.5)[1] == slow


def test_list_command_is_argv_each_item_a_template_nothing_split(repo: Path) -> None:
    set_command(repo, '["{python}", "-c", "import sys; print(sys.argv)", "a && b > c", "{output}", "{compression}"]')
    loaded = load(WorkTree(repo), "demo", repo_root=repo)
    task = loaded.expansion().tasks[0]
    from reconciler.spec.expand import Renderer

    argv = Renderer(loaded.spec).argv(task.params, task.index, task.key, "${PRODUCTION_DIR}", task.outputs)
    assert argv == ("${PYTHON}", "-c", "import sys; print(sys.argv)", "a && b > c", "${PRODUCTION_DIR}/catalogs/r0000/mock_z0.500.hdf5", "none")


def fingerprint(repo: Path, *overrides: tuple[tuple[str, ...], object]) -> str:
    return load(WorkTree(repo), "demo", overrides=list(overrides), repo_root=repo).expansion().tasks[0].fingerprint


def test_a_line_and_the_same_command_as_a_list_have_one_fingerprint(repo: Path) -> None:
    """Writing a command as a list instead of a line reruns nothing."""
    set_command(repo, json.dumps("gen --realization {realization} --out {output}"))
    line = fingerprint(repo)
    set_command(repo, '["gen", "--realization", "{realization}", "--out", "{output}"]')
    assert fingerprint(repo) == line
    set_command(repo, '["gen", "--realization", "{realization}", "--output", "{output}"]')
    assert fingerprint(repo) != line


def test_fingerprint_covers_shell_compression_setup_and_container_but_not_export_env(repo: Path) -> None:
    set_command(repo, json.dumps("gen {output}"))
    base = fingerprint(repo)
    set_command(repo, '["gen", "{output}"]')
    assert fingerprint(repo) == base  # the same argv, written as a list: nothing to rerun
    set_command(repo, json.dumps("gen {output}"), "  shell: true\n")
    assert fingerprint(repo) != base
    set_command(repo, json.dumps("gen {output}"))
    assert fingerprint(repo, (("outputs", "compression"), "gzip")) != base
    local = repo / "defaults/local.yaml"
    plain = local.read_text()
    seen = {base}
    for env in (
        "environment:\n  export_env: [LD_LIBRARY_PATH]\n",
        "environment:\n  setup: ['module load x']\n",
        "environment:\n  container: {runtime: apptainer, image: /img/a.sif}\n",
        "environment:\n  container: {runtime: apptainer, image: /img/b.sif}\n",
        "environment:\n  container: {runtime: none}\n",
    ):
        local.write_text(plain + env)
        seen.add(fingerprint(repo))
    # export_env and `runtime: none` change nothing; setup and each image do
    assert len(seen) == 4


def test_environment_merges_machine_job_type_and_production_with_sources(repo: Path) -> None:
    local = repo / "defaults/local.yaml"
    local.write_text(
        local.read_text().replace("job_type_overrides:\n  cpu_intensive:\n", "job_type_overrides:\n  cpu_intensive:\n    setup: ['module load cpu']\n    container: {runtime: shifter, image: 'docker:org/cpu:1'}\n")
        + "environment:\n  setup: ['module load python']\n  export_env: [LD_LIBRARY_PATH, HOME]\n  container: {runtime: podman-hpc, image: org/site:1}\n"
    )
    demo = repo / "productions/demo.yaml"
    demo.write_text(demo.read_text() + "environment:\n  setup: ['conda activate covmocks']\n  export_env: [LD_LIBRARY_PATH, HDF5_USE_FILE_LOCKING]\n")
    loaded = load(WorkTree(repo), "demo", repo_root=repo)
    env = loaded.spec.environment
    assert env.setup == ["module load python", "module load cpu", "conda activate covmocks"]
    assert env.export_env == ["LD_LIBRARY_PATH", "HOME", "HDF5_USE_FILE_LOCKING"]
    assert env.container is not None and (env.container.runtime, env.container.image) == ("shifter", "docker:org/cpu:1")  # job type beats machine
    assert loaded.spec.resources.cpus_per_task == 1  # the job type's other keys still land where they did
    rows = {k: src for k, _v, src in provenance(loaded)}
    assert rows["environment.setup"].startswith("defaults/local.yaml:") and " + productions/demo.yaml:" in rows["environment.setup"]
    assert rows["environment.container.image"].startswith("defaults/local.yaml:")
    demo.write_text(demo.read_text().replace("  export_env: [LD", "  container: {runtime: none}\n  export_env: [LD"))
    assert load(WorkTree(repo), "demo", repo_root=repo).spec.environment.container is None  # the production turns it off


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("environment:\n  container: {runtime: podman-hpc, image: 'org/img:1 --privileged'}\n", "environment.container.image"),
        ("environment:\n  container: {runtime: apptainer}\n", "needs an image"),
        ("environment:\n  export_env: ['LD PATH']\n", "environment.export_env[0]"),
        ("environment:\n  setup: ['']\n", "environment.setup[0]"),
        ("environment:\n  container: {runtime: podman-hpc, image: 'org/img:1'}\noutputs:\n  base_path: 'work/a:b'\n", "podman-hpc cannot bind the production directory"),
    ],
)
def test_bad_environment_is_refused_at_its_line(repo: Path, section: str, message: str) -> None:
    demo = repo / "productions/demo.yaml"
    lines = len(demo.read_text().splitlines())
    demo.write_text(demo.read_text() + section)
    with pytest.raises(ConfigError) as info:
        load(WorkTree(repo), "demo", repo_root=repo)
    text = str(info.value)
    assert message in text and f"productions/demo.yaml:{lines + 2}:" in text, text


def test_container_prefix_per_runtime() -> None:
    assert container_argv("podman-hpc", "org/img:1", "/p/it's", ["B", "A", "B"]) == [
        "podman-hpc", "run", "--rm", "-v", "/p/it's:/p/it's", "-w", "/p/it's", "-e", "A", "-e", "B", "org/img:1",
    ]
    assert container_argv("shifter", "docker:org/img:1", "/p", []) == ["shifter", "--image=docker:org/img:1"]
    assert container_argv("apptainer", "/i.sif", "/p", []) == ["apptainer", "exec", "--bind", "/p", "/i.sif"]
    with pytest.raises(ValueError, match="contains ':'"):
        container_argv("apptainer", "/i.sif", "/p:x", [])


def test_the_wrapper_runs_the_command_in_the_container(tmp_path: Path) -> None:
    """A stand-in ``apptainer`` on PATH records its argv and runs the command after the image."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apptainer"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$RECONCILER_PRODUCTION_DIR/runtime-argv"\nshift 4\nexec "$@"\n')
    fake.chmod(0o755)
    write = "import os; open(os.environ['RECONCILER_PRODUCTION_DIR'] + '/out', 'w').write(os.environ['RECONCILER_COMPRESSION'])"
    manifest, pdir = write_manifest(tmp_path, [sys.executable, "-c", write], outputs=["out"])
    doc = json.loads(manifest.read_text())
    doc.update(container={"runtime": "apptainer", "image": "docker://org/img:1"}, compression="lzf")
    manifest.write_text(json.dumps(doc))
    r = subprocess.run(
        [sys.executable, "-m", "reconciler.wrapper", str(manifest), "7"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert r.returncode == 0, r.stderr
    assert (pdir / "runtime-argv").read_text().splitlines()[:4] == ["exec", "--bind", str(pdir), "docker://org/img:1"]
    assert (pdir / "out").read_text() == "lzf"
    doc["container"] = {"runtime": "podman-hpc", "image": "org/img:1"}  # not installed here: a command that cannot run
    manifest.write_text(json.dumps(doc))
    r = run_wrapper(manifest)
    assert r.returncode == 127 and "command not found: podman-hpc" in r.stderr
    # podman passes only the variables it is told: environment.export_env (set here) among them
    podman = bin_dir / "podman-hpc"
    podman.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$RECONCILER_PRODUCTION_DIR/runtime-argv"\n')
    podman.chmod(0o755)
    (pdir / "out").unlink()
    doc["container"] = {"runtime": "podman-hpc", "image": "org/img:1", "export_env": ["LD_LIBRARY_PATH", "NOT_SET_HERE"]}
    manifest.write_text(json.dumps(doc))
    subprocess.run(
        [sys.executable, "-m", "reconciler.wrapper", str(manifest), "7"], capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if k != "NOT_SET_HERE"}, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LD_LIBRARY_PATH": "/opt/lib"},
    )
    podman_argv = (pdir / "runtime-argv").read_text().splitlines()
    assert ["-e", "LD_LIBRARY_PATH"] == podman_argv[podman_argv.index("LD_LIBRARY_PATH") - 1 : podman_argv.index("LD_LIBRARY_PATH") + 1]
    assert "NOT_SET_HERE" not in podman_argv and "RECONCILER_COMPRESSION" in podman_argv


def test_shell_production_runs_to_completion_and_no_value_executes(repo: Path, tmp_path: Path) -> None:
    """shell: true with a pipe and a redirect, setup lines and export_env from the machine, in a
    production directory holding a single quote; catalog parameters that would run commands in
    any unquoted shell reach the command as text."""
    probe = tmp_path / "probe"
    local = repo / "defaults/local.yaml"
    local.write_text(
        local.read_text()
        + "environment:\n"
        + "  setup: ['export JOBENV_SETUP=from-setup', 'test -z \"$JOBENV_NEVER_SET\"']\n"  # would fail under set -u
        + "  export_env: [JOBENV_EXPORTED]\n"
    )
    demo = repo / "productions/demo.yaml"
    text = demo.read_text().replace("count: 8", "count: 2").replace("redshifts: [0.5, 1.0, 1.5, 2.0]", "redshifts: [0.5]")
    text = text.replace("n_galaxies: 2000", f"n_galaxies: {json.dumps(f'$(touch {probe}-sub)')}")
    text = text.replace("fail_once_every: 11", f"fail_once_every: {json.dumps(f'`touch {probe}-tick`;x')}")
    text = text.replace("    kind: hdf5\n    datasets: [galaxies/ra, galaxies/dec, galaxies/mag]\n", "    kind: exists\n")
    text = text.replace("  compression: none", "") + "\noutputs:\n  compression: gzip\n"
    demo.write_text(text)
    set_command(
        repo,
        json.dumps(
            "mkdir -p $(dirname {output}) && echo {catalog_params.n_galaxies} {catalog_params.fail_once_every} {compression}"
            " $RECONCILER_COMPRESSION $JOBENV_SETUP $JOBENV_EXPORTED {production_dir} | sed 's/^/got: /' > {output}"
        ),
        "  shell: true\n",
    )
    git(repo, "commit", "-qam", "a shell production")
    base = tmp_path / "it's"
    env = env_for(tmp_path, JOBENV_EXPORTED="exported-value")
    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5", "--set", f"outputs.base_path={base}")
    assert r.returncode == 0, r.stdout + r.stderr
    pdir = base / "demo"
    out = (pdir / "catalogs/r0000/mock_z0.500.hdf5").read_text()
    assert out == f"got: $(touch {probe}-sub) `touch {probe}-tick`;x gzip gzip from-setup exported-value {pdir}\n"
    assert (pdir / "catalogs/r0001/mock_z0.500.hdf5").is_file()
    assert not list(tmp_path.glob("probe*")), "a catalog parameter was executed"
    script = next((pdir / "logs").glob("batch_*.sh")).read_text()
    assert "\nset +u\nexport JOBENV_SETUP=from-setup\n" in script and ",SLURM_CONF,JOBENV_EXPORTED\n" in script
