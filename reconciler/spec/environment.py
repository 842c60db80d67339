"""A job's environment, merged across the layers of desired state, and what of it a task's
fingerprint covers.

``environment:`` may be set by the machine defaults, by the job type (its flat ``setup:`` and
``container:`` keys) and by the production. Unlike every other value, which the most specific
layer replaces, its lists add up: a site's ``module load`` must still run when a production
adds its own ``conda activate``.

- ``setup``: concatenated, machine -> job type -> production (later lines run later);
- ``export_env``: the union, in first-seen order;
- ``container``: the most specific layer that sets one wins; ``runtime: none`` there turns an
  inherited container off (the effective value is then no container at all).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from reconciler.spec.models import (
    ENVIRONMENT_KEYS,
    Container,
    Environment,
    MachineDefaults,
    Production,
)
from reconciler.spec.yamlsrc import Document, dotted

JOB_TYPE_KEYS = ENVIRONMENT_KEYS
"""A job type's keys that merge_into takes (load_file leaves them out of resources/execution)."""


def merged_environment(layers: list[Environment]) -> Environment:
    """The effective environment of ``layers``, least specific first (module docstring)."""
    setup: list[str] = []
    export: list[str] = []
    container: Container | None = None
    for env in layers:
        setup += env.setup
        export += [n for n in env.export_env if n not in export]
        if env.container is not None:
            container = env.container
    if container is not None and container.runtime == "none":
        container = None
    return Environment(setup=setup, export_env=export, container=container)


def merge_into(
    merged: dict[str, Any], sources: dict[str, str], defaults: MachineDefaults, ddoc: Document, job_type: str | None, doc: Document,
    stage: str | None = None,
) -> None:
    """Replace ``merged["environment"]`` (the production's own section as load_file copied it)
    with the merge of all layers, and say in ``sources`` which files each part came from.

    A production section that does not validate is left as written, so that the production's
    validation reports it at its own lines; the machine's layers were validated with its file."""
    own_raw = doc.data.get("environment") if isinstance(doc.data, dict) else None
    stage_raw = None
    if stage is not None and isinstance(doc.data, dict) and isinstance(doc.data.get("stages"), dict):
        raw = doc.data["stages"].get(stage)
        stage_raw = raw.get("environment") if isinstance(raw, dict) else None
    try:
        own = Environment.model_validate({} if own_raw is None else own_raw)
        own_stage = Environment.model_validate({} if stage_raw is None else stage_raw)
    except ValidationError:
        return
    layers: list[tuple[Document, tuple[Any, ...], Environment]] = [(ddoc, ("environment",), defaults.environment)]
    override = defaults.job_type_overrides.get(job_type) if job_type is not None else None
    if override is not None:
        jt = Environment(setup=override.setup, container=override.container)
        layers.append((ddoc, ("job_type_overrides", job_type), jt))
    layers.append((doc, ("environment",), own))
    if stage_raw is not None:
        layers.append((doc, ("stages", stage, "environment"), own_stage))
    effective = merged_environment([env for _d, _p, env in layers])
    if effective == Environment() and own_raw is None and stage_raw is None:
        return
    merged["environment"] = effective.model_dump(mode="json")
    for key in [k for k in sources if k == "environment" or k.startswith("environment.")]:
        del sources[key]
    for name in ("setup", "export_env", "container"):
        where = [str(d.mark(p + (name,))) for d, p, env in layers if getattr(env, name)]
        if where and (name != "container" or effective.container is not None):
            sources[dotted(("environment", name))] = " + ".join(where) if name != "container" else where[-1]


def fingerprint_parts(prod: Production) -> dict[str, Any]:
    """What of the shell flag, compression and environment decides a task's result, for its
    fingerprint: a change of any makes the tasks stale, as a change of their command does.

    Only what differs from the default is included, so a production that uses none of it keeps
    the fingerprints it had. ``export_env`` is left out: it names variables whose values come
    from whoever submits (they change at every login, and are not in the repository), so the
    names alone decide nothing that the fingerprint could vouch for.
    """
    parts: dict[str, Any] = {}
    if prod.the_task.shell:
        parts["shell"] = True
    if prod.outputs.compression != "none":
        parts["compression"] = prod.outputs.compression
    env = prod.environment
    if env.setup:
        parts["setup"] = list(env.setup)
    if env.container is not None:
        parts["container"] = env.container.model_dump(mode="json")
    return parts
