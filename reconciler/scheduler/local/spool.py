"""The local scheduler's spool: where its state lives, and how a task file reads.

State lives in a spool directory, one file per fact, each written atomically
(:func:`reconciler.atomic.atomic_write`), so that the client, the dispatcher and the
supervisors, all separate processes, never read half of a change:

    spool/counter                 last job id handed out (under flock on counter.lock)
    spool/jobs/<id>/job.json      the submission: token, name, indices, throttle, env, logs...
    spool/jobs/<id>/script.sh     the script as submitted (sbatch also snapshots it)
    spool/jobs/<id>/tasks/<i>.json  one array task: state, pids, start, end, exit code
    spool/jobs/<id>/lock          flock serializing state changes of that job's tasks
    spool/jobs/<id>/finished      the dispatcher has nothing left to do for this job
    spool/dispatcher.lock         held by the one running dispatcher
    spool/dispatcher.log          what the dispatchers and supervisors said

A job directory is assembled under a hidden name and renamed into place, so a job is
either fully visible or not at all. Every pid is recorded with its start time, so that a
recycled pid is never taken for our process; a task whose processes vanished without a
recorded exit code reads NODE_FAIL, never "running forever".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from reconciler.atomic import atomic_write
from reconciler.core.sizing import Usage
from reconciler.core.states import SchedState
from reconciler.errors import TransientError
from reconciler.scheduler.base import TaskSched

SPOOL_ENV = "RECONCILER_LOCAL_SPOOL"
VANISHED = "process vanished without an exit code"


def default_spool() -> Path:
    """``$RECONCILER_LOCAL_SPOOL``, else one spool per user under ~/.local/state."""
    env = os.environ.get(SPOOL_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "state" / "reconciler" / "local-scheduler"


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
        """A new job id, never handed out before in this spool (durable before it is used)."""
        with flock(self.counter_lock):
            try:
                last = int(self.counter.read_text().strip() or 0)
            except FileNotFoundError:
                last = 0
            new = last + 1
            atomic_write(self.counter, f"{new}\n")
        return str(new)


# ---------------------------------------------------------------- small file helpers


def write_json(path: Path, doc: dict[str, Any], *, durable: bool = True) -> None:
    """Replace a state file atomically; ``durable=False`` for files made visible by a later
    durable rename (the task files of a job directory being assembled)."""
    atomic_write(path, json.dumps(doc, sort_keys=True), durable=durable)


def read_json(path: Path) -> dict[str, Any] | None:
    """A state file, None when it does not exist; unreadable state is a TransientError (the
    pass stops and retries), never a guess."""
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
def flock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
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


# ---------------------------------------------------------------- processes of a task


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


def alive(pid: Any, start: Any) -> bool:
    """Whether the process recorded as (pid, start time) still runs (values from a task file)."""
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


def to_sched(doc: dict[str, Any] | None) -> TaskSched:
    """One task file as the engine should see it: RUNNING only while one of its recorded
    processes (the task, or its supervisor) is alive; NODE_FAIL once both vanished."""
    if doc is None:
        return TaskSched(SchedState.PENDING)
    state = doc.get("state", "PENDING")
    start, end = doc.get("start"), doc.get("end")
    if state == "PENDING":
        return TaskSched(SchedState.PENDING)
    if state == "RUNNING":
        if alive(doc.get("pid"), doc.get("pid_start")) or alive(doc.get("sup_pid"), doc.get("sup_start")):
            return TaskSched(SchedState.RUNNING, start=start)
        return TaskSched(SchedState.NODE_FAIL, None, VANISHED, start, None)
    try:
        sched = SchedState(state)
    except ValueError:
        sched = SchedState.UNKNOWN
    rss, cpu = doc.get("max_rss_mb"), doc.get("cpu_s")
    elapsed = end - start if isinstance(end, (int, float)) and isinstance(start, (int, float)) else None
    usage = Usage(elapsed, rss, cpu) if rss is not None or cpu is not None else None
    return TaskSched(sched, doc.get("exit_code"), str(doc.get("reason", "")), start, end, usage)


# ---------------------------------------------------------------- what sbatch would read


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


_EXPORT_RE = re.compile(r"^#SBATCH\s+--export[= ]([A-Za-z0-9_,]+)\s*$", re.MULTILINE)


def parse_export(script: str, default: Sequence[str]) -> list[str]:
    """The variable names of the script's ``#SBATCH --export=A,B`` (``default`` when absent),
    so the local backend passes what sbatch would: the allowlist plus ``environment.export_env``."""
    m = _EXPORT_RE.search(script)
    return [n for n in m.group(1).split(",") if n] if m else list(default)


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
