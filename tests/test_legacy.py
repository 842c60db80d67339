"""The old production manager's database (#13 item 4): refused until imported, then brought over.

The old tool's database is written here with its own CREATE TABLE statements
(covariance-mocks' production_manager.py, JobDatabase._init_database), so what is read is
what it wrote. Pure tests first (the mapping, the planner on the old tool's attempts), then
`reconcile` end to end on the local backend, as a subprocess in a scratch repository.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from reconciler import legacy
from reconciler.core.legacy import HISTORY_TOKEN, LegacyBatch, LegacyJob, LegacyStatus, plan_import
from reconciler.core.model import (
    AttemptObs,
    Desired,
    Limits,
    Policy,
    SubmissionObs,
    TaskHistory,
    TaskObs,
    World,
)
from reconciler.core.plan import ActionKind
from reconciler.core.planner import plan
from reconciler.core.reasons import Reason
from reconciler.core.states import OutputState, SchedState, SubmissionKind, SubmissionState
from reconciler.errors import UsageError

from .test_adopt import commit_production, make_catalog, production_yaml
from .test_loop_local import env_for, reconcile, sent_to_scheduler

OLD_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        realization INTEGER NOT NULL,
        redshift REAL NOT NULL,
        output_path TEXT NOT NULL,
        status TEXT NOT NULL,
        submit_count INTEGER DEFAULT 0,
        slurm_job_id INTEGER,
        created_at TEXT NOT NULL,
        started_at TEXT,
        completed_at TEXT,
        error_message TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS batches (
        batch_id TEXT PRIMARY KEY,
        job_ids TEXT NOT NULL,
        slurm_array_id INTEGER,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        submitted_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS idx_jobs_status ON jobs(status)",
    "CREATE INDEX IF NOT EXISTS idx_jobs_realization ON jobs(realization)",
)
NOW_ISO = "2025-01-01T00:00:00"


def write_old_db(path: Path, pdir: Path, jobs: Sequence[tuple[int, float, str, int, int | None]], batches: Sequence[tuple[str, list[str], int | None, str]]) -> None:
    """The old tool's database: jobs (realization, redshift, status, submit_count, slurm id), batches (id, job ids, array id, status)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        for statement in OLD_SCHEMA:
            db.execute(statement)
        for r, z, status, count, slurm in jobs:
            job_id = f"r{r:04d}_z{z:.3f}"
            out = pdir / "catalogs" / f"r{r:04d}" / f"mock_z{z:.3f}.hdf5"
            db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, r, z, str(out), status, count, slurm, NOW_ISO, None, NOW_ISO if status.lower() in ("completed", "failed") else None,
                 "exit 1" if status.lower() == "failed" else None),
            )
        for batch_id, ids, array_id, status in batches:
            db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)", (batch_id, json.dumps(ids), array_id, status, NOW_ISO, NOW_ISO if array_id else None))
    db.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the mapping, pure

KEYS = {(r, f"{z:.3f}"): [f"r{r:04d}/z{z:.3f}"] for r in (0, 1) for z in (0.5, 1.0)}


def job(r: int, z: float, status: LegacyStatus, count: int = 1, slurm: str | None = None) -> LegacyJob:
    return LegacyJob(f"r{r:04d}_z{z:.3f}", r, z, status, count, slurm)


def test_each_status_becomes_what_the_rules_say() -> None:
    jobs = [
        job(0, 0.5, LegacyStatus.COMPLETED),
        job(0, 1.0, LegacyStatus.COMPLETED, 2),
        job(1, 0.5, LegacyStatus.RUNNING, 2, "77"),
        job(1, 1.0, LegacyStatus.QUEUED, 1, "77"),
        job(7, 0.5, LegacyStatus.FAILED, 4),
    ]
    batches = [LegacyBatch("batch_0003_1700000000", ("r0001_z1.000", "r0001_z0.500"), "77")]
    got = plan_import(jobs, batches, KEYS, {"r0000/z0.500": OutputState.UNMARKED, "r0000/z1.000": OutputState.INVALID})
    assert got.adopted == ("r0000/z0.500",)
    assert got.replanned == ("r0000/z1.000",)
    assert got.unmatched == (("r0007_z0.500", "no task of the production has this realization and redshift"),)
    watched = [s for s in got.submissions if s.open]
    assert len(watched) == 1 and watched[0].job_id == "77" and watched[0].kind is SubmissionKind.LEGACY and watched[0].batch == 3
    # the array index is the job's position in its batch's job_ids; the attempt is its submit_count
    assert [(a.key, a.array_index, a.attempt, a.failures_before, a.state) for a in watched[0].attempts] == [
        ("r0001/z1.000", 0, 1, 0, None), ("r0001/z0.500", 1, 2, 1, None),
    ]
    ended = next(s for s in got.submissions if not s.open)
    assert ended.token == HISTORY_TOKEN
    # completed with invalid outputs: an attempt that ended without valid outputs, as ours would read
    assert [(a.key, a.attempt, a.state) for a in ended.attempts] == [("r0000/z1.000", 2, SchedState.COMPLETED)]
    assert got.watched == {"77": ("r0001/z1.000", "r0001/z0.500")}


def test_failed_cancelled_retrying_keep_submit_count_and_missing_input_is_reported() -> None:
    jobs = [
        job(0, 0.5, LegacyStatus.FAILED, 3),
        job(0, 1.0, LegacyStatus.CANCELLED, 1),
        job(1, 0.5, LegacyStatus.RETRYING, 2),
        job(1, 1.0, LegacyStatus.MISSING_INPUT, 0),
    ]
    got = plan_import(jobs, [], KEYS, {})
    assert dict(got.failed) == {"r0000/z0.500": 3, "r0000/z1.000": 1, "r0001/z0.500": 2}
    ended = {a.key: a for s in got.submissions for a in s.attempts}
    assert {k: (a.attempt, a.failures_before, a.state) for k, a in ended.items()} == {
        "r0000/z0.500": (3, 2, SchedState.FAILED), "r0000/z1.000": (1, 0, SchedState.CANCELLED), "r0001/z0.500": (2, 1, SchedState.FAILED),
    }
    assert len({a.array_index for a in ended.values()}) == 3  # one finished submission, distinct indices
    assert got.missing_input == ("r0001/z1.000",)
    assert got.summary()["failed"] == {"tasks": 3, "attempts": 6}


def test_a_batch_of_one_was_a_job_without_array_and_ambiguous_points_are_unmatched() -> None:
    jobs = [job(0, 0.5, LegacyStatus.QUEUED, 1, "12"), job(1, 0.5, LegacyStatus.QUEUED, 1, None), job(1, 1.0, LegacyStatus.STAGED, 1, "13")]
    batches = [LegacyBatch("batch_0000_1", ("r0000_z0.500",), "12")]
    keys = {**KEYS, (1, "1.000"): ["r0001/z1.000/x=1", "r0001/z1.000/x=2"]}
    got = plan_import(jobs, batches, keys, {})
    assert [(s.kind, s.job_id) for s in got.submissions] == [(SubmissionKind.LEGACY_SINGLE, "12")]
    assert got.new == ("r0001/z0.500",)  # queued without a Slurm id: nothing to watch, planned like a new task
    assert got.unmatched[0][0] == "r0001_z1.000" and "2 tasks share" in got.unmatched[0][1]


def test_the_old_tools_own_database_is_read_upper_or_lower_case(tmp_path: Path) -> None:
    db = tmp_path / "production.db"
    write_old_db(db, tmp_path, [(0, 0.5, "COMPLETED", 1, None), (0, 1.0, "queued", 1, 55), (1, 0.5, "MISSING_INPUT", 0, None)],
                 [("batch_0001_2", ["r0000_z1.000"], 55, "queued")])
    before = digest(db)
    jobs, batches = legacy.read(db)
    assert [(j.job_id, j.status, j.slurm_job_id) for j in jobs] == [
        ("r0000_z0.500", LegacyStatus.COMPLETED, None), ("r0000_z1.000", LegacyStatus.QUEUED, "55"), ("r0001_z0.500", LegacyStatus.MISSING_INPUT, None),
    ]
    assert jobs[0].ended == legacy.parse_time(NOW_ISO) == 1735689600.0  # naive ISO is UTC
    assert batches == [LegacyBatch("batch_0001_2", ("r0000_z1.000",), "55", 1735689600.0)]
    assert digest(db) == before and sorted(p.name for p in tmp_path.iterdir()) == ["production.db"]
    with sqlite3.connect(db) as c:
        c.execute("UPDATE jobs SET status = 'weird' WHERE job_id = 'r0000_z0.500'")
    c.close()
    with pytest.raises(UsageError, match=r"jobs row 'r0000_z0.500': status: 'weird' is not a status"):
        legacy.read(db)


# ---------------------------------------------------------------- the planner on the old tool's attempts


class T:
    def __init__(self, key: str, index: int) -> None:
        self.key, self.index = key, index


def legacy_world(states: dict[str, SchedState | None], outputs: dict[str, OutputState], kind: SubmissionKind = SubmissionKind.LEGACY) -> World:
    keys = sorted(states)
    atts = tuple(AttemptObs(k, i, states[k]) for i, k in enumerate(keys))
    sub = SubmissionObs("legacy-77", 0, kind, SubmissionState.SUBMITTED, 0.0, "77", attempts=atts)
    tasks = {k: TaskObs(outputs.get(k, OutputState.MISSING), states[k]) for k in keys}
    history = {k: TaskHistory(submissions=1) for k in keys}
    return World(tasks, history, (sub,))


def test_the_planner_watches_adopts_and_counts_failures_of_the_old_tools_job() -> None:
    keys = ["a", "b", "c", "d", "e"]
    desired = Desired([T(k, i) for i, k in enumerate(keys)], Policy(batch_size=10, max_retries=2, initial_delay_s=0))
    world = legacy_world(
        {"a": SchedState.PENDING, "b": SchedState.RUNNING, "c": SchedState.COMPLETED, "d": SchedState.COMPLETED, "e": SchedState.TIMEOUT},
        {"b": OutputState.UNMARKED, "c": OutputState.UNMARKED, "d": OutputState.MISSING},
    )
    p = plan(desired, world, 100.0, Limits())
    kinds = {(a.kind, a.reason): a.keys for a in p.actions}
    # queued or running: never submitted again (not even b, whose outputs are being written)
    assert not any(set(a.keys) & {"a", "b"} for a in p.actions if a.kind in (ActionKind.SUBMIT, ActionKind.RESUBMIT))
    # completed with valid outputs (no marker: the old tool writes none): adopted, not rerun
    assert kinds[(ActionKind.ADOPT, Reason.LEGACY_COMPLETED)] == ("c",)
    # completed without outputs, and a timeout: failures, counted and retried by the policy
    assert kinds[(ActionKind.RECORD_FAILURE, Reason.NO_MARKER)] == ("d",)
    assert kinds[(ActionKind.RECORD_FAILURE, Reason.ATTEMPT_FAILED)] == ("e",)
    resubmits = [a for a in p.of(ActionKind.RESUBMIT) if a.reason is Reason.BACKOFF_ELAPSED]
    assert {k for a in resubmits for k in a.keys} == {"d", "e"}
    assert [a.note for a in resubmits if a.keys == ("e",)] == ["with 90 min: timed out at 60 min"]  # a timeout asks more time, the old tool's too
    assert not any("c" in a.keys for a in p.actions if a.kind is not ActionKind.ADOPT)


def test_the_old_tools_outputs_are_always_validated_ours_only_when_they_may_be_adopted() -> None:
    from reconciler.core.outcome import validate_deeply

    assert validate_deeply("hdf5", 1, adopt_existing=False, unresolved=False, legacy=True)  # its success is known only so
    assert not validate_deeply("exists", 1, adopt_existing=True, unresolved=False, legacy=True)  # a listing says it all
    assert not validate_deeply("hdf5", 1, adopt_existing=True, unresolved=False)  # ours, with a marker to come


def test_our_own_attempts_are_not_adopted_without_a_marker() -> None:
    desired = Desired([T("c", 0)], Policy(batch_size=10, initial_delay_s=0))
    world = legacy_world({"c": SchedState.COMPLETED}, {"c": OutputState.UNMARKED}, kind=SubmissionKind.SUBMIT)
    p = plan(desired, world, 100.0, Limits())
    assert not p.of(ActionKind.ADOPT) and p.of(ActionKind.RECORD_FAILURE)[0].reason is Reason.NO_MARKER


# ---------------------------------------------------------------- end to end, local backend

NAME = "seeds"
# (realization, redshift, status, submit_count, slurm id) as the old tool left them
OLD_JOBS = [
    (3000, 0.5, "COMPLETED", 1, 101),  # outputs valid: adopted
    (3000, 1.0, "COMPLETED", 1, 101),  # outputs missing: planned again
    (3000, 1.5, "FAILED", 3, 102),  # 3 failures > max_retries 2: given up, never rerun
    (3001, 0.5, "RETRYING", 1, 102),  # 1 failure: retried once more
    (3001, 1.0, "MISSING_INPUT", 0, None),
    (3001, 1.5, "PENDING", 0, None),
    (4000, 0.5, "FAILED", 1, 103),  # no such task
]
OLD_BATCHES = [("batch_0000_1", ["r3000_z0.500", "r3000_z1.000"], 101, "completed"), ("batch_0001_2", ["r3000_z1.500", "r3001_z0.500"], 102, "failed")]


@pytest.fixture
def old(repo: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A production whose directory holds the old tool's metadata/production.db: (repo, production dir, env)."""
    commit_production(repo, production_yaml(tmp_path / "out"))
    pdir = tmp_path / "out" / NAME
    make_catalog(pdir, "r3000/z0.500")
    write_old_db(pdir / "metadata" / "production.db", pdir, OLD_JOBS, OLD_BATCHES)
    return repo, pdir, env_for(tmp_path)


def test_every_verb_refuses_the_old_database_and_creates_nothing(old: tuple[Path, Path, dict[str, str]]) -> None:
    repo, pdir, env = old
    db = pdir / "metadata" / "production.db"
    before = digest(db)
    for verb in (["plan", NAME], ["status", NAME], ["once", NAME], ["watch", NAME, "--until-done", "--interval", "1"], ["adopt", NAME]):
        r = reconcile(repo, env, *verb)
        assert r.returncode == 2, (verb, r.stdout, r.stderr)
        assert (
            "metadata/production.db was written by the old production manager (7 jobs): "
            f"run `reconcile import-legacy {NAME}` to bring its state over" in r.stderr
        ), (verb, r.stderr)
    assert digest(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["production.db"]  # no lease, no WAL, no ledger tables
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as c:
        assert {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"jobs", "batches"}
    c.close()
    # where the old tool's code put it (<work_dir>/production.db) is found too
    db.rename(pdir / "production.db")
    r = reconcile(repo, env, "plan", NAME)
    assert r.returncode == 2 and "production.db was written by the old production manager (7 jobs)" in r.stderr, r.stderr
    assert not db.exists()


def test_import_adopts_replans_keeps_failure_counts_and_a_pass_reruns_only_what_it_must(old: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    repo, pdir, env = old
    db = pdir / "metadata" / "production.db"
    before = digest(db)
    dry = reconcile(repo, env, "import-legacy", NAME, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert digest(db) == before and not (pdir / "metadata" / "legacy").exists()
    r = reconcile(repo, env, "import-legacy", NAME, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {k: doc[k] for k in ("adopted", "replanned", "failed", "missing_input", "watched", "new")} == {
        k: json.loads(dry.stdout)[k] for k in ("adopted", "replanned", "failed", "missing_input", "watched", "new")
    }
    assert doc["adopted"] == 1 and doc["replanned"] == 1 and doc["failed"] == {"tasks": 2, "attempts": 4}
    assert doc["missing_input"] == ["r3001/z1.000"] and doc["watched"] == {} and doc["new"] == 1
    assert doc["unmatched"] == ["r4000_z0.500: no task of the production has this realization and redshift"]
    # the old database is kept aside, byte for byte; our ledger has our tables only
    aside = pdir / "metadata" / "legacy" / "production.db"
    assert digest(aside) == before
    with sqlite3.connect(db) as c:
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        events = [r[0] for r in c.execute("SELECT kind FROM events")]
        history = {k: (s, f) for k, s, f in c.execute("SELECT key, submissions, failures FROM tasks")}
    c.close()
    assert not names & {"jobs", "batches"} and "missing_input" in events
    assert history == {"r3000/z1.000": (1, 1), "r3000/z1.500": (3, 3), "r3001/z0.500": (1, 1)}
    again = reconcile(repo, env, "import-legacy", NAME)
    assert again.returncode == 0 and "already imported" in again.stdout, again.stdout + again.stderr

    w = reconcile(repo, env, "watch", NAME, "--until-done", "--interval", "1", "--no-status", timeout=240)
    assert w.returncode == 5, w.stdout + w.stderr  # ended with a task given up
    st = json.loads(reconcile(repo, env, "status", NAME, "--json", "--tasks").stdout)
    assert st["states"]["r3000/z0.500"] == "adopted"
    assert st["states"]["r3000/z1.500"] == "failed"
    assert {st["states"][k] for k in ("r3000/z1.000", "r3001/z0.500", "r3001/z1.000", "r3001/z1.500")} == {"complete"}
    # what reached the scheduler: never the adopted task, never the one whose retries the old tool used up
    sent = sent_to_scheduler(tmp_path / "spool")
    assert sent == {"r3000/z1.000": 1, "r3001/z0.500": 1, "r3001/z1.000": 1, "r3001/z1.500": 1}, sent


def test_an_import_cut_short_after_the_move_is_refused_then_finished(old: tuple[Path, Path, dict[str, str]]) -> None:
    repo, pdir, env = old
    db = pdir / "metadata" / "production.db"
    before = digest(db)
    legacy.move_aside(db, pdir)  # step 1 done, then the import died
    r = reconcile(repo, env, "plan", NAME)
    assert r.returncode == 2 and f"but there is no ledger (the import was cut short, or the ledger was lost since): run `reconcile import-legacy {NAME}` again" in r.stderr, r.stderr
    assert not db.exists()
    (db.parent / "production.db.importing").write_text("half a ledger")  # step 3 died too
    r = reconcile(repo, env, "import-legacy", NAME)
    assert r.returncode == 0, r.stderr
    assert "adopted:       1" in r.stdout and "failed:        2 task(s), 4 attempt(s)" in r.stdout, r.stdout
    assert digest(pdir / "metadata" / "legacy" / "production.db") == before
    assert not (db.parent / "production.db.importing").exists()
    p = reconcile(repo, env, "plan", NAME, "--json")
    assert p.returncode == 1, p.stderr
    actions = json.loads(p.stdout)["actions"]
    planned = {k for a in actions if a["kind"] in ("submit", "resubmit") or a["reason"] == "backoff" for k in a["keys"]}
    assert planned == {"r3000/z1.000", "r3001/z0.500", "r3001/z1.000", "r3001/z1.500"}  # the retrying one now or after its backoff
    assert not any("r3000/z1.500" in a["keys"] for a in actions if a["kind"] != "give_up"), actions  # its retries are used up


def test_a_ledger_lost_after_the_import_is_made_again_by_the_import_not_from_logs_alone(old: tuple[Path, Path, dict[str, str]]) -> None:
    """A rebuild from logs/ alone would not know the old tool's jobs (their tasks would be sent
    again, their failure counts lost): every verb refuses until import-legacy runs again, which
    builds the ledger from the copy aside and then recovers our own submissions from logs/."""
    repo, pdir, env = old
    assert reconcile(repo, env, "import-legacy", NAME).returncode == 0
    once = reconcile(repo, env, "once", NAME)  # our own submissions, with manifests in logs/
    assert once.returncode == 0, once.stderr
    ledger = pdir / "metadata" / "production.db"
    with sqlite3.connect(ledger) as c:
        ours = {r[0] for r in c.execute("SELECT token FROM submissions WHERE kind IN ('submit', 'resubmit')")}
    c.close()
    assert ours
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    r = reconcile(repo, env, "plan", NAME)
    assert r.returncode == 2 and "but there is no ledger" in r.stderr and f"reconcile import-legacy {NAME}` again" in r.stderr, r.stderr
    again = reconcile(repo, env, "import-legacy", NAME)
    assert again.returncode == 0, again.stderr
    with sqlite3.connect(ledger) as c:
        history = {k: (s, f) for k, s, f in c.execute("SELECT key, submissions, failures FROM tasks")}
        rebuilt = {r[0] for r in c.execute("SELECT token FROM submissions WHERE kind = 'rebuilt'")}
    c.close()
    assert history["r3000/z1.500"] == (3, 3)  # the old tool's counts are back
    assert rebuilt == ours  # and our own submissions, to be looked up by token
