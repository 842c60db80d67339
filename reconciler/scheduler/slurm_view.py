"""Slurm's records, understood: Slurm's job states folded to ours, squeue and sacct merged.

Pure functions shared by both Slurm backends (the CLI's records come from
:mod:`~reconciler.scheduler.slurm_parse`, pyslurm's from its job objects), so that both
read Slurm the same way. Tested on captured output in tests/test_slurm_parsers.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from reconciler.core.sizing import Usage
from reconciler.core.states import SchedState
from reconciler.scheduler.base import JobRef, SchedulerView, TaskSched
from reconciler.scheduler.slurm_parse import SlurmRecord

_PENDING = SchedState.PENDING
_RUNNING = SchedState.RUNNING

STATE_MAP: dict[str, SchedState] = {
    "PENDING": _PENDING,
    "CONFIGURING": _PENDING,
    "REQUEUED": _PENDING,
    "REQUEUE_HOLD": _PENDING,
    "REQUEUE_FED": _PENDING,
    "RESV_DEL_HOLD": _PENDING,
    "RUNNING": _RUNNING,
    "COMPLETING": _RUNNING,
    "SUSPENDED": _RUNNING,
    "STOPPED": _RUNNING,
    "SIGNALING": _RUNNING,
    "STAGE_OUT": _RUNNING,
    "RESIZING": _RUNNING,
    "COMPLETED": SchedState.COMPLETED,
    "FAILED": SchedState.FAILED,
    "TIMEOUT": SchedState.TIMEOUT,
    "DEADLINE": SchedState.TIMEOUT,
    "OUT_OF_MEMORY": SchedState.OUT_OF_MEMORY,
    "NODE_FAIL": SchedState.NODE_FAIL,
    "BOOT_FAIL": SchedState.NODE_FAIL,
    "PREEMPTED": SchedState.PREEMPTED,
    "CANCELLED": SchedState.CANCELLED,
    "REVOKED": SchedState.FAILED,
    "SPECIAL_EXIT": SchedState.FAILED,
}
"""Every job state of Slurm (``squeue --help-states`` / ``job_state_string``), folded to ours.

A requeued task keeps its job id and array index: it is the same attempt, back to PENDING."""

_ABBREVIATIONS: dict[str, str] = {
    "PD": "PENDING",
    "CF": "CONFIGURING",
    "RQ": "REQUEUED",
    "RH": "REQUEUE_HOLD",
    "RF": "REQUEUE_FED",
    "RD": "RESV_DEL_HOLD",
    "R": "RUNNING",
    "CG": "COMPLETING",
    "S": "SUSPENDED",
    "ST": "STOPPED",
    "SI": "SIGNALING",
    "SO": "STAGE_OUT",
    "RS": "RESIZING",
    "CD": "COMPLETED",
    "F": "FAILED",
    "TO": "TIMEOUT",
    "DL": "DEADLINE",
    "OOM": "OUT_OF_MEMORY",
    "NF": "NODE_FAIL",
    "BF": "BOOT_FAIL",
    "PR": "PREEMPTED",
    "CA": "CANCELLED",
    "RV": "REVOKED",
    "SE": "SPECIAL_EXIT",
}
"""squeue's compact state codes (``%t``), so a capture in that form still parses."""


def map_state(raw: str | Sequence[str] | None) -> SchedState:
    """Slurm's state (``"CANCELLED by 0"``, ``"PD"``, ``["RUNNING"]``...) -> SchedState.

    Newer ``--json`` output gives a list of flags with the base state first; text adds
    ``by <uid>`` to CANCELLED and may add a ``+`` suffix. Unknown words map to UNKNOWN so
    a new Slurm state is visible, never silently taken for a failure or a success.
    """
    if raw is None:
        return SchedState.UNKNOWN
    if not isinstance(raw, str):
        raw = raw[0] if raw else ""
    word = raw.strip().split(" ", 1)[0].rstrip("+").upper()
    word = _ABBREVIATIONS.get(word, word)
    return STATE_MAP.get(word, SchedState.UNKNOWN)


def task_sched(rec: SlurmRecord) -> TaskSched:
    """One record -> the TaskSched of each index it covers.

    In-flight tasks carry squeue's reason ("JobArrayTaskLimit") and no exit code; pending
    ones no times (squeue's StartTime for them is only an estimate). Completed and failed
    tasks carry their exit status; a task killed by a signal gets the shell's 128+S and
    reason "signal S", so it never reads as "exit 0". Tasks the scheduler ended (timeout,
    cancel, node failure...) carry no exit code, only Slurm's words as the reason: squeue
    and sacct disagree on their code (143 vs 0), and a task must not change when it moves
    from one source to the other. Ended tasks carry the record's usage (sacct's; squeue's
    records have none).
    """
    state = map_state(rec.raw_state)
    if state.in_flight:
        start = rec.start if state is SchedState.RUNNING else None
        return TaskSched(state, None, rec.reason, start, None)
    sig = rec.signal or 0
    code = (128 + sig if sig else rec.exit_code) if state in (SchedState.COMPLETED, SchedState.FAILED) else None
    if state is SchedState.COMPLETED:
        reason = ""
    elif state is SchedState.FAILED:
        word = rec.raw_state.split(" ", 1)[0].upper()
        what = f"signal {sig}" if sig else f"exit {rec.exit_code if rec.exit_code is not None else '?'}"
        reason = what if word == "FAILED" else f"{word} {what}"
    elif state is SchedState.UNKNOWN:
        reason = f"unknown Slurm state {rec.raw_state!r}"
    else:
        reason = rec.raw_state
        if sig and state is not SchedState.CANCELLED:
            reason += f" (signal {sig})"
    if rec.reason and state is not SchedState.COMPLETED and rec.reason not in reason:
        reason = f"{reason} ({rec.reason})" if reason else rec.reason
    return TaskSched(state, code, reason, rec.start, rec.end, rec.usage)


CANCELLED_UNRECORDED = "CANCELLED while pending (Slurm keeps no record of such a task)"


def merge_view(
    refs: Sequence[JobRef],
    squeue: Iterable[SlurmRecord],
    sacct: Iterable[SlurmRecord] | None,
) -> SchedulerView:
    """Fold squeue's and sacct's records into the view of these refs.

    squeue is the fresher source (sacct lags slurmctld, and keeps a requeued task's old
    record), so for an index both know, squeue wins; sacct fills in the indices slurmctld
    already purged. Records of other jobs are ignored. A ref without job id is resolved by
    its token in the job's comment, or by its job name (``ref.name``, which carries the
    token's tag: sacct shows no comment where the site does not store them), into
    ``view.found``. A job id neither source knows is ``gone``.

    Slurm keeps no record at all of an array task cancelled while still pending inside the
    folded array record (``scancel 32_1`` on ``32_[0-3]``: neither squeue nor sacct ever
    lists 32_1). So once sacct was asked and a job has left squeue entirely, a submitted
    index (``ref.array_indices``) that neither source knows is reported CANCELLED with a
    reason saying so; while the job is still in squeue such an index is left out (the
    engine keeps its last state), as it might also be a task sacct has not recorded yet.

    Right after an array ends, slurmdbd may still hold a plain record for it (JobID
    ``33``, JobName ``allocation``: tests/data/slurm/sacct_cancelled_pending_tasks_early.txt).
    For a ref whose submitted indices say it is an array, such a record only proves the
    job exists: it is not spread over indices, and it does not trigger the inference above.

    What a task used is only in sacct, and a task that ended is first seen ended in squeue
    (for MinJobAge), and the engine stops asking once every task of its submission has ended: so sacct's
    usage is attached to squeue's ended task of the same index when sacct has that run
    ended too (same start; sacct may not have it yet, and then usage stays None).
    """
    view = SchedulerView()
    wanted = {r.job_id for r in refs if r.job_id}
    tokens = {r.token for r in refs if not r.job_id}
    by_name = lost_by_name(refs)
    arrays = {r.job_id or r.token for r in refs if r.array_indices}
    in_squeue: set[str] = set()
    in_sacct: set[str] = set()  # jobs sacct knows as arrays (or plain jobs, when asked so)
    known: set[str] = set()
    used: dict[tuple[str, int], tuple[float | None, Usage]] = {}  # sacct's ended runs: (job, index) -> (start, usage)
    for source, seen_in in ((sacct or (), in_sacct), (squeue, in_squeue)):  # squeue last: it wins
        for rec in source:
            tok = record_token(rec, by_name)
            if rec.job_id not in wanted:
                if tok is None or tok not in tokens:
                    continue
                view.found.setdefault(tok, rec.job_id)
            known.add(rec.job_id)
            if not rec.is_array and (rec.job_id in arrays or tok in arrays):
                continue  # a stale plain record of an array job: it exists, nothing more
            seen_in.add(rec.job_id)
            ts = task_sched(rec)
            per_job = view.tasks.setdefault(rec.job_id, {})
            for i in rec.indices:
                if ts.usage is None and ts.state.finished and (rec.job_id, i) in used:
                    per_job[i] = _with_usage(ts, *used[(rec.job_id, i)])
                else:
                    per_job[i] = ts
                if seen_in is in_sacct and ts.state.finished and ts.usage is not None:
                    used[(rec.job_id, i)] = (ts.start, ts.usage)
    view.gone = wanted - known
    if sacct is not None:
        for ref in refs:
            job_id = ref.job_id or view.found.get(ref.token)
            if not job_id or not ref.array_indices or job_id in in_squeue or job_id not in in_sacct:
                continue
            per_job = view.tasks.setdefault(job_id, {})
            for i in ref.array_indices:
                per_job.setdefault(i, TaskSched(SchedState.CANCELLED, None, CANCELLED_UNRECORDED))
    return view


def _with_usage(ts: TaskSched, start: float | None, usage: Usage) -> TaskSched:
    """squeue's ended task with sacct's usage, when both are the same run (same start)."""
    if ts.start is not None and start is not None and ts.start != start:
        return ts  # sacct's is another run of the index (a requeue): not this one's usage
    return replace(ts, usage=usage)


def lost_by_name(refs: Iterable[JobRef]) -> dict[str, str]:
    """{job name: token} of the refs whose sbatch answer was lost (no job id) and that know
    the name they were submitted under."""
    return {r.name: r.token for r in refs if not r.job_id and r.name}


def record_token(rec: SlurmRecord, by_name: dict[str, str]) -> str | None:
    """The token of a record: from its comment when that is ours, else from its job name
    when that is the name of a lost submission (``lost_by_name``), else None.

    The comment wins when there is one (squeue always shows it; sacct where the site stores
    comments): it holds the whole token, the name only its tag.
    """
    tok = rec.token
    return tok if tok is not None else by_name.get(rec.name)


def needs_accounting(ref: JobRef, job_id: str, squeue: Sequence[SlurmRecord]) -> bool:
    """Whether this pass must read sacct for this job: squeue cannot answer for it, or shows
    one of its tasks ended.

    With the submitted indices known, squeue cannot answer when some of them are not in it
    (ended more than MinJobAge ago, or never recorded); without them, any array job may have
    purged tasks, so only a non-array job seen in squeue is fully answered. A task squeue
    shows ended needs sacct too, for what it used (its MaxRSS and CPU time are only in
    accounting), and the engine stops asking once every task of its submission has ended: a
    pass that sees ended tasks may be the last to ask. Still one sacct read a pass at most.
    """
    recs = [r for r in squeue if r.job_id == job_id]
    if not recs:
        return True
    submitted = set(ref.array_indices)
    if any(map_state(r.raw_state).finished and (not submitted or submitted & set(r.indices)) for r in recs):
        return True
    if submitted:
        known = {i for r in recs for i in r.indices}
        return not submitted <= known
    return any(r.is_array for r in recs)


