"""`reconcile doctor`: the judgments (pure, no Slurm), the parsers of what sacctmgr and scontrol
print (captured on the test cluster, tests/data/slurm), the probes on this machine's
filesystem, and the verb on the local backend. The verb against the real Slurm test cluster,
with and without stored comments, is in tests/test_loop_slurm.py (marked slurm)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.doctor import judge, probe
from reconciler.doctor.judge import COMMENT_FIX, Check, FsFacts, Level, Limits, Uses
from reconciler.scheduler.slurm_parse import parse_scontrol_config
from reconciler.scheduler.slurm_site import parse_assoc, parse_minutes, parse_partitions, parse_qos

from .conftest import git
from .test_architecture import CORE_STDLIB, EXTERNAL, GRAPH

DATA = Path(__file__).parent / "data" / "slurm"
L = Level


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_judgments_are_pure() -> None:
    """The judge imports only the core's standard-library allowlist and no module of ours: no I/O."""
    assert {name for name, _line in EXTERNAL["reconciler.doctor.judge"]} <= CORE_STDLIB
    assert GRAPH["reconciler.doctor.judge"] == set()


# ---------------------------------------------------------------- Slurm judgments


def test_tools() -> None:
    every = {t: f"/usr/bin/{t}" for t in (*judge.REQUIRED_TOOLS, *judge.LIMIT_TOOLS)}
    assert judge.judge_tools(every).level is L.OK
    no_sacctmgr = judge.judge_tools({**every, "sacctmgr": None})
    assert no_sacctmgr.level is L.WARN and "sacctmgr" in no_sacctmgr.message and no_sacctmgr.fix
    no_sacct = judge.judge_tools({**every, "sacct": None})
    assert no_sacct.level is L.FAIL and "sacct" in no_sacct.message and "module load slurm" in no_sacct.fix


def test_sacct() -> None:
    assert judge.judge_sacct(None).level is L.OK
    down = judge.judge_sacct(read("sacct_dbd_down.stderr").strip().splitlines()[-1])
    assert down.level is L.FAIL and "slurmdbd" in down.fix


def test_comments_from_captured_configs() -> None:
    on = judge.judge_comments(parse_scontrol_config(read("scontrol_show_config.txt"))["AccountingStoreFlags"])
    assert on.level is L.OK and on.fix == ""
    off = judge.judge_comments(parse_scontrol_config(read("scontrol_show_config_no_comment.txt"))["AccountingStoreFlags"])
    assert off.level is L.WARN and off.fix == COMMENT_FIX == (
        "ask admins for AccountingStoreFlags=job_comment; tokens are matched by job name meanwhile"
    )
    assert judge.judge_comments("job_script,job_comment").level is L.OK
    assert judge.judge_comments("job_script").level is L.WARN
    assert judge.judge_comments(None).level is L.WARN


@pytest.mark.parametrize(
    ("site", "machine", "level"),
    [(1001, 1001, L.OK), (5001, 1001, L.OK), (1001, 5001, L.WARN), (None, 1001, L.WARN)],
)
def test_array_size(site: int | None, machine: int, level: Level) -> None:
    c = judge.judge_array_size(site, machine, "defaults/nersc.yaml")
    assert c.level is level
    if site is not None and site < machine:
        assert c.fix == f"set machine.max_array_size: {site} in defaults/nersc.yaml"


def test_job_limits_from_captured_sacctmgr() -> None:
    """The capture with limits set: association MaxSubmit 500 / MaxJobs 50, QOS normal 800 / 40."""
    rows = parse_assoc(read("sacctmgr_assoc_limits.txt"))
    assert {(r.account, r.user, r.max_submit, r.max_jobs, r.qos) for r in rows} == {
        ("reconciler", "root", 500, 50, ("normal",)), ("root", "root", 500, 50, ("normal",))
    }
    (q,) = parse_qos(read("sacctmgr_qos_limits.txt"))
    assert (q.name, q.max_submit_pu, q.max_jobs_pu) == ("normal", 800, 40)
    limits = [Limits("association reconciler/root", 500, 50), Limits("qos normal", 800, 40)]
    too_many = judge.judge_job_limits(limits, 5000, "defaults/site.yaml")
    assert too_many.level is L.FAIL and "500" in too_many.message and "association reconciler/root" in too_many.message
    assert too_many.fix.startswith("set machine.max_queued_tasks: 500")
    fits = judge.judge_job_limits(limits, 500, "defaults/site.yaml")
    assert fits.level is L.OK and "at most 40 run at once (qos normal)" in fits.message


def test_no_job_limits_from_captured_sacctmgr() -> None:
    rows = parse_assoc(read("sacctmgr_assoc.txt"))
    assert rows and all(r.max_submit is None and r.max_jobs is None for r in rows)
    assert parse_qos(read("sacctmgr_qos.txt"))[0].max_submit_pu is None
    assert judge.judge_job_limits([Limits("qos normal")], 10000, "d").level is L.OK
    assert judge.judge_job_limits(None, 10000, "d").level is L.WARN


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("UNLIMITED", None), ("30", 30), ("30:30", 30.5), ("1:30:00", 90), ("2-00:00:00", 2880), ("1-12", 2160), ("1-0:30", 1470)],
)
def test_parse_minutes(text: str, minutes: float | None) -> None:
    assert parse_minutes(text) == minutes


def test_parse_minutes_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError):
        parse_minutes("1:2:3:4")


def test_partitions_against_timeouts() -> None:
    captured = parse_partitions(read("scontrol_show_partition.txt"))
    assert captured.max_minutes == {"debug": None} and captured.default == "debug"
    site = parse_partitions(
        "PartitionName=regular Default=YES MaxTime=12:00:00 State=UP\n"
        "PartitionName=gpu Default=NO MaxTime=2-00:00:00 State=UP\n"
    )
    assert site.max_minutes == {"regular": 720, "gpu": 2880} and site.default == "regular"
    checks = judge.judge_partitions(site.max_minutes, site.default, [
        Uses("fits", None, 11.9),  # 714 + 2 min on the default partition
        Uses("long", "regular", 12.0),  # 720 + 2 > 720: sbatch would refuse it
        Uses("gpu", "gpu", 24.0),
        Uses("typo", "regualr", 1.0),
        Uses("pool", None, 1.0, pool_minutes=720),  # a pool's workers ask for their walltime, no grace
        Uses("poolong", "regular", 1.0, pool_minutes=721),
    ])
    by = {c.name.split(":", 1)[1]: c for c in checks}
    assert by["fits"].level is L.OK and "partition regular" in by["fits"].message
    assert by["long"].level is L.FAIL and by["long"].fix.startswith("set execution.timeout_hours <= 11.9667 for long")
    assert by["gpu"].level is L.OK
    assert by["typo"].level is L.FAIL and "gpu, regular" in by["typo"].fix
    assert by["pool"].level is L.OK and "720 min" in by["pool"].message
    assert by["poolong"].level is L.FAIL and by["poolong"].fix.startswith("set execution.pool.walltime_minutes <= 720 for poolong"), by["poolong"].fix
    assert judge.judge_partitions(None, None, [])[0].level is L.WARN


def test_not_slurm_is_ok() -> None:
    c = judge.not_slurm("local", "local")
    assert c.level is L.OK and "skipped" in c.message


# ---------------------------------------------------------------- filesystem and remote


def test_fs_judgments() -> None:
    good = judge.judge_fs(FsFacts("/p/a", "/p/a", "lustre", skew_s=0.3))
    assert [c.level for c in good] == [L.OK] * 6 and "network file system" in good[0].message
    bad = judge.judge_fs(FsFacts("/p/a", "/p", "nfs4", excl_error="PermissionError: Permission denied"))
    assert [c.level for c in bad] == [L.OK, L.FAIL, L.OK, L.OK, L.OK, L.WARN] and "will be created" in bad[0].message
    no_flock = judge.judge_fs(FsFacts("/p/a", "/p/a", "lustre", flock_error="OSError: Function not implemented", skew_s=5.0))
    assert [c.level for c in no_flock] == [L.OK, L.OK, L.OK, L.OK, L.WARN, L.WARN] and "NTP" in no_flock[5].fix
    assert judge.judge_fs(FsFacts("/p/a", "/p/a", "nfs", skew_s=-400.0))[5].level is L.FAIL


def test_fs_judgments_follow_what_the_lease_uses() -> None:
    """The lease claims by link and renews by os.replace, never by flock: a filesystem without
    hard links FAILs, and flock failing is a WARN about the ledger's SQLite locking only."""
    checks = {c.name.rsplit(":", 1)[1]: c for c in judge.judge_fs(FsFacts("/p/a", "/p/a", "vfat", link_error="os.link failed: PermissionError: Operation not permitted", skew_s=0.0))}
    assert checks["link"].level is L.FAIL and "Operation not permitted" in checks["link"].message
    assert checks["link"].fix == "put the production directory (outputs.base_path) on a filesystem that supports hard links"
    replace = {c.name.rsplit(":", 1)[1]: c for c in judge.judge_fs(FsFacts("/p/a", "/p/a", "x", replace_error="OSError: EIO", skew_s=0.0))}
    assert replace["replace"].level is L.FAIL and replace["link"].level is L.OK
    flock = {c.name.rsplit(":", 1)[1]: c for c in judge.judge_fs(FsFacts("/p/a", "/p/a", "lustre", flock_error="OSError: ENOSYS", skew_s=0.0))}["flock"]
    assert flock.level is L.WARN and "only SQLite's locking of the ledger" in flock.message
    assert "does not use flock" in flock.fix and "two loops" not in flock.fix


def test_remote_judgments() -> None:
    assert judge.judge_remote("reconciler/status", None, None, None).level is L.OK
    assert judge.judge_remote("b", "origin", "git@x:y", None).level is L.OK
    down = judge.judge_remote("b", "origin", "git@x:y", "exit 128: Could not resolve host")
    assert down.level is L.WARN and "git ls-remote origin" in down.fix


def test_exit_code() -> None:
    assert judge.exit_code([Check("a", L.OK, ""), Check("b", L.WARN, "", "x")]) == 0
    assert judge.exit_code([Check("a", L.OK, ""), Check("b", L.FAIL, "", "x")]) == 1


def test_filesystem_probe_here(tmp_path: Path) -> None:
    facts = probe.filesystem(tmp_path / "not" / "yet")
    assert facts.probed == str(tmp_path) and facts.excl_error is None and facts.flock_error is None
    assert facts.link_error is None and facts.replace_error is None
    assert facts.fstype and facts.skew_s is not None and abs(facts.skew_s) < 2
    assert list(tmp_path.iterdir()) == []  # the probe files are gone


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOTSUP])
def test_filesystem_probe_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def no_links(*_a: object, **_k: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    facts = probe.filesystem(tmp_path)
    assert facts.link_error and os.strerror(code) in facts.link_error
    assert facts.replace_error is None  # os.replace is probed all the same
    assert [c.level for c in judge.judge_fs(facts) if c.name.endswith(":link")] == [L.FAIL]
    assert list(tmp_path.iterdir()) == []


def test_filesystem_probe_where_a_link_onto_an_existing_name_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that lets a second link replace the first would let two takers both win."""
    real = os.link

    def clobbering_link(src: object, dst: object, *a: object, **k: object) -> None:
        Path(str(dst)).unlink(missing_ok=True)
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", clobbering_link)
    facts = probe.filesystem(tmp_path)
    assert facts.link_error == "a link onto an existing name succeeded"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_filesystem_probe_unwritable(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    facts = probe.filesystem(ro / "p")
    assert facts.excl_error and "Permission" in facts.excl_error


def test_fstype_longest_mount_wins() -> None:
    mounts = "/dev/sda1 / ext4 rw 0 0\nserver:/x /global\\040cfs nfs4 rw 0 0\nfs /global lustre rw 0 0\n"
    assert probe.fstype(Path("/global cfs/p"), mounts) == "nfs4"
    assert probe.fstype(Path("/global/p"), mounts) == "lustre"
    assert probe.fstype(Path("/home/u"), mounts) == "ext4"


# ---------------------------------------------------------------- the verb, local backend


def doctor(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    return subprocess.run([sys.executable, "-m", "reconciler.cli", "doctor", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)


def test_doctor_on_the_local_backend_skips_slurm_and_is_all_ok(repo: Path) -> None:
    r = doctor(repo, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    levels = {c["check"]: c["level"] for c in doc["checks"]}
    assert set(levels.values()) == {"OK"}, doc
    assert "skipped" in next(c["message"] for c in doc["checks"] if c["check"] == "slurm")
    assert {"results.remote"} | {n for n in levels if n.endswith(":flock")} <= set(levels)


def test_doctor_reports_an_unloadable_production_and_an_unreachable_remote(repo: Path) -> None:
    (repo / "productions" / "broken.yaml").write_text("production:\n  name: broken\n  versoin: 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "broken")
    git(repo, "remote", "add", "origin", str(repo / "no-such-remote"))
    r = doctor(repo)
    assert r.returncode == 0, r.stdout + r.stderr  # WARNs only
    assert "WARN  production:broken: broken does not load" in r.stdout and "reconcile validate" in r.stdout
    assert "WARN  results.remote: remote origin" in r.stdout and "fix: check the network" in r.stdout


def test_doctor_fails_without_slurm_tools_on_a_slurm_machine(repo: Path, tmp_path: Path) -> None:
    env_path = tmp_path / "bin"
    env_path.mkdir()
    (env_path / "git").symlink_to(subprocess.run(["which", "git"], capture_output=True, text=True).stdout.strip())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")} | {"PATH": str(env_path)}
    r = subprocess.run([sys.executable, "-m", "reconciler.cli", "doctor", "--machine", "nersc"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL  slurm.tools: not on PATH: sbatch, squeue, sacct, scancel, scontrol, sacctmgr" in r.stdout
    assert "fix: load Slurm's client tools" in r.stdout
