"""A pass, and the read-only looks at one: run_pass (lease, observe, plan, apply, publish
status last), read_plan, read_status."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core.plan import Plan
from reconciler.engine import PassResult
from reconciler.engine.observe import Verify
from reconciler.errors import Deposed, DirectoryUnusable, UsageError
from reconciler.lease import Leases
from reconciler.session.desired import Options, Warn, desired_or_last_good, report_problem, warn
from reconciler.session.production import Production, open_production


@dataclass
class PassReport:
    """What one pass of one production did, for the command line to print."""

    name: str
    directory: Path
    tag: str | None
    result: PassResult
    status_commit: str | None = None
    problem: str | None = None  # desired state at the ref did not load: the last good revision was reconciled


def run_pass(
    opts: Options, name: str, *, stage: bool = False, retry: bool = False, verify: Verify = "sample", on_warning: Warn = warn,
    leases: Leases | None = None,
) -> PassReport:
    """One pass: hold the lease, observe, plan, apply; then publish status, even when the pass
    failed (but not when this reconciler was deposed: the production is another's now).

    Isolation: a production whose desired state does not load at ``opts.ref`` is reconciled
    at its last good revision (``report.problem`` says why), or, if it never loaded, raises
    its ConfigError after saying so on the results branch; an unusable production directory
    raises DirectoryUnusable. Either way the caller goes on with the other productions.

    ``verify``: which completed tasks the pass opens and validates again (by default the
    production's ``execution.verify_per_pass``; see ``engine.observe.Verify``).
    """
    desired, problem = desired_or_last_good(opts, name, on_warning)
    try:
        with open_production(opts, name, write=True, on_warning=on_warning, leases=leases, desired=desired) as prod:
            if isinstance(verify, frozenset):
                _known_keys(name, verify, prod.engine.expansion.by_key.keys())
            result: PassResult | None = None
            error: str | None = None
            deposed = False
            try:
                result = prod.engine.run_pass(stage=stage, retry=retry, verify=verify)
            except Deposed:
                deposed = True
                raise
            except BaseException as exc:  # whatever stopped the pass is what status must say
                error = str(exc) or type(exc).__name__
                raise
            finally:
                if opts.publish and not deposed:
                    commit = _publish(opts, prod, result, "; ".join(e for e in (problem, error) if e) or None, on_warning)
                else:
                    commit = None
            return PassReport(name, prod.directory, prod.tag, result, commit, problem)
    except OSError as exc:
        pdir = desired.loaded.production_dir
        if not _within(exc.filename, pdir):
            raise  # not the directory's fault (the scheduler's, say): the caller says what it is
        unusable = DirectoryUnusable(  # no file name: it may be a temporary one, and status must not change every pass
            f"production directory {pdir} cannot be used: {exc.strerror or type(exc).__name__}; check that its file system "
            "is mounted and that this user can write it (outputs.base_path in the production or machine defaults says where it is)"
        )
        report_problem(opts, name, desired.commit, str(unusable), on_warning)
        raise unusable from None


def _within(filename: object, pdir: Path) -> bool:
    """Whether an OSError's file is the production directory, inside it, or one of its parents
    (creating the directory fails on a parent that is missing or read-only)."""
    if not isinstance(filename, str | bytes):
        return False
    path = Path(os.fsdecode(filename))
    return path == pdir or pdir in path.parents or path in pdir.parents


def _known_keys(name: str, keys: frozenset[str], known: Collection[str]) -> None:
    """Refuse task keys the production does not have, before the pass does anything."""
    unknown = sorted(k for k in keys if k not in known)
    if unknown:
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        example = next(iter(known), "")
        raise UsageError(f"production {name} has no task {', '.join(unknown[:5])}{more}; its task keys look like {example!r}")


def _publish(opts: Options, prod: Production, result: PassResult | None, error: str | None, on_warning: Warn) -> str | None:
    """Publish this pass's status; a failure to publish is reported, never fatal to the pass
    (nor does it hide the error that stopped the pass: it runs in that error's ``finally``)."""
    from reconciler.results.publish import publish_status  # only passes that publish pay for it

    try:
        latest = prod.ledger.latest_attempts()
        return publish_status(
            prod.desired.root,
            loaded=prod.desired.loaded,
            commit=prod.desired.commit,
            ref=opts.ref,
            tag=prod.tag,
            result=result,
            attempts={k: a.attempt for k, a in latest.items()},
            runtimes={k: a.end - a.start for k, a in latest.items() if a.start is not None and a.end is not None},
            error=error,
            branch=opts.status_branch,
            remote=opts.push,
            on_warning=on_warning,
        )
    except Exception as exc:  # noqa: BLE001 - publishing is reporting; it must never stop or mask a pass
        on_warning(f"{prod.name}: status not published: {exc}")
        return None


def read_plan(opts: Options, name: str) -> Plan:
    """The plan the next pass would carry out; writes nothing."""
    with open_production(opts, name, write=False) as prod:
        return prod.engine.plan(prod.engine.observe())


def read_status(opts: Options, name: str) -> tuple[dict[str, Any], Path, str | None]:
    """Observe and summarise, read-only: (summary, production directory, latest tag)."""
    with open_production(opts, name, write=False) as prod:
        return prod.engine.summary(prod.engine.observe()), prod.directory, prod.tag
