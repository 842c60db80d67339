"""Opening one production: its lease, directory tree, provenance tag, ledger (rebuilt from
logs/ if lost) and scheduler, behind an Engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reconciler import gitops, legacy
from reconciler.engine import Engine
from reconciler.engine.apply import UNFENCED
from reconciler.lease import Leases
from reconciler.ledger import Ledger, default_path
from reconciler.production_dir import init_production_dir
from reconciler.recovery import rebuild
from reconciler.scheduler import make_scheduler
from reconciler.session.desired import DesiredState, Options, Warn, load_desired, warn


@dataclass
class Production:
    """One production opened for a pass: its desired state and its adapters, behind the engine."""

    desired: DesiredState
    engine: Engine
    ledger: Ledger
    tag: str | None

    @property
    def name(self) -> str:
        return self.desired.loaded.name

    @property
    def directory(self) -> Path:
        return self.desired.loaded.production_dir


@contextmanager
def open_production(
    opts: Options, name: str, *, write: bool, init: bool | None = None, on_warning: Warn = warn, leases: Leases | None = None,
    desired: DesiredState | None = None,
) -> Iterator[Production]:
    """Load ``name`` at the ref and open its ledger and scheduler.

    ``write``: hold the production's lease (refusing uncommitted desired state): taken from
    ``leases`` (a loop's, held across passes and renewed here) or for this call alone.
    ``init`` (default: ``write``): also create the directory tree and the provenance tag,
    and rebuild a lost ledger from the manifests in logs/. Read-only opens use an in-memory
    ledger when the production has none yet, so they create nothing. ``desired``: already
    loaded (at the last good revision, say) instead of at ``opts.ref``.
    """
    init = write if init is None else init
    desired = desired or load_desired(opts, name, on_warning=on_warning)
    loaded, pdir = desired.loaded, desired.loaded.production_dir
    legacy.check(pdir, default_path(pdir), name)  # the old tool's database is never opened as a ledger
    scheduler = make_scheduler(loaded.machine, opts.scheduler)
    keeper = leases if leases is not None else Leases(opts.lease_ttl)
    lease = keeper.of(pdir / "metadata") if write else None
    tag: str | None
    try:
        if lease is not None:
            if lease.held:
                lease.renew()
            else:  # above every generation that ever wrote the ledger, even if lease files were deleted
                lease.acquire(floor=Ledger.fenced_generation(default_path(pdir)))
                if lease.took_over:
                    on_warning(f"took over the lease of {name} from {lease.took_over}")
        if init:
            tag, created = gitops.ensure_tag(desired.repo, loaded, loaded.spec.production.version, desired.dirty, commit=desired.commit)
            if created or not (pdir / "metadata" / "version_info.json").exists():
                init_production_dir(loaded, gitops.version_info(loaded, desired.commit, tag, desired.dirty))
        else:
            tag = gitops.latest_tag(desired.repo, loaded.name)
        path = default_path(pdir)
        existed = path.exists()
        ledger = Ledger(path if init or existed else Path(":memory:"), read_only=not init)
        try:
            if lease is not None:
                ledger.fence(lease.generation)  # every write of this ledger is checked against the lease
            if ledger.network_fs:
                on_warning(f"the ledger {path} is on a network file system ({ledger.network_fs}); using rollback journal mode, not WAL")
            if not existed and any((pdir / "logs").glob("batch_*.json")):
                # a read-only open rebuilds in memory, so `plan` shows what `once` would do
                n = rebuild(ledger, pdir, scheduler.name, time.time())
                on_warning(f"ledger {path} was missing: {'rebuilt' if init else 'read (in memory)'} {n} submission(s) "
                           "from the manifests in logs/; their jobs are looked up by token, and retry counts restart")
            yield Production(desired, Engine(loaded, scheduler, ledger, fence=lease or UNFENCED), ledger, tag)
        finally:
            ledger.close()
    finally:
        if leases is None and lease is not None:
            lease.release()
