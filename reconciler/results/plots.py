"""Progress pictures from a status document and its history (matplotlib, headless).

Three pictures answer the questions people ask of a long production: is it moving
(progress.png, counts over time), where is it stuck (heatmap.png, task state over
realizations x redshifts: a redshift that fails everywhere shows as a column), and is
something slow or flaky (runtimes.png, run times and attempts). They are drawn from the
status document alone, so they can be remade anywhere the results branch is.

matplotlib is imported lazily (it costs ~0.3 s, and most passes draw nothing) and only ``Figure`` objects are used (no pyplot global state), so drawing is headless and
safe inside a long-running watch loop.

Every picture is committed to the results branch, where nothing is ever forgotten, so the
PNGs are made small and deterministic (``_png``): quantized to a palette of ``COLOURS``
colours (the pictures are flat colours and anti-aliased lines: ~3x smaller, hardly a
visible change; the heatmap's category colours are kept exactly) and written without any time or version in their metadata, so that drawing the
same picture twice gives the same bytes, the same git blob, and costs the branch nothing.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.errors import UsageError
from reconciler.results.document import task_keys, task_states

# Heatmap categories, worst first: a cell with several tasks (extra axes) shows its worst one.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("failed", "#d62728"),
    ("blocked", "#e377c2"),
    ("retrying", "#ff7f0e"),
    ("stale", "#9467bd"),
    ("unknown", "#8c564b"),
    ("missing", "#dddddd"),
    ("waiting", "#c5b0d5"),
    ("staged", "#c7c7c7"),
    ("queued", "#aec7e8"),
    ("running", "#1f77b4"),
    ("adopted", "#98df8a"),
    ("complete", "#2ca02c"),
    ("excluded", "#ffffff"),
)
_RANK = {name: i for i, (name, _) in enumerate(CATEGORIES)}
_KEY = re.compile(r"^r(\d+)/z(-?\d+(?:\.\d+)?)(?:/.*)?$")
DPI = 100
COLOURS = 64
"""Palette size of every PNG (Pillow, which matplotlib depends on, quantizes)."""
MAX_ROWS = 400
"""Heatmap rows at most; more realizations are binned (the figure is at most ~1100 px tall)."""


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("pictures need matplotlib (a dependency of reconciler): pip install matplotlib") from None
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig: Any) -> bytes:
    """The figure as a palette PNG with no metadata: the same figure always gives the same bytes.

    The palette is ``COLOURS`` colours chosen for the picture (median cut) plus every
    heatmap category's colour exactly, each pixel mapped to its nearest entry without
    dithering: a lone failed cell keeps its red however few pixels it has.
    """
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, facecolor="white")
    buf.seek(0)
    with Image.open(buf) as rgba:
        rgb = rgba.convert("RGB")
    flat = rgb.quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).getpalette() or []
    exact = [tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for _, c in CATEGORIES] + [(0, 0, 0), (255, 255, 255)]
    # Pillow maps pixels to the palette through a coarse colour cache: a chosen colour close
    # to an exact one could take its pixels, so the exact ones have their neighbourhood alone
    chosen = [c for c in zip(flat[0::3], flat[1::3], flat[2::3], strict=False) if all(max(abs(a - b) for a, b in zip(c, e, strict=True)) > 8 for e in exact)]
    palette = Image.new("P", (1, 1))
    palette.putpalette([v for c in [*dict.fromkeys(exact), *chosen[:COLOURS]] for v in c])
    out = io.BytesIO()
    rgb.quantize(palette=palette, dither=Image.Dither.NONE).save(out, format="PNG", optimize=True)  # no tIME or text chunk
    return out.getvalue()


def _title(status: Mapping[str, Any], what: str) -> str:
    return f"{status.get('production', '?')} {status.get('version', '')}: {what}".strip()


def _time(line: Mapping[str, Any]) -> datetime | None:
    if isinstance(line.get("t"), int | float):
        return datetime.fromtimestamp(float(line["t"]), UTC)
    try:
        t = datetime.fromisoformat(str(line.get("time")))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def progress_png(status: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> bytes:
    """Tasks complete, running, queued and failed over time, with the total as a ceiling."""
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    lines: list[Mapping[str, Any]] = list(history) or [{**status, "time": status.get("updated")}]  # no history yet: the current state
    points = [(t, line) for line in lines if (t := _time(line)) is not None]
    times = [t for t, _ in points]

    def series(*states: str) -> list[int]:
        return [sum(int((line.get("counts") or {}).get(s, 0)) for s in states) for _, line in points]

    style = "-o" if len(points) < 30 else "-"
    for label, states, colour in (
        ("complete", ("complete", "adopted"), "#2ca02c"),
        ("running", ("running",), "#1f77b4"),
        ("queued", ("queued",), "#aec7e8"),
        ("failed", ("failed",), "#d62728"),
        ("retrying", ("retrying",), "#ff7f0e"),
    ):
        ax.plot(times, series(*states), style, label=label, color=colour, markersize=3)
    total = int(status.get("total", 0))
    if total:
        ax.axhline(total, linestyle="--", color="black", linewidth=1, label=f"total ({total})")
    pct = 100.0 * float(status.get("progress", 0.0))
    ax.set_title(_title(status, f"progress ({pct:.1f}% complete)"))
    ax.set_xlabel("time of pass (UTC)")
    ax.set_ylabel("tasks")
    ax.set_ylim(bottom=0, top=max(total, 1) * 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    if not points:
        ax.text(0.5, 0.5, "no passes recorded yet", transform=ax.transAxes, ha="center", va="center")
    fig.autofmt_xdate()
    return _png(fig)


def heatmap_grid(status: Mapping[str, Any]) -> tuple[list[int], list[str], list[list[int]]]:
    """(realizations, redshift labels, category index per cell) from the task table.

    Keys that are not ``rNNNN/zX.XXX[/...]`` are ignored; excluded tasks fill their cells
    with "excluded"; cells with no task at all (never in the product) show as excluded too.
    """
    tasks = status.get("tasks") or {}
    cells: dict[tuple[int, str], int] = {}
    entries = list(zip(task_keys(tasks), task_states(tasks), strict=False))
    entries += [(e["key"], "excluded") for e in status.get("excluded") or ()]
    for key, state in entries:
        m = _KEY.match(key)
        if not m:
            continue
        cell = (int(m.group(1)), m.group(2))
        rank = _RANK.get(state, _RANK["unknown"])
        cells[cell] = min(cells.get(cell, len(CATEGORIES)), rank)
    reals = sorted({r for r, _ in cells})
    zs = sorted({z for _, z in cells}, key=float)
    ri = {r: i for i, r in enumerate(reals)}
    zi = {z: i for i, z in enumerate(zs)}
    grid = [[_RANK["excluded"]] * len(zs) for _ in reals]
    for (r, z), rank in cells.items():
        grid[ri[r]][zi[z]] = rank
    return reals, zs, grid


def heatmap_png(status: Mapping[str, Any]) -> bytes:
    """Task state over realizations (rows) x redshifts (columns), categorical colours."""
    reals, zs, grid = heatmap_grid(status)
    per_row = max(1, math.ceil(len(reals) / MAX_ROWS))
    if per_row > 1:
        # more realizations than pixel rows: bin them, worst state first, so that a lone
        # failure cannot vanish in the image resampling
        grid = [[min(col) for col in zip(*grid[i : i + per_row], strict=True)] for i in range(0, len(grid), per_row)]
        reals = reals[::per_row]
    height = min(12.0, 3.0 + 0.18 * len(reals)) if reals else 4.0
    fig = _figure(min(14.0, 5.0 + 0.6 * len(zs)), height)
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    ax = fig.add_subplot()
    colours = [c for _, c in CATEGORIES]
    cmap = ListedColormap(colours)
    norm = BoundaryNorm([i - 0.5 for i in range(len(CATEGORIES) + 1)], cmap.N)
    if reals:
        ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
        ax.set_xticks(range(len(zs)), [f"{float(z):g}" for z in zs], rotation=90 if len(zs) > 12 else 0)
        step = max(1, math.ceil(len(reals) / 25))
        ticks = list(range(0, len(reals), step))
        ax.set_yticks(ticks, [str(reals[i]) for i in ticks])
        if len(zs) <= 60:
            ax.set_xticks([i - 0.5 for i in range(1, len(zs))], minor=True)
            ax.grid(which="minor", axis="x", color="black", linewidth=0.4, alpha=0.4)
            ax.tick_params(which="minor", length=0)
    else:
        ax.text(0.5, 0.5, "no realization/redshift tasks", transform=ax.transAxes, ha="center", va="center")
    present = sorted({v for row in grid for v in row})
    handles = [Patch(facecolor=CATEGORIES[i][1], edgecolor="grey", label=CATEGORIES[i][0]) for i in present]
    if handles:
        ax.legend(handles=handles, title="task state", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.set_title(_title(status, "task state by realization and redshift"))
    ax.set_xlabel("redshift")
    ax.set_ylabel("realization" if per_row == 1 else f"realization ({per_row} per row, worst state shown)")
    return _png(fig)


def runtimes_png(status: Mapping[str, Any]) -> bytes:
    """Histogram of task run times (log-spaced when they span decades) and of attempts per task."""
    tasks = status.get("tasks") or {}
    runtimes = [float(x) for x in tasks.get("runtime_s") or () if x is not None]
    attempts = [int(x) for x in tasks.get("attempts") or () if x is not None]
    fig = _figure(10, 4)
    left, right = fig.subplots(1, 2)
    if runtimes:
        lo, hi = min(runtimes), max(runtimes)
        if lo > 0 and hi / lo > 100:
            bins: Any = [lo * (hi / lo) ** (i / 30) for i in range(31)]
            left.set_xscale("log")
        else:
            bins = 30
        left.hist(runtimes, bins=bins, color="#1f77b4", edgecolor="white", label=f"{len(runtimes)} tasks")
        median = sorted(runtimes)[len(runtimes) // 2]
        left.axvline(median, color="black", linestyle="--", linewidth=1, label=f"median {median:.1f} s")
        left.legend(fontsize="small")
    else:
        left.text(0.5, 0.5, "no run times recorded yet", transform=left.transAxes, ha="center", va="center")
    left.set_title("run time of the latest attempt")
    left.set_xlabel("run time (s)")
    left.set_ylabel("tasks")
    if attempts:
        top = max(attempts)
        right.hist(attempts, bins=[i - 0.5 for i in range(min(attempts), top + 2)], color="#ff7f0e", edgecolor="white", label=f"{len(attempts)} tasks")
        right.set_xticks(range(min(attempts), top + 1))
        right.legend(fontsize="small")
    else:
        right.text(0.5, 0.5, "no attempts recorded yet", transform=right.transAxes, ha="center", va="center")
    right.set_title("attempts per task")
    right.set_xlabel("submissions")
    right.set_ylabel("tasks")
    fig.suptitle(_title(status, "run times and attempts"))
    return _png(fig)


def plots_bytes(status: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
    """All pictures as PNG bytes by file name (for the results branch, next to status.json)."""
    return {
        "progress.png": progress_png(status, history),
        "heatmap.png": heatmap_png(status),
        "runtimes.png": runtimes_png(status),
    }


def write_plots(out_dir: Path, status: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """Write the pictures into ``out_dir`` (created); returns file name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, data in plots_bytes(status, history).items():
        path = out_dir / name
        tmp = path.with_suffix(".png.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # a reader never sees half a picture
        written[name] = path
    return written
