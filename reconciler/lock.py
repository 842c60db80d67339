"""One reconciler per production: an flock'd file that names its holder.

flock is released by the kernel when the holder dies, so a dead holder's lock is taken
over naturally; its recorded host/pid/start are still reported, so the takeover is visible.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from reconciler.errors import LockHeld


class ProductionLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None
        self.previous: dict | None = None  # holder info left by a dead holder we took over from

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, json.JSONDecodeError):
            return None

    def acquire(self) -> ProductionLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the pass
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            holder = self._read() or {}
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("start", 0)))
            raise LockHeld(
                f"another reconciler holds {self.path}: pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {since}"
                " (wait for it, or stop it first)"
            ) from None
        self.previous = self._read()
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "start": time.time()}))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.flush()
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ProductionLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
