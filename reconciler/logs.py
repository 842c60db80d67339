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


def listing(logs: Path) -> list[str]:
    """Every name in ``logs`` and in ``logs/causes`` (as ``causes/<name>``), listed once for
    every submission a pass prunes: a production's logs/ holds tens of thousands of files."""
    names: list[str] = []
    for sub, prefix in ((logs, ""), (logs / CAUSES_DIR, f"{CAUSES_DIR}/")):
        try:
            names += [prefix + n for n in os.listdir(sub)]
        except (FileNotFoundError, NotADirectoryError):
            pass
    return names


def submission_logs(logs: Path, names: Iterable[str], batch: int, job_id: str | None, manifest: str) -> list[Path]:
    """The log files of one submission among ``names`` (``listing(logs)``)."""
    prefixes = [f"{CAUSES_DIR}/{Path(manifest).stem}."]  # markers.cause_path
    if job_id:
        prefixes.append(f"batch_{batch:04d}_{job_id}_")  # scheduler.script.log_patterns, %A_%a
    return sorted(
        logs / n for n in names
        if n.startswith(prefixes[0]) or (len(prefixes) > 1 and n.startswith(prefixes[1]) and n.endswith((".out", ".err")))
    )


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
            with open(tmp, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                    for f in files:
                        tar.add(f, arcname=str(f.relative_to(logs)))
                raw.flush()
                os.fsync(raw.fileno())  # on disk before the logs it holds are removed
            os.replace(tmp, target)
        where = str(target.relative_to(logs))
    for f in files:
        try:
            f.unlink()
        except FileNotFoundError:
            pass
    return where


SCHEDULER_PREFIX = "slurmstepd"
"""Lines Slurm's step daemon writes into a task's stderr ("... Exceeded job memory limit")."""
TAIL_BYTES = 8192


def scheduler_lines(err_log: Path) -> tuple[str, ...]:
    """What Slurm itself wrote into a task's stderr (its last lines), for a run killed without a
    word from the wrapper: where no cgroup enforces memory, ``Exceeded job memory limit`` is
    how an out-of-memory kill is told (core.sizing reads it). One small read; () when absent."""
    try:
        with open(err_log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - TAIL_BYTES))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ()
    return tuple(line.strip()[:300] for line in tail.splitlines() if line.startswith(SCHEDULER_PREFIX))[-10:]
