"""plan(): the difference between desired and observed state, as a value.

Pure: no I/O, no clock (``now`` is an argument), no randomness. Same inputs, same plan, in
the same order. The engine applies plans; the planner never acts.

First the open submissions are settled (core.settle: send, recover, abandon, record
failures, adopt the old tool's; its docstring has the rules).
Then stage by stage (Desired.stage_list, each by its own policy), per task, in this order:
  queued or running             -> nothing (never submitted twice)
  complete, failed verification -> QUARANTINE (to qa/corrupt/, whatever the queue cap), then
                                   RESUBMIT (SUBMIT if never ours) with reason output_corrupt
  complete, ran on a partial set, a member it lacked (World.partial) now done -> stale:
                                   noted (members_completed), or rerun with rerun_on_change
  complete                      -> nothing
  valid, unmarked, never ours   -> adopted: nothing (unless adopt_existing is off)
  stale and not rerun_on_change -> reported in the notes
  stale, rerun_on_change        -> SUBMIT (stale_rerun); once that rerun failed, as any failed task below
  never submitted               -> SUBMIT
  submitted, outcome unknown    -> WAIT (a lost sbatch answer is resolved by token, not resent)
  an input missing (task.inputs) -> WAIT (waiting_input), before any resubmission
  failed, retries left          -> RESUBMIT after initial * multiplier**(failures-1), else WAIT;
                                   asking what the failure says it needs (core.sizing: more memory
                                   after out-of-memory, more time after a timeout, each capped at the
                                   site's; else its last attempt's request), one array per request
  failed, retries exhausted     -> GIVE_UP once, then nothing
  ran short at the site's most  -> GIVE_UP at once (at_ceiling: it already asked the site's ceiling)
  failed, retrying cannot fix   -> GIVE_UP at once (command not found / not executable: core.causes)
  failed, `reconcile retry`     -> WAIVE (journaled: backoff over, one more attempt), RESUBMIT
  ended, no failure, no outputs -> RESUBMIT at once (its outputs were deleted after it completed)
Every send above passes core.readiness first (the summary's rule too): an input missing ->
WAIT waiting_input; a member pending -> WAIT waiting_members; members lost (given up, blocked
themselves, or stale with nothing to rerun them), none pending -> sent on a partial set
(partial_members, Action.partial) if min_fraction allows, else WAIT blocked_by_member. A task that is complete is never held back: readiness gates sends only.
A task (re)submitted over outputs that are present but not certified gets them moved aside
first (QUARANTINE). A stage's batches are numbered after the earlier stages' (batch = base +
index // batch_size, batch-local array indices), so no submission mixes two stages; queued
tasks (counting those whose submission's answer is still unknown) never exceed
``limits.max_queued_tasks``. A pool-mode stage's sends go to the production's pool, outside
that cap, each with the run time its tasks are expected to take (core.pool.expected_runtime);
then core.pool.plan_workers decides the pool's workers, which count against the cap. WAITs
are one per reason and stage. Last, the logs of submissions that finished
``keep_logs_days`` ago are pruned (PRUNE_LOGS; core.cleanup).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from reconciler.core.cleanup import prune_logs
from reconciler.core.model import (
    EMPTY_HISTORY,
    EMPTY_OBS,
    Desired,
    DesiredTask,
    Limits,
    Stage,
    TaskHistory,
    World,
)
from reconciler.core.outcome import adoptable, cannot_retry, rerun_failed
from reconciler.core.plan import Action, ActionKind, Note, Plan
from reconciler.core.pool import expected_runtime, live, plan_workers
from reconciler.core.readiness import Gate, Readiness
from reconciler.core.reasons import Reason
from reconciler.core.settle import Settled, history_of, settle
from reconciler.core.sizing import Growth, Request, at_ceiling, explain, retry_request
from reconciler.core.states import OutputState, SchedState


def _batches(kind: ActionKind, reason: Reason, tasks: Iterable[DesiredTask], base: int, batch_size: int) -> list[Action]:
    """One action per batch, tasks in index order, array indices batch-local; the stage's
    batches are numbered from ``base``, after the earlier stages', so none mixes two stages."""
    by_batch: dict[int, list[DesiredTask]] = {}
    for t in tasks:
        by_batch.setdefault(base + t.index // batch_size, []).append(t)
    return [
        Action(kind, reason, tuple(t.key for t in ts), batch=b, array_indices=tuple(t.index % batch_size for t in ts))
        for b, ts in sorted(by_batch.items())
    ]


def _cap(actions: list[Action], budget: int, starts: list[int]) -> tuple[list[Action], dict[int, list[str]]]:
    """Keep actions within the queue budget; split the one that crosses it. Returns (kept,
    deferred keys by stage: ``starts`` holds each stage's first batch)."""
    kept: list[Action] = []
    deferred: dict[int, list[str]] = {}
    for a in actions:
        stage = sum(1 for b in starts if b <= (a.batch or 0)) - 1
        if budget <= 0:
            deferred.setdefault(stage, []).extend(a.keys)
        elif len(a.keys) <= budget:
            kept.append(a)
            budget -= len(a.keys)
        else:
            keys = a.keys[:budget]
            kept.append(replace(a, keys=keys, array_indices=a.array_indices[:budget], partial=tuple(p for p in a.partial if p[0] in keys)))
            deferred.setdefault(stage, []).extend(a.keys[budget:])
            budget = 0
    return kept, deferred


_KIND = {  # a send's kind by its reason; the others are RESUBMITs of tasks we ran, else SUBMITs
    Reason.MANUAL_RETRY: ActionKind.RESUBMIT, Reason.BACKOFF_ELAPSED: ActionKind.RESUBMIT, Reason.OUTPUT_LOST: ActionKind.RESUBMIT,
    Reason.STALE_RERUN: ActionKind.SUBMIT, Reason.MEMBERS_COMPLETED: ActionKind.SUBMIT, Reason.NEVER_SUBMITTED: ActionKind.SUBMIT,
}


@dataclass
class _Sorted:
    """One stage's tasks, sorted by what this pass does with them (the module docstring's rules)."""

    stage: Stage
    gate: Gate  # inputs and members, checked before anything is sent (core.readiness)
    sends: dict[Reason, list[DesiredTask]] = field(default_factory=dict)  # ready to send, by why
    keys: dict[Reason, list[str]] = field(default_factory=dict)  # waived, given up, waiting, noted: by why
    corrupt: list[DesiredTask] = field(default_factory=list)  # complete, failed verification: moved aside, ready or not
    cannot_run: dict[str, str] = field(default_factory=dict)  # key -> the cause's group, for the note
    backoff_until: float | None = None
    growth: Growth = field(default_factory=Growth)
    resized: dict[str, tuple[Request, str]] = field(default_factory=dict)  # retries asking other than the stage: key -> (request, note)

    def send(self, reason: Reason, task: DesiredTask) -> None:
        if self.gate.ready(task):
            self.sends.setdefault(reason, []).append(task)

    def request_for(self, hist: TaskHistory) -> Request | None:
        """What a failed task's retry asks (core.sizing.retry_request); None: the stage's own.
        A pool-mode stage's tasks run in its workers, whose request is the pool's."""
        if self.stage.pool or (hist.request is None and hist.short is None):
            return None
        return retry_request(self.stage.request, hist.request, hist.short, hist.peak_mb, self.growth)

    def retry(self, reason: Reason, task: DesiredTask, hist: TaskHistory) -> None:
        """Send a failed task again, asking what its failure says it needs (core.sizing): more
        memory after out-of-memory, more time after a timeout, else what its last attempt asked."""
        self.send(reason, task)
        new = self.request_for(hist)
        if new is not None and new != self.stage.request:
            self.resized[task.key] = (new, explain(new, hist.request or self.stage.request, hist.short, hist.peak_mb))

    def mark(self, reason: Reason, key: str) -> None:
        self.keys.setdefault(reason, []).append(key)

    def batched(self, base: int, bs: int, ours: Callable[[str], bool]) -> list[Action]:
        out: list[Action] = []
        for reason, tasks in [*self.sends.items(), (Reason.PARTIAL_MEMBERS, [t for t, _ in self.gate.on_partial.values()])]:
            kind = _KIND.get(reason)
            split = [(kind, tasks)] if kind else [(ActionKind.RESUBMIT, [t for t in tasks if ours(t.key)]), (ActionKind.SUBMIT, [t for t in tasks if not ours(t.key)])]
            for k, ts in split:
                by_request: dict[tuple[Request, str] | None, list[DesiredTask]] = {}
                for t in ts:  # one array asks one request: retries of one batch that differ are separate arrays
                    by_request.setdefault(self.resized.get(t.key), []).append(t)
                for sized, group in sorted(by_request.items(), key=lambda kv: (kv[0] is not None, kv[0][1] if kv[0] else "")):
                    sends = _batches(k, reason, group, base, bs)
                    if sized is not None:
                        sends = [replace(a, request=sized[0], note=sized[1]) for a in sends]
                    out.extend(self.gate.partial(sends) if reason is Reason.PARTIAL_MEMBERS else sends)
        return out

    def decide(self, actions: list[Action], notes: list[Note]) -> None:
        """Everything but the sends: journaled decisions, waits (one per reason), notes."""
        retries, keys = f"max_retries={self.stage.policy.max_retries}", self.keys
        kinds = (
            (ActionKind.WAIVE, Reason.MANUAL_RETRY), (ActionKind.GIVE_UP, Reason.RETRIES_EXHAUSTED), (ActionKind.GIVE_UP, Reason.AT_CEILING),
            (ActionKind.WAIT, Reason.BACKOFF), (ActionKind.WAIT, Reason.AWAITING_SCHEDULER),
        )
        out = [
            Action(kind, r, tuple(keys[r]), until=self.backoff_until if r is Reason.BACKOFF else None, note=retries if r in (Reason.RETRIES_EXHAUSTED, Reason.MANUAL_RETRY) else "")
            for kind, r in kinds if r in keys
        ]
        if self.cannot_run:
            causes = sorted(set(self.cannot_run.values()))
            note = "; ".join(causes[:3]) + (f"; and {len(causes) - 3} more" if len(causes) > 3 else "")
            out.append(Action(ActionKind.GIVE_UP, Reason.CANNOT_RUN, tuple(self.cannot_run), note=note))
        actions += out + self.gate.waits()
        where = f"stage {self.stage.name}: " if self.stage.name else ""
        notes += [Note(r, tuple(keys[r]), (where + n).rstrip(": ")) for r, n in ((Reason.STALE, ""), (Reason.MEMBERS_COMPLETED, "execution.rerun_on_change is off: not rerun")) if r in keys]


def plan(desired: Desired, world: World, now: float, limits: Limits, *, stage: bool = False, retry: bool = False) -> Plan:
    """The actions that move the world towards ``desired``; see the module docstring for the rules.

    ``world.tasks`` may hold keys that are no longer desired (tasks removed from the
    production): in-flight ones are cancelled only with ``policy.prune``. ``stage`` writes
    new submissions without sending them (and keeps staged ones staged); ``retry`` waives
    the backoff of failed tasks and gives given-up ones one more attempt.
    """
    settled = settle(desired, world, now, limits, stage=stage)
    lim, task_over, hist_over, held = settled.limits, settled.tasks, settled.history, settled.held
    observed, remembered = world.tasks, world.history
    readiness = Readiness(desired, *settled.views(world), held=held, corrupt=world.corrupt, retry=retry)
    ran_partial, failed_verification = world.partial, world.corrupt
    queued, base = 0, 0
    in_pool = {a.key for sub in world.submissions if sub.pool for a in sub.attempts if a.latest}  # latest attempt in the pool
    pool_work = pending = 0  # tasks in the pool; tasks of pool stages that will come to it
    desired_keys: set[str] = set()
    actions, notes = _staged_to_pool(list(settled.actions), desired, world), list(settled.notes)
    in_pool.update(k for a in actions if a.kind is ActionKind.SEND and a.expect_s is not None for k in a.keys)
    wanted: list[Action] = []
    pooled: list[Action] = []  # sends into the pool: outside the queue cap (its workers are inside it)
    starts: list[int] = []  # the first batch of each stage
    for st in desired.stage_list:
        pol = st.policy
        bs = max(1, min(pol.batch_size, lim.max_array_size))
        s = _Sorted(st, Gate(readiness, world.missing_inputs, st.min_fraction), growth=Growth(pol.memory_factor, pol.time_factor, lim.node_memory_mb, lim.max_time_s))
        for task in st.tasks:
            key = task.key
            desired_keys.add(key)
            obs = task_over.get(key) or observed.get(key, EMPTY_OBS)
            sched = obs.sched
            if (sched is not None and sched.in_flight) or key in held:
                if key in in_pool:
                    pool_work += 1  # behind the pool's workers, not in the scheduler's queue
                else:
                    queued += 1  # in the queue, or its submission's answer was lost: it may well be; counted even if complete
                continue
            output = obs.output
            if output is OutputState.COMPLETE or output is OutputState.ADOPTED:
                if failed_verification and key in failed_verification:
                    hist = hist_over.get(key) or remembered.get(key, EMPTY_HISTORY)
                    if sched is not None or hist.submissions == 0:  # ours with no answer yet: a later pass
                        s.corrupt.append(task)
                        s.send(Reason.OUTPUT_CORRUPT, task)
                elif ran_partial and key in ran_partial and output is OutputState.COMPLETE and readiness.completed(task, ran_partial[key]):
                    if pol.rerun_on_change:
                        s.send(Reason.MEMBERS_COMPLETED, task)  # ran on a partial set; a member it lacked is done now
                    else:
                        s.mark(Reason.MEMBERS_COMPLETED, key)
                continue
            hist = hist_over.get(key) or remembered.get(key, EMPTY_HISTORY)
            if pol.adopt_existing and adoptable(output, hist.submissions):
                continue  # adopted: valid outputs this reconciler never produced
            if output is OutputState.STALE and not (pol.rerun_on_change and rerun_failed(sched)):  # a failed rerun: below
                if pol.rerun_on_change:
                    s.send(Reason.STALE_RERUN, task)
                else:
                    s.mark(Reason.STALE, key)
                continue
            if hist.submissions == 0:
                s.send(Reason.NEVER_SUBMITTED, task)
                continue
            if sched is None:
                s.mark(Reason.AWAITING_SCHEDULER, key)  # submitted, but no scheduler answer yet: never resend blindly
                if key in in_pool:
                    pool_work += 1
                else:
                    queued += 1
                continue
            if retry and hist.failures:
                s.mark(Reason.MANUAL_RETRY, key)  # the waiver is journaled, ready or not; the task is resubmitted when ready
                s.retry(Reason.MANUAL_RETRY, task, hist)
                continue
            if key in world.missing_inputs:  # before a resubmission of any kind: it would fail for want of it
                s.gate.waiting.append(key)
                continue
            if not hist.failures:
                s.send(Reason.OUTPUT_LOST, task)  # it ended without a failure on record, yet its outputs are gone
                continue
            if cannot_retry(hist):  # before the retry count: this reason says what to fix
                if not hist.given_up and hist.cause is not None:
                    s.cannot_run[key] = hist.cause.group
                continue
            if hist.failures > pol.max_retries:
                if not hist.given_up:
                    s.mark(Reason.RETRIES_EXHAUSTED, key)
                continue
            if not st.pool and at_ceiling(hist.request, hist.short, s.growth):
                if not hist.given_up:
                    s.mark(Reason.AT_CEILING, key)  # the site has no more to give: a retry would fail the same way
                continue
            # the backoff runs from the end of the latest failure (0 once `reconcile retry` waived it)
            deadline = (hist.last_end if hist.last_end is not None else 0.0) + pol.delay(max(hist.failures, 1))
            if now < deadline:
                s.mark(Reason.BACKOFF, key)
                s.backoff_until = deadline if s.backoff_until is None else min(s.backoff_until, deadline)
                continue
            s.retry(Reason.BACKOFF_ELAPSED, task, hist)
        sends = s.batched(base, bs, lambda k: history_of(settled, world, k).submissions > 0)  # ours: a rerun
        if st.pool:
            expect = _expect(st, world)
            pooled.extend(replace(a, expect_s=expect) for a in sends)
            pending += len(s.keys.get(Reason.BACKOFF, ())) + len(s.gate.held.get(Reason.WAITING_MEMBERS, ()))
        else:
            wanted.extend(sends)
        # corrupt outputs go aside even when the queue cap or readiness defers their rerun: the
        # move is what remembers the verdict (next pass they read missing: output_lost)
        actions.extend(_quarantine_corrupt(s.corrupt, failed_verification, base, bs))
        s.decide(actions, notes)
        starts.append(base)  # ceil(total / bs): the stage's batches, exclusions included
        base += -(-max(st.total, st.tasks[-1].index + 1 if st.tasks else 0) // bs)

    flying = (SchedState.PENDING, SchedState.RUNNING)
    removed_in_flight = sorted(k for k in observed.keys() | task_over.keys() if k not in desired_keys and (task_over.get(k) or observed[k]).sched in flying)
    if removed_in_flight and desired.policy.prune:
        actions.append(Action(ActionKind.CANCEL, Reason.REMOVED_PRUNE, tuple(removed_in_flight)))
    elif removed_in_flight:
        pool_work += sum(1 for k in removed_in_flight if k in in_pool)
        queued += sum(1 for k in removed_in_flight if k not in in_pool)
        notes.append(Note(Reason.REMOVED_IN_FLIGHT, tuple(removed_in_flight)))
    wanted.sort(key=lambda a: a.order)
    work = pool_work + sum(len(a.keys) for a in pooled)
    workers = live(world.workers, now, lim.lookup_grace_s)
    jobs = queued + workers  # the queue cap counts array tasks and the pool's workers
    keep_one = 1 if work and not stage and not workers else 0  # a place for a worker while the pool has work
    kept, deferred = _cap(wanted, lim.max_queued_tasks - jobs - keep_one, starts)
    if not stage and (work or world.workers):
        room = lim.max_queued_tasks - jobs - sum(len(a.keys) for a in kept)
        actions.extend(plan_workers(desired.pool, world.workers, work, pending, room, now, lim.lookup_grace_s))
    kept += pooled
    if stage:
        kept = [replace(a, kind=ActionKind.STAGE) for a in kept]
    else:
        actions.extend(_quarantine(kept, settled, world))
    actions.extend(kept)
    for _, ks in sorted(deferred.items()):
        actions.append(Action(ActionKind.WAIT, Reason.QUEUE_CAP, tuple(ks), note=f"max_queued_tasks={lim.max_queued_tasks}"))
    if not stage:
        actions.extend(prune_logs(world.logs_kept, now, desired.policy))
    actions.sort(key=lambda a: a.order)
    return Plan(tuple(actions), tuple(notes))


def _expect(st: Stage, world: World) -> float:
    """How long a pool-mode stage's task is expected to run (core.pool.expected_runtime)."""
    return expected_runtime(world.runtimes.get(st.name, ()), st.timeout_s)


def _staged_to_pool(actions: list[Action], desired: Desired, world: World) -> list[Action]:
    """A staged submission sent now (SEND) whose stage is in pool mode goes to the pool, with
    the run time its tasks are expected to take, as a SUBMIT of that stage would."""
    if not any(a.kind is ActionKind.SEND for a in actions) or not any(st.pool for st in desired.stage_list):
        return actions
    pool_stage = {t.key: st for st in desired.stage_list if st.pool for t in st.tasks}
    out = []
    for a in actions:
        st = pool_stage.get(a.keys[0]) if a.kind is ActionKind.SEND and a.keys else None
        out.append(replace(a, expect_s=_expect(st, world)) if st else a)
    return out


def _quarantine(sends: list[Action], settled: Settled, world: World) -> list[Action]:
    """Outputs present but not certified (a killed attempt's partial write, a file that failed
    validation) are moved aside before a rerun writes the same paths: evidence, never deleted."""
    out: list[Action] = []
    sources = [*sends, *(a for a in settled.actions if a.kind is ActionKind.SEND)]
    unmarked, invalid = OutputState.UNMARKED, OutputState.INVALID  # OutputState.partial, inlined: 10^5 keys a pass
    for a in sources:
        outs = ((settled.tasks.get(k) or world.tasks.get(k, EMPTY_OBS)).output for k in a.keys)
        keys = tuple(k for k, o in zip(a.keys, outs, strict=True) if o is unmarked or o is invalid)
        if keys:
            out.append(Action(ActionKind.QUARANTINE, Reason.PARTIAL_OUTPUT, keys, batch=a.batch, token=a.token))
    return out


def _quarantine_corrupt(tasks: list[DesiredTask], problems: Mapping[str, str], base: int, batch_size: int) -> list[Action]:
    """Completed outputs that failed verification go to qa/corrupt/, with their marker, so the
    task stops reading complete; the note names the check that failed (the first few)."""
    out = []
    for a in _batches(ActionKind.QUARANTINE, Reason.OUTPUT_CORRUPT, tasks, base, batch_size):
        shown = "; ".join(f"{k}: {problems[k]}" for k in a.keys[:3])
        more = f"; and {len(a.keys) - 3} more" if len(a.keys) > 3 else ""
        out.append(replace(a, array_indices=(), note=shown + more))
    return out
