"""reconciler.process: a process group run to its end under a deadline (TERM, then KILL).

Real, short-lived processes; the wrapper's and the local supervisor's own tests check
the exit codes and task states built on top of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler import process
from reconciler.process import shell_exit_code, wait_group

IGNORE_TERM = "trap '' TERM; sleep 30"  # the whole group ignores SIGTERM (inherited by sleep)


def start(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["bash", "-c", script], start_new_session=True, stdin=subprocess.DEVNULL)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_an_exit_is_reported_as_it_is() -> None:
    ending = wait_group(start("exit 3"), timeout_s=30, kill_grace_s=5, poll_s=0.05)
    assert (ending.returncode, ending.exit_code, ending.timed_out, ending.stopped) == (3, 3, False, False)


def test_past_the_deadline_the_group_gets_sigterm() -> None:
    t = time.monotonic()
    ending = wait_group(start("sleep 30"), timeout_s=0.3, kill_grace_s=30, poll_s=0.05)
    assert ending.timed_out and not ending.stopped
    assert (ending.returncode, ending.exit_code) == (-signal.SIGTERM, 143)
    assert time.monotonic() - t < 10


def test_sigkill_when_sigterm_is_ignored_for_the_grace() -> None:
    ending = wait_group(start(IGNORE_TERM), timeout_s=0.5, kill_grace_s=0.3, poll_s=0.05)
    assert ending.timed_out and (ending.returncode, ending.exit_code) == (-signal.SIGKILL, 137)


def test_a_stop_request_escalates_to_sigkill_and_disarms_the_deadline() -> None:
    """Whoever asked for the stop sent SIGTERM; the loop only escalates after the grace."""
    asked: list[float] = []

    def stop() -> bool:
        asked.append(time.monotonic())
        return True

    ending = wait_group(start(IGNORE_TERM), timeout_s=0.1, kill_grace_s=0.5, poll_s=0.05, stop_requested=stop)
    assert ending.stopped and not ending.timed_out
    assert ending.returncode == -signal.SIGKILL
    assert len(asked) == 1  # not asked again once the stop is under way


def test_stop_is_asked_at_most_every_stop_poll_s() -> None:
    asked: list[float] = []

    def stop() -> bool:
        asked.append(time.monotonic())
        return False

    ending = wait_group(start("sleep 0.5"), timeout_s=None, kill_grace_s=5, poll_s=0.02, stop_requested=stop, stop_poll_s=0.2)
    assert ending.returncode == 0 and not ending.stopped
    assert 1 <= len(asked) <= 4  # ~0.5 s / 0.2 s, not ~0.5 s / 0.02 s


def test_leftovers_of_the_group_are_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    ending = wait_group(start(f"sleep 30 & echo $! > {pidfile}; exit 0"), timeout_s=30, kill_grace_s=5, poll_s=0.05)
    assert ending.returncode == 0
    bg = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not gone(bg):
        assert time.monotonic() < deadline, "a process of the finished task's group survived"
        time.sleep(0.05)


def test_killpg_ignores_what_cannot_be_our_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values come from task files: never signal group 0 (our own) or a non-int."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: sent.append((pgid, sig)))
    for bad in (None, 0, -5, "123", True, 1.5):
        process.killpg(bad, signal.SIGTERM)
    assert sent == []
    process.killpg(4321, signal.SIGTERM)
    assert sent == [(4321, signal.SIGTERM)]


def test_killpg_of_a_group_that_is_gone_is_fine() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()
    process.killpg(proc.pid, signal.SIGTERM)


def test_shell_exit_code() -> None:
    assert [shell_exit_code(rc) for rc in (0, 3, -9, -15)] == [0, 3, 137, 143]
