"""The demo campaign's second step: one summary statistic per catalog.

``python -m reconciler.demo.measure CATALOG --output pk.npy`` reads a catalog made by
``reconciler.demo.generate`` (HDF5, datasets galaxies/ra, galaxies/dec) and writes a toy
angular power spectrum: the galaxies counted in cells of an equal-area grid on the sky, the
overdensity Fourier transformed, and |delta_k|^2 averaged in ``--bins`` rings of |k|
(float64, one value per bin). It stands in for the real measurement of a covariance-mocks
campaign (a power spectrum or a correlation function); what matters to the demo is that it
depends on its catalog only, byte for byte, so the covariance downstream is reproducible.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.demo import write_npy

if TYPE_CHECKING:
    import numpy as np

CELLS = 32
"""Cells per side of the sky grid: 32 x 32 cells of equal area hold ~2 galaxies each for the
demo's 2,000-galaxy catalogs (shot noise dominates, as it would in a real tiny mock)."""

DEFAULT_BINS = 20


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reconciler.demo.measure", description=__doc__.splitlines()[0])
    p.add_argument("catalog", type=Path, help="an HDF5 catalog with galaxies/ra and galaxies/dec (degrees)")
    p.add_argument("--output", type=Path, required=True, help="where the statistic goes (.npy)")
    p.add_argument("--bins", type=int, default=DEFAULT_BINS, help=f"rings of |k| from the fundamental to the Nyquist mode (1 to {CELLS}; default {DEFAULT_BINS})")
    p.add_argument("--sleep", type=float, default=0.2, help="seconds to spend, so the demo is watchable")
    return p


def power_spectrum(ra: np.ndarray, dec: np.ndarray, bins: int = DEFAULT_BINS, cells: int = CELLS) -> np.ndarray:
    """|delta_k|^2 of the galaxies' overdensity on a ``cells`` x ``cells`` equal-area grid,
    averaged in ``bins`` rings of |k| from the fundamental mode to the Nyquist mode.

    Equal area (x = ra/360, y = (sin dec + 1)/2) so that a uniform sky has the same mean
    count in every cell; the k = 0 mode (the mean) is left out. An empty catalog gives zeros.
    """
    import numpy as np

    x = np.asarray(ra, dtype=np.float64) / 360.0
    y = (np.sin(np.radians(np.asarray(dec, dtype=np.float64))) + 1.0) / 2.0
    counts, _xe, _ye = np.histogram2d(x, y, bins=cells, range=[[0.0, 1.0], [0.0, 1.0]])
    nbar = counts.mean()
    delta = counts / nbar - 1.0 if nbar > 0 else np.zeros_like(counts)
    power = np.abs(np.fft.rfft2(delta)) ** 2 / delta.size
    kx = np.fft.fftfreq(cells, d=1.0 / cells)
    ky = np.fft.rfftfreq(cells, d=1.0 / cells)
    k = np.hypot(kx[:, None], ky[None, :]).ravel()
    edges = np.linspace(1.0, cells / 2.0, bins + 1)
    ring = np.searchsorted(edges, k, side="right") - 1
    ring[k == edges[-1]] = bins - 1  # the Nyquist mode belongs to the last ring, not past it
    keep = (ring >= 0) & (ring < bins)
    sums = np.bincount(ring[keep], weights=power.ravel()[keep], minlength=bins)
    modes = np.bincount(ring[keep], minlength=bins)
    return np.asarray(sums / np.maximum(modes, 1), dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 1 <= args.bins <= CELLS:
        print(f"measure: --bins must be between 1 and {CELLS}, got {args.bins}", file=sys.stderr)
        return 2
    if args.sleep > 0:
        time.sleep(args.sleep)

    import h5py
    import numpy as np

    try:
        with h5py.File(args.catalog, "r") as fh:
            ra = np.asarray(fh["galaxies/ra"][()])
            dec = np.asarray(fh["galaxies/dec"][()])
    except (OSError, KeyError) as exc:
        print(f"measure: cannot read galaxies/ra and galaxies/dec from {args.catalog}: {exc}", file=sys.stderr)
        return 1
    pk = power_spectrum(ra, dec, args.bins)
    write_npy(args.output, pk)
    print(f"measure: {len(pk)} bins of P(k) from {len(ra)} galaxies in {args.catalog} to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
