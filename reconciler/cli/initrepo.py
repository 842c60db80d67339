"""`reconcile init-repo`: a ready config repository (productions, machine defaults, CI) in one command.

A new user's first step: the tool is pip-installed, the team's productions live in a
repository of their own, and that repository must validate, plan and run at once. The
writing is the adapter's (``config_repo``); this verb reads the flags and says what was
written and what to do next.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from reconciler.config_repo import EXAMPLE, WORKFLOW, Written, default_pin, write_config_repo
from reconciler.errors import EXIT_OK
from reconciler.sites import FALLBACK_MACHINE, SITES

EXAMPLE_USAGE = (
    "reconcile init-repo productions-repo                # a new repository for this machine\n"
    "  reconcile init-repo productions-repo --site nersc   # with defaults/nersc.yaml to fill in\n"
    "  reconcile init-repo . --site slurm                  # into the repository you are in (not committed)"
)


def next_steps(written: Written) -> list[str]:
    """What to run next, from where the user stands (quoted: the directory is theirs)."""
    steps: list[tuple[str, str]] = [(f"cd {shlex.quote(str(written.root))}", "")]
    if written.commit is None:
        files = " ".join(shlex.quote(f) for f in written.files)
        steps.append((f"git add -- {files} && git commit -m 'Config repository'", "reconcile reads what is committed"))
    if written.site != FALLBACK_MACHINE:
        steps.append((f"$EDITOR defaults/{written.site}.yaml", "account, output paths: what is commented there"))
        steps.append((f"reconcile doctor --machine {written.site}", "does the site give what that file says?"))
    steps += [
        ("reconcile validate --all-machines", "every production on every machine"),
        ("reconcile plan example", "what a pass would do here, and why"),
        ("reconcile watch example --until-done --interval 5", "run it to the end on this machine"),
        ("git push", f"to your forge: {WORKFLOW} checks every pull request"),
    ]
    width = max(len(cmd) for cmd, why in steps if why and len(cmd) < 60)
    return [f"{cmd:<{width}}  # {why}" if why else cmd for cmd, why in steps]


def cmd_init_repo(args: argparse.Namespace) -> int:
    pin, only_version = (args.pin, False) if args.pin else default_pin()
    written = write_config_repo(Path(args.directory), args.site, pin)
    print(f"wrote a config repository for site {written.site!r} in {written.root}:")
    for rel in written.files:
        print(f"  {rel}")
    if written.commit is not None:
        print(f"initialized a git repository there (branch main) and committed them: {written.commit[:10]}")
    else:
        print(f"not committed: they are in your git repository {written.enclosing}; review and commit them yourself")
    if only_version:
        print(
            f"note: CI installs {pin} from your package index (RECONCILER_PIN in {WORKFLOW}).\n"
            "  On PyPI the name `reconciler` is another project's: unless your index serves this one, set\n"
            '  RECONCILER_PIN: "reconciler @ git+https://HOST/ORG/reconciler@TAG" there (or rerun with --pin).'
        )
    print("next:")
    for step in next_steps(written):
        print(f"  {step}")
    return EXIT_OK


def register(add: Any) -> None:
    p = add("init-repo", cmd_init_repo, f"write a ready config repository ({EXAMPLE}, defaults/, CI workflow); never overwrites", EXAMPLE_USAGE)
    p.add_argument("directory", nargs="?", default=".", metavar="DIR", help="where (default: the current directory); created if missing")
    p.add_argument("--site", choices=SITES, default=FALLBACK_MACHINE, help="machine defaults to start from (default: local)")
    p.add_argument("--pin", default=None, metavar="REQUIREMENT", help="what CI pip-installs (default: this reconciler: its git commit when installed from git, else its version)")
