"""The vocabulary: every state a task, an attempt or a submission can be in, one enum each.

One word per concept (ARCHITECTURE.md has the glossary): the scheduler's view of an array
task (``SchedState``), the output tree's view of a task (``OutputState``), what became of an
attempt (``Outcome``), a submission's life (``SubmissionState``) and what status reports of
a task (``TaskState``, with its one-letter code for the results branch).
"""

from __future__ import annotations

from enum import StrEnum


class SchedState(StrEnum):
    """One array task as the scheduler sees it (Slurm's many states folded to these)."""

    PENDING = "PENDING"  # queued, configuring, requeued
    RUNNING = "RUNNING"  # running, completing, suspended
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # non-zero exit
    TIMEOUT = "TIMEOUT"  # also DEADLINE
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"  # also BOOT_FAIL, and a local process that vanished
    PREEMPTED = "PREEMPTED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"  # submitted, but the scheduler no longer knows it and left no record

    @property
    def in_flight(self) -> bool:
        return self in (SchedState.PENDING, SchedState.RUNNING)

    @property
    def finished(self) -> bool:
        return not self.in_flight


class OutputState(StrEnum):
    """One task as the output tree sees it."""

    MISSING = "missing"  # some output absent
    COMPLETE = "complete"  # outputs present and the marker's fingerprint is the desired one
    ADOPTED = "adopted"  # as COMPLETE, but the marker was written by `reconcile adopt`, not by a run of ours
    STALE = "stale"  # outputs present and marked, but with another fingerprint
    UNMARKED = "unmarked"  # outputs present, no marker: adoptable or a partial write
    INVALID = "invalid"  # outputs present but failed validation

    @property
    def done(self) -> bool:
        return self in (OutputState.COMPLETE, OutputState.ADOPTED)

    @property
    def partial(self) -> bool:
        """Present but not certified: evidence to move aside before a rerun writes the same paths."""
        return self in (OutputState.UNMARKED, OutputState.INVALID)


class Outcome(StrEnum):
    """What became of one attempt (see core.outcome.classify)."""

    IN_FLIGHT = "in_flight"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class SubmissionKind(StrEnum):
    SUBMIT = "submit"  # first attempt of its tasks
    RESUBMIT = "resubmit"  # a retry, as a sparse array of its batch
    REBUILT = "rebuilt"  # recovered from a manifest in logs/ after the ledger was lost
    LEGACY = "legacy"  # an array job of the old production manager, brought over by `reconcile import-legacy`
    LEGACY_SINGLE = "legacy_single"  # the same, for a batch of one job, which the old tool submitted without --array

    @property
    def old_tool(self) -> bool:
        """Submitted by the old production manager: it writes no completion markers, so its
        attempts are judged by the scheduler and the validator alone (core.outcome.classify)."""
        return self in (SubmissionKind.LEGACY, SubmissionKind.LEGACY_SINGLE)


class SubmissionState(StrEnum):
    """One sbatch call's life, as the ledger journals it."""

    STAGED = "staged"  # script and manifest written by `reconcile stage`; not sent
    RECORDED = "recorded"  # journaled before sbatch; no job id yet (in flight, or its answer was lost)
    SUBMITTED = "submitted"  # the scheduler answered with a job id
    FINISHED = "finished"  # every attempt of it has ended
    ABANDONED = "abandoned"  # never reached the scheduler (or staged for a desired state that moved)

    @property
    def open(self) -> bool:
        return self in (SubmissionState.STAGED, SubmissionState.RECORDED, SubmissionState.SUBMITTED)


class TaskState(StrEnum):
    """What status reports of a task, in the order a person asks: done? running? broken?"""

    COMPLETE = "complete"
    ADOPTED = "adopted"
    RUNNING = "running"
    QUEUED = "queued"
    STAGED = "staged"  # written by `reconcile stage`, not sent: `reconcile submit` sends it
    WAITING = "waiting"  # an input (task.inputs) or an upstream member is missing: not sent until it exists
    RETRYING = "retrying"
    FAILED = "failed"
    BLOCKED = "blocked"  # an upstream member gave up and the stage requires it: finished, like failed
    STALE = "stale"
    MISSING = "missing"

    @property
    def code(self) -> str:
        """One character per state: a 40,000-task status costs 40 kB and diffs well."""
        return _CODES[self]


_CODES = {
    TaskState.COMPLETE: "C",
    TaskState.ADOPTED: "A",
    TaskState.RUNNING: "R",
    TaskState.QUEUED: "Q",
    TaskState.STAGED: "G",
    TaskState.WAITING: "W",
    TaskState.RETRYING: "T",
    TaskState.FAILED: "F",
    TaskState.BLOCKED: "B",
    TaskState.STALE: "S",
    TaskState.MISSING: "M",
}
UNKNOWN_CODE = "?"
"""The code of a task whose state a reader cannot name (a newer writer's state)."""
