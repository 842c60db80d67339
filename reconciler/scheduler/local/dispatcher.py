"""The local scheduler's dispatcher: the daemon that starts pending tasks.

One detached dispatcher per spool (``python -m reconciler.scheduler.local dispatch SPOOL
SLOTS``, started by :meth:`LocalScheduler.ensure_dispatcher`) starts pending tasks, at most
``slots`` at a time across all jobs and at most ``throttle`` per job, and exits once idle
for IDLE_EXIT_S. For each task it forks a supervisor (:mod:`.supervisor`) in a session of
its own. Because the supervisor, not the dispatcher, writes the final state, killing the
dispatcher loses nothing: observe() restarts it when work is pending, and the new one
adopts the tasks still running (by the pids recorded in their task files).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import TransientError
from reconciler.scheduler.local.spool import Spool, alive, proc_start_time, read_json, write_json
from reconciler.scheduler.local.supervisor import supervise

POLL_S = 0.2
IDLE_EXIT_S = 3.0


def log(msg: str) -> None:
    """One line of the spool's dispatcher.log (the dispatcher's stderr, its supervisors' too)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}", file=sys.stderr, flush=True)


@dataclass
class _Job:
    """A job with work left: indices to start, and tasks running (ours, or adopted)."""

    job_id: str
    doc: dict[str, Any]
    pending: deque[int]
    running: dict[int, tuple[Any, Any, Any, Any]] = field(default_factory=dict)  # orphans: idx -> pid, start, sup, sup_start
    children: dict[int, int] = field(default_factory=dict)  # idx -> supervisor pid (our child)

    @property
    def throttle(self) -> int | None:
        t = self.doc.get("throttle")
        return int(t) if t else None

    def busy(self) -> int:
        return len(self.running) + len(self.children)


class Dispatcher:
    """Starts pending tasks within the slot and throttle limits; one per spool (flock)."""

    def __init__(self, spool: Spool, slots: int, lock_fd: int) -> None:
        self.spool = spool
        self.slots = slots
        self.lock_fd = lock_fd
        self.jobs: dict[str, _Job] = {}
        self.done_jobs: set[str] = set()
        self.by_child: dict[int, tuple[str, int]] = {}

    def discover(self) -> bool:
        """Pick up new job directories; True if any was found."""
        new = False
        try:
            names = os.listdir(self.spool.jobs)
        except FileNotFoundError:
            return False
        for name in sorted((n for n in names if n.isdigit()), key=int):
            if name in self.jobs or name in self.done_jobs:
                continue
            jdir = self.spool.job_dir(name)
            if (jdir / "finished").exists():
                self.done_jobs.add(name)
                continue
            try:
                doc = read_json(jdir / "job.json")
            except TransientError as exc:
                log(f"job {name}: {exc}")
                continue
            if doc is None:
                continue
            job = _Job(name, doc, deque())
            for idx in doc.get("array_indices", []):
                try:
                    st = read_json(self.spool.task_file(name, idx)) or {"state": "PENDING"}
                except TransientError as exc:
                    log(f"job {name} task {idx}: {exc}")
                    continue
                if st.get("state") == "PENDING":
                    job.pending.append(idx)
                elif st.get("state") == "RUNNING":
                    rec = (st.get("pid"), st.get("pid_start"), st.get("sup_pid"), st.get("sup_start"))
                    if alive(rec[0], rec[1]) or alive(rec[2], rec[3]):
                        job.running[idx] = rec  # started by an earlier dispatcher
            self.jobs[name] = job
            new = True
        return new

    def reap(self) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            where = self.by_child.pop(pid, None)
            if where is not None:
                job = self.jobs.get(where[0])
                if job is not None:
                    job.children.pop(where[1], None)

    def prune_orphans(self) -> None:
        for job in self.jobs.values():
            for idx, (pid, pst, sup, sst) in list(job.running.items()):
                if not (alive(pid, pst) or alive(sup, sst)):
                    del job.running[idx]

    def launch_ready(self) -> None:
        busy = sum(j.busy() for j in self.jobs.values())
        for job_id in sorted(self.jobs, key=int):
            job = self.jobs[job_id]
            while job.pending and busy < self.slots and (job.throttle is None or job.busy() < job.throttle):
                idx = job.pending.popleft()
                if self.launch(job, idx):
                    busy += 1
            if busy >= self.slots:
                break

    def finish_jobs(self) -> None:
        for job_id, job in list(self.jobs.items()):
            if not job.pending and not job.busy():
                with contextlib.suppress(OSError):
                    (self.spool.job_dir(job_id) / "finished").touch()
                del self.jobs[job_id]
                self.done_jobs.add(job_id)

    def launch(self, job: _Job, idx: int) -> bool:
        path = self.spool.task_file(job.job_id, idx)
        # Explicit fd, not flock(): the forked child must close its copy, or the lock (held
        # by the shared open file description) would outlive our release and deadlock it.
        lock_fd = os.open(self.spool.job_lock(job.job_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                st = read_json(path) or {"state": "PENDING", "index": idx}
            except TransientError as exc:
                log(f"job {job.job_id} task {idx}: {exc}")
                return False
            if st.get("state") != "PENDING":
                return False  # cancelled meanwhile
            pid = os.fork()
            if pid == 0:  # the supervisor
                code = 1
                try:
                    os.close(lock_fd)
                    os.close(self.lock_fd)
                    os.setsid()  # out of the dispatcher's session: killing one spares the other
                    code = supervise(self.spool, job.job_id, job.doc, idx)
                except BaseException as exc:  # a forked child must never unwind into the dispatcher
                    with contextlib.suppress(BaseException):
                        log(f"supervisor of {job.job_id}_{idx} crashed: {exc!r}")
                finally:
                    os._exit(code)
            st.update(state="RUNNING", start=time.time(), sup_pid=pid, sup_start=proc_start_time(pid), pid=None, pid_start=None)
            write_json(path, st)
        finally:
            os.close(lock_fd)
        job.children[idx] = pid
        self.by_child[pid] = (job.job_id, idx)
        return True

    def has_work(self) -> bool:
        return any(j.pending or j.busy() for j in self.jobs.values())

    def loop(self) -> None:
        idle_since: float | None = None
        while True:
            self.reap()
            self.prune_orphans()
            self.discover()
            self.launch_ready()
            self.finish_jobs()
            if self.has_work() or self.by_child:
                idle_since = None
            else:
                now = time.monotonic()
                idle_since = idle_since if idle_since is not None else now
                if now - idle_since > IDLE_EXIT_S:
                    # Release first, then look once more: a submit that wrote its job before
                    # our release either is seen here or finds the lock free and starts a new
                    # dispatcher. Either way no job is stranded.
                    fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
                    if not self.discover():
                        return
                    try:
                        fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        return  # a newer dispatcher took over
                    idle_since = None
            time.sleep(POLL_S)


def dispatch(spool_root: Path, slots: int) -> int:
    """The dispatcher's entry point: daemonize, take the spool's lock, loop until idle."""
    if os.fork() != 0:
        return 0  # the caller waits for this first process; the daemon lives on
    spool = Spool(spool_root)
    spool.jobs.mkdir(parents=True, exist_ok=True)
    fd = os.open(spool.dispatcher_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another dispatcher runs this spool
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    log(f"dispatcher up, {slots} slots")
    try:
        Dispatcher(spool, slots, fd).loop()
    finally:
        log("dispatcher idle, exiting")
    return 0
