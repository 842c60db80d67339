"""How both Slurm backends ask Slurm: two reads at most per observe, each retried for a while.

The CLI backend reads with ``squeue``/``sacct``, the pyslurm backend with
``pyslurm.Jobs.load()``/``pyslurm.db.Jobs.load()``; what they read and when is the same,
and is written once here:

1. the queue (slurmctld): pending tasks as folded ranges, running tasks, and tasks that
   ended less than MinJobAge ago; it is fresher than accounting and wins over it;
2. accounting (slurmdbd), once, and only when the queue could not answer for some job
   (submitted indices missing from it), or shows one of its tasks ended (what a task used,
   MaxRSS and CPU time, is only in accounting, and the engine asks about an ended task
   only in the pass that sees it end; see :func:`~.slurm_view.needs_accounting`), or for
   a token whose sbatch answer was lost.

So an observe costs at most two calls whatever the number of tasks: a pass in which no
task ended and none left the queue reads the queue alone. A read that gets no
answer is retried with a bounded backoff (:func:`until_answered`) and then stops the pass
with :class:`~reconciler.errors.TransientError`; it never becomes a task state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from reconciler.errors import TransientError
from reconciler.scheduler.base import JobRef, SchedulerView
from reconciler.scheduler.slurm_parse import SlurmRecord
from reconciler.scheduler.slurm_view import merge_view, needs_accounting

T = TypeVar("T")

SACCT_MARGIN_S = 3600.0
"""The accounting read starts at the earliest submission minus this, to absorb clock skew
between this host and the controller (sacct selects jobs that were eligible or running
after it)."""

ReadQueue = Callable[[list[str]], list[SlurmRecord]]
"""Read the queue of our user, restricted to these job ids (all of the user's jobs when
empty); a backend may always read them all, the merge keeps only the refs' jobs."""

ReadAccounting = Callable[[list[str], float], list[SlurmRecord]]
"""Read accounting of our user for these job ids (all of the user's jobs when empty),
since this epoch time."""


TRANSIENT_PATTERNS: tuple[str, ...] = (
    "socket timed out",
    "resource temporarily unavailable",
    "connection refused",
    "connection reset",
    "connection timed out",
    "unable to contact slurm controller",
    "slurmdbd",
    "transport endpoint",
    "zero bytes were transmitted",
    "communication connection failure",
    "unable to connect",
    "persistent connection",
    "problem talking to the database",
    "slurm controller in standby",
    "temporarily unable to accept job",
    "timed out",
    "protocol authentication error",
    "munge",
)
"""Lower-case fragments of stderr that mean "the scheduler did not answer, ask again later"."""


def is_transient(stderr: str) -> bool:
    """Whether a command's stderr says the scheduler was unreachable or busy, not "no"."""
    low = stderr.lower()
    return any(p in low for p in TRANSIENT_PATTERNS)


class _Unanswered(Exception):
    """One attempt of a read did not get an answer; tenacity retries it."""


def until_answered(attempt: Callable[[], T], retry_seconds: float, last: Callable[[], str]) -> T:
    """Run ``attempt`` until it stops raising _Unanswered, within ``retry_seconds`` in all
    (backoff sleeps are cut to the time left), then TransientError naming ``last()``.
    Shared by both Slurm backends, so a dead slurmctld costs each the same bounded delay."""
    deadline = time.monotonic() + retry_seconds
    backoff = wait_random_exponential(multiplier=0.5, max=8)

    def wait(state: RetryCallState) -> float:
        return min(backoff(state), max(0.0, deadline - time.monotonic()))

    try:
        return Retrying(stop=stop_after_delay(retry_seconds), wait=wait, retry=retry_if_exception_type(_Unanswered))(attempt)
    except (RetryError, _Unanswered):
        raise TransientError(
            f"slurmctld did not answer: {last()} (gave up after {retry_seconds:g} s); "
            "nothing was marked failed; the next pass will retry"
        ) from None


def observe_in_two_reads(refs: Sequence[JobRef], read_queue: ReadQueue, read_accounting: ReadAccounting) -> SchedulerView:
    """The state of every array task of these submissions, from at most two reads.

    1. The queue, restricted to the refs' job ids when every ref has one; when a ref lost
       its sbatch answer, all of the user's jobs, to find its token in their comments.
    2. Accounting, once, only if the queue could not answer for some job or shows one of
       its tasks ended (for its usage), for those job ids since the earliest submission
       (minus SACCT_MARGIN_S); tokens the queue did not show are looked up instead among
       all the user's jobs since then (one read still).

    No refs, no read.
    """
    if not refs:
        return SchedulerView()
    ids = sorted({r.job_id for r in refs if r.job_id}, key=_id_key)
    tokens = {r.token for r in refs if not r.job_id}

    queued = read_queue([] if tokens else ids)
    first = merge_view(refs, queued, None)

    missing_tokens = tokens - set(first.found)
    need: set[str] = set()
    for ref in refs:
        job_id = ref.job_id or first.found.get(ref.token)
        if job_id and needs_accounting(ref, job_id, queued):
            need.add(job_id)
    if not need and not missing_tokens:
        return first

    since = min(r.submitted_at for r in refs) - SACCT_MARGIN_S
    jobs = [] if missing_tokens else sorted(need, key=_id_key)
    return merge_view(refs, queued, read_accounting(jobs, since))


def _id_key(job_id: str) -> tuple[int, str]:
    """Numeric job ids in numeric order (what Slurm lists), anything else after them."""
    return (int(job_id), "") if job_id.isdigit() else (1 << 62, job_id)
