"""The task wrapper: ``python -m reconciler.wrapper MANIFEST ARRAY_INDEX``.

The batch script only names the manifest and passes the array index; everything about the
task (argv, outputs, environment, timeout, validator) comes from the manifest, so no
configuration value is ever parsed by a shell. The wrapper is what turns "the command
exited 0" into "the task is complete": it validates the outputs and only then writes the
completion marker. Its exit code tells the scheduler (and the person reading the log) what
happened:

    0 done and marked, N the command's own exit code (128+signal if killed by one),
    2 bad manifest or index, 65 outputs invalid, 74 marker could not be written,
    124 timeout, 126 command not executable, 127 command not found, 143 cancelled (SIGTERM).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler.process import killpg, wait_group
from reconciler.spec.symbols import SYMBOLIC_DIR, SYMBOLIC_PYTHON

EXIT_USAGE = 2
EXIT_INVALID_OUTPUT = 65
EXIT_IO = 74
EXIT_TIMEOUT = 124
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
KILL_GRACE_S = 5.0
POLL_S = 0.2


class _Task:
    """The manifest entry of one array index, in the shape reconciler.outputs expects."""

    __slots__ = ("key", "index", "outputs", "fingerprint", "argv", "attempt")

    def __init__(self, doc: dict[str, Any]) -> None:
        self.key: str = str(doc["key"])
        self.index: int = int(doc["index"])
        self.outputs: tuple[str, ...] = tuple(str(o) for o in doc["outputs"])
        self.fingerprint: str = str(doc["fingerprint"])
        self.argv: list[str] = [str(a) for a in doc["argv"]]
        self.attempt: int = int(doc.get("attempt", 1))


def _say(msg: str) -> None:
    print(f"reconciler: {msg}", file=sys.stderr, flush=True)


def resolve_argv(argv: list[str], production_dir: str) -> list[str]:
    """Substitute the symbolic ``${PRODUCTION_DIR}`` and ``${PYTHON}`` textually.

    They stay symbolic in the manifest and in the fingerprint, so moving the production tree
    or the reconciler's virtual environment does not make every task stale. ``${PYTHON}``
    (``{python}`` in a command template) is the interpreter that runs this wrapper: the one
    with the reconciler installed, e.g. for the demo generator. A bare ``python`` is left to
    the task's PATH, which is the user's own.
    """
    return [a.replace(SYMBOLIC_DIR, production_dir).replace(SYMBOLIC_PYTHON, sys.executable) for a in argv]


def run(manifest_path: Path, array_index: str) -> int:
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entry = manifest["tasks"].get(str(array_index))
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        _say(f"cannot read manifest {manifest_path}: {exc}")
        return EXIT_USAGE
    if entry is None:
        _say(f"array index {array_index} is not in manifest {manifest_path}")
        return EXIT_USAGE
    try:
        task = _Task(entry)
        pdir_text = str(manifest["production_dir"])
        timeout_s = float(manifest["timeout_s"])
        token = str(manifest.get("token", ""))
        extra_env = {str(k): str(v) for k, v in dict(manifest.get("env") or {}).items()}
    except (KeyError, TypeError, ValueError) as exc:
        _say(f"malformed manifest {manifest_path}: {exc!r}")
        return EXIT_USAGE
    if not task.argv or not task.outputs:
        _say(f"task {task.key} has an empty command or no outputs")
        return EXIT_USAGE
    pdir = Path(pdir_text)
    host = socket.gethostname()

    env = {**os.environ, **extra_env}
    env.update(
        RECONCILER_PRODUCTION_DIR=pdir_text,
        RECONCILER_TASK_KEY=task.key,
        RECONCILER_TASK_INDEX=str(task.index),
        RECONCILER_ATTEMPT=str(task.attempt),
        RECONCILER_TOKEN=token,
    )
    argv = resolve_argv(task.argv, pdir_text)
    for rel in task.outputs:
        (pdir / rel).parent.mkdir(parents=True, exist_ok=True)

    _say(f"task {task.key} attempt {task.attempt} on host {host} (array index {array_index}, token {token or '-'})")
    terminated: list[int] = []
    child: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        terminated.append(signum)
        if child:
            killpg(child[0].pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    start = time.time()
    try:
        proc = subprocess.Popen(argv, env=env, start_new_session=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        _say(f"command not found: {argv[0]}")
        return EXIT_NOT_FOUND
    except PermissionError:
        _say(f"command not executable: {argv[0]}")
        return EXIT_NOT_EXECUTABLE
    child.append(proc)
    if terminated:  # a signal that arrived between the handler's install and Popen
        killpg(proc.pid, signal.SIGTERM)

    # A forwarded signal already sent SIGTERM (on_signal): wait_group only escalates to SIGKILL.
    ending = wait_group(
        proc, timeout_s=timeout_s, kill_grace_s=KILL_GRACE_S, poll_s=POLL_S, stop_requested=lambda: bool(terminated)
    )
    end = time.time()
    code, rc = ending.exit_code, ending.returncode
    took = f"{end - start:.1f} s"

    if terminated:
        sig = terminated[0]
        _say(f"task {task.key} cancelled by {signal.Signals(sig).name} after {took} (command exit {code})")
        return 128 + sig
    if ending.timed_out:
        _say(f"task {task.key}: timeout after {timeout_s:g} s")
        return EXIT_TIMEOUT
    if code != 0:
        how = f" (signal {signal.Signals(-rc).name})" if rc < 0 else ""
        _say(f"task {task.key}: command exited with {code}{how} after {took}")
        return code

    from reconciler import markers, validators

    try:
        why = validators.validate(pdir, task.outputs, _validator(manifest.get("validator")))
    except Exception as exc:  # a validator that cannot run is not a valid output either
        why = f"validation failed to run: {exc}"
    if why is not None:
        _say(f"task {task.key}: outputs invalid: {why}")
        return EXIT_INVALID_OUTPUT
    try:
        marker = markers.write_marker(pdir, task, attempt=task.attempt, exit_code=0, start=start, end=end, token=token, host=host)
    except OSError as exc:
        _say(f"task {task.key}: cannot write completion marker: {exc}")
        return EXIT_IO
    _say(f"task {task.key} done in {took}; marker {marker.name}")
    return 0


@dataclass(frozen=True)
class _ManifestValidator:
    kind: str
    datasets: tuple[str, ...]


def _validator(doc: Any) -> _ManifestValidator:
    """The manifest's validator, checked by hand: the spec's pydantic model would add ~0.25 s
    to every task's start-up for a two-field record that the engine already validated."""
    doc = doc or {}
    kind, datasets = doc.get("kind", "exists"), doc.get("datasets", [])
    if kind not in ("exists", "hdf5", "sha256") or not all(isinstance(d, str) for d in datasets):
        raise ValueError(f"unknown validator in the manifest: {doc!r}")
    return _ManifestValidator(kind, tuple(datasets))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m reconciler.wrapper MANIFEST ARRAY_INDEX", file=sys.stderr)
        return EXIT_USAGE
    return run(Path(args[0]), args[1])


if __name__ == "__main__":
    sys.exit(main())
