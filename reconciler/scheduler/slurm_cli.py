"""The Slurm backend that talks to the cluster through its command-line tools.

This is the default on Slurm machines: ``sbatch``, ``squeue``, ``sacct``, ``scancel`` and
``scontrol`` exist wherever Slurm does, whatever its release, whereas pyslurm must match the
installed Slurm exactly. Following submitit, the parsers of Slurm's output are pure functions
(:mod:`~reconciler.scheduler.slurm_parse`, :mod:`~reconciler.scheduler.slurm_view`), tested
on tables of output captured from a real cluster (``tests/data/slurm``); only
:class:`SlurmCLI`, here, runs processes.

Cost: :meth:`SlurmCLI.observe` makes at most two read calls whatever the number of tasks: one
``squeue`` (in-flight tasks, folded pending ranges, and tasks that ended less than MinJobAge
ago) and at most one ``sacct`` (tasks already purged from slurmctld's memory, tasks squeue shows
ended, for what they used, and tokens whose sbatch answer was lost); the strategy is
:func:`~.slurm_query.observe_in_two_reads`, shared with the pyslurm backend.

Failures: a scheduler that does not answer is never read as a task failure. Reads are retried
with a bounded exponential backoff and then raise :class:`~reconciler.errors.TransientError`
(exit 4); a submission whose outcome is unknown is never retried here (its token resolves it
on the next pass); a submission Slurm refused raises :class:`SubmitRejected` (exit 2).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

from reconciler.errors import NotSubmitted, SubmitRejected, TransientError, UsageError
from reconciler.scheduler.base import ArrayJob, JobRef, SchedulerView
from reconciler.scheduler.script import TIMEOUT_GRACE_MINUTES, array_spec
from reconciler.scheduler.slurm_parse import (
    INVALID_JOB_ID,
    SQUEUE_FORMAT,
    SlurmRecord,
    parse_max_array_size,
    parse_sbatch_parsable,
    parse_squeue_text,
    sacct_time,
)
from reconciler.scheduler.slurm_query import (
    _Unanswered,
    is_transient,
    observe_in_two_reads,
    until_answered,
)
from reconciler.scheduler.slurm_sacct import SACCT_FIELDS, parse_sacct
from reconciler.scheduler.slurm_site import parse_node_memory, parse_partitions

COMMAND_TIMEOUT_S = 30.0

RETRY_SECONDS_S = 60.0
"""How long reads (and scancel) are retried while Slurm does not answer, before the pass
stops with exit 4. ``RECONCILER_SLURM_RETRY_SECONDS`` overrides it (tests use a few seconds)."""

RETRY_SECONDS_ENV = "RECONCILER_SLURM_RETRY_SECONDS"


def default_retry_seconds() -> float:
    """``RECONCILER_SLURM_RETRY_SECONDS`` when set to a number >= 0, else RETRY_SECONDS_S."""
    raw = os.environ.get(RETRY_SECONDS_ENV, "").strip()
    if not raw:
        return RETRY_SECONDS_S
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{RETRY_SECONDS_ENV}={raw!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise UsageError(f"{RETRY_SECONDS_ENV}={raw!r} must be >= 0 seconds")
    return value


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", str(os.getuid()))


NEVER_SENT = ("(connect failure)", "Connection refused")
"""sbatch errors that prove the request never reached slurmctld (no job can exist)."""


class SlurmCLI:
    """Scheduler protocol over Slurm's command-line tools (see the module docstring)."""

    name = "slurm"
    lookup_grace_s = 300.0
    """How long the engine keeps looking for a token whose sbatch answer was lost before it
    gives the submission up: slurmctld may accept a job after sbatch timed out, and a job
    that already ended is only found again once slurmdbd has its record."""

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        retry_seconds: float | None = None,
        command_timeout: float = COMMAND_TIMEOUT_S,
        user: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.env = dict(env) if env is not None else None
        self.retry_seconds = default_retry_seconds() if retry_seconds is None else retry_seconds
        self.command_timeout = command_timeout
        self._user: str | None = user or None
        self.clock = clock
        self.calls: list[list[str]] = []

    @property
    def user(self) -> str:
        """Whose jobs are read: resolved on first use, so that constructing does no I/O."""
        if self._user is None:
            self._user = _current_user()
        return self._user

    # ---------------------------------------------------------------- process plumbing

    def _exec(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run one command (no shell) and record it in ``self.calls``."""
        self.calls.append(list(argv))
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.env if self.env is not None else None,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as e:
            raise UsageError(
                f"{argv[0]} not found on PATH: this machine has no Slurm client tools "
                "(use scheduler: local, or run where Slurm is installed)"
            ) from e

    def _call(
        self,
        argv: list[str],
        *,
        ok: Callable[[subprocess.CompletedProcess[str]], bool] | None = None,
    ) -> str:
        """Run an idempotent command (a read, or scancel); retry while Slurm does not answer.

        Attempts and backoff sleeps both fit in ``retry_seconds`` (each attempt's timeout is
        cut to the time left), so a dead slurmctld costs a bounded delay. ``ok`` may accept
        a non-zero exit (e.g. squeue's "Invalid job id specified"). A failure that is
        neither accepted nor transient still raises TransientError: a scheduler error must
        stop the pass, never become a task state.
        """
        deadline = time.monotonic() + self.retry_seconds
        last = ""

        def attempt() -> str:
            nonlocal last
            remaining = deadline - time.monotonic()
            timeout = min(self.command_timeout, max(remaining, 1.0))
            try:
                proc = self._exec(argv, timeout)
            except subprocess.TimeoutExpired:
                last = f"{argv[0]} did not return within {timeout:.0f} s"
                raise _Unanswered(last) from None
            if proc.returncode == 0 or (ok is not None and ok(proc)):
                return proc.stdout
            err = (proc.stderr or proc.stdout).strip()
            last = f"{argv[0]} exited {proc.returncode}: {err}"
            if is_transient(err):
                raise _Unanswered(last)
            raise TransientError(
                f"{' '.join(argv[:2])} failed: {err or f'exit {proc.returncode}'}; "
                "nothing was marked failed; the next pass will retry"
            )

        return until_answered(attempt, self.retry_seconds, lambda: last)

    # ---------------------------------------------------------------- the protocol

    def submit(self, job: ArrayJob) -> str:
        """``sbatch --parsable --chdir=<workdir> <script>``, once.

        Never retried: a timeout or a transient error may come after slurmctld accepted
        the job, and a second sbatch would run it twice. The token in the job's comment
        lets the next observe() find it instead.
        """
        argv = ["sbatch", "--parsable", f"--chdir={job.workdir}", str(job.script_path)]
        unknown = (
            "sbatch outcome unknown ({why}); the job may exist: nothing was resubmitted, "
            f"the next pass will look for token {job.token}"
        )
        try:
            proc = self._exec(argv, self.command_timeout)
        except subprocess.TimeoutExpired:
            raise TransientError(unknown.format(why=f"no answer within {self.command_timeout:g} s")) from None
        err = (proc.stderr or "").strip()
        if proc.returncode == 0:
            try:
                return parse_sbatch_parsable(proc.stdout)
            except ValueError as e:
                raise TransientError(unknown.format(why=str(e))) from None
        if proc.returncode > 0 and any(s in err for s in NEVER_SENT):
            raise NotSubmitted(f"sbatch could not reach slurmctld ({err.splitlines()[-1]}); nothing was submitted")
        if is_transient(err) or proc.returncode < 0:
            raise TransientError(unknown.format(why=err or f"killed by signal {-proc.returncode}"))
        raise SubmitRejected(
            f"sbatch rejected {job.name} (token {job.token}): {err or f'exit {proc.returncode}'}",
            token=job.token,
            stderr=err,
        )

    def _squeue_argv(self, job_ids: Sequence[str]) -> list[str]:
        argv = ["squeue", "--noheader", "--states=all", f"--user={self.user}", f"--Format={SQUEUE_FORMAT}"]
        if job_ids:
            argv.append(f"--jobs={','.join(job_ids)}")
        return argv

    def _sacct_argv(self, job_ids: Sequence[str], since: float) -> list[str]:
        """Step lines included (no ``--allocations``): MaxRSS is only on them (slurm_sacct)."""
        argv = [
            "sacct",
            "--parsable2",
            "--noheader",
            f"--user={self.user}",
            f"--starttime={sacct_time(since)}",
            "--endtime=now",
            f"--format={','.join(SACCT_FIELDS)}",
        ]
        if job_ids:
            argv.append(f"--jobs={','.join(job_ids)}")
        return argv

    def observe(self, refs: Sequence[JobRef]) -> SchedulerView:
        """The state of every array task of these submissions, in at most two reads.

        1. ``squeue --states=all`` for our user (and our job ids, when every ref has one):
           pending (folded ranges), running, and tasks that ended less than MinJobAge ago.
        2. ``sacct`` once, only if squeue could not answer for some job or shows one of its
           tasks ended (see needs_accounting: submitted indices missing from the queue, e.g.
           tasks that ended and were purged while siblings still run; an ended task's
           usage), for those job ids, with each task's usage folded from its steps. Tokens
           without a job id that squeue did not show are looked up instead by comment
           among the user's jobs since the earliest submission (one sacct call still).
        """
        return observe_in_two_reads(refs, self._read_queue, self._read_accounting)

    def _read_queue(self, job_ids: list[str]) -> list[SlurmRecord]:
        """One ``squeue``; a job slurmctld already forgot ("Invalid job id") is no error."""
        out = self._call(self._squeue_argv(job_ids), ok=lambda p: INVALID_JOB_ID in (p.stderr or "").lower())
        return parse_squeue_text(out)

    def _read_accounting(self, job_ids: list[str], since: float) -> list[SlurmRecord]:
        """One ``sacct``."""
        return parse_sacct(self._call(self._sacct_argv(job_ids, since)))

    def cancel(self, job_id: str, array_indices: Sequence[int] | None = None) -> None:
        """``scancel <id>`` or ``scancel <id>_[1,3,5-7]``: one call, idempotent.

        A job slurmctld already forgot is cancelled enough; retrying on transient errors is
        safe because cancelling twice changes nothing.
        """
        target = job_id if not array_indices else f"{job_id}_[{array_spec(array_indices)}]"
        self._call(
            ["scancel", target],
            ok=lambda p: any(
                s in (p.stderr or "").lower()
                for s in (INVALID_JOB_ID, "already completing or completed", "job has already finished")
            ),
        )

    def max_array_size(self) -> int | None:
        """MaxArraySize of the cluster (``scontrol show config``); None when unavailable."""
        try:
            return parse_max_array_size(self._call(["scontrol", "show", "config"]))
        except (TransientError, UsageError):
            return None

    def site_ceilings(self, partition: str | None) -> tuple[float | None, float | None]:
        """(memory one node gives a job in MB, the partition's MaxTime in seconds): how far a
        retry may grow a request (core.sizing.Growth). Two reads, ``scontrol -o show
        partition [P]`` and ``scontrol -o show node``, meant to be made rarely (the caller
        caches them, like MaxArraySize).

        ``partition`` None is the site's default partition. The memory is the largest of the
        partition's nodes (all nodes when no partition is named and the site has no default),
        capped by the partition's MaxMemPerNode. The time is MaxTime less the grace Slurm's
        --time adds to a task's timeout (script.slurm_time), so a timeout grown to it still
        fits the partition. Each is None when unlimited or unknown, and both are
        None when Slurm does not answer or names no such partition: a ceiling is advice, so
        its absence never stops a pass.
        """
        argv = ["scontrol", "-o", "show", "partition"] + ([partition] if partition else [])
        try:
            parts = parse_partitions(self._call(argv))
            nodes = self._call(["scontrol", "-o", "show", "node"])
        except (TransientError, UsageError, ValueError):
            return None, None
        name = partition or parts.default
        minutes = parts.max_minutes.get(name) if name else None
        in_partition = name if name in parts.max_minutes else None
        memory = parse_node_memory(nodes, in_partition)
        cap = parts.max_mem_mb.get(name) if name else None
        if cap is not None:
            memory = cap if memory is None else min(memory, cap)
        return (
            float(memory) if memory is not None else None,
            max(60.0, (minutes - TIMEOUT_GRACE_MINUTES) * 60.0) if minutes is not None else None,
        )
