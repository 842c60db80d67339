"""Running a process group to its end under a deadline: TERM, then KILL after a grace.

Two places run a command in a process group of its own and must stop it the way Slurm
does: the task wrapper (its manifest's ``timeout_s``, and SIGTERM/SIGINT it forwards from
the scheduler) and the local scheduler's supervisor (the script's ``#SBATCH --time``, and
``reconcile cancel`` recorded in the task file). Both wait the same way, written once here:
past the deadline the whole group gets SIGTERM, and SIGKILL if it still runs ``kill_grace_s``
later; once the command has ended, whatever it left in its group is killed, so nothing of
a finished task lingers.

Standard library only: the wrapper imports it on compute nodes, once per task.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass


def killpg(pgid: object, sig: int) -> None:
    """Send ``sig`` to a process group that may be gone already; ignore ids that cannot be one.

    ``pgid`` may come from a state file (the local scheduler's cancel), hence ``object``:
    anything but a positive int is not a group we started.
    """
    if isinstance(pgid, int) and not isinstance(pgid, bool) and pgid > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def shell_exit_code(returncode: int) -> int:
    """Popen's ``-N`` (killed by signal N) as a shell reports it, ``128+N``; others unchanged."""
    return 128 - returncode if returncode < 0 else returncode


def _never() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Ending:
    """How a process run by :func:`wait_group` ended."""

    returncode: int
    """Popen's: the exit status, or ``-N`` when a signal N killed it."""
    timed_out: bool
    """The deadline passed before it ended: we sent SIGTERM to its group."""
    stopped: bool
    """``stop_requested()`` said so before it ended (and before any deadline)."""

    @property
    def exit_code(self) -> int:
        return shell_exit_code(self.returncode)


def wait_group(
    proc: subprocess.Popen[bytes],
    *,
    timeout_s: float | None,
    kill_grace_s: float,
    poll_s: float,
    stop_requested: Callable[[], bool] = _never,
    stop_poll_s: float = 0.0,
) -> Ending:
    """Wait for ``proc`` (started with ``start_new_session=True``) within ``timeout_s``.

    Past ``timeout_s`` (None: no limit) its process group gets SIGTERM, then SIGKILL if it is
    still there ``kill_grace_s`` later. ``stop_requested`` is asked at most every
    ``stop_poll_s`` until something was asked of the process: when it turns true, whoever
    requested the stop has sent SIGTERM already (a signal handler, another process), so
    only the escalation to SIGKILL is left to this loop, and the deadline no longer applies.
    The group is killed once the process has ended, leftovers included.
    """
    started = time.monotonic()
    term_at: float | None = None  # when the group was told to stop: the grace runs from here
    timed_out = stopped = False
    checked = -math.inf
    while True:
        now = time.monotonic()
        if term_at is None and now - checked >= stop_poll_s:
            checked = now
            if stop_requested():
                stopped, term_at = True, now
        if term_at is None and timeout_s is not None and now - started > timeout_s:
            timed_out, term_at = True, now
            killpg(proc.pid, signal.SIGTERM)
        if term_at is not None and now - term_at > kill_grace_s:
            killpg(proc.pid, signal.SIGKILL)
        try:
            rc = proc.wait(timeout=poll_s)
            break
        except subprocess.TimeoutExpired:
            pass
    killpg(proc.pid, signal.SIGKILL)  # as Slurm does: nothing of a finished task lingers
    return Ending(rc, timed_out, stopped)
