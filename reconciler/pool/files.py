"""The pool on disk, in the production directory: what workers and the reconciler share.

``pool/queue/<token>.json``  a submission sent to the pool: its script, logs, array indices,
                             and each task's expected run time (the planner's figure)
``pool/claims/<token>/<i>``  a worker took task i of that submission: who (job, host, pid)
                             and the lease; its mtime is the last heartbeat. Never removed: a
                             claim name is taken once, ever (a retry is a new submission)
``pool/ended/<token>/<i>``   how that run ended (exit code, start, end, or cancelled)
``pool/cancelled/<token>``   the reconciler cancelled these indices (all when empty)

A directory per submission: a pass lists those of the submissions it asks about (the open
ones), so what it reads of claims and ends does not grow with the campaign's history (the
queue and cancel listings do, by one name per submission: nothing cleans them up yet).

A claim is taken with ``link`` onto its name, which fails if the name exists, on every
shared filesystem (as the production's lease is, reconciler.lease): one taker per task and
submission, and since no claim is ever removed, a task that ran can never be taken again,
whatever a worker's listings missed. Fencing is by time: a claim whose heartbeat is older
than its ``lease_s`` is no longer held (``still_held``): the wrapper stops its command and
does not write the marker, and the reconciler counts the run a failed attempt only later
(core.pool.judge_claim: 1.5 leases).

Standard library only: workers and wrappers import it on compute nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

CLAIM_ENV = "RECONCILER_POOL_CLAIM"
OWNER_ENV = "RECONCILER_POOL_OWNER"
"""Set by the worker for the task it runs: the claim file and the owner written in it."""


class PoolDir:
    """The paths of one production's pool."""

    def __init__(self, production_dir: Path) -> None:
        self.root = Path(production_dir) / "pool"
        self.queue = self.root / "queue"
        self.claims = self.root / "claims"
        self.ended = self.root / "ended"
        self.cancelled = self.root / "cancelled"

    def make(self) -> None:
        for d in (self.queue, self.claims, self.ended, self.cancelled):
            d.mkdir(parents=True, exist_ok=True)

    def entry(self, token: str) -> Path:
        return self.queue / f"{token}.json"

    def claim(self, token: str, index: int) -> Path:
        return self.claims / token / str(index)

    def end(self, token: str, index: int) -> Path:
        return self.ended / token / str(index)

    def taken(self, token: str) -> set[int]:
        """The indices of ``token`` that have a claim (running, ended or dead)."""
        return _indices(self.claims / token)

    def done(self, token: str) -> set[int]:
        """The indices of ``token`` whose run has an end recorded."""
        return _indices(self.ended / token)


def _indices(directory: Path) -> set[int]:
    return {int(n) for n in listing(directory) if n.isdigit()}


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Whole or not at all: a reader never sees half a record."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(doc, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def listing(directory: Path) -> set[str]:
    try:
        return {n for n in os.listdir(directory) if not n.startswith(".")}
    except FileNotFoundError:
        return set()


def take(pool: PoolDir, token: str, index: int, owner: dict[str, Any]) -> Path | None:
    """Claim task ``index`` of submission ``token`` for ``owner``; None if someone has."""
    path = pool.claim(token, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps({**owner, "claimed": time.time()}, sort_keys=True), encoding="utf-8")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def beat(path: Path) -> bool:
    """Renew a claim (its mtime is the heartbeat); False if it is gone."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def still_held(path: str | None, owner: str | None, now: float | None = None, lease_s: float | None = None) -> bool:
    """Whether the claim at ``path`` is ``owner``'s and alive: what a wrapper asks before it
    writes a marker (no claim named: not run by a pool, nothing to check).

    Not held only on evidence: the claim is gone, names another owner, or its heartbeat is
    older than its lease. A filesystem that does not answer, or a claim that cannot be read
    this once, is no evidence (a run is not killed for one EIO): it is asked again soon, and the
    reconciler reaps a claim that stays silent."""
    if not path:
        return True
    p = Path(path)
    try:
        mtime = p.stat().st_mtime
    except FileNotFoundError:
        return False
    except OSError:
        return True
    doc = read_json(p)
    if doc is not None and str(doc.get("owner")) != str(owner):
        return False
    lease = float(doc.get("lease_s", 0)) if doc is not None else lease_s
    return lease is None or (time.time() if now is None else now) - mtime <= lease


def release(pool: PoolDir, token: str, index: int, record: dict[str, Any]) -> None:
    """Record how the task's run ended. The claim stays: its name is never taken again."""
    path = pool.end(token, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


class Guard:
    """A wrapper's watch on its claim (``CLAIM_ENV``): asked often, it looks at most every
    tenth of the lease; once the claim is not held, it stays lost."""

    def __init__(self, path: str, owner: str | None) -> None:
        self.path, self.owner = path, owner
        doc = read_json(Path(path)) or {}
        self.lease_s = float(doc.get("lease_s", 300.0))
        self.every = max(0.2, self.lease_s / 10)
        self.checked = time.monotonic()
        self.gone = False

    def lost(self) -> bool:
        now = time.monotonic()
        if not self.gone and now - self.checked >= self.every:
            self.checked = now
            self.gone = not still_held(self.path, self.owner, lease_s=self.lease_s)
        return self.gone


def cancelled(pool: PoolDir, token: str) -> set[int] | None:
    """The indices of ``token`` the reconciler cancelled: None if none, an empty set for all."""
    doc = read_json(pool.cancelled / token)
    if doc is None:
        return None
    return {int(i) for i in doc.get("indices") or ()}
