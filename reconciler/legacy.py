"""The old production manager's SQLite database: found, read, moved aside, brought over.

The old tool (covariance-mocks' production_manager.py) kept tables ``jobs`` and ``batches``
in ``<production dir>/metadata/production.db`` (its docs) or ``<work dir>/production.db``
(its code); the first is also where our ledger lives. So every verb first asks ``check``:
a database of the old tool is refused with what to run, never opened as a ledger (which would
add our tables beside its own and ignore them).

`reconcile import-legacy` (session.import_legacy) brings its state over in an order that a
crash anywhere leaves repeatable:

1. ``move_aside``: the old file is renamed to ``metadata/legacy/production.db`` (one rename,
   never modified). From here on the ledger is missing and the copy not yet imported, which
   ``check`` refuses ("interrupted: run import-legacy again"), so no pass can run on an empty
   ledger and submit what the old tool's jobs are running.
2. ``.adopted`` markers for the completed tasks (idempotent).
3. ``write_ledger``: the whole ledger is built in ``production.db.importing`` (a leftover one
   is discarded) and renamed onto the ledger's path: the commit point.
4. ``mark_imported``: ``metadata/legacy/IMPORTED``, the import's summary. A crash before it:
   the ledger exists, so nothing is refused, and import-legacy run again finds the ledger's
   ``legacy_import`` and writes it.

A ledger lost after the import is refused like an import cut short (``interrupted``): only
the import knows the old tool's Slurm jobs, so import-legacy run again builds the ledger from
the copy aside, then recovers our own submissions since from the manifests in logs/.

The decisions (what each old job becomes) are ``core.legacy.plan_import``'s; this module
only reads and writes.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from reconciler.atomic import atomic_write
from reconciler.core.legacy import LegacyBatch, LegacyImport, LegacyJob, LegacyStatus
from reconciler.core.states import SubmissionState
from reconciler.errors import LegacyDatabase, UsageError
from reconciler.ledger import Failure, Ledger, Seen, Submission

OLD_TABLES = frozenset({"jobs", "batches"})
OUR_TABLES = frozenset({"submissions", "attempts", "tasks"})
ASIDE = Path("metadata") / "legacy" / "production.db"
IMPORTED = Path("metadata") / "legacy" / "IMPORTED"
META_KEY = "legacy_import"
SIDECARS = ("-journal", "-wal", "-shm")


def _connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)


def tables(path: Path) -> tuple[set[str], int]:
    """(the tables of the SQLite file at ``path``, its ``jobs`` rows when it has that table),
    read only; (set(), 0) when it is absent or not SQLite."""
    if not path.is_file():
        return set(), 0
    try:
        db = _connect_ro(path)
        try:
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            jobs = int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]) if "jobs" in names else 0
        finally:
            db.close()
    except sqlite3.Error:
        return set(), 0
    return names, jobs


def _shown(path: Path, production_dir: Path) -> str:
    try:
        return str(path.relative_to(production_dir))
    except ValueError:
        return str(path)


def candidates(production_dir: Path, ledger_path: Path) -> list[Path]:
    """Where the old tool may have left its database: the ledger's path, the docs' and the code's."""
    out: list[Path] = []
    for p in (ledger_path, production_dir / "metadata" / "production.db", production_dir / "production.db"):
        if p not in out:
            out.append(p)
    return out


def find(production_dir: Path, ledger_path: Path) -> tuple[Path, int] | None:
    """(path, jobs) of the first database of the old tool among ``candidates``; raises when a
    file holds both its tables and ours (reconciler before this check added its own beside)."""
    for p in candidates(production_dir, ledger_path):
        names, jobs = tables(p)
        if OLD_TABLES <= names:
            if names & OUR_TABLES:
                raise LegacyDatabase(
                    f"{_shown(p, production_dir)} holds both the old production manager's tables ({jobs} jobs) and reconciler's ledger: "
                    "copy it aside, drop one set of tables from the file, and run `reconcile import-legacy` on the old tool's copy (--db PATH)"
                )
            return p, jobs
    return None


def interrupted(production_dir: Path, ledger_path: Path) -> bool:
    """An import moved the old database aside and there is no ledger: the import was cut short
    before it committed the ledger, or the ledger was lost since. Either way only the import
    can make the ledger again: a rebuild from logs/ alone would not know the old tool's Slurm
    jobs, and would submit their tasks a second time."""
    return (production_dir / ASIDE).is_file() and not ledger_path.exists()


def check(production_dir: Path, ledger_path: Path, name: str) -> None:
    """Refuse a production whose directory holds the old tool's database (not imported), or an
    import cut short: every verb calls this before it opens the ledger."""
    found = find(production_dir, ledger_path)
    if found is not None:
        path, jobs = found
        raise LegacyDatabase(
            f"{_shown(path, production_dir)} was written by the old production manager ({jobs} jobs): "
            f"run `reconcile import-legacy {name}` to bring its state over (--dry-run shows what it would do)"
        )
    if interrupted(production_dir, ledger_path):
        raise LegacyDatabase(
            f"the old production manager's database was imported ({ASIDE}) but there is no ledger (the import was cut short, "
            f"or the ledger was lost since): run `reconcile import-legacy {name}` again; it builds the ledger from that copy "
            "and from the manifests in logs/"
        )


def parse_time(text: object) -> float | None:
    """The old tool's timestamps (``datetime.utcnow().isoformat()``: naive UTC) as epoch seconds."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def read(path: Path) -> tuple[list[LegacyJob], list[LegacyBatch]]:
    """The old tool's jobs and batches, read only; a row that cannot be read is a UsageError
    naming the file, the row and the column (nothing is written before every row is read)."""
    try:
        db = _connect_ro(path)
        try:
            job_rows = db.execute(
                "SELECT job_id, realization, redshift, status, submit_count, slurm_job_id, completed_at, error_message FROM jobs ORDER BY job_id"
            ).fetchall()
            batch_rows = db.execute("SELECT batch_id, job_ids, slurm_array_id, submitted_at FROM batches ORDER BY batch_id").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise UsageError(f"{path}: cannot read the old production manager's tables: {exc}") from None
    jobs = []
    for job_id, real, z, status, count, slurm_id, completed, error in job_rows:
        parsed = LegacyStatus.parse(str(status))
        if parsed is None:
            known = ", ".join(s.name for s in LegacyStatus)
            raise UsageError(f"{path}: jobs row {job_id!r}: status: {status!r} is not a status of the old tool (one of {known})")
        try:
            jobs.append(LegacyJob(str(job_id), int(real), float(z), parsed, int(count or 0), _id(slurm_id), parse_time(completed), str(error or "")))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{path}: jobs row {job_id!r}: realization/redshift/submit_count: {exc}") from None
    batches = []
    for batch_id, job_ids, array_id, submitted in batch_rows:
        try:
            ids = json.loads(job_ids)
            if not isinstance(ids, list):
                raise ValueError("not a JSON list")
        except ValueError as exc:
            raise UsageError(f"{path}: batches row {batch_id!r}: job_ids: {exc} (the old tool writes a JSON list of job ids)") from None
        batches.append(LegacyBatch(str(batch_id), tuple(str(i) for i in ids), _id(array_id), parse_time(submitted)))
    return jobs, batches


def _id(value: object) -> str | None:
    return str(value) if value not in (None, "", 0) else None


def move_aside(source: Path, production_dir: Path, *, copy: bool = False) -> Path:
    """Rename the old database to ``metadata/legacy/production.db`` (step 1), never modifying
    it and never replacing a file there; ``copy`` (a --db outside the production directory,
    which no verb would find anyway): copy it there instead, atomically. A journal or WAL
    beside it means the old tool is writing it (or died mid-write): refused, as a copy
    without it would lose its last writes."""
    for suffix in SIDECARS:
        side = source.with_name(source.name + suffix)
        if side.exists() and side.stat().st_size > 0:
            raise UsageError(
                f"{side} exists: the old production manager is writing its database, or died in a write; "
                "stop it (or open the database once with sqlite3 to recover the write), then import"
            )
    dest = production_dir / ASIDE
    if dest.exists():
        raise UsageError(f"{dest} exists already: an earlier import's copy; move it elsewhere to import {source} instead")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        tmp = dest.with_name(dest.name + ".copying")
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    else:
        os.rename(source, dest)
    return dest


def write_ledger(path: Path, imported: LegacyImport, *, source: Path, backend: str, now: float, generation: int) -> None:
    """Build the ledger in a temporary file and rename it onto ``path`` (step 3): a crash
    before the rename leaves no ledger, and the import is repeated from the copy aside."""
    tmp = path.with_name(path.name + ".importing")
    for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in SIDECARS)):
        leftover.unlink(missing_ok=True)
    with Ledger(tmp) as ledger:
        ledger.fence(generation)
        attempts = [a for s in imported.submissions for a in s.attempts]
        ledger.seed_history([(a.key, a.attempt - 1, a.failures_before) for a in attempts])
        for s in imported.submissions:
            state = SubmissionState.SUBMITTED if s.open else SubmissionState.FINISHED
            sub = Submission(s.token, s.batch, s.kind, state, s.job_id, backend, str(source), str(source), now, s.submitted or now)
            ledger.record_submission(sub, [(a.array_index, a.key) for a in s.attempts])
            if not s.open:
                ended = [a for a in s.attempts if a.state is not None]
                ledger.journal([Seen(s.token, a.array_index, a.state, None, a.reason, None, a.end) for a in ended if a.state is not None])
                ledger.record_failures([Failure(s.token, a.array_index, a.key, a.reason, a.end if a.end is not None else now, None) for a in ended], now)
        _events(ledger, imported, source, now)
        ledger.set_meta(META_KEY, json.dumps({"at": now, "source": str(source), **imported.summary()}, sort_keys=True))
    try:  # closed first: its WAL was checkpointed into it and removed
        os.link(tmp, path)  # never onto a ledger that appeared meanwhile (a second import, a pass)
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"{path} appeared while the import ran (another import-legacy?): nothing was replaced; run it again to see where it stands") from None
    tmp.unlink()


def _events(ledger: Ledger, imported: LegacyImport, source: Path, now: float) -> None:
    watched = imported.watched
    ledger.event("legacy_import", f"imported the old production manager's {source}: " + json.dumps(imported.summary(), sort_keys=True), now)
    if watched:
        ledger.event("legacy_watch", f"watching the old tool's Slurm job(s) {', '.join(sorted(watched))} to their end", now)
    for key in imported.missing_input:
        ledger.event("missing_input", "the old production manager found its input catalog missing and never submitted it", now, key)
    for job, why in imported.unmatched:
        ledger.event("legacy_unmatched", f"{job}: {why}", now)


def imported_summary(ledger_path: Path) -> dict[str, object] | None:
    """The summary an earlier import kept in the ledger, or None (no ledger, or no import)."""
    if not ledger_path.is_file():
        return None
    db = _connect_ro(ledger_path)
    try:
        row = db.execute("SELECT v FROM meta WHERE k = ?", (META_KEY,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return json.loads(row[0]) if row else None


def mark_imported(production_dir: Path, summary: dict[str, object]) -> None:
    """Step 4: the copy aside is imported; a ledger lost from now on is rebuilt, not refused."""
    atomic_write(production_dir / IMPORTED, json.dumps(summary, sort_keys=True, indent=2) + "\n")

