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
    where = shlex.quote(str(written.root))
    machine = "" if written.site == FALLBACK_MACHINE else f" --machine {written.site}"
    steps = [f"cd {where}"]
    if written.commit is None:
        files = " ".join(shlex.quote(f) for f in written.files)
        steps.append(f"git add -- {files} && git commit -m 'Config repository'   # reconcile reads what is committed")
    if written.site != FALLBACK_MACHINE:
        steps.append(f"$EDITOR defaults/{written.site}.yaml   # account, output paths: what is commented there")
        steps.append(f"reconcile doctor{machine}          # does the site give what that file says?")
    steps += [
        "reconcile validate --all-machines          # every production on every machine",
        "reconcile plan example                     # what a pass would do here, and why",
        "reconcile watch example --until-done --interval 5",
        f"# then push it to your forge: {WORKFLOW} checks every pull request",
    ]
    return steps


def cmd_init_repo(args: argparse.Namespace) -> int:
    written = write_config_repo(Path(args.directory), args.site, args.pin)
    print(f"wrote a config repository for site {written.site!r} in {written.root}:")
    for rel in written.files:
        print(f"  {rel}")
    if written.commit is not None:
        print(f"initialized a git repository there (branch main) and committed them: {written.commit[:10]}")
    else:
        print(f"not committed: {written.root} is the git repository {written.enclosing}, which is yours to commit to")
    print("next:")
    for step in next_steps(written):
        print(f"  {step}")
    return EXIT_OK


def register(add: Any) -> None:
    p = add("init-repo", cmd_init_repo, f"write a ready config repository ({EXAMPLE}, defaults/, CI workflow); never overwrites", EXAMPLE_USAGE)
    p.add_argument("directory", nargs="?", default=".", metavar="DIR", help="where (default: the current directory); created if missing")
    p.add_argument("--site", choices=SITES, default=FALLBACK_MACHINE, help="machine defaults to start from (default: local)")
    p.add_argument("--pin", default=None, metavar="REQUIREMENT", help=f"what CI pip-installs (default: {default_pin()}, this reconciler); e.g. a git URL")
