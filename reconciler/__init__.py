"""reconciler: make a SLURM cluster converge to productions committed in git."""

__version__ = "0.1.0"
