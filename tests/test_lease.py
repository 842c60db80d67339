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
    """Write the claim and beat as a reconciler on another login node would have."""
    d.mkdir(parents=True, exist_ok=True)
    h = Holder(generation, "login-elsewhere", 4242, "another-boot", time.time(), ttl)
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

    h = Holder(5, os.uname().nodename, pid, boot_id(), time.time(), 600)
    (tmp_path / "lease.claim.5").write_text(json.dumps(h.to_json()))
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
        assert b.generation == 2 and json.loads((tmp_path / "lease.claim.2").read_text())["stolen_from"].endswith("(generation 1)")
        with pytest.raises(Deposed, match=r"taken by pid .* with --steal"):
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


TTL = 3.0
SLACK = 5.0  # B's interval (0.5 s) and the pass that takes over, on two loaded cores


@pytest.mark.parametrize("stop", [signal.SIGSTOP, signal.SIGKILL], ids=["hung", "killed"])
def test_two_watch_loops_with_flock_off_one_acts_the_other_takes_over_and_nothing_runs_twice(
    repo: Path, tmp_path: Path, stop: signal.Signals,
) -> None:
    """Loop A holds the production; loop B waits. A hung A (SIGSTOP: alive and silent, as a
    login node stuck on a dead mount) is taken over within TTL + one pass, and on waking
    finds itself deposed, says so and acts no more; a killed A is taken over at once (its
    process is gone on this host). No task reaches the scheduler twice."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_FLOCK)
    env = env_for(tmp_path, PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", NO_FLOCK_UNDER=str(repo / "work"))
    n = shrink_demo(repo)
    cmd = [sys.executable, "-m", "reconciler.cli", "watch", "demo", "--jitter", "0", "--lease-ttl", str(TTL), "--no-status"]
    a_log = tmp_path / "a.err"
    a = subprocess.Popen([*cmd, "--interval", "2"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=a_log.open("w"), text=True)
    b: subprocess.Popen[str] | None = None
    try:
        assert a.stdout is not None
        first = a.stdout.readline()  # A has held the lease for one pass
        assert "demo:" in first, first
        b = subprocess.Popen([*cmd, "--interval", "0.5", "--until-done"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert b.stdout is not None
        assert "demo:" in a.stdout.readline()  # B has been waiting; A just ended a pass and sleeps
        a.send_signal(stop)  # between passes: a hung loop holds no ledger transaction; a killed one is a zombie until reaped
        stopped = time.monotonic()
        took_over = b.stdout.readline()  # B prints nothing until it holds the lease and has done a pass
        took_s = time.monotonic() - stopped
        assert took_over.startswith("["), took_over
        assert took_s < (TTL if stop == signal.SIGSTOP else 0.0) + SLACK, f"took over after {took_s:.1f} s"
        out, err = b.communicate(timeout=120)
        assert b.returncode == 0, err
        assert "took over the lease of demo from pid" in err
        assert ("not renewed for" if stop == signal.SIGSTOP else "its process is gone") in err, err
        if stop == signal.SIGSTOP:
            a.send_signal(signal.SIGCONT)
            wait_for(a_log, "deposed: the lease")  # A wakes, checks its lease before acting, and stops acting on demo
            a.send_signal(signal.SIGTERM)
            a.communicate(timeout=30)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
    counts = sent_to_scheduler(tmp_path / "spool")
    assert len(counts) == n  # the demo's two fail-once tasks ran twice by design; no task more
    assert counts == Counter({k: 2 if k in {"r0004/z1.500", "r0005/z0.500"} else 1 for k in counts})
    wait_quiet(tmp_path / "spool")


def wait_for(log: Path, text: str, timeout: float = 60) -> None:
    """Until ``text`` appears in the file a process writes its stderr to."""
    deadline = time.time() + timeout
    while text not in log.read_text():
        assert time.time() < deadline, f"{text!r} never appeared in {log}:\n{log.read_text()}"
        time.sleep(0.1)


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_a_holder_stopped_between_its_lease_check_and_its_ledger_write_is_refused_by_the_ledger(repo: Path, tmp_path: Path) -> None:
    """The window a file check cannot close: A passed its lease check, then hung before
    journaling its submission. B takes over and does everything; when A wakes, the ledger
    (which B's generation has written) refuses A's write inside the same transaction, so A
    never calls sbatch."""
    env = env_for(tmp_path)
    n = shrink_demo(repo)
    cmd = [sys.executable, "-m", "reconciler.cli", "watch", "demo", "--jitter", "0", "--lease-ttl", str(TTL), "--no-status"]
    a_log = tmp_path / "a.err"
    a = subprocess.Popen([*cmd, "--interval", "2"], cwd=repo, env={**env, "RECONCILER_FAILPOINT": "after_fence:stop"},
                         stdout=subprocess.PIPE, stderr=a_log.open("w"), text=True)
    try:
        deadline = time.time() + 60
        while process_state(a.pid) != "T":  # A stopped itself between check and write
            assert time.time() < deadline and a.poll() is None, "A never reached the failpoint"
            time.sleep(0.05)
        b = subprocess.run([*cmd, "--interval", "0.5", "--until-done"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert b.returncode == 0, b.stderr
        assert "not renewed for" in b.stderr
        a.send_signal(signal.SIGCONT)
        wait_for(a_log, "deposed: generation 2 of the production's lease has written the ledger")
        a.send_signal(signal.SIGTERM)
        a.communicate(timeout=30)
    finally:
        if a.poll() is None:
            a.kill()
    counts = sent_to_scheduler(tmp_path / "spool")
    assert len(counts) == n
    assert counts == Counter({k: 2 if k in {"r0004/z1.500", "r0005/z0.500"} else 1 for k in counts})
    wait_quiet(tmp_path / "spool")
