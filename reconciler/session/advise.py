"""`reconcile advise`: what each stage should ask for, from the production's own runs, and the
change to its production file as a patch for a pull request. Read-only: it never changes a
production by itself (a person reviews and merges the patch; the next pass obeys it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reconciler import run_history
from reconciler.advice_patch import patched_text, unified_diff
from reconciler.core.advice import StageAdvice, advise
from reconciler.core.settle import effective_limits
from reconciler.core.sizing import Growth
from reconciler.engine.observe import site_ceilings_of
from reconciler.errors import UsageError
from reconciler.gitops import desired_tree
from reconciler.scheduler.script import request_of
from reconciler.session.desired import Options, Warn, warn
from reconciler.session.production import open_production
from reconciler.spec.load import Tree, load_file, parse_set


@dataclass(frozen=True)
class AdviceReport:
    name: str
    advice: tuple[StageAdvice, ...]
    file: str  # the production file, relative to the repository's root
    patch: str  # a unified diff of it that `git apply`s; "" when nothing would change (or it cannot be made)
    patch_problem: str | None = None  # why no patch could be made (a section shared through a YAML anchor): set the values by hand


@dataclass
class _Patched:
    """The desired tree with the production file replaced: the patch is loaded before it is shown."""

    inner: Tree
    path: str
    text: str
    label: str = "advice"

    def read(self, path: str) -> str | None:
        return self.text if path == self.path else self.inner.read(path)

    def list(self, directory: str) -> list[str]:
        return self.inner.list(directory)


def read_advice(opts: Options, name: str, *, stage: str | None = None, quantile: float = 0.99, margin: float = 0.2, on_warning: Warn = warn) -> AdviceReport:
    """Each stage's advice (``stage``: that one only) from every attempt that ended, and the
    patch that sets the recommended ``timeout_hours`` and ``memory_gb``, checked to load."""
    if not 0.0 < quantile <= 1.0 or margin < 0.0:
        raise UsageError(f"--quantile must be in (0, 1] and --margin at least 0 (got {quantile:g}, {margin:g})")
    with open_production(opts, name, write=False, on_warning=on_warning) as prod:
        loaded, expansion = prod.desired.loaded, prod.engine.expansion
        names = [s.name for s in expansion.stages]
        if stage is not None and stage not in names:
            raise UsageError(f"production {name} has no stage {stage!r}; its stages: {', '.join(repr(n) for n in names)}")
        limits, _ = effective_limits(prod.engine.limits, None, site_ceilings_of(prod.ledger))
        runs = run_history.by_stage(run_history.ended(prod.ledger), {t.key: t.stage for t in expansion.tasks})
    out = []
    for s in expansion.stages:
        if stage is not None and s.name != stage:
            continue
        spec = loaded.stage_spec(s.name)
        pol = spec.execution.retry_policy
        growth = Growth(pol.memory_factor, pol.time_factor, limits.node_memory_mb, limits.max_time_s)
        out.append(advise(
            s.name, [r.run for r in runs.get(s.name, [])], request_of(spec), quantile=quantile, margin=margin,
            nodes=spec.resources.nodes_per_job or 1, growth=growth, pool=spec.execution.mode == "pool",
        ))
    try:
        patch, problem = _patch(opts, name, loaded.file, loaded.text, out, bool(loaded.spec.stages)), None
    except ValueError as exc:  # the file's shape is not one a value can be set in alone
        patch, problem = "", f"no patch of {loaded.file}: {exc}"
    return AdviceReport(name, tuple(out), loaded.file, patch, problem)


def _patch(opts: Options, name: str, path: str, text: str, advice: list[StageAdvice], campaign: bool) -> str:
    """The production file with every recommendation set, as a diff; loaded first, so a patch
    that would not validate is never shown (it would be a bug of ours: said as one)."""
    new = text
    for a in advice:  # only what differs from what the stage asks now (a default is not written out)
        hours = a.timeout_hours if a.timeout_hours is not None and round(a.timeout_hours * 3600.0) != round(a.current.time_s) else None
        now_gb = None if a.current.memory_mb is None else round(a.current.memory_mb / 1024.0, 3)
        memory = a.memory_gb if a.memory_gb is not None and a.memory_gb != now_gb else None
        if hours is not None or memory is not None:
            new = patched_text(new, a.stage, campaign=campaign, timeout_hours=hours, memory_gb=memory)
    if new == text:
        return ""
    tree, repo, _ = desired_tree(opts.repo, opts.ref, opts.allow_dirty, [name])
    root = Path(repo.working_tree_dir or ".")
    load_file(_Patched(tree, path, new, f"{tree.label} + advice"), path, opts.machine_name, parse_set(opts.overrides), repo_root=root)  # ConfigError if not
    return unified_diff(text, new, path)
