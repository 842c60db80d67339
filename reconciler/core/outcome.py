"""What became of an attempt: the scheduler's state and the output tree's, read together.

Pure, so that "exited 0 but wrote nothing" is decided in one place the planner owns, and a
scheduler that says COMPLETED is never taken at its word: only the completion marker, which
the task wrapper writes after validating the outputs, certifies a task complete.
"""

from __future__ import annotations

from reconciler.core.causes import CauseKind
from reconciler.core.model import AttemptObs, TaskHistory
from reconciler.core.reasons import MESSAGES, Reason
from reconciler.core.states import Outcome, OutputState, SchedState


def classify(sched: SchedState | None, output: OutputState, *, legacy: bool = False) -> tuple[Outcome, Reason | None]:
    """(outcome, why it failed) of an attempt whose latest scheduler state is ``sched``.

    No answer yet, or queued or running: in flight. COMPLETED with certified outputs (or
    outputs certified for another fingerprint: the desired state moved while it ran, which
    the planner reports as stale): succeeded. COMPLETED without a marker: failed, the
    outputs are missing or invalid. Any other end (exit != 0, timeout, out of memory, node
    failure, preemption, cancellation, vanished): failed, in the scheduler's words.

    ``legacy``: an attempt of the old production manager, which writes no marker: COMPLETED
    with outputs that are present and valid (unmarked, validated by observe) succeeded, and the
    planner adopts them (ADOPT); anything else failed, as for our own attempts.
    """
    if sched is None or sched.in_flight:
        return Outcome.IN_FLIGHT, None
    if sched is SchedState.COMPLETED:
        if output.done or output is OutputState.STALE or (legacy and output is OutputState.UNMARKED):
            return Outcome.SUCCEEDED, None
        return Outcome.FAILED, Reason.NO_MARKER
    return Outcome.FAILED, Reason.ATTEMPT_FAILED


def validate_deeply(validator_kind: str, submissions: int, adopt_existing: bool, unresolved: bool, legacy: bool = False) -> bool:
    """Whether an unmarked task's outputs must be opened and validated this pass.

    Listing a directory answers complete/stale/unmarked/missing for every task in it; opening
    files costs a metadata round trip each on a parallel filesystem. Only the adoption rule
    reads the difference between valid and invalid unmarked outputs, so only tasks that may
    be adopted are validated: never submitted by us, or whose only submission may be
    abandoned this pass (``unresolved``). With adoption off, or for our own attempts, an
    unmarked output is moved aside before the rerun whether it is valid or not. A task in a
    submission of the old tool (``legacy``: import-legacy) writes no marker, so its outputs
    are always validated, adoption setting or not: that is how its success is known.
    """
    if validator_kind == "exists":
        return False
    if legacy:
        return True
    if not adopt_existing:
        return False
    return submissions == 0 or unresolved


def failure_text(attempt: AttemptObs, why: Reason) -> str:
    """What the task's history says of a failed attempt: the wrapper's cause when it recorded
    one ("command not found: gen", "outputs invalid: dataset x missing in ..."), else the
    scheduler's words ("exit 1", "TIMEOUT", "vanished: ..."), else the reason's message.

    A wrapper that was itself cancelled knows only the signal; the scheduler knows whether
    that was a time limit, a preemption or scancel, so its words come first then."""
    cause = attempt.cause
    if cause is not None and (cause.kind is not CauseKind.CANCELLED or not attempt.reason):
        return cause.text
    if why is Reason.ATTEMPT_FAILED:
        return attempt.reason or (attempt.sched.value if attempt.sched else MESSAGES[why])
    return MESSAGES[why]


def adoptable(output: OutputState, submissions: int) -> bool:
    """Valid outputs this reconciler never produced (another tool's, or a run before the ledger):
    counted complete when ``execution.adopt_existing`` allows, and marked by `reconcile adopt`."""
    return output is OutputState.UNMARKED and submissions == 0


def waived_failures(failures: int, max_retries: int) -> int:
    """The failure count a task keeps after `reconcile retry` waives its give-up: at most
    ``max_retries``, so exactly one more attempt is left if it had none."""
    return min(failures, max_retries)


def cannot_retry(hist: TaskHistory) -> bool:
    """Its latest failure is one that retrying cannot fix (the command does not exist or cannot
    be executed): the planner gives it up at once instead of backing off."""
    return hist.failures > 0 and hist.cause is not None and hist.cause.kind.permanent


def gave_up(hist: TaskHistory, max_retries: int) -> bool:
    """No further attempt will be made without `reconcile retry`: retries exhausted, or a
    failure that retrying cannot fix."""
    return hist.failures > max_retries or cannot_retry(hist)


def rerun_failed(sched: SchedState | None) -> bool:
    """A stale task whose latest attempt ended without success: its rerun failed. It is then a
    failed task like any other (backoff, retries, give-up, status), not "stale" again: read as
    stale, it would be rerun at once on every pass, for ever."""
    return sched is not None and sched.finished and sched is not SchedState.COMPLETED
