"""Stages in desired state: keys, members (map, fan-in, fan-out), task order, exclusions that
carry along `needs`, fingerprints that cascade downstream, per-stage settings, and errors located
at the stage's lines. Pure loading and expansion: no scheduler."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ConfigError
from reconciler.spec.expand import SYMBOLIC_DIR, Renderer
from reconciler.spec.load import Loaded, WorkTree, load

CAMPAIGN = """\
production: {name: camp, version: v1}
science:
  redshifts: [0.5, 1.0]
  realizations:
    start: 0
    count: 3
    exclude: [{realization: 1, redshift: 1.0, reason: bad initial conditions}]
execution: {batch_size: 4, timeout_hours: 2.0}
resources: {memory_gb: 4}
stages:
  generate:
    command: "gen --r {realization} --z {redshift} --out {output}"
    outputs: ["catalogs/r{realization:04d}/mock_z{redshift:.3f}.h5"]
  measure:
    needs: [generate]
    command: "pk {needs.generate} --out {output}"
    outputs: ["pk/r{realization:04d}/pk_z{redshift:.3f}.npy"]
    execution: {timeout_hours: 0.5}
    job_type: big
  covariance:
    over: [redshift]
    needs: [measure]
    require: {min_fraction: 0.5}
    command: "cov --list {needs.measure} --out {output}"
    outputs: ["cov/cov_z{redshift:.3f}.npy"]
"""

MACHINE = """\
resources: {account: m1, memory_gb: 2}
job_type_overrides:
  big: {memory_gb: 64, timeout_hours: 5.0}
"""


def _load(tmp_path: Path, text: str = CAMPAIGN, machine: str = MACHINE) -> Loaded:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "productions").mkdir(exist_ok=True)
    (tmp_path / "defaults").mkdir(exist_ok=True)
    (tmp_path / "productions" / "camp.yaml").write_text(text)
    (tmp_path / "defaults" / "local.yaml").write_text(machine)
    return load(WorkTree(tmp_path), "camp", "local", repo_root=tmp_path)


def _problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return str(info.value)


def test_stages_expand_to_keys_members_and_an_order_that_finishes_whole_groups_first(tmp_path: Path) -> None:
    ex = _load(tmp_path).expansion()
    assert [s.name for s in ex.stages] == ["generate", "measure", "covariance"]
    gen, meas, cov = ex.stages
    # the covariance fans in per redshift, so its upstream stages are numbered redshift-major
    assert [t.key for t in gen.tasks] == ["generate/r0000/z0.500", "generate/r0001/z0.500", "generate/r0002/z0.500", "generate/r0000/z1.000", "generate/r0002/z1.000"]
    assert [t.index for t in gen.tasks] == [0, 1, 2, 3, 5] and gen.total == 6
    # an exclusion applies in every stage that has its axes, and a map's task goes with its member
    assert [e.key for e in gen.excluded] == ["generate/r0001/z1.000"]
    assert [e.key for e in meas.excluded] == ["measure/r0001/z1.000"]
    m = ex.by_key["measure/r0002/z1.000"]
    assert [(n.stage, n.members, n.fan_in) for n in m.needs] == [("generate", ("generate/r0002/z1.000",), False)]
    c = ex.by_key["covariance/z1.000"]
    assert [(n.stage, n.members, n.fan_in) for n in c.needs] == [("measure", ("measure/r0000/z1.000", "measure/r0002/z1.000"), True)]
    assert cov.axes == ("redshift",) and cov.min_fraction == 0.5 and [t.key for t in cov.tasks] == ["covariance/z0.500", "covariance/z1.000"]
    # {needs.S}: a map names its member's output, a fan-in the list file the wrapper writes
    r = Renderer(meas.spec, where="stages.measure", over=meas.axes, needs=meas.needs)
    assert r.argv(m.params, m.index, m.key, SYMBOLIC_DIR, m.outputs, {"generate": "/p/catalogs/r0002/mock_z1.000.h5"})[1] == "/p/catalogs/r0002/mock_z1.000.h5"


def test_a_stage_has_its_own_settings_over_the_productions_and_its_job_types(tmp_path: Path) -> None:
    loaded = _load(tmp_path)
    gen, meas = loaded.stage_spec("generate"), loaded.stage_spec("measure")
    assert gen.execution.timeout_hours == 2.0 and gen.resources.memory_gb == 4 and gen.resources.account == "m1"
    # the stage's job type beats the machine, the production's own value beats the job type, the stage's own beats both
    assert meas.execution.timeout_hours == 0.5 and meas.resources.memory_gb == 4 and meas.execution.job_type == "big"
    assert loaded.stage_spec("covariance").execution.batch_size == 4


def test_a_change_upstream_makes_exactly_the_tasks_downstream_of_it_stale(tmp_path: Path) -> None:
    before = {t.key: t.fingerprint for t in _load(tmp_path).expansion().tasks}

    def changed(old: str, new: str) -> set[str]:
        text = CAMPAIGN.replace(old, new)
        assert text != CAMPAIGN
        after = {t.key: t.fingerprint for t in _load(tmp_path, text).expansion().tasks}
        assert after.keys() == before.keys()
        return {k.split("/")[0] for k in after if after[k] != before[k]}

    assert changed('"pk {needs.generate}', '"pk --v2 {needs.generate}') == {"measure", "covariance"}
    assert changed('"cov --list', '"cov --shrink --list') == {"covariance"}
    assert changed('"gen --r', '"gen2 --r') == {"generate", "measure", "covariance"}
    # only the changed realization's chain: excluding a member changes its aggregate, nothing else
    text = CAMPAIGN.replace("[{realization: 1, redshift: 1.0", "[{realization: 2, redshift: 0.5, reason: x}, {realization: 1, redshift: 1.0")
    after = {t.key: t.fingerprint for t in _load(tmp_path, text).expansion().tasks}
    assert {k for k in before if k not in after} == {"generate/r0002/z0.500", "measure/r0002/z0.500"}
    assert {k for k in after if after[k] != before[k]} == {"covariance/z0.500"}


def test_a_fan_out_names_its_one_member_and_a_task_without_members_is_excluded(tmp_path: Path) -> None:
    text = CAMPAIGN.replace("  generate:\n", (
        "  prepare:\n"
        "    over: [redshift]\n"
        "    command: \"prep --z {redshift} --out {output}\"\n"
        "    outputs: [\"prep/z{redshift:.3f}.dat\"]\n"
        "  generate:\n"
        "    needs: [prepare]\n"
    )).replace('"gen --r {realization}', '"gen --prep {needs.prepare} --r {realization}')
    text = text.replace("exclude: [{realization: 1, redshift: 1.0, reason: bad initial conditions}]", (
        "exclude: [{realization: 0, redshift: 1.0, reason: a}, {realization: 1, redshift: 1.0, reason: b}, {realization: 2, redshift: 1.0, reason: c}]"
    ))
    ex = _load(tmp_path, text).expansion()
    g = ex.by_key["generate/r0001/z0.500"]
    assert [(n.stage, n.members, n.fan_in) for n in g.needs] == [("prepare", ("prepare/z0.500",), False)]
    assert [t.key for t in ex.stages[0].tasks] == ["prepare/z0.500", "prepare/z1.000"]
    excluded = {e.key: e.reason for e in ex.excluded}
    assert excluded["covariance/z1.000"] == "every member of it in measure is excluded"
    assert "covariance/z1.000" not in ex.by_key


def test_stage_errors_are_located_at_the_stage_in_one_round(tmp_path: Path) -> None:
    text = (
        CAMPAIGN.replace("needs: [measure]", "needs: [measure, nothing]")
        .replace("{needs.generate}", "{needs.covariance}")
        .replace("job_type: big", "job_type: huge")
    )
    out = _problems(tmp_path, text)
    assert "stages.covariance.needs: no stage 'nothing' in this production" in out, out
    assert "productions/camp.yaml:" in out


def test_templates_and_job_types_of_a_stage_are_checked_at_its_lines(tmp_path: Path) -> None:
    text = CAMPAIGN.replace("{needs.generate}", "{needs.covariance}").replace("job_type: big", "job_type: huge")
    out = _problems(tmp_path, text)
    line_of = {n: i + 1 for i, line in enumerate(text.splitlines()) for n in ("needs.covariance", "job_type: huge") if n in line}
    assert f"productions/camp.yaml:{line_of['job_type: huge']}:" in out and "stages.measure.job_type: unknown job type 'huge'" in out, out
    assert "stages.measure.command: unknown placeholder {needs.covariance} (this stage needs: generate)" in out, out


def test_a_cycle_and_task_beside_stages_are_refused(tmp_path: Path) -> None:
    out = _problems(tmp_path, CAMPAIGN.replace("  generate:\n", "  generate:\n    needs: [covariance]\n"))
    assert "form a cycle" in out, out
    out = _problems(tmp_path, CAMPAIGN + "task:\n  command: gen {output}\n  outputs: [\"x/{realization}_{redshift}\"]\n")
    assert "give `task:` (one stage) or `stages:` (a campaign), not both" in out, out


def test_diff_counts_added_removed_and_stale_tasks_per_stage(tmp_path: Path) -> None:
    from reconciler.diff import compare, render_text

    old = _load(tmp_path / "a")
    new = _load(tmp_path / "b", CAMPAIGN.replace('"pk {needs.generate}', '"pk --v2 {needs.generate}').replace("count: 3", "count: 4"))
    d = compare("camp", old, new)
    assert d.stages == {
        "generate": {"added": 2, "removed": 0, "stale": 0},
        "measure": {"added": 2, "removed": 0, "stale": 5},
        "covariance": {"added": 0, "removed": 0, "stale": 2},
    }
    assert "per stage: generate +2 -0 ~0; measure +2 -0 ~5; covariance +0 -0 ~2" in render_text([d], "a", "b")


def test_two_stages_writing_one_path_is_refused(tmp_path: Path) -> None:
    out = _problems(tmp_path, CAMPAIGN.replace('"pk/r{realization:04d}/pk_z{redshift:.3f}.npy"', '"catalogs/r{realization:04d}/mock_z{redshift:.3f}.h5"'))
    assert "stages.measure.outputs: tasks generate/r0000/z0.500 and measure/r0000/z0.500 both write 'catalogs/r0000/mock_z0.500.h5'" in out, out


def test_a_map_found_by_index_expands_exactly_as_one_found_by_its_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The aligned fast path of a map (member by index) and the general one (by shared values)
    give the same members, paths and fingerprints."""
    import reconciler.spec.campaign as campaign
    import reconciler.spec.expand as expand

    made: list[campaign.Edge] = []

    def recorded(*args: Any) -> campaign.Edge:
        made.append(campaign.edge(*args))
        return made[-1]

    seen: list[campaign.Edge] = []

    def by_values(down: campaign.Shape, up: campaign.Shape, tasks: Sequence[Any], total: int) -> campaign.Edge:
        e = campaign.edge(down, up, tasks, total)
        seen.append(e)
        if e.aligned is None:
            return e
        groups: dict[tuple[Any, ...], list[str]] = {}
        for t in tasks:
            groups.setdefault(t.params, []).append(t.key)
        return campaign.Edge(e.upstream, e.shared, False, {k: tuple(v) for k, v in groups.items()}, None)

    monkeypatch.setattr(expand, "edge", recorded)
    fast = _load(tmp_path).expansion()
    assert [e.aligned is not None for e in made] == [True, False]  # measure's map is aligned, the fan-in is not
    monkeypatch.setattr(expand, "edge", by_values)
    slow = _load(tmp_path / "again").expansion()  # another repository: not the process's memo of the first
    assert len(seen) == 2 and len(made) == 2, "the second expansion went through by_values"
    assert [(t.key, t.fingerprint, t.needs) for t in slow.tasks] == [(t.key, t.fingerprint, t.needs) for t in fast.tasks]
    assert [e.key for e in slow.excluded] == [e.key for e in fast.excluded]


def test_loading_the_same_files_again_gives_the_expansion_already_made(tmp_path: Path) -> None:
    """`reconcile watch` loads each production every pass: unchanged files cost no new expansion."""
    first = _load(tmp_path)
    ex = first.expansion()
    again = load(WorkTree(tmp_path), "camp", "local", repo_root=tmp_path)
    assert again is first and again.expansion() is ex
    changed = _load(tmp_path, CAMPAIGN.replace("count: 3", "count: 4"))
    assert changed is not first and len(changed.expansion().tasks) > len(ex.tasks)
    (tmp_path / "defaults" / "local.yaml").write_text(MACHINE.replace("memory_gb: 2", "memory_gb: 3"))
    assert load(WorkTree(tmp_path), "camp", "local", repo_root=tmp_path) is not changed  # the machine's file is part of the key


def test_a_task_production_turned_into_stages_keeps_its_first_stages_fingerprints(tmp_path: Path) -> None:
    """Adding stages to a running production: its `task:` becomes the first stage, whose tasks
    keep their fingerprints, so the catalogs already made (their markers) stay complete."""
    one = CAMPAIGN.split("stages:")[0] + (
        "task:\n"
        '  command: "gen --r {realization} --z {redshift} --out {output}"\n'
        '  outputs: ["catalogs/r{realization:04d}/mock_z{redshift:.3f}.h5"]\n'
    )
    before = {t.key: t.fingerprint for t in _load(tmp_path / "one", one).expansion().tasks}
    after = {t.key: t.fingerprint for t in _load(tmp_path / "stages").expansion().stages[0].tasks}
    assert after == {f"generate/{k}": fp for k, fp in before.items()}
