"""The Slurm backend that talks to the cluster through its command-line tools.

This is the default on Slurm machines: ``sbatch``, ``squeue``, ``sacct``, ``scancel`` and
``scontrol`` exist wherever Slurm does, whatever its release, whereas pyslurm must match the
installed Slurm exactly. Following submitit, the parsers of Slurm's output are pure functions
at module level, tested on tables of output captured from a real cluster
(``tests/data/slurm``); only :class:`SlurmCLI` runs processes.

Cost: :meth:`SlurmCLI.observe` makes at most two read calls whatever the number of tasks: one
``squeue`` (in-flight tasks, folded pending ranges, and tasks that ended less than MinJobAge
ago) and at most one ``sacct`` (tasks already purged from slurmctld's memory, and tokens whose
sbatch answer was lost).

Failures: a scheduler that does not answer is never read as a task failure. Reads are retried
with a bounded exponential backoff and then raise :class:`~reconciler.errors.TransientError`
(exit 4); a submission whose outcome is unknown is never retried here (its token resolves it
on the next pass); a submission Slurm refused raises :class:`SubmitRejected` (exit 2).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from reconciler.core.states import SchedState
from reconciler.errors import NotSubmitted, SubmitRejected, TransientError, UsageError
from reconciler.scheduler.base import ArrayJob, JobRef, SchedulerView, TaskSched
from reconciler.scheduler.script import array_spec, parse_array_spec

T = TypeVar("T")

COMMENT_PREFIX = "reconciler:"
"""Our jobs carry ``--comment=reconciler:<token>`` (see script.render_script)."""

SQUEUE_FIELDS: tuple[str, ...] = (
    "JobArrayID",
    "State",
    "exit_code",
    "Reason",
    "StartTime",
    "EndTime",
    "Name",
    "Comment",
)
"""The ``squeue -O`` fields the backend asks for. Comment is last: it is free text and may
hold the separator, so the line is split at most ``len(fields) - 1`` times."""

SQUEUE_FORMAT = ",".join(f"{f}:|" for f in SQUEUE_FIELDS[:-1]) + f",{SQUEUE_FIELDS[-1]}:"
"""``Field:|`` means "no width limit, then a ``|``": nothing is truncated or padded."""

SACCT_FIELDS: tuple[str, ...] = (
    "JobID",
    "JobIDRaw",
    "State",
    "ExitCode",
    "Start",
    "End",
    "JobName",
    "Comment",
)
"""The ``sacct --format`` fields the backend asks for; Comment last for the same reason."""

SACCT_MARGIN_S = 3600.0
"""``sacct --starttime`` is the earliest submission minus this, to absorb clock skew between
this host and the controller (sacct selects jobs that were eligible or running after it)."""

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

INVALID_JOB_ID = "invalid job id specified"
"""squeue and scancel say this for a job slurmctld has already forgotten: not an error here."""

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

_NO_TIME = {"", "n/a", "none", "unknown", "(null)", "0"}




@dataclass(frozen=True, slots=True)
class SlurmRecord:
    """One line of squeue or sacct, before it is folded into per-index task states.

    ``job_id`` is the id sbatch returned (the array's own id), never a task's raw id, so
    records from both tools key the same way. A folded pending line covers many indices.
    """

    job_id: str
    indices: tuple[int, ...]  # array indices covered; (0,) for a job submitted without --array
    is_array: bool
    raw_state: str  # Slurm's words, e.g. "CANCELLED by 0"
    exit_code: int | None  # process exit status (the N of "N:S")
    signal: int | None  # terminating signal (the S of "N:S"), 0 when none
    reason: str  # squeue's Reason ("JobArrayTaskLimit"); "" when none
    start: float | None
    end: float | None
    name: str
    comment: str

    @property
    def token(self) -> str | None:
        """The reconciler token of this job, or None when the comment is not ours."""
        if self.comment.startswith(COMMENT_PREFIX):
            return self.comment[len(COMMENT_PREFIX) :]
        return None


# --------------------------------------------------------------------------- pure parsers


def is_transient(stderr: str) -> bool:
    """Whether a command's stderr says the scheduler was unreachable or busy, not "no"."""
    low = stderr.lower()
    return any(p in low for p in TRANSIENT_PATTERNS)


def parse_sbatch_parsable(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` output: ``"123"`` or ``"123;cluster"``.

    Only the last non-empty line counts (site wrappers sometimes print banners first).
    Raises ValueError when there is no job id, which the caller treats as "outcome unknown".
    """
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise ValueError("sbatch printed no job id")
    job_id = lines[-1].split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise ValueError(f"sbatch printed {lines[-1]!r}, not a job id")
    return job_id


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


def parse_exit_code(text: str | None) -> tuple[int | None, int | None]:
    """sacct's ``"N:S"`` (exit status N, signal S) -> (N, S); (None, None) when absent."""
    if not text or ":" not in text:
        return None, None
    a, b = text.strip().split(":", 1)
    try:
        return int(a), int(b)
    except ValueError:
        return None, None


def split_wait_status(status: int | None) -> tuple[int | None, int | None]:
    """squeue's ``exit_code`` is the raw wait(2) status (512 = exit 2, 9 = killed by signal 9)."""
    if status is None:
        return None, None
    status = int(status)
    return (status >> 8) & 0xFF, status & 0x7F


def parse_job_id(text: str) -> tuple[str, tuple[int, ...] | None]:
    """``"5_3"`` -> ("5", (3,)); ``"1_[2-19%2]"`` -> ("1", (2..19)); ``"4"`` -> ("4", None).

    Folded forms are Slurm's array expressions (ranges, lists, steps, a ``%`` throttle) and
    are expanded with script.parse_array_spec, the inverse of what we write in ``--array``.
    """
    text = text.strip()
    if "_" not in text:
        return text, None
    job, spec = text.split("_", 1)
    indices, _throttle = parse_array_spec(spec)
    return job, tuple(indices)


def expand_array(text: str) -> tuple[int, ...]:
    """A folded array string (``"[2-19%2]"``, ``"1,3-7"``, ``"5_[1,3-7]"``) -> its indices."""
    if "_" in text:
        return parse_job_id(text)[1] or ()
    indices, _throttle = parse_array_spec(text)
    return tuple(indices)


def parse_time(text: str | int | float | Mapping[str, Any] | None) -> float | None:
    """A Slurm timestamp -> epoch seconds; None for Slurm's many spellings of "no time".

    Text timestamps carry no zone: the tools print them in the local time of the process
    that ran them, which is this host (same TZ), so they are read in the local zone; JSON gives epoch integers, or in newer
    releases ``{"set": bool, "number": int}``.
    """
    if text is None:
        return None
    if isinstance(text, Mapping):
        if not text.get("set", True) or text.get("infinite"):
            return None
        return parse_time(text.get("number"))
    if isinstance(text, int | float):
        return float(text) if text > 0 else None
    s = text.strip()
    if s.lower() in _NO_TIME:
        return None
    if s.isdigit():
        return float(s) or None
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        return None


def _clean_reason(reason: str) -> str:
    r = reason.strip()
    return "" if r in ("None", "(null)", "N/A") else r


def _record(
    job_text: str,
    *,
    raw_state: str,
    exit_code: int | None,
    signal: int | None,
    reason: str = "",
    start: float | None = None,
    end: float | None = None,
    name: str = "",
    comment: str = "",
) -> SlurmRecord:
    job_id, indices = parse_job_id(job_text)
    comment = comment.strip()
    return SlurmRecord(
        job_id=job_id,
        indices=indices if indices is not None else (0,),
        is_array=indices is not None,
        raw_state=raw_state.strip(),
        exit_code=exit_code,
        signal=signal,
        reason=_clean_reason(reason),
        start=start,
        end=end,
        name=name.strip(),
        comment="" if comment == "(null)" else comment,
    )


def _split_fields(line: str, fields: Sequence[str]) -> dict[str, str] | None:
    """A ``|``-separated line -> {field: value}; a free-text Comment may hold ``|``."""
    n = len(fields)
    if fields and fields[-1] == "Comment":
        parts = line.split("|", n - 1)
    else:
        parts = line.split("|")
    if len(parts) != n:
        return None
    return dict(zip(fields, parts, strict=True))


_SQUEUE_ALIASES = {
    "JobID": "JobArrayID",
    "%i": "JobArrayID",
    "%j": "Name",
    "%T": "State",
    "%t": "State",
    "%r": "Reason",
    "%k": "Comment",
    "%S": "StartTime",
    "%e": "EndTime",
    "StateCompact": "State",
}


def parse_squeue_text(text: str, fields: Sequence[str] = SQUEUE_FIELDS) -> list[SlurmRecord]:
    """``squeue -h -O <fields>`` (or ``-o '%i|%j|%T|%r|%k'``) output -> records.

    ``fields`` names the columns in order (``-O`` names or ``%`` letters). Lines that do not
    split into that many columns are skipped: they cannot be ours (our names, states and
    comments never hold the separator except in the last column).
    """
    names = [_SQUEUE_ALIASES.get(f, f) for f in fields]
    out: list[SlurmRecord] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        row = _split_fields(line, names)
        if row is None or "JobArrayID" not in row:
            continue
        code, sig = split_wait_status(int(row["exit_code"])) if row.get("exit_code", "").strip().isdigit() else (None, None)
        try:
            out.append(
                _record(
                    row["JobArrayID"],
                    raw_state=row.get("State", ""),
                    exit_code=code,
                    signal=sig,
                    reason=row.get("Reason", ""),
                    start=parse_time(row.get("StartTime")),
                    end=parse_time(row.get("EndTime")),
                    name=row.get("Name", ""),
                    comment=row.get("Comment", ""),
                )
            )
        except ValueError:
            continue  # an id we cannot read is not one of ours
    return out


def _json_int(v: Any) -> int | None:
    """An integer field of Slurm JSON: a plain int (22.05) or ``{"set", "number"}`` (23+)."""
    if isinstance(v, Mapping):
        if not v.get("set", True):
            return None
        v = v.get("number")
    if isinstance(v, bool) or v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _json_exit(v: Any) -> tuple[int | None, int | None]:
    """squeue JSON exit_code: a raw wait status (22.05) or a structured object (23+)."""
    if isinstance(v, Mapping) and ("return_code" in v or "signal" in v):
        code = _json_int(v.get("return_code"))
        sig_obj = v.get("signal") or {}
        sig = _json_int(sig_obj.get("id")) if isinstance(sig_obj, Mapping) else _json_int(sig_obj)
        return code, sig or 0
    return split_wait_status(_json_int(v))


def parse_squeue_json(doc: str | Mapping[str, Any]) -> list[SlurmRecord]:
    """``squeue --json`` output -> records (22.05 openapi v0.0.38 and later shapes).

    A folded pending array is one job with ``array_task_string`` ("2-19%2"); a running or
    finished task has ``array_task_id``; ``array_job_id`` is 0 for a job without --array.
    Note that 22.05 ignores ``--jobs``/``--user`` with ``--json``: filter the records.
    """
    data = json.loads(doc) if isinstance(doc, str) else doc
    out: list[SlurmRecord] = []
    for j in data.get("jobs", []):
        array_job = _json_int(j.get("array_job_id")) or 0
        task_id = _json_int(j.get("array_task_id"))
        task_str = (j.get("array_task_string") or "").strip()
        job_id = _json_int(j.get("job_id"))
        if array_job and task_str:
            text = f"{array_job}_[{task_str}]"
        elif array_job and task_id is not None:
            text = f"{array_job}_{task_id}"
        else:
            text = str(job_id)
        code, sig = _json_exit(j.get("exit_code"))
        state = j.get("job_state")
        raw_state = state if isinstance(state, str) else (state[0] if state else "")
        try:
            out.append(
                _record(
                    text,
                    raw_state=raw_state,
                    exit_code=code,
                    signal=sig,
                    reason=str(j.get("state_reason") or ""),
                    start=parse_time(j.get("start_time")),
                    end=parse_time(j.get("end_time")),
                    name=str(j.get("name") or ""),
                    comment=str(j.get("comment") or ""),
                )
            )
        except ValueError:
            continue
    return out


def parse_squeue(output: str, fields: Sequence[str] = SQUEUE_FIELDS) -> list[SlurmRecord]:
    """squeue output, JSON (``--json``) or text (``-h -O``/``-o``), -> records."""
    if output.lstrip().startswith("{"):
        return parse_squeue_json(output)
    return parse_squeue_text(output, fields)


_SACCT_ALIASES = {"JobIDRaw": "JobIDRaw", "JobName": "Name", "Start": "StartTime", "End": "EndTime"}


def parse_sacct(text: str, fields: Sequence[str] = SACCT_FIELDS) -> list[SlurmRecord]:
    """``sacct -X -P -n --format=<fields>`` output -> records (one per array task).

    The array task is read from JobID (``5_6``), never from JobIDRaw: the last task of an
    array keeps the array's own id as its raw id. Step lines (``5_6.batch``) are skipped, in
    case ``-X`` was forgotten. The text ExitCode is used because sacct's JSON exit codes are
    wrong in 22.05 (see tests/data/slurm/README.md).
    """
    names = [_SACCT_ALIASES.get(f, f) for f in fields]
    out: list[SlurmRecord] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        row = _split_fields(line, names)
        if row is None or "JobID" not in row:
            continue
        job_text = row["JobID"].strip()
        if "." in job_text or "+" in job_text:
            continue  # a step, or a heterogeneous component: never one of our array tasks
        code, sig = parse_exit_code(row.get("ExitCode"))
        try:
            out.append(
                _record(
                    job_text,
                    raw_state=row.get("State", ""),
                    exit_code=code,
                    signal=sig,
                    start=parse_time(row.get("StartTime")),
                    end=parse_time(row.get("EndTime")),
                    name=row.get("Name", ""),
                    comment=row.get("Comment", ""),
                )
            )
        except ValueError:
            continue
    return out


def parse_scontrol_config(text: str) -> dict[str, str]:
    """``scontrol show config`` -> {key: value} (``Key = value`` lines)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def parse_max_array_size(text: str) -> int | None:
    """MaxArraySize from ``scontrol show config``; None when absent or unreadable."""
    value = parse_scontrol_config(text).get("MaxArraySize", "")
    return int(value) if value.isdigit() else None


def task_sched(rec: SlurmRecord) -> TaskSched:
    """One record -> the TaskSched of each index it covers.

    In-flight tasks carry squeue's reason ("JobArrayTaskLimit") and no exit code; pending
    ones no times (squeue's StartTime for them is only an estimate). Completed and failed
    tasks carry their exit status; a task killed by a signal gets the shell's 128+S and
    reason "signal S", so it never reads as "exit 0". Tasks the scheduler ended (timeout,
    cancel, node failure...) carry no exit code, only Slurm's words as the reason: squeue
    and sacct disagree on their code (143 vs 0), and a task must not change when it moves
    from one source to the other.
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
    return TaskSched(state, code, reason, rec.start, rec.end)


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
    its token in the job's comment (``view.found``). A job id neither source knows is
    ``gone``.

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
    """
    view = SchedulerView()
    wanted = {r.job_id for r in refs if r.job_id}
    tokens = {r.token for r in refs if not r.job_id}
    arrays = {r.job_id or r.token for r in refs if r.array_indices}
    in_squeue: set[str] = set()
    in_sacct: set[str] = set()  # jobs sacct knows as arrays (or plain jobs, when asked so)
    known: set[str] = set()
    for source, seen_in in ((sacct or (), in_sacct), (squeue, in_squeue)):  # squeue last: it wins
        for rec in source:
            tok = rec.token
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
                per_job[i] = ts
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


def needs_accounting(ref: JobRef, job_id: str, squeue: Sequence[SlurmRecord]) -> bool:
    """Whether squeue alone cannot answer for this job, so sacct must be asked.

    With the submitted indices known, sacct is needed only when some of them are not in
    squeue (ended more than MinJobAge ago, or never recorded); without them, any array job
    may have purged tasks, so only a non-array job seen in squeue is fully answered.
    """
    recs = [r for r in squeue if r.job_id == job_id]
    if not recs:
        return True
    if ref.array_indices:
        known = {i for r in recs for i in r.indices}
        return not set(ref.array_indices) <= known
    return any(r.is_array for r in recs)


def sacct_time(epoch: float) -> str:
    """Epoch seconds -> sacct's ``--starttime`` form, in local time like its output."""
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%dT%H:%M:%S")


# --------------------------------------------------------------------------- the backend


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
        self.user = user or _current_user()
        self.clock = clock
        self.calls: list[list[str]] = []

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
        argv = [
            "sacct",
            "--allocations",
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
        2. ``sacct`` once, only if squeue could not answer for some job (see
           needs_accounting: submitted indices missing from the queue, e.g. tasks that
           ended and were purged while siblings still run), for those job ids. Tokens
           without a job id that squeue did not show are looked up instead by comment
           among the user's jobs since the earliest submission (one sacct call still).
        """
        if not refs:
            return SchedulerView()
        ids = sorted({r.job_id for r in refs if r.job_id}, key=_id_key)
        tokens = {r.token for r in refs if not r.job_id}

        out = self._call(
            self._squeue_argv([] if tokens else ids),
            ok=lambda p: INVALID_JOB_ID in (p.stderr or "").lower(),
        )
        queued = parse_squeue_text(out)
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
        acct_out = self._call(self._sacct_argv(jobs, since))
        return merge_view(refs, queued, parse_sacct(acct_out))

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


def _id_key(job_id: str) -> tuple[int, str]:
    return (int(job_id), "") if job_id.isdigit() else (1 << 62, job_id)
