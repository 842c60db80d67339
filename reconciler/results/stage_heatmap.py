"""The heatmap of a campaign: one panel per stage, side by side, in chain order.

One realization x redshift grid cannot hold a campaign: its stages have other axes
(``generate/r0001/z0.500`` but ``covariance/z0.500``), and what people ask of it is where
the chain is stuck (the catalogs of one redshift failing, the covariance of that redshift
blocked behind them). So each stage gets its own panel, read off the same status
document: a stage over realizations x redshifts is a grid, the panels sharing the
realization axis (a row is the same realization in every stage); a stage over redshift
only is a one-row strip over its redshifts; a stage with neither axis shows its counts as
text. Colours, binning and the palette PNG are the one-stage heatmap's (``drawing``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.results.document import task_keys, task_states
from reconciler.results.drawing import CATEGORIES, MAX_ROWS, RANK, figure, title

_REAL = re.compile(r"r(\d+)")
_Z = re.compile(r"z(-?\d+(?:\.\d+)?)")
_EXCLUDED = RANK["excluded"]
STRIP_ROWS = 12
"""A one-row strip is drawn 1/(rows+1) of its column tall, at least 1/(STRIP_ROWS+1): readable beside 2,000 realizations."""


@dataclass
class Panel:
    """One stage's cells: (realization or None, redshift label or None) -> worst category index."""

    name: str
    total: int
    counts: Mapping[str, int]
    cells: dict[tuple[int | None, str | None], int] = field(default_factory=dict)

    @property
    def reals(self) -> list[int]:
        return sorted({r for r, _ in self.cells if r is not None})

    @property
    def zs(self) -> list[str]:
        return sorted({z for _, z in self.cells if z is not None}, key=float)

    def grid(self, rows: Sequence[int | None], columns: Sequence[str | None], per_row: int = 1) -> list[list[int]]:
        """Category per (row, column); ``per_row`` rows binned into one, worst state first."""
        full = [[self.cells.get((r, z), _EXCLUDED) for z in columns] for r in rows]
        if per_row == 1:
            return full
        return [[min(col) for col in zip(*full[i : i + per_row], strict=True)] for i in range(0, len(full), per_row)]


def stage_panels(status: Mapping[str, Any]) -> list[Panel]:
    """One panel per entry of ``status["stages"]`` (chain order), from the task table and the
    excluded tasks: a key ``<stage>/...`` goes to its stage, its ``rNNNN`` part to a row, its
    ``zX.XXX`` part to a column, any other part (an extra axis) into the same cell (worst shown)."""
    panels = {
        str(st.get("name", "")): Panel(str(st.get("name", "")), int(st.get("total", 0)), st.get("counts") or {})
        for st in status.get("stages") or ()
    }
    tasks = status.get("tasks") or {}
    entries = list(zip(task_keys(tasks), task_states(tasks), strict=False))
    entries += [(str(e["key"]), "excluded") for e in status.get("excluded") or ()]
    for key, state in entries:
        head, _, rest = key.partition("/")
        panel = panels.get(head)
        if panel is None:
            continue
        r: int | None = None
        z: str | None = None
        for part in rest.split("/"):
            if (m := _REAL.fullmatch(part)) is not None:
                r = int(m.group(1))
            elif (m := _Z.fullmatch(part)) is not None:
                z = m.group(1)
        rank = RANK.get(state, RANK["unknown"])
        panel.cells[(r, z)] = min(panel.cells.get((r, z), len(CATEGORIES)), rank)
    return list(panels.values())


def stage_heatmap_figure(status: Mapping[str, Any]) -> Any:
    """The campaign's heatmap as a Figure: one axes per stage (``stage_panels``)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    panels = stage_panels(status)
    rows = sorted({r for p in panels for r in p.reals})
    per_row = max(1, math.ceil(len(rows) / MAX_ROWS))
    binned = rows[::per_row]
    widths = [max(1.2, 0.35 * len(p.zs)) if p.reals or p.zs else 1.6 for p in panels]
    height = min(12.0, 3.0 + 0.18 * len(binned)) if binned else 4.0
    fig = figure(min(16.0, 3.0 + sum(widths)), height)
    cmap = ListedColormap([c for _, c in CATEGORIES])
    norm = BoundaryNorm([i - 0.5 for i in range(len(CATEGORIES) + 1)], cmap.N)
    spec = fig.add_gridspec(1, max(1, len(panels)), width_ratios=widths or [1.0])
    shared: Any = None
    present: set[int] = set()
    for i, p in enumerate(panels):
        zs = p.zs
        columns: list[str | None] = list(zs) or [None]
        if p.reals:
            ax = fig.add_subplot(spec[0, i], sharey=shared)
            grid = p.grid(rows, columns, per_row)
            if shared is None:
                shared = ax
                step = max(1, math.ceil(len(binned) / 25))
                ticks = list(range(0, len(binned), step))
                ax.set_yticks(ticks, [str(binned[t]) for t in ticks])
                ax.set_ylabel("realization" if per_row == 1 else f"realization ({per_row} per row, worst state shown)")
            else:
                ax.tick_params(labelleft=False)
        elif zs:
            strip = spec[0, i].subgridspec(2, 1, height_ratios=[1, max(1, min(len(binned), STRIP_ROWS))])
            ax = fig.add_subplot(strip[0])
            grid = p.grid([None], columns)
            ax.set_yticks([])
        else:
            ax = fig.add_subplot(spec[0, i])
            ax.axis("off")
            lines = [f"{int(n)} {s}" for s, n in p.counts.items() if int(n)] or ["no tasks"]
            ax.text(0.5, 0.98, "\n".join(lines), transform=ax.transAxes, ha="center", va="top", fontsize="small")
            grid = []
        if grid:
            ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
            present |= {v for row in grid for v in row}
            if zs:
                ax.set_xticks(range(len(zs)), [f"{float(z):g}" for z in zs], rotation=90 if len(zs) > 8 else 0)
                ax.set_xlabel("redshift")
            else:
                ax.set_xticks([])
        done = int(p.counts.get("complete", 0)) + int(p.counts.get("adopted", 0))
        ax.set_title(f"{p.name}\n{done}/{p.total}", fontsize="medium")
    if not panels:
        fig.add_subplot().text(0.5, 0.5, "no stages", ha="center", va="center")
    handles = [Patch(facecolor=CATEGORIES[v][1], edgecolor="grey", label=CATEGORIES[v][0]) for v in sorted(present)]
    if handles:
        fig.legend(handles=handles, title="task state", loc="outside right upper", fontsize="small")
    fig.suptitle(title(status, "task state per stage"))
    return fig
