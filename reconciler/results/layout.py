"""Where status lives on the results branch, and the files one production publishes there.

Layout on the results branch (paths relative to the branch root)::

    STATUS.md                              one table over every production on the branch
    productions/<name>/status.json         the StatusDoc (reconciler.results.document), rewritten every pass
    productions/<name>/history.jsonl       one line per pass: time, counts, actions taken (old passes
                                           folded per hour, then per day: reconciler.results.retention)
    productions/<name>/progress.png ...    pictures from reconciler.results.plots, redrawn at most hourly

``builder`` gives ``reconciler.results.branch.publish`` the files of one production,
recomputed from whatever tree the commit lands on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from reconciler.results.document import dumps_status, parse_history
from reconciler.results.retention import compact_history

STATUS_FILE = "status.json"
HISTORY_FILE = "history.jsonl"
STATUS_MD = "STATUS.md"
PRODUCTIONS = "productions"


# ---------------------------------------------------------------- STATUS.md


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


CHAIN_NOTED = ("failed", "blocked", "retrying", "stale", "running", "queued", "staged", "waiting")
"""States a stage's link in the chain names when it has any (the others are done or not yet sent)."""


def stage_chain(stages: Sequence[Mapping[str, Any]]) -> str:
    """A campaign's stages as one line, in chain order: ``generate 40000/40000 → measure
    39998/40000 (2 failed) → covariance 19/20 (1 blocked)``: where it is, and where it is stuck."""
    links = []
    for st in stages:
        counts = st.get("counts") or {}
        done = int(counts.get("complete", 0)) + int(counts.get("adopted", 0))
        noted = ", ".join(f"{int(counts[k])} {k}" for k in CHAIN_NOTED if int(counts.get(k) or 0))
        links.append(f"{st.get('name', '?')} {done}/{int(st.get('total', 0))}" + (f" ({noted})" if noted else ""))
    return " → ".join(links)


def render_status_md(statuses: Sequence[Mapping[str, Any]], plots: Mapping[str, str]) -> str:
    """The top-level STATUS.md: one row per production, then each production's progress picture.

    A campaign's row has its totals, and under it a row with its chain of stages and their
    counts (``stage_chain``): a table cell cannot hold two lines, and a row keeps the table whole.

    ``plots`` maps a production name to the branch-relative path of its progress picture
    (productions without one get no image).
    """
    rows = sorted(statuses, key=lambda s: str(s.get("production", "")))
    lines = [
        "# Production status",
        "",
        "Written by the reconciler on every pass; do not edit (the next pass overwrites it).",
        "",
        "| production | version | progress | complete / total | failed | running | queued | last pass | details |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in rows:
        name = str(s.get("production", "?"))
        counts = s.get("counts") or {}
        complete = int(counts.get("complete", 0)) + int(counts.get("adopted", 0))
        total = int(s.get("total", 0))
        pct = 100.0 * float(s.get("progress", 0.0))
        failed, stale = int(counts.get("failed", 0)), int(counts.get("stale", 0))
        mark = "" if not s.get("done") else " (done)" if not failed and not stale else f" (ended: {failed} failed, {stale} stale)"
        links = [f"[status.json]({PRODUCTIONS}/{name}/{STATUS_FILE})"]
        if name in plots:
            links.append(f"[progress]({plots[name]})")
        lines.append(
            f"| {_md(name)} | {_md(s.get('version', ''))} | {pct:.1f}%{mark} | {complete} / {total} | "
            f"{int(counts.get('failed', 0))} | {int(counts.get('running', 0))} | {int(counts.get('queued', 0))} | "
            f"{_md(s.get('updated', ''))} | {' · '.join(links)} |"
        )
        if s.get("stages"):
            lines.append(f"| ↳ {_md(stage_chain(s['stages']))} | | | | | | | | |")
    if not rows:
        lines.append("| (no productions yet) | | | | | | | | |")
    failing = [s for s in rows if s.get("error")]
    if failing:
        lines += ["", "Passes that failed (the counts above are from the last pass that did not):", ""]
        lines += [f"- **{_md(s.get('production', '?'))}**, {_md(s.get('updated', ''))}: {_md(s['error'])}" for s in failing]
    causes = [(s, c) for s in rows for c in (s.get("causes") or [])[:3]]
    if causes:
        lines += ["", "Failures by cause (`reconcile status NAME` lists every task; the log is the example's):", ""]
        lines += [f"- **{_md(s.get('production', '?'))}**: {int(c.get('tasks', 0))} task(s): {_md(c.get('cause', ''))}"
                  f"{' (gave up: retrying cannot fix it)' if c.get('retry_cannot_fix') else ''}; e.g. {_md(c.get('example', ''))}, log `{_md(c.get('log') or '-')}`"
                  for s, c in causes]
    for s in rows:
        name = str(s.get("production", "?"))
        if name in plots:
            lines += ["", f"## {_md(name)}", "", f"![progress of {_md(name)}]({plots[name]})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- files on the branch


class BranchReader(Protocol):
    """Read access to the results branch tree a commit is being built on."""

    def read(self, path: str) -> bytes | None: ...

    def list(self, directory: str) -> list[str]: ...


def status_path(name: str, file: str = STATUS_FILE) -> str:
    return f"{PRODUCTIONS}/{name}/{file}"


def files_for(
    status: Mapping[str, Any],
    history_jsonl_prev: bytes | None,
    line: Mapping[str, Any] | None,
    other_statuses: Sequence[Mapping[str, Any]],
    plots: Mapping[str, bytes],
) -> dict[str, bytes]:
    """The files one production publishes: its status.json, history.jsonl (+ ``line``), plots, STATUS.md.

    ``other_statuses`` are the status documents of the other productions already on the
    branch (STATUS.md covers them all); a document of this production among them is ignored.
    ``line`` is appended to history.jsonl and the passes before it are compacted as of its
    time (``retention.compact_history``), so the file stays bounded and each commit changes
    it by little more than one line. ``plots`` are the pictures drawn this pass (none: the
    branch's stay).
    """
    name = str(status["production"])
    doc = dict(status)
    doc["plots"] = sorted(set(doc.get("plots") or ()) | set(plots))
    out: dict[str, bytes] = {status_path(name): dumps_status(doc)}
    if line is not None:
        t = line.get("t")
        lines = [*parse_history(history_jsonl_prev), dict(line)]
        if isinstance(t, int | float):
            lines = compact_history(lines, float(t))
        out[status_path(name, HISTORY_FILE)] = b"".join(dumps_history_line(ln) for ln in lines)
    for fname, data in plots.items():
        out[status_path(name, fname)] = data
    everyone = [s for s in other_statuses if s.get("production") != name] + [doc]
    links = {str(s["production"]): status_path(str(s["production"]), "progress.png") for s in everyone if "progress.png" in (s.get("plots") or ())}
    out[STATUS_MD] = render_status_md(everyone, links).encode()
    return out


def dumps_history_line(line: Mapping[str, Any]) -> bytes:
    """One line of history.jsonl, in one canonical form: an unchanged line is unchanged bytes."""
    return json.dumps(dict(line), sort_keys=True, separators=(",", ":")).encode() + b"\n"


def read_statuses(branch: BranchReader) -> list[dict[str, Any]]:
    """Every production's status document on the branch (unreadable ones are skipped)."""
    out = []
    for name in branch.list(PRODUCTIONS):
        data = branch.read(status_path(name))
        if data is None:
            continue
        try:
            doc = json.loads(data)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("production") == name:
            out.append(doc)
    return out


def builder(
    status: Mapping[str, Any],
    line: Mapping[str, Any] | None,
    plots: Mapping[str, bytes] | None = None,
) -> Callable[[BranchReader], dict[str, bytes]]:
    """A file builder for ``branch.publish``: recomputed on whatever tree the commit lands on.

    History is appended to, and STATUS.md rebuilt from, the branch as it is when the commit
    is made (after a fetch or a lost race), so a concurrent publisher is never overwritten.
    """
    name = str(status["production"])

    def build(branch: BranchReader) -> dict[str, bytes]:
        prev = branch.read(status_path(name, HISTORY_FILE))
        return files_for(status, prev, line, read_statuses(branch), plots or {})

    return build
