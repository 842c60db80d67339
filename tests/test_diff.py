"""`reconcile diff`: the consequences of a desired-state change, task by task, between two refs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import git as gitpython
import pytest

from reconciler.cli import main
from reconciler.diff import SHOWN, diff_refs, render_markdown, render_text
from reconciler.errors import ConfigError

from .conftest import git
from .test_results_branch import _children_named_git

DEMO = "productions/demo.yaml"


def _edit(repo: Path, path: str, old: str, new: str, message: str = "edit") -> None:
    f = repo / path
    text = f.read_text()
    assert old in text, old
    f.write_text(text.replace(old, new, 1))
    git(repo, "commit", "-qam", message)


def _diff(repo: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main(["diff", "HEAD~1", "HEAD", *args, "--json", "--repo", str(repo)])
    out = capsys.readouterr().out
    return code, json.loads(out)


def _only(report: dict, name: str) -> dict:
    changed = [p for p in report["productions"] if p["status"] != "unchanged"]
    assert [p["name"] for p in changed] == [name]
    return changed[0]


def test_added_redshift_reports_exactly_the_new_tasks(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit(repo, DEMO, "redshifts: [0.5, 1.0, 1.5, 2.0]", "redshifts: [0.5, 1.0, 1.5, 2.0, 3.0]")
    code, report = _diff(repo, capsys=capsys)
    assert code == 1
    demo = _only(report, "demo")
    assert demo["added"] == [f"r{r:04d}/z3.000" for r in range(8)]
    assert demo["removed"] == [] and demo["stale"] == [] and demo["resources"] == [] and demo["other"] == []
    assert demo["version"] is None
    assert (demo["tasks_base"], demo["tasks_head"]) == (32, 40)
    assert report["totals"] == {"added": 8, "removed": 0, "stale": 0, "productions_changed": 1}
    assert _children_named_git() == []  # GitPython's cat-file helpers were closed


def test_memory_change_is_a_resource_change_only(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit(repo, DEMO, "execution:\n", "resources:\n  memory_gb: 8\n\nexecution:\n")
    code, report = _diff(repo, capsys=capsys)
    assert code == 1
    demo = _only(report, "demo")
    assert demo["resources"] == [{"path": "resources.memory_gb", "old": 2.0, "new": 8.0}]
    assert demo["added"] == demo["removed"] == demo["stale"] == []
    main(["diff", "HEAD~1", "HEAD", "--repo", str(repo)])
    assert "setting resources.memory_gb: 2.0 -> 8.0" in capsys.readouterr().out


def test_command_change_makes_every_task_stale(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit(repo, DEMO, "--n-galaxies {catalog_params.n_galaxies}", "--n-galaxies {catalog_params.n_galaxies} --seed 7")
    code, report = _diff(repo, capsys=capsys)
    assert code == 1
    demo = _only(report, "demo")
    assert len(demo["stale"]) == 32 and demo["added"] == demo["removed"] == []
    assert any("rerun only with execution.rerun_on_change: true" in n for n in demo["notes"])
    assert demo["rerun_on_change"] is False


def test_removed_tasks_say_whether_they_are_cancelled(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit(repo, DEMO, "    count: 8\n", "    count: 6\n")
    code, report = _diff(repo, capsys=capsys)
    demo = _only(report, "demo")
    assert code == 1 and len(demo["removed"]) == 8 and demo["prune"] is False
    assert any("cancelled only with execution.prune: true" in n for n in demo["notes"])
    _edit(repo, DEMO, "  array_throttle: 4\n", "  array_throttle: 4\n  prune: true\n")
    _edit(repo, DEMO, "    count: 6\n", "    count: 5\n")
    _code, report = _diff(repo, capsys=capsys)
    assert any("are cancelled (execution.prune: true)" in n for n in _only(report, "demo")["notes"])


def test_version_bump_is_reported(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit(repo, DEMO, "version: v1.0", "version: v1.1")
    _code, report = _diff(repo, capsys=capsys)
    demo = _only(report, "demo")
    assert demo["version"] == {"old": "v1.0", "new": "v1.1"}
    assert len(demo["stale"]) == 32  # the version is part of every fingerprint


def test_added_and_removed_productions(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (repo / DEMO).read_text().replace("name: demo", "name: demo2")
    (repo / "productions/demo2.yaml").write_text(text)
    git(repo, "rm", "-q", "productions/test_basic.yaml")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "add demo2, drop test_basic")
    code, report = _diff(repo, capsys=capsys)
    by = {p["name"]: p for p in report["productions"]}
    assert code == 1
    assert by["demo2"]["status"] == "added" and len(by["demo2"]["added"]) == 32
    assert by["test_basic"]["status"] == "removed" and by["test_basic"]["added"] == [] and by["test_basic"]["removed"]
    assert by["demo"]["status"] == "unchanged"


def test_identical_refs_exit_0(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "HEAD", "HEAD", "--repo", str(repo)]) == 0
    assert "no changes" in capsys.readouterr().out
    assert main(["diff", "HEAD", "HEAD", "--format", "markdown", "--repo", str(repo)]) == 0
    assert "No production changes" in capsys.readouterr().out


def test_invalid_head_exits_2_with_located_problems(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit(repo, DEMO, "  batch_size: 16\n", "  batch_size: 16\n  colour: red\n")
    assert main(["diff", "HEAD~1", "HEAD", "--repo", str(repo)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"HEAD:productions/demo.yaml:\d+:\d+: execution.colour: unknown field", err), err


def test_unknown_production_name_exits_2(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "HEAD", "HEAD", "nosuch", "--repo", str(repo)]) == 2


def test_markdown_is_a_pr_comment_with_collapsed_keys(repo: Path) -> None:
    _edit(repo, DEMO, "    count: 8\n", "    count: 40\n")
    r = gitpython.Repo(repo)
    try:
        diffs = diff_refs(r, "HEAD~1", "HEAD", ["demo"])
    finally:
        r.close()
    md = render_markdown(diffs, "HEAD~1", "HEAD")
    assert "#### `demo`: changed" in md
    assert "| 32 | 160 | 128 | 0 | 0 | 0 |" in md
    assert "<details><summary>128 added task(s)</summary>" in md and "</details>" in md
    assert md.count("`r00") == SHOWN and "and 108 more" in md
    text = render_text(diffs, "HEAD~1", "HEAD")
    assert "(+108 more)" in text


def test_invalid_base_is_reported_too(repo: Path) -> None:
    _edit(repo, DEMO, "  batch_size: 16\n", "  batch_size: 0\n")
    _edit(repo, DEMO, "  batch_size: 0\n", "  batch_size: 16\n")
    r = gitpython.Repo(repo)
    try:
        with pytest.raises(ConfigError) as info:
            diff_refs(r, "HEAD~1", "HEAD")
    finally:
        r.close()
    assert info.value.problems[0].file == "HEAD~1:productions/demo.yaml"
