"""Atomic file replacement, in a module with no third-party imports.

The task wrapper writes completion markers with it on compute nodes, once per task, so it
must not pull in the spec loader (pydantic, ruamel) the way ``production_dir`` does. The
local scheduler's spool writes all its state files with it too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, text: str, *, durable: bool = True) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half of one.

    ``durable=False`` skips the fsync: the rename is still atomic for readers, but a crash of
    the machine may leave the old content (or an empty file). Only for state that is made
    visible by a later durable step anyway, such as the task files of a job directory that
    is assembled under a hidden name and renamed into place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
