"""The optional Slurm backend through pyslurm (the C API) instead of the command-line tools.

pyslurm builds only against the exact Slurm major release it was made for (PyPI: 25.11),
so it is an optional extra, imported lazily, and used only when its MAJOR.MINOR equals the
running Slurm's: a mismatched libslurm may load and then misread structures. An explicit
``scheduler: pyslurm`` on a machine where that does not hold is a start-up error naming
both versions; ``scheduler: auto`` quietly falls back to the CLI backend.

The mapping from pyslurm's job objects to task states is kept in pure functions taking
plain objects with pyslurm's attribute names (tested on SimpleNamespace records shaped after
pyslurm's ``pyslurm/core/job/job.pyx``, ``pyslurm/db/job.pyx`` and ``pyslurm/db/stats.pyx``).
Accounting's jobs carry what each task used (:func:`job_usage`), read from the statistics
``pyslurm.db.Jobs.load`` already brings, as the CLI reads sacct's step lines. They reuse the state
table and merge rules of :mod:`~reconciler.scheduler.slurm_view` and the read strategy of
:mod:`~reconciler.scheduler.slurm_query`, so both backends read Slurm the same way.

Whether pyslurm is usable here (it imports, and matches the running Slurm) is probed by
:func:`choose_backend_name`, which the factory ``make_scheduler`` calls; the backend itself
is handed the imported module and does no I/O until it is used.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any, TypeVar

from reconciler.core.sizing import Usage
from reconciler.errors import SubmitRejected, TransientError, UsageError
from reconciler.scheduler.base import ArrayJob, JobRef, SchedulerView
from reconciler.scheduler.slurm_cli import SlurmCLI
from reconciler.scheduler.slurm_parse import SlurmRecord, expand_array
from reconciler.scheduler.slurm_query import (
    _Unanswered,
    is_transient,
    observe_in_two_reads,
    until_answered,
)

T = TypeVar("T")

_VERSION_RE = re.compile(r"(\d+)\.(\d+)")


# --------------------------------------------------------------------------- versions


def parse_version(text: str | None) -> tuple[int, int] | None:
    """``"slurm-wlm 22.05.8"``, ``"slurm 25.11.0"``, ``"25.5.0"`` -> (major, minor)."""
    if not text:
        return None
    m = _VERSION_RE.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def running_slurm_version(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """MAJOR.MINOR of the installed Slurm, from ``sinfo --version`` (None if unavailable)."""
    try:
        proc = subprocess.run(
            ["sinfo", "--version"], capture_output=True, text=True, timeout=30, check=False,
            env=dict(env) if env is not None else None,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(proc.stdout) if proc.returncode == 0 else None


def import_pyslurm() -> ModuleType:
    """Import pyslurm on demand: importing it loads libslurm, which may be absent or other."""
    return importlib.import_module("pyslurm")


def pyslurm_version(module: Any) -> str:
    """pyslurm's own version string (``__version__``, or ``version()`` in older releases)."""
    v = getattr(module, "__version__", None)
    if not v and callable(getattr(module, "version", None)):
        v = module.version()
    return str(v or "")


def available(
    *,
    importer: Callable[[], Any] = import_pyslurm,
    slurm_version: Callable[[], tuple[int, int] | None] = running_slurm_version,
) -> tuple[bool, str]:
    """Whether pyslurm imports and was built for the running Slurm release, and why not."""
    try:
        module = importer()
    except Exception as e:  # ImportError, or an OSError from a missing libslurm.so.NN
        return False, f"pyslurm does not import ({type(e).__name__}: {e})"
    pv_text = pyslurm_version(module)
    pv = parse_version(pv_text)
    sv = slurm_version()
    if sv is None:
        return False, f"pyslurm {pv_text} imports, but the running Slurm version is unknown (sinfo --version failed)"
    if pv != sv:
        return False, (
            f"pyslurm {pv_text} is built for Slurm {_fmt(pv)}, but this machine runs Slurm {_fmt(sv)}"
        )
    return True, f"pyslurm {pv_text} matches Slurm {_fmt(sv)}"


def _fmt(v: tuple[int, int] | None) -> str:
    return f"{v[0]}.{v[1]:02d}" if v else "unknown"


def choose_backend_name(
    machine_scheduler: str,
    *,
    check: Callable[[], tuple[bool, str]] = available,
) -> str:
    """The backend to use for the machine defaults' ``scheduler`` value.

    ``auto`` picks pyslurm when it is usable and the CLI otherwise; explicit names are
    returned as they are, except an explicit ``pyslurm`` that cannot work, which is a
    start-up error rather than a surprise at the first submission.
    """
    if machine_scheduler == "auto":
        return "pyslurm" if check()[0] else "slurm"
    if machine_scheduler == "pyslurm":
        ok, why = check()
        if not ok:
            raise UsageError(f"scheduler: pyslurm is not usable here: {why}; use scheduler: slurm")
    return machine_scheduler


# --------------------------------------------------------------------------- pure mapping


def job_indices(job: Any) -> tuple[str, tuple[int, ...], bool]:
    """(array's job id, indices covered, is an array) of one pyslurm job object.

    pyslurm reads ``array_job_id``/``array_task_id`` with ``u32_parse``, which maps 0 to
    None: ``array_id`` is None for a job without --array, and ``array_task_id`` is None
    both for task 0 and for the folded pending record, which is told apart by
    ``array_tasks_waiting`` (the folded string, "%" throttle already removed).
    """
    array_id = getattr(job, "array_id", None)
    if not array_id:
        return str(job.id), (0,), False
    waiting = getattr(job, "array_tasks_waiting", None)
    if waiting:
        return str(array_id), expand_array(str(waiting)), True
    task = getattr(job, "array_task_id", None)
    return str(array_id), (int(task) if task is not None else 0,), True


def _epoch(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def _number(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def job_usage(job: Any) -> Usage | None:
    """What one ``pyslurm.db.Job`` used, as sacct would say it (slurm_sacct.task_usage).

    ``pyslurm.db.Jobs.load`` brings each job's steps and their statistics in the same
    slurmdbd query (``pyslurm/db/stats.pyx``), so this costs no call: peak memory is the
    largest ``steps[..].stats.max_resident_memory`` (bytes; the job's own
    ``stats.max_resident_memory`` when it lists no steps), CPU time its
    ``stats.total_cpu_time`` (user + system summed over the steps, in whole seconds: pyslurm
    reads ``tot_cpu_sec`` only, where sacct shows milliseconds), elapsed time its
    ``elapsed_time`` (seconds). None when the object carries none of them.
    """
    stats = getattr(job, "stats", None)
    steps = jobs_of(getattr(job, "steps", None))
    rss_bytes = [_number(getattr(getattr(st, "stats", None), "max_resident_memory", None)) for st in steps]
    peaks = [b for b in rss_bytes if b is not None]
    if not steps:
        whole = _number(getattr(stats, "max_resident_memory", None))
        peaks = [whole] if whole else []
    cpu = _number(getattr(stats, "total_cpu_time", None))
    elapsed = _number(getattr(job, "elapsed_time", None))
    if not peaks and cpu is None and elapsed is None:
        return None
    return Usage(elapsed_s=elapsed, max_rss_mb=max(peaks) / 2**20 if peaks else None, cpu_s=cpu)


def job_record(job: Any, with_usage: bool = False) -> SlurmRecord:
    """One pyslurm job (``pyslurm.Job`` or ``pyslurm.db.Job``) -> a SlurmRecord.

    Exit code and signal come split already (``exit_code``, ``exit_code_signal``, decoded
    by pyslurm from the wait status); times are epoch integers or None. ``with_usage``:
    an accounting record (``pyslurm.db.Job``), whose statistics are read (job_usage);
    slurmctld's jobs carry none, like squeue's lines.
    """
    job_id, indices, is_array = job_indices(job)
    reason = getattr(job, "state_reason", "") or ""
    comment = getattr(job, "comment", "") or ""
    return SlurmRecord(
        job_id=job_id,
        indices=indices,
        is_array=is_array,
        raw_state=str(getattr(job, "state", "") or ""),
        exit_code=getattr(job, "exit_code", None),
        signal=getattr(job, "exit_code_signal", None) or 0,
        reason="" if reason in ("None", "(null)") else str(reason),
        start=_epoch(getattr(job, "start_time", None)),
        end=_epoch(getattr(job, "end_time", None)),
        name=str(getattr(job, "name", "") or ""),
        comment=str(comment),
        usage=job_usage(job) if with_usage else None,
    )


def jobs_of(collection: Any) -> list[Any]:
    """The job objects of ``pyslurm.Jobs`` (a mapping by cluster/id) or ``pyslurm.db.Jobs``
    (a list)."""
    if collection is None:
        return []
    if isinstance(collection, Mapping) or hasattr(collection, "values"):
        return list(collection.values())
    return list(collection)


def records(jobs: Iterable[Any], user: str | None = None, with_usage: bool = False) -> list[SlurmRecord]:
    """Records of these jobs, restricted to ``user`` when the objects say whose they are
    (``with_usage``: accounting's jobs, see job_record)."""
    out: list[SlurmRecord] = []
    for j in jobs:
        owner = getattr(j, "user_name", None)
        if user is not None and owner is not None and owner != user:
            continue
        out.append(job_record(j, with_usage))
    return out


def exported_environment(script: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables ``#SBATCH --export=A,B`` names, with their current values.

    pyslurm maps --export to its ``environment`` attribute (a dict), so the list the
    script names is resolved here, as sbatch would, instead of passing the text along.
    """
    names: list[str] = []
    for line in script.splitlines():
        m = re.match(r"#SBATCH\s+--export[= ](\S+)", line.strip())
        if m:
            names = [n for n in m.group(1).split(",") if n and n not in ("NONE", "ALL")]
    return {n: environ[n] for n in names if n in environ}


# --------------------------------------------------------------------------- the backend


class PyslurmScheduler:
    """Scheduler protocol over pyslurm: one slurmctld RPC and at most one slurmdbd query per
    observe(). Cancelling some array indices and MaxArraySize go through the CLI backend
    (one ``scancel``, ``scontrol``): pyslurm cancels by integer job id only."""

    name = "pyslurm"
    lookup_grace_s = SlurmCLI.lookup_grace_s

    def __init__(
        self,
        module: Any,
        *,
        retry_seconds: float = 60.0,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        """``module`` is pyslurm, imported by the caller once it checked that it matches the
        running Slurm (see make_scheduler), or a stand-in in tests."""
        self.pyslurm = module
        self.retry_seconds = retry_seconds
        self.env = dict(env) if env is not None else None
        self.cli = SlurmCLI(env=env, retry_seconds=retry_seconds, user=user)
        self.calls: list[list[str]] = []  # one entry per API call, like SlurmCLI.calls

    @property
    def user(self) -> str:
        """Whose jobs are read (the CLI backend's, resolved on first use)."""
        return self.cli.user

    def _read(self, what: list[str], fn: Callable[[], T]) -> T:
        """Run one read API call; retry while Slurm does not answer, then TransientError."""
        last = ""

        def attempt() -> T:
            nonlocal last
            self.calls.append(what)
            try:
                return fn()
            except Exception as e:
                last = f"{what[0]}: {e}"
                if is_transient(str(e)):
                    raise _Unanswered(last) from e
                raise TransientError(
                    f"{what[0]} failed: {e}; nothing was marked failed; the next pass will retry"
                ) from e

        return until_answered(attempt, self.retry_seconds, lambda: last)

    def submit(self, job: ArrayJob) -> str:
        """Submit the script file with its own #SBATCH options; never retried (see SlurmCLI)."""
        ps = self.pyslurm
        environ = self.env if self.env is not None else os.environ
        self.calls.append(["JobSubmitDescription.submit", str(job.script_path)])
        try:
            desc = ps.JobSubmitDescription(
                script=str(job.script_path),
                working_directory=str(job.workdir),
                environment=exported_environment(job.script, environ),
            )
            desc.load_sbatch_options()
            job_id = desc.submit()
        except Exception as e:
            msg = str(e)
            if is_transient(msg) or isinstance(e, TimeoutError):
                raise TransientError(
                    f"sbatch outcome unknown ({msg}); the job may exist: nothing was resubmitted, "
                    f"the next pass will look for token {job.token}"
                ) from e
            raise SubmitRejected(f"pyslurm rejected {job.name} (token {job.token}): {msg}", token=job.token, stderr=msg) from e
        return str(job_id)

    def observe(self, refs: Sequence[JobRef]) -> SchedulerView:
        """``pyslurm.Jobs.load()`` once, then ``pyslurm.db.Jobs.load()`` once if needed."""
        return observe_in_two_reads(refs, self._read_queue, self._read_accounting)

    def _read_queue(self, _job_ids: list[str]) -> list[SlurmRecord]:
        """slurmctld's jobs: ``Jobs.load()`` has no job filter, so all of them, then ours."""
        ps = self.pyslurm
        return records(self._read(["pyslurm.Jobs.load"], lambda: jobs_of(ps.Jobs.load())), self.user)

    def _read_accounting(self, job_ids: list[str], since: float) -> list[SlurmRecord]:
        """slurmdbd's records of our jobs since ``since`` (of these ids, when given)."""
        ps = self.pyslurm
        kwargs: dict[str, Any] = {"users": [self.user], "start_time": int(since)}
        if job_ids:
            kwargs["ids"] = sorted(int(i) for i in job_ids if i.isdigit())
        db = self._read(
            ["pyslurm.db.Jobs.load", *(f"{k}={v}" for k, v in sorted(kwargs.items()))],
            lambda: jobs_of(ps.db.Jobs.load(ps.db.JobFilter(**kwargs))),
        )
        return records(db, self.user, with_usage=True)

    def cancel(self, job_id: str, array_indices: Sequence[int] | None = None) -> None:
        """Cancel a whole job through pyslurm, some indices with one ``scancel``."""
        if array_indices:
            self.cli.cancel(job_id, array_indices)
            self.calls.extend(self.cli.calls[-1:])
            return
        ps = self.pyslurm
        self._read(["pyslurm.Job.cancel", job_id], lambda: ps.Job(int(job_id)).cancel())

    def max_array_size(self) -> int | None:
        """MaxArraySize, through ``scontrol show config`` (present wherever pyslurm works)."""
        return self.cli.max_array_size()

    def site_ceilings(self, partition: str | None) -> tuple[float | None, float | None]:
        """Node memory (MB) and the partition's MaxTime (s), through ``scontrol`` (SlurmCLI.site_ceilings)."""
        return self.cli.site_ceilings(partition)
