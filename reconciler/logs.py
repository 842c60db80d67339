"""A submission's log files, and pruning them (``outputs.cleanup_policy``; the decision is
``core.cleanup.prune_logs``'s): the .out/.err of each array task and the failure causes.
Scripts and manifests stay, since a lost ledger is rebuilt from them."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

from reconciler.markers import CAUSES_DIR

ARCHIVE_DIR = "archive"


def submission_logs(logs: Path, names: Iterable[str], batch: int, job_id: str | None, manifest: str) -> list[Path]:
    """The log files of one submission among ``names`` (a listing of ``logs``, made once for
    every submission a pass prunes: a production's logs/ holds tens of thousands of files)."""
    out: list[Path] = []
    if job_id:
        prefix = f"batch_{batch:04d}_{job_id}_"  # scheduler.script.log_patterns, %A_%a
        out += [logs / n for n in names if n.startswith(prefix) and n.endswith((".out", ".err"))]
    causes = logs / CAUSES_DIR
    stem = Path(manifest).stem + "."
    try:
        out += [causes / n for n in os.listdir(causes) if n.startswith(stem)]
    except FileNotFoundError:
        pass
    return sorted(out)


def prune(logs: Path, files: list[Path], name: str, archive: bool) -> str | None:
    """Remove ``files``; with ``archive``, first pack them into ``logs/archive/<name>.tar.gz``
    (written under a temporary name and renamed, so an archive that exists is whole). A pass
    killed after the archive and before every removal finds the archive on its next try and
    only removes what it holds. Returns the archive's path relative to ``logs``, or None."""
    where = None
    if archive and files:
        target = logs / ARCHIVE_DIR / f"{name}.tar.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            with tarfile.open(target, "r:gz") as tar:
                held = set(tar.getnames())
            files = [f for f in files if str(f.relative_to(logs)) in held]
        else:
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with tarfile.open(tmp, "w:gz") as tar:
                for f in files:
                    tar.add(f, arcname=str(f.relative_to(logs)))
            os.replace(tmp, target)
        where = str(target.relative_to(logs))
    for f in files:
        try:
            f.unlink()
        except FileNotFoundError:
            pass
    return where
