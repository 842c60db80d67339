"""Observe: read the ledger, ask the scheduler, list the output tree; write nothing.

The result is the planner's ``core.model.World`` plus what ``apply`` needs to act on it
(job ids, manifests, the scheduler answers to journal). Order matters: the scheduler is
asked *before* the output tree is listed, so a task that finishes between the two reads is
seen complete rather than failed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from reconciler import logs, markers, workers
from reconciler import outputs as output_tree
from reconciler.core import causes
from reconciler.core.model import EMPTY_HISTORY, AttemptObs, Desired, SubmissionObs, TaskObs, World
from reconciler.core.outcome import classify, validate_deeply
from reconciler.core.sizing import SIGKILL, Usage
from reconciler.core.states import Outcome, OutputState, SchedState, SubmissionKind, SubmissionState
from reconciler.core.verification import cursor_of, sample
from reconciler.ledger import Attempt, Ledger, Seen, Submission
from reconciler.scheduler.base import JobRef, Scheduler, SchedulerView, TaskSched
from reconciler.scheduler.pool import is_pool_job
from reconciler.scheduler.script import job_name, log_patterns
from reconciler.spec.expand import Expansion, Task
from reconciler.workers import WorkerSeen

SITE_PROBE_KEY = "site_max_array_size"
SITE_CEILINGS_KEY = "site_ceilings"  # "<when>:<node memory MB>:<partition MaxTime s>", either empty when unknown
SITE_PROBE_EVERY_S = 86400.0
VANISHED = "vanished: the scheduler has no record of it"
KILLED = 128 + SIGKILL  # how a run killed for memory without cgroups ends (core.sizing)
VERIFY_CURSOR_KEY = "verify_cursor"

Verify = Literal["sample", "all"] | frozenset[str] | None
"""Which completed tasks a pass deep-verifies: None, none (read-only verbs); "sample",
``execution.verify_per_pass`` of them, rotating (every pass of once/watch); "all", every one
(`reconcile verify`); a set of keys, those of them that are complete (`reconcile verify NAME KEY...`)."""


class OutputTree(Protocol):
    """What the engine needs of the output tree (reconciler.outputs on disk; a dict in property tests)."""

    def observe(self, tasks: Sequence[Task], deep: Callable[[Task], bool]) -> dict[str, OutputState]: ...

    def move_partial(self, task: Task, label: str) -> list[Path]: ...

    def verify(self, tasks: Sequence[Task]) -> dict[str, str]: ...

    def move_corrupt(self, task: Task, label: str, record: dict[str, object]) -> list[Path]: ...

    def missing_inputs(self, tasks: Sequence[Task]) -> dict[str, str]: ...

    def partial_members(self, by_key: Mapping[str, Task]) -> dict[str, tuple[str, ...]]: ...


class DiskOutputs:
    """The production directory on a (possibly parallel) filesystem: one listing per directory.

    ``validators``: each stage's (by name; "" for a one-stage production)."""

    def __init__(self, production_dir: Path, validators: Mapping[str, Any]) -> None:
        self.production_dir = production_dir
        self.validators = validators
        self._partial: list[str] = []  # complete by a .partial marker, in the latest observe

    def observe(self, tasks: Sequence[Task], deep: Callable[[Task], bool]) -> dict[str, OutputState]:
        self._partial = []
        return output_tree.observe_stages(self.production_dir, tasks, self.validators, deep=deep, partial=self._partial)  # type: ignore[arg-type]

    def partial_members(self, by_key: Mapping[str, Task]) -> dict[str, tuple[str, ...]]:
        """The members each fan-in task complete on a partial set ran without (its marker's word),
        for the tasks the latest observe saw so: one small read each, none on a full set."""
        got = {k: markers.read_missing(self.production_dir, by_key[k]) for k in self._partial if k in by_key}
        return {k: v for k, v in got.items() if v}

    def move_partial(self, task: Task, label: str) -> list[Path]:
        return output_tree.move_partial(self.production_dir, task, label=label)

    def verify(self, tasks: Sequence[Task]) -> dict[str, str]:
        out: dict[str, str] = {}
        for stage, validator in self.validators.items():
            mine = [t for t in tasks if t.stage == stage]
            if mine:
                out.update(output_tree.verify(self.production_dir, mine, validator))
        return out

    def move_corrupt(self, task: Task, label: str, record: dict[str, object]) -> list[Path]:
        return output_tree.move_corrupt(self.production_dir, task, label=label, record=record)

    def missing_inputs(self, tasks: Sequence[Task]) -> dict[str, str]:
        return output_tree.missing_inputs(self.production_dir, tasks)


@dataclass
class Observed:
    """One pass's observation: the planner's ``world``, plus what apply needs to act on it."""

    desired: Desired
    world: World
    latest: dict[str, Attempt]  # each task's latest attempt, as journaled
    subs: dict[str, Submission]  # open submissions by token
    seen: list[Seen] = field(default_factory=list)  # scheduler answers that differ from the journal
    finished: list[str] = field(default_factory=list)  # submissions whose every attempt has now ended
    probed: bool = False  # the site limit was asked of the scheduler this pass
    ceilings_probed: bool = False  # the site's ceilings were asked too (world.site_ceilings), for apply to journal
    verified: tuple[str, ...] = ()  # completed tasks deep-verified this pass (the failures are world.corrupt)
    verify_cursor: int | None = None  # the rotation's new cursor, for apply to keep; None: unchanged
    worker_seen: list[WorkerSeen] = field(default_factory=list)  # the pool's workers' answers that differ from the journal

    def submission(self, token: str) -> SubmissionObs:
        return next(s for s in self.world.submissions if s.token == token)


class Observer:
    """Reads one production's world through its adapters."""

    def __init__(self, desired: Desired, expansion: Expansion, validator_kinds: Mapping[str, str], scheduler: Scheduler, ledger: Ledger, outputs: OutputTree, clock: Callable[[], float]) -> None:
        self.production = expansion.name  # names its jobs (script.job_name), by which a lost answer is found
        self.partition = next((st.spec.resources.partition for st in expansion.stages if st.spec.resources.partition), None)
        self.desired = desired
        self.tasks = expansion.tasks
        self.by_key = expansion.by_key
        self.validator_kinds = validator_kinds  # by stage
        self.has_inputs = any(s.tasks[0].inputs for s in expansion.stages if s.tasks)
        self.fan_in = any(n.fan_in for s in expansion.stages for t in s.tasks[:1] for n in t.needs)
        self.pooled = any(st.pool for st in desired.stage_list)
        self.scheduler = scheduler
        self.ledger = ledger
        self.outputs = outputs
        self.clock = clock

    def observe(self, verify: Verify = None) -> Observed:
        """Read the ledger, ask the scheduler, then list the output tree (and open the files of
        the completed tasks ``verify`` names). Writes nothing."""
        now = self.clock()
        open_subs = self.ledger.submissions()
        attempts = self.ledger.attempts_of([s.token for s in open_subs])
        by_token: dict[str, list[Attempt]] = {}
        for a in attempts:
            by_token.setdefault(a.token, []).append(a)
        sent = [s for s in open_subs if s.state is not SubmissionState.STAGED]
        refs = [
            JobRef(
                s.token, s.job_id, s.submitted or s.created,
                () if s.kind is SubmissionKind.LEGACY_SINGLE else tuple(sorted(a.array_index for a in by_token.get(s.token, []) if not (pool and _ended(a)))),
                job_name(self.production, s.batch, s.token),
            )
            for s in sent if not ((pool := is_pool_job(s.job_id)) and all(_ended(a) for a in by_token.get(s.token, [])))
        ]  # the old tool sent a batch of one job without --array: its record is a plain job's; a pool is asked only what is open
        pool_workers = workers.open_workers(self.ledger)
        refs += workers.refs(pool_workers, self.production)  # the pool's workers: in the same (at most two) reads
        view = self.scheduler.observe(refs) if refs else SchedulerView()
        site, probed = self._site_max_array_size(now)
        ceilings, ceilings_probed = self._site_ceilings(probed)

        seen: list[Seen] = []
        current: dict[tuple[str, int], TaskSched] = {}
        for s in sent:
            job_id = s.job_id or view.found.get(s.token)
            if job_id is None:
                continue
            answers = view.tasks.get(job_id, {})
            for a in by_token.get(s.token, []):
                ts = answers.get(a.array_index)
                if ts is None and job_id in view.gone:
                    ts = TaskSched(SchedState.UNKNOWN, reason=VANISHED)
                if ts is None:
                    continue
                current[(a.token, a.array_index)] = ts
                used = ts.usage
                if a.sched_state != ts.state.value or a.exit_code != ts.exit_code or (used is not None and a.max_rss_mb is None and used.max_rss_mb is not None):
                    rss, cpu = (used.max_rss_mb, used.cpu_s) if used is not None else (None, None)
                    seen.append(Seen(a.token, a.array_index, ts.state, ts.exit_code, ts.reason or ts.state.value, ts.start, ts.end, rss, cpu))

        # outputs after the scheduler: a task that ends between the two reads is seen complete
        history = self.ledger.history()
        latest = self.ledger.latest_attempts()
        unresolved = {a.key for s in open_subs if s.job_id is None and s.token not in view.found for a in by_token.get(s.token, [])}
        # the old tool's attempts write no marker: their outputs are validated to be adopted
        legacy = {a.key for s in open_subs if s.kind.old_tool for a in by_token.get(s.token, [])}
        pol, kinds = self.desired.policy, self.validator_kinds

        def deep(t: Task) -> bool:
            return validate_deeply(kinds[t.stage], history.get(t.key, EMPTY_HISTORY).submissions, pol.adopt_existing, t.key in unresolved, t.key in legacy)

        out = self.outputs.observe(self.tasks, deep)

        tasks: dict[str, TaskObs] = {}
        for key, att in latest.items():
            # this pass's answer, else the journal's; None (staged, or no answer yet) is for
            # the planner to read
            ts = current.get((att.token, att.array_index))
            state = ts.state if ts is not None else (SchedState(att.sched_state) if att.sched_state else None)
            tasks[key] = TaskObs(out.get(key, OutputState.MISSING), state)
        unsubmitted = {st: TaskObs(st, None) for st in OutputState}  # shared: 1M tasks, a handful of values
        for key, st in out.items():
            if key not in tasks:
                tasks[key] = unsubmitted[st]

        submissions = [self._submission_obs(s, by_token.get(s.token, []), view, current, latest, out) for s in open_subs]
        finished = [s.token for s in sent if _all_ended(by_token.get(s.token, []), current)]
        verified, cursor = self._to_verify(verify, tasks)
        corrupt = self.outputs.verify([self.by_key[k] for k in verified]) if verified else {}
        # inputs only of tasks that may be sent: a production without inputs, or done, reads nothing more
        waiting = [t for t in self.tasks if t.inputs and not tasks[t.key].output.done] if self.has_inputs else []
        missing = self.outputs.missing_inputs(waiting) if waiting else {}
        partial = self.outputs.partial_members(self.by_key) if self.fan_in else {}
        worker_obs, worker_seen = workers.answered(pool_workers, view, now)
        # run times only while a pool stage has work left: a pass over a finished production reads nothing more
        runtimes = self._runtimes(out) if self.pooled and _done(out) < len(self.tasks) else {}
        world = World(tasks, history, tuple(submissions), site, corrupt, self.ledger.logs_kept(), missing, partial, worker_obs, runtimes, ceilings)
        return Observed(self.desired, world, latest, {s.token: s for s in open_subs}, seen, finished, probed, ceilings_probed, verified, cursor, worker_seen)

    def _runtimes(self, out: Mapping[str, OutputState]) -> dict[str, list[float]]:
        """The run times of each stage's tasks that completed in a pool and are complete now (a
        task made stale by a changed command stops counting until it is rerun; its older runs
        count again then): what its workers expect."""
        times: dict[str, list[float]] = {}
        for key, took in workers.pool_run_times(self.ledger):
            if out.get(key) is OutputState.COMPLETE and key in self.by_key:
                times.setdefault(self.by_key[key].stage, []).append(took)
        return times

    def _to_verify(self, verify: Verify, tasks: dict[str, TaskObs]) -> tuple[tuple[str, ...], int | None]:
        """(completed keys to open and validate, the rotation's new cursor or None).

        With ``verify_per_pass: 0`` a pass reads nothing more than it did before (not even
        the cursor). Only completed tasks not in flight are verified: an output being
        rewritten by a rerun is not evidence of corruption.
        """
        if verify is None:
            return (), None
        if verify == "sample":
            n = self.desired.policy.verify_per_pass
            if n <= 0:
                return (), None
            after = cursor_of(self.ledger.get_meta(VERIFY_CURSOR_KEY))
            keys, cursor = sample([(t.index, t.key) for t in self.tasks if _verifiable(tasks.get(t.key))], after, n)
            return keys, (cursor if cursor != after else None)
        wanted = None if verify == "all" else verify
        return tuple(t.key for t in self.tasks if (wanted is None or t.key in wanted) and _verifiable(tasks.get(t.key))), None

    def _submission_obs(
        self,
        s: Submission,
        atts: Sequence[Attempt],
        view: SchedulerView,
        current: dict[tuple[str, int], TaskSched],
        latest: dict[str, Attempt],
        out: dict[str, OutputState],
    ) -> SubmissionObs:
        found = view.found.get(s.token) if s.job_id is None else None
        may_abandon = s.state is SubmissionState.STAGED or (s.job_id is None and found is None)
        previous = self.ledger.previous_states(s.token) if may_abandon else {}
        obs = []
        for a in atts:
            ts = current.get((a.token, a.array_index))
            sched = ts.state if ts is not None else (SchedState(a.sched_state) if a.sched_state else None)
            reason = ts.reason if ts is not None and ts.reason else a.reason
            end = ts.end if ts is not None and ts.end is not None else a.end
            is_latest = (lt := latest.get(a.key)) is not None and lt.token == a.token
            cause, said = None, tuple[str, ...]()
            code = ts.exit_code if ts is not None else a.exit_code
            if not s.kind.old_tool and not a.failure_recorded and classify(sched, out.get(a.key, OutputState.MISSING))[0] is Outcome.FAILED:
                # only attempts that failed and are not yet counted: one small read each, once
                cause = causes.from_doc(markers.read_cause(Path(s.manifest), a.array_index))
                job = s.job_id or found
                if cause is None and code == KILLED and job and not is_pool_job(job):  # killed with its wrapper: Slurm's words
                    err = log_patterns(Path(s.manifest).parent.parent, s.batch)[1]  # logs/ holds the manifest and the logs
                    said = logs.scheduler_lines(Path(err.replace("%A", job).replace("%a", str(a.array_index))))
            used = _usage(ts, a, end)
            obs.append(AttemptObs(a.key, a.array_index, sched, reason, end, a.failure_recorded, is_latest, previous.get(a.key), cause, code, used, said))
        current_fp = self._staged_current(s) if s.state is SubmissionState.STAGED else True
        pool = is_pool_job(s.job_id or found)
        return SubmissionObs(s.token, s.batch, s.kind, s.state, s.created, s.job_id, found, current_fp, tuple(obs), pool, s.request)

    def _staged_current(self, s: Submission) -> bool:
        """Whether every task of a staged submission still has the fingerprint it was staged with."""
        try:
            doc = json.loads(Path(s.manifest).read_text(encoding="utf-8"))
            staged = [(t["key"], t["fingerprint"]) for t in doc["tasks"].values()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return all(k in self.by_key and self.by_key[k].fingerprint == fp for k, fp in staged)

    def _site_max_array_size(self, now: float) -> tuple[int | None, bool]:
        """The cluster's MaxArraySize, asked at most once a day (the answer is journaled), so a
        pass stays at two scheduler reads. (value, asked this pass)."""
        cached = self.ledger.get_meta(SITE_PROBE_KEY)
        if cached:
            stamp, _, raw = cached.partition(":")
            if now - float(stamp) < SITE_PROBE_EVERY_S:
                return (int(raw) if raw else None), False
        return self.scheduler.max_array_size(), True

    def _site_ceilings(self, probe: bool) -> tuple[tuple[float | None, float | None], bool]:
        """The most memory a node has and the partition's time limit (what a retry may ask at
        most; (None, None) when unknown), asked with MaxArraySize at most once a day, and at
        once when the ledger has none (one written before they were asked). (value, asked)."""
        if probe or self.ledger.get_meta(SITE_CEILINGS_KEY) is None:
            return self.scheduler.site_ceilings(self.partition), True
        return site_ceilings_of(self.ledger), False


def site_ceilings_of(ledger: Ledger) -> tuple[float | None, float | None]:
    """The cluster's node memory (MB) and partition time limit (s) as last journaled."""
    _, mem, limit = ((ledger.get_meta(SITE_CEILINGS_KEY) or "").split(":") + ["", "", ""])[:3]
    return (float(mem) if mem else None, float(limit) if limit else None)


def _usage(ts: TaskSched | None, a: Attempt, end: float | None) -> Usage | None:
    """What an attempt used: this pass's measure, else the journal's; elapsed from its start
    and end, which every backend reports."""
    if ts is not None and ts.usage is not None:
        return ts.usage
    start = ts.start if ts is not None and ts.start is not None else a.start
    elapsed = end - start if end is not None and start is not None else None
    if elapsed is None and a.max_rss_mb is None and a.cpu_s is None:
        return None
    return Usage(elapsed, a.max_rss_mb, a.cpu_s)


def _done(out: Mapping[str, OutputState]) -> int:
    """How many tasks' outputs are done (counted in C: a pass over a finished production pays ~1 ms)."""
    counts = Counter(out.values())
    return counts[OutputState.COMPLETE] + counts[OutputState.ADOPTED]


def _ended(a: Attempt) -> bool:
    """Its end is journaled (a pool's answer for it would only be read again)."""
    return a.sched_state is not None and SchedState(a.sched_state).finished


def _verifiable(obs: TaskObs | None) -> bool:
    return obs is not None and obs.output.done and not (obs.sched is not None and obs.sched.in_flight)


def _all_ended(atts: Sequence[Attempt], current: dict[tuple[str, int], TaskSched]) -> bool:
    """Whether every attempt of a submission has ended, by this pass's answers or the journal's."""
    if not atts:
        return False
    for a in atts:
        ts = current.get((a.token, a.array_index))
        state = ts.state if ts is not None else (SchedState(a.sched_state) if a.sched_state else None)
        if state is None or state.in_flight:
            return False
    return True


