"""The local backend: a small batch scheduler for one machine, with Slurm's semantics.

It exists so that the reconciler behaves the same on a laptop as on a cluster: ``submit``
returns a job id at once and the tasks run *detached*, outliving the reconciler that
submitted them; a later pass observes them by job id, exactly as it would query Slurm.

State lives in a spool directory, one file per fact, each written atomically:

    spool/counter                 last job id handed out (under flock on counter.lock)
    spool/jobs/<id>/job.json      the submission: token, name, indices, throttle, env, logs...
    spool/jobs/<id>/script.sh     the script as submitted (sbatch also snapshots it)
    spool/jobs/<id>/tasks/<i>.json  one array task: state, pids, start, end, exit code
    spool/jobs/<id>/lock          flock serializing state changes of that job's tasks
    spool/dispatcher.lock         held by the one running dispatcher

A job directory is assembled under a hidden name and renamed into place, so a job is
either fully visible or not at all. One detached *dispatcher* per spool (``python -m
reconciler.scheduler.local dispatch SPOOL SLOTS``) starts pending tasks, at most ``slots``
at a time across all jobs and at most ``throttle`` per job. For each task it forks a
*supervisor* (in a session of its own) that runs ``bash script.sh`` and records how it
ended. Because the supervisor, not the dispatcher, writes the final state, killing the
dispatcher loses nothing: observe() restarts it when work is pending. A task whose
processes vanished without a recorded exit code is reported NODE_FAIL, never "running
forever".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core.states import SchedState
from reconciler.errors import TransientError
from reconciler.scheduler.base import ArrayJob, JobRef, SchedulerView, TaskSched

SPOOL_ENV = "RECONCILER_LOCAL_SPOOL"
POLL_S = 0.2
IDLE_EXIT_S = 3.0
KILL_WAIT_S = 10.0  # Slurm's KillWait: SIGTERM, then SIGKILL this long after
EXIT_TIMEOUT = 124  # the wrapper's "my own timeout fired"
VANISHED = "process vanished without an exit code"
_TERMINAL = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}


def default_spool() -> Path:
    env = os.environ.get(SPOOL_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "state" / "reconciler" / "local-scheduler"


# ---------------------------------------------------------------- small file helpers


def _write_json(path: Path, doc: dict[str, Any], *, durable: bool = True) -> None:
    """Atomic replace: readers see the old or the new state, never half of one.

    (Not atomic.atomic_write: this one may skip the fsync, for state the dispatcher
    rewrites often and can rebuild.)
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, sort_keys=True)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise TransientError(f"unreadable local-scheduler state {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise TransientError(f"unreadable local-scheduler state {path}: not an object")
    return doc


@contextlib.contextmanager
def _flock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on ``path``; yields False if non-blocking and already held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def proc_start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot) from /proc, None if it is gone.

    Recorded with every pid, so that a recycled pid is not mistaken for our process.
    A zombie counts as gone: it has exited, whoever has yet to reap it.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _alive(pid: Any, start: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if not os.path.isdir("/proc/self"):  # no procfs: the best we can do is "a process has this pid"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    now = proc_start_time(pid)
    return now is not None and (start is None or now == start)


def _killpg(pgid: Any, sig: int) -> None:
    if isinstance(pgid, int) and pgid > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


_TIME_RE = re.compile(r"^#SBATCH\s+(?:--time[= ]|-t\s*)(\S+)", re.MULTILINE)


def parse_time_limit(script: str) -> float | None:
    """Seconds from the script's ``#SBATCH --time``, in any of Slurm's forms.

    ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``; None when absent or unlimited.
    """
    m = _TIME_RE.search(script)
    if not m:
        return None
    text = m.group(1)
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    try:
        if "-" in text:
            d, rest = text.split("-", 1)
            hms = [int(p) for p in rest.split(":")] + [0, 0]
            return float(((int(d) * 24 + hms[0]) * 60 + hms[1]) * 60 + hms[2])
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        return None
    if len(parts) == 1:
        return 60.0 * parts[0]
    if len(parts) == 2:
        return 60.0 * parts[0] + parts[1]
    return float((parts[0] * 60 + parts[1]) * 60 + parts[2])


def expand_log_pattern(pattern: str, job_id: str, index: int) -> str:
    """Slurm's filename pattern: %A array job id, %a array index, %j job id, %x name, %% percent."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "%" and i + 1 < len(pattern):
            n = pattern[i + 1]
            rep = {"A": job_id, "a": str(index), "j": job_id, "%": "%"}.get(n)
            if rep is not None:
                out.append(rep)
                i += 2
                continue
        out.append(c)
        i += 1
    return "".join(out)


# ---------------------------------------------------------------- the spool


class Spool:
    """Paths of one spool directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs = root / "jobs"
        self.counter = root / "counter"
        self.counter_lock = root / "counter.lock"
        self.dispatcher_lock = root / "dispatcher.lock"
        self.log = root / "dispatcher.log"

    def job_dir(self, job_id: str) -> Path:
        return self.jobs / job_id

    def task_file(self, job_id: str, index: int) -> Path:
        return self.jobs / job_id / "tasks" / f"{index}.json"

    def job_lock(self, job_id: str) -> Path:
        return self.jobs / job_id / "lock"

    def next_id(self) -> str:
        with _flock(self.counter_lock):
            try:
                last = int(self.counter.read_text().strip() or 0)
            except FileNotFoundError:
                last = 0
            new = last + 1
            _write_json_text(self.counter, f"{new}\n")
        return str(new)


def _write_json_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _to_sched(doc: dict[str, Any] | None) -> TaskSched:
    """One task file as the engine should see it."""
    if doc is None:
        return TaskSched(SchedState.PENDING)
    state = doc.get("state", "PENDING")
    start, end = doc.get("start"), doc.get("end")
    if state == "PENDING":
        return TaskSched(SchedState.PENDING)
    if state == "RUNNING":
        if _alive(doc.get("pid"), doc.get("pid_start")) or _alive(doc.get("sup_pid"), doc.get("sup_start")):
            return TaskSched(SchedState.RUNNING, start=start)
        return TaskSched(SchedState.NODE_FAIL, None, VANISHED, start, None)
    try:
        sched = SchedState(state)
    except ValueError:
        sched = SchedState.UNKNOWN
    return TaskSched(sched, doc.get("exit_code"), str(doc.get("reason", "")), start, end)


class LocalScheduler:
    """The Scheduler protocol on this machine; see the module docstring for the design."""

    name = "local"

    def __init__(self, spool: Path | None = None, slots: int | None = None) -> None:
        self.spool = Spool(Path(spool) if spool is not None else default_spool())
        self.slots = max(1, slots if slots is not None else (os.cpu_count() or 1))

    # -- submit

    def submit(self, job: ArrayJob) -> str:
        if not job.array_indices:
            raise ValueError("empty array")
        sp = self.spool
        try:
            sp.jobs.mkdir(parents=True, exist_ok=True)
            job_id = sp.next_id()
            staging = sp.jobs / f".{job_id}.staging"
            (staging / "tasks").mkdir(parents=True, exist_ok=True)
            script = job.script or Path(job.script_path).read_text(encoding="utf-8")
            (staging / "script.sh").write_text(script, encoding="utf-8")
            now = time.time()
            for idx in sorted(set(job.array_indices)):
                # Not fsync'ed one by one: the directory becomes visible only by the rename below.
                _write_json(staging / "tasks" / f"{idx}.json", {"state": "PENDING", "index": idx}, durable=False)
            from reconciler.scheduler.script import EXPORT_ALLOWLIST

            doc = {
                "job_id": job_id,
                "token": job.token,
                "name": job.name,
                "array_indices": sorted(set(job.array_indices)),
                "throttle": job.throttle,
                "script_path": str(job.script_path),
                "script": "script.sh",
                "workdir": str(job.workdir),
                "log_out": job.log_out,
                "log_err": job.log_err,
                "time_limit_s": parse_time_limit(script),
                "submitted": now,
                # The submitter's environment, as sbatch --export=<allowlist> would carry it.
                "env": {k: os.environ[k] for k in EXPORT_ALLOWLIST if k in os.environ},
            }
            _write_json(staging / "job.json", doc)
            (staging / "lock").touch()
            os.rename(staging, sp.job_dir(job_id))
        except OSError as exc:
            raise TransientError(f"local scheduler: cannot submit into {sp.root}: {exc}") from exc
        with contextlib.suppress(OSError):
            self.ensure_dispatcher()  # if this fails, the next observe() starts it
        return job_id

    def dispatcher_alive(self) -> bool:
        try:
            with _flock(self.spool.dispatcher_lock, blocking=False) as got:
                return not got
        except FileNotFoundError:
            return False

    def ensure_dispatcher(self) -> None:
        """Start the spool's dispatcher unless one holds the lock; it double-forks away from us."""
        self.spool.root.mkdir(parents=True, exist_ok=True)
        if self.dispatcher_alive():
            return
        pkg_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
        with open(self.spool.log, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler.scheduler.local", "dispatch", str(self.spool.root), str(self.slots)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.spool.root,
                env=env,
                start_new_session=True,
            )
        try:
            proc.wait(timeout=30)  # the first process only forks the daemon and exits
        except subprocess.TimeoutExpired:
            pass

    # -- observe

    def observe(self, refs: Sequence[JobRef]) -> SchedulerView:
        view = SchedulerView()
        sp = self.spool
        want: list[str] = []
        missing_tokens = {r.token for r in refs if r.job_id is None}
        try:
            if missing_tokens:
                for token, job_id in self._find_tokens(missing_tokens).items():
                    view.found[token] = job_id
                    want.append(job_id)
            want += [r.job_id for r in refs if r.job_id is not None]
            pending = False
            for job_id in dict.fromkeys(want):
                if not job_id.isdigit():
                    view.gone.add(job_id)
                    continue
                doc = _read_json(sp.job_dir(job_id) / "job.json")
                if doc is None:
                    view.gone.add(job_id)
                    continue
                states: dict[int, TaskSched] = {}
                for idx in doc.get("array_indices", []):
                    task_file = sp.task_file(job_id, idx)
                    ts = _to_sched(_read_json(task_file))
                    if ts.reason == VANISHED:
                        # Its supervisor may have recorded the end and exited since we read.
                        ts = _to_sched(_read_json(task_file))
                    states[idx] = ts
                    pending = pending or ts.state is SchedState.PENDING
                view.tasks[job_id] = states
        except PermissionError as exc:
            raise TransientError(f"local scheduler: spool {sp.root} unreadable: {exc}") from exc
        except OSError as exc:
            raise TransientError(f"local scheduler: cannot read spool {sp.root}: {exc}") from exc
        if pending:
            try:
                self.ensure_dispatcher()
            except OSError as exc:
                raise TransientError(f"local scheduler: cannot start the dispatcher: {exc}") from exc
        return view

    def _find_tokens(self, tokens: set[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        try:
            names = os.listdir(self.spool.jobs)
        except FileNotFoundError:
            return found
        for name in sorted((n for n in names if n.isdigit()), key=int, reverse=True):
            doc = _read_json(self.spool.jobs / name / "job.json")
            if doc and doc.get("token") in tokens and doc["token"] not in found:
                found[doc["token"]] = name
                if len(found) == len(tokens):
                    break
        return found

    # -- cancel

    def cancel(self, job_id: str, array_indices: Sequence[int] | None = None) -> None:
        sp = self.spool
        try:
            doc = _read_json(sp.job_dir(job_id) / "job.json") if job_id.isdigit() else None
            if doc is None:
                return  # unknown or already purged: nothing left to cancel
            wanted = doc.get("array_indices", []) if array_indices is None else array_indices
            known = set(doc.get("array_indices", []))
            with _flock(sp.job_lock(job_id)):
                now = time.time()
                for idx in wanted:
                    if idx not in known:
                        continue
                    path = sp.task_file(job_id, idx)
                    st = _read_json(path) or {"state": "PENDING", "index": idx}
                    state = st.get("state")
                    if state == "PENDING":
                        st.update(state="CANCELLED", reason="cancelled while pending", end=now)
                        _write_json(path, st)
                    elif state == "RUNNING" and not st.get("cancel_requested"):
                        task_alive = _alive(st.get("pid"), st.get("pid_start"))
                        sup_alive = _alive(st.get("sup_pid"), st.get("sup_start"))
                        if not task_alive and not sup_alive:
                            continue  # vanished: observe reports NODE_FAIL, as Slurm would
                        st["cancel_requested"] = now
                        if not sup_alive:  # orphan: nobody else will record the end
                            st.update(state="CANCELLED", reason="cancelled", end=now)
                        _write_json(path, st)
                        if task_alive:
                            _killpg(st.get("pid"), signal.SIGTERM)
        except OSError as exc:
            raise TransientError(f"local scheduler: cannot cancel {job_id}: {exc}") from exc


# ---------------------------------------------------------------- the dispatcher


@dataclass
class _Job:
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


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}", file=sys.stderr, flush=True)


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
                doc = _read_json(jdir / "job.json")
            except TransientError as exc:
                _log(f"job {name}: {exc}")
                continue
            if doc is None:
                continue
            job = _Job(name, doc, deque())
            for idx in doc.get("array_indices", []):
                try:
                    st = _read_json(self.spool.task_file(name, idx)) or {"state": "PENDING"}
                except TransientError as exc:
                    _log(f"job {name} task {idx}: {exc}")
                    continue
                if st.get("state") == "PENDING":
                    job.pending.append(idx)
                elif st.get("state") == "RUNNING":
                    rec = (st.get("pid"), st.get("pid_start"), st.get("sup_pid"), st.get("sup_start"))
                    if _alive(rec[0], rec[1]) or _alive(rec[2], rec[3]):
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
                if not (_alive(pid, pst) or _alive(sup, sst)):
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
        # Explicit fd, not _flock(): the forked child must close its copy, or the lock (held
        # by the shared open file description) would outlive our release and deadlock it.
        lock_fd = os.open(self.spool.job_lock(job.job_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                st = _read_json(path) or {"state": "PENDING", "index": idx}
            except TransientError as exc:
                _log(f"job {job.job_id} task {idx}: {exc}")
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
                        _log(f"supervisor of {job.job_id}_{idx} crashed: {exc!r}")
                finally:
                    os._exit(code)
            st.update(state="RUNNING", start=time.time(), sup_pid=pid, sup_start=proc_start_time(pid), pid=None, pid_start=None)
            _write_json(path, st)
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


def supervise(spool: Spool, job_id: str, doc: dict[str, Any], idx: int) -> int:
    """Run one array task to its end and record how it ended (runs in a forked child)."""
    path = spool.task_file(job_id, idx)
    lock = spool.job_lock(job_id)
    env = dict(doc.get("env") or {})
    env.update(
        SLURM_ARRAY_TASK_ID=str(idx),
        SLURM_ARRAY_JOB_ID=job_id,
        SLURM_JOB_ID=job_id,
        SLURM_JOB_NAME=str(doc.get("name", "")),
        SLURM_SUBMIT_DIR=str(doc.get("workdir", "")),
    )
    out_path = expand_log_pattern(str(doc.get("log_out") or "slurm-%A_%a.out"), job_id, idx)
    err_path = expand_log_pattern(str(doc.get("log_err") or out_path), job_id, idx)
    workdir = str(doc.get("workdir") or "/")
    script = str(spool.job_dir(job_id) / "script.sh")
    limit = doc.get("time_limit_s")
    try:
        for p in {out_path, err_path}:
            Path(p).parent.mkdir(parents=True, exist_ok=True)
        out = open(out_path, "wb")  # noqa: SIM115 - closed below, after Popen
        err = out if err_path == out_path else open(err_path, "wb")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                ["bash", script], cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        finally:
            out.close()
            err.close()
    except OSError as exc:
        with _flock(lock):
            st = _read_json(path) or {}
            st.update(state="FAILED", exit_code=None, reason=f"cannot start: {exc}", end=time.time())
            _write_json(path, st)
        return 0

    with _flock(lock):
        st = _read_json(path) or {}
        st.update(pid=proc.pid, pid_start=proc_start_time(proc.pid))
        cancelled_early = bool(st.get("cancel_requested"))
        _write_json(path, st)
    if cancelled_early:
        _killpg(proc.pid, signal.SIGTERM)

    started = time.monotonic()
    term_at: float | None = time.monotonic() if cancelled_early else None
    timed_out = False
    checked = 0.0
    while True:
        try:
            rc = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if limit and not timed_out and now - started > float(limit):
            timed_out = True
            _killpg(proc.pid, signal.SIGTERM)
            term_at = now
        if term_at is None and now - checked > 1.0:
            checked = now
            with contextlib.suppress(TransientError, OSError):
                if (_read_json(path) or {}).get("cancel_requested"):
                    term_at = now  # the canceller sent SIGTERM; escalate if it is ignored
        if term_at is not None and now - term_at > KILL_WAIT_S:
            _killpg(proc.pid, signal.SIGKILL)
    _killpg(proc.pid, signal.SIGKILL)  # as Slurm does: nothing of a finished task lingers
    end = time.time()
    code = 128 - rc if rc < 0 else rc
    with _flock(lock):
        st = _read_json(path) or {}
        if st.get("state") == "CANCELLED":
            return 0
        if st.get("cancel_requested") and code != 0:
            state, reason = "CANCELLED", "cancelled"
        elif timed_out or code == EXIT_TIMEOUT:
            state, reason = "TIMEOUT", "TIMEOUT" if timed_out else "timeout (wrapper)"
        elif code == 0:
            state, reason = "COMPLETED", ""
        else:
            state = "FAILED"
            reason = f"killed by signal {-rc}" if rc < 0 else f"exit {code}"
        st.update(state=state, exit_code=code, reason=reason, end=end)
        _write_json(path, st)
    return 0


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
    _log(f"dispatcher up, {slots} slots")
    try:
        Dispatcher(spool, slots, fd).loop()
    finally:
        _log("dispatcher idle, exiting")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "dispatch":
        return dispatch(Path(args[1]), max(1, int(args[2])))
    print("usage: python -m reconciler.scheduler.local dispatch SPOOL SLOTS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
