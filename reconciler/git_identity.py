"""The identity the reconciler commits and tags as where git has none (a fresh login node).

Git refuses to commit or tag without a name and an email. The reconciler's own commits
(status on the results branch) and tags (production/...) must not fail for that, so each
part git cannot find gets a fallback. A configured identity always wins, and so does one
given in the environment (``GIT_AUTHOR_*``, ``GIT_COMMITTER_*``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

DEFAULT_USER = ("reconciler", "reconciler@localhost")


def fallback_identity(repo: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The ``GIT_AUTHOR_*``/``GIT_COMMITTER_*`` variables to add to ``environ`` for git in ``repo``.

    For the name and the email separately: when ``git config user.<part>`` (run with
    ``environ``) has no value, the author and committer variables ``environ`` lacks get the
    reconciler's default; otherwise nothing is added.
    """
    out: dict[str, str] = {}
    for part, default in zip(("name", "email"), DEFAULT_USER, strict=True):
        proc = subprocess.run(["git", "-C", str(repo), "config", f"user.{part}"], capture_output=True, env=dict(environ), check=False)
        if proc.returncode != 0:
            for who in ("AUTHOR", "COMMITTER"):
                var = f"GIT_{who}_{part.upper()}"
                if var not in environ:
                    out[var] = default
    return out
