"""The demo campaign's three steps, shipped so `make demo` needs nothing but this package.

They stand in for a covariance-mocks pipeline (productions/mocks.yaml), each a module run
as ``python -m``:

- ``generate`` (also ``python -m reconciler.demo_generator``, the name productions and tests
  have always used): one tiny HDF5 mock catalog per (realization, redshift);
- ``measure``: one summary statistic per catalog, a toy power spectrum in ``.npy``;
- ``covariance``: the statistics of every realization at one redshift, read from the list
  file the task wrapper writes for a fan-in, stacked into a covariance matrix (``.npy``) and
  a picture of its correlation matrix (``.png``).

Each is deterministic (same inputs, same bytes), so a rerun changes nothing downstream,
and each can ``--sleep`` so a human can watch the campaign move.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_npy(path: Path, array: Any) -> None:
    """Write ``array`` to exactly ``path`` (np.save given a name would add ``.npy`` to one
    without it), making its directory first: how measure and covariance write their outputs."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
