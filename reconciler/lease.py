"""One reconciler per production, across login nodes: a lease in the production directory.

flock cannot be trusted where production directories live (node-local on some NFS mounts,
ENOSYS on Lustre without ``-o flock``, granted on every node at once on GPFS), so the lease
uses only what shared filesystems do atomically: ``link`` (fails if the name exists) and
``rename`` (replaces a name in one step). Modelled on Kubernetes leases and Dagu's
directory lock:

- ``lease.json`` names the holder (host, pid, boot id, a random nonce) and its *generation*.
  A new holder claims generation N+1 by linking a complete file to ``lease.claim.<N+1>``:
  of several takers exactly one link succeeds. It then renames a copy onto ``lease.json``;
  the claim file stays as the record that N+1 is taken (the last few are kept).
- The holder renews by rewriting ``lease.beat.<generation>`` every ``ttl / 3`` seconds (a
  heartbeat thread, so a long pass renews too) and at every pass. Only the holder of a
  generation writes that generation's beat, so a deposed holder that wakes up cannot make
  the new holder's lease look alive, nor overwrite it.
- A lease is stale when its beat has not changed for ``ttl`` seconds *of the taker's own
  monotonic clock* (a loop that keeps watching; no two hosts' clocks are compared), or when
  the beat file's mtime is older than ``2 * ttl`` against a file the taker just created
  (both stamped by the file server's clock), or at once when the holder ran on this host
  and its process is gone.
- Fencing: before every sbatch and every ledger write, ``check()`` re-reads ``lease.json``;
  if another holder took it, this one is *deposed*: it raises ``Deposed`` and acts no more.
  Every submission's manifest carries the generation it was made under.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import Deposed, LeaseHeld

DEFAULT_TTL_S = 300.0
KEEP_CLAIMS = 8  # claim files kept behind the current generation


def boot_id() -> str:
    """This host's boot id (Linux): a pid means the same process only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie, killed but not yet reaped by
    its parent, does not: it can never renew)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lease, as ``lease.json`` records it."""

    generation: int
    host: str
    pid: int
    boot_id: str
    nonce: str
    started: float  # wall clock of the holder, for people only
    ttl_s: float
    released: bool = False
    stolen_from: str = ""  # "host pid N (generation G)" when this holder took it with --steal

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Holder:
        return cls(
            int(doc["generation"]), str(doc["host"]), int(doc["pid"]), str(doc.get("boot_id", "")),
            str(doc["nonce"]), float(doc.get("started", 0.0)), float(doc.get("ttl_s", DEFAULT_TTL_S)),
            bool(doc.get("released", False)), str(doc.get("stolen_from", "")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation, "host": self.host, "pid": self.pid, "boot_id": self.boot_id,
            "nonce": self.nonce, "started": self.started, "ttl_s": self.ttl_s, "released": self.released,
            "stolen_from": self.stolen_from,
        }

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {since} (generation {self.generation})"


@dataclass(frozen=True)
class LeaseInfo:
    """What ``reconcile lease NAME`` shows."""

    path: Path
    holder: Holder | None
    beat_age_s: float | None  # by the file server's clock; None without a beat
    state: str  # "free", "released", "held", "stale", "dead"


class Lease:
    """The lease of one production directory, held by this process or watched by it.

    One object per production for the life of a loop: between attempts it remembers what it
    last saw of another holder, which is how staleness is measured on our own clock.
    """

    def __init__(self, metadata_dir: Path, ttl_s: float = DEFAULT_TTL_S, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.dir = metadata_dir
        self.ttl_s = ttl_s
        self.clock = clock
        self.me: Holder | None = None  # set while we hold it
        self.deposed_by: Holder | None = None
        self.deposed = ""  # why this object may hold the lease no more, once another took it
        self.took_over = ""  # whom we replaced and why, when it had not released
        self._seen: tuple[int, str, str] | None = None  # (generation, nonce, beat) of another holder
        self._seen_at = 0.0
        self._beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._io = threading.Lock()  # the heartbeat thread and the pass never write at once

    # ------------------------------------------------------------------ files
    @property
    def path(self) -> Path:
        return self.dir / "lease.json"

    def _beat_path(self, generation: int) -> Path:
        return self.dir / f"lease.beat.{generation}"

    def _claim_path(self, generation: int) -> Path:
        return self.dir / f"lease.claim.{generation}"

    def _tmp(self, tag: str) -> Path:
        return self.dir / f".lease.{tag}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"

    def read(self) -> Holder | None:
        try:
            return Holder.from_json(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise LeaseHeld(f"{self.path} is unreadable ({exc}); inspect it, then `reconcile lease NAME --steal`") from None

    def _read_beat(self, generation: int) -> str:
        try:
            return self._beat_path(generation).read_text()
        except FileNotFoundError:
            return ""

    def _beat_age(self, generation: int) -> float | None:
        """Seconds since the holder's last beat, by the file server's clock."""
        return self._age(self._beat_path(generation))

    def _age(self, path: Path) -> float | None:
        """Seconds since ``path`` was written, by the file server's clock (a fresh file's mtime)."""
        try:
            beat = path.stat().st_mtime
        except FileNotFoundError:
            return None
        probe = self._tmp("clock")
        probe.write_text("")
        try:
            return probe.stat().st_mtime - beat
        finally:
            probe.unlink(missing_ok=True)

    def _write(self, path: Path, text: str) -> None:
        tmp = self._tmp("w")
        tmp.write_text(text)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ taking it
    @property
    def held(self) -> bool:
        return self.me is not None

    def acquire(self, *, steal: bool = False) -> Lease:
        """Take the lease, or raise ``LeaseHeld`` naming its holder. Idempotent while held."""
        if self.me is not None:
            self.check()
            return self
        if self.deposed and not steal:  # a loop that was deposed leaves the production to its new holder
            raise Deposed(self.deposed)
        self.dir.mkdir(parents=True, exist_ok=True)
        cur = self.read()
        stolen = why = ""
        if cur is not None and not cur.released:
            why = self._gone(cur)
            if steal:
                stolen = f"{cur.host} pid {cur.pid} (generation {cur.generation})"
            elif not why:
                raise LeaseHeld(
                    f"another reconciler holds {self.path}: {cur.describe()}; it renews every {cur.ttl_s / 3:.0f} s "
                    f"and is taken over {cur.ttl_s:.0f} s after it stops (`reconcile lease NAME` shows it; --steal takes it)"
                )
        base = cur.generation if cur else 0
        generation = base + 1
        ahead = [g for g in self._claims() if g > base]
        if ahead:  # another taker claimed the next generation and has not written lease.json yet
            age = self._age(self._claim_path(max(ahead)))
            if age is not None and age <= 2 * self.ttl_s:
                raise LeaseHeld(f"another reconciler is taking {self.path} over (generation {max(ahead)})")
            generation = max(ahead) + 1  # that taker died between its claim and its write
        me = Holder(generation, socket.gethostname(), os.getpid(), boot_id(), secrets.token_hex(8), time.time(), self.ttl_s, stolen_from=stolen)
        text = json.dumps(me.to_json())
        tmp = self._tmp("claim")
        tmp.write_text(text)
        try:
            os.link(tmp, self._claim_path(generation))  # the one atomic step: one taker per generation
        except FileExistsError:
            raise LeaseHeld(f"another reconciler took generation {generation} of {self.path} first") from None
        finally:
            tmp.unlink(missing_ok=True)
        again = self.read()
        if (again.generation if again else 0) != base:  # someone moved on while we claimed
            raise LeaseHeld(f"{self.path} changed while taking it: {again.describe() if again else 'removed'}")
        self._write(self._beat_path(generation), "0")
        self._write(self.path, text)
        self.me, self.deposed_by, self.deposed, self._seen = me, None, "", None
        self.took_over = f"{cur.describe()}: {'stolen with --steal' if steal else why}" if cur is not None and not cur.released else ""
        if self.took_over:
            self._log(f"generation {generation}: {me.host} pid {me.pid} took over from {self.took_over}")
        self._tidy(generation)
        self._start_heartbeat()
        return self

    def _gone(self, cur: Holder) -> str:
        """Why the holder ``cur`` is no longer there ("" if it may be): see the module docstring."""
        if cur.host == socket.gethostname():
            if cur.boot_id and cur.boot_id != boot_id():
                return "its host rebooted"
            if not _alive(cur.pid):
                return "its process is gone"
        beat = self._read_beat(cur.generation)
        seen = (cur.generation, cur.nonce, beat)
        now = self.clock()
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        elif now - self._seen_at >= cur.ttl_s:
            return f"not renewed for {now - self._seen_at:.0f} s (ttl {cur.ttl_s:.0f} s)"
        age = self._beat_age(cur.generation)
        if age is not None and age > 2 * cur.ttl_s:
            return f"last renewed {age:.0f} s ago (ttl {cur.ttl_s:.0f} s)"
        return ""

    def _log(self, line: str) -> None:
        """Append to ``lease.log``: every takeover and steal, for the person asking what happened."""
        with open(self.dir / "lease.log", "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {line}\n")

    def _claims(self) -> list[int]:
        return [int(p.suffix[1:]) for p in self.dir.glob("lease.claim.*") if p.suffix[1:].isdigit()]

    def _tidy(self, generation: int) -> None:
        """Remove beats of earlier generations and all but the last few claims."""
        for p in self.dir.glob("lease.beat.*"):
            if p.suffix[1:].isdigit() and int(p.suffix[1:]) < generation:
                p.unlink(missing_ok=True)
        for g in self._claims():
            if g < generation - KEEP_CLAIMS:
                self._claim_path(g).unlink(missing_ok=True)

    # ------------------------------------------------------------------ holding it
    @property
    def generation(self) -> int:
        return self.me.generation if self.me else 0

    def check(self) -> None:
        """The fence: raise ``Deposed`` if another holder has taken the lease. Call before
        every sbatch and every ledger write."""
        if self.me is None:
            raise Deposed(f"{self.path}: not held" + (f"; taken by {self.deposed_by.describe()}" if self.deposed_by else ""))
        cur = self.read()
        if cur is None or cur.nonce != self.me.nonce:
            self._depose(cur)

    def _depose(self, cur: Holder | None) -> None:
        self.deposed_by = cur
        self.me = None
        self._stop.set()
        who = cur.describe() if cur else "nobody (the lease file was removed)"
        stolen = " with --steal" if cur and cur.stolen_from else ""
        self.deposed = (
            f"deposed: the lease {self.path} was taken{stolen} by {who}; this reconciler stops acting on it "
            "(restart it to take part again)"
        )
        raise Deposed(self.deposed)

    def renew(self) -> None:
        """Check we still hold it, then beat. Every pass, and every ttl/3 from the heartbeat."""
        with self._io:
            self.check()
            assert self.me is not None
            self._beats += 1
            self._write(self._beat_path(self.me.generation), str(self._beats))

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()
        stop = self._stop

        def beat() -> None:
            while not stop.wait(self.ttl_s / 3):
                try:
                    self.renew()
                except Deposed:
                    return
                except OSError:  # a filesystem hiccup: the next beat tries again; the TTL allows two misses
                    continue

        self._thread = threading.Thread(target=beat, name=f"lease-heartbeat:{self.dir}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Give the lease up, marking it released, so the next taker need not wait out the TTL."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.me is None:
            return
        with self._io:
            cur = self.read()
            if cur is not None and cur.nonce == self.me.nonce:
                done = Holder(**{**self.me.__dict__, "released": True})
                self._write(self.path, json.dumps(done.to_json()))
            self.me = None

    def info(self) -> LeaseInfo:
        """The lease as another process sees it, for `reconcile lease`."""
        cur = self.read()
        if cur is None:
            return LeaseInfo(self.path, None, None, "free")
        age = self._beat_age(cur.generation)
        if cur.released:
            return LeaseInfo(self.path, cur, age, "released")
        gone = cur.host == socket.gethostname() and ((cur.boot_id and cur.boot_id != boot_id()) or not _alive(cur.pid))
        if gone:
            return LeaseInfo(self.path, cur, age, "dead")
        return LeaseInfo(self.path, cur, age, "stale" if age is not None and age > 2 * cur.ttl_s else "held")


class Leases:
    """The leases one process holds or watches, by production directory.

    A one-shot verb makes its own and releases it at the end; ``watch`` keeps one for its
    life, so it holds its productions across passes (the lease covers the loop, not a pass)
    and, for a production another loop holds, remembers what it saw of it (staleness on our
    own clock).
    """

    def __init__(self, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._by_dir: dict[Path, Lease] = {}

    def of(self, metadata_dir: Path) -> Lease:
        lease = self._by_dir.get(metadata_dir)
        if lease is None:
            lease = self._by_dir[metadata_dir] = Lease(metadata_dir, self.ttl_s)
        return lease

    def release_all(self) -> None:
        for lease in self._by_dir.values():
            lease.release()
