"""The task wrapper: ``python -m reconciler.wrapper MANIFEST ARRAY_INDEX``.

The batch script only names the manifest and passes the array index; everything about the
task (argv, outputs, environment, timeout, validator) comes from the manifest, so no
configuration value is ever parsed by a shell unquoted (a ``shell: true`` task's argv is
``bash -c LINE`` with every value quoted by spec/shell.py; a container's runtime goes before
the argv, reconciler.container). The wrapper is what turns "the command
exited 0" into "the task is complete": it validates the outputs and only then writes the
completion marker. Its exit code tells the scheduler (and the person reading the log) what
happened:

    0 done and marked, N the command's own exit code (128+signal if killed by one),
    2 bad manifest or index, 65 outputs invalid, 69 a pool claim lost (fenced: not marked),
    74 marker could not be written,
    124 timeout, 126 command not executable, 127 command not found, 143 cancelled (SIGTERM).

When it exits non-zero it also says *why*, in a small JSON file beside the logs
(``markers.write_cause``: a ``core.causes.Cause`` with the command's last stderr lines), which
the reconciler reads only for attempts that failed: an exit code alone cannot tell "command
not found", which no retry fixes, from a command that happened to exit 127.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler.container import container_argv
from reconciler.core.causes import TAIL_CHARS, TAIL_LINES, Cause, CauseKind
from reconciler.process import killpg, wait_group
from reconciler.spec.symbols import SYMBOLIC_DIR, SYMBOLIC_PYTHON

EXIT_USAGE = 2
EXIT_INVALID_OUTPUT = 65
EXIT_FENCED = 69  # sysexits' EX_UNAVAILABLE: a pool worker's claim on the task is no longer held
EXIT_IO = 74
EXIT_TEMPFAIL = 75  # sysexits' EX_TEMPFAIL: the command could not be started this time
EXIT_TIMEOUT = 124
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
CANNOT_EXECUTE = frozenset({errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR, errno.ENOTDIR})
"""Launch errors that are the file's (no x bit, a directory, a script without #!): no retry
runs it either, so the planner gives up at once. Any other (ENOMEM, EAGAIN from a fork under
pressure, ETXTBSY, EIO or ESTALE on the software mount) is the node's, and may pass."""
KILL_GRACE_S = 5.0
POLL_S = 0.2
TAIL_BYTES = 8192
_OWN = "reconciler: "


class _Task:
    """The manifest entry of one array index, in the shape reconciler.outputs expects."""

    __slots__ = ("key", "index", "outputs", "fingerprint", "argv", "attempt", "lists", "missing")

    def __init__(self, doc: dict[str, Any]) -> None:
        self.key: str = str(doc["key"])
        self.index: int = int(doc["index"])
        self.outputs: tuple[str, ...] = tuple(str(o) for o in doc["outputs"])
        self.fingerprint: str = str(doc["fingerprint"])
        self.argv: list[str] = [str(a) for a in doc["argv"]]
        self.attempt: int = int(doc.get("attempt", 1))
        self.lists: dict[str, list[str]] = {str(k): [str(p) for p in v] for k, v in dict(doc.get("lists") or {}).items()}
        self.missing: list[str] = [str(k) for k in doc.get("missing") or ()]


def _say(msg: str) -> None:
    print(f"{_OWN}{msg}", file=sys.stderr, flush=True)


def stderr_tail() -> tuple[str, ...]:
    """The last lines the command wrote on stderr, read back from the wrapper's own stderr when
    that is a file (Slurm's ``--error`` log, which the command inherits): nothing is piped
    through the wrapper while the task runs, so a task that succeeds pays nothing for this.

    The file is reopened through /proc (Slurm opens it write-only); the wrapper's own lines
    are left out. Not a file (a terminal, a pipe), or not readable: no lines.
    """
    try:
        if not stat.S_ISREG(os.fstat(2).st_mode):
            return ()
        with open("/proc/self/fd/2", "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - TAIL_BYTES))
            data = fh.read(TAIL_BYTES)
    except OSError:
        return ()
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first line read is cut
    kept = [ln.rstrip()[:TAIL_CHARS] for ln in lines if ln.strip() and not ln.startswith(_OWN)]
    return tuple(kept[-TAIL_LINES:])


def _failed(manifest: Path, array_index: str, code: int, kind: CauseKind, detail: str = "") -> int:
    """Record why the attempt failed, beside the logs, and return the exit code. A cause that
    cannot be written is said in the log and the exit code still tells the scheduler."""
    sys.stderr.flush()
    cause = Cause(kind, detail, code, stderr_tail())
    try:
        from reconciler import markers

        markers.write_cause(manifest, array_index, cause.to_doc())
    except OSError as exc:
        _say(f"cannot record the failure's cause ({cause.text}): {exc}")
    return code


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
        shell = bool(manifest.get("shell", False))
        container = manifest.get("container")
        compression = manifest.get("compression")
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
        RECONCILER_PYTHON=sys.executable,
    )
    if compression is not None:
        env["RECONCILER_COMPRESSION"] = str(compression)
    # A shell line names the production directory and interpreter by the variables just set
    # (spec/shell.py): substituting them into its text could end a quote the line relies on.
    argv = list(task.argv) if shell else resolve_argv(task.argv, pdir_text)
    if container:
        try:
            exported = [str(n) for n in container.get("export_env", ()) if str(n) in os.environ]  # environment.export_env
            names = [*extra_env, *exported, *(k for k in env if k.startswith("RECONCILER_"))]
            argv = container_argv(str(container["runtime"]), str(container["image"]), pdir_text, names) + argv
        except (ValueError, KeyError, TypeError) as exc:
            _say(f"cannot run in the container {container!r}: {exc}")
            return _failed(manifest_path, array_index, EXIT_NOT_EXECUTABLE, CauseKind.NOT_EXECUTABLE, str(exc))
    for rel in task.outputs:
        (pdir / rel).parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_lists(pdir, task.lists)
    except (OSError, ValueError) as exc:
        _say(f"task {task.key}: cannot write the list of its members: {exc}")
        return _failed(manifest_path, array_index, EXIT_IO, CauseKind.MARKER_IO, str(exc))

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
        return _failed(manifest_path, array_index, EXIT_NOT_FOUND, CauseKind.NOT_FOUND, argv[0])
    except OSError as exc:
        if exc.errno in CANNOT_EXECUTE:
            _say(f"command not executable: {argv[0]} ({exc.strerror})")
            return _failed(manifest_path, array_index, EXIT_NOT_EXECUTABLE, CauseKind.NOT_EXECUTABLE, argv[0])
        failure = f"{argv[0]}: {exc.strerror or exc}"
        _say(f"command could not be started: {failure}")
        return _failed(manifest_path, array_index, EXIT_TEMPFAIL, CauseKind.LAUNCH_FAILED, failure)
    child.append(proc)
    if terminated:  # a signal that arrived between the handler's install and Popen
        killpg(proc.pid, signal.SIGTERM)

    # Run by a pool worker: the command stops once the claim is not held any more (the worker
    # froze or died and the task may be rerun elsewhere), whoever notices first.
    from reconciler.pool import files as pool_files

    claim = os.environ.get(pool_files.CLAIM_ENV)
    guard = pool_files.Guard(claim, os.environ.get(pool_files.OWNER_ENV)) if claim else None

    def stop_requested() -> bool:
        if terminated:
            return True
        if guard is not None and guard.lost():
            killpg(proc.pid, signal.SIGTERM)
            return True
        return False

    # A forwarded signal already sent SIGTERM (on_signal): wait_group only escalates to SIGKILL.
    ending = wait_group(proc, timeout_s=timeout_s, kill_grace_s=KILL_GRACE_S, poll_s=POLL_S, stop_requested=stop_requested)
    end = time.time()
    code, rc = ending.exit_code, ending.returncode
    took = f"{end - start:.1f} s"

    if guard is not None and guard.gone:
        _say(f"task {task.key}: the pool claim on it died or was taken over after {took}: stopped, not marked")
        return _failed(manifest_path, array_index, EXIT_FENCED, CauseKind.FENCED)
    if terminated:
        sig = terminated[0]
        _say(f"task {task.key} cancelled by {signal.Signals(sig).name} after {took} (command exit {code})")
        return _failed(manifest_path, array_index, 128 + sig, CauseKind.CANCELLED, signal.Signals(sig).name)
    if ending.timed_out:
        _say(f"task {task.key}: timeout after {timeout_s:g} s")
        return _failed(manifest_path, array_index, EXIT_TIMEOUT, CauseKind.TIMEOUT, f"{timeout_s:g}")
    if code != 0:
        how = f" (signal {_signame(-rc)})" if rc < 0 else ""
        _say(f"task {task.key}: command exited with {code}{how} after {took}")
        if rc < 0:
            return _failed(manifest_path, array_index, code, CauseKind.SIGNAL, _signame(-rc))
        return _failed(manifest_path, array_index, code, CauseKind.EXIT)

    from reconciler import markers, validators

    try:
        why = validators.validate(pdir, task.outputs, _validator(manifest.get("validator")))
    except Exception as exc:  # a validator that cannot run is not a valid output either
        why = f"validation failed to run: {exc}"
    if why is not None:
        _say(f"task {task.key}: outputs invalid: {why}")
        return _failed(manifest_path, array_index, EXIT_INVALID_OUTPUT, CauseKind.INVALID_OUTPUT, why)
    if not pool_files.still_held(claim, os.environ.get(pool_files.OWNER_ENV)):
        _say(f"task {task.key}: the pool claim on it died or was taken over: not marked complete")
        return _failed(manifest_path, array_index, EXIT_FENCED, CauseKind.FENCED)
    try:
        marker = markers.write_marker(pdir, task, attempt=task.attempt, exit_code=0, start=start, end=end, token=token, host=host, missing=task.missing)
    except OSError as exc:
        _say(f"task {task.key}: cannot write completion marker: {exc}")
        return _failed(manifest_path, array_index, EXIT_IO, CauseKind.MARKER_IO, str(exc))
    _say(f"task {task.key} done in {took}; marker {marker.name}")
    return 0


def _write_lists(pdir: Path, lists: dict[str, list[str]]) -> None:
    """A fan-in task's members, one output path per line (absolute, in the upstream stage's
    order), in the list files its command names (``{needs.S}``); written atomically, so a
    command never reads half a list. Paths stay inside the production directory."""
    from reconciler.atomic import atomic_write

    for rel, members in lists.items():
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"list file {rel!r} is not inside the production directory")
        path = pdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, "".join(f"{pdir}/{m}\n" for m in members))


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


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
