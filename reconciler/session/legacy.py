"""`reconcile import-legacy`: the old production manager's database brought into a new ledger.

The decisions are ``core.legacy.plan_import``'s (what each old job becomes) and, afterwards,
the planner's (an old-tool job that ends is settled like ours, by ``core.outcome.classify``
with ``legacy``); this function reads the old database, the output tree and desired state,
and has ``reconciler.legacy`` write, in the crash-safe order its docstring gives.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler import legacy, markers, outputs
from reconciler.core.legacy import (
    MISSING_INPUT_NOTE,
    LegacyImport,
    LegacyStatus,
    plan_import,
    point,
)
from reconciler.errors import UsageError
from reconciler.lease import Leases
from reconciler.ledger import Ledger, default_path
from reconciler.recovery import rebuild
from reconciler.scheduler import make_scheduler
from reconciler.session.desired import Options, Warn, load_desired, warn
from reconciler.spec.expand import Task


@dataclass
class ImportReport:
    """What `reconcile import-legacy` did (or, with --dry-run, would do)."""

    name: str
    source: Path  # the old tool's database: where it was read, then (after an import) its copy in metadata/legacy/
    summary: dict[str, object]
    dry_run: bool = False
    already: bool = False  # imported by an earlier run: nothing done
    missing_input_keys: list[str] = field(default_factory=list)
    note: str = MISSING_INPUT_NOTE


def task_points(tasks: Sequence[Task]) -> dict[tuple[int, str], list[str]]:
    """core.legacy.point -> the keys of the tasks there (several when the production has more axes)."""
    out: dict[tuple[int, str], list[str]] = {}
    for t in tasks:
        out.setdefault(point(t.params[0], t.params[1]), []).append(t.key)
    return out


def import_legacy(opts: Options, name: str, *, db: Path | None = None, dry_run: bool = False, on_warning: Warn = warn) -> ImportReport:
    """Bring the old tool's state over (see the module docstring); holds the production's lease,
    except for a dry run, which writes nothing."""
    desired = load_desired(opts, name, on_warning=on_warning)
    loaded = desired.loaded
    pdir = loaded.production_dir
    ledger_path = default_path(pdir)
    done = legacy.imported_summary(ledger_path)
    if done is not None:
        if not dry_run and (pdir / legacy.ASIDE).exists():
            legacy.mark_imported(pdir, done)  # a crash between the ledger's rename and this file
        return ImportReport(name, Path(str(done.get("source", ""))), done, dry_run, already=True)
    source, moved = _source(pdir, ledger_path, db)
    if ledger_path.exists() and ledger_path != source:
        raise UsageError(
            f"{ledger_path} is reconciler's ledger already, with its own history: importing {source} would replace it; "
            "move one of them aside first"
        )
    if loaded.spec.stages:
        raise UsageError(f"production {name} is a campaign of stages; the old production manager's jobs belong to a production with one `task:` (import them there, then add stages)")
    jobs, batches = legacy.read(source)
    exp = loaded.expansion()
    points = task_points(exp.tasks)
    completed = {k for j in jobs if j.status is LegacyStatus.COMPLETED for k in points.get(point(j.realization, j.redshift), ())}
    tasks = [exp.by_key[k] for k in sorted(completed)]
    states = outputs.observe_outputs(pdir, tasks, loaded.spec.the_task.validator, deep=True) if tasks else {}
    imported = plan_import(jobs, batches, points, states)
    report = ImportReport(name, source, imported.summary(), dry_run, missing_input_keys=list(imported.missing_input))
    if dry_run:
        return report
    lease = Leases(opts.lease_ttl).of(pdir / "metadata")
    lease.acquire()  # no ledger of ours yet (refused below if there is one): no generation to start above
    try:
        if legacy.imported_summary(ledger_path) is not None:  # another import finished while this one read
            raise UsageError(f"{ledger_path} was written while this import read the old database (another import-legacy?): run it again")
        if lease.took_over:
            on_warning(f"took over the lease of {name} from {lease.took_over}")
        if not moved:
            source = legacy.move_aside(source, pdir, copy=db is not None and source not in legacy.candidates(pdir, ledger_path))  # 1
        _adopt(pdir, exp.by_key, imported)  # 2
        backend = make_scheduler(loaded.machine, opts.scheduler).name
        legacy.write_ledger(ledger_path, imported, source=source, backend=backend, now=time.time(), generation=lease.generation)  # 3
        if moved:  # the ledger was lost after an import, or never committed: our own submissions since are in logs/
            with Ledger(ledger_path) as ledger:
                ledger.fence(lease.generation)
                rebuild(ledger, pdir, backend, time.time())
        legacy.mark_imported(pdir, legacy.imported_summary(ledger_path) or {})  # 4
    finally:
        lease.release()
    report.source = source
    return report


def _source(pdir: Path, ledger_path: Path, db: Path | None) -> tuple[Path, bool]:
    """(the old tool's database to read, whether it is already the copy aside: an import cut
    short after step 1 resumes from there)."""
    aside = pdir / legacy.ASIDE
    if legacy.interrupted(pdir, ledger_path):
        return aside, True
    if db is not None:
        names, _jobs = legacy.tables(db)
        if not legacy.OLD_TABLES <= names:
            raise UsageError(f"{db}: no tables jobs and batches of the old production manager in it (--db names its production.db)")
        return db, db.resolve() == aside.resolve()
    found = legacy.find(pdir, ledger_path)
    if found is not None:
        return found[0], False
    where = ", ".join(str(p) for p in legacy.candidates(pdir, ledger_path))
    raise UsageError(f"no database of the old production manager at {where}: pass --db PATH to import one from elsewhere")


def _adopt(pdir: Path, by_key: Mapping[str, Task], imported: LegacyImport) -> None:
    """Step 2: `.adopted` markers for completed tasks with valid outputs (idempotent)."""
    now = time.time()
    for key in imported.adopted:
        markers.write_marker(pdir, by_key[key], attempt=0, exit_code=0, start=now, end=now, adopted=True)
