"""`reconcile doctor`: what this site gives the reconciler, and what to do about what it lacks.

:func:`checkup` runs the probes (:mod:`.probe`, all the I/O) and hands their facts to the
judgments (:mod:`.judge`, pure): Slurm's tools, accounting, comments, MaxArraySize, job
limits and partitions (only for a machine that uses Slurm), then each production
directory's filesystem and the results branch's remote. ``session.doctor`` loads the
machine defaults and the productions at the ref and calls it.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from pathlib import Path

from reconciler.doctor import judge, probe
from reconciler.doctor.judge import Check, Uses
from reconciler.spec.load import Loaded
from reconciler.spec.models import MachineDefaults


def checkup(
    *,
    machine: MachineDefaults,
    defaults_file: str,
    scheduler: str,
    productions: Sequence[Loaded],
    problems: Sequence[tuple[str, str]],
    repo_root: Path,
    status_branch: str,
) -> list[Check]:
    """Every check, in the order the report lists them. ``problems``: (production, message)
    for productions that do not load at the ref (their own checks are skipped)."""
    checks = [judge.load_problem(name, msg) for name, msg in problems]
    if scheduler == "local":
        checks.append(judge.not_slurm(machine.machine.name, scheduler))
    else:
        checks += slurm_checks(machine, defaults_file, productions)
    probed: set[Path] = set()  # productions not created yet share their base directory's probe
    for loaded in productions:
        where = probe.existing_ancestor(loaded.production_dir)
        if where not in probed:
            probed.add(where)
            checks += judge.judge_fs(probe.filesystem(loaded.production_dir))
    checks.append(judge.judge_remote(status_branch, *probe.results_remote(repo_root, status_branch)))
    return checks


def slurm_checks(machine: MachineDefaults, defaults_file: str, productions: Sequence[Loaded]) -> list[Check]:
    found = probe.tools()
    checks = [judge.judge_tools(found)]
    if any(not found.get(t) for t in judge.REQUIRED_TOOLS):
        return checks  # nothing more can be asked of a Slurm whose tools are missing
    checks.append(judge.judge_sacct(probe.sacct_error()))
    config = probe.slurm_config()
    checks.append(judge.judge_comments(config.get("AccountingStoreFlags") if config is not None else None))
    size = config.get("MaxArraySize", "") if config is not None else ""
    checks.append(judge.judge_array_size(int(size) if size.isdigit() else None, machine.machine.max_array_size, defaults_file))
    specs = [(f"{p.name}/{stage}" if stage else p.name, p.stage_spec(stage)) for p in productions for stage in (p.stage_specs or [""])]
    qos = {spec.resources.qos for _n, spec in specs if spec.resources.qos}
    limits = probe.job_limits(getpass.getuser(), qos) if found.get("sacctmgr") else None
    checks.append(judge.judge_job_limits(limits, machine.machine.max_queued_tasks, defaults_file))
    parts = probe.partitions()
    uses = [  # each stage of a campaign its own; a pool's workers ask for their walltime
        Uses(name, spec.resources.partition, spec.execution.timeout_hours, spec.execution.pool.walltime_minutes if spec.execution.mode == "pool" else None)
        for name, spec in specs
    ]
    checks += judge.judge_partitions(parts.max_minutes if parts else None, parts.default if parts else None, uses)
    return checks
