"""outputs.cleanup_policy does what it says (issue #13, item 3): logs of finished submissions
are pruned after keep_logs_days, archived first with archive_completed, and the plan says so."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from reconciler.core.cleanup import prune_logs
from reconciler.core.model import FinishedSubmission, Policy
from reconciler.core.plan import ActionKind
from reconciler.core.reasons import Reason
from reconciler.core.states import SubmissionKind

from .conftest import git
from .test_loop_local import env_for, reconcile, shrink_demo

DAY = 86400.0


def test_only_submissions_older_than_keep_logs_days_are_pruned_in_finish_order() -> None:
    kept = [FinishedSubmission("b", 1, 10 * DAY), FinishedSubmission("a", 0, 5 * DAY), FinishedSubmission("c", 2, 29 * DAY)]
    actions = prune_logs(kept, now=30 * DAY, policy=Policy(keep_logs_s=20 * DAY))
    assert [(a.kind, a.token, a.batch) for a in actions] == [(ActionKind.PRUNE_LOGS, "a", 0), (ActionKind.PRUNE_LOGS, "b", 1)]
    assert {a.reason for a in actions} == {Reason.LOGS_EXPIRED} and actions[0].message.endswith("removed (finished over 20 day(s) ago)")
    assert {a.reason for a in prune_logs(kept, 30 * DAY, Policy(keep_logs_s=20 * DAY, archive_logs=True))} == {Reason.LOGS_ARCHIVED}
    assert prune_logs(kept, 30 * DAY, Policy()) == []  # the default: 90 days
    old_tool = [FinishedSubmission("d", 3, 1 * DAY, SubmissionKind.LEGACY)]  # import-legacy: no logs of ours
    assert prune_logs(old_tool, 30 * DAY, Policy(keep_logs_s=0)) == []


@pytest.mark.parametrize("archive", [True, False])
def test_logs_of_finished_submissions_are_pruned_and_recorded(repo: Path, tmp_path: Path, archive: bool) -> None:
    env = env_for(tmp_path)
    shrink_demo(repo)
    path = repo / "productions" / "demo.yaml"
    path.write_text(path.read_text() + f"\noutputs:\n  cleanup_policy:\n    keep_logs_days: 0\n    archive_completed: {str(archive).lower()}\n")
    git(repo, "commit", "-qam", "keep no logs")
    r = reconcile(repo, env, "watch", "demo", "--until-done", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    logs = repo / "work" / "productions" / "demo" / "logs"

    def loose() -> list[Path]:
        return [p for p in logs.glob("batch_*") if p.suffix in (".out", ".err")]

    before = {p.name for p in loose()}
    # A submission is closed by the pass that sees its last attempt end, and its logs pruned by
    # the next: the watch may end (every task complete) before either, so a pass or two more.
    for _ in range(3):
        plan = json.loads(reconcile(repo, env, "plan", "demo", "--json").stdout)
        pruned = [a for a in plan["actions"] if a["kind"] == "prune_logs"]
        assert all(a["reason"] == ("logs_archived" if archive else "logs_expired") for a in pruned), plan
        if not pruned and not loose():
            break
        once = reconcile(repo, env, "once", "demo")
        assert once.returncode == 0, once.stderr
    assert not loose()
    assert sorted(p.suffix for p in logs.glob("batch_*")) == sorted([".json", ".sh"] * len(list(logs.glob("batch_*.sh"))))  # manifests and scripts stay
    archives = sorted((logs / "archive").glob("*.tar.gz")) if archive else []
    if archive:
        held = set()
        for a in archives:
            with tarfile.open(a) as tar:
                held |= set(tar.getnames())
        assert {n for n in held if n.endswith((".out", ".err"))} >= before and any(n.startswith("causes/") for n in held), held
    else:
        assert not (logs / "archive").exists()
    again = reconcile(repo, env, "plan", "demo")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout
    from reconciler.ledger import Ledger

    with Ledger(repo / "work" / "productions" / "demo" / "metadata" / "production.db", read_only=True) as ledger:
        events = [m for (k, m) in ledger.db.execute("SELECT kind, message FROM events") if k == "prune_logs"]
        subs = ledger.db.execute("SELECT count(*) FROM submissions").fetchone()[0]
    assert len(events) == subs and all("log file(s) removed" in m for m in events), events
