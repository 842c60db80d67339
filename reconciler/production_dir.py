"""Filesystem adapter for a production's directory tree (seed layout)."""

from __future__ import annotations

import json
from pathlib import Path

from ruamel.yaml import YAML

from reconciler.atomic import atomic_write
from reconciler.spec.load import Loaded

SUBDIRS = ("catalogs", "metadata", "logs", "qa", "qa/validation_reports", "qa/summary_plots")


def init_production_dir(loaded: Loaded, version_info: dict) -> Path:
    """Create ``<base>/<name>/{catalogs,metadata,logs,qa}`` and write the effective config."""
    pdir = loaded.production_dir
    for sub in SUBDIRS:
        (pdir / sub).mkdir(parents=True, exist_ok=True)
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    from io import StringIO

    buf = StringIO()
    buf.write(f"# Effective configuration of {loaded.name} (machine {loaded.machine.machine.name}), written by reconcile init.\n")
    yaml.dump(loaded.spec.model_dump(mode="json"), buf)
    atomic_write(pdir / "metadata" / "production_config.yaml", buf.getvalue())
    atomic_write(pdir / "metadata" / "version_info.json", json.dumps(version_info, indent=2, sort_keys=True) + "\n")
    return pdir
