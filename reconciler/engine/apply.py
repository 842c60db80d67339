"""Apply: journal what a pass saw, then perform exactly its plan's actions, in order.

Within an action the order of side effects is what makes a pass safe to kill anywhere:
a submission's token, script and manifest are written and its ledger row committed
*before* the scheduler is called, so a pass that dies after sbatch finds the token next
time (RECOVER) and never submits again; partial outputs are moved aside (QUARANTINE),
never deleted, before a rerun writes the same paths.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from reconciler import logs, markers, workers
from reconciler.atomic import atomic_write
from reconciler.core.outcome import failure_text, waived_failures
from reconciler.core.plan import SENDS, Action, ActionKind, Plan
from reconciler.core.reasons import Reason
from reconciler.core.sizing import shortfall
from reconciler.core.states import SubmissionKind, SubmissionState
from reconciler.engine.observe import (
    SITE_CEILINGS_KEY,
    SITE_PROBE_KEY,
    VERIFY_CURSOR_KEY,
    Observed,
    OutputTree,
)
from reconciler.errors import NotSubmitted, SubmitRejected
from reconciler.ledger import Failure, Ledger, Submission
from reconciler.scheduler.base import ArrayJob, Scheduler
from reconciler.scheduler.script import (
    ManifestTask,
    job_name,
    log_patterns,
    render_manifest,
    render_script,
    render_worker_script,
    request_of,
    with_request,
    worker_log_patterns,
)
from reconciler.spec.campaign import list_path, need_paths
from reconciler.spec.expand import SYMBOLIC_DIR, Renderer, Task
from reconciler.spec.load import Loaded

CRASH_ENV = "RECONCILER_FAILPOINT"
WORKER_KINDS = frozenset({ActionKind.START_WORKERS, ActionKind.STOP_WORKERS})
RETRIES = frozenset({Reason.BACKOFF_ELAPSED, Reason.MANUAL_RETRY, Reason.OUTPUT_LOST, Reason.OUTPUT_CORRUPT})


def failpoint(name: str) -> None:
    """Die here, as SIGKILL would, when the test suite asks for it (``RECONCILER_FAILPOINT=name``),
    or stop here, as a hung login node would (``name:stop``: SIGSTOP, until SIGCONT).

    Failpoints let the crash tests hit the narrow windows (between journal and sbatch, between
    sbatch and recording the job id, between the lease check and the write it guards) that
    random kills would rarely land in.
    """
    wanted = os.environ.get(CRASH_ENV)
    if wanted == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif wanted == f"{name}:stop":
        os.kill(os.getpid(), signal.SIGSTOP)


class Fence(Protocol):
    """What apply checks before every sbatch and every ledger write: that this process still
    holds the production. The session passes the production's lease (``lease.Lease``), whose
    ``check`` raises ``errors.Deposed`` once another reconciler has taken it over."""

    @property
    def generation(self) -> int: ...

    def check(self) -> None: ...


class _Unfenced:
    """For engines that never act (read-only verbs) and for tests of the engine alone."""

    generation = 0

    def check(self) -> None:
        return None


UNFENCED: Fence = _Unfenced()


class Actor:
    """Carries out plans through one production's adapters."""

    def __init__(
        self, loaded: Loaded, scheduler: Scheduler, ledger: Ledger, outputs: OutputTree, clock: Callable[[], float], python: str,
        fence: Fence = UNFENCED,
    ) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.production_dir = loaded.production_dir
        self.by_key = loaded.expansion().by_key
        self.stages = {st.name: st for st in loaded.expansion().stages}
        self.scheduler = scheduler
        self.ledger = ledger
        self.outputs = outputs
        self.clock = clock
        self.python = python
        self.fence = fence
        self.max_retries = loaded.spec.execution.retry_policy.max_retries
        self._abandoned: dict[str, int] = {}
        self._log_names: list[str] | None = None  # logs/, listed once per pass when logs are pruned

    def apply(self, p: Plan, obs: Observed) -> tuple[dict[str, int], list[str]]:
        """Journal what ``obs`` saw, perform exactly ``p``'s actions in order, then close the
        submissions whose attempts all ended (last: a submission closed before its failures
        were counted would never be settled again, if the pass died in between).

        Returns (tasks per action kind, events for the person watching). Scheduler errors
        stop the pass (TransientError) and lose nothing.
        """
        now = self.clock()
        self.fence.check()
        self.ledger.journal(obs.seen)
        if obs.worker_seen:
            workers.journal(self.ledger, obs.worker_seen)
        if obs.probed and obs.world.site_max_array_size is not None:  # unknown (slurmctld down): ask again next pass
            self.ledger.set_meta(SITE_PROBE_KEY, f"{now}:{obs.world.site_max_array_size}")
        mem, limit = obs.world.site_ceilings
        site_answered = obs.probed and obs.world.site_max_array_size is not None
        if obs.ceilings_probed and (mem is not None or limit is not None or site_answered):  # nothing known (the local backend): nothing kept
            self.ledger.set_meta(SITE_CEILINGS_KEY, f"{now}:{'' if mem is None else mem}:{'' if limit is None else limit}")
        if obs.verify_cursor is not None:  # the verification rotation moves on only when a pass is applied
            self.ledger.set_meta(VERIFY_CURSOR_KEY, str(obs.verify_cursor))
        self._abandoned = {}
        self._log_names = None
        applied: dict[str, int] = {}
        events: list[str] = []
        for a in p.actions:
            if a.kind is ActionKind.WAIT:
                continue
            self.fence.check()
            event = self._act(a, obs)
            if event:
                events.append(event)
            applied[a.kind.value] = applied.get(a.kind.value, 0) + (len(a.keys) or 1)  # tasks; submissions for prune_logs
        self.fence.check()
        self.ledger.finish(obs.finished, self.clock())
        if applied:
            self.ledger.event("pass", json.dumps(applied, sort_keys=True), self.clock())
        return applied, events

    def _attempts_so_far(self, key: str, obs: Observed) -> int:
        """Submissions of ``key`` that count, after the abandons this pass already applied."""
        history = obs.world.history
        return (history[key].submissions if key in history else 0) - self._abandoned.get(key, 0)

    def _act(self, a: Action, obs: Observed) -> str | None:
        now = self.clock()
        if a.kind in WORKER_KINDS or (a.kind in (ActionKind.RECOVER, ActionKind.ABANDON) and a.token not in obs.subs):
            return self._workers(a, obs)
        if a.kind is ActionKind.RECOVER:
            job = obs.submission(_token(a)).found
            assert job is not None
            self.ledger.set_submitted(_token(a), job, now)
            return f"recovered submission {a.token} as job {job}: its sbatch answer was lost, the job was found by its token"
        if a.kind is ActionKind.RECORD_FAILURE:
            ended = obs.submission(_token(a))
            atts = {x.array_index: x for x in ended.attempts}
            rows = []
            for key, i in zip(a.keys, a.array_indices, strict=True):
                at = atts[i]  # what it ran out of is read by the rule settle read it by (core.sizing)
                short = shortfall(at.sched, at.exit_code, at.cause, at.usage, ended.request, at.scheduler_said)
                rows.append(Failure(
                    _token(a), i, key, failure_text(at, a.reason), now if at.end is None else at.end, at.cause.dumps() if at.cause else None,
                    short, ended.request, at.usage.max_rss_mb if at.usage else None,
                ))
            self.ledger.record_failures(rows, now)
        elif a.kind is ActionKind.ABANDON:
            self.ledger.abandon(_token(a), a.message, now)
            for key in a.keys:
                self._abandoned[key] = self._abandoned.get(key, 0) + 1
            return f"submission {a.token} abandoned: {a.message}"
        elif a.kind is ActionKind.WAIVE:
            history = obs.world.history
            self.ledger.waive([(k, waived_failures(history[k].failures, self.max_retries)) for k in a.keys], now)
        elif a.kind is ActionKind.GIVE_UP:
            self.ledger.give_up(a.keys, a.message, now)
        elif a.kind is ActionKind.CANCEL:
            self._cancel(a, obs)
        elif a.kind is ActionKind.ADOPT:
            return self._adopt(a, obs)
        elif a.kind is ActionKind.QUARANTINE and a.reason is Reason.OUTPUT_CORRUPT:
            return self._quarantine_corrupt(a, obs)
        elif a.kind is ActionKind.QUARANTINE:
            self._quarantine(a, obs)
        elif a.kind is ActionKind.SEND:
            sub = obs.subs[_token(a)]
            self.ledger.unstage(sub.token, now)
            self._send(replace(sub, state=SubmissionState.RECORDED, created=now), a.array_indices, a.expect_s)
        elif a.kind in SENDS:
            self._submit(a, obs)
            if a.request is not None:  # said as it happens: a retry that asks more than its stage
                return f"{a.kind.value} {len(a.keys)} task(s) of batch {a.batch:04d} {a.note}"
        elif a.kind is ActionKind.PRUNE_LOGS:
            return self._prune_logs(a)
        return None

    def _prune_logs(self, a: Action) -> str:
        sub = self.ledger.submission(_token(a))
        logs_dir = self.production_dir / "logs"
        if self._log_names is None:  # one listing of logs/ and of logs/causes/ per pass, however many are pruned
            self._log_names = logs.listing(logs_dir)
        files = logs.submission_logs(logs_dir, self._log_names, sub.batch, sub.job_id, sub.manifest)
        archive = logs.prune(logs_dir, files, Path(sub.manifest).stem, archive=a.reason is Reason.LOGS_ARCHIVED)
        self.ledger.logs_pruned(sub.token, len(files), archive, self.clock())
        return f"logs of submission {sub.token} (batch {sub.batch}): {len(files)} file(s) {'archived to logs/' + archive + ' and ' if archive else ''}removed ({a.note})"

    def _cancel(self, a: Action, obs: Observed) -> None:
        per_job: dict[str, list[int]] = {}
        jobs = {s.token: s.job_id or s.found for s in obs.world.submissions}
        for key in a.keys:
            att = obs.latest.get(key)
            job = jobs.get(att.token) if att else None
            if att and job:
                per_job.setdefault(job, []).append(att.array_index)
        for job, idx in sorted(per_job.items()):
            self.scheduler.cancel(job, sorted(idx))
        self.ledger.event("cancel", f"cancelled {len(a.keys)} task(s): {a.message}", self.clock())

    def _adopt(self, a: Action, obs: Observed) -> str:
        """The old tool's job completed and its outputs are valid: `.adopted` markers, as
        `reconcile adopt` writes them (it writes no marker of its own)."""
        now = self.clock()
        history = obs.world.history
        for key in a.keys:
            attempt = history[key].submissions if key in history else 0
            markers.write_marker(self.production_dir, self.by_key[key], attempt=attempt, exit_code=0, start=now, end=now, adopted=True)
        self.ledger.event("adopt", f"adopted {len(a.keys)} task(s): {a.message}", now)
        return f"{len(a.keys)} task(s) of the old production manager ({a.note}) completed with valid outputs: adopted"

    def _quarantine(self, a: Action, obs: Observed) -> None:
        now = self.clock()
        for key in a.keys:
            moved = self.outputs.move_partial(self.by_key[key], f"attempt{self._attempts_so_far(key, obs):02d}-{now:.0f}")
            if moved:
                self.ledger.event("partial", f"moved {len(moved)} partial output(s) aside before rerun: {moved[0]}", now, key)

    def _quarantine_corrupt(self, a: Action, obs: Observed) -> str:
        """Move each task's outputs and markers to qa/corrupt/ with a REASON.json saying which
        check failed and when; the rerun is the plan's RESUBMIT, applied after this."""
        now = self.clock()
        check = self.loaded.stage_spec(self.by_key[a.keys[0]].stage).the_task.validator.kind
        for key in a.keys:
            problem = obs.world.corrupt[key]
            record: dict[str, object] = {
                "key": key, "problem": problem, "check": check, "verified_at": now,
                "verified_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "fingerprint": self.by_key[key].fingerprint, "reason": a.reason.value,
            }
            moved = self.outputs.move_corrupt(self.by_key[key], f"{now:.0f}", record)
            self.ledger.event("corrupt", f"output failed verification: {problem}; moved {len(moved)} file(s) aside", now, key)
        return f"{len(a.keys)} task(s) whose outputs failed verification moved to qa/corrupt/ (with REASON.json): {a.note}"

    def _submit(self, a: Action, obs: Observed) -> None:
        assert a.batch is not None
        now = self.clock()
        token = f"{now:.0f}-{secrets.token_hex(6)}"
        stage = self.by_key[a.keys[0]].stage  # a batch never mixes stages (core.planner)
        spec = self.loaded.stage_spec(stage)
        ex = self.stages[stage]
        renderer = Renderer(spec, where=f"stages.{stage}" if stage else "task", over=ex.axes, needs=ex.needs)
        partial = dict(a.partial)
        tasks: dict[int, ManifestTask] = {}
        for key, idx in zip(a.keys, a.array_indices, strict=True):
            t = self.by_key[key]
            needs = need_paths(t.needs, t.key, self._first_output, SYMBOLIC_DIR) if t.needs else None
            argv = renderer.argv(t.params, t.index, t.key, SYMBOLIC_DIR, t.outputs, needs)
            lists = self._lists(t, partial.get(key, ()))
            tasks[idx] = ManifestTask(t.key, t.index, argv, t.outputs, t.fingerprint, self._attempts_so_far(key, obs) + 1, lists, partial.get(key, ()))
        base = self.production_dir / "logs" / f"batch_{a.batch:04d}_{token}"
        script_path, manifest_path = base.with_suffix(".sh"), base.with_suffix(".json")
        spec = with_request(spec, a.request)  # a retry that asks more than its stage (core.sizing)
        manifest = render_manifest(
            spec, batch=a.batch, token=token, production_dir=self.production_dir, tasks=tasks, generation=self.fence.generation,
        )
        script = render_script(
            spec, batch=a.batch, token=token, array_indices=sorted(tasks), manifest=manifest_path,
            production_dir=self.production_dir, python=self.python,
        )
        atomic_write(manifest_path, manifest)
        atomic_write(script_path, script)
        kind = SubmissionKind.RESUBMIT if a.reason in RETRIES else SubmissionKind.SUBMIT  # staged retries too
        state = SubmissionState.STAGED if a.kind is ActionKind.STAGE else SubmissionState.RECORDED
        request = a.request or request_of(spec)
        sub = Submission(token, a.batch, kind, state, None, self.scheduler.name, str(script_path), str(manifest_path), now, None, request)
        failpoint("before_record")
        self.fence.check()
        failpoint("after_fence")  # a holder stopped here is deposed meanwhile: the ledger refuses the write
        self.ledger.record_submission(sub, [(i, t.key) for i, t in sorted(tasks.items())])
        if state is SubmissionState.RECORDED:
            self._send(sub, sorted(tasks), a.expect_s)

    def _workers(self, a: Action, obs: Observed) -> str:
        """The pool's workers: start an array of them (journaled before sbatch, as a submission
        is), cancel queued ones the work no longer needs, recover or abandon a lost answer."""
        now = self.clock()
        if a.kind is ActionKind.RECOVER:
            found = next(w.found for w in obs.world.workers if w.token == a.token)
            assert found is not None
            workers.set_submitted(self.ledger, _token(a), found, now)
            return f"recovered pool workers {a.token} as job {found}: the sbatch answer was lost, the job was found by its token"
        if a.kind is ActionKind.ABANDON:
            workers.abandon(self.ledger, _token(a), now)
            return f"pool workers {a.token} abandoned: {a.message}"
        if a.kind is ActionKind.STOP_WORKERS:
            w = next(w for w in obs.world.workers if w.token == a.token)
            job_id = str(w.job_id or w.found)
            self.scheduler.cancel(job_id, list(a.array_indices))
            return f"cancelled {len(a.array_indices)} queued pool worker(s) of job {job_id}: {a.message}"
        token = f"{now:.0f}-{secrets.token_hex(6)}"
        count = len(a.array_indices)
        name = workers.job_name(self.loaded.name, token)
        script_path = self.production_dir / "logs" / "pool" / f"workers_{token}.sh"
        export = [n for st in self.stages.values() if st.spec.execution.mode == "pool" for n in st.spec.environment.export_env]
        script = render_worker_script(self.spec, name=name, token=token, count=count, production_dir=self.production_dir, python=self.python, export=export)
        script_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(script_path, script)
        self.fence.check()
        workers.record(self.ledger, token, count, self.spec.execution.pool.nodes, now)
        out, err = worker_log_patterns(self.production_dir)
        job = ArrayJob(token, name, script_path, script, tuple(range(count)), None, self.production_dir, out, err)
        failpoint("workers_recorded")
        self.fence.check()
        job_id = self.scheduler.submit(job)
        self.fence.check()
        workers.set_submitted(self.ledger, token, job_id, self.clock())
        return f"started {count} pool worker(s) as job {job_id}: {a.message}"

    def _send(self, sub: Submission, indices: Sequence[int], expect_s: float | None = None) -> str:
        out, err = log_patterns(self.production_dir, sub.batch)
        job = ArrayJob(
            token=sub.token,
            name=job_name(self.loaded.name, sub.batch, sub.token),
            script_path=Path(sub.script),
            script=Path(sub.script).read_text(encoding="utf-8"),
            array_indices=tuple(indices),
            throttle=self.loaded.stage_spec(self._stage_of(sub.token)).execution.array_throttle,
            workdir=self.production_dir,
            log_out=out,
            log_err=err,
            pool_expect_s=expect_s,
        )
        failpoint("after_record")
        self.fence.check()
        try:
            job_id = self.scheduler.submit(job)
        except (NotSubmitted, SubmitRejected) as exc:
            # the scheduler's own answer that no job exists: journal it, so the next pass plans
            # these tasks again instead of looking for a token that can never appear
            self.ledger.abandon(sub.token, str(exc), self.clock())
            raise
        failpoint("after_submit")
        self.fence.check()  # deposed now: the new holder finds this job by its token
        self.ledger.set_submitted(sub.token, job_id, self.clock())
        return job_id

    def _first_output(self, key: str) -> str:
        return self.by_key[key].outputs[0]

    def _lists(self, t: Task, missing: Sequence[str]) -> dict[str, list[str]]:
        """The list files a fan-in task's command reads (campaign.list_path -> its members' first
        outputs, in the upstream stage's order), without the members the plan says it runs without."""
        if not t.needs:
            return {}
        gone = set(missing)
        return {
            list_path(t.key, n.stage): [self.by_key[m].outputs[0] for m in n.members if m not in gone]
            for n in t.needs if n.fan_in
        }

    def _stage_of(self, token: str) -> str:
        """The stage of a journaled submission (of its first task)."""
        keys = [a.key for a in self.ledger.attempts_of([token])]
        return self.by_key[keys[0]].stage if keys and keys[0] in self.by_key else ""


def _token(a: Action) -> str:
    assert a.token is not None, f"{a.kind} acts on a submission"
    return a.token
