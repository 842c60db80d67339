"""Site templates that ship with the package: machine defaults a new config repository starts from.

A team keeps its productions in a repository of its own and installs reconciler with pip,
so the starting points (``local``, ``nersc``, a generic ``slurm``) travel as package data
rather than as files of the tool's own checkout. ``local`` is also the fallback machine: a
repository without ``defaults/local.yaml`` runs on this machine with the packaged copy
(``spec.load.load_defaults``), labelled ``<reconciler>/sites/local.yaml`` so that an error
still names the file it came from.

The files ``init-repo`` writes besides the machine defaults (the example production, the CI
workflow, ``.gitignore``, the README) are package data too, under ``repo/``: kept as real
files so that they read, diff and lint as what they are.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

SITES = ("local", "nersc", "slurm")
"""Names of the packaged site templates, in the order the command line offers them."""

FALLBACK_MACHINE = "local"
"""The machine that needs no ``defaults/`` file: its packaged template is used instead."""


def _resource(*parts: str) -> Traversable:
    return files(__name__).joinpath(*parts)


def site_label(name: str) -> str:
    """How errors and ``reconcile show`` name a packaged site file."""
    return f"<reconciler>/sites/{name}.yaml"


def site_text(name: str) -> str:
    """The packaged machine defaults of site ``name`` (one of ``SITES``), as commented YAML."""
    if name not in SITES:
        raise KeyError(f"no packaged site {name!r}; known: {', '.join(SITES)}")
    return _resource(f"{name}.yaml").read_text(encoding="utf-8")


def repo_template(name: str) -> str:
    """A packaged file of a new config repository (``repo/<name>``), as text."""
    return _resource("repo", name).read_text(encoding="utf-8")
