"""`monitor --json` and `status --json --tasks`: machine-readable output for scripts (#13 item 9)."""

from __future__ import annotations

import json
from pathlib import Path

from .test_loop_local import env_for, reconcile


def test_monitor_json_is_one_object_per_tick(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    r = reconcile(repo, env, "monitor", "demo", "--json", "--count", "2", "--interval", "0.1")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 2
    assert all(x["production"] == "demo" and x["total"] == 32 and x["counts"]["missing"] == 32 and "states" not in x for x in lines)


def test_status_json_tasks_gives_every_tasks_state(repo: Path, tmp_path: Path) -> None:
    env = env_for(tmp_path)
    plain = json.loads(reconcile(repo, env, "status", "demo", "--json").stdout)
    assert "states" not in plain
    full = json.loads(reconcile(repo, env, "status", "demo", "--json", "--tasks").stdout)
    assert len(full["states"]) == 32 and full["states"]["r0000/z0.500"] == "missing"
