"""Progress pictures from a status document and its history (matplotlib, headless).

Three pictures answer the questions people ask of a long production: is it moving
(progress.png, counts over time), where is it stuck (heatmap.png, task state over
realizations x redshifts: a redshift that fails everywhere shows as a column), and is
something slow or flaky (runtimes.png, run times and attempts). They are drawn from the
status document alone, so they can be remade anywhere the results branch is.

matplotlib is imported lazily (it costs ~0.3 s, and most passes draw nothing) and only ``Figure`` objects are used (no pyplot global state), so drawing is headless and
safe inside a long-running watch loop.

Every picture is committed to the results branch, where nothing is ever forgotten, so the
PNGs are made small and deterministic (``drawing.png``): quantized to a palette of ``COLOURS``
colours (the pictures are flat colours and anti-aliased lines: ~3x smaller, hardly a
visible change; the heatmap's category colours are kept exactly) and written without any time or version in their metadata, so that drawing the
same picture twice gives the same bytes, the same git blob, and costs the branch nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.results.document import task_keys, task_states
from reconciler.results.drawing import CATEGORIES, MAX_ROWS, RANK, figure, png, title
from reconciler.results.stage_heatmap import stage_heatmap_figure

_KEY = re.compile(r"^r(\d+)/z(-?\d+(?:\.\d+)?)(?:/.*)?$")


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
    fig = figure(8, 4.5)
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
    ax.set_title(title(status, f"progress ({pct:.1f}% complete)"))
    ax.set_xlabel("time of pass (UTC)")
    ax.set_ylabel("tasks")
    ax.set_ylim(bottom=0, top=max(total, 1) * 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    if not points:
        ax.text(0.5, 0.5, "no passes recorded yet", transform=ax.transAxes, ha="center", va="center")
    fig.autofmt_xdate()
    return png(fig)


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
        rank = RANK.get(state, RANK["unknown"])
        cells[cell] = min(cells.get(cell, len(CATEGORIES)), rank)
    reals = sorted({r for r, _ in cells})
    zs = sorted({z for _, z in cells}, key=float)
    ri = {r: i for i, r in enumerate(reals)}
    zi = {z: i for i, z in enumerate(zs)}
    grid = [[RANK["excluded"]] * len(zs) for _ in reals]
    for (r, z), rank in cells.items():
        grid[ri[r]][zi[z]] = rank
    return reals, zs, grid


def heatmap_png(status: Mapping[str, Any]) -> bytes:
    """Task state over realizations (rows) x redshifts (columns), categorical colours; for a
    campaign, one panel per stage (``heatmap_figure``)."""
    return png(heatmap_figure(status))


def heatmap_figure(status: Mapping[str, Any]) -> Any:
    """The heatmap as a matplotlib Figure: one axes for a production of one stage, one per
    stage, side by side, for a campaign (``reconciler.results.stage_heatmap``)."""
    if status.get("stages"):
        return stage_heatmap_figure(status)
    reals, zs, grid = heatmap_grid(status)
    per_row = max(1, math.ceil(len(reals) / MAX_ROWS))
    if per_row > 1:
        # more realizations than pixel rows: bin them, worst state first, so that a lone
        # failure cannot vanish in the image resampling
        grid = [[min(col) for col in zip(*grid[i : i + per_row], strict=True)] for i in range(0, len(grid), per_row)]
        reals = reals[::per_row]
    height = min(12.0, 3.0 + 0.18 * len(reals)) if reals else 4.0
    fig = figure(min(14.0, 5.0 + 0.6 * len(zs)), height)
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
    ax.set_title(title(status, "task state by realization and redshift"))
    ax.set_xlabel("redshift")
    ax.set_ylabel("realization" if per_row == 1 else f"realization ({per_row} per row, worst state shown)")
    return fig


def runtimes_png(status: Mapping[str, Any]) -> bytes:
    """Histogram of task run times (log-spaced when they span decades) and of attempts per task."""
    tasks = status.get("tasks") or {}
    runtimes = [float(x) for x in tasks.get("runtime_s") or () if x is not None]
    attempts = [int(x) for x in tasks.get("attempts") or () if x is not None]
    fig = figure(10, 4)
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
    fig.suptitle(title(status, "run times and attempts"))
    return png(fig)


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
