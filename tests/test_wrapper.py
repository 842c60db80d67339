"""The task wrapper, run as a real process: exit codes, markers, substitution, no shell."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler import wrapper
from reconciler.core.causes import Cause, CauseKind, from_doc
from reconciler.markers import cause_path, marker_path, read_cause, read_marker
from reconciler.outputs import observe_outputs
from reconciler.spec.expand import Task
from reconciler.spec.models import Validator

FP = "0123456789abcdef01234567"
OUT = "catalogs/r0003/mock_z0.500.hdf5"


def write_manifest(tmp_path: Path, argv: list[str], *, timeout_s: float = 60.0, validator: dict[str, Any] | None = None, outputs: list[str] | None = None, env: dict[str, str] | None = None) -> tuple[Path, Path]:
    """A manifest in render_manifest's format (format 1) for one task at array index 7."""
    pdir = tmp_path / "prod"
    pdir.mkdir(exist_ok=True)
    doc = {
        "format": 1,
        "production": "t",
        "batch": 0,
        "token": "tok-123",
        "production_dir": str(pdir),
        "timeout_s": timeout_s,
        "env": env or {},
        "validator": validator or {"kind": "exists", "datasets": []},
        "tasks": {"7": {"key": "r0003/z0.500", "index": 42, "argv": argv, "outputs": outputs or [OUT], "fingerprint": FP, "attempt": 2}},
    }
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(doc))
    return manifest, pdir


def the_task(outputs: list[str] | None = None) -> Task:
    return Task(index=42, key="r0003/z0.500", params=(3, 0.5), outputs=tuple(outputs or [OUT]), fingerprint=FP)


def run_wrapper(manifest: Path, index: str = "7", timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.wrapper", str(manifest), index], capture_output=True, text=True, timeout=timeout)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


WRITE_OUTPUT = "import os,sys; open(os.environ['RECONCILER_PRODUCTION_DIR']+'/" + OUT + "','w').write('data')"


def test_success_writes_the_marker(tmp_path: Path) -> None:
    manifest, pdir = write_manifest(tmp_path, py(WRITE_OUTPUT))
    before = time.time()
    res = run_wrapper(manifest)
    assert res.returncode == 0, res.stderr
    assert "reconciler: task r0003/z0.500 attempt 2 on host" in res.stderr
    assert "done in" in res.stderr
    doc = read_marker(pdir, the_task())
    assert doc is not None
    assert marker_path(pdir, the_task()).exists()
    assert {k: doc[k] for k in ("key", "index", "fingerprint", "attempt", "exit_code", "token", "adopted")} == {
        "key": "r0003/z0.500",
        "index": 42,
        "fingerprint": FP,
        "attempt": 2,
        "exit_code": 0,
        "token": "tok-123",
        "adopted": False,
    }
    assert before <= doc["start"] <= doc["end"] <= time.time()
    assert doc["host"]
    assert observe_outputs(pdir, [the_task()], Validator())["r0003/z0.500"].value == "complete"


def test_environment_reaches_the_command(tmp_path: Path) -> None:
    names = ["RECONCILER_PRODUCTION_DIR", "RECONCILER_TASK_KEY", "RECONCILER_TASK_INDEX", "RECONCILER_ATTEMPT", "RECONCILER_TOKEN", "OMP_NUM_THREADS"]
    code = "import os,json; p=os.environ['RECONCILER_PRODUCTION_DIR']+'/" + OUT + "'; open(p,'w').write(json.dumps({n: os.environ.get(n) for n in " + repr(names) + "}))"
    manifest, pdir = write_manifest(tmp_path, py(code), env={"OMP_NUM_THREADS": "1"})
    assert run_wrapper(manifest).returncode == 0
    got = json.loads((pdir / OUT).read_text())
    assert got == {
        "RECONCILER_PRODUCTION_DIR": str(pdir),
        "RECONCILER_TASK_KEY": "r0003/z0.500",
        "RECONCILER_TASK_INDEX": "42",
        "RECONCILER_ATTEMPT": "2",
        "RECONCILER_TOKEN": "tok-123",
        "OMP_NUM_THREADS": "1",
    }


def test_nonzero_exit_propagates_without_marker(tmp_path: Path) -> None:
    manifest, pdir = write_manifest(tmp_path, py(WRITE_OUTPUT + "; sys.exit(3)"))
    res = run_wrapper(manifest)
    assert res.returncode == 3
    assert "command exited with 3" in res.stderr
    assert (pdir / OUT).exists() and read_marker(pdir, the_task()) is None


def test_killed_by_signal_is_128_plus_signal(tmp_path: Path) -> None:
    manifest, pdir = write_manifest(tmp_path, py("import os,signal; os.kill(os.getpid(), signal.SIGKILL)"))
    res = run_wrapper(manifest)
    assert res.returncode == 128 + 9
    assert "command exited with 137" in res.stderr


def test_timeout_is_124(tmp_path: Path) -> None:
    manifest, pdir = write_manifest(tmp_path, py("import time; time.sleep(30)"), timeout_s=0.5)
    started = time.monotonic()
    res = run_wrapper(manifest)
    assert res.returncode == 124
    assert "timeout after 0.5 s" in res.stderr
    assert time.monotonic() - started < 10
    assert read_marker(pdir, the_task()) is None


def test_invalid_outputs_are_65_without_marker(tmp_path: Path) -> None:
    manifest, pdir = write_manifest(tmp_path, py(WRITE_OUTPUT), validator={"kind": "hdf5", "datasets": ["galaxies/ra"]})
    res = run_wrapper(manifest)
    assert res.returncode == 65
    assert "outputs invalid: not a readable HDF5 file" in res.stderr
    assert read_marker(pdir, the_task()) is None
    # exit 0 without writing anything is invalid too
    (pdir / OUT).unlink()
    manifest, pdir = write_manifest(tmp_path, py("pass"))
    res = run_wrapper(manifest)
    assert res.returncode == 65 and f"outputs invalid: missing {OUT}" in res.stderr


def test_production_dir_is_substituted_and_parents_created(tmp_path: Path) -> None:
    out = "deep/er/tree/file.txt"
    argv = py("import sys; open(sys.argv[1],'w').write(sys.argv[2])") + ["${PRODUCTION_DIR}/" + out, "x=${PRODUCTION_DIR}"]
    manifest, pdir = write_manifest(tmp_path, argv, outputs=[out])
    res = run_wrapper(manifest)
    assert res.returncode == 0, res.stderr
    assert (pdir / out).read_text() == f"x={pdir}"


def test_shell_metacharacters_reach_the_program_literally(tmp_path: Path) -> None:
    nasty = "$(touch pwned); `touch pwned2` && echo hi > x | cat; 'quote\" ${HOME} *"
    argv = py("import sys; open(sys.argv[1],'w').write(sys.argv[2])") + ["${PRODUCTION_DIR}/" + OUT, nasty]
    manifest, pdir = write_manifest(tmp_path, argv)
    res = subprocess.run([sys.executable, "-m", "reconciler.wrapper", str(manifest), "7"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (pdir / OUT).read_text() == nasty
    assert not list(tmp_path.glob("pwned*")) and not (tmp_path / "x").exists()


def test_python_placeholder_means_this_interpreter(tmp_path: Path) -> None:
    argv = ["${PYTHON}", "-c", "import sys; open(sys.argv[1],'w').write(sys.executable)", "${PRODUCTION_DIR}/" + OUT]
    manifest, pdir = write_manifest(tmp_path, argv)
    assert run_wrapper(manifest).returncode == 0
    assert (pdir / OUT).read_text() == sys.executable


def test_bad_index_and_missing_command(tmp_path: Path) -> None:
    manifest, _ = write_manifest(tmp_path, ["no-such-command-xyz"])
    res = run_wrapper(manifest, index="8")
    assert res.returncode == 2 and "array index 8 is not in manifest" in res.stderr
    res = run_wrapper(manifest)
    assert res.returncode == 127 and "command not found: no-such-command-xyz" in res.stderr
    res = run_wrapper(tmp_path / "nope.json")
    assert res.returncode == 2


def test_sigterm_is_forwarded_and_exits_143(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    code = f"import os,time; open({str(pidfile)!r},'w').write(str(os.getpid())); time.sleep(60)"
    manifest, pdir = write_manifest(tmp_path, py(code))
    proc = subprocess.Popen([sys.executable, "-m", "reconciler.wrapper", str(manifest), "7"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text()):
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    child = int(pidfile.read_text())
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 143
    assert "cancelled by SIGTERM" in err
    deadline = time.monotonic() + 5
    while True:
        try:
            os.kill(child, 0)
            with open(f"/proc/{child}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except (ProcessLookupError, FileNotFoundError):
            break
        assert time.monotonic() < deadline, "the command survived its wrapper's cancellation"
        time.sleep(0.05)
    assert read_marker(pdir, the_task()) is None


def test_unknown_validator_in_the_manifest_is_invalid_output(tmp_path: Path) -> None:
    manifest, pdir = write_manifest(tmp_path, py(WRITE_OUTPUT), validator={"kind": "md5", "datasets": []})
    res = run_wrapper(manifest)
    assert res.returncode == 65 and "validation failed to run: unknown validator" in res.stderr
    assert read_marker(pdir, the_task()) is None


def test_wrapper_starts_without_pydantic_or_h5py() -> None:
    """The wrapper starts once per task (40,000 times a production): pydantic alone would
    add ~0.25 s to each start, h5py ~0.2 s when the validator does not need it."""
    code = "import sys, reconciler.wrapper, reconciler.outputs, reconciler.markers, reconciler.validators; print(sorted(m for m in ('pydantic', 'h5py', 'numpy', 'ruamel') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


# ---------------------------------------------------------------- failure causes


def run_logged(manifest: Path, tmp_path: Path) -> tuple[int, str]:
    """The wrapper with stderr in a file, as under Slurm's --error: (exit code, the log)."""
    log = tmp_path / "task.err"
    with log.open("wb") as err:
        rc = subprocess.run([sys.executable, "-m", "reconciler.wrapper", str(manifest), "7"], stderr=err, timeout=60).returncode
    return rc, log.read_text()


def the_cause(manifest: Path) -> Cause | None:
    doc = read_cause(manifest, 7)
    assert cause_path(manifest, 7) == manifest.parent / "causes" / "manifest.7.json"
    return from_doc(doc)


def test_success_writes_no_cause(tmp_path: Path) -> None:
    manifest, _ = write_manifest(tmp_path, py(WRITE_OUTPUT))
    assert run_wrapper(manifest).returncode == 0
    assert not (tmp_path / "causes").exists()


def test_a_command_that_does_not_exist_is_recorded_as_such(tmp_path: Path) -> None:
    manifest, _ = write_manifest(tmp_path, ["no-such-generator", "--seed", "1"])
    assert run_wrapper(manifest).returncode == 127
    assert the_cause(manifest) == Cause(CauseKind.NOT_FOUND, "no-such-generator", 127)
    # a command that exits 127 by itself is an exit code, which a retry may well fix
    manifest, _ = write_manifest(tmp_path, py("import sys; sys.exit(127)"))
    assert run_wrapper(manifest).returncode == 127
    cause = the_cause(manifest)
    assert cause is not None and cause.kind is CauseKind.EXIT and not cause.kind.permanent


def test_a_file_that_cannot_be_executed_is_recorded_as_such(tmp_path: Path) -> None:
    script = tmp_path / "gen.sh"
    script.write_text("#!/bin/sh\nexit 0\n")  # not chmod +x
    manifest, _ = write_manifest(tmp_path, [str(script)])
    assert run_wrapper(manifest).returncode == 126
    assert the_cause(manifest) == Cause(CauseKind.NOT_EXECUTABLE, str(script), 126)


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.ENOMEM, errno.ETXTBSY, errno.EIO, errno.ESTALE])
def test_a_launch_that_fails_for_the_node_is_retryable_not_permanent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """A fork under memory pressure or a flaky software mount says nothing about the command:
    recorded as a launch failure the planner backs off from, never as "not executable"."""
    manifest, _ = write_manifest(tmp_path, ["generator", "--seed", "1"])

    def refuse(*_a: object, **_k: object) -> object:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(signal, "signal", lambda *_a: None)  # in-process: leave pytest's handlers alone
    assert wrapper.run(manifest, "7") == wrapper.EXIT_TEMPFAIL
    cause = the_cause(manifest)
    assert cause == Cause(CauseKind.LAUNCH_FAILED, f"generator: {os.strerror(code)}", wrapper.EXIT_TEMPFAIL)
    assert not cause.kind.permanent and cause.text == f"command could not be started: generator: {os.strerror(code)}"


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR, errno.ENOTDIR])
def test_a_launch_that_fails_for_the_file_is_not_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    manifest, _ = write_manifest(tmp_path, ["generator"])

    def refuse(*_a: object, **_k: object) -> object:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(signal, "signal", lambda *_a: None)
    assert wrapper.run(manifest, "7") == wrapper.EXIT_NOT_EXECUTABLE
    assert the_cause(manifest) == Cause(CauseKind.NOT_EXECUTABLE, "generator", 126)


def test_an_exit_carries_the_last_lines_of_stderr_but_not_the_wrappers(tmp_path: Path) -> None:
    code = "import sys\nfor i in range(30): print('line', i, file=sys.stderr)\nraise ValueError('bad seed 42')"
    manifest, _ = write_manifest(tmp_path, py(code))
    rc, log = run_logged(manifest, tmp_path)
    assert rc == 1 and "reconciler: task r0003/z0.500" in log
    cause = the_cause(manifest)
    assert cause is not None and (cause.kind, cause.exit_code) == (CauseKind.EXIT, 1)
    assert len(cause.tail) == 10 and cause.tail[-1] == "ValueError: bad seed 42"
    assert not any(line.startswith("reconciler:") for line in cause.tail)
    assert cause.text == "exit 1: ValueError: bad seed 42"


def test_signal_timeout_and_invalid_outputs_each_say_so(tmp_path: Path) -> None:
    manifest, _ = write_manifest(tmp_path, py("import os,signal; os.kill(os.getpid(), signal.SIGSEGV)"))
    assert run_wrapper(manifest).returncode == 128 + 11
    assert the_cause(manifest) == Cause(CauseKind.SIGNAL, "SIGSEGV", 139)
    manifest, _ = write_manifest(tmp_path, py("import time; time.sleep(30)"), timeout_s=0.5)
    assert run_wrapper(manifest).returncode == 124
    cause = the_cause(manifest)
    assert cause is not None and cause.text == "timeout after 0.5 s"
    manifest, _ = write_manifest(tmp_path, py("pass"))
    assert run_wrapper(manifest).returncode == 65
    cause = the_cause(manifest)
    assert cause is not None and (cause.group, cause.text) == ("outputs invalid", f"outputs invalid: missing {OUT}")
