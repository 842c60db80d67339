"""Pydantic models of a production file and of machine defaults.

Every model forbids unknown fields, and every string that can reach an ``#SBATCH`` line,
a path, a git ref or an environment variable is constrained here, at the edge, so that
nothing downstream has to wonder whether a value is safe.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from reconciler.spec.pool import Pool

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9._-]{0,63}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_WS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("contains a control character (newline, tab, escape...)")
    return value


def _no_control_text(value: str) -> str:
    if _CONTROL_BUT_WS.search(value):
        raise ValueError("contains a control character")
    return value


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
"""Production, machine, job-type and axis names: they become paths, job names and tag names."""

Version = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")]
Line = Annotated[str, StringConstraints(max_length=1000), AfterValidator(_no_control)]
"""A one-line free string: no newline can sneak into a script or a log line."""
Text = Annotated[str, StringConstraints(max_length=5000), AfterValidator(_no_control_text)]
SlurmValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.,:&|!\[\]()*+-]{1,200}$")]
"""Values of #SBATCH options (account, partition, qos, constraint): no spaces, quotes, $ or newlines."""
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Scalar = int | float | bool | Line


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProductionMeta(Strict):
    """The ``production`` section: identity of the production."""

    name: Name
    version: Version = "v1.0"
    description: Text = ""
    tags: list[Line] = Field(default_factory=list)


class Exclusion(Strict):
    """A task (or a whole realization) left out on purpose, with the reason recorded."""

    realization: int
    redshift: float | None = None
    reason: Annotated[Line, StringConstraints(min_length=1)] = Field(
        description="Why it is excluded; required so the decision is reproducible."
    )


class Realizations(Strict):
    start: int = Field(default=0, ge=0)
    count: int = Field(default=1, ge=0, le=10_000_000)
    step: int = Field(default=1, ge=1)
    include: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    exclude: list[Exclusion] = Field(default_factory=list)

    def values(self) -> list[int]:
        """Realization numbers in canonical (ascending) order, before exclusions."""
        base = range(self.start, self.start + self.count * self.step, self.step)
        return sorted(set(base).union(self.include))


class Science(Strict):
    cosmology: Line = "unspecified"
    redshifts: list[float] = Field(min_length=1, max_length=10_000)
    realizations: Realizations
    catalog_params: dict[EnvName, Scalar] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_redshifts(self) -> Science:
        if len(set(self.redshifts)) != len(self.redshifts):
            raise ValueError("redshifts contain a duplicate")
        return self


class RetryPolicy(Strict):
    max_retries: int = Field(default=3, ge=0, le=100)
    backoff_multiplier: float = Field(default=2.0, ge=1.0, le=100.0)
    initial_delay_minutes: float = Field(default=10.0, ge=0.0)
    max_delay_minutes: float = Field(default=24 * 60.0, ge=0.0)
    memory_factor: float = Field(default=1.5, ge=1.0, le=100.0, description="a retry after out-of-memory asks this much more memory (capped at the node's)")
    time_factor: float = Field(default=1.5, ge=1.0, le=100.0, description="a retry after a timeout asks this much more time (capped at the partition's limit)")


class Execution(Strict):
    job_type: Name | None = None
    batch_size: int = Field(default=100, ge=1, le=1_000_000)
    timeout_hours: float = Field(default=1.0, gt=0, le=24 * 365)
    array_throttle: int | None = Field(default=None, ge=1, le=1_000_000)
    mode: Literal["array", "pool"] = Field(default="array", description="array: each batch one job array; pool: tasks run inside a few long worker jobs (execution.pool).")
    pool: Pool = Field(default_factory=Pool)
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    prune: bool = False
    rerun_on_change: bool = False
    adopt_existing: bool = True
    verify_per_pass: int = Field(default=0, ge=0, le=1_000_000, description=(
        "Completed tasks whose outputs each pass of once/watch opens and validates again (hdf5 opens and "
        "has its datasets, sha256 matches), rotating so that every completed task is checked in turn; "
        "a corrupt one is moved to qa/corrupt/ and run again. 0 (the default) checks none and costs nothing; "
        "`reconcile verify NAME` checks them all at once."))


class Resources(Strict):
    account: SlurmValue | None = None
    partition: SlurmValue | None = None
    qos: SlurmValue | None = None
    constraint: SlurmValue | None = None
    nodes_per_job: int | None = Field(default=None, ge=1, le=100_000)
    tasks_per_node: int | None = Field(default=None, ge=1, le=100_000)
    cpus_per_task: int | None = Field(default=None, ge=1, le=100_000)
    memory_gb: float | None = Field(default=None, gt=0, le=1_000_000)
    gpus_per_node: int | None = Field(default=None, ge=0, le=1024)


class CleanupPolicy(Strict):
    """What happens to a production's logs once their submissions have finished (the seed tool's
    section, kept because every field now does what it says)."""

    keep_logs_days: int = Field(default=90, ge=0, description="Logs (.out/.err, failure causes) of a submission that finished more than this many days ago are removed by a pass (planned: PRUNE_LOGS); manifests and scripts stay.")
    keep_intermediate: Literal[False] = Field(default=False, description="A production has no intermediate files (each task writes only its outputs); `true` is refused rather than silently ignored.")
    archive_completed: bool = Field(default=False, description="Instead of deleting the logs keep_logs_days prunes, pack each finished submission's logs into logs/archive/<batch>_<token>.tar.gz first.")


STRUCTURE_OUTPUTS = {
    "hierarchical": "catalogs/r{realization:04d}/mock_z{redshift:.3f}.hdf5",
    "flat": "catalogs/mock_r{realization:04d}_z{redshift:.3f}.hdf5",
}
"""The seed tool's two layouts: a task whose ``task.outputs`` is not given writes this one."""


class Outputs(Strict):
    base_path: Annotated[Line, StringConstraints(min_length=1)] = "work/productions"
    structure: Literal["hierarchical", "flat"] = Field(
        default="hierarchical",
        description="The seed tool's layout of catalogs, used as task.outputs when a production does not give task.outputs: " + "; ".join(f"{k}: {v}" for k, v in STRUCTURE_OUTPUTS.items()),
    )
    compression: Literal["gzip", "lzf", "none"] = "none"
    cleanup_policy: CleanupPolicy = Field(default_factory=CleanupPolicy)


class Validator(Strict):
    """How a task's outputs are judged valid."""

    kind: Literal["exists", "hdf5", "sha256"] = "exists"
    datasets: list[Line] = Field(default_factory=list, description="hdf5: datasets that must exist")


CommandLine = Annotated[Line, StringConstraints(min_length=1)]


class TaskSpec(Strict):
    """What one task runs and what it must produce."""

    command: CommandLine | Annotated[list[Line], Field(min_length=1, max_length=10_000)] = Field(
        description=(
            "One line (split into arguments as a POSIX shell would, without running one; shell syntax such as "
            "`&&`, `|`, `>` or `$(...)` is refused unless `shell: true`), or a YAML list: one argument per item, "
            "each a template, nothing split."
        )
    )
    shell: bool = Field(
        default=False,
        description=(
            "Run the command line with `bash -euo pipefail -c`: pipes, redirections and `&&` work, and every "
            "substituted value is shell-quoted, so no parameter can inject a command."
        ),
    )
    outputs: list[Annotated[Line, StringConstraints(min_length=1)]] = Field(
        min_length=1, max_length=100,
        description="Output path templates, relative to the production directory; when a production file leaves it out, the layout outputs.structure names (spec.load).",
    )
    inputs: list[Annotated[Line, StringConstraints(min_length=1)]] = Field(
        default_factory=list, max_length=100,
        description=(
            "Files a task reads that nothing in the production makes (initial conditions, halo catalogs): templates "
            "like outputs, absolute or relative to the production directory. A task whose input is missing waits "
            "(plan: waiting_input, with the path): it is not submitted, and never fails for it."
        ),
    )
    env: dict[EnvName, Line] = Field(default_factory=dict)
    validator: Validator = Field(default_factory=Validator)
    axes: dict[Name, list[Scalar]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _axes(self) -> TaskSpec:
        for name, values in self.axes.items():
            if name in ("realization", "redshift"):
                raise ValueError(f"axis {name!r} is built in; use science.{name}s")
            if not values:
                raise ValueError(f"axis {name!r} has no values")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"axis {name!r} contains a duplicate")
        if self.shell and isinstance(self.command, list):
            raise ValueError("shell: true runs one command line; write the command as one string, or drop shell: true to keep the list")
        return self


# ---- job environments (merged across layers by spec/environment.py)

SetupLine = Annotated[Line, StringConstraints(min_length=1)]
"""A shell line run by the batch script before the task wrapper (``module load x``): authored in
the repository, never a per-task value; one line per item (no newline: spec.models.Line)."""
Image = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9/][A-Za-z0-9._:/@+=-]{0,255}$")]
"""A container image (``docker:org/img:1.2``, ``org/img@sha256:...``, ``/path/img.sif``): no space,
quote, ``$`` or newline, and no leading ``-`` (it is one argument of the runtime's command)."""
ContainerRuntime = Literal["podman-hpc", "shifter", "apptainer", "none"]


class Container(Strict):
    """The container a task's command runs in (``runtime: none`` turns an inherited one off)."""

    runtime: ContainerRuntime
    image: Image | None = None

    @model_validator(mode="after")
    def _image(self) -> Container:
        if self.runtime != "none" and self.image is None:
            raise ValueError(f"runtime {self.runtime!r} needs an image, e.g. image: docker:org/img:1.2")
        return self


class Environment(Strict):
    """What a job needs around its command: setup lines, exported variables, a container."""

    setup: list[SetupLine] = Field(
        default_factory=list,
        description="Shell lines run before the task wrapper (module load, conda activate); machine, then job type, then production.",
    )
    export_env: list[EnvName] = Field(
        default_factory=list, description="Variables of the submitting environment added to #SBATCH --export (a union over the layers)."
    )
    container: Container | None = Field(default=None, description="The most specific layer that sets one wins; `runtime: none` turns it off.")


class Require(Strict):
    """When a fan-in stage's task may run on less than all of its members."""

    min_fraction: float = Field(default=1.0, gt=0.0, le=1.0, description=(
        "Share of a fan-in task's members that must be complete for it to run once every other member gave up "
        "(1.0, the default: all; a given-up member blocks it). The members used and missing are recorded, and the "
        "task becomes stale when a missing member completes later."))


BUILTIN_AXES = ("realization", "redshift")


class StageSpec(TaskSpec):
    """One stage of a campaign: a task section, the axes it runs over, the stages it needs, and
    its own job type, execution settings, resources and environment (over the production's)."""

    needs: list[Name] = Field(default_factory=list, description=(
        "Upstream stages whose tasks must be complete first, matched on the axes both stages have: same axes = one "
        "member each (map), fewer here = all members with this task's values (fan-in), more here = fan-out."))
    over: list[Literal["realization", "redshift"]] | None = Field(default=None, description="Which of science's axes this stage runs over (default: both); its own `axes` are added.")
    require: Require = Field(default_factory=Require)
    job_type: Name | None = None
    execution: Execution | None = Field(default=None, description="Over the production's execution section, field by field.")
    resources: Resources | None = Field(default=None, description="Over the production's resources, field by field.")
    environment: Environment | None = Field(default=None, description="Added to the production's environment (setup lines after its, export_env united, container replaced).")

    @model_validator(mode="after")
    def _over(self) -> StageSpec:
        for name, items in (("over", self.over or []), ("needs", self.needs)):
            if len(set(items)) != len(items):
                raise ValueError(f"{name}: lists an item twice")
        return self

    def task_spec(self) -> TaskSpec:
        """The stage's task section alone (what one stage's tasks run and produce)."""
        return TaskSpec.model_validate(self.model_dump(include=set(TaskSpec.model_fields), exclude_unset=True))


STAGE_ONLY_KEYS = frozenset({"needs", "over", "require", "job_type", "execution", "resources", "environment"})
"""StageSpec's keys that are not a task section's (spec.merge merges them into the stage's production)."""


class Production(Strict):
    """The effective configuration of one production (after merging machine defaults).

    A production is one stage written as ``task:``, or a campaign written as ``stages:`` (each
    a task section with ``needs``/``over``); exactly one of the two."""

    production: ProductionMeta
    science: Science
    execution: Execution = Field(default_factory=Execution)
    resources: Resources = Field(default_factory=Resources)
    outputs: Outputs = Field(default_factory=Outputs)
    environment: Environment = Field(default_factory=Environment)
    task: TaskSpec | None = None
    stages: dict[Name, StageSpec] = Field(default_factory=dict, max_length=100)

    @model_validator(mode="after")
    def _task_or_stages(self) -> Production:
        if self.task is None and not self.stages:
            raise ValueError("task: required section is missing")
        if self.task is not None and self.stages:
            raise ValueError("stages: give `task:` (one stage) or `stages:` (a campaign), not both")
        for name, stage in self.stages.items():
            for up in stage.needs:
                if up not in self.stages:
                    raise ValueError(f"stages.{name}.needs: no stage {up!r} in this production (its stages: {', '.join(self.stages)})")
                if up == name:
                    raise ValueError(f"stages.{name}.needs: a stage cannot need itself")
        return self

    @property
    def the_task(self) -> TaskSpec:
        """The task section of a production with one stage (a stage's effective production has one)."""
        if self.task is None:
            raise ValueError(f"production {self.production.name!r} has stages; ask for one stage's task section")
        return self.task


class JobTypeOverride(Strict):
    """A job type's resources and execution settings; flat, as in the seeds."""

    account: SlurmValue | None = None
    partition: SlurmValue | None = None
    qos: SlurmValue | None = None
    constraint: SlurmValue | None = None
    nodes_per_job: int | None = Field(default=None, ge=1)
    tasks_per_node: int | None = Field(default=None, ge=1)
    cpus_per_task: int | None = Field(default=None, ge=1)
    memory_gb: float | None = Field(default=None, gt=0)
    gpus_per_node: int | None = Field(default=None, ge=0)
    timeout_hours: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=1)
    array_throttle: int | None = Field(default=None, ge=1)
    mode: Literal["array", "pool"] | None = None
    pool: Pool | None = None
    setup: list[SetupLine] = Field(default_factory=list, description="Run after the machine's setup lines, before the production's.")
    container: Container | None = None


EXECUTION_KEYS = frozenset({"timeout_hours", "batch_size", "array_throttle", "mode", "pool"})
ENVIRONMENT_KEYS = frozenset({"setup", "container"})
"""Job-type keys merged by spec/environment.py, not copied into resources or execution."""


class Machine(Strict):
    """Site facts: which scheduler and the limits the site enforces.

    The whole section is optional (the seed tool's machine files have none): the name is the
    file's, and the scheduler ``auto`` (Slurm, where its tools are found, an error where they
    are not) for every machine but ``local``. A machine never runs its tasks on this host
    unless it is ``local`` or says ``scheduler: local``.
    """

    name: Name
    scheduler: Literal["local", "slurm", "pyslurm", "auto"] = Field(
        default="auto", description="left out: local for the machine named local, auto for any other (spec.load.default_scheduler fills it in)",
    )
    max_array_size: int = Field(default=1001, ge=1, description="Slurm MaxArraySize: array indices < this")
    max_queued_tasks: int = Field(default=5000, ge=1, description="every array task counts, as in MaxSubmitJobs")
    local_slots: int | None = Field(default=None, ge=1, description="local backend: concurrent tasks (default: cores)")
    node_memory_gb: float | None = Field(default=None, gt=0, description="the most memory a retry may ask (default: the cluster's nodes, asked daily)")
    max_time_hours: float | None = Field(default=None, gt=0, description="the longest timeout a retry may ask (default: the partition's MaxTime)")


class MachineDefaults(Strict):
    """A ``defaults/<machine>.yaml`` file."""

    machine: Machine  # filled from the file name when absent (spec.load.load_defaults)
    resources: Resources = Field(default_factory=Resources)
    execution: Execution = Field(default_factory=Execution)
    outputs: Outputs = Field(default_factory=Outputs)
    environment: Environment = Field(default_factory=Environment)
    job_type_overrides: dict[Name, JobTypeOverride] = Field(default_factory=dict)
