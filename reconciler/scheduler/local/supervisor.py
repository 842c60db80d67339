"""The local scheduler's supervisor: one per running task, it runs the script and records how it ended.

Forked by the dispatcher, in a session of its own (killing the dispatcher spares it), it
runs ``bash script.sh`` as sbatch would (the array task's SLURM_* variables, the job's
log files, its working directory) under the script's ``#SBATCH --time``, and writes the
task's final state. A cancel (``LocalScheduler.cancel``) sends SIGTERM to the task's group
and records ``cancel_requested``; the supervisor escalates to SIGKILL after KILL_WAIT_S, as
Slurm does after KillWait. Exit code 124 is the task wrapper's own timeout.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from reconciler.errors import TransientError
from reconciler.process import killpg, wait_group
from reconciler.scheduler.local.spool import (
    Spool,
    expand_log_pattern,
    flock,
    proc_start_time,
    read_json,
    write_json,
)

POLL_S = 0.5
KILL_WAIT_S = 10.0  # Slurm's KillWait: SIGTERM, then SIGKILL this long after
CANCEL_POLL_S = 1.0  # how often the task file is read for a cancel request
EXIT_TIMEOUT = 124  # the wrapper's "my own timeout fired"


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
        with flock(lock):
            st = read_json(path) or {}
            st.update(state="FAILED", exit_code=None, reason=f"cannot start: {exc}", end=time.time())
            write_json(path, st)
        return 0

    with flock(lock):
        st = read_json(path) or {}
        st.update(pid=proc.pid, pid_start=proc_start_time(proc.pid))
        cancelled_early = bool(st.get("cancel_requested"))
        write_json(path, st)
    if cancelled_early:
        killpg(proc.pid, signal.SIGTERM)

    def cancel_requested() -> bool:
        """The canceller has sent SIGTERM already (or we did, above): only escalation is left."""
        if cancelled_early:
            return True
        with contextlib.suppress(TransientError, OSError):
            return bool((read_json(path) or {}).get("cancel_requested"))
        return False

    ending = wait_group(
        proc,
        timeout_s=float(limit) if limit else None,
        kill_grace_s=KILL_WAIT_S,
        poll_s=POLL_S,
        stop_requested=cancel_requested,
        stop_poll_s=CANCEL_POLL_S,
    )
    end = time.time()
    rc, code, timed_out = ending.returncode, ending.exit_code, ending.timed_out
    # what the task used, as sacct would say: this forked supervisor's only child is the task,
    # so its children's usage is the task's (peak of the biggest process, CPU of them all)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    usage = {"max_rss_mb": round(used.ru_maxrss / 1024.0, 3), "cpu_s": round(used.ru_utime + used.ru_stime, 3)}
    with flock(lock):
        st = read_json(path) or {}
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
        st.update(state=state, exit_code=code, reason=reason, end=end, **usage)
        write_json(path, st)
    return 0
