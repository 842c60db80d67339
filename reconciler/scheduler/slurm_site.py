"""What the site's Slurm allows, read: pure parsers of ``sacctmgr`` and ``scontrol show partition|node``.

Used by `reconcile doctor` (the probes run the commands, :mod:`reconciler.doctor.judge`
judges) and by the planner's ceilings for retries that ask more (the node's memory, the
partition's time limit: ``SlurmCLI.site_ceilings``), kept apart from the tools and tested on
output captured from the test cluster (``tests/data/slurm``, see its README), like
:mod:`~reconciler.scheduler.slurm_parse`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

ASSOC_FIELDS = ("Cluster", "Account", "User", "Partition", "MaxSubmit", "MaxJobs", "QOS")
"""``sacctmgr -n -P show assoc user=U format=...``: the per-user limits of each association."""
QOS_FIELDS = ("Name", "MaxSubmitPU", "MaxJobsPU")
"""``sacctmgr -n -P show qos format=...``: the per-user limits of each QOS."""

_UNLIMITED = {"", "unlimited", "infinite", "none", "n/a", "(null)"}


@dataclass(frozen=True)
class AssocRow:
    account: str
    user: str
    partition: str
    max_submit: int | None
    max_jobs: int | None
    qos: tuple[str, ...]


@dataclass(frozen=True)
class QosRow:
    name: str
    max_submit_pu: int | None
    max_jobs_pu: int | None


def _limit(text: str) -> int | None:
    """A limit as sacctmgr prints it: empty (no limit) or a number."""
    t = text.strip()
    return int(t) if t.isdigit() else None


def _rows(text: str, fields: Sequence[str]) -> list[dict[str, str]]:
    out = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) == len(fields):
            out.append(dict(zip(fields, parts, strict=True)))
    return out


def parse_assoc(text: str, fields: Sequence[str] = ASSOC_FIELDS) -> list[AssocRow]:
    """``sacctmgr -n -P show assoc ... format=<fields>`` -> rows; lines of another shape are skipped."""
    return [
        AssocRow(
            r.get("Account", "").strip(),
            r.get("User", "").strip(),
            r.get("Partition", "").strip(),
            _limit(r.get("MaxSubmit", "")),
            _limit(r.get("MaxJobs", "")),
            tuple(q for q in r.get("QOS", "").strip().split(",") if q),
        )
        for r in _rows(text, fields)
    ]


def parse_qos(text: str, fields: Sequence[str] = QOS_FIELDS) -> list[QosRow]:
    """``sacctmgr -n -P show qos format=<fields>`` -> rows."""
    return [QosRow(r["Name"].strip(), _limit(r.get("MaxSubmitPU", "")), _limit(r.get("MaxJobsPU", ""))) for r in _rows(text, fields)]


def parse_minutes(text: str) -> float | None:
    """A Slurm time limit (``UNLIMITED``, ``30``, ``1:30:00``, ``2-00:00:00``) -> minutes; None: unlimited.

    Slurm's forms: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``. Raises
    ValueError on anything else, so a new spelling is noticed rather than read as "unlimited".
    """
    t = text.strip()
    if t.lower() in _UNLIMITED:
        return None
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
        parts = [int(x) for x in t.split(":")]
        parts += [0] * (3 - len(parts))  # D-H, D-H:M, D-H:M:S
        h, m, s = parts
    else:
        parts = [int(x) for x in t.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        elif len(parts) == 3:
            h, m, s = parts
        else:
            raise ValueError(f"not a Slurm time: {text!r}")
    return days * 1440 + h * 60 + m + s / 60


@dataclass(frozen=True)
class Partitions:
    max_minutes: dict[str, float | None]  # name -> MaxTime in minutes, None: unlimited
    default: str | None
    max_mem_mb: dict[str, int | None] = field(default_factory=dict)  # name -> MaxMemPerNode in MB, None: unlimited


def _words(line: str) -> dict[str, str]:
    """One ``-o`` line of scontrol (``Key=Value`` words) -> {key: value}."""
    return dict(w.split("=", 1) for w in line.split() if "=" in w)


def parse_partitions(text: str) -> Partitions:
    """``scontrol show partition -o`` (one line per partition, ``Key=Value`` words) -> Partitions.

    MaxTime in minutes (:func:`parse_minutes`; None: UNLIMITED); MaxMemPerNode in MB where
    the partition caps memory per node (a larger ``--mem`` is refused there).
    """
    limits: dict[str, float | None] = {}
    mem: dict[str, int | None] = {}
    default = None
    for line in text.splitlines():
        kv = _words(line)
        name = kv.get("PartitionName")
        if not name:
            continue
        limits[name] = parse_minutes(kv.get("MaxTime", "UNLIMITED"))
        mem[name] = _limit(kv.get("MaxMemPerNode", ""))
        if kv.get("Default", "").upper() == "YES":
            default = name
    return Partitions(limits, default, mem)


def parse_node_memory(text: str, partition: str | None = None) -> int | None:
    """``scontrol show node -o`` -> the most memory a job may have on one node, in MB.

    A node's is its RealMemory less its MemSpecLimit (memory kept for the system, where
    set); the largest over the nodes listed (of ``partition`` only, by each node's
    ``Partitions=``, when given) is what a retry that asks more memory may ask: Slurm places
    a job on a node big enough, so in a partition of 32 GB and 256 GB nodes a task that needs
    64 GB still runs. A RealMemory of 1 is Slurm's default for a node whose memory was never
    configured: it says nothing and is skipped. None when no node says.
    """
    sizes: list[int] = []
    for line in text.splitlines():
        kv = _words(line)
        if "NodeName" not in kv:
            continue
        if partition is not None and partition not in kv.get("Partitions", "").split(","):
            continue
        real = _limit(kv.get("RealMemory", ""))
        if real is None or real <= 1:
            continue
        sizes.append(real - (_limit(kv.get("MemSpecLimit", "")) or 0))
    return max(sizes) if sizes else None
