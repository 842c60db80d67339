"""The reconcile loop end to end against the REAL single-node Slurm test cluster.

Like tests/test_loop_local.py: `python -m reconciler.cli once NAME --machine slurmtest` runs
as a subprocess in a scratch git repository, every ~1 s, until the summary it prints with
`--json` says done (`reconcile status --json` is then checked once). The scratch repository gets machine defaults `defaults/slurmtest.yaml`
(scheduler: slurm, partition debug, account reconciler) and one production per test, named
uniquely per run so that its job names (`<production>.<batch>.<token tag>`) single out its
jobs in squeue and sacct.

What Slurm actually ran is read back from sacct (`-X`: one record per array task; a task
Slurm requeued keeps its job id and shows once), what the engine sent from the sbatch
scripts it wrote to logs/. The cluster's node advertises 4x the machine's cores
(8 on a 2-core machine: see scripts/slurm-test-cluster), MinJobAge=2 and sched_interval=2. Every
test cancels its leftover jobs in a `finally` and waits until the queue holds none of them.
Tests that take the `slurm_without_comments` fixture (tests/conftest.py) run against the
cluster reconfigured as a site that does not store job comments in accounting.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import SLURM_CLUSTER_SCRIPT, git

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

MACHINE = "slurmtest"
POLL_S = 1.0
RUN_DIR = Path(os.environ.get("RECONCILER_SLURM_DIR", "/tmp/reconciler-slurm")) / "run"

DEFAULTS = """\
# Machine defaults for the single-node Slurm test cluster (scripts/slurm-test-cluster).
machine:
  name: slurmtest
  scheduler: slurm
  max_array_size: 1001
  max_queued_tasks: 10000

resources:
  account: reconciler
  partition: debug
  nodes_per_job: 1
  tasks_per_node: 1
  cpus_per_task: 1
  memory_gb: 0.1

execution:
  job_type: cpu_intensive
  batch_size: 100
  timeout_hours: 0.1
  retry_policy:
    max_retries: 3
    backoff_multiplier: 2.0
    initial_delay_minutes: 0.02
    max_delay_minutes: 1.0

outputs:
  base_path: work/productions
  structure: hierarchical
  compression: none

job_type_overrides:
  cpu_intensive:
    cpus_per_task: 1
"""


# ---------------------------------------------------------------- scratch repository


def unique(prefix: str) -> str:
    """A production name no earlier run used: its job names are ours alone in sacct."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def redshift_list(n: int) -> list[float]:
    return [round(0.1 * (i + 1), 1) for i in range(n)]


def production_yaml(
    name: str,
    base: Path,
    *,
    realizations: int,
    redshifts: Iterable[float],
    batch_size: int,
    sleep: float = 0,
    n_galaxies: int = 10,
    fail_once_every: int = 0,
    max_retries: int = 3,
    initial_delay_minutes: float = 0.02,
    array_throttle: int | None = None,
    light: bool = False,
) -> str:
    """``light``: the task writes its output with a bare ``python -c`` instead of the demo
    generator (which imports numpy and h5py, ~0.3 CPU-s a task: on 2 cores that, not Slurm,
    is what bounds a test of hundreds of tasks)."""
    fail = f" --fail-once-every {fail_once_every} --fail-once-dir {{production_dir}}/qa/f" if fail_once_every else ""
    throttle = f"\n  array_throttle: {array_throttle}" if array_throttle else ""
    if light:
        assert not (fail or sleep), "a light task neither fails nor sleeps"
        command = """{python} -c "import sys; open(sys.argv[1], 'w').write('mock')" {output}"""
    else:
        command = (
            "{python} -m reconciler.demo_generator --realization {realization} --redshift {redshift}"
            f" --n-galaxies {n_galaxies} --sleep {sleep}{fail} --output {{output}}"
        )
    return f"""\
production:
  name: {name}
  version: v1.0
  description: end-to-end test on the Slurm test cluster
science:
  redshifts: {json.dumps(list(redshifts))}
  realizations:
    start: 0
    count: {realizations}
execution:
  batch_size: {batch_size}
  timeout_hours: 0.1{throttle}
  retry_policy:
    max_retries: {max_retries}
    backoff_multiplier: 2.0
    initial_delay_minutes: {initial_delay_minutes}
    max_delay_minutes: 0.5
outputs:
  base_path: {base}
task:
  command: >-
    {command}
  outputs:
    - catalogs/r{{realization:04d}}/mock_z{{redshift:.3f}}.hdf5
  validator:
    kind: exists
"""


@dataclass
class Prod:
    """One production in a scratch repository, and how to drive `reconcile` on it."""

    repo: Path
    name: str
    env: dict[str, str]
    started: float  # epoch seconds before anything was submitted (sacct --starttime)

    @property
    def directory(self) -> Path:
        return self.repo.parent / "out" / self.name

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler.cli", *args],
            cwd=self.repo, env=env or self.env, capture_output=True, text=True, timeout=timeout,
        )

    def once(self, env: dict[str, str] | None = None, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("once", self.name, "--machine", MACHINE, *extra, env=env)

    def status(self) -> dict:
        r = self.run("status", self.name, "--machine", MACHINE, "--json")
        assert r.returncode == 0, f"status exited {r.returncode}: {r.stderr}"
        return json.loads(r.stdout)

    def converge(
        self, timeout: float = 300, during: Callable[[int], None] | None = None, interval: float = POLL_S
    ) -> list[Pass]:
        """`reconcile once --json` every ``interval`` s until its summary says done; every pass must exit 0.

        The pass's own summary (observed after it applied) says when the production is done,
        so no separate `reconcile status` process competes with the tasks for the machine's cores.
        """
        passes: list[Pass] = []
        end = time.monotonic() + timeout
        while True:
            r = self.once(None, "--json")
            assert r.returncode == 0, f"pass {len(passes) + 1} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
            doc = json.loads(r.stdout)[0]
            passes.append(Pass(doc["applied"], doc["summary"], r.stderr))
            if during is not None:
                during(len(passes))
            if doc["summary"]["done"]:
                return passes
            assert time.monotonic() < end, (
                f"not done after {timeout} s ({len(passes)} passes): {doc['summary']['counts']}\nlast pass: {r.stderr}"
            )
            time.sleep(interval)


@dataclass(frozen=True)
class Pass:
    applied: dict[str, int]  # action kind -> tasks, as `once --json` reports it
    summary: dict
    stderr: str


def env_for(tmp: Path, slurm_conf: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(
        SLURM_CONF=slurm_conf,
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org",
    )
    env.update(extra)
    return env


@pytest.fixture
def make_prod(repo: Path, tmp_path: Path, slurm_cluster: dict[str, str]) -> Iterable[Callable[..., Prod]]:
    """Commit defaults/slurmtest.yaml and a production; cancel its jobs when the test ends."""
    made: list[Prod] = []

    def make(prefix: str, **kw: object) -> Prod:
        name = unique(prefix)
        (repo / "defaults" / f"{MACHINE}.yaml").write_text(DEFAULTS)
        (repo / "productions" / f"{name}.yaml").write_text(production_yaml(name, tmp_path / "out", **kw))  # type: ignore[arg-type]
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", f"production {name}")
        p = Prod(repo, name, env_for(tmp_path, slurm_cluster["SLURM_CONF"]), time.time() - 5)
        made.append(p)
        return p

    yield make
    for p in made:
        cancel_all(p.name)


# ---------------------------------------------------------------- what Slurm saw


def slurm(*argv: str, check: bool = True) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr}")
    return r.stdout


def ours(name: str, job_name: str) -> bool:
    return job_name.startswith(f"{name}.")


def queued(name: str) -> list[tuple[str, str, str, str]]:
    """(job id as squeue prints it, array job id, job name, state) of our jobs still in squeue."""
    out = slurm("squeue", "-h", "-r", "-o", "%i|%F|%j|%T")
    rows = [tuple(line.split("|", 3)) for line in out.splitlines() if line.count("|") == 3]
    return [r for r in rows if ours(name, r[2])]  # type: ignore[misc]


def cancel_all(name: str, timeout: float = 60) -> None:
    """scancel every job of this production and wait until squeue shows none of them."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rows = queued(name)
        if not rows:
            return
        slurm("scancel", *sorted({r[1] for r in rows}), check=False)
        time.sleep(1)
    raise AssertionError(f"jobs of {name} still queued after {timeout} s: {queued(name)}")


@dataclass(frozen=True)
class Rec:
    job: str  # the array's job id (what sbatch returned)
    index: int
    batch: int
    comment: str
    state: str


def accounted(p: Prod) -> list[Rec]:
    """sacct's array-task records of this production (-X: requeues show once, by job id)."""
    out = slurm(
        "sacct", "-X", "-P", "-n", f"--starttime={time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(p.started))}",
        "--endtime=now", "--format=JobID,JobName,Comment,State",
    )
    recs = []
    for line in out.splitlines():
        parts = line.split("|", 3)
        if len(parts) != 4 or not ours(p.name, parts[1]):
            continue
        job_id, job_name, comment, state = parts
        batch = int(job_name.rsplit(".", 2)[1])  # <production>.<batch>.<token tag>
        m = re.fullmatch(r"(\d+)_(\d+)", job_id)
        if m:
            recs.append(Rec(m[1], int(m[2]), batch, comment, state))
        elif "_[" in job_id:  # a folded pending range: expand it
            from reconciler.scheduler.slurm_parse import expand_array

            base = job_id.split("_", 1)[0]
            recs.extend(Rec(base, i, batch, comment, state) for i in expand_array(job_id))
        else:
            recs.append(Rec(job_id, -1, batch, comment, state))  # a plain (stale) record of an array
    return recs


def settled_accounting(p: Prod, expected: Counter[tuple[int, int]], timeout: float = 30) -> list[Rec]:
    """sacct once it shows the expected runs per (batch, index), all ended, or after ``timeout``.

    slurmdbd lags slurmctld (more so right after slurmctld restarted), so a task's second run
    may reach sacct seconds after the pass saw it complete. Callers assert on what is returned:
    too many runs still fails, only later.
    """
    end = time.monotonic() + timeout
    while True:
        recs = [r for r in accounted(p) if r.index >= 0]
        if per_task(recs) == expected and all(r.state not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING") for r in recs):
            return recs
        if time.monotonic() > end:
            return recs
        time.sleep(1)


def per_task(recs: Iterable[Rec]) -> Counter[tuple[int, int]]:
    """How many distinct submissions ran each (batch, array index)."""
    return Counter((r.batch, r.index) for r in {(r.job, r.index): r for r in recs}.values())


@dataclass(frozen=True)
class Script:
    path: Path
    batch: int
    token: str
    indices: tuple[int, ...]


def scripts(p: Prod) -> list[Script]:
    """The sbatch scripts the engine wrote to logs/, oldest first, with their --array indices."""
    from reconciler.scheduler.script import parse_array_spec

    out = []
    for path in sorted((p.directory / "logs").glob("batch_*.sh"), key=lambda x: (x.stat().st_mtime, x.name)):
        text = path.read_text()
        array = re.search(r"^#SBATCH --array=(\S+)$", text, re.M)
        comment = re.search(r"^#SBATCH --comment=reconciler:(\S+)$", text, re.M)
        batch = re.search(r"^#SBATCH --job-name=\S+\.(\d{4})\.[0-9a-f]{8}$", text, re.M)
        assert array and comment and batch, path
        out.append(Script(path, int(batch[1]), comment[1], tuple(parse_array_spec(array[1])[0])))
    return out


def keys_by_position(p: Prod, batch_size: int) -> dict[tuple[int, int], str]:
    """(batch, batch-local index) -> task key, from the committed production (clean working tree)."""
    from reconciler.spec.load import WorkTree, load

    loaded = load(WorkTree(p.repo), p.name, MACHINE, repo_root=p.repo)
    return {(t.index // batch_size, t.index % batch_size): t.key for t in loaded.expansion().tasks}


def fails_once_keys(realizations: int, redshifts: Iterable[float], every: int) -> set[str]:
    from reconciler.demo_generator import fails_once

    return {f"r{r:04d}/z{z:.3f}" for r in range(realizations) for z in redshifts if fails_once(r, z, every)}


def wait_running(name: str, n: int, timeout: float = 180) -> list[str]:
    """Until at least n array tasks of ours run; their `JOB_IDX` ids."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        running = [r[0] for r in queued(name) if r[3] == "RUNNING" and re.fullmatch(r"\d+_\d+", r[0])]
        if len(running) >= n:
            return running
        time.sleep(0.3)
    raise AssertionError(f"fewer than {n} tasks of {name} running after {timeout} s: {queued(name)}")


def assert_all_outputs(p: Prod, st: dict) -> None:
    assert st["done"] and st["counts"]["complete"] == st["total"], st["counts"]
    assert not st["failures"], st["failures"]
    cats = list((p.directory / "catalogs").glob("r*/mock_z*.hdf5"))
    assert len(cats) == st["total"]


# ---------------------------------------------------------------- 1. a real production


def test_production_of_200_tasks_in_3_arrays_converges_each_task_submitted_once(make_prod: Callable[..., Prod]) -> None:
    # The slowest test (~70 s on 2 cores): light tasks, 8 at a time on the oversubscribed
    # test node; what bounds it is the CPU that Slurm's launch of each task and the
    # passes themselves cost, not the tasks.
    zs = redshift_list(20)
    p = make_prod("big", realizations=10, redshifts=zs, batch_size=80, light=True)
    t0 = time.monotonic()
    passes = p.converge(timeout=420, interval=2)
    st = p.status()
    assert st["total"] == 200
    assert_all_outputs(p, st)
    # the first pass submitted three arrays (80 + 80 + 40), and no pass submitted anything else
    sent = scripts(p)
    assert [(s.batch, len(s.indices)) for s in sent] == [(0, 80), (1, 80), (2, 40)]
    assert passes[0].applied == {"submit": 200}
    assert all(not x.applied for x in passes[1:]), [x.applied for x in passes]
    # what Slurm ran: three arrays, each (batch, index) exactly once, all COMPLETED
    expected = Counter({(b, i): 1 for b, n in ((0, 80), (1, 80), (2, 40)) for i in range(n)})
    recs = settled_accounting(p, expected)
    assert per_task(recs) == expected
    assert {r.state for r in recs} == {"COMPLETED"}
    assert len({r.job for r in recs}) == 3
    assert {r.comment for r in recs} == {f"reconciler:{s.token}" for s in sent}
    print(f"200 tasks converged in {time.monotonic() - t0:.0f} s over {len(passes)} passes")
    # a pass over the finished production does nothing
    plan = p.run("plan", p.name, "--machine", MACHINE)
    assert plan.returncode == 0 and "nothing to do" in plan.stdout, plan.stdout + plan.stderr


# ---------------------------------------------------------------- 2. failures retried as sparse arrays


def test_failed_tasks_are_resubmitted_as_sparse_arrays_of_their_batch(make_prod: Callable[..., Prod]) -> None:
    zs = [0.5, 1.0, 1.5, 2.0]
    every = 3
    p = make_prod("fail", realizations=3, redshifts=zs, batch_size=6, fail_once_every=every)
    failing = fails_once_keys(3, zs, every)
    assert 2 <= len(failing) < 12
    passes = p.converge(timeout=300)
    st = p.status()
    assert_all_outputs(p, st)
    assert {r["key"] for r in st["retried"]} == failing
    assert all("exit 1" in r["last_reason"] for r in st["retried"]), st["retried"]
    keys = keys_by_position(p, 6)
    pos_of = {k: pos for pos, k in keys.items()}
    assert {pos_of[k][0] for k in failing} == {0, 1}  # both batches have a task that fails once
    sent = scripts(p)
    first = [s for s in sent if s.indices == tuple(range(6))]
    assert sorted(s.batch for s in first) == [0, 1]
    retries = [s for s in sent if s not in first]
    # every retry is a sparse array of one batch, holding exactly its failed tasks
    retried_pos = Counter((s.batch, i) for s in retries for i in s.indices)
    assert retried_pos == Counter({pos_of[k]: 1 for k in failing}), retries
    for s in retries:
        assert all(keys[(s.batch, i)] in failing for i in s.indices)
    assert sum(x.applied.get("resubmit", 0) for x in passes) == len(failing), [x.applied for x in passes]
    # Slurm agrees: failed tasks ran twice (FAILED then COMPLETED), the others once
    expected = Counter({pos: 2 if keys[pos] in failing else 1 for pos in keys})
    recs = settled_accounting(p, expected)
    assert per_task(recs) == expected
    for pos in (pos_of[k] for k in failing):
        assert sorted(r.state for r in recs if (r.batch, r.index) == pos) == ["COMPLETED", "FAILED"]


# ---------------------------------------------------------------- 3. scancel of running tasks


def test_scancelled_running_tasks_are_resubmitted_and_only_they(make_prod: Callable[..., Prod]) -> None:
    p = make_prod("cancel", realizations=1, redshifts=[0.5, 1.0, 1.5, 2.0], batch_size=4, sleep=5)
    first = p.once()
    assert first.returncode == 0, first.stderr
    running = wait_running(p.name, 2)[:2]
    slurm("scancel", *running)
    cancelled = {int(j.split("_")[1]) for j in running}
    p.converge(timeout=300)
    st = p.status()
    assert_all_outputs(p, st)
    keys = keys_by_position(p, 4)
    assert {r["key"] for r in st["retried"]} == {keys[(0, i)] for i in cancelled}
    assert all("CANCELLED" in r["last_reason"] for r in st["retried"]), st["retried"]
    sent = scripts(p)
    assert [s.indices for s in sent] == [(0, 1, 2, 3), tuple(sorted(cancelled))]
    expected = Counter({pos: 2 if pos[1] in cancelled else 1 for pos in keys})
    recs = settled_accounting(p, expected)
    assert per_task(recs) == expected


# ---------------------------------------------------------------- 4. node down mid-run


def test_node_set_down_mid_run_converges_without_duplicates(make_prod: Callable[..., Prod]) -> None:
    node = slurm("hostname", "-s").strip()
    p = make_prod("down", realizations=2, redshifts=[0.5, 1.0], batch_size=4, sleep=3)
    first = p.once()
    assert first.returncode == 0, first.stderr
    wait_running(p.name, 2)
    down_at = time.monotonic()
    slurm("scontrol", "update", f"nodename={node}", "state=down", "reason=reconciler-test")
    try:
        resumed = False
        requeued: set[str] = set()

        def during(n: int) -> None:
            nonlocal resumed
            if not resumed and time.monotonic() - down_at > 4:
                resume(node)
                resumed = True
            if resumed:
                requeued.update(release_requeued(p.name))

        time.sleep(1)
        p.converge(timeout=300, during=during)
    finally:
        resume(node)
        wait_node_idle(node)
    st = p.status()
    assert_all_outputs(p, st)
    keys = keys_by_position(p, 4)
    sent = scripts(p)
    resent = Counter((s.batch, i) for s in sent[1:] for i in s.indices)
    recs = settled_accounting(p, Counter({pos: 1 + resent[pos] for pos in keys}))
    # the node going down did hit running tasks: Slurm requeued them (same job id and index,
    # held until BeginTime), or ended them NODE_FAIL (then the engine resubmits them)
    assert requeued or any(r.state.startswith("NODE_FAIL") for r in recs), recs
    # no task completed twice, and a task was submitted again only after its earlier run
    # ended in a failure (NODE_FAIL/CANCELLED), never while Slurm had requeued it
    completed = Counter((r.batch, r.index) for r in recs if r.state == "COMPLETED")
    assert completed == Counter({pos: 1 for pos in keys}), recs
    for pos, n in per_task(recs).items():
        assert n == 1 + resent[pos], (pos, recs, sent)
    if resent:
        assert {r["key"] for r in st["retried"]} == {keys[pos] for pos in resent}


def release_requeued(name: str) -> set[str]:
    """Slurm holds a requeued task until now + CredExpire (120 s): let it start now instead.

    Returns the `JOB_IDX` ids released (requeued tasks; `scontrol update begintime=` is not
    accepted by 22.05, `StartTime=` is)."""
    out = slurm("squeue", "-h", "-r", "-t", "PD", "-o", "%i|%j|%r", check=False)
    released = set()
    for line in out.splitlines():
        job, _, rest = line.partition("|")
        job_name, _, reason = rest.partition("|")
        if ours(name, job_name) and reason.strip() == "BeginTime":
            slurm("scontrol", "update", f"jobid={job}", "StartTime=now", check=False)
            released.add(job)
    return released


def resume(node: str) -> None:
    """state=resume; with ReturnToService=2 slurmd's next registration may have done it already."""
    r = subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 or "invalid node state" in r.stderr.lower(), r.stderr


def wait_node_idle(node: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = slurm("sinfo", "-h", "-n", node, "-o", "%T", check=False).strip()
        if state in ("idle", "mixed", "allocated"):
            return
        time.sleep(0.5)
    raise AssertionError(f"node {node} is {state!r} after {timeout} s")


# ---------------------------------------------------------------- 5. sbatch that reports a timeout after submitting


def lying_sbatch(tmp_path: Path) -> Path:
    """A directory whose sbatch submits for real, then reports a socket timeout: the answer is lost."""
    real = shutil.which("sbatch")
    assert real
    wrap = tmp_path / "wrap"
    wrap.mkdir()
    sb = wrap / "sbatch"
    sb.write_text(
        "#!/bin/sh\n"
        f"{real} \"$@\"\n"
        "echo 'sbatch: error: Batch job submission failed: Socket timed out on send/recv operation' >&2\n"
        "exit 1\n"
    )
    sb.chmod(0o755)
    return wrap


def test_sbatch_timeout_after_submitting_is_recovered_not_resubmitted(make_prod: Callable[..., Prod], tmp_path: Path) -> None:
    p = make_prod("tmo", realizations=2, redshifts=[0.5, 1.0, 1.5], batch_size=3)
    lying = {**p.env, "PATH": f"{lying_sbatch(tmp_path)}{os.pathsep}{p.env['PATH']}"}
    r = p.once(env=lying)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "outcome unknown" in r.stderr and "socket timed out" in r.stderr.lower(), r.stderr
    # the pass stopped at its first sbatch: one job exists, batch 0
    assert len({row[1] for row in queued(p.name)} | {x.job for x in accounted(p)}) == 1
    passes = p.converge(timeout=300)
    assert "recovered submission" in passes[0].stderr, passes[0].stderr
    st = p.status()
    assert_all_outputs(p, st)
    keys = keys_by_position(p, 3)
    expected = Counter({pos: 1 for pos in keys})
    recs = settled_accounting(p, expected)
    assert per_task(recs) == expected
    jobs_per_batch = {b: {r.job for r in recs if r.batch == b} for b in (0, 1)}
    assert all(len(j) == 1 for j in jobs_per_batch.values()), jobs_per_batch
    assert [s.batch for s in scripts(p)] == [0, 1]


def test_lost_answer_of_a_job_gone_from_squeue_is_found_by_name_where_comments_are_not_stored(
    make_prod: Callable[..., Prod], tmp_path: Path, slurm_without_comments: None
) -> None:
    """A site without AccountingStoreFlags=job_comment: sbatch's answer is lost, the job runs,
    ends and leaves squeue (MinJobAge=2); sacct has it with no comment. The next pass finds it
    by its job name, which carries the token's tag, and adopts it: nothing runs twice."""
    p = make_prod("nocom", realizations=1, redshifts=[0.5, 1.0], batch_size=2, light=True)
    lying = {**p.env, "PATH": f"{lying_sbatch(tmp_path)}{os.pathsep}{p.env['PATH']}"}
    r = p.once(env=lying)
    assert r.returncode == 4 and "outcome unknown" in r.stderr, r.stdout + r.stderr
    (sent,) = scripts(p)
    end = time.monotonic() + 60
    while True:  # until the job ended, slurmctld purged it (squeue --states=all, as the backend reads), and slurmdbd has it
        recs = [x for x in accounted(p) if x.index >= 0]
        in_ctld = [n for n in slurm("squeue", "-h", "--states=all", "-o", "%j").split() if ours(p.name, n)]
        if not in_ctld and len(recs) == 2 and all(x.state == "COMPLETED" for x in recs):
            break
        assert time.monotonic() < end, (queued(p.name), recs)
        time.sleep(0.5)
    assert {x.comment for x in recs} == {""}, recs  # the site really keeps no comment
    found = p.once(None, "--json")  # the very next pass finds it, or the test fails here, at once
    assert found.returncode == 0, found.stdout + found.stderr
    assert f"recovered submission {sent.token} as job {recs[0].job}" in found.stderr, found.stderr
    passes = [Pass(json.loads(found.stdout)[0]["applied"], json.loads(found.stdout)[0]["summary"], found.stderr)]
    if not passes[0].summary["done"]:
        passes += p.converge(timeout=120)
    assert not any("submit" in x.applied or "resubmit" in x.applied for x in passes), [x.applied for x in passes]
    st = p.status()
    assert_all_outputs(p, st)
    assert not st["retried"], st["retried"]
    assert [(s.token, s.indices) for s in scripts(p)] == [(sent.token, (0, 1))]  # nothing submitted again
    assert per_task(accounted(p)) == Counter({(0, 0): 1, (0, 1): 1})


# ---------------------------------------------------------------- 6. slurmctld down during a pass


def slurmctld_pid() -> int:
    return int((RUN_DIR / "slurmctld.pid").read_text().strip())


def stop_slurmctld(timeout: float = 30) -> None:
    pid = slurmctld_pid()
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return
        time.sleep(0.2)
    raise AssertionError(f"slurmctld (pid {pid}) still alive {timeout} s after SIGTERM")


def cluster_up() -> None:
    r = subprocess.run([str(SLURM_CLUSTER_SCRIPT), "up"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_slurmctld_down_stops_the_pass_with_exit_4_and_marks_nothing_failed(make_prod: Callable[..., Prod]) -> None:
    p = make_prod("ctld", realizations=2, redshifts=[0.5, 1.0], batch_size=2, sleep=2)
    short = {**p.env, "RECONCILER_SLURM_RETRY_SECONDS": "3"}
    first = p.once(env=short)
    assert first.returncode == 0, first.stderr
    stop_slurmctld()
    try:
        t = time.monotonic()
        r = p.once(env=short)
        took = time.monotonic() - t
        assert r.returncode == 4, r.stdout + r.stderr
        assert "did not answer" in r.stderr and "nothing was marked failed" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        assert took < 30, f"the pass took {took:.0f} s with RECONCILER_SLURM_RETRY_SECONDS=3"
    finally:
        cluster_up()
    st = p.status()
    assert not st["failures"] and st["counts"]["failed"] == 0, st
    p.converge(timeout=300)
    st = p.status()
    assert_all_outputs(p, st)
    assert not st["retried"], st["retried"]
    keys = keys_by_position(p, 2)
    expected = Counter({pos: 1 for pos in keys})
    recs = settled_accounting(p, expected)
    assert per_task(recs) == expected
    assert len(scripts(p)) == 2


def test_sbatch_refused_by_a_dead_slurmctld_is_planned_again_at_once(make_prod: Callable[..., Prod]) -> None:
    p = make_prod("ctldsub", realizations=1, redshifts=[0.5, 1.0], batch_size=2)
    short = {**p.env, "RECONCILER_SLURM_RETRY_SECONDS": "3"}
    stop_slurmctld()
    try:
        r = p.once(env=short)
        assert r.returncode == 4, r.stdout + r.stderr
        assert "connect failure" in r.stderr, r.stderr
    finally:
        cluster_up()
    assert not queued(p.name) and not accounted(p)  # sbatch never reached slurmctld: no job
    # so the next pass submits again at once, without waiting out SlurmCLI.lookup_grace_s (300 s)
    passes = p.converge(timeout=300)
    assert passes[0].applied == {"submit": 2}, [x.applied for x in passes]
    expected = Counter({(0, 0): 1, (0, 1): 1})
    assert per_task(settled_accounting(p, expected)) == expected
    assert len(scripts(p)) == 2  # the abandoned submission's script, and the one sent


# ---------------------------------------------------------------- 7. Slurm calls per pass


TOOLS = ("squeue", "sacct", "scontrol", "sbatch", "scancel")
READS = ("squeue", "sacct", "scontrol")


def counting_path(tmp_path: Path, log: Path) -> Path:
    """A directory of wrappers that log their argv (one line per call) and exec the real tool."""
    d = tmp_path / "count"
    d.mkdir()
    for tool in TOOLS:
        real = shutil.which(tool)
        assert real, tool
        w = d / tool
        w.write_text(f"#!/bin/sh\necho \"{tool} $*\" >> '{log}'\nexec {real} \"$@\"\n")
        w.chmod(0o755)
    return d


def calls_of(log: Path, since: int) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [ln.split(" ", 1)[0] for ln in lines[since:]]


def test_a_pass_over_2000_tasks_makes_at_most_two_slurm_reads(make_prod: Callable[..., Prod], tmp_path: Path) -> None:
    p = make_prod("calls", realizations=100, redshifts=redshift_list(20), batch_size=1000, light=True)
    log = tmp_path / "calls.log"
    counted = {**p.env, "PATH": f"{counting_path(tmp_path, log)}{os.pathsep}{p.env['PATH']}"}
    r = p.once(env=counted)
    assert r.returncode == 0, r.stderr
    assert "submit 2000" in r.stdout, r.stdout
    first = Counter(calls_of(log, 0))
    # The first pass also probes the site (cached in the ledger for a day): `scontrol show
    # config` (MaxArraySize), `show partition` and `show node` (what a retry may ask at most);
    # it sends two sbatch, and observes once after applying: reads <= 5 here.
    assert first["sbatch"] == 2, first
    assert first["scontrol"] <= 3 and sum(first[t] for t in READS) <= 5, first
    print(f"pass 1: {dict(first)}")
    # Later passes: no scontrol (cached), no sbatch, and at most squeue + sacct.
    for n in range(3):
        before = len(log.read_text().splitlines())
        time.sleep(2.5 if n else 0)  # let some tasks end and leave squeue (MinJobAge=2), so sacct is needed
        r = p.once(env=counted)
        assert r.returncode == 0, r.stderr
        c = Counter(calls_of(log, before))
        assert sum(c[t] for t in READS) <= 2 and c["scontrol"] == 0, (n, c)
        assert c["sbatch"] == 0 and c["scancel"] == 0, (n, c)
        print(f"pass {n + 2}: {dict(c)}")
    assert len(scripts(p)) == 2


# ---------------------------------------------------------------- 8. reconcile doctor on the test cluster


def doctor_checks(p: Prod) -> tuple[int, dict[str, dict[str, str]]]:
    """`doctor --json` over the scratch repository, without alpha: its gpu_intensive job type
    does not exist on the test cluster's defaults (the doctor rightly WARNs that it does not load)."""
    if (p.repo / "productions" / "alpha.yaml").exists():
        git(p.repo, "rm", "-q", "productions/alpha.yaml")
        git(p.repo, "commit", "-qm", "no GPU productions on the test cluster")
    r = p.run("doctor", "--machine", MACHINE, "--json", timeout=120)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return r.returncode, {c["check"]: c for c in json.loads(r.stdout)["checks"]}


def test_doctor_is_all_ok_on_the_test_cluster(make_prod: Callable[..., Prod]) -> None:
    p = make_prod("doc", realizations=1, redshifts=[0.5], batch_size=1, light=True)
    code, checks = doctor_checks(p)
    assert code == 0 and {c["level"] for c in checks.values()} == {"OK"}, checks
    for name in ("slurm.tools", "slurm.sacct", "slurm.comments", "slurm.max_array_size", "slurm.job_limits", f"slurm.partition:{p.name}"):
        assert name in checks, sorted(checks)
    assert any(n.endswith(":flock") for n in checks) and "results.remote" in checks


def test_doctor_warns_with_the_fix_where_comments_are_not_stored(
    make_prod: Callable[..., Prod], slurm_without_comments: None
) -> None:
    p = make_prod("docnc", realizations=1, redshifts=[0.5], batch_size=1, light=True)
    code, checks = doctor_checks(p)
    assert code == 0, checks  # a WARN is no failure
    c = checks["slurm.comments"]
    assert c["level"] == "WARN" and "not stored" in c["message"], c
    assert c["fix"] == "ask admins for AccountingStoreFlags=job_comment; tokens are matched by job name meanwhile"
    assert [n for n, x in checks.items() if x["level"] != "OK"] == ["slurm.comments"], checks
    text = p.run("doctor", "--machine", MACHINE)
    assert "WARN  slurm.comments" in text.stdout and "fix: ask admins for AccountingStoreFlags=job_comment" in text.stdout
