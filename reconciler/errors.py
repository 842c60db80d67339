"""Errors that cross module boundaries, and the exit codes they map to.

Exit codes are part of the command-line contract:
0 ok / nothing to do, 1 there is something to do (plan, diff), 2 invalid input,
3 another reconciler holds the production's lease, 4 the scheduler or filesystem failed transiently,
5 `watch --until-done` ended with tasks that gave up (or are stale and not rerun).
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_CHANGES = 1
EXIT_INVALID = 2
EXIT_LOCKED = 3
EXIT_TRANSIENT = 4
EXIT_INCOMPLETE = 5  # `watch --until-done`: nothing left to do, but some tasks gave up or are stale


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in one input file, located as precisely as we can."""

    file: str
    line: int  # 1-based; 0 when unknown
    col: int  # 1-based; 0 when unknown
    field: str  # dotted path, "" for the whole file
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        field = f" {self.field}:" if self.field else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}:{field} {self.message}{hint}"


class ReconcilerError(Exception):
    """Base class; carries the exit code the CLI should use."""

    exit_code = EXIT_INVALID


class ConfigError(ReconcilerError):
    """Invalid desired state: every problem found, not just the first."""

    exit_code = EXIT_INVALID

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem("<input>", 0, 0, "", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(ReconcilerError):
    """The command line asked for something that cannot be done (exit 2)."""

    exit_code = EXIT_INVALID


class LegacyDatabase(UsageError):
    """A production directory holds the old production manager's database, not yet imported
    (`reconcile import-legacy`): refused by every verb, never opened as a ledger (exit 2)."""


class LeaseHeld(ReconcilerError):
    """Another reconciler holds this production's lease (exit 3)."""

    exit_code = EXIT_LOCKED


class Deposed(LeaseHeld):
    """This reconciler held the lease, and another took it over (it had gone quiet for the
    lease's TTL, or was stolen): it must not act again on the production (exit 3)."""


class TransientError(ReconcilerError):
    """The scheduler or filesystem failed in a way that may pass; nothing was lost (exit 4)."""

    exit_code = EXIT_TRANSIENT


class DirectoryUnusable(TransientError):
    """A production's directory is missing or cannot be written (a mount gone, permissions
    changed): that production's error, said with what to do, never a traceback (exit 4: it
    may come back, and the loop tries again next pass)."""


class NotSubmitted(TransientError):
    """The scheduler certainly never received a submission (its controller refused the
    connection): the submission is abandoned at once and its tasks planned again next pass,
    instead of waiting out the token lookup's grace period (exit 4)."""


class SubmitRejected(ReconcilerError):
    """Slurm refused the submission for good (bad account, partition, limits): exit 2.

    Unlike a timeout, the job certainly does not exist, so nothing needs to be looked up;
    retrying the same script would fail the same way until the configuration changes.
    """

    exit_code = EXIT_INVALID

    def __init__(self, message: str, *, token: str = "", stderr: str = "") -> None:
        self.token = token
        self.stderr = stderr
        super().__init__(message)
