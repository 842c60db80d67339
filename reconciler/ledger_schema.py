"""The ledger's SQLite schema, its rows as values, its migrations, and where WAL is unsafe.

Kept apart from ``ledger.py`` (the reads and writes) because it changes on its own rhythm:
a new version adds a step here and a test with the old schema verbatim (tests/test_ledger.py).
"""

from __future__ import annotations

import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from reconciler.core.sizing import Request, Short
from reconciler.core.states import SchedState, SubmissionKind, SubmissionState

SCHEMA_VERSION = 5
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS submissions (
    token TEXT PRIMARY KEY,
    batch INTEGER NOT NULL,
    kind TEXT NOT NULL,             -- SubmissionKind
    state TEXT NOT NULL,            -- SubmissionState
    job_id TEXT,
    backend TEXT NOT NULL,
    script TEXT NOT NULL,
    manifest TEXT NOT NULL,
    created REAL NOT NULL,
    submitted REAL,
    finished REAL,                  -- when every attempt had ended (v3)
    logs_pruned REAL,               -- when its logs were removed by outputs.cleanup_policy (v3)
    mem_mb REAL,                    -- what its tasks asked: memory (NULL: none asked) (v5)
    time_s REAL                     -- and timeout (v5)
);
CREATE TABLE IF NOT EXISTS attempts (
    token TEXT NOT NULL,
    array_index INTEGER NOT NULL,
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    sched_state TEXT,               -- SchedState, as last seen
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    start REAL,
    end REAL,
    failure_recorded INTEGER NOT NULL DEFAULT 0,
    cause TEXT,                     -- core.causes.Cause as JSON, for a failed attempt whose wrapper said why
    max_rss_mb REAL,                -- peak memory, as the scheduler measured it (v5)
    cpu_s REAL,                     -- CPU time, user + system (v5)
    short TEXT,                     -- a counted failure: what it ran out of (core.sizing.Short) (v5)
    PRIMARY KEY (token, array_index)
);
CREATE INDEX IF NOT EXISTS attempts_key ON attempts (key);
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY,
    submissions INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    last_end REAL,
    last_reason TEXT NOT NULL DEFAULT '',
    given_up INTEGER NOT NULL DEFAULT 0,
    latest_token TEXT,
    last_cause TEXT,                -- the latest failure's cause (JSON), which the planner reads
    last_short TEXT,                -- what the latest failure ran out of (core.sizing.Short) (v5)
    last_mem_mb REAL,               -- what that attempt asked: memory (v5)
    last_time_s REAL,               -- and timeout (v5)
    last_peak_mb REAL               -- its peak memory (v5)
);
CREATE TABLE IF NOT EXISTS workers (  -- a pool's worker jobs, one row per worker of an array (v4)
    token TEXT NOT NULL,
    idx INTEGER NOT NULL,
    job_id TEXT,                    -- the worker array's job id, NULL while sbatch's answer is missing
    state TEXT,                     -- SchedState, as last seen, NULL before any answer
    nodes INTEGER NOT NULL,
    created REAL NOT NULL,
    submitted REAL,
    start REAL,
    end REAL,
    abandoned INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (token, idx)
);
CREATE TABLE IF NOT EXISTS events (
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    key TEXT,
    message TEXT NOT NULL
);
"""

MIGRATE_0_TO_1 = (
    # Version 0 kept the seed tool's task states in attempts.state and an unused stage column.
    # Each table is rebuilt and copied rather than altered: ALTER TABLE ... DROP COLUMN needs
    # SQLite 3.35, older than the system Python of many login nodes (RHEL 8 has 3.26).
    "ALTER TABLE submissions RENAME TO submissions_v0",
    "ALTER TABLE attempts RENAME TO attempts_v0",
    "ALTER TABLE tasks RENAME TO tasks_v0",
    "DROP INDEX IF EXISTS attempts_key",
    SCHEMA,
    "INSERT INTO submissions (token, batch, kind, state, job_id, backend, script, manifest, created, submitted) SELECT token, batch, kind, state, job_id, backend, script, manifest, created, submitted FROM submissions_v0",
    "INSERT INTO attempts (token, array_index, key, attempt, sched_state, exit_code, reason, start, end, failure_recorded) "
    "SELECT token, array_index, key, attempt, sched_state, exit_code, reason, start, end, "
    "CASE WHEN state = 'FAILED' THEN 1 ELSE 0 END FROM attempts_v0",
    "INSERT INTO tasks (key, submissions, failures, last_end, last_reason, given_up, latest_token) SELECT key, submissions, failures, last_end, last_reason, given_up, latest_token FROM tasks_v0",
    "DROP TABLE submissions_v0",
    "DROP TABLE attempts_v0",
    "DROP TABLE tasks_v0",
)

ADDED_IN_2 = (("attempts", "cause", "TEXT"), ("tasks", "last_cause", "TEXT"))
ADDED_IN_3 = (("submissions", "finished", "REAL"), ("submissions", "logs_pruned", "REAL"))
ADDED_IN_5 = (
    ("submissions", "mem_mb", "REAL"), ("submissions", "time_s", "REAL"), ("attempts", "max_rss_mb", "REAL"), ("attempts", "cpu_s", "REAL"), ("attempts", "short", "TEXT"),
    ("tasks", "last_short", "TEXT"), ("tasks", "last_mem_mb", "REAL"), ("tasks", "last_time_s", "REAL"), ("tasks", "last_peak_mb", "REAL"),
)
"""Version 2 adds failure causes: columns added in place (ADD COLUMN works on every SQLite a
login node has), so a long production's ledger is not copied. Version 0 is copied into the
current SCHEMA, which has them already. Version 3 adds, the same way, when a submission
finished and when its logs were pruned (``outputs.cleanup_policy.keep_logs_days``). Version 4
adds the ``workers`` table (pool mode), which SCHEMA creates where it is missing. Version 5
adds right-sizing: each submission's request, each attempt's peak memory and CPU time, and what
a task's latest failure ran out of, with that attempt's request and peak (core.sizing)."""



@dataclass(frozen=True, slots=True)
class Submission:
    token: str
    batch: int
    kind: SubmissionKind
    state: SubmissionState
    job_id: str | None
    backend: str
    script: str
    manifest: str
    created: float
    submitted: float | None
    request: Request | None = None  # what its tasks ask (None: journaled before requests were, v5)


@dataclass(frozen=True, slots=True)
class Attempt:
    token: str
    array_index: int
    key: str
    attempt: int
    sched_state: str | None
    exit_code: int | None
    reason: str
    start: float | None
    end: float | None
    failure_recorded: bool
    max_rss_mb: float | None = None
    cpu_s: float | None = None


@dataclass(frozen=True, slots=True)
class Seen:
    """The scheduler's answer for one attempt this pass, to journal."""

    token: str
    array_index: int
    state: SchedState
    exit_code: int | None
    reason: str
    start: float | None
    end: float | None
    max_rss_mb: float | None = None  # ended: what it used, when measured
    cpu_s: float | None = None


class Failure(NamedTuple):
    """One failed attempt to count (``Ledger.record_failures``), with what the planner read of it."""

    token: str
    array_index: int
    key: str
    reason: str  # what the history says of it
    end: float
    cause: str | None  # core.causes.Cause as JSON; None when the wrapper could not say
    short: Short | None = None  # what it ran out of (core.sizing.shortfall)
    request: Request | None = None  # what it asked
    peak_mb: float | None = None


def migrate(db: sqlite3.Connection) -> None:
    """Bring the schema of ``db`` (inside the caller's transaction) to SCHEMA_VERSION."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(attempts)")}
    statements = [*MIGRATE_0_TO_1] if "stage" in columns else [SCHEMA]
    for statement in (part for text in statements for part in text.split(";")):
        if statement.strip():
            db.execute(statement)
    for table, column, decl in (*ADDED_IN_2, *ADDED_IN_3, *ADDED_IN_5):  # version 1 -> 2 -> 3, 4 -> 5
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def network_filesystem(path: Path) -> str | None:
    """The filesystem type of ``path`` if it is a network one (where SQLite WAL is unsafe)."""
    try:
        out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if out in {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb2", "fuseblk", "beegfs"} else None
