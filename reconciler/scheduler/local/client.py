"""The local scheduler's client: what the reconciler calls, Slurm's semantics on one machine.

``submit`` returns a job id at once and the tasks run *detached* (see
:mod:`.dispatcher`), outliving the reconciler that submitted them; a later pass observes
them by job id, exactly as it would query Slurm. Every call reads or writes the spool
(:mod:`.spool`) and returns; none waits for a task.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from reconciler.core.states import SchedState
from reconciler.errors import TransientError
from reconciler.process import killpg
from reconciler.scheduler.base import ArrayJob, JobRef, SchedulerView, TaskSched
from reconciler.scheduler.local.spool import (
    VANISHED,
    Spool,
    alive,
    default_spool,
    flock,
    parse_export,
    parse_time_limit,
    read_json,
    to_sched,
    write_json,
)


class LocalScheduler:
    """The Scheduler protocol on this machine; see the package docstring for the design."""

    name = "local"
    lookup_grace_s = 0.0
    """A submission is a rename in the spool: it is never lost between the call and its id."""

    def __init__(self, spool: Path | None = None, slots: int | None = None) -> None:
        self.spool = Spool(Path(spool) if spool is not None else default_spool())
        self.slots = max(1, slots if slots is not None else (os.cpu_count() or 1))

    def max_array_size(self) -> None:
        """No MaxArraySize here: an array of any size is a directory of task files."""
        return None

    def site_ceilings(self, partition: str | None) -> tuple[None, None]:
        """No limits enforced here on a task's memory or time but its own timeout."""
        return None, None

    # -- submit

    def submit(self, job: ArrayJob) -> str:
        """Write the job into the spool and return its id at once, as sbatch does; the
        dispatcher starts its tasks. A job is visible whole or not at all (renamed into place)."""
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
                write_json(staging / "tasks" / f"{idx}.json", {"state": "PENDING", "index": idx}, durable=False)
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
                "env": {k: os.environ[k] for k in parse_export(script, EXPORT_ALLOWLIST) if k in os.environ},
            }
            write_json(staging / "job.json", doc)
            (staging / "lock").touch()
            os.rename(staging, sp.job_dir(job_id))
        except OSError as exc:
            raise TransientError(f"local scheduler: cannot submit into {sp.root}: {exc}") from exc
        with contextlib.suppress(OSError):
            self.ensure_dispatcher()  # if this fails, the next observe() starts it
        return job_id

    def dispatcher_alive(self) -> bool:
        """Whether a dispatcher holds the spool's lock (it exits on its own once idle)."""
        try:
            with flock(self.spool.dispatcher_lock, blocking=False) as got:
                return not got
        except FileNotFoundError:
            return False

    def ensure_dispatcher(self) -> None:
        """Start the spool's dispatcher unless one holds the lock; it double-forks away from us."""
        self.spool.root.mkdir(parents=True, exist_ok=True)
        if self.dispatcher_alive():
            return
        # The daemon must import this very reconciler, even from a checkout that is not
        # installed: the directory holding the package (reconciler/scheduler/local/client.py).
        pkg_parent = str(Path(__file__).resolve().parents[3])
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
        """Read the task files of these jobs (tokens resolved by job.json); restart the
        dispatcher if work is pending and none runs, since it may have been killed."""
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
                doc = read_json(sp.job_dir(job_id) / "job.json")
                if doc is None:
                    view.gone.add(job_id)
                    continue
                states: dict[int, TaskSched] = {}
                for idx in doc.get("array_indices", []):
                    task_file = sp.task_file(job_id, idx)
                    ts = to_sched(read_json(task_file))
                    if ts.reason == VANISHED:
                        # Its supervisor may have recorded the end and exited since we read.
                        ts = to_sched(read_json(task_file))
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
        """Job ids of these tokens, newest jobs first (a lost submit is a recent one)."""
        found: dict[str, str] = {}
        try:
            names = os.listdir(self.spool.jobs)
        except FileNotFoundError:
            return found
        for name in sorted((n for n in names if n.isdigit()), key=int, reverse=True):
            doc = read_json(self.spool.jobs / name / "job.json")
            if doc and doc.get("token") in tokens and doc["token"] not in found:
                found[doc["token"]] = name
                if len(found) == len(tokens):
                    break
        return found

    # -- cancel

    def cancel(self, job_id: str, array_indices: Sequence[int] | None = None) -> None:
        """Cancel as scancel does: pending tasks at once; running ones get SIGTERM and a
        ``cancel_requested`` mark, and their supervisor records the end (or kills them)."""
        sp = self.spool
        try:
            doc = read_json(sp.job_dir(job_id) / "job.json") if job_id.isdigit() else None
            if doc is None:
                return  # unknown or already purged: nothing left to cancel
            wanted = doc.get("array_indices", []) if array_indices is None else array_indices
            known = set(doc.get("array_indices", []))
            with flock(sp.job_lock(job_id)):
                now = time.time()
                for idx in wanted:
                    if idx not in known:
                        continue
                    path = sp.task_file(job_id, idx)
                    st = read_json(path) or {"state": "PENDING", "index": idx}
                    state = st.get("state")
                    if state == "PENDING":
                        st.update(state="CANCELLED", reason="cancelled while pending", end=now)
                        write_json(path, st)
                    elif state == "RUNNING" and not st.get("cancel_requested"):
                        task_alive = alive(st.get("pid"), st.get("pid_start"))
                        sup_alive = alive(st.get("sup_pid"), st.get("sup_start"))
                        if not task_alive and not sup_alive:
                            continue  # vanished: observe reports NODE_FAIL, as Slurm would
                        st["cancel_requested"] = now
                        if not sup_alive:  # orphan: nobody else will record the end
                            st.update(state="CANCELLED", reason="cancelled", end=now)
                        write_json(path, st)
                        if task_alive:
                            killpg(st.get("pid"), signal.SIGTERM)
        except OSError as exc:
            raise TransientError(f"local scheduler: cannot cancel {job_id}: {exc}") from exc
