"""task.inputs: files a task reads that nothing in the production makes. A task whose input is
missing waits (waiting_input, with the path) and is never sent; once the file appears it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.errors import ConfigError
from reconciler.spec.load import WorkTree, load

from .conftest import git
from .test_loop_local import env_for, reconcile, sent_to_scheduler, shrink_demo, wait_quiet


def with_inputs(repo: Path, inputs_yaml: str) -> None:
    demo = repo / "productions" / "demo.yaml"
    text = demo.read_text()
    assert "\n  outputs:\n" in text
    demo.write_text(text.replace("\n  outputs:\n", f"\n  inputs: {inputs_yaml}\n  outputs:\n", 1))


def test_inputs_are_templates_checked_like_outputs(repo: Path) -> None:
    with_inputs(repo, '["/ic/ic_r{realization:04d}_{nope}.h5", "halos/{output}"]')
    with pytest.raises(ConfigError) as info:
        load(WorkTree(repo), "demo", repo_root=repo)
    text = str(info.value)
    assert "task.inputs: unknown placeholder {nope}" in text and "task.inputs: unknown placeholder {output}" in text, text


def test_a_task_waits_for_its_missing_input_and_is_sent_once_it_exists(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    shrink_demo(repo)  # realizations 4 and 5, 4 redshifts each
    ic = tmp_path / "ic"
    ic.mkdir()
    with_inputs(repo, json.dumps([str(ic) + "/ic_r{realization:04d}.h5"]))
    git(repo, "commit", "-qam", "initial conditions made elsewhere")
    (ic / "ic_r0004.h5").write_text("ic")  # r0005's is not there yet

    plan = json.loads(reconcile(repo, env, "plan", "demo", "--json").stdout)
    waits = [a for a in plan["actions"] if a["reason"] == "waiting_input"]
    assert len(waits) == 1 and sorted(waits[0]["keys"]) == [f"r0005/z{z}" for z in ("0.500", "1.000", "1.500", "2.000")], plan
    assert f"{ic}/ic_r0005.h5" in waits[0]["note"]
    sent = {k for a in plan["actions"] if a["kind"] == "submit" for k in a["keys"]}
    assert sent and all(k.startswith("r0004/") for k in sent), plan
    text = reconcile(repo, env, "plan", "demo").stdout
    assert "waiting for an input that nothing in the production makes" in text and "ic_r0005.h5" in text, text

    for _ in range(40):  # r0004 runs (one of its tasks fails once on purpose and is retried); r0005 waits
        assert reconcile(repo, env, "once", "demo").returncode == 0
        st = json.loads(reconcile(repo, env, "status", "demo", "--json", "--tasks").stdout)
        if all(st["states"][f"r0004/z{z}"] == "complete" for z in ("0.500", "1.000", "1.500", "2.000")):
            break
        wait_quiet(tmp_path / "spool", timeout=10)
    assert not any(k.startswith("r0005/") for k in sent_to_scheduler(tmp_path / "spool")), "a task was sent without its input"
    assert {st["states"][k] for k in st["states"] if k.startswith("r0005/")} == {"waiting"}, st["states"]
    assert st["counts"]["waiting"] == 4 and "4 waiting" in reconcile(repo, env, "status", "demo").stdout

    (ic / "ic_r0005.h5").write_text("ic")
    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert {k for k in sent_to_scheduler(tmp_path / "spool") if k.startswith("r0005/")} == {f"r0005/z{z}" for z in ("0.500", "1.000", "1.500", "2.000")}
