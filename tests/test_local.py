"""The local backend with real, detached processes: slots, throttle, cancel, node failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.core.states import OutputState, SchedState
from reconciler.markers import read_marker
from reconciler.outputs import observe_outputs
from reconciler.scheduler.base import ArrayJob, JobRef, SchedulerView, TaskSched
from reconciler.scheduler.local import (
    LocalScheduler,
    expand_log_pattern,
    parse_time_limit,
    proc_start_time,
)
from reconciler.scheduler.script import (
    ManifestTask,
    job_name,
    log_patterns,
    render_manifest,
    render_script,
)
from reconciler.spec.expand import SYMBOLIC_DIR, Renderer
from reconciler.spec.load import WorkTree, load

from .conftest import ROOT

SLOTS = 2


def write_script(tmp_path: Path, body: str, name: str = "task.sh") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/bash\n#SBATCH --job-name=t.0000\n" + body + "\n")
    return path


TIMED = """echo "start $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $(date +%s.%N)" >> {log}
sleep {sleep}
echo "end $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $(date +%s.%N)" >> {log}
exit 0"""


def array_job(tmp_path: Path, script: Path, indices: range | list[int], throttle: int | None = None, token: str | None = None) -> ArrayJob:
    logs = tmp_path / "logs"
    return ArrayJob(
        token=token or uuid.uuid4().hex,
        name="t.0000",
        script_path=script,
        script=script.read_text(),
        array_indices=tuple(indices),
        throttle=throttle,
        workdir=tmp_path,
        log_out=str(logs / "job_%A_%a.out"),
        log_err=str(logs / "job_%A_%a.err"),
    )


def wait_for(sched: LocalScheduler, refs: list[JobRef], done: Callable[[SchedulerView], bool], timeout: float = 60.0) -> SchedulerView:
    deadline = time.monotonic() + timeout
    while True:
        view = sched.observe(refs)
        if done(view):
            return view
        assert time.monotonic() < deadline, f"timed out; last view: {view}"
        time.sleep(0.1)


def all_finished(view: SchedulerView) -> bool:
    return bool(view.tasks) and all(t.state.finished for tasks in view.tasks.values() for t in tasks.values())


def states(view: SchedulerView, job_id: str) -> dict[int, SchedState]:
    return {i: t.state for i, t in view.tasks[job_id].items()}


def max_overlap(log: Path, job: str | None = None) -> int:
    events: list[tuple[float, int]] = []
    for line in log.read_text().splitlines():
        kind, jid, _idx, stamp = line.split()
        if job is None or jid == job:
            events.append((float(stamp), 1 if kind == "start" else -1))
    current = peak = 0
    for _t, delta in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        current += delta
        peak = max(peak, current)
    return peak


def task_doc(spool: Path, job_id: str, idx: int) -> dict:
    return json.loads((spool / "jobs" / job_id / "tasks" / f"{idx}.json").read_text())


def test_tasks_run_detached_and_complete(tmp_path: Path) -> None:
    body = 'echo "out $SLURM_ARRAY_JOB_ID/$SLURM_ARRAY_TASK_ID/$SLURM_JOB_ID secret=${SECRET_VAR:-unset} pwd=$PWD"; echo err >&2; exit 0'
    script = write_script(tmp_path, body)
    sched = LocalScheduler(tmp_path / "spool", slots=SLOTS)
    os.environ["SECRET_VAR"] = "leaked"
    try:
        started = time.monotonic()
        job_id = sched.submit(array_job(tmp_path, script, [0, 3, 5]))
        assert time.monotonic() - started < 5  # returns at once, it does not run the tasks
    finally:
        del os.environ["SECRET_VAR"]
    assert job_id.isdigit()
    view = wait_for(sched, [JobRef("x", job_id, 0)], all_finished)
    assert states(view, job_id) == {0: SchedState.COMPLETED, 3: SchedState.COMPLETED, 5: SchedState.COMPLETED}
    t = view.tasks[job_id][3]
    assert t.exit_code == 0 and t.start is not None and t.end is not None and t.start <= t.end
    out = (tmp_path / "logs" / f"job_{job_id}_3.out").read_text()
    assert out.strip() == f"out {job_id}/3/{job_id} secret=unset pwd={tmp_path}"  # only the allowlist travels
    assert (tmp_path / "logs" / f"job_{job_id}_3.err").read_text().strip() == "err"
    assert int(sched.submit(array_job(tmp_path, script, [0]))) == int(job_id) + 1


def test_failure_exit_code_and_wrapper_timeout(tmp_path: Path) -> None:
    script = write_script(tmp_path, 'if [ "$SLURM_ARRAY_TASK_ID" = 1 ]; then exit 124; fi; exit 3')
    sched = LocalScheduler(tmp_path / "spool", slots=SLOTS)
    job_id = sched.submit(array_job(tmp_path, script, [0, 1]))
    view = wait_for(sched, [JobRef("x", job_id, 0)], all_finished)
    t0 = view.tasks[job_id][0]
    assert t0 == TaskSched(SchedState.FAILED, 3, "exit 3", t0.start, t0.end, t0.usage)
    assert view.tasks[job_id][1].state is SchedState.TIMEOUT


def test_an_ended_task_reports_what_it_used_as_sacct_would(tmp_path: Path) -> None:
    """Peak memory and CPU time from the task's resource usage (the local backend's MaxRSS, TotalCPU)."""
    script = write_script(tmp_path, 'python3 -c "x = bytearray(200 * 2**20); sum(range(3 * 10**6))"')
    sched = LocalScheduler(tmp_path / "spool", slots=SLOTS)
    job_id = sched.submit(array_job(tmp_path, script, [0]))
    t = wait_for(sched, [JobRef("x", job_id, 0)], all_finished).tasks[job_id][0]
    assert t.state is SchedState.COMPLETED and t.usage is not None
    assert t.usage.max_rss_mb is not None and 200 <= t.usage.max_rss_mb < 400
    assert t.usage.cpu_s is not None and t.usage.cpu_s > 0.01
    assert t.usage.elapsed_s is not None and t.start is not None and t.end is not None and t.usage.elapsed_s == t.end - t.start


def test_slots_hold_across_submissions(tmp_path: Path) -> None:
    log = tmp_path / "times.log"
    script = write_script(tmp_path, TIMED.format(log=log, sleep=0.3))
    sched = LocalScheduler(tmp_path / "spool", slots=SLOTS)
    a = sched.submit(array_job(tmp_path, script, range(4)))
    b = sched.submit(array_job(tmp_path, script, range(4)))
    view = wait_for(sched, [JobRef("a", a, 0), JobRef("b", b, 0)], all_finished)
    assert set(states(view, a).values()) == set(states(view, b).values()) == {SchedState.COMPLETED}
    assert len(log.read_text().splitlines()) == 16
    assert max_overlap(log) == SLOTS


def test_throttle_holds_within_a_job(tmp_path: Path) -> None:
    log = tmp_path / "times.log"
    script = write_script(tmp_path, TIMED.format(log=log, sleep=0.2))
    sched = LocalScheduler(tmp_path / "spool", slots=SLOTS)
    a = sched.submit(array_job(tmp_path, script, range(4), throttle=1))
    wait_for(sched, [JobRef("a", a, 0)], all_finished)
    assert max_overlap(log, a) == 1


def test_vanished_process_is_node_fail(tmp_path: Path) -> None:
    script = write_script(tmp_path, "sleep 60")
    spool = tmp_path / "spool"
    sched = LocalScheduler(spool, slots=SLOTS)
    job_id = sched.submit(array_job(tmp_path, script, [0]))
    ref = [JobRef("x", job_id, 0)]
    wait_for(sched, ref, lambda v: v.tasks[job_id][0].state is SchedState.RUNNING and task_doc(spool, job_id, 0).get("pid") is not None)
    doc = task_doc(spool, job_id, 0)
    assert proc_start_time(doc["pid"]) == doc["pid_start"]
    os.kill(doc["sup_pid"], signal.SIGKILL)  # the supervisor first, so nobody records the end
    os.killpg(doc["pid"], signal.SIGKILL)
    view = wait_for(sched, ref, lambda v: v.tasks[job_id][0].state is not SchedState.RUNNING, timeout=10)
    assert view.tasks[job_id][0].state is SchedState.NODE_FAIL
    assert view.tasks[job_id][0].reason == "process vanished without an exit code"


def test_cancel_running_and_pending(tmp_path: Path) -> None:
    script = write_script(tmp_path, "sleep 60")
    spool = tmp_path / "spool"
    sched = LocalScheduler(spool, slots=SLOTS)
    job_id = sched.submit(array_job(tmp_path, script, range(3), throttle=1))
    ref = [JobRef("x", job_id, 0)]
    view = wait_for(sched, ref, lambda v: v.tasks[job_id][0].state is SchedState.RUNNING and task_doc(spool, job_id, 0).get("pid") is not None)
    assert states(view, job_id) == {0: SchedState.RUNNING, 1: SchedState.PENDING, 2: SchedState.PENDING}
    pid = task_doc(spool, job_id, 0)["pid"]
    sched.cancel(job_id, [0, 1])
    view = wait_for(sched, ref, lambda v: v.tasks[job_id][0].state.finished, timeout=20)
    assert view.tasks[job_id][0].state is SchedState.CANCELLED
    assert view.tasks[job_id][1].state is SchedState.CANCELLED
    assert proc_start_time(pid) is None
    # the survivor of the throttle starts, then a whole-job cancel ends it
    wait_for(sched, ref, lambda v: v.tasks[job_id][2].state is SchedState.RUNNING)
    sched.cancel(job_id)
    view = wait_for(sched, ref, all_finished, timeout=20)
    assert set(states(view, job_id).values()) == {SchedState.CANCELLED}
    sched.cancel(job_id)  # idempotent
    sched.cancel("99999")  # unknown: nothing to do


def test_observe_finds_a_job_by_token_and_reports_unknown_ids(tmp_path: Path) -> None:
    script = write_script(tmp_path, "exit 0")
    sched = LocalScheduler(tmp_path / "spool", slots=SLOTS)
    sched.submit(array_job(tmp_path, script, [0], token="other"))
    job_id = sched.submit(array_job(tmp_path, script, [0, 1], token="tok-lost-answer"))
    view = sched.observe([JobRef("tok-lost-answer", None, 0), JobRef("never-submitted", None, 0), JobRef("t", "4242", 0)])
    assert view.found == {"tok-lost-answer": job_id}
    assert set(view.tasks[job_id]) == {0, 1}
    assert view.gone == {"4242"}


def test_tasks_outlive_the_submitting_process(tmp_path: Path) -> None:
    log = tmp_path / "times.log"
    script = write_script(tmp_path, TIMED.format(log=log, sleep=0.5))
    spool = tmp_path / "spool"
    code = f"""
import sys, time, uuid
from pathlib import Path
from reconciler.scheduler.base import ArrayJob
from reconciler.scheduler.local import LocalScheduler
s = Path({str(script)!r})
job = ArrayJob(uuid.uuid4().hex, "t.0000", s, s.read_text(), (0, 1, 2, 3), None, Path({str(tmp_path)!r}), {str(tmp_path / "o_%A_%a")!r}, {str(tmp_path / "e_%A_%a")!r})
print(LocalScheduler(Path({str(spool)!r}), {SLOTS}).submit(job), flush=True)
time.sleep(600)
"""
    caller = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert caller.stdout is not None
    job_id = caller.stdout.readline().strip()
    assert job_id.isdigit()
    os.killpg(caller.pid, signal.SIGKILL)  # the reconciler dies, with its whole process group
    caller.wait()
    sched = LocalScheduler(spool, slots=SLOTS)
    view = wait_for(sched, [JobRef("x", job_id, 0)], all_finished)
    assert set(states(view, job_id).values()) == {SchedState.COMPLETED}
    assert len(log.read_text().splitlines()) == 8


def test_a_killed_dispatcher_does_not_strand_pending_tasks(tmp_path: Path) -> None:
    script = write_script(tmp_path, "sleep 0.5")
    spool = tmp_path / "spool"
    sched = LocalScheduler(spool, slots=1)
    job_id = sched.submit(array_job(tmp_path, script, range(3)))
    ref = [JobRef("x", job_id, 0)]
    wait_for(sched, ref, lambda v: v.tasks[job_id][0].state is SchedState.RUNNING)
    dispatcher = int((spool / "dispatcher.lock").read_text())
    os.kill(dispatcher, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while sched.dispatcher_alive():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    view = wait_for(sched, ref, all_finished)  # observe() starts a new dispatcher
    assert set(states(view, job_id).values()) == {SchedState.COMPLETED}  # the supervisor recorded task 0


def test_time_limit_and_log_patterns() -> None:
    assert parse_time_limit("#!/bin/bash\n#SBATCH --time=01:02:03\n") == 3723
    assert parse_time_limit("#SBATCH --time=1-00:30:00\n") == 86400 + 1800
    assert parse_time_limit("#SBATCH --time=5\n") == 300
    assert parse_time_limit("#SBATCH --time=2-3\n") == 2 * 86400 + 3 * 3600
    assert parse_time_limit("echo no limit\n") is None
    assert expand_log_pattern("/l/b_%A_%a.out", "17", 3) == "/l/b_17_3.out"
    assert expand_log_pattern("%j-100%%", "17", 3) == "17-100%"


def test_script_time_limit_is_enforced(tmp_path: Path) -> None:
    script = tmp_path / "slow.sh"
    script.write_text("#!/bin/bash\n#SBATCH --time=0:1\nsleep 30\n")  # one second
    sched = LocalScheduler(tmp_path / "spool", slots=SLOTS)
    job_id = sched.submit(array_job(tmp_path, script, [0]))
    view = wait_for(sched, [JobRef("x", job_id, 0)], all_finished, timeout=20)
    assert view.tasks[job_id][0].state is SchedState.TIMEOUT


@pytest.fixture
def demo_batch(tmp_path: Path) -> tuple[LocalScheduler, Path, Callable[[list[int], int], tuple[str, str]]]:
    """Batch 1 of the shipped demo production, rendered exactly as the engine would."""
    loaded = load(WorkTree(ROOT), "demo")
    prod = loaded.spec
    expansion = loaded.expansion()
    renderer = Renderer(prod)
    pdir = tmp_path / "prod"
    batch = 1
    tasks = [t for t in expansion.tasks if t.index // expansion.batch_size == batch]  # as the planner batches
    first = batch * expansion.batch_size
    sched = LocalScheduler(tmp_path / "spool", slots=SLOTS)

    def submit(local: list[int], attempt: int) -> tuple[str, str]:
        token = uuid.uuid4().hex
        mtasks = {}
        for i in local:
            t = tasks[i]
            assert t.index == first + i
            argv = renderer.argv(t.params, t.index, t.key, SYMBOLIC_DIR, t.outputs)
            mtasks[i] = ManifestTask(t.key, t.index, argv, t.outputs, t.fingerprint, attempt)
        manifest = pdir / "metadata" / "manifests" / f"{token}.json"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(render_manifest(prod, batch=batch, token=token, production_dir=pdir, tasks=mtasks))
        script_text = render_script(prod, batch=batch, token=token, array_indices=local, manifest=manifest, production_dir=pdir)
        script = pdir / "metadata" / "scripts" / f"{token}.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(script_text)
        out, err = log_patterns(pdir, batch)
        job = ArrayJob(token, job_name(prod.production.name, batch, token), script, script_text, tuple(local), prod.execution.array_throttle, pdir, out, err)
        return token, sched.submit(job)

    submit.tasks = tasks  # type: ignore[attr-defined]
    submit.validator = prod.task.validator  # type: ignore[attr-defined]
    return sched, pdir, submit


def test_real_wrapper_end_to_end(demo_batch: tuple[LocalScheduler, Path, Callable[[list[int], int], tuple[str, str]]]) -> None:
    sched, pdir, submit = demo_batch
    tasks = submit.tasks[:5]  # type: ignore[attr-defined]
    validator = submit.validator  # type: ignore[attr-defined]
    token, job_id = submit(list(range(5)), 1)
    view = wait_for(sched, [JobRef(token, job_id, 0)], all_finished, timeout=120)
    # demo tasks r0004/z1.500 and r0005/z0.500 (local 2 and 4) fail once on purpose
    got = states(view, job_id)
    assert got == {0: SchedState.COMPLETED, 1: SchedState.COMPLETED, 2: SchedState.FAILED, 3: SchedState.COMPLETED, 4: SchedState.FAILED}, view
    assert view.tasks[job_id][2].exit_code == 1
    err2 = (pdir / "logs" / f"batch_0001_{job_id}_2.err").read_text()
    assert "demo: failing once on purpose for r0004 z1.500" in err2 and "command exited with 1" in err2
    err0 = (pdir / "logs" / f"batch_0001_{job_id}_0.err").read_text()
    assert f"task {tasks[0].key} attempt 1 on host" in err0
    obs = observe_outputs(pdir, tasks, validator)
    assert [obs[t.key] for t in tasks] == [OutputState.COMPLETE, OutputState.COMPLETE, OutputState.MISSING, OutputState.COMPLETE, OutputState.MISSING]
    marker = read_marker(pdir, tasks[0])
    assert marker is not None and marker["token"] == token and marker["attempt"] == 1

    token2, job2 = submit([2, 4], 2)  # the retry: a sparse array of the same batch
    view = wait_for(sched, [JobRef(token2, job2, 0)], all_finished, timeout=120)
    assert states(view, job2) == {2: SchedState.COMPLETED, 4: SchedState.COMPLETED}
    obs = observe_outputs(pdir, tasks, validator, deep=True)
    assert set(obs.values()) == {OutputState.COMPLETE}
    assert read_marker(pdir, tasks[4])["attempt"] == 2  # type: ignore[index]
