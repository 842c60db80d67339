"""Output validators: is what a task wrote what it promised (exists, hdf5, sha256)?

They open files, so they run only where that is affordable: in the task wrapper before it
writes the completion marker, and on the reconciler's side for unmarked tasks the engine
asks about (``observe_outputs(deep=...)``), never on the common listing-only path. h5py is
imported only when an hdf5 validator runs (it costs ~0.2 s of every task's start-up).

Filesystem errors other than "not there" raise TransientError: a flaky mount must never be
read as "the outputs are missing" and trigger thousands of resubmissions, nor as "the
outputs are corrupt" (verification would move good data to qa/corrupt/ and rerun it). The
line between the two: an OSError that carries an errno (EIO, ESTALE, EACCES...) is the
filesystem's answer, not the file's content; h5py and ``open`` give format errors none.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from reconciler.errors import TransientError


class ValidatorLike(Protocol):
    """What ``validate`` reads of a validator: the spec's model, or the manifest's copy."""

    @property
    def kind(self) -> str: ...

    @property
    def datasets(self) -> Sequence[str]: ...


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
    except OSError as exc:
        if exc.errno is not None:
            raise  # the filesystem failed (or the file vanished): ``validate`` says which
        return _unreadable(rel, exc)
    except (RuntimeError, ValueError, KeyError) as exc:
        return _unreadable(rel, exc)
    return None


def _unreadable(rel: str, exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"not a readable HDF5 file: {rel} ({first})"


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


def validate(production_dir: Path, outputs: Sequence[str], validator: ValidatorLike) -> str | None:
    """None when every output passes ``validator``, else a short reason naming the output.

    Every output must exist and be a non-empty regular file; ``hdf5`` and ``sha256`` then
    apply to every output of the task. Raises TransientError when the filesystem fails
    (an OSError with an errno other than ENOENT, read permission included): a verdict then
    would move good data aside and rerun it, for a fault that is the site's, not the task's.
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
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # gone between the stat and the open: really missing
                return f"missing {rel}"
            raise TransientError(f"cannot read {path}: {exc}") from exc
        if why:
            return why
    return None
