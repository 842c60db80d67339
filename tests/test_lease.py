"""The production lease (reconciler/lease.py): real files, real processes, no flock anywhere.

A holder on "another host" is written as that host would write it; staleness is measured on
the taker's clock (a test clock here), as the lease promises; fencing is what a deposed
holder sees when it wakes up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from reconciler.errors import Deposed, LeaseHeld
from reconciler.lease import Holder, Lease

from .test_loop_local import env_for, sent_to_scheduler, shrink_demo, wait_quiet


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def other_host_holds(d: Path, generation: int = 1, ttl: float = 60.0) -> Holder:
    """Write lease.json as a reconciler on another login node would have."""
    d.mkdir(parents=True, exist_ok=True)
    h = Holder(generation, "login-elsewhere", 4242, "another-boot", "cafe" * 4, time.time(), ttl)
    (d / "lease.json").write_text(json.dumps(h.to_json()))
    (d / f"lease.claim.{generation}").write_text(json.dumps(h.to_json()))
    (d / f"lease.beat.{generation}").write_text("7")
    return h


def test_one_holder_then_released_then_the_next_generation(tmp_path: Path) -> None:
    a = Lease(tmp_path, 60).acquire()
    try:
        assert a.generation == 1
        with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
            Lease(tmp_path, 60).acquire()
        a.check()  # still ours
    finally:
        a.release()
    b = Lease(tmp_path, 60).acquire()  # released: no wait
    try:
        assert b.generation == 2 and not b.took_over
    finally:
        b.release()


def test_a_quiet_holder_on_another_host_is_taken_over_after_the_ttl_on_our_clock(tmp_path: Path) -> None:
    other_host_holds(tmp_path, generation=3, ttl=60)
    clock = Clock()
    taker = Lease(tmp_path, 60, clock=clock)
    with pytest.raises(LeaseHeld, match="login-elsewhere"):
        taker.acquire()  # first sight: the clock starts
    clock.t += 59
    with pytest.raises(LeaseHeld):
        taker.acquire()
    (tmp_path / "lease.beat.3").write_text("8")  # it renewed: the clock starts again
    clock.t += 30
    with pytest.raises(LeaseHeld):
        taker.acquire()
    clock.t += 60
    taker.acquire()
    try:
        assert taker.generation == 4
        assert "not renewed for 60 s" in taker.took_over
        assert "took over from pid 4242 on login-elsewhere" in (tmp_path / "lease.log").read_text()
        assert not (tmp_path / "lease.beat.3").exists()  # the old generation's beat is tidied
    finally:
        taker.release()


def test_a_holder_whose_process_is_gone_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    from reconciler.lease import boot_id

    h = Holder(5, os.uname().nodename, pid, boot_id(), "dead" * 4, time.time(), 600)
    (tmp_path / "lease.json").write_text(json.dumps(h.to_json()))
    lease = Lease(tmp_path, 60).acquire()
    try:
        assert lease.generation == 6 and "its process is gone" in lease.took_over
    finally:
        lease.release()


def test_a_deposed_holder_stops_acting_and_says_so(tmp_path: Path) -> None:
    a = Lease(tmp_path, 60).acquire()
    b = Lease(tmp_path, 60)
    b.acquire(steal=True)
    try:
        assert b.generation == 2 and json.loads((tmp_path / "lease.json").read_text())["stolen_from"].endswith("(generation 1)")
        with pytest.raises(Deposed, match="taken with --steal by pid"):
            a.check()  # the fence: before its next sbatch or ledger write
        with pytest.raises(Deposed):
            a.acquire()  # and it leaves the production alone from now on
        a.release()  # releasing what is no longer ours changes nothing
        b.check()
    finally:
        b.release()


def test_of_many_takers_of_one_generation_exactly_one_wins(tmp_path: Path) -> None:
    other_host_holds(tmp_path, generation=1, ttl=60)
    clock = Clock()
    takers = [Lease(tmp_path, 60, clock=clock) for _ in range(8)]
    for t in takers:
        with pytest.raises(LeaseHeld):
            t.acquire()
    clock.t += 61  # stale for every one of them at once
    won: list[Lease] = []
    barrier = threading.Barrier(len(takers))

    def race(t: Lease) -> None:
        barrier.wait()
        try:
            t.acquire()
            won.append(t)
        except LeaseHeld:
            pass

    threads = [threading.Thread(target=race, args=(t,)) for t in takers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        assert len(won) == 1 and won[0].generation == 2
    finally:
        for t in won:
            t.release()


def test_the_heartbeat_renews_during_a_long_pass(tmp_path: Path) -> None:
    a = Lease(tmp_path, 0.3).acquire()
    try:
        first = (tmp_path / "lease.beat.1").read_text()
        time.sleep(0.5)  # no pass ran; the heartbeat thread beat at least once
        assert (tmp_path / "lease.beat.1").read_text() != first
    finally:
        a.release()


# ---------------------------------------------------------------- two loops, flock off

NO_FLOCK = """\
import errno, fcntl, os
_ROOT = os.environ["NO_FLOCK_UNDER"]
def _off(real):
    def lock(fd, *args, **kwargs):
        path = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
        if path.startswith(_ROOT):
            raise OSError(errno.ENOSYS, "flock is off on this file system (test)")
        return real(fd, *args, **kwargs)
    return lock
fcntl.flock = _off(fcntl.flock)
fcntl.lockf = _off(fcntl.lockf)
"""
"""flock and lockf fail with ENOSYS under the production directories, as on Lustre mounted
without -o flock. The local backend's spool (the stand-in for slurmctld) is elsewhere and
keeps its own locks."""


def test_two_watch_loops_with_flock_off_one_acts_the_other_takes_over_and_nothing_runs_twice(repo: Path, tmp_path: Path) -> None:
    """A holder that stops (SIGSTOP: alive, silent, as a hung login node) is taken over within
    TTL + one pass; when it wakes it finds itself deposed, says so and acts no more."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_FLOCK)
    env = env_for(tmp_path, PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", NO_FLOCK_UNDER=str(repo / "work"))
    n = shrink_demo(repo)
    cmd = [sys.executable, "-m", "reconciler.cli", "watch", "demo", "--jitter", "0", "--lease-ttl", "3", "--no-status"]
    a = subprocess.Popen([*cmd, "--interval", "2"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert a.stdout is not None
        first = a.stdout.readline()  # A has held the lease for one pass
        assert "demo:" in first, first
        b = subprocess.Popen([*cmd, "--interval", "0.5", "--until-done"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "demo:" in a.stdout.readline()  # B has been waiting; A just ended a pass and sleeps
        a.send_signal(signal.SIGSTOP)  # between passes: a hung loop holds no ledger transaction
        stopped = time.monotonic()
        out, err = b.communicate(timeout=120)
        assert b.returncode == 0, err
        assert "took over the lease of demo from pid" in err and "not renewed for" in err
        took = [ln for ln in out.splitlines() if ln.startswith("[")]
        assert took, out
        a.send_signal(signal.SIGCONT)
        time.sleep(2.0)  # A wakes, checks its lease before acting, and stops acting on demo
        a.send_signal(signal.SIGTERM)
        _, a_err = a.communicate(timeout=30)
        assert "deposed: the lease" in a_err, a_err
        assert time.monotonic() - stopped < 120
    finally:
        for p in (a,):
            if p.poll() is None:
                p.kill()
    counts = sent_to_scheduler(tmp_path / "spool")
    assert len(counts) == n and set(counts.values()) <= {1, 2}  # 2 = the demo's fail-once tasks' retry
    assert counts == Counter({k: 2 if k in {"r0004/z1.500", "r0005/z0.500"} else 1 for k in counts})
    wait_quiet(tmp_path / "spool")
