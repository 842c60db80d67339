"""Completion markers: their names, and writing and reading them.

A task is complete when its outputs are present *and* a completion marker carrying the
task's fingerprint sits beside its first output. The fingerprint is in the marker's *name*
(``.<output>.<fingerprint>.done``, or ``.adopted`` for outputs adopted from an earlier
system), so one directory listing answers complete / stale / unmarked / missing for every
task in that directory (``reconciler.outputs`` does that).

The task wrapper writes markers on compute nodes, once per task, so this module imports
nothing but the standard library and ``reconciler.atomic``: it must start fast.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from reconciler.atomic import atomic_write

DONE = "done"
ADOPTED = "adopted"
PARTIAL = "partial"  # a fan-in task that ran on a partial set of its members (the marker names the missing ones)
_HEX = frozenset("0123456789abcdef")


class TaskLike(Protocol):
    """What markers and the output tree need of a task (reconciler.spec.expand.Task satisfies it)."""

    @property
    def key(self) -> str: ...

    @property
    def index(self) -> int: ...

    @property
    def outputs(self) -> tuple[str, ...]: ...

    @property
    def fingerprint(self) -> str: ...


def _split(rel: str) -> tuple[str, str]:
    """``"a/b/c.h5"`` -> ``("a/b", "c.h5")``; string ops, because this runs 10^5 times a pass."""
    head, _sep, tail = rel.rpartition("/")
    return head, tail


def _marker_name(base: str, fingerprint: str, adopted: bool, partial: bool = False) -> str:
    return f".{base}.{fingerprint}.{ADOPTED if adopted else PARTIAL if partial else DONE}"


def parse_marker_name(name: str) -> tuple[str, str, str] | None:
    """``".c.h5.<fp>.done"`` -> ``("c.h5", fp, "done")``; None for any other name."""
    if not name.startswith("."):
        return None
    if name.endswith("." + DONE):
        kind = DONE
    elif name.endswith("." + ADOPTED):
        kind = ADOPTED
    elif name.endswith("." + PARTIAL):
        kind = PARTIAL
    else:
        return None
    stem = name[1 : -len(kind) - 1]
    base, sep, fp = stem.rpartition(".")
    if not sep or not base or not fp or not set(fp) <= _HEX:
        return None
    return base, fp, kind


def marker_path(production_dir: Path, task: TaskLike, adopted: bool = False, partial: bool = False) -> Path:
    """Where the task's completion marker lives: beside its first output."""
    head, base = _split(task.outputs[0])
    return production_dir / head / _marker_name(base, task.fingerprint, adopted, partial)


def _task_markers(directory: Path, base: str) -> list[Path]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        parsed = parse_marker_name(name)
        if parsed is not None and parsed[0] == base:
            out.append(directory / name)
    return out


def write_marker(
    production_dir: Path,
    task: TaskLike,
    *,
    attempt: int,
    exit_code: int,
    start: float,
    end: float,
    token: str = "",
    adopted: bool = False,
    host: str | None = None,
    missing: Sequence[str] = (),
) -> Path:
    """Certify the task complete (atomically), then drop its markers of other fingerprints.

    The new marker is in place before the old ones go, so a crash in between leaves a tree
    that still reads COMPLETE. Any other marker of the same output is removed, including one
    of the same fingerprint but the other kind, so a task never reads both adopted and done.
    ``missing``: a fan-in task ran without these members (they gave up; require.min_fraction
    allowed it): its marker is ``.partial`` and names them, so a pass reads which ones to wait
    for before the task is stale (a listing tells it which markers to open).
    """
    path = marker_path(production_dir, task, adopted, partial=bool(missing))
    doc: dict[str, Any] = {
        "key": task.key,
        "index": task.index,
        "fingerprint": task.fingerprint,
        "attempt": attempt,
        "exit_code": exit_code,
        "start": start,
        "end": end,
        "host": host if host is not None else socket.gethostname(),
        "token": token,
        "adopted": adopted,
        **({"missing": list(missing)} if missing else {}),
    }
    atomic_write(path, json.dumps(doc, sort_keys=True) + "\n")
    for other in _task_markers(path.parent, _split(task.outputs[0])[1]):
        if other.name != path.name:
            try:
                other.unlink()
            except FileNotFoundError:
                pass
    return path


def read_missing(production_dir: Path, task: TaskLike) -> tuple[str, ...]:
    """The members a fan-in task's current ``.partial`` marker says it ran without; () when it
    has none or the marker is unreadable (then it reads as complete on a full set)."""
    try:
        doc = json.loads(marker_path(production_dir, task, partial=True).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    missing = doc.get("missing") if isinstance(doc, dict) else None
    return tuple(str(k) for k in missing) if isinstance(missing, list) else ()


def read_marker(production_dir: Path, task: TaskLike) -> dict[str, Any] | None:
    """The marker with the task's current fingerprint (.done preferred), or None."""
    for adopted in (False, True):
        try:
            text = marker_path(production_dir, task, adopted).read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        try:
            doc = json.loads(text)
        except ValueError:
            # The name already certifies completion; an unreadable body carries no more news.
            return {}
        return doc if isinstance(doc, dict) else {}
    return None


# ---------------------------------------------------------------- failure causes

CAUSES_DIR = "causes"


def cause_path(manifest: Path, array_index: int | str) -> Path:
    """Where the wrapper says why attempt ``array_index`` of a submission failed:
    ``logs/causes/<manifest stem>.<index>.json``, beside the logs and named by the token (in the
    manifest's name), so observe finds it from the ledger alone; in a directory of its own, so
    the manifests' glob (``logs/batch_*.json``, for a lost ledger) never reads it."""
    return manifest.parent / CAUSES_DIR / f"{manifest.stem}.{array_index}.json"


def write_cause(manifest: Path, array_index: int | str, doc: dict[str, Any]) -> Path:
    """Record why an attempt failed (atomically: observe never reads half a cause). Written only
    for attempts that end badly, so a production that succeeds pays nothing for it."""
    path = cause_path(manifest, array_index)
    atomic_write(path, json.dumps(doc, sort_keys=True) + "\n")
    return path


def read_cause(manifest: Path, array_index: int | str) -> dict[str, Any] | None:
    """The cause the wrapper wrote, or None (it did not: killed, out of memory, an older
    wrapper; or the file is damaged). Asked only of attempts that failed."""
    try:
        doc = json.loads(cause_path(manifest, array_index).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
