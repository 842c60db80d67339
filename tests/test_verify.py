"""Verification of completed outputs (#12 item 2): the planner's rule, the rotation, the moves.

Pure planner tests first (a corrupt complete task -> QUARANTINE + rerun with reason
output_corrupt), then the rotation of ``core.verification.sample``, then the engine over a
simulated output tree (the cursor kept in the ledger, nothing read when it is off), then
the output tree on disk (what ``move_corrupt`` moves and the REASON.json it leaves).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import outputs, validators
from reconciler.cli import verify as verify_cli
from reconciler.core.model import Desired, Limits, Policy, TaskHistory, TaskObs, World
from reconciler.core.planner import plan
from reconciler.core.reasons import Reason
from reconciler.core.states import OutputState, SchedState
from reconciler.core.verification import cursor_of, sample
from reconciler.engine import Engine, PassResult
from reconciler.engine.observe import VERIFY_CURSOR_KEY
from reconciler.errors import EXIT_TRANSIENT, TransientError
from reconciler.ledger import Ledger
from reconciler.session.passes import PassReport
from reconciler.spec.expand import Task
from reconciler.spec.load import WorkTree, load
from reconciler.spec.models import Validator

from .conftest import ROOT
from .test_outputs import mark, produce, task
from .test_planner import Clock, SimOutputs, SimScheduler, T

DONE = TaskObs(OutputState.COMPLETE, SchedState.COMPLETED)


def kinds(p: object) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(a.kind.value, a.reason.value, a.keys) for a in p.actions]  # type: ignore[attr-defined]


# ------------------------------------------------------------------ the planner


def test_a_corrupt_complete_task_is_moved_aside_and_rerun_with_its_reason() -> None:
    tasks = [T("t0", 0), T("t1", 1), T("t2", 2)]
    desired = Desired(tasks, Policy(batch_size=10, max_retries=0))
    world = World({k.key: DONE for k in tasks}, {k.key: TaskHistory(1) for k in tasks}, corrupt={"t1": "sha256 mismatch: r/t1.h5"})
    p = plan(desired, world, 1000.0, Limits())
    assert kinds(p) == [("quarantine", "output_corrupt", ("t1",)), ("resubmit", "output_corrupt", ("t1",))]
    q, r = p.actions
    assert q.note == "t1: sha256 mismatch: r/t1.h5" and q.message.startswith("output failed verification")
    assert (r.batch, r.array_indices) == (0, (1,))
    # without a verdict the same world is converged: the rule reads only world.corrupt
    assert plan(desired, World(world.tasks, world.history), 1000.0, Limits()).is_empty


def test_corrupt_adopted_outputs_are_a_first_run_and_retries_do_not_matter() -> None:
    """Adopted outputs (never ours) are submitted, not resubmitted; a task that used every
    retry before it completed is rerun all the same: corruption after completion is no failure."""
    tasks = [T("a", 0), T("b", 1)]
    desired = Desired(tasks, Policy(batch_size=10, max_retries=1))
    world = World(
        {"a": TaskObs(OutputState.ADOPTED, None), "b": DONE},
        {"b": TaskHistory(submissions=2, failures=1, last_end=999.0)},
        corrupt={"a": "empty a.h5", "b": "empty b.h5"},
    )
    p = plan(desired, world, 1000.0, Limits())
    assert kinds(p) == [("quarantine", "output_corrupt", ("a", "b")), ("resubmit", "output_corrupt", ("b",)), ("submit", "output_corrupt", ("a",))]


def test_the_queue_cap_defers_the_rerun_never_the_move() -> None:
    """The move is what remembers the verdict: next pass the task reads missing and is rerun."""
    tasks = [T(f"t{i}", i) for i in range(4)]
    desired = Desired(tasks, Policy(batch_size=10))
    obs = {t.key: DONE for t in tasks} | {"t3": TaskObs(OutputState.MISSING, SchedState.RUNNING)}
    world = World(obs, {t.key: TaskHistory(1) for t in tasks}, corrupt={"t0": "x", "t1": "y", "t2": "z"})
    p = plan(desired, world, 1000.0, Limits(max_queued_tasks=2))
    assert kinds(p) == [
        ("quarantine", "output_corrupt", ("t0", "t1", "t2")),
        ("resubmit", "output_corrupt", ("t0",)),
        ("wait", "queue_cap", ("t1", "t2")),
    ]
    # the next pass: moved outputs read missing, the task ended without a failure -> output_lost
    after = World({**obs, "t1": TaskObs(OutputState.MISSING, SchedState.COMPLETED)}, world.history)
    assert ("resubmit", "output_lost", ("t1",)) in kinds(plan(desired, after, 1001.0, Limits(max_queued_tasks=5)))


def test_verdicts_on_tasks_not_complete_or_not_settled_are_not_acted_on() -> None:
    """In flight (a rerun rewriting it), not complete (the verdict is stale), or ours with no
    scheduler answer yet: nothing; a later pass verifies them again."""
    tasks = [T("run", 0), T("miss", 1), T("noanswer", 2)]
    desired = Desired(tasks, Policy(batch_size=10))
    world = World(
        {"run": TaskObs(OutputState.COMPLETE, SchedState.RUNNING), "miss": TaskObs(OutputState.MISSING, None), "noanswer": TaskObs(OutputState.COMPLETE, None)},
        {"run": TaskHistory(2), "noanswer": TaskHistory(1)},
        corrupt={"run": "x", "miss": "x", "noanswer": "x"},
    )
    p = plan(desired, world, 1000.0, Limits())
    assert not [a for a in p.actions if a.reason is Reason.OUTPUT_CORRUPT]
    assert kinds(p) == [("submit", "never_submitted", ("miss",))]


def test_a_staging_pass_moves_the_corrupt_output_and_stages_its_rerun() -> None:
    desired = Desired([T("t0", 0)], Policy(batch_size=10))
    world = World({"t0": DONE}, {"t0": TaskHistory(1)}, corrupt={"t0": "x"})
    assert kinds(plan(desired, world, 1000.0, Limits(), stage=True)) == [("quarantine", "output_corrupt", ("t0",)), ("stage", "output_corrupt", ("t0",))]


def _verify_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], p: object, corrupt: dict[str, str], applied: dict[str, int], json_out: bool = False) -> tuple[int, str]:
    """`reconcile verify` over a pass that planned ``p`` and found ``corrupt``: exit code, stdout."""
    result = PassResult(p, applied, {"counts": {}, "total": 0}, [], tuple(corrupt), corrupt)  # type: ignore[arg-type]
    monkeypatch.setattr(verify_cli, "options", lambda _a: None)
    monkeypatch.setattr(verify_cli, "report_pass", lambda *_a, **_k: PassReport("p", Path("."), None, result))
    monkeypatch.setattr(verify_cli, "counts_line", lambda _s: "counts")
    code = verify_cli.cmd_verify(argparse.Namespace(name="p", keys=[], json=json_out))
    return code, capsys.readouterr().out


def test_verify_reports_the_moves_the_plan_made_not_every_verdict(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The planner leaves a verdict on a task in flight or with no scheduler answer yet: the
    report says so, and only a move it made is reported as one (and makes exit 1)."""
    tasks = [T("done", 0), T("run", 1), T("noanswer", 2)]
    desired = Desired(tasks, Policy(batch_size=10))
    corrupt = {"done": "empty a.h5", "run": "empty b.h5", "noanswer": "empty c.h5"}
    obs = {"done": DONE, "run": TaskObs(OutputState.COMPLETE, SchedState.RUNNING), "noanswer": TaskObs(OutputState.COMPLETE, None)}
    world = World(obs, {k: TaskHistory(1) for k in obs}, corrupt=corrupt)
    p = plan(desired, world, 1000.0, Limits())
    applied = {"quarantine": 1, "resubmit": 1}
    code, out = _verify_cli(monkeypatch, capsys, p, corrupt, applied)
    assert code == 1
    assert "p: verified 3 completed task(s): 0 sound, 3 corrupt (1 moved, 2 left for a later pass)" in out
    assert "p: corrupt done: output failed verification: empty a.h5 (moved to qa/corrupt/done/" in out
    assert "p: found corrupt run: output failed verification: empty b.h5 (left for a later pass" in out
    assert out.count("moved to qa/corrupt/") == 1
    code, out = _verify_cli(monkeypatch, capsys, p, corrupt, applied, json_out=True)
    assert {c["key"]: c["moved_to"] for c in json.loads(out)["corrupt"]} == {"done": "qa/corrupt/done/", "run": None, "noanswer": None}
    # nothing acted on: nothing moved, exit 0
    left_only = {k: corrupt[k] for k in ("run", "noanswer")}
    p2 = plan(desired, World(obs, world.history, corrupt=left_only), 1000.0, Limits())
    code, out = _verify_cli(monkeypatch, capsys, p2, left_only, {})
    assert code == 0 and "moved to" not in out and out.count("left for a later pass") == 3
    v = verify_cli.split_verdicts(p, corrupt, applied)
    assert (v.moved, set(v.left)) == ({"done": "empty a.h5"}, {"run", "noanswer"})
    assert verify_cli.split_verdicts(p, corrupt, {}).moved == {}  # a plan not applied moved nothing


# ------------------------------------------------------------------ the rotation


def test_sample_rotates_by_index_and_wraps() -> None:
    done = [(0, "a"), (2, "b"), (5, "c"), (7, "d"), (9, "e")]
    assert sample(done, None, 2) == (("a", "b"), 2)
    assert sample(done, 2, 2) == (("c", "d"), 7)
    assert sample(done, 7, 2) == (("e", "a"), 0)
    assert sample(done, 6, 2) == (("d", "e"), 9)  # the cursor's task left: carry on after its index
    assert sample(done, 9, 10) == (("a", "b", "c", "d", "e"), 9)  # more than there are: each once
    assert sample(done, 4, 0) == ((), 4) and sample([], 4, 3) == ((), 4)
    assert cursor_of(None) is None and cursor_of("") is None and cursor_of("junk") is None and cursor_of("17") == 17


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 500), unique=True, max_size=60).map(sorted), st.integers(1, 20), st.one_of(st.none(), st.integers(-1, 501)))
def test_sample_covers_every_completed_task_in_ceil_n_over_k_passes(indices: list[int], k: int, start: int | None) -> None:
    done = [(i, f"k{i}") for i in indices]
    cursor, seen = start, []
    passes = math.ceil(len(done) / k)
    for _ in range(passes):
        keys, cursor = sample(done, cursor, k)
        assert len(keys) == min(k, len(done)) and len(set(keys)) == len(keys)
        seen.extend(keys)
    assert set(seen) == {key for _i, key in done}
    assert len(seen) == passes * min(k, len(done))  # repeats only to fill the last pass


# ------------------------------------------------------------------ the engine, simulated


@dataclass
class VerifyingOutputs(SimOutputs):
    """The simulated output tree, with deep verification: ``bad`` outputs fail it."""

    bad: dict[str, str] = field(default_factory=dict)
    verified: list[tuple[str, ...]] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)

    def verify(self, tasks: list[Task]) -> dict[str, str]:
        self.verified.append(tuple(t.key for t in tasks))
        return {t.key: self.bad[t.key] for t in tasks if t.key in self.bad}

    def move_corrupt(self, task: Task, label: str, record: dict[str, object]) -> list[Path]:
        assert record["problem"] == self.bad.pop(task.key)
        self.moved.append(task.key)
        self.state.pop(task.key, None)
        return []


def _sim_production(tmp: Path, per_pass: int) -> object:
    root = tmp / "repo"
    (root / "productions").mkdir(parents=True)
    (root / "defaults").mkdir()
    (root / "defaults/local.yaml").write_text((ROOT / "defaults/local.yaml").read_text())
    (root / "productions/sim.yaml").write_text(
        "production: {name: sim}\nscience:\n  redshifts: [0.5]\n  realizations: {count: 7}\n"
        f"execution:\n  batch_size: 4\n  verify_per_pass: {per_pass}\n  retry_policy: {{max_retries: 0}}\n"
        f"outputs: {{base_path: {tmp / 'out'}}}\n"
        "task:\n  command: gen {realization} {output}\n  outputs: ['r{realization}.h5']\n"
    )
    return load(WorkTree(root), "sim", repo_root=root)


def _run_to_completion(loaded: object, sim: SimScheduler, outs: SimOutputs, clock: Clock, ledger_path: Path) -> None:
    fps = {t.key: t.fingerprint for t in loaded.expansion().tasks}  # type: ignore[attr-defined]
    for _ in range(3):
        with Ledger(ledger_path) as ledger:
            Engine(loaded, sim, ledger, outs, clock=clock).run_pass()  # type: ignore[arg-type]
        clock.t += 10
        sim.step(outs, fps, 0.0, clock.t)
    assert set(outs.state.values()) == {OutputState.COMPLETE}


def test_verify_per_pass_rotates_keeps_its_cursor_and_catches_corruption(tmp_path: Path) -> None:
    loaded = _sim_production(tmp_path, 3)
    sim, outs, clock, ledger_path = SimScheduler(random.Random(0)), VerifyingOutputs(), Clock(), tmp_path / "l.db"
    _run_to_completion(loaded, sim, outs, clock, ledger_path)
    keys = [t.key for t in loaded.expansion().tasks]  # type: ignore[attr-defined]
    outs.verified.clear()
    for _ in range(3):  # ceil(7 / 3) passes cover every completed task
        with Ledger(ledger_path) as ledger:
            assert Engine(loaded, sim, ledger, outs, clock=clock).run_pass().plan.is_empty  # type: ignore[arg-type]
    assert all(len(v) == 3 for v in outs.verified) and set().union(*outs.verified) == set(keys)
    with Ledger(ledger_path) as ledger:
        cursor = ledger.get_meta(VERIFY_CURSOR_KEY)
    assert cursor is not None and int(cursor) == loaded.expansion().by_key[outs.verified[-1][-1]].index  # type: ignore[attr-defined]
    # corrupt the task at the cursor, the one the rotation comes back to last: 3 + 3 tasks after
    # it come first, so it is caught on the third pass and not before
    victim = outs.verified[-1][-1]
    outs.bad[victim] = "sha256 mismatch: r.h5"
    caught = []
    for n in range(1, 4):
        with Ledger(ledger_path) as ledger:
            r = Engine(loaded, sim, ledger, outs, clock=clock).run_pass()  # type: ignore[arg-type]
        if r.corrupt:
            caught.append(n)
            assert kinds(r.plan)[:2] == [("quarantine", "output_corrupt", (victim,)), ("resubmit", "output_corrupt", (victim,))]
    assert caught == [3] and outs.moved == [victim]
    with Ledger(ledger_path) as ledger:
        events = [row for row in ledger.db.execute("SELECT kind, key FROM events WHERE kind = 'corrupt'")]
    assert events == [("corrupt", victim)]


def test_verify_per_pass_zero_reads_nothing_and_keeps_no_cursor(tmp_path: Path) -> None:
    loaded = _sim_production(tmp_path, 0)
    sim, outs, clock, ledger_path = SimScheduler(random.Random(0)), VerifyingOutputs(), Clock(), tmp_path / "l.db"
    _run_to_completion(loaded, sim, outs, clock, ledger_path)
    outs.bad = {t.key: "x" for t in loaded.expansion().tasks}  # type: ignore[attr-defined]
    with Ledger(ledger_path) as ledger:
        assert Engine(loaded, sim, ledger, outs, clock=clock).run_pass().plan.is_empty  # type: ignore[arg-type]
        assert ledger.get_meta(VERIFY_CURSOR_KEY) is None
    assert outs.verified == []
    # `reconcile verify` (verify="all") checks them all whatever the setting, and moves no cursor
    with Ledger(ledger_path) as ledger:
        r = Engine(loaded, sim, ledger, outs, clock=clock).run_pass(verify="all")  # type: ignore[arg-type]
        assert ledger.get_meta(VERIFY_CURSOR_KEY) is None
    assert len(r.verified) == 7 and set(r.corrupt) == set(r.verified) and len(outs.moved) == 7


# ------------------------------------------------------------------ the output tree on disk


def test_verify_on_disk_finds_truncation_and_checksum_mismatch(tmp_path: Path) -> None:
    hdf5 = Validator(kind="hdf5", datasets=["galaxies/ra"])
    good, cut = task(0, 0.5), task(0, 1.0)
    for t in (good, cut):
        produce(tmp_path, t)
    path = tmp_path / cut.outputs[0]
    path.write_bytes(path.read_bytes()[:500])
    assert set(outputs.verify(tmp_path, [good, cut], hdf5)) == {cut.key}
    assert "not a readable HDF5 file" in outputs.verify(tmp_path, [cut], hdf5)[cut.key]
    sha = Validator(kind="sha256")
    good_path = tmp_path / good.outputs[0]
    good_path.with_name(good_path.name + ".sha256").write_text(hashlib.sha256(good_path.read_bytes()).hexdigest() + "\n")
    assert outputs.verify(tmp_path, [good], sha) == {}
    with open(good_path, "r+b") as fh:  # one byte flipped: the file still opens, the checksum does not match
        fh.seek(100)
        b = fh.read(1)
        fh.seek(100)
        fh.write(bytes([b[0] ^ 0xFF]))
    assert outputs.verify(tmp_path, [good], sha) == {good.key: f"sha256 mismatch: {good.outputs[0]}"}


def test_move_corrupt_takes_outputs_and_markers_and_leaves_a_reason(tmp_path: Path) -> None:
    t = task(3, 0.5, extra=True)
    produce(tmp_path, t)
    marker = mark(tmp_path, t)
    assert outputs.observe_outputs(tmp_path, [t], Validator())[t.key] is OutputState.COMPLETE
    record = {"key": t.key, "problem": "empty x", "check": "exists", "verified_at": 5.0}
    moved = outputs.move_corrupt(tmp_path, t, label="1700000000", record=record)
    dest = tmp_path / outputs.CORRUPT_DIR / "r0003__z0.500" / "1700000000"
    assert sorted(moved) == sorted([dest / t.outputs[0], dest / t.outputs[1], dest / marker.relative_to(tmp_path)])
    assert json.loads((dest / outputs.REASON_FILE).read_text()) == record
    assert not marker.exists() and not any((tmp_path / rel).exists() for rel in t.outputs)
    assert outputs.observe_outputs(tmp_path, [t], Validator())[t.key] is OutputState.MISSING


@pytest.mark.parametrize("code", [errno.EIO, errno.ESTALE, errno.EACCES])
@pytest.mark.parametrize("kind", ["hdf5", "sha256"])
def test_a_read_error_while_verifying_is_transient_never_a_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, code: int) -> None:
    """A flaky mount (EIO, ESTALE) or a permission change (EACCES) says nothing about the
    bytes: a verdict would move good data to qa/corrupt/ and rerun it. The pass stops (exit 4)."""
    t = task(0, 0.5)
    produce(tmp_path, t)
    path = tmp_path / t.outputs[0]
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    v = Validator(kind="hdf5", datasets=["galaxies/ra"]) if kind == "hdf5" else Validator(kind="sha256")
    assert outputs.verify(tmp_path, [t], v) == {}

    def failing_open(*_a: object, **_k: object) -> object:
        raise OSError(code, os.strerror(code))

    if kind == "hdf5":
        monkeypatch.setattr(h5py, "File", failing_open)
    else:
        monkeypatch.setattr(validators, "open", failing_open, raising=False)  # shadows the builtin
    with pytest.raises(TransientError) as err:
        outputs.verify(tmp_path, [t], v)
    assert err.value.exit_code == EXIT_TRANSIENT and os.strerror(code) in str(err.value)
    assert path.stat().st_size > 0 and not (tmp_path / outputs.CORRUPT_DIR).exists()


def test_a_file_gone_between_stat_and_open_is_missing_and_a_format_error_a_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = task(0, 0.5)
    produce(tmp_path, t)
    v = Validator(kind="hdf5", datasets=["galaxies/ra"])

    def gone(*_a: object, **_k: object) -> object:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    with monkeypatch.context() as m:
        m.setattr(h5py, "File", gone)
        assert outputs.verify(tmp_path, [t], v) == {t.key: f"missing {t.outputs[0]}"}
    (tmp_path / t.outputs[0]).write_bytes(b"no HDF5 signature here\n")  # h5py's OSError without an errno
    assert outputs.verify(tmp_path, [t], v)[t.key].startswith("not a readable HDF5 file")
