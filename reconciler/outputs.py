"""The output tree as observed state: each task's OutputState from directory listings.

Whether a task is complete is decided by its completion marker (``reconciler.markers``):
present beside the first output, with the task's fingerprint in its *name*. So one
directory listing answers complete / stale / unmarked / missing for every task in that
directory. On Lustre a stat or an open per task costs a metadata round trip each; a listing
per directory is the only affordable common path. Validators (``reconciler.validators``,
which open files) run only for unmarked tasks the engine asks about (``deep``).

Filesystem errors other than "not there" raise TransientError: a flaky mount must never be
read as "the outputs are missing" and trigger thousands of resubmissions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from typing import Protocol, TypeVar

from reconciler.atomic import atomic_write
from reconciler.core.states import OutputState
from reconciler.errors import TransientError
from reconciler.markers import ADOPTED, DONE, PARTIAL, TaskLike, parse_marker_name
from reconciler.validators import ValidatorLike, validate

PARTIAL_DIR = "qa/partial"
CORRUPT_DIR = "qa/corrupt"
REASON_FILE = "REASON.json"

_T = TypeVar("_T", bound=TaskLike)


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
                if name[:1] == "." and (name.endswith(".done") or name.endswith(".adopted") or name.endswith(".partial")):
                    parsed = parse_marker_name(name)
                    if parsed is not None:
                        b, fp, kind = parsed
                        kinds = index.setdefault(b, {})
                        if kinds.get(fp) != DONE:  # .done wins over .adopted or .partial if both exist
                            kinds[fp] = kind
            self._markers = index
        return self._markers.get(base, {})


_EMPTY = _Listing(set())


def _list_dir(root: str, d: str) -> _Listing:
    full = f"{root}/{d}" if d else root
    try:
        return _Listing(set(os.listdir(full)))
    except (FileNotFoundError, NotADirectoryError):
        return _EMPTY
    except OSError as exc:
        raise TransientError(f"cannot list {full}: {exc}") from exc


def observe_stages(
    production_dir: Path,
    tasks: Sequence[_T],
    validators: Mapping[str, ValidatorLike],
    *,
    deep: Callable[[_T], bool] | bool = False,
    partial: list[str] | None = None,
) -> dict[str, OutputState]:
    """observe_outputs for the tasks of several stages, each judged by its stage's validator
    (``validators`` by stage name; a task's ``stage`` attribute, "" for a one-stage production)."""
    if not tasks:
        return {}
    stage_of = attrgetter("stage")
    if len(validators) == 1 or stage_of(tasks[0]) == stage_of(tasks[-1]) and all(stage_of(t) == stage_of(tasks[0]) for t in tasks):
        return observe_outputs(production_dir, tasks, validators[stage_of(tasks[0])], deep=deep, partial=partial)
    out: dict[str, OutputState] = {}
    for stage, run in groupby(tasks, key=stage_of):  # an expansion's tasks come stage by stage
        out.update(observe_outputs(production_dir, list(run), validators[stage], deep=deep, partial=partial))
    return out


def observe_outputs(
    production_dir: Path,
    tasks: Sequence[_T],
    validator: ValidatorLike,
    *,
    deep: Callable[[_T], bool] | bool = False,
    partial: list[str] | None = None,
) -> dict[str, OutputState]:
    """Each task's OutputState, from one listing per distinct output directory.

    ``partial`` collects the keys of tasks complete by a ``.partial`` marker (a fan-in that ran
    without some members: markers.write_marker), whose markers the caller may then read.

    No file is opened or stat'ed unless ``deep`` asks for an unmarked task to be validated.
    Listings are streamed: a directory is listed when the first task that needs it is
    observed and dropped after the last one, so memory holds the listings of a few
    directories, not of the whole tree (10^6 tasks: 2 x 10^6 names).
    """
    # Tasks are visited directory by directory (their first output's), whatever their order: a
    # stage numbered redshift-major (spec.campaign) would otherwise keep every directory's
    # listing alive and hop between them. With one output per task (the common case) each
    # directory is listed, judged and dropped in turn.
    by_head: dict[str, list[tuple[_T, str]]] = {}
    single = True
    for t in tasks:
        outs = t.outputs
        head, _s, base = outs[0].rpartition("/")
        group = by_head.get(head)
        if group is None:
            group = by_head[head] = []
        group.append((t, base))
        if len(outs) != 1:
            single = False
    if single:
        return _observe_single(production_dir, by_head, validator, deep, partial)
    # How many tasks still need each directory; a listing is dropped when its count hits 0.
    need: dict[str, int] = {}
    for t in tasks:
        for d in {rel.rpartition("/")[0] for rel in t.outputs}:
            need[d] = need.get(d, 0) + 1
    visit = [t for group in by_head.values() for t, _b in group]
    root = str(production_dir)
    open_: dict[str, _Listing] = {}
    result: dict[str, OutputState] = {}
    missing = OutputState.MISSING

    def listing_of(d: str) -> _Listing:
        got = open_.get(d)
        if got is None:
            got = open_[d] = _list_dir(root, d)
        return got

    for t in visit:
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
        result[t.key] = _judged(t, base, listing, production_dir, validator, deep, partial) if present else missing
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


def _observe_single(
    production_dir: Path,
    by_head: dict[str, list[tuple[_T, str]]],
    validator: ValidatorLike,
    deep: Callable[[_T], bool] | bool,
    partial: list[str] | None,
) -> dict[str, OutputState]:
    """observe_outputs for tasks of one output each, grouped by directory (with each output's base name)."""
    root = str(production_dir)
    result: dict[str, OutputState] = {}
    complete, missing, done = OutputState.COMPLETE, OutputState.MISSING, "." + DONE
    for head, group in by_head.items():
        listing = _list_dir(root, head)
        names = listing.names
        for t, base in group:
            if base not in names:
                result[t.key] = missing
            elif f".{base}.{t.fingerprint}{done}" in names:  # the common case, inline: 10^5 tasks a pass
                result[t.key] = complete
            else:
                result[t.key] = _judged(t, base, listing, production_dir, validator, deep, partial)
    return result


def _judged(
    t: _T, base: str, listing: _Listing, production_dir: Path, validator: ValidatorLike, deep: Callable[[_T], bool] | bool, partial: list[str] | None,
) -> OutputState:
    """A task whose outputs are present, by its first output's markers (and its files, if ``deep`` asks)."""
    stem = f".{base}.{t.fingerprint}"
    names = listing.names
    if stem + "." + DONE in names:
        return OutputState.COMPLETE
    if stem + "." + ADOPTED in names:
        return OutputState.ADOPTED
    if stem + "." + PARTIAL in names:
        if partial is not None:
            partial.append(t.key)
        return OutputState.COMPLETE
    if listing.markers(base):
        return OutputState.STALE
    if deep(t) if callable(deep) else deep:
        return OutputState.UNMARKED if validate(production_dir, t.outputs, validator) is None else OutputState.INVALID
    return OutputState.UNMARKED


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


def verify(production_dir: Path, tasks: Iterable[TaskLike], validator: ValidatorLike) -> dict[str, str]:
    """Deep-validate completed tasks' outputs again: key -> what failed, for those that fail.

    The same check the wrapper ran before it wrote the marker, so a failure here means the
    bytes changed after completion (a truncated copy, an overwrite, bit rot), not a bad run.
    This opens every file: the caller bounds how many tasks it asks about.
    """
    problems: dict[str, str] = {}
    for t in tasks:
        why = validate(production_dir, t.outputs, validator)
        if why is not None:
            problems[t.key] = why
    return problems


def move_corrupt(production_dir: Path, task: TaskLike, *, label: str, record: dict[str, object]) -> list[Path]:
    """Move a completed task's outputs *and its markers* under ``qa/corrupt/<key>/<label>/``,
    beside a ``REASON.json`` holding ``record`` (which check failed, when); never delete.

    The markers go first: once they are gone the task no longer reads complete, so a pass
    killed half way leaves outputs that read unmarked (moved aside as partial before the
    rerun), never corrupt outputs that still read complete.
    """
    if not label or "/" in label or label in (".", "..") or "\0" in label:
        raise ValueError(f"bad label {label!r}: one path component expected")
    dest_root = production_dir / CORRUPT_DIR / task.key.replace("/", "__") / label
    dest_root.mkdir(parents=True, exist_ok=True)
    atomic_write(dest_root / REASON_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    head, _s, base = task.outputs[0].rpartition("/")
    marker_dir = production_dir / head if head else production_dir
    try:
        names = os.listdir(marker_dir)
    except FileNotFoundError:
        names = []
    markers = [f"{head}/{n}" if head else n for n in sorted(names) if (p := parse_marker_name(n)) is not None and p[0] == base]
    moved: list[Path] = []
    for rel in [*markers, *task.outputs]:
        src = production_dir / rel
        if not os.path.lexists(src):
            continue
        dest = dest_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        n, candidate = 0, dest
        while os.path.lexists(candidate):  # a second verdict in the same second: keep both
            n += 1
            candidate = dest.with_name(f"{dest.name}.{n}")
        os.replace(src, candidate)
        moved.append(candidate)
    return moved


def output_dirs(tasks: Iterable[TaskLike]) -> list[str]:
    """Distinct directories (relative to the production directory) holding the tasks' outputs."""
    return sorted({rel.rpartition("/")[0] for t in tasks for rel in t.outputs})


class HasInputs(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def inputs(self) -> tuple[str, ...]: ...


def missing_inputs(production_dir: Path, tasks: Iterable[HasInputs]) -> dict[str, str]:
    """For each task with ``inputs`` one of which is absent: key -> the first absent path.
    One listing per input directory, as for outputs; a directory that cannot be listed (gone,
    or EIO on a mount) counts as holding nothing: its tasks wait rather than fail."""
    listings: dict[Path, frozenset[str]] = {}
    out: dict[str, str] = {}
    for task in tasks:
        for text in task.inputs:
            path = Path(text) if text.startswith("/") else production_dir / text
            names = listings.get(path.parent)
            if names is None:
                try:
                    names = frozenset(os.listdir(path.parent))
                except OSError:
                    names = frozenset()
                listings[path.parent] = names
            if path.name not in names:
                out[task.key] = str(path)
                break
    return out
