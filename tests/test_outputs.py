"""Output-tree observation (states from listings alone, partial moves), markers and validators."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from reconciler import outputs
from reconciler.core.states import OutputState
from reconciler.markers import marker_path, read_marker, write_marker
from reconciler.outputs import move_partial, observe_outputs, output_dirs
from reconciler.spec.expand import Task
from reconciler.spec.models import Validator
from reconciler.validators import validate

FP_A = "a" * 24
FP_B = "b" * 24
EXISTS = Validator(kind="exists")
HDF5 = Validator(kind="hdf5", datasets=["galaxies/ra", "galaxies/dec"])


def task(r: int, z: float, fp: str = FP_A, extra: bool = False) -> Task:
    outs = [f"catalogs/r{r:04d}/mock_z{z:.3f}.hdf5"]
    if extra:
        outs.append(f"metadata/r{r:04d}/z{z:.3f}.json")
    return Task(index=r * 10 + int(z * 2), key=f"r{r:04d}/z{z:.3f}", params=(r, z), outputs=tuple(outs), fingerprint=fp)


def write_h5(path: Path, datasets: tuple[str, ...] = ("ra", "dec", "mag"), n: int = 5000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        g = fh.create_group("galaxies")
        for name in datasets:
            g.create_dataset(name, data=np.arange(n, dtype="f8"))


def produce(pdir: Path, t: Task) -> None:
    for rel in t.outputs:
        p = pdir / rel
        if rel.endswith(".hdf5"):
            write_h5(p)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("{}\n")


def mark(pdir: Path, t: Task, **kw: object) -> Path:
    return write_marker(pdir, t, attempt=1, exit_code=0, start=1.0, end=2.0, token="tok", **kw)  # type: ignore[arg-type]


def adopted(pdir: Path, tasks: list[Task]) -> set[str]:
    """Keys the output tree reads as adopted (current-fingerprint marker ``.adopted``, no ``.done``)."""
    return {k for k, st in observe_outputs(pdir, tasks, EXISTS).items() if st is OutputState.ADOPTED}


def test_every_output_state(tmp_path: Path) -> None:
    missing, complete, stale, unmarked = task(0, 0.5), task(0, 1.0), task(1, 0.5), task(1, 1.0)
    half = task(2, 0.5, extra=True)  # first output present, second absent
    for t in (complete, stale, unmarked):
        produce(tmp_path, t)
    (tmp_path / half.outputs[0]).parent.mkdir(parents=True, exist_ok=True)
    write_h5(tmp_path / half.outputs[0])
    mark(tmp_path, complete)
    mark(tmp_path, task(1, 0.5, fp=FP_B))  # an older fingerprint of `stale`
    nodir = task(9, 0.5)
    got = observe_outputs(tmp_path, [missing, complete, stale, unmarked, half, nodir], HDF5)
    assert got == {
        missing.key: OutputState.MISSING,
        complete.key: OutputState.COMPLETE,
        stale.key: OutputState.STALE,
        unmarked.key: OutputState.UNMARKED,
        half.key: OutputState.MISSING,
        nodir.key: OutputState.MISSING,
    }


def test_deep_validation_only_for_unmarked_tasks_asked_about(tmp_path: Path) -> None:
    good, bad, asked_not = task(0, 0.5), task(0, 1.0), task(0, 1.5)
    produce(tmp_path, good)
    (tmp_path / bad.outputs[0]).write_bytes(b"not hdf5 at all")
    (tmp_path / asked_not.outputs[0]).write_bytes(b"not hdf5 either")
    got = observe_outputs(tmp_path, [good, bad, asked_not], HDF5, deep=lambda t: t.key != asked_not.key)
    assert got[good.key] is OutputState.UNMARKED
    assert got[bad.key] is OutputState.INVALID
    assert got[asked_not.key] is OutputState.UNMARKED
    assert observe_outputs(tmp_path, [bad], HDF5, deep=True)[bad.key] is OutputState.INVALID


def test_marked_tree_is_observed_from_listings_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = [task(r, z) for r in range(40) for z in (0.5, 1.0, 1.5)]
    for t in tasks:
        (tmp_path / t.outputs[0]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / t.outputs[0]).write_bytes(b"x")
        mark(tmp_path, t)

    def forbidden(*_a: object, **_k: object) -> None:
        raise AssertionError("observe_outputs touched a file on the common path")

    monkeypatch.setattr(os, "stat", forbidden)
    monkeypatch.setattr(os, "lstat", forbidden)
    monkeypatch.setattr(h5py, "File", forbidden)
    monkeypatch.setattr("builtins.open", forbidden)
    monkeypatch.setattr(outputs, "validate", forbidden)
    calls: list[str] = []
    real_listdir = os.listdir

    def counting_listdir(path: str) -> list[str]:
        calls.append(str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", counting_listdir)
    got = observe_outputs(tmp_path, tasks, HDF5, deep=True)
    assert set(got.values()) == {OutputState.COMPLETE}
    assert len(calls) == 40 == len(set(calls))  # one listing per directory, nothing else
    assert OutputState.ADOPTED not in got.values()


def test_many_tasks_one_entry_each(tmp_path: Path) -> None:
    tasks = [task(r, z) for r in range(500) for z in (0.5, 1.0, 1.5, 2.0)]  # 2,000 tasks, 500 dirs
    for i, t in enumerate(tasks):
        if i % 4 == 3:
            continue  # missing
        p = tmp_path / t.outputs[0]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        if i % 4 == 0:
            mark(tmp_path, t)
        elif i % 4 == 1:
            mark(tmp_path, task(t.params[0], t.params[1], fp=FP_B))
    got = observe_outputs(tmp_path, tasks, EXISTS)
    assert len(got) == len(tasks)
    expected = [OutputState.COMPLETE, OutputState.STALE, OutputState.UNMARKED, OutputState.MISSING]
    assert all(got[t.key] is expected[i % 4] for i, t in enumerate(tasks))
    assert len(output_dirs(tasks)) == 500


def test_marker_name_content_and_replacement(tmp_path: Path) -> None:
    t = task(3, 0.5)
    produce(tmp_path, t)
    old = mark(tmp_path, task(3, 0.5, fp=FP_B))
    path = write_marker(tmp_path, t, attempt=2, exit_code=0, start=10.0, end=12.5, token="tk", host="nodeA")
    assert path == tmp_path / "catalogs/r0003/.mock_z0.500.hdf5.aaaaaaaaaaaaaaaaaaaaaaaa.done"
    assert path == marker_path(tmp_path, t)
    assert not old.exists()  # markers of other fingerprints are dropped
    doc = json.loads(path.read_text())
    assert doc == {
        "key": "r0003/z0.500",
        "index": t.index,
        "fingerprint": FP_A,
        "attempt": 2,
        "exit_code": 0,
        "start": 10.0,
        "end": 12.5,
        "host": "nodeA",
        "token": "tk",
        "adopted": False,
    }
    assert read_marker(tmp_path, t) == doc
    assert read_marker(tmp_path, task(3, 0.5, fp=FP_B)) is None
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == [path.name]


def test_adopted_marker(tmp_path: Path) -> None:
    a, b = task(0, 0.5), task(0, 1.0)
    produce(tmp_path, a)
    produce(tmp_path, b)
    pa = mark(tmp_path, a, adopted=True)
    mark(tmp_path, b)
    assert pa.name.endswith(f".{FP_A}.adopted")
    assert observe_outputs(tmp_path, [a, b], EXISTS) == {a.key: OutputState.ADOPTED, b.key: OutputState.COMPLETE}
    assert adopted(tmp_path, [a, b]) == {a.key}
    assert read_marker(tmp_path, a)["adopted"] is True  # type: ignore[index]
    mark(tmp_path, a)  # a real run supersedes the adoption
    assert adopted(tmp_path, [a, b]) == set()
    assert not pa.exists()


def test_exists_validator(tmp_path: Path) -> None:
    t = task(0, 0.5, extra=True)
    assert validate(tmp_path, t.outputs, EXISTS) == f"missing {t.outputs[0]}"
    produce(tmp_path, t)
    assert validate(tmp_path, t.outputs, EXISTS) is None
    (tmp_path / t.outputs[1]).write_bytes(b"")
    assert validate(tmp_path, t.outputs, EXISTS) == f"empty {t.outputs[1]}"


def test_hdf5_validator_rejects_truncated_and_incomplete_files(tmp_path: Path) -> None:
    t = task(0, 0.5)
    p = tmp_path / t.outputs[0]
    write_h5(p)
    assert validate(tmp_path, t.outputs, HDF5) is None
    size = p.stat().st_size
    with open(p, "r+b") as fh:
        fh.truncate(size // 2)
    why = validate(tmp_path, t.outputs, HDF5)
    assert why is not None and why.startswith(f"not a readable HDF5 file: {t.outputs[0]}")
    write_h5(p, datasets=("dec", "mag"))
    assert validate(tmp_path, t.outputs, HDF5) == f"dataset galaxies/ra missing in {t.outputs[0]}"
    p.write_bytes(b"plain text, no HDF5 signature\n")
    assert (validate(tmp_path, t.outputs, HDF5) or "").startswith("not a readable HDF5 file")
    assert observe_outputs(tmp_path, [t], HDF5, deep=True)[t.key] is OutputState.INVALID


def test_sha256_validator(tmp_path: Path) -> None:
    t = task(0, 0.5)
    v = Validator(kind="sha256")
    p = tmp_path / t.outputs[0]
    p.parent.mkdir(parents=True)
    p.write_bytes(b"payload\n" * 1000)
    sidecar = p.with_name(p.name + ".sha256")
    assert validate(tmp_path, t.outputs, v) == f"checksum file missing: {t.outputs[0]}.sha256"
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    sidecar.write_text(f"{digest}  {p.name}\n")
    assert validate(tmp_path, t.outputs, v) is None
    sidecar.write_text(digest.upper() + "\n")
    assert validate(tmp_path, t.outputs, v) is None
    p.write_bytes(b"tampered\n")
    assert validate(tmp_path, t.outputs, v) == f"sha256 mismatch: {t.outputs[0]}"


def test_move_partial_keeps_every_byte(tmp_path: Path) -> None:
    t = task(3, 0.5, extra=True)
    src = tmp_path / t.outputs[0]
    src.parent.mkdir(parents=True)
    src.write_bytes(b"half a catalog")
    moved = move_partial(tmp_path, t, label="attempt1")
    assert moved == [tmp_path / "qa/partial/r0003__z0.500/attempt1" / t.outputs[0]]
    assert moved[0].read_bytes() == b"half a catalog"
    assert not src.exists()
    src.write_bytes(b"second try")
    (tmp_path / t.outputs[1]).parent.mkdir(parents=True)
    (tmp_path / t.outputs[1]).write_text("meta")
    again = move_partial(tmp_path, t, label="attempt1")
    assert again[0] == moved[0].with_name(moved[0].name + ".1")
    assert again[0].read_bytes() == b"second try" and moved[0].read_bytes() == b"half a catalog"
    assert again[1].read_text() == "meta"
    assert move_partial(tmp_path, t, label="attempt2") == []
    with pytest.raises(ValueError):
        move_partial(tmp_path, t, label="../x")


def test_a_partial_marker_reads_complete_and_is_reported_and_of_another_fingerprint_reads_stale(tmp_path: Path) -> None:
    from reconciler import markers

    t = task(1, 0.5)
    (tmp_path / t.outputs[0]).parent.mkdir(parents=True)
    (tmp_path / t.outputs[0]).write_text("x")
    markers.write_marker(tmp_path, t, attempt=1, exit_code=0, start=0.0, end=1.0, missing=["measure/r0003/z0.500"])
    partial: list[str] = []
    assert observe_outputs(tmp_path, [t], EXISTS, partial=partial) == {t.key: OutputState.COMPLETE}
    assert partial == [t.key] and markers.read_missing(tmp_path, t) == ("measure/r0003/z0.500",)
    assert observe_outputs(tmp_path, [task(1, 0.5, FP_B)], EXISTS) == {t.key: OutputState.STALE}
    markers.write_marker(tmp_path, t, attempt=2, exit_code=0, start=0.0, end=1.0)  # rerun on the full set
    partial.clear()
    assert observe_outputs(tmp_path, [t], EXISTS, partial=partial) == {t.key: OutputState.COMPLETE} and partial == []
    assert [p.name.rsplit(".", 1)[-1] for p in (tmp_path / "catalogs/r0001").glob(".*")] == ["done"]
