"""One reconciler per production, across login nodes: a lease in the production directory.

flock cannot be trusted where production directories live (node-local on some NFS mounts,
ENOSYS on Lustre without ``-o flock``, granted on every node at once on GPFS), so the lease
uses one thing shared filesystems do atomically: ``link`` onto a new name, which fails if the
name exists. Modelled on Kubernetes leases and Dagu's directory lock:

- ``lease.claim.<N>`` names the holder of generation N (host, pid, boot id, when).
  The highest N *is* the lease: a new holder claims N+1 by linking a complete file to that
  name, and of several takers exactly one link succeeds. Claim files are never rewritten,
  so no slow writer can put an older holder back; the last few are kept as the record.
- The holder renews by rewriting ``lease.beat.<N>`` every ``ttl / 3`` seconds (a heartbeat
  thread, so a long pass renews too) and at every pass; ``lease.released.<N>`` says it gave
  the lease up. Only holder N writes those two, so a deposed holder that wakes up can
  neither make the new holder's lease look alive nor overwrite it.
- A lease is stale when its beat has not changed for ``ttl`` seconds *of the taker's own
  monotonic clock* (a loop that keeps watching; no two hosts' clocks are compared), or when
  the beat file's mtime is older than ``2 * ttl`` against a file the taker just created
  (both stamped by the file server's clock), or at once when the holder ran on this host
  and its process is gone.
- Fencing: before every sbatch and ledger write, ``check()`` lists the claims; if a higher
  generation exists, this holder is *deposed*: it raises ``Deposed`` and acts no more. The
  ledger keeps the highest generation that wrote it and refuses, inside the same SQLite
  transaction, a write from a lower one (``Ledger.fence``): the check and the write cannot
  be separated there. Every submission's manifest carries its generation.
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
    """Who holds (or held) a lease, as its ``lease.claim.<N>`` file records it."""

    generation: int
    host: str
    pid: int
    boot_id: str
    started: float  # wall clock of the holder, for people only
    ttl_s: float
    stolen_from: str = ""  # "host pid N (generation G)" when this holder took it with --steal

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Holder:
        return cls(
            int(doc["generation"]), str(doc["host"]), int(doc["pid"]), str(doc.get("boot_id", "")),
            float(doc.get("started", 0.0)), float(doc.get("ttl_s", DEFAULT_TTL_S)),
            str(doc.get("stolen_from", "")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation, "host": self.host, "pid": self.pid, "boot_id": self.boot_id,
            "started": self.started, "ttl_s": self.ttl_s, "stolen_from": self.stolen_from,
        }

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {since} (generation {self.generation})"


@dataclass(frozen=True)
class LeaseInfo:
    """What ``reconcile lease NAME`` shows."""

    directory: Path
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
        self.deposed = ""  # why this object may hold the lease no more, once another took it
        self.took_over = ""  # whom we replaced and why, when it had not released
        self._seen: tuple[int, str] | None = None  # (generation, beat) of another holder
        self._seen_at = 0.0
        self._beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._io = threading.Lock()  # the heartbeat thread and the pass never renew at once

    # ------------------------------------------------------------------ files
    def _path(self, kind: str, generation: int) -> Path:
        return self.dir / f"lease.{kind}.{generation}"

    def _tmp(self, tag: str) -> Path:
        return self.dir / f".lease.{tag}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"

    def _generations(self, kind: str) -> list[int]:
        prefix = f"lease.{kind}."
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return [int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()]

    def current(self) -> tuple[int, Holder | None]:
        """(the highest generation claimed, its holder); (0, None) for a lease never taken."""
        claims = self._generations("claim")
        if not claims:
            return 0, None
        n = max(claims)
        try:
            return n, Holder.from_json(json.loads(self._path("claim", n).read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise LeaseHeld(f"{self._path('claim', n)} is unreadable ({exc}); inspect it, then `reconcile lease NAME --steal`") from None

    def _released(self, generation: int) -> bool:
        return self._path("released", generation).exists()

    def _read_beat(self, generation: int) -> str:
        try:
            return self._path("beat", generation).read_text()
        except FileNotFoundError:
            return ""

    def _age(self, path: Path) -> float | None:
        """Seconds since ``path`` was written, by the file server's clock (a fresh file's
        mtime); None when it does not exist or the directory cannot be written."""
        try:
            written = path.stat().st_mtime
            probe = self._tmp("clock")
            probe.write_text("")
        except OSError:
            return None
        try:
            return probe.stat().st_mtime - written
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

    @property
    def generation(self) -> int:
        me = self.me
        return me.generation if me else 0

    def acquire(self, *, steal: bool = False, floor: int = 0) -> Lease:
        """Take the lease, or raise ``LeaseHeld`` naming its holder. Idempotent while held.

        ``floor``: a generation already seen elsewhere (the ledger's), so that a lease whose
        files were deleted by hand starts above every generation that ever wrote the ledger.
        """
        if self.me is not None:
            self.check()
            return self
        if self.deposed and not steal:  # a loop that was deposed leaves the production to its new holder
            raise Deposed(self.deposed)
        self.dir.mkdir(parents=True, exist_ok=True)
        n, cur = self.current()
        why = ""
        live = cur is not None and not self._released(n)
        if cur is not None and live:
            why = "stolen with --steal" if steal else self._gone(cur, n)
            if not why:
                raise LeaseHeld(
                    f"another reconciler holds {self.dir}/lease.claim.{n}: {cur.describe()}; it renews every "
                    f"{cur.ttl_s / 3:.0f} s and is taken over {cur.ttl_s:.0f} s after it stops "
                    "(`reconcile lease NAME` shows it; --steal takes it)"
                )
        generation = max(n, floor) + 1
        stolen = f"{cur.host} pid {cur.pid} (generation {n})" if steal and cur is not None and live else ""
        me = Holder(generation, socket.gethostname(), os.getpid(), boot_id(), time.time(), self.ttl_s, stolen_from=stolen)
        tmp = self._tmp("claim")
        tmp.write_text(json.dumps(me.to_json()))
        try:
            os.link(tmp, self._path("claim", generation))  # the one atomic step: one taker per generation
        except FileExistsError:
            raise LeaseHeld(f"another reconciler took generation {generation} of {self.dir}/lease first") from None
        finally:
            tmp.unlink(missing_ok=True)
        self._write(self._path("beat", generation), "0")
        self.me, self.deposed, self._seen, self._beats = me, "", None, 0
        self.took_over = f"{cur.describe()}: {why}" if cur is not None and live else ""
        if self.took_over:
            self._log(f"generation {generation}: {me.host} pid {me.pid} took over from {self.took_over}")
        self._tidy(generation)
        self._start_heartbeat()
        return self

    def _gone(self, cur: Holder, generation: int) -> str:
        """Why the holder ``cur`` is no longer there ("" if it may be): see the module docstring."""
        if cur.host == socket.gethostname():
            if cur.boot_id and cur.boot_id != boot_id():
                return "its host rebooted"
            if not _alive(cur.pid):
                return "its process is gone"
        seen = (generation, self._read_beat(generation))
        now = self.clock()
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        elif now - self._seen_at >= cur.ttl_s:
            return f"not renewed for {now - self._seen_at:.0f} s (ttl {cur.ttl_s:.0f} s)"
        age = self._age(self._path("beat", generation))
        if age is not None and age > 2 * cur.ttl_s:
            return f"last renewed {age:.0f} s ago (ttl {cur.ttl_s:.0f} s)"
        return ""

    def _log(self, line: str) -> None:
        """Append to ``lease.log``: every takeover and steal, for the person asking what happened."""
        with open(self.dir / "lease.log", "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {line}\n")

    def _tidy(self, generation: int) -> None:
        """Remove beats and release marks of earlier generations, and all but the last few claims."""
        for kind, keep in (("beat", 0), ("released", 0), ("claim", KEEP_CLAIMS)):
            for g in self._generations(kind):
                if g < generation - keep:
                    self._path(kind, g).unlink(missing_ok=True)

    # ------------------------------------------------------------------ holding it
    def check(self) -> None:
        """The fence: raise ``Deposed`` if another holder has claimed a later generation. Call
        before every sbatch and every ledger write (the ledger checks again, atomically)."""
        me = self.me  # one read: the heartbeat thread may depose us meanwhile
        if me is None:
            raise Deposed(self.deposed or f"{self.dir}/lease: not held")
        if max(self._generations("claim"), default=0) != me.generation:
            self._depose()

    def _depose(self) -> None:
        n, cur = self.current()
        self.me = None
        self._stop.set()
        who = f"{cur.describe()}{' with --steal' if cur.stolen_from else ''}" if cur else "nobody (the lease files were removed)"
        self.deposed = (
            f"deposed: the lease of {self.dir} was taken by {who}; this reconciler stops acting on it "
            "(restart it to take part again)"
        )
        raise Deposed(self.deposed)

    def renew(self) -> None:
        """Check we still hold it, then beat. Every pass, and every ttl/3 from the heartbeat."""
        with self._io:
            self.check()
            me = self.me
            if me is not None:
                self._beats += 1
                self._write(self._path("beat", me.generation), str(self._beats))

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()
        stop = self._stop

        def beat() -> None:
            while not stop.wait(self.ttl_s / 3):
                try:
                    self.renew()
                except Deposed:
                    return
                except Exception:  # noqa: BLE001 - a filesystem hiccup: the next beat tries again; the TTL allows two misses
                    continue

        self._thread = threading.Thread(target=beat, name=f"lease-heartbeat:{self.dir}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Give the lease up (``lease.released.<N>``), so the next taker need not wait out the TTL."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._io:
            me, self.me = self.me, None
            if me is not None and max(self._generations("claim"), default=0) == me.generation:
                self._path("released", me.generation).write_text(json.dumps({"released": time.time()}))

    def info(self) -> LeaseInfo:
        """The lease as another process sees it, for `reconcile lease`. Reads only (the age
        probe is skipped where the directory cannot be written)."""
        n, cur = self.current()
        if cur is None:
            return LeaseInfo(self.dir, None, None, "free")
        age = self._age(self._path("beat", n))
        if self._released(n):
            return LeaseInfo(self.dir, cur, age, "released")
        if cur.host == socket.gethostname() and ((cur.boot_id and cur.boot_id != boot_id()) or not _alive(cur.pid)):
            return LeaseInfo(self.dir, cur, age, "dead")
        return LeaseInfo(self.dir, cur, age, "stale" if age is not None and age > 2 * cur.ttl_s else "held")


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
