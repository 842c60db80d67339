"""The demo production's task: a tiny, deterministic mock galaxy catalog in HDF5.

It stands in for a real catalog generator so the whole loop (submit, fail, retry, validate,
mark) can be shown and tested on a laptop. ``--fail-once-every`` makes some tasks fail on
their first attempt only, so a demo shows a retry with backoff; the flag file that
remembers the failure lives in the production tree, so a rerun of the demo from scratch
fails again. The catalog is written straight to its final path, on purpose: a killed
generator leaves a plausible-looking partial file, which is exactly what the completion
marker (written by the wrapper after validation) exists to tell apart.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reconciler.demo_generator", description=__doc__.splitlines()[0])
    p.add_argument("--realization", type=int, required=True)
    p.add_argument("--redshift", type=float, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--n-galaxies", type=int, default=1000)
    p.add_argument("--fail-once-every", type=int, default=0, help="fail the first attempt of every K-th task (0: never)")
    p.add_argument("--fail-once-dir", type=Path, default=None, help="where the fail-once flag files are kept")
    p.add_argument("--sleep", type=float, default=0.2, help="seconds to spend, so the demo is watchable")
    return p


def seed(realization: int, redshift: float) -> int:
    """A seed that depends on both parameters and on nothing else (not on hash randomization)."""
    digest = hashlib.sha256(f"{realization}:{redshift:.6f}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def fails_once(realization: int, redshift: float, every: int) -> bool:
    return every > 0 and (realization * 1000 + round(redshift * 1000)) % every == 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.n_galaxies < 0:
        print("demo: --n-galaxies must be >= 0", file=sys.stderr)
        return 2
    tag = f"r{args.realization:04d} z{args.redshift:.3f}"
    if fails_once(args.realization, args.redshift, args.fail_once_every):
        flag_dir = args.fail_once_dir or args.output.parent
        flag = flag_dir / f"{args.realization}_{args.redshift:.3f}.failed"
        if not flag.exists():
            flag_dir.mkdir(parents=True, exist_ok=True)
            flag.write_text(f"{time.time()}\n")
            print(f"demo: failing once on purpose for {tag}", file=sys.stderr)
            return 1
    if args.sleep > 0:
        time.sleep(args.sleep)

    import h5py
    import numpy as np

    rng = np.random.default_rng(seed(args.realization, args.redshift))
    n = args.n_galaxies
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    mag = 18.0 + 7.0 * rng.power(3.0, n) + 0.5 * args.redshift
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(args.output, "w") as fh:
        fh.attrs["realization"] = args.realization
        fh.attrs["redshift"] = args.redshift
        g = fh.create_group("galaxies")
        g.create_dataset("ra", data=ra, track_times=False)
        g.create_dataset("dec", data=dec, track_times=False)
        g.create_dataset("mag", data=mag, track_times=False)
    print(f"demo: wrote {n} galaxies for {tag} to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
