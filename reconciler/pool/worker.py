"""A pool worker: ``python -m reconciler.pool.worker PRODUCTION_DIR --walltime-s ...``.

One worker is one job (an element of a worker array, on Slurm or the local backend). It
claims a task of the pool's queue (``pool.files.take``), runs it exactly as an array element
would run (``bash SCRIPT`` with ``SLURM_ARRAY_TASK_ID`` set to the task's index: the same
setup lines, the same wrapper, the same logs), records how it ended beside the claim (which
stays: a task is taken once), and claims the next, up to ``--side-by-side`` at a time. A
heartbeat renews its claims every fifth of the lease; a claim found dead or taken is given up
(its task killed: fencing), and its tasks die with it (PR_SET_PDEATHSIG).

It stops claiming when its remaining walltime is less than a task's expected run time (the
planner's figure, in the queue entry) plus the margin, and exits once its running tasks end,
or after ``--idle-s`` with nothing to claim. SIGTERM (scancel, Slurm's end of walltime) is
passed on to the running tasks, whose wrappers record the cancellation; their ends are
recorded and the worker exits. The reconciler replaces workers while work remains.

Standard library only (with reconciler.pool.files and reconciler.process): it starts on
compute nodes, often, and decides nothing about the production.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler.pool import files
from reconciler.pool.files import PoolDir
from reconciler.process import killpg

POLL_S = 0.2
IDLE_POLL_S, IDLE_POLL_MAX_S = 0.5, 2.0
try:  # resolved here, not in the child between fork and exec
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


@dataclass
class Run:
    """One task this worker runs."""

    token: str
    index: int
    claim: Path
    proc: subprocess.Popen[bytes]
    start: float
    killed: str = ""  # why the worker killed it (fenced, cancelled), if it did


def _die_with_parent() -> None:
    """In a task's child process: SIGTERM it when this worker dies (Linux's PR_SET_PDEATHSIG),
    so a worker killed outright leaves no run behind; its wrapper stops the command. Where
    prctl is missing the wrapper's own claim guard stops it once its claim is a lease old."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def owner_id() -> str:
    """The worker's name as the scheduler knows it: ``<array job id>_<index>`` (or the job id)."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID") or f"pid{os.getpid()}"
    index = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{index}" if index is not None and os.environ.get("SLURM_ARRAY_JOB_ID") else job


class Worker:
    def __init__(self, production_dir: Path, walltime_s: float, margin_s: float, side_by_side: int, lease_s: float, idle_s: float) -> None:
        self.pool = PoolDir(production_dir)
        self.started = time.time()
        self.deadline = self.started + walltime_s
        self.margin_s = margin_s
        self.side_by_side = max(1, side_by_side)
        self.lease_s = lease_s
        self.idle_s = idle_s
        self.owner = owner_id()
        self.host = socket.gethostname()
        self.entries: dict[str, dict[str, Any]] = {}
        self.exhausted: set[str] = set()  # entries whose every task has a claim
        self.running: list[Run] = []
        self.stopping = ""
        self.out_of_time = False  # work was left that no longer fits before the margin

    def say(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} reconciler worker {self.owner}: {msg}", file=sys.stderr, flush=True)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = signal.Signals(signum).name
        for r in self.running:
            killpg(r.proc.pid, signal.SIGTERM)

    def loop(self) -> int:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        self.say(f"on {self.host}, {self.side_by_side} task(s) at a time, walltime ends in {self.deadline - self.started:.0f} s, margin {self.margin_s:.0f} s")
        last_work = last_beat = time.time()
        done, idle_polls = 0, 0
        while True:
            now = time.time()
            ended = False
            for r in list(self.running):
                if r.proc.poll() is not None:
                    self.finish(r)
                    done += 1
                    last_work, ended = now, True
            claimed = False  # a slot that just freed is filled at once, not after a sleep
            while not self.stopping and len(self.running) < self.side_by_side and self.claim_next(now):
                last_work, claimed = now, True
            if now - last_beat >= self.lease_s / 5:
                self.heartbeat()
                last_beat = now
            if not self.running:
                if self.stopping:
                    self.say(f"stopped by {self.stopping} after {done} task(s)")
                    return 0
                if self.out_of_time:
                    self.say(f"margin reached ({self.deadline - now:.0f} s of walltime left) after {done} task(s): exiting")
                    return 0
                if now - last_work >= self.idle_s:
                    self.say(f"nothing to claim for {self.idle_s:.0f} s after {done} task(s): exiting")
                    return 0
            # while tasks run, their ends are looked for every POLL_S; an idle worker looks at the
            # pool less often (0.5 s, doubling, 2 s at most): a hundred idle workers list a shared
            # filesystem's queue 50 times a second, not 500, and work that arrives (a campaign's
            # next stage) still starts within 2 s
            idle_polls = 0 if claimed or ended or self.running else idle_polls + 1
            pause = POLL_S if self.running else min(IDLE_POLL_S * 2 ** min(idle_polls - 1, 2), IDLE_POLL_MAX_S)
            time.sleep(min(pause, max(POLL_S, self.deadline - time.time())))

    def claim_next(self, now: float) -> bool:
        """Claim and start one task; False when none can be claimed now.

        A claim is never removed, so a task that has one (running, ended, or dead) is never
        claimable again, and an entry whose every task has one is done with (one listing of its
        claims each time it is looked at, until then). ``take`` decides a race; a cancel that
        lands just after it is honoured at once."""
        remaining = self.deadline - now
        self.out_of_time = False  # said afresh by each look: only work that does not fit now counts
        for name in sorted(files.listing(self.pool.queue)):  # tokens start with their epoch: oldest first
            token = name.removesuffix(".json")
            if token in self.exhausted or not name.endswith(".json"):
                continue
            entry = self.entries.get(token) or files.read_json(self.pool.queue / name)
            if entry is None:
                continue
            self.entries[token] = entry
            taken, cancelled = self.pool.taken(token), files.cancelled(self.pool, token)
            open_ = [i for i in entry["indices"] if i not in taken and not (cancelled is not None and (not cancelled or i in cancelled))]
            if not open_:  # every task claimed once or cancelled: nothing here, ever again
                self.exhausted.add(token)
                continue
            if remaining < float(entry.get("expect_s", 0.0)) + self.margin_s:
                self.out_of_time = True
                continue
            for i in open_:
                owner = {"owner": self.owner, "host": self.host, "pid": os.getpid(), "lease_s": self.lease_s}
                path = files.take(self.pool, token, i, owner)
                if path is None:
                    continue
                if (now_cancelled := files.cancelled(self.pool, token)) is not None and (not now_cancelled or i in now_cancelled):
                    files.release(self.pool, token, i, {"owner": self.owner, "host": self.host, "exit": None, "killed": "cancelled", "start": now, "end": now})
                    continue
                self.start(token, i, path, entry)
                return True
        return False

    def start(self, token: str, index: int, claim: Path, entry: dict[str, Any]) -> None:
        job = str(entry["job_id"])
        out = str(entry["log_out"]).replace("%A", job).replace("%a", str(index))
        err = str(entry["log_err"]).replace("%A", job).replace("%a", str(index))
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(index), files.CLAIM_ENV: str(claim), files.OWNER_ENV: self.owner}
        with open(out, "ab") as fo, open(err, "ab") as fe:
            proc = subprocess.Popen(
                ["bash", str(entry["script"])], stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, env=env,
                start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads here
            )
        self.running.append(Run(token, index, claim, proc, time.time()))
        self.say(f"task {index} of {token} started (pid {proc.pid})")

    def finish(self, r: Run) -> None:
        rc = r.proc.returncode
        code = 128 - rc if rc < 0 else rc
        self.running.remove(r)
        if r.killed == "fenced":
            self.say(f"task {r.index} of {r.token} ended after its claim was lost: nothing recorded")
            return
        record = {"owner": self.owner, "host": self.host, "exit": code, "start": r.start, "end": time.time()}
        if r.killed:
            record["killed"] = r.killed
        files.release(self.pool, r.token, r.index, record)
        self.say(f"task {r.index} of {r.token} ended: exit {code}")

    def heartbeat(self) -> None:
        """Renew each claim still ours and alive; kill a task whose claim is not (fencing) or
        that the reconciler cancelled."""
        for r in self.running:
            if r.killed:
                continue
            cancelled = files.cancelled(self.pool, r.token)
            if cancelled is not None and (not cancelled or r.index in cancelled):
                r.killed = "cancelled"
            elif not files.still_held(str(r.claim), self.owner, lease_s=self.lease_s) or not files.beat(r.claim):
                r.killed = "fenced"
            if r.killed:
                self.say(f"task {r.index} of {r.token}: {r.killed}, stopping it")
                killpg(r.proc.pid, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reconciler.pool.worker")
    ap.add_argument("production_dir", type=Path)
    ap.add_argument("--walltime-s", type=float, required=True)
    ap.add_argument("--margin-s", type=float, required=True)
    ap.add_argument("--side-by-side", type=int, required=True)
    ap.add_argument("--lease-s", type=float, required=True)
    ap.add_argument("--idle-s", type=float, required=True)  # execution.pool's, as the worker script writes them
    a = ap.parse_args(argv)
    return Worker(a.production_dir, a.walltime_s, a.margin_s, a.side_by_side, a.lease_s, a.idle_s).loop()


if __name__ == "__main__":
    sys.exit(main())
