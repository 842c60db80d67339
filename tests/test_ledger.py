"""The ledger's schema migration: a ledger written before the vocabulary was cleaned up.

Productions run for weeks; a reconciler upgraded in the middle of one must read the ledger
the old one wrote, keep every count, and never migrate in place from a read-only verb.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from reconciler.core.causes import Cause, CauseKind
from reconciler.core.sizing import Request, Short
from reconciler.core.states import SchedState, SubmissionKind, SubmissionState
from reconciler.ledger import Failure, Ledger, Seen
from reconciler.ledger_schema import MIGRATE_0_TO_1, SCHEMA, SCHEMA_VERSION

V0_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS submissions (
    token TEXT PRIMARY KEY,
    stage TEXT NOT NULL DEFAULT 'default',
    batch INTEGER NOT NULL,
    kind TEXT NOT NULL,             -- submit | resubmit
    state TEXT NOT NULL,            -- staged | recorded | submitted | finished | abandoned
    job_id TEXT,
    backend TEXT NOT NULL,
    script TEXT NOT NULL,
    manifest TEXT NOT NULL,
    created REAL NOT NULL,
    submitted REAL
);
CREATE TABLE IF NOT EXISTS attempts (
    token TEXT NOT NULL,
    array_index INTEGER NOT NULL,
    key TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT 'default',
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,            -- QUEUED | RUNNING | COMPLETED | FAILED | CANCELLED
    sched_state TEXT,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    start REAL,
    end REAL,
    PRIMARY KEY (token, array_index)
);
CREATE INDEX IF NOT EXISTS attempts_key ON attempts (key);
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY,
    stage TEXT NOT NULL DEFAULT 'default',
    submissions INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    last_end REAL,
    last_reason TEXT NOT NULL DEFAULT '',
    given_up INTEGER NOT NULL DEFAULT 0,
    latest_token TEXT
);
CREATE TABLE IF NOT EXISTS events (
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    key TEXT,
    message TEXT NOT NULL
);
"""
"""The schema of commit eb48876 (user_version 0), verbatim."""


def v0_ledger(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(V0_SCHEMA)
    db.execute("INSERT INTO submissions VALUES ('tok1', 'default', 0, 'submit', 'finished', '41', 'slurm', 's.sh', 'm.json', 100.0, 101.0)")
    db.execute("INSERT INTO submissions VALUES ('tok2', 'default', 0, 'resubmit', 'submitted', '42', 'slurm', 's2.sh', 'm2.json', 200.0, 201.0)")
    rows = [
        ("tok1", 0, "r1/z0.5", "default", 1, "COMPLETED", "COMPLETED", 0, "", 110.0, 120.0),
        ("tok1", 1, "r2/z0.5", "default", 1, "FAILED", "FAILED", 1, "exit 1", 110.0, 130.0),
        ("tok2", 1, "r2/z0.5", "default", 2, "RUNNING", "RUNNING", None, "", 210.0, None),
    ]
    db.executemany("INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("INSERT INTO tasks VALUES ('r1/z0.5', 'default', 1, 0, NULL, '', 0, 'tok1')")
    db.execute("INSERT INTO tasks VALUES ('r2/z0.5', 'default', 2, 1, 130.0, 'exit 1', 0, 'tok2')")
    db.execute("INSERT INTO events VALUES (130.0, 'failed', 'r2/z0.5', 'attempt 1: exit 1')")
    db.commit()
    db.close()


def test_a_v0_ledger_is_migrated_keeping_every_count(tmp_path: Path) -> None:
    path = tmp_path / "production.db"
    v0_ledger(path)
    with Ledger(path) as ledger:
        subs = {s.token: s for s in ledger.all_submissions()}
        assert subs["tok1"].state is SubmissionState.FINISHED and subs["tok2"].kind is SubmissionKind.RESUBMIT
        assert [s.token for s in ledger.submissions()] == ["tok2"]  # the open one
        history = ledger.history()
        assert (history["r2/z0.5"].submissions, history["r2/z0.5"].failures, history["r2/z0.5"].last_reason) == (2, 1, "exit 1")
        recorded = {(a.token, a.array_index): a.failure_recorded for a in ledger.attempts_of(["tok1", "tok2"])}
        assert recorded == {("tok1", 0): False, ("tok1", 1): True, ("tok2", 1): False}  # FAILED was counted
        latest = ledger.latest_attempts()
        assert latest["r2/z0.5"].token == "tok2" and SchedState(latest["r2/z0.5"].sched_state) is SchedState.RUNNING
        # and it is a ledger like any other: the old failure is not counted twice
        ledger.record_failures([Failure("tok1", 1, "r2/z0.5", "exit 1", 130.0, None)], 300.0)
        assert ledger.history()["r2/z0.5"].failures == 1
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    columns = {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in ("submissions", "attempts", "tasks")}
    assert not any("stage" in c for c in columns.values()) and "state" not in columns["attempts"]
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'attempts_key'").fetchone()
    db.close()


def test_a_read_only_open_migrates_a_copy_and_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "production.db"
    v0_ledger(path)
    before = path.read_bytes()
    with Ledger(path, read_only=True) as ledger:
        assert ledger.history()["r2/z0.5"].failures == 1
        assert [s.token for s in ledger.submissions()] == ["tok2"]
    assert path.read_bytes() == before  # a loop of the old version may still be writing it
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()


V3_COLUMNS = (
    ",\n    finished REAL,                  -- when every attempt had ended (v3)\n"
    "    logs_pruned REAL                -- when its logs were removed by outputs.cleanup_policy (v3)\n"
)


def without_v5(sql: str) -> str:
    """The schema text as version 4 wrote it: without right-sizing's columns (v5)."""
    return (
        sql.replace("    logs_pruned REAL,               -- when its logs were removed by outputs.cleanup_policy (v3)\n", "    logs_pruned REAL                -- when its logs were removed by outputs.cleanup_policy (v3)\n")
        .replace("    mem_mb REAL,                    -- what its tasks asked: memory (NULL: none asked) (v5)\n    time_s REAL                     -- and timeout (v5)\n", "")
        .replace(
            "    max_rss_mb REAL,                -- peak memory, as the scheduler measured it (v5)\n    cpu_s REAL,                     -- CPU time, user + system (v5)\n"
            "    short TEXT,                     -- a counted failure: what it ran out of (core.sizing.Short) (v5)\n", "")
        .replace("    last_cause TEXT,                -- the latest failure's cause (JSON), which the planner reads\n", "    last_cause TEXT                 -- the latest failure's cause (JSON), which the planner reads\n")
        .replace(
            "    last_short TEXT,                -- what the latest failure ran out of (core.sizing.Short) (v5)\n"
            "    last_mem_mb REAL,               -- what that attempt asked: memory (v5)\n"
            "    last_time_s REAL,               -- and timeout (v5)\n"
            "    last_peak_mb REAL               -- its peak memory (v5)\n", "")
    )


def v1_ledger(path: Path) -> None:
    """A version-1 ledger (the schema before failure causes), made the way version 1 made it:
    by migrating a version-0 one, then stamping user_version 1."""
    v0_ledger(path)
    db = sqlite3.connect(path, isolation_level=None)
    v1_schema = [
        without_v5(part).replace("    cause TEXT,                     -- core.causes.Cause as JSON, for a failed attempt whose wrapper said why\n", "")
        .replace("    latest_token TEXT,\n    last_cause TEXT                 -- the latest failure's cause (JSON), which the planner reads\n", "    latest_token TEXT\n")
        .replace(V3_COLUMNS, "\n")
        for part in MIGRATE_0_TO_1
    ]
    for statement in (part for text in v1_schema for part in text.split(";")):
        if statement.strip():
            db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    assert "cause" not in {r[1] for r in db.execute("PRAGMA table_info(attempts)")}, "the v1 schema above still has v2's column"
    assert "last_cause" not in {r[1] for r in db.execute("PRAGMA table_info(tasks)")}
    db.close()


def test_a_v1_ledger_gains_causes_in_place_keeping_every_count(tmp_path: Path) -> None:
    path = tmp_path / "production.db"
    v1_ledger(path)
    with Ledger(path, read_only=True) as ledger:  # a read-only verb: a copy, the file untouched
        assert ledger.history()["r2/z0.5"].cause is None
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 1
    with Ledger(path) as ledger:
        h = ledger.history()["r2/z0.5"]
        assert (h.submissions, h.failures, h.last_reason, h.cause) == (2, 1, "exit 1", None)
        cause = Cause(CauseKind.NOT_FOUND, "no-such-generator", 127, ("bash: no-such-generator: not found",))
        ledger.record_failures([Failure("tok2", 1, "r2/z0.5", cause.text, 250.0, cause.dumps())], 300.0)
        h = ledger.history()["r2/z0.5"]
        assert (h.failures, h.last_reason, h.cause) == (2, "command not found: no-such-generator", cause)
        ledger.waive([("r2/z0.5", 2)], 310.0)  # `reconcile retry`: one more attempt, not an instant give-up
        assert ledger.history()["r2/z0.5"].cause is None
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    assert db.execute("SELECT cause FROM attempts WHERE token = 'tok2'").fetchone()[0] == cause.dumps()
    db.close()


def test_a_v2_ledger_learns_when_its_submissions_finished_in_place(tmp_path: Path) -> None:
    """Schema v3 adds submissions.finished and .logs_pruned in place; a submission finished
    under v2 counts from when it was submitted, so keep_logs_days still reaches it."""
    path = tmp_path / "production.db"
    v1_ledger(path)
    with Ledger(path):
        pass
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE s AS SELECT token, batch, kind, state, job_id, backend, script, manifest, created, submitted FROM submissions")
    db.execute("DROP TABLE submissions")
    db.execute("ALTER TABLE s RENAME TO submissions")
    db.execute("UPDATE submissions SET state = 'finished'")
    db.execute("PRAGMA user_version = 2")
    db.close()
    with Ledger(path) as ledger:
        kept = ledger.logs_kept()
        assert kept and all(k.finished is not None for k in kept)
        first = kept[0]
        ledger.logs_pruned(first.token, 3, None, 500.0)
        assert first.token not in {k.token for k in ledger.logs_kept()}
        ledger.finish(["nothing"], 600.0)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    assert {"finished", "logs_pruned"} <= {r[1] for r in db.execute("PRAGMA table_info(submissions)")}
    db.close()


def test_a_v0_ledger_lands_on_the_current_schema_with_causes(tmp_path: Path) -> None:
    path = tmp_path / "production.db"
    v0_ledger(path)
    with Ledger(path) as ledger:
        ledger.record_failures([Failure("tok2", 1, "r2/z0.5", "exit 3", 250.0, Cause(CauseKind.EXIT, "", 3).dumps())], 300.0)
        assert ledger.history()["r2/z0.5"].cause == Cause(CauseKind.EXIT, "", 3)


def test_a_v4_ledger_gains_requests_and_usage_in_place_and_reads_them_as_unknown_until_journaled(tmp_path: Path) -> None:
    """Schema v5 (right-sizing) adds columns in place; what v4 journaled reads as "not recorded"
    (no request, no usage), and what is journaled from then on is kept."""
    path = tmp_path / "production.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(without_v5(SCHEMA))
    assert "mem_mb" not in {r[1] for r in db.execute("PRAGMA table_info(submissions)")}, "the v4 schema above still has v5's columns"
    db.execute("INSERT INTO submissions (token, batch, kind, state, backend, script, manifest, created, job_id) VALUES ('t4', 0, 'submit', 'submitted', 'slurm', 's', 'm', 1.0, '7')")
    db.execute("INSERT INTO attempts (token, array_index, key, attempt, sched_state) VALUES ('t4', 0, 'r1', 1, 'OUT_OF_MEMORY')")
    db.execute("INSERT INTO tasks (key, submissions, latest_token) VALUES ('r1', 1, 't4')")
    db.execute("PRAGMA user_version = 4")
    db.close()
    with Ledger(path) as ledger:
        (sub,) = ledger.submissions()
        assert sub.request is None and ledger.history()["r1"].request is None
        assert ledger.attempts_of(["t4"])[0].max_rss_mb is None
        ledger.journal([Seen("t4", 0, SchedState.OUT_OF_MEMORY, None, "OUT_OF_MEMORY", 1.0, 9.0, 16500.0, 7.5)])
        ledger.record_failures([Failure("t4", 0, "r1", "OUT_OF_MEMORY", 9.0, None, Short.MEMORY, Request(16384.0, 3600.0), 16500.0)], 10.0)
        h = ledger.history()["r1"]
        assert (h.failures, h.short, h.request, h.peak_mb) == (1, Short.MEMORY, Request(16384.0, 3600.0), 16500.0)
        att = ledger.attempts_of(["t4"])[0]
        assert (att.max_rss_mb, att.cpu_s) == (16500.0, 7.5)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    db.close()
