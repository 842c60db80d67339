"""Slurm's output, read: pure functions from the text (or JSON) of its tools to records.

Following submitit, everything that interprets what ``sbatch``, ``squeue``, ``sacct`` and
``scontrol`` print lives here, away from the processes that print it: no subprocess, no
retries, no I/O. Each parser is tested on output captured from a real cluster
(``tests/data/slurm``), so a new Slurm release is checked by capturing again, not by
running a cluster in the tests. sacct's lines, with the usage its step lines carry, are
read in :mod:`reconciler.scheduler.slurm_sacct`. What a record means for a task (Slurm's
states folded to ours, squeue and sacct merged) is in :mod:`reconciler.scheduler.slurm_view`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.core.sizing import Usage
from reconciler.scheduler.script import parse_array_spec

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

INVALID_JOB_ID = "invalid job id specified"
"""squeue and scancel say this for a job slurmctld has already forgotten: not an error here."""

_NO_TIME = {"", "n/a", "none", "unknown", "(null)", "0"}


@dataclass(frozen=True, slots=True)
class SlurmRecord:
    """One line of squeue or sacct, before it is folded into per-index task states.

    ``job_id`` is the id sbatch returned (the array's own id), never a task's raw id, so
    records from both tools key the same way. A folded pending line covers many indices.
    ``usage`` is what the task used, from sacct's step lines (slurm_sacct.parse_sacct); None
    from squeue, which does not say.
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
    usage: Usage | None = None

    @property
    def token(self) -> str | None:
        """The reconciler token of this job, or None when the comment is not ours."""
        if self.comment.startswith(COMMENT_PREFIX):
            return self.comment[len(COMMENT_PREFIX) :]
        return None


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


def make_record(
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
    usage: Usage | None = None,
) -> SlurmRecord:
    """One record from a line's fields; raises ValueError on a job id that is not Slurm's."""
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
        usage=usage,
    )


def split_fields(line: str, fields: Sequence[str]) -> dict[str, str] | None:
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
        row = split_fields(line, names)
        if row is None or "JobArrayID" not in row:
            continue
        code, sig = split_wait_status(int(row["exit_code"])) if row.get("exit_code", "").strip().isdigit() else (None, None)
        try:
            out.append(
                make_record(
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
                make_record(
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


def sacct_time(epoch: float) -> str:
    """Epoch seconds -> sacct's ``--starttime`` form, in local time like its output."""
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%dT%H:%M:%S")

