"""The doctor's probes: every question `reconcile doctor` asks of this machine, and nothing else.

Each probe returns plain facts (or the error it met, as text): none raises for what it finds,
none judges. The judgments are pure functions in :mod:`reconciler.doctor.judge`; the parsing
of Slurm's answers in :mod:`reconciler.scheduler.slurm_parse` and
:mod:`reconciler.scheduler.slurm_site`. Every command has a timeout, so a hung slurmctld or
an unreachable remote makes the doctor slow, never stuck.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from reconciler.doctor.judge import LIMIT_TOOLS, REQUIRED_TOOLS, FsFacts, Limits
from reconciler.scheduler.slurm_parse import parse_scontrol_config, sacct_time
from reconciler.scheduler.slurm_site import (
    ASSOC_FIELDS,
    QOS_FIELDS,
    Partitions,
    parse_assoc,
    parse_partitions,
    parse_qos,
)

TIMEOUT_S = 20.0


def run(argv: Sequence[str], timeout: float = TIMEOUT_S, env: dict[str, str] | None = None) -> tuple[str, str | None]:
    """(stdout, None) when the command exited 0, else (stdout, what went wrong)."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL, env=env,
        )
    except FileNotFoundError:
        return "", f"{argv[0]} not found on PATH"
    except subprocess.TimeoutExpired:
        return "", f"no answer within {timeout:g} s"
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        return proc.stdout, f"exit {proc.returncode}: {err[-1] if err else 'no message'}"
    return proc.stdout, None


# ---------------------------------------------------------------- Slurm


def tools() -> dict[str, str | None]:
    """Each Slurm tool the reconciler or the doctor uses -> its path on PATH, or None."""
    return {t: shutil.which(t) for t in (*REQUIRED_TOOLS, *LIMIT_TOOLS)}


def sacct_error() -> str | None:
    """None when sacct answers a small query (our allocations of the last hour)."""
    _, err = run(["sacct", "--noheader", "--allocations", "--parsable2", "--format=JobID",
                  f"--starttime={sacct_time(time.time() - 3600)}", "--endtime=now"])
    return err


def slurm_config() -> dict[str, str] | None:
    """``scontrol show config`` as {key: value}, or None when it cannot be read."""
    out, err = run(["scontrol", "show", "config"])
    return None if err else parse_scontrol_config(out)


def job_limits(user: str, extra_qos: Iterable[str]) -> list[Limits] | None:
    """The per-user limits of ``user``'s associations and of the QOS they (or productions) use.

    Limits a parent account sets and the user's row inherits are not repeated on the
    user's row by ``sacctmgr show assoc``; the doctor reads the user's rows only, and says so
    in the source it names. None when sacctmgr cannot be read.
    """
    out, err = run(["sacctmgr", "--noheader", "--parsable2", "show", "assoc", f"user={user}", f"format={','.join(ASSOC_FIELDS)}"])
    if err:
        return None
    rows = parse_assoc(out)
    limits = [
        Limits(f"association {r.account}/{r.user}{'/' + r.partition if r.partition else ''}", r.max_submit, r.max_jobs)
        for r in rows
    ]
    wanted = {q for r in rows for q in r.qos} | set(extra_qos)
    if wanted:
        out, err = run(["sacctmgr", "--noheader", "--parsable2", "show", "qos", f"format={','.join(QOS_FIELDS)}"])
        if err:
            return None
        limits += [Limits(f"qos {q.name}", q.max_submit_pu, q.max_jobs_pu) for q in parse_qos(out) if q.name in wanted]
    return limits


def partitions() -> Partitions | None:
    out, err = run(["scontrol", "show", "partition", "--oneliner"])
    return None if err else parse_partitions(out)


# ---------------------------------------------------------------- filesystem


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def fstype(path: Path, mounts: str | None = None) -> str | None:
    """The type of the filesystem holding ``path``: the longest mount point above it in /proc/mounts."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    real = str(path.resolve())
    best, kind = "", None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = _unescape(parts[1])
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, parts[2]
    return kind


def existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def filesystem(path: Path) -> FsFacts:
    """Create a file with O_EXCL (and check a second create is refused), link it as the lease
    claims (``link_and_replace``), flock it, compare its mtime with this host's clock; then
    remove it all. Runs in ``path`` or, before the production directory exists, in its nearest
    existing ancestor, where it would be created."""
    where = existing_ancestor(path)
    probe = where / f".reconcile-doctor-{socket.gethostname()}-{os.getpid()}"
    excl_error = flock_error = None
    skew: float | None = None
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except OSError as e:
        return FsFacts(str(path), str(where), fstype(where), excl_error=f"{type(e).__name__}: {e.strerror or e}")
    try:
        before = time.time()
        os.write(fd, b"doctor\n")
        os.fsync(fd)
        after = time.time()
        mtime = os.stat(probe).st_mtime  # a stat by path: the server's time on NFS
        skew = mtime - (before + after) / 2  # within +-0.5 s where mtimes have 1 s granularity
        try:
            second = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(second)
            excl_error = "a second O_EXCL create of the same file succeeded"
        except FileExistsError:
            pass
        except OSError as e:
            excl_error = f"a second O_EXCL create failed with {type(e).__name__} instead of FileExistsError"
        link_error, replace_error = link_and_replace(probe)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as e:
            flock_error = f"{type(e).__name__}: {e.strerror or e}"
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)
    return FsFacts(str(path), str(where), fstype(where), excl_error, flock_error, skew, link_error=link_error, replace_error=replace_error)


def link_and_replace(probe: Path) -> tuple[str | None, str | None]:
    """(link_error, replace_error) for what the lease does: ``os.link`` of a complete file onto
    a new name (some filesystems refuse hard links: EPERM, ENOTSUP), then onto that name again,
    which must raise FileExistsError (of two takers one wins); ``os.replace`` of a fresh file
    over an existing one (the heartbeat). Removes every name it made."""
    claim, fresh = probe.with_name(probe.name + ".claim"), probe.with_name(probe.name + ".beat")
    link_error = replace_error = None
    try:
        try:
            os.link(probe, claim)
        except OSError as e:
            link_error = f"os.link failed: {type(e).__name__}: {e.strerror or e}"
            claim.write_bytes(b"claim\n")  # something for os.replace to replace all the same
        else:
            try:
                os.link(probe, claim)
                link_error = "a link onto an existing name succeeded"
            except FileExistsError:
                pass
            except OSError as e:
                link_error = f"a link onto an existing name failed with {type(e).__name__} instead of FileExistsError"
        fresh.write_bytes(b"beat\n")
        os.replace(fresh, claim)
        if claim.read_bytes() != b"beat\n":
            replace_error = "the replaced file does not hold the new content"
    except OSError as e:
        replace_error = f"{type(e).__name__}: {e.strerror or e}"
    finally:
        claim.unlink(missing_ok=True)
        fresh.unlink(missing_ok=True)
    return link_error, replace_error


# ---------------------------------------------------------------- the results branch's remote


def results_remote(repo_root: Path, branch: str) -> tuple[str | None, str | None, str | None]:
    """(remote, url, error) for the results branch: its upstream's remote, else ``origin``,
    else the only remote; (None, None, None) when the repository has no remote."""
    names, err = run(["git", "-C", str(repo_root), "remote"])
    remotes = names.split() if not err else []
    configured, _ = run(["git", "-C", str(repo_root), "config", "--get", f"branch.{branch}.remote"])
    remote = configured.strip() or ("origin" if "origin" in remotes else remotes[0] if len(remotes) == 1 else None)
    if remote is None:
        return None, None, None
    url, _ = run(["git", "-C", str(repo_root), "remote", "get-url", remote])
    quiet = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # never wait for a password nobody types
    _, error = run(["git", "-C", str(repo_root), "ls-remote", "--heads", remote], env=quiet)
    return remote, url.strip(), error
