"""The demo campaign's last step: a covariance matrix from every realization at one redshift.

``python -m reconciler.demo.covariance --list FILE --output cov.npy --png cov.png`` reads
the list file the task wrapper writes for a fan-in (one statistic's path per line, in the
campaign's canonical order), stacks the statistics (realizations x bins), and writes their
sample covariance (bins x bins, float64) and a picture of the correlation matrix beside it.

Fewer than two statistics have no covariance: that is refused (exit 2, on stderr) rather
than written as a matrix of NaN that would look like a result. So is a list whose
statistics disagree in length, which means two different measurements were mixed.
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


class BadInput(Exception):
    """Statistics that cannot make a covariance matrix (the message says which and why)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reconciler.demo.covariance", description=__doc__.splitlines()[0])
    p.add_argument("--list", type=Path, required=True, dest="list_file", help="one statistic (.npy) per line")
    p.add_argument("--output", type=Path, required=True, help="where the covariance matrix goes (.npy)")
    p.add_argument("--png", type=Path, default=None, help="where its picture goes (default: OUTPUT with .png)")
    p.add_argument("--redshift", type=float, default=None, help="named in the picture's title")
    p.add_argument("--sleep", type=float, default=0.2, help="seconds to spend, so the demo is watchable")
    return p


def read_list(path: Path) -> list[Path]:
    """The paths a list file names, one per line; blank lines ignored."""
    return [Path(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stack(paths: list[Path]) -> np.ndarray:
    """The statistics as rows of one (len(paths) x bins) array; BadInput for fewer than two,
    an unreadable one, or two of different shapes."""
    import numpy as np

    if len(paths) < 2:
        raise BadInput(f"a covariance needs at least 2 statistics, the list names {len(paths)}")
    rows: list[np.ndarray] = []
    for p in paths:
        try:
            row = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BadInput(f"cannot read statistic {p}: {exc}") from None
        if row.ndim != 1 or (rows and row.shape != rows[0].shape):
            raise BadInput(f"statistic {p} has shape {row.shape}, the first one {rows[0].shape if rows else '(n,)'}")
        rows.append(row.astype(np.float64))
    return np.vstack(rows)


def correlation(cov: np.ndarray) -> np.ndarray:
    """cov / (sigma_i sigma_j); a bin with no variance has no correlation (NaN, drawn blank)."""
    import numpy as np

    sigma = np.sqrt(np.diag(cov))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(cov / np.outer(sigma, sigma), dtype=np.float64)


def draw(corr: np.ndarray, title: str, path: Path) -> None:
    """The correlation matrix as a picture (headless: a Figure, no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(corr, cmap="RdBu_r", vmin=-1.0, vmax=1.0, origin="lower", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="correlation")
    ax.set_xlabel("k bin")
    ax.set_ylabel("k bin")
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})


def title(redshift: float | None, n: int) -> str:
    where = f"z={redshift:.3f} " if redshift is not None else ""
    return f"{where}from {n} realizations"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        paths = read_list(args.list_file)
    except OSError as exc:
        print(f"covariance: cannot read the list {args.list_file}: {exc}", file=sys.stderr)
        return 2
    try:
        data = stack(paths)
    except BadInput as exc:
        print(f"covariance: {args.list_file}: {exc}", file=sys.stderr)
        return 2
    if args.sleep > 0:
        time.sleep(args.sleep)

    import numpy as np

    cov = np.cov(data, rowvar=False)
    png = args.png if args.png is not None else args.output.with_suffix(".png")
    draw(correlation(cov), title(args.redshift, len(paths)), png)
    write_npy(args.output, cov)
    print(f"covariance: {cov.shape[0]}x{cov.shape[1]} matrix from {len(paths)} statistics to {args.output} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
