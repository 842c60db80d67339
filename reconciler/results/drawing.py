"""What every picture shares: the heatmap's state colours, the figure, and the small,
deterministic palette PNG it becomes (``reconciler.results.plots`` says why they are so).

A module of its own so that the campaign heatmap (``stage_heatmap``) and the other
pictures (``plots``) draw alike without importing each other.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from reconciler.errors import UsageError

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
RANK = {name: i for i, (name, _) in enumerate(CATEGORIES)}
DPI = 100
COLOURS = 64
"""Palette size of every PNG (Pillow, which matplotlib depends on, quantizes)."""
MAX_ROWS = 400
"""Heatmap rows at most; more realizations are binned (the figure is at most ~1100 px tall)."""


def figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("pictures need matplotlib (a dependency of reconciler): pip install matplotlib") from None
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def png(fig: Any) -> bytes:
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


def title(status: Mapping[str, Any], what: str) -> str:
    return f"{status.get('production', '?')} {status.get('version', '')}: {what}".strip()
