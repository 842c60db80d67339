"""A campaign on the results branch (issue #14): status.json lists its stages and keeps its
task table compact (one grid per stage, redshift-major stages too), STATUS.md shows the chain
with counts per stage, and the heatmap draws one panel per stage. Summaries are built by the
real core.summary.summarize over Stage(...)s; the last test runs a real campaign on the local
backend and reads what `once` published."""

from __future__ import annotations

import io
import json
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.model import Desired, Need, Policy, Stage, TaskHistory
from reconciler.core.summary import summarize
from reconciler.results.document import (
    StatusDoc,
    build_status,
    dumps_status,
    encode_keys,
    task_keys,
    task_states,
)
from reconciler.results.layout import render_status_md
from reconciler.results.plots import CATEGORIES, heatmap_figure, plots_bytes
from reconciler.results.stage_heatmap import stage_panels

from .conftest import git
from .test_campaign_local import _fail, campaign, run_until_quiet
from .test_loop_local import env_for, reconcile
from .test_readiness import DONE, GAVE_UP, RUNNING, T


def chain(reals: int, zs: Sequence[str], excluded: frozenset[tuple[int, str]] = frozenset()) -> Desired:
    """generate -> measure (a map) -> covariance (a fan-in per redshift), numbered as
    spec.expand numbers them: redshift-major upstream, so that whole groups finish first."""
    order = [(r, z) for z in zs for r in range(reals)]
    gen = [T(f"generate/r{r:04d}/z{z}", i) for i, (r, z) in enumerate(order) if (r, z) not in excluded]
    meas = [T(f"measure/r{r:04d}/z{z}", i, (Need("generate", (f"generate/r{r:04d}/z{z}",)),)) for i, (r, z) in enumerate(order) if (r, z) not in excluded]
    cov = [T(f"covariance/z{z}", j, (Need("measure", tuple(f"measure/r{r:04d}/z{z}" for r in range(reals) if (r, z) not in excluded), True),)) for j, z in enumerate(zs)]
    pol = Policy(max_retries=1)
    stages = (Stage("generate", gen, pol, len(order)), Stage("measure", meas, pol, len(order)), Stage("covariance", cov, pol, len(zs)))
    return Desired([*gen, *meas, *cov], pol, stages)


def stuck_campaign() -> tuple[dict[str, Any], Desired]:
    """4 realizations x 2 redshifts, r0001/z1.000 excluded: every catalog done, one statistic
    given up (its covariance blocked), one running (its covariance waiting)."""
    d = chain(4, ("0.500", "1.000"), frozenset({(1, "1.000")}))
    obs = {t.key: DONE for t in d.tasks if not t.key.startswith("covariance/")}
    obs["measure/r0002/z0.500"] = GAVE_UP
    obs["measure/r0003/z1.000"] = RUNNING
    hist = {"measure/r0002/z0.500": TaskHistory(2, 2, 0.0, "exit 1", True)}
    excluded = [(f"{s}/r0001/z1.000", "bad initial conditions") for s in ("generate", "measure")]
    return summarize(d, obs, hist, excluded), d


def doc_of(summary: dict[str, Any], desired: Desired, **kw: Any) -> dict[str, Any]:
    return build_status(summary, production="camp", version="v1", tag=None, commit="c" * 40, ref="HEAD", machine="local", now=0.0, keys=[t.key for t in desired.tasks], **kw)


def test_status_json_lists_the_stages_and_decodes_to_the_same_keys_and_states() -> None:
    summary, d = stuck_campaign()
    doc = doc_of(summary, d)
    StatusDoc.model_validate(doc)
    keys = [t.key for t in d.tasks]
    assert task_keys(doc["tasks"]) == keys
    assert task_states(doc["tasks"]) == [summary["states"][k] for k in keys]
    assert doc["tasks"]["keys"] is None and doc["tasks"]["grid"] is None
    runs = doc["tasks"]["runs"]
    assert [r["grid"][0] for r in runs] == [["generate"], ["measure"], ["covariance"]]
    assert runs[0]["order"] == [0, 2, 1] and runs[0]["holes"] == [5]  # redshift-major, r0001/z1.000 left out
    stages = {s["name"]: s for s in doc["stages"]}
    assert [s["name"] for s in doc["stages"]] == ["generate", "measure", "covariance"]
    assert stages["generate"]["total"] == 7 and stages["generate"]["progress"] == 1.0 and stages["generate"]["done"]
    assert stages["measure"]["counts"]["failed"] == 1 and stages["measure"]["counts"]["running"] == 1 and not stages["measure"]["done"]
    assert stages["covariance"]["counts"]["blocked"] == 1 and stages["covariance"]["counts"]["waiting"] == 1
    assert sum(s["total"] for s in doc["stages"]) == doc["total"] == 16
    assert json.loads(dumps_status(doc)) == doc


def test_a_production_of_one_stage_keeps_its_document_as_it_was() -> None:
    keys = [f"r{r:04d}/z{z}" for r in range(3) for z in ("0.500", "1.000")]
    summary = summarize(Desired([T(k, i) for i, k in enumerate(keys)], Policy()), dict.fromkeys(keys, DONE), {})
    doc = build_status(summary, production="one", version="v1", tag=None, commit="c", ref="HEAD", machine="local", now=0.0, keys=keys)
    assert doc["stages"] == [] and doc["tasks"]["runs"] is None
    assert doc["tasks"]["grid"] == [["r0000", "r0001", "r0002"], ["z0.500", "z1.000"]] and doc["tasks"]["holes"] == []
    assert "↳" not in render_status_md([doc], {})
    assert len(heatmap_figure(doc).axes) == 1


def test_the_task_table_of_80020_tasks_stays_small() -> None:
    d = chain(2000, tuple(f"{0.1 * (i + 1):.3f}" for i in range(20)))
    summary = summarize(d, {t.key: DONE for t in d.tasks}, {})
    keys = [t.key for t in d.tasks]
    doc = doc_of(summary, d, attempts=dict.fromkeys(keys, 1), runtimes={k: 100.0 + i % 900 for i, k in enumerate(keys)})
    text = dumps_status(doc).decode()
    runs_line = next(line for line in text.splitlines() if line.lstrip().startswith('"runs"'))
    assert len(runs_line) < 40_000, len(runs_line)  # the keys: ~2 MB as a list
    assert len(text) < 650_000, len(text)  # one state character, attempts and run times per task remain
    assert task_keys(json.loads(text)["tasks"]) == keys
    assert [s["done"] for s in doc["stages"]] == [True, True, True]


def test_documents_written_before_campaigns_still_decode() -> None:
    plain = {"keys": ["b", "a"], "states": "CF"}
    grid = {"grid": [["r0000", "r0001"], ["z0.500", "z1.000"]], "holes": [1], "states": "CCC"}
    assert task_keys(plain) == ["b", "a"] and task_states(plain) == ["complete", "failed"]
    assert task_keys(grid) == ["r0000/z0.500", "r0001/z0.500", "r0001/z1.000"]
    assert encode_keys(task_keys(grid)) == {"grid": grid["grid"], "holes": [1]}  # one stage: the same form as before


parts = st.sampled_from(["a", "b", "c", "d"])


@settings(max_examples=300, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    nesting=st.permutations(range(3)),
    keep=st.lists(st.booleans(), min_size=64, max_size=64),
    extra=st.lists(st.lists(parts, min_size=1, max_size=3).map("/".join), max_size=4),
    shuffle=st.randoms(use_true_random=False),
    shuffled=st.booleans(),
)
def test_any_keys_encode_losslessly(shape: list[int], nesting: list[int], keep: list[bool], extra: list[str], shuffle: Any, shuffled: bool) -> None:
    """Products in any nesting with holes, stages of other widths, repeated keys, any order:
    what decodes is what was encoded."""
    width = len(shape)
    order = [p for p in nesting if p < width]
    combos: list[list[str]] = [[]]
    for p in order:
        combos = [c + [f"{'xyz'[p]}{v}"] for c in combos for v in range(shape[p])]
    keys = ["s/" + "/".join(c[order.index(p)] for p in range(width)) for i, c in enumerate(combos) if keep[i % 64]]
    keys += extra
    if shuffled:
        shuffle.shuffle(keys)
    assert task_keys(encode_keys(keys)) == keys


def test_status_md_shows_the_chain_with_counts_per_stage_under_the_production() -> None:
    summary, d = stuck_campaign()
    md = render_status_md([doc_of(summary, d)], {})
    lines = md.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("| camp |"))
    assert "| 12 / 16 | 1 | 1 | 0 |" in lines[row]  # the table's counts are the production's totals
    assert lines[row + 1] == "| ↳ generate 7/7 → measure 5/7 (1 failed, 1 running) → covariance 0/2 (1 blocked, 1 waiting) | | | | | | | | |"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def test_the_heatmap_has_one_panel_per_stage() -> None:
    from PIL import Image

    summary, d = stuck_campaign()
    doc = doc_of(summary, d)
    panels = stage_panels(doc)
    assert [p.name for p in panels] == ["generate", "measure", "covariance"]
    assert panels[0].reals == [0, 1, 2, 3] and panels[0].zs == ["0.500", "1.000"]
    assert panels[2].reals == [] and panels[2].zs == ["0.500", "1.000"]  # a one-row strip
    rank = {name: i for i, (name, _) in enumerate(CATEGORIES)}
    assert panels[1].cells[(2, "0.500")] == rank["failed"] and panels[1].cells[(1, "1.000")] == rank["excluded"]
    assert panels[2].grid([None], panels[2].zs) == [[rank["blocked"], rank["waiting"]]]
    fig = heatmap_figure(doc)
    assert len(fig.axes) == 3
    generate, measure, covariance = fig.axes
    assert measure.get_shared_y_axes().joined(generate, measure)
    assert covariance.get_position().height < generate.get_position().height / 3
    data = plots_bytes(doc, [])["heatmap.png"]
    assert data == plots_bytes(doc, [])["heatmap.png"] and len(data) < 40_000
    assert _png_size(data)[0] > 400
    with Image.open(io.BytesIO(data)) as img:
        colours = {c for _, c in img.convert("RGB").getcolors(1 << 16) or []}
    for state in ("failed", "blocked", "waiting", "running", "complete"):
        hexa = dict(CATEGORIES)[state]
        assert tuple(int(hexa[i : i + 2], 16) for i in (1, 3, 5)) in colours, state


def test_a_stage_without_realizations_or_redshifts_shows_its_counts() -> None:
    d = chain(2, ("0.500",))
    report = T("report", 0, (Need("covariance", ("covariance/z0.500",), True),))
    stages = (*d.stage_list, Stage("report", [report], Policy(), 1))
    d = Desired([*d.tasks, report], Policy(), stages)
    summary = summarize(d, {t.key: DONE for t in d.tasks if t.key != "report"}, {})
    doc = build_status(summary, production="camp", version="v1", tag=None, commit="c", ref="HEAD", machine="local", now=0.0, keys=[t.key for t in d.tasks])
    assert task_keys(doc["tasks"]) == [t.key for t in d.tasks]
    fig = heatmap_figure(doc)
    assert len(fig.axes) == 4
    assert [t.get_text() for t in fig.axes[3].texts] == ["1 missing"]
    assert "→ report 0/1" in render_status_md([doc], {})


def test_a_campaign_run_on_the_local_backend_publishes_its_stages(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    campaign(repo, tmp_path)
    _fail(repo, "measure/r0001/z0.500")
    status = run_until_quiet(repo, env, tmp_path)
    assert status["states"]["covariance/z0.500"] == "blocked", status["states"]
    assert reconcile(repo, env, "once", "camp").returncode in (0, 1)  # publishes what the last job left
    doc = json.loads(git(repo, "show", "reconciler/status:productions/camp/status.json"))
    keys = task_keys(doc["tasks"])
    assert dict(zip(keys, task_states(doc["tasks"]), strict=True)) == status["states"] and len(keys) == 14
    assert keys[:3] == ["generate/r0000/z0.500", "generate/r0001/z0.500", "generate/r0002/z0.500"]  # task order, redshift-major
    assert [r["grid"][0] for r in doc["tasks"]["runs"]] == [["generate"], ["measure"], ["covariance"]]
    assert [(s["name"], s["total"], s["done"]) for s in doc["stages"]] == [("generate", 6, True), ("measure", 6, True), ("covariance", 2, True)]
    md = git(repo, "show", "reconciler/status:STATUS.md")
    assert "| ↳ generate 6/6 → measure 5/6 (1 failed) → covariance 1/2 (1 blocked) |" in md, md
    assert "heatmap.png" in doc["plots"]
    png = subprocess.run(["git", "-C", str(repo), "show", "reconciler/status:productions/camp/heatmap.png"], check=True, capture_output=True).stdout
    assert _png_size(png)[0] > 400
