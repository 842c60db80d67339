"""What each job of the old production manager becomes: pure, so that `reconcile import-legacy
--dry-run` and the import say the same thing, and the mapping is tested without a database.

The old tool (covariance-mocks' production_manager.py) kept one row per (realization,
redshift) with a status and a submit count, and one row per Slurm batch whose ``job_ids``
list gives each job its array index. ``plan_import`` maps them to our tasks and decides:

  completed, outputs certified or valid -> adopted (`.adopted` markers, as `reconcile adopt`)
  completed, outputs missing or invalid -> an ended attempt that failed: planned again
  queued / running / staged, Slurm id   -> an open submission of the old tool (LEGACY): every
                                           pass watches it; never submitted again meanwhile
  failed / cancelled / retrying         -> an ended attempt that failed, keeping submit_count
                                           as the task's submissions and failures (retry limit)
  missing_input                         -> reported; planned like a new task (see MISSING_INPUT_NOTE)
  pending, staged without a Slurm id    -> planned like a new task
  no task with its (realization, redshift), or several -> reported as unmatched
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.core.states import OutputState, SchedState, SubmissionKind

HISTORY_TOKEN = "legacy-ended"
"""The one finished submission that holds the old tool's ended attempts (failures), so that
each task's latest attempt, failure count and submissions read as if we had made them."""

MISSING_INPUT_NOTE = (
    "the old tool never submitted them (their input catalogs were absent); reconciler plans them like "
    "any task of the production: name the inputs in task.inputs (a task then waits until its input exists), "
    "or exclude them in science.realizations.exclude (with a reason); otherwise they fail and are retried"
)
"""Why the planner submits missing_input tasks: desired state is the production file in git,
not a side database; an exclusion there is reviewable and survives a lost ledger, and a
WAITING_INPUT state (a later issue) will hold such tasks by itself."""


class LegacyStatus(StrEnum):
    """The old tool's JobStatus values."""

    PENDING = "pending"
    STAGED = "staged"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRYING = "retrying"
    MISSING_INPUT = "missing_input"

    @classmethod
    def parse(cls, text: str) -> LegacyStatus | None:
        """The status of ``text`` as the enum's values or names write it (PENDING, pending), or None."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class LegacyJob:
    """One row of the old tool's ``jobs`` table, as values."""

    job_id: str  # 'r0000_z0.500'
    realization: int
    redshift: float
    status: LegacyStatus
    submit_count: int = 0
    slurm_job_id: str | None = None  # its batch's array job id
    ended: float | None = None  # completed_at, epoch seconds
    error: str = ""


@dataclass(frozen=True, slots=True)
class LegacyBatch:
    """One row of the old tool's ``batches`` table: a job's array index is its position here."""

    batch_id: str
    job_ids: tuple[str, ...]
    slurm_array_id: str | None = None
    submitted: float | None = None


@dataclass(frozen=True, slots=True)
class LegacyAttempt:
    key: str
    array_index: int
    attempt: int  # the task's submissions, this one included (submit_count)
    failures_before: int  # failed submissions before this one
    state: SchedState | None = None  # None: in flight, to watch; else how it ended (a failure)
    reason: str = ""  # ended: what the task's history says of it
    end: float | None = None


@dataclass(frozen=True, slots=True)
class LegacySubmission:
    """What the ledger records: an open array job of the old tool, or the ended attempts."""

    token: str
    batch: int
    kind: SubmissionKind
    job_id: str | None
    submitted: float | None
    open: bool
    attempts: tuple[LegacyAttempt, ...]


@dataclass(frozen=True)
class LegacyImport:
    adopted: tuple[str, ...] = ()  # completed, valid unmarked outputs: `.adopted` markers
    done: tuple[str, ...] = ()  # completed and already certified (or stale): nothing to write
    submissions: tuple[LegacySubmission, ...] = ()
    replanned: tuple[str, ...] = ()  # completed, outputs missing or invalid
    failed: Mapping[str, int] = field(default_factory=dict)  # failed/cancelled/retrying: key -> submit_count
    missing_input: tuple[str, ...] = ()
    new: tuple[str, ...] = ()  # never submitted by the old tool (or without a Slurm id to watch)
    unmatched: tuple[tuple[str, str], ...] = ()  # (old job id, why)

    @property
    def watched(self) -> dict[str, tuple[str, ...]]:
        """Slurm job id -> the task keys of it this reconciler now watches."""
        return {s.job_id or "": tuple(a.key for a in s.attempts) for s in self.submissions if s.open}

    def summary(self) -> dict[str, object]:
        """What the import prints and keeps in the ledger (meta ``legacy_import``)."""
        return {
            "adopted": len(self.adopted),
            "already_complete": len(self.done),
            "watched": {job: len(keys) for job, keys in sorted(self.watched.items())},
            "failed": {"tasks": len(self.failed), "attempts": sum(self.failed.values())},
            "replanned": len(self.replanned),
            "missing_input": list(self.missing_input),
            "new": len(self.new),
            "unmatched": [f"{job}: {why}" for job, why in self.unmatched],
        }


def point(realization: int, redshift: float) -> tuple[int, str]:
    """A task's place in the old tool's grid, as its key writes it (``r0000/z0.500``):
    redshifts are compared at the key's precision, never as floats."""
    return int(realization), f"{float(redshift):.3f}"


_ENDED = {
    LegacyStatus.FAILED: SchedState.FAILED,
    LegacyStatus.CANCELLED: SchedState.CANCELLED,
    LegacyStatus.RETRYING: SchedState.FAILED,
}
_IN_FLIGHT = (LegacyStatus.QUEUED, LegacyStatus.RUNNING, LegacyStatus.STAGED)


def plan_import(
    jobs: Sequence[LegacyJob],
    batches: Sequence[LegacyBatch],
    keys: Mapping[tuple[int, str], Sequence[str]],
    outputs: Mapping[str, OutputState],
) -> LegacyImport:
    """Map the old tool's jobs to tasks (``keys``: ``point`` -> task keys of the production)
    and decide what each becomes; ``outputs``: the state of each completed job's task, its
    outputs validated. See the module docstring for the rules."""
    adopted: list[str] = []
    done: list[str] = []
    replanned: list[str] = []
    failed: dict[str, int] = {}
    missing: list[str] = []
    new: list[str] = []
    unmatched: list[tuple[str, str]] = []
    ended: list[LegacyAttempt] = []
    watched: dict[str, list[LegacyAttempt]] = {}
    where = _positions(batches)
    seen: dict[str, str] = {}
    for job in sorted(jobs, key=lambda j: j.job_id):
        found = keys.get(point(job.realization, job.redshift), ())
        if len(found) != 1:
            why = "no task of the production has this realization and redshift" if not found else (
                f"{len(found)} tasks share this realization and redshift (the production has more axes)"
            )
            unmatched.append((job.job_id, why))
            continue
        key = found[0]
        if key in seen:
            unmatched.append((job.job_id, f"task {key} is already the old tool's job {seen[key]}"))
            continue
        seen[key] = job.job_id
        runs = max(job.submit_count, 1)
        status = job.status
        if status is LegacyStatus.COMPLETED:
            out = outputs.get(key, OutputState.MISSING)
            if out is OutputState.UNMARKED:
                adopted.append(key)
            elif out.done or out is OutputState.STALE:
                done.append(key)
            else:
                replanned.append(key)
                why = "invalid" if out is OutputState.INVALID else "missing"
                ended.append(LegacyAttempt(key, 0, runs, runs - 1, SchedState.COMPLETED, f"old production manager: completed, but its outputs are {why}", job.ended))
        elif status in _ENDED:
            failed[key] = runs
            text = f"old production manager: {status.value}" + (f": {job.error}" if job.error else "")
            ended.append(LegacyAttempt(key, 0, runs, runs - 1, _ENDED[status], text, job.ended))
        elif status in _IN_FLIGHT and job.slurm_job_id:
            pos = where.get((job.slurm_job_id, job.job_id))
            if pos is None:
                unmatched.append((job.job_id, f"{status.value} as Slurm job {job.slurm_job_id}, which no batch lists it in: planned again"))
                new.append(key)
                continue
            watched.setdefault(job.slurm_job_id, []).append(LegacyAttempt(key, pos, runs, runs - 1))
        elif status is LegacyStatus.MISSING_INPUT:
            missing.append(key)
        else:
            new.append(key)
    subs = [_watched(job_id, atts, batches) for job_id, atts in watched.items()]
    subs.sort(key=lambda s: (s.batch, int(s.job_id) if s.job_id and s.job_id.isdigit() else 0, s.token))
    if ended:
        ordered = tuple(LegacyAttempt(a.key, i, a.attempt, a.failures_before, a.state, a.reason, a.end) for i, a in enumerate(ended))
        subs.append(LegacySubmission(HISTORY_TOKEN, 0, SubmissionKind.LEGACY, None, None, False, ordered))
    return LegacyImport(
        tuple(adopted), tuple(done), tuple(subs), tuple(replanned), failed, tuple(missing), tuple(new), tuple(unmatched),
    )


def _positions(batches: Sequence[LegacyBatch]) -> dict[tuple[str, str], int]:
    """(Slurm array id, old job id) -> array index: a job's position in its batch's list."""
    out: dict[tuple[str, str], int] = {}
    for b in batches:
        if b.slurm_array_id:
            for i, job_id in enumerate(b.job_ids):
                out.setdefault((b.slurm_array_id, job_id), i)
    return out


def _watched(job_id: str, atts: list[LegacyAttempt], batches: Sequence[LegacyBatch]) -> LegacySubmission:
    """An open submission of the old tool: a batch of one job was a job without --array."""
    batch = next((b for b in batches if b.slurm_array_id == job_id), None)
    single = batch is not None and len(batch.job_ids) == 1
    number = re.match(r"batch_(\d+)", batch.batch_id) if batch else None
    kind = SubmissionKind.LEGACY_SINGLE if single else SubmissionKind.LEGACY
    ordered = tuple(sorted(atts, key=lambda a: a.array_index))
    return LegacySubmission(f"legacy-{job_id}", int(number[1]) if number else 0, kind, job_id, batch.submitted if batch else None, True, ordered)
