"""SQLite journal of submissions, attempts, per-task history and events.

The ledger is a journal and a cache: everything in it can be rebuilt from the scheduler and
the output tree (see ``recovery.rebuild``). A submission's token is written here, committed,
*before* the scheduler is called; a token without a job id is resolved next pass by
looking it up in the scheduler, never by submitting again.

Two kinds of writes, kept apart: the *journal* of what a pass saw (the scheduler's answer per
attempt, submissions whose attempts all ended), and the *decisions* of its plan (a job
recovered by token, a failure counted, a submission abandoned, a waiver, a give-up). The
ledger decides nothing: retries, backoff and give-ups are the planner's.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from reconciler.core import causes
from reconciler.core.model import FinishedSubmission, TaskHistory
from reconciler.core.sizing import Request, Short
from reconciler.core.states import SchedState, SubmissionKind, SubmissionState
from reconciler.errors import Deposed
from reconciler.ledger_schema import (
    SCHEMA_VERSION,
    Attempt,
    Failure,
    Seen,
    Submission,
    migrate,
    network_filesystem,
)

OPEN = tuple(s for s in SubmissionState if s.open)

LEASE_KEY = "lease_generation"
"""meta key: the highest lease generation that wrote this ledger (see ``Ledger.fence``)."""


class Ledger:
    """One production's journal. Use as a context manager; every write commits at once."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """Open (or create) the ledger at ``path``.

        ``read_only``: for verbs that only look (plan, status, monitor), which run without the
        production's lock: a ledger of an earlier version is migrated in a copy in memory,
        never in place under a loop that may be writing it.
        """
        self.path = path
        self.generation: int | None = None  # of the lease this ledger's writer holds (fence)
        self.existed = path.exists()
        self.network_fs: str | None = None
        if read_only and self.existed:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            if self._version() < SCHEMA_VERSION:
                memory = sqlite3.connect(":memory:", isolation_level=None)
                self.db.backup(memory)
                self.db.close()
                self.db = memory
        else:
            if str(path) != ":memory:":
                path.parent.mkdir(parents=True, exist_ok=True)
                self.network_fs = network_filesystem(path.parent)
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=" + ("DELETE" if self.network_fs else "WAL"))
            self.db.execute("PRAGMA synchronous=FULL")
        self._migrate()

    def _version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        """Bring a ledger written by an earlier version to this schema, in one transaction."""
        if self._version() >= SCHEMA_VERSION:
            return
        with self.transaction() as db:
            migrate(db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fence(self, generation: int) -> None:
        """From now on, refuse every write once a later generation of the production's lease
        has written here (``lease.py``): the check is inside each write's transaction, so a
        reconciler taken over between its lease check and its write cannot slip one in."""
        self.generation = generation
        with self.transaction():
            pass

    @staticmethod
    def fenced_generation(path: Path) -> int:
        """The highest lease generation that wrote the ledger at ``path`` (0 if none), read only."""
        if not path.exists():
            return 0
        db = sqlite3.connect(path, timeout=30)  # a plain SELECT; no write
        try:
            row = db.execute("SELECT v FROM meta WHERE k = ?", (LEASE_KEY,)).fetchone()
        except sqlite3.Error:
            return 0
        finally:
            db.close()
        return int(row[0]) if row else 0

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if self.generation is not None:
                self._fence(self.generation)
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    # ------------------------------------------------------------ reading

    def submissions(self, states: Iterable[SubmissionState] = OPEN) -> list[Submission]:
        states = tuple(states)
        q = f"SELECT * FROM submissions WHERE state IN ({','.join('?' * len(states))}) ORDER BY created, token"
        return [_sub(row) for row in self.db.execute(q, [s.value for s in states])]

    def submission(self, token: str) -> Submission:
        return _sub(self.db.execute("SELECT * FROM submissions WHERE token = ?", (token,)).fetchone())

    def all_submissions(self) -> list[Submission]:
        return [_sub(row) for row in self.db.execute("SELECT * FROM submissions ORDER BY created, token")]

    def attempts_of(self, tokens: Sequence[str]) -> list[Attempt]:
        out: list[Attempt] = []
        for i in range(0, len(tokens), 500):
            chunk = tokens[i : i + 500]
            q = f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE token IN ({','.join('?' * len(chunk))})"
            out.extend(_attempt(row) for row in self.db.execute(q, chunk))
        return out

    def latest_attempts(self) -> dict[str, Attempt]:
        """The attempt of each task's latest submission."""
        columns = ", ".join(f"a.{c}" for c in _ATTEMPT_COLUMNS.split(", "))
        q = f"SELECT {columns} FROM tasks t JOIN attempts a ON a.token = t.latest_token AND a.key = t.key"
        return {row[2]: _attempt(row) for row in self.db.execute(q)}

    def previous_states(self, token: str) -> dict[str, SchedState | None]:
        """For each task of submission ``token``: the last seen state of its attempt before this
        one (None when there is none), which becomes its latest if ``token`` is abandoned."""
        q = (
            "SELECT a.key, (SELECT b.sched_state FROM attempts b JOIN submissions s ON s.token = b.token "
            "WHERE b.key = a.key AND b.token != a.token AND s.state != 'abandoned' "
            "ORDER BY b.attempt DESC, s.created DESC LIMIT 1) FROM attempts a WHERE a.token = ?"
        )
        return {key: SchedState(state) if state else None for key, state in self.db.execute(q, (token,))}

    def history(self) -> dict[str, TaskHistory]:
        return {
            key: TaskHistory(
                subs, fails, last_end, reason, bool(given_up), causes.loads(cause) if cause else None,
                Short(short) if short else None, None if time_s is None else Request(mem, time_s), peak,
            )
            for key, subs, fails, last_end, reason, given_up, cause, short, mem, time_s, peak in self.db.execute(
                "SELECT key, submissions, failures, last_end, last_reason, given_up, last_cause, last_short, last_mem_mb, last_time_s, last_peak_mb FROM tasks"
            )
        }

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------ the journal: what a pass saw

    def journal(self, seen: Sequence[Seen]) -> None:
        """This pass's scheduler answers, in one transaction: facts, not decisions."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE attempts SET sched_state = ?, exit_code = ?, reason = ?, start = COALESCE(?, start), end = COALESCE(?, end), "
                "max_rss_mb = COALESCE(?, max_rss_mb), cpu_s = COALESCE(?, cpu_s) WHERE token = ? AND array_index = ?",
                [(s.state.value, s.exit_code, s.reason, s.start, s.end, s.max_rss_mb, s.cpu_s, s.token, s.array_index) for s in seen],
            )

    def finish(self, tokens: Iterable[str], now: float) -> None:
        """Close submissions whose attempts all ended: later passes no longer ask about them."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE submissions SET state = ?, finished = ? WHERE token = ? AND state = ?",
                [(SubmissionState.FINISHED.value, now, t, SubmissionState.SUBMITTED.value) for t in sorted(tokens)],
            )

    def logs_kept(self) -> tuple[FinishedSubmission, ...]:
        """Finished submissions whose logs have not been pruned; one finished before schema v3
        counts from its submission."""
        rows = self.db.execute(
            "SELECT token, batch, COALESCE(finished, submitted, created), kind FROM submissions WHERE state = ? AND logs_pruned IS NULL",
            (SubmissionState.FINISHED.value,),
        ).fetchall()
        return tuple(FinishedSubmission(token, batch, when, SubmissionKind(kind)) for token, batch, when, kind in rows)

    def logs_pruned(self, token: str, files: int, archive: str | None, now: float) -> None:
        """The decision carried out: the submission's logs are gone (``archive``: where they are now)."""
        with self.transaction() as db:
            db.execute("UPDATE submissions SET logs_pruned = ? WHERE token = ?", (now, token))
            where = f"; archived in {archive}" if archive else ""
            db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (now, "prune_logs", None, f"{token}: {files} log file(s) removed{where}"))

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", (key, value))

    def event(self, kind: str, message: str, now: float, key: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (now, kind, key, message))

    def _fence(self, generation: int) -> None:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (LEASE_KEY,)).fetchone()
        stored = int(row[0]) if row else 0
        if stored > generation:
            raise Deposed(
                f"deposed: generation {stored} of the production's lease has written the ledger {self.path}; "
                f"this reconciler (generation {generation}) was taken over and stops acting"
            )
        if stored < generation:
            self.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", (LEASE_KEY, str(generation)))

    # ------------------------------------------------------------ submissions

    def record_submission(
        self,
        sub: Submission,
        tasks: Sequence[tuple[int, str]],  # (array_index, key)
    ) -> None:
        """Journal a submission and its attempts, durably, before the scheduler is called."""
        with self.transaction() as db:
            req = sub.request
            db.execute(
                "INSERT INTO submissions (token, batch, kind, state, job_id, backend, script, manifest, created, submitted, mem_mb, time_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sub.token, sub.batch, sub.kind.value, sub.state.value, sub.job_id, sub.backend, sub.script, sub.manifest, sub.created, sub.submitted,
                 None if req is None else req.memory_mb, None if req is None else req.time_s),
            )
            for array_index, key in tasks:
                row = db.execute("SELECT submissions FROM tasks WHERE key = ?", (key,)).fetchone()
                attempt = (row[0] if row else 0) + 1
                db.execute(
                    "INSERT INTO attempts (token, array_index, key, attempt) VALUES (?, ?, ?, ?)",
                    (sub.token, array_index, key, attempt),
                )
                db.execute(
                    "INSERT INTO tasks (key, submissions, latest_token) VALUES (?, 1, ?) "
                    "ON CONFLICT(key) DO UPDATE SET submissions = submissions + 1, latest_token = excluded.latest_token, given_up = 0",
                    (key, sub.token),
                )

    def seed_history(self, rows: Sequence[tuple[str, int, int]]) -> None:
        """`reconcile import-legacy`, on a new ledger: each task's (key, submissions, failures)
        made by the old tool *before* the attempt it brings over (record_submission adds that
        one), so that the retry limit counts them."""
        with self.transaction() as db:
            db.executemany("INSERT INTO tasks (key, submissions, failures) VALUES (?, ?, ?)", rows)

    def set_submitted(self, token: str, job_id: str, when: float) -> None:
        """The scheduler's job id for ``token`` (sbatch's answer, or found by token)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE submissions SET job_id = ?, submitted = ?, state = CASE WHEN state = ? THEN state ELSE ? END WHERE token = ?",
                (job_id, when, SubmissionState.FINISHED.value, SubmissionState.SUBMITTED.value, token),
            )

    def unstage(self, token: str, now: float) -> None:
        """A staged submission is about to be sent: from now on it is journaled like any other,
        and the lookup grace of a lost sbatch answer counts from this moment, not from staging."""
        with self.transaction() as db:
            db.execute("UPDATE submissions SET state = ?, created = ? WHERE token = ?", (SubmissionState.RECORDED.value, now, token))

    # ------------------------------------------------------------ the plan's decisions

    def abandon(self, token: str, reason: str, now: float) -> None:
        """A journaled submission that will never run: its tasks become plannable again."""
        with self.transaction() as db:
            cur = db.execute("UPDATE submissions SET state = ? WHERE token = ? AND state != ?", (SubmissionState.ABANDONED.value, token, SubmissionState.ABANDONED.value))
            if not cur.rowcount:
                return  # already abandoned (a pass killed after this write): nothing to undo twice
            keys = [r[0] for r in db.execute("SELECT key FROM attempts WHERE token = ?", (token,))]
            db.execute("UPDATE attempts SET reason = ? WHERE token = ?", (reason, token))
            for key in keys:
                db.execute(
                    "UPDATE tasks SET submissions = MAX(submissions - 1, 0), "
                    "latest_token = (SELECT a.token FROM attempts a JOIN submissions s ON s.token = a.token "
                    "WHERE a.key = ? AND a.token != ? AND s.state != 'abandoned' ORDER BY a.attempt DESC, s.created DESC LIMIT 1) WHERE key = ?",
                    (key, token, key),
                )
            db.execute("INSERT INTO events VALUES (?, 'abandon', NULL, ?)", (now, f"{token}: {reason}"))

    def record_failures(self, failures: Sequence[Failure], now: float) -> None:
        """Count failed attempts against their tasks' retries, once each, with their causes and
        what their retries must read (what each ran out of, its request and peak).
        An attempt already counted is skipped, so a pass killed half-way is safe to repeat."""
        with self.transaction() as db:
            for f in failures:
                short = f.short.value if f.short else None
                cur = db.execute(
                    "UPDATE attempts SET failure_recorded = 1, cause = ?, short = ? WHERE token = ? AND array_index = ? AND failure_recorded = 0",
                    (f.cause, short, f.token, f.array_index),
                )
                if cur.rowcount:
                    req = f.request
                    db.execute(
                        "UPDATE tasks SET failures = failures + 1, last_end = ?, last_reason = ?, last_cause = ?, "
                        "last_short = ?, last_mem_mb = ?, last_time_s = ?, last_peak_mb = ? WHERE key = ?",
                        (f.end, f.reason, f.cause, short, req.memory_mb if req else None, req.time_s if req else None, f.peak_mb, f.key),
                    )
                    db.execute("INSERT INTO events VALUES (?, 'failed', ?, ?)", (now, f.key, f.reason))

    def waive(self, failures: Sequence[tuple[str, int]], now: float) -> None:
        """`reconcile retry`: these failed tasks' backoff is over and their failure counts are
        set to the given values (the plan's decision, core.outcome.waived_failures); journaled,
        so tasks the queue cap defers keep the waiver for the next pass."""
        with self.transaction() as db:
            # the cause goes too: a waived "command not found" gets its attempt, not an instant give-up
            db.executemany("UPDATE tasks SET last_end = 0, given_up = 0, last_cause = NULL, failures = ? WHERE key = ?", [(n, key) for key, n in failures])
            db.execute("INSERT INTO events VALUES (?, 'retry', NULL, ?)", (now, f"manual retry of {len(failures)} task(s)"))

    def give_up(self, keys: Sequence[str], reason: str, now: float) -> None:
        with self.transaction() as db:
            for key in keys:
                db.execute("UPDATE tasks SET given_up = 1 WHERE key = ?", (key,))
                db.execute("INSERT INTO events VALUES (?, 'give_up', ?, ?)", (now, key, reason))


_ATTEMPT_COLUMNS = "token, array_index, key, attempt, sched_state, exit_code, reason, start, end, failure_recorded, max_rss_mb, cpu_s"


def _attempt(row: tuple) -> Attempt:
    token, array_index, key, attempt, sched_state, exit_code, reason, start, end, recorded, rss, cpu = row
    return Attempt(token, array_index, key, attempt, sched_state, exit_code, reason, start, end, bool(recorded), rss, cpu)


def _sub(row: tuple) -> Submission:
    token, batch, kind, state, job_id, backend, script, manifest, created, submitted = row[:10]  # then finished, logs_pruned (v3)
    mem, time_s = row[12:14]  # v5
    request = None if time_s is None else Request(mem, time_s)
    return Submission(token, batch, SubmissionKind(kind), SubmissionState(state), job_id, backend, script, manifest, created, submitted, request)


def default_path(production_dir: Path) -> Path:
    override = os.environ.get("RECONCILER_LEDGER")
    return Path(override) if override else production_dir / "metadata" / "production.db"
