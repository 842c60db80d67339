"""The Slurm CLI backend against the real single-node test cluster.

Tasks sleep at most a second or two and are polled every 0.5 s; every observe() is checked
to make at most two read calls. The cluster runs MinJobAge=2, so a finished job leaves
squeue within seconds and is then only in sacct: several tests observe across that move.
TIMEOUT is not exercised here (the shortest --time is a minute); the parsers cover it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from reconciler.core.states import SchedState
from reconciler.errors import SubmitRejected, TransientError
from reconciler.scheduler.base import ArrayJob, JobRef, SchedulerView, TaskSched
from reconciler.scheduler.script import array_spec, render_script
from reconciler.scheduler.slurm_cli import SlurmCLI
from reconciler.spec.load import WorkTree, load

from .conftest import ROOT, SLURM_CLUSTER_SCRIPT

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

S = SchedState
POLL_S = 0.5
MAX_READS = 2


def token() -> str:
    return uuid.uuid4().hex[:16]


def make_job(
    tmp_path: Path,
    *,
    indices: Sequence[int],
    body: str,
    extra: Sequence[str] = (),
    tok: str | None = None,
    name: str = "backendtest.0000",
) -> ArrayJob:
    """A hand-written array script with our header conventions (name, comment, array)."""
    tok = tok or token()
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --comment=reconciler:{tok}",
        f"#SBATCH --array={array_spec(indices)}",
        f"#SBATCH --output={logs}/%A_%a.out",
        f"#SBATCH --error={logs}/%A_%a.err",
        "#SBATCH --time=00:02:00",
        *(f"#SBATCH {x}" for x in extra),
        body,
        "",
    ]
    script = "\n".join(lines)
    path = tmp_path / f"{tok}.sbatch"
    path.write_text(script)
    return ArrayJob(
        token=tok,
        name=name,
        script_path=path,
        script=script,
        array_indices=tuple(indices),
        throttle=None,
        workdir=tmp_path,
        log_out=f"{logs}/%A_%a.out",
        log_err=f"{logs}/%A_%a.err",
    )


def observe(backend: SlurmCLI, refs: Sequence[JobRef]) -> SchedulerView:
    before = len(backend.calls)
    view = backend.observe(refs)
    reads = backend.calls[before:]
    assert len(reads) <= MAX_READS, reads
    assert [argv[0] for argv in reads] in (["squeue"], ["squeue", "sacct"]), reads
    return view


def wait_finished(
    backend: SlurmCLI, ref: JobRef, indices: Sequence[int], timeout: float = 25.0
) -> Mapping[int, TaskSched]:
    """Observe until every index has finished; return the tasks."""
    assert ref.job_id is not None
    deadline = time.monotonic() + timeout
    tasks: Mapping[int, TaskSched] = {}
    while time.monotonic() < deadline:
        view = observe(backend, [ref])
        tasks = view.tasks.get(ref.job_id, {})
        if set(indices) <= set(tasks) and all(tasks[i].state.finished for i in indices):
            return tasks
        time.sleep(POLL_S)
    raise AssertionError(f"job {ref.job_id} not finished after {timeout} s: {tasks}")


def wait_out_of_squeue(job_id: str, timeout: float = 30.0) -> None:
    """Wait until slurmctld has purged the job (MinJobAge), so only sacct knows it."""
    probe = SlurmCLI()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = probe._call(
            ["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%i"],
            ok=lambda p: "invalid job id" in (p.stderr or "").lower(),
        )
        if not out.strip():
            return
        time.sleep(POLL_S)
    raise AssertionError(f"job {job_id} still in squeue after {timeout} s")


def summary(tasks: Mapping[int, TaskSched]) -> dict[int, tuple[SchedState, int | None]]:
    return {i: (t.state, t.exit_code) for i, t in sorted(tasks.items())}


# ---------------------------------------------------------------- tests


def test_rendered_script_runs_with_a_failing_task(tmp_path: Path) -> None:
    """A script rendered by script.render_script (header as the engine writes it) runs;
    the failing task is FAILED with its exit code, and the view does not change when the
    job moves from squeue to sacct."""
    prod = load(WorkTree(ROOT), "test_basic").spec
    tok = token()
    pdir = tmp_path / "prod"
    (pdir / "logs").mkdir(parents=True)
    text = render_script(
        prod, batch=7, token=tok, array_indices=[0, 1, 2], manifest=tmp_path / "m.json", production_dir=pdir
    )
    # keep every #SBATCH line; replace the wrapper call with a tiny task
    text = re.sub(r"^exec .*$", 'sleep 0.5; [ "$SLURM_ARRAY_TASK_ID" != 1 ] || exit 3', text, flags=re.M)
    path = tmp_path / "batch.sbatch"
    path.write_text(text)
    out_pat = str(pdir / "logs" / "batch_0007_%A_%a.out")
    job = ArrayJob(tok, "test_basic.0007", path, text, (0, 1, 2), None, tmp_path, out_pat, out_pat)

    backend = SlurmCLI()
    t0 = time.time()
    job_id = backend.submit(job)
    assert job_id.isdigit()
    assert backend.calls[-1][:3] == ["sbatch", "--parsable", f"--chdir={tmp_path}"]
    ref = JobRef(tok, job_id, t0, (0, 1, 2))
    tasks = wait_finished(backend, ref, [0, 1, 2])
    expected = {0: (S.COMPLETED, 0), 1: (S.FAILED, 3), 2: (S.COMPLETED, 0)}
    assert summary(tasks) == expected
    assert tasks[1].reason.startswith("exit 3")
    assert tasks[0].start is not None and tasks[0].end is not None

    wait_out_of_squeue(job_id)
    view = observe(backend, [ref])
    assert summary(view.tasks[job_id]) == expected  # now from sacct alone
    assert view.gone == set() and view.found == {}
    assert (pdir / "logs" / f"batch_0007_{job_id}_1.out").exists()


def test_cancel_some_indices(tmp_path: Path) -> None:
    job = make_job(tmp_path, indices=range(4), body='[ $((SLURM_ARRAY_TASK_ID % 2)) = 1 ] && sleep 60; sleep 0.2')
    backend = SlurmCLI()
    t0 = time.time()
    job_id = backend.submit(job)
    backend.cancel(job_id, [1, 3])
    assert backend.calls[-1] == ["scancel", f"{job_id}_[1,3]"]
    # a task cancelled while still pending leaves no record at all: it is reported once
    # the job has left squeue (see slurm_view.merge_view)
    tasks = wait_finished(backend, JobRef(job.token, job_id, t0, (0, 1, 2, 3)), range(4))
    assert {i: t.state for i, t in tasks.items()} == {
        0: S.COMPLETED,
        1: S.CANCELLED,
        2: S.COMPLETED,
        3: S.CANCELLED,
    }
    assert "CANCELLED" in tasks[1].reason


def test_cancel_whole_pending_array(tmp_path: Path) -> None:
    """A pending array is one folded record in squeue, and in sacct once cancelled."""
    job = make_job(tmp_path, indices=[0, 1, 2, 5], body="true", extra=["--begin=now+1hour"])
    backend = SlurmCLI()
    t0 = time.time()
    job_id = backend.submit(job)
    ref = JobRef(job.token, job_id, t0, (0, 1, 2, 5))
    view = observe(backend, [ref])
    assert {i: t.state for i, t in view.tasks[job_id].items()} == dict.fromkeys((0, 1, 2, 5), S.PENDING)
    assert [c[0] for c in backend.calls[-1:]] == ["squeue"]  # the queue answered for all: no sacct
    backend.cancel(job_id)
    assert backend.calls[-1] == ["scancel", job_id]
    tasks = wait_finished(backend, ref, [0, 1, 2, 5])
    assert {i: t.state for i, t in tasks.items()} == dict.fromkeys((0, 1, 2, 5), S.CANCELLED)
    wait_out_of_squeue(job_id)
    view = observe(backend, [ref])
    assert {i: t.state for i, t in view.tasks[job_id].items()} == dict.fromkeys((0, 1, 2, 5), S.CANCELLED)
    backend.cancel(job_id)  # cancelling a forgotten job is not an error


def test_token_lookup_without_job_id(tmp_path: Path) -> None:
    job = make_job(tmp_path, indices=[0, 1], body="sleep 0.2")
    backend = SlurmCLI()
    t0 = time.time()
    job_id = backend.submit(job)
    lost = JobRef(job.token, None, t0, (0, 1))
    other = JobRef(token(), None, t0, (0,))  # never submitted
    view = observe(backend, [lost, other])
    assert view.found == {job.token: job_id}
    assert set(view.tasks[job_id]) == {0, 1}
    wait_finished(backend, JobRef(job.token, job_id, t0, (0, 1)), [0, 1])
    wait_out_of_squeue(job_id)
    view = observe(backend, [lost, other])  # now only sacct, by comment, knows it
    assert view.found == {job.token: job_id}
    assert {i: t.state for i, t in view.tasks[job_id].items()} == {0: S.COMPLETED, 1: S.COMPLETED}
    assert backend.calls[-1][0] == "sacct" and not any(a.startswith("--jobs") for a in backend.calls[-1])


def test_sbatch_answer_lost_then_token_found(tmp_path: Path) -> None:
    """sbatch submits, then reports a socket timeout: no resubmission, the token finds it."""
    real = shutil.which("sbatch")
    assert real
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "sbatch"
    wrapper.write_text(
        "#!/bin/bash\n"
        f'{real} "$@" > /dev/null || exit $?\n'
        'echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2\n'
        "exit 1\n"
    )
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    job = make_job(tmp_path, indices=[0, 1, 2], body="sleep 0.2")
    backend = SlurmCLI(env=env)
    t0 = time.time()
    with pytest.raises(TransientError) as err:
        backend.submit(job)
    assert job.token in str(err.value) and "outcome unknown" in str(err.value)
    assert [c[0] for c in backend.calls] == ["sbatch"]  # not retried
    view = observe(backend, [JobRef(job.token, None, t0, (0, 1, 2))])
    job_id = view.found[job.token]
    assert set(view.tasks[job_id]) == {0, 1, 2}
    wait_finished(backend, JobRef(job.token, job_id, t0, (0, 1, 2)), [0, 1, 2])


def test_rejected_submission(tmp_path: Path) -> None:
    job = make_job(tmp_path, indices=[0], body="true", extra=["--partition=no_such_partition"])
    with pytest.raises(SubmitRejected) as err:
        SlurmCLI().submit(job)
    assert "Invalid partition" in str(err.value)
    assert err.value.exit_code == 2


def test_unknown_job_is_gone() -> None:
    backend = SlurmCLI()
    view = observe(backend, [JobRef(token(), "987654", time.time() - 60)])
    assert view.gone == {"987654"} and view.tasks == {}
    assert backend.observe([]) == SchedulerView()


def test_max_array_size() -> None:
    assert SlurmCLI().max_array_size() == 1001


def test_slurmctld_down_is_transient() -> None:
    pidfile = Path(os.environ.get("RECONCILER_SLURM_DIR", "/tmp/reconciler-slurm")) / "run" / "slurmctld.pid"
    if os.geteuid() != 0 or not pidfile.exists():
        pytest.skip("needs root and the test cluster's slurmctld pid file")
    pid = int(pidfile.read_text().strip())
    backend = SlurmCLI(retry_seconds=5)
    try:
        os.kill(pid, 15)
        for _ in range(100):  # wait for it to exit
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        t0 = time.monotonic()
        with pytest.raises(TransientError) as err:
            backend.observe([JobRef(token(), "1", time.time())])
        elapsed = time.monotonic() - t0
        assert elapsed < 15, elapsed
        assert "nothing was marked failed" in str(err.value)
        assert SlurmCLI(retry_seconds=1).max_array_size() is None
    finally:
        up = _up()
        assert up.returncode == 0, up.stderr
    assert SlurmCLI().max_array_size() == 1001


def _up() -> subprocess.CompletedProcess[str]:
    """Restart the daemons that are not alive (the others, and the jobs, are kept)."""
    return subprocess.run([str(SLURM_CLUSTER_SCRIPT), "up"], capture_output=True, text=True, timeout=300, check=False)

