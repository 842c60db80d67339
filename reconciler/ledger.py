"""SQLite journal of submissions, attempts, per-task history and events.

The ledger is a journal and a cache: everything in it can be rebuilt from the scheduler and
the output tree (see engine.rebuild). A submission's token is written here, committed,
*before* the scheduler is called; a token without a job id is resolved next pass by
looking it up in the scheduler, never by submitting again.

Task states follow the seed tool: PENDING (known, not submitted), QUEUED, RUNNING,
COMPLETED, FAILED, CANCELLED.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.model import TaskHistory
from reconciler.core.states import SchedState

SCHEMA = """
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

OPEN_STATES = ("staged", "recorded", "submitted")

_SEED_STATE = {
    SchedState.PENDING: "QUEUED",
    SchedState.RUNNING: "RUNNING",
    SchedState.COMPLETED: "COMPLETED",
    SchedState.CANCELLED: "CANCELLED",
}


def seed_state(state: SchedState) -> str:
    """The seed tool's job state for a scheduler state."""
    return _SEED_STATE.get(state, "FAILED")


@dataclass(frozen=True, slots=True)
class Submission:
    token: str
    batch: int
    kind: str
    state: str
    job_id: str | None
    backend: str
    script: str
    manifest: str
    created: float
    submitted: float | None


@dataclass(frozen=True, slots=True)
class Attempt:
    token: str
    array_index: int
    key: str
    attempt: int
    state: str
    sched_state: str | None
    exit_code: int | None
    reason: str
    start: float | None
    end: float | None


def network_filesystem(path: Path) -> str | None:
    """The filesystem type of ``path`` if it is a network one (where SQLite WAL is unsafe)."""
    try:
        out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if out in {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb2", "fuseblk", "beegfs"} else None


class Ledger:
    """One production's journal. Use as a context manager; every write commits at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.network_fs = network_filesystem(path.parent)
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=" + ("DELETE" if self.network_fs else "WAL"))
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    # ------------------------------------------------------------ submissions

    def record_submission(
        self,
        sub: Submission,
        tasks: Sequence[tuple[int, str]],  # (array_index, key)
    ) -> None:
        """Journal a submission and its attempts, durably, before the scheduler is called."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO submissions VALUES (?, 'default', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sub.token, sub.batch, sub.kind, sub.state, sub.job_id, sub.backend, sub.script, sub.manifest, sub.created, sub.submitted),
            )
            for array_index, key in tasks:
                row = db.execute("SELECT submissions FROM tasks WHERE key = ?", (key,)).fetchone()
                attempt = (row[0] if row else 0) + 1
                db.execute(
                    "INSERT INTO attempts (token, array_index, key, attempt, state) VALUES (?, ?, ?, ?, 'QUEUED')",
                    (sub.token, array_index, key, attempt),
                )
                db.execute(
                    "INSERT INTO tasks (key, submissions, latest_token) VALUES (?, 1, ?) "
                    "ON CONFLICT(key) DO UPDATE SET submissions = submissions + 1, latest_token = excluded.latest_token, given_up = 0",
                    (key, sub.token),
                )

    def set_submitted(self, token: str, job_id: str, when: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE submissions SET job_id = ?, state = 'submitted', submitted = ? WHERE token = ?", (job_id, when, token))

    def set_state(self, token: str, state: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE submissions SET state = ? WHERE token = ?", (state, token))

    def abandon(self, token: str, reason: str, now: float) -> None:
        """A recorded token the scheduler never received: its tasks become plannable again."""
        with self.transaction() as db:
            db.execute("UPDATE submissions SET state = 'abandoned' WHERE token = ?", (token,))
            keys = [r[0] for r in db.execute("SELECT key FROM attempts WHERE token = ?", (token,))]
            db.execute("UPDATE attempts SET state = 'CANCELLED', reason = ? WHERE token = ?", (reason, token))
            for key in keys:
                db.execute(
                    "UPDATE tasks SET submissions = MAX(submissions - 1, 0), "
                    "latest_token = (SELECT a.token FROM attempts a JOIN submissions s ON s.token = a.token "
                    "WHERE a.key = ? AND a.token != ? AND s.state != 'abandoned' ORDER BY a.attempt DESC, s.created DESC LIMIT 1) WHERE key = ?",
                    (key, token, key),
                )
            db.execute("INSERT INTO events VALUES (?, 'abandon', NULL, ?)", (now, f"{token}: {reason}"))

    def submissions(self, states: Iterable[str] = OPEN_STATES) -> list[Submission]:
        states = tuple(states)
        q = f"SELECT * FROM submissions WHERE state IN ({','.join('?' * len(states))}) ORDER BY created, token"
        return [_sub(row) for row in self.db.execute(q, states)]

    def all_submissions(self) -> list[Submission]:
        return [_sub(row) for row in self.db.execute("SELECT * FROM submissions ORDER BY created, token")]

    # ------------------------------------------------------------ attempts

    def attempts_of(self, tokens: Sequence[str]) -> list[Attempt]:
        out: list[Attempt] = []
        for i in range(0, len(tokens), 500):
            chunk = tokens[i : i + 500]
            q = f"SELECT token, array_index, key, attempt, state, sched_state, exit_code, reason, start, end FROM attempts WHERE token IN ({','.join('?' * len(chunk))})"
            out.extend(Attempt(*row) for row in self.db.execute(q, chunk))
        return out

    def latest_attempts(self) -> dict[str, Attempt]:
        """The attempt of each task's latest submission."""
        q = (
            "SELECT a.token, a.array_index, a.key, a.attempt, a.state, a.sched_state, a.exit_code, a.reason, a.start, a.end "
            "FROM tasks t JOIN attempts a ON a.token = t.latest_token AND a.key = t.key"
        )
        return {row[2]: Attempt(*row) for row in self.db.execute(q)}

    def update_attempts(self, updates: Sequence[tuple[Attempt, SchedState, int | None, str, float | None, float | None, bool, float]]) -> None:
        """Apply observed states. Each item: (attempt, new state, exit, reason, start, end, counts_as_failure, now).

        A transition into a failed terminal state increments the task's failure count once.
        """
        if not updates:
            return
        with self.transaction() as db:
            for att, state, exit_code, reason, start, end, failed, now in updates:
                seed = "FAILED" if failed else seed_state(state)
                db.execute(
                    "UPDATE attempts SET state = ?, sched_state = ?, exit_code = ?, reason = ?, start = COALESCE(?, start), end = COALESCE(?, end) WHERE token = ? AND array_index = ?",
                    (seed, state.value, exit_code, reason, start, end, att.token, att.array_index),
                )
                if failed and att.state not in ("FAILED", "CANCELLED"):
                    db.execute(
                        "UPDATE tasks SET failures = failures + 1, last_end = ?, last_reason = ? WHERE key = ?",
                        (end or now, reason, att.key),
                    )
                    db.execute("INSERT INTO events VALUES (?, 'failed', ?, ?)", (now, att.key, f"attempt {att.attempt}: {reason}"))

    # ------------------------------------------------------------ history

    def history(self) -> dict[str, TaskHistory]:
        return {
            key: TaskHistory(submissions=subs, failures=fails, last_end=last_end, last_reason=reason, given_up=bool(given_up))
            for key, subs, fails, last_end, reason, given_up in self.db.execute(
                "SELECT key, submissions, failures, last_end, last_reason, given_up FROM tasks"
            )
        }

    def give_up(self, keys: Sequence[str], reason: str, now: float) -> None:
        with self.transaction() as db:
            for key in keys:
                db.execute("UPDATE tasks SET given_up = 1 WHERE key = ?", (key,))
                db.execute("INSERT INTO events VALUES (?, 'give_up', ?, ?)", (now, key, reason))

    def reset_for_retry(self, max_retries: int, now: float) -> int:
        """`reconcile retry`: waive the backoff of failed tasks and give given-up ones one more attempt."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE tasks SET last_end = 0, given_up = 0, failures = MIN(failures, ?) WHERE failures > 0",
                (max_retries,),
            )
            n = cur.rowcount
            db.execute("INSERT INTO events VALUES (?, 'retry', NULL, ?)", (now, f"manual retry of {n} task(s)"))
        return n

    def seed_history(self, key: str, failures: int, last_end: float | None, reason: str) -> None:
        """Used when rebuilding a lost ledger: restart counts at what the world shows."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO tasks (key, failures, last_end, last_reason) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET failures = MAX(failures, excluded.failures)",
                (key, failures, last_end, reason),
            )

    def event(self, kind: str, message: str, now: float, key: str | None = None) -> None:
        self.db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (now, kind, key, message))

    def events(self, limit: int = 50) -> list[tuple[float, str, str | None, str]]:
        return list(self.db.execute("SELECT ts, kind, key, message FROM events ORDER BY rowid DESC LIMIT ?", (limit,)))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", (key, value))


def _sub(row: tuple) -> Submission:
    token, _stage, batch, kind, state, job_id, backend, script, manifest, created, submitted = row
    return Submission(token, batch, kind, state, job_id, backend, script, manifest, created, submitted)


def default_path(production_dir: Path) -> Path:
    override = os.environ.get("RECONCILER_LEDGER")
    return Path(override) if override else production_dir / "metadata" / "production.db"
