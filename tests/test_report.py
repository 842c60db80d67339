"""Pictures: valid PNGs from a status document and its history; `reconcile report` reads the results branch."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from reconciler.cli import main
from reconciler.results.branch import publish
from reconciler.results.document import build_status, history_line
from reconciler.results.layout import files_for
from reconciler.results.plots import CATEGORIES, heatmap_grid, plots_bytes, write_plots

from .test_results_branch import _children_named_git

PNG = b"\x89PNG\r\n\x1a\n"
REDSHIFTS = (0.5, 1.0, 1.5, 2.0, 3.0)


def synthetic(n_real: int = 20, failing: float = 1.5, passes: int = 12) -> tuple[dict, list[dict]]:
    """A status with one redshift failing for every realization, plus a history of passes."""
    keys = [f"r{r:04d}/z{z:.3f}" for r in range(n_real) for z in REDSHIFTS]
    states = {}
    for i, k in enumerate(keys):
        if k.endswith(f"z{failing:.3f}"):
            states[k] = "failed"
        elif i % 7 == 0:
            states[k] = "running"
        elif i % 11 == 0:
            states[k] = "queued"
        else:
            states[k] = "complete"
    counts = {s: sum(1 for v in states.values() if v == s) for s in ("complete", "running", "queued", "failed")}
    summary = {
        "total": len(keys),
        "counts": counts,
        "progress": counts["complete"] / len(keys),
        "success_rate": counts["complete"] / (counts["complete"] + counts["failed"]),
        "done": False,
        "failures": [{"key": k, "state": "failed", "failures": 4, "reason": "OUT_OF_MEMORY", "log": ""} for k, v in states.items() if v == "failed"],
        "retried": [],
        "excluded": [{"key": "r0003/z0.500", "reason": "bad initial conditions"}],
        "states": states,
    }
    keys_without_excluded = [k for k in keys if k != "r0003/z0.500"]
    summary["states"].pop("r0003/z0.500")
    attempts = {k: (4 if v == "failed" else 1 + (i % 3 == 0)) for i, (k, v) in enumerate(summary["states"].items())}
    runtimes = {k: 30.0 + (i % 17) * 12.5 for i, k in enumerate(keys_without_excluded) if summary["states"][k] == "complete"}
    t0 = 1_700_000_000.0
    status = build_status(summary, production="synthetic", version="v2.0", tag=None, commit="c" * 40, ref="HEAD", machine="local", now=t0 + 3600 * passes, keys=keys_without_excluded, attempts=attempts, runtimes=runtimes)
    history = []
    for p in range(passes + 1):
        frac = p / passes
        line_summary = {"total": len(keys), "progress": frac * summary["progress"], "counts": {"complete": int(frac * counts["complete"]), "running": min(10, len(keys) - int(frac * counts["complete"])), "failed": int(frac * counts["failed"])}}
        history.append(history_line(line_summary, {"submit": 5}, t0 + 3600 * p))
    return status, history


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_valid_pngs(tmp_path: Path) -> None:
    status, history = synthetic()
    written = write_plots(tmp_path / "plots", status, history)
    assert set(written) == {"progress.png", "heatmap.png", "runtimes.png"}
    for name, path in written.items():
        data = path.read_bytes()
        w, h = _png_size(data)
        assert 300 <= w <= 2000 and 200 <= h <= 2000, (name, w, h)
        assert 3_000 < len(data) < 2_000_000, (name, len(data))  # palette PNGs: a few KB
    assert not list((tmp_path / "plots").glob("*.tmp"))


def test_heatmap_shows_a_failing_redshift_as_a_column() -> None:
    status, _ = synthetic(n_real=20, failing=1.5)
    reals, zs, grid = heatmap_grid(status)
    assert reals == list(range(20)) and zs == ["0.500", "1.000", "1.500", "2.000", "3.000"]
    failed = [name for name, _ in CATEGORIES].index("failed")
    excluded = [name for name, _ in CATEGORIES].index("excluded")
    column = zs.index("1.500")
    assert all(row[column] == failed for row in grid)
    assert all(row[c] != failed for row in grid for c in range(len(zs)) if c != column)
    assert grid[3][0] == excluded


def test_plots_of_an_empty_production_still_draw() -> None:
    summary = {"total": 0, "counts": {}, "progress": 1.0, "success_rate": None, "done": True, "failures": [], "retried": [], "excluded": [], "states": {}}
    status = build_status(summary, production="empty", version="v1", tag=None, commit="c", ref="HEAD", machine="local", now=0.0, keys=[])
    for name, data in plots_bytes(status, []).items():
        assert _png_size(data)[0] > 100, name


def test_report_reads_the_results_branch(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, history = synthetic()
    status["production"] = "demo"
    prev = b"".join(json.dumps(h).encode() + b"\n" for h in history[:-1])
    publish(repo, files_for(status, prev, history[-1], [], {}), "status: demo")
    out = tmp_path / "out"
    assert main(["report", "demo", "--repo", str(repo), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["heatmap.png", "progress.png", "runtimes.png"]
    # default output: <production dir>/qa/summary_plots, the production dir from the committed spec
    assert main(["report", "demo", "--repo", str(repo), "--json"]) == 0
    capsys.readouterr()
    assert (repo / "work/productions/demo/qa/summary_plots/progress.png").is_file()
    assert _children_named_git() == []


def test_report_without_status_says_what_to_run(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "demo", "--repo", str(repo), "--output", str(repo / "x")]) == 2
    assert "reconcile once demo" in capsys.readouterr().err


def test_heatmap_of_many_realizations_bins_rows() -> None:
    keys = [f"r{r:04d}/z{z:.3f}" for r in range(3000) for z in (0.5, 1.0)]
    states = dict.fromkeys(keys, "complete")
    states["r1234/z0.500"] = "failed"
    summary = {"total": len(keys), "counts": {"complete": len(keys) - 1, "failed": 1}, "progress": 0.99, "success_rate": 0.99, "done": True, "failures": [], "retried": [], "excluded": [], "states": states}
    status = build_status(summary, production="big", version="v1", tag=None, commit="c", ref="HEAD", machine="local", now=0.0, keys=keys)
    w, h = _png_size(plots_bytes(status, [])["heatmap.png"])
    assert h <= 1300


def _chunks(data: bytes) -> list[bytes]:
    out, pos = [], len(PNG)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return out


def test_pictures_are_deterministic_palette_pngs() -> None:
    """The results branch keeps every blob: the same picture must be the same bytes (no time,
    no version in the metadata), and small (a palette, not RGBA)."""
    status, history = synthetic()
    first, again = plots_bytes(status, history), plots_bytes(status, history)
    assert first == again
    for name, data in first.items():
        chunks = _chunks(data)
        assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND", name
        assert b"PLTE" in chunks, name
        assert data[25] == 3, name  # colour type 3: palette
        assert not {b"tIME", b"tEXt", b"iTXt", b"zTXt"} & set(chunks), (name, chunks)


def test_palette_heatmap_keeps_every_category_colour_exactly() -> None:
    """Quantizing must not fold a rare category colour into a common one: one cell of each."""
    from PIL import Image

    keys = [f"r{r:04d}/z{z:.3f}" for r in range(300) for z in (0.5, 1.0, 1.5)]
    states = dict.fromkeys(keys[:-1], "complete")
    for i, state in enumerate(["failed", "blocked", "retrying", "stale", "missing", "waiting", "staged", "queued", "running", "adopted", "a-newer-state"]):
        states[keys[40 * i + 7]] = state
    summary = {"total": len(keys), "counts": {}, "progress": 0.99, "success_rate": 0.99, "done": False, "failures": [], "retried": [], "excluded": [{"key": keys[-1], "reason": "x"}], "states": states}
    status = build_status(summary, production="rare", version="v1", tag=None, commit="c", ref="HEAD", machine="local", now=0.0, keys=keys[:-1])
    with Image.open(io.BytesIO(plots_bytes(status, [])["heatmap.png"])) as img:
        colours = {c for _, c in img.convert("RGB").getcolors(1 << 16) or []}
    lost = [name for name, c in CATEGORIES if tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) not in colours]
    assert lost == []
