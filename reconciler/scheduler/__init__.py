"""Scheduler adapters: they submit, observe and cancel; they never decide."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from reconciler.errors import UsageError

if TYPE_CHECKING:
    from reconciler.scheduler.base import Scheduler
    from reconciler.spec.models import MachineDefaults


def make_scheduler(machine: MachineDefaults, override: str | None = None) -> Scheduler:
    """The backend the machine defaults name (``--scheduler`` overrides): local, slurm, pyslurm or auto.

    The one place that probes the machine: for ``auto`` and ``slurm``, that Slurm's tools are
    here at all (never falling back to the local backend), and for ``auto`` and ``pyslurm``,
    whether pyslurm imports and matches the running Slurm (``sinfo --version``). Backends' constructors do
    no I/O, so a test or a dry run can build one without a cluster.
    """
    kind = override or machine.machine.scheduler
    if kind == "local":
        from reconciler.scheduler.local import LocalScheduler

        return LocalScheduler(slots=machine.machine.local_slots)
    if kind in ("auto", "slurm") and shutil.which("sbatch") is None:
        # Never the local backend instead: a site's jobs (two GPU nodes each) would run on this host.
        name = machine.machine.name
        raise UsageError(
            f"machine {name!r} (scheduler: {kind}) needs Slurm, and this host has no Slurm tools (sbatch is not on PATH): "
            f"run on a login node of {name}, or choose --machine local to run tasks here"
        )
    from reconciler.scheduler.slurm_pyslurm import choose_backend_name

    kind = choose_backend_name(kind)  # raises UsageError for an explicit pyslurm that cannot work
    if kind == "pyslurm":
        from reconciler.scheduler.slurm_pyslurm import PyslurmScheduler, import_pyslurm

        return PyslurmScheduler(import_pyslurm())
    from reconciler.scheduler.slurm_cli import SlurmCLI

    return SlurmCLI()
