"""Readiness: whether a task's upstream members let it run now, decided in one place.

Two readers ask the same question and must never disagree: the planner (what to send, what
to hold and why) and the summary (what status says of a held task). Both build a
``Readiness`` over the world as the planner's settle leaves it and ask ``of(task)``.

Each member of a Need is, by the world as settle leaves it and its *own* stage's policy:
  done    -- outputs complete or adopted (or adoptable under adopt_existing), not in flight,
             not failing deep verification this pass (its outputs are about to be moved aside)
  lost    -- not done, not in flight, and will not become done without a person: given up
             (core.outcome.gave_up with its stage's max_retries; `reconcile retry` makes it
             pending again), blocked itself (a member of its own is lost: the chain
             generate -> measure -> covariance blocks all the way down), or stale under a
             policy that does not rerun it (rerun_on_change off)
  pending -- the rest: queued, running, missing, retrying, waiting for its own input or
             members -- anything that may still become done without a person.
A task is ready when every member is done (a Need with no members is ready: the expansion
leaves excluded members out). Any pending member holds it (waiting_members): readiness is
decided from outputs and the ledger, never from Slurm dependencies, which a purged job or a
sparse retry array can leave unsatisfiable forever. With none pending and some lost, it runs
on a partial set when its stage's ``min_fraction`` of all its members is done
(partial_members), else it is blocked (blocked_by_member) until someone retries the member.

Cost is linear in the members asked about, and less: a done member costs one lookup, the
first pending one ends the question (a fan-in of 20 x 2,000 whose members all completed and
a map of 40,000 x 1 cost 80,000 lookups; see ``Readiness.of``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from reconciler.core.model import (
    EMPTY_HISTORY,
    EMPTY_OBS,
    Desired,
    DesiredTask,
    Policy,
    TaskHistory,
    TaskObs,
)
from reconciler.core.overlay import Overlay
from reconciler.core.plan import Action, ActionKind
from reconciler.core.reasons import Reason
from reconciler.core.states import OutputState, SchedState

DONE, PENDING, LOST = 0, 1, 2
"""A member's class; plain ints: 80,000 of them a pass."""

_SHOWN = 3
"""Members named in a note at most (a fan-in of 2,000 says how many, and names a few)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a task with needs is not simply ready: held (waiting_members, blocked_by_member),
    or ready on a partial set (partial_members, with ``lost`` the members it runs without)."""

    reason: Reason
    done: int  # members done, over all needs
    members: int  # members, over all needs
    pending: tuple[tuple[str, int, int], ...]  # per need with pending members: (stage, pending, members)
    lost: tuple[str, ...]  # members given up, in need order
    stages: str  # the needed stages' names, for notes

    @property
    def ready(self) -> bool:
        return self.reason is Reason.PARTIAL_MEMBERS

    def describe(self, key: str) -> str:
        """The specifics for one task, as a note reads them."""
        if self.reason is Reason.WAITING_MEMBERS:
            return f"{key}: waiting for " + ", ".join(f"{p} of {n} {s}" for s, p, n in self.pending)
        shown = ", ".join(self.lost[:_SHOWN]) + (f" and {len(self.lost) - _SHOWN} more" if len(self.lost) > _SHOWN else "")
        if self.reason is Reason.BLOCKED_BY_MEMBER:
            return f"{key}: {len(self.lost)} of {self.members} {self.stages} gave up, are blocked or stale: {shown}"
        return f"{key} from {self.done}/{self.members} {self.stages}; missing {shown}"


WAITING = Verdict(Reason.WAITING_MEMBERS, 0, 0, (), (), "")
"""A member is pending: what ``Readiness.of`` says without counting the others (``explain`` counts)."""


def note(key: str, v: Verdict, tasks: int) -> str:
    """One note for an action over ``tasks`` tasks: the first, ``key``, described, the others counted."""
    return v.describe(key) + (f"; and {tasks - 1} other task(s)" if tasks > 1 else "")


class Readiness:
    """The readiness rule over one pass's views of the world (see the module docstring).

    ``tasks`` and ``history`` are the views as settle leaves them (Settled.views, or what
    the engine hands the summary); ``held``: keys whose submission's answer is being looked
    for (in flight, as far as anyone knows); ``corrupt``: outputs failing verification this
    pass; ``retry``: `reconcile retry` gives given-up members another attempt this pass.
    """

    def __init__(
        self,
        desired: Desired,
        tasks: Mapping[str, TaskObs],
        history: Mapping[str, TaskHistory],
        *,
        held: Collection[str] = (),
        corrupt: Collection[str] = (),
        retry: bool = False,
    ) -> None:
        self.policies: dict[str, Policy] = {s.name: s.policy for s in desired.stage_list}
        self.fractions: dict[str, float] = {s.name: s.min_fraction for s in desired.stage_list}
        self.desired = desired
        self._tasks: dict[str, DesiredTask] | None = None  # by key, built the first time a member may be blocked
        self._blocked_memo: dict[str, bool] = {}
        self.campaign = len(self.policies) > 1  # a need names another stage: one stage has none to ask about
        self.default = desired.policy
        # an Overlay's lookups run Python code; its two dicts, read directly, do not
        self._obs = (tasks.top, tasks.base) if isinstance(tasks, Overlay) else ({}, tasks)
        self._hist = (history.top, history.base) if isinstance(history, Overlay) else ({}, history)
        self.held, self.corrupt, self.retry = held, corrupt, retry

    def member(self, key: str, policy: Policy, stage: str = "") -> int:
        """DONE, PENDING or LOST (see the module docstring); ``stage``: the member's."""
        top, base = self._obs
        obs = top.get(key) or base.get(key, EMPTY_OBS)
        sched, out = obs.sched, obs.output
        if sched is SchedState.PENDING or sched is SchedState.RUNNING or key in self.held:
            return PENDING
        if out is OutputState.COMPLETE or out is OutputState.ADOPTED:
            return PENDING if key in self.corrupt else DONE
        htop, hbase = self._hist
        hist = htop.get(key) or hbase.get(key, EMPTY_HISTORY)
        if policy.adopt_existing and out is OutputState.UNMARKED and hist.submissions == 0:
            return DONE
        if out is OutputState.STALE and not policy.rerun_on_change:
            return LOST  # made with another fingerprint, and nothing reruns it
        if not hist.failures or self.retry:
            return LOST if not hist.failures and self._blocked(key, stage) else PENDING
        if hist.failures > policy.max_retries or (hist.cause is not None and hist.cause.kind.permanent):
            return LOST  # core.outcome.gave_up, inlined
        return PENDING

    def _blocked(self, key: str, stage: str) -> bool:
        """Whether a member that never failed is blocked itself (its own members are lost)."""
        got = self._blocked_memo.get(key)
        if got is None:
            if self._tasks is None:
                self._tasks = {t.key: t for t in self.desired.tasks}
            task = self._tasks.get(key)
            v = self.of(task, self.fractions.get(stage, 1.0)) if task is not None and task.needs else None
            got = self._blocked_memo[key] = v is not None and v.reason is Reason.BLOCKED_BY_MEMBER
        return got

    def of(self, task: DesiredTask, min_fraction: float = 1.0) -> Verdict | None:
        """None when every member is done (or the task needs nothing), else the verdict.

        Most members asked about are done (a map whose upstream completed, a fan-in about to
        run): they are recognised inline; the first pending one ends the question, and the
        waiting verdict leaves its counts to ``explain`` (only a note's first task needs them)."""
        if not self.campaign:
            return None
        needs = task.needs
        if not needs:
            return None
        top, base = self._obs
        corrupt, held = self.corrupt, self.held
        complete, adopted, queued, running = OutputState.COMPLETE, OutputState.ADOPTED, SchedState.PENDING, SchedState.RUNNING
        done = total = 0
        lost: list[str] = []
        for need in needs:
            members = need.members
            total += len(members)
            pol = None
            for m in members:
                o = top.get(m) if top else None
                if o is None:
                    o = base.get(m, EMPTY_OBS)
                out, sched = o.output, o.sched
                if (out is complete or out is adopted) and sched is not queued and sched is not running and not (corrupt and m in corrupt) and not (held and m in held):
                    done += 1
                    continue
                pol = pol or self.policies.get(need.stage, self.default)
                c = self.member(m, pol, need.stage)
                if c == PENDING:
                    return WAITING
                if c == DONE:
                    done += 1
                else:
                    lost.append(m)
        if done == total:
            return None
        partial = min_fraction < 1.0 and done / total >= min_fraction
        return Verdict(Reason.PARTIAL_MEMBERS if partial else Reason.BLOCKED_BY_MEMBER, done, total, (), tuple(lost), "+".join(n.stage for n in needs))

    def explain(self, task: DesiredTask, min_fraction: float = 1.0) -> Verdict | None:
        """``of`` with every count: members done, pending per need, lost (for a note)."""
        v = self.of(task, min_fraction)
        if v is not WAITING:
            return v
        done = total = 0
        pending: list[tuple[str, int, int]] = []
        lost: list[str] = []
        for need in task.needs:
            pol = self.policies.get(need.stage, self.default)
            classes = [self.member(m, pol, need.stage) for m in need.members]
            done += classes.count(DONE)
            total += len(classes)
            lost.extend(m for m, c in zip(need.members, classes, strict=True) if c == LOST)
            if PENDING in classes:
                pending.append((need.stage, classes.count(PENDING), len(classes)))
        return Verdict(Reason.WAITING_MEMBERS, done, total, tuple(pending), tuple(lost), "+".join(n.stage for n in task.needs))

    def completed(self, task: DesiredTask, missing: Collection[str]) -> tuple[str, ...]:
        """Of the members a task ran without (World.partial), those done now: the task is stale."""
        if not missing:
            return ()
        out: list[str] = []
        missing = set(missing)
        for need in task.needs:
            pol = self.policies.get(need.stage, self.default)
            out.extend(m for m in need.members if m in missing and self.member(m, pol, need.stage) == DONE)
        return tuple(out)


class Gate:
    """One stage's readiness gate in a plan: every task about to be sent passes ``ready``
    first; those held or ready on a partial set are kept here, for the stage's WAIT actions
    (one per reason, so `reconcile plan` reads per stage) and for the sends' ``partial``."""

    def __init__(self, readiness: Readiness, missing_inputs: Mapping[str, str], min_fraction: float) -> None:
        self.readiness, self.missing_inputs, self.min_fraction = readiness, missing_inputs, min_fraction
        self.waiting: list[str] = []  # an input is missing (task.inputs): never sent, never failed
        self.held: dict[Reason, list[DesiredTask]] = {}  # waiting_members, blocked_by_member
        self.on_partial: dict[str, tuple[DesiredTask, Verdict]] = {}

    def ready(self, task: DesiredTask) -> bool:
        """Inputs first (a task that lacks one would fail for want of it), then members."""
        if task.key in self.missing_inputs:
            self.waiting.append(task.key)
            return False
        v = self.readiness.of(task, self.min_fraction)
        if v is None:
            return True
        if v.ready:
            self.on_partial[task.key] = (task, v)
        else:
            self.held.setdefault(v.reason, []).append(task)
        return False

    def partial(self, batched: Sequence[Action]) -> list[Action]:
        """The sends of ``on_partial`` (batched by the planner), each naming what it lacks."""
        out = []
        for a in batched:
            lost = tuple((k, self.on_partial[k][1].lost) for k in a.keys)
            out.append(replace(a, partial=lost, note=note(a.keys[0], self.on_partial[a.keys[0]][1], len(a.keys))))
        return out

    def waits(self) -> list[Action]:
        out = []
        if self.waiting:
            w = self.waiting
            more = f" and {len(w) - 1} other task(s)" if len(w) > 1 else ""
            out.append(Action(ActionKind.WAIT, Reason.WAITING_INPUT, tuple(w), note=f"{w[0]}: {self.missing_inputs[w[0]]}{more}"))
        for reason, held in self.held.items():
            first = self.readiness.explain(held[0], self.min_fraction)
            assert first is not None
            out.append(Action(ActionKind.WAIT, reason, tuple(t.key for t in held), note=note(held[0].key, first, len(held))))
        return out
