"""Filesystem adapter for a production's directory tree (seed layout)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ruamel.yaml import YAML

from reconciler.spec.load import Loaded

SUBDIRS = ("catalogs", "metadata", "logs", "qa", "qa/validation_reports", "qa/summary_plots")


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
