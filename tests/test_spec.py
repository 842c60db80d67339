"""Desired state: loading, errors, precedence, expansion properties, schemas, provenance tags."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.cli import main
from reconciler.errors import ConfigError
from reconciler.schema import SCHEMAS, render
from reconciler.spec.expand import count_tasks, expand
from reconciler.spec.load import WorkTree, load, load_file, provenance
from reconciler.spec.models import Production
from reconciler.spec.yamlsrc import parse

from .conftest import ROOT, git

BAD = sorted((ROOT / "tests" / "data" / "bad").glob("*.yaml"))


def test_shipped_productions_validate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--repo", str(ROOT)]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "test_basic", "alpha"):
        assert f"ok      productions/{name}.yaml" in out


def test_alpha_validates_on_nersc() -> None:
    assert main(["validate", "--repo", str(ROOT), "--machine", "nersc", str(ROOT / "productions/alpha.yaml")]) == 0


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_corpus_is_rejected_with_exact_location(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect = path.read_text().splitlines()[0].removeprefix("# expect: ")
    started = time.perf_counter()
    code = main(["validate", "--repo", str(ROOT), str(path)])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2
    m = re.fullmatch(r"(\d+):(\d+): (?:([\w.\[\]]+): )?(.*)", expect)
    assert m, expect
    line, col, field, message = m.groups()
    prefix = f"{path}:{line}:{col}: {field}:" if field else f"{path}:{line}:{col}: "
    located = [ln for ln in err.splitlines() if prefix in ln]
    assert located and message.strip() in located[0], err
    assert elapsed < 1.0


def test_bad_corpus_covers_the_issue_list() -> None:
    names = {p.stem for p in BAD}
    assert {"duplicate_key", "unknown_field", "missing_reason", "path_escape", "unknown_placeholder", "alias_bomb", "newline_in_resource", "bad_name"} <= names


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "productions").mkdir()
    (tmp_path / "defaults").mkdir()
    (tmp_path / "defaults/local.yaml").write_text((ROOT / "defaults/local.yaml").read_text())
    (tmp_path / "productions/many.yaml").write_text(
        "production:\n  name: many\n  colour: red\nresources:\n  memory_gb: -1\n  partition: 'a b'\n"
        "science:\n  redshifts: [0.5]\n  realizations: {count: 1}\ntask:\n  command: x\n  outputs: [a]\n"
    )
    with pytest.raises(ConfigError) as info:
        load(WorkTree(tmp_path), "many")
    fields = sorted(p.field for p in info.value.problems)
    assert fields == ["production.colour", "resources.memory_gb", "resources.partition"]
    assert [p.line for p in sorted(info.value.problems, key=lambda p: p.line)] == [3, 5, 6]


def test_huge_string_is_refused_fast(tmp_path: Path) -> None:
    text = "production:\n  name: big\n  description: '" + "x" * 10_000_000 + "'\n"
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        parse(text, "big.yaml")
    assert time.perf_counter() - started < 1.0
    assert "larger than" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse("a: '" + "x" * 20_000 + "'\n", "s.yaml")
    assert "s.yaml:1:4: a: value is 20000 characters long" in str(info.value)


def test_production_memory_wins_over_job_type_override() -> None:
    loaded = load(WorkTree(ROOT), "alpha", "nersc")
    assert loaded.spec.resources.memory_gb == 128
    assert loaded.spec.resources.partition == "gpu"  # from the gpu_intensive override
    assert loaded.spec.execution.timeout_hours == 4.0  # the production's own, over the override's 6
    rows = {p: (v, s) for p, v, s in provenance(loaded)}
    assert rows["resources.memory_gb"] == (128.0, "productions/alpha.yaml:29:3")
    assert rows["resources.partition"][1].startswith("defaults/nersc.yaml:")
    assert rows["execution.prune"] == (False, "default")


def test_command_line_set_wins() -> None:
    loaded = load(WorkTree(ROOT), "alpha", "nersc", overrides=[(("resources", "memory_gb"), 64)])
    assert loaded.spec.resources.memory_gb == 64
    assert dict((p, s) for p, _, s in provenance(loaded))["resources.memory_gb"] == "command line"


def test_show_alpha_on_nersc(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "alpha", "--machine", "nersc", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"resources\.memory_gb\s+128\.0\s+# productions/alpha\.yaml:29:3", out), out
    assert main(["show", "alpha", "--machine", "nersc", "--repo", str(repo), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    mem = [v for v in data["values"] if v["path"] == "resources.memory_gb"][0]
    assert mem == {"path": "resources.memory_gb", "value": 128.0, "source": "productions/alpha.yaml:29:3"}


def test_show_excluded_reason(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "test_basic", "--repo", str(repo)]) == 0
    assert "r0002/z1.000: example exclusion: known-bad snapshot" in capsys.readouterr().out


def test_desired_state_is_read_from_git_not_the_working_tree(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = repo / "productions/demo.yaml"
    demo.write_text(demo.read_text().replace("count: 8", "count: 9"))
    assert main(["init", "demo", "--repo", str(repo)]) == 0  # uncommitted edits never stop a verb that acts
    assert "ignored uncommitted changes: productions/demo.yaml" in capsys.readouterr().err
    assert main(["show", "demo", "--repo", str(repo), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == 32  # committed: 8 x 4
    assert main(["show", "demo", "--repo", str(repo), "--json", "--allow-dirty"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == 36


def test_init_twice_creates_one_tag(repo: Path) -> None:
    assert main(["init", "demo", "--repo", str(repo)]) == 0
    assert main(["init", "demo", "--repo", str(repo)]) == 0
    tags = git(repo, "tag", "-l", "production/*").split()
    assert len(tags) == 1 and re.fullmatch(r"production/demo_v1\.0_\d{8}_\d{6}", tags[0])
    msg = git(repo, "tag", "-l", "--format=%(contents)", tags[0])
    meta = json.loads(msg[msg.index("{") :])
    assert meta["commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert meta["working_tree"] == "clean" and len(meta["config_hash"]) == 64 and "python" in meta["versions"]
    pdir = repo / "work/productions/demo"
    for sub in ("catalogs", "metadata", "logs", "qa"):
        assert (pdir / sub).is_dir()
    assert json.loads((pdir / "metadata/version_info.json").read_text())["tag"] == tags[0]
    assert "name: demo" in (pdir / "metadata/production_config.yaml").read_text()
    # a changed configuration makes a new tag; a dirty one is marked
    demo = repo / "productions/demo.yaml"
    demo.write_text(demo.read_text().replace("count: 8", "count: 9"))
    assert main(["init", "demo", "--repo", str(repo), "--allow-dirty"]) == 0
    tags = git(repo, "tag", "-l", "production/*").split()
    assert len(tags) == 2 and any("_allow_dirty_" in t for t in tags)


def test_init_at_a_ref_tags_that_commit_and_tags_of_one_second_coexist(repo: Path) -> None:
    from datetime import UTC, datetime

    from reconciler import gitops

    first = git(repo, "rev-parse", "HEAD").strip()
    demo = repo / "productions/demo.yaml"
    demo.write_text(demo.read_text().replace("count: 8", "count: 9"))
    git(repo, "commit", "-qam", "nine realizations")
    assert main(["init", "demo", "--repo", str(repo), "--ref", first]) == 0
    (tag,) = git(repo, "tag", "-l", "production/*").split()
    assert git(repo, "rev-list", "-n", "1", tag).strip() == first  # not HEAD
    msg = git(repo, "tag", "-l", "--format=%(contents)", tag)
    assert json.loads(msg[msg.index("{") :])["commit"] == first
    assert json.loads((repo / "work/productions/demo/metadata/version_info.json").read_text())["commit"] == first
    # two configurations tagged within the same second: the second gets a suffix, no crash
    repo_ = gitops.open_repo(repo)
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    names = []
    for ref in (first, "HEAD"):
        loaded = load(gitops.GitTree(repo_, ref), "demo", repo_root=repo)
        names.append(gitops.ensure_tag(repo_, loaded, "v9", [], commit=repo_.commit(ref).hexsha, now=now))
    assert names == [("production/demo_v9_20260102_030405", True), ("production/demo_v9_20260102_030405_2", True)]


def test_committed_schemas_are_current() -> None:
    for name, model in SCHEMAS.items():
        committed = (ROOT / "schemas" / name).read_text()
        assert committed == render(model), f"schemas/{name} is stale: run `reconcile schema`"


def test_cli_help_has_examples() -> None:
    for verb in ("validate", "list", "show", "schema", "init"):
        out = subprocess.run([sys.executable, "-m", "reconciler.cli", verb, "--help"], capture_output=True, text=True, check=True).stdout
        assert "example:" in out


# ---------------------------------------------------------------- expansion properties


def _production(realizations: dict, redshifts: list[float], axes: dict | None = None, version: str = "v1", command: str = "gen {realization} {redshift:.3f}") -> Production:
    return Production.model_validate(
        {
            "production": {"name": "p", "version": version},
            "science": {"redshifts": redshifts, "realizations": realizations, "catalog_params": {"m": 25.0}},
            # every axis in the output path: two tasks writing one path is an error (task.outputs)
            "task": {"command": command, "outputs": ["c/r{realization:04d}/z{redshift:.3f}" + "".join(f"_{{{a}}}" for a in sorted(axes or {})) + ".h5"], "axes": axes or {}},
        }
    )


redshift_lists = st.lists(st.integers(1, 3000).map(lambda i: i / 1000), min_size=1, max_size=6, unique=True)


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(0, 5000),
    count=st.integers(0, 12),
    step=st.integers(1, 3),
    redshifts=redshift_lists,
    n_excl=st.integers(0, 3),
    seeds=st.lists(st.integers(0, 9), min_size=0, max_size=3, unique=True),
)
def test_expansion_count_keys_and_indices(start: int, count: int, step: int, redshifts: list[float], n_excl: int, seeds: list[int]) -> None:
    values = list(range(start, start + count * step, step))
    excl = [{"realization": r, "reason": "bad"} for r in values[:n_excl]]
    axes = {"seed": seeds} if seeds else {}
    prod = _production({"start": start, "count": count, "step": step, "exclude": excl}, redshifts, axes)
    exp = expand(prod)
    assert count_tasks(prod) == len(exp.tasks)  # what `list` shows, without expanding
    per_realization = len(redshifts) * max(1, len(seeds))
    assert len(exp.tasks) == (len(values) - len(excl)) * per_realization
    assert exp.total == len(values) * per_realization
    keys = [t.key for t in exp.tasks]
    assert len(set(keys)) == len(keys)
    assert [t.index for t in exp.tasks] == sorted(t.index for t in exp.tasks)
    # excluding tasks never renumbers the others
    full = expand(_production({"start": start, "count": count, "step": step}, redshifts, axes))
    by_key = {t.key: t.index for t in full.tasks}
    assert all(by_key[t.key] == t.index for t in exp.tasks)


@settings(max_examples=40, deadline=None)
@given(redshifts=redshift_lists, data=st.data())
def test_expansion_ignores_yaml_order_and_comments(redshifts: list[float], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(redshifts))
    sections = [
        "production:\n  name: p\n  version: v1\n",
        "science:\n  realizations: {count: 3, start: 7}\n  redshifts: " + json.dumps(list(shuffled)) + "\n",
        "task:\n  outputs: ['o/{realization}_{redshift}.h5']\n  command: gen {realization}\n",
    ]
    order = data.draw(st.permutations(range(3)))
    text_a = "".join(sections)
    text_b = "# a comment\n" + "".join(sections[i] + "# another\n" for i in order)
    # the redshifts in their drawn order, and the mapping's keys the other way round
    unshuffled = "science:\n  redshifts: " + json.dumps(redshifts) + "\n  realizations: {start: 7, count: 3}\n"
    text_c = sections[0] + unshuffled + sections[2]
    a = expand(Production.model_validate(parse(text_a, "a").data))
    b = expand(Production.model_validate(parse(text_b, "b").data))
    c = expand(Production.model_validate(parse(text_c, "c").data))
    assert [(t.index, t.key, t.fingerprint) for t in a.tasks] == [(t.index, t.key, t.fingerprint) for t in b.tasks]
    # the canonical order sorts redshifts, so the list's order does not matter either
    assert [(t.index, t.key, t.fingerprint) for t in c.tasks] == [(t.index, t.key, t.fingerprint) for t in a.tasks]
    assert len(a.tasks) == 3 * len(redshifts)


CHANGES: dict[str, tuple[dict, dict, bool]] = {
    "version": ({"count": 3}, dict(version="v2"), True),
    "command": ({"count": 3}, dict(command="gen {realization} {redshift:.4f}"), True),
    # more realizations: new tasks, and the existing ones keep their fingerprints
    "unrelated realizations": ({"count": 5}, dict(), False),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_fingerprint_changes_exactly_with_result_deciding_fields(change: str) -> None:
    base = expand(_production({"count": 3}, [0.5, 1.0]))
    realizations, kwargs, changes = CHANGES[change]
    other = expand(_production(realizations, [0.5, 1.0], **kwargs))
    fp = {t.key: t.fingerprint for t in base.tasks}
    shared = [t for t in other.tasks if t.key in fp]
    assert len(shared) == len(base.tasks) == 6
    assert all((fp[t.key] != t.fingerprint) is changes for t in shared)


def test_fingerprint_ignores_resources_but_not_env_or_validator() -> None:
    def fps(extra: dict) -> list[str]:
        d = {
            "production": {"name": "p"},
            "science": {"redshifts": [0.5], "realizations": {"count": 2}},
            "task": {"command": "gen {realization}", "outputs": ["r{realization}"]},
        }
        for section, values in extra.items():
            d.setdefault(section, {}).update(values)
        return [t.fingerprint for t in expand(Production.model_validate(d)).tasks]

    base = fps({})
    assert fps({"resources": {"memory_gb": 99}}) == base
    assert fps({"execution": {"batch_size": 7}}) == base
    assert fps({"task": {"env": {"X": "1"}}}) != base
    assert fps({"task": {"validator": {"kind": "hdf5"}}}) != base
    # each task's fingerprint differs from its neighbours': parameters decide results
    assert len(set(base)) == len(base)


def test_adding_a_redshift_keeps_keys_and_fingerprints_of_existing_tasks() -> None:
    a = {t.key: t.fingerprint for t in expand(_production({"count": 4}, [0.5, 1.0])).tasks}
    b = {t.key: t.fingerprint for t in expand(_production({"count": 4}, [0.5, 0.75, 1.0])).tasks}
    assert set(a) < set(b) and all(b[k] == v for k, v in a.items())
    assert sorted(set(b) - set(a)) == [f"r{r:04d}/z0.750" for r in range(4)]


def test_load_file_rejects_name_mismatch(tmp_path: Path) -> None:
    (tmp_path / "productions").mkdir()
    (tmp_path / "defaults").mkdir()
    (tmp_path / "defaults/local.yaml").write_text((ROOT / "defaults/local.yaml").read_text())
    (tmp_path / "productions/x.yaml").write_text("production: {name: y}\nscience: {redshifts: [1], realizations: {}}\ntask: {command: a, outputs: [b]}\n")
    with pytest.raises(ConfigError, match="does not match the file name"):
        load_file(WorkTree(tmp_path), "productions/x.yaml")


def test_two_tasks_writing_one_output_path_is_a_validate_error_naming_both(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = repo / "productions/demo.yaml"
    demo.write_text(demo.read_text().replace("catalogs/r{realization:04d}/mock_z{redshift:.3f}.hdf5", "catalogs/r{realization:04d}/mock.hdf5"))
    assert main(["validate", "productions/demo.yaml", "--repo", str(repo)]) == 2
    err = capsys.readouterr().err
    assert "productions/demo.yaml:38:3: task.outputs: tasks r0000/z0.500 and r0000/z1.000 both write 'catalogs/r0000/mock.hdf5'" in err
    demo.write_text(demo.read_text().replace("    - catalogs/r{realization:04d}/mock.hdf5", "    - catalogs/r{realization:04d}/mock_z{redshift:.3f}.hdf5\n    - catalogs/r{realization:04d}/mock_z{redshift:.3f}.hdf5"))
    assert main(["validate", "productions/demo.yaml", "--repo", str(repo)]) == 2
    assert "lists the output 'catalogs/r0000/mock_z0.500.hdf5' twice" in capsys.readouterr().err


def test_list_counts_tasks_without_expanding_and_agrees_with_the_expansion(repo: Path) -> None:
    from reconciler.spec.expand import count_tasks
    from reconciler.spec.load import WorkTree, load

    demo = repo / "productions/demo.yaml"
    text = demo.read_text()
    variants = {
        "plain": text,
        "excluded": text.replace(
            "    step: 1\n",
            "    step: 1\n    exclude:\n      - {realization: 2, reason: bad seed}\n      - {realization: 3, redshift: 1.0, reason: bad snapshot}\n"
            "      - {realization: 2, redshift: 0.5, reason: also within a whole exclusion}\n      - {realization: 3, redshift: 1.0, reason: twice}\n",
        ),
    }
    variants["axes"] = variants["excluded"].replace("  env:\n", "  axes:\n    box: [1, 2, 3]\n  env:\n").replace("--output {output}", "--output {output} --box {box}").replace(
        "mock_z{redshift:.3f}.hdf5", "mock_z{redshift:.3f}_b{box}.hdf5")
    for name, body in variants.items():
        demo.write_text(body)
        loaded = load(WorkTree(repo), "demo", repo_root=repo)
        assert count_tasks(loaded.spec) == len(loaded.expansion().tasks), name
    assert count_tasks(loaded.spec) == (8 * 4 - 4 - 1) * 3
    for other in ("test_basic",):
        loaded = load(WorkTree(repo), other, repo_root=repo)
        assert count_tasks(loaded.spec) == len(loaded.expansion().tasks) > 0
