"""The pyslurm backend without pyslurm (it builds only against Slurm 25.11; this is 22.05).

Job objects are SimpleNamespace records shaped after pyslurm's own classes, read in the
PySlurm/pyslurm repository:
- ``pyslurm/core/job/job.pyx`` (``pyslurm.Job``, from ``pyslurm.Jobs.load()``): ``id``,
  ``name``, ``user_name``, ``state`` (``slurm_job_state_string``), ``state_reason``,
  ``exit_code`` / ``exit_code_signal`` (``_get_exit_code`` of the wait status),
  ``comment``, ``start_time`` / ``end_time`` (epoch or None, ``_raw_time``), ``array_id``
  and ``array_task_id`` (``u32_parse``: 0 becomes None, so task 0 has ``array_task_id``
  None), ``array_tasks_waiting`` (``array_task_str`` without the ``%`` throttle, None if
  empty); ``pyslurm.Jobs`` is a MultiClusterMap (``.values()``).
- ``pyslurm/db/job.pyx`` (``pyslurm.db.Job``, from ``pyslurm.db.Jobs.load(JobFilter(...))``):
  the same names; ``comment`` is the stored job comment, ``state_reason`` the previous
  reason; ``pyslurm.db.Jobs`` is a list. ``JobFilter`` takes ``ids``, ``users``,
  ``start_time``...
- ``pyslurm/db/stats.pyx`` (``JobStatistics``, ``JobStepStatistics``): a db job's ``stats``
  and each of its ``steps[..].stats`` (``pyslurm.db.JobSteps``, a dict) carry
  ``max_resident_memory`` (bytes) and ``total_cpu_time`` (whole seconds, from
  ``tot_cpu_sec``); the job's ``elapsed_time`` is in seconds.
The values are those of the CLI captures tests/data/slurm/squeue_mixed.json and
sacct_final.txt (jobs 15 and 24), and for usage sacct_usage_final.txt (job 1), so both
backends must agree.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from reconciler.core.sizing import Usage
from reconciler.core.states import SchedState
from reconciler.errors import SubmitRejected, TransientError, UsageError
from reconciler.scheduler import make_scheduler, slurm_cli
from reconciler.scheduler.base import ArrayJob, JobRef, TaskSched
from reconciler.scheduler.script import job_name
from reconciler.scheduler.slurm_cli import SlurmCLI
from reconciler.scheduler.slurm_parse import parse_squeue
from reconciler.scheduler.slurm_pyslurm import (
    PyslurmScheduler,
    available,
    choose_backend_name,
    exported_environment,
    job_indices,
    job_record,
    job_usage,
    jobs_of,
    parse_version,
    records,
)
from reconciler.scheduler.slurm_sacct import parse_sacct
from reconciler.scheduler.slurm_view import merge_view
from reconciler.spec.models import Machine, MachineDefaults

S = SchedState
DATA = Path(__file__).parent / "data" / "slurm"
TOK = "reconciler:tok-mixed"
V1_SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Start", "End", "JobName", "Comment")  # sacct_final.txt's


def ctld_job(id: int, array_id: int | None, task: int | None, state: str, **kw: Any) -> SimpleNamespace:
    base: dict[str, Any] = {
        "id": id,
        "array_id": array_id,
        "array_task_id": task,
        "array_tasks_waiting": None,
        "state": state,
        "state_reason": "None",
        "exit_code": 0,
        "exit_code_signal": 0,
        "comment": TOK,
        "start_time": None,
        "end_time": None,
        "name": "cap.0002",
        "user_name": "root",
    }
    base.update(kw)
    return SimpleNamespace(**base)


# slurmctld's view at the moment of squeue_mixed.json (pyslurm.Jobs.load())
CTLD_MIXED = [
    ctld_job(16, 15, None, "COMPLETED", start_time=1795427021, end_time=1795427022),  # task 0: u32_parse(0) is None
    ctld_job(17, 15, 1, "COMPLETED", start_time=1795427021, end_time=1795427022),
    ctld_job(18, 15, 2, "FAILED", state_reason="NonZeroExitCode", exit_code=2, start_time=1795427023, end_time=1795427023),
    ctld_job(19, 15, 3, "FAILED", state_reason="JobLaunchFailure", exit_code=0, exit_code_signal=9, start_time=1795427023, end_time=1795427023),
    ctld_job(20, 15, 4, "CANCELLED", exit_code_signal=15, start_time=1795427024, end_time=1795427024),
    ctld_job(21, 15, 5, "PENDING", state_reason="JobArrayTaskLimit", start_time=1795427146),  # requeued
    ctld_job(22, 15, 6, "RUNNING", start_time=1795427024, end_time=1826963024),
    ctld_job(23, 15, 7, "RUNNING", start_time=1795427025, end_time=1826963025),
    ctld_job(15, 15, None, "PENDING", array_tasks_waiting="8-9", state_reason="JobArrayTaskLimit"),
    ctld_job(24, None, None, "PENDING", comment="reconciler:tok-timeout", name="cap.0003", start_time=1826963025),
    ctld_job(99, None, None, "RUNNING", comment="reconciler:tok-mixed", user_name="someone-else"),
]

# slurmdbd's view at the moment of sacct_final.txt (pyslurm.db.Jobs.load())
DB_FINAL = [
    ctld_job(16, 15, None, "COMPLETED", start_time=1795427021, end_time=1795427022),
    ctld_job(17, 15, 1, "COMPLETED", start_time=1795427021, end_time=1795427022),
    ctld_job(18, 15, 2, "FAILED", exit_code=2, start_time=1795427023, end_time=1795427023),
    ctld_job(19, 15, 3, "FAILED", exit_code_signal=9, start_time=1795427023, end_time=1795427023),
    ctld_job(20, 15, 4, "CANCELLED", start_time=1795427024, end_time=1795427024),
    ctld_job(22, 15, 6, "COMPLETED", start_time=1795427024, end_time=1795427054),
    ctld_job(23, 15, 7, "COMPLETED", start_time=1795427025, end_time=1795427055),
    ctld_job(25, 15, 8, "COMPLETED", start_time=1795427055, end_time=1795427085),
    ctld_job(15, 15, 9, "COMPLETED", start_time=1795427056, end_time=1795427086),  # raw id = array id
    ctld_job(21, 15, 5, "COMPLETED", start_time=1795427146, end_time=1795427166),
    ctld_job(24, None, None, "TIMEOUT", comment="reconciler:tok-timeout", name="cap.0003", start_time=1795427086, end_time=1795427149),
]


def db_usage_job(id: int, task: int | None, state: str, elapsed: int, rss_kib: int | None, cpu_s: int, **kw: Any) -> SimpleNamespace:
    """A ``pyslurm.db.Job`` of array 1 with its statistics and its one batch step (sacct_usage_final.txt)."""
    step_stats = SimpleNamespace(max_resident_memory=rss_kib * 1024 if rss_kib is not None else None, total_cpu_time=cpu_s)
    steps = {"batch": SimpleNamespace(stats=step_stats)}
    stats = SimpleNamespace(max_resident_memory=step_stats.max_resident_memory, total_cpu_time=cpu_s)
    return ctld_job(id, 1, task, state, comment="reconciler:tok-usage", name="cap.0005", elapsed_time=elapsed, stats=stats, steps=steps, **kw)


# slurmdbd's view at the moment of sacct_usage_final.txt; CPU times are whole seconds in pyslurm
DB_USAGE = [
    db_usage_job(3, None, "COMPLETED", 2, 47072, 1, start_time=1795427021, end_time=1795427023),
    db_usage_job(4, 1, "FAILED", 1, 425932, 0, exit_code_signal=9, start_time=1795427021, end_time=1795427022),
    db_usage_job(5, 2, "FAILED", 1, 16508, 0, exit_code=3, start_time=1795427021, end_time=1795427022),
    db_usage_job(1, 3, "TIMEOUT", 88, 4556, 0, start_time=1795427021, end_time=1795427109),
]


def summary(tasks: dict[int, TaskSched]) -> dict[int, tuple[SchedState, int | None, str]]:
    return {i: (t.state, t.exit_code, t.reason) for i, t in sorted(tasks.items())}


# ---------------------------------------------------------------- pure mapping


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (ctld_job(16, 15, None, "COMPLETED"), ("15", (0,), True)),  # task 0
        (ctld_job(17, 15, 1, "COMPLETED"), ("15", (1,), True)),
        (ctld_job(15, 15, 9, "COMPLETED"), ("15", (9,), True)),  # the last task keeps the array id
        (ctld_job(15, 15, None, "PENDING", array_tasks_waiting="8-9"), ("15", (8, 9), True)),
        (ctld_job(1, 1, None, "PENDING", array_tasks_waiting="2-19"), ("1", tuple(range(2, 20)), True)),
        (ctld_job(5, 5, None, "PENDING", array_tasks_waiting="1,3-7"), ("5", (1, 3, 4, 5, 6, 7), True)),
        (ctld_job(24, None, None, "PENDING"), ("24", (0,), False)),
    ],
)
def test_job_indices(job: SimpleNamespace, expected: tuple[str, tuple[int, ...], bool]) -> None:
    assert job_indices(job) == expected


def test_ctld_jobs_map_like_squeue() -> None:
    refs = [JobRef("tok-mixed", "15", 0.0, tuple(range(10)))]
    ours = merge_view(refs, records(CTLD_MIXED, "root"), None)
    cli = merge_view(refs, parse_squeue((DATA / "squeue_mixed.json").read_text()), None)
    assert summary(ours.tasks["15"]) == summary(cli.tasks["15"])
    assert summary(ours.tasks["15"])[3] == (S.FAILED, 137, "signal 9 (JobLaunchFailure)")
    assert ours.tasks["15"][6].end is None  # a running task's end_time is only the limit


def test_db_jobs_map_like_sacct() -> None:
    refs = [JobRef("tok-mixed", "15", 0.0, tuple(range(10))), JobRef("tok-timeout", "24", 0.0)]
    ours = merge_view(refs, [], records(DB_FINAL, "root"))
    cli = merge_view(refs, [], parse_sacct((DATA / "sacct_final.txt").read_text(), V1_SACCT_FIELDS))
    assert {i: (t.state, t.exit_code) for i, t in ours.tasks["15"].items()} == {
        i: (t.state, t.exit_code) for i, t in cli.tasks["15"].items()
    }
    assert ours.tasks["24"][0].state is S.TIMEOUT
    assert ours.gone == set()


def test_token_lookup_and_other_users() -> None:
    refs = [JobRef("tok-timeout", None, 0.0)]
    view = merge_view(refs, records(CTLD_MIXED, "root"), None)
    assert view.found == {"tok-timeout": "24"}
    assert "99" not in view.tasks  # another user's job with a look-alike comment


def test_job_record_fields() -> None:
    rec = job_record(CTLD_MIXED[2])
    assert (rec.job_id, rec.indices, rec.exit_code, rec.signal, rec.reason) == ("15", (2,), 2, 0, "NonZeroExitCode")
    assert rec.token == "tok-mixed" and rec.start == 1795427023.0


def test_jobs_of_both_collection_shapes() -> None:
    assert jobs_of({1: "a", 2: "b"}) == ["a", "b"]  # pyslurm.Jobs: a mapping
    assert jobs_of(["a"]) == ["a"]  # pyslurm.db.Jobs: a list
    assert jobs_of(None) == []


def test_exported_environment() -> None:
    script = "#!/bin/bash\n#SBATCH --job-name=x.0000\n#SBATCH --export=PATH,HOME,SLURM_CONF,MISSING\ntrue\n"
    assert exported_environment(script, {"PATH": "/bin", "HOME": "/root", "SECRET": "x"}) == {"PATH": "/bin", "HOME": "/root"}


# ---------------------------------------------------------------- versions and choice


@pytest.mark.parametrize(
    ("text", "expected"),
    [("slurm-wlm 22.05.8", (22, 5)), ("slurm 25.11.0", (25, 11)), ("25.5.0", (25, 5)), ("24.05.0", (24, 5)), ("", None), (None, None)],
)
def test_parse_version(text: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_version(text) == expected


def _no_pyslurm() -> Any:
    raise ImportError("No module named 'pyslurm'")


def _pyslurm(version: str) -> Any:
    return lambda: SimpleNamespace(__version__=version)


def test_available_when_it_does_not_import() -> None:
    ok, why = available(importer=_no_pyslurm, slurm_version=lambda: (22, 5))
    assert not ok and "does not import" in why


def test_available_version_mismatch_names_both() -> None:
    ok, why = available(importer=_pyslurm("25.11.0"), slurm_version=lambda: (22, 5))
    assert not ok and "25.11" in why and "22.05" in why


def test_available_when_versions_match() -> None:
    assert available(importer=_pyslurm("22.5.1"), slurm_version=lambda: (22, 5))[0]
    assert not available(importer=_pyslurm("22.5.1"), slurm_version=lambda: None)[0]


def test_available_on_this_machine_is_false() -> None:
    """pyslurm is not installable here (it needs Slurm 25.11's headers)."""
    ok, why = available()
    assert not ok and why


def test_choose_backend_name() -> None:
    yes = lambda: (True, "ok")  # noqa: E731
    no = lambda: (False, "pyslurm 25.11.0 is built for Slurm 25.11, but this machine runs Slurm 22.05")  # noqa: E731
    assert choose_backend_name("auto", check=yes) == "pyslurm"
    assert choose_backend_name("auto", check=no) == "slurm"
    assert choose_backend_name("slurm", check=no) == "slurm"
    assert choose_backend_name("local", check=no) == "local"
    assert choose_backend_name("pyslurm", check=yes) == "pyslurm"
    with pytest.raises(UsageError, match=r"25\.11.*22\.05.*use scheduler: slurm"):
        choose_backend_name("pyslurm", check=no)


def test_factory_refuses_a_mismatch() -> None:
    """The factory probes pyslurm (the constructor, handed the module, does no I/O)."""
    machine = MachineDefaults(machine=Machine(name="m", scheduler="pyslurm"))
    with pytest.raises(UsageError, match="use scheduler: slurm"):
        make_scheduler(machine)  # pyslurm does not import on this machine
    with pytest.raises(UsageError, match="use scheduler: slurm"):
        make_scheduler(MachineDefaults(machine=Machine(name="m")), "pyslurm")


def test_factory_auto_falls_back_to_the_cli() -> None:
    assert isinstance(make_scheduler(MachineDefaults(machine=Machine(name="m", scheduler="auto"))), SlurmCLI)


def test_constructors_do_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user is looked up on first use, not when the backend is built."""
    looked_up: list[str] = []

    def current_user() -> str:
        looked_up.append("x")
        return "someone"

    monkeypatch.setattr(slurm_cli, "_current_user", current_user)
    cli = SlurmCLI()
    b = PyslurmScheduler(FakePyslurm([], []))
    assert looked_up == [] and b.calls == [] and cli.calls == []
    assert b.user == "someone" and cli.user == "someone"
    assert len(looked_up) == 2  # once per backend, then remembered
    assert cli.user == "someone" and len(looked_up) == 2


# ---------------------------------------------------------------- the backend on a fake module


class FakePyslurm:
    """Just the pyslurm surface the backend uses, recording what it was asked."""

    def __init__(self, ctld: list[Any], db: list[Any], submit_error: Exception | None = None) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.filters: list[dict[str, Any]] = []
        self.cancelled: list[int] = []
        fake = self

        class JobSubmitDescription:
            def __init__(self, **kw: Any) -> None:
                self.kw = kw

            def load_sbatch_options(self) -> None:
                self.kw["loaded"] = True

            def submit(self) -> int:
                if submit_error is not None:
                    raise submit_error
                fake.submitted.append(self.kw)
                return 4242

        class Jobs:
            @staticmethod
            def load() -> dict[int, Any]:
                return {j.id: j for j in ctld}

        class JobFilter:
            def __init__(self, **kw: Any) -> None:
                fake.filters.append(kw)

        class DbJobs:
            @staticmethod
            def load(_filter: Any) -> list[Any]:
                return list(db)

        class Job:
            def __init__(self, job_id: int) -> None:
                self.job_id = job_id

            def cancel(self) -> None:
                fake.cancelled.append(self.job_id)

        self.JobSubmitDescription = JobSubmitDescription
        self.Jobs = Jobs
        self.Job = Job
        self.db = SimpleNamespace(Jobs=DbJobs, JobFilter=JobFilter)


def _array_job(tmp_path: Path) -> ArrayJob:
    script = "#!/bin/bash\n#SBATCH --export=PATH\ntrue\n"
    return ArrayJob("tokP", "p.0000", tmp_path / "s.sbatch", script, (0,), None, tmp_path, "o", "e")


def test_backend_submit(tmp_path: Path) -> None:
    fake = FakePyslurm([], [])
    b = PyslurmScheduler(module=fake, user="root", env={"PATH": "/bin"})
    assert b.submit(_array_job(tmp_path)) == "4242"
    assert fake.submitted == [
        {"script": str(tmp_path / "s.sbatch"), "working_directory": str(tmp_path), "environment": {"PATH": "/bin"}, "loaded": True}
    ]


def test_backend_submit_errors(tmp_path: Path) -> None:
    lost = PyslurmScheduler(module=FakePyslurm([], [], RuntimeError("Socket timed out on send/recv operation")), user="root")
    with pytest.raises(TransientError, match="outcome unknown.*tokP"):
        lost.submit(_array_job(tmp_path))
    bad = PyslurmScheduler(module=FakePyslurm([], [], RuntimeError("Invalid partition name specified")), user="root")
    with pytest.raises(SubmitRejected, match="Invalid partition"):
        bad.submit(_array_job(tmp_path))


def test_backend_observe_queue_only() -> None:
    in_flight = [j for j in CTLD_MIXED if j.state in ("PENDING", "RUNNING")]
    fake = FakePyslurm(in_flight, DB_FINAL)
    b = PyslurmScheduler(module=fake, user="root")
    view = b.observe([JobRef("tok-mixed", "15", 0.0, (5, 6, 7, 8, 9))])
    assert [c[0] for c in b.calls] == ["pyslurm.Jobs.load"]
    assert view.tasks["15"][7].state is S.RUNNING


def test_backend_reads_accounting_when_the_queue_shows_tasks_ended() -> None:
    """15_0-15_4 ended and still in slurmctld: accounting is read once for their usage."""
    fake = FakePyslurm(CTLD_MIXED, DB_FINAL)
    b = PyslurmScheduler(module=fake, user="root")
    view = b.observe([JobRef("tok-mixed", "15", 0.0, tuple(range(10)))])
    assert [c[0] for c in b.calls] == ["pyslurm.Jobs.load", "pyslurm.db.Jobs.load"]
    assert view.tasks["15"][7].state is S.RUNNING  # slurmctld still wins over accounting


def test_job_usage_matches_what_sacct_says() -> None:
    refs = [JobRef("tok-usage", "1", 0.0, (0, 1, 2, 3))]
    ours = merge_view(refs, [], records(DB_USAGE, "root", with_usage=True)).tasks["1"]
    cli = merge_view(refs, [], parse_sacct((DATA / "sacct_usage_final.txt").read_text())).tasks["1"]
    assert {i: t.state for i, t in ours.items()} == {i: t.state for i, t in cli.items()}
    for i in range(4):
        a, b = ours[i].usage, cli[i].usage
        assert a is not None and b is not None
        assert (a.elapsed_s, a.max_rss_mb) == (b.elapsed_s, b.max_rss_mb)
        assert a.cpu_s is not None and b.cpu_s is not None and abs(a.cpu_s - b.cpu_s) < 1  # pyslurm: whole seconds
    assert ours[1].usage is not None and ours[1].usage.max_rss_mb is not None and ours[1].usage.max_rss_mb > 100  # killed over --mem=100M


def test_job_usage_shapes() -> None:
    assert job_usage(ctld_job(3, 1, None, "COMPLETED")) is None  # slurmctld's job: no statistics
    no_steps = ctld_job(3, 1, None, "COMPLETED", elapsed_time=5, stats=SimpleNamespace(max_resident_memory=2**21, total_cpu_time=4), steps={})
    assert job_usage(no_steps) == Usage(elapsed_s=5.0, max_rss_mb=2.0, cpu_s=4.0)
    two_steps = {"batch": SimpleNamespace(stats=SimpleNamespace(max_resident_memory=2**20)), "0": SimpleNamespace(stats=SimpleNamespace(max_resident_memory=3 * 2**20))}
    many = ctld_job(3, 1, None, "COMPLETED", elapsed_time=5, stats=SimpleNamespace(max_resident_memory=4 * 2**20, total_cpu_time=4), steps=two_steps)
    assert job_usage(many) == Usage(elapsed_s=5.0, max_rss_mb=3.0, cpu_s=4.0)  # the largest step's, not a sum
    assert job_record(DB_USAGE[0]).usage is None  # only accounting's records are read for usage
    assert job_record(DB_USAGE[0], with_usage=True).usage == Usage(2.0, 47072 / 1024, 1.0)


def test_backend_accounting_records_carry_usage() -> None:
    fake = FakePyslurm([], DB_USAGE)
    b = PyslurmScheduler(module=fake, user="root")
    view = b.observe([JobRef("tok-usage", "1", 1000.0, (0, 1, 2, 3))])
    assert [c[0] for c in b.calls] == ["pyslurm.Jobs.load", "pyslurm.db.Jobs.load"]
    assert view.tasks["1"][3].state is S.TIMEOUT and view.tasks["1"][3].usage == Usage(88.0, 4556 / 1024, 0.0)


def test_backend_observe_with_accounting() -> None:
    fake = FakePyslurm([], DB_FINAL)
    b = PyslurmScheduler(module=fake, user="root")
    view = b.observe([JobRef("tok-mixed", "15", 1000.0, tuple(range(10))), JobRef("x", "77", 2000.0, (0,))])
    assert [c[0] for c in b.calls] == ["pyslurm.Jobs.load", "pyslurm.db.Jobs.load"]
    assert fake.filters == [{"users": ["root"], "start_time": 1000 - 3600, "ids": [15, 77]}]
    assert view.tasks["15"][9].state is S.COMPLETED and view.gone == {"77"}
    fake.filters.clear()
    view = b.observe([JobRef("tok-timeout", None, 1000.0)])
    assert fake.filters == [{"users": ["root"], "start_time": 1000 - 3600}]  # by comment: no ids
    assert view.found == {"tok-timeout": "24"}


def test_backend_finds_a_lost_token_by_job_name_where_accounting_keeps_no_comments() -> None:
    """pyslurm.db.Job.comment is empty without AccountingStoreFlags=job_comment; the name
    (script.job_name) still carries the token's tag."""
    token = "1761000000-3f9c0a17b2e4"
    name = job_name("cap", 4, token)
    db = [
        ctld_job(5, 3, None, "COMPLETED", comment="", name=name, start_time=1000, end_time=1003),
        ctld_job(3, 3, 1, "COMPLETED", comment="", name=name, start_time=1000, end_time=1003),
        ctld_job(8, 4, None, "COMPLETED", comment="", name="cap.0004.aaaaaaaa", start_time=1000, end_time=1003),
    ]
    fake = FakePyslurm([], db)
    b = PyslurmScheduler(module=fake, user="root")
    view = b.observe([JobRef(token, None, 1000.0, (0, 1), name)])
    assert [c[0] for c in b.calls] == ["pyslurm.Jobs.load", "pyslurm.db.Jobs.load"]
    assert view.found == {token: "3"} and set(view.tasks) == {"3"}
    assert {i: t.state for i, t in view.tasks["3"].items()} == {0: S.COMPLETED, 1: S.COMPLETED}


def test_backend_observe_transient() -> None:
    class Down(FakePyslurm):
        pass

    fake = Down([], [])

    def boom() -> Any:
        raise RuntimeError("Unable to contact slurm controller (connect failure)")

    fake.Jobs = SimpleNamespace(load=boom)  # type: ignore[assignment]
    b = PyslurmScheduler(module=fake, user="root", retry_seconds=0.3)
    with pytest.raises(TransientError, match="nothing was marked failed"):
        b.observe([JobRef("t", "15", 0.0, (0,))])


def test_backend_cancel_whole_job() -> None:
    fake = FakePyslurm([], [])
    b = PyslurmScheduler(module=fake, user="root")
    b.cancel("15")
    assert fake.cancelled == [15]
