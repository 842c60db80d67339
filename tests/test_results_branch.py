"""Results branch: plumbing-only commits, compare-and-swap, remotes without force, status documents."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.core.model import Desired, Policy, TaskHistory, TaskObs
from reconciler.core.states import OutputState, SchedState
from reconciler.core.summary import summarize
from reconciler.errors import UsageError
from reconciler.git_identity import fallback_identity
from reconciler.results import branch
from reconciler.results.branch import publish, read_branch_file
from reconciler.results.document import (
    StatusDoc,
    build_status,
    dumps_status,
    encode_keys,
    history_line,
    iso_time,
    parse_history,
    task_keys,
    task_states,
)
from reconciler.results.layout import builder, files_for, render_status_md
from reconciler.results.retention import HOURLY_S, RECENT_S, compact_history, phase, plots_due

from .conftest import git

BRANCH = "reconciler/status"


def _children_named_git() -> list[int]:
    """Pids of live (non-zombie) git processes whose parent is this process."""
    me = os.getpid()
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        if name.startswith("git") and int(fields[1]) == me and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _snapshot(r: Path) -> tuple[str, str, str, bytes]:
    index = (r / ".git" / "index").read_bytes()
    return git(r, "status", "--porcelain", "--untracked-files=all"), git(r, "symbolic-ref", "HEAD"), git(r, "rev-parse", "HEAD"), index


def _tree(r: Path, ref: str = BRANCH) -> dict[str, str]:
    out = git(r, "ls-tree", "-r", "--name-only", ref)
    return {p: git(r, "show", f"{ref}:{p}") for p in out.splitlines()}


def test_publish_creates_branch_without_touching_work_tree(repo: Path) -> None:
    (repo / "productions" / "demo.yaml").write_text("# an uncommitted edit\n", encoding="utf-8")
    (repo / "scratch.txt").write_text("untracked\n")
    git(repo, "add", "scratch.txt")  # something staged, so the index is not trivially empty
    before = _snapshot(repo)
    sha = publish(repo, {"productions/demo/status.json": b'{"a": 1}\n', "STATUS.md": b"# s\n"}, "status: demo")
    assert sha and len(sha) == 40
    assert _snapshot(repo) == before
    assert git(repo, "rev-parse", BRANCH).strip() == sha
    assert _tree(repo) == {"STATUS.md": "# s\n", "productions/demo/status.json": '{"a": 1}\n'}
    assert git(repo, "log", "--format=%s", BRANCH).strip() == "status: demo"
    assert _children_named_git() == []


def test_identical_files_add_no_commit(repo: Path) -> None:
    files = {"productions/demo/status.json": b"{}\n"}
    first = publish(repo, files, "one")
    assert publish(repo, files, "two") is None
    assert git(repo, "rev-parse", BRANCH).strip() == first
    assert git(repo, "rev-list", "--count", BRANCH).strip() == "1"


def test_productions_keep_each_others_files(repo: Path) -> None:
    publish(repo, {"productions/a/status.json": b"a1", "STATUS.md": b"a"}, "a")
    publish(repo, {"productions/b/status.json": b"b1", "STATUS.md": b"ab"}, "b")
    publish(repo, {"productions/a/status.json": b"a2"}, "a again")
    assert _tree(repo) == {"STATUS.md": "ab", "productions/a/status.json": "a2", "productions/b/status.json": "b1"}
    assert git(repo, "rev-list", "--count", BRANCH).strip() == "3"


def test_none_removes_a_file(repo: Path) -> None:
    publish(repo, {"productions/a/old.png": b"x", "productions/a/status.json": b"{}"}, "a")
    publish(repo, {"productions/a/old.png": None}, "drop")
    assert list(_tree(repo)) == ["productions/a/status.json"]


def test_default_identity_without_user_config(repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty.gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)
    publish(repo, {"x": b"1"}, "m")
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", BRANCH).strip() == "reconciler <reconciler@localhost>|reconciler <reconciler@localhost>"


def test_fallback_identity_fills_only_what_git_lacks(repo: Path, tmp_path: Path) -> None:
    """One helper for status commits and production tags: config and environment always win."""
    empty = tmp_path / "empty.gitconfig"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_AUTHOR_", "GIT_COMMITTER_")) and k != "EMAIL"}
    env.update(GIT_CONFIG_GLOBAL=str(empty), GIT_CONFIG_NOSYSTEM="1")
    name = {"GIT_AUTHOR_NAME": "reconciler", "GIT_COMMITTER_NAME": "reconciler"}
    email = {"GIT_AUTHOR_EMAIL": "reconciler@localhost", "GIT_COMMITTER_EMAIL": "reconciler@localhost"}
    assert fallback_identity(repo, env) == {**name, **email}
    assert fallback_identity(repo, {**env, "GIT_COMMITTER_EMAIL": "me@example.org"}) == {**name, "GIT_AUTHOR_EMAIL": "reconciler@localhost"}
    git(repo, "config", "user.email", "me@example.org")
    assert fallback_identity(repo, env) == name
    git(repo, "config", "user.name", "Me")
    assert fallback_identity(repo, env) == {}


@pytest.mark.parametrize("bad", ["-x", "a..b", "has space", "refs/heads/x", "x.lock", ""])
def test_bad_branch_names_are_refused(repo: Path, bad: str) -> None:
    with pytest.raises(UsageError):
        publish(repo, {"x": b"1"}, "m", branch=bad)


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/./b", ".git/config", "a\nb", "a\\b", "a//b"])
def test_unsafe_paths_are_refused(repo: Path, bad: str) -> None:
    with pytest.raises(UsageError):
        publish(repo, {bad: b"1"}, "m")
    assert git(repo, "branch", "--list", BRANCH).strip() == ""


def test_lost_update_ref_race_is_rebuilt(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another publisher moves the branch between our read and our update-ref: nothing is lost."""
    publish(repo, {"productions/a/status.json": b"a0"}, "a0")
    real = branch._build
    calls = []

    def racing(g: branch._Git, base: str | None, files: branch.Files, message: str) -> str | None:
        calls.append(base)
        if len(calls) == 1:
            monkeypatch.setattr(branch, "_build", real)
            publish(repo, {"productions/b/status.json": b"b"}, "b sneaks in")
            monkeypatch.setattr(branch, "_build", racing)
        return real(g, base, files, message)

    monkeypatch.setattr(branch, "_build", racing)
    publish(repo, {"productions/a/status.json": b"a1"}, "a1", backoff=0.01)
    assert _tree(repo) == {"productions/a/status.json": "a1", "productions/b/status.json": "b"}
    assert git(repo, "log", "--format=%s", BRANCH).split() == ["a1", "b", "sneaks", "in", "a0"]


# ---------------------------------------------------------------- remotes


@pytest.fixture
def clones(tmp_path: Path, repo: Path) -> tuple[Path, Path, Path]:
    """A bare remote that refuses non-fast-forward pushes, and two clones of it."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    git(bare, "config", "receive.denyNonFastForwards", "true")
    git(bare, "config", "receive.denyDeletes", "true")
    a, b = tmp_path / "a", tmp_path / "b"
    git(tmp_path, "clone", "-q", str(bare), str(a))
    git(tmp_path, "clone", "-q", str(bare), str(b))
    return bare, a, b


def test_publish_to_remote_fetches_when_remote_is_ahead(clones: tuple[Path, Path, Path]) -> None:
    bare, a, b = clones
    sa = publish(a, {"productions/a/status.json": b"a"}, "a", remote="origin")
    sb = publish(b, {"productions/b/status.json": b"b"}, "b", remote="origin")
    assert sa and sb
    assert git(bare, "rev-parse", BRANCH).strip() == sb
    assert _tree(bare) == {"productions/a/status.json": "a", "productions/b/status.json": "b"}
    assert git(bare, "rev-list", "--parents", "-n", "1", BRANCH).split()[1] == sa  # b was built on a
    # a catches up without committing when it has nothing new
    assert publish(a, {"productions/a/status.json": b"a"}, "a", remote="origin") is None
    assert git(a, "rev-parse", BRANCH).strip() == sb


def test_rejected_push_is_refetched_rebuilt_and_retried(clones: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Clone b reads the remote, then clone a pushes before b does: b's push is rejected, b rebuilds."""
    bare, a, b = clones
    publish(a, {"productions/a/status.json": b"a0"}, "a0", remote="origin")
    real_run = branch._Git.run
    pushes: list[tuple[str, int]] = []

    def run(self: branch._Git, *args: str, **kw: object) -> object:
        if args and args[0] == "push" and self.repo == b and not pushes:
            publish(a, {"productions/a/status.json": b"a1"}, "a1", remote="origin")  # a wins the race
        proc = real_run(self, *args, **kw)  # type: ignore[arg-type]
        if args and args[0] == "push":
            pushes.append((self.repo.name, proc.returncode))
        return proc

    monkeypatch.setattr(branch._Git, "run", run)
    sb = publish(b, {"productions/b/status.json": b"b"}, "b", remote="origin", backoff=0.01)
    assert ("b", 1) in pushes and pushes[-1] == ("b", 0)
    assert _tree(bare) == {"productions/a/status.json": "a1", "productions/b/status.json": "b"}
    assert git(bare, "log", "--format=%s", BRANCH).split() == ["b", "a1", "a0"]
    assert git(bare, "rev-parse", BRANCH).strip() == sb == git(b, "rev-parse", BRANCH).strip()
    assert _children_named_git() == []


def test_two_clones_publishing_concurrently_lose_nothing(clones: tuple[Path, Path, Path]) -> None:
    bare, a, b = clones
    made: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def worker(clone: Path, name: str) -> None:
        try:
            for i in range(6):
                files: Callable[[branch.BranchView], dict[str, bytes | None]] = lambda view, i=i: {  # noqa: E731
                    f"productions/{name}/status.json": f"{name}{i}".encode(),
                    f"productions/{name}/history.jsonl": (view.read(f"productions/{name}/history.jsonl") or b"") + f"{i}\n".encode(),
                    "STATUS.md": ("\n".join(sorted(set(view.list("productions")) | {name})) + "\n").encode(),
                }
                sha = publish(clone, files, f"{name}{i}", remote="origin", retries=40, backoff=0.02)
                assert sha
                made[name].append(sha)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(a, "a")), threading.Thread(target=worker, args=(b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    tree = _tree(bare)
    assert tree["productions/a/status.json"] == "a5" and tree["productions/b/status.json"] == "b5"
    assert tree["productions/a/history.jsonl"] == "0\n1\n2\n3\n4\n5\n" == tree["productions/b/history.jsonl"].replace("b", "")
    assert tree["STATUS.md"] == "a\nb\n"
    assert git(bare, "rev-list", "--merges", BRANCH).strip() == ""  # linear
    subjects = git(bare, "log", "--format=%s", BRANCH).split()
    assert sorted(subjects) == sorted([f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)])
    final = git(bare, "rev-list", BRANCH).split()
    assert made["a"][-1] in final and made["b"][-1] in final
    assert _children_named_git() == []


def test_unreachable_remote_is_a_transient_error(repo: Path, tmp_path: Path) -> None:
    from reconciler.errors import TransientError

    with pytest.raises(TransientError):
        publish(repo, {"x": b"1"}, "m", remote=str(tmp_path / "nowhere.git"), retries=2, backoff=0.01)


# ---------------------------------------------------------------- status documents


def _summary(n_real: int = 4, failing_z: float | None = None) -> tuple[dict, list[str]]:
    class T:
        def __init__(self, index: int, key: str) -> None:
            self.index, self.key = index, key

    keys = [f"r{r:04d}/z{z:.3f}" for r in range(n_real) for z in (0.5, 1.0, 1.5)]
    tasks = [T(i, k) for i, k in enumerate(keys)]
    obs, hist = {}, {}
    for i, k in enumerate(keys):
        if failing_z is not None and k.endswith(f"z{failing_z:.3f}"):
            hist[k] = TaskHistory(submissions=4, failures=4, last_reason="OUT_OF_MEMORY")
        elif i % 5 == 0:
            obs[k] = TaskObs(OutputState.MISSING, SchedState.RUNNING)
        else:
            obs[k] = TaskObs(OutputState.COMPLETE, SchedState.COMPLETED)
    return summarize(Desired(tasks, Policy(max_retries=3)), obs, hist, [("r0009/z0.500", "bad ICs")], {}), keys


def test_status_doc_round_trip_and_compact_tasks() -> None:
    summary, keys = _summary(failing_z=1.0)
    doc = build_status(summary, production="demo", version="v1.0", tag="production/demo_v1.0_x", commit="c" * 40, ref="HEAD", machine="local", now=1_700_000_000.0, keys=keys, attempts={keys[0]: 1}, runtimes={keys[0]: 12.345, keys[1]: 3600.4})
    StatusDoc.model_validate(doc)
    assert doc["counts"]["failed"] == 4 and doc["total"] == 12 and doc["updated"] == "2023-11-14T22:13:20+00:00"
    # state words and codes are part of the published format (TaskState and TaskState.code)
    assert list(doc["counts"]) == ["complete", "adopted", "running", "queued", "staged", "waiting", "retrying", "failed", "blocked", "stale", "missing"]
    assert doc["tasks"]["legend"] == {"C": "complete", "A": "adopted", "R": "running", "Q": "queued", "G": "staged", "W": "waiting", "T": "retrying", "F": "failed", "B": "blocked", "S": "stale", "M": "missing", "?": "unknown"}
    assert all(type(v) is str for v in summary["states"].values())
    assert task_keys(doc["tasks"]) == keys and doc["tasks"]["keys"] is None  # stored as a grid
    assert task_states(doc["tasks"]) == [summary["states"][k] for k in keys]
    assert doc["tasks"]["attempts"][:2] == [1, None] and doc["tasks"]["runtime_s"][:3] == [12.3, 3600, None]
    assert doc["excluded"] == [{"key": "r0009/z0.500", "reason": "bad ICs"}]
    assert {f["key"] for f in doc["failures"]} == {k for k in keys if k.endswith("z1.000")}
    text = dumps_status(doc)
    assert json.loads(text) == doc
    assert len(text.splitlines()) < 150
    assert "environ" not in text.decode().lower() and "token" not in text.decode().lower()


def test_status_doc_stays_small_for_40000_tasks() -> None:
    keys = [f"r{r:04d}/z{z:.3f}" for r in range(5000) for z in (0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0)]
    summary = {"total": len(keys), "counts": {"complete": len(keys)}, "progress": 1.0, "success_rate": 1.0, "done": True, "failures": [], "retried": [], "excluded": [], "states": dict.fromkeys(keys, "complete")}
    doc = build_status(summary, production="big", version="v1", tag=None, commit="c", ref="HEAD", machine="m", now=0.0, keys=keys, attempts=dict.fromkeys(keys, 1), runtimes=dict.fromkeys(keys, 1234.0))
    size = len(dumps_status(doc))
    assert size < 600_000, size
    assert task_keys(doc["tasks"]) == keys


def test_encode_keys_falls_back_to_explicit_lists() -> None:
    odd = ["r0000/z1.000", "r0000/z0.500", "r0001/z0.500", "r0001/z1.000"]  # not in product order
    assert encode_keys(odd) == {"keys": odd}
    assert task_keys(encode_keys(odd[:2])) == odd[:2]  # first-seen order is kept
    ragged = ["r0000/z0.500", "r0000/z0.500/seed=1"]
    assert task_keys(encode_keys(ragged)) == ragged


def test_history_line_and_files_for() -> None:
    summary, keys = _summary()
    doc = build_status(summary, production="demo", version="v1.0", tag=None, commit="c", ref="HEAD", machine="local", now=100.0, keys=keys)
    line = history_line(summary, {"submit": 3, "cancel": 0}, 100.0)
    assert line["actions"] == {"submit": 3} and line["counts"]["running"] == summary["counts"]["running"]
    other = {"production": "alpha", "version": "v2", "progress": 0.5, "total": 10, "counts": {"complete": 5, "failed": 1}, "updated": "t", "plots": []}
    files = files_for(doc, b'{"t": 1}\n', line, [other], {"progress.png": b"\x89PNG"})
    assert set(files) == {"productions/demo/status.json", "productions/demo/history.jsonl", "productions/demo/progress.png", "STATUS.md"}
    assert [h["t"] for h in parse_history(files["productions/demo/history.jsonl"])] == [1, 100.0]
    md = files["STATUS.md"].decode()
    assert "| alpha | v2 | 50.0% | 5 / 10 | 1 |" in md
    assert "[status.json](productions/demo/status.json)" in md
    assert "![progress of demo](productions/demo/progress.png)" in md and "progress of alpha" not in md
    assert json.loads(files["productions/demo/status.json"])["plots"] == ["progress.png"]


def test_render_status_md_escapes_table_cells() -> None:
    md = render_status_md([{"production": "x", "version": "a|b", "counts": {}, "total": 0, "progress": 1.0, "updated": "<script>"}], {})
    assert "a\\|b" in md and "<script>" not in md


def test_builder_recomputes_status_md_from_the_branch(repo: Path) -> None:
    summary, keys = _summary()
    for name in ("alpha", "demo"):
        doc = build_status(summary, production=name, version="v1", tag=None, commit="c", ref="HEAD", machine="local", now=5.0, keys=keys)
        publish(repo, builder(doc, history_line(summary, {}, 5.0)), f"status: {name}")
    doc = build_status(summary, production="demo", version="v1", tag=None, commit="c", ref="HEAD", machine="local", now=6.0, keys=keys)
    publish(repo, builder(doc, history_line(summary, {}, 6.0)), "status: demo")
    md = (read_branch_file(repo, "STATUS.md") or b"").decode()
    assert "| alpha |" in md and "| demo |" in md
    assert len(parse_history(read_branch_file(repo, "productions/demo/history.jsonl"))) == 2
    assert read_branch_file(repo, "productions/nothing/status.json") is None


def test_status_md_says_done_only_when_every_task_is_complete() -> None:
    def row(failed: int, stale: int) -> dict:
        counts = {"complete": 10 - failed - stale, "failed": failed, "stale": stale}
        return {"production": "p", "version": "v", "counts": counts, "total": 10, "progress": counts["complete"] / 10, "done": True}

    assert "(done)" in render_status_md([row(0, 0)], {})
    ended = render_status_md([row(2, 1)], {})
    assert "(done)" not in ended and "(ended: 2 failed, 1 stale)" in ended


# ---------------------------------------------------------------- a branch that lives for months


def test_phase_and_when_pictures_are_redrawn() -> None:
    running = {"counts": {"complete": 5, "running": 3}, "done": False, "plots": ["progress.png"], "plots_updated": "2024-06-01T00:00:00+00:00"}
    drawn = datetime(2024, 6, 1, tzinfo=UTC).timestamp()
    assert phase(running) == "running"
    assert phase({**running, "counts": {"failed": 1}}) == "failing"
    assert phase({"counts": {"complete": 8}, "done": True}) == "done"
    assert phase({"counts": {"complete": 7, "stale": 1}, "done": True}) == "ended"
    assert plots_due(None, running, drawn)  # nothing on the branch yet
    assert plots_due({**running, "plots": []}, running, drawn + 60)  # no pictures there
    assert not plots_due(running, running, drawn + 3599)
    assert plots_due(running, running, drawn + 3600)
    assert not plots_due(running, running, drawn + 599, every=600) and plots_due(running, running, drawn + 600, every=600)
    assert plots_due(running, {"counts": {"complete": 8}, "done": True}, drawn + 60)  # it finished: at once
    assert plots_due(running, {"counts": {"failed": 1}, "done": False}, drawn + 60)  # the first give-up: at once
    assert plots_due({k: v for k, v in running.items() if k != "plots_updated"}, running, drawn + 60)  # written before plots_updated


def _line(t: float, done: int, submit: int = 1) -> dict:
    return {"t": t, "time": iso_time(t), "total": 100, "counts": {"complete": done}, "progress": done / 100, "actions": {"submit": submit}}


def test_history_is_compacted_by_hour_then_by_day_and_never_loses_a_pass() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    lines = [_line(t0 + 300 * i, i) for i in range(12 * 24 * 100)]  # 100 days of 5-minute passes
    now = lines[-1]["t"]
    out = compact_history(lines, now)
    assert sum(ln.get("passes", 1) for ln in out) == len(lines)
    assert sum(ln["actions"]["submit"] for ln in out) == len(lines)  # actions are summed
    assert [ln["t"] for ln in out] == sorted(ln["t"] for ln in out) and out[-1] == lines[-1]
    raw = len(out) - next(i for i in range(len(out) - 1, -1, -1) if "passes" in out[i]) - 1
    assert out[-raw:] == lines[-raw:] and out[-raw]["t"] <= now - RECENT_S  # every pass of the last day (and of the hour before)
    assert raw <= 12 * 25
    hourly = [ln for ln in out[:-raw] if now - ln["t"] <= HOURLY_S]
    daily = [ln for ln in out[:-raw] if now - ln["t"] > HOURLY_S]
    assert 88 * 24 <= len(hourly) <= 89 * 24 + 1 and all(ln.get("passes", 1) <= 12 for ln in hourly)
    assert 10 <= len(daily) <= 11 and all(ln["passes"] <= 288 for ln in daily)
    assert all(datetime.fromtimestamp(ln["t"], UTC).strftime("%H:%M") == "23:55" for ln in daily[:-1])
    # a folded line is the last pass of its bucket: the counts at the hour's end
    first = hourly[0]
    assert first["counts"] == next(ln for ln in lines if ln["t"] == first["t"])["counts"] and first["time"].endswith(":55:00+00:00")
    assert len(out) < 2600 and compact_history(out, now) == out  # bounded, and compacting again changes nothing
    # the next pass (on the hour) appends its line, folds the hour that left the last day into
    # one line, and moves one line from hourly to daily: a few lines change, the rest stay bytes
    nxt = compact_history([*out, _line(now + 300, 0)], now + 300)
    before = {json.dumps(ln, sort_keys=True) for ln in out}
    changed = [ln for ln in nxt if json.dumps(ln, sort_keys=True) not in before]
    assert len(changed) == 3 and changed[-1] == nxt[-1] == _line(now + 300, 0) and len(nxt) == len(out) + 1 - 11 - 1
    assert sum(ln.get("passes", 1) for ln in nxt) == len(lines) + 1


def test_a_month_of_passes_stays_under_12_kb_per_commit_and_draws_the_finish(tmp_path: Path) -> None:
    """The benchmark's simulation, 100 five-minute passes (8.3 h) of a production whose counts
    change on every pass, published for real: the branch alone, after gc --aggressive, is
    under 12 KB per commit; pictures are redrawn hourly, and on the pass that finishes."""
    pytest.importorskip("matplotlib")
    from benchmarks.bench_results_branch import BRANCH as BENCH_BRANCH
    from benchmarks.bench_results_branch import T0, branch_size, simulate

    root = tmp_path / "repo"
    passes = 100
    commits = simulate(root, passes, tasks=1000)
    assert len(commits) == passes  # the counts changed on every pass
    drawn = []
    for sha in commits:
        changed = git(root, "diff-tree", "--no-commit-id", "--name-only", "-r", "--root", sha).split()
        if "productions/bench/progress.png" in changed:
            drawn.append(sha)
    last = json.loads(git(root, "show", f"{BENCH_BRANCH}:productions/bench/status.json"))
    assert last["done"] and last["plots_updated"] == last["updated"] == iso_time(T0 + 300 * (passes - 1))
    assert drawn[-1] == commits[-1]  # the finish is drawn at once
    assert git(root, "rev-parse", BENCH_BRANCH).strip() == commits[-1]
    hours = passes * 300 / 3600
    assert hours <= len(drawn) <= hours + 4, len(drawn)  # hourly, plus phase changes (first give-up, the end)
    history = parse_history(read_branch_file(root, "productions/bench/history.jsonl", BENCH_BRANCH))
    assert len(history) == passes
    size = branch_size(root)["pack_bytes"]
    assert size / len(commits) < 12_000, size / len(commits)
