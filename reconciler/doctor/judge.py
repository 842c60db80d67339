"""What `reconcile doctor` makes of the facts the probes gathered: OK, WARN or FAIL, with the fix.

Pure functions of plain values (no I/O, no clock: ``tests/test_doctor.py`` holds this
module to the core's standard-library allowlist), so every judgment is unit-tested without
Slurm, and a new site's quirk is a new test case, not a new cluster. The probes that gather
the facts are in :mod:`reconciler.doctor.probe`.

A FAIL is something that stops the reconciler from working as configured (a tool missing,
a limit the defaults exceed so that sbatch is refused, a filesystem that cannot create a
file atomically); a WARN works but less well than it could (comments not stored, a limit
lower than the defaults, so the planner adapts); OK says what was found.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Level(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str  # what was checked: "slurm.tools", "fs:/scratch/p", ...
    level: Level
    message: str  # what was found
    fix: str = ""  # what to do about it ("" when OK)

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "level": self.level.value, "message": self.message, "fix": self.fix}


REQUIRED_TOOLS = ("sbatch", "squeue", "sacct", "scancel", "scontrol")
"""What the Slurm backends call; without one of them a pass cannot run."""
LIMIT_TOOLS = ("sacctmgr",)
"""Only the doctor uses it, to read the association and QOS limits."""

COMMENT_FIX = "ask admins for AccountingStoreFlags=job_comment; tokens are matched by job name meanwhile"
SKEW_WARN_S = 2.0
"""Clock skew between this host and the production directory's file server above which
mtimes (lease ages, marker times) disagree with this host's clock by more than noise."""
SKEW_FAIL_S = 300.0
"""Above this, a stale lease or a lost sbatch answer's grace period (300 s) is misjudged."""
TIME_GRACE_MINUTES = 2
"""sbatch's --time is the task timeout plus this (scheduler.script.TIMEOUT_GRACE_MINUTES)."""


# ---------------------------------------------------------------- Slurm


def not_slurm(machine: str, scheduler: str) -> Check:
    """A machine on the local backend: the Slurm checks do not apply, which is fine."""
    return Check("slurm", Level.OK, f"machine {machine!r} uses the {scheduler} backend: Slurm checks skipped")


def judge_tools(found: Mapping[str, str | None]) -> Check:
    """``found``: tool -> its path on PATH, or None."""
    missing = [t for t in REQUIRED_TOOLS if not found.get(t)]
    no_limits = [t for t in LIMIT_TOOLS if not found.get(t)]
    if missing:
        return Check(
            "slurm.tools", Level.FAIL, f"not on PATH: {', '.join(missing + no_limits)}",
            "load Slurm's client tools (e.g. `module load slurm`) in the environment that runs reconcile, "
            "or use scheduler: local in the machine defaults",
        )
    if no_limits:
        return Check(
            "slurm.tools", Level.WARN, f"{', '.join(REQUIRED_TOOLS)} found; not on PATH: {', '.join(no_limits)}",
            "put sacctmgr on PATH so job limits can be checked (reconcile itself does not need it)",
        )
    return Check("slurm.tools", Level.OK, f"{', '.join(REQUIRED_TOOLS + LIMIT_TOOLS)} on PATH")


def judge_sacct(error: str | None) -> Check:
    """``error``: None when ``sacct`` answered, else what it said."""
    if error is None:
        return Check("slurm.sacct", Level.OK, "sacct answers (slurmdbd reachable)")
    return Check(
        "slurm.sacct", Level.FAIL, f"sacct does not answer: {error}",
        "finished tasks that left squeue are read from accounting: ask admins whether slurmdbd is "
        "configured and reachable from this host",
    )


def judge_comments(flags: str | None) -> Check:
    """``flags``: AccountingStoreFlags from ``scontrol show config`` (None when unknown)."""
    if flags is None:
        return Check("slurm.comments", Level.WARN, "could not read AccountingStoreFlags (scontrol show config failed)", COMMENT_FIX)
    names = {f.strip().lower() for f in flags.split(",")}
    if "job_comment" in names:
        return Check("slurm.comments", Level.OK, f"job comments are stored in accounting (AccountingStoreFlags={flags})")
    return Check(
        "slurm.comments", Level.WARN,
        f"job comments are not stored in accounting (AccountingStoreFlags={flags or '(none)'}): sacct shows no token",
        COMMENT_FIX,
    )


def judge_array_size(site: int | None, machine: int, defaults_file: str) -> Check:
    """Slurm's MaxArraySize against the machine defaults' ``max_array_size`` (both: indices < it)."""
    if site is None:
        return Check("slurm.max_array_size", Level.WARN, "could not read MaxArraySize (scontrol show config)",
                     "check `scontrol show config | grep MaxArraySize` by hand")
    if site < machine:
        return Check(
            "slurm.max_array_size", Level.WARN,
            f"MaxArraySize is {site} but {defaults_file} says max_array_size: {machine}; the planner uses {site}",
            f"set machine.max_array_size: {site} in {defaults_file}",
        )
    extra = f" (the site allows up to {site})" if site > machine else ""
    return Check("slurm.max_array_size", Level.OK, f"max_array_size {machine} fits MaxArraySize {site}{extra}")


@dataclass(frozen=True)
class Limits:
    """Per-user job limits of one source (an association row or a QOS); None = no limit."""

    source: str  # "association reconciler/alice", "qos normal"
    max_submit: int | None = None  # MaxSubmitJobs / MaxSubmitJobsPerUser: sbatch refused beyond it
    max_jobs: int | None = None  # MaxJobs / MaxJobsPerUser: more wait in the queue


def judge_job_limits(limits: Sequence[Limits] | None, max_queued_tasks: int, defaults_file: str) -> Check:
    """The tightest per-user submit limit against ``max_queued_tasks`` (every array task counts).

    A submit limit below ``max_queued_tasks`` makes sbatch refuse arrays the planner thinks
    fit: FAIL. A running-jobs limit only makes tasks wait: said, not judged.
    """
    if limits is None:
        return Check("slurm.job_limits", Level.WARN, "could not read association and QOS limits (sacctmgr)",
                     "check `sacctmgr show assoc user=$USER` and `sacctmgr show qos` by hand")
    submit = [(x.max_submit, x.source) for x in limits if x.max_submit is not None]
    running = [(x.max_jobs, x.source) for x in limits if x.max_jobs is not None]
    run_note = f"; at most {min(running)[0]} run at once ({min(running)[1]})" if running else ""
    if not submit:
        return Check("slurm.job_limits", Level.OK, f"no per-user submit limit; max_queued_tasks {max_queued_tasks}{run_note}")
    cap, source = min(submit)
    if cap < max_queued_tasks:
        return Check(
            "slurm.job_limits", Level.FAIL,
            f"{source} allows {cap} queued jobs per user, but {defaults_file} says max_queued_tasks: {max_queued_tasks}",
            f"set machine.max_queued_tasks: {cap} (or lower, if other work shares the limit) in {defaults_file}",
        )
    return Check("slurm.job_limits", Level.OK, f"max_queued_tasks {max_queued_tasks} fits {cap} ({source}){run_note}")


@dataclass(frozen=True)
class Uses:
    """A production's use of a partition: its name, the partition (None: the default) and timeout."""

    production: str
    partition: str | None
    timeout_hours: float
    pool_minutes: float | None = None  # pool mode: its workers' walltime is what sbatch asks for

    @property
    def asked(self) -> tuple[int, str, str]:
        """(--time in minutes, what it is made of, the setting to lower)."""
        if self.pool_minutes is not None:
            return math.ceil(self.pool_minutes), f"execution.pool.walltime_minutes {self.pool_minutes:g}", "execution.pool.walltime_minutes"
        return math.ceil(self.timeout_hours * 60) + TIME_GRACE_MINUTES, f"timeout_hours {self.timeout_hours:g} + {TIME_GRACE_MINUTES} min", "execution.timeout_hours"


def judge_partitions(max_minutes: Mapping[str, float | None] | None, default: str | None, uses: Iterable[Uses]) -> list[Check]:
    """Each production's --time (timeout + grace) against its partition's MaxTime.

    ``max_minutes``: partition -> MaxTime in minutes (None: unlimited), or None when
    ``scontrol show partition`` could not be read.
    """
    uses = list(uses)
    if max_minutes is None:
        return [Check("slurm.partitions", Level.WARN, "could not read the partitions (scontrol show partition)",
                      "check `scontrol show partition` by hand")]
    out: list[Check] = []
    for u in uses:
        part = u.partition or default
        asked, made_of, setting = u.asked
        name = f"slurm.partition:{u.production}"
        if part is None:
            out.append(Check(name, Level.FAIL, f"{u.production} names no partition and the cluster has no default",
                             f"set resources.partition for {u.production} (partitions: {', '.join(sorted(max_minutes)) or 'none'})"))
        elif part not in max_minutes:
            out.append(Check(name, Level.FAIL, f"{u.production}: partition {part!r} does not exist",
                             f"set resources.partition to one of: {', '.join(sorted(max_minutes)) or 'none'}"))
        elif (limit := max_minutes[part]) is not None and asked > limit:
            fits = limit if u.pool_minutes is not None else max(limit - TIME_GRACE_MINUTES, 0) / 60
            out.append(Check(name, Level.FAIL,
                             f"{u.production} asks {asked} min ({made_of}) but partition {part} allows {limit:g} min: sbatch refuses it",
                             f"set {setting} <= {fits:g} for {u.production}, or use a partition with a longer MaxTime"))
        else:
            out.append(Check(name, Level.OK, f"{u.production}: {asked} min fits partition {part} "
                                             f"(MaxTime {'unlimited' if limit is None else f'{limit:g} min'})"))
    return out


# ---------------------------------------------------------------- the production directory's filesystem


@dataclass(frozen=True)
class FsFacts:
    """What the probes found out about one production directory's filesystem."""

    path: str  # the production directory
    probed: str  # where the probe ran: the directory, or its nearest existing ancestor
    fstype: str | None  # from /proc/mounts
    excl_error: str | None = None  # None: O_CREAT|O_EXCL created the file, and refused a second time
    flock_error: str | None = None  # None: flock(LOCK_EX|LOCK_NB) worked
    skew_s: float | None = None  # fresh file's mtime minus this host's clock
    link_error: str | None = None  # None: link onto a new name worked, onto an existing one raised FileExistsError
    replace_error: str | None = None  # None: os.replace over an existing file worked
    notes: tuple[str, ...] = field(default_factory=tuple)


LINK_FIX = "put the production directory (outputs.base_path) on a filesystem that supports hard links"
NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "beegfs", "ceph", "fuse.sshfs", "panfs", "wekafs")


def judge_fs(f: FsFacts) -> list[Check]:
    name = f"fs:{f.probed}"
    where = f.probed if f.probed == f.path else f"{f.probed} (where {f.path} will be created)"
    kind = f.fstype or "unknown"
    out = [Check(f"{name}:type", Level.OK, f"{where} is on {kind}{' (a network file system)' if kind in NETWORK_FS else ''}")]
    if f.excl_error is None:
        out.append(Check(f"{name}:create", Level.OK, "atomic create (O_EXCL) works"))
    else:
        out.append(Check(f"{name}:create", Level.FAIL, f"atomic create (O_EXCL) failed: {f.excl_error}",
                         "put outputs.base_path on a filesystem where you can create files (permissions, quota, "
                         "a mount that honours O_EXCL)"))
    # The lease (reconciler/lease.py) claims a generation by linking a complete file onto a
    # new name (one taker wins, the others get FileExistsError) and renews by os.replace:
    # without them no lease can be taken here, so these two FAIL.
    if f.link_error is None:
        out.append(Check(f"{name}:link", Level.OK, "hard links work, and a link onto an existing name is refused (the lease's claim)"))
    else:
        out.append(Check(f"{name}:link", Level.FAIL, f"the lease cannot be claimed here: {f.link_error}", LINK_FIX))
    if f.replace_error is None:
        out.append(Check(f"{name}:replace", Level.OK, "atomic replace (os.replace) works (the lease's heartbeat)"))
    else:
        out.append(Check(f"{name}:replace", Level.FAIL, f"atomic replace (os.replace) failed: {f.replace_error}",
                         "put the production directory (outputs.base_path) on a filesystem that supports atomic rename"))
    # Only SQLite's own locking of the ledger uses file locks; the lease never does.
    if f.flock_error is None:
        out.append(Check(f"{name}:flock", Level.OK, "flock works"))
    else:
        out.append(Check(f"{name}:flock", Level.WARN,
                         f"flock does not work here: {f.flock_error}; this affects only SQLite's locking of the ledger",
                         "nothing for the lease, which does not use flock; for SQLite's locking of the ledger (a "
                         "read-only `status` or `plan` while a pass writes), ask admins to mount with -o flock"))
    if f.skew_s is None:
        out.append(Check(f"{name}:clock", Level.WARN, "could not measure the clock skew (no fresh file)",
                         "check that the file server's and this host's clocks agree (NTP)"))
    else:
        skew = abs(f.skew_s)
        level = Level.OK if skew <= SKEW_WARN_S else Level.WARN if skew <= SKEW_FAIL_S else Level.FAIL
        out.append(Check(f"{name}:clock", level,
                         f"a fresh file's mtime is {round(f.skew_s, 1) or 0.0:+.1f} s from this host's clock",
                         "" if level is Level.OK else "synchronise the clocks of this host and the file server (NTP)"))
    return out


# ---------------------------------------------------------------- the results branch's remote


def judge_remote(branch: str, remote: str | None, url: str | None, error: str | None) -> Check:
    """``remote`` None: none configured (skipped); ``error`` None: ``git ls-remote`` answered."""
    if remote is None:
        return Check("results.remote", Level.OK,
                     f"no remote configured: {branch} stays in this repository (push it with watch --push REMOTE)")
    if error is None:
        return Check("results.remote", Level.OK, f"remote {remote} ({url}) answers: watch --push {remote} can publish {branch}")
    return Check("results.remote", Level.WARN, f"remote {remote} ({url}) does not answer: {error}",
                 f"check the network and credentials (`git ls-remote {remote}`); status stays local until it answers")


def load_problem(production: str, message: str) -> Check:
    """A production that does not load at the ref: its checks are skipped."""
    return Check(f"production:{production}", Level.WARN, f"{production} does not load: {message}",
                 f"run `reconcile validate` and fix productions/{production}.yaml")


def exit_code(checks: Iterable[Check]) -> int:
    """1 when any check FAILed, else 0."""
    return 1 if any(c.level is Level.FAIL for c in checks) else 0
