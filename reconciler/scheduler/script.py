"""Render the sbatch script and the manifest of one submission.

The script holds no per-task parameter and no value from the task's ``env``: parameters
travel in the manifest (JSON, read by the wrapper by array index) and the environment is
set by the wrapper, so no config value is ever parsed by a shell. ``#SBATCH`` values come
only from validated fields (see spec.models: SlurmValue, Name, EnvName).

One exception, by design: ``environment.setup`` lines (``module load``, ``conda activate``)
are shell by nature. They come from the repository (machine defaults, job type, production),
never from a per-task value, hold no newline (spec.models.Line), and run after the
``#SBATCH`` header (a shell command ends it, so a setup line cannot add an option) and before
the wrapper, with ``set +u`` around them: module and conda scripts read variables that may
be unset, and a job that died in ``conda activate`` would say nothing useful. ``-e`` stays:
a setup line that fails fails the job, before the task runs against the wrong environment.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core.sizing import Request
from reconciler.spec.models import Production

EXPORT_ALLOWLIST = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SLURM_CONF")
TIMEOUT_GRACE_MINUTES = 2
"""Slurm's --time is the task timeout plus this, so the wrapper's own timeout fires first and says so."""


def array_spec(indices: Iterable[int], throttle: int | None = None) -> str:
    """``[0,1,2,5,7,8]`` -> ``0-2,5,7-8``; with a throttle ``%N`` appended."""
    idx = sorted(set(indices))
    if not idx:
        raise ValueError("empty array")
    parts: list[str] = []
    start = prev = idx[0]
    for i in idx[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    spec = ",".join(parts)
    return f"{spec}%{throttle}" if throttle else spec


def parse_array_spec(spec: str) -> tuple[list[int], int | None]:
    """Inverse of array_spec; also reads Slurm's folded ``[5-999%50]`` forms."""
    spec = spec.strip().strip("[]")
    throttle = None
    if "%" in spec:
        spec, t = spec.split("%", 1)
        throttle = int(t)
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        step = 1
        if ":" in part:
            part, s = part.split(":", 1)
            step = int(s)
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1, step))
        else:
            out.append(int(part))
    return out, throttle


def header_lines(header: Iterable[tuple[str, str]]) -> list[str]:
    """``#!/bin/bash`` and one ``#SBATCH --opt=value`` per pair; a value with whitespace or a
    newline is refused (sbatch would split it, or end the header)."""
    lines = ["#!/bin/bash"]
    for opt, val in header:
        if any(c in val for c in "\n\r\0") or " " in val:
            raise ValueError(f"#SBATCH --{opt} value {val!r} contains whitespace or a newline")
        lines.append(f"#SBATCH --{opt}={val}")
    return lines


def slurm_time(hours: float, grace_minutes: int = TIMEOUT_GRACE_MINUTES) -> str:
    """``--time`` for ``hours`` plus the grace (the task timeout's by default), whole minutes up."""
    minutes = math.ceil(hours * 60) + grace_minutes
    days, rem = divmod(minutes, 24 * 60)
    h, m = divmod(rem, 60)
    return f"{days}-{h:02d}:{m:02d}:00" if days else f"{h:02d}:{m:02d}:00"


TOKEN_TAG_LEN = 8
"""Hex digits of the token a job name carries: 32 bits, and the name also holds the
production and the batch, so two lost submissions of one batch never share a name in practice."""

_HEX_TAIL = re.compile(rf"-([0-9a-f]{{{TOKEN_TAG_LEN},}})$")


def token_tag(token: str) -> str:
    """The ``TOKEN_TAG_LEN`` hex digits of a token that its job name carries.

    Tokens are ``<epoch>-<12 hex>`` (engine/apply.py): the tag is the start of the random
    part, so a person can match ``alpha.0003.3f9c0a17`` in squeue to the token in logs/ by
    eye. Any other token (none is made today) gets a digest, so the name stays valid.
    """
    m = _HEX_TAIL.search(token)
    return m.group(1)[:TOKEN_TAG_LEN] if m else hashlib.sha256(token.encode()).hexdigest()[:TOKEN_TAG_LEN]


def job_name(production: str, batch: int, token: str) -> str:
    """``<production>.<batch:04d>.<token tag>``: the submission's token, findable by name.

    The token also travels in ``--comment``, but sacct shows comments only where the site
    set ``AccountingStoreFlags=job_comment``; a job name is recorded everywhere, so a lost
    sbatch answer is found by name after the job left squeue. Slurm's rules for job names
    hold: production names match ``[A-Za-z][A-Za-z0-9._-]{0,63}`` (spec.models.NAME_PATTERN),
    so the name has no whitespace, ``|`` (our squeue/sacct separator), ``%`` or ``/``, and
    stays under 100 characters, well inside what slurmdbd stores (255).
    """
    return f"{production}.{batch:04d}.{token_tag(token)}"


def log_patterns(production_dir: Path, batch: int) -> tuple[str, str]:
    base = production_dir / "logs" / f"batch_{batch:04d}_%A_%a"
    return f"{base}.out", f"{base}.err"


def sbatch_lines(prod: Production) -> list[tuple[str, str]]:
    """(option, value) pairs from the effective resources, in a fixed order."""
    r = prod.resources
    lines: list[tuple[str, str]] = []
    for opt, val in (
        ("account", r.account),
        ("partition", r.partition),
        ("qos", r.qos),
        ("constraint", r.constraint),
        ("nodes", r.nodes_per_job),
        ("ntasks-per-node", r.tasks_per_node),
        ("cpus-per-task", r.cpus_per_task),
        ("gpus-per-node", r.gpus_per_node or None),
    ):
        if val is not None:
            lines.append((opt, str(val)))
    if r.memory_gb is not None:
        lines.append(("mem", f"{max(1, math.ceil(round(r.memory_gb * 1024, 6)))}M"))
    lines.append(("time", slurm_time(prod.execution.timeout_hours)))
    return lines


def request_of(prod: Production) -> Request:
    """What each task of this (stage's) production asks: its memory and its timeout."""
    mem = prod.resources.memory_gb
    return Request(None if mem is None else mem * 1024.0, prod.execution.timeout_hours * 3600.0)


def with_request(prod: Production, request: Request | None) -> Production:
    """The production as a retry that asks ``request`` renders it (its --mem, --time and the
    wrapper's timeout); unchanged for None, the stage's own request."""
    if request is None:
        return prod
    mem = None if request.memory_mb is None else request.memory_mb / 1024.0
    return prod.model_copy(update={
        "resources": prod.resources.model_copy(update={"memory_gb": mem}),
        "execution": prod.execution.model_copy(update={"timeout_hours": request.time_s / 3600.0}),
    })


def export_names(prod: Production) -> list[str]:
    """``#SBATCH --export``: the allowlist, then ``environment.export_env`` (validated EnvNames),
    each once."""
    return [*EXPORT_ALLOWLIST, *(n for n in prod.environment.export_env if n not in EXPORT_ALLOWLIST)]


def render_script(
    prod: Production,
    *,
    batch: int,
    token: str,
    array_indices: Sequence[int],
    manifest: Path,
    production_dir: Path,
    python: str | None = None,
) -> str:
    """The sbatch script of one submission; every dynamic value is validated or quoted."""
    out_pat, err_pat = log_patterns(production_dir, batch)
    header = [
        ("job-name", job_name(prod.production.name, batch, token)),
        ("comment", f"reconciler:{token}"),
        ("array", array_spec(array_indices, prod.execution.array_throttle)),
        ("output", out_pat),
        ("error", err_pat),
        *sbatch_lines(prod),
        ("export", ",".join(export_names(prod))),
    ]
    lines = header_lines(header)
    py = shlex.quote(python or sys.executable)
    lines += [
        "# Generated by reconciler. Task parameters are in the manifest, read by array index.",
        "set -euo pipefail",
    ]
    if prod.environment.setup:
        lines += ["# environment.setup (from the repository: machine, job type, production)", "set +u"]
        lines += list(prod.environment.setup)
        lines += ["set -u"]
    lines += [
        f"exec {py} -m reconciler.wrapper {shlex.quote(str(manifest))} \"${{SLURM_ARRAY_TASK_ID}}\"",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class ManifestTask:
    key: str
    index: int
    argv: tuple[str, ...]
    outputs: tuple[str, ...]
    fingerprint: str
    attempt: int
    lists: Mapping[str, Sequence[str]] = field(default_factory=dict)  # fan-in: list file -> member outputs (relative)
    missing: Sequence[str] = ()  # fan-in on a partial set: the members it runs without


def render_manifest(
    prod: Production,
    *,
    batch: int,
    token: str,
    production_dir: Path,
    tasks: dict[int, ManifestTask],
    generation: int = 0,
) -> str:
    """JSON the wrapper reads: the submission's tasks by batch-local array index.

    ``generation``: of the production's lease this submission was made under (see lease.py),
    so a submission can always be traced to the reconciler that made it."""
    doc: dict[str, Any] = {
        "format": 1,
        "production": prod.production.name,
        "batch": batch,
        "token": token,
        "lease_generation": generation,
        "production_dir": str(production_dir),
        "timeout_s": prod.execution.timeout_hours * 3600.0,
        "memory_mb": request_of(prod).memory_mb,  # what its tasks asked (the ledger's too; a rebuilt one reads it here)
        "env": dict(sorted(prod.the_task.env.items())),
        "compression": prod.outputs.compression,  # the wrapper sets RECONCILER_COMPRESSION
        "shell": prod.the_task.shell,  # the wrapper exports the production dir instead of substituting it
        "container": None if prod.environment.container is None else {
            **prod.environment.container.model_dump(mode="json"),
            "export_env": sorted(prod.environment.export_env),  # podman-hpc passes only what it is told (-e NAME)
        },
        "validator": prod.the_task.validator.model_dump(mode="json"),
        "tasks": {
            str(i): {
                "key": t.key,
                "index": t.index,
                "argv": list(t.argv),
                "outputs": list(t.outputs),
                "fingerprint": t.fingerprint,
                "attempt": t.attempt,
                **({"lists": {k: list(v) for k, v in t.lists.items()}} if t.lists else {}),
                **({"missing": list(t.missing)} if t.missing else {}),
            }
            for i, t in sorted(tasks.items())
        },
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))  # compact: the C encoder, 40k tasks in ms


def worker_log_patterns(production_dir: Path) -> tuple[str, str]:
    base = production_dir / "logs" / "pool" / "worker_%A_%a"
    return f"{base}.out", f"{base}.err"


def render_worker_script(
    prod: Production, *, name: str, token: str, count: int, production_dir: Path, python: str | None = None, export: Sequence[str] = (),
) -> str:
    """The sbatch script of an array of ``count`` pool workers (``reconciler.pool.worker``).

    Its resources are the production's, for ``tasks_side_by_side`` tasks at once (their CPUs
    and memory times that), with ``execution.pool``'s nodes and walltime; it has no setup lines
    of its own: each task runs its own submission's script, setup included. ``export``: names
    the stages it serves export besides the production's (``environment.export_env``), so the
    tasks of each find theirs."""
    pool = prod.execution.pool
    out_pat, err_pat = worker_log_patterns(production_dir)
    r, k = prod.resources, pool.tasks_side_by_side
    scaled = r.model_copy(update={
        "cpus_per_task": r.cpus_per_task * k if r.cpus_per_task else None, "memory_gb": r.memory_gb * k if r.memory_gb else None,
    })
    res = [(o, v) for o, v in sbatch_lines(prod.model_copy(update={"resources": scaled})) if o not in ("nodes", "time")]
    header = [
        ("job-name", name), ("comment", f"reconciler:{token}"), ("array", array_spec(range(count))),
        ("output", out_pat), ("error", err_pat), ("nodes", str(pool.nodes)), *res,
        ("time", slurm_time(pool.walltime_minutes / 60, 0)),
        ("export", ",".join(dict.fromkeys([*export_names(prod), *export]))),
    ]
    lines = header_lines(header)
    argv = [
        python or sys.executable, "-m", "reconciler.pool.worker", str(production_dir),
        "--walltime-s", f"{pool.walltime_minutes * 60:g}", "--margin-s", f"{pool.margin_minutes * 60:g}",
        "--side-by-side", str(pool.tasks_side_by_side), "--lease-s", f"{pool.lease_seconds:g}", "--idle-s", f"{pool.idle_seconds:g}",
    ]
    lines += ["# Generated by reconciler: a pool worker; it claims and runs the pool's tasks.", "set -euo pipefail", "exec " + shlex.join(argv), ""]
    return "\n".join(lines)
