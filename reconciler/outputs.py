"""The output tree as observed state: listings, completion markers, validators.

A task is complete when its outputs are present *and* a completion marker carrying the
task's fingerprint sits beside its first output. The fingerprint is in the marker's *name*
(``.<output>.<fingerprint>.done``, or ``.adopted`` for outputs adopted from an earlier
system), so one directory listing answers complete / stale / unmarked / missing for every
task in that directory. On Lustre a stat or an open per task costs a metadata round trip
each; a listing per directory is the only affordable common path. Validators (which open
files) run only for unmarked tasks the engine asks about (``deep``).

Filesystem errors other than "not there" raise TransientError: a flaky mount must never be
read as "the outputs are missing" and trigger thousands of resubmissions.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from reconciler.atomic import atomic_write
from reconciler.core.states import OutputState
from reconciler.errors import TransientError

DONE = "done"
ADOPTED = "adopted"
PARTIAL_DIR = "qa/partial"
_HEX = frozenset("0123456789abcdef")


class TaskLike(Protocol):
    """What this module needs of a task (reconciler.spec.expand.Task satisfies it)."""

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


def _marker_name(base: str, fingerprint: str, adopted: bool) -> str:
    return f".{base}.{fingerprint}.{ADOPTED if adopted else DONE}"


def _parse_marker(name: str) -> tuple[str, str, str] | None:
    """``".c.h5.<fp>.done"`` -> ``("c.h5", fp, "done")``; None for any other name."""
    if not name.startswith("."):
        return None
    if name.endswith("." + DONE):
        kind = DONE
    elif name.endswith("." + ADOPTED):
        kind = ADOPTED
    else:
        return None
    stem = name[1 : -len(kind) - 1]
    base, sep, fp = stem.rpartition(".")
    if not sep or not base or not fp or not set(fp) <= _HEX:
        return None
    return base, fp, kind


def marker_path(production_dir: Path, task: TaskLike, adopted: bool = False) -> Path:
    """Where the task's completion marker lives: beside its first output."""
    head, base = _split(task.outputs[0])
    return production_dir / head / _marker_name(base, task.fingerprint, adopted)


def _task_markers(directory: Path, base: str) -> list[Path]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        parsed = _parse_marker(name)
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
) -> Path:
    """Certify the task complete (atomically), then drop its markers of other fingerprints.

    The new marker is in place before the old ones go, so a crash in between leaves a tree
    that still reads COMPLETE. Any other marker of the same output is removed, including one
    of the same fingerprint but the other kind, so a task never reads both adopted and done.
    """
    path = marker_path(production_dir, task, adopted)
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
    }
    atomic_write(path, json.dumps(doc, sort_keys=True) + "\n")
    for other in _task_markers(path.parent, _split(task.outputs[0])[1]):
        if other.name != path.name:
            try:
                other.unlink()
            except FileNotFoundError:
                pass
    return path


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


def _hdf5_problem(path: Path, rel: str, datasets: Iterable[str]) -> str | None:
    import h5py  # imported late: it costs ~0.2 s and only deep validation needs it

    try:
        with h5py.File(path, "r") as fh:
            for name in datasets:
                obj = fh.get(name)
                if obj is None:
                    return f"dataset {name} missing in {rel}"
                if not isinstance(obj, h5py.Dataset):
                    return f"{name} is not a dataset in {rel}"
                if obj.size:
                    # Read one element: catches data that the header promises but the file lacks.
                    _ = obj[(-1,) * obj.ndim] if obj.ndim else obj[()]
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"not a readable HDF5 file: {rel} ({first})"
    return None


def _sha256_problem(path: Path, rel: str) -> str | None:
    sidecar = path.with_name(path.name + ".sha256")
    try:
        words = sidecar.read_text(encoding="utf-8", errors="replace").split()
    except FileNotFoundError:
        return f"checksum file missing: {rel}.sha256"
    if not words:
        return f"checksum file empty: {rel}.sha256"
    expected = words[0].lower()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != expected:
        return f"sha256 mismatch: {rel}"
    return None


class ValidatorLike(Protocol):
    """What ``validate`` reads of a validator: the spec's model, or the manifest's copy."""

    @property
    def kind(self) -> str: ...

    @property
    def datasets(self) -> Sequence[str]: ...


def validate(production_dir: Path, outputs: Sequence[str], validator: ValidatorLike) -> str | None:
    """None when every output passes ``validator``, else a short reason naming the output.

    Every output must exist and be a non-empty regular file; ``hdf5`` and ``sha256`` then
    apply to every output of the task.
    """
    for rel in outputs:
        path = production_dir / rel
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return f"missing {rel}"
        except OSError as exc:
            raise TransientError(f"cannot stat {path}: {exc}") from exc
        if not path.is_file():
            return f"not a regular file: {rel}"
        if st.st_size == 0:
            return f"empty {rel}"
        try:
            if validator.kind == "hdf5":
                why = _hdf5_problem(path, rel, validator.datasets)
            elif validator.kind == "sha256":
                why = _sha256_problem(path, rel)
            else:
                why = None
        except PermissionError as exc:
            return f"unreadable {rel}: {exc.strerror}"
        except OSError as exc:
            raise TransientError(f"cannot read {path}: {exc}") from exc
        if why:
            return why
    return None


class _Listing:
    """One directory as a single listing: its names, and (lazily) its markers by output.

    The common case, a task whose current marker is present, is an exact-name set lookup;
    marker names are parsed only for a directory where such a lookup missed.
    """

    __slots__ = ("names", "_markers")

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self._markers: dict[str, dict[str, str]] | None = None

    def markers(self, base: str) -> dict[str, str]:
        """Fingerprint -> kind of every marker of output ``base`` in this directory."""
        if self._markers is None:
            index: dict[str, dict[str, str]] = {}
            for name in self.names:
                if name[:1] == "." and (name.endswith(".done") or name.endswith(".adopted")):
                    parsed = _parse_marker(name)
                    if parsed is not None:
                        b, fp, kind = parsed
                        kinds = index.setdefault(b, {})
                        if kinds.get(fp) != DONE:  # .done wins over .adopted if both exist
                            kinds[fp] = kind
            self._markers = index
        return self._markers.get(base, {})


_EMPTY = _Listing(set())


def _listings(production_dir: Path, dirs: Iterable[str]) -> dict[str, _Listing]:
    out: dict[str, _Listing] = {}
    root = str(production_dir)
    for d in dirs:
        if d in out:
            continue
        full = f"{root}/{d}" if d else root
        try:
            out[d] = _Listing(set(os.listdir(full)))
        except (FileNotFoundError, NotADirectoryError):
            out[d] = _EMPTY
        except OSError as exc:
            raise TransientError(f"cannot list {full}: {exc}") from exc
    return out


def _list_dir(root: str, d: str) -> _Listing:
    full = f"{root}/{d}" if d else root
    try:
        return _Listing(set(os.listdir(full)))
    except (FileNotFoundError, NotADirectoryError):
        return _EMPTY
    except OSError as exc:
        raise TransientError(f"cannot list {full}: {exc}") from exc


def observe_outputs(
    production_dir: Path,
    tasks: Sequence[TaskLike],
    validator: ValidatorLike,
    *,
    deep: Callable[[TaskLike], bool] | bool = False,
) -> dict[str, OutputState]:
    """Each task's OutputState, from one listing per distinct output directory.

    No file is opened or stat'ed unless ``deep`` asks for an unmarked task to be validated.
    Listings are streamed: a directory is listed when the first task that needs it is
    observed and dropped after the last one, so memory holds the listings of a few
    directories, not of the whole tree (10^6 tasks: 2 x 10^6 names).
    """
    # How many tasks still need each directory; a listing is dropped when its count hits 0.
    need: dict[str, int] = {}
    for t in tasks:
        outs = t.outputs
        if len(outs) == 1:
            d = outs[0].rpartition("/")[0]
            need[d] = need.get(d, 0) + 1
        else:
            for d in {rel.rpartition("/")[0] for rel in outs}:
                need[d] = need.get(d, 0) + 1
    root = str(production_dir)
    open_: dict[str, _Listing] = {}
    result: dict[str, OutputState] = {}
    complete, missing, stale, unmarked = OutputState.COMPLETE, OutputState.MISSING, OutputState.STALE, OutputState.UNMARKED
    done_suffix, adopted_suffix = "." + DONE, "." + ADOPTED
    adopted = OutputState.ADOPTED

    def listing_of(d: str) -> _Listing:
        got = open_.get(d)
        if got is None:
            got = open_[d] = _list_dir(root, d)
        return got

    for t in tasks:
        outs = t.outputs
        first_head, _s, base = outs[0].rpartition("/")
        listing = open_.get(first_head)
        if listing is None:
            listing = open_[first_head] = _list_dir(root, first_head)
        present = base in listing.names
        if len(outs) > 1:
            heads = {first_head}
            for rel in outs[1:]:
                head, _s, b = rel.rpartition("/")
                heads.add(head)
                if present and b not in listing_of(head).names:
                    present = False
        else:
            heads = None
        if not present:
            state = missing
        else:
            stem = f".{base}.{t.fingerprint}"
            names = listing.names
            if stem + done_suffix in names:
                state = complete
            elif stem + adopted_suffix in names:
                state = adopted
            elif listing.markers(base):
                state = stale
            elif deep(t) if callable(deep) else deep:
                state = unmarked if validate(production_dir, outs, validator) is None else OutputState.INVALID
            else:
                state = unmarked
        result[t.key] = state
        if heads is None:
            left = need[first_head] - 1
            if left:
                need[first_head] = left
            else:
                del open_[first_head]
        else:
            for d in heads:
                left = need[d] - 1
                if left:
                    need[d] = left
                else:
                    open_.pop(d, None)
    return result


def adopted_keys(production_dir: Path, tasks: Sequence[TaskLike]) -> set[str]:
    """Keys whose current-fingerprint marker is ``.adopted`` (not ``.done``); listing only."""
    listings = _listings(production_dir, {t.outputs[0].rpartition("/")[0]: None for t in tasks})
    out: set[str] = set()
    for t in tasks:
        head, _s, base = t.outputs[0].rpartition("/")
        names = listings[head].names
        stem = f".{base}.{t.fingerprint}."
        if stem + ADOPTED in names and stem + DONE not in names:
            out.add(t.key)
    return out


def move_partial(production_dir: Path, task: TaskLike, *, label: str) -> list[Path]:
    """Move the task's existing outputs under ``qa/partial/<key>/<label>/``; never delete.

    Partial writes of a killed job and files that failed validation are evidence; keeping
    them lets a person see what went wrong while the task's output paths are freed for a
    clean rerun. An existing destination gets a numeric suffix rather than being replaced.
    """
    if not label or "/" in label or label in (".", "..") or "\0" in label:
        raise ValueError(f"bad label {label!r}: one path component expected")
    dest_root = production_dir / PARTIAL_DIR / task.key.replace("/", "__") / label
    moved: list[Path] = []
    for rel in task.outputs:
        src = production_dir / rel
        if not os.path.lexists(src):
            continue
        dest = dest_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        candidate = dest
        while os.path.lexists(candidate):
            n += 1
            candidate = dest.with_name(f"{dest.name}.{n}")
        os.replace(src, candidate)
        moved.append(candidate)
    return moved


def output_dirs(tasks: Iterable[TaskLike]) -> list[str]:
    """Distinct directories (relative to the production directory) holding the tasks' outputs."""
    return sorted({rel.rpartition("/")[0] for t in tasks for rel in t.outputs})
