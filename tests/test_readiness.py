"""Readiness in the pure planner (issue #14): stages, maps, fan-ins, partial sets, and the
summary reading the same rule. A three-stage campaign: generate (realization x redshift)
-> measure (a map: one generate member each) -> covariance (a fan-in per redshift)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from reconciler.core.model import Desired, Limits, Need, Policy, Stage, TaskHistory, TaskObs, World
from reconciler.core.plan import Action, ActionKind, Plan
from reconciler.core.planner import plan
from reconciler.core.readiness import Readiness
from reconciler.core.reasons import Reason
from reconciler.core.states import OutputState, SchedState
from reconciler.core.summary import shortfall, summarize

DONE = TaskObs(OutputState.COMPLETE, SchedState.COMPLETED)
RUNNING = TaskObs(OutputState.MISSING, SchedState.RUNNING)
GAVE_UP = TaskObs(OutputState.MISSING, SchedState.FAILED)


@dataclass(frozen=True)
class T:
    key: str
    index: int
    needs: tuple[Need, ...] = ()


def campaign(reals: int = 4, zs: tuple[str, ...] = ("0.500", "1.000"), *, bs: int = 3, min_fraction: float = 1.0, rerun: bool = False) -> Desired:
    gen = [T(f"generate/r{r}/z{z}", i) for i, (r, z) in enumerate((r, z) for r in range(reals) for z in zs)]
    measure = [T(f"measure/r{r}/z{z}", i, (Need("generate", (f"generate/r{r}/z{z}",)),)) for i, (r, z) in enumerate((r, z) for r in range(reals) for z in zs)]
    cov = [T(f"covariance/z{z}", j, (Need("measure", tuple(f"measure/r{r}/z{z}" for r in range(reals))),)) for j, z in enumerate(zs)]
    pol = Policy(batch_size=bs, max_retries=1, initial_delay_s=0.0, rerun_on_change=rerun)
    stages = (
        Stage("generate", gen, pol, len(gen)),
        Stage("measure", measure, pol, len(measure)),
        Stage("covariance", cov, pol, len(cov), min_fraction),
    )
    return Desired([*gen, *measure, *cov], Policy(), stages)


def world(obs: Mapping[str, TaskObs], **kw: object) -> World:
    """Tasks in ``obs`` ran once (failed twice and given up, if GAVE_UP); the others never ran."""
    hist = {k: TaskHistory(2, 2, 0.0, "exit 1", True) if o is GAVE_UP else TaskHistory(1) for k, o in obs.items()}
    return World(obs, hist, **kw)  # type: ignore[arg-type]


def done(desired: Desired, *stages: str) -> dict[str, TaskObs]:
    return {t.key: DONE for s in desired.stage_list if s.name in stages for t in s.tasks}


def sends(p: Plan) -> list[Action]:
    return list(p.of(ActionKind.SUBMIT, ActionKind.RESUBMIT))


def waits(p: Plan, reason: Reason) -> list[Action]:
    return [a for a in p.of(ActionKind.WAIT) if a.reason is reason]


def test_a_map_waits_for_its_member_then_runs_in_batches_numbered_after_the_stage_before() -> None:
    d = campaign()  # 8 generate tasks in batches of 3: batches 0-2; measure 3-5; covariance 6
    p = plan(d, World({}, {}), 0.0, Limits())
    assert {a.batch for a in sends(p)} == {0, 1, 2} and all(k.startswith("generate/") for a in sends(p) for k in a.keys)
    measure, cov = waits(p, Reason.WAITING_MEMBERS)  # one WAIT per stage and reason
    assert len(measure.keys) == 8 and measure.note == "measure/r0/z0.500: waiting for 1 of 1 generate; and 7 other task(s)"
    assert cov.keys == ("covariance/z0.500", "covariance/z1.000") and cov.note.startswith("covariance/z0.500: waiting for 4 of 4 measure")
    assert "waiting for upstream members" in measure.message

    obs = done(d, "generate") | {"generate/r1/z0.500": RUNNING}
    p = plan(d, world(obs), 0.0, Limits())
    assert [(a.reason, a.batch, a.keys[:2], a.array_indices[:2]) for a in sends(p)] == [
        (Reason.NEVER_SUBMITTED, 3, ("measure/r0/z0.500", "measure/r0/z1.000"), (0, 1)),
        (Reason.NEVER_SUBMITTED, 4, ("measure/r1/z1.000", "measure/r2/z0.500"), (0, 1)),
        (Reason.NEVER_SUBMITTED, 5, ("measure/r3/z0.500", "measure/r3/z1.000"), (0, 1)),
    ]
    assert waits(p, Reason.WAITING_MEMBERS)[0].keys == ("measure/r1/z0.500",)

    p = plan(d, world(done(d, "generate", "measure")), 0.0, Limits())
    (a,) = sends(p)
    assert (a.batch, a.keys, a.array_indices, a.partial) == (6, ("covariance/z0.500", "covariance/z1.000"), (0, 1), ())


def test_one_stage_numbers_batches_from_zero_as_before() -> None:
    tasks = [T(f"t{i}", i) for i in range(7)]
    p = plan(Desired(tasks, Policy(batch_size=3)), World({}, {}), 0.0, Limits())
    assert [(a.batch, a.array_indices) for a in p.actions] == [(0, (0, 1, 2)), (1, (0, 1, 2)), (2, (0,))]


def test_a_fan_in_waits_for_every_member_of_its_group_only() -> None:
    d = campaign()
    obs = done(d, "generate", "measure") | {"measure/r2/z0.500": RUNNING}
    p = plan(d, world(obs), 0.0, Limits())
    (a,) = sends(p)
    assert a.keys == ("covariance/z1.000",) and a.array_indices == (1,)
    (w,) = waits(p, Reason.WAITING_MEMBERS)
    assert w.keys == ("covariance/z0.500",) and w.note == "covariance/z0.500: waiting for 1 of 4 measure"
    s = summarize(d, obs, world(obs).history)
    assert s["states"]["covariance/z0.500"] == "waiting" and not s["done"]


def _one_gave_up(d: Desired) -> dict[str, TaskObs]:
    return done(d, "generate", "measure") | {"measure/r1/z0.500": GAVE_UP}


def test_a_member_that_gave_up_blocks_its_aggregate_when_all_are_required() -> None:
    d = campaign()
    obs = _one_gave_up(d) | {"covariance/z1.000": DONE}
    p = plan(d, world(obs), 0.0, Limits())
    assert sends(p) == []
    (w,) = waits(p, Reason.BLOCKED_BY_MEMBER)
    assert w.keys == ("covariance/z0.500",) and w.note == "covariance/z0.500: 1 of 4 measure gave up, are blocked or stale: measure/r1/z0.500"
    assert "reconcile retry" in w.message
    s = summarize(d, obs, world(obs).history)
    assert s["states"]["covariance/z0.500"] == "blocked" and s["counts"]["blocked"] == 1 and s["counts"]["failed"] == 1
    assert s["done"] and not s["all_complete"]  # blocked is finished, like failed: the loop stops
    assert shortfall(s) == "1 task(s) gave up: exit 1 (1), 1 task(s) blocked by a given-up member"
    assert [(st["name"], st["total"], st["counts"]["blocked"], st["counts"]["complete"]) for st in s["stages"]] == [
        ("generate", 8, 0, 8), ("measure", 8, 0, 7), ("covariance", 2, 1, 1),
    ]


def test_with_min_fraction_it_runs_on_a_partial_set_and_names_what_it_lacks() -> None:
    d = campaign(min_fraction=0.5)
    obs = _one_gave_up(d)
    p = plan(d, world(obs), 0.0, Limits())
    partial, full = sorted(sends(p), key=lambda a: a.reason is Reason.NEVER_SUBMITTED)
    assert (partial.kind, partial.reason, partial.keys, partial.batch, partial.array_indices) == (ActionKind.SUBMIT, Reason.PARTIAL_MEMBERS, ("covariance/z0.500",), 6, (0,))
    assert partial.partial == (("covariance/z0.500", ("measure/r1/z0.500",)),)
    assert partial.note == "covariance/z0.500 from 3/4 measure; missing measure/r1/z0.500"
    assert partial.to_json()["partial"] == {"covariance/z0.500": ["measure/r1/z0.500"]}
    assert (full.keys, full.partial) == (("covariance/z1.000",), ())
    s = summarize(d, obs, world(obs).history)
    assert s["states"]["covariance/z0.500"] == "missing"  # the planner sends it: not held
    # below the fraction it is blocked; a member still pending holds it whatever the fraction
    assert waits(plan(campaign(min_fraction=0.8), world(obs), 0.0, Limits()), Reason.BLOCKED_BY_MEMBER)
    pending = obs | {"measure/r2/z0.500": RUNNING}
    p = plan(d, world(pending), 0.0, Limits())
    assert [a.keys for a in waits(p, Reason.WAITING_MEMBERS)] == [("covariance/z0.500",)] and all(not a.partial for a in sends(p))


def test_reconcile_retry_makes_a_given_up_member_pending_again() -> None:
    d = campaign(min_fraction=0.5)
    p = plan(d, world(_one_gave_up(d)), 0.0, Limits(), retry=True)
    assert [(a.kind, a.keys) for a in p.of(ActionKind.WAIVE)] == [(ActionKind.WAIVE, ("measure/r1/z0.500",))]
    assert ("measure/r1/z0.500",) in [a.keys for a in sends(p)]
    assert [a.keys for a in waits(p, Reason.WAITING_MEMBERS)] == [("covariance/z0.500",)]  # not run without it


def test_a_member_waiting_for_its_input_holds_its_downstream_without_blocking_it() -> None:
    d = campaign()
    obs = done(d, "generate") | {"generate/r1/z0.500": TaskObs()}
    missing = {"generate/r1/z0.500": "/ic/ic_r1.h5"}
    p = plan(d, World(obs, {k: TaskHistory(1) for k in obs if k != "generate/r1/z0.500"}, missing_inputs=missing), 0.0, Limits())
    (inp,) = waits(p, Reason.WAITING_INPUT)
    assert inp.keys == ("generate/r1/z0.500",) and inp.note == "generate/r1/z0.500: /ic/ic_r1.h5"
    assert [a.keys for a in waits(p, Reason.WAITING_MEMBERS)] == [("measure/r1/z0.500",), ("covariance/z0.500", "covariance/z1.000")]
    assert not waits(p, Reason.BLOCKED_BY_MEMBER)
    s = summarize(d, obs, {}, waiting=missing)
    assert [s["states"][k] for k in ("generate/r1/z0.500", "measure/r1/z0.500", "covariance/z0.500")] == ["waiting"] * 3
    assert not s["done"]


def test_a_partial_aggregate_is_stale_once_a_member_it_lacked_completes() -> None:
    for rerun in (False, True):
        d = campaign(rerun=rerun)
        obs = done(d, "generate", "measure", "covariance")  # measure/r1/z0.500 completed after covariance ran without it
        w = world(obs, partial={"covariance/z0.500": ("measure/r1/z0.500",)})
        p = plan(d, w, 0.0, Limits())
        s = summarize(d, obs, w.history, partial=w.partial)
        if not rerun:
            assert p.is_empty and [(n.reason, n.keys) for n in p.notes] == [(Reason.MEMBERS_COMPLETED, ("covariance/z0.500",))]
            assert "rerun_on_change is off" in p.notes[0].message and s["states"]["covariance/z0.500"] == "stale" and s["done"]
        else:
            (a,) = sends(p)
            assert (a.kind, a.reason, a.keys, a.batch, a.partial) == (ActionKind.SUBMIT, Reason.MEMBERS_COMPLETED, ("covariance/z0.500",), 6, ())
            assert not s["done"]
    # the member it lacked is still given up: nothing changed, nothing to do
    d = campaign(rerun=True)
    obs = _one_gave_up(d) | done(d, "covariance")
    assert plan(d, world(obs, partial={"covariance/z0.500": ("measure/r1/z0.500",)}), 0.0, Limits()).is_empty
    # and a rerun goes through readiness like any: a member pending holds it
    obs = done(d, "generate", "measure", "covariance") | {"measure/r2/z0.500": TaskObs(OutputState.STALE, SchedState.COMPLETED)}
    p = plan(d, world(obs, partial={"covariance/z0.500": ("measure/r1/z0.500",)}), 0.0, Limits())
    assert [a.keys for a in waits(p, Reason.WAITING_MEMBERS)] == [("covariance/z0.500",)]


def test_a_complete_task_is_never_held_back_and_an_empty_need_is_ready() -> None:
    d = campaign()
    obs = done(d, "generate") | {"generate/r0/z0.500": GAVE_UP, "measure/r0/z0.500": DONE}
    assert "measure/r0/z0.500" not in {k for a in plan(d, world(obs), 0.0, Limits()).actions for k in a.keys}
    b, a = Stage("b", [], Policy(), 0), Stage("a", [T("a/x", 0, (Need("b", ()),))], Policy(), 1)
    (send,) = plan(Desired(a.tasks, Policy(), (b, a)), World({}, {}), 0.0, Limits()).actions
    assert (send.kind, send.keys, send.batch) == (ActionKind.SUBMIT, ("a/x",), 0)


def test_a_member_failing_verification_is_pending_not_done() -> None:
    """Its outputs are moved aside this very pass: the aggregate must not read them."""
    d = campaign()
    obs = done(d, "generate", "measure")
    p = plan(d, world(obs, corrupt={"measure/r0/z0.500": "sha256 mismatch"}), 0.0, Limits())
    assert [a.keys for a in waits(p, Reason.WAITING_MEMBERS)] == [("covariance/z0.500",)]
    assert [a.keys for a in sends(p)] == [("measure/r0/z0.500",), ("covariance/z1.000",)]


@pytest.mark.parametrize("adopt", [True, False])
def test_a_member_is_classified_by_its_own_stage_policy(adopt: bool) -> None:
    """Adoptable outputs count as done under the upstream stage's adopt_existing; given up
    under the upstream stage's max_retries, not the downstream one's."""
    up = Stage("up", [T("up/0", 0)], Policy(adopt_existing=adopt, max_retries=5), 1)
    down = Stage("down", [T("down/0", 0, (Need("up", ("up/0",)),))], Policy(adopt_existing=not adopt, max_retries=0), 1)
    d = Desired([*up.tasks, *down.tasks], Policy(), (up, down))
    r = Readiness(d, {"up/0": TaskObs(OutputState.UNMARKED)}, {})
    assert (r.of(down.tasks[0]) is None) is adopt
    r = Readiness(d, {"up/0": GAVE_UP}, {"up/0": TaskHistory(2, 2)})
    v = r.of(down.tasks[0])
    assert v is not None and v.reason is Reason.WAITING_MEMBERS  # 2 failures of 5 allowed: it retries


def test_a_chain_blocks_all_the_way_down_so_the_loop_can_end() -> None:
    """generate gives up -> its measure is blocked -> the covariance of that redshift is blocked
    too (not waiting forever for a measure task that can never run), and status is done."""
    d = campaign()
    obs = done(d, "generate", "measure") | {"generate/r1/z0.500": GAVE_UP, "covariance/z1.000": DONE}
    del obs["measure/r1/z0.500"]
    p = plan(d, world(obs), 0.0, Limits())
    assert sends(p) == []
    (m,) = [a for a in waits(p, Reason.BLOCKED_BY_MEMBER) if a.keys[0].startswith("measure/")]
    (c,) = [a for a in waits(p, Reason.BLOCKED_BY_MEMBER) if a.keys[0].startswith("covariance/")]
    assert m.keys == ("measure/r1/z0.500",) and c.keys == ("covariance/z0.500",) and "measure/r1/z0.500" in c.note
    s = summarize(d, obs, world(obs).history)
    assert s["states"]["measure/r1/z0.500"] == s["states"]["covariance/z0.500"] == "blocked" and s["done"]


def test_a_stale_member_that_nothing_reruns_blocks_rather_than_holds_forever() -> None:
    d = campaign()
    obs = done(d, "generate", "measure") | {"measure/r1/z0.500": TaskObs(OutputState.STALE, SchedState.COMPLETED), "covariance/z1.000": DONE}
    p = plan(d, world(obs), 0.0, Limits())
    (c,) = waits(p, Reason.BLOCKED_BY_MEMBER)
    assert c.keys == ("covariance/z0.500",), p
    assert summarize(d, obs, world(obs).history)["done"]
    rerun = campaign(rerun=True)  # with rerun_on_change the member is rerun, and the aggregate waits for it
    p = plan(rerun, world(obs), 0.0, Limits())
    assert [k for a in sends(p) for k in a.keys] == ["measure/r1/z0.500"]
    assert "covariance/z0.500" in waits(p, Reason.WAITING_MEMBERS)[0].keys
