"""Why the planner decided what it did: a closed set of reasons, one message table.

Terraform's plans carry an action *and* a reason from a fixed set; so do ours. Code compares
reasons by identity, people read ``MESSAGES``; an action's ``note`` adds the specifics (the
number behind a limit, the job id found), never a second way of saying why.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # submissions of tasks
    NEVER_SUBMITTED = "never_submitted"
    STALE_RERUN = "stale_rerun"
    BACKOFF_ELAPSED = "backoff_elapsed"
    OUTPUT_LOST = "output_lost"
    OUTPUT_CORRUPT = "output_corrupt"
    MANUAL_RETRY = "manual_retry"
    PARTIAL_OUTPUT = "partial_output"
    PARTIAL_MEMBERS = "partial_members"
    MEMBERS_COMPLETED = "members_completed"
    # submissions already journaled
    STAGED_CURRENT = "staged_current"
    STAGED_OUTDATED = "staged_outdated"
    TOKEN_FOUND = "token_found"
    NEVER_RECEIVED = "never_received"
    REBUILT_UNKNOWN = "rebuilt_unknown"
    # attempts that ended
    ATTEMPT_FAILED = "attempt_failed"
    NO_MARKER = "no_marker"
    LEGACY_COMPLETED = "legacy_completed"
    RETRIES_EXHAUSTED = "retries_exhausted"
    CANNOT_RUN = "cannot_run"
    AT_CEILING = "at_ceiling"
    # waiting
    BACKOFF = "backoff"
    QUEUE_CAP = "queue_cap"
    LOOKUP_GRACE = "lookup_grace"
    AWAITING_SCHEDULER = "awaiting_scheduler"
    WAITING_INPUT = "waiting_input"
    WAITING_MEMBERS = "waiting_members"
    BLOCKED_BY_MEMBER = "blocked_by_member"
    # tasks that left the production, or changed
    REMOVED_PRUNE = "removed_prune"
    REMOVED_IN_FLIGHT = "removed_in_flight"
    STALE = "stale"
    SITE_LIMIT = "site_limit"
    # a pool's workers
    POOL_SHORT = "pool_short"
    POOL_SURPLUS = "pool_surplus"
    WORKER_FOUND = "worker_found"
    WORKER_NEVER_RECEIVED = "worker_never_received"
    WORKER_HUNG = "worker_hung"
    # cleanup
    LOGS_EXPIRED = "logs_expired"
    LOGS_ARCHIVED = "logs_archived"


MESSAGES: dict[Reason, str] = {
    Reason.NEVER_SUBMITTED: "missing: never submitted",
    Reason.STALE_RERUN: "stale: fingerprint changed (execution.rerun_on_change: true)",
    Reason.BACKOFF_ELAPSED: "failed; backoff elapsed, retries left",
    Reason.OUTPUT_LOST: "outputs missing after the task completed (deleted or moved): planned again",
    Reason.OUTPUT_CORRUPT: "output failed verification after the task completed: moved to qa/corrupt/ and planned again",
    Reason.MANUAL_RETRY: "failed; `reconcile retry` waived the backoff and gave one more attempt",
    Reason.PARTIAL_OUTPUT: "outputs present but not certified complete: moved to qa/partial/ before the rerun",
    Reason.PARTIAL_MEMBERS: (
        "ready on a partial set: the members it lacks gave up and the stage's require.min_fraction "
        "is met; the ones missing are recorded, and it becomes stale when one of them completes"
    ),
    Reason.MEMBERS_COMPLETED: "ran on a partial set and a member it lacked has completed since",
    Reason.STAGED_CURRENT: "staged by `reconcile stage`; every task still has the fingerprint it was staged with",
    Reason.STAGED_OUTDATED: "desired state changed since it was staged",
    Reason.TOKEN_FOUND: "its sbatch answer was lost; the job was found by its token",
    Reason.NEVER_RECEIVED: "the scheduler never received it; its tasks are planned again",
    Reason.REBUILT_UNKNOWN: "rebuilt ledger: the scheduler no longer knows this submission; its tasks are planned again",
    Reason.ATTEMPT_FAILED: "the attempt failed",
    Reason.NO_MARKER: "exited 0 but its outputs are missing or invalid (no completion marker)",
    Reason.LEGACY_COMPLETED: "the old production manager's job completed and its outputs are valid: adopted (.adopted marker)",
    Reason.RETRIES_EXHAUSTED: "retries exhausted",
    Reason.CANNOT_RUN: (
        "the command cannot run (not found or not executable), which retrying cannot fix: "
        "given up at once; fix the command or its environment, then `reconcile retry`"
    ),
    Reason.AT_CEILING: (
        "ran out of memory or time while asking the most the site gives (the node's memory, the partition's "
        "time limit): retrying cannot fix it, given up at once; make the task smaller, or raise the machine "
        "defaults' node_memory_gb / max_time_hours if the site has more, then `reconcile retry`"
    ),
    Reason.BACKOFF: "failed; waiting for backoff before retrying",
    Reason.QUEUE_CAP: "queue cap reached",
    Reason.LOOKUP_GRACE: "sbatch answer lost; looking for its token in the scheduler",
    Reason.AWAITING_SCHEDULER: "submitted; waiting for the scheduler to report the outcome",
    Reason.WAITING_INPUT: "waiting for an input that nothing in the production makes (task.inputs): not submitted until it exists",
    Reason.WAITING_MEMBERS: "waiting for upstream members to complete (needs): not submitted until they are",
    Reason.BLOCKED_BY_MEMBER: (
        "blocked: an upstream member gave up and the stage requires all of them (require.min_fraction); "
        "`reconcile retry` the member, or lower min_fraction"
    ),
    Reason.REMOVED_PRUNE: "removed from the production (execution.prune: true)",
    Reason.REMOVED_IN_FLIGHT: "removed from the production but still queued or running; set execution.prune: true to cancel them",
    Reason.STALE: "stale (outputs made with another fingerprint); set execution.rerun_on_change: true to rerun them",
    Reason.LOGS_EXPIRED: "its logs are older than outputs.cleanup_policy.keep_logs_days: removed",
    Reason.LOGS_ARCHIVED: "its logs are older than outputs.cleanup_policy.keep_logs_days: packed into logs/archive/ (archive_completed), then removed",
    Reason.POOL_SHORT: "the pool has fewer live workers than its ready work needs (execution.pool.workers at most)",
    Reason.POOL_SURPLUS: "workers still queued while the pool has no work and none is coming: cancelled before they start",
    Reason.WORKER_FOUND: "a worker job's sbatch answer was lost; the job was found by its token",
    Reason.WORKER_NEVER_RECEIVED: "the scheduler never received this worker job; the pool is topped up again",
    Reason.WORKER_HUNG: "a worker the scheduler says runs let its claim's lease expire (frozen or stuck): cancelled, and replaced while work remains",
    Reason.SITE_LIMIT: "the cluster's MaxArraySize is below the machine defaults' max_array_size; using the cluster's",
}
assert set(MESSAGES) == set(Reason), "every reason needs a message"


def message(reason: Reason, note: str = "") -> str:
    """The sentence a person reads: the reason's message, then the specifics in parentheses."""
    text = MESSAGES[reason]
    return f"{text} ({note})" if note else text
