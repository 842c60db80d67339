"""Why an attempt failed, in the task wrapper's words: the vocabulary, and its one text form.

The scheduler sees an exit code ("exit 127"); only the wrapper, on the compute node, knows
that 127 meant the executable does not exist, that 65 meant the validator rejected the
outputs (and what it said), or what the command printed last on stderr. It writes a
``Cause`` next to the logs when an attempt ends badly (``reconciler.markers.write_cause``);
observe reads it for attempts that failed, the ledger keeps it per attempt, and the planner
reads ``CauseKind.permanent``: a command that does not exist fails the same way however
often it is retried, so it gives up at once instead of backing off.

Pure: the wrapper imports it on compute nodes, so it is standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

TAIL_LINES = 10
"""Last lines of the task's stderr a cause carries: enough for a traceback's last frames."""
TAIL_CHARS = 300
"""Longest line kept: a line of a megabyte (a dumped array) must not end up in the ledger."""


class CauseKind(StrEnum):
    EXIT = "exit"  # the command exited non-zero
    SIGNAL = "signal"  # the command was killed by a signal (segfault, OOM killer, ...)
    TIMEOUT = "timeout"  # the manifest's timeout passed; the wrapper stopped it
    CANCELLED = "cancelled"  # the wrapper itself got SIGTERM/SIGINT (scancel, preemption, Slurm's time limit)
    NOT_FOUND = "not_found"  # the executable does not exist
    NOT_EXECUTABLE = "not_executable"  # it exists but cannot be executed
    LAUNCH_FAILED = "launch_failed"  # it could not be started this time (ENOMEM, EAGAIN, ETXTBSY, EIO): may pass
    INVALID_OUTPUT = "invalid_output"  # exited 0, but the validator rejected the outputs
    MARKER_IO = "marker_io"  # outputs valid, but the completion marker could not be written
    FENCED = "fenced"  # run by a pool worker whose claim on it died or was taken: not marked complete

    @property
    def permanent(self) -> bool:
        """Retrying cannot fix it: the same argv fails the same way until someone changes it."""
        return self in (CauseKind.NOT_FOUND, CauseKind.NOT_EXECUTABLE)


_LABELS = {
    CauseKind.EXIT: "exit",
    CauseKind.SIGNAL: "killed by",
    CauseKind.TIMEOUT: "timeout",
    CauseKind.CANCELLED: "cancelled by",
    CauseKind.NOT_FOUND: "command not found",
    CauseKind.NOT_EXECUTABLE: "command not executable",
    CauseKind.LAUNCH_FAILED: "command could not be started",
    CauseKind.INVALID_OUTPUT: "outputs invalid",
    CauseKind.FENCED: "its pool claim was lost before it could be marked",
    CauseKind.MARKER_IO: "completion marker not written",
}


@dataclass(frozen=True, slots=True)
class Cause:
    """One failed attempt's cause, as the wrapper recorded it."""

    kind: CauseKind
    detail: str = ""  # the executable, the signal's name, the validator's message, the timeout in seconds
    exit_code: int | None = None  # what the wrapper exited with (what the scheduler saw)
    tail: tuple[str, ...] = ()  # the last lines of the task's stderr, oldest first

    @property
    def group(self) -> str:
        """What failures are grouped by in status: the same for every task that failed this way
        (``command not found: no-such-generator``, ``exit 3``, ``outputs invalid``), so 12,000
        tasks with one problem read as one line. Task-specific words (paths) stay in ``text``."""
        label = _LABELS[self.kind]
        if self.kind in (CauseKind.NOT_FOUND, CauseKind.NOT_EXECUTABLE):
            return f"{label}: {self.detail}"
        if self.kind is CauseKind.EXIT:
            return f"exit {self.exit_code}"
        if self.kind in (CauseKind.SIGNAL, CauseKind.CANCELLED):
            return f"{label} {self.detail}"
        return label

    @property
    def text(self) -> str:
        """The whole sentence for one task: the group, then its specifics (the validator's
        message, the timeout, the last line the command wrote on stderr)."""
        if self.kind in (CauseKind.INVALID_OUTPUT, CauseKind.MARKER_IO, CauseKind.LAUNCH_FAILED) and self.detail:
            return f"{self.group}: {self.detail}"
        if self.kind is CauseKind.TIMEOUT and self.detail:
            return f"timeout after {self.detail} s"
        if self.kind in (CauseKind.EXIT, CauseKind.SIGNAL) and self.tail:
            return f"{self.group}: {self.tail[-1]}"
        return self.group

    def to_doc(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "detail": self.detail, "exit_code": self.exit_code, "tail": list(self.tail)}

    def dumps(self) -> str:
        return json.dumps(self.to_doc(), sort_keys=True)


def from_doc(doc: object) -> Cause | None:
    """A cause from its JSON document; None for anything else (a damaged file, a kind written
    by a newer wrapper): an unreadable cause is no cause, and the scheduler's words remain."""
    if not isinstance(doc, dict):
        return None
    try:
        kind = CauseKind(str(doc.get("kind")))
    except ValueError:
        return None
    code = doc.get("exit_code")
    tail = doc.get("tail") or []
    return Cause(
        kind,
        str(doc.get("detail") or ""),
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        tuple(str(line)[:TAIL_CHARS] for line in tail[-TAIL_LINES:]) if isinstance(tail, list) else (),
    )


def loads(text: str | None) -> Cause | None:
    """A cause from its JSON text (the ledger's column); None when there is none or it is damaged."""
    if not text:
        return None
    try:
        return from_doc(json.loads(text))
    except ValueError:
        return None
