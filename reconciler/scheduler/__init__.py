"""Scheduler adapters: they submit, observe and cancel; they never decide."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.scheduler.base import Scheduler
    from reconciler.spec.models import MachineDefaults


def make_scheduler(machine: MachineDefaults, override: str | None = None) -> Scheduler:
    """The backend the machine defaults name (``--scheduler`` overrides): local, slurm, pyslurm or auto.

    The one place that probes the machine: for ``auto`` and ``pyslurm``, whether pyslurm
    imports and matches the running Slurm (``sinfo --version``). Backends' constructors do
    no I/O, so a test or a dry run can build one without a cluster.
    """
    kind = override or machine.machine.scheduler
    if kind == "local":
        from reconciler.scheduler.local import LocalScheduler

        return LocalScheduler(slots=machine.machine.local_slots)
    from reconciler.scheduler.slurm_pyslurm import choose_backend_name

    kind = choose_backend_name(kind)  # raises UsageError for an explicit pyslurm that cannot work
    if kind == "pyslurm":
        from reconciler.scheduler.slurm_pyslurm import PyslurmScheduler, import_pyslurm

        return PyslurmScheduler(import_pyslurm())
    from reconciler.scheduler.slurm_cli import SlurmCLI

    return SlurmCLI()
